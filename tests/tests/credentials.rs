//! The broker password never sits in a Deployment (issue #13.3): workers read their broker URI
//! through `secretKeyRef`, from the Secret the operator writes for the pool or from one the pool
//! names in `spec.workers.brokerSecretRef`. A named Secret that is missing (or lacks the key)
//! makes the pool `Ready=False`, reason `SecretNotFound`; once it exists the pool serves Jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use warren_e2e::Env;
use warren_operator::crd::{JobPhase, WorkerPool};

const PATIENCE: Duration = Duration::from_secs(90);

fn ready(pool: &WorkerPool) -> Option<(String, String, String)> {
    let c = pool.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The worker container's `WARREN_AMQP_URL` in the pool's Deployment, as the API serves it.
async fn url_env(env: &Env, pool: &str) -> anyhow::Result<k8s_openapi::api::core::v1::EnvVar> {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let deployment = deployments.get(&format!("{pool}-workers")).await?;
    let text = serde_json::to_string(&deployment)?;
    anyhow::ensure!(!text.contains(env.amqp_url()), "the broker URI appears in the Deployment");
    let pod = deployment.spec.template.spec.expect("pod spec");
    Ok(pod.containers[0].env.iter().flatten().find(|e| e.name == "WARREN_AMQP_URL").cloned().expect("WARREN_AMQP_URL"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_read_the_broker_uri_from_a_secret_and_a_missing_one_is_a_condition() -> anyhow::Result<()> {
    let env = Env::start("credentials").await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);

    // By default the operator writes the pool's Secret, and the Deployment refers to it.
    env.create_pool("own", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1})).await?;
    env.wait_pool_ready("own", PATIENCE).await?;
    let var = url_env(&env, "own").await?;
    assert_eq!(var.value, None, "no literal value");
    let selector = var.value_from.and_then(|f| f.secret_key_ref).expect("secretKeyRef");
    assert_eq!((selector.name.as_str(), selector.key.as_str()), ("own-warren-broker", "url"));
    let written = secrets.get("own-warren-broker").await?;
    assert_eq!(written.data.expect("data")["url"].0, env.amqp_url().as_bytes());
    env.create_job("first", serde_json::json!({"poolRef": "own", "completions": 3})).await?;
    let job = env.wait_job("first", PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    assert_eq!(job.status.expect("status").phase, JobPhase::Succeeded);

    // A pool naming a Secret that does not exist yet says so, and waits.
    env.create_pool(
        "named",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", "cat >/dev/null"], "brokerSecretRef": {"name": "rabbit-creds", "key": "uri"}},
            "replicas": 1,
        }),
    )
    .await?;
    let pools: Api<WorkerPool> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let missing = loop {
        let condition = ready(&pools.get("named").await?);
        if let Some(c) = condition.as_ref().filter(|c| c.1 == "SecretNotFound") {
            break c.clone();
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no SecretNotFound condition: {condition:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(missing.0, "False");
    assert_eq!(missing.2, format!("Secret \"rabbit-creds\" (spec.workers.brokerSecretRef) not found in namespace \"{}\"", env.namespace));
    env.create_job("second", serde_json::json!({"poolRef": "named", "completions": 2})).await?;

    // Once it exists the pool becomes Ready and its Job runs.
    let secret = Secret {
        metadata: ObjectMeta { name: Some("rabbit-creds".into()), ..ObjectMeta::default() },
        data: Some(BTreeMap::from([("uri".to_string(), ByteString(env.amqp_url().as_bytes().to_vec()))])),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    env.wait_pool_ready("named", PATIENCE).await?;
    let selector = url_env(&env, "named").await?.value_from.and_then(|f| f.secret_key_ref).expect("secretKeyRef");
    assert_eq!((selector.name.as_str(), selector.key.as_str()), ("rabbit-creds", "uri"));
    let job = env.wait_job("second", PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    assert_eq!(job.status.expect("status").phase, JobPhase::Succeeded);
    env.cleanup().await
}

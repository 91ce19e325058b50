//! `warren local up`, as a newcomer runs it: start it, `kubectl apply -f examples/`, watch the
//! Jobs succeed; and the message when RabbitMQ is not there.

use std::process::Stdio;
use std::time::{Duration, Instant};

use warren_e2e::{amqp_url, bin_dir, free_port, kubectl};

#[test]
fn local_up_runs_the_examples_to_completion() -> anyhow::Result<()> {
    let state = std::env::temp_dir().join(format!("warren-local-up-{:08x}", rand::random::<u32>()));
    let port = free_port().to_string();
    let metrics = format!("127.0.0.1:{}", free_port());
    let reports_queue = format!("warren.reports.local-up-{:08x}", rand::random::<u32>());
    let mut child = std::process::Command::new(bin_dir().join("warren"))
        .args(["local", "up", "--port", &port, "--metrics-addr", &metrics, "--state-dir"])
        .arg(&state)
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_REPORTS_QUEUE", &reports_queue)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let kubeconfig = state.join("kubeconfig");
    let result = (|| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !kubeconfig.is_file() {
            anyhow::ensure!(Instant::now() < deadline, "warren local up wrote no kubeconfig within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The CRDs are installed before the banner is printed; wait for them to be served.
        let deadline = Instant::now() + Duration::from_secs(60);
        while kubectl(&kubeconfig, &["get", "wjob"], None).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the Warren CRDs were not served within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let applied = kubectl(&kubeconfig, &["apply", "-f", examples], None)?;
        assert!(applied.contains("workerpool.warren.dev/thumbnails created"), "{applied}");
        assert!(applied.contains("job.warren.dev/nightly-thumbnails created"), "{applied}");
        assert!(applied.contains("schedule.warren.dev/nightly-report created"), "{applied}");

        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            // The Jobs of examples/02-jobs.yaml (not the Workflows' step Jobs, nor the runs of
            // examples/04-schedule.yaml, should a slot come during the test).
            let selector = "!warren.dev/workflow,!warren.dev/schedule";
            let phases = kubectl(&kubeconfig, &["get", "wjob", "-l", selector, "-o", "jsonpath={.items[*].status.phase}"], None)?;
            if phases.split_whitespace().filter(|p| *p == "Succeeded").count() == 3 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the example Jobs did not all succeed: {phases:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        let table = kubectl(&kubeconfig, &["get", "wjob", "nightly-thumbnails"], None)?;
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "POOL", "PRIORITY", "PHASE", "DONE", "RETRIES", "WAITING", "AGE"], "{table}");
        assert!(table.contains("Succeeded") && table.contains("200/200"), "{table}");
        // examples/03-workflow.yaml: order-1001 runs to the end; order-1002 waits at its review.
        assert!(applied.contains("workflow.warren.dev/order-1001 created"), "{applied}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let phase = kubectl(&kubeconfig, &["get", "wf", "order-1001", "-o", "jsonpath={.status.phase}"], None)?;
            let review = kubectl(&kubeconfig, &["get", "wf", "order-1002", "-o", "jsonpath={.status.steps.review.phase}"], None)?;
            if phase == "Succeeded" && review == "Waiting" {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "order-1001 is {phase:?}, order-1002's review {review:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        let table = kubectl(&kubeconfig, &["get", "wf", "order-1001"], None)?;
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "PHASE", "PROGRESS", "AGE"], "{table}");
        assert!(table.contains("Succeeded") && table.contains("3/3"), "{table}");
        kubectl(&kubeconfig, &["annotate", "wf", "order-1002", "warren.dev/approve-review=true"], None)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while kubectl(&kubeconfig, &["get", "wf", "order-1002", "-o", "jsonpath={.status.phase}"], None)? != "Succeeded" {
            anyhow::ensure!(Instant::now() < deadline, "order-1002 did not succeed after its approval");
            std::thread::sleep(Duration::from_millis(500));
        }
        let pool = kubectl(&kubeconfig, &["get", "wp", "thumbnails"], None)?;
        assert!(pool.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("True")), "{pool}");
        let header: Vec<&str> = pool.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "READY", "REPLICAS", "DESIRED", "BACKLOG", "INFLIGHT", "QUEUE", "AGE"], "{pool}");
        // The example pool autoscales: it started at zero and the Jobs scaled it up.
        let reason = kubectl(&kubeconfig, &["get", "wp", "thumbnails", "-o", "jsonpath={.status.autoscaling.lastScaleReason}"], None)?;
        assert!(!reason.trim().is_empty(), "the example pool never scaled");
        // The example pool has deletionPolicy: Delete: deleting it removes its queues.
        kubectl(&kubeconfig, &["delete", "-f", examples, "--wait=true"], None)?;
        Ok(())
    })();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    let mut banner = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().expect("stdout"), &mut banner)?;
    let _ = std::fs::remove_dir_all(&state);
    tokio::runtime::Runtime::new()?.block_on(async {
        warren_e2e::delete_queue(&reports_queue).await?;
        warren_e2e::delete_exchange(&warren_protocol::names::control_exchange(&reports_queue)).await
    })?;
    result?;
    assert!(banner.contains("kubeconfig:") && banner.contains("kubectl apply -f examples/"), "{banner}");
    assert!(status.success(), "warren local up exited with {status} after Ctrl-C");
    Ok(())
}

#[test]
fn local_up_explains_how_to_start_rabbitmq_when_it_is_missing() -> anyhow::Result<()> {
    let out = std::process::Command::new(bin_dir().join("warren"))
        .args(["local", "up", "--port", &free_port().to_string(), "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .arg("--state-dir")
        .arg(std::env::temp_dir().join("warren-local-up-no-broker"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:1/%2f"), "{stderr}");
    assert!(stderr.contains("apt-get install -y rabbitmq-server && rabbitmq-server -detached"), "{stderr}");
    Ok(())
}

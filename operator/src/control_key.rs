//! The operator's control-message signing key ([`warren_protocol::control_signature`]): an
//! Ed25519 key pair in the Secret [`SECRET_NAME`] of the operator's own namespace, created by
//! the first operator that finds none, read by every later one (a restart, a standby taking
//! over), so the workers' public key — in their Deployments — stays the same. Rotating it:
//! delete the Secret and restart the operator; the worker Deployments roll to the new public key.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use warren_protocol::control_signature::{Signer, generate};

/// The Secret holding the key pair.
pub const SECRET_NAME: &str = "warren-control-key";
/// Its data key: the PKCS#8 key pair.
pub const DATA_KEY: &str = "ed25519.pkcs8";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or creating Secret {namespace}/{SECRET_NAME}: {source}")]
    Kube { namespace: String, source: kube::Error },
    #[error("Secret {namespace}/{SECRET_NAME} holds no usable {DATA_KEY}: {problem} (delete it to have a new key made)")]
    Unusable { namespace: String, problem: String },
    #[error("{0}")]
    Generate(warren_protocol::control_signature::KeyError),
}

/// The signing key, from the Secret (made when missing). Retries API errors with backoff until
/// it succeeds: no control message goes out unsigned.
pub async fn load(client: &kube::Client, namespace: &str) -> Signer {
    let mut delay = Duration::from_millis(500);
    loop {
        match load_once(client, namespace).await {
            Ok(signer) => {
                tracing::info!(namespace, secret = SECRET_NAME, public_key = signer.public_key_hex(), "control messages are signed");
                return signer;
            }
            Err(error) => {
                tracing::error!(%error, "the control-message signing key is not available; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn load_once(client: &kube::Client, namespace: &str) -> Result<Signer, KeyError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_error = |source| KeyError::Kube { namespace: namespace.to_string(), source };
    let existing = match secrets.get_opt(SECRET_NAME).await.map_err(kube_error)? {
        Some(secret) => secret,
        None => {
            let pkcs8 = generate().map_err(KeyError::Generate)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(SECRET_NAME.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "warren".to_string())])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(pkcs8))])),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(created) => created,
                // Another operator made it first: use theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(SECRET_NAME).await.map_err(kube_error)?,
                Err(source) => return Err(kube_error(source)),
            }
        }
    };
    signer_of(&existing).map_err(|problem| KeyError::Unusable { namespace: namespace.to_string(), problem })
}

/// The key pair in the Secret.
fn signer_of(secret: &Secret) -> Result<Signer, String> {
    let pkcs8 = secret.data.as_ref().and_then(|d| d.get(DATA_KEY)).ok_or_else(|| format!("no {DATA_KEY}"))?;
    Signer::from_pkcs8(&pkcs8.0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_holds_a_usable_key_pair_or_says_what_is_wrong() {
        let secret = |data: Option<Vec<u8>>| Secret {
            data: data.map(|d| BTreeMap::from([(DATA_KEY.to_string(), ByteString(d))])),
            ..Default::default()
        };
        let pkcs8 = generate().unwrap();
        let signer = signer_of(&secret(Some(pkcs8.clone()))).unwrap();
        assert_eq!(signer.public_key_hex(), Signer::from_pkcs8(&pkcs8).unwrap().public_key_hex(), "the same key each time");
        assert_eq!(signer_of(&secret(None)).unwrap_err(), format!("no {DATA_KEY}"));
        assert!(signer_of(&secret(Some(b"garbage".to_vec()))).is_err());
    }
}

//! The pools' report keys ([`warren_protocol::signature`]): the pool controller keeps one per pool
//! in a Secret only that pool's workers mount; the report consumer verifies every report with the
//! key of the pool it claims to come from. A report another pool, namespace or process signed —
//! or did not sign — is dropped and counted (docs/security.md).
//!
//! API calls are bounded by pools, never by reports: a key is read once per pool (and again at
//! most every [`REREAD`] after a mismatch, for a key that was replaced); a pool that does not
//! exist is never looked up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use warren_protocol::signature::{KEY_BYTES, ReportKey, key_text, parse_key};

use crate::crd::WorkerPool;

/// Key of the report key in the pool's Secret.
pub const SECRET_KEY: &str = "key";
/// How soon a pool's key may be read again after a report failed to verify with it.
pub const REREAD: Duration = Duration::from_secs(30);
/// How long the pool controller trusts that a key it wrote or read is still there: an
/// autoscaled pool reconciles every few seconds, and its Secret need not be read each time.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Name of the Secret holding a pool's report key.
pub fn secret_name(pool: &str) -> String {
    format!("{pool}-warren-report-key")
}

/// The Secret with a pool's report key, owned by the pool (deleted with it). Pure.
pub fn secret(pool: &WorkerPool, key: &ReportKey) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&pool.name_any())),
            namespace: pool.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".to_string(), "warren".to_string()),
                (crate::controllers::worker_pool::plan::POOL_LABEL.to_string(), pool.name_any()),
            ])),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(SECRET_KEY.to_string(), ByteString(key_text(key.bytes()).into_bytes()))])),
        ..Secret::default()
    }
}

/// The key a Secret holds, if it holds a valid one.
pub fn key_of(secret: &Secret) -> Option<ReportKey> {
    let bytes = secret.data.as_ref()?.get(SECRET_KEY)?;
    parse_key(std::str::from_utf8(&bytes.0).ok()?).ok()
}

/// What the report consumer knows of a pool's key.
#[derive(Clone)]
struct Known {
    key: Option<ReportKey>,
    read_at: Instant,
}

/// The keys, by `namespace/pool`.
pub struct ReportKeys {
    client: kube::Client,
    known: Mutex<HashMap<String, Known>>,
}

impl ReportKeys {
    pub fn new(client: kube::Client) -> Self {
        Self { client, known: Mutex::default() }
    }

    fn remember(&self, namespace: &str, pool: &str, key: Option<ReportKey>) {
        let known = Known { key, read_at: Instant::now() };
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(format!("{namespace}/{pool}"), known);
    }

    /// For the pool controller, before the pool's workers exist: the pool's key Secret exists
    /// (made with a fresh random key when missing or unreadable; an existing key is kept, never
    /// rotated here) and its key is known. Read at most every [`RECHECK`] per pool.
    pub async fn ensure(&self, pool: &WorkerPool) -> Result<(), kube::Error> {
        let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
        let known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&format!("{namespace}/{name}")).cloned();
        if known.is_some_and(|k| k.key.is_some() && k.read_at.elapsed() < RECHECK) {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let secret_name = secret_name(&name);
        let existing = api.get_opt(&secret_name).await?;
        let key = match existing.as_ref().and_then(key_of) {
            Some(key) => key,
            None => {
                let key = ReportKey::new(rand::random::<[u8; KEY_BYTES]>().to_vec());
                let wanted = secret(pool, &key);
                match existing {
                    // There, but without a valid key (edited by hand): a new key in it.
                    Some(_) => {
                        api.patch(&secret_name, &PatchParams::default(), &Patch::Merge(&wanted)).await?;
                        key
                    }
                    None => match api.create(&PostParams::default(), &wanted).await {
                        Ok(_) => key,
                        // Another reconcile made it first: use that one.
                        Err(kube::Error::Api(status)) if status.code == 409 => {
                            api.get(&secret_name).await.ok().as_ref().and_then(key_of).unwrap_or(key)
                        }
                        Err(error) => return Err(error),
                    },
                }
            }
        };
        self.remember(&namespace, &name, Some(key));
        Ok(())
    }

    /// For the report consumer: the key of pool `namespace/pool`, which `exists` says is a pool
    /// the operator knows. Read from the API once when not known yet (an operator that just
    /// started), and again after `stale` when the caller's report failed to verify with it.
    pub async fn get(&self, namespace: &str, pool: &str, exists: bool, stale: bool) -> Result<Option<ReportKey>, kube::Error> {
        if !exists {
            return Ok(None);
        }
        let known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&format!("{namespace}/{pool}")).cloned();
        match known {
            Some(k) if !stale || k.read_at.elapsed() < REREAD => Ok(k.key),
            _ => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let key = api.get_opt(&secret_name(pool)).await?.as_ref().and_then(key_of);
                self.remember(namespace, pool, key.clone());
                Ok(key)
            }
        }
    }

    /// Forgets pools that no longer exist.
    pub fn retain(&self, pools: &HashSet<String>) {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|k, _| pools.contains(k));
    }
}

/// Whether a report may be applied, by who signed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum SignaturePolicy {
    /// Only reports signed with their pool's key (the default).
    #[default]
    Required,
    /// Unsigned reports are applied too (a wrongly signed one never is): for an upgrade from
    /// workers that do not sign yet.
    Optional,
}

/// Why a report was not applied, by its signature (the `reason` of
/// `warren_operator_reports_rejected_total`).
pub mod rejection {
    /// The pool the report claims to come from does not exist.
    pub const UNKNOWN_POOL: &str = "unknown_pool";
    /// The report carries no signature (and signatures are required).
    pub const UNSIGNED: &str = "unsigned";
    /// The signature is not the pool's: another pool's key, a forgery, or a pool without a key.
    pub const BAD_SIGNATURE: &str = "bad_signature";
}

/// Decides whether a report of a pool may be applied. Pure.
pub fn admit(
    pool_exists: bool,
    key: Option<&ReportKey>,
    body: &[u8],
    signature: Option<&str>,
    policy: SignaturePolicy,
) -> Result<(), &'static str> {
    if !pool_exists {
        return Err(rejection::UNKNOWN_POOL);
    }
    match (signature, key) {
        (None, _) if policy == SignaturePolicy::Optional => Ok(()),
        (None, _) => Err(rejection::UNSIGNED),
        (Some(signature), Some(key)) if warren_protocol::signature::verify(key.bytes(), body, signature) => Ok(()),
        (Some(_), _) => Err(rejection::BAD_SIGNATURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::signature::sign;

    #[test]
    fn only_a_report_signed_with_its_pools_key_is_applied() {
        let key = ReportKey::new(vec![1; KEY_BYTES]);
        let other = ReportKey::new(vec![2; KEY_BYTES]);
        let good = sign(key.bytes(), b"r");
        let forged = sign(other.bytes(), b"r");
        use SignaturePolicy::{Optional, Required};
        let cases: [(bool, Option<&ReportKey>, Option<&str>, SignaturePolicy, Result<(), &str>); 9] = [
            (true, Some(&key), Some(&good), Required, Ok(())),
            (true, Some(&key), Some(&forged), Required, Err(rejection::BAD_SIGNATURE)),
            (true, Some(&key), Some(&forged), Optional, Err(rejection::BAD_SIGNATURE)),
            (true, Some(&key), None, Required, Err(rejection::UNSIGNED)),
            (true, Some(&key), None, Optional, Ok(())),
            (true, None, Some(&good), Required, Err(rejection::BAD_SIGNATURE)),
            (true, Some(&key), Some("v1=garbage"), Required, Err(rejection::BAD_SIGNATURE)),
            (false, Some(&key), Some(&good), Required, Err(rejection::UNKNOWN_POOL)),
            (false, None, None, Optional, Err(rejection::UNKNOWN_POOL)),
        ];
        for (exists, key, signature, policy, expected) in cases {
            assert_eq!(admit(exists, key, b"r", signature, policy), expected, "{exists} {signature:?} {policy:?}");
        }
    }
}

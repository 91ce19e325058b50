//! Report signatures: a worker signs each report message with its pool's key (HMAC-SHA256 of the
//! body), and the operator applies a report only when the signature is the pool's. The key is in
//! a Secret the operator writes per pool and only that pool's workers mount, so a worker of
//! another pool or namespace — or anything else that can publish to the reports queue — cannot
//! speak for a pool it is not (docs/security.md).
//!
//! Header [`crate::headers::REPORT_SIGNATURE`], value `v1=<64 hex digits>`; `v1` names the scheme
//! so that a later one can be told apart.
//!
//! The same key signs the pool's **tasks** ([`sign_task`], header
//! [`crate::headers::TASK_SIGNATURE`]): the operator when it publishes, replays or re-enqueues
//! one, the pool's workers when they schedule a retry. A worker runs only a task its pool's key
//! signed, so a task another namespace's worker put into this pool's queue (the default exchange
//! lets any publisher reach any queue of the vhost) never runs here. A task's MAC covers a
//! context string before the body, so that no signed report is ever a signed task or the other way
//! round.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a pool's report key.
pub const KEY_BYTES: usize = 32;
const SCHEME: &str = "v1=";

/// Reports are MACed as they are (the scheme predates task signatures); tasks after a context
/// string (domain separation).
const REPORT_CONTEXT: &[u8] = b"";
/// What a task's MAC covers before its body.
const TASK_CONTEXT: &[u8] = b"warren-task/v1\n";

fn mac(key: &[u8], context: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(context);
    mac.update(body);
    mac
}

fn header_of(mac: Hmac<Sha256>) -> String {
    format!("{SCHEME}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is `mac`'s tag (compared in constant time). Anything else — another scheme,
/// bad hex, a wrong length, another key or body — is false.
fn matches(mac: Hmac<Sha256>, header: &str) -> bool {
    let Some(tag) = header.strip_prefix(SCHEME).and_then(|hex_tag| hex::decode(hex_tag).ok()) else { return false };
    mac.verify_slice(&tag).is_ok()
}

/// The report signature header's value for `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    header_of(mac(key, REPORT_CONTEXT, body))
}

/// Whether `header` is report `body`'s signature under `key`.
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    matches(mac(key, REPORT_CONTEXT, body), header)
}

/// The task signature header's value for task message `body` under the pool's `key`.
pub fn sign_task(key: &[u8], body: &[u8]) -> String {
    header_of(mac(key, TASK_CONTEXT, body))
}

/// Whether `header` is task `body`'s signature under `key`.
pub fn verify_task(key: &[u8], body: &[u8], header: &str) -> bool {
    matches(mac(key, TASK_CONTEXT, body), header)
}

/// A pool's report key. Never printed: its `Debug` says only that there is one.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportKey(Vec<u8>);

impl ReportKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportKey(***)")
    }
}

/// A key from its text form in the pool's Secret and the worker's environment (hex).
pub fn parse_key(text: &str) -> Result<ReportKey, String> {
    let key = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    if key.len() < KEY_BYTES {
        return Err(format!("{} bytes; a report key has {KEY_BYTES}", key.len()));
    }
    Ok(ReportKey(key))
}

/// The text form of a key.
pub fn key_text(key: &[u8]) -> String {
    hex::encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_body() {
        let (key, other) = ([7u8; KEY_BYTES], [8u8; KEY_BYTES]);
        let signature = sign(&key, b"report");
        assert!(signature.starts_with("v1=") && signature.len() == 3 + 64, "{signature}");
        assert!(verify(&key, b"report", &signature));
        assert!(!verify(&other, b"report", &signature), "another pool's key");
        assert!(!verify(&key, b"report!", &signature), "another body");
        for bad in ["", "v1=", "v2=00", "v1=zz", &signature[..40], &signature.replace("v1=", "v0=")] {
            assert!(!verify(&key, b"report", bad), "{bad:?}");
        }
    }

    #[test]
    fn a_task_signature_is_never_a_report_signature() {
        let key = [7u8; KEY_BYTES];
        let task = sign_task(&key, b"body");
        assert!(verify_task(&key, b"body", &task));
        assert!(!verify_task(&[8u8; KEY_BYTES], b"body", &task), "another pool's key");
        assert!(!verify_task(&key, b"body2", &task), "another body");
        assert!(!verify(&key, b"body", &task), "a task signature does not sign a report");
        assert!(!verify_task(&key, b"body", &sign(&key, b"body")), "a report signature does not sign a task");
    }

    #[test]
    fn keys_are_hex_of_at_least_32_bytes() {
        let key = [0xabu8; KEY_BYTES];
        assert_eq!(parse_key(&format!(" {}\n", key_text(&key))), Ok(ReportKey::new(key.to_vec())));
        assert_eq!(format!("{:?}", ReportKey::new(key.to_vec())), "ReportKey(***)", "never printed");
        assert!(parse_key("abcd").unwrap_err().contains("2 bytes"));
        assert!(parse_key("not hex").unwrap_err().starts_with("not hex"));
    }
}

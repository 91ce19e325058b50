//! Report signatures: a worker signs each report message with its pool's key (HMAC-SHA256 of the
//! body), and the operator applies a report only when the signature is the pool's. The key is in
//! a Secret the operator writes per pool and only that pool's workers mount, so a worker of
//! another pool or namespace — or anything else that can publish to the reports queue — cannot
//! speak for a pool it is not (docs/security.md).
//!
//! Header [`crate::headers::REPORT_SIGNATURE`], value `v1=<64 hex digits>`; `v1` names the scheme
//! so that a later one can be told apart.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a pool's report key.
pub const KEY_BYTES: usize = 32;
const SCHEME: &str = "v1=";

/// The signature header's value for `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("{SCHEME}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is `body`'s signature under `key` (compared in constant time). Anything
/// else — another scheme, bad hex, a wrong length, another key — is false.
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header.strip_prefix(SCHEME).and_then(|hex_tag| hex::decode(hex_tag).ok()) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
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
    fn keys_are_hex_of_at_least_32_bytes() {
        let key = [0xabu8; KEY_BYTES];
        assert_eq!(parse_key(&format!(" {}\n", key_text(&key))), Ok(ReportKey::new(key.to_vec())));
        assert_eq!(format!("{:?}", ReportKey::new(key.to_vec())), "ReportKey(***)", "never printed");
        assert!(parse_key("abcd").unwrap_err().contains("2 bytes"));
        assert!(parse_key("not hex").unwrap_err().starts_with("not hex"));
    }
}

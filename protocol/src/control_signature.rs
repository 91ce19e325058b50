//! Control-message signatures: the operator signs each control message (cancelled Jobs, paused
//! pools) with its Ed25519 key, and a worker given the matching public key applies only messages
//! signed by it. A control message reaches every worker of the installation, and a forged one
//! could cancel other tenants' Jobs or pause their pools — with a far-future `sentAtMs`, for as
//! long as the worker runs, since older messages are ignored. HMAC would not do: every worker
//! would hold the key that forges. Asymmetric keys let every worker check what only the operator
//! can sign (docs/security.md).
//!
//! Header [`crate::headers::CONTROL_SIGNATURE`], value `ed25519=<128 hex digits>` over the body.
//! The key pair is PKCS#8 (what `ring` generates); the public key travels as 64 hex digits.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

const SCHEME: &str = "ed25519=";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 PKCS#8 key pair")]
    BadKeyPair,
    #[error("not an Ed25519 public key (64 hex digits)")]
    BadPublicKey,
    #[error("generating a key pair failed")]
    Generate,
}

/// A new key pair, PKCS#8 (to store in a Secret).
pub fn generate() -> Result<Vec<u8>, KeyError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map(|doc| doc.as_ref().to_vec()).map_err(|_| KeyError::Generate)
}

/// The operator's signing key. Never printed: its `Debug` shows the public key only.
pub struct Signer(Ed25519KeyPair);

impl Signer {
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8).map(Self).map_err(|_| KeyError::BadKeyPair)
    }

    /// The public key, hex: what workers are given to verify with.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.public_key().as_ref())
    }

    /// The signature header's value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        format!("{SCHEME}{}", hex::encode(self.0.sign(body).as_ref()))
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(public {})", self.public_key_hex())
    }
}

/// A worker's check of control messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier(Vec<u8>);

impl Verifier {
    pub fn from_hex(public_key: &str) -> Result<Self, KeyError> {
        match hex::decode(public_key.trim()) {
            Ok(bytes) if bytes.len() == 32 => Ok(Self(bytes)),
            _ => Err(KeyError::BadPublicKey),
        }
    }

    /// Whether `header` is the operator's signature of `body`. Anything else — no header,
    /// another scheme, bad hex, another key, another body — is false.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> bool {
        let Some(signature) = header.and_then(|h| h.strip_prefix(SCHEME)).and_then(|h| hex::decode(h).ok()) else { return false };
        UnparsedPublicKey::new(&ED25519, &self.0).verify(body, &signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_operators_key_signs_what_a_worker_accepts() {
        let signer = Signer::from_pkcs8(&generate().unwrap()).unwrap();
        let verifier = Verifier::from_hex(&signer.public_key_hex()).unwrap();
        let signature = signer.sign(b"control");
        assert!(signature.starts_with(SCHEME) && signature.len() == SCHEME.len() + 128, "{signature}");
        assert!(verifier.verify(b"control", Some(&signature)));
        assert!(!verifier.verify(b"control!", Some(&signature)), "another body");
        let other = Signer::from_pkcs8(&generate().unwrap()).unwrap();
        assert!(!verifier.verify(b"control", Some(&other.sign(b"control"))), "another key");
        for bad in [None, Some(""), Some("ed25519="), Some("v1=00"), Some(&signature[..60])] {
            assert!(!verifier.verify(b"control", bad), "{bad:?}");
        }
        assert!(!format!("{signer:?}").contains("pkcs8"), "the Debug shows the public key only");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Signer::from_pkcs8(b"not a key").is_err());
        assert!(Verifier::from_hex("abcd").is_err());
        assert!(Verifier::from_hex(&"zz".repeat(32)).is_err());
        assert!(Verifier::from_hex(&"00".repeat(32)).is_ok());
    }
}

//! The AMQP helpers the operator, the workers and the CLI share (feature `amqp`): connecting over
//! a list of broker addresses (with the broker TLS settings, [`Tls`]), and publishing a
//! persistent message the broker must confirm and route.

use std::path::{Path, PathBuf};

use lapin::options::BasicPublishOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig, RustlsConnectorConfig};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::addresses::{HANDSHAKE_TIMEOUT, order, redact};
use crate::worker_env;

/// One pass over `addresses` from index `start` (wrapping): the first that completes its
/// handshake within [`HANDSHAKE_TIMEOUT`], with the index it was at; else the last error. A
/// failed or slow address is logged (its password redacted) and the next one is tried. An
/// `amqps://` address uses `tls` (its files are read once per pass); an `amqp://` one is plain TCP.
pub async fn connect_any(addresses: &[String], start: usize, name: &str, tls: &Tls) -> Result<(Connection, usize), lapin::Error> {
    let tls_config = tls_for(addresses, tls)?;
    let mut last = None;
    for index in order(addresses.len(), start) {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let address = redact(&addresses[index]);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_one(&addresses[index], props, tls_config.as_ref())).await {
            Ok(Ok(connection)) => {
                tracing::info!(%address, "connected to the broker");
                return Ok((connection, index));
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, %address, "connecting to this broker address failed");
                last = Some(error);
            }
            Err(_) => {
                tracing::warn!(%address, timeout = ?HANDSHAKE_TIMEOUT, "connecting to this broker address timed out");
                last = Some(closed());
            }
        }
    }
    Err(last.unwrap_or_else(closed))
}

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed))
}

/// The TLS configuration of one pass: none when no address is `amqps://` or nothing is set
/// (lapin then trusts the system's roots only).
fn tls_for(addresses: &[String], tls: &Tls) -> Result<Option<OwnedTLSConfig>, lapin::Error> {
    if tls.is_empty() || !addresses.iter().any(|a| is_tls(a)) {
        return Ok(None);
    }
    // Checked at start, so this fails only when a file changed since (a Secret being updated):
    // the pass fails and the caller's backoff retries it.
    tls.load().map(Some).map_err(|error| {
        tracing::warn!(%error, "reading the broker TLS files failed");
        lapin::Error::from(std::io::Error::other(error.to_string()))
    })
}

fn is_tls(address: &str) -> bool {
    address.starts_with("amqps://")
}

async fn connect_one(address: &str, props: ConnectionProperties, tls: Option<&OwnedTLSConfig>) -> Result<Connection, lapin::Error> {
    let result = match tls {
        Some(config) if is_tls(address) => {
            Connection::connect_with_config(address, props, config.clone(), lapin::runtime::default_runtime()?).await
        }
        _ => Connection::connect(address, props).await,
    };
    let with_identity = tls.is_some_and(|c| c.identity.is_some());
    result.map_err(|error| if is_tls(address) { explain_tls(error, with_identity) } else { error })
}

/// rustls says `invalid peer certificate: UnknownIssuer`; say what to do about it.
/// `with_identity`: a client certificate was presented.
fn explain_tls(error: lapin::Error, with_identity: bool) -> lapin::Error {
    let text = match error.kind() {
        lapin::ErrorKind::IOError(io) => io.to_string(),
        _ => error.to_string(),
    };
    let hint = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        format!(
            "the broker's TLS certificate is not signed by a trusted CA: give its CA certificate in {}, the operator's --amqp-ca-file",
            worker_env::AMQP_CA_FILE
        )
    } else if text.contains("NotValidForName") {
        "the broker's TLS certificate is not valid for the host name of the address".to_string()
    } else if text.contains("CertificateRequired") {
        format!(
            "the broker requires a client certificate (mutual TLS): give it in {} and {}",
            worker_env::AMQP_CLIENT_CERT_FILE,
            worker_env::AMQP_CLIENT_KEY_FILE
        )
    } else if !with_identity && text.contains("reset by peer") {
        // With TLS 1.3 the broker's alert may be lost to the reset of the connection.
        format!(
            "if the broker requires a client certificate (mutual TLS), give it in {} and {}",
            worker_env::AMQP_CLIENT_CERT_FILE,
            worker_env::AMQP_CLIENT_KEY_FILE
        )
    } else {
        return error;
    };
    lapin::Error::from(std::io::Error::other(format!("{text} ({hint})")))
}

/// Broker TLS, for `amqps://` addresses: the system's trust store is always trusted, `ca_file`
/// adds a private CA, and a client certificate with its key (both or neither) makes it mutual
/// TLS. An `amqp://` address is plain TCP whatever is set here.
///
/// These are paths, read at every connection pass, so that a renewed certificate (a Secret
/// the kubelet updated in place) is used from the next connection on; [`Tls::check`] reads and
/// validates them once at start, so that a bad file stops the process with its name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM CA certificates trusted besides the system's ([`worker_env::AMQP_CA_FILE`]).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, its chain after it ([`worker_env::AMQP_CLIENT_CERT_FILE`]).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate ([`worker_env::AMQP_CLIENT_KEY_FILE`]).
    pub client_key_file: Option<PathBuf>,
}

/// A broker TLS setting that cannot be used; `setting` is its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}={path:?}: {problem}")]
    File { setting: &'static str, path: String, problem: String },
    #[error("{given} is set but {missing} is not: a client certificate needs its key, and a key its certificate")]
    HalfIdentity { given: &'static str, missing: &'static str },
}

impl TlsError {
    /// The environment variable of the setting at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            TlsError::File { setting, .. } => setting,
            TlsError::HalfIdentity { given, .. } => given,
        }
    }
}

impl Tls {
    /// The settings from three optional paths (empty = unset); a certificate without its key (or
    /// a key without its certificate) is refused.
    pub fn new(ca_file: Option<PathBuf>, client_cert_file: Option<PathBuf>, client_key_file: Option<PathBuf>) -> Result<Tls, TlsError> {
        let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls = Tls { ca_file: set(ca_file), client_cert_file: set(client_cert_file), client_key_file: set(client_key_file) };
        match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(_), None) => {
                Err(TlsError::HalfIdentity { given: worker_env::AMQP_CLIENT_CERT_FILE, missing: worker_env::AMQP_CLIENT_KEY_FILE })
            }
            (None, Some(_)) => {
                Err(TlsError::HalfIdentity { given: worker_env::AMQP_CLIENT_KEY_FILE, missing: worker_env::AMQP_CLIENT_CERT_FILE })
            }
            _ => Ok(tls),
        }
    }

    /// The settings from the environment variables of [`worker_env`] (`env` looks one up).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Tls, TlsError> {
        let path = |name: &str| env(name).map(|v| PathBuf::from(v.trim()));
        Tls::new(path(worker_env::AMQP_CA_FILE), path(worker_env::AMQP_CLIENT_CERT_FILE), path(worker_env::AMQP_CLIENT_KEY_FILE))
    }

    /// Nothing set: lapin's defaults (the system's roots, no client certificate).
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none()
    }

    /// Whether a client certificate is set (mutual TLS).
    pub fn has_client_certificate(&self) -> bool {
        self.client_cert_file.is_some()
    }

    /// Reads the files into lapin's TLS configuration, checking that each holds what it should.
    pub fn load(&self) -> Result<OwnedTLSConfig, TlsError> {
        let cert_chain = match &self.ca_file {
            Some(path) => {
                let pem = read(worker_env::AMQP_CA_FILE, path)?;
                certificates(worker_env::AMQP_CA_FILE, path, &pem)?;
                Some(String::from_utf8(pem).map_err(|_| file_error(worker_env::AMQP_CA_FILE, path, "is not a PEM text file"))?)
            }
            None => None,
        };
        let identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let pem = read(worker_env::AMQP_CLIENT_CERT_FILE, cert)?;
                certificates(worker_env::AMQP_CLIENT_CERT_FILE, cert, &pem)?;
                let key_pem = read(worker_env::AMQP_CLIENT_KEY_FILE, key)?;
                private_key(key, &key_pem)?;
                Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
            }
            _ => None,
        };
        Ok(OwnedTLSConfig { identity, cert_chain })
    }

    /// Reads the files and builds the TLS client a connection would build from them: a CA that
    /// rustls cannot use, or a key that does not belong to the certificate, is an error now,
    /// naming the file, rather than a failed handshake at every reconnect.
    pub fn check(&self) -> Result<(), TlsError> {
        if self.is_empty() {
            return Ok(());
        }
        let config = self.load()?;
        let mut connector = RustlsConnectorConfig::new_with_platform_verifier();
        if let (Some(pem), Some(path)) = (&config.cert_chain, &self.ca_file) {
            connector.add_parsable_certificates(certificates(worker_env::AMQP_CA_FILE, path, pem.as_bytes())?);
        }
        let ca_problem = |e: std::io::Error| match &self.ca_file {
            Some(path) => file_error(worker_env::AMQP_CA_FILE, path, &format!("cannot be used as a trust root: {e}")),
            None => {
                TlsError::File { setting: worker_env::AMQP_CA_FILE, path: String::new(), problem: format!("the system trust store: {e}") }
            }
        };
        let without_identity = connector.clone();
        without_identity.connector_with_no_client_auth().map_err(ca_problem)?;
        if let (Some(OwnedIdentity::PKCS8 { pem, key }), Some(cert_path), Some(key_path)) =
            (&config.identity, &self.client_cert_file, &self.client_key_file)
        {
            let certs = certificates(worker_env::AMQP_CLIENT_CERT_FILE, cert_path, pem)?;
            let key = private_key(key_path, key)?;
            connector.connector_with_single_cert(certs, key).map_err(|e| {
                file_error(
                    worker_env::AMQP_CLIENT_KEY_FILE,
                    key_path,
                    &format!("does not go with the certificate in {}: {e}", cert_path.display()),
                )
            })?;
        }
        Ok(())
    }
}

fn file_error(setting: &'static str, path: &Path, problem: &str) -> TlsError {
    TlsError::File { setting, path: path.display().to_string(), problem: problem.to_string() }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(setting, path, &format!("cannot be read: {e}")))
}

/// The PEM certificates in a file; at least one.
fn certificates(setting: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, &format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        file_error(
            worker_env::AMQP_CLIENT_KEY_FILE,
            path,
            &format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1, not encrypted): {e}"),
        )
    })
}

/// Why a confirmed publish did not make it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("message to exchange {exchange:?} with routing key {routing_key:?} was unroutable")]
    Unroutable { exchange: String, routing_key: String },
    #[error("broker refused (nacked) the message")]
    Nacked,
    #[error("not connected to the broker")]
    NotConnected,
}

impl PublishError {
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::Broker(_) => "BrokerError",
            PublishError::Unroutable { .. } => "Unroutable",
            PublishError::Nacked => "Nacked",
            PublishError::NotConnected => "NotConnected",
        }
    }
}

/// Publishes a persistent, mandatory message and waits for the broker's confirmation.
/// The channel must be in confirm mode.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    publish(channel, exchange, routing_key, body, properties).await?.await
}

/// Publishes a persistent, mandatory message; the returned future completes with the broker's
/// confirmation (acked and routed), so a caller may publish more meanwhile.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static, PublishError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            body,
            properties.with_delivery_mode(2),
        )
        .await?;
    let (exchange, routing_key) = (exchange.to_string(), routing_key.to_string());
    Ok(async move {
        let confirm = confirm.await?;
        if !confirm.is_ack() {
            return Err(PublishError::Nacked);
        }
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable { exchange, routing_key });
        }
        Ok(())
    })
}

/// Puts the signature of task message `body` under the pool's `key` into `headers` (header
/// [`crate::headers::TASK_SIGNATURE`], [`crate::signature::sign_task`]): every publisher of a
/// task — the operator's publish, re-enqueue and replay, a worker's retry — signs it this way.
pub fn sign_task_into(headers: &mut lapin::types::FieldTable, key: &[u8], body: &[u8]) {
    let signature = crate::signature::sign_task(key, body);
    headers.insert(crate::headers::TASK_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signature.into()));
}

/// A message's header `name` as text (a long or short string), if it has one: how the
/// signature headers (`headers::REPORT_SIGNATURE`, `headers::CONTROL_SIGNATURE`,
/// `headers::TASK_SIGNATURE`) are read.
pub fn text_header(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> Option<PathBuf> {
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls").join(name))
    }

    fn scratch(name: &str, contents: &str) -> Option<PathBuf> {
        let dir = std::env::temp_dir().join(format!("warren-protocol-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        Some(path)
    }

    #[test]
    fn settings_come_from_the_environment_and_a_certificate_needs_its_key() {
        let env =
            |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(Tls::from_env(env(&[])).unwrap(), Tls::default());
        assert!(Tls::from_env(env(&[])).unwrap().is_empty());
        let tls = Tls::from_env(env(&[
            ("WARREN_AMQP_CA_FILE", "/etc/warren/broker-tls/ca.crt"),
            ("WARREN_AMQP_CLIENT_CERT_FILE", " /etc/warren/broker-tls/tls.crt "),
            ("WARREN_AMQP_CLIENT_KEY_FILE", "/etc/warren/broker-tls/tls.key"),
        ]))
        .unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/warren/broker-tls/ca.crt")));
        assert_eq!(tls.client_cert_file.as_deref(), Some(Path::new("/etc/warren/broker-tls/tls.crt")));
        assert!(tls.has_client_certificate() && !tls.is_empty());
        let only_ca = Tls::from_env(env(&[("WARREN_AMQP_CA_FILE", "/ca.crt"), ("WARREN_AMQP_CLIENT_KEY_FILE", "")])).unwrap();
        assert!(!only_ca.has_client_certificate(), "an empty value is unset");
        let half = Tls::from_env(env(&[("WARREN_AMQP_CLIENT_CERT_FILE", "/tls.crt")])).unwrap_err();
        assert_eq!(half.setting(), "WARREN_AMQP_CLIENT_CERT_FILE");
        assert!(half.to_string().contains("WARREN_AMQP_CLIENT_KEY_FILE is not"), "{half}");
        let half = Tls::new(None, None, Some("/tls.key".into())).unwrap_err();
        assert_eq!(half.setting(), "WARREN_AMQP_CLIENT_KEY_FILE");
    }

    #[test]
    fn good_files_load_and_check() {
        let tls = Tls::new(testdata("ca.crt"), testdata("client.crt"), testdata("client.key")).unwrap();
        tls.check().unwrap();
        let config = tls.load().unwrap();
        assert!(config.cert_chain.as_deref().is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")));
        assert!(matches!(config.identity, Some(OwnedIdentity::PKCS8 { .. })));
        Tls::new(testdata("ca.crt"), None, None).unwrap().check().unwrap();
        assert_eq!(Tls::default().load().unwrap(), OwnedTLSConfig::default(), "nothing set: lapin's defaults");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_the_setting_and_the_file() {
        let not_pem = scratch("not-pem.crt", "hello\n");
        let key_as_ca = testdata("client.key");
        let cases: Vec<(Tls, &str, &str)> = vec![
            (
                Tls::new(Some("/nonexistent/ca.crt".into()), None, None).unwrap(),
                "WARREN_AMQP_CA_FILE=\"/nonexistent/ca.crt\"",
                "cannot be read",
            ),
            (Tls::new(not_pem.clone(), None, None).unwrap(), "WARREN_AMQP_CA_FILE=", "holds no PEM certificate"),
            (Tls::new(key_as_ca, None, None).unwrap(), "WARREN_AMQP_CA_FILE=", "holds no PEM certificate"),
            (Tls::new(None, not_pem.clone(), testdata("client.key")).unwrap(), "WARREN_AMQP_CLIENT_CERT_FILE=", "holds no PEM certificate"),
            (Tls::new(None, testdata("client.crt"), not_pem).unwrap(), "WARREN_AMQP_CLIENT_KEY_FILE=", "no usable PEM private key"),
            (
                Tls::new(None, testdata("client.crt"), testdata("other.key")).unwrap(),
                "WARREN_AMQP_CLIENT_KEY_FILE=",
                "does not go with the certificate",
            ),
        ];
        for (tls, names, problem) in cases {
            let err = tls.check().unwrap_err().to_string();
            assert!(err.starts_with(names) && err.contains(problem), "{tls:?}: {err}");
        }
    }

    #[test]
    fn a_refused_handshake_says_which_setting_to_give() {
        let refused = |text: &str| explain_tls(lapin::Error::from(std::io::Error::other(text.to_string())), false).to_string();
        let unknown = refused("invalid peer certificate: UnknownIssuer");
        assert!(unknown.contains("UnknownIssuer") && unknown.contains("WARREN_AMQP_CA_FILE"), "{unknown}");
        let mutual = refused("received fatal alert: CertificateRequired");
        assert!(mutual.contains("WARREN_AMQP_CLIENT_CERT_FILE"), "{mutual}");
        assert!(refused("invalid peer certificate: NotValidForName").contains("host name"));
        assert!(refused("Connection reset by peer (os error 104)").contains("if the broker requires a client certificate"));
        let reset = explain_tls(lapin::Error::from(std::io::Error::other("Connection reset by peer")), true).to_string();
        assert_eq!(reset, "IO error: Connection reset by peer", "a client certificate was given: nothing to add");
        assert_eq!(refused("Connection refused"), "IO error: Connection refused", "other errors as they are");
    }

    #[test]
    fn tls_is_used_only_for_amqps_addresses() {
        let tls = Tls::new(Some("/nonexistent/ca.crt".into()), None, None).unwrap();
        let plain = vec!["amqp://a:5672".to_string()];
        assert!(tls_for(&plain, &tls).unwrap().is_none(), "no file is read for a plain address");
        let secure = vec!["amqp://a:5672".to_string(), "amqps://b:5671".to_string()];
        assert!(tls_for(&secure, &tls).unwrap_err().to_string().contains("/nonexistent/ca.crt"));
        assert!(tls_for(&secure, &Tls::default()).unwrap().is_none(), "nothing set: lapin's defaults");
    }
}

//! One webhook request: resolve the host, check every address against the allow-list, connect
//! to a checked address (not to the name again: a DNS answer that changes between the check and
//! the connection — DNS rebinding — cannot redirect the request), TLS for `https://` with the
//! platform's trust store, one HTTP/1.1 POST, no redirects followed (a 3xx is a failure, so a
//! receiver cannot bounce the request to an internal address).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::allow::AllowList;
use super::plan::Outcome;

/// A parsed webhook URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// The host as written (no brackets for IPv6).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// `Host` header value.
    pub authority: String,
}

/// Parses an `http(s)://` URL. Pure.
pub fn target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must be http:// or https://".into()),
    };
    let authority = uri.authority().ok_or("the URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("the URL must not carry credentials".into());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    Ok(Target { https, host, port, path: if path.is_empty() { "/".into() } else { path }, authority: authority.as_str().to_string() })
}

/// Resolves and checks `target`: the address to connect to, or the refusal.
pub async fn resolve(target: &Target, allow: &AllowList) -> Result<SocketAddr, Outcome> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((target.host.as_str(), target.port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(Outcome::Failed(format!("resolving {}: {e}", target.host))),
            Err(_) => return Err(Outcome::Failed(format!("resolving {}: timed out", target.host))),
        },
    };
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    allow.check(&target.host, &ips).map_err(Outcome::Refused)?;
    Ok(addrs[0])
}

/// The TLS settings of `https://` webhooks: the platform's verifier (the same as the operator's
/// Kubernetes client), ring.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A request to send.
pub struct Request<'a> {
    pub target: &'a Target,
    pub addr: SocketAddr,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Sends `request` within `timeout`: `Delivered` on a 2xx, else `Failed` with what happened.
pub async fn post(request: Request<'_>, tls: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> Outcome {
    let addr = request.addr;
    match tokio::time::timeout(timeout, send(request, tls)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Outcome::Delivered,
        Ok(Ok(status)) => Outcome::Failed(format!("HTTP {status} from {addr}")),
        Ok(Err(error)) => Outcome::Failed(format!("{addr}: {error}")),
        Err(_) => Outcome::Failed(format!("{addr}: no answer within {}s", timeout.as_secs())),
    }
}

async fn send(request: Request<'_>, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(request.addr).await.map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if request.target.https {
        let config = tls.ok_or("https is not available: the TLS settings could not be built")?.clone();
        let name = rustls::pki_types::ServerName::try_from(request.target.host.clone()).map_err(|e| format!("TLS server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        exchange(hyper_util::rt::TokioIo::new(stream), request).await
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), request).await
    }
}

async fn exchange<IO>(io: IO, request: Request<'_>) -> Result<u16, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut builder = hyper::Request::post(request.target.path.as_str())
        .header(hyper::header::HOST, request.target.authority.as_str())
        .header(hyper::header::USER_AGENT, concat!("warren-operator/", env!("CARGO_PKG_VERSION")));
    for (name, value) in &request.headers {
        builder = builder.header(*name, value.as_str());
    }
    let http_request = builder.body(Full::new(Bytes::from(request.body))).map_err(|e| format!("building the request: {e}"))?;
    let result = sender.send_request(http_request).await.map_err(|e| format!("HTTP: {e}"));
    let status = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read (and drop) a small answer so the connection closes cleanly.
            let _ = tokio::time::timeout(Duration::from_secs(1), response.into_body().collect()).await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_what_is_connected_to() {
        let t = target("https://hooks.example.com/warren?x=1").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port, t.path.as_str()), (true, "hooks.example.com", 443, "/warren?x=1"));
        let t = target("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str(), t.authority.as_str()),
            (false, "127.0.0.1", 8080, "/", "127.0.0.1:8080")
        );
        let t = target("http://[::1]:9/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in ["ftp://h/x", "hooks.example.com/x", "http://user:pw@h/x", "http:///x"] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_ip_literal_is_checked_without_a_lookup_and_metadata_is_refused() {
        let allow = AllowList::default();
        let refused = resolve(&target("http://169.254.169.254/latest/meta-data").unwrap(), &allow).await.unwrap_err();
        assert!(matches!(&refused, Outcome::Refused(m) if m.contains("169.254.169.254")), "{refused:?}");
        let refused = resolve(&target("http://localhost:9/x").unwrap(), &allow).await.unwrap_err();
        assert!(matches!(&refused, Outcome::Refused(m) if m.contains("loopback")), "a name resolving to loopback: {refused:?}");
        let allowed = AllowList::parse("127.0.0.1").unwrap();
        assert_eq!(resolve(&target("http://127.0.0.1:9/x").unwrap(), &allowed).await.unwrap(), "127.0.0.1:9".parse().unwrap());
    }
}

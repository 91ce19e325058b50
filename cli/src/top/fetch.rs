//! The I/O of one look: lists WorkerPools, Jobs and Workflows from the API (each object read on
//! its own, so one that does not deserialize is skipped and counted, never breaks the view), the
//! operator's `/metrics` when a URL is given, and the Events of a Job.
//!
//! Must not: talk to the broker, write anything, or retry in a loop (the app's poll is the retry).

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_operator::crd::{Job, WorkerPool, Workflow};

use super::model::{Metrics, MetricsState, Scope, Snapshot};
use super::render::EventLine;

/// Most bytes read from a metrics endpoint (the operator's is a few tens of KB).
const MAX_METRICS_BYTES: u64 = 16 << 20;
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);
/// Events shown in a Job's detail, newest last.
const EVENTS_SHOWN: usize = 12;

/// An `http://host:port/path` metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsUrl {
    pub authority: String,
    pub path: String,
}

impl MetricsUrl {
    /// `http://127.0.0.1:9464/metrics`, `127.0.0.1:9464` (path `/metrics`). Only plain HTTP: the
    /// operator serves its metrics without TLS.
    pub fn parse(url: &str) -> Result<MetricsUrl, String> {
        if url.starts_with("https://") {
            return Err(format!("--metrics-url {url:?}: only http:// is supported (the operator serves /metrics without TLS)"));
        }
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let port_ok = authority.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || authority.contains(['@', ' ']) {
            return Err(format!("--metrics-url {url:?}: expected http://<host>:<port>[/path], e.g. http://127.0.0.1:9464/metrics"));
        }
        Ok(MetricsUrl { authority: authority.to_string(), path: path.to_string() })
    }
}

/// One GET of the metrics endpoint; what went wrong in one short phrase.
pub async fn metrics(url: &MetricsUrl) -> MetricsState {
    match tokio::time::timeout(METRICS_TIMEOUT, get(url)).await {
        Ok(Ok(text)) => MetricsState::Sampled(Metrics::parse(&text)),
        Ok(Err(why)) => MetricsState::Unreachable(why),
        Err(_) => MetricsState::Unreachable(format!("no answer within {METRICS_TIMEOUT:?}")),
    }
}

async fn get(url: &MetricsUrl) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(&url.authority).await.map_err(|e| format!("{}: {e}", url.authority))?;
    // HTTP/1.0: the answer ends with the connection, never chunked.
    let request = format!("GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n", url.path, url.authority);
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    stream.take(MAX_METRICS_BYTES).read_to_end(&mut body).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("HTTP {status:?}"));
    }
    Ok(body.to_string())
}

/// Lists one kind in the scope; objects that do not deserialize are counted, not returned.
async fn list<K>(client: &Client, scope: &Scope) -> Result<(Vec<K>, usize), kube::Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match scope {
        Scope::All => Api::all_with(client.clone(), &resource),
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &resource),
    };
    let mut objects = Vec::new();
    let mut unreadable = 0;
    for item in api.list(&ListParams::default()).await?.items {
        match serde_json::to_value(item).and_then(serde_json::from_value::<K>) {
            Ok(object) => objects.push(object),
            Err(_) => unreadable += 1,
        }
    }
    Ok((objects, unreadable))
}

/// One look at the API (and the metrics): the snapshot at `at`.
pub async fn snapshot(client: &Client, scope: &Scope, metrics_url: Option<&MetricsUrl>, at: f64) -> Result<Snapshot, kube::Error> {
    let metrics_state = async {
        match metrics_url {
            Some(url) => metrics(url).await,
            None => MetricsState::Off,
        }
    };
    let (pools, jobs, workflows, metrics_state) =
        tokio::join!(list::<WorkerPool>(client, scope), list::<Job>(client, scope), list::<Workflow>(client, scope), metrics_state);
    let ((pools, a), (jobs, b), (workflows, c)) = (pools?, jobs?, workflows?);
    let mut snapshot = Snapshot::build(at, scope.clone(), &pools, &jobs, &workflows, metrics_state);
    snapshot.unreadable = a + b + c;
    if let Scope::Namespace(ns) = scope
        && snapshot.is_empty()
    {
        // Nothing listed: say whether the namespace exists at all (unknown when not allowed to ask).
        snapshot.namespace_exists = Api::<Namespace>::all(client.clone()).get_opt(ns).await.ok().map(|n| n.is_some());
    }
    Ok(snapshot)
}

/// The recent Events of a Job (`events.k8s.io/v1`, what the operator records), oldest first.
pub async fn job_events(client: &Client, namespace: &str, name: &str, now: jiff::Timestamp) -> Result<Vec<EventLine>, kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut events: Vec<Event> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().is_some_and(|r| r.name.as_deref() == Some(name) && r.kind.as_deref() == Some("Job")))
        .collect();
    let when = |e: &Event| {
        e.event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    events.sort_by_key(when);
    let skip = events.len().saturating_sub(EVENTS_SHOWN);
    Ok(events
        .into_iter()
        .skip(skip)
        .map(|e| EventLine {
            age: when(&e).map(|t| age(now.duration_since(t))).unwrap_or_else(|| "?".into()),
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default().lines().next().unwrap_or_default().to_string(),
        })
        .collect())
}

/// `12s`, `5m`, `3h`, `2d`.
pub fn age(elapsed: jiff::SignedDuration) -> String {
    let s = elapsed.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls_are_plain_http_with_a_port() {
        let want = |a: &str, p: &str| Ok(MetricsUrl { authority: a.into(), path: p.into() });
        assert_eq!(MetricsUrl::parse("http://127.0.0.1:9464/metrics"), want("127.0.0.1:9464", "/metrics"));
        assert_eq!(MetricsUrl::parse("127.0.0.1:9464"), want("127.0.0.1:9464", "/metrics"));
        assert_eq!(MetricsUrl::parse("http://localhost:80/m?x=1"), want("localhost:80", "/m?x=1"));
        assert!(MetricsUrl::parse("https://x:1/metrics").unwrap_err().contains("only http://"));
        for bad in ["http://host/metrics", "http://:9464", "http://a:99999/", "http://u@h:1/"] {
            assert!(MetricsUrl::parse(bad).unwrap_err().contains("expected http://"), "{bad}");
        }
    }

    #[test]
    fn ages_are_short() {
        for (s, want) in [(0, "0s"), (-5, "0s"), (119, "119s"), (120, "2m"), (7199, "119m"), (7200, "2h"), (200000, "2d")] {
            assert_eq!(age(jiff::SignedDuration::from_secs(s)), want);
        }
    }

    #[tokio::test]
    async fn an_unreachable_metrics_endpoint_is_a_state_not_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = MetricsUrl::parse(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
        assert!(matches!(metrics(&url).await, MetricsState::Unreachable(_)));
    }

    #[tokio::test]
    async fn metrics_are_read_from_an_http_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = MetricsUrl::parse(&format!("http://{}/metrics", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nx_total{pool=\"p\"} 7\n", "HTTP/1.1 503 Unavailable\r\n\r\n"]
            {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let n = socket.read(&mut request).await.unwrap();
                assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /metrics HTTP/1.0\r\n"));
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        match metrics(&url).await {
            MetricsState::Sampled(m) => assert_eq!(m.sum("x_total", &[("pool", "p")]), Some(7.0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(metrics(&url).await, MetricsState::Unreachable("HTTP \"HTTP/1.1 503 Unavailable\"".into()));
        server.await.unwrap();
    }
}

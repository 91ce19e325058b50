//! Watch streams: newline-delimited JSON `WatchEvent`s for one type, replayed from history or
//! started from a snapshot, with bookmarks, timeouts and Table-form objects.
//!
//! Each watch is one task feeding a bounded channel; the HTTP layer turns the channel into the
//! chunked response body. The task ends when the client goes away, the timeout passes, the
//! server shuts down, or it falls too far behind (then it sends a 410 `Expired` ERROR event).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::resources::{ResourceType, VersionInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{EventKind, ResourceId, Store, WatchEvent, present};
use super::table::{self, IncludeObject};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Synthetic ADDED events for every current object, then changes (`resourceVersion` unset or "0").
    Snapshot,
    /// Only events after this resource version.
    After(u64),
}

pub struct WatchRequest {
    pub id: ResourceId,
    pub rt: ResourceType,
    pub vi: VersionInfo,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: Start,
    /// `sendInitialEvents=true`: end the initial snapshot with an annotated bookmark.
    pub initial_events_end: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub table: Option<IncludeObject>,
}

impl WatchRequest {
    fn matches(&self, obj: &Value, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace) && self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn line(&self, kind: &str, obj: Value) -> Bytes {
        let obj = present(obj, &self.rt, &self.id.version);
        let object = match self.table {
            Some(include) => {
                let mut t = table::table(&self.rt, &self.vi, std::slice::from_ref(&obj), 0, include, jiff::Timestamp::now());
                t["metadata"] = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
                t
            }
            None => obj,
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(&self.id.version), "metadata": meta});
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn error_line(err: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": err.to_status()})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Starts a watch; the returned stream is the response body.
pub fn start(
    store: Arc<Store>,
    req: WatchRequest,
    bookmark_interval: Duration,
    cancel: CancellationToken,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(run(store, req, bookmark_interval, cancel, tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) })
}

async fn run(store: Arc<Store>, req: WatchRequest, bookmark_interval: Duration, cancel: CancellationToken, tx: mpsc::Sender<Bytes>) {
    let gr = req.rt.gr();
    let (initial, mut progress, mut rx): (Vec<Bytes>, u64, broadcast::Receiver<Arc<WatchEvent>>) = match req.start {
        Start::Snapshot => match store.watch_snapshot(&req.id, req.namespace.as_deref()) {
            Ok((items, rv, rx)) => {
                let mut lines: Vec<Bytes> = items
                    .into_iter()
                    .filter(|o| req.matches(o, o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()))
                    .map(|o| req.line(EventKind::Added.as_str(), o))
                    .collect();
                if req.initial_events_end {
                    lines.push(req.bookmark(rv, true));
                }
                (lines, rv, rx)
            }
            Err(e) => {
                let _ = tx.send(error_line(&e)).await;
                return;
            }
        },
        Start::After(from) => match store.watch_from(from) {
            Ok((replay, rx)) => {
                let progress = replay.last().map_or(from, |e| e.rv);
                let lines = replay
                    .iter()
                    .filter(|e| e.gr == gr && req.matches(&e.object, &e.namespace))
                    .map(|e| req.line(e.kind.as_str(), e.object.clone()))
                    .collect();
                (lines, progress, rx)
            }
            Err(e) => {
                tracing::debug!(resource = %gr.resource, reason = e.reason(), "watch start expired");
                let _ = tx.send(error_line(&e)).await;
                return;
            }
        },
    };
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let timeout = async {
        match req.timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => futures::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let mut ticker = tokio::time::interval(bookmark_interval.max(Duration::from_millis(10)));
    ticker.tick().await;
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = &mut timeout => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if req.bookmarks => Some(req.bookmark(progress, false)),
            ev = rx.recv() => match ev {
                Ok(ev) if ev.rv <= progress => None,
                Ok(ev) => {
                    progress = ev.rv;
                    (ev.gr == gr && req.matches(&ev.object, &ev.namespace)).then(|| req.line(ev.kind.as_str(), ev.object.clone()))
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(error_line(&ApiError::Expired { requested: progress, oldest: store.current_rv() })).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Some(line) = line
            && tx.send(line).await.is_err()
        {
            return;
        }
    }
}

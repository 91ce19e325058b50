//! Warren's in-memory, Kubernetes-compatible API server for `warren local up` and tests.
//!
//! `store` owns objects and their semantics, `http` the wire protocol; the remaining modules
//! are pure helpers (discovery documents, selectors, patches, field ownership, tables, GC).

pub mod discovery;
pub mod error;
pub mod gc;
pub mod http;
pub mod managed;
pub mod object;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selectors;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot bind the API server to 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot build a Kubernetes client for {url}: {source}")]
    Client { url: String, source: kube::Error },
}

impl SandboxError {
    /// Stable name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SandboxError::Bind { .. } => "BindFailed",
            SandboxError::Client { .. } => "ClientFailed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// How many watch events are kept for resuming watches from a resource version.
    pub watch_history: usize,
    /// How often watches that allow bookmarks receive one.
    pub bookmark_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { port: 0, watch_history: 10_000, bookmark_interval: Duration::from_secs(60) }
    }
}

pub struct ApiServer {
    port: u16,
    requests: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>,
    client: kube::Client,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds 127.0.0.1 and serves until `shutdown`.
    pub async fn start(opts: ServerOptions) -> Result<ApiServer, SandboxError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .map_err(|source| SandboxError::Bind { port: opts.port, source })?;
        let port = listener.local_addr().map_err(|source| SandboxError::Bind { port: opts.port, source })?.port();
        let cancel = CancellationToken::new();
        let requests = Arc::new(std::sync::Mutex::default());
        let app = Arc::new(http::App {
            requests: requests.clone(),
            store: Arc::new(store::Store::new(opts.watch_history)),
            bookmark_interval: opts.bookmark_interval,
            cancel: cancel.clone(),
            address: format!("127.0.0.1:{port}"),
        });
        let router = axum::Router::new().fallback(http::handle).with_state(app);
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::error!(%error, "API server stopped with an error");
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        let uri: axum::http::Uri = url.parse().expect("a 127.0.0.1 URL with a port is a valid URI");
        let client = kube::Client::try_from(kube::Config::new(uri)).map_err(|source| SandboxError::Client { url: url.clone(), source })?;
        tracing::info!(port, "API server listening");
        Ok(ApiServer { port, requests, client, cancel, task })
    }

    /// Resource requests served so far, by Kubernetes verb (`get`, `list`, `watch`, `create`,
    /// `update`, `patch`, `delete`, `deletecollection`).
    pub fn requests(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig with cluster, context and user `warren-local`, without credentials.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: warren-local\n  cluster:\n    server: {}\ncontexts:\n- name: warren-local\n  context:\n    cluster: warren-local\n    user: warren-local\n    namespace: default\ncurrent-context: warren-local\nusers:\n- name: warren-local\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Ends open watches, stops accepting requests and waits for the server task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "API server task failed");
        }
    }
}

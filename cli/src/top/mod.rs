//! `warren top [-n NAMESPACE | -A] [--once] [--metrics-url URL]`: a live terminal view of pools,
//! Jobs and Workflows, from any kubeconfig (the local control plane's or a real cluster's).
//!
//! It reads the Kubernetes API (and the operator's `/metrics` when given), never the broker, and
//! writes nothing. Rates and ETAs come from the samples it takes itself (see `docs/top.md`).
//!
//! - [`model`]: pure — a [`model::Snapshot`] from lists of objects, rates and ETAs from samples.
//! - [`render`]: pure — draws a model into a ratatui buffer; `--once` prints that frame as text.
//! - `fetch`, `app`: the I/O — the lists, the metrics GET, the terminal and the poll loop.

mod app;
mod fetch;
pub mod model;
pub mod render;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use model::{History, Scope};

/// How `warren top` ends. The numbers are the process's exit code (documented in README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Quit with `q`, or `--once` printed its frame.
    Done = 0,
    /// The terminal could not be set up or drawn to.
    Terminal = 1,
    /// Bad input: a malformed namespace or `--metrics-url`, no terminal without `--once`.
    Usage = 3,
    /// The API server could not be asked, or refused the lists.
    Unreachable = 4,
}

/// How long the first look may take before the API server counts as unreachable.
const FIRST_LOOK_TIMEOUT: Duration = Duration::from_secs(20);
/// Width of the `--once` frame when stdout is no terminal and `COLUMNS` is unset.
const ONCE_WIDTH: u16 = 160;

/// The command's options, as parsed from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub namespace: Option<String>,
    pub all_namespaces: bool,
    pub once: bool,
    pub metrics_url: Option<String>,
}

fn fail(exit: Exit, message: &str) -> Exit {
    eprintln!("warren top: {message}");
    exit
}

/// Runs `warren top`; returns the exit code and says what went wrong on stderr (one line).
pub async fn main(options: Options) -> Exit {
    let metrics_url = match options.metrics_url.as_deref().map(fetch::MetricsUrl::parse).transpose() {
        Ok(url) => url,
        Err(e) => return fail(Exit::Usage, &e),
    };
    if let Some(ns) = &options.namespace {
        let label = !ns.is_empty() && ns.len() <= 63 && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label {
            return fail(Exit::Usage, &format!("-n {ns:?} is not a namespace name (lowercase letters, digits, '-', at most 63)"));
        }
    }
    if !options.once && !std::io::stdout().is_terminal() {
        return fail(Exit::Usage, "stdout is not a terminal: use --once for one plain-text frame");
    }
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(error) => return fail(Exit::Unreachable, &format!("no Kubernetes API to ask ({}); set KUBECONFIG", app::one_line(&error))),
    };
    let server = config.cluster_url.to_string();
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(error) => return fail(Exit::Unreachable, &format!("no client for {server}: {}", causes(&error))),
    };
    let scope = match (options.all_namespaces, options.namespace) {
        (true, _) => Scope::All,
        (false, Some(ns)) => Scope::Namespace(ns),
        (false, None) => Scope::Namespace(client.default_namespace().to_string()),
    };
    let clock = Instant::now();
    let first = match tokio::time::timeout(FIRST_LOOK_TIMEOUT, fetch::snapshot(&client, &scope, metrics_url.as_ref(), 0.0)).await {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(error)) => return fail(Exit::Unreachable, &format!("cannot list Warren objects from {server}: {}", causes(&error))),
        Err(_) => return fail(Exit::Unreachable, &format!("{server} did not answer within {FIRST_LOOK_TIMEOUT:?}")),
    };
    if options.once {
        let trends = History::default().observe(&first);
        let width = once_width();
        print!("{}", render::plain(&render::View { snapshot: first, trends }, width));
        return Exit::Done;
    }
    match app::run(client, scope, metrics_url, clock, first).await {
        Ok(()) => Exit::Done,
        Err(error) => fail(Exit::Terminal, &format!("terminal: {error}")),
    }
}

/// The terminal's width, else `COLUMNS`, else [`ONCE_WIDTH`].
fn once_width() -> u16 {
    if std::io::stdout().is_terminal()
        && let Ok((width, _)) = ratatui::crossterm::terminal::size()
    {
        return width;
    }
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(ONCE_WIDTH)
}

/// An error and its causes on one line (a connect error says "Connection refused" only deep
/// down), each said once.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = app::one_line(&e);
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_says_its_causes_once_on_one_line() {
        let inner = Layer("Connection refused (os error 111)", None);
        let middle = Layer("tcp connect error: Connection refused (os error 111)", Some(Box::new(inner)));
        let outer = Layer("client error (Connect)\nmore", Some(Box::new(middle)));
        assert_eq!(causes(&outer), "client error (Connect): tcp connect error: Connection refused (os error 111)");
    }
}

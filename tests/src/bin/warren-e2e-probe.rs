//! The handlers' end of the end-to-end tests' side channel (`warren_e2e::side_channel`): what a
//! handler tells the test goes through the broker, so the same tests run on a real cluster.
//!
//! ```text
//! warren-e2e-probe record <channel> <words…>   append one line to a channel (confirmed)
//! warren-e2e-probe wait <gate> [seconds]       block until the gate is open (exit 1 on timeout)
//! warren-e2e-probe is-open <gate>              exit 0 when the gate is open, 1 when closed
//! ```
//! The broker and the queues' prefix come from `WARREN_E2E_SIDE_URL` and
//! `WARREN_E2E_SIDE_PREFIX`, which the test sets in the pool's worker environment.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::ConfirmSelectOptions;
use warren_e2e::side_channel::{self, MAX_LINE_BYTES, PREFIX_ENV, URL_ENV};

/// How long `wait` waits by default: longer than any test waits for a handler.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

fn usage() -> anyhow::Error {
    anyhow::anyhow!("usage: warren-e2e-probe record <channel> <words…> | wait <gate> [seconds] | is-open <gate>")
}

async fn run(args: &[String]) -> anyhow::Result<bool> {
    let url = std::env::var(URL_ENV).with_context(|| format!("{URL_ENV} is not set"))?;
    let prefix = std::env::var(PREFIX_ENV).with_context(|| format!("{PREFIX_ENV} is not set"))?;
    let (command, rest) = args.split_first().ok_or_else(usage)?;
    let (name, rest) = rest.split_first().ok_or_else(usage)?;
    let connection = warren_e2e::connect(&url).await?;
    let channel = connection.create_channel().await?;
    let answer = match command.as_str() {
        "record" => {
            let line = rest.join(" ");
            anyhow::ensure!(line.len() <= MAX_LINE_BYTES, "a line is at most {MAX_LINE_BYTES} bytes");
            let queue = side_channel::channel_queue(&prefix, name);
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            side_channel::declare(&channel, &queue).await?;
            side_channel::publish(&channel, &queue, line.as_bytes()).await?;
            true
        }
        "wait" => {
            let limit = match rest.first() {
                Some(s) => Duration::from_secs_f64(s.parse().with_context(|| format!("{s:?} is not a number of seconds"))?),
                None => DEFAULT_WAIT,
            };
            let queue = side_channel::gate_queue(&prefix, name);
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                if side_channel::declare(&channel, &queue).await? > 0 {
                    break true;
                }
                if tokio::time::Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        "is-open" => side_channel::declare(&channel, &side_channel::gate_queue(&prefix, name)).await? > 0,
        _ => return Err(usage()),
    };
    let _ = connection.close(200, "".into()).await;
    Ok(answer)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("warren-e2e-probe: {e:#}");
            ExitCode::from(2)
        }
    }
}

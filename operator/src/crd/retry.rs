use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How often and how late a failed task is tried again. Set on a WorkerPool (the default for its
/// Jobs) and on a Job (overrides the pool's fields it sets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts in total, including the first. 1 means never retry. Default 3.
    #[schemars(range(min = 1, max = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay between attempts: exponential with a cap and jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
}

/// Exponential backoff: attempt n+1 waits `min(initialDelay * factor^(n-1), maxDelay)`, reduced by a
/// random fraction up to `jitter`. The wait happens in a RabbitMQ retry queue, not in a worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// Delay before the second attempt, as a duration such as `500ms`, `1s`, `2m`. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// Multiplier per further attempt, at least 1. Default 2.
    #[schemars(range(min = 1.0, max = 100.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Largest delay, as a duration. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<String>,
    /// Fraction of each delay that is randomised away, 0 to 1. Default 0.2.
    #[schemars(range(min = 0.0, max = 1.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

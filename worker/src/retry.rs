//! What happens to a failed attempt. Pure: randomness is passed in as a number in [0, 1). The
//! delays and tiers are part of the wire contract (the operator declares the tiers' queues), in
//! [`warren_protocol::retry`].

use warren_protocol::RetryPolicy;
pub use warren_protocol::retry::{RECONNECT_INITIAL, RECONNECT_MAX, RetryDelay, reconnect_delay, retry_delay, tiers};

use crate::dead_letter_reason;

/// What the worker does with a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Publish attempt `next_attempt` to the retry tier.
    Retry { next_attempt: u32, delay: RetryDelay },
    /// Publish to the dead-letter queue with this reason.
    DeadLetter { reason: &'static str },
}

/// Decides the fate of a failed `attempt`. A permanent failure is never retried; a retryable
/// one is retried while attempts are left.
pub fn decide_failure(policy: &RetryPolicy, attempt: u32, retryable: bool, random: f64) -> FailureAction {
    if !retryable {
        FailureAction::DeadLetter { reason: dead_letter_reason::PERMANENT }
    } else if attempt >= policy.max_attempts {
        FailureAction::DeadLetter { reason: dead_letter_reason::ATTEMPTS_EXHAUSTED }
    } else {
        FailureAction::Retry { next_attempt: attempt + 1, delay: retry_delay(policy, attempt, random) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, initial: u64, factor: f64, max: u64, jitter: f64) -> RetryPolicy {
        RetryPolicy { max_attempts, initial_delay_ms: initial, factor, max_delay_ms: max, jitter }
    }

    #[test]
    fn tiers_table() {
        let cases: [(RetryPolicy, &[u64]); 5] = [
            (policy(1, 1000, 2.0, 60_000, 0.2), &[]),
            (policy(3, 1000, 2.0, 60_000, 0.2), &[1000, 2000]),
            (policy(6, 1000, 2.0, 5000, 0.0), &[1000, 2000, 4000, 5000]),
            (policy(100, 50, 1.0, 50, 0.5), &[50]),
            (policy(100, 1000, 10.0, 30_000, 0.0), &[1000, 10_000, 30_000]),
        ];
        for (p, expected) in cases {
            assert_eq!(tiers(&p).into_iter().collect::<Vec<_>>(), expected, "{p:?}");
            // Every tier decide_failure can choose is listed.
            for attempt in 1..p.max_attempts {
                for random in [0.0, 0.5, 0.99] {
                    if let FailureAction::Retry { delay, .. } = decide_failure(&p, attempt, true, random) {
                        assert!(tiers(&p).contains(&delay.tier_ms), "{p:?} attempt {attempt}");
                    }
                }
            }
        }
    }

    #[test]
    fn decide_failure_table() {
        let p = policy(3, 100, 2.0, 1000, 0.0);
        let cases = [
            (1, true, FailureAction::Retry { next_attempt: 2, delay: RetryDelay { tier_ms: 100, delay_ms: 100 } }),
            (2, true, FailureAction::Retry { next_attempt: 3, delay: RetryDelay { tier_ms: 200, delay_ms: 200 } }),
            (3, true, FailureAction::DeadLetter { reason: dead_letter_reason::ATTEMPTS_EXHAUSTED }),
            (7, true, FailureAction::DeadLetter { reason: dead_letter_reason::ATTEMPTS_EXHAUSTED }),
            (1, false, FailureAction::DeadLetter { reason: dead_letter_reason::PERMANENT }),
            (3, false, FailureAction::DeadLetter { reason: dead_letter_reason::PERMANENT }),
        ];
        for (attempt, retryable, expected) in cases {
            assert_eq!(decide_failure(&p, attempt, retryable, 0.0), expected, "attempt {attempt} retryable {retryable}");
        }
        let never = policy(1, 100, 2.0, 1000, 0.0);
        assert_eq!(decide_failure(&never, 1, true, 0.0), FailureAction::DeadLetter { reason: dead_letter_reason::ATTEMPTS_EXHAUSTED });
    }
}

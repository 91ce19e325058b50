//! What happens to a failed attempt, and how long to wait before retrying (tasks) or
//! reconnecting (the broker connection). Pure: randomness is passed in as a number in [0, 1).

use std::time::Duration;

use warren_protocol::RetryPolicy;

use crate::dead_letter_reason;

/// The delay before the next attempt of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryDelay {
    /// The un-jittered delay: selects the retry queue (one queue per tier).
    pub tier_ms: u64,
    /// The jittered delay actually waited (per-message expiration), `<= tier_ms`.
    pub delay_ms: u64,
}

/// Delay after the failure of attempt `attempt` (1-based): `initial * factor^(attempt-1)`
/// capped at `max_delay_ms` (the tier), minus up to `jitter` of it (`random` in [0, 1)).
pub fn retry_delay(policy: &RetryPolicy, attempt: u32, random: f64) -> RetryDelay {
    let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
    let factor = if policy.factor.is_finite() && policy.factor > 0.0 { policy.factor } else { 1.0 };
    let raw = policy.initial_delay_ms as f64 * factor.powi(exponent);
    let capped = if raw.is_finite() { raw.min(policy.max_delay_ms as f64) } else { policy.max_delay_ms as f64 };
    let tier_ms = capped.max(0.0).round() as u64;
    let jitter = if policy.jitter.is_finite() { policy.jitter.clamp(0.0, 1.0) } else { 0.0 };
    let random = if random.is_finite() { random.clamp(0.0, 1.0) } else { 0.0 };
    let reduction = (tier_ms as f64 * jitter * random).floor() as u64;
    RetryDelay { tier_ms, delay_ms: tier_ms - reduction.min(tier_ms) }
}

/// Every delay tier (queue) a task under `policy` may be retried through: the tier of each
/// attempt that can fail and be retried (`1..max_attempts`). Jitter never changes the tier.
pub fn tiers(policy: &RetryPolicy) -> std::collections::BTreeSet<u64> {
    let mut tiers = std::collections::BTreeSet::new();
    for attempt in 1..policy.max_attempts {
        let tier = retry_delay(policy, attempt, 0.0).tier_ms;
        // Once capped, every later attempt has the same tier.
        if !tiers.insert(tier) && tier == policy.max_delay_ms {
            break;
        }
    }
    tiers
}

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

/// First reconnect delay.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Upper bound of a reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Delay before reconnect attempt number `failures` (1 after the first failure): 100 ms
/// doubling up to 10 s, with "equal jitter" (between half and all of it) so that a fleet of
/// workers does not reconnect in lockstep.
pub fn reconnect_delay(failures: u32, random: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let full = (RECONNECT_INITIAL * 2u32.pow(exp)).min(RECONNECT_MAX);
    let random = if random.is_finite() { random.clamp(0.0, 1.0) } else { 0.0 };
    full / 2 + full.mul_f64(random / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, initial: u64, factor: f64, max: u64, jitter: f64) -> RetryPolicy {
        RetryPolicy { max_attempts, initial_delay_ms: initial, factor, max_delay_ms: max, jitter }
    }

    #[test]
    fn retry_delay_table() {
        // (policy, attempt, random, tier, delay)
        let cases = [
            (policy(5, 1000, 2.0, 60_000, 0.0), 1, 0.9, 1000, 1000),
            (policy(5, 1000, 2.0, 60_000, 0.0), 2, 0.9, 2000, 2000),
            (policy(5, 1000, 2.0, 60_000, 0.0), 4, 0.0, 8000, 8000),
            (policy(9, 1000, 2.0, 5000, 0.0), 4, 0.0, 5000, 5000),
            (policy(9, 1000, 2.0, 60_000, 0.2), 1, 0.5, 1000, 900),
            (policy(9, 1000, 2.0, 60_000, 0.2), 1, 0.0, 1000, 1000),
            (policy(9, 1000, 2.0, 60_000, 1.0), 1, 0.999, 1000, 1),
            (policy(9, 1000, 2.0, 60_000, 5.0), 1, 0.5, 1000, 500),
            (policy(9, 50, 1.0, 50, 0.0), 7, 0.3, 50, 50),
            (policy(9, 0, 2.0, 100, 0.5), 3, 0.5, 0, 0),
            (policy(200, 1000, 10.0, 30_000, 0.0), 150, 0.0, 30_000, 30_000),
            (policy(9, 1000, f64::NAN, 60_000, 0.0), 3, 0.0, 1000, 1000),
        ];
        for (p, attempt, random, tier, delay) in cases {
            let d = retry_delay(&p, attempt, random);
            assert_eq!(d, RetryDelay { tier_ms: tier, delay_ms: delay }, "{p:?} attempt {attempt} random {random}");
        }
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
        assert_eq!(
            decide_failure(&never, 1, true, 0.0),
            FailureAction::DeadLetter { reason: dead_letter_reason::ATTEMPTS_EXHAUSTED }
        );
    }

    #[test]
    fn reconnect_delay_doubles_and_is_bounded() {
        let ms = |d: Duration| d.as_millis() as u64;
        let cases = [(1, 0.0, 50), (1, 0.999_999, 99), (2, 0.0, 100), (4, 0.0, 400), (8, 0.0, 5000), (30, 0.0, 5000), (30, 1.0, 10_000), (u32::MAX, 1.0, 10_000)];
        for (failures, random, expected) in cases {
            assert_eq!(ms(reconnect_delay(failures, random)), expected, "failures {failures} random {random}");
        }
    }
}

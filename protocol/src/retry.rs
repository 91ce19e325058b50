//! Delays: before a task's next attempt (which also picks its retry-tier queue, so the operator
//! and the workers must agree on it) and before reconnecting to the broker (one policy for every
//! Warren connection). Pure: randomness is passed in as a number in [0, 1).

use std::time::Duration;

use crate::RetryPolicy;

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
    fn reconnect_delay_doubles_and_is_bounded() {
        let ms = |d: Duration| d.as_millis() as u64;
        let cases = [
            (1, 0.0, 50),
            (1, 0.999_999, 99),
            (2, 0.0, 100),
            (4, 0.0, 400),
            (8, 0.0, 5000),
            (30, 0.0, 5000),
            (30, 1.0, 10_000),
            (u32::MAX, 1.0, 10_000),
        ];
        for (failures, random, expected) in cases {
            assert_eq!(ms(reconnect_delay(failures, random)), expected, "failures {failures} random {random}");
        }
    }
}

//! The WorkerPool's conditions, decided from what the reconcile observed. Pure.

use super::{Error, scale};
use crate::admission::circuit;
use crate::autoscaler::Reason;
use crate::conditions::Desired;
use crate::crd::CircuitBreakerSpec;

/// `Ready`: the queues are declared and usable, and the workers have their broker Secret. The
/// first problem found is the one said: a refused declaration, a missing Secret, a queue on a
/// broker node that is down. `workers` is (ready, desired).
pub fn ready_condition(
    declare_error: Option<&Error>,
    secret_problem: Option<&str>,
    unavailable: Option<&str>,
    queues: usize,
    workers: (i32, i32),
) -> Desired {
    let (ready, replicas) = workers;
    match (declare_error, secret_problem, unavailable) {
        (Some(e), _, _) => Desired::new("Ready", false, e.reason(), e.to_string()),
        (None, Some(problem), _) => Desired::new("Ready", false, "SecretNotFound", problem.to_string()),
        (None, None, Some(message)) => Desired::new("Ready", false, "QueueUnavailable", format!("{message}; the pool's Jobs wait for it")),
        (None, None, None) => {
            Desired::new("Ready", true, "QueuesDeclared", format!("{queues} queues declared; {ready}/{replicas} workers ready"))
        }
    }
}

/// `CircuitOpen`, for a pool with a circuit breaker (or one forced open): True while open
/// (reason `FailureRatioExceeded`, or `Forced` by the annotation) or half-open (`HalfOpen`),
/// False (`Closed`) otherwise. The message says the ratio that opened it.
pub fn circuit_condition(state: &circuit::State, spec: Option<&CircuitBreakerSpec>) -> Option<Desired> {
    Some(match state {
        circuit::State::Closed => {
            let spec = spec?;
            Desired::new(
                "CircuitOpen",
                false,
                "Closed",
                format!(
                    "tasks start; the circuit opens when more than {} of the attempts finished in {} s fail (at least {})",
                    percent(spec.failure_ratio),
                    spec.window_seconds,
                    spec.min_tasks
                ),
            )
        }
        circuit::State::Open { forced: true, .. } => {
            Desired::new("CircuitOpen", true, "Forced", "the annotation warren.dev/circuit: open holds the circuit open: no task starts")
        }
        circuit::State::Open { failed, finished, .. } => Desired::new(
            "CircuitOpen",
            true,
            "FailureRatioExceeded",
            format!(
                "{failed} of the last {finished} finished attempts failed ({}, more than {}): no task starts for {} s, then {} probe task(s) run",
                percent(f64::from(*failed) / f64::from((*finished).max(1))),
                spec.map_or("the limit".to_string(), |s| percent(s.failure_ratio)),
                spec.map_or(0, |s| s.open_seconds),
                spec.map_or(1, |s| s.half_open_tasks)
            ),
        ),
        circuit::State::HalfOpen { succeeded, .. } => Desired::new(
            "CircuitOpen",
            true,
            "HalfOpen",
            format!(
                "probing: {succeeded} of {} probe task(s) succeeded; the circuit closes when all do, opens again if one fails",
                spec.map_or(1, |s| s.half_open_tasks)
            ),
        ),
    })
}

fn percent(ratio: f64) -> String {
    format!("{:.0} %", ratio * 100.0)
}

/// `ScalingActive` (the autoscaler sees the pool and acts) and `ScalingLimited` (it wants a count
/// it may not have: bounds, step limits, pause).
pub fn scaling_conditions(
    scaled: Option<&scale::Scaled>,
    scaling_error: Option<&(&'static str, String)>,
    declare_error: Option<&Error>,
) -> Vec<Desired> {
    let active = match (scaled, scaling_error, declare_error) {
        (Some(s), _, _) if s.decision.reason == Reason::Paused => {
            Desired::new("ScalingActive", false, "Paused", s.decision.message.clone())
        }
        (Some(s), _, _) => Desired::new("ScalingActive", true, s.decision.reason.as_str(), s.decision.message.clone()),
        (None, Some((reason, message)), _) => Desired::new("ScalingActive", false, reason, message.clone()),
        (None, None, Some(e)) => Desired::new("ScalingActive", false, e.reason(), e.to_string()),
        (None, None, None) => Desired::new("ScalingActive", false, "NotObserved", "the pool was not observed"),
    };
    let limited = match scaled {
        Some(s) if s.decision.reason.is_limit() && s.decision.reason != Reason::Paused => {
            Desired::new("ScalingLimited", true, s.decision.reason.as_str(), s.decision.message.clone())
        }
        _ => Desired::new("ScalingLimited", false, "WithinBounds", "the desired count is within the limits"),
    };
    vec![active, limited]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::Decision;
    use crate::crd::AutoscalingStatus;

    fn scaled(reason: Reason) -> scale::Scaled {
        scale::Scaled {
            decision: Decision { desired: 3, recommendation: 9, reason, message: "m".into() },
            current: 3,
            status: AutoscalingStatus::default(),
        }
    }

    #[test]
    fn the_circuit_condition_says_why_it_is_open() {
        let spec = CircuitBreakerSpec { failure_ratio: 0.5, min_tasks: 10, window_seconds: 60, open_seconds: 30, half_open_tasks: 2 };
        assert_eq!(circuit_condition(&circuit::State::Closed, None), None, "no breaker, no condition");
        let closed = circuit_condition(&circuit::State::Closed, Some(&spec)).unwrap();
        assert_eq!((closed.status, closed.reason), (false, "Closed"));
        let open = circuit_condition(&circuit::State::Open { since_ms: 0, failed: 8, finished: 10, forced: false }, Some(&spec)).unwrap();
        assert_eq!((open.status, open.reason), (true, "FailureRatioExceeded"));
        assert!(open.message.starts_with("8 of the last 10 finished attempts failed (80 %, more than 50 %)"), "{}", open.message);
        let forced = circuit_condition(&circuit::State::Open { since_ms: 0, failed: 0, finished: 0, forced: true }, None).unwrap();
        assert_eq!((forced.status, forced.reason), (true, "Forced"));
        let half = circuit_condition(&circuit::State::HalfOpen { since_ms: 0, succeeded: 1 }, Some(&spec)).unwrap();
        assert_eq!((half.status, half.reason), (true, "HalfOpen"));
    }

    #[test]
    fn ready_says_the_first_problem_found() {
        let refused = Error::Broker(crate::broker::BrokerError::Missing { queue: "q".into() });
        let cases = [
            (Some(&refused), Some("no Secret"), Some("node down"), (false, "QueueMissing")),
            (None, Some("no Secret"), Some("node down"), (false, "SecretNotFound")),
            (None, None, Some("node down"), (false, "QueueUnavailable")),
            (None, None, None, (true, "QueuesDeclared")),
        ];
        for (declare_error, secret, unavailable, expected) in cases {
            let got = ready_condition(declare_error, secret, unavailable, 3, (1, 2));
            assert_eq!((got.status, got.reason), expected, "{got:?}");
        }
        assert_eq!(ready_condition(None, None, None, 3, (1, 2)).message, "3 queues declared; 1/2 workers ready");
        assert!(ready_condition(None, None, Some("node down"), 3, (1, 2)).message.starts_with("node down; "));
    }

    #[test]
    fn scaling_conditions_say_whether_the_autoscaler_acts_and_is_limited() {
        let cases: Vec<(Option<scale::Scaled>, Option<(&'static str, String)>, (bool, &str), (bool, &str))> = vec![
            (Some(scaled(Reason::Backlog)), None, (true, "Backlog"), (false, "WithinBounds")),
            (Some(scaled(Reason::AtMaximum)), None, (true, "AtMaximum"), (true, "AtMaximum")),
            (Some(scaled(Reason::StepLimited)), None, (true, "StepLimited"), (true, "StepLimited")),
            (Some(scaled(Reason::Paused)), None, (false, "Paused"), (false, "WithinBounds")),
            (None, Some(("BrokerUnreachable", "cannot reach".into())), (false, "BrokerUnreachable"), (false, "WithinBounds")),
        ];
        for (s, err, active, limited) in cases {
            let got = scaling_conditions(s.as_ref(), err.as_ref(), None);
            assert_eq!(got[0].type_, "ScalingActive");
            assert_eq!((got[0].status, got[0].reason), active, "{got:?}");
            assert_eq!(got[1].type_, "ScalingLimited");
            assert_eq!((got[1].status, got[1].reason), limited, "{got:?}");
        }
    }
}

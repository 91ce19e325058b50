//! A pool's circuit breaker (`spec.circuitBreaker`), as a pure state machine over the attempts
//! its workers report finished: closed → open when the failed share of the window exceeds
//! `failureRatio` (with at least `minTasks` finished) → half-open after `openSeconds`, when
//! `halfOpenTasks` probe tasks may start → closed when they all succeed, open again when one
//! fails. The driver ([`super`]) feeds it, broadcasts the state to the workers (an open pool's
//! workers start no task) and says it in the pool's `CircuitOpen` condition.
//!
//! The window is kept in one-second buckets, so its memory is bounded by `windowSeconds`,
//! whatever the pool's throughput.

use std::collections::VecDeque;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::CircuitBreakerSpec;

/// The "`failed` of the last `finished`" counts an open circuit's condition message starts with
/// (`controllers::worker_pool::status::circuit_condition`); (0, 0) when it does not.
fn counts_in(message: &str) -> (u32, u32) {
    let mut words = message.split(' ');
    let failed = words.next().and_then(|w| w.parse().ok());
    let finished = (words.next(), words.next(), words.next()) == (Some("of"), Some("the"), Some("last"));
    match (failed, finished.then(|| words.next().and_then(|w| w.parse().ok())).flatten()) {
        (Some(failed), Some(finished)) if failed <= finished => (failed, finished),
        _ => (0, 0),
    }
}

/// Where a circuit is.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Closed,
    /// Since `since_ms`, because `failed` of `finished` attempts in the window failed (or forced).
    Open {
        since_ms: u64,
        failed: u32,
        finished: u32,
        forced: bool,
    },
    /// Probes may start since `since_ms`; `succeeded` of them did so far.
    HalfOpen {
        since_ms: u64,
        succeeded: u32,
    },
}

/// What the workers are told (the `paused` entry of the control broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Tasks start as usual.
    Open,
    /// No task starts.
    Shut,
    /// Up to `tasks` probe tasks may start in all, counted from probe `id`.
    Probe { id: u64, tasks: u32 },
}

/// A pool's circuit: its state and the window of finished attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct Circuit {
    pub state: State,
    /// (second, succeeded, failed), oldest first.
    window: VecDeque<(u64, u32, u32)>,
}

impl Default for Circuit {
    fn default() -> Self {
        Self { state: State::Closed, window: VecDeque::new() }
    }
}

/// The annotation's override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force {
    Open,
    Closed,
}

impl Force {
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            Some("open") => Some(Force::Open),
            Some("closed") => Some(Force::Closed),
            _ => None,
        }
    }
}

impl Circuit {
    /// The circuit an operator starting up resumes from the pool's `CircuitOpen` condition (the
    /// state is not stored elsewhere): open since the condition's transition when it says
    /// `FailureRatioExceeded`, so the restart does not let every task burn attempts against a
    /// downstream that is still down; a probing (`HalfOpen`) circuit is open with its time up,
    /// so it probes again at once (the probes' results were the old operator's). Anything else,
    /// or no condition, is closed (`Forced` follows the annotation).
    pub fn restored(condition: Option<&Condition>, now_ms: u64) -> Self {
        let state = match condition.filter(|c| c.status == "True") {
            Some(open) if open.reason == "FailureRatioExceeded" => {
                let since_ms = u64::try_from(open.last_transition_time.0.as_millisecond()).unwrap_or(0).min(now_ms);
                let (failed, finished) = counts_in(&open.message);
                State::Open { since_ms, failed, finished, forced: false }
            }
            Some(probing) if probing.reason == "HalfOpen" => State::Open { since_ms: 0, failed: 0, finished: 0, forced: false },
            _ => State::Closed,
        };
        Self { state, window: VecDeque::new() }
    }

    /// One finished attempt of the pool at `at_ms`.
    pub fn record(&mut self, failed: bool, at_ms: u64, spec: &CircuitBreakerSpec) {
        match &mut self.state {
            State::HalfOpen { succeeded, .. } => {
                if failed {
                    self.state = State::Open { since_ms: at_ms, failed: 1, finished: *succeeded + 1, forced: false };
                } else {
                    *succeeded += 1;
                    if *succeeded >= spec.half_open_tasks {
                        self.state = State::Closed;
                        self.window.clear();
                    }
                }
                return;
            }
            // What finishes while open (tasks that were running) does not count.
            State::Open { .. } => return,
            State::Closed => {}
        }
        let second = at_ms / 1_000;
        match self.window.back_mut() {
            Some((s, ok, bad)) if *s == second => {
                if failed {
                    *bad += 1;
                } else {
                    *ok += 1;
                }
            }
            _ => self.window.push_back((second, u32::from(!failed), u32::from(failed))),
        }
        self.trim(at_ms, spec);
    }

    fn trim(&mut self, now_ms: u64, spec: &CircuitBreakerSpec) {
        let oldest = (now_ms / 1_000).saturating_sub(u64::from(spec.window_seconds));
        while self.window.front().is_some_and(|(s, _, _)| *s < oldest) {
            self.window.pop_front();
        }
    }

    /// (failed, finished) attempts in the window.
    pub fn counts(&self) -> (u32, u32) {
        self.window.iter().fold((0, 0), |(bad, all), (_, ok, failed)| (bad + failed, all + ok + failed))
    }

    /// Moves on with time (and the annotation, if any): opens on the window, half-opens after
    /// `openSeconds`. Returns true when the state changed.
    pub fn tick(&mut self, spec: Option<&CircuitBreakerSpec>, force: Option<Force>, now_ms: u64) -> bool {
        let before = self.state.clone();
        match (force, spec) {
            (Some(Force::Open), _) => {
                if !matches!(self.state, State::Open { forced: true, .. }) {
                    self.state = State::Open { since_ms: now_ms, failed: 0, finished: 0, forced: true };
                }
            }
            (Some(Force::Closed), _) | (None, None) => {
                self.state = State::Closed;
                self.window.clear();
            }
            (None, Some(spec)) => {
                self.trim(now_ms, spec);
                match self.state {
                    State::Open { forced: true, .. } => {
                        // The annotation was removed: the breaker decides again, from closed.
                        self.state = State::Closed;
                        self.window.clear();
                    }
                    State::Closed => {
                        let (failed, finished) = self.counts();
                        if finished >= spec.min_tasks && f64::from(failed) > spec.failure_ratio * f64::from(finished) {
                            self.state = State::Open { since_ms: now_ms, failed, finished, forced: false };
                            self.window.clear();
                        }
                    }
                    State::Open { since_ms, .. } if now_ms.saturating_sub(since_ms) >= u64::from(spec.open_seconds) * 1_000 => {
                        self.state = State::HalfOpen { since_ms: now_ms, succeeded: 0 };
                    }
                    State::Open { .. } | State::HalfOpen { .. } => {}
                }
            }
        }
        self.state != before
    }

    /// What the pool's workers may start.
    pub fn gate(&self, spec: Option<&CircuitBreakerSpec>) -> Gate {
        match self.state {
            State::Closed => Gate::Open,
            State::Open { .. } => Gate::Shut,
            State::HalfOpen { since_ms, .. } => Gate::Probe { id: since_ms, tasks: spec.map_or(1, |s| s.half_open_tasks) },
        }
    }

    /// `warren_operator_circuit_state`: 0 closed, 1 open, 2 half-open.
    pub fn metric(&self) -> i64 {
        match self.state {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    fn condition(status: &str, reason: &str, message: &str, at_ms: i64) -> Condition {
        Condition {
            type_: "CircuitOpen".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_millisecond(at_ms).unwrap()),
            observed_generation: None,
        }
    }

    #[test]
    fn a_restarted_operator_resumes_an_open_circuit_from_the_pools_condition() {
        let open = condition("True", "FailureRatioExceeded", "9 of the last 10 finished attempts failed (90 %, more than 50 %): …", 50_000);
        let circuit = Circuit::restored(Some(&open), 60_000);
        assert_eq!(circuit.state, State::Open { since_ms: 50_000, failed: 9, finished: 10, forced: false });
        // It half-opens when its openSeconds are up, counted from when it opened, not from the restart.
        let mut c = circuit.clone();
        let spec = CircuitBreakerSpec { failure_ratio: 0.5, min_tasks: 10, window_seconds: 60, open_seconds: 30, half_open_tasks: 1 };
        assert!(!c.tick(Some(&spec), None, 79_000));
        assert!(c.tick(Some(&spec), None, 80_000));
        assert!(matches!(c.state, State::HalfOpen { .. }));
        // Probing when the operator stopped: open with its time up, so it probes again at once.
        let probing = condition("True", "HalfOpen", "probing: 0 of 1 probe task(s) succeeded", 50_000);
        let mut c = Circuit::restored(Some(&probing), 60_000);
        assert!(c.tick(Some(&spec), None, 60_100) && matches!(c.state, State::HalfOpen { .. }));
        // Closed, forced (the annotation decides), or nothing: closed.
        for closed in [condition("False", "Closed", "tasks start", 1), condition("True", "Forced", "held", 1)] {
            assert_eq!(Circuit::restored(Some(&closed), 60_000).state, State::Closed);
        }
        assert_eq!(Circuit::restored(None, 60_000).state, State::Closed);
    }

    #[test]
    fn counts_are_read_from_the_message_or_are_zero() {
        assert_eq!(counts_in("9 of the last 10 finished attempts failed"), (9, 10));
        assert_eq!(counts_in("edited by hand"), (0, 0));
        assert_eq!(counts_in("11 of the last 10 finished"), (0, 0), "more failed than finished is not believed");
        assert_eq!(counts_in("99999999999 of the last 1 x"), (0, 0));
    }

    use super::*;

    fn spec() -> CircuitBreakerSpec {
        CircuitBreakerSpec { failure_ratio: 0.5, min_tasks: 10, window_seconds: 60, open_seconds: 30, half_open_tasks: 2 }
    }

    fn feed(circuit: &mut Circuit, ok: u32, failed: u32, at_ms: u64) {
        for _ in 0..ok {
            circuit.record(false, at_ms, &spec());
        }
        for _ in 0..failed {
            circuit.record(true, at_ms, &spec());
        }
    }

    #[test]
    fn it_opens_above_the_ratio_with_enough_tasks_only() {
        let mut c = Circuit::default();
        feed(&mut c, 2, 7, 1_000);
        assert!(!c.tick(Some(&spec()), None, 1_000), "9 finished, fewer than minTasks");
        feed(&mut c, 0, 1, 1_500);
        assert!(c.tick(Some(&spec()), None, 1_500));
        assert_eq!(c.state, State::Open { since_ms: 1_500, failed: 8, finished: 10, forced: false });
        assert_eq!(c.gate(Some(&spec())), Gate::Shut);
        let mut at_ratio = Circuit::default();
        feed(&mut at_ratio, 5, 5, 0);
        assert!(!at_ratio.tick(Some(&spec()), None, 0), "exactly the ratio is not above it");
    }

    #[test]
    fn old_attempts_leave_the_window() {
        let mut c = Circuit::default();
        feed(&mut c, 0, 9, 0);
        feed(&mut c, 5, 1, 61_000);
        assert_eq!(c.counts(), (1, 6), "the failures of 61 s ago are out of the 60 s window");
        assert!(!c.tick(Some(&spec()), None, 61_000));
    }

    #[test]
    fn it_half_opens_after_open_seconds_and_closes_when_the_probes_succeed() {
        let mut c = Circuit::default();
        feed(&mut c, 0, 10, 0);
        c.tick(Some(&spec()), None, 0);
        feed(&mut c, 0, 50, 1_000);
        assert!(!c.tick(Some(&spec()), None, 29_999), "still open");
        assert!(c.tick(Some(&spec()), None, 30_000));
        assert_eq!(c.gate(Some(&spec())), Gate::Probe { id: 30_000, tasks: 2 });
        c.record(false, 31_000, &spec());
        assert!(matches!(c.state, State::HalfOpen { succeeded: 1, .. }));
        c.record(false, 31_500, &spec());
        assert_eq!((c.state.clone(), c.gate(Some(&spec()))), (State::Closed, Gate::Open));
        assert_eq!(c.counts(), (0, 0), "closed with a fresh window");
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let mut c = Circuit::default();
        feed(&mut c, 0, 10, 0);
        c.tick(Some(&spec()), None, 0);
        c.tick(Some(&spec()), None, 30_000);
        c.record(true, 31_000, &spec());
        assert!(matches!(c.state, State::Open { since_ms: 31_000, .. }));
        assert!(!c.tick(Some(&spec()), None, 60_000), "open for openSeconds again");
        assert!(c.tick(Some(&spec()), None, 61_000));
    }

    #[test]
    fn the_annotation_forces_it_and_removing_it_hands_back_to_the_breaker() {
        let mut c = Circuit::default();
        assert!(c.tick(Some(&spec()), Some(Force::Open), 5));
        assert_eq!(c.gate(Some(&spec())), Gate::Shut);
        assert!(!c.tick(Some(&spec()), Some(Force::Open), 100_000), "forced open stays open");
        assert!(c.tick(Some(&spec()), None, 100_001));
        assert_eq!(c.state, State::Closed);
        feed(&mut c, 0, 20, 200_000);
        assert!(!c.tick(Some(&spec()), Some(Force::Closed), 200_000), "forced closed whatever fails");
        assert_eq!((c.state.clone(), c.counts()), (State::Closed, (0, 0)));
        feed(&mut c, 0, 20, 200_500);
        assert!(c.tick(Some(&spec()), None, 200_500), "without the annotation the breaker decides again");
        let mut without_breaker = Circuit::default();
        assert!(without_breaker.tick(None, Some(Force::Open), 0), "any pool can be forced open");
        assert!(without_breaker.tick(None, None, 1));
    }

    #[test]
    fn the_window_is_bounded_by_its_seconds() {
        let mut c = Circuit::default();
        for second in 0..10_000u64 {
            c.record(false, second * 1_000, &spec());
        }
        assert!(c.window.len() <= 61, "{}", c.window.len());
    }
}

//! The admission decision for one pool and one round: which Jobs may publish how many more
//! tasks. Pure: the driver ([`super`]) gathers the demands from the book and carries the grants
//! out; this decides (docs/flow-control.md).
//!
//! The round's budget is the room in the pool's shallow queues, capped by the rate limit's
//! tokens. It goes to the priority classes in order (the workers serve them in that order too);
//! within a class, by weighted deficit round-robin over the `fairnessKey`s that have a backlog,
//! one task at a time; within a key, to its Jobs in creation order. A Job at its `maxRunning`, or
//! a key at `maxRunningPerKey`, is passed over.

use std::collections::{BTreeMap, HashMap};

/// What one Job of the pool asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    pub uid: String,
    pub key: String,
    /// Index of its priority class in the pool's `priorities` (0 is served first).
    pub class: usize,
    /// Tasks not admitted yet.
    pub backlog: u32,
    /// Admitted tasks not finished: queued or running.
    pub in_flight: u32,
    /// Admitted tasks not started yet (in the queues, or granted and not yet published).
    pub queued: u32,
    pub max_running: Option<u32>,
}

/// The pool's settings that shape a round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub weights: BTreeMap<String, u32>,
    pub max_running_per_key: Option<u32>,
    /// The pool's `starvationSeconds`, in ms: a class that got nothing for this long while it had
    /// a backlog goes first (0: classes strictly in order).
    pub starvation_ms: u64,
}

impl Settings {
    fn weight(&self, key: &str) -> u32 {
        self.weights.get(key).copied().unwrap_or(1).max(1)
    }
}

/// What a round may admit in all: the room in the queues (`None`: no shallow queue, only the
/// concurrency limits count) and the rate limit's whole tokens (`None`: no limit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub room: Option<u32>,
    pub tokens: Option<u32>,
}

/// Why a Job with a backlog got nothing (more) this round. The names are `status.waiting`
/// reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Its own `maxRunning` or its key's `maxRunningPerKey` is reached.
    ConcurrencyLimited,
    /// The rate limit's tokens ran out first.
    RateLimited,
    /// Other keys of its class have a backlog too: the queues' room is shared with them.
    FairShare,
    /// The queues are full: tasks already admitted wait for free workers.
    Queued,
    /// The pool's circuit breaker is open: nothing is admitted (or only its probes).
    CircuitOpen,
}

impl Held {
    pub fn reason(self) -> &'static str {
        match self {
            Held::ConcurrencyLimited => "ConcurrencyLimited",
            Held::RateLimited => "RateLimited",
            Held::FairShare => "FairShare",
            Held::Queued => "Queued",
            Held::CircuitOpen => "CircuitOpen",
        }
    }
}

/// The round-robin state a pool keeps between rounds: each key's deficit, and where the next
/// round starts, so that a budget smaller than the number of keys still reaches every key in
/// turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FairState {
    deficits: HashMap<String, u64>,
    next: usize,
    /// Per class with a backlog, since when (ms) it got nothing.
    starved_since: HashMap<usize, u64>,
}

/// One round's outcome.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Tasks each Job may publish now (only Jobs granted some).
    pub grants: BTreeMap<String, u32>,
    /// Why each Job that still has a backlog waits.
    pub held: BTreeMap<String, Held>,
    /// Tokens used (the driver takes them from the bucket).
    pub admitted: u32,
}

/// Decides a round at `now_ms`. `demands` are in creation order (the order within a key).
pub fn decide(demands: &[Demand], settings: &Settings, budget: Budget, state: &mut FairState, now_ms: u64) -> Decision {
    let room = budget.room.unwrap_or(u32::MAX);
    let mut left = match budget.tokens {
        Some(tokens) => room.min(tokens),
        None => room,
    };
    let mut jobs: Vec<Demand> = demands.to_vec();
    let mut key_in_flight: HashMap<String, u32> = HashMap::new();
    for d in demands {
        *key_in_flight.entry(d.key.clone()).or_default() += d.in_flight;
    }
    let mut grants: BTreeMap<String, u32> = BTreeMap::new();
    let mut classes: Vec<usize> = jobs.iter().map(|d| d.class).collect();
    classes.sort_unstable();
    classes.dedup();
    // Classes in order, except that one starved for `starvationSeconds` goes first (the longest
    // starved first): the anti-starvation limit the workers apply to what they hold, applied to
    // what the operator holds.
    let starved = |class: &usize| {
        state
            .starved_since
            .get(class)
            .filter(|since| settings.starvation_ms > 0 && now_ms.saturating_sub(**since) >= settings.starvation_ms)
            .copied()
    };
    classes.sort_by_key(|class| (starved(class).is_none(), starved(class).unwrap_or(0), *class));
    for &class in &classes {
        // The keys of the class, in the order of their oldest Job.
        let mut keys: Vec<String> = Vec::new();
        for d in jobs.iter().filter(|d| d.class == class) {
            if !keys.contains(&d.key) {
                keys.push(d.key.clone());
            }
        }
        let start = state.next % keys.len().max(1);
        keys.rotate_left(start);
        loop {
            let mut progressed = false;
            for key in &keys {
                if left == 0 {
                    break;
                }
                let weight = u64::from(settings.weight(key));
                let deficit = state.deficits.entry(key.clone()).or_default();
                *deficit += weight;
                let mut served = false;
                while *deficit >= 1 && left > 0 {
                    let in_flight = key_in_flight.get(key.as_str()).copied().unwrap_or(0);
                    if settings.max_running_per_key.is_some_and(|limit| in_flight >= limit) {
                        break;
                    }
                    let Some(job) = jobs
                        .iter_mut()
                        .find(|d| d.class == class && &d.key == key && d.backlog > 0 && d.max_running.is_none_or(|m| d.in_flight < m))
                    else {
                        break;
                    };
                    job.backlog -= 1;
                    job.in_flight += 1;
                    *grants.entry(job.uid.clone()).or_default() += 1;
                    *key_in_flight.entry(key.clone()).or_default() += 1;
                    *deficit -= 1;
                    left -= 1;
                    served = true;
                }
                if served {
                    progressed = true;
                } else {
                    // Nothing it could take: a key does not save up turns while it cannot use them.
                    *deficit = 0;
                }
            }
            if !progressed || left == 0 {
                break;
            }
        }
        state.next = state.next.wrapping_add(1);
    }
    for &class in &classes {
        let backlog = jobs.iter().any(|d| d.class == class && d.backlog > 0);
        let served = jobs.iter().any(|d| d.class == class && grants.contains_key(&d.uid));
        if served || !backlog {
            state.starved_since.remove(&class);
        } else {
            state.starved_since.entry(class).or_insert(now_ms);
        }
    }
    state.starved_since.retain(|class, _| classes.contains(class));
    // Keys without any Job left are forgotten (bounded by the Jobs of the pool).
    state.deficits.retain(|key, _| jobs.iter().any(|d| &d.key == key && d.backlog > 0));
    let admitted: u32 = grants.values().sum();
    let rate_bound = budget.tokens.is_some_and(|tokens| tokens <= room);
    let mut held = BTreeMap::new();
    for d in jobs.iter().filter(|d| d.backlog > 0) {
        let key_full = settings.max_running_per_key.is_some_and(|limit| key_in_flight.get(d.key.as_str()).copied().unwrap_or(0) >= limit);
        let reason = if d.max_running.is_some_and(|m| d.in_flight >= m) || key_full {
            Held::ConcurrencyLimited
        } else if left == 0 && rate_bound {
            Held::RateLimited
        } else if demands.iter().any(|o| o.class == d.class && o.key != d.key && (o.backlog > 0 || grants.contains_key(&o.uid))) {
            // Another key of its class has a backlog too: the queue's room is shared with it.
            Held::FairShare
        } else {
            Held::Queued
        };
        held.insert(d.uid.clone(), reason);
    }
    Decision { grants, held, admitted }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(uid: &str, key: &str, backlog: u32) -> Demand {
        Demand { uid: uid.into(), key: key.into(), class: 0, backlog, in_flight: 0, queued: 0, max_running: None }
    }

    fn room(n: u32) -> Budget {
        Budget { room: Some(n), tokens: None }
    }

    #[test]
    fn equal_keys_share_the_room_equally_whatever_their_backlog() {
        let mut state = FairState::default();
        let demands = [demand("a", "A", 20_000), demand("b", "B", 200)];
        let d = decide(&demands, &Settings::default(), room(100), &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("a".into(), 50), ("b".into(), 50)]));
        assert_eq!(d.admitted, 100);
        assert_eq!(d.held.get("a"), Some(&Held::FairShare), "B took part of the room");
    }

    #[test]
    fn weights_split_the_room_in_proportion() {
        let mut state = FairState::default();
        let settings = Settings { weights: BTreeMap::from([("A".into(), 3)]), ..Settings::default() };
        let d = decide(&[demand("a", "A", 1_000), demand("b", "B", 1_000)], &settings, room(80), &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("a".into(), 60), ("b".into(), 20)]));
    }

    #[test]
    fn a_key_with_little_backlog_leaves_the_rest_to_the_others() {
        let mut state = FairState::default();
        let d = decide(&[demand("a", "A", 1_000), demand("b", "B", 5)], &Settings::default(), room(100), &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("a".into(), 95), ("b".into(), 5)]));
        assert!(!d.held.contains_key("b"), "B has nothing left to wait for");
    }

    #[test]
    fn a_budget_smaller_than_the_keys_reaches_each_key_in_turn() {
        let mut state = FairState::default();
        let demands = [demand("a", "A", 100), demand("b", "B", 100), demand("c", "C", 100)];
        let mut total: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..30 {
            for (uid, n) in decide(&demands, &Settings::default(), room(1), &mut state, 0).grants {
                *total.entry(uid).or_default() += n;
            }
        }
        assert_eq!(total, BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]));
    }

    #[test]
    fn jobs_of_one_key_are_served_in_creation_order() {
        let mut state = FairState::default();
        let d = decide(&[demand("old", "K", 30), demand("new", "K", 30)], &Settings::default(), room(40), &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("old".into(), 30), ("new".into(), 10)]));
        assert_eq!(d.held.get("new"), Some(&Held::Queued));
    }

    #[test]
    fn higher_classes_are_admitted_first() {
        let mut state = FairState::default();
        let low = Demand { class: 1, ..demand("low", "L", 100) };
        let d = decide(&[low, demand("high", "H", 30)], &Settings::default(), room(50), &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("high".into(), 30), ("low".into(), 20)]));
    }

    #[test]
    fn a_class_starved_for_starvation_seconds_goes_first() {
        let mut state = FairState::default();
        let settings = Settings { starvation_ms: 60_000, ..Settings::default() };
        let demands = [demand("high", "H", 10_000), Demand { class: 1, ..demand("low", "L", 100) }];
        let d = decide(&demands, &settings, room(10), &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("high".into(), 10)]), "classes in order");
        let d = decide(&demands, &settings, room(10), &mut state, 59_999);
        assert_eq!(d.grants, BTreeMap::from([("high".into(), 10)]), "not starved yet");
        let d = decide(&demands, &settings, room(10), &mut state, 60_000);
        assert_eq!(d.grants, BTreeMap::from([("low".into(), 10)]), "starved for 60 s: it goes first");
        let d = decide(&demands, &settings, room(10), &mut state, 60_100);
        assert_eq!(d.grants, BTreeMap::from([("high".into(), 10)]), "served: the clock starts over");
    }

    #[test]
    fn max_running_caps_a_job_and_says_so() {
        let mut state = FairState::default();
        let job = Demand { in_flight: 3, max_running: Some(5), ..demand("a", "A", 100) };
        let d = decide(&[job], &Settings::default(), Budget { room: None, tokens: None }, &mut state, 0);
        assert_eq!(d.grants, BTreeMap::from([("a".into(), 2)]));
        assert_eq!(d.held.get("a"), Some(&Held::ConcurrencyLimited));
        let full = Demand { in_flight: 5, max_running: Some(5), ..demand("a", "A", 100) };
        let d = decide(&[full], &Settings::default(), Budget { room: None, tokens: None }, &mut state, 0);
        assert!(d.grants.is_empty());
    }

    #[test]
    fn max_running_per_key_counts_every_job_of_the_key() {
        let mut state = FairState::default();
        let settings = Settings { max_running_per_key: Some(10), ..Settings::default() };
        let demands = [Demand { in_flight: 4, ..demand("a", "K", 100) }, demand("b", "K", 100), demand("c", "Other", 100)];
        let d = decide(&demands, &settings, room(100), &mut state, 0);
        assert_eq!(d.grants.get("a").copied().unwrap_or(0) + d.grants.get("b").copied().unwrap_or(0), 6, "{d:?}");
        assert_eq!(d.grants.get("c"), Some(&10));
        assert_eq!(d.held.get("b"), Some(&Held::ConcurrencyLimited));
    }

    #[test]
    fn tokens_cap_the_round_and_are_the_reason() {
        let mut state = FairState::default();
        let d = decide(&[demand("a", "A", 100)], &Settings::default(), Budget { room: Some(50), tokens: Some(7) }, &mut state, 0);
        assert_eq!((d.grants.get("a").copied(), d.admitted), (Some(7), 7));
        assert_eq!(d.held.get("a"), Some(&Held::RateLimited));
        let d = decide(&[demand("a", "A", 100)], &Settings::default(), Budget { room: Some(5), tokens: Some(7) }, &mut state, 0);
        assert_eq!(d.held.get("a"), Some(&Held::Queued), "the queue, not the tokens, was the limit");
    }

    #[test]
    fn nothing_to_admit_grants_nothing_and_forgets_the_keys() {
        let mut state = FairState::default();
        decide(&[demand("a", "A", 1)], &Settings::default(), room(10), &mut state, 0);
        assert!(state.deficits.is_empty());
        let d = decide(&[], &Settings::default(), room(10), &mut state, 0);
        assert_eq!(d, Decision::default());
    }
}

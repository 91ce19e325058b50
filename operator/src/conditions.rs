//! Status conditions the Kubernetes way: `lastTransitionTime` changes only when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a controller decides it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Builds the condition list from the desired ones, keeping `lastTransitionTime` of every
/// condition whose status did not change.
pub fn merge(previous: &[Condition], desired: &[Desired], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.to_string(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = merge(&[], &[Desired::new("Ready", false, "PoolNotFound", "m")], Some(1), &at(10));
        assert_eq!(first[0].last_transition_time, at(10));
        let same = merge(&first, &[Desired::new("Ready", false, "PoolNotReady", "m2")], Some(2), &at(20));
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].reason, "PoolNotReady");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Desired::new("Ready", true, "Enqueued", "")], Some(2), &at(30));
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "True");
    }
}

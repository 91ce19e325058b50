//! The backlog of a flow-controlled pool per `fairnessKey`: what `status.backlog` and
//! `warren_operator_backlog_tasks` show. Pure: the round hands it its demands.
//!
//! Bounded whatever the tenants do: the [`TOP_KEYS`] keys with the most waiting tasks are named,
//! every other key is summed into one figure (`otherKeys`, `otherTasks`; the metric's
//! `key="other"`). A status write of it is rate-limited by the caller.

use std::collections::BTreeMap;

use crate::crd::{KeyBacklog, PoolBacklog};

/// Keys named in the status and the metric; the rest are summed.
pub const TOP_KEYS: usize = 10;

/// The metric's label value for every key outside the top (and for a key named so: the status
/// names it precisely).
pub const OTHER: &str = "other";

/// One Job's share of the backlog: its key and its tasks waiting to start (held by the operator,
/// or admitted and still in the queues).
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting<'a> {
    pub key: &'a str,
    pub tasks: u64,
}

/// The pool's backlog: keys with waiting tasks, most first (ties by key), the top named.
pub fn summarize<'a>(jobs: impl IntoIterator<Item = Waiting<'a>>) -> PoolBacklog {
    let mut per_key: BTreeMap<&str, u64> = BTreeMap::new();
    for job in jobs {
        if job.tasks > 0 {
            *per_key.entry(job.key).or_default() += job.tasks;
        }
    }
    let mut keys: Vec<(&str, u64)> = per_key.into_iter().collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rest = keys.split_off(keys.len().min(TOP_KEYS));
    PoolBacklog {
        total_tasks: keys.iter().chain(&rest).map(|(_, n)| n).sum(),
        keys: keys.into_iter().map(|(key, tasks)| KeyBacklog { key: key.to_string(), tasks }).collect(),
        other_keys: rest.len() as u64,
        other_tasks: rest.iter().map(|(_, n)| n).sum(),
    }
}

/// The metric's series for `backlog`: label value → tasks (the top keys, and `other` when keys
/// were summed or a key is named `other`).
pub fn series(backlog: &PoolBacklog) -> BTreeMap<String, u64> {
    let mut series: BTreeMap<String, u64> = BTreeMap::new();
    for key in &backlog.keys {
        *series.entry(key.key.clone()).or_default() += key.tasks;
    }
    if backlog.other_keys > 0 {
        *series.entry(OTHER.to_string()).or_default() += backlog.other_tasks;
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, tasks: u64) -> Waiting<'_> {
        Waiting { key, tasks }
    }

    #[test]
    fn keys_are_summed_over_their_jobs_and_listed_most_first() {
        let backlog = summarize([w("a", 5), w("b", 7), w("a", 4), w("c", 0)]);
        let keys: Vec<(&str, u64)> = backlog.keys.iter().map(|k| (k.key.as_str(), k.tasks)).collect();
        assert_eq!(keys, [("a", 9), ("b", 7)], "c waits for nothing and is not listed");
        assert_eq!((backlog.total_tasks, backlog.other_keys, backlog.other_tasks), (16, 0, 0));
        assert_eq!(series(&backlog), BTreeMap::from([("a".into(), 9), ("b".into(), 7)]));
    }

    #[test]
    fn beyond_the_top_keys_the_rest_is_one_figure() {
        let names: Vec<String> = (0..1_000).map(|i| format!("tenant-{i:04}")).collect();
        let backlog = summarize(names.iter().enumerate().map(|(i, key)| w(key, i as u64 + 1)));
        assert_eq!(backlog.keys.len(), TOP_KEYS);
        assert_eq!(backlog.keys[0].key, "tenant-0999", "the biggest first");
        assert_eq!(backlog.other_keys, 1_000 - TOP_KEYS as u64);
        assert_eq!(backlog.total_tasks, (1..=1_000).sum::<u64>());
        assert_eq!(backlog.other_tasks, (1..=990).sum::<u64>());
        let series = series(&backlog);
        assert_eq!(series.len(), TOP_KEYS + 1, "bounded cardinality");
        assert_eq!(series[OTHER], backlog.other_tasks);
    }

    #[test]
    fn ties_are_ordered_by_key_so_the_status_does_not_flap() {
        let backlog = summarize([w("b", 3), w("a", 3)]);
        assert_eq!(backlog.keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_key_named_other_in_the_top_shares_the_series_of_the_rest() {
        let names: Vec<String> = (0..TOP_KEYS).map(|i| format!("k{i}")).collect();
        let mut jobs: Vec<Waiting> = names.iter().map(|k| w(k, 100)).collect();
        jobs.push(w(OTHER, 50));
        jobs.push(w("small", 1));
        let backlog = summarize(jobs);
        // "other" (50) is the 11th key: summed with "small".
        assert_eq!((backlog.other_keys, backlog.other_tasks), (2, 51));
        assert_eq!(series(&backlog)[OTHER], 51);
    }
}

//! A number per task index (an attempt, a replay count), stored grouped by the number:
//! `{"1": "0-99999", "3": "17,4242"}`.
//!
//! The Job status keeps such maps for unfinished tasks (dropped by a suspend, retrying, replayed).
//! Stored one entry per index, a 100,000-task Job suspended mid-run needs 1.4 MB; grouped, the
//! tasks that share a number share one range list, and a suspended Job's dropped tasks (queued
//! ones, all on attempt 1) are a few ranges. The earlier form, one `"index": number` entry each,
//! is still read.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ranges;

/// Task indexes past this are ignored when read (no Job has more tasks: `completions` is at most
/// 1,000,000), so that a hand-written range like `0-4294967295` costs nothing.
pub const MAX_INDEX: u32 = 1_000_000;

/// Task index → number, for unfinished tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexValues(pub BTreeMap<u32, u32>);

impl IndexValues {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, index: u32) -> Option<u32> {
        self.0.get(&index).copied()
    }
}

impl FromIterator<(u32, u32)> for IndexValues {
    fn from_iter<I: IntoIterator<Item = (u32, u32)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Serialize for IndexValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut groups: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (index, value) in &self.0 {
            groups.entry(*value).or_default().insert(*index);
        }
        let wire: BTreeMap<String, String> = groups.iter().map(|(value, indexes)| (value.to_string(), ranges::format(indexes))).collect();
        wire.serialize(serializer)
    }
}

/// One entry of either form: grouped (`"number": "ranges"`) or per index (`"index": number`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Grouped(String),
    PerIndex(u32),
}

impl<'de> Deserialize<'de> for IndexValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire: BTreeMap<String, Entry> = BTreeMap::deserialize(deserializer)?;
        let mut values = BTreeMap::new();
        for (key, entry) in wire {
            let Ok(key) = key.parse::<u32>() else { continue };
            match entry {
                Entry::PerIndex(value) if key < MAX_INDEX => {
                    values.insert(key, value);
                }
                Entry::PerIndex(_) => {}
                Entry::Grouped(text) => {
                    for index in ranges::parse_below(&text, MAX_INDEX).map_err(serde::de::Error::custom)? {
                        values.insert(index, key);
                    }
                }
            }
        }
        Ok(Self(values))
    }
}

impl JsonSchema for IndexValues {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IndexValues".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "additionalProperties": { "x-kubernetes-int-or-string": true }
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_stored_grouped_by_number_and_read_back() {
        let values: IndexValues = [(0, 1), (1, 1), (2, 1), (7, 3), (9, 1), (42, 3)].into_iter().collect();
        let json = serde_json::to_value(&values).unwrap();
        assert_eq!(json, serde_json::json!({"1": "0-2,9", "3": "7,42"}));
        assert_eq!(serde_json::from_value::<IndexValues>(json).unwrap(), values);
    }

    #[test]
    fn the_per_index_form_of_earlier_versions_is_read() {
        let old = serde_json::json!({"0": 1, "7": 3, "not-an-index": 2});
        let values: IndexValues = serde_json::from_value(old).unwrap();
        assert_eq!(values, [(0, 1), (7, 3)].into_iter().collect());
    }

    #[test]
    fn a_suspended_100000_task_job_needs_a_few_bytes_and_hostile_ranges_cost_nothing() {
        // Queued tasks all dropped on attempt 1, a few running ones cancelled on later attempts.
        let mut values: IndexValues = (0..100_000).map(|i| (i, 1)).collect();
        for i in [17, 4_242, 77_777] {
            values.0.insert(i, 2);
        }
        let json = serde_json::to_string(&values).unwrap();
        assert!(json.len() < 100, "{} bytes: {json}", json.len());

        let hostile = serde_json::json!({"1": "0-4294967295", "2": "999999-4294967295"});
        let values: IndexValues = serde_json::from_value(hostile).unwrap();
        assert_eq!(values.len(), MAX_INDEX as usize);
        assert_eq!(values.get(MAX_INDEX - 1), Some(2));
    }
}

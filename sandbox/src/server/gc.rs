//! Garbage-collection decisions for owner references (background cascade and orphaning). Pure:
//! the store applies the decisions under its lock.

use serde_json::Value;

pub fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from)).collect())
        .unwrap_or_default()
}

/// A dependent of a removed owner is collected when none of its other owners is still live.
pub fn should_collect(dependent: &Value, removed_uid: &str, is_live: impl Fn(&str) -> bool) -> bool {
    let owners = owner_uids(dependent);
    owners.iter().any(|u| u == removed_uid) && owners.iter().all(|u| u == removed_uid || !is_live(u))
}

/// Removes the owner reference to `owner_uid`; returns whether anything changed.
pub fn orphan(dependent: &mut Value, owner_uid: &str) -> bool {
    let Some(meta) = dependent.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(refs) = meta.get_mut("ownerReferences").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = refs.len();
    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
    let changed = refs.len() != before;
    if refs.is_empty() {
        meta.remove("ownerReferences");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(uids: &[&str]) -> Value {
        json!({"metadata": {"ownerReferences": uids.iter().map(|u| json!({"uid": u, "kind": "X", "name": "n", "apiVersion": "v1"})).collect::<Vec<_>>()}})
    }

    #[test]
    fn collected_only_without_another_live_owner() {
        assert!(should_collect(&dep(&["a"]), "a", |_| true));
        assert!(!should_collect(&dep(&["a", "b"]), "a", |u| u == "b"));
        assert!(should_collect(&dep(&["a", "b"]), "a", |_| false));
        assert!(!should_collect(&dep(&["b"]), "a", |_| false));
    }

    #[test]
    fn orphaning_drops_only_that_owner() {
        let mut d = dep(&["a", "b"]);
        assert!(orphan(&mut d, "a"));
        assert_eq!(owner_uids(&d), vec!["b"]);
        let mut d = dep(&["a"]);
        assert!(orphan(&mut d, "a"));
        assert!(d["metadata"].get("ownerReferences").is_none());
    }
}

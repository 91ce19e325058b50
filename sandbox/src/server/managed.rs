//! Field ownership (`metadata.managedFields`) and server-side apply. Pure.
//!
//! Simplification: lists are atomic (owned as one leaf); maps are owned per leaf key.
//! Each manager entry is keyed by (manager, operation, subresource) like the real server.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::error::{ApiError, Cause, Target};
use super::object::Subresource;

pub type FieldPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: BTreeSet<FieldPath>,
}

/// Metadata fields a manager can own; the rest of metadata is server- or identity-owned.
const OWNABLE_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// Leaf paths of the fields an object sets (excluding identity and server-owned fields).
pub fn leaf_paths(obj: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(map) = obj.as_object() else { return out };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for mk in OWNABLE_METADATA {
                    if let Some(mv) = v.get(*mk) {
                        collect(mv, vec!["metadata".into(), mk.to_string()], &mut out);
                    }
                }
            }
            _ => collect(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn collect(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let mut p = path.clone();
                p.push(k.clone());
                collect(v, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

pub fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// `FieldsV1` encoding: `{"f:spec":{"f:replicas":{}}}`.
pub fn encode(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = json!({});
    for path in fields {
        let mut cur = &mut root;
        for k in path {
            cur = cur.as_object_mut().expect("fieldsV1 nodes are objects").entry(format!("f:{k}")).or_insert_with(|| json!({}));
        }
    }
    root
}

pub fn decode(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let children: Vec<(&String, &Value)> =
            v.as_object().map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect()).unwrap_or_default();
        let keyed = v.as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("k:") || k.starts_with("v:")));
        if (children.is_empty() || keyed) && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, child) in children {
            path.push(k[2..].to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut vec![], &mut out);
    out
}

pub fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    obj.and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e.get("manager").and_then(Value::as_str).unwrap_or_default().into(),
            operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").into(),
            api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().into(),
            time: e.get("time").and_then(Value::as_str).unwrap_or_default().into(),
            subresource: e.get("subresource").and_then(Value::as_str).map(String::from),
            fields: e.get("fieldsV1").map(decode).unwrap_or_default(),
        })
        .collect()
}

pub fn write_entries(entries: &[Entry]) -> Value {
    entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": encode(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect()
}

fn dotted(path: &[String]) -> String {
    format!(".{}", path.join("."))
}

/// Objects merge key by key; everything else (scalars, lists) is replaced.
fn deep_merge(into: &mut Value, from: &Value) {
    match (into.as_object_mut(), from.as_object()) {
        (Some(a), Some(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => deep_merge(existing, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *into = from.clone(),
    }
}

fn entry_index(entries: &mut Vec<Entry>, manager: &str, op: &str, sub: Subresource, api_version: &str, now: &str) -> usize {
    let sub = sub.as_str().map(String::from);
    match entries.iter().position(|e| e.manager == manager && e.operation == op && e.subresource == sub) {
        Some(i) => {
            entries[i].time = now.to_string();
            entries[i].api_version = api_version.to_string();
            i
        }
        None => {
            entries.push(Entry {
                manager: manager.into(),
                operation: op.into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: sub,
                fields: BTreeSet::new(),
            });
            entries.len() - 1
        }
    }
}

pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub sub: Subresource,
    pub api_version: &'a str,
    pub now: &'a str,
    pub target: Target,
}

/// Server-side apply: returns the merged object with updated `managedFields`, or a 409 naming
/// each field another manager owns with a different value (unless `force`, which takes them).
pub fn apply(current: Option<&Value>, applied: &Value, req: &ApplyRequest) -> Result<Value, ApiError> {
    if req.manager.is_empty() {
        return Err(ApiError::BadRequest("PATCH, application/apply-patch+yaml requires the fieldManager query parameter".into()));
    }
    let mut entries = read_entries(current);
    let applied_paths = leaf_paths(applied);
    let me = entry_index(&mut entries, req.manager, "Apply", req.sub, req.api_version, req.now);
    let empty = json!({});
    let base = current.unwrap_or(&empty);
    let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i == me {
            continue;
        }
        for p in e.fields.intersection(&applied_paths) {
            if value_at(base, p) != value_at(applied, p) {
                conflicts.push((e.manager.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !req.force {
            let causes: Vec<Cause> = conflicts
                .iter()
                .map(|(m, p)| Cause { reason: "FieldManagerConflict".into(), message: format!("conflict with \"{m}\""), field: dotted(p) })
                .collect();
            let lines: Vec<String> = conflicts.iter().map(|(m, p)| format!("- conflict with \"{m}\": {}", dotted(p))).collect();
            let noun = if conflicts.len() == 1 { "conflict" } else { "conflicts" };
            return Err(ApiError::ApplyConflict {
                target: req.target.clone(),
                message: format!("Apply failed with {} {noun}: {}", conflicts.len(), lines.join("\n").trim_start_matches("- ")),
                causes,
            });
        }
        for (i, e) in entries.iter_mut().enumerate() {
            if i != me {
                e.fields.retain(|p| !conflicts.iter().any(|(_, c)| c == p));
            }
        }
    }
    let mut next = base.clone();
    let dropped: Vec<FieldPath> = entries[me].fields.difference(&applied_paths).cloned().collect();
    for p in dropped {
        let owned_elsewhere = entries.iter().enumerate().any(|(i, e)| i != me && e.fields.contains(&p));
        if !owned_elsewhere {
            remove_at(&mut next, &p);
        }
    }
    let mut body = applied.clone();
    if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    deep_merge(&mut next, &body);
    entries[me].fields = applied_paths;
    if let Some(meta) = next.as_object_mut().map(|o| o.entry("metadata").or_insert_with(|| json!({}))) {
        meta["managedFields"] = write_entries(&entries);
    }
    Ok(next)
}

/// Records a non-apply write (create, update, patch): the writer takes ownership of the
/// fields it changed; fields that no longer exist are owned by no one.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, sub: Subresource, api_version: &str, now: &str) {
    let mut entries = read_entries(old);
    let new_paths = leaf_paths(new);
    let empty = json!({});
    let base = old.unwrap_or(&empty);
    let changed: BTreeSet<FieldPath> = new_paths.iter().filter(|p| value_at(base, p) != value_at(new, p)).cloned().collect();
    for e in entries.iter_mut() {
        e.fields.retain(|p| new_paths.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        let me = entry_index(&mut entries, manager, "Update", sub, api_version, now);
        entries[me].fields.extend(changed);
    }
    let meta = new.as_object_mut().map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(meta) = meta {
        let written = write_entries(&entries);
        if written.as_array().is_some_and(|a| a.is_empty()) {
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
        } else {
            meta["managedFields"] = written;
        }
    }
}

/// Removes `$`-prefixed strategic-merge directives so the patch can be applied as a merge patch.
pub fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().filter(|k| k.starts_with('$')).cloned().collect();
            for k in keys {
                m.remove(&k);
            }
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest { manager, force, sub: Subresource::Main, api_version: "v1", now: "t", target: Target::new("", "configmaps", "c") }
    }

    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"kind": "X", "metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"r": 1, "l": [1, 2], "m": {"x": "y"}}});
        let paths = leaf_paths(&obj);
        assert_eq!(paths.len(), 4);
        assert_eq!(decode(&encode(&paths)), paths);
    }

    #[test]
    fn second_manager_conflicts_on_differing_value_and_force_takes_ownership() {
        let a = apply(None, &json!({"data": {"k": "1", "only-a": "x"}}), &req("a", false)).unwrap();
        let same = apply(Some(&a), &json!({"data": {"k": "1"}}), &req("b", false)).unwrap();
        assert_eq!(read_entries(Some(&same)).len(), 2);
        let err = apply(Some(&a), &json!({"data": {"k": "2"}}), &req("b", false)).unwrap_err();
        assert_eq!(err.code(), 409);
        assert_eq!(err.to_string(), "Apply failed with 1 conflict: conflict with \"a\": .data.k");
        let forced = apply(Some(&a), &json!({"data": {"k": "2"}}), &req("b", true)).unwrap();
        assert_eq!(forced["data"]["k"], "2");
        let entries = read_entries(Some(&forced));
        let a_entry = entries.iter().find(|e| e.manager == "a").unwrap();
        assert!(!a_entry.fields.contains(&vec!["data".to_string(), "k".to_string()]));
    }

    #[test]
    fn fields_dropped_from_an_apply_are_removed() {
        let a = apply(None, &json!({"data": {"k": "1", "gone": "x"}}), &req("a", false)).unwrap();
        let b = apply(Some(&a), &json!({"data": {"k": "1"}}), &req("a", false)).unwrap();
        assert!(b["data"].get("gone").is_none());
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let a = apply(None, &json!({"data": {"k": "1"}}), &req("a", false)).unwrap();
        let mut edited = a.clone();
        edited["data"]["k"] = json!("9");
        record_update(Some(&a), &mut edited, "kubectl-edit", Subresource::Main, "v1", "t");
        let entries = read_entries(Some(&edited));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "kubectl-edit");
    }

    #[test]
    fn strategic_directives_are_stripped() {
        let mut p = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "a", "$patch": "merge"}]}});
        strip_directives(&mut p);
        assert_eq!(p, json!({"spec": {"containers": [{"name": "a"}]}}));
    }
}

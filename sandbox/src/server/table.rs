//! Server-side printing: `meta.k8s.io/v1` `Table` responses for `kubectl get`. Pure (the
//! caller passes `now`).

use serde_json::{Value, json};

use super::resources::{BuiltinTable, PrinterColumn, ResourceType, VersionInfo};

/// What each row's `object` holds (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Evaluates the JSONPath subset used by printer columns: `.a.b`, `.a[0].b`, `{.a.b}`, and
/// filters `.a[?(@.k=="v")].b` (the first matching element).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = obj;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("[?(") {
            let end = after.find(")]")?;
            let (key, want) = after[..end].split_once("==")?;
            let key = key.trim().strip_prefix("@.")?;
            let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
            cur = cur.as_array()?.iter().find(|item| match item.get(key) {
                Some(Value::String(v)) => v == want,
                Some(other) => *other == want,
                None => false,
            })?;
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            cur = cur.get(after[..end].trim().parse::<usize>().ok()?)?;
            rest = &after[end + 1..];
        } else {
            let after = rest.strip_prefix('.').unwrap_or(rest);
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end > 0 {
                cur = cur.get(&after[..end])?;
            }
            rest = &after[end..];
        }
    }
    Some(cur)
}

/// Kubernetes' `duration.HumanDuration`, as printed in AGE columns.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 { format!("{y}y") } else { format!("{y}y{}d", d % 365) }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: Option<&Value>, now: jiff::Timestamp) -> Value {
    match ts.and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => json!(human_duration(now.as_second() - t.as_second())),
        None => json!("<unknown>"),
    }
}

fn column(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

fn name_column() -> Value {
    column("Name", "string", "name", "Name must be unique within a namespace.", 0)
}

fn age_column() -> Value {
    column("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0)
}

fn int_at(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn builtin_cells(kind: BuiltinTable, obj: &Value) -> Vec<Value> {
    match kind {
        BuiltinTable::NameAge => vec![],
        BuiltinTable::Namespace => {
            let phase = if obj.pointer("/metadata/deletionTimestamp").is_some() { "Terminating" } else { "Active" };
            vec![json!(obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or(phase))]
        }
        BuiltinTable::Deployment => vec![
            json!(format!(
                "{}/{}",
                int_at(obj, "/status/readyReplicas"),
                obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
            )),
            json!(int_at(obj, "/status/updatedReplicas")),
            json!(int_at(obj, "/status/availableReplicas")),
        ],
        BuiltinTable::Pod => {
            let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
            let restarts: i64 = statuses.iter().map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
            let status = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                obj.pointer("/status/reason")
                    .or_else(|| obj.pointer("/status/phase"))
                    .and_then(Value::as_str)
                    .unwrap_or("Pending")
                    .to_string()
            };
            vec![json!(format!("{ready}/{total}")), json!(status), json!(restarts)]
        }
    }
}

fn builtin_columns(kind: BuiltinTable) -> Vec<Value> {
    match kind {
        BuiltinTable::NameAge => vec![],
        BuiltinTable::Namespace => vec![column("Status", "string", "", "The status of the namespace", 0)],
        BuiltinTable::Deployment => vec![
            column("Ready", "string", "", "Number of the pod with ready state", 0),
            column(
                "Up-to-date",
                "string",
                "",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                0,
            ),
            column(
                "Available",
                "string",
                "",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                0,
            ),
        ],
        BuiltinTable::Pod => vec![
            column("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            column("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            column("Restarts", "string", "", "The number of times the containers in this pod have been restarted.", 0),
        ],
    }
}

fn custom_cell(c: &PrinterColumn, obj: &Value, now: jiff::Timestamp) -> Value {
    let v = json_path(obj, &c.json_path);
    match (c.type_.as_str(), v) {
        (_, None) | (_, Some(Value::Null)) => Value::Null,
        ("date", v) => age(v, now),
        (_, Some(v)) => v.clone(),
    }
}

/// Column definitions for a type: Name, the type's own columns, Age.
pub fn columns(rt: &ResourceType, vi: &VersionInfo) -> Vec<Value> {
    let mut cols = vec![name_column()];
    if rt.crd.is_some() {
        let has_age = vi.columns.iter().any(|c| c.name.eq_ignore_ascii_case("age"));
        cols.extend(vi.columns.iter().map(|c| column(&c.name, &c.type_, &c.format, &c.description, c.priority)));
        if !has_age {
            cols.push(age_column());
        }
    } else {
        cols.extend(builtin_columns(rt.table));
        cols.push(age_column());
    }
    cols
}

pub fn row(rt: &ResourceType, vi: &VersionInfo, obj: &Value, include: IncludeObject, now: jiff::Timestamp) -> Value {
    let mut cells = vec![json!(obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default())];
    let created = obj.pointer("/metadata/creationTimestamp");
    if rt.crd.is_some() {
        cells.extend(vi.columns.iter().map(|c| custom_cell(c, obj, now)));
        if !vi.columns.iter().any(|c| c.name.eq_ignore_ascii_case("age")) {
            cells.push(age(created, now));
        }
    } else {
        cells.extend(builtin_cells(rt.table, obj));
        cells.push(age(created, now));
    }
    let mut row = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))});
        }
        IncludeObject::Object => row["object"] = obj.clone(),
    }
    row
}

pub fn table(rt: &ResourceType, vi: &VersionInfo, objs: &[Value], rv: u64, include: IncludeObject, now: jiff::Timestamp) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns(rt, vi),
        "rows": objs.iter().map(|o| row(rt, vi, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_subset() {
        let o = json!({"a": {"b": [{"c": 1}, {"c": 2}]}});
        assert_eq!(json_path(&o, ".a.b[1].c"), Some(&json!(2)));
        assert_eq!(json_path(&o, "{.a.b[0].c}"), Some(&json!(1)));
        let conds = json!({"status": {"conditions": [
            {"type": "Progressing", "status": "False"}, {"type": "Ready", "status": "True"}
        ]}});
        assert_eq!(json_path(&conds, r#".status.conditions[?(@.type=="Ready")].status"#), Some(&json!("True")));
        assert_eq!(json_path(&conds, r#".status.conditions[?(@.type=="Gone")].status"#), None);
        assert_eq!(json_path(&o, ".a.x"), None);
    }

    #[test]
    fn human_durations_match_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
        ] {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn deployment_rows_show_ready_over_desired() {
        let r = crate::server::resources::Registry::default();
        let rt = r.resolve("apps", "v1", "deployments").unwrap();
        let o = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let now: jiff::Timestamp = "2020-01-01T00:00:30Z".parse().unwrap();
        let t = table(rt, &rt.versions[0], &[o], 7, IncludeObject::Metadata, now);
        let names: Vec<&str> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["Name", "Ready", "Up-to-date", "Available", "Age"]);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "2/3", 3, 2, "30s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}

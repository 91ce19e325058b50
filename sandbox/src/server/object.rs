//! Server-owned object metadata on create and update: names, uid, timestamps, generation,
//! status-subresource separation, optimistic concurrency. Pure functions; the store calls them
//! under its lock and assigns resource versions itself.

use rand::Rng;
use serde_json::{Map, Value, json};

use super::error::{ApiError, Target};
use super::resources::{ResourceType, VersionInfo};

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

impl Subresource {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Subresource::Main => None,
            Subresource::Status => Some("status"),
        }
    }
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default()
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata was just made an object")
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null())
}

/// Characters the real server uses for generateName suffixes (no vowels, no lookalikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn generated_name(prefix: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())] as char).collect();
    format!("{prefix}{suffix}")
}

fn check_type(rt: &ResourceType, version: &str, obj: &mut Value) -> Result<(), ApiError> {
    let expected = rt.api_version(version);
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != expected => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )));
        }
        _ => obj["apiVersion"] = json!(expected),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != rt.kind => {
            return Err(ApiError::BadRequest(format!("the kind in the data ({k}) does not match the expected kind ({})", rt.kind)));
        }
        _ => obj["kind"] = json!(rt.kind),
    }
    Ok(())
}

fn check_namespace(rt: &ResourceType, namespace: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    let body_ns = meta_str(obj, "namespace").to_string();
    let meta = meta_mut(obj);
    match namespace {
        Some(ns) if rt.namespaced => {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            meta.insert("namespace".into(), json!(ns));
        }
        _ => {
            meta.remove("namespace");
        }
    }
    Ok(())
}

/// Validates and completes an object about to be created. `resourceVersion` is left to the store.
/// A Secret's `stringData` is write-only, as on a real API server: it is merged into `data`
/// (base64; a key in both takes the `stringData` value) and never stored.
fn fold_string_data(rt: &ResourceType, obj: &mut Value) {
    if !(rt.group.is_empty() && rt.plural == "secrets") {
        return;
    }
    let Some(map) = obj.as_object_mut() else { return };
    let Some(Value::Object(strings)) = map.remove("stringData") else { return };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (key, value) in strings {
        if let Some(text) = value.as_str() {
            let encoded = serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap_or_default();
            data[key] = encoded;
        }
    }
}

pub fn prepare_create(rt: &ResourceType, vi: &VersionInfo, namespace: Option<&str>, mut obj: Value, now: &str) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest("the body of the request must be a JSON object".into()));
    }
    fold_string_data(rt, &mut obj);
    check_type(rt, &vi.name, &mut obj)?;
    check_namespace(rt, namespace, &mut obj)?;
    let name = meta_str(&obj, "name").to_string();
    let generate = meta_str(&obj, "generateName").to_string();
    let meta = meta_mut(&mut obj);
    if name.is_empty() {
        if generate.is_empty() {
            return Err(ApiError::invalid_field(
                &rt.kind_group(),
                rt.target(""),
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            ));
        }
        meta.insert("name".into(), json!(generated_name(&generate)));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now));
    meta.insert("generation".into(), json!(1));
    for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
        meta.remove(k);
    }
    if vi.status
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    Ok(obj)
}

/// True when anything but metadata and status differs (for kinds with `spec`: when `spec` does).
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    if old.get("spec").is_some() || new.get("spec").is_some() {
        return old.get("spec") != new.get("spec");
    }
    let strip = |v: &Value| {
        let mut o = v.as_object().cloned().unwrap_or_default();
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
        o
    };
    strip(old) != strip(new)
}

/// Computes the object an update (PUT, patch result, or `/status` write) leaves in the store.
pub fn prepare_update(
    rt: &ResourceType,
    vi: &VersionInfo,
    current: &Value,
    mut proposed: Value,
    sub: Subresource,
) -> Result<Value, ApiError> {
    if !proposed.is_object() {
        return Err(ApiError::BadRequest("the body of the request must be a JSON object".into()));
    }
    if sub == Subresource::Main {
        fold_string_data(rt, &mut proposed);
    }
    let name = meta_str(current, "name").to_string();
    let body_name = meta_str(&proposed, "name").to_string();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::BadRequest(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
    }
    let ns = meta_str(current, "namespace").to_string();
    check_namespace(rt, (!ns.is_empty()).then_some(ns.as_str()), &mut proposed)?;
    check_type(rt, &vi.name, &mut proposed)?;
    let wanted_rv = meta_str(&proposed, "resourceVersion");
    if !wanted_rv.is_empty() && wanted_rv != meta_str(current, "resourceVersion") {
        return Err(ApiError::Conflict {
            target: rt.target(&name),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        });
    }
    let mut next = match sub {
        Subresource::Status => {
            let mut next = current.clone();
            match proposed.get("status") {
                Some(s) => next["status"] = s.clone(),
                None => {
                    next.as_object_mut().map(|o| o.remove("status"));
                }
            }
            next
        }
        Subresource::Main => {
            if vi.status {
                match current.get("status") {
                    Some(s) => proposed["status"] = s.clone(),
                    None => {
                        proposed.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            proposed
        }
    };
    let cur_meta = current.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    let meta = meta_mut(&mut next);
    meta.insert("name".into(), json!(name));
    for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "managedFields"] {
        match cur_meta.get(k) {
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
    meta.remove("resourceVersion");
    if spec_changed(current, &next) {
        let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1) + 1;
        meta_mut(&mut next).insert("generation".into(), json!(generation));
    }
    Ok(next)
}

/// Equal up to `resourceVersion` and `managedFields` timestamps: such a write is a no-op.
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            if let Some(entries) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
                for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

pub fn target_of(rt: &ResourceType, obj: &Value) -> Target {
    rt.target(meta_str(obj, "name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::resources::Registry;

    fn deployments() -> (ResourceType, VersionInfo) {
        let rt = Registry::default().resolve("apps", "v1", "deployments").unwrap().clone();
        let vi = rt.versions[0].clone();
        (rt, vi)
    }

    fn current() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 1, "resourceVersion": "5", "creationTimestamp": "t"},
               "spec": {"replicas": 1}, "status": {"replicas": 1}})
    }

    #[test]
    fn create_fills_server_metadata_and_drops_status() {
        let (rt, vi) = deployments();
        let o = prepare_create(&rt, &vi, Some("default"), json!({"metadata": {"generateName": "web-"}, "status": {"x": 1}}), "t0").unwrap();
        assert!(meta_str(&o, "name").starts_with("web-") && meta_str(&o, "name").len() == 9);
        assert_eq!(o["metadata"]["generation"], 1);
        assert_eq!(o["metadata"]["namespace"], "default");
        assert_eq!(o["kind"], "Deployment");
        assert!(o.get("status").is_none());
    }

    #[test]
    fn create_rejects_mismatched_namespace_and_kind() {
        let (rt, vi) = deployments();
        let e = prepare_create(&rt, &vi, Some("default"), json!({"metadata": {"name": "a", "namespace": "other"}}), "t").unwrap_err();
        assert_eq!(e.code(), 400);
        let e = prepare_create(&rt, &vi, Some("default"), json!({"kind": "Pod", "metadata": {"name": "a"}}), "t").unwrap_err();
        assert_eq!(e.code(), 400);
    }

    #[test]
    fn generation_bumps_on_spec_change_only_and_status_is_kept_on_main_writes() {
        let (rt, vi) = deployments();
        let mut p = current();
        p["metadata"]["labels"] = json!({"a": "b"});
        p["status"] = json!({"replicas": 9});
        let n = prepare_update(&rt, &vi, &current(), p, Subresource::Main).unwrap();
        assert_eq!(n["metadata"]["generation"], 1);
        assert_eq!(n["status"]["replicas"], 1);
        let mut p = current();
        p["spec"]["replicas"] = json!(3);
        let n = prepare_update(&rt, &vi, &current(), p, Subresource::Main).unwrap();
        assert_eq!(n["metadata"]["generation"], 2);
    }

    #[test]
    fn status_writes_change_only_status() {
        let (rt, vi) = deployments();
        let mut p = current();
        p["spec"]["replicas"] = json!(7);
        p["metadata"]["labels"] = json!({"a": "b"});
        p["status"] = json!({"replicas": 3});
        let n = prepare_update(&rt, &vi, &current(), p, Subresource::Status).unwrap();
        assert_eq!(n["spec"]["replicas"], 1);
        assert!(n["metadata"].get("labels").is_none());
        assert_eq!(n["status"]["replicas"], 3);
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let (rt, vi) = deployments();
        let mut p = current();
        p["metadata"]["resourceVersion"] = json!("4");
        assert_eq!(prepare_update(&rt, &vi, &current(), p, Subresource::Main).unwrap_err().code(), 409);
    }

    #[test]
    fn kinds_without_spec_bump_on_data_changes() {
        assert!(spec_changed(&json!({"data": {"a": "1"}}), &json!({"data": {"a": "2"}})));
        assert!(!spec_changed(&json!({"data": {"a": "1"}, "metadata": {"labels": {}}}), &json!({"data": {"a": "1"}})));
    }
}

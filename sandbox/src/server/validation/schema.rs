//! Reading a structural schema: flags, properties, declared types, nullability, bounds, the
//! keys of `x-kubernetes-list-type: map` lists, and JSON type names and equality as Go's JSON
//! decoding sees them. Shared by the checks, the CEL walk, pruning and defaulting; no errors are
//! built here.

use serde_json::{Map, Value};

pub(super) fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

pub(super) fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The `additionalProperties` schema, when it is one (not a bool).
pub(super) fn additional_schema(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

pub(super) fn declared_types(schema: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() && flag(schema, "x-kubernetes-int-or-string") {
        types = vec!["integer", "string"];
    }
    types
}

pub(super) fn is_nullable(schema: &Value) -> bool {
    flag(schema, "nullable")
        || declared_types(schema).contains(&"null")
        || ["anyOf", "oneOf"]
            .iter()
            .any(|k| schema.get(*k).and_then(Value::as_array).is_some_and(|branches| branches.iter().any(is_null_branch)))
}

/// `{"type": "null"}` or `{"nullable": true}` alone: how schemars spells `Option<T>` in a union.
pub(super) fn is_null_branch(branch: &Value) -> bool {
    branch.get("type").and_then(Value::as_str) == Some("null")
        || (flag(branch, "nullable") && branch.get("type").is_none())
        || branch.get("enum").and_then(Value::as_array).is_some_and(|e| e.len() == 1 && e[0].is_null())
}

pub(super) fn number_bound(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

pub(super) fn count_bound(schema: &Value, key: &str) -> Option<u64> {
    schema.get(key).and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
}

/// The JSON type name kube-openapi reports for a value: whole numbers stored as floats are
/// still `number` (they pass as `integer` through the float-int rule).
pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(super) fn matches_type(ty: &str, value: &Value) -> bool {
    match (ty, value) {
        ("null", Value::Null) => true,
        ("boolean", Value::Bool(_)) => true,
        ("string", Value::String(_)) => true,
        ("array", Value::Array(_)) => true,
        ("object", Value::Object(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0),
        _ => false,
    }
}

/// Deep equality where `1` and `1.0` are the same number, as after Go's JSON decoding.
pub(super) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w))),
        _ => a == b,
    }
}

/// The old version of a list item: only `x-kubernetes-list-type: map` lists correlate items (by
/// their key fields); other lists are atomic, so their items have no old version.
pub(super) fn correlated_item<'a>(list_schema: &Value, item: &Value, old_list: Option<&'a Value>) -> Option<&'a Value> {
    if list_schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys = list_map_keys(list_schema);
    let key = list_map_key(item, &keys)?;
    old_list?.as_array()?.iter().find(|o| list_map_key(o, &keys).is_some_and(|k| json_equal(&k, &key)))
}

pub(super) fn list_map_keys(schema: &Value) -> Vec<String> {
    schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The identity of a `map`-list item: its key fields (absent keys are left out).
pub(super) fn list_map_key(item: &Value, keys: &[String]) -> Option<Value> {
    let fields = item.as_object()?;
    let key: Map<String, Value> = keys.iter().filter_map(|k| fields.get(k).map(|v| (k.clone(), v.clone()))).collect();
    Some(Value::Object(key))
}

//! Validation, pruning and defaulting of custom resources against their CRD version's
//! `openAPIV3Schema`, the way kube-apiserver's apiextensions-apiserver does it.
//!
//! This module owns what a client sees when the sandbox rejects a custom resource: the
//! `StatusCause`-shaped [`FieldError`]s (field path, reason, message) and the `Status` message
//! built from them ([`invalid_message`]). Paths and messages follow the real server:
//! OpenAPI keyword errors come from kube-openapi (`spec.items[2].name`, map values as
//! `spec.labels.foo`, messages such as `spec.replicas in body should be greater than or equal
//! to 0`), CEL errors from the `x-kubernetes-validations` walker (map values as
//! `spec.labels[foo]`, `failed rule: <rule>`). CEL rules only run when the schema checks found no
//! blocking error, exactly like the real server, which then adds its `<nil>` "some validation
//! rules were not checked" cause instead.
//!
//! Admission order on the real server, which callers should keep: [`prune`], then
//! [`apply_defaults`], then [`validate`].
//!
//! Everything here is a pure function of its arguments: no I/O, no clock, no global state other
//! than a per-thread cache of compiled `pattern` regexes. CEL evaluation is delegated to
//! `kube-cel` (the `cel` crate plus the Kubernetes extension libraries).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

/// One validation failure, shaped like a Kubernetes `StatusCause`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field path as the real API server prints it, e.g. `spec.items[2].name`; `<nil>` for
    /// the object root (the real server's rendering of an empty `field.Path`).
    pub field: String,
    /// The `StatusCause` type: `FieldValueRequired`, `FieldValueNotSupported`,
    /// `FieldValueInvalid`, `FieldValueTypeInvalid`, `FieldValueTooLong`, `FieldValueTooMany`,
    /// `FieldValueForbidden` or `FieldValueDuplicate`.
    pub reason: String,
    /// The cause message without the field, e.g. `Required value` or
    /// `Invalid value: -1: spec.replicas in body should be greater than or equal to 0`.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Validates a custom resource against its CRD version's `openAPIV3Schema` (the JSON value of
/// `spec.versions[].schema.openAPIV3Schema`), including `x-kubernetes-validations` CEL rules.
///
/// `old` is the stored object on update: transition rules (those using `oldSelf`) run only where
/// the old object has a value at the same place (properties by name, map entries by key, items
/// of `x-kubernetes-list-type: map` lists by their map keys), and are skipped on create.
///
/// On update, values equal to their old version are not re-validated (Kubernetes' validation
/// ratcheting): schema errors inside them are ignored, and only their transition rules run.
///
/// Errors come in a deterministic order: schema keyword errors in a depth-first walk (object
/// keys in sorted order), then list-type (`set`/`map`) duplicates, then CEL errors.
pub fn validate(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut schema_errors = Vec::new();
    let mut list_errors = Vec::new();
    check_node(schema, obj, old, "", &mut schema_errors, &mut list_errors);
    let mut errors = schema_errors;
    errors.append(&mut list_errors);

    if has_cel_rules(schema) {
        if errors.iter().any(is_blocking) {
            // The real server skips CEL when the object is structurally broken and says so with
            // a field-less cause.
            errors.push(FieldError {
                field: "<nil>".to_string(),
                reason: ErrorType::Invalid.reason().to_string(),
                message: "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_string(),
            });
        } else {
            cel_walk(schema, obj, old, "", &mut errors);
        }
    }
    errors
}

/// Drops fields not in the schema (structural pruning), except under
/// `x-kubernetes-preserve-unknown-fields: true` and never `apiVersion`, `kind`, `metadata` at the
/// root (nor at an `x-kubernetes-embedded-resource`).
pub fn prune(schema: &Value, obj: &mut Value) {
    prune_reporting(schema, obj);
}

/// [`prune`], returning the paths of the fields it dropped (e.g. `spec.foo`,
/// `spec.items[0].bar`), in the order found, for `unknown field "<path>"` warnings or
/// `fieldValidation=Strict` errors.
pub fn prune_reporting(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut dropped = Vec::new();
    prune_node(schema, obj, "", true, &mut dropped);
    dropped
}

/// Applies `default` values from the schema, like the real server: only to absent fields (and
/// to `null` values of non-nullable fields), recursively, including inside defaults just applied.
/// Like the real server, it first drops `null` values of non-nullable fields that have no default.
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    default_node(schema, obj);
}

/// The message the real API server puts in the `Status`:
/// `<Kind>.<group> "<name>" is invalid: <field>: <detail>` for one error, and
/// `... is invalid: [<field>: <detail>, <field>: <detail>]` for several (identical lines are
/// printed once), as Kubernetes' error aggregate does.
pub fn invalid_message(kind_group: &str, name: &str, errors: &[FieldError]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for error in errors {
        let line = error.to_string();
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    let body = match lines.len() {
        0 => "<nil>".to_string(),
        1 => lines.remove(0),
        _ => format!("[{}]", lines.join(", ")),
    };
    format!("{kind_group} \"{name}\" is invalid: {body}")
}

// ---------------------------------------------------------------------------------------------
// Error construction

#[derive(Debug, Clone, Copy, PartialEq)]
enum ErrorType {
    Required,
    NotSupported,
    Invalid,
    TypeInvalid,
    TooLong,
    TooMany,
    Forbidden,
    Duplicate,
}

impl ErrorType {
    fn reason(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::TypeInvalid => "FieldValueTypeInvalid",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::Duplicate => "FieldValueDuplicate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Invalid | ErrorType::TypeInvalid => "Invalid value",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::Duplicate => "Duplicate value",
        }
    }

    /// Kubernetes prints no value for these types.
    fn omits_value(self) -> bool {
        matches!(self, ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong)
    }
}

fn is_blocking(error: &FieldError) -> bool {
    [
        ErrorType::NotSupported,
        ErrorType::Required,
        ErrorType::TooLong,
        ErrorType::TooMany,
        ErrorType::TypeInvalid,
    ]
    .iter()
    .any(|t| t.reason() == error.reason)
}

/// Builds a cause the way `field.Error.ErrorBody()` renders it.
fn field_error(ty: ErrorType, path: &str, bad_value: &Value, detail: &str) -> FieldError {
    let mut message = ty.label().to_string();
    if !ty.omits_value() {
        message.push_str(": ");
        message.push_str(&render_value(bad_value));
    }
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(detail);
    }
    FieldError {
        field: display_path(path),
        reason: ty.reason().to_string(),
        message,
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    }
}

/// Go's `%q` for strings, `%v` for numbers and booleans, `"null"` for nil; JSON for the rest.
fn render_value(value: &Value) -> String {
    match value {
        Value::Null => "\"null\"".to_string(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Number(n) => render_number(n),
        other => other.to_string(),
    }
}

fn render_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        n.to_string()
    } else {
        render_f64(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Whole floats print without a fractional part, as Go's `%v` does.
fn render_f64(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

fn child_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

fn key_path(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

// ---------------------------------------------------------------------------------------------
// Schema accessors

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The `additionalProperties` schema, when it is one (not a bool).
fn additional_schema(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

fn declared_types(schema: &Value) -> Vec<&str> {
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

fn is_nullable(schema: &Value) -> bool {
    flag(schema, "nullable")
        || declared_types(schema).contains(&"null")
        || ["anyOf", "oneOf"].iter().any(|k| {
            schema
                .get(*k)
                .and_then(Value::as_array)
                .is_some_and(|branches| branches.iter().any(is_null_branch))
        })
}

/// `{"type": "null"}` or `{"nullable": true}` alone: how schemars spells `Option<T>` in a union.
fn is_null_branch(branch: &Value) -> bool {
    branch.get("type").and_then(Value::as_str) == Some("null")
        || (flag(branch, "nullable") && branch.get("type").is_none())
        || branch
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.len() == 1 && e[0].is_null())
}

fn number_bound(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

fn count_bound(schema: &Value, key: &str) -> Option<u64> {
    schema
        .get(key)
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
}

/// The JSON type name kube-openapi reports for a value: whole numbers stored as floats are
/// still `number` (they pass as `integer` through the float-int rule).
fn json_kind(value: &Value) -> &'static str {
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

fn matches_type(ty: &str, value: &Value) -> bool {
    match (ty, value) {
        ("null", Value::Null) => true,
        ("boolean", Value::Bool(_)) => true,
        ("string", Value::String(_)) => true,
        ("array", Value::Array(_)) => true,
        ("object", Value::Object(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0)
        }
        _ => false,
    }
}

/// Deep equality where `1` and `1.0` are the same number, as after Go's JSON decoding.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAPI keyword validation (kube-openapi's SchemaValidator, in its validator order:
// type, allOf/anyOf/oneOf/not, string, number, array, enum, object)

fn check_node(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<FieldError>,
    lists: &mut Vec<FieldError>,
) {
    // Validation ratcheting (on by default since Kubernetes 1.30): an update may keep a value
    // that no longer validates, as long as it does not change it.
    if !schema.is_object() || old.is_some_and(|o| json_equal(o, value)) {
        return;
    }
    let types = declared_types(schema);

    if value.is_null() {
        if !types.is_empty() && !types.contains(&"null") && !is_nullable(schema) {
            out.push(type_error(path, &types, "null"));
        }
        check_enum(schema, value, path, out);
        return;
    }

    if !types.is_empty() && !types.iter().any(|t| matches_type(t, value)) {
        out.push(type_error(path, &types, json_kind(value)));
    }

    check_combinators(schema, value, path, out);

    match value {
        Value::String(s) => check_string(schema, s, path, out),
        Value::Number(n) => check_number(schema, n, path, out),
        Value::Array(items) => check_array(schema, items, old, path, out, lists),
        _ => {}
    }

    check_enum(schema, value, path, out);

    if let Value::Object(fields) = value {
        check_object(schema, fields, old, path, out, lists);
    }
}

fn type_error(path: &str, types: &[&str], actual: &str) -> FieldError {
    let expected = types.join(",");
    field_error(
        ErrorType::TypeInvalid,
        path,
        &Value::String(actual.to_string()),
        &format!("{path} in body must be of type {expected}: \"{actual}\""),
    )
}

/// `enum`, plus `const` (schemars emits it for single-value variants).
fn allowed_values(schema: &Value) -> Option<Vec<Value>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.clone());
    }
    schema.get("const").map(|c| vec![c.clone()])
}

fn check_enum(schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldError>) {
    if let Some(allowed) = allowed_values(schema)
        && !allowed.iter().any(|a| json_equal(a, value))
    {
        out.push(not_supported(path, value, &allowed));
    }
}

fn not_supported(path: &str, value: &Value, allowed: &[Value]) -> FieldError {
    let quoted: Vec<String> = allowed
        .iter()
        .map(|v| match v {
            Value::String(s) => Value::String(s.clone()).to_string(),
            other => Value::String(other.to_string()).to_string(),
        })
        .collect();
    field_error(
        ErrorType::NotSupported,
        path,
        value,
        &format!("supported values: {}", quoted.join(", ")),
    )
}

fn check_string(schema: &Value, s: &str, path: &str, out: &mut Vec<FieldError>) {
    let length = s.chars().count() as u64;
    let value = Value::String(s.to_string());
    if let Some(max) = count_bound(schema, "maxLength")
        && length > max
    {
        out.push(field_error(
            ErrorType::TooLong,
            path,
            &value,
            &format!("may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = count_bound(schema, "minLength")
        && length < min
    {
        out.push(field_error(
            ErrorType::Invalid,
            path,
            &value,
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // A pattern that does not compile is the CRD's fault and is refused when the CRD is
        // created; here it constrains nothing.
        if pattern_matches(pattern, s) == Some(false) {
            out.push(field_error(
                ErrorType::Invalid,
                path,
                &value,
                &format!("{path} in body should match '{pattern}'"),
            ));
        }
    }
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Option<regex::Regex>>> = RefCell::new(HashMap::new());
}

fn pattern_matches(pattern: &str, s: &str) -> Option<bool> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let compiled = cache
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).ok());
        compiled.as_ref().map(|re| re.is_match(s))
    })
}

fn check_number(schema: &Value, n: &serde_json::Number, path: &str, out: &mut Vec<FieldError>) {
    let value = Value::Number(n.clone());
    let x = n.as_f64().unwrap_or(f64::NAN);
    if let Some(factor) = number_bound(schema, "multipleOf")
        && factor > 0.0
        && (x / factor).fract() != 0.0
    {
        out.push(field_error(
            ErrorType::Invalid,
            path,
            &value,
            &format!("{path} in body should be a multiple of {}", render_f64(factor)),
        ));
    }
    if let Some(max) = number_bound(schema, "maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if (exclusive && x >= max) || (!exclusive && x > max) {
            let relation = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(field_error(
                ErrorType::Invalid,
                path,
                &value,
                &format!("{path} in body should be {relation} {}", render_f64(max)),
            ));
        }
    }
    if let Some(min) = number_bound(schema, "minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if (exclusive && x <= min) || (!exclusive && x < min) {
            let relation = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(field_error(
                ErrorType::Invalid,
                path,
                &value,
                &format!("{path} in body should be {relation} {}", render_f64(min)),
            ));
        }
    }
}

fn check_array(
    schema: &Value,
    items: &[Value],
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<FieldError>,
    lists: &mut Vec<FieldError>,
) {
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            let item_old = correlated_item(schema, item, old);
            check_node(item_schema, item, item_old, &index_path(path, i), out, lists);
        }
    }
    let size = Value::from(items.len());
    if let Some(min) = count_bound(schema, "minItems")
        && (items.len() as u64) < min
    {
        out.push(field_error(
            ErrorType::Invalid,
            path,
            &size,
            &format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = count_bound(schema, "maxItems")
        && items.len() as u64 > max
    {
        out.push(field_error(
            ErrorType::TooMany,
            path,
            &size,
            &format!("must have at most {max} items"),
        ));
    }
    check_list_type(schema, items, path, lists);
}

/// `x-kubernetes-list-type: set` items and `map` keys must be unique; later duplicates are
/// reported at their index.
fn check_list_type(schema: &Value, items: &[Value], path: &str, lists: &mut Vec<FieldError>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].iter().any(|earlier| json_equal(earlier, item)) {
                    lists.push(field_error(ErrorType::Duplicate, &index_path(path, i), item, ""));
                }
            }
        }
        Some("map") => {
            let keys = list_map_keys(schema);
            for (i, item) in items.iter().enumerate() {
                let Some(key) = list_map_key(item, &keys) else {
                    continue;
                };
                let duplicate = items[..i]
                    .iter()
                    .filter_map(|earlier| list_map_key(earlier, &keys))
                    .any(|earlier| json_equal(&earlier, &key));
                if duplicate {
                    lists.push(field_error(ErrorType::Duplicate, &index_path(path, i), &key, ""));
                }
            }
        }
        _ => {}
    }
}

/// The old version of a list item: only `x-kubernetes-list-type: map` lists correlate items (by
/// their key fields); other lists are atomic, so their items have no old version.
fn correlated_item<'a>(list_schema: &Value, item: &Value, old_list: Option<&'a Value>) -> Option<&'a Value> {
    if list_schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys = list_map_keys(list_schema);
    let key = list_map_key(item, &keys)?;
    old_list?
        .as_array()?
        .iter()
        .find(|o| list_map_key(o, &keys).is_some_and(|k| json_equal(&k, &key)))
}

fn list_map_keys(schema: &Value) -> Vec<String> {
    schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The identity of a `map`-list item: its key fields (absent keys are left out).
fn list_map_key(item: &Value, keys: &[String]) -> Option<Value> {
    let fields = item.as_object()?;
    let key: Map<String, Value> = keys
        .iter()
        .filter_map(|k| fields.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    Some(Value::Object(key))
}

fn check_object(
    schema: &Value,
    fields: &Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<FieldError>,
    lists: &mut Vec<FieldError>,
) {
    let count = fields.len();
    if let Some(max) = count_bound(schema, "maxProperties")
        && count as u64 > max
    {
        out.push(field_error(
            ErrorType::TooMany,
            path,
            &Value::from(count),
            &format!("must have at most {max} items"),
        ));
        return;
    }
    if let Some(min) = count_bound(schema, "minProperties")
        && (count as u64) < min
    {
        out.push(field_error(
            ErrorType::Invalid,
            path,
            &Value::from(count),
            &format!("{path} in body should have at least {min} properties"),
        ));
        return;
    }

    let declared = properties(schema);
    let is_declared = |key: &str| declared.is_some_and(|p| p.contains_key(key));

    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        for key in fields.keys().filter(|k| !is_declared(k)) {
            out.push(field_error(
                ErrorType::Invalid,
                path,
                &Value::String(key.clone()),
                &format!("{} in body is a forbidden property", child_path(path, key)),
            ));
        }
    } else if let Some(value_schema) = additional_schema(schema) {
        // kube-openapi names map entries with a dot, not `[key]`.
        for (key, value) in fields.iter().filter(|(k, _)| !is_declared(k)) {
            check_node(
                value_schema,
                value,
                old.and_then(|o| o.get(key)),
                &child_path(path, key),
                out,
                lists,
            );
        }
    }

    if let Some(declared) = declared {
        for (name, value) in fields {
            if let Some(property_schema) = declared.get(name) {
                check_node(
                    property_schema,
                    value,
                    old.and_then(|o| o.get(name)),
                    &child_path(path, name),
                    out,
                    lists,
                );
            }
        }
    }

    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                out.push(field_error(
                    ErrorType::Required,
                    &child_path(path, name),
                    &Value::Null,
                    "",
                ));
            }
        }
    }
}

/// A union branch that only lists allowed values, the shape schemars gives documented enum
/// variants: `oneOf: [{type: string, enum: [a]}, {type: string, const: b}]`.
fn is_value_list_branch(branch: &Value) -> bool {
    let Some(keys) = branch.as_object() else {
        return false;
    };
    (keys.contains_key("enum") || keys.contains_key("const"))
        && keys.keys().all(|k| {
            matches!(
                k.as_str(),
                "enum" | "const" | "type" | "description" | "title" | "nullable"
            )
        })
}

fn check_combinators(schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldError>) {
    let branches = |key: &str| schema.get(key).and_then(Value::as_array).filter(|b| !b.is_empty());

    let quoted_path = Value::String(path.to_string()).to_string();

    if let Some(all_of) = branches("allOf") {
        let mut validated = 0;
        for branch in all_of {
            let before = out.len();
            check_branch(branch, value, path, out);
            if out.len() == before {
                validated += 1;
            }
        }
        if validated != all_of.len() {
            let none = if validated == 0 { ". None validated" } else { "" };
            out.push(composite_error(&format!(
                "{quoted_path} must validate all the schemas (allOf){none}"
            )));
        }
    }

    for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        let Some(alternatives) = branches(key) else {
            continue;
        };
        let alternatives: Vec<&Value> = alternatives.iter().filter(|b| !is_null_branch(b)).collect();
        if alternatives.is_empty() {
            continue;
        }

        // An enum spelled as a union reads best as one "Unsupported value" listing all values.
        if alternatives.iter().all(|b| is_value_list_branch(b)) {
            let allowed: Vec<Value> = alternatives
                .iter()
                .filter_map(|b| allowed_values(b))
                .flatten()
                .collect();
            if !allowed.iter().any(|a| json_equal(a, value)) {
                out.push(not_supported(path, value, &allowed));
            }
            continue;
        }

        let outcomes: Vec<Vec<FieldError>> = alternatives
            .iter()
            .map(|branch| {
                let mut errors = Vec::new();
                check_branch(branch, value, path, &mut errors);
                errors
            })
            .collect();
        let valid = outcomes.iter().filter(|errors| errors.is_empty()).count();
        let summary = match (exactly_one, valid) {
            (false, 0) => Some(format!("{quoted_path} must validate at least one schema (anyOf)")),
            (true, 0) => Some(format!(
                "{quoted_path} must validate one and only one schema (oneOf). Found none valid"
            )),
            (true, n) if n > 1 => Some(format!(
                "{quoted_path} must validate one and only one schema (oneOf). Found {n} valid alternatives"
            )),
            _ => None,
        };
        if let Some(summary) = summary {
            out.push(composite_error(&summary));
            if valid == 0 {
                // Like kube-openapi, explain with the alternative that came closest.
                if let Some(closest) = outcomes.into_iter().min_by_key(Vec::len) {
                    out.extend(closest);
                }
            }
        }
    }

    if let Some(forbidden) = schema.get("not").filter(|n| n.is_object()) {
        let mut errors = Vec::new();
        check_branch(forbidden, value, path, &mut errors);
        if errors.is_empty() {
            out.push(composite_error(&format!(
                "{quoted_path} must not validate the schema (not)"
            )));
        }
    }
}

/// kube-openapi reports union failures as plain errors, which the real server turns into causes
/// without a field: `<nil>: Invalid value: "": "spec.x" must validate ...`.
fn composite_error(detail: &str) -> FieldError {
    field_error(ErrorType::Invalid, "", &Value::String(String::new()), detail)
}

/// Value validations in a union branch; list-type checks belong to the structural schema only.
fn check_branch(branch: &Value, value: &Value, path: &str, out: &mut Vec<FieldError>) {
    let mut ignored_lists = Vec::new();
    check_node(branch, value, None, path, out, &mut ignored_lists);
}

// ---------------------------------------------------------------------------------------------
// x-kubernetes-validations (CEL)

fn node_rules(schema: &Value) -> Option<&Vec<Value>> {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .filter(|rules| !rules.is_empty())
}

/// Whether any node of the structural schema carries CEL rules.
fn has_cel_rules(schema: &Value) -> bool {
    node_rules(schema).is_some()
        || properties(schema).is_some_and(|p| p.values().any(has_cel_rules))
        || schema.get("items").is_some_and(has_cel_rules)
        || additional_schema(schema).is_some_and(has_cel_rules)
}

/// Evaluates rules top-down: the node's own rules, then properties (sorted), map entries
/// (sorted), list items (in order). Absent and null values are not evaluated.
fn cel_walk(schema: &Value, value: &Value, old: Option<&Value>, path: &str, out: &mut Vec<FieldError>) {
    if value.is_null() || !schema.is_object() {
        return;
    }
    let old = old.filter(|o| !o.is_null());
    if node_rules(schema).is_some() {
        evaluate_node_rules(schema, value, old, path, out);
    }

    match value {
        Value::Object(fields) => {
            let declared = properties(schema);
            for (key, child) in fields {
                let child_old = old.and_then(|o| o.get(key));
                if let Some(property_schema) = declared.and_then(|p| p.get(key)) {
                    cel_walk(property_schema, child, child_old, &child_path(path, key), out);
                } else if let Some(value_schema) = additional_schema(schema) {
                    cel_walk(value_schema, child, child_old, &key_path(path, key), out);
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else {
                return;
            };
            for (i, item) in items.iter().enumerate() {
                let item_old = correlated_item(schema, item, old);
                cel_walk(item_schema, item, item_old, &index_path(path, i), out);
            }
        }
        _ => {}
    }
}

/// The node's schema with the rules of every descendant removed, so that kube-cel evaluates
/// exactly this node's rules while still converting `self` with the full schema (formats,
/// int-or-string, map-vs-object keys).
fn shallow_rule_schema(schema: &Value) -> Value {
    fn strip(schema: &mut Value) {
        let Some(fields) = schema.as_object_mut() else {
            return;
        };
        fields.remove("x-kubernetes-validations");
        for key in ["allOf", "anyOf", "oneOf", "not"] {
            fields.remove(key);
        }
        if let Some(Value::Object(props)) = fields.get_mut("properties") {
            props.values_mut().for_each(strip);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = fields.get_mut(key) {
                strip(child);
            }
        }
    }
    let mut shallow = schema.clone();
    if let Some(fields) = shallow.as_object_mut() {
        for key in ["allOf", "anyOf", "oneOf", "not"] {
            fields.remove(key);
        }
        if let Some(Value::Object(props)) = fields.get_mut("properties") {
            props.values_mut().for_each(strip);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = fields.get_mut(key) {
                strip(child);
            }
        }
    }
    shallow
}

fn evaluate_node_rules(schema: &Value, value: &Value, old: Option<&Value>, path: &str, out: &mut Vec<FieldError>) {
    let mut shallow = shallow_rule_schema(schema);
    if old.is_some_and(|o| json_equal(o, value)) {
        // Ratcheting: an unchanged value only answers to transition rules.
        if let Some(Value::Array(rules)) = shallow.get_mut("x-kubernetes-validations") {
            rules.retain(|r| {
                r.get("rule")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.contains("oldSelf"))
            });
            if rules.is_empty() {
                return;
            }
        }
    }
    let Err(failures) = kube_cel::validate(&shallow, value, old) else {
        return;
    };
    // The real server reports the schema type of the node as the "value" of CEL causes.
    let node_type = Value::String(schema.get("type").and_then(Value::as_str).unwrap_or("").to_string());

    for failure in failures.into_vec() {
        let error = match failure.kind {
            kube_cel::ErrorKind::ValidationFailure => {
                let field = join_rule_field_path(path, &failure.field_path);
                rule_failure(failure.reason.as_deref(), &field, &node_type, &failure.message)
            }
            kube_cel::ErrorKind::CompilationFailure => {
                let prefix = format!("failed to compile rule \"{}\": ", failure.rule);
                let detail = failure.message.strip_prefix(&prefix).unwrap_or(&failure.message);
                field_error(
                    ErrorType::Invalid,
                    path,
                    &node_type,
                    &format!("rule compile error: compilation failed: {detail}"),
                )
            }
            kube_cel::ErrorKind::EvaluationError | kube_cel::ErrorKind::UnsupportedReference => {
                let cause = evaluation_cause(&failure);
                field_error(
                    ErrorType::Invalid,
                    path,
                    &node_type,
                    &format!("{cause} evaluating rule: {}", failure.rule.trim()),
                )
            }
            _ => field_error(ErrorType::Invalid, path, &node_type, &failure.message),
        };
        out.push(error);
    }
}

/// A failed rule becomes the cause its `reason` asks for (`FieldValueInvalid` by default).
fn rule_failure(reason: Option<&str>, field: &str, node_type: &Value, message: &str) -> FieldError {
    match reason {
        Some("FieldValueForbidden") => field_error(ErrorType::Forbidden, field, node_type, message),
        Some("FieldValueRequired") => field_error(ErrorType::Required, field, node_type, message),
        Some("FieldValueDuplicate") => field_error(ErrorType::Duplicate, field, node_type, ""),
        _ => field_error(ErrorType::Invalid, field, node_type, message),
    }
}

/// cel-go's wording for the common runtime errors, which users grep for.
fn evaluation_cause(failure: &kube_cel::ValidationError) -> String {
    use std::error::Error as _;
    let Some(source) = failure.source() else {
        return failure.message.clone();
    };
    match source.downcast_ref::<kube_cel::cel::ExecutionError>() {
        Some(kube_cel::cel::ExecutionError::NoSuchKey(key)) => format!("no such key: {key}"),
        Some(other) => other.to_string(),
        None => source.to_string(),
    }
}

/// Appends a rule's `fieldPath` (`.a.b`, `.a['b.c']`, `['a']`) to the node path.
fn join_rule_field_path(path: &str, field_path: &str) -> String {
    let mut result = path.to_string();
    let mut rest = field_path.trim();
    while !rest.is_empty() {
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
            result = child_path(&result, &after_dot[..end]);
            rest = &after_dot[end..];
        } else if let Some(after_bracket) = rest.strip_prefix('[') {
            let quote = after_bracket.chars().next();
            match quote {
                Some(q @ ('\'' | '"')) => {
                    let inner = &after_bracket[1..];
                    let end = inner.find(q).unwrap_or(inner.len());
                    result = child_path(&result, &inner[..end]);
                    rest = inner[end..].trim_start_matches(q).trim_start_matches(']');
                }
                _ => {
                    let end = after_bracket.find(']').unwrap_or(after_bracket.len());
                    result = format!("{result}[{}]", &after_bracket[..end]);
                    rest = after_bracket[end..].trim_start_matches(']');
                }
            }
        } else {
            // A bare leading name, e.g. `spec.replicas`.
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            result = child_path(&result, &rest[..end]);
            rest = &rest[end..];
        }
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Pruning

fn prune_node(schema: &Value, value: &mut Value, path: &str, is_resource_root: bool, dropped: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            let keep_type_meta = is_resource_root || flag(schema, "x-kubernetes-embedded-resource");
            let preserve_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let allows_any = schema.get("additionalProperties") == Some(&Value::Bool(true));
            let declared = properties(schema);
            let value_schema = additional_schema(schema);

            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in keys {
                if keep_type_meta && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child = child_path(path, &key);
                if let Some(property_schema) = declared.and_then(|p| p.get(&key)) {
                    if let Some(v) = fields.get_mut(&key) {
                        prune_node(property_schema, v, &child, false, dropped);
                    }
                } else if let Some(value_schema) = value_schema {
                    if let Some(v) = fields.get_mut(&key) {
                        prune_node(value_schema, v, &child, false, dropped);
                    }
                } else if !(preserve_unknown || allows_any) {
                    fields.remove(&key);
                    dropped.push(child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_node(item_schema, item, &index_path(path, i), false, dropped);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Defaulting

fn default_node(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let declared = properties(schema);
            let value_schema = additional_schema(schema);
            let schema_for = |key: &str| declared.and_then(|p| p.get(key)).or(value_schema);

            // Nulls of non-nullable fields become the default, or disappear when there is none.
            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in &keys {
                let Some(field_schema) = schema_for(key) else {
                    continue;
                };
                if fields.get(key).is_some_and(Value::is_null) && !is_nullable(field_schema) {
                    match field_schema.get("default") {
                        Some(default) => {
                            fields.insert(key.clone(), default.clone());
                        }
                        None => {
                            fields.remove(key);
                        }
                    }
                }
            }
            if let Some(declared) = declared {
                for (name, property_schema) in declared {
                    if let Some(default) = property_schema.get("default")
                        && !fields.contains_key(name)
                    {
                        fields.insert(name.clone(), default.clone());
                    }
                }
            }
            for (key, child) in fields.iter_mut() {
                if let Some(field_schema) = schema_for(key) {
                    default_node(field_schema, child);
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else {
                return;
            };
            for item in items.iter_mut() {
                if item.is_null()
                    && !is_nullable(item_schema)
                    && let Some(default) = item_schema.get("default")
                {
                    *item = default.clone();
                }
                default_node(item_schema, item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Expected `(field, reason, message)` triples.
    type Expected = Vec<(&'static str, &'static str, &'static str)>;

    /// `(field, reason, message)` of each error, for exact comparisons.
    fn triples(errors: &[FieldError]) -> Vec<(String, String, String)> {
        errors
            .iter()
            .map(|e| (e.field.clone(), e.reason.clone(), e.message.clone()))
            .collect()
    }

    fn want(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        expected
            .iter()
            .map(|(f, r, m)| (f.to_string(), r.to_string(), m.to_string()))
            .collect()
    }

    /// A resource schema with one `spec` property.
    fn resource(spec: Value) -> Value {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": spec
            }
        })
    }

    fn object_with_spec(spec: Value) -> Value {
        json!({"apiVersion": "warren.dev/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": spec})
    }

    struct Case {
        name: &'static str,
        spec_schema: Value,
        spec: Value,
        want: &'static [(&'static str, &'static str, &'static str)],
    }

    fn run(cases: Vec<Case>) {
        for case in cases {
            let schema = resource(case.spec_schema);
            let errors = validate(&schema, &object_with_spec(case.spec), None);
            assert_eq!(triples(&errors), want(case.want), "case {}", case.name);
        }
    }

    #[test]
    fn validation_types() {
        let replicas = || json!({"type": "object", "properties": {"replicas": {"type": "integer"}}});
        run(vec![
            Case {
                name: "integer ok",
                spec_schema: replicas(),
                spec: json!({"replicas": 3}),
                want: &[],
            },
            Case {
                name: "integer negative ok",
                spec_schema: replicas(),
                spec: json!({"replicas": -3}),
                want: &[],
            },
            Case {
                name: "integer as whole float ok",
                spec_schema: replicas(),
                spec: json!({"replicas": 3.0}),
                want: &[],
            },
            Case {
                name: "integer given string",
                spec_schema: replicas(),
                spec: json!({"replicas": "three"}),
                want: &[(
                    "spec.replicas",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
                )],
            },
            Case {
                name: "integer given fraction",
                spec_schema: replicas(),
                spec: json!({"replicas": 1.5}),
                want: &[(
                    "spec.replicas",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"number\": spec.replicas in body must be of type integer: \"number\"",
                )],
            },
            Case {
                name: "number accepts integer",
                spec_schema: json!({"type": "object", "properties": {"ratio": {"type": "number"}}}),
                spec: json!({"ratio": 2}),
                want: &[],
            },
            Case {
                name: "number accepts fraction",
                spec_schema: json!({"type": "object", "properties": {"ratio": {"type": "number"}}}),
                spec: json!({"ratio": 0.25}),
                want: &[],
            },
            Case {
                name: "number given boolean",
                spec_schema: json!({"type": "object", "properties": {"ratio": {"type": "number"}}}),
                spec: json!({"ratio": true}),
                want: &[(
                    "spec.ratio",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"boolean\": spec.ratio in body must be of type number: \"boolean\"",
                )],
            },
            Case {
                name: "string given number",
                spec_schema: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
                spec: json!({"name": 7}),
                want: &[(
                    "spec.name",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"integer\": spec.name in body must be of type string: \"integer\"",
                )],
            },
            Case {
                name: "boolean ok",
                spec_schema: json!({"type": "object", "properties": {"suspend": {"type": "boolean"}}}),
                spec: json!({"suspend": false}),
                want: &[],
            },
            Case {
                name: "boolean given string",
                spec_schema: json!({"type": "object", "properties": {"suspend": {"type": "boolean"}}}),
                spec: json!({"suspend": "false"}),
                want: &[(
                    "spec.suspend",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"string\": spec.suspend in body must be of type boolean: \"string\"",
                )],
            },
            Case {
                name: "array given object",
                spec_schema: json!({"type": "object", "properties": {"items": {"type": "array"}}}),
                spec: json!({"items": {}}),
                want: &[(
                    "spec.items",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"object\": spec.items in body must be of type array: \"object\"",
                )],
            },
            Case {
                name: "object given array",
                spec_schema: json!({"type": "object"}),
                spec: json!([1]),
                want: &[(
                    "spec",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"array\": spec in body must be of type object: \"array\"",
                )],
            },
            Case {
                name: "no type accepts anything",
                spec_schema: json!({"type": "object", "properties": {"any": {"x-kubernetes-preserve-unknown-fields": true}}}),
                spec: json!({"any": [1, "a"]}),
                want: &[],
            },
        ]);
    }

    #[test]
    fn validation_nullable() {
        run(vec![
            Case {
                name: "null rejected when not nullable",
                spec_schema: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
                spec: json!({"name": null}),
                want: &[(
                    "spec.name",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"null\": spec.name in body must be of type string: \"null\"",
                )],
            },
            Case {
                name: "null accepted when nullable",
                spec_schema: json!({"type": "object", "properties": {"name": {"type": "string", "nullable": true}}}),
                spec: json!({"name": null}),
                want: &[],
            },
            Case {
                name: "nullable still checks non-null values",
                spec_schema: json!({"type": "object", "properties": {"name": {"type": "string", "nullable": true}}}),
                spec: json!({"name": 1}),
                want: &[(
                    "spec.name",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"integer\": spec.name in body must be of type string: \"integer\"",
                )],
            },
            Case {
                name: "anyOf with a null branch accepts null",
                spec_schema: json!({"type": "object", "properties": {"limit": {
                    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]
                }}}),
                spec: json!({"limit": null}),
                want: &[],
            },
            Case {
                name: "anyOf with a null branch checks the other branch",
                spec_schema: json!({"type": "object", "properties": {"limit": {
                    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]
                }}}),
                spec: json!({"limit": 0}),
                want: &[
                    (
                        "<nil>",
                        "FieldValueInvalid",
                        "Invalid value: \"\": \"spec.limit\" must validate at least one schema (anyOf)",
                    ),
                    (
                        "spec.limit",
                        "FieldValueInvalid",
                        "Invalid value: 0: spec.limit in body should be greater than or equal to 1",
                    ),
                ],
            },
        ]);
    }

    #[test]
    fn validation_required() {
        let schema = || {
            json!({"type": "object", "required": ["queue", "image"], "properties": {
                "queue": {"type": "string"}, "image": {"type": "string"}
            }})
        };
        run(vec![
            Case {
                name: "all present",
                spec_schema: schema(),
                spec: json!({"queue": "q", "image": "i"}),
                want: &[],
            },
            Case {
                name: "one missing",
                spec_schema: schema(),
                spec: json!({"queue": "q"}),
                want: &[("spec.image", "FieldValueRequired", "Required value")],
            },
            Case {
                name: "both missing, in declared order",
                spec_schema: schema(),
                spec: json!({}),
                want: &[
                    ("spec.queue", "FieldValueRequired", "Required value"),
                    ("spec.image", "FieldValueRequired", "Required value"),
                ],
            },
        ]);

        let root = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}});
        let errors = validate(&root, &json!({"apiVersion": "v1", "kind": "K"}), None);
        assert_eq!(
            triples(&errors),
            want(&[("spec", "FieldValueRequired", "Required value")])
        );
    }

    #[test]
    fn validation_enum() {
        let schema = || json!({"type": "object", "properties": {"priority": {"type": "string", "enum": ["high", "normal", "low"]}}});
        run(vec![
            Case {
                name: "allowed",
                spec_schema: schema(),
                spec: json!({"priority": "low"}),
                want: &[],
            },
            Case {
                name: "not allowed",
                spec_schema: schema(),
                spec: json!({"priority": "urgent"}),
                want: &[(
                    "spec.priority",
                    "FieldValueNotSupported",
                    "Unsupported value: \"urgent\": supported values: \"high\", \"normal\", \"low\"",
                )],
            },
            Case {
                name: "numeric enum",
                spec_schema: json!({"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2]}}}),
                spec: json!({"level": 3}),
                want: &[(
                    "spec.level",
                    "FieldValueNotSupported",
                    "Unsupported value: 3: supported values: \"1\", \"2\"",
                )],
            },
            Case {
                name: "numeric enum matches whole float",
                spec_schema: json!({"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2]}}}),
                spec: json!({"level": 2.0}),
                want: &[],
            },
            Case {
                name: "oneOf enum union allowed",
                spec_schema: json!({"type": "object", "properties": {"mode": {"type": "string", "oneOf": [
                    {"type": "string", "enum": ["Fifo"], "description": "first in first out"},
                    {"type": "string", "const": "Lifo", "description": "last in first out"}
                ]}}}),
                spec: json!({"mode": "Lifo"}),
                want: &[],
            },
            Case {
                name: "oneOf enum union rejected",
                spec_schema: json!({"type": "object", "properties": {"mode": {"type": "string", "oneOf": [
                    {"type": "string", "enum": ["Fifo"], "description": "first in first out"},
                    {"type": "string", "const": "Lifo", "description": "last in first out"}
                ]}}}),
                spec: json!({"mode": "Random"}),
                want: &[(
                    "spec.mode",
                    "FieldValueNotSupported",
                    "Unsupported value: \"Random\": supported values: \"Fifo\", \"Lifo\"",
                )],
            },
            Case {
                name: "anyOf enum union with null allows null",
                spec_schema: json!({"type": "object", "properties": {"mode": {"nullable": true, "anyOf": [
                    {"enum": ["A", "B"]}, {"enum": [null]}
                ]}}}),
                spec: json!({"mode": null}),
                want: &[],
            },
            Case {
                name: "anyOf enum union rejects other values",
                spec_schema: json!({"type": "object", "properties": {"mode": {"nullable": true, "anyOf": [
                    {"enum": ["A", "B"]}, {"enum": [null]}
                ]}}}),
                spec: json!({"mode": "C"}),
                want: &[(
                    "spec.mode",
                    "FieldValueNotSupported",
                    "Unsupported value: \"C\": supported values: \"A\", \"B\"",
                )],
            },
        ]);
    }

    #[test]
    fn validation_numeric_bounds() {
        let bounded = |extra: Value| {
            let mut replicas = json!({"type": "integer"});
            replicas
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"type": "object", "properties": {"replicas": replicas}})
        };
        run(vec![
            Case {
                name: "minimum equal",
                spec_schema: bounded(json!({"minimum": 0})),
                spec: json!({"replicas": 0}),
                want: &[],
            },
            Case {
                name: "below minimum",
                spec_schema: bounded(json!({"minimum": 0})),
                spec: json!({"replicas": -1}),
                want: &[(
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
                )],
            },
            Case {
                name: "exclusive minimum equal",
                spec_schema: bounded(json!({"minimum": 0, "exclusiveMinimum": true})),
                spec: json!({"replicas": 0}),
                want: &[(
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: 0: spec.replicas in body should be greater than 0",
                )],
            },
            Case {
                name: "exclusive minimum above",
                spec_schema: bounded(json!({"minimum": 0, "exclusiveMinimum": true})),
                spec: json!({"replicas": 1}),
                want: &[],
            },
            Case {
                name: "maximum equal",
                spec_schema: bounded(json!({"maximum": 10})),
                spec: json!({"replicas": 10}),
                want: &[],
            },
            Case {
                name: "above maximum",
                spec_schema: bounded(json!({"maximum": 10})),
                spec: json!({"replicas": 11}),
                want: &[(
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: 11: spec.replicas in body should be less than or equal to 10",
                )],
            },
            Case {
                name: "exclusive maximum equal",
                spec_schema: bounded(json!({"maximum": 10, "exclusiveMaximum": true})),
                spec: json!({"replicas": 10}),
                want: &[(
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: 10: spec.replicas in body should be less than 10",
                )],
            },
            Case {
                name: "fractional bound and value",
                spec_schema: json!({"type": "object", "properties": {"ratio": {"type": "number", "maximum": 0.5}}}),
                spec: json!({"ratio": 0.75}),
                want: &[(
                    "spec.ratio",
                    "FieldValueInvalid",
                    "Invalid value: 0.75: spec.ratio in body should be less than or equal to 0.5",
                )],
            },
            Case {
                name: "multipleOf",
                spec_schema: bounded(json!({"multipleOf": 5})),
                spec: json!({"replicas": 7}),
                want: &[(
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: 7: spec.replicas in body should be a multiple of 5",
                )],
            },
        ]);
    }

    #[test]
    fn validation_strings() {
        let name = |extra: Value| {
            let mut s = json!({"type": "string"});
            s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"type": "object", "properties": {"name": s}})
        };
        run(vec![
            Case {
                name: "max length equal",
                spec_schema: name(json!({"maxLength": 5})),
                spec: json!({"name": "abcde"}),
                want: &[],
            },
            Case {
                name: "max length counts characters",
                spec_schema: name(json!({"maxLength": 2})),
                spec: json!({"name": "éé"}),
                want: &[],
            },
            Case {
                name: "too long",
                spec_schema: name(json!({"maxLength": 5})),
                spec: json!({"name": "abcdef"}),
                want: &[(
                    "spec.name",
                    "FieldValueTooLong",
                    "Too long: may not be more than 5 bytes",
                )],
            },
            Case {
                name: "too short",
                spec_schema: name(json!({"minLength": 3})),
                spec: json!({"name": "ab"}),
                want: &[(
                    "spec.name",
                    "FieldValueInvalid",
                    "Invalid value: \"ab\": spec.name in body should be at least 3 chars long",
                )],
            },
            Case {
                name: "pattern matches",
                spec_schema: name(json!({"pattern": "^[a-z]+$"})),
                spec: json!({"name": "abc"}),
                want: &[],
            },
            Case {
                name: "pattern fails",
                spec_schema: name(json!({"pattern": "^[a-z]+$"})),
                spec: json!({"name": "ABC"}),
                want: &[(
                    "spec.name",
                    "FieldValueInvalid",
                    "Invalid value: \"ABC\": spec.name in body should match '^[a-z]+$'",
                )],
            },
            Case {
                name: "unanchored pattern matches a substring",
                spec_schema: name(json!({"pattern": "[0-9]"})),
                spec: json!({"name": "abc1"}),
                want: &[],
            },
            Case {
                name: "broken pattern constrains nothing",
                spec_schema: name(json!({"pattern": "(["})),
                spec: json!({"name": "anything"}),
                want: &[],
            },
            Case {
                name: "format is ignored",
                spec_schema: name(json!({"format": "date-time"})),
                spec: json!({"name": "not a date"}),
                want: &[],
            },
        ]);
    }

    #[test]
    fn validation_arrays() {
        let list = |extra: Value| {
            let mut s = json!({"type": "array", "items": {"type": "string"}});
            s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"type": "object", "properties": {"tags": s}})
        };
        run(vec![
            Case {
                name: "items ok",
                spec_schema: list(json!({})),
                spec: json!({"tags": ["a", "b"]}),
                want: &[],
            },
            Case {
                name: "bad item reports its index",
                spec_schema: list(json!({})),
                spec: json!({"tags": ["a", "b", 3]}),
                want: &[(
                    "spec.tags[2]",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"integer\": spec.tags[2] in body must be of type string: \"integer\"",
                )],
            },
            Case {
                name: "min items equal",
                spec_schema: list(json!({"minItems": 1})),
                spec: json!({"tags": ["a"]}),
                want: &[],
            },
            Case {
                name: "too few items",
                spec_schema: list(json!({"minItems": 1})),
                spec: json!({"tags": []}),
                want: &[(
                    "spec.tags",
                    "FieldValueInvalid",
                    "Invalid value: 0: spec.tags in body should have at least 1 items",
                )],
            },
            Case {
                name: "max items equal",
                spec_schema: list(json!({"maxItems": 2})),
                spec: json!({"tags": ["a", "b"]}),
                want: &[],
            },
            Case {
                name: "too many items",
                spec_schema: list(json!({"maxItems": 2})),
                spec: json!({"tags": ["a", "b", "c"]}),
                want: &[(
                    "spec.tags",
                    "FieldValueTooMany",
                    "Too many: 3: must have at most 2 items",
                )],
            },
            Case {
                name: "nested item fields",
                spec_schema: json!({"type": "object", "properties": {"items": {"type": "array", "items": {
                    "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}
                }}}}),
                spec: json!({"items": [{"name": "a"}, {"name": "b"}, {}]}),
                want: &[("spec.items[2].name", "FieldValueRequired", "Required value")],
            },
            Case {
                name: "set duplicates",
                spec_schema: list(json!({"x-kubernetes-list-type": "set"})),
                spec: json!({"tags": ["a", "b", "a"]}),
                want: &[("spec.tags[2]", "FieldValueDuplicate", "Duplicate value: \"a\"")],
            },
            Case {
                name: "map list duplicate keys",
                spec_schema: json!({"type": "object", "properties": {"ports": {
                    "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}
                }}}),
                spec: json!({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 8080}]}),
                want: &[(
                    "spec.ports[1]",
                    "FieldValueDuplicate",
                    "Duplicate value: {\"name\":\"http\"}",
                )],
            },
        ]);
    }

    #[test]
    fn validation_maps_and_unknown_fields() {
        let labels = || {
            json!({"type": "object", "properties": {"labels": {
                "type": "object", "additionalProperties": {"type": "string", "maxLength": 3}
            }}})
        };
        run(vec![
            Case {
                name: "string map ok",
                spec_schema: labels(),
                spec: json!({"labels": {"a": "x", "b": "y"}}),
                want: &[],
            },
            Case {
                name: "string map bad value (kube-openapi names map values with a dot)",
                spec_schema: labels(),
                spec: json!({"labels": {"foo": 1}}),
                want: &[(
                    "spec.labels.foo",
                    "FieldValueTypeInvalid",
                    "Invalid value: \"integer\": spec.labels.foo in body must be of type string: \"integer\"",
                )],
            },
            Case {
                name: "string map value too long",
                spec_schema: labels(),
                spec: json!({"labels": {"foo": "long"}}),
                want: &[(
                    "spec.labels.foo",
                    "FieldValueTooLong",
                    "Too long: may not be more than 3 bytes",
                )],
            },
            Case {
                name: "additionalProperties false forbids unknown keys",
                spec_schema: json!({"type": "object", "additionalProperties": false, "properties": {"a": {"type": "string"}}}),
                spec: json!({"a": "x", "b": "y"}),
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"b\": spec.b in body is a forbidden property",
                )],
            },
            Case {
                name: "unknown fields are not validation errors (pruning drops them)",
                spec_schema: json!({"type": "object", "properties": {"a": {"type": "string"}}}),
                spec: json!({"a": "x", "b": 1}),
                want: &[],
            },
            Case {
                name: "maxProperties",
                spec_schema: json!({"type": "object", "maxProperties": 1}),
                spec: json!({"a": 1, "b": 2}),
                want: &[("spec", "FieldValueTooMany", "Too many: 2: must have at most 1 items")],
            },
            Case {
                name: "minProperties",
                spec_schema: json!({"type": "object", "minProperties": 1}),
                spec: json!({}),
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: 0: spec in body should have at least 1 properties",
                )],
            },
        ]);
    }

    #[test]
    fn validation_int_or_string() {
        let port = || {
            json!({"type": "object", "properties": {"port": {
                "x-kubernetes-int-or-string": true,
                "anyOf": [{"type": "integer"}, {"type": "string"}]
            }}})
        };
        run(vec![
            Case {
                name: "integer",
                spec_schema: port(),
                spec: json!({"port": 8080}),
                want: &[],
            },
            Case {
                name: "string",
                spec_schema: port(),
                spec: json!({"port": "http"}),
                want: &[],
            },
            Case {
                name: "boolean",
                spec_schema: port(),
                spec: json!({"port": true}),
                want: &[
                    (
                        "spec.port",
                        "FieldValueTypeInvalid",
                        "Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
                    ),
                    (
                        "<nil>",
                        "FieldValueInvalid",
                        "Invalid value: \"\": \"spec.port\" must validate at least one schema (anyOf)",
                    ),
                    (
                        "spec.port",
                        "FieldValueTypeInvalid",
                        "Invalid value: \"boolean\": spec.port in body must be of type integer: \"boolean\"",
                    ),
                ],
            },
        ]);
    }

    #[test]
    fn validation_one_of_required_sets() {
        // What kube-derive emits for an enum with struct variants: exactly one key may be set.
        let schema = || {
            json!({"type": "object", "properties": {"source": {
                "type": "object",
                "properties": {"git": {"type": "string"}, "image": {"type": "string"}},
                "oneOf": [{"required": ["git"]}, {"required": ["image"]}]
            }}})
        };
        run(vec![
            Case {
                name: "exactly one",
                spec_schema: schema(),
                spec: json!({"source": {"git": "url"}}),
                want: &[],
            },
            Case {
                name: "none",
                spec_schema: schema(),
                spec: json!({"source": {}}),
                want: &[
                    (
                        "<nil>",
                        "FieldValueInvalid",
                        "Invalid value: \"\": \"spec.source\" must validate one and only one schema (oneOf). Found none valid",
                    ),
                    ("spec.source.git", "FieldValueRequired", "Required value"),
                ],
            },
            Case {
                name: "both",
                spec_schema: schema(),
                spec: json!({"source": {"git": "url", "image": "img"}}),
                want: &[(
                    "<nil>",
                    "FieldValueInvalid",
                    "Invalid value: \"\": \"spec.source\" must validate one and only one schema (oneOf). Found 2 valid alternatives",
                )],
            },
            Case {
                name: "allOf applies every branch",
                spec_schema: json!({"type": "object", "properties": {"n": {
                    "type": "integer", "allOf": [{"minimum": 1}, {"maximum": 3}]
                }}}),
                spec: json!({"n": 5}),
                want: &[
                    (
                        "spec.n",
                        "FieldValueInvalid",
                        "Invalid value: 5: spec.n in body should be less than or equal to 3",
                    ),
                    (
                        "<nil>",
                        "FieldValueInvalid",
                        "Invalid value: \"\": \"spec.n\" must validate all the schemas (allOf)",
                    ),
                ],
            },
            Case {
                name: "not",
                spec_schema: json!({"type": "object", "properties": {"n": {"type": "integer", "not": {"enum": [13]}}}}),
                spec: json!({"n": 13}),
                want: &[(
                    "<nil>",
                    "FieldValueInvalid",
                    "Invalid value: \"\": \"spec.n\" must not validate the schema (not)",
                )],
            },
        ]);
    }

    #[test]
    fn validation_errors_are_ordered_depth_first_with_sorted_keys() {
        let schema = resource(json!({
            "type": "object",
            "required": ["queue"],
            "properties": {
                "b": {"type": "integer", "minimum": 0},
                "a": {"type": "string", "enum": ["x"]},
                "queue": {"type": "string"}
            }
        }));
        let obj = object_with_spec(json!({"b": -1, "a": "y"}));
        let first = validate(&schema, &obj, None);
        assert_eq!(
            first.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            vec!["spec.a", "spec.b", "spec.queue"]
        );
        assert_eq!(first, validate(&schema, &obj, None));
    }

    // --- CEL ---------------------------------------------------------------------------------

    struct CelCase {
        name: &'static str,
        spec_schema: Value,
        spec: Value,
        old_spec: Option<Value>,
        want: &'static [(&'static str, &'static str, &'static str)],
    }

    fn run_cel(cases: Vec<CelCase>) {
        for case in cases {
            let schema = resource(case.spec_schema);
            let old = case.old_spec.map(object_with_spec);
            let errors = validate(&schema, &object_with_spec(case.spec), old.as_ref());
            assert_eq!(triples(&errors), want(case.want), "case {}", case.name);
        }
    }

    fn scaling(rule: Value) -> Value {
        json!({
            "type": "object",
            "x-kubernetes-validations": [rule],
            "properties": {"minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"}}
        })
    }

    #[test]
    fn cel_rules_on_objects() {
        let payload_xor_items = || {
            json!({
                "type": "object",
                "x-kubernetes-validations": [{"rule": "has(self.payload) != has(self.items)", "message": "exactly one of payload or items must be set"}],
                "properties": {"payload": {"type": "string"}, "items": {"type": "array", "items": {"type": "string"}}}
            })
        };
        run_cel(vec![
            CelCase {
                name: "min <= max holds",
                spec_schema: scaling(json!({"rule": "self.minReplicas <= self.maxReplicas"})),
                spec: json!({"minReplicas": 1, "maxReplicas": 3}),
                old_spec: None,
                want: &[],
            },
            CelCase {
                name: "min > max without message",
                spec_schema: scaling(json!({"rule": "self.minReplicas <= self.maxReplicas"})),
                spec: json!({"minReplicas": 5, "maxReplicas": 3}),
                old_spec: None,
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": failed rule: self.minReplicas <= self.maxReplicas",
                )],
            },
            CelCase {
                name: "min > max with message",
                spec_schema: scaling(
                    json!({"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}),
                ),
                spec: json!({"minReplicas": 5, "maxReplicas": 3}),
                old_spec: None,
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": minReplicas must not exceed maxReplicas",
                )],
            },
            CelCase {
                name: "messageExpression",
                spec_schema: scaling(json!({
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "messageExpression": "'minReplicas ' + string(self.minReplicas) + ' exceeds maxReplicas ' + string(self.maxReplicas)"
                })),
                spec: json!({"minReplicas": 5, "maxReplicas": 3}),
                old_spec: None,
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": minReplicas 5 exceeds maxReplicas 3",
                )],
            },
            CelCase {
                name: "fieldPath and reason",
                spec_schema: scaling(json!({
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "must be at most maxReplicas",
                    "fieldPath": ".minReplicas",
                    "reason": "FieldValueForbidden"
                })),
                spec: json!({"minReplicas": 5, "maxReplicas": 3}),
                old_spec: None,
                want: &[(
                    "spec.minReplicas",
                    "FieldValueForbidden",
                    "Forbidden: must be at most maxReplicas",
                )],
            },
            CelCase {
                name: "reason Required",
                spec_schema: scaling(
                    json!({"rule": "has(self.maxReplicas)", "message": "maxReplicas is needed", "reason": "FieldValueRequired", "fieldPath": "['maxReplicas']"}),
                ),
                spec: json!({"minReplicas": 1}),
                old_spec: None,
                want: &[(
                    "spec.maxReplicas",
                    "FieldValueRequired",
                    "Required value: maxReplicas is needed",
                )],
            },
            CelCase {
                name: "missing key is an evaluation error",
                spec_schema: scaling(json!({"rule": "self.minReplicas <= self.maxReplicas"})),
                spec: json!({"minReplicas": 1}),
                old_spec: None,
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": no such key: maxReplicas evaluating rule: self.minReplicas <= self.maxReplicas",
                )],
            },
            CelCase {
                name: "payload only",
                spec_schema: payload_xor_items(),
                spec: json!({"payload": "p"}),
                old_spec: None,
                want: &[],
            },
            CelCase {
                name: "items only",
                spec_schema: payload_xor_items(),
                spec: json!({"items": ["a"]}),
                old_spec: None,
                want: &[],
            },
            CelCase {
                name: "both payload and items",
                spec_schema: payload_xor_items(),
                spec: json!({"payload": "p", "items": ["a"]}),
                old_spec: None,
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": exactly one of payload or items must be set",
                )],
            },
            CelCase {
                name: "neither payload nor items",
                spec_schema: payload_xor_items(),
                spec: json!({}),
                old_spec: None,
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": exactly one of payload or items must be set",
                )],
            },
        ]);
    }

    #[test]
    fn cel_rules_on_lists_and_maps() {
        let named_items = || {
            json!({"type": "object", "properties": {"items": {
                "type": "array",
                "x-kubernetes-validations": [{"rule": "self.all(s, s.name.size() > 0)", "message": "every item needs a name"}],
                "items": {"type": "object", "properties": {"name": {"type": "string"}}}
            }}})
        };
        let item_rule = || {
            json!({"type": "object", "properties": {"items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "self.name.startsWith('job-')"}],
                    "properties": {"name": {"type": "string"}}
                }
            }}})
        };
        let labels = || {
            json!({"type": "object", "properties": {"labels": {
                "type": "object",
                "additionalProperties": {"type": "string", "x-kubernetes-validations": [{"rule": "self != 'forbidden'"}]}
            }}})
        };
        run_cel(vec![
            CelCase {
                name: "all names set",
                spec_schema: named_items(),
                spec: json!({"items": [{"name": "a"}, {"name": "b"}]}),
                old_spec: None,
                want: &[],
            },
            CelCase {
                name: "an empty name",
                spec_schema: named_items(),
                spec: json!({"items": [{"name": "a"}, {"name": ""}]}),
                old_spec: None,
                want: &[(
                    "spec.items",
                    "FieldValueInvalid",
                    "Invalid value: \"array\": every item needs a name",
                )],
            },
            CelCase {
                name: "item rule reports the item path",
                spec_schema: item_rule(),
                spec: json!({"items": [{"name": "job-a"}, {"name": "job-b"}, {"name": "c"}]}),
                old_spec: None,
                want: &[(
                    "spec.items[2]",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": failed rule: self.name.startsWith('job-')",
                )],
            },
            CelCase {
                name: "map value rule reports [key]",
                spec_schema: labels(),
                spec: json!({"labels": {"ok": "fine", "foo": "forbidden"}}),
                old_spec: None,
                want: &[(
                    "spec.labels[foo]",
                    "FieldValueInvalid",
                    "Invalid value: \"string\": failed rule: self != 'forbidden'",
                )],
            },
            CelCase {
                name: "list size via kube list library",
                spec_schema: json!({"type": "object", "properties": {"tags": {
                    "type": "array", "items": {"type": "string"},
                    "x-kubernetes-validations": [{"rule": "self.isSorted()", "message": "tags must be sorted"}]
                }}}),
                spec: json!({"tags": ["b", "a"]}),
                old_spec: None,
                want: &[(
                    "spec.tags",
                    "FieldValueInvalid",
                    "Invalid value: \"array\": tags must be sorted",
                )],
            },
        ]);
    }

    #[test]
    fn cel_root_rule_reports_nil_path() {
        let schema = json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.metadata.name.startsWith('w-')", "message": "name must start with w-"}],
            "properties": {"metadata": {"type": "object", "properties": {"name": {"type": "string"}}}}
        });
        let ok = validate(&schema, &json!({"metadata": {"name": "w-1"}}), None);
        assert_eq!(ok, vec![]);
        let bad = validate(&schema, &json!({"metadata": {"name": "x"}}), None);
        assert_eq!(
            triples(&bad),
            want(&[(
                "<nil>",
                "FieldValueInvalid",
                "Invalid value: \"object\": name must start with w-"
            )])
        );
    }

    #[test]
    fn cel_broken_rule_is_an_error_not_a_panic() {
        let schema = resource(json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.minReplicas <= "}, {"rule": "true"}],
            "properties": {"minReplicas": {"type": "integer"}}
        }));
        let errors = validate(&schema, &object_with_spec(json!({"minReplicas": 1})), None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec");
        assert_eq!(errors[0].reason, "FieldValueInvalid");
        assert!(
            errors[0]
                .message
                .starts_with("Invalid value: \"object\": rule compile error: compilation failed: "),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn cel_transition_rules() {
        let immutable_queue = || {
            json!({"type": "object", "properties": {"queue": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "queue is immutable"}]
            }}})
        };
        let no_scale_down = || {
            scaling(json!({"rule": "self.maxReplicas >= oldSelf.maxReplicas", "message": "cannot lower maxReplicas"}))
        };
        let keyed_workers = || {
            json!({"type": "object", "properties": {"workers": {
                "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "image": {"type": "string",
                        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "image is immutable"}]}}
                }
            }}})
        };
        run_cel(vec![
            CelCase {
                name: "create skips transition rule",
                spec_schema: immutable_queue(),
                spec: json!({"queue": "a"}),
                old_spec: None,
                want: &[],
            },
            CelCase {
                name: "update unchanged",
                spec_schema: immutable_queue(),
                spec: json!({"queue": "a"}),
                old_spec: Some(json!({"queue": "a"})),
                want: &[],
            },
            CelCase {
                name: "update changed",
                spec_schema: immutable_queue(),
                spec: json!({"queue": "b"}),
                old_spec: Some(json!({"queue": "a"})),
                want: &[(
                    "spec.queue",
                    "FieldValueInvalid",
                    "Invalid value: \"string\": queue is immutable",
                )],
            },
            CelCase {
                name: "update where the old object lacked the field",
                spec_schema: immutable_queue(),
                spec: json!({"queue": "b"}),
                old_spec: Some(json!({})),
                want: &[],
            },
            CelCase {
                name: "object transition passes",
                spec_schema: no_scale_down(),
                spec: json!({"minReplicas": 1, "maxReplicas": 5}),
                old_spec: Some(json!({"minReplicas": 1, "maxReplicas": 4})),
                want: &[],
            },
            CelCase {
                name: "object transition fails",
                spec_schema: no_scale_down(),
                spec: json!({"minReplicas": 1, "maxReplicas": 3}),
                old_spec: Some(json!({"minReplicas": 1, "maxReplicas": 4})),
                want: &[(
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": cannot lower maxReplicas",
                )],
            },
            CelCase {
                name: "map-list items correlate by key, not index",
                spec_schema: keyed_workers(),
                spec: json!({"workers": [{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:2"}]}),
                old_spec: Some(json!({"workers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]})),
                want: &[(
                    "spec.workers[1].image",
                    "FieldValueInvalid",
                    "Invalid value: \"string\": image is immutable",
                )],
            },
            CelCase {
                name: "new map-list item has no old value",
                spec_schema: keyed_workers(),
                spec: json!({"workers": [{"name": "c", "image": "c:1"}]}),
                old_spec: Some(json!({"workers": [{"name": "a", "image": "a:1"}]})),
                want: &[],
            },
        ]);
    }

    #[test]
    fn cel_skipped_after_blocking_schema_errors() {
        let schema = resource(json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.minReplicas <= self.maxReplicas"}],
            "properties": {"minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer", "maximum": 100}}
        }));
        let cases: Vec<(&str, Value, Expected)> = vec![
            (
                "type error blocks CEL",
                json!({"minReplicas": "5", "maxReplicas": 3}),
                vec![
                    (
                        "spec.minReplicas",
                        "FieldValueTypeInvalid",
                        "Invalid value: \"string\": spec.minReplicas in body must be of type integer: \"string\"",
                    ),
                    (
                        "<nil>",
                        "FieldValueInvalid",
                        "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                    ),
                ],
            ),
            (
                "non-blocking error lets CEL run",
                json!({"minReplicas": 500, "maxReplicas": 300}),
                vec![
                    (
                        "spec.maxReplicas",
                        "FieldValueInvalid",
                        "Invalid value: 300: spec.maxReplicas in body should be less than or equal to 100",
                    ),
                    (
                        "spec",
                        "FieldValueInvalid",
                        "Invalid value: \"object\": failed rule: self.minReplicas <= self.maxReplicas",
                    ),
                ],
            ),
        ];
        for (name, spec, expected) in cases {
            let errors = validate(&schema, &object_with_spec(spec), None);
            assert_eq!(triples(&errors), want(&expected), "case {name}");
        }

        // Without any CEL rule in the schema, no "<nil>" cause is added.
        let plain = resource(json!({"type": "object", "properties": {"n": {"type": "integer"}}}));
        let errors = validate(&plain, &object_with_spec(json!({"n": "x"})), None);
        assert_eq!(errors.len(), 1);
    }

    const NOT_CHECKED: (&str, &str, &str) = (
        "<nil>",
        "FieldValueInvalid",
        "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
    );

    #[test]
    fn ratcheting_on_update() {
        let schema = resource(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 3},
                "replicas": {"type": "integer", "x-kubernetes-validations": [{"rule": "self >= 1", "message": "at least one replica"}]},
                "other": {"type": "string"}
            }
        }));
        let stored = object_with_spec(json!({"name": "toolong", "replicas": 0, "other": "a"}));
        let cases: Vec<(&str, Value, Option<&Value>, Expected)> = vec![
            (
                "create reports everything",
                json!({"name": "toolong", "replicas": 1}),
                None,
                vec![
                    (
                        "spec.name",
                        "FieldValueTooLong",
                        "Too long: may not be more than 3 bytes",
                    ),
                    NOT_CHECKED,
                ],
            ),
            (
                "update keeping invalid values is allowed",
                json!({"name": "toolong", "replicas": 0, "other": "b"}),
                Some(&stored),
                vec![],
            ),
            (
                "update changing an invalid value is checked",
                json!({"name": "stilltoolong", "replicas": 0}),
                Some(&stored),
                vec![
                    (
                        "spec.name",
                        "FieldValueTooLong",
                        "Too long: may not be more than 3 bytes",
                    ),
                    NOT_CHECKED,
                ],
            ),
            (
                "update changing a value checks its CEL rules",
                json!({"name": "toolong", "replicas": -1}),
                Some(&stored),
                vec![(
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: \"integer\": at least one replica",
                )],
            ),
        ];
        for (name, spec, old, expected) in cases {
            let errors = validate(&schema, &object_with_spec(spec), old);
            assert_eq!(triples(&errors), want(&expected), "case {name}");
        }
    }

    // --- pruning -----------------------------------------------------------------------------

    #[test]
    fn pruning() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "queue": {"type": "string"},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "object", "properties": {"v": {"type": "string"}}}},
                        "payload": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"known": {"type": "object"}}},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}}
                    }
                }
            }
        });
        let cases: Vec<(&str, Value, Value, Vec<&str>)> = vec![
            (
                "root type meta is kept, unknown root field dropped",
                json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "n", "x": 1}, "status": {}, "spec": {}}),
                json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "n", "x": 1}, "spec": {}}),
                vec!["status"],
            ),
            (
                "unknown nested field dropped",
                json!({"spec": {"queue": "q", "extra": 1}}),
                json!({"spec": {"queue": "q"}}),
                vec!["spec.extra"],
            ),
            (
                "inside list items",
                json!({"spec": {"items": [{"name": "a", "junk": true}, {"name": "b"}]}}),
                json!({"spec": {"items": [{"name": "a"}, {"name": "b"}]}}),
                vec!["spec.items[0].junk"],
            ),
            (
                "map keys kept, their values pruned",
                json!({"spec": {"labels": {"anything": {"v": "x", "w": "y"}}}}),
                json!({"spec": {"labels": {"anything": {"v": "x"}}}}),
                vec!["spec.labels.anything.w"],
            ),
            (
                "preserve-unknown-fields keeps unknown, prunes known",
                json!({"spec": {"payload": {"free": {"deep": 1}, "known": {"a": 1}}}}),
                json!({"spec": {"payload": {"free": {"deep": 1}, "known": {}}}}),
                vec!["spec.payload.known.a"],
            ),
            (
                "embedded resource keeps its type meta",
                json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {}, "junk": 1}}}),
                json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {}}}}),
                vec!["spec.template.junk"],
            ),
            (
                "wrong-typed values are left for validation",
                json!({"spec": {"items": "not a list"}}),
                json!({"spec": {"items": "not a list"}}),
                vec![],
            ),
        ];
        for (name, input, expected, dropped) in cases {
            let mut obj = input.clone();
            let reported = prune_reporting(&schema, &mut obj);
            assert_eq!(obj, expected, "case {name}");
            assert_eq!(reported, dropped, "case {name}");
            let mut again = input;
            prune(&schema, &mut again);
            assert_eq!(again, expected, "case {name} via prune");
        }
    }

    // --- defaulting --------------------------------------------------------------------------

    #[test]
    fn defaulting() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "default": {},
                    "properties": {
                        "priority": {"type": "string", "default": "normal"},
                        "retries": {"type": "integer", "default": 3},
                        "note": {"type": "string"},
                        "nullableNote": {"type": "string", "nullable": true},
                        "policy": {"type": "object", "properties": {"backoff": {"type": "string", "default": "exponential"}}},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"weight": {"type": "integer", "default": 1}}}},
                        "limits": {"type": "object", "additionalProperties": {"type": "object", "properties": {"max": {"type": "integer", "default": 10}}}}
                    }
                }
            }
        });
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "absent object defaulted, then its fields",
                json!({"apiVersion": "v1"}),
                json!({"apiVersion": "v1", "spec": {"priority": "normal", "retries": 3}}),
            ),
            (
                "present values are kept",
                json!({"spec": {"priority": "high", "retries": 0}}),
                json!({"spec": {"priority": "high", "retries": 0}}),
            ),
            (
                "null of a non-nullable field with default becomes the default",
                json!({"spec": {"priority": null}}),
                json!({"spec": {"priority": "normal", "retries": 3}}),
            ),
            (
                "null of a non-nullable field without default is dropped",
                json!({"spec": {"note": null}}),
                json!({"spec": {"priority": "normal", "retries": 3}}),
            ),
            (
                "null of a nullable field is kept",
                json!({"spec": {"nullableNote": null}}),
                json!({"spec": {"nullableNote": null, "priority": "normal", "retries": 3}}),
            ),
            (
                "nested object present gets nested defaults",
                json!({"spec": {"policy": {}}}),
                json!({"spec": {"policy": {"backoff": "exponential"}, "priority": "normal", "retries": 3}}),
            ),
            (
                "list items and map values",
                json!({"spec": {"items": [{}, {"weight": 5}], "limits": {"cpu": {}, "mem": {"max": 2}}}}),
                json!({"spec": {
                    "items": [{"weight": 1}, {"weight": 5}],
                    "limits": {"cpu": {"max": 10}, "mem": {"max": 2}},
                    "priority": "normal", "retries": 3
                }}),
            ),
        ];
        for (name, input, expected) in cases {
            let mut obj = input;
            apply_defaults(&schema, &mut obj);
            assert_eq!(obj, expected, "case {name}");
        }
    }

    #[test]
    fn defaults_then_validation_accepts_defaulted_required_fields() {
        let schema = resource(json!({
            "type": "object",
            "required": ["priority"],
            "properties": {"priority": {"type": "string", "enum": ["high", "normal"], "default": "normal"}}
        }));
        let mut obj = object_with_spec(json!({}));
        assert_eq!(validate(&schema, &obj, None).len(), 1);
        apply_defaults(&schema, &mut obj);
        assert_eq!(validate(&schema, &obj, None), vec![]);
    }

    // --- Status message ----------------------------------------------------------------------

    #[test]
    fn status_message() {
        let required = FieldError {
            field: "spec.queue".into(),
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
        };
        let range = FieldError {
            field: "spec.replicas".into(),
            reason: "FieldValueInvalid".into(),
            message: "Invalid value: -1: spec.replicas in body should be greater than or equal to 0".into(),
        };
        let cases: Vec<(&str, Vec<FieldError>, &str)> = vec![
            (
                "one error",
                vec![required.clone()],
                "Job.warren.dev \"j1\" is invalid: spec.queue: Required value",
            ),
            (
                "several errors are bracketed",
                vec![required.clone(), range.clone()],
                "Job.warren.dev \"j1\" is invalid: [spec.queue: Required value, spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0]",
            ),
            (
                "identical errors are printed once",
                vec![required.clone(), required.clone()],
                "Job.warren.dev \"j1\" is invalid: spec.queue: Required value",
            ),
        ];
        for (name, errors, expected) in cases {
            assert_eq!(
                invalid_message("Job.warren.dev", "j1", &errors),
                expected,
                "case {name}"
            );
        }
    }

    #[test]
    fn rule_field_paths() {
        let cases = [
            ("spec", "", "spec"),
            ("spec", ".minReplicas", "spec.minReplicas"),
            ("spec", ".policy.backoff", "spec.policy.backoff"),
            ("spec", "['a.b']", "spec.a.b"),
            ("spec", ".labels[\"x\"]", "spec.labels.x"),
            ("", ".spec", "spec"),
        ];
        for (base, field_path, expected) in cases {
            assert_eq!(
                join_rule_field_path(base, field_path),
                expected,
                "{base} + {field_path}"
            );
        }
    }
}

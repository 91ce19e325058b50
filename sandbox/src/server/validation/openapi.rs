//! OpenAPI keyword validation: kube-openapi's `SchemaValidator`, in its validator order (type,
//! allOf/anyOf/oneOf/not, string, number, array, enum, object), with Kubernetes' list-type
//! (`set`/`map`) uniqueness and validation ratcheting. Keyword errors go to `out`, list-type
//! duplicates to `lists` (they are reported after all keyword errors).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::messages::{ErrorType, FieldError, child_path, field_error, index_path, render_f64};
use super::schema::{
    additional_schema, correlated_item, count_bound, declared_types, flag, is_null_branch, is_nullable, json_equal, json_kind,
    list_map_key, list_map_keys, matches_type, number_bound, properties,
};

pub(super) fn check_node(
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
    field_error(ErrorType::NotSupported, path, value, &format!("supported values: {}", quoted.join(", ")))
}

fn check_string(schema: &Value, s: &str, path: &str, out: &mut Vec<FieldError>) {
    let length = s.chars().count() as u64;
    let value = Value::String(s.to_string());
    if let Some(max) = count_bound(schema, "maxLength")
        && length > max
    {
        out.push(field_error(ErrorType::TooLong, path, &value, &format!("may not be more than {max} bytes")));
    }
    if let Some(min) = count_bound(schema, "minLength")
        && length < min
    {
        out.push(field_error(ErrorType::Invalid, path, &value, &format!("{path} in body should be at least {min} chars long")));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // A pattern that does not compile is the CRD's fault and is refused when the CRD is
        // created; here it constrains nothing.
        if pattern_matches(pattern, s) == Some(false) {
            out.push(field_error(ErrorType::Invalid, path, &value, &format!("{path} in body should match '{pattern}'")));
        }
    }
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Option<regex::Regex>>> = RefCell::new(HashMap::new());
}

fn pattern_matches(pattern: &str, s: &str) -> Option<bool> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let compiled = cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
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
        out.push(field_error(ErrorType::Invalid, path, &value, &format!("{path} in body should be a multiple of {}", render_f64(factor))));
    }
    if let Some(max) = number_bound(schema, "maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if (exclusive && x >= max) || (!exclusive && x > max) {
            let relation = if exclusive { "less than" } else { "less than or equal to" };
            out.push(field_error(ErrorType::Invalid, path, &value, &format!("{path} in body should be {relation} {}", render_f64(max))));
        }
    }
    if let Some(min) = number_bound(schema, "minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if (exclusive && x <= min) || (!exclusive && x < min) {
            let relation = if exclusive { "greater than" } else { "greater than or equal to" };
            out.push(field_error(ErrorType::Invalid, path, &value, &format!("{path} in body should be {relation} {}", render_f64(min))));
        }
    }
}

fn check_array(schema: &Value, items: &[Value], old: Option<&Value>, path: &str, out: &mut Vec<FieldError>, lists: &mut Vec<FieldError>) {
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
        out.push(field_error(ErrorType::Invalid, path, &size, &format!("{path} in body should have at least {min} items")));
    }
    if let Some(max) = count_bound(schema, "maxItems")
        && items.len() as u64 > max
    {
        out.push(field_error(ErrorType::TooMany, path, &size, &format!("must have at most {max} items")));
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
                let duplicate =
                    items[..i].iter().filter_map(|earlier| list_map_key(earlier, &keys)).any(|earlier| json_equal(&earlier, &key));
                if duplicate {
                    lists.push(field_error(ErrorType::Duplicate, &index_path(path, i), &key, ""));
                }
            }
        }
        _ => {}
    }
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
        out.push(field_error(ErrorType::TooMany, path, &Value::from(count), &format!("must have at most {max} items")));
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
            check_node(value_schema, value, old.and_then(|o| o.get(key)), &child_path(path, key), out, lists);
        }
    }

    if let Some(declared) = declared {
        for (name, value) in fields {
            if let Some(property_schema) = declared.get(name) {
                check_node(property_schema, value, old.and_then(|o| o.get(name)), &child_path(path, name), out, lists);
            }
        }
    }

    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                out.push(field_error(ErrorType::Required, &child_path(path, name), &Value::Null, ""));
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
        && keys.keys().all(|k| matches!(k.as_str(), "enum" | "const" | "type" | "description" | "title" | "nullable"))
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
            out.push(composite_error(&format!("{quoted_path} must validate all the schemas (allOf){none}")));
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
            let allowed: Vec<Value> = alternatives.iter().filter_map(|b| allowed_values(b)).flatten().collect();
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
            (true, 0) => Some(format!("{quoted_path} must validate one and only one schema (oneOf). Found none valid")),
            (true, n) if n > 1 => {
                Some(format!("{quoted_path} must validate one and only one schema (oneOf). Found {n} valid alternatives"))
            }
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
            out.push(composite_error(&format!("{quoted_path} must not validate the schema (not)")));
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

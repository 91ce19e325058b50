//! `x-kubernetes-validations`: the CEL rules of each schema node, evaluated top-down by
//! `kube-cel` with the node's own schema, transition rules (`oldSelf`) only where an old value
//! correlates, and failures turned into the causes the real server reports (`failed rule: ...`,
//! compile and evaluation errors with cel-go's wording, a rule's `fieldPath` and `reason`).

use serde_json::Value;

use super::messages::{ErrorType, FieldError, child_path, field_error, index_path, key_path};
use super::schema::{additional_schema, correlated_item, json_equal, properties};

fn node_rules(schema: &Value) -> Option<&Vec<Value>> {
    schema.get("x-kubernetes-validations").and_then(Value::as_array).filter(|rules| !rules.is_empty())
}

/// Whether any node of the structural schema carries CEL rules.
pub(super) fn has_cel_rules(schema: &Value) -> bool {
    node_rules(schema).is_some()
        || properties(schema).is_some_and(|p| p.values().any(has_cel_rules))
        || schema.get("items").is_some_and(has_cel_rules)
        || additional_schema(schema).is_some_and(has_cel_rules)
}

/// Evaluates rules top-down: the node's own rules, then properties (sorted), map entries
/// (sorted), list items (in order). Absent and null values are not evaluated.
pub(super) fn cel_walk(schema: &Value, value: &Value, old: Option<&Value>, path: &str, out: &mut Vec<FieldError>) {
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
            rules.retain(|r| r.get("rule").and_then(Value::as_str).is_some_and(|r| r.contains("oldSelf")));
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
                field_error(ErrorType::Invalid, path, &node_type, &format!("rule compile error: compilation failed: {detail}"))
            }
            kube_cel::ErrorKind::EvaluationError | kube_cel::ErrorKind::UnsupportedReference => {
                let cause = evaluation_cause(&failure);
                field_error(ErrorType::Invalid, path, &node_type, &format!("{cause} evaluating rule: {}", failure.rule.trim()))
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
pub(super) fn join_rule_field_path(path: &str, field_path: &str) -> String {
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

//! What a client reads when a custom resource is refused: the `StatusCause`-shaped
//! [`FieldError`], built the way `field.Error.ErrorBody()` renders it (Go's value formatting
//! included), the field paths (`spec.items[2]`, `spec.labels[foo]`), and the `Status` message
//! aggregated from the causes. Only formatting: which errors exist is decided by the checks.

use serde_json::Value;

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

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ErrorType {
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
    pub(super) fn reason(self) -> &'static str {
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

pub(super) fn is_blocking(error: &FieldError) -> bool {
    [ErrorType::NotSupported, ErrorType::Required, ErrorType::TooLong, ErrorType::TooMany, ErrorType::TypeInvalid]
        .iter()
        .any(|t| t.reason() == error.reason)
}

/// Builds a cause the way `field.Error.ErrorBody()` renders it.
pub(super) fn field_error(ty: ErrorType, path: &str, bad_value: &Value, detail: &str) -> FieldError {
    let mut message = ty.label().to_string();
    if !ty.omits_value() {
        message.push_str(": ");
        message.push_str(&render_value(bad_value));
    }
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(detail);
    }
    FieldError { field: display_path(path), reason: ty.reason().to_string(), message }
}

fn display_path(path: &str) -> String {
    if path.is_empty() { "<nil>".to_string() } else { path.to_string() }
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
    if n.is_i64() || n.is_u64() { n.to_string() } else { render_f64(n.as_f64().unwrap_or(f64::NAN)) }
}

/// Whole floats print without a fractional part, as Go's `%v` does.
pub(super) fn render_f64(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{}", f as i64) } else { format!("{f}") }
}

pub(super) fn child_path(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

pub(super) fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

pub(super) fn key_path(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

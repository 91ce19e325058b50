//! The tiny template syntax of Workflow payloads: `{{steps.<name>.result}}` and
//! `{{steps.<name>.result.<path>}}`, where `<path>` is dot-separated object keys and list
//! indexes (`{{steps.extract.result.rows.0.id}}`). Spaces inside the braces are allowed.
//!
//! A string that is exactly one template is replaced by the referenced JSON value, keeping its
//! type (a number stays a number, an object an object). A template inside a longer string is
//! inserted as text: strings as they are, anything else as compact JSON. Only string values are
//! templated, never object keys. Pure.

use serde_json::Value;

/// A parsed reference to an earlier step's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub step: String,
    pub path: Vec<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "steps.{}.result", self.step)?;
        for segment in &self.path {
            write!(f, ".{segment}")?;
        }
        Ok(())
    }
}

/// Why a template cannot be parsed or resolved. Messages are shown in the Workflow's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {text:?} has no closing '}}}}'")]
    Unclosed { text: String },
    #[error("template {{{{{expr}}}}} is not of the form {{{{steps.<name>.result[.<path>]}}}}")]
    Syntax { expr: String },
    #[error("{{{{{reference}}}}}: step {step:?} has no result")]
    NoResult { reference: String, step: String },
    #[error("{{{{{reference}}}}}: the result of step {step:?} has nothing at {at:?}")]
    MissingPath { reference: String, step: String, at: String },
    #[error("itemsFrom {{{{{reference}}}}} is {kind}, not a list")]
    NotAList { reference: String, kind: &'static str },
    #[error("itemsFrom must be exactly one template such as {{{{steps.extract.result.rows}}}}, got {text:?}")]
    ItemsFromNotATemplate { text: String },
}

impl TemplateError {
    /// Stable reason, for conditions and step messages.
    pub fn reason(&self) -> &'static str {
        match self {
            TemplateError::Unclosed { .. } | TemplateError::Syntax { .. } | TemplateError::ItemsFromNotATemplate { .. } => "BadTemplate",
            TemplateError::NoResult { .. } | TemplateError::MissingPath { .. } | TemplateError::NotAList { .. } => "TemplateUnresolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment<'a> {
    Text(&'a str),
    Ref(Reference),
}

fn parse_expr(expr: &str) -> Result<Reference, TemplateError> {
    let syntax = || TemplateError::Syntax { expr: expr.to_string() };
    let trimmed = expr.trim();
    let mut parts = trimmed.split('.');
    if parts.next() != Some("steps") {
        return Err(syntax());
    }
    let step = parts.next().filter(|s| !s.is_empty()).ok_or_else(syntax)?;
    if parts.next() != Some("result") {
        return Err(syntax());
    }
    let path: Vec<String> = parts.map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(syntax());
    }
    Ok(Reference { step: step.to_string(), path })
}

fn parse(text: &str) -> Result<Vec<Segment<'_>>, TemplateError> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segments.push(Segment::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| TemplateError::Unclosed { text: text.to_string() })?;
        segments.push(Segment::Ref(parse_expr(&after[..close])?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest));
    }
    Ok(segments)
}

/// Every reference in the strings of `value` (recursively), or the first syntax error.
pub fn references(value: &Value) -> Result<Vec<Reference>, TemplateError> {
    let mut out = Vec::new();
    collect(value, &mut out)?;
    Ok(out)
}

fn collect(value: &Value, out: &mut Vec<Reference>) -> Result<(), TemplateError> {
    match value {
        Value::String(s) => {
            for segment in parse(s)? {
                if let Segment::Ref(r) = segment {
                    out.push(r);
                }
            }
        }
        Value::Array(items) => items.iter().try_for_each(|v| collect(v, out))?,
        Value::Object(map) => map.values().try_for_each(|v| collect(v, out))?,
        _ => {}
    }
    Ok(())
}

/// The reference of an `itemsFrom` string, which must be exactly one template.
pub fn items_from_reference(text: &str) -> Result<Reference, TemplateError> {
    match parse(text)?.as_slice() {
        [Segment::Ref(r)] => Ok(r.clone()),
        _ => Err(TemplateError::ItemsFromNotATemplate { text: text.to_string() }),
    }
}

/// Looks up a reference; `results` gives a step's result, if it has one.
pub fn lookup<'a>(reference: &Reference, results: &impl Fn(&str) -> Option<&'a Value>) -> Result<&'a Value, TemplateError> {
    let mut value = results(&reference.step)
        .ok_or_else(|| TemplateError::NoResult { reference: reference.to_string(), step: reference.step.clone() })?;
    let mut at = Vec::new();
    for segment in &reference.path {
        at.push(segment.as_str());
        let next = match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        value = next.ok_or_else(|| TemplateError::MissingPath {
            reference: reference.to_string(),
            step: reference.step.clone(),
            at: at.join("."),
        })?;
    }
    Ok(value)
}

/// Substitutes every template in `value`.
pub fn render<'a>(value: &Value, results: &impl Fn(&str) -> Option<&'a Value>) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => {
            let segments = parse(s)?;
            match segments.as_slice() {
                [Segment::Ref(r)] => lookup(r, results)?.clone(),
                _ if segments.iter().all(|s| matches!(s, Segment::Text(_))) => value.clone(),
                _ => {
                    let mut out = String::new();
                    for segment in &segments {
                        match segment {
                            Segment::Text(t) => out.push_str(t),
                            Segment::Ref(r) => match lookup(r, results)? {
                                Value::String(s) => out.push_str(s),
                                other => out.push_str(&other.to_string()),
                            },
                        }
                    }
                    Value::String(out)
                }
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, results)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, results)?))).collect::<Result<_, TemplateError>>()?)
        }
        other => other.clone(),
    })
}

/// The list an `itemsFrom` template resolves to.
pub fn render_items<'a>(text: &str, results: &impl Fn(&str) -> Option<&'a Value>) -> Result<Vec<Value>, TemplateError> {
    let reference = items_from_reference(text)?;
    match lookup(&reference, results)? {
        Value::Array(items) => Ok(items.clone()),
        other => Err(TemplateError::NotAList {
            reference: reference.to_string(),
            kind: match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Object(_) => "an object",
                Value::Array(_) => unreachable!(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results() -> std::collections::BTreeMap<&'static str, Value> {
        [
            ("extract", json!({"rows": [{"id": 7}, {"id": 8}], "count": 2, "name": "orders", "ok": true})),
            ("charge", json!("ch_123")),
            ("nothing", Value::Null),
        ]
        .into_iter()
        .collect()
    }

    fn run(template: Value) -> Result<Value, TemplateError> {
        let r = results();
        render(&template, &|step: &str| r.get(step))
    }

    #[test]
    fn substitution_keeps_types_for_whole_values_and_stringifies_inside_strings() {
        let cases: Vec<(Value, Value)> = vec![
            (json!("{{steps.extract.result.count}}"), json!(2)),
            (json!("{{ steps.extract.result.rows }}"), json!([{"id": 7}, {"id": 8}])),
            (json!("{{steps.extract.result.rows.1.id}}"), json!(8)),
            (json!("{{steps.extract.result.ok}}"), json!(true)),
            (json!("{{steps.extract.result}}"), json!({"rows": [{"id": 7}, {"id": 8}], "count": 2, "name": "orders", "ok": true})),
            (json!("{{steps.nothing.result}}"), Value::Null),
            (json!("total: {{steps.extract.result.count}}"), json!("total: 2")),
            (json!("{{steps.extract.result.name}}/{{steps.charge.result}}"), json!("orders/ch_123")),
            (json!("ids {{steps.extract.result.rows.0}}"), json!("ids {\"id\":7}")),
            (json!("no template here"), json!("no template here")),
            (
                json!({"a": ["{{steps.charge.result}}", 1], "b": {"c": "{{steps.extract.result.count}}"}}),
                json!({"a": ["ch_123", 1], "b": {"c": 2}}),
            ),
            (json!(42), json!(42)),
        ];
        for (template, want) in cases {
            assert_eq!(run(template.clone()).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases: Vec<(Value, &str)> = vec![
            (json!("{{steps.extract.result.count"), "template \"{{steps.extract.result.count\" has no closing '}}'"),
            (json!("{{extract.result}}"), "template {{extract.result}} is not of the form {{steps.<name>.result[.<path>]}}"),
            (json!("{{steps.extract.output}}"), "template {{steps.extract.output}} is not of the form {{steps.<name>.result[.<path>]}}"),
            (
                json!("{{steps.extract.result..x}}"),
                "template {{steps.extract.result..x}} is not of the form {{steps.<name>.result[.<path>]}}",
            ),
            (json!("{{steps.load.result}}"), "{{steps.load.result}}: step \"load\" has no result"),
            (
                json!("{{steps.extract.result.rows.5.id}}"),
                "{{steps.extract.result.rows.5.id}}: the result of step \"extract\" has nothing at \"rows.5\"",
            ),
            (json!("{{steps.charge.result.id}}"), "{{steps.charge.result.id}}: the result of step \"charge\" has nothing at \"id\""),
        ];
        for (template, want) in cases {
            assert_eq!(run(template.clone()).unwrap_err().to_string(), want, "{template}");
        }
    }

    #[test]
    fn references_are_collected_from_nested_strings() {
        let refs = references(&json!({"x": ["{{steps.a.result.k}} and {{steps.b.result}}"], "y": {"z": "{{steps.c.result.0}}"}})).unwrap();
        let names: Vec<String> = refs.iter().map(ToString::to_string).collect();
        assert_eq!(names, vec!["steps.a.result.k", "steps.b.result", "steps.c.result.0"]);
    }

    #[test]
    fn items_from_needs_one_template_resolving_to_a_list() {
        let r = results();
        let lookup = |step: &str| r.get(step);
        assert_eq!(render_items("{{steps.extract.result.rows}}", &lookup).unwrap(), vec![json!({"id": 7}), json!({"id": 8})]);
        assert_eq!(
            render_items("{{steps.extract.result.count}}", &lookup).unwrap_err().to_string(),
            "itemsFrom {{steps.extract.result.count}} is a number, not a list"
        );
        assert_eq!(
            render_items("rows: {{steps.extract.result.rows}}", &lookup).unwrap_err().to_string(),
            "itemsFrom must be exactly one template such as {{steps.extract.result.rows}}, got \"rows: {{steps.extract.result.rows}}\""
        );
    }
}

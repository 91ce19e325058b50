//! The validation tables: schema keyword errors, CEL rules (including transition rules and
//! ratcheting), pruning, defaulting and the `Status` message, each compared exactly with what
//! the real API server returns.

use super::cel::join_rule_field_path;
use super::*;
use serde_json::json;

/// Expected `(field, reason, message)` triples.
type Expected = Vec<(&'static str, &'static str, &'static str)>;

/// `(field, reason, message)` of each error, for exact comparisons.
fn triples(errors: &[FieldError]) -> Vec<(String, String, String)> {
    errors.iter().map(|e| (e.field.clone(), e.reason.clone(), e.message.clone())).collect()
}

fn want(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    expected.iter().map(|(f, r, m)| (f.to_string(), r.to_string(), m.to_string())).collect()
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
        Case { name: "integer ok", spec_schema: replicas(), spec: json!({"replicas": 3}), want: &[] },
        Case { name: "integer negative ok", spec_schema: replicas(), spec: json!({"replicas": -3}), want: &[] },
        Case { name: "integer as whole float ok", spec_schema: replicas(), spec: json!({"replicas": 3.0}), want: &[] },
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
            want: &[("spec", "FieldValueTypeInvalid", "Invalid value: \"array\": spec in body must be of type object: \"array\"")],
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
            want: &[("spec.name", "FieldValueTypeInvalid", "Invalid value: \"null\": spec.name in body must be of type string: \"null\"")],
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
                ("<nil>", "FieldValueInvalid", "Invalid value: \"\": \"spec.limit\" must validate at least one schema (anyOf)"),
                ("spec.limit", "FieldValueInvalid", "Invalid value: 0: spec.limit in body should be greater than or equal to 1"),
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
        Case { name: "all present", spec_schema: schema(), spec: json!({"queue": "q", "image": "i"}), want: &[] },
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
            want: &[("spec.queue", "FieldValueRequired", "Required value"), ("spec.image", "FieldValueRequired", "Required value")],
        },
    ]);

    let root = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}});
    let errors = validate(&root, &json!({"apiVersion": "v1", "kind": "K"}), None);
    assert_eq!(triples(&errors), want(&[("spec", "FieldValueRequired", "Required value")]));
}

#[test]
fn validation_enum() {
    let schema = || json!({"type": "object", "properties": {"priority": {"type": "string", "enum": ["high", "normal", "low"]}}});
    run(vec![
        Case { name: "allowed", spec_schema: schema(), spec: json!({"priority": "low"}), want: &[] },
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
            want: &[("spec.level", "FieldValueNotSupported", "Unsupported value: 3: supported values: \"1\", \"2\"")],
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
            want: &[("spec.mode", "FieldValueNotSupported", "Unsupported value: \"Random\": supported values: \"Fifo\", \"Lifo\"")],
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
            want: &[("spec.mode", "FieldValueNotSupported", "Unsupported value: \"C\": supported values: \"A\", \"B\"")],
        },
    ]);
}

#[test]
fn validation_numeric_bounds() {
    let bounded = |extra: Value| {
        let mut replicas = json!({"type": "integer"});
        replicas.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"type": "object", "properties": {"replicas": replicas}})
    };
    run(vec![
        Case { name: "minimum equal", spec_schema: bounded(json!({"minimum": 0})), spec: json!({"replicas": 0}), want: &[] },
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
            want: &[("spec.replicas", "FieldValueInvalid", "Invalid value: 0: spec.replicas in body should be greater than 0")],
        },
        Case {
            name: "exclusive minimum above",
            spec_schema: bounded(json!({"minimum": 0, "exclusiveMinimum": true})),
            spec: json!({"replicas": 1}),
            want: &[],
        },
        Case { name: "maximum equal", spec_schema: bounded(json!({"maximum": 10})), spec: json!({"replicas": 10}), want: &[] },
        Case {
            name: "above maximum",
            spec_schema: bounded(json!({"maximum": 10})),
            spec: json!({"replicas": 11}),
            want: &[("spec.replicas", "FieldValueInvalid", "Invalid value: 11: spec.replicas in body should be less than or equal to 10")],
        },
        Case {
            name: "exclusive maximum equal",
            spec_schema: bounded(json!({"maximum": 10, "exclusiveMaximum": true})),
            spec: json!({"replicas": 10}),
            want: &[("spec.replicas", "FieldValueInvalid", "Invalid value: 10: spec.replicas in body should be less than 10")],
        },
        Case {
            name: "fractional bound and value",
            spec_schema: json!({"type": "object", "properties": {"ratio": {"type": "number", "maximum": 0.5}}}),
            spec: json!({"ratio": 0.75}),
            want: &[("spec.ratio", "FieldValueInvalid", "Invalid value: 0.75: spec.ratio in body should be less than or equal to 0.5")],
        },
        Case {
            name: "multipleOf",
            spec_schema: bounded(json!({"multipleOf": 5})),
            spec: json!({"replicas": 7}),
            want: &[("spec.replicas", "FieldValueInvalid", "Invalid value: 7: spec.replicas in body should be a multiple of 5")],
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
        Case { name: "max length equal", spec_schema: name(json!({"maxLength": 5})), spec: json!({"name": "abcde"}), want: &[] },
        Case { name: "max length counts characters", spec_schema: name(json!({"maxLength": 2})), spec: json!({"name": "éé"}), want: &[] },
        Case {
            name: "too long",
            spec_schema: name(json!({"maxLength": 5})),
            spec: json!({"name": "abcdef"}),
            want: &[("spec.name", "FieldValueTooLong", "Too long: may not be more than 5 bytes")],
        },
        Case {
            name: "too short",
            spec_schema: name(json!({"minLength": 3})),
            spec: json!({"name": "ab"}),
            want: &[("spec.name", "FieldValueInvalid", "Invalid value: \"ab\": spec.name in body should be at least 3 chars long")],
        },
        Case { name: "pattern matches", spec_schema: name(json!({"pattern": "^[a-z]+$"})), spec: json!({"name": "abc"}), want: &[] },
        Case {
            name: "pattern fails",
            spec_schema: name(json!({"pattern": "^[a-z]+$"})),
            spec: json!({"name": "ABC"}),
            want: &[("spec.name", "FieldValueInvalid", "Invalid value: \"ABC\": spec.name in body should match '^[a-z]+$'")],
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
        Case { name: "items ok", spec_schema: list(json!({})), spec: json!({"tags": ["a", "b"]}), want: &[] },
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
        Case { name: "min items equal", spec_schema: list(json!({"minItems": 1})), spec: json!({"tags": ["a"]}), want: &[] },
        Case {
            name: "too few items",
            spec_schema: list(json!({"minItems": 1})),
            spec: json!({"tags": []}),
            want: &[("spec.tags", "FieldValueInvalid", "Invalid value: 0: spec.tags in body should have at least 1 items")],
        },
        Case { name: "max items equal", spec_schema: list(json!({"maxItems": 2})), spec: json!({"tags": ["a", "b"]}), want: &[] },
        Case {
            name: "too many items",
            spec_schema: list(json!({"maxItems": 2})),
            spec: json!({"tags": ["a", "b", "c"]}),
            want: &[("spec.tags", "FieldValueTooMany", "Too many: 3: must have at most 2 items")],
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
            want: &[("spec.ports[1]", "FieldValueDuplicate", "Duplicate value: {\"name\":\"http\"}")],
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
        Case { name: "string map ok", spec_schema: labels(), spec: json!({"labels": {"a": "x", "b": "y"}}), want: &[] },
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
            want: &[("spec.labels.foo", "FieldValueTooLong", "Too long: may not be more than 3 bytes")],
        },
        Case {
            name: "additionalProperties false forbids unknown keys",
            spec_schema: json!({"type": "object", "additionalProperties": false, "properties": {"a": {"type": "string"}}}),
            spec: json!({"a": "x", "b": "y"}),
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"b\": spec.b in body is a forbidden property")],
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
            want: &[("spec", "FieldValueInvalid", "Invalid value: 0: spec in body should have at least 1 properties")],
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
        Case { name: "integer", spec_schema: port(), spec: json!({"port": 8080}), want: &[] },
        Case { name: "string", spec_schema: port(), spec: json!({"port": "http"}), want: &[] },
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
                ("<nil>", "FieldValueInvalid", "Invalid value: \"\": \"spec.port\" must validate at least one schema (anyOf)"),
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
        Case { name: "exactly one", spec_schema: schema(), spec: json!({"source": {"git": "url"}}), want: &[] },
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
                ("spec.n", "FieldValueInvalid", "Invalid value: 5: spec.n in body should be less than or equal to 3"),
                ("<nil>", "FieldValueInvalid", "Invalid value: \"\": \"spec.n\" must validate all the schemas (allOf)"),
            ],
        },
        Case {
            name: "not",
            spec_schema: json!({"type": "object", "properties": {"n": {"type": "integer", "not": {"enum": [13]}}}}),
            spec: json!({"n": 13}),
            want: &[("<nil>", "FieldValueInvalid", "Invalid value: \"\": \"spec.n\" must not validate the schema (not)")],
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
    assert_eq!(first.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), vec!["spec.a", "spec.b", "spec.queue"]);
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
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"object\": failed rule: self.minReplicas <= self.maxReplicas")],
        },
        CelCase {
            name: "min > max with message",
            spec_schema: scaling(
                json!({"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}),
            ),
            spec: json!({"minReplicas": 5, "maxReplicas": 3}),
            old_spec: None,
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"object\": minReplicas must not exceed maxReplicas")],
        },
        CelCase {
            name: "messageExpression",
            spec_schema: scaling(json!({
                "rule": "self.minReplicas <= self.maxReplicas",
                "messageExpression": "'minReplicas ' + string(self.minReplicas) + ' exceeds maxReplicas ' + string(self.maxReplicas)"
            })),
            spec: json!({"minReplicas": 5, "maxReplicas": 3}),
            old_spec: None,
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"object\": minReplicas 5 exceeds maxReplicas 3")],
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
            want: &[("spec.minReplicas", "FieldValueForbidden", "Forbidden: must be at most maxReplicas")],
        },
        CelCase {
            name: "reason Required",
            spec_schema: scaling(
                json!({"rule": "has(self.maxReplicas)", "message": "maxReplicas is needed", "reason": "FieldValueRequired", "fieldPath": "['maxReplicas']"}),
            ),
            spec: json!({"minReplicas": 1}),
            old_spec: None,
            want: &[("spec.maxReplicas", "FieldValueRequired", "Required value: maxReplicas is needed")],
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
        CelCase { name: "payload only", spec_schema: payload_xor_items(), spec: json!({"payload": "p"}), old_spec: None, want: &[] },
        CelCase { name: "items only", spec_schema: payload_xor_items(), spec: json!({"items": ["a"]}), old_spec: None, want: &[] },
        CelCase {
            name: "both payload and items",
            spec_schema: payload_xor_items(),
            spec: json!({"payload": "p", "items": ["a"]}),
            old_spec: None,
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"object\": exactly one of payload or items must be set")],
        },
        CelCase {
            name: "neither payload nor items",
            spec_schema: payload_xor_items(),
            spec: json!({}),
            old_spec: None,
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"object\": exactly one of payload or items must be set")],
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
            want: &[("spec.items", "FieldValueInvalid", "Invalid value: \"array\": every item needs a name")],
        },
        CelCase {
            name: "item rule reports the item path",
            spec_schema: item_rule(),
            spec: json!({"items": [{"name": "job-a"}, {"name": "job-b"}, {"name": "c"}]}),
            old_spec: None,
            want: &[("spec.items[2]", "FieldValueInvalid", "Invalid value: \"object\": failed rule: self.name.startsWith('job-')")],
        },
        CelCase {
            name: "map value rule reports [key]",
            spec_schema: labels(),
            spec: json!({"labels": {"ok": "fine", "foo": "forbidden"}}),
            old_spec: None,
            want: &[("spec.labels[foo]", "FieldValueInvalid", "Invalid value: \"string\": failed rule: self != 'forbidden'")],
        },
        CelCase {
            name: "list size via kube list library",
            spec_schema: json!({"type": "object", "properties": {"tags": {
                "type": "array", "items": {"type": "string"},
                "x-kubernetes-validations": [{"rule": "self.isSorted()", "message": "tags must be sorted"}]
            }}}),
            spec: json!({"tags": ["b", "a"]}),
            old_spec: None,
            want: &[("spec.tags", "FieldValueInvalid", "Invalid value: \"array\": tags must be sorted")],
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
    assert_eq!(triples(&bad), want(&[("<nil>", "FieldValueInvalid", "Invalid value: \"object\": name must start with w-")]));
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
    assert!(errors[0].message.starts_with("Invalid value: \"object\": rule compile error: compilation failed: "), "{}", errors[0].message);
}

#[test]
fn cel_transition_rules() {
    let immutable_queue = || {
        json!({"type": "object", "properties": {"queue": {
            "type": "string",
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "queue is immutable"}]
        }}})
    };
    let no_scale_down = || scaling(json!({"rule": "self.maxReplicas >= oldSelf.maxReplicas", "message": "cannot lower maxReplicas"}));
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
            want: &[("spec.queue", "FieldValueInvalid", "Invalid value: \"string\": queue is immutable")],
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
            want: &[("spec", "FieldValueInvalid", "Invalid value: \"object\": cannot lower maxReplicas")],
        },
        CelCase {
            name: "map-list items correlate by key, not index",
            spec_schema: keyed_workers(),
            spec: json!({"workers": [{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:2"}]}),
            old_spec: Some(json!({"workers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]})),
            want: &[("spec.workers[1].image", "FieldValueInvalid", "Invalid value: \"string\": image is immutable")],
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
                ("spec", "FieldValueInvalid", "Invalid value: \"object\": failed rule: self.minReplicas <= self.maxReplicas"),
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
            vec![("spec.name", "FieldValueTooLong", "Too long: may not be more than 3 bytes"), NOT_CHECKED],
        ),
        ("update keeping invalid values is allowed", json!({"name": "toolong", "replicas": 0, "other": "b"}), Some(&stored), vec![]),
        (
            "update changing an invalid value is checked",
            json!({"name": "stilltoolong", "replicas": 0}),
            Some(&stored),
            vec![("spec.name", "FieldValueTooLong", "Too long: may not be more than 3 bytes"), NOT_CHECKED],
        ),
        (
            "update changing a value checks its CEL rules",
            json!({"name": "toolong", "replicas": -1}),
            Some(&stored),
            vec![("spec.replicas", "FieldValueInvalid", "Invalid value: \"integer\": at least one replica")],
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
        ("unknown nested field dropped", json!({"spec": {"queue": "q", "extra": 1}}), json!({"spec": {"queue": "q"}}), vec!["spec.extra"]),
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
    let required = FieldError { field: "spec.queue".into(), reason: "FieldValueRequired".into(), message: "Required value".into() };
    let range = FieldError {
        field: "spec.replicas".into(),
        reason: "FieldValueInvalid".into(),
        message: "Invalid value: -1: spec.replicas in body should be greater than or equal to 0".into(),
    };
    let cases: Vec<(&str, Vec<FieldError>, &str)> = vec![
        ("one error", vec![required.clone()], "Job.warren.dev \"j1\" is invalid: spec.queue: Required value"),
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
        assert_eq!(invalid_message("Job.warren.dev", "j1", &errors), expected, "case {name}");
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
        assert_eq!(join_rule_field_path(base, field_path), expected, "{base} + {field_path}");
    }
}

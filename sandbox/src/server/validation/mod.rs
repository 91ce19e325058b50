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
//!
//! The parts, by concern: `openapi` (the OpenAPI keyword checks), `cel` (the
//! `x-kubernetes-validations` rules), `prune`, `defaults`, `messages` (the causes, their field
//! paths and the `Status` message) and `schema` (reading a structural schema, shared by all).
//! This file holds the entry points and the order in which they run.

mod cel;
mod defaults;
mod messages;
mod openapi;
mod prune;
mod schema;
#[cfg(test)]
mod tests;

use serde_json::Value;

use cel::{cel_walk, has_cel_rules};
use defaults::default_node;
use messages::{ErrorType, is_blocking};
pub use messages::{FieldError, invalid_message};
use openapi::check_node;
use prune::prune_node;

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

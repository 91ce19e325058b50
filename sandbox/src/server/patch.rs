//! PATCH bodies: content types, parsing, and applying merge / JSON / strategic-merge patches.
//! Server-side apply is in `managed`. Pure.

use serde_json::Value;

use super::error::ApiError;
use super::managed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    /// Approximated as a JSON merge patch after dropping `$` directives.
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let media = ct.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ))),
        }
    }
}

/// Parses a JSON request body into a value, or a 400 `BadRequest`.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body of the request could not be decoded as JSON: {e}")))
}

/// Parses a patch body; apply bodies are YAML (of which JSON is a subset).
pub fn parse(pt: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match pt {
        PatchType::Apply => match serde_json::from_slice(body) {
            Ok(v) => Ok(v),
            Err(_) => {
                let text = std::str::from_utf8(body).map_err(|e| ApiError::BadRequest(format!("apply body is not UTF-8: {e}")))?;
                serde_saphyr::from_str::<Value>(text).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
            }
        },
        _ => parse_json(body),
    }
}

/// Applies a non-apply patch to the current object.
pub fn apply_patch(pt: PatchType, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match pt {
        PatchType::Merge => json_patch::merge(&mut doc, patch),
        PatchType::Strategic => {
            let mut p = patch.clone();
            managed::strip_directives(&mut p);
            json_patch::merge(&mut doc, &p);
        }
        PatchType::Json => {
            let mut ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the body of the request was not a valid JSON patch: {e}")))?;
            // Like the API server's JSON patch library: `test` of a missing path against `null`
            // succeeds (kube-runtime's finalizer helper relies on it).
            ops.0.retain(|op| match op {
                json_patch::PatchOperation::Test(t) => !(t.value.is_null() && doc.pointer(t.path.as_str()).is_none()),
                _ => true,
            });
            json_patch::patch(&mut doc, &ops).map_err(|e| ApiError::BadRequest(format!("the JSON patch could not be applied: {e}")))?;
        }
        PatchType::Apply => return Err(ApiError::Internal("server-side apply is not a plain patch".into())),
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types_select_patch_kinds() {
        assert_eq!(PatchType::from_content_type("application/merge-patch+json").unwrap(), PatchType::Merge);
        assert_eq!(PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8").unwrap(), PatchType::Apply);
        assert_eq!(PatchType::from_content_type("text/plain").unwrap_err().code(), 415);
    }

    #[test]
    fn merge_json_and_strategic_patches() {
        let cur = json!({"spec": {"a": 1, "b": 2, "l": [1]}});
        assert_eq!(
            apply_patch(PatchType::Merge, &cur, &json!({"spec": {"a": null, "c": 3}})).unwrap(),
            json!({"spec": {"b": 2, "l": [1], "c": 3}})
        );
        assert_eq!(
            apply_patch(PatchType::Json, &cur, &json!([{"op": "add", "path": "/spec/l/-", "value": 2}])).unwrap()["spec"]["l"],
            json!([1, 2])
        );
        assert_eq!(apply_patch(PatchType::Json, &cur, &json!([{"op": "test", "path": "/spec/a", "value": 9}])).unwrap_err().code(), 400);
        assert_eq!(apply_patch(PatchType::Strategic, &cur, &json!({"spec": {"$retainKeys": ["a"], "a": 5}})).unwrap()["spec"]["a"], 5);
    }

    #[test]
    fn apply_bodies_may_be_yaml() {
        let v = parse(PatchType::Apply, b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: \"1\"\n").unwrap();
        assert_eq!(v["data"]["a"], "1");
        assert_eq!(parse(PatchType::Merge, b"{nope").unwrap_err().code(), 400);
    }
}

//! Structural pruning: fields the schema does not declare are dropped (and their paths
//! returned), except under `x-kubernetes-preserve-unknown-fields`, `additionalProperties: true`,
//! and the type meta of a resource root or an embedded resource.

use serde_json::Value;

use super::messages::{child_path, index_path};
use super::schema::{additional_schema, flag, properties};

pub(super) fn prune_node(schema: &Value, value: &mut Value, path: &str, is_resource_root: bool, dropped: &mut Vec<String>) {
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

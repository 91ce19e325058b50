//! Defaulting: `default` values applied to absent fields (and to `null` values of non-nullable
//! fields, which disappear when there is no default), recursively, including inside defaults
//! just applied, as the real server does before validation.

use serde_json::Value;

use super::schema::{additional_schema, is_nullable, properties};

pub(super) fn default_node(schema: &Value, value: &mut Value) {
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

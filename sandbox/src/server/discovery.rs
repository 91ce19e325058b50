//! Discovery documents (`/version`, `/api`, `/apis`, group and group-version resource lists)
//! computed from the registry. Pure.

use serde_json::{Value, json};

use super::resources::{Registry, ResourceType};

pub const KUBERNETES_MINOR: &str = "35";

pub fn version() -> Value {
    json!({
        "major": "1", "minor": KUBERNETES_MINOR, "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-warren"),
        "gitCommit": "warren-local", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64",
    })
}

pub fn api_versions(address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]})
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or(json!({}))})
}

pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_doc(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let groups = reg.groups();
    let versions = groups.get(name).filter(|_| !name.is_empty())?;
    let mut doc = group_doc(name, versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn resource_entries(t: &ResourceType, version: &str) -> Vec<Value> {
    let Some(vi) = t.version(version) else { return vec![] };
    let mut main = json!({
        "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind, "verbs": VERBS,
    });
    if !t.short_names.is_empty() {
        main["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        main["categories"] = json!(t.categories);
    }
    let mut out = vec![main];
    if vi.status {
        out.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                        "kind": t.kind, "verbs": ["get", "patch", "update"]}));
    }
    if vi.scale.is_some() {
        out.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": t.namespaced,
                        "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
    }
    out
}

/// The `APIResourceList` of one group version, or None when nothing is served there.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = reg.all().filter(|t| t.group == group).flat_map(|t| resource_entries(t, version)).collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// `/openapi/v3`: one entry per served group version. The documents hold the PATCH operations
/// (enough for kubectl to see that `fieldValidation` is supported) and, for custom resources,
/// their CRD's schema as kube-apiserver publishes it (so `kubectl explain wjob.spec` works).
pub fn openapi_root(reg: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, vs) in reg.groups() {
        for v in vs {
            let p = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}")}));
        }
    }
    json!({"paths": paths})
}

pub fn openapi_group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    let mut paths = serde_json::Map::new();
    for t in reg.all().filter(|t| t.group == group && t.version(version).is_some()) {
        let item = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string"}}))
            .collect();
        paths.insert(
            item,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    let mut schemas = serde_json::Map::new();
    for t in reg.all().filter(|t| t.group == group) {
        if let Some(schema) = t.version(version).and_then(|v| v.schema.as_ref()) {
            schemas.insert(schema_name(group, version, &t.kind), published_schema(schema, group, version, &t.kind));
        }
    }
    if !schemas.is_empty() {
        schemas.insert(OBJECT_META.into(), object_meta_schema());
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{KUBERNETES_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// A definition's name as kube-apiserver spells it: the group reversed, then version and kind
/// (`warren.dev` `v1alpha1` `Job` → `dev.warren.v1alpha1.Job`).
fn schema_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// A CRD version's `openAPIV3Schema` as published: with the `apiVersion`, `kind` and
/// `metadata` every object has (the CRD leaves them out), and the GVK kubectl looks it up by.
fn published_schema(schema: &Value, group: &str, version: &str, kind: &str) -> Value {
    let mut published = schema.clone();
    if let Some(object) = published.as_object_mut() {
        let properties = object.entry("properties").or_insert_with(|| json!({}));
        if let Some(properties) = properties.as_object_mut() {
            properties.insert(
                "apiVersion".into(),
                json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}),
            );
            properties.insert(
                "kind".into(),
                json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}),
            );
            properties.insert(
                "metadata".into(),
                json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "default": {}, "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
            );
        }
        object.insert("x-kubernetes-group-version-kind".into(), json!([{"group": group, "version": version, "kind": kind}]));
    }
    published
}

/// The part of `ObjectMeta` a custom resource's user sets (what `kubectl explain <kind>.metadata`
/// shows).
fn object_meta_schema() -> Value {
    let string = |description: &str| json!({"type": "string", "default": "", "description": description});
    let map = |description: &str| json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": description});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "properties": {
            "name": string("Name must be unique within a namespace."),
            "namespace": string("Namespace defines the space within which each name must be unique."),
            "labels": map("Map of string keys and values that can be used to organize and categorize (scope and select) objects."),
            "annotations": map("Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."),
            "generateName": string("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "uid": string("UID is the unique in time and space value for this object. Populated by the system. Read-only."),
            "resourceVersion": string("An opaque value that represents the internal version of this object. Populated by the system. Read-only."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state. Populated by the system. Read-only."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created. Populated by the system. Read-only."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted. Populated by the system when a graceful deletion is requested. Read-only."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry."},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_lists_deployments_with_subresources() {
        let r = Registry::default();
        let l = resource_list(&r, "apps", "v1").unwrap();
        let names: Vec<&str> = l["resources"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["deployments", "deployments/status", "deployments/scale"]);
        assert_eq!(l["resources"][0]["shortNames"], json!(["deploy"]));
        assert!(resource_list(&r, "apps", "v9").is_none());
    }

    #[test]
    fn openapi_v3_advertises_field_validation_on_patch() {
        let r = Registry::default();
        assert_eq!(openapi_root(&r)["paths"]["apis/apps/v1"]["serverRelativeURL"], "/openapi/v3/apis/apps/v1");
        let doc = openapi_group_version(&r, "apps", "v1").unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(op["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
    }

    #[test]
    fn a_crds_schema_is_published_under_its_kube_apiserver_name_with_its_gvk() {
        assert_eq!(schema_name("warren.dev", "v1alpha1", "Job"), "dev.warren.v1alpha1.Job");
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let published = published_schema(&schema, "warren.dev", "v1alpha1", "Job");
        assert_eq!(published["x-kubernetes-group-version-kind"], json!([{"group": "warren.dev", "version": "v1alpha1", "kind": "Job"}]));
        let fields: Vec<&String> = published["properties"].as_object().unwrap().keys().collect();
        assert_eq!(fields, ["apiVersion", "kind", "metadata", "spec"]);
        assert_eq!(published["properties"]["metadata"]["allOf"][0]["$ref"], format!("#/components/schemas/{OBJECT_META}"));
    }

    #[test]
    fn group_list_excludes_core() {
        let r = Registry::default();
        let names: Vec<String> =
            group_list(&r)["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap().to_string()).collect();
        assert!(names.contains(&"apps".to_string()) && !names.contains(&"".to_string()));
        assert!(group(&r, "").is_none());
        assert_eq!(group(&r, "apps").unwrap()["preferredVersion"]["groupVersion"], "apps/v1");
    }
}

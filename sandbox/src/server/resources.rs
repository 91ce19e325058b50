//! The registry of resource types the server serves: the built-in kinds and those added by
//! CustomResourceDefinitions. Pure data; the store owns the one live `Registry`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::{ApiError, Cause, Target};

/// A group and a plural resource name: the identity under which objects are stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        GroupResource { group: group.to_string(), resource: resource.to_string() }
    }
}

/// Where a scale subresource reads and writes replicas (JSONPaths like `.spec.replicas`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// The server-side table layout of a built-in kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BuiltinTable {
    NameAge,
    Deployment,
    Pod,
    Namespace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub name: String,
    pub schema: Option<Value>,
    pub columns: Vec<PrinterColumn>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub versions: Vec<VersionInfo>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub table: BuiltinTable,
    /// Set for resources defined by a CRD: the CRD's name.
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn gr(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn version(&self, v: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| x.name == v)
    }

    pub fn api_version(&self, v: &str) -> String {
        if self.group.is_empty() { v.to_string() } else { format!("{}/{}", self.group, v) }
    }

    /// `Job.warren.dev` or `Pod`, as used in `Invalid` messages.
    pub fn kind_group(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }

    pub fn target(&self, name: &str) -> Target {
        Target::new(&self.group, &self.plural, name)
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    categories: &[&str],
    status: bool,
    scale: bool,
    table: BuiltinTable,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![VersionInfo {
            name: version.into(),
            schema: None,
            columns: vec![],
            status,
            scale: scale.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: Some(".spec.selector".into()),
            }),
        }],
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        table,
        crd: None,
    }
}

pub const CRD_GROUP: &str = "apiextensions.k8s.io";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const ADMISSION_GROUP: &str = "admissionregistration.k8s.io";
pub const CRD_RESOURCE: &str = "customresourcedefinitions";

/// The kinds every server starts with.
pub fn builtins() -> Vec<ResourceType> {
    use BuiltinTable::*;
    vec![
        builtin("", "v1", "namespaces", "Namespace", false, &["ns"], &[], true, false, Namespace),
        builtin("", "v1", "pods", "Pod", true, &["po"], &["all"], true, false, Pod),
        builtin("", "v1", "secrets", "Secret", true, &[], &[], false, false, NameAge),
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], &[], false, false, NameAge),
        builtin("", "v1", "services", "Service", true, &["svc"], &["all"], true, false, NameAge),
        builtin("", "v1", "events", "Event", true, &["ev"], &[], false, false, NameAge),
        builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"], &["all"], true, true, Deployment),
        builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], &[], false, false, NameAge),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[], &[], false, false, NameAge),
        // Stored and served so that the chart applies as it does to a real cluster; nothing here
        // enforces RBAC or admission policies (docs/local-control-plane.md).
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], &[], false, false, NameAge),
        builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], &[], true, false, NameAge),
        builtin(RBAC_GROUP, "v1", "roles", "Role", true, &[], &[], false, false, NameAge),
        builtin(RBAC_GROUP, "v1", "rolebindings", "RoleBinding", true, &[], &[], false, false, NameAge),
        builtin(RBAC_GROUP, "v1", "clusterroles", "ClusterRole", false, &[], &[], false, false, NameAge),
        builtin(RBAC_GROUP, "v1", "clusterrolebindings", "ClusterRoleBinding", false, &[], &[], false, false, NameAge),
        builtin(ADMISSION_GROUP, "v1", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", false, &[], &[], true, false, NameAge),
        builtin(
            ADMISSION_GROUP,
            "v1",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
            &[],
            &[],
            false,
            false,
            NameAge,
        ),
        builtin(
            CRD_GROUP,
            "v1",
            CRD_RESOURCE,
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            &["api-extensions"],
            true,
            false,
            NameAge,
        ),
    ]
}

/// All served resource types, by group and plural.
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<GroupResource, ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { types: builtins().into_iter().map(|t| (t.gr(), t)).collect() }
    }
}

impl Registry {
    pub fn get(&self, gr: &GroupResource) -> Option<&ResourceType> {
        self.types.get(gr)
    }

    /// The type serving `group/version` `resource`, if that version is served.
    pub fn resolve(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceType> {
        self.types.get(&GroupResource::new(group, resource)).filter(|t| t.version(version).is_some())
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert(t.gr(), t);
    }

    pub fn remove(&mut self, gr: &GroupResource) -> Option<ResourceType> {
        self.types.remove(gr)
    }

    /// Groups in discovery order (core first, then by name) with their versions.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values() {
            let vs = out.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !vs.contains(&v.name) {
                    vs.push(v.name.clone());
                }
            }
        }
        out
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Fills the defaults the real server gives a CRD (`singular`, `listKind`).
pub fn default_crd(crd: &mut Value) {
    let Some(names) = crd.pointer_mut("/spec/names").and_then(Value::as_object_mut) else {
        return;
    };
    let kind = names.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if !names.contains_key("singular") {
        names.insert("singular".into(), Value::String(kind.to_lowercase()));
    }
    if !names.contains_key("listKind") {
        names.insert("listKind".into(), Value::String(format!("{kind}List")));
    }
}

/// Reads a CustomResourceDefinition (apiextensions.k8s.io/v1) into the type it defines.
pub fn from_crd(crd: &Value) -> Result<ResourceType, ApiError> {
    let name = str_at(crd, &["metadata", "name"]).unwrap_or_default().to_string();
    let invalid = |field: &str, reason: &str, message: String| {
        ApiError::invalid(
            "CustomResourceDefinition.apiextensions.k8s.io",
            Target::new(CRD_GROUP, CRD_RESOURCE, &name),
            vec![Cause { reason: reason.into(), message, field: field.into() }],
        )
    };
    let group = str_at(crd, &["spec", "group"]).unwrap_or_default().to_string();
    let plural = str_at(crd, &["spec", "names", "plural"]).unwrap_or_default().to_string();
    let kind = str_at(crd, &["spec", "names", "kind"]).unwrap_or_default().to_string();
    if group.is_empty() {
        return Err(invalid("spec.group", "FieldValueRequired", "Required value".into()));
    }
    if plural.is_empty() {
        return Err(invalid("spec.names.plural", "FieldValueRequired", "Required value".into()));
    }
    if kind.is_empty() {
        return Err(invalid("spec.names.kind", "FieldValueRequired", "Required value".into()));
    }
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match str_at(crd, &["spec", "scope"]) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(invalid(
                "spec.scope",
                "FieldValueNotSupported",
                format!("Unsupported value: \"{}\": supported values: \"Cluster\", \"Namespaced\"", other.unwrap_or_default()),
            ));
        }
    };
    let mut versions = Vec::new();
    for v in crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten() {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                type_: c.get("type").and_then(Value::as_str).unwrap_or("string").into(),
                format: c.get("format").and_then(Value::as_str).unwrap_or_default().into(),
                description: c.get("description").and_then(Value::as_str).unwrap_or_default().into(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                json_path: c.get("jsonPath").and_then(Value::as_str).unwrap_or_default().into(),
            })
            .collect();
        let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
            spec_replicas: s.get("specReplicasPath").and_then(Value::as_str).unwrap_or(".spec.replicas").into(),
            status_replicas: s.get("statusReplicasPath").and_then(Value::as_str).unwrap_or(".status.replicas").into(),
            label_selector: s.get("labelSelectorPath").and_then(Value::as_str).map(String::from),
        });
        versions.push(VersionInfo {
            name: v.get("name").and_then(Value::as_str).unwrap_or_default().into(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            columns,
            status: v.pointer("/subresources/status").is_some(),
            scale,
        });
    }
    if versions.is_empty() {
        return Err(invalid("spec.versions", "FieldValueRequired", "Required value: must have at least one served version".into()));
    }
    let names = crd.pointer("/spec/names");
    Ok(ResourceType {
        group,
        versions,
        singular: str_at(crd, &["spec", "names", "singular"]).map(String::from).unwrap_or_else(|| kind.to_lowercase()),
        list_kind: str_at(crd, &["spec", "names", "listKind"]).map(String::from).unwrap_or_else(|| format!("{kind}List")),
        plural,
        kind,
        namespaced,
        short_names: strings(names.and_then(|n| n.get("shortNames"))),
        categories: strings(names.and_then(|n| n.get("categories"))),
        table: BuiltinTable::NameAge,
        crd: Some(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "jobs.warren.dev"},
            "spec": {
                "group": "warren.dev", "scope": "Namespaced",
                "names": {"plural": "jobs", "kind": "Job", "shortNames": ["wj"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}],
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn crd_defines_a_namespaced_type_with_served_versions_only() {
        let t = from_crd(&crd()).unwrap();
        assert_eq!(t.kind_group(), "Job.warren.dev");
        assert!(t.namespaced);
        assert_eq!(t.singular, "job");
        assert_eq!(t.short_names, vec!["wj"]);
        assert_eq!(t.versions.len(), 1);
        assert!(t.versions[0].status);
        assert_eq!(t.versions[0].columns[0].json_path, ".status.phase");
    }

    #[test]
    fn crd_name_must_be_plural_dot_group() {
        let mut c = crd();
        c["metadata"]["name"] = json!("wrong.warren.dev");
        let e = from_crd(&c).unwrap_err();
        assert_eq!(e.code(), 422);
    }

    #[test]
    fn registry_resolves_only_served_versions() {
        let r = Registry::default();
        assert!(r.resolve("apps", "v1", "deployments").is_some());
        assert!(r.resolve("apps", "v2", "deployments").is_none());
        assert!(r.resolve("", "v1", "namespaces").is_some());
    }
}

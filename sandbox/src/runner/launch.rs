//! Pure translation of a Pod's first container into a local process launch: which executable
//! (image mapping or PATH), which arguments, which environment (literal values, `fieldRef`,
//! `secretKeyRef`, `configMapKeyRef`, `envFrom`, `$(VAR)` expansion).
//!
//! The Secrets and ConfigMaps the environment refers to are fetched by the caller
//! ([`referenced_sources`] says which) and passed in as [`EnvSources`]; this module never
//! talks to the API server nor reads the host environment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

/// The address every local pod "has": processes all share the host's loopback.
pub const LOCAL_IP: &str = "127.0.0.1";

/// Why a container cannot be started; `reason()` is the kubelet waiting reason shown in
/// `containerStatuses[].state.waiting.reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("pod has no containers")]
    NoContainer,
    #[error("image {image:?} has no local executable (known images: {known})")]
    ImageNotMapped { image: String, known: String },
    #[error("executable {0:?} not found in PATH")]
    ExecutableNotFound(String),
    #[error("secret {name:?} not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in Secret {name}")]
    SecretKeyNotFound { name: String, key: String },
    #[error("configmap {name:?} not found")]
    ConfigMapNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {name}")]
    ConfigMapKeyNotFound { name: String, key: String },
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedFieldPath(String),
    #[error("env var {0:?}: only value, fieldRef, secretKeyRef and configMapKeyRef are supported")]
    UnsupportedEnvSource(String),
}

impl LaunchError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoContainer => "CreateContainerError",
            Self::ImageNotMapped { .. } => "ErrImageNeverPull",
            Self::ExecutableNotFound(_) => "RunContainerError",
            Self::SecretNotFound { .. }
            | Self::SecretKeyNotFound { .. }
            | Self::ConfigMapNotFound { .. }
            | Self::ConfigMapKeyNotFound { .. }
            | Self::UnsupportedFieldPath(_)
            | Self::UnsupportedEnvSource(_) => "CreateContainerConfigError",
        }
    }
}

/// A Secret or ConfigMap an environment refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceRef {
    Secret(String),
    ConfigMap(String),
}

/// Fetched Secrets and ConfigMaps (string values; Secret data already decoded). A name that is
/// absent from the map was not found.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    pub found: HashMap<SourceRef, BTreeMap<String, String>>,
}

/// Every Secret and ConfigMap the container's `env` and `envFrom` refer to.
pub fn referenced_sources(container: &Container) -> BTreeSet<SourceRef> {
    let mut refs = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            refs.insert(SourceRef::Secret(s.name.clone()));
        }
        if let Some(c) = &from.config_map_ref {
            refs.insert(SourceRef::ConfigMap(c.name.clone()));
        }
    }
    for var in container.env.iter().flatten() {
        let Some(source) = &var.value_from else {
            continue;
        };
        if let Some(s) = &source.secret_key_ref {
            refs.insert(SourceRef::Secret(s.name.clone()));
        }
        if let Some(c) = &source.config_map_key_ref {
            refs.insert(SourceRef::ConfigMap(c.name.clone()));
        }
    }
    refs
}

/// Everything needed to spawn the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Complete environment, in definition order, names unique.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

/// Inputs that come from the runner rather than from the Pod.
pub struct LaunchContext<'a> {
    /// Image name (last path segment, no tag) → executable.
    pub images: &'a HashMap<String, PathBuf>,
    /// Environment every process starts from (inherited allowlist, then the runner's extra env);
    /// the container's own variables override it.
    pub base_env: &'a [(String, String)],
    /// Tells whether a path is an executable file (PATH lookup).
    pub is_executable: &'a dyn Fn(&Path) -> bool,
}

/// Builds the launch for the pod's first container.
pub fn plan_launch(pod: &Pod, sources: &EnvSources, ctx: &LaunchContext<'_>) -> Result<Launch, LaunchError> {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first()).ok_or(LaunchError::NoContainer)?;
    let env = container_env(pod, container, sources, ctx.base_env)?;
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let path_var = lookup("PATH");

    let command = container.command.as_deref().unwrap_or_default();
    let (program, mut args) = match command.split_first() {
        Some((first, rest)) => {
            let first = expand(first, lookup);
            (resolve_command(&first, ctx.images, path_var, ctx.is_executable)?, rest.to_vec())
        }
        None => {
            let image = container.image.as_deref().unwrap_or_default();
            let program = ctx.images.get(image_key(image)).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = ctx.images.keys().map(String::as_str).collect();
                known.sort_unstable();
                LaunchError::ImageNotMapped { image: image.to_string(), known: known.join(", ") }
            })?;
            (program, vec![])
        }
    };
    args.extend(container.args.iter().flatten().cloned());
    let args = args.iter().map(|a| expand(a, lookup)).collect();
    Ok(Launch { program, args, working_dir: container.working_dir.as_ref().map(PathBuf::from), env })
}

/// The image name a mapping key is matched against: last path segment without tag or digest
/// (`ghcr.io/warren/warren-worker:0.1@sha256:..` → `warren-worker`).
pub fn image_key(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn resolve_command(
    first: &str,
    images: &HashMap<String, PathBuf>,
    path_var: Option<&str>,
    is_executable: &dyn Fn(&Path) -> bool,
) -> Result<PathBuf, LaunchError> {
    let file_name = Path::new(first).file_name().and_then(|f| f.to_str()).unwrap_or(first);
    if let Some(mapped) = images.get(file_name) {
        return Ok(mapped.clone());
    }
    if first.contains('/') {
        return Ok(PathBuf::from(first));
    }
    path_var
        .unwrap_or_default()
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(first))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LaunchError::ExecutableNotFound(first.to_string()))
}

/// The container's environment on top of `base`: `envFrom` sources first, then `env` entries
/// (later definitions win, as in kubelet), with `$(VAR)` references expanded against what
/// was defined before.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    sources: &EnvSources,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, LaunchError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in base {
        set(&mut env, k, v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (source, optional) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => (SourceRef::Secret(s.name.clone()), s.optional.unwrap_or(false)),
            (None, Some(c)) => (SourceRef::ConfigMap(c.name.clone()), c.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        match sources.found.get(&source) {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, &format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional => {}
            None => return Err(not_found(&source)),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path)?)
                } else if let Some(sel) = &from.secret_key_ref {
                    key_value(sources, SourceRef::Secret(sel.name.clone()), &sel.key, sel.optional.unwrap_or(false))?
                } else if let Some(sel) = &from.config_map_key_ref {
                    key_value(sources, SourceRef::ConfigMap(sel.name.clone()), &sel.key, sel.optional.unwrap_or(false))?
                } else {
                    return Err(LaunchError::UnsupportedEnvSource(var.name.clone()));
                }
            }
            (Some(value), None) => {
                let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
                Some(expand(value, lookup))
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            set(&mut env, &var.name, value);
        }
    }
    Ok(env)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_string(), value)),
    }
}

fn not_found(source: &SourceRef) -> LaunchError {
    match source {
        SourceRef::Secret(name) => LaunchError::SecretNotFound { name: name.clone() },
        SourceRef::ConfigMap(name) => LaunchError::ConfigMapNotFound { name: name.clone() },
    }
}

/// A single key of a Secret/ConfigMap; `Ok(None)` when optional and missing (the variable is
/// then not set at all, as in kubelet).
fn key_value(sources: &EnvSources, source: SourceRef, key: &str, optional: bool) -> Result<Option<String>, LaunchError> {
    let Some(data) = sources.found.get(&source) else {
        return if optional { Ok(None) } else { Err(not_found(&source)) };
    };
    match data.get(key) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(match source {
            SourceRef::Secret(name) => LaunchError::SecretKeyNotFound { name, key: key.into() },
            SourceRef::ConfigMap(name) => LaunchError::ConfigMapKeyNotFound { name, key: key.into() },
        }),
    }
}

/// The downward-API fields kubelet supports for environment variables.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, LaunchError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_entry = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => LOCAL_IP.to_string(),
        _ => map_entry(meta.labels.as_ref(), "metadata.labels['")
            .or_else(|| map_entry(meta.annotations.as_ref(), "metadata.annotations['"))
            .ok_or_else(|| LaunchError::UnsupportedFieldPath(path.to_string()))?,
    };
    Ok(value)
}

/// Kubernetes' `$(VAR)` expansion: defined references are replaced, undefined ones are kept
/// verbatim, `$$` escapes a dollar.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[pos..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, SecretEnvSource,
        SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod_with(container: Container) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-abcde".into()),
                namespace: Some("prod".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec { containers: vec![container], ..Default::default() }),
            status: None,
        }
    }

    fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
                ..Default::default()
            }),
        }
    }

    fn secret_key(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(optional) }),
                ..Default::default()
            }),
        }
    }

    fn sources() -> EnvSources {
        let mut found = HashMap::new();
        found.insert(SourceRef::Secret("creds".into()), [("password".to_string(), "hunter2".to_string())].into());
        found.insert(
            SourceRef::ConfigMap("settings".into()),
            [("LEVEL".to_string(), "debug".to_string()), ("MODE".to_string(), "fast".to_string())].into(),
        );
        EnvSources { found }
    }

    fn images() -> HashMap<String, PathBuf> {
        [("warren-worker".to_string(), PathBuf::from("/opt/bin/warren-worker")), ("shell".to_string(), PathBuf::from("/bin/sh"))].into()
    }

    fn launch(container: Container, base: &[(String, String)]) -> Result<Launch, LaunchError> {
        let images = images();
        let is_exec = |p: &Path| p == Path::new("/usr/bin/sleep");
        plan_launch(&pod_with(container), &sources(), &LaunchContext { images: &images, base_env: base, is_executable: &is_exec })
    }

    #[test]
    fn image_keys() {
        for (image, key) in [
            ("ghcr.io/warren/warren-worker:0.1", "warren-worker"),
            ("warren-worker", "warren-worker"),
            ("localhost:5000/team/app@sha256:abc", "app"),
            ("registry:5000/app:v2@sha256:abc", "app"),
            ("busybox:1.36", "busybox"),
        ] {
            assert_eq!(image_key(image), key, "{image}");
        }
    }

    #[test]
    fn program_resolution() {
        struct Case {
            name: &'static str,
            image: &'static str,
            command: Option<Vec<&'static str>>,
            args: Option<Vec<&'static str>>,
            expected: Result<(&'static str, Vec<&'static str>), &'static str>,
        }
        let cases = vec![
            Case {
                name: "image mapping with tag and registry",
                image: "ghcr.io/warren/warren-worker:0.1",
                command: None,
                args: Some(vec!["--queue", "q"]),
                expected: Ok(("/opt/bin/warren-worker", vec!["--queue", "q"])),
            },
            Case {
                name: "command through the image map by file name",
                image: "anything",
                command: Some(vec!["/usr/local/bin/warren-worker", "run"]),
                args: Some(vec!["-v"]),
                expected: Ok(("/opt/bin/warren-worker", vec!["run", "-v"])),
            },
            Case {
                name: "absolute command used as is",
                image: "shell",
                command: Some(vec!["/bin/echo", "hi"]),
                args: None,
                expected: Ok(("/bin/echo", vec!["hi"])),
            },
            Case {
                name: "bare command through PATH",
                image: "shell",
                command: Some(vec!["sleep", "30"]),
                args: None,
                expected: Ok(("/usr/bin/sleep", vec!["30"])),
            },
            Case {
                name: "bare command missing from PATH",
                image: "shell",
                command: Some(vec!["nope"]),
                args: None,
                expected: Err("RunContainerError"),
            },
            Case {
                name: "unmapped image",
                image: "docker.io/library/nginx:1",
                command: None,
                args: None,
                expected: Err("ErrImageNeverPull"),
            },
            Case {
                name: "args expand env",
                image: "shell",
                command: None,
                args: Some(vec!["-c", "echo $(GREETING) $(UNDEFINED) $$(GREETING)"]),
                expected: Ok(("/bin/sh", vec!["-c", "echo hello $(UNDEFINED) $(GREETING)"])),
            },
        ];
        let base = vec![("PATH".to_string(), "/usr/local/bin:/usr/bin".to_string())];
        for case in cases {
            let container = Container {
                name: "main".into(),
                image: Some(case.image.into()),
                command: case.command.map(|c| c.into_iter().map(String::from).collect()),
                args: case.args.map(|c| c.into_iter().map(String::from).collect()),
                env: Some(vec![literal("GREETING", "hello")]),
                ..Default::default()
            };
            let got = launch(container, &base);
            match (got, case.expected) {
                (Ok(l), Ok((program, args))) => {
                    assert_eq!(l.program, PathBuf::from(program), "case: {}", case.name);
                    assert_eq!(l.args, args, "case: {}", case.name);
                }
                (Err(e), Err(reason)) => assert_eq!(e.reason(), reason, "case: {}", case.name),
                (got, expected) => panic!("case {}: got {got:?}, expected {expected:?}", case.name),
            }
        }
    }

    #[test]
    fn environment_sources_and_precedence() {
        let container = Container {
            name: "main".into(),
            image: Some("shell".into()),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource { name: "settings".into(), optional: None }),
                    prefix: Some("APP_".into()),
                    secret_ref: None,
                },
                EnvFromSource {
                    config_map_ref: None,
                    prefix: None,
                    secret_ref: Some(SecretEnvSource { name: "absent".into(), optional: Some(true) }),
                },
            ]),
            env: Some(vec![
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("POD_UID", "metadata.uid"),
                field("POD_IP", "status.podIP"),
                field("APP", "metadata.labels['app']"),
                secret_key("PASSWORD", "creds", "password", false),
                secret_key("MAYBE", "creds", "missing", true),
                EnvVar {
                    name: "LEVEL".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector { name: "settings".into(), key: "LEVEL".into(), optional: None }),
                        ..Default::default()
                    }),
                },
                literal("APP_MODE", "slow"),
                literal("URL", "http://$(POD_IP):8080/$(POD_NAME)"),
                literal("RUST_LOG", "debug"),
            ]),
            ..Default::default()
        };
        let base = vec![("PATH".to_string(), "/bin".to_string()), ("RUST_LOG".to_string(), "info".to_string())];
        let env = launch(container, &base).unwrap().env;
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_NAME"), Some("web-abcde"));
        assert_eq!(get("POD_NAMESPACE"), Some("prod"));
        assert_eq!(get("POD_UID"), Some("u-1"));
        assert_eq!(get("POD_IP"), Some(LOCAL_IP));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("PASSWORD"), Some("hunter2"));
        assert_eq!(get("MAYBE"), None, "optional missing key leaves the variable unset");
        assert_eq!(get("LEVEL"), Some("debug"));
        assert_eq!(get("APP_LEVEL"), Some("debug"));
        assert_eq!(get("APP_MODE"), Some("slow"), "env overrides envFrom");
        assert_eq!(get("URL"), Some("http://127.0.0.1:8080/web-abcde"));
        assert_eq!(get("RUST_LOG"), Some("debug"), "container env overrides the runner's");
        assert_eq!(get("PATH"), Some("/bin"));
        let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names.len(), env.len(), "names are unique");
    }

    #[test]
    fn missing_sources_are_config_errors() {
        for (var, expected) in [
            (secret_key("X", "nope", "k", false), LaunchError::SecretNotFound { name: "nope".into() }),
            (secret_key("X", "creds", "k", false), LaunchError::SecretKeyNotFound { name: "creds".into(), key: "k".into() }),
            (field("X", "spec.bogus"), LaunchError::UnsupportedFieldPath("spec.bogus".into())),
        ] {
            let container = Container { name: "main".into(), image: Some("shell".into()), env: Some(vec![var]), ..Default::default() };
            let err = launch(container, &[]).unwrap_err();
            assert_eq!(err, expected);
            assert_eq!(err.reason(), "CreateContainerConfigError");
        }
    }

    #[test]
    fn sources_referenced() {
        let container = Container {
            name: "main".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource { name: "a".into(), optional: None }),
                ..Default::default()
            }]),
            env: Some(vec![secret_key("X", "s", "k", false), field("Y", "metadata.name")]),
            ..Default::default()
        };
        let refs: Vec<SourceRef> = referenced_sources(&container).into_iter().collect();
        assert_eq!(refs, vec![SourceRef::Secret("s".into()), SourceRef::ConfigMap("a".into())]);
    }

    #[test]
    fn expansion_rules() {
        let lookup = |n: &str| match n {
            "A" => Some("1"),
            "EMPTY" => Some(""),
            _ => None,
        };
        for (input, expected) in [
            ("$(A)", "1"),
            ("x$(A)y$(A)", "x1y1"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("$(EMPTY)z", "z"),
            ("no refs", "no refs"),
            ("trailing $", "trailing $"),
        ] {
            assert_eq!(expand(input, lookup), expected, "{input}");
        }
    }
}

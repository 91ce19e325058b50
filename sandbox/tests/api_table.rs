//! `Table` responses for `kubectl get`.
#[path = "api_support.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

async fn get_table(s: &warren_sandbox::ApiServer, path: &str) -> Value {
    let (code, body) = raw_text(s, "GET", path, &[("Accept", TABLE)], "").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn column_names(t: &Value) -> Vec<String> {
    t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn custom_resources_table_has_printer_columns() {
    let s = server().await;
    create_widget_crd(&s).await;
    let w = json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3, "items": [{"name": "first"}]}});
    raw(&s, "POST", "/apis/example.dev/v1/namespaces/default/widgets", "application/json", &w.to_string()).await;
    let t = get_table(&s, "/apis/example.dev/v1/namespaces/default/widgets").await;
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(column_names(&t), vec!["Name", "Size", "First", "Age"]);
    let row = &t["rows"][0];
    assert_eq!(row["cells"][0], "w");
    assert_eq!(row["cells"][1], 3);
    assert_eq!(row["cells"][2], "first");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["name"], "w");
    let one = get_table(&s, "/apis/example.dev/v1/namespaces/default/widgets/w?includeObject=Object").await;
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    assert_eq!(one["rows"][0]["object"]["spec"]["size"], 3);
    s.shutdown().await;
}

#[tokio::test]
async fn builtin_tables_have_kubectl_like_columns() {
    let s = server().await;
    let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    raw(&s, "POST", "/apis/apps/v1/namespaces/default/deployments", "application/json", &d.to_string()).await;
    let t = get_table(&s, "/apis/apps/v1/namespaces/default/deployments").await;
    assert_eq!(column_names(&t), vec!["Name", "Ready", "Up-to-date", "Available", "Age"]);
    assert_eq!(t["rows"][0]["cells"][1], "0/2");
    let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    raw(&s, "POST", "/api/v1/namespaces/default/pods", "application/json", &p.to_string()).await;
    let t = get_table(&s, "/api/v1/namespaces/default/pods").await;
    assert_eq!(column_names(&t), vec!["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    assert_eq!(t["rows"][0]["cells"][2], "Pending");
    let t = get_table(&s, "/api/v1/configmaps").await;
    assert_eq!(column_names(&t), vec!["Name", "Age"]);
    s.shutdown().await;
}

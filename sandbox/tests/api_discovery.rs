//! Discovery documents, including resources added and removed with CRDs.
#[path = "api_support.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

fn names(list: &Value) -> Vec<String> {
    list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn core_discovery_documents() {
    let s = server().await;
    let (code, v) = raw(&s, "GET", "/version", "", "").await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
    let (_, api) = raw(&s, "GET", "/api", "", "").await;
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));
    let (_, v1) = raw(&s, "GET", "/api/v1", "", "").await;
    assert_eq!(v1["kind"], "APIResourceList");
    assert_eq!(v1["groupVersion"], "v1");
    for r in ["namespaces", "pods", "pods/status", "secrets", "configmaps", "services", "events"] {
        assert!(names(&v1).contains(&r.to_string()), "missing {r}");
    }
    let ns = v1["resources"].as_array().unwrap().iter().find(|r| r["name"] == "namespaces").unwrap();
    assert_eq!(ns["namespaced"], false);
    assert_eq!(ns["shortNames"], json!(["ns"]));
    let pods = v1["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods").unwrap();
    assert_eq!(pods["categories"], json!(["all"]));
    assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
    s.shutdown().await;
}

#[tokio::test]
async fn group_discovery_lists_builtin_groups_and_subresources() {
    let s = server().await;
    let (_, apis) = raw(&s, "GET", "/apis", "", "").await;
    assert_eq!(apis["kind"], "APIGroupList");
    let groups: Vec<&str> = apis["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    for g in ["apps", "events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io"] {
        assert!(groups.contains(&g), "missing group {g}");
    }
    let (_, apps) = raw(&s, "GET", "/apis/apps", "", "").await;
    assert_eq!(apps["kind"], "APIGroup");
    assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
    let (_, list) = raw(&s, "GET", "/apis/apps/v1", "", "").await;
    assert_eq!(names(&list), vec!["deployments", "deployments/status", "deployments/scale"]);
    let scale = &list["resources"][2];
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["group"], "autoscaling");
    let (code, body) = raw(&s, "GET", "/apis/nope.dev/v1", "", "").await;
    assert_status(code, &body, 404, "NotFound");
    s.shutdown().await;
}

#[tokio::test]
async fn crds_add_and_remove_discovery_entries_and_are_established() {
    let s = server().await;
    create_widget_crd(&s).await;
    let mut cluster = widget_crd();
    cluster["metadata"]["name"] = json!("gadgets.example.dev");
    cluster["spec"]["scope"] = json!("Cluster");
    cluster["spec"]["names"] = json!({"plural": "gadgets", "kind": "Gadget"});
    let (code, created) =
        raw(&s, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "application/json", &cluster.to_string()).await;
    assert_eq!(code, 201, "{created}");
    let conditions = created["status"]["conditions"].as_array().unwrap();
    for ty in ["Established", "NamesAccepted"] {
        assert!(conditions.iter().any(|c| c["type"] == ty && c["status"] == "True"), "{ty} not True");
    }
    let (_, apis) = raw(&s, "GET", "/apis", "", "").await;
    assert!(apis["groups"].as_array().unwrap().iter().any(|g| g["name"] == "example.dev"));
    let (_, list) = raw(&s, "GET", "/apis/example.dev/v1", "", "").await;
    assert_eq!(names(&list), vec!["gadgets", "gadgets/status", "gadgets/scale", "widgets", "widgets/status", "widgets/scale"]);
    let widgets = &list["resources"][3];
    assert_eq!(widgets["namespaced"], true);
    assert_eq!(widgets["kind"], "Widget");
    assert_eq!(widgets["shortNames"], json!(["wdg"]));
    assert_eq!(widgets["categories"], json!(["all"]));
    assert_eq!(list["resources"][0]["namespaced"], false);
    assert_eq!(list["resources"][0]["singularName"], "gadget");

    let (code, _) = raw(&s, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev", "", "").await;
    assert_eq!(code, 200);
    let (_, list) = raw(&s, "GET", "/apis/example.dev/v1", "", "").await;
    assert_eq!(names(&list), vec!["gadgets", "gadgets/status", "gadgets/scale"]);
    let (code, body) = raw(&s, "GET", "/apis/example.dev/v1/namespaces/default/widgets", "", "").await;
    assert_status(code, &body, 404, "NotFound");
    raw(&s, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.dev", "", "").await;
    let (code, _) = raw(&s, "GET", "/apis/example.dev", "", "").await;
    assert_eq!(code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn openapi_v3_is_served_for_kubectl_and_v2_is_not() {
    let s = server().await;
    let (code, root) = raw(&s, "GET", "/openapi/v3", "", "").await;
    assert_eq!(code, 200);
    assert!(root["paths"]["api/v1"]["serverRelativeURL"].is_string());
    let (code, doc) = raw(&s, "GET", "/openapi/v3/api/v1", "", "").await;
    assert_eq!(code, 200);
    assert_eq!(doc["paths"]["/api/v1/namespaces/{name}"]["patch"]["x-kubernetes-group-version-kind"]["kind"], "Namespace");
    let (code, _) = raw(&s, "GET", "/openapi/v2", "", "").await;
    assert_eq!(code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn health_endpoints_answer_ok() {
    let s = server().await;
    for p in ["/healthz", "/readyz", "/livez"] {
        let (code, body) = raw_text(&s, "GET", p, &[], "").await;
        assert_eq!((code, body.as_str()), (200, "ok"), "{p}");
    }
    s.shutdown().await;
}

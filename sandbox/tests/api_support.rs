//! Shared helpers for the `api_*` integration tests (included with `#[path]`; has no tests).
#![allow(dead_code)]

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_sandbox::{ApiServer, ServerOptions};

pub async fn server() -> ApiServer {
    server_with(ServerOptions::default()).await
}

pub async fn server_with(opts: ServerOptions) -> ApiServer {
    ApiServer::start(opts).await.expect("API server starts on 127.0.0.1")
}

/// A raw HTTP/1.1 exchange, so tests see exactly the status code and body the server sends.
pub async fn raw(server: &ApiServer, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let (code, text) = raw_text(server, method, path, &[("Content-Type", content_type)], body).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, value)
}

pub async fn raw_text(server: &ApiServer, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect to the API server");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Asserts a `Status` failure body with the given code and reason.
pub fn assert_status(code: u16, body: &Value, want_code: u16, want_reason: &str) {
    assert_eq!(code, want_code, "body: {body}");
    assert_eq!(body["kind"], "Status", "body: {body}");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["code"], want_code);
    assert_eq!(body["reason"], want_reason, "body: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// A namespaced CRD `widgets.example.dev` (short name `wdg`) with status and scale subresources.
pub fn widget_crd() -> Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"], "categories": ["all"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "First", "type": "string", "jsonPath": ".spec.items[0].name"}
                ],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer"},
                        "priority": {"type": "string", "enum": ["high", "normal", "low"]},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
                    }},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}, "size": {"type": "integer"}}}
                }}}
            }]
        }
    })
}

pub async fn create_widget_crd(server: &ApiServer) {
    let (code, body) =
        raw(server, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "application/json", &widget_crd().to_string()).await;
    assert_eq!(code, 201, "{body}");
}

//! The HTTP layer: parses Kubernetes API paths, query parameters and bodies, calls the store,
//! and renders objects, lists, tables, watch streams and `Status` errors. No object semantics
//! live here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::discovery;
use super::error::ApiError;
use super::managed::{self, ApplyRequest};
use super::object::{Subresource, meta_str};
use super::patch::{self, PatchType};
use super::resources::{ResourceType, ScalePaths, VersionInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Change, DeleteOptions, Propagation, ResourceId, Store};
use super::table::{self, IncludeObject};
use super::watch::{self, Start, WatchRequest};

pub struct App {
    pub store: Arc<Store>,
    pub bookmark_interval: Duration,
    pub cancel: CancellationToken,
    pub address: String,
    /// Resource requests served, by Kubernetes verb (what `ApiServer::requests` reports).
    pub requests: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>,
}

/// The Kubernetes verb of a request on a resource path (as kube-apiserver's audit log names it).
pub fn verb(method: &Method, path: &ResourcePath, query: &HashMap<String, String>) -> &'static str {
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match *method {
        Method::GET if watching => "watch",
        Method::GET if path.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if path.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// A request path under `/api/v1` or `/apis/{group}/{version}` addressing resources.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource(ResourcePath),
    OpenApiRoot,
    OpenApiGroupVersion(String, String),
    Unknown,
}

/// Parses an API path. `namespaces/{ns}/status|finalize` in the core group addresses the
/// namespace itself; any other `namespaces/{ns}/{resource}` a namespaced resource.
pub fn parse_route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["healthz" | "readyz" | "livez", ..] => return Route::Health,
        ["api"] => return Route::Api,
        ["openapi", "v3"] => return Route::OpenApiRoot,
        ["openapi", "v3", "api", v] => return Route::OpenApiGroupVersion(String::new(), v.to_string()),
        ["openapi", "v3", "apis", g, v] => return Route::OpenApiGroupVersion(g.to_string(), v.to_string()),
        ["apis"] => return Route::Apis,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v] => return Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g, v] => return Route::GroupVersion(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    let mk = |resource: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            sub: sub.map(String::from),
        })
    };
    match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => mk("namespaces", None, Some(ns), Some(sub)),
        ["namespaces", ns, resource] => mk(resource, Some(ns), None, None),
        ["namespaces", ns, resource, name] => mk(resource, Some(ns), Some(name), None),
        ["namespaces", ns, resource, name, sub] => mk(resource, Some(ns), Some(name), Some(sub)),
        [resource] => mk(resource, None, None, None),
        [resource, name] => mk(resource, None, Some(name), None),
        [resource, name, sub] => mk(resource, None, Some(name), Some(sub)),
        _ => Route::Unknown,
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(v).unwrap_or_default()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code(), &e.to_status())
}

fn not_found_path() -> ApiError {
    ApiError::NotFoundMessage { message: "the server could not find the requested resource".into() }
}

struct Ctx {
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }

    fn table(&self) -> Option<IncludeObject> {
        let accept = self.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        accept.contains("as=Table").then(|| IncludeObject::parse(self.q("includeObject")))
    }

    /// `fieldManager`, else the User-Agent's program name, as the real server defaults it.
    fn manager(&self) -> String {
        if let Some(m) = self.q("fieldManager") {
            return m.to_string();
        }
        let ua = self.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json")
    }

    /// The body of a create or replace: JSON, YAML (its superset), or protobuf for the built-in
    /// kinds `protobuf` decodes (kubectl's `create secret|configmap|namespace` send protobuf and
    /// client-go does not retry those as JSON on a 415). Anything else is a 415.
    fn object_body(&self) -> Result<Value, ApiError> {
        let ct = self.content_type();
        let media = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match media.as_str() {
            "" | "application/json" | "*/*" => patch::parse_json(&self.body),
            "application/yaml" => patch::parse(PatchType::Apply, &self.body),
            "application/vnd.kubernetes.protobuf" => super::protobuf::decode(&self.body),
            _ => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"
            ))),
        }
    }
}

pub async fn handle(State(app): State<Arc<App>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let query = Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let ctx = Ctx { query, headers, body };
    let route = parse_route(uri.path());
    if let Route::Resource(path) = &route {
        *app.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(verb(&method, path, &ctx.query)).or_default() += 1;
    }
    let result = dispatch(&app, &method, route, &ctx);
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(method = %method, path = uri.path(), code = e.code(), reason = e.reason(), "request failed");
            error_response(&e)
        }
    }
}

fn dispatch(app: &Arc<App>, method: &Method, route: Route, ctx: &Ctx) -> Result<Response, ApiError> {
    let read_only = |v: Option<Value>| -> Result<Response, ApiError> {
        if method != Method::GET {
            return Err(ApiError::MethodNotAllowed);
        }
        v.map(|v| json_response(200, &v)).ok_or_else(not_found_path)
    };
    match route {
        Route::Version => read_only(Some(discovery::version())),
        Route::Health => Ok("ok".into_response()),
        Route::Api => read_only(Some(discovery::api_versions(&app.address))),
        Route::Apis => read_only(Some(discovery::group_list(&app.store.lock().registry))),
        Route::Group(g) => read_only(discovery::group(&app.store.lock().registry, &g)),
        Route::GroupVersion(g, v) => read_only(discovery::resource_list(&app.store.lock().registry, &g, &v)),
        Route::OpenApiRoot => read_only(Some(discovery::openapi_root(&app.store.lock().registry))),
        Route::OpenApiGroupVersion(g, v) => read_only(discovery::openapi_group_version(&app.store.lock().registry, &g, &v)),
        Route::Unknown => Err(not_found_path()),
        Route::Resource(p) => resource(app, method, p, ctx),
    }
}

fn delete_options(ctx: &Ctx) -> Result<DeleteOptions, ApiError> {
    let opts = if ctx.body.is_empty() { json!({}) } else { patch::parse_json(&ctx.body)? };
    let policy =
        ctx.q("propagationPolicy").map(String::from).or_else(|| opts.get("propagationPolicy").and_then(Value::as_str).map(String::from));
    let orphan = opts.get("orphanDependents").and_then(Value::as_bool) == Some(true) || ctx.q("orphanDependents") == Some("true");
    let propagation = match policy.as_deref() {
        Some("Orphan") => Propagation::Orphan,
        None if orphan => Propagation::Orphan,
        None | Some("Background") | Some("Foreground") => Propagation::Background,
        Some(other) => return Err(ApiError::BadRequest(format!("unsupported propagationPolicy {other:?}"))),
    };
    let pre = |k: &str| opts.pointer(&format!("/preconditions/{k}")).and_then(Value::as_str).map(String::from);
    Ok(DeleteOptions { propagation, uid: pre("uid"), resource_version: pre("resourceVersion") })
}

fn resource(app: &Arc<App>, method: &Method, p: ResourcePath, ctx: &Ctx) -> Result<Response, ApiError> {
    let id = ResourceId::new(&p.group, &p.version, &p.resource);
    let (rt, vi) = app.store.resolve(&id)?;
    if p.namespace.is_some() && !rt.namespaced {
        return Err(not_found_path());
    }
    if rt.namespaced && p.name.is_some() && p.namespace.is_none() {
        return Err(not_found_path());
    }
    if ctx.q("dryRun").is_some() {
        return Err(ApiError::BadRequest("dryRun is not supported by the Warren local control plane".into()));
    }
    let ns = p.namespace.as_deref();
    let store = &app.store;
    let Some(name) = p.name.as_deref() else {
        return match *method {
            Method::GET if ctx.flag("watch") => watch(app, id, rt, vi, p.namespace.clone(), ctx),
            Method::GET => {
                let (labels, fields) = selectors(ctx)?;
                let (items, rv) = store.list(&id, ns, |o| labels.matches(o) && fields.matches(o))?;
                Ok(json_response(200, &render_list(&rt, &vi, items, rv, ctx)))
            }
            Method::POST if rt.namespaced && ns.is_none() => Err(ApiError::MethodNotAllowed),
            Method::POST => {
                let body = ctx.object_body()?;
                let created = store.create(&id, ns, body, &ctx.manager())?;
                Ok(json_response(201, &render_one(&rt, &vi, created, ctx)))
            }
            Method::DELETE => {
                let (labels, fields) = selectors(ctx)?;
                let opts = delete_options(ctx)?;
                let (items, _) = store.list(&id, ns, |o| labels.matches(o) && fields.matches(o))?;
                let mut deleted = Vec::new();
                for o in items {
                    let ons = o.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from);
                    if let Ok(d) = store.delete(&id, ons.as_deref(), meta_str(&o, "name"), &opts) {
                        deleted.push(d);
                    }
                }
                let rv = store.current_rv();
                Ok(json_response(200, &render_list(&rt, &vi, deleted, rv, ctx)))
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    };
    let sub = match p.sub.as_deref() {
        None => Subresource::Main,
        Some("status") if vi.status => Subresource::Status,
        Some("scale") => {
            let paths = vi.scale.clone().ok_or_else(not_found_path)?;
            return scale(app, method, &id, &rt, ns, name, &paths, ctx);
        }
        Some(_) => return Err(not_found_path()),
    };
    match *method {
        Method::GET => Ok(json_response(200, &render_one(&rt, &vi, store.get(&id, ns, name)?, ctx))),
        Method::PUT => {
            let body = ctx.object_body()?;
            let updated = store.update(&id, ns, name, sub, &ctx.manager(), |_| Ok(Change::Replace(body)))?;
            Ok(json_response(200, &render_one(&rt, &vi, updated, ctx)))
        }
        Method::PATCH => {
            let pt = PatchType::from_content_type(ctx.content_type())?;
            let body = patch::parse(pt, &ctx.body)?;
            let manager = ctx.manager();
            let now = super::object::now_rfc3339();
            let api_version = rt.api_version(&vi.name);
            let target = rt.target(name);
            let force = ctx.flag("force");
            let written = store.write(&id, ns, name, sub, &manager, |current| match pt {
                PatchType::Apply => {
                    if ctx.q("fieldManager").is_none() {
                        return Err(ApiError::BadRequest(
                            "PATCH, application/apply-patch+yaml requires the fieldManager query parameter".into(),
                        ));
                    }
                    let req = ApplyRequest { manager: &manager, force, sub, api_version: &api_version, now: &now, target };
                    managed::apply(current, &body, &req).map(Change::Applied)
                }
                _ => {
                    let current = current.ok_or_else(|| ApiError::NotFound(rt.target(name)))?;
                    patch::apply_patch(pt, current, &body).map(Change::Replace)
                }
            })?;
            let code = if written.created { 201 } else { 200 };
            Ok(json_response(code, &render_one(&rt, &vi, written.object, ctx)))
        }
        Method::DELETE if sub == Subresource::Main => {
            let deleted = store.delete(&id, ns, name, &delete_options(ctx)?)?;
            Ok(json_response(200, &deleted))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn selectors(ctx: &Ctx) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default())?,
    ))
}

fn render_one(rt: &ResourceType, vi: &VersionInfo, obj: Value, ctx: &Ctx) -> Value {
    match ctx.table() {
        Some(include) => {
            let rv = meta_str(&obj, "resourceVersion").parse().unwrap_or(0);
            table::table(rt, vi, &[obj], rv, include, jiff::Timestamp::now())
        }
        None => obj,
    }
}

fn render_list(rt: &ResourceType, vi: &VersionInfo, items: Vec<Value>, rv: u64, ctx: &Ctx) -> Value {
    match ctx.table() {
        Some(include) => table::table(rt, vi, &items, rv, include, jiff::Timestamp::now()),
        None => json!({
            "kind": rt.list_kind, "apiVersion": rt.api_version(&vi.name),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items,
        }),
    }
}

fn watch(
    app: &Arc<App>,
    id: ResourceId,
    rt: ResourceType,
    vi: VersionInfo,
    namespace: Option<String>,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(ctx)?;
    let initial_events = ctx.flag("sendInitialEvents");
    let start = match ctx.q("resourceVersion") {
        _ if initial_events => Start::Snapshot,
        None | Some("0") => Start::Snapshot,
        Some(v) => Start::After(v.parse().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {v}")))?),
    };
    let timeout = match ctx.q("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds: {t}")))?)),
        None => None,
    };
    let req = WatchRequest {
        id,
        rt,
        vi,
        namespace,
        labels,
        fields,
        start,
        initial_events_end: initial_events,
        bookmarks: ctx.flag("allowWatchBookmarks"),
        timeout,
        table: ctx.table(),
    };
    let stream = watch::start(app.store.clone(), req, app.bookmark_interval, app.cancel.clone());
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}

fn set_path(obj: &mut Value, path: &str, v: Value) {
    let segs: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    let mut cur = obj;
    for (i, s) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == segs.len() {
            cur[*s] = v;
            return;
        }
        cur = &mut cur[*s];
    }
}

fn selector_string(v: Option<&Value>) -> Value {
    match v {
        Some(Value::String(s)) => json!(s),
        Some(Value::Object(o)) => {
            let labels = o.get("matchLabels").and_then(Value::as_object);
            let parts: Vec<String> = labels.into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
            json!(parts.join(","))
        }
        _ => Value::Null,
    }
}

fn scale_of(obj: &Value, paths: &ScalePaths) -> Value {
    let mut s = json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta_str(obj, "name"), "namespace": meta_str(obj, "namespace"), "uid": meta_str(obj, "uid"),
            "resourceVersion": meta_str(obj, "resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
        },
        "spec": {"replicas": table::json_path(obj, &paths.spec_replicas).cloned().unwrap_or(json!(0))},
        "status": {"replicas": table::json_path(obj, &paths.status_replicas).cloned().unwrap_or(json!(0))},
    });
    if let Some(sel) = &paths.label_selector {
        let sel = selector_string(table::json_path(obj, sel));
        if !sel.is_null() {
            s["status"]["selector"] = sel;
        }
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn scale(
    app: &Arc<App>,
    method: &Method,
    id: &ResourceId,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    paths: &ScalePaths,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    let store = &app.store;
    let write = |change: &dyn Fn(&Value) -> Result<Value, ApiError>| -> Result<Response, ApiError> {
        let updated = store.update(id, ns, name, Subresource::Main, &ctx.manager(), |current| {
            let current = current.ok_or_else(|| ApiError::NotFound(rt.target(name)))?;
            let new_scale = change(&scale_of(current, paths))?;
            let replicas = new_scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            if !replicas.is_i64() || replicas.as_i64().is_some_and(|r| r < 0) {
                return Err(ApiError::invalid_field(
                    "Scale.autoscaling",
                    rt.target(name),
                    "spec.replicas",
                    "FieldValueInvalid",
                    "Invalid value: must be greater than or equal to 0",
                ));
            }
            let mut next = current.clone();
            set_path(&mut next, &paths.spec_replicas, replicas);
            if let Some(rv) = new_scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                next["metadata"]["resourceVersion"] = json!(rv);
            }
            Ok(Change::Replace(next))
        })?;
        Ok(json_response(200, &scale_of(&updated, paths)))
    };
    match *method {
        Method::GET => Ok(json_response(200, &scale_of(&store.get(id, ns, name)?, paths))),
        Method::PUT => {
            let body = ctx.object_body()?;
            write(&|_| Ok(body.clone()))
        }
        Method::PATCH => {
            let pt = PatchType::from_content_type(ctx.content_type())?;
            let body = patch::parse(pt, &ctx.body)?;
            write(&|s| match pt {
                PatchType::Apply => {
                    let mut s = s.clone();
                    json_patch::merge(&mut s, &body);
                    Ok(s)
                }
                _ => patch::apply_patch(pt, s, &body),
            })
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(group: &str, resource: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>) -> Route {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            namespace: ns.map(String::from),
            name: name.map(String::from),
            sub: sub.map(String::from),
        })
    }

    #[test]
    fn paths_route_like_kubernetes() {
        assert_eq!(parse_route("/api/v1/namespaces"), res("", "namespaces", None, None, None));
        assert_eq!(parse_route("/api/v1/namespaces/foo"), res("", "namespaces", None, Some("foo"), None));
        assert_eq!(parse_route("/api/v1/namespaces/foo/status"), res("", "namespaces", None, Some("foo"), Some("status")));
        assert_eq!(parse_route("/api/v1/namespaces/foo/pods"), res("", "pods", Some("foo"), None, None));
        assert_eq!(
            parse_route("/apis/apps/v1/namespaces/d/deployments/web/scale"),
            res("apps", "deployments", Some("d"), Some("web"), Some("scale"))
        );
        assert_eq!(parse_route("/apis/warren.dev/v1/things/x"), res("warren.dev", "things", None, Some("x"), None));
        assert_eq!(parse_route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(parse_route("/api/v1"), Route::GroupVersion("".into(), "v1".into()));
        assert_eq!(parse_route("/nope"), Route::Unknown);
    }
}

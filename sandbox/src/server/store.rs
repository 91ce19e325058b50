//! The in-memory object store: every object of every served type, one global resource-version
//! counter, a bounded history of watch events, and a broadcast of new events. All mutations
//! happen under one lock so events are totally ordered by resource version.
//!
//! The store knows Kubernetes object semantics (finalizers, garbage collection, CRDs changing
//! the registry, namespaces owning their objects) but nothing about HTTP.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::gc;
use super::managed;
use super::object::{self, Subresource, is_deleting, meta_mut, meta_str, now_rfc3339};
use super::resources::{self, CRD_GROUP, CRD_RESOURCE, GroupResource, Registry, ResourceType, VersionInfo};
use super::validation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: EventKind,
    pub gr: GroupResource,
    pub namespace: String,
    pub object: Value,
}

/// The live feed of all store events, in resource-version order.
pub type Events = broadcast::Receiver<Arc<WatchEvent>>;

/// A request's view of a type: group, version, plural.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceId {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl ResourceId {
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        ResourceId { group: group.into(), version: version.into(), resource: resource.into() }
    }
}

/// What a write closure hands back to the store.
pub enum Change {
    /// A plain write (PUT, merge/JSON/strategic patch): the writer takes ownership of changed fields.
    Replace(Value),
    /// A server-side apply result whose `managedFields` are already computed.
    Applied(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Orphan,
}

/// `DeleteOptions` the store honours.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Default for DeleteOptions {
    fn default() -> Self {
        DeleteOptions { propagation: Propagation::Background, uid: None, resource_version: None }
    }
}

/// The result of a write: the stored object, and whether the write created it.
pub struct Written {
    pub object: Value,
    pub created: bool,
}

type ObjKey = (String, String);

pub struct State {
    rv: u64,
    pub registry: Registry,
    objects: BTreeMap<GroupResource, BTreeMap<ObjKey, Value>>,
    history: VecDeque<Arc<WatchEvent>>,
    history_cap: usize,
    /// The newest resource version no longer covered by `history`.
    compacted: u64,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

pub struct Store {
    state: Mutex<State>,
}

fn key(ns: Option<&str>, name: &str) -> ObjKey {
    (ns.unwrap_or_default().to_string(), name.to_string())
}

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest object a default cluster stores.
/// Custom resources are stored as JSON, so their JSON size is what counts.
pub const MAX_STORED_OBJECT_BYTES: usize = 1_572_864;

fn check_stored_size(obj: &Value) -> Result<(), ApiError> {
    let size = serde_json::to_vec(obj).map_or(usize::MAX, |v| v.len());
    if size > MAX_STORED_OBJECT_BYTES { Err(ApiError::RequestEntityTooLarge) } else { Ok(()) }
}

fn unknown_resource() -> ApiError {
    ApiError::NotFoundMessage { message: "the server could not find the requested resource".into() }
}

/// Sets `apiVersion` to the version the client asked for (all served versions share storage).
pub fn present(mut obj: Value, rt: &ResourceType, version: &str) -> Value {
    obj["apiVersion"] = json!(rt.api_version(version));
    obj
}

impl Store {
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut state = State {
            rv: 0,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            tx,
        };
        for ns in ["default", "kube-system"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now_rfc3339()},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            state.insert(GroupResource::new("", "namespaces"), key(None, ns), obj, EventKind::Added);
        }
        Store { state: Mutex::new(state) }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn resolve(&self, id: &ResourceId) -> Result<(ResourceType, VersionInfo), ApiError> {
        self.lock().resolve(id)
    }

    pub fn get(&self, id: &ResourceId, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        let (rt, _) = st.resolve(id)?;
        st.objects
            .get(&rt.gr())
            .and_then(|m| m.get(&key(ns, name)))
            .cloned()
            .map(|o| present(o, &rt, &id.version))
            .ok_or_else(|| ApiError::NotFound(rt.target(name)))
    }

    /// Objects of a type (in one namespace, or all), with the list resource version.
    pub fn list(&self, id: &ResourceId, ns: Option<&str>, keep: impl Fn(&Value) -> bool) -> Result<(Vec<Value>, u64), ApiError> {
        let st = self.lock();
        let (rt, _) = st.resolve(id)?;
        let items = st
            .objects
            .get(&rt.gr())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .map(|(_, o)| o)
            .filter(|o| keep(o))
            .map(|o| present(o.clone(), &rt, &id.version))
            .collect();
        Ok((items, st.rv))
    }

    pub fn create(&self, id: &ResourceId, ns: Option<&str>, body: Value, manager: &str) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let (rt, vi) = st.resolve(id)?;
        let now = now_rfc3339();
        let mut obj = object::prepare_create(&rt, &vi, ns, body, &now)?;
        managed::record_update(None, &mut obj, manager, Subresource::Main, &rt.api_version(&vi.name), &now);
        st.create_locked(&rt, &vi, obj).map(|o| present(o, &rt, &id.version))
    }

    /// Read-modify-write of one object under the lock. `change` sees the current object (None
    /// when missing: only server-side apply creates then).
    pub fn update(
        &self,
        id: &ResourceId,
        ns: Option<&str>,
        name: &str,
        sub: Subresource,
        manager: &str,
        change: impl FnOnce(Option<&Value>) -> Result<Change, ApiError>,
    ) -> Result<Value, ApiError> {
        self.write(id, ns, name, sub, manager, change).map(|w| w.object)
    }

    /// Like `update`, also telling whether the object was created (server-side apply).
    pub fn write(
        &self,
        id: &ResourceId,
        ns: Option<&str>,
        name: &str,
        sub: Subresource,
        manager: &str,
        change: impl FnOnce(Option<&Value>) -> Result<Change, ApiError>,
    ) -> Result<Written, ApiError> {
        let mut st = self.lock();
        let (rt, vi) = st.resolve(id)?;
        if sub == Subresource::Status && !vi.status {
            return Err(unknown_resource());
        }
        let gr = rt.gr();
        let current = st.objects.get(&gr).and_then(|m| m.get(&key(ns, name))).cloned();
        let now = now_rfc3339();
        let api_version = rt.api_version(&vi.name);
        let Some(current) = current else {
            if sub != Subresource::Main {
                return Err(ApiError::NotFound(rt.target(name)));
            }
            let Change::Applied(mut obj) = change(None)? else {
                return Err(ApiError::NotFound(rt.target(name)));
            };
            let fields = obj.pointer("/metadata/managedFields").cloned();
            meta_mut(&mut obj).insert("name".into(), json!(name));
            let mut obj = object::prepare_create(&rt, &vi, ns, obj, &now)?;
            if let Some(f) = fields {
                meta_mut(&mut obj).insert("managedFields".into(), f);
            }
            let object = st.create_locked(&rt, &vi, obj).map(|o| present(o, &rt, &id.version))?;
            return Ok(Written { object, created: true });
        };
        let (proposed, applied_fields) = match change(Some(&current))? {
            Change::Replace(v) => (v, None),
            Change::Applied(v) => {
                let f = v.pointer("/metadata/managedFields").cloned();
                (v, f)
            }
        };
        let mut next = object::prepare_update(&rt, &vi, &current, proposed, sub)?;
        match applied_fields {
            Some(f) => {
                meta_mut(&mut next).insert("managedFields".into(), f);
            }
            None => managed::record_update(Some(&current), &mut next, manager, sub, &api_version, &now),
        }
        st.check_custom(&rt, &vi, &mut next, Some(&current))?;
        if gr == GroupResource::new(CRD_GROUP, CRD_RESOURCE) {
            let t = st.register_crd(&mut next)?;
            st.registry.insert(t);
        }
        if object::same_content(&current, &next) {
            return Ok(Written { object: present(current, &rt, &id.version), created: false });
        }
        let k = key(ns, name);
        if is_deleting(&next) && object::finalizers(&next).is_empty() {
            // The final state is what the DELETED event carries; no separate MODIFIED.
            st.objects.entry(gr.clone()).or_default().insert(k.clone(), next);
            let gone = st.remove(&gr, &k).unwrap_or_default();
            return Ok(Written { object: present(gone, &rt, &id.version), created: false });
        }
        check_stored_size(&next)?;
        let stored = st.insert(gr, k, next, EventKind::Modified);
        Ok(Written { object: present(stored, &rt, &id.version), created: false })
    }

    pub fn delete(&self, id: &ResourceId, ns: Option<&str>, name: &str, opts: &DeleteOptions) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let (rt, _) = st.resolve(id)?;
        let policy = opts.propagation;
        if let Some(current) = st.objects.get(&rt.gr()).and_then(|m| m.get(&key(ns, name))) {
            for (field, wanted) in [("uid", &opts.uid), ("resourceVersion", &opts.resource_version)] {
                if let Some(w) = wanted.as_deref().filter(|w| *w != meta_str(current, field)) {
                    return Err(ApiError::Conflict {
                        target: rt.target(name),
                        message: format!(
                            "Precondition failed: {field} in precondition: {w}, {field} in object meta: {}",
                            meta_str(current, field)
                        ),
                    });
                }
            }
        }
        st.delete_locked(&rt.gr(), &key(ns, name), policy)?
            .map(|o| present(o, &rt, &id.version))
            .ok_or_else(|| ApiError::NotFound(rt.target(name)))
    }

    /// Subscribes to events after `from` (history replay), or fails with `Expired`.
    pub fn watch_from(&self, from: u64) -> Result<(Vec<Arc<WatchEvent>>, Events), ApiError> {
        let st = self.lock();
        if from < st.compacted {
            return Err(ApiError::Expired { requested: from, oldest: st.compacted });
        }
        let replay = st.history.iter().filter(|e| e.rv > from).cloned().collect();
        Ok((replay, st.tx.subscribe()))
    }

    /// Subscribes and returns the current objects of a type (for initial events), atomically.
    pub fn watch_snapshot(&self, id: &ResourceId, ns: Option<&str>) -> Result<(Vec<Value>, u64, Events), ApiError> {
        let st = self.lock();
        let rx = st.tx.subscribe();
        let (rt, _) = st.resolve(id)?;
        let items = st
            .objects
            .get(&rt.gr())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .map(|(_, o)| o.clone())
            .collect();
        Ok((items, st.rv, rx))
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }
}

impl State {
    pub fn resolve(&self, id: &ResourceId) -> Result<(ResourceType, VersionInfo), ApiError> {
        let rt = self.registry.resolve(&id.group, &id.version, &id.resource).ok_or_else(unknown_resource)?;
        let vi = rt.version(&id.version).cloned().ok_or_else(unknown_resource)?;
        Ok((rt.clone(), vi))
    }

    fn emit(&mut self, kind: EventKind, gr: &GroupResource, namespace: &str, object: &Value) {
        let ev = Arc::new(WatchEvent { rv: self.rv, kind, gr: gr.clone(), namespace: namespace.into(), object: object.clone() });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(ev);
    }

    /// Stores `obj` at a new resource version and emits `kind`.
    fn insert(&mut self, gr: GroupResource, k: ObjKey, mut obj: Value, kind: EventKind) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(kind, &gr, &k.0.clone(), &obj);
        self.objects.entry(gr).or_default().insert(k, obj.clone());
        obj
    }

    fn custom_schema<'a>(rt: &ResourceType, vi: &'a VersionInfo) -> Option<&'a Value> {
        rt.crd.as_ref().and(vi.schema.as_ref())
    }

    /// Prunes, defaults and validates a custom resource against its version's schema.
    fn check_custom(&self, rt: &ResourceType, vi: &VersionInfo, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let Some(schema) = Self::custom_schema(rt, vi) else {
            return Ok(());
        };
        let identity: Vec<(String, Value)> =
            ["apiVersion", "kind", "metadata"].iter().filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
        validation::prune(schema, obj);
        validation::apply_defaults(schema, obj);
        for (k, v) in identity {
            obj[k] = v;
        }
        let errors = validation::validate(schema, obj, old);
        if errors.is_empty() {
            return Ok(());
        }
        let causes = errors.into_iter().map(|e| super::error::Cause { reason: e.reason, message: e.message, field: e.field }).collect();
        Err(ApiError::invalid(&rt.kind_group(), object::target_of(rt, obj), causes))
    }

    /// Reads a CRD being written, fills its defaults and accepted status; returns the type.
    fn register_crd(&self, crd: &mut Value) -> Result<ResourceType, ApiError> {
        resources::default_crd(crd);
        let t = resources::from_crd(crd)?;
        if let Some(existing) = self.registry.get(&t.gr())
            && existing.crd.is_none()
        {
            return Err(ApiError::invalid_field(
                "CustomResourceDefinition.apiextensions.k8s.io",
                object::target_of(&self.registry.get(&GroupResource::new(CRD_GROUP, CRD_RESOURCE)).cloned().unwrap_or(t.clone()), crd),
                "spec.names.plural",
                "FieldValueInvalid",
                "Invalid value: the resource is built in",
            ));
        }
        let now = now_rfc3339();
        let storage = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| vs.iter().find(|v| v.get("storage").and_then(Value::as_bool) == Some(true)))
            .and_then(|v| v.get("name").cloned())
            .unwrap_or(json!(t.versions[0].name));
        let since = |ty: &str| {
            crd.pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or(json!(now))
        };
        let status = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": since("Established")}
            ],
            "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
            "storedVersions": [storage],
        });
        crd["status"] = status;
        Ok(t)
    }

    fn create_locked(&mut self, rt: &ResourceType, vi: &VersionInfo, mut obj: Value) -> Result<Value, ApiError> {
        let gr = rt.gr();
        let ns = meta_str(&obj, "namespace").to_string();
        let name = meta_str(&obj, "name").to_string();
        if rt.namespaced {
            let exists = self.objects.get(&GroupResource::new("", "namespaces")).is_some_and(|m| m.contains_key(&key(None, &ns)));
            if !exists {
                return Err(ApiError::NotFound(super::error::Target::new("", "namespaces", &ns)));
            }
        }
        let k = (ns, name.clone());
        if self.objects.get(&gr).is_some_and(|m| m.contains_key(&k)) {
            return Err(ApiError::AlreadyExists(rt.target(&name)));
        }
        self.check_custom(rt, vi, &mut obj, None)?;
        if gr == GroupResource::new(CRD_GROUP, CRD_RESOURCE) {
            let t = self.register_crd(&mut obj)?;
            self.registry.insert(t);
        }
        if gr == GroupResource::new("", "namespaces") && obj.pointer("/status/phase").is_none() {
            obj["status"] = json!({"phase": "Active"});
        }
        check_stored_size(&obj)?;
        Ok(self.insert(gr, k, obj, EventKind::Added))
    }

    /// Deletes honouring finalizers; returns the object (marked or removed), None when missing.
    fn delete_locked(&mut self, gr: &GroupResource, k: &ObjKey, policy: Propagation) -> Result<Option<Value>, ApiError> {
        let Some(current) = self.objects.get(gr).and_then(|m| m.get(k)).cloned() else {
            return Ok(None);
        };
        let uid = meta_str(&current, "uid").to_string();
        if policy == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        if !object::finalizers(&current).is_empty() {
            if is_deleting(&current) {
                return Ok(Some(current));
            }
            let mut marked = current;
            let meta = meta_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok(Some(self.insert(gr.clone(), k.clone(), marked, EventKind::Modified)));
        }
        Ok(self.remove(gr, k))
    }

    fn orphan_dependents(&mut self, owner_uid: &str) {
        let mut changed = Vec::new();
        for (gr, objs) in &self.objects {
            for (k, o) in objs {
                let mut o = o.clone();
                if gc::orphan(&mut o, owner_uid) {
                    changed.push((gr.clone(), k.clone(), o));
                }
            }
        }
        for (gr, k, o) in changed {
            self.insert(gr, k, o, EventKind::Modified);
        }
    }

    fn live_uids(&self) -> HashSet<String> {
        self.objects.values().flat_map(|m| m.values()).map(|o| meta_str(o, "uid").to_string()).collect()
    }

    /// Removes an object for good: DELETED event, then what depended on it (CRD instances,
    /// namespace contents, owner-reference dependents).
    fn remove(&mut self, gr: &GroupResource, k: &ObjKey) -> Option<Value> {
        let mut obj = self.objects.get_mut(gr)?.remove(k)?;
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(EventKind::Deleted, gr, &k.0.clone(), &obj);
        let uid = meta_str(&obj, "uid").to_string();
        if *gr == GroupResource::new(CRD_GROUP, CRD_RESOURCE)
            && let Ok(t) = resources::from_crd(&obj)
        {
            self.registry.remove(&t.gr());
            let keys: Vec<ObjKey> = self.objects.get(&t.gr()).map(|m| m.keys().cloned().collect()).unwrap_or_default();
            for ck in keys {
                self.remove(&t.gr(), &ck);
            }
            self.objects.remove(&t.gr());
        }
        if *gr == GroupResource::new("", "namespaces") {
            let contained: Vec<(GroupResource, ObjKey)> = self
                .objects
                .iter()
                .flat_map(|(g, m)| m.keys().filter(|(ns, _)| *ns == k.1).map(move |ok| (g.clone(), ok.clone())))
                .collect();
            for (g, ok) in contained {
                // Finalizers of namespace contents are honoured: such objects stay, marked.
                let _ = self.delete_locked(&g, &ok, Propagation::Background);
            }
        }
        let live = self.live_uids();
        let dependents: Vec<(GroupResource, ObjKey)> = self
            .objects
            .iter()
            .flat_map(|(g, m)| {
                let live = &live;
                let uid = &uid;
                m.iter().filter(move |(_, o)| gc::should_collect(o, uid, |u| live.contains(u))).map(move |(ok, _)| (g.clone(), ok.clone()))
            })
            .collect();
        for (g, ok) in dependents {
            let _ = self.delete_locked(&g, &ok, Propagation::Background);
        }
        Some(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm() -> ResourceId {
        ResourceId::new("", "v1", "configmaps")
    }

    #[test]
    fn starts_with_default_and_kube_system_namespaces() {
        let s = Store::new(10);
        let (items, rv) = s.list(&ResourceId::new("", "v1", "namespaces"), None, |_| true).unwrap();
        let names: Vec<&str> = items.iter().map(|o| meta_str(o, "name")).collect();
        assert_eq!(names, vec!["default", "kube-system"]);
        assert_eq!(rv, 2);
    }

    #[test]
    fn objects_over_the_etcd_limit_are_refused_with_413_on_create_and_update() {
        let s = Store::new(10);
        let big = "x".repeat(MAX_STORED_OBJECT_BYTES);
        let e = s.create(&cm(), Some("default"), json!({"metadata": {"name": "big"}, "data": {"k": big}}), "t").unwrap_err();
        assert_eq!((e.code(), e.reason(), e.to_string().as_str()), (413, "RequestEntityTooLarge", "etcdserver: request is too large"));
        s.create(&cm(), Some("default"), json!({"metadata": {"name": "small"}, "data": {"k": "v"}}), "t").unwrap();
        let e = s
            .update(&cm(), Some("default"), "small", Subresource::Main, "t", |_| {
                Ok(Change::Replace(json!({"metadata": {"name": "small"}, "data": {"k": big}})))
            })
            .unwrap_err();
        assert_eq!(e.code(), 413);
        assert_eq!(s.get(&cm(), Some("default"), "small").unwrap()["data"]["k"], "v", "the stored object is unchanged");
    }

    #[test]
    fn create_in_missing_namespace_is_not_found() {
        let s = Store::new(10);
        let e = s.create(&cm(), Some("nope"), json!({"metadata": {"name": "a"}}), "t").unwrap_err();
        assert_eq!(e.to_string(), "namespaces \"nope\" not found");
    }

    #[test]
    fn history_expires_old_versions() {
        let s = Store::new(2);
        for i in 0..4 {
            s.create(&cm(), Some("default"), json!({"metadata": {"name": format!("c{i}")}}), "t").unwrap();
        }
        assert_eq!(s.current_rv(), 6);
        assert_eq!(s.watch_from(1).unwrap_err().code(), 410);
        let (replay, _) = s.watch_from(4).unwrap();
        assert_eq!(replay.iter().map(|e| e.rv).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn garbage_collects_dependents_without_other_live_owner() {
        let s = Store::new(100);
        let owner = s.create(&cm(), Some("default"), json!({"metadata": {"name": "owner"}}), "t").unwrap();
        let uid = meta_str(&owner, "uid").to_string();
        let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        s.create(&cm(), Some("default"), json!({"metadata": {"name": "dep", "ownerReferences": refs}}), "t").unwrap();
        s.create(&cm(), Some("default"), json!({"metadata": {"name": "held", "ownerReferences": refs, "finalizers": ["x/y"]}}), "t")
            .unwrap();
        s.delete(&cm(), Some("default"), "owner", &DeleteOptions::default()).unwrap();
        assert_eq!(s.get(&cm(), Some("default"), "dep").unwrap_err().code(), 404);
        let held = s.get(&cm(), Some("default"), "held").unwrap();
        assert!(is_deleting(&held));
    }
}

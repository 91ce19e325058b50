//! Secondary indexes over a watched store, so that a reconcile finds the objects related to one
//! (a Workflow's child Jobs, a pool's Jobs, the Jobs sharing an `idempotencyKey`) without
//! scanning every object of the kind: with 10,000 Jobs, a scan per reconcile is what made the
//! operator's CPU grow with the cluster rather than with the change.
//!
//! Kept by [`super::SharedWatch`] from the same events as its store, updated before a change is
//! broadcast, so a reconcile triggered by a change finds it in the index.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::Job;

/// An object's index keys.
pub type Keys<K> = fn(&K) -> Vec<String>;

/// Objects by key: each key maps to the objects that have it.
pub struct Index<K: Resource<DynamicType = ()> + 'static> {
    keys: Keys<K>,
    store: Store<K>,
    inner: RwLock<Inner<K>>,
}

struct Inner<K: Resource<DynamicType = ()> + 'static> {
    by_key: HashMap<String, HashSet<ObjectRef<K>>>,
    /// Each object's keys as last indexed, to remove them when it changes or goes.
    of_object: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Index<K> {
    pub fn new(keys: Keys<K>, store: Store<K>) -> Self {
        Self { keys, store, inner: RwLock::new(Inner { by_key: HashMap::new(), of_object: HashMap::new() }) }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<K>> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The object was created or changed.
    pub fn apply(&self, object: &K) {
        let reference = ObjectRef::from_obj(object);
        let keys = (self.keys)(object);
        let mut inner = self.write();
        inner.remove(&reference);
        inner.insert(reference, keys);
    }

    /// The object was deleted.
    pub fn delete(&self, object: &K) {
        self.write().remove(&ObjectRef::from_obj(object));
    }

    /// The watch listed every object again: the index is rebuilt from them.
    pub fn relisted(&self, objects: &[Arc<K>]) {
        let mut inner = self.write();
        inner.by_key.clear();
        inner.of_object.clear();
        for object in objects {
            inner.insert(ObjectRef::from_obj(&**object), (self.keys)(object));
        }
    }

    /// The references indexed under `key`.
    pub fn refs(&self, key: &str) -> Vec<ObjectRef<K>> {
        let inner = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.by_key.get(key).map(|refs| refs.iter().cloned().collect()).unwrap_or_default()
    }

    /// The objects indexed under `key`, as the store holds them now (an object gone from the
    /// store in between is left out).
    pub fn get(&self, key: &str) -> Vec<Arc<K>> {
        self.refs(key).iter().filter_map(|reference| self.store.get(reference)).collect()
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Inner<K> {
    fn insert(&mut self, reference: ObjectRef<K>, keys: Vec<String>) {
        for key in &keys {
            self.by_key.entry(key.clone()).or_default().insert(reference.clone());
        }
        self.of_object.insert(reference, keys);
    }

    fn remove(&mut self, reference: &ObjectRef<K>) {
        for key in self.of_object.remove(reference).unwrap_or_default() {
            if let Some(refs) = self.by_key.get_mut(&key) {
                refs.remove(reference);
                if refs.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

/// The Jobs of pool `pool` in `namespace`.
pub fn pool_key(namespace: &str, pool: &str) -> String {
    format!("pool/{namespace}/{pool}")
}

/// The Jobs owned by the object of uid `owner` (a Workflow's steps, a Schedule's runs).
pub fn owner_key(namespace: &str, owner: &str) -> String {
    format!("owner/{namespace}/{owner}")
}

/// The Jobs of `namespace` with `idempotencyKey` `key`.
pub fn idempotency_key(namespace: &str, key: &str) -> String {
    format!("idempotency/{namespace}/{key}")
}

/// A Job's keys: its pool, each owner, its idempotency key.
pub fn job_keys(job: &Job) -> Vec<String> {
    let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
    let mut keys = vec![pool_key(namespace, &job.spec.pool_ref)];
    keys.extend(job.metadata.owner_references.iter().flatten().map(|o| owner_key(namespace, &o.uid)));
    keys.extend(job.spec.idempotency_key.iter().map(|k| idempotency_key(namespace, k)));
    keys
}

/// No index (a watch whose objects nothing looks up by relation).
pub fn no_keys<K>(_: &K) -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn job(name: &str, pool: &str, owner: Option<&str>, key: Option<&str>) -> Job {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": name, "namespace": "n", "uid": format!("uid-{name}")},
            "spec": {"poolRef": pool, "completions": 1},
        }))
        .unwrap();
        job.spec.idempotency_key = key.map(String::from);
        if let Some(owner) = owner {
            job.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "warren.dev/v1alpha1".into(),
                kind: "Workflow".into(),
                name: "wf".into(),
                uid: owner.into(),
                ..Default::default()
            }]);
        }
        job
    }

    fn names(jobs: Vec<Arc<Job>>) -> Vec<String> {
        let mut names: Vec<String> = jobs.iter().map(|j| j.metadata.name.clone().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn objects_are_found_by_each_key_and_follow_changes_and_deletions() {
        let mut writer: Writer<Job> = Writer::default();
        let index = Index::new(job_keys, writer.as_reader());
        let (a, b, c) = (job("a", "p", Some("wf-1"), Some("k")), job("b", "p", Some("wf-1"), None), job("c", "q", None, Some("k")));
        for j in [&a, &b, &c] {
            writer.apply_watcher_event(&Event::Apply(j.clone()));
            index.apply(j);
        }
        assert_eq!(names(index.get(&pool_key("n", "p"))), ["a", "b"]);
        assert_eq!(names(index.get(&owner_key("n", "wf-1"))), ["a", "b"]);
        assert_eq!(names(index.get(&idempotency_key("n", "k"))), ["a", "c"]);
        assert!(index.get(&pool_key("other", "p")).is_empty(), "keys are per namespace");
        // b moves to pool q (keys change with the object).
        let moved = job("b", "q", Some("wf-1"), None);
        writer.apply_watcher_event(&Event::Apply(moved.clone()));
        index.apply(&moved);
        assert_eq!(names(index.get(&pool_key("n", "p"))), ["a"]);
        assert_eq!(names(index.get(&pool_key("n", "q"))), ["b", "c"]);
        // a is deleted.
        writer.apply_watcher_event(&Event::Delete(a.clone()));
        index.delete(&a);
        assert_eq!(names(index.get(&owner_key("n", "wf-1"))), ["b"]);
        assert_eq!(names(index.get(&idempotency_key("n", "k"))), ["c"]);
        assert!(!index.inner.read().unwrap().by_key.contains_key(&pool_key("n", "p")), "empty keys are dropped");
    }

    #[test]
    fn a_relist_replaces_everything() {
        let mut writer: Writer<Job> = Writer::default();
        let index = Index::new(job_keys, writer.as_reader());
        let old = job("old", "p", None, None);
        writer.apply_watcher_event(&Event::Apply(old.clone()));
        index.apply(&old);
        let new = job("new", "p", None, None);
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(new.clone()));
        writer.apply_watcher_event(&Event::InitDone);
        index.relisted(&[Arc::new(new)]);
        assert_eq!(names(index.get(&pool_key("n", "p"))), ["new"]);
        assert_eq!(index.refs(&pool_key("n", "p")).len(), 1);
    }
}

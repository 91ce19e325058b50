//! Watches: resuming from a resource version, expiry, bookmarks, initial events, timeouts.
#[path = "api_support.rs"]
mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;
use warren_sandbox::ServerOptions;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn describe(e: &WatchEvent<ConfigMap>) -> String {
    match e {
        WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.as_deref().unwrap_or_default()),
        WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.name.as_deref().unwrap_or_default()),
        WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.as_deref().unwrap_or_default()),
        WatchEvent::Bookmark(_) => "BOOKMARK".into(),
        WatchEvent::Error(s) => format!("ERROR {}", s.code),
    }
}

#[tokio::test]
async fn watch_from_a_resource_version_receives_exactly_the_later_events() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm("before")).await.unwrap();
    let mark = api.create(&PostParams::default(), &cm("mark")).await.unwrap().metadata.resource_version.unwrap();
    api.create(&PostParams::default(), &cm("after")).await.unwrap();
    api.patch("after", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    api.delete("before", &DeleteParams::default()).await.unwrap();
    // A different kind's events must not leak into this watch.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(s.client());
    secrets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap()).await.unwrap();
    api.create(&PostParams::default(), &cm("last")).await.unwrap();

    let stream = api.watch(&WatchParams::default(), &mark).await.unwrap().boxed();
    let got: Vec<String> = stream.take(4).map(|e| describe(&e.unwrap())).collect().await;
    assert_eq!(got, vec!["ADDED after", "MODIFIED after", "DELETED before", "ADDED last"]);
    s.shutdown().await;
}

#[tokio::test]
async fn watch_from_an_expired_resource_version_gets_410_expired() {
    let s = server_with(ServerOptions { watch_history: 3, ..Default::default() }).await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let first = api.create(&PostParams::default(), &cm("c0")).await.unwrap().metadata.resource_version.unwrap();
    for i in 1..6 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"))).await.unwrap();
    }
    let mut stream = api.watch(&WatchParams::default(), &first).await.unwrap().boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(st) => {
            assert_eq!(st.code, 410);
            assert_eq!(st.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {}", describe(&other)),
    }
    assert!(stream.next().await.is_none(), "the watch ends after the error");
    s.shutdown().await;
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version() {
    let s = server_with(ServerOptions { bookmark_interval: Duration::from_millis(50), ..Default::default() }).await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let start = api.create(&PostParams::default(), &cm("a")).await.unwrap().metadata.resource_version.unwrap();
    let mut stream = api.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    let latest: u64 = api.create(&PostParams::default(), &cm("b")).await.unwrap().metadata.resource_version.unwrap().parse().unwrap();
    let mut saw_added = false;
    loop {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("b"));
                saw_added = true;
            }
            WatchEvent::Bookmark(b) => {
                let rv: u64 = b.metadata.resource_version.parse().unwrap();
                if rv >= latest {
                    assert_eq!(rv, latest);
                    break;
                }
            }
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    assert!(saw_added);
    s.shutdown().await;
}

#[tokio::test]
async fn send_initial_events_ends_with_an_annotated_bookmark() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm("x")).await.unwrap();
    api.create(&PostParams::default(), &cm("y")).await.unwrap();
    let wp = WatchParams::default().initial_events();
    let mut stream = api.watch(&wp, "").await.unwrap().boxed();
    let mut names = Vec::new();
    loop {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => names.push(o.metadata.name.unwrap()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
                break;
            }
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    assert_eq!(names, vec!["x", "y"]);
    s.shutdown().await;
}

#[tokio::test]
async fn watch_ends_after_timeout_seconds() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let rv = api.create(&PostParams::default(), &cm("t")).await.unwrap().metadata.resource_version.unwrap();
    let stream = api.watch(&WatchParams::default().timeout(1), &rv).await.unwrap();
    let events: Vec<_> = stream.collect().await;
    assert!(events.is_empty(), "no changes happened, so the timed-out watch carries no events");
    s.shutdown().await;
}

#[tokio::test]
async fn runtime_watcher_sees_changes_after_its_initial_list() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm("existing")).await.unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match events.try_next().await.unwrap().unwrap() {
            watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, vec!["existing"]);
    api.create(&PostParams::default(), &cm("new")).await.unwrap();
    api.delete("existing", &DeleteParams::default()).await.unwrap();
    let mut later = Vec::new();
    while later.len() < 2 {
        match events.try_next().await.unwrap().unwrap() {
            watcher::Event::Apply(o) => later.push(format!("apply {}", o.metadata.name.unwrap())),
            watcher::Event::Delete(o) => later.push(format!("delete {}", o.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(later, vec!["apply new", "delete existing"]);
    s.shutdown().await;
}

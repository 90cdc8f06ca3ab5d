//! The API server double behaves like Kubernetes for everything tokensync's controller uses,
//! proven through a real `kube::Client`, kube-runtime's watcher and its event recorder.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Fault, Verb};
use support::control_plane::ControlPlane;

const WAIT: Duration = Duration::from_secs(10);
const NS: &str = "default";

fn secret(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Default::default()
    }
}

fn data_of(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).map(|b| String::from_utf8(b.0.clone()).unwrap())
}

fn api_error(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn clientcred_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tokensync.io", "v1alpha1", "ClientCredential"),
        "clientcredentials",
    )
}

fn clientcreds(client: Client) -> Api<DynamicObject> {
    Api::namespaced_with(client, NS, &clientcred_resource())
}

fn clientcred(name: &str, spec: Value) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &clientcred_resource()).within(NS);
    obj.data = json!({"spec": spec, "status": {"observedGeneration": 99}});
    obj
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next()).await.expect("an item within the timeout").expect("stream open")
}

/// The next watcher event that is not an error.
async fn next_event<S, K>(stream: &mut S) -> Event<K>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    loop {
        if let Ok(event) = next(stream).await {
            return event;
        }
    }
}

/// Drains the initial listing; returns the names listed.
async fn init_names<S, K: Resource>(stream: &mut S) -> Vec<String>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let mut names = Vec::new();
    loop {
        match next_event(stream).await {
            Event::Init => names.clear(),
            Event::InitApply(o) => names.push(o.meta().name.clone().unwrap()),
            Event::InitDone => return names,
            other => panic!("unexpected event during init: {:?}", std::mem::discriminant(&other)),
        }
    }
}

fn managers(obj: &impl Resource) -> Vec<(String, String, Option<String>)> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap(), m.subresource.clone()))
        .collect()
}

// ---- CRUD and errors ------------------------------------------------------------------------

#[tokio::test]
async fn secrets_round_trip_with_string_data_folded_into_base64_data() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut s = secret("creds", &[("app", "x")], &[("a", "1")]);
    s.string_data = Some(BTreeMap::from([("b".to_string(), "two".to_string())]));
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(data_of(&created, "a").as_deref(), Some("1"));
    assert_eq!(data_of(&created, "b").as_deref(), Some("two"));
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());
    assert_eq!(meta.generation, None, "built-in Secrets carry no generation");

    let raw = server.get_json("secrets", Some(NS), "creds").unwrap();
    assert_eq!(raw["data"]["b"], "dHdv", "stored base64");
    assert!(raw.get("stringData").is_none());

    let mut fetched = secrets.get("creds").await.unwrap();
    fetched.data.as_mut().unwrap().insert("c".into(), ByteString(b"3".to_vec()));
    let replaced = secrets.replace("creds", &PostParams::default(), &fetched).await.unwrap();
    assert_eq!(data_of(&replaced, "c").as_deref(), Some("3"));
    assert_ne!(replaced.resource_version(), created.resource_version());

    secrets.delete("creds", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(secrets.get("creds").await.unwrap_err()), (404, "NotFound".into()));
    assert_eq!(
        api_error(secrets.delete("creds", &DeleteParams::default()).await.unwrap_err()),
        (404, "NotFound".into())
    );
}

#[tokio::test]
async fn create_generates_names_and_rejects_duplicates_and_missing_namespaces() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut s = secret("", &[], &[]);
    s.metadata.name = None;
    s.metadata.generate_name = Some("token-".into());
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    let name = created.name_any();
    assert!(name.starts_with("token-") && name.len() == "token-".len() + 5, "{name}");

    let dup = secret(&name, &[], &[]);
    assert_eq!(
        api_error(secrets.create(&PostParams::default(), &dup).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    let elsewhere: Api<Secret> = Api::namespaced(client, "nowhere");
    let mut s = secret("x", &[], &[]);
    s.metadata.namespace = None;
    assert_eq!(api_error(elsewhere.create(&PostParams::default(), &s).await.unwrap_err()), (404, "NotFound".into()));
    let mut invalid = secret("Not_A_Name", &[], &[]);
    invalid.metadata.namespace = None;
    assert_eq!(api_error(secrets.create(&PostParams::default(), &invalid).await.unwrap_err()), (422, "Invalid".into()));
}

#[tokio::test]
async fn stale_replace_is_a_conflict_and_custom_resources_require_a_resource_version() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let v1 = secrets.create(&PostParams::default(), &secret("s", &[], &[("a", "1")])).await.unwrap();
    let mut v2 = v1.clone();
    v2.data.as_mut().unwrap().insert("a".into(), ByteString(b"2".to_vec()));
    secrets.replace("s", &PostParams::default(), &v2).await.unwrap();
    let mut stale = v1.clone();
    stale.data.as_mut().unwrap().insert("a".into(), ByteString(b"3".to_vec()));
    assert_eq!(
        api_error(secrets.replace("s", &PostParams::default(), &stale).await.unwrap_err()),
        (409, "Conflict".into())
    );
    // A Secret may be replaced unconditionally.
    stale.metadata.resource_version = None;
    secrets.replace("s", &PostParams::default(), &stale).await.unwrap();

    let creds = clientcreds(server.client());
    let mut cc = creds.create(&PostParams::default(), &clientcred("cc", json!({"a": 1}))).await.unwrap();
    cc.metadata.resource_version = None;
    assert_eq!(api_error(creds.replace("cc", &PostParams::default(), &cc).await.unwrap_err()), (422, "Invalid".into()));
}

// ---- list ---------------------------------------------------------------------------------

#[tokio::test]
async fn list_filters_with_label_and_field_selectors() {
    let server = ApiServer::start().await;
    server.create_namespace("team-a", &[("tier", "gold")]);
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for (name, labels) in [
        ("a", vec![("env", "prod"), ("managed", "yes")]),
        ("b", vec![("env", "dev")]),
        ("c", vec![("env", "test"), ("managed", "yes")]),
        ("d", vec![]),
    ] {
        secrets.create(&PostParams::default(), &secret(name, &labels, &[])).await.unwrap();
    }
    let mut other = secret("e", &[("env", "prod")], &[]);
    other.metadata.namespace = Some("team-a".into());
    Api::<Secret>::namespaced(client.clone(), "team-a").create(&PostParams::default(), &other).await.unwrap();

    let names = |list: kube::core::ObjectList<Secret>| list.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>();
    let select = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(names(secrets.list(&select("env=prod")).await.unwrap()), ["a"]);
    assert_eq!(names(secrets.list(&select("env!=prod")).await.unwrap()), ["b", "c", "d"]);
    assert_eq!(names(secrets.list(&select("env in (dev, test)")).await.unwrap()), ["b", "c"]);
    assert_eq!(names(secrets.list(&select("env notin (dev,test)")).await.unwrap()), ["a", "d"]);
    assert_eq!(names(secrets.list(&select("managed")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(secrets.list(&select("!managed")).await.unwrap()), ["b", "d"]);
    assert_eq!(names(secrets.list(&select("managed,env=test")).await.unwrap()), ["c"]);
    assert_eq!(names(secrets.list(&ListParams::default().fields("metadata.name=b")).await.unwrap()), ["b"]);
    assert_eq!(names(secrets.list(&ListParams::default().fields("metadata.name!=b")).await.unwrap()), ["a", "c", "d"]);

    let all: Api<Secret> = Api::all(client.clone());
    assert_eq!(names(all.list(&select("env=prod")).await.unwrap()), ["a", "e"]);
    assert_eq!(names(all.list(&ListParams::default().fields("metadata.namespace=team-a")).await.unwrap()), ["e"]);
    let err = secrets.list(&ListParams::default().fields("data.x=1")).await.unwrap_err();
    assert_eq!(api_error(err), (400, "BadRequest".into()));

    let namespaces: Api<Namespace> = Api::all(client);
    let gold = namespaces.list(&select("tier=gold")).await.unwrap();
    assert_eq!(gold.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["team-a"]);
    let by_name = namespaces.list(&select("kubernetes.io/metadata.name=team-a")).await.unwrap();
    assert_eq!(by_name.items.len(), 1, "namespaces get the kubernetes.io/metadata.name label");
}

#[tokio::test]
async fn list_pages_are_a_consistent_snapshot() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    for i in 0..5 {
        secrets.create(&PostParams::default(), &secret(&format!("s{i}"), &[], &[])).await.unwrap();
    }
    let first = secrets.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().unwrap();
    // Changes after the first page do not show up in later pages of the same list.
    secrets.create(&PostParams::default(), &secret("s9", &[], &[])).await.unwrap();
    secrets.delete("s4", &DeleteParams::default()).await.unwrap();
    let second = secrets.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    let third = secrets
        .list(&ListParams::default().limit(2).continue_token(second.metadata.continue_.as_ref().unwrap()))
        .await
        .unwrap();
    let names: Vec<String> =
        first.items.iter().chain(&second.items).chain(&third.items).map(ResourceExt::name_any).collect();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    assert!(third.metadata.continue_.is_none());
    assert_eq!(first.metadata.resource_version, third.metadata.resource_version);

    server.compact();
    let err = secrets.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err();
    assert_eq!(api_error(err), (410, "Expired".into()));
}

// ---- watch --------------------------------------------------------------------------------

#[tokio::test]
async fn watcher_lists_then_streams_applied_and_deleted_events() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    secrets.create(&PostParams::default(), &secret("before", &[], &[])).await.unwrap();
    let mut stream = watcher::watcher(secrets.clone(), watcher::Config::default()).boxed();
    assert_eq!(init_names(&mut stream).await, ["before"]);
    secrets.create(&PostParams::default(), &secret("after", &[], &[])).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(s) if s.name_any() == "after"));
    secrets
        .patch("after", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(s) if s.labels().get("x").is_some()));
    secrets.delete("before", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Delete(s) if s.name_any() == "before"));
    let list_request = server.requests().into_iter().find(|r| r.verb == Verb::List).unwrap();
    assert_eq!(list_request.resource, "secrets");
}

#[tokio::test]
async fn label_selected_watch_sees_objects_enter_and_leave_the_selection() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut stream = watcher::watcher(secrets.clone(), watcher::Config::default().labels("managed=yes")).boxed();
    assert!(init_names(&mut stream).await.is_empty());
    secrets.create(&PostParams::default(), &secret("s", &[], &[])).await.unwrap();
    let label = |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"managed": v}}}));
    secrets.patch("s", &PatchParams::default(), &label(Some("yes"))).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(s) if s.name_any() == "s"));
    secrets.patch("s", &PatchParams::default(), &label(None)).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Delete(s) if s.name_any() == "s"));
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    let mut stream = watcher::watcher(secrets.clone(), watcher::Config::default()).boxed();
    assert_eq!(init_names(&mut stream).await, ["a"]);
    // While paused, "b" is written and the history compacted; the watch is cut, and the
    // watcher's resume from its last resourceVersion is too old.
    server.pause();
    server.put(&secret("b", &[], &[])).unwrap();
    server.compact();
    server.drop_watches();
    server.resume();
    match next(&mut stream).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 watch error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(init_names(&mut stream).await, ["a", "b"]);
    assert_eq!(server.count(Verb::List, "secrets", None), 2);

    // A watch request that is told its resourceVersion expired also leads to a re-list.
    server.expire_next_watches(1);
    server.drop_watches();
    match next(&mut stream).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 watch error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(init_names(&mut stream).await, ["a", "b"]);
    assert_eq!(server.count(Verb::List, "secrets", None), 3);
}

#[tokio::test]
async fn after_a_restart_a_lagging_watch_cache_answers_rv_0_lists_with_a_version_watches_are_refused_at() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    let lag_at = server.resource_version();
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    server.restart_with_lagging_cache(lag_at);

    // "Any" (rv=0): the cache's older state and version; watching from it is refused.
    let any = secrets.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(any.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["a"]);
    let stale = any.metadata.resource_version.unwrap();
    assert_eq!(stale, lag_at.to_string());
    let mut refused = secrets.watch(&WatchParams::default(), &stale).await.unwrap().boxed();
    match refused.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(
                (e.code, e.message.as_str()),
                (410, format!("too old resource version: {lag_at} ({})", lag_at + 1).as_str())
            )
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // Consistent (no resourceVersion): current, and watchable.
    let consistent = secrets.list(&ListParams::default()).await.unwrap();
    assert_eq!(consistent.items.len(), 2);
    let mut watch = secrets
        .watch(&WatchParams::default(), consistent.metadata.resource_version.as_deref().unwrap())
        .await
        .unwrap()
        .boxed();
    secrets.create(&PostParams::default(), &secret("c", &[], &[])).await.unwrap();
    assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Added(s))) if s.name_any() == "c"));

    server.cache_caught_up();
    assert_eq!(secrets.list(&ListParams::default().match_any()).await.unwrap().items.len(), 3);
}

#[tokio::test]
async fn watcher_resumes_from_its_resource_version_after_a_dropped_stream() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut stream = watcher::watcher(secrets.clone(), watcher::Config::default()).boxed();
    assert!(init_names(&mut stream).await.is_empty());
    secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(_)));
    server.drop_watches();
    // Written while no watch is open: delivered from the history once the watcher resumes.
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(s) if s.name_any() == "b"));
    assert_eq!(server.count(Verb::List, "secrets", None), 1, "no re-list");
    assert_eq!(server.count(Verb::Watch, "secrets", None), 2);
}

#[tokio::test]
async fn raw_watch_honours_resource_version_bookmarks_and_timeout() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let a = secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    let wp = WatchParams::default().timeout(2);
    let mut events = secrets.watch(&wp, &a.resource_version().unwrap()).await.unwrap().boxed();
    assert!(matches!(next(&mut events).await.unwrap(), WatchEvent::Added(s) if s.name_any() == "b"));
    server.send_bookmarks();
    match next(&mut events).await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, server.resource_version().to_string()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // timeoutSeconds ends the stream.
    assert!(tokio::time::timeout(WAIT, events.next()).await.unwrap().is_none());

    // From "0": synthetic ADDED events for the current state.
    let mut events = secrets.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut events).await.unwrap(), WatchEvent::Added(s) if s.name_any() == "a"));
    assert!(matches!(next(&mut events).await.unwrap(), WatchEvent::Added(s) if s.name_any() == "b"));
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_end_bookmark() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    let mut stream = watcher::watcher(secrets.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(init_names(&mut stream).await, ["a"]);
    assert_eq!(server.count(Verb::List, "secrets", None), 0);
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(s) if s.name_any() == "b"));
}

// ---- watch-list ("streaming lists", KEP-3157) --------------------------------------------------

const WATCH_LIST: &str = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";

/// A raw watch of Secrets in NS: the events as JSON, one per line.
async fn raw_watch(client: &Client, query: &str, accept: Option<&str>) -> impl Stream<Item = Value> + Unpin + use<> {
    use futures::{AsyncBufReadExt, TryStreamExt};
    let mut request = axum::http::Request::get(format!("/api/v1/namespaces/{NS}/secrets?{query}"));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let body = client.request_stream(request.body(Vec::new()).unwrap()).await.expect("the watch starts");
    body.lines().map_ok(|l| serde_json::from_str::<Value>(&l).expect("a JSON event")).map(Result::unwrap).boxed()
}

/// (type, name or, for a BOOKMARK, "#" + resourceVersion and "+end" when it marks the end of
/// the initial events).
fn summary(event: &Value) -> String {
    let meta = &event["object"]["metadata"];
    match event["type"].as_str().unwrap() {
        "BOOKMARK" => {
            let end = meta["annotations"]["k8s.io/initial-events-end"] == "true";
            format!("BOOKMARK #{}{}", meta["resourceVersion"].as_str().unwrap(), if end { "+end" } else { "" })
        }
        t => format!("{t} {}", meta["name"].as_str().unwrap_or_default()),
    }
}

async fn next_summaries<S: Stream<Item = Value> + Unpin>(stream: &mut S, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(summary(&next(stream).await));
    }
    out
}

/// The 422 a request gets, as (code, reason, message, causes as "field: message").
async fn invalid(client: &Client, query: &str) -> (u16, String, String, Vec<String>) {
    let request =
        axum::http::Request::get(format!("/api/v1/namespaces/{NS}/secrets?{query}")).body(Vec::new()).unwrap();
    match client.request_text(request).await {
        Err(kube::Error::Api(status)) => {
            let value = serde_json::to_value(&status).unwrap();
            let causes = value["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{} {}: {}",
                        c["reason"].as_str().unwrap(),
                        c["field"].as_str().unwrap(),
                        c["message"].as_str().unwrap()
                    )
                })
                .collect();
            assert_eq!(
                (value["details"]["group"].as_str(), value["details"]["kind"].as_str()),
                (Some("meta.k8s.io"), Some("ListOptions"))
            );
            (status.code, status.reason.clone(), status.message.clone(), causes)
        }
        other => panic!("expected an API error for {query}, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_list_streams_the_state_then_a_bookmark_ending_it_then_changes() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[("app", "x")], &[])).await.unwrap();
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    let rv = server.resource_version();
    // Consistent (no resourceVersion), "any" (0) and not older than a version the server has
    // reached: the state now, then a bookmark at the version of that state.
    for from in ["", "&resourceVersion=0", "&resourceVersion=1", &format!("&resourceVersion={rv}")] {
        let mut events = raw_watch(&client, &format!("{WATCH_LIST}{from}"), None).await;
        assert_eq!(
            next_summaries(&mut events, 3).await,
            ["ADDED a", "ADDED b", &format!("BOOKMARK #{rv}+end")],
            "{from}"
        );
    }
    let mut events = raw_watch(&client, WATCH_LIST, None).await;
    assert_eq!(next_summaries(&mut events, 3).await, ["ADDED a", "ADDED b", &format!("BOOKMARK #{rv}+end")]);
    secrets.create(&PostParams::default(), &secret("c", &[("app", "x")], &[])).await.unwrap();
    secrets.delete("b", &DeleteParams::default()).await.unwrap();
    assert_eq!(next_summaries(&mut events, 2).await, ["ADDED c", "DELETED b"]);
    // Selectors apply to the initial events.
    let mut selected = raw_watch(&client, &format!("{WATCH_LIST}&labelSelector=app%3Dx"), None).await;
    let now = server.resource_version();
    assert_eq!(next_summaries(&mut selected, 3).await, ["ADDED a", "ADDED c", &format!("BOOKMARK #{now}+end")]);
    // A version the server has not reached (not within 3 s): 504, "Too large resource
    // version", as an ERROR event of a started watch.
    let mut early = raw_watch(&client, &format!("{WATCH_LIST}&resourceVersion={}", now + 100), None).await;
    let error = next(&mut early).await;
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 504);
    assert_eq!(
        error["object"]["message"],
        format!("Timeout: Too large resource version: {}, current: {now}", now + 100)
    );
    assert_eq!(error["object"]["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
    assert!(tokio::time::timeout(WAIT, early.next()).await.unwrap().is_none(), "the watch ends");
    // The request log keeps what was asked.
    let last = server.requests().into_iter().rev().find(|r| r.verb == Verb::Watch).unwrap();
    assert_eq!(last.send_initial_events.as_deref(), Some("true"));
    assert_eq!(last.resource_version, Some((now + 100).to_string()));
}

#[tokio::test]
async fn watch_list_without_bookmarks_or_initial_events_and_legacy_watches_are_served_as_the_real_server_does() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    let rv = server.resource_version();
    // The server does not require allowWatchBookmarks (clients do): without it, the initial
    // events come with no bookmark marking their end.
    let mut quiet =
        raw_watch(&client, "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan", None).await;
    // sendInitialEvents=false: no initial state, changes after the most recent version.
    let mut changes = raw_watch(
        &client,
        "watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        None,
    )
    .await;
    // A legacy watch from "" or "0" is turned into a watch-list (SetListOptionsDefaults): with
    // bookmarks allowed, it also gets the bookmark ending the initial events.
    let mut legacy = raw_watch(&client, "watch=true&resourceVersion=0&allowWatchBookmarks=true", None).await;
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    assert_eq!(next_summaries(&mut quiet, 2).await, ["ADDED a", "ADDED b"]);
    assert_eq!(next_summaries(&mut changes, 1).await, ["ADDED b"]);
    assert_eq!(next_summaries(&mut legacy, 3).await, ["ADDED a", &format!("BOOKMARK #{rv}+end"), "ADDED b"]);

    // With the WatchList feature gate off (Kubernetes 1.33's default), a legacy watch streams
    // the state without that bookmark, and sendInitialEvents is refused.
    let old = ApiServer::builder().watch_list(false).start().await;
    let old_client = old.client();
    Api::<Secret>::namespaced(old_client.clone(), NS)
        .create(&PostParams::default(), &secret("a", &[], &[]))
        .await
        .unwrap();
    let mut legacy = raw_watch(&old_client, "watch=true&resourceVersion=0&allowWatchBookmarks=true", None).await;
    Api::<Secret>::namespaced(old_client.clone(), NS)
        .create(&PostParams::default(), &secret("b", &[], &[]))
        .await
        .unwrap();
    assert_eq!(next_summaries(&mut legacy, 2).await, ["ADDED a", "ADDED b"]);
    assert_eq!(
        invalid(&old_client, WATCH_LIST).await,
        (
            422,
            "Invalid".into(),
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled".into(),
            vec!["FieldValueForbidden sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled".into()]
        )
    );
    // kube's streaming watcher cannot start there: it reports the 422 and retries.
    let metadata: Api<Secret> = Api::namespaced(old_client, NS);
    let mut stream = watcher::watcher(metadata, watcher::Config::default().streaming_lists()).boxed();
    match next(&mut stream).await {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) => assert_eq!(status.code, 422),
        other => panic!("expected the watch to be refused, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn list_options_are_validated_as_the_real_server_does() {
    let server = ApiServer::start().await;
    let client = server.client();
    let forbidden = |field: &str, detail: &str| format!("FieldValueForbidden {field}: Forbidden: {detail}");
    let prefix = "ListOptions.meta.k8s.io \"\" is invalid: ";
    let cases: &[(&str, &str, Vec<String>)] = &[
        // sendInitialEvents needs resourceVersionMatch=NotOlderThan, whatever the resourceVersion.
        (
            "watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            vec![forbidden("resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")],
        ),
        (
            "watch=true&sendInitialEvents=true&resourceVersion=0&allowWatchBookmarks=true",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            vec![forbidden("resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")],
        ),
        (
            "watch=true&sendInitialEvents=true&resourceVersionMatch=Exact&resourceVersion=5",
            "[resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan, resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"]",
            vec![
                forbidden("resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"),
                "FieldValueNotSupported resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"".into(),
            ],
        ),
        // resourceVersionMatch on a watch needs sendInitialEvents.
        (
            "watch=true&resourceVersionMatch=NotOlderThan&resourceVersion=5",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            vec![forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")],
        ),
        // sendInitialEvents without watch is a list: forbidden.
        (
            "sendInitialEvents=true",
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
            vec![forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")],
        ),
        (
            "sendInitialEvents=false&resourceVersionMatch=NotOlderThan",
            "[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided, sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list]",
            vec![
                forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided"),
                forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"),
            ],
        ),
        (
            "resourceVersionMatch=Exact&resourceVersion=0",
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            vec![forbidden("resourceVersionMatch", "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"")],
        ),
    ];
    for (query, message, causes) in cases {
        assert_eq!(
            invalid(&client, query).await,
            (422, "Invalid".into(), format!("{prefix}{message}"), causes.clone()),
            "{query}"
        );
    }
    let refused = server.requests().iter().filter(|r| r.code == 422).count();
    assert_eq!(refused, cases.len(), "refused requests are in the log");
    // What kube sends is accepted: paged and "any" lists, watch-lists, watches from a version.
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    secrets.list(&ListParams::default().limit(1)).await.unwrap();
    secrets.list(&ListParams::default().match_any()).await.unwrap();
    secrets.list(&ListParams::default().at("1").matching(kube::api::VersionMatch::Exact)).await.unwrap();
    drop(secrets.watch(&WatchParams::streaming_lists(), "0").await.unwrap());
    drop(secrets.watch(&WatchParams::default(), "1").await.unwrap());
}

#[tokio::test]
async fn metadata_only_watch_lists_stream_partial_object_metadata_and_the_end_bookmark() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[], &[("token", "sensitive")])).await.unwrap();
    let rv = server.resource_version();
    let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let mut events = raw_watch(&client, WATCH_LIST, Some(accept)).await;
    let (added, bookmark) = (next(&mut events).await, next(&mut events).await);
    assert_eq!((summary(&added), summary(&bookmark)), ("ADDED a".into(), format!("BOOKMARK #{rv}+end")));
    for event in [&added, &bookmark] {
        assert_eq!(
            (event["object"]["kind"].as_str(), event["object"]["apiVersion"].as_str()),
            (Some("PartialObjectMetadata"), Some("meta.k8s.io/v1"))
        );
    }
    assert!(added["object"].get("data").is_none());
    // kube's metadata watcher with streaming lists: no list request at all.
    let metadata: Api<PartialObjectMeta<Secret>> = Api::namespaced(client, NS);
    let mut stream = watcher::watcher(metadata, watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(init_names(&mut stream).await, ["a"]);
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(m) if m.name_any() == "b"));
    assert_eq!(server.count(Verb::List, "secrets", None), 0);
    assert!(server.requests().iter().filter(|r| r.verb == Verb::Watch).all(|r| r.metadata_only));
}

#[tokio::test]
async fn after_a_restart_a_lagging_watch_cache_serves_rv_0_watch_lists_its_older_state() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[], &[])).await.unwrap();
    let lag_at = server.resource_version();
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    server.restart_with_lagging_cache(lag_at);
    let now = server.resource_version();
    // "Any" (rv=0): the cache's older state and version...
    let mut any = raw_watch(&client, &format!("{WATCH_LIST}&resourceVersion=0"), None).await;
    assert_eq!(next_summaries(&mut any, 2).await, ["ADDED a", &format!("BOOKMARK #{lag_at}+end")]);
    // ...consistent (no resourceVersion): the state now.
    let mut consistent = raw_watch(&client, WATCH_LIST, None).await;
    assert_eq!(next_summaries(&mut consistent, 3).await, ["ADDED a", "ADDED b", &format!("BOOKMARK #{now}+end")]);
    secrets.create(&PostParams::default(), &secret("c", &[], &[])).await.unwrap();
    assert_eq!(next_summaries(&mut consistent, 1).await, ["ADDED c"]);
    // The lagging cache delivers nothing more until it has caught up, then what it missed.
    assert!(tokio::time::timeout(Duration::from_millis(300), any.next()).await.is_err());
    server.cache_caught_up();
    assert_eq!(next_summaries(&mut any, 2).await, ["ADDED b", "ADDED c"]);
}

#[tokio::test]
async fn metadata_watcher_and_metadata_lists_carry_no_secret_data() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[("l", "1")], &[("token", "sensitive")])).await.unwrap();
    // kube 5's metadata watch: `Api<PartialObjectMeta<K>>` sends metadata-only requests.
    let metadata: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), NS);
    let mut stream = watcher::watcher(metadata, watcher::Config::default()).boxed();
    assert_eq!(init_names(&mut stream).await, ["a"]);
    secrets.create(&PostParams::default(), &secret("b", &[], &[("token", "sensitive")])).await.unwrap();
    match next_event(&mut stream).await {
        Event::Apply(meta) => {
            assert_eq!(meta.name_any(), "b");
            assert_eq!(meta.types.as_ref().unwrap().kind, "PartialObjectMetadata");
        }
        _ => panic!("expected an Apply"),
    }
    let list = secrets.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert_eq!(list.items[0].labels().get("l").map(String::as_str), Some("1"));

    // On the wire: no data at all.
    let request = axum::http::Request::get(format!("/api/v1/namespaces/{NS}/secrets"))
        .header("Accept", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(request).await.unwrap();
    assert!(text.contains("PartialObjectMetadataList") && !text.contains("sensitive") && !text.contains("dG9r"));
    let request = axum::http::Request::get(format!("/api/v1/namespaces/{NS}/secrets/a"))
        .header("Accept", "application/json;as=Table;g=meta.k8s.io;v=v1")
        .body(Vec::new())
        .unwrap();
    assert_eq!(api_error(client.request_text(request).await.unwrap_err()).0, 406);
}

// ---- server-side apply ----------------------------------------------------------------------

fn apply_secret(labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "target", "namespace": NS, "labels": labels},
           "type": "Opaque", "data": data})
}

#[tokio::test]
async fn apply_creates_updates_and_removes_fields_it_no_longer_applies() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let pp = PatchParams::apply("tokensync");
    let config = apply_secret(json!({"a": "1", "b": "2"}), json!({"k1": "MQ==", "k2": "Mg=="}));
    let created = secrets.patch("target", &pp, &Patch::Apply(&config)).await.unwrap();
    assert_eq!(data_of(&created, "k2").as_deref(), Some("2"));
    assert_eq!(managers(&created), [("tokensync".to_string(), "Apply".to_string(), None)]);
    let fields = &created.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!(fields.fields_type.as_deref(), Some("FieldsV1"));
    let fields_v1 = serde_json::to_value(fields.fields_v1.as_ref().unwrap()).unwrap();
    assert_eq!(fields_v1["f:data"]["f:k1"], json!({}));
    assert_eq!(fields_v1["f:metadata"]["f:labels"]["f:b"], json!({}));

    // Another manager adds a label through an ordinary update: it survives re-applies.
    secrets
        .patch(
            "target",
            &PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() },
            &Patch::Merge(json!({"metadata": {"labels": {"other": "x"}}})),
        )
        .await
        .unwrap();
    let config = apply_secret(json!({"a": "1"}), json!({"k1": "MQ==", "k3": "Mw=="}));
    let updated = secrets.patch("target", &pp, &Patch::Apply(&config)).await.unwrap();
    let labels: Vec<&String> = updated.labels().keys().collect();
    assert_eq!(labels, ["a", "other"]);
    let keys: Vec<&String> = updated.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["k1", "k3"]);
    assert_eq!(
        managers(&updated),
        [("tokensync".to_string(), "Apply".to_string(), None), ("kubectl-edit".into(), "Update".into(), None)]
    );

    // Re-applying the same configuration is a no-op: same resourceVersion, no event.
    let rv = server.resource_version();
    let again = secrets.patch("target", &pp, &Patch::Apply(&config)).await.unwrap();
    assert_eq!(again.resource_version(), updated.resource_version());
    assert_eq!(server.resource_version(), rv);
    let same = secrets
        .patch("target", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "1"}}})))
        .await
        .unwrap();
    assert_eq!(same.resource_version(), updated.resource_version());
    assert_eq!(server.resource_version(), rv);
}

#[tokio::test]
async fn apply_conflicts_with_another_manager_unless_forced() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let config = apply_secret(json!({"app": "x"}), json!({"token": "MQ=="}));
    secrets.patch("target", &PatchParams::apply("first"), &Patch::Apply(&config)).await.unwrap();
    // Same values: shared ownership, no conflict.
    secrets.patch("target", &PatchParams::apply("second"), &Patch::Apply(&config)).await.unwrap();
    let other = apply_secret(json!({"app": "x"}), json!({"token": "Mg=="}));
    let err = secrets.patch("target", &PatchParams::apply("third"), &Patch::Apply(&other)).await.unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(status.message.contains("conflict with \"first\"") && status.message.contains(".data.token"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = secrets.patch("target", &PatchParams::apply("third").force(), &Patch::Apply(&other)).await.unwrap();
    assert_eq!(data_of(&forced, "token").as_deref(), Some("2"));
    let owners_of_token: Vec<String> = forced
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| serde_json::to_value(&m.fields_v1).unwrap()["f:data"].get("f:token").is_some())
        .map(|m| m.manager.clone().unwrap())
        .collect();
    assert_eq!(owners_of_token, ["third"]);
    // An ordinary update takes ownership without conflict.
    let updated = secrets
        .patch(
            "target",
            &PatchParams { field_manager: Some("editor".into()), ..Default::default() },
            &Patch::Merge(json!({"data": {"token": "Mw=="}})),
        )
        .await
        .unwrap();
    assert!(managers(&updated).contains(&("editor".to_string(), "Update".to_string(), None)));
    let err = secrets.patch("target", &PatchParams::apply("third"), &Patch::Apply(&other)).await.unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));
}

#[tokio::test]
async fn apply_merges_owner_references_by_uid() {
    let server = ApiServer::start().await;
    let creds = clientcreds(server.client());
    let owner = creds.create(&PostParams::default(), &clientcred("owner", json!({}))).await.unwrap();
    let other = creds.create(&PostParams::default(), &clientcred("other", json!({}))).await.unwrap();
    let reference = |o: &DynamicObject| {
        json!({"apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential", "name": o.name_any(),
               "uid": o.uid().unwrap(), "controller": o.name_any() == "owner"})
    };
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut mine = apply_secret(json!({}), json!({}));
    mine["metadata"]["ownerReferences"] = json!([reference(&owner)]);
    secrets.patch("target", &PatchParams::apply("a"), &Patch::Apply(&mine)).await.unwrap();
    let mut theirs = apply_secret(json!({}), json!({}));
    theirs["metadata"]["ownerReferences"] = json!([reference(&other)]);
    let merged = secrets.patch("target", &PatchParams::apply("b"), &Patch::Apply(&theirs)).await.unwrap();
    assert_eq!(merged.owner_references().len(), 2, "keyed by uid, each manager owns its item");
}

// ---- status subresource and generation ------------------------------------------------------

#[tokio::test]
async fn status_subresource_is_isolated_and_generation_tracks_spec() {
    let server = ApiServer::start().await;
    let creds = clientcreds(server.client());
    let created = creds.create(&PostParams::default(), &clientcred("cc", json!({"scopes": ["a"]}))).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.data.get("status").is_none(), "status is dropped on create");

    let status = Patch::Merge(json!({"status": {"observedGeneration": 1, "ready": true}, "spec": {"scopes": ["x"]}}));
    let after_status = creds.patch_status("cc", &PatchParams::default(), &status).await.unwrap();
    assert_eq!(after_status.data["status"]["ready"], true);
    assert_eq!(after_status.data["spec"]["scopes"], json!(["a"]), "status writes change only status");
    assert_eq!(after_status.metadata.generation, Some(1));
    assert_ne!(after_status.resource_version(), created.resource_version());

    let main = Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}, "status": {"ready": false}}));
    let after_label = creds.patch("cc", &PatchParams::default(), &main).await.unwrap();
    assert_eq!(after_label.data["status"]["ready"], true, "main resource writes ignore status");
    assert_eq!(after_label.metadata.generation, Some(1), "metadata changes keep the generation");

    let spec = Patch::Merge(json!({"spec": {"scopes": ["b"]}}));
    let after_spec = creds.patch("cc", &PatchParams::default(), &spec).await.unwrap();
    assert_eq!(after_spec.metadata.generation, Some(2));

    let status_apply = json!({"apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
                              "metadata": {"name": "cc"}, "status": {"observedGeneration": 2}});
    let applied =
        creds.patch_status("cc", &PatchParams::apply("tokensync").force(), &Patch::Apply(&status_apply)).await.unwrap();
    assert_eq!(applied.data["status"]["observedGeneration"], 2);
    assert_eq!(applied.metadata.generation, Some(2));
    assert!(managers(&applied).contains(&("tokensync".into(), "Apply".into(), Some("status".into()))));

    let mut replaced = creds.get_status("cc").await.unwrap();
    replaced.data["status"] = json!({"observedGeneration": 3});
    replaced.data["spec"] = json!({"scopes": ["ignored"]});
    let replaced = creds.replace_status("cc", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(replaced.data["status"], json!({"observedGeneration": 3}));
    assert_eq!(replaced.data["spec"]["scopes"], json!(["b"]));

    // Strategic merge patch is not supported for custom resources.
    let err = creds.patch("cc", &PatchParams::default(), &Patch::Strategic(json!({}))).await.unwrap_err();
    assert_eq!(api_error(err), (415, "UnsupportedMediaType".into()));
    assert_eq!(server.count(Verb::Patch, "clientcredentials", Some("status")), 1);
    assert_eq!(server.count(Verb::Apply, "clientcredentials", Some("status")), 1);
}

// ---- patches --------------------------------------------------------------------------------

#[tokio::test]
async fn json_and_strategic_patches_apply_like_kubernetes() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut s = secret("s", &[("a", "1")], &[]);
    s.metadata.finalizers = Some(vec!["one".into()]);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "2"},
        {"op": "add", "path": "/metadata/labels/b", "value": "3"},
        {"op": "remove", "path": "/metadata/finalizers"}
    ]))
    .unwrap();
    let patched = secrets.patch("s", &PatchParams::default(), &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.labels().get("a").map(String::as_str), Some("2"));
    assert_eq!(patched.labels().get("b").map(String::as_str), Some("3"));
    assert!(patched.finalizers().is_empty());
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/labels/a", "value": "1"}])).unwrap();
    let err = secrets.patch("s", &PatchParams::default(), &Patch::Json::<()>(failing)).await.unwrap_err();
    assert_eq!(api_error(err), (422, "Invalid".into()));

    let smp = Patch::Strategic(json!({"metadata": {"finalizers": ["x"], "labels": {"b": null}}}));
    secrets.patch("s", &PatchParams::default(), &smp).await.unwrap();
    let smp = Patch::Strategic(json!({"metadata": {"finalizers": ["y"]}}));
    let merged = secrets.patch("s", &PatchParams::default(), &smp).await.unwrap();
    assert_eq!(merged.finalizers(), ["x", "y"], "finalizers merge as a set");
    assert!(!merged.labels().contains_key("b"));

    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"c": "1"}}}));
    assert_eq!(api_error(secrets.patch("s", &PatchParams::default(), &stale).await.unwrap_err()).0, 409);
}

// ---- deletion -------------------------------------------------------------------------------

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let server = ApiServer::start().await;
    let client = server.client();
    let creds = clientcreds(client.clone());
    let owner = creds.create(&PostParams::default(), &clientcred("owner", json!({}))).await.unwrap();
    let keeper = creds.create(&PostParams::default(), &clientcred("keeper", json!({}))).await.unwrap();
    let reference = |o: &DynamicObject| OwnerReference {
        api_version: "tokensync.io/v1alpha1".into(),
        kind: "ClientCredential".into(),
        name: o.name_any(),
        uid: o.uid().unwrap(),
        controller: Some(o.name_any() == "owner"),
        block_owner_deletion: Some(true),
    };
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let mut only = secret("only-owned", &[], &[]);
    only.metadata.owner_references = Some(vec![reference(&owner)]);
    secrets.create(&PostParams::default(), &only).await.unwrap();
    let mut shared = secret("co-owned", &[], &[]);
    shared.metadata.owner_references = Some(vec![reference(&owner), reference(&keeper)]);
    secrets.create(&PostParams::default(), &shared).await.unwrap();
    secrets.create(&PostParams::default(), &secret("unowned", &[], &[])).await.unwrap();

    creds.delete("owner", &DeleteParams::background()).await.unwrap();
    server.wait_for(|s| s.get::<Secret>(Some(NS), "only-owned").is_none(), WAIT).await.expect("dependent collected");
    let co_owned = server.get::<Secret>(Some(NS), "co-owned").expect("still owned by keeper");
    assert_eq!(co_owned.owner_references().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["keeper"]);
    assert!(server.get::<Secret>(Some(NS), "unowned").is_some());

    // Orphan propagation leaves dependents and removes their reference.
    creds.delete("keeper", &DeleteParams::orphan()).await.unwrap();
    let orphan = server.get::<Secret>(Some(NS), "co-owned").unwrap();
    assert!(orphan.owner_references().is_empty());
    assert!(server.get_json("clientcredentials.tokensync.io", Some(NS), "keeper").is_none());
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let server = ApiServer::start().await;
    let creds = clientcreds(server.client());
    let mut cc = clientcred("cc", json!({}));
    cc.metadata.finalizers = Some(vec!["tokensync.io/cleanup".into()]);
    creds.create(&PostParams::default(), &cc).await.unwrap();
    let mut stream = watcher::watcher(creds.clone(), watcher::Config::default()).boxed();
    assert_eq!(init_names(&mut stream).await, ["cc"]);

    let response = creds.delete("cc", &DeleteParams::default()).await.unwrap();
    let marked = response.left().expect("the object, still present");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.generation, Some(2));
    assert!(matches!(next_event(&mut stream).await, Event::Apply(o) if o.metadata.deletion_timestamp.is_some()));

    let add = Patch::Merge(json!({"metadata": {"finalizers": ["tokensync.io/cleanup", "new"]}}));
    assert_eq!(api_error(creds.patch("cc", &PatchParams::default(), &add).await.unwrap_err()), (422, "Invalid".into()));

    // kube-runtime's finalizer helper removes finalizers with a JSON patch (test + remove).
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "tokensync.io/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    creds.patch("cc", &PatchParams::default(), &Patch::Json::<()>(ops)).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Delete(o) if o.name_any() == "cc"));
    assert!(server.get_json("clientcredentials.tokensync.io", Some(NS), "cc").is_none());
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents_then_itself() {
    let server = ApiServer::start().await;
    server.create_namespace("doomed", &[]);
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "doomed");
    let mut held = secret("held", &[], &[]);
    held.metadata.namespace = Some("doomed".into());
    held.metadata.finalizers = Some(vec!["hold".into()]);
    secrets.create(&PostParams::default(), &held).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.delete("doomed", &DeleteParams::default()).await.unwrap();
    let ns = namespaces.get("doomed").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let mut fresh = secret("new", &[], &[]);
    fresh.metadata.namespace = Some("doomed".into());
    assert_eq!(api_error(secrets.create(&PostParams::default(), &fresh).await.unwrap_err()).0, 403);

    secrets
        .patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    server.wait_for(|s| s.get::<Namespace>(None, "doomed").is_none(), WAIT).await.unwrap();
    assert!(server.list::<Secret>(Some("doomed")).is_empty());
}

// ---- fault injection, counters, pause -------------------------------------------------------

#[tokio::test]
async fn injected_faults_fail_matching_requests_and_are_counted() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let config = apply_secret(json!({}), json!({"k": "MQ=="}));
    let pp = PatchParams::apply("tokensync");

    server.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").code(409).times(2));
    for _ in 0..2 {
        let err = secrets.patch("target", &pp, &Patch::Apply(&config)).await.unwrap_err();
        assert_eq!(api_error(err), (409, "Conflict".into()));
    }
    assert!(server.get::<Secret>(Some(NS), "target").is_none(), "failed before writing");
    secrets.patch("target", &pp, &Patch::Apply(&config)).await.unwrap();
    assert_eq!(server.count(Verb::Apply, "secrets", None), 3);
    let outcomes: Vec<(u16, bool)> = server.requests().iter().map(|r| (r.code, r.changed)).collect();
    assert_eq!(outcomes, [(409, false), (409, false), (201, true)], "apply that creates answers 201");

    server.fail_next_writes(1, 500);
    let err = secrets.create(&PostParams::default(), &secret("other", &[], &[])).await.unwrap_err();
    assert_eq!(api_error(err), (500, "InternalError".into()));
    secrets.get("target").await.expect("reads are not affected by write faults");

    // A lost response: the write happens, the client sees an error.
    // (500: kube's default client retries 429/503/504 up to 15 times, even a POST.)
    server.inject(Fault::writes().name("lost").code(500).after_write());
    let err = secrets.create(&PostParams::default(), &secret("lost", &[], &[])).await.unwrap_err();
    assert_eq!(api_error(err).0, 500);
    assert!(server.get::<Secret>(Some(NS), "lost").is_some());
    server.clear_faults();

    server.inject(Fault::verbs(&[Verb::Get]).resource("secrets").name("target").code(503).times(1));
    // kube's default client retries 503 on its own.
    secrets.get("target").await.unwrap();
}

#[tokio::test]
async fn paused_server_holds_requests_until_resumed() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    server.pause();
    let pending = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.create(&PostParams::default(), &secret("late", &[], &[])).await }
    });
    // Asserting that something does not happen needs a bound; nothing is awaited on it.
    assert!(server.wait_for(|s| !s.requests().is_empty(), Duration::from_millis(200)).await.is_err());
    server.resume();
    pending.await.unwrap().unwrap();
    server.wait_for(|s| s.get::<Secret>(Some(NS), "late").is_some(), WAIT).await.unwrap();
}

#[tokio::test]
async fn direct_access_writes_are_visible_through_the_api_and_watches() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut stream = watcher::watcher(secrets.clone(), watcher::Config::default()).boxed();
    assert!(init_names(&mut stream).await.is_empty());
    server.put(&secret("direct", &[], &[("k", "v")])).unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(s) if s.name_any() == "direct"));
    assert_eq!(data_of(&secrets.get("direct").await.unwrap(), "k").as_deref(), Some("v"));
    server.delete::<Secret>(Some(NS), "direct").unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Delete(_)));
    assert!(server.list::<Secret>(Some(NS)).is_empty());
}

// ---- events, leases, discovery ----------------------------------------------------------------

#[tokio::test]
async fn recorder_publishes_events_k8s_io_events() {
    let server = ApiServer::start().await;
    let client = server.client();
    let creds = clientcreds(client.clone());
    let cc = creds.create(&PostParams::default(), &clientcred("cc", json!({}))).await.unwrap();
    let recorder = Recorder::new(client.clone(), Reporter { controller: "tokensync".into(), instance: None });
    let event = RecorderEvent {
        type_: EventType::Normal,
        reason: "TokenIssued".into(),
        note: Some("issued".into()),
        action: "Renew".into(),
        secondary: None,
    };
    let reference = cc.object_ref(&clientcred_resource());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client, NS);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "the repeat is a series on the same Event");
    let ev = &list.items[0];
    assert_eq!(ev.reason.as_deref(), Some("TokenIssued"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("cc"));
    assert_eq!(ev.series.as_ref().unwrap().count, 2);
    assert_eq!(server.count(Verb::Create, "events", None), 1);
    assert_eq!(server.count(Verb::Patch, "events", None), 1);
}

#[tokio::test]
async fn leases_are_updated_with_resource_version_preconditions() {
    let server = ApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    let lease = Lease {
        metadata: ObjectMeta { name: Some("tokensync-leader".into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().lease_transitions = Some(1);
    let renewed = leases.replace("tokensync-leader", &PostParams::default(), &renewed).await.unwrap();
    let mut takeover = created.clone();
    takeover.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    let err = leases.replace("tokensync-leader", &PostParams::default(), &takeover).await.unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));
    let precondition = json!({"metadata": {"resourceVersion": renewed.resource_version()},
                              "spec": {"holderIdentity": "pod-b"}});
    let taken = leases.patch("tokensync-leader", &PatchParams::default(), &Patch::Merge(precondition)).await.unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("pod-b"));
}

#[tokio::test]
async fn discovery_lists_the_served_resources() {
    let server = ApiServer::start().await;
    let client = server.client();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery
        .get("tokensync.io")
        .and_then(|g| g.recommended_kind("ClientCredential"))
        .expect("the CRD is discovered");
    assert_eq!(resource.plural, "clientcredentials");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let aggregated = kube::Discovery::new(client.clone()).run_aggregated().await.unwrap();
    assert!(aggregated.get("coordination.k8s.io").is_some());
    assert!(aggregated.get("").and_then(|g| g.recommended_kind("Secret")).is_some());
    assert_eq!(client.apiserver_version().await.unwrap().minor, "36");
}

// ---- data-driven resources, no-op writes, foreground deletion ---------------------------------

#[tokio::test]
async fn cluster_scoped_custom_resources_are_served_from_their_definition() {
    let server = ApiServer::builder()
        .resource(support::apiserver::ResourceType::custom("tokensync.io", "v1alpha1", "issuers", "Issuer", false))
        .start()
        .await;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("tokensync.io", "v1alpha1", "Issuer"), "issuers");
    let issuers: Api<DynamicObject> = Api::all_with(server.client(), &ar);
    let mut issuer = DynamicObject::new("global", &ar);
    issuer.data = json!({"spec": {"url": "https://auth.example"}});
    let created = issuers.create(&PostParams::default(), &issuer).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(created.metadata.generation, Some(1));
    let list = issuers.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].types.as_ref().unwrap().kind, "Issuer", "custom resource list items keep their kind");
    let namespaced: Api<DynamicObject> = Api::namespaced_with(server.client(), NS, &ar);
    assert_eq!(api_error(namespaced.get("global").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn no_op_writes_bump_nothing_and_emit_no_watch_event() {
    let server = ApiServer::start().await;
    let creds = clientcreds(server.client());
    let mut stream = watcher::watcher(creds.clone(), watcher::Config::default()).boxed();
    assert!(init_names(&mut stream).await.is_empty());
    let created = creds.create(&PostParams::default(), &clientcred("cc", json!({"a": 1}))).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(_)));
    let rv = server.resource_version();
    let same_spec = Patch::Merge(json!({"spec": {"a": 1}}));
    let unchanged = creds.patch("cc", &PatchParams::default(), &same_spec).await.unwrap();
    let replaced = creds.replace("cc", &PostParams::default(), &unchanged).await.unwrap();
    assert_eq!(replaced.resource_version(), created.resource_version());
    assert_eq!(server.resource_version(), rv);
    assert!(server.requests().iter().filter(|r| r.verb.is_write()).skip(1).all(|r| !r.changed));
    // The next event the watcher sees is the next real change.
    creds.patch("cc", &PatchParams::default(), &Patch::Merge(json!({"spec": {"a": 2}}))).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Event::Apply(o) if o.data["spec"]["a"] == 2));
}

#[tokio::test]
async fn foreground_deletion_waits_for_dependents() {
    let server = ApiServer::start().await;
    let creds = clientcreds(server.client());
    let owner = creds.create(&PostParams::default(), &clientcred("owner", json!({}))).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(server.client(), NS);
    let mut dependent = secret("dependent", &[], &[]);
    dependent.metadata.owner_references = Some(vec![owner.controller_owner_ref(&clientcred_resource()).unwrap()]);
    dependent.metadata.finalizers = Some(vec!["hold".into()]);
    secrets.create(&PostParams::default(), &dependent).await.unwrap();
    let response = creds.delete("owner", &DeleteParams::foreground()).await.unwrap();
    let owner = response.left().expect("the owner waits for its dependents");
    assert!(owner.finalizers().contains(&"foregroundDeletion".to_string()));
    let held = server.get::<Secret>(Some(NS), "dependent").unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "the dependent is being deleted");
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    secrets.patch("dependent", &PatchParams::default(), &release).await.unwrap();
    server.wait_for(|s| s.get_json("clientcredentials.tokensync.io", Some(NS), "owner").is_none(), WAIT).await.unwrap();
}

// ---- the same requests on the double and on a real API server ----------------------------------
//
// Each behaviour below runs against both: the double, and a real Kubernetes API server
// (`support::control_plane`, in a namespace of the test's own). The real server is the judge.

/// A client and a namespace on the real control plane of this test binary.
async fn real_server(prefix: &str) -> (Client, String) {
    let plane = ControlPlane::shared();
    let ns = plane.namespace(prefix).await;
    (plane.client().await, ns)
}

/// A Secret in `ns` with these labels.
fn secret_in(ns: &str, name: &str, labels: &[(&str, &str)]) -> Secret {
    let mut s = secret(name, labels, &[("k", "v")]);
    s.metadata.namespace = Some(ns.into());
    s
}

/// An object leaves a label-selected watch: the event it arrives as, the value of the
/// selected label in the object it carries, and whether that object carries the version of
/// the change.
async fn leaving_a_selection(client: Client, ns: &str) -> (String, Option<String>, bool) {
    let secrets: Api<Secret> = Api::namespaced(client, ns);
    let created = secrets.create(&PostParams::default(), &secret_in(ns, "s", &[("managed", "yes")])).await.unwrap();
    let wp = WatchParams::default().labels("managed=yes");
    let mut events = secrets.watch(&wp, &created.resource_version().unwrap()).await.unwrap().boxed();
    let patch = Patch::Merge(json!({"metadata": {"labels": {"managed": "no"}}}));
    let changed = secrets.patch("s", &PatchParams::default(), &patch).await.unwrap();
    loop {
        match next(&mut events).await.unwrap() {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Deleted(s) => {
                return (
                    "DELETED".into(),
                    s.labels().get("managed").cloned(),
                    s.resource_version() == changed.resource_version(),
                );
            }
            other => return (format!("{other:?}"), None, false),
        }
    }
}

/// What a real server sends (`cacheWatcher.convertToWatchEvent`): DELETED, with the object as
/// it was while it matched, at the version of the change that made it leave.
const LEFT_THE_SELECTION: (&str, Option<&str>, bool) = ("DELETED", Some("yes"), true);

#[tokio::test]
async fn an_object_leaving_a_label_selection_arrives_as_deleted_with_its_previous_state_on_the_double() {
    let server = ApiServer::start().await;
    let (event, label, at_change) = leaving_a_selection(server.client(), NS).await;
    assert_eq!((event.as_str(), label.as_deref(), at_change), LEFT_THE_SELECTION);
}

#[tokio::test]
async fn an_object_leaving_a_label_selection_arrives_as_deleted_with_its_previous_state_on_a_real_api_server() {
    let (client, ns) = real_server("leaving-selection").await;
    let (event, label, at_change) = leaving_a_selection(client, &ns).await;
    assert_eq!((event.as_str(), label.as_deref(), at_change), LEFT_THE_SELECTION);
}

/// The events of a watch-list of the Secrets in `ns` from resourceVersion `rv`, up to the
/// bookmark that ends its initial events or an ERROR, as [`summary`] and the ERROR's Status;
/// and how long they took from the request.
async fn watch_list_from(client: Client, ns: String, rv: u64) -> (Vec<String>, Option<Value>, Duration) {
    use futures::{AsyncBufReadExt, TryStreamExt};
    let started = std::time::Instant::now();
    let request =
        axum::http::Request::get(format!("/api/v1/namespaces/{ns}/secrets?{WATCH_LIST}&resourceVersion={rv}"))
            .body(Vec::new())
            .unwrap();
    let body = client.request_stream(request).await.expect("the watch starts");
    let mut lines = body.lines().map_ok(|l| serde_json::from_str::<Value>(&l).expect("a JSON event")).boxed();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, lines.next()).await.expect("an event").expect("open").unwrap();
        if event["type"] == "ERROR" {
            return (events, Some(event["object"].clone()), started.elapsed());
        }
        let end = event["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true";
        // Versions differ between servers; only whether it is the end of the initial events.
        events.push(if event["type"] == "BOOKMARK" {
            format!("BOOKMARK{}", if end { "+end" } else { "" })
        } else {
            summary(&event)
        });
        if end {
            return (events, None, started.elapsed());
        }
    }
}

/// A watch-list from a resourceVersion the server has not reached waits for it: when the
/// version comes within 3 s (a write), the watch starts; when not, a 504 "Too large resource
/// version" ERROR event, after the 3 s (`watchCache.waitUntilFreshAndBlock`). `double`: the
/// server is the double, whose log tells when the watch arrived.
async fn a_watch_list_waits_for_the_version_it_asks_for(client: Client, ns: &str, double: Option<&ApiServer>) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let current: u64 =
        secrets.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap().parse().unwrap();
    // The next version: written once the watch is waiting for it (on the real server, the
    // write may also come first: the watch then starts at once, as it should).
    let watch = tokio::spawn(watch_list_from(client.clone(), ns.to_owned(), current + 1));
    if let Some(server) = double {
        let arrived = server.wait_for(|v| v.count(Verb::Watch, "secrets", None) > 0, WAIT).await;
        assert!(arrived.is_ok(), "the watch reached the double");
    }
    secrets.create(&PostParams::default(), &secret_in(ns, "later", &[])).await.unwrap();
    let (events, error, _) = watch.await.unwrap();
    let expected = vec!["ADDED later".to_owned(), "BOOKMARK+end".to_owned()];
    match double {
        Some(_) => assert_eq!((events, error), (expected, None)),
        // A real server's resourceVersion is the whole cluster's: another writer (the
        // controller manager renewing its Lease, another test) can reach the awaited version
        // before our write, and the watch then starts without "later" in its initial events.
        // It still waited, started, and ended them with the bookmark.
        None => {
            assert_eq!(error, None, "the watch started: {events:?}");
            assert!(
                events == expected || events == ["BOOKMARK+end".to_owned()],
                "the initial events end with the bookmark: {events:?}"
            );
        }
    }

    // A version far ahead: refused after waiting for it.
    let far = current + 1_000_000;
    let (events, error, took) = watch_list_from(client, ns.to_owned(), far).await;
    let error = error.unwrap_or_else(|| panic!("a watch-list from {far} started: {events:?}"));
    assert_eq!((error["code"].as_u64(), error["reason"].as_str()), (Some(504), Some("Timeout")), "{error:#}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Timeout: Too large resource version: {far}, current: ")),
        "{error:#}"
    );
    assert_eq!(error["details"]["causes"][0]["reason"], "ResourceVersionTooLarge", "{error:#}");
    assert_eq!(error["details"]["retryAfterSeconds"], 1, "{error:#}");
    assert!(took >= Duration::from_millis(2900), "refused after {took:?}, not after waiting 3 s for the version");
}

#[tokio::test]
async fn a_watch_list_from_a_version_not_reached_yet_waits_for_it_then_starts_or_is_refused_on_the_double() {
    let server = ApiServer::start().await;
    a_watch_list_waits_for_the_version_it_asks_for(server.client(), NS, Some(&server)).await;
}

#[tokio::test]
async fn a_watch_list_from_a_version_not_reached_yet_waits_for_it_then_starts_or_is_refused_on_a_real_api_server() {
    let (client, ns) = real_server("future-version").await;
    a_watch_list_waits_for_the_version_it_asks_for(client, &ns, None).await;
}

/// After a restart, the real API server's watch caches initialise again (a real one for as
/// long as its initial list from etcd takes; the double until each has refused one request):
/// watches, and lists it cannot send to etcd instead, get 429 with Retry-After; gets, writes
/// and unselected lists with a limit are served. Not staged on the real server: its caches
/// are ready within milliseconds of a restart, which no test can aim at (the rule is
/// `Cacher.Watch`, `Cacher.GetList` and `CacheDelegator.GetList` of `k8s.io/apiserver` 1.36).
#[tokio::test]
async fn after_a_restart_each_resource_s_watch_cache_answers_429_with_retry_after_until_it_is_initialised() {
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &secret("a", &[("app", "x")], &[])).await.unwrap();
    server.restart();

    // Plain HTTP: kube's client retries a 429 on its own.
    let send = |path: String| {
        let url = format!("{}{path}", server.url());
        async move {
            let response = reqwest::get(url).await.unwrap();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body["reason"].as_str().map(String::from), body["message"].as_str().map(String::from))
        }
    };
    let refused = |retry_after: &str| {
        (
            429,
            Some(retry_after.to_owned()),
            Some("TooManyRequests".to_owned()),
            Some("storage is (re)initializing".to_owned()),
        )
    };
    let secrets_path = format!("/api/v1/namespaces/{NS}/secrets");
    // Served from etcd: a get, a write, a list with a limit and no selector.
    assert_eq!(send(format!("{secrets_path}/a")).await.0, 200);
    secrets.create(&PostParams::default(), &secret("b", &[], &[])).await.unwrap();
    assert_eq!(send(format!("{secrets_path}?limit=500")).await.0, 200);
    // From the cache: a selected list is refused until the cache is ready.
    assert_eq!(send(format!("{secrets_path}?labelSelector=app%3Dx")).await, refused("1"));
    assert_eq!(send(format!("{secrets_path}?labelSelector=app%3Dx")).await.0, 200);
    // Each resource has its own cache: a watch of ClientCredentials is refused as well, and
    // kube's watcher, which the controller runs, gets over it.
    let creds_path = format!("/apis/tokensync.io/v1alpha1/namespaces/{NS}/clientcredentials");
    let first_watch = send(format!("{creds_path}?watch=true&timeoutSeconds=1")).await;
    assert_eq!(first_watch, refused("1"));
    server.restart();
    let creds = clientcreds(client.clone());
    let mut watcher = watcher::watcher(creds.clone(), watcher::Config::default()).boxed();
    assert!(init_names(&mut watcher).await.is_empty());
    creds.create(&PostParams::default(), &clientcred("c", json!({"tokenEndpoint": "https://x"}))).await.unwrap();
    assert!(matches!(next_event(&mut watcher).await, Event::Apply(c) if c.name_any() == "c"));
    let refusals: Vec<_> =
        server.requests().into_iter().filter(|r| r.code == 429).map(|r| (r.verb, r.resource)).collect();
    assert_eq!(
        refusals,
        [
            (Verb::List, "secrets".into()),
            (Verb::Watch, "clientcredentials".into()),
            (Verb::Watch, "clientcredentials".into())
        ],
        "the watcher's list (a limit, no selector) was served; its first watch was refused"
    );
}

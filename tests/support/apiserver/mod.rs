//! An in-process Kubernetes API server double for tests: a real HTTP server on 127.0.0.1 that
//! speaks the REST API a `kube::Client` uses, so controllers are tested through the real
//! client, watcher, reflector and recorder code.
//!
//! ```ignore
//! let server = ApiServer::start().await;           // built-ins + the tokensync CRD
//! let client = server.client();                    // a real kube::Client
//! let secrets: Api<Secret> = Api::namespaced(client, "default");
//! secrets.create(&PostParams::default(), &secret).await?;
//! server.wait_for(|s| s.get::<Secret>(Some("default"), "x").is_some(), Duration::from_secs(5)).await?;
//! assert_eq!(server.count(Verb::Apply, "secrets", None), 1);
//! server.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").code(409));
//! ```
//!
//! Faithful: resourceVersions (one global counter), list/watch/get in full and
//! PartialObjectMetadata form, label selectors (=, ==, !=, in, notin, exists, !exists; `!=` and
//! `notin` match objects without the label), field selectors per resource, `limit`/`continue`
//! pagination over a consistent snapshot, watches from a resourceVersion with a bounded
//! history (410 Expired ERROR event when too old), bookmarks, watch-list ("streaming lists",
//! `sendInitialEvents`, KEP-3157) with the real server's defaulting and validation of list
//! options (422 `ListOptions.meta.k8s.io "" is invalid`) and resourceVersion semantics
//! (unset: consistent, "0": any, N: not older than N; a watch-list from a version the server
//! has not reached waits up to 3 s for it, then gets a 504 "Too large resource version"),
//! `timeoutSeconds`, selector transitions seen as ADDED/DELETED by watchers (DELETED with the
//! object as it was before it left the selection), create with
//! generateName, optimistic concurrency on PUT and patches carrying a resourceVersion,
//! merge/JSON patch, server-side apply with per-manager field ownership, conflicts, `force`,
//! removal of fields no longer applied, managedFields (FieldsV1), status subresource
//! isolation, `metadata.generation` for custom resources, no-op writes that change nothing,
//! finalizers and deletionTimestamp, background/foreground/orphan garbage collection,
//! namespace lifecycle, Secret stringData/type/immutable handling, Status errors,
//! `dryRun=All`, legacy and aggregated discovery, `/version`. Control plane faults: a
//! restart after which watches from earlier resourceVersions get 410, each resource's first
//! watch (and list a real server cannot send to etcd) gets 429 "storage is (re)initializing"
//! with `Retry-After: 1` ([`ApiServer::restart`]), or, optionally, lists
//! with `resourceVersion=0` ("any") are served from a watch cache older than the version
//! watches are refused at ([`ApiServer::restart_with_lagging_cache`]); a client cut off
//! so that its requests hang instead of failing ([`ApiServer::pause_client`]), or only some
//! of its requests ([`Fault::hang`]).
//!
//! Simplified (see also the docs of the items):
//! - No admission, RBAC, authentication, schema validation, pruning of unknown fields or
//!   defaulting of custom resources; CRD CEL rules are not evaluated.
//! - Secrets: server-side apply folds `stringData` into `data` BEFORE computing ownership, so
//!   the applier owns `f:data.<key>`. The real server records `f:stringData` and cannot remove
//!   such keys by omission: controllers must apply `data`, never `stringData`.
//! - Field ownership: maps, list items of `x-kubernetes-list-type: map|set` (from the CRD
//!   schema; `metadata.ownerReferences` keyed by uid and `metadata.finalizers` as a set are
//!   built in) are granular; all other lists are atomic. A map container is removed on
//!   re-apply only when nothing under it is still owned. Conflicts are reported for leaves
//!   whose live value differs; explicit `null` in an applied config means "not set".
//! - Strategic merge patch: a JSON merge patch in which keyed lists merge by key (with
//!   `$patch: delete`) and set lists union; other directives are ignored. Custom resources
//!   answer 415 like the real server.
//! - Lists with `resourceVersionMatch=Exact` and continue tokens read an exact snapshot from
//!   the history window; other list resourceVersions read the current state; a watch from a
//!   future resourceVersion starts there without waiting (as on a real server: only
//!   watch-lists wait for the version).
//! - A lagging watch cache serves only `resourceVersion=0` ("any") lists (whole, ignoring
//!   `limit`) and `resourceVersion=0` watch-lists (its older state, a bookmark at its older
//!   version, then nothing until it catches up); every other watch and consistent lists are
//!   always up to date.
//! - After [`ApiServer::restart`], each resource's watch cache is ready once it has refused
//!   one request with 429 (a real one, once its initial list from etcd is done).
//! - core/v1 and events.k8s.io/v1 Events are stored separately (no conversion between them).
//! - Deletion is immediate (no grace periods); the garbage collector runs synchronously after
//!   every write (each of its changes is its own write with its own resourceVersion).
//! - Without `fieldManager`, the manager is the User-Agent up to the first `/` (kube-rs sends
//!   none, so it is empty, as on a real server).

mod errors;
mod faults;
mod fields;
mod http;
mod resources;
mod selectors;
mod store;
mod tokens;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use errors::ApiError;
#[allow(unused_imports)]
pub use faults::{Fault, RequestRecord, Verb};
#[allow(unused_imports)]
pub use fields::{FieldSet, ManagedEntry};
#[allow(unused_imports)]
pub use resources::{ListType, ResourceType, Special, builtin_resources};
#[allow(unused_imports)]
pub use store::Change;
use store::{DeleteOpts, EventType, Owner, Store, WriteCtx};

/// The manager recorded for writes made with [`ApiServer::put`].
pub const DIRECT_MANAGER: &str = "apiserver-double";

/// Request header naming the client, set by [`ApiServer::client_named`]: lets a test cut one
/// replica off the server ([`ApiServer::pause_client`]) while others go on.
pub const CLIENT_HEADER: &str = "x-apiserver-double-client";

pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Bumped on every change of state (objects, requests, faults, pause): wakes watches and
    /// [`ApiServer::wait_for`].
    changes: watch::Sender<u64>,
    bookmark_interval: Duration,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Waits while the server is paused, or this client is ([`ApiServer::pause_client`]).
    async fn wait_unpaused(&self, client: Option<&str>) {
        self.wait_while(|store| store.is_paused(client)).await;
    }

    /// Waits while `condition` holds on the state, re-checking on every change.
    async fn wait_while(&self, mut condition: impl FnMut(&Store) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            rx.borrow_and_update();
            if !condition(&self.lock()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Configures an [`ApiServer`].
pub struct Builder {
    resources: Vec<ResourceType>,
    history_limit: usize,
    gc: bool,
    require_namespaces: bool,
    namespaces: Vec<String>,
    bookmark_interval: Duration,
    service_account_issuer: Option<String>,
    api_audiences: Vec<String>,
    watch_list: bool,
    record_changes: bool,
}

impl Builder {
    /// Keeps every committed change ([`View::changes`], [`View::versions`]), so that a test
    /// can check every state an object went through, not only those it happened to see
    /// ([`ApiServer::wait_for`] wakes up on changes, but several can happen between two
    /// wake-ups). Off by default: the log is never trimmed.
    #[must_use]
    pub fn record_changes(mut self, on: bool) -> Self {
        self.record_changes = on;
        self
    }

    /// The WatchList feature gate: watch requests with `sendInitialEvents` ("streaming
    /// lists"). On by default, as on Kubernetes 1.34 and later (and 1.32); off, the server
    /// behaves like 1.27-1.31 and 1.33 with their defaults: such requests get 422
    /// ("sendInitialEvents is forbidden for watch unless the WatchList feature gate is
    /// enabled") and legacy watches are not turned into watch-lists.
    #[must_use]
    pub fn watch_list(mut self, on: bool) -> Self {
        self.watch_list = on;
        self
    }

    /// The ServiceAccount token issuer (default: the server's own URL, so that token servers
    /// can fetch its discovery document and keys from `iss`, as identity providers do).
    #[must_use]
    pub fn service_account_issuer(mut self, issuer: &str) -> Self {
        self.service_account_issuer = Some(issuer.into());
        self
    }

    /// The audiences the API server itself accepts (default: the issuer).
    #[must_use]
    pub fn api_audiences(mut self, audiences: &[&str]) -> Self {
        self.api_audiences = audiences.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Serves one more resource.
    #[must_use]
    pub fn resource(mut self, rt: ResourceType) -> Self {
        self.resources.retain(|r| !(r.group == rt.group && r.version == rt.version && r.plural == rt.plural));
        self.resources.push(rt);
        self
    }

    /// Serves every served version of a CRD (scope, status subresource and list types from it).
    #[must_use]
    pub fn crd(mut self, crd: &CustomResourceDefinition) -> Self {
        for rt in ResourceType::from_crd(crd) {
            self = self.resource(rt);
        }
        self
    }

    /// How many changes watches can resume across (default 10 000); older resourceVersions
    /// get 410 Expired.
    #[must_use]
    pub fn history_limit(mut self, n: usize) -> Self {
        self.history_limit = n.max(1);
        self
    }

    /// Garbage collection of dependents (default on).
    #[must_use]
    pub fn garbage_collection(mut self, on: bool) -> Self {
        self.gc = on;
        self
    }

    /// Whether namespaced objects can only be created in existing, non-terminating namespaces
    /// (default on, like the NamespaceLifecycle admission plugin).
    #[must_use]
    pub fn require_namespaces(mut self, on: bool) -> Self {
        self.require_namespaces = on;
        self
    }

    /// Namespaces that exist at start (default: default, kube-system, kube-public,
    /// kube-node-lease).
    #[must_use]
    pub fn namespaces(mut self, names: &[&str]) -> Self {
        self.namespaces = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Interval of periodic BOOKMARK events on watches that allow them (default 60 s, like
    /// the real watch cache). [`ApiServer::send_bookmarks`] sends one at once.
    #[must_use]
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    pub async fn start(self) -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut store = Store::new(self.resources, self.history_limit);
        store.gc_enabled = self.gc;
        store.require_namespaces = self.require_namespaces;
        store.watch_list = self.watch_list;
        store.changes = self.record_changes.then(Vec::new);
        let issuer = self.service_account_issuer.unwrap_or_else(|| format!("http://{addr}"));
        store.issuer = Some(tokens::Issuer::new(issuer, self.api_audiences));
        let (changes, _) = watch::channel(0);
        let shared =
            Arc::new(Shared { store: Mutex::new(store), changes, bookmark_interval: self.bookmark_interval, addr });
        let router = http::router(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serving the API server double");
        });
        let server = ApiServer { inner: Arc::new(Inner { shared, task }) };
        for ns in &self.namespaces {
            server.create_namespace(ns, &[]);
        }
        server
    }
}

struct Inner {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.lock().watch_epoch += 1;
        self.shared.notify();
        self.task.abort();
    }
}

/// Returned by [`ApiServer::wait_for`] when the condition did not hold in time.
#[derive(Debug)]
pub struct WaitTimeout(pub Duration);

impl std::fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for WaitTimeout {}

/// A consistent read-only view of the server's state.
pub struct View<'a> {
    store: &'a Store,
}

fn type_of<K: kube::Resource<DynamicType = ()>>() -> String {
    let (group, plural) = (K::group(&()), K::plural(&()));
    if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") }
}

impl View<'_> {
    /// `resource` is `plural` or `plural.group`: `secrets`, `clientcredentials.tokensync.io`.
    pub fn get_json(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let rt = self.store.type_by_name(resource)?;
        self.store.get(rt, namespace, name).ok()
    }

    pub fn get<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let v = self.get_json(&type_of::<K>(), namespace, name)?;
        Some(serde_json::from_value(v).expect("stored object deserializes"))
    }

    /// Current objects, in key order; `namespace: None` lists all namespaces.
    pub fn list_json(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(rt) = self.store.type_by_name(resource) else { return Vec::new() };
        self.store
            .objects
            .iter()
            .filter(|(k, _)| k.group == rt.group && k.plural == rt.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| Store::present(rt, v))
            .collect()
    }

    pub fn list<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(&self, namespace: Option<&str>) -> Vec<K> {
        self.list_json(&type_of::<K>(), namespace)
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("stored object deserializes"))
            .collect()
    }

    pub fn requests(&self) -> &[RequestRecord] {
        &self.store.requests
    }

    /// Requests with this verb on this resource (plural) and subresource (`None`: the main
    /// resource), whatever their outcome.
    pub fn count(&self, verb: Verb, resource: &str, subresource: Option<&str>) -> usize {
        self.store
            .requests
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource && r.subresource.as_deref() == subresource)
            .count()
    }

    pub fn resource_version(&self) -> u64 {
        self.store.rv
    }

    /// Requests answered with a staged fault of this status ([`RequestRecord::injected`]).
    pub fn injected(&self, code: u16) -> usize {
        self.store.requests.iter().filter(|r| r.injected == Some(code)).count()
    }

    /// Every committed change, oldest first ([`Builder::record_changes`]; panics if off).
    pub fn changes(&self) -> &[Change] {
        self.store.changes.as_deref().expect("the server records changes (Builder::record_changes)")
    }

    /// Every state the object went through, oldest first: `None` where it was deleted
    /// ([`Builder::record_changes`]).
    pub fn versions<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<Version<K>> {
        let Some(rt) = self.store.type_by_name(&type_of::<K>()) else { return Vec::new() };
        let key = Store::key(rt, namespace, name);
        self.changes()
            .iter()
            .filter(|c| c.key == key)
            .map(|c| Version {
                rv: c.rv,
                at: c.at,
                object: (c.etype != EventType::Deleted).then(|| {
                    serde_json::from_value(Store::present(rt, &c.object)).expect("stored object deserializes")
                }),
            })
            .collect()
    }
}

/// One state of an object ([`View::versions`]).
#[derive(Clone, Debug)]
pub struct Version<K> {
    pub rv: u64,
    /// When it was stored.
    pub at: jiff::Timestamp,
    /// `None`: deleted.
    pub object: Option<K>,
}

/// A running API server double. Clones share the server; it stops when the last is dropped.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl ApiServer {
    /// Built-in resources plus tokensync's ClientCredential CRD.
    pub async fn start() -> Self {
        Self::builder().crd(&tokensync::api::crd()).start().await
    }

    pub fn builder() -> Builder {
        Builder {
            resources: builtin_resources(),
            history_limit: 10_000,
            gc: true,
            require_namespaces: true,
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"].map(String::from).to_vec(),
            bookmark_interval: Duration::from_secs(60),
            service_account_issuer: None,
            api_audiences: Vec::new(),
            watch_list: true,
            record_changes: false,
        }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared().addr)
    }

    /// A real `kube::Client` for this server (no auth, default namespace `default`).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("client for the API server double")
    }

    /// The configuration [`Self::client`] uses, for callers that build their own client.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("valid URL"))
    }

    /// Like [`Self::config`], with every request naming the client `name` (see
    /// [`Self::pause_client`]).
    pub fn config_named(&self, name: &str) -> kube::Config {
        let mut config = self.config();
        config.headers.push((
            axum::http::HeaderName::from_static(CLIENT_HEADER),
            axum::http::HeaderValue::from_str(name).expect("a client name is a valid header value"),
        ));
        config
    }

    /// A client whose requests name it `name` (see [`Self::pause_client`]).
    pub fn client_named(&self, name: &str) -> kube::Client {
        kube::Client::try_from(self.config_named(name)).expect("client for the API server double")
    }

    /// Runs `f` on a consistent view of the state.
    pub fn inspect<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> T {
        let store = self.shared().lock();
        f(&View { store: &store })
    }

    fn mutate<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut self.shared().lock());
        self.shared().notify();
        out
    }

    pub fn get<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        self.inspect(|v| v.get(namespace, name))
    }

    pub fn get_json(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.inspect(|v| v.get_json(resource, namespace, name))
    }

    pub fn list<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(&self, namespace: Option<&str>) -> Vec<K> {
        self.inspect(|v| v.list(namespace))
    }

    pub fn list_json(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        self.inspect(|v| v.list_json(resource, namespace))
    }

    /// Creates or replaces an object bypassing HTTP, faults and preconditions (status
    /// included, when the resource has a status subresource). Goes through the same write
    /// path as the API: resourceVersion, events, managedFields (manager
    /// [`DIRECT_MANAGER`]), garbage collection.
    pub fn put<K: kube::Resource<DynamicType = ()> + Serialize>(&self, obj: &K) -> Result<Value, ApiError> {
        self.put_json(&type_of::<K>(), serde_json::to_value(obj).expect("object serializes"))
    }

    pub fn put_json(&self, resource: &str, mut obj: Value) -> Result<Value, ApiError> {
        self.mutate(|store| {
            let rt = store.type_by_name(resource).cloned().ok_or_else(ApiError::no_route)?;
            let ctx = WriteCtx { manager: DIRECT_MANAGER.into(), dry_run: false, api_version: rt.api_version() };
            if obj.get("apiVersion").is_none() {
                obj["apiVersion"] = json!(rt.api_version());
                obj["kind"] = json!(rt.kind);
            }
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from);
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let key = Store::key(&rt, ns.as_deref(), &name);
            let mut result = match store.objects.get(&key).cloned() {
                None => store.create(&rt, ns.as_deref(), obj.clone(), &ctx, false)?,
                Some(live) => {
                    let mut body = obj.clone();
                    if body.pointer("/metadata/managedFields").is_none()
                        && let Some(mf) = live.pointer("/metadata/managedFields")
                    {
                        body["metadata"]["managedFields"] = mf.clone();
                    }
                    store.finish_update(&rt, &key, &live, body, None, Owner::Update(DIRECT_MANAGER.into()), &ctx)?
                }
            };
            if rt.status_subresource
                && obj.get("status").is_some()
                && let Some(live) = store.objects.get(&key).cloned()
            {
                let mut body = live.clone();
                body["status"] = obj["status"].clone();
                result = store.finish_update(
                    &rt,
                    &key,
                    &live,
                    body,
                    Some("status"),
                    Owner::Update(DIRECT_MANAGER.into()),
                    &ctx,
                )?;
            }
            Ok(result)
        })
    }

    /// Deletes like an API DELETE with background propagation (finalizers honoured).
    pub fn delete<K: kube::Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.delete_json(&type_of::<K>(), namespace, name)
    }

    pub fn delete_json(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.mutate(|store| {
            let rt = store.type_by_name(resource).cloned().ok_or_else(ApiError::no_route)?;
            store.delete(&rt, namespace, name, &DeleteOpts::default(), false)
        })
    }

    /// Creates a namespace with these labels (no-op if it exists).
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        if self.get_json("namespaces", None, name).is_some() {
            return;
        }
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.put_json(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
        )
        .expect("namespace created");
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inspect(|v| v.resource_version())
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inspect(|v| v.requests().to_vec())
    }

    /// See [`View::count`].
    pub fn count(&self, verb: Verb, resource: &str, subresource: Option<&str>) -> usize {
        self.inspect(|v| v.count(verb, resource, subresource))
    }

    /// The ServiceAccount tokens issued so far (TokenRequest), oldest first.
    pub fn issued_service_account_tokens(&self) -> Vec<String> {
        self.inspect(|v| v.store.issuer.as_ref().map(|i| i.issued.clone()).unwrap_or_default())
    }

    /// The ServiceAccount token issuer (`iss`).
    pub fn service_account_issuer(&self) -> String {
        self.inspect(|v| v.store.issuer.as_ref().map(|i| i.issuer.clone()).unwrap_or_default())
    }

    /// The shortest ServiceAccount token lifetime accepted (600 s by default, like a real
    /// server).
    pub fn set_min_token_expiration(&self, seconds: i64) {
        self.mutate(|s| {
            if let Some(i) = s.issuer.as_mut() {
                i.min_expiration = seconds;
            }
        });
    }

    pub fn clear_requests(&self) {
        self.mutate(|s| s.requests.clear());
    }

    /// Adds a fault rule; rules are matched in order and used up.
    pub fn inject(&self, fault: Fault) {
        self.mutate(|s| s.faults.push(fault));
    }

    /// How many more requests the injected fault rules will fail ([`Fault::times`] left,
    /// hanging rules not counted): 0 once every injected fault was used up.
    pub fn faults_left(&self) -> usize {
        self.inspect(|v| v.store.faults.iter().filter(|f| !f.hang).map(|f| f.times).sum())
    }

    /// See [`View::injected`].
    pub fn injected(&self, code: u16) -> usize {
        self.inspect(|v| v.injected(code))
    }

    /// The next `n` writes of any kind fail with `code` (before they change anything).
    pub fn fail_next_writes(&self, n: usize, code: u16) {
        self.inject(Fault::writes().code(code).times(n));
    }

    pub fn clear_faults(&self) {
        self.mutate(|s| s.faults.clear());
    }

    /// Ends every open watch stream cleanly (clients resume from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.mutate(|s| s.watch_epoch += 1);
    }

    /// The next `n` watch requests get a 410 Expired ERROR event and end.
    pub fn expire_next_watches(&self, n: usize) {
        self.mutate(|s| s.gone_watches += n);
    }

    /// Forgets the event history, like etcd compaction: watches (and continue tokens) from any
    /// earlier resourceVersion get 410 Expired. Open watches that are up to date go on.
    pub fn compact(&self) {
        self.mutate(Store::compact);
    }

    /// Sends a BOOKMARK on every open watch that allows bookmarks.
    pub fn send_bookmarks(&self) {
        self.mutate(|s| s.bookmark_epoch += 1);
    }

    /// Holds every new request (and watch event delivery) until [`Self::resume`].
    pub fn pause(&self) {
        self.mutate(|s| s.paused = true);
    }

    pub fn resume(&self) {
        self.mutate(|s| s.paused = false);
    }

    /// Holds back the watch events of one resource (plural name) while every request is
    /// still answered: clients' caches of it lag behind the server, as a slow or congested
    /// watch does on a real cluster. [`Self::release_watches`] delivers what was held.
    pub fn hold_watches(&self, resource: &str) {
        self.mutate(|s| {
            s.held_watches.insert(resource.to_owned());
        });
    }

    pub fn release_watches(&self, resource: &str) {
        self.mutate(|s| {
            s.held_watches.remove(resource);
        });
    }

    /// Cuts the client `name` ([`Self::client_named`]) off without an error, like a network
    /// partition or a connection to a dead server that never times out: its new requests
    /// hang (before they change anything) and its open watches deliver nothing, until
    /// [`Self::resume_client`]. Other clients go on.
    pub fn pause_client(&self, name: &str) {
        self.mutate(|s| s.paused_clients.insert(name.to_string()));
    }

    pub fn resume_client(&self, name: &str) {
        self.mutate(|s| s.paused_clients.remove(name));
    }

    /// Restarts the API server: every open watch ends, and the new watch cache keeps no
    /// history from before, so watches resuming from an earlier resourceVersion get 410
    /// Expired ("too old resource version: 41 (42)"). Each resource's watch cache is
    /// re-initialising: its first watch, and its first list that the real server cannot
    /// serve from etcd instead (a selector, or no limit), get 429 TooManyRequests "storage is
    /// (re)initializing" with `Retry-After: 1`, as kube-apiserver answers since 1.31
    /// ([`store::Store::initializing_cache`]).
    pub fn restart(&self) {
        self.mutate(|s| s.restart(None));
    }

    /// [`Self::restart`], and lists with "any" semantics (`resourceVersion=0`, what
    /// kube-rs's `ListSemantic::Any` and client-go's informers send) are served, until
    /// [`Self::cache_caught_up`], from a watch cache that is still at `at`, an older
    /// resourceVersion than the one watches are now refused at. A real control plane does
    /// this right after a restart (an API server whose cache lags, behind the same address):
    /// a client that relists with rv=0 after a 410 gets a version its next watch is refused
    /// at again. Consistent lists (no resourceVersion) and watches are served up to date.
    pub fn restart_with_lagging_cache(&self, at: u64) {
        self.mutate(|s| s.restart(Some(at)));
    }

    /// The lagging watch cache of [`Self::restart_with_lagging_cache`] has caught up.
    pub fn cache_caught_up(&self) {
        self.mutate(|s| s.lagging_cache = None);
    }

    /// Waits until `condition` holds on the state, re-checking on every change (no polling).
    pub async fn wait_for(
        &self,
        mut condition: impl FnMut(&View<'_>) -> bool,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_for_value(|v| condition(v).then_some(()), timeout).await
    }

    /// Waits until `probe` returns `Some`, re-checking on every change.
    pub async fn wait_for_value<T>(
        &self,
        mut probe: impl FnMut(&View<'_>) -> Option<T>,
        timeout: Duration,
    ) -> Result<T, WaitTimeout> {
        let mut rx = self.shared().changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(value) = self.inspect(&mut probe) {
                return Ok(value);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(WaitTimeout(timeout)) },
                _ = tokio::time::sleep_until(deadline) => return Err(WaitTimeout(timeout)),
            }
        }
    }
}

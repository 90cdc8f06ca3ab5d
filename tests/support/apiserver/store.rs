//! The object store: resourceVersions, event history, the write pipeline (create, update,
//! patch, apply, delete), field ownership and garbage collection.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::faults::{Fault, RequestRecord};
use super::fields::{
    FieldSet, ManagedEntry, apply_merge, display_path, get_path, record_update, remove_path, write_entries,
};
use super::resources::{ResourceType, Special};
use super::selectors::{FieldSelector, LabelSelector};

/// Manager the double uses for its own writes (garbage collector, namespace controller).
pub const GC_MANAGER: &str = "generic-garbage-collector";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub plural: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the bounded history that watches resume from.
#[derive(Clone, Debug)]
pub struct HistEvent {
    pub rv: u64,
    pub key: Key,
    pub etype: EventType,
    /// The object after the change (for DELETED: its last state, with the deletion's RV).
    pub object: Value,
    /// The object before the change.
    pub prev: Option<Value>,
}

/// One committed change, as recorded by [`Store::changes`] when the server keeps them
/// ([`super::Builder::record_changes`]): every state an object went through, with the wall
/// clock time it was stored at, so that a test can check what held at every moment instead of
/// at the moments it happened to wake up.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    /// When it was stored.
    pub at: jiff::Timestamp,
    pub key: Key,
    pub etype: EventType,
    /// The object after the change (for DELETED: its last state).
    pub object: Value,
}

/// How a write records field ownership.
#[derive(Clone, Debug)]
pub enum Owner {
    /// create / update / patch: changed fields move to the manager's `Update` entry.
    Update(String),
    /// server-side apply; the entries were computed by [`Store::apply`].
    Apply { manager: String, set_changed: bool },
}

/// Per-request write settings.
#[derive(Clone, Debug)]
pub struct WriteCtx {
    pub manager: String,
    pub dry_run: bool,
    /// apiVersion of the request, recorded in managedFields.
    pub api_version: String,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// The state a lagging watch cache serves: every object as of `rv`.
pub struct LaggingCache {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    /// The changes after `rv` up to the restart, which the cache delivers to watches it
    /// serves once it catches up.
    pub backlog: Vec<HistEvent>,
    /// The resourceVersion at the restart (the last of `backlog`, or `rv`).
    pub until: u64,
}

pub struct Store {
    pub types: Vec<ResourceType>,
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    pub history: VecDeque<HistEvent>,
    pub history_limit: usize,
    /// Highest RV no longer in the history: watches from older RVs get 410.
    pub evicted_rv: u64,
    pub requests: Vec<RequestRecord>,
    pub faults: Vec<Fault>,
    pub gone_watches: usize,
    pub watch_epoch: u64,
    pub bookmark_epoch: u64,
    pub paused: bool,
    /// Resources (plural names) whose watch events are held back: clients' caches of them lag.
    pub held_watches: std::collections::BTreeSet<String>,
    /// Clients (named by the [`super::CLIENT_HEADER`] header) whose requests and watch
    /// streams hang, as if their connection to the server were cut.
    pub paused_clients: BTreeSet<String>,
    /// A watch cache that lags behind storage after [`Store::restart`]: reads with "any"
    /// semantics (`resourceVersion=0`) are served from it.
    pub lagging_cache: Option<LaggingCache>,
    pub gc_enabled: bool,
    pub require_namespaces: bool,
    /// The WatchList feature gate (watch-list, "streaming lists"): on by default since
    /// Kubernetes 1.34 (and in 1.32), off in 1.27-1.31 and 1.33.
    pub watch_list: bool,
    /// The ServiceAccount token issuer (set when the server starts).
    pub issuer: Option<super::tokens::Issuer>,
    /// Every committed change, oldest first, when kept ([`super::Builder::record_changes`]);
    /// never compacted, unlike [`Store::history`].
    pub changes: Option<Vec<Change>>,
    /// Resources (plural names) whose watch cache is (re)initialising after
    /// [`Store::restart`]: see [`Store::initializing_cache`].
    pub initializing: BTreeSet<String>,
}

pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn new_uid() -> String {
    let b = rand::random::<u128>().to_be_bytes();
    let h = hex::encode(b);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).get(field).and_then(Value::as_str)
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn set_finalizers(obj: &mut Value, list: &[String]) {
    let m = meta_mut(obj);
    if list.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(list));
    }
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    meta(obj).get("ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

/// Everything but metadata (and status when it is a subresource): what `generation` tracks.
fn spec_content(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    v
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

impl Store {
    pub fn new(types: Vec<ResourceType>, history_limit: usize) -> Self {
        Self {
            types,
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit,
            evicted_rv: 0,
            requests: Vec::new(),
            faults: Vec::new(),
            gone_watches: 0,
            watch_epoch: 0,
            bookmark_epoch: 0,
            paused: false,
            held_watches: Default::default(),
            paused_clients: BTreeSet::new(),
            lagging_cache: None,
            watch_list: true,
            gc_enabled: true,
            require_namespaces: true,
            issuer: None,
            changes: None,
            initializing: BTreeSet::new(),
        }
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The first served version of a group/resource.
    pub fn type_for(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural)
    }

    /// `secrets`, `leases.coordination.k8s.io`, `clientcredentials.tokensync.io`.
    pub fn type_by_name(&self, group_resource: &str) -> Option<&ResourceType> {
        let (plural, group) = group_resource.split_once('.').unwrap_or((group_resource, ""));
        self.type_for(group, plural)
    }

    pub fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
        Key {
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: if rt.namespaced { namespace.unwrap_or_default().to_string() } else { String::new() },
            name: name.to_string(),
        }
    }

    /// The object as served for `rt`'s version: with apiVersion and kind.
    pub fn present(rt: &ResourceType, obj: &Value) -> Value {
        let mut v = obj.clone();
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), json!(rt.api_version()));
            m.insert("kind".into(), json!(rt.kind));
        }
        v
    }

    pub fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, namespace, name))
            .map(|o| Self::present(rt, o))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    // ---- commit and history -------------------------------------------------------------

    /// Stores `obj` (or deletes when `None`), assigning the next resourceVersion and
    /// recording the watch event.
    fn commit(&mut self, key: &Key, obj: Option<Value>) -> Value {
        match obj {
            Some(obj) => self.commit_as(key, Some(obj), None),
            None => self.commit_as(key, None, None),
        }
    }

    /// Like [`Self::commit`]; a delete may give the object's final state (e.g. with its last
    /// finalizer removed) for the DELETED event.
    fn commit_as(&mut self, key: &Key, obj: Option<Value>, final_state: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv.to_string();
        let prev = self.objects.get(key).cloned();
        let (etype, object) = match obj {
            Some(mut obj) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
                self.objects.insert(key.clone(), obj.clone());
                (if prev.is_some() { EventType::Modified } else { EventType::Added }, obj)
            }
            None => {
                let stored = self.objects.remove(key).expect("deleting a stored object");
                let mut last = final_state.unwrap_or(stored);
                meta_mut(&mut last).insert("resourceVersion".into(), json!(rv));
                (EventType::Deleted, last)
            }
        };
        if let Some(changes) = self.changes.as_mut() {
            let at = jiff::Timestamp::now();
            changes.push(Change { rv: self.rv, at, key: key.clone(), etype, object: object.clone() });
        }
        self.history.push_back(HistEvent { rv: self.rv, key: key.clone(), etype, object: object.clone(), prev });
        while self.history.len() > self.history_limit {
            if let Some(ev) = self.history.pop_front() {
                self.evicted_rv = ev.rv;
            }
        }
        object
    }

    /// Forgets all history: every watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.evicted_rv = self.rv;
    }

    /// Whether requests (and watch deliveries) of this client are held.
    pub fn is_paused(&self, client: Option<&str>) -> bool {
        self.paused || client.is_some_and(|c| self.paused_clients.contains(c))
    }

    /// Like an API server restart: open watches end (see [`super::ApiServer::restart`]),
    /// the new watch cache starts at the current resourceVersion, so every watch from an
    /// earlier one gets 410 Expired, and, with `lag_at`, lists with "any" semantics are
    /// served from the state as of that older resourceVersion until
    /// [`Store::lagging_cache`] is cleared. Without `lag_at`, every resource's watch cache
    /// is (re)initialising ([`Store::initializing_cache`]); a lagging cache is one that is
    /// already serving.
    pub fn restart(&mut self, lag_at: Option<u64>) {
        if lag_at.is_none() {
            self.initializing = self.types.iter().map(|t| t.plural.clone()).collect();
        }
        self.lagging_cache = lag_at.map(|at| {
            assert!(at >= self.evicted_rv && at <= self.rv, "a lagging cache at {at} is outside the history window");
            let mut objects = self.objects.clone();
            for ev in self.history.iter().rev().take_while(|e| e.rv > at) {
                match &ev.prev {
                    Some(prev) => objects.insert(ev.key.clone(), prev.clone()),
                    None => objects.remove(&ev.key),
                };
            }
            let backlog: Vec<HistEvent> = self.history.iter().filter(|e| e.rv > at).cloned().collect();
            LaggingCache { rv: at, objects, backlog, until: self.rv }
        });
        self.watch_epoch += 1;
        self.compact();
    }

    /// The 429 a watch or list gets while the resource's watch cache is (re)initialising
    /// after a restart, as kube-apiserver answers since ResilientWatchCacheInitialization
    /// (GA in 1.34; `k8s.io/apiserver` 1.36 `storage/cacher`: `Cacher.Watch`,
    /// `Cacher.GetList`, `CacheDelegator.GetList`): "storage is (re)initializing" with
    /// `Retry-After: 1` (the delay grows with the downtime, from 1 s). Gets and writes go to
    /// etcd, and so do lists without a label or field selector that have a limit (or a
    /// continue token, or an exact resourceVersion): those are served. The real cache is
    /// ready once its own initial list from etcd is done, which no client can see; here each
    /// resource's cache is ready once it has refused one request (`watch`: whether the
    /// request is a watch).
    pub fn initializing_cache(&mut self, rt: &ResourceType, watch: bool, q: &ListQuery) -> Option<ApiError> {
        if !self.initializing.contains(&rt.plural) {
            return None;
        }
        let to_etcd = q.continue_token.is_some()
            || q.resource_version_match.as_deref() == Some("Exact")
            || (q.labels.0.is_empty() && q.fields.0.is_empty() && q.limit.is_some_and(|l| l > 0));
        if !watch && to_etcd {
            return None;
        }
        self.initializing.remove(&rt.plural);
        Some(
            ApiError::new(429, "TooManyRequests", "storage is (re)initializing")
                .with_details(json!({"retryAfterSeconds": 1})),
        )
    }

    /// Whether a list is served from the (lagging) watch cache: `resourceVersion=0`
    /// (unset or `NotOlderThan` match) asks for "any" state, and the real server answers it
    /// from its watch cache without a quorum read, however far behind that cache is. An
    /// empty resourceVersion is a consistent read; `Exact` reads history.
    fn cache_serves(&self, q: &ListQuery) -> Option<&LaggingCache> {
        let any = q.resource_version.as_deref() == Some("0")
            && q.resource_version_match.as_deref().is_none_or(|m| m == "NotOlderThan");
        self.lagging_cache.as_ref().filter(|_| any && q.continue_token.is_none())
    }

    /// The objects of a resource as of `at` (exact, within the history window) or now.
    pub fn snapshot(&self, rt: &ResourceType, at: Option<u64>) -> Result<BTreeMap<Key, Value>, ApiError> {
        let mine = |k: &Key| k.group == rt.group && k.plural == rt.plural;
        let objs = self.snapshot_refs(&mine, at)?;
        Ok(objs.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The objects whose keys are `in_scope`, as of `at` or now, borrowed: a list page clones
    /// only the objects it returns, and objects of other namespaces cost it nothing but a
    /// key comparison (as in the real server, whose reads are by key prefix).
    fn snapshot_refs<'a>(
        &'a self,
        in_scope: &dyn Fn(&Key) -> bool,
        at: Option<u64>,
    ) -> Result<BTreeMap<&'a Key, &'a Value>, ApiError> {
        let mut objs: BTreeMap<&Key, &Value> = self.objects.iter().filter(|(k, _)| in_scope(k)).collect();
        if let Some(target) = at {
            if target < self.evicted_rv {
                return Err(ApiError::expired(format!("too old resource version: {target} ({})", self.evicted_rv)));
            }
            for ev in self.history.iter().rev().take_while(|e| e.rv > target).filter(|e| in_scope(&e.key)) {
                match (&ev.etype, &ev.prev) {
                    (EventType::Added, _) => {
                        objs.remove(&ev.key);
                    }
                    (_, Some(prev)) => {
                        objs.insert(&ev.key, prev);
                    }
                    (_, None) => {}
                }
            }
        }
        Ok(objs)
    }

    // ---- list ---------------------------------------------------------------------------

    /// One page of a list.
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>, q: &ListQuery) -> Result<ListPage, ApiError> {
        let (at, start) = match &q.continue_token {
            Some(token) => {
                let bad =
                    || ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion");
                let raw = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| bad())?;
                let t: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
                let rv = t.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
                if rv < self.evicted_rv {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (rv, t.get("start").and_then(Value::as_str).map(String::from))
            }
            None => {
                let exact = q.resource_version_match.as_deref() == Some("Exact");
                match q.resource_version.as_deref() {
                    Some(rv) if exact => (
                        rv.parse::<u64>()
                            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
                        None,
                    ),
                    _ => (self.rv, None),
                }
            }
        };
        let in_scope =
            |k: &Key| k.group == rt.group && k.plural == rt.plural && namespace.is_none_or(|ns| k.namespace == ns);
        let (at, snapshot) = match self.cache_serves(q) {
            // The watch cache ignores `limit` for these reads: the whole list in one page.
            Some(cache) => (cache.rv, cache.objects.iter().filter(|(k, _)| in_scope(k)).collect()),
            None => (at, self.snapshot_refs(&in_scope, Some(at).filter(|&a| a != self.rv))?),
        };
        let limit =
            if self.cache_serves(q).is_some() { usize::MAX } else { q.limit.filter(|&l| l > 0).unwrap_or(usize::MAX) };
        let selecting = !q.labels.0.is_empty() || !q.fields.0.is_empty();
        let mut matching = snapshot.into_iter().filter(|(k, v)| {
            start.as_ref().is_none_or(|s| format!("{}/{}", k.namespace, k.name) > *s)
                && q.labels.matches(v)
                && q.fields.matches(v)
        });
        let page: Vec<(&Key, &Value)> = matching.by_ref().take(limit).collect();
        let remaining = matching.count();
        let (cont, remaining_count) = match page.last() {
            Some((k, _)) if remaining > 0 => {
                let token = json!({"v": "meta.k8s.io/v1", "rv": at, "start": format!("{}/{}", k.namespace, k.name)});
                (Some(URL_SAFE_NO_PAD.encode(token.to_string())), (!selecting).then_some(remaining))
            }
            _ => (None, None),
        };
        let items = page.into_iter().map(|(_, v)| v.clone()).collect();
        Ok(ListPage { items, resource_version: at, continue_token: cont, remaining: remaining_count })
    }

    // ---- validation and normalisation -----------------------------------------------------

    fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        if !self.require_namespaces {
            return Ok(());
        }
        let Some(ns_type) = self.type_for("", "namespaces") else { return Ok(()) };
        match self.objects.get(&Self::key(ns_type, None, namespace)) {
            None => Err(ApiError::not_found(ns_type, namespace)),
            Some(ns) if meta(ns).get("deletionTimestamp").is_some() => Err(ApiError::new(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {namespace} because it is being terminated"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Server-side defaulting and the write-time conversions of built-in kinds.
    fn normalize(rt: &ResourceType, obj: &mut Value) {
        match rt.special {
            Special::Secret => {
                if let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                    if !obj.get("data").is_some_and(Value::is_object) {
                        obj["data"] = json!({});
                    }
                    for (k, v) in string_data {
                        let text = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
                        obj["data"][k] = json!(STANDARD.encode(text));
                    }
                }
                if obj.get("type").is_none_or(Value::is_null) {
                    obj["type"] = json!("Opaque");
                }
            }
            Special::Namespace => {
                let name = meta_str(obj, "name").unwrap_or_default().to_string();
                let m = meta_mut(obj);
                if !m.get("labels").is_some_and(Value::is_object) {
                    m.insert("labels".into(), json!({}));
                }
                m["labels"]["kubernetes.io/metadata.name"] = json!(name);
                if obj.pointer("/spec/finalizers").is_none() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
                if obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": "Active"});
                }
            }
            Special::None => {}
        }
    }

    fn validate(rt: &ResourceType, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = meta_str(new, "name").unwrap_or_default();
        let mut causes: Vec<(String, String)> = Vec::new();
        let mut bad = |field: &str, msg: String| causes.push((field.to_string(), msg));
        let name_ok = if rt.special == Special::Namespace { is_dns_label(name) } else { is_dns_subdomain(name) };
        if old.is_none() && !name_ok {
            bad(
                "metadata.name",
                format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                     alphanumeric characters, '-' or '.'"
                ),
            );
        }
        if let Some(labels) = meta(new).get("labels") {
            let ok = labels.as_object().is_some_and(|m| {
                m.iter().all(|(k, v)| {
                    let s = super::selectors::LabelSelector::parse(&format!("{k}={}", v.as_str().unwrap_or("!")));
                    v.is_string() && s.is_ok()
                })
            });
            if !ok {
                bad("metadata.labels", "Invalid value: label keys and values must be valid".into());
            }
        }
        if let Some(annotations) = meta(new).get("annotations")
            && !annotations.as_object().is_some_and(|m| m.values().all(Value::is_string))
        {
            bad("metadata.annotations", "Invalid value: annotation values must be strings".into());
        }
        let refs = owner_refs(new);
        for (i, r) in refs.iter().enumerate() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if r.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                    bad(&format!("metadata.ownerReferences[{i}].{field}"), "Required value".into());
                }
            }
        }
        if refs.iter().filter(|r| r.get("controller") == Some(&json!(true))).count() > 1 {
            bad("metadata.ownerReferences", "Invalid value: Only one reference can have Controller set to true".into());
        }
        if let Some(old) = old
            && meta(old).get("deletionTimestamp").is_some()
        {
            let before = finalizers(old);
            if finalizers(new).iter().any(|f| !before.contains(f)) {
                bad(
                    "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                );
            }
        }
        if rt.special == Special::Secret {
            if let Some(data) = new.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
                        bad(&format!("data[{k}]"), "Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'".into());
                    }
                    if v.as_str().is_none_or(|s| STANDARD.decode(s).is_err()) {
                        bad(&format!("data[{k}]"), "Invalid value: not valid base64".into());
                    }
                }
            }
            if let Some(old) = old {
                if old.get("type") != new.get("type") {
                    bad("type", "Invalid value: field is immutable".into());
                }
                if old.get("immutable") == Some(&json!(true))
                    && (old.get("data") != new.get("data") || new.get("immutable") != Some(&json!(true)))
                {
                    bad("data", "Forbidden: field is immutable when `immutable` is set".into());
                }
            }
        }
        if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(rt, name, &causes)) }
    }

    fn check_type_meta(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        let kind = obj.get("kind").and_then(Value::as_str);
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        match (kind, api_version) {
            (None, _) | (_, None) => Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{}'",
                serde_json::to_string(obj).unwrap_or_default()
            ))),
            (Some(k), Some(v)) if k != rt.kind || v.split('/').next() != rt.api_version().split('/').next() => {
                Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({})",
                    rt.api_version()
                )))
            }
            _ => Ok(()),
        }
    }

    // ---- create ---------------------------------------------------------------------------

    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        ctx: &WriteCtx,
        apply: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(rt, &obj)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request was in an unknown format"));
        }
        meta_mut(&mut obj);
        let ns = if rt.namespaced {
            let ns = namespace.ok_or_else(|| ApiError::from_code(405, "the server does not allow this method"))?;
            if let Some(body_ns) = meta_str(&obj, "namespace").filter(|n| !n.is_empty())
                && body_ns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta_mut(&mut obj).insert("namespace".into(), json!(ns));
            Some(ns)
        } else {
            meta_mut(&mut obj).remove("namespace");
            None
        };
        if meta_str(&obj, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => {
                    let prefix = prefix.to_string();
                    let mut candidate = format!("{prefix}{}", random_suffix());
                    while self.objects.contains_key(&Self::key(rt, ns, &candidate)) {
                        candidate = format!("{prefix}{}", random_suffix());
                    }
                    meta_mut(&mut obj).insert("name".into(), json!(candidate));
                    candidate
                }
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        &[("metadata.name".into(), "Required value: name or generateName is required".into())],
                    ));
                }
            },
        };
        if let Some(ns) = ns {
            self.check_namespace(ns)?;
        }
        let key = Self::key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        strip_nulls(&mut obj);
        if rt.custom && rt.status_subresource {
            obj.as_object_mut().expect("object").remove("status");
        }
        // An applier owns what it sent, not what the server defaults.
        let applied = apply.then(|| {
            let fields = FieldSet::of(rt, &obj);
            if rt.status_subresource { fields.restrict(false) } else { fields }
        });
        Self::normalize(rt, &mut obj);
        let now = now();
        {
            let m = meta_mut(&mut obj);
            for f in ["deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "generation", "selfLink"] {
                m.remove(f);
            }
            m.insert("uid".into(), json!(new_uid()));
            m.insert("creationTimestamp".into(), json!(now));
            if rt.custom {
                m.insert("generation".into(), json!(1));
            }
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let mut entries = Vec::new();
        if let Some(fields) = applied {
            if !fields.0.is_empty() {
                entries.push(ManagedEntry {
                    manager: ctx.manager.clone(),
                    operation: "Apply".into(),
                    api_version: ctx.api_version.clone(),
                    time: Some(now.clone()),
                    subresource: None,
                    fields,
                });
            }
        } else {
            record_update(rt, &mut entries, None, &obj, &ctx.manager, &ctx.api_version, None, &now);
        }
        write_entries(&mut obj, &entries);
        Self::validate(rt, &obj, None)?;
        if ctx.dry_run {
            return Ok(obj);
        }
        let stored = self.commit(&key, Some(obj));
        self.gc();
        Ok(Self::present(rt, &stored))
    }

    // ---- update (PUT, patches, apply, status) -----------------------------------------------

    /// The shared tail of every write to an existing object. `new` is the requested state.
    /// Returns the object as stored (or as it was, for a no-op).
    #[allow(clippy::too_many_arguments)]
    pub fn finish_update(
        &mut self,
        rt: &ResourceType,
        key: &Key,
        old: &Value,
        mut new: Value,
        subresource: Option<&str>,
        owner: Owner,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        if !new.is_object() {
            return Err(ApiError::bad_request("the body of the request was in an unknown format"));
        }
        strip_nulls(&mut new);
        Self::normalize(rt, &mut new);
        // Fields only the server sets.
        {
            let old_meta = meta(old).clone();
            let m = meta_mut(&mut new);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if subresource == Some("status") {
            // Only .status (and the ownership of it) changes.
            let status = new.get("status").cloned();
            let managed = meta(&new).get("managedFields").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
            match managed {
                Some(m) => meta_mut(&mut new).insert("managedFields".into(), m),
                None => meta_mut(&mut new).remove("managedFields"),
            };
        } else if rt.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        }
        Self::validate(rt, &new, Some(old))?;
        if let Some(generation) = meta(old).get("generation").and_then(Value::as_i64)
            && spec_content(rt, old) != spec_content(rt, &new)
        {
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        let now = now();
        let content_changed = without_managed_fields(old) != without_managed_fields(&new);
        match owner {
            Owner::Update(manager) => {
                let mut entries = ManagedEntry::parse_all(&new);
                record_update(rt, &mut entries, Some(old), &new, &manager, &ctx.api_version, subresource, &now);
                write_entries(&mut new, &entries);
            }
            Owner::Apply { manager, set_changed } => {
                if content_changed || set_changed {
                    let mut entries = ManagedEntry::parse_all(&new);
                    if let Some(e) = entries.iter_mut().find(|e| e.same_owner(&manager, "Apply", subresource)) {
                        e.time = Some(now.clone());
                    }
                    write_entries(&mut new, &entries);
                }
            }
        }
        if new == *old {
            return Ok(Self::present(rt, old));
        }
        let deleting = meta(&new).get("deletionTimestamp").is_some() && finalizers(&new).is_empty();
        if ctx.dry_run {
            return Ok(Self::present(rt, &new));
        }
        let stored = if deleting { self.commit_as(key, None, Some(new)) } else { self.commit(key, Some(new)) };
        self.gc();
        Ok(Self::present(rt, &stored))
    }

    fn live(&self, rt: &ResourceType, key: &Key) -> Result<Value, ApiError> {
        self.objects.get(key).cloned().ok_or_else(|| ApiError::not_found(rt, &key.name))
    }

    fn check_rv(rt: &ResourceType, live: &Value, requested: &Value) -> Result<(), ApiError> {
        if let Some(rv) = meta_str(requested, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != meta_str(live, "resourceVersion")
        {
            return Err(ApiError::stale(rt, meta_str(live, "name").unwrap_or_default()));
        }
        Ok(())
    }

    /// PUT (main resource or `status`).
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        mut body: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(rt, &body)?;
        match meta_str(&body, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if rt.namespaced
            && let Some(ns) = meta_str(&body, "namespace").filter(|n| !n.is_empty())
            && Some(ns) != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = Self::key(rt, namespace, name);
        let live = self.live(rt, &key)?;
        if let Some(uid) = meta_str(&body, "uid").filter(|u| !u.is_empty())
            && Some(uid) != meta_str(&live, "uid")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&live, "uid").unwrap_or_default()
                ),
            ));
        }
        if meta_str(&body, "resourceVersion").is_none_or(str::is_empty) && rt.custom {
            return Err(ApiError::invalid(
                rt,
                name,
                &[("metadata.resourceVersion".into(), "Invalid value: 0x0: must be specified for an update".into())],
            ));
        }
        Self::check_rv(rt, &live, &body)?;
        if meta(&body).get("managedFields").is_none()
            && let Some(mf) = meta(&live).get("managedFields")
        {
            meta_mut(&mut body).insert("managedFields".into(), mf.clone());
        }
        self.finish_update(rt, &key, &live, body, subresource, Owner::Update(ctx.manager.clone()), ctx)
    }

    /// Merge, JSON and strategic merge patches.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        content_type: &str,
        patch: &Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let live = self.live(rt, &key)?;
        let mut doc = Self::present(rt, &live);
        match content_type {
            "application/merge-patch+json" => json_patch::merge(&mut doc, patch),
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                json_patch::patch(&mut doc, &ops)
                    .map_err(|e| ApiError::new(422, "Invalid", format!("the server rejected our request: {e}")))?;
            }
            "application/strategic-merge-patch+json" => {
                if rt.custom {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                strategic_merge(rt, &mut Vec::new(), &mut doc, patch);
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format: {other}"),
                ));
            }
        }
        Self::check_rv(rt, &live, &doc)?;
        if let Some(uid) = meta_str(&doc, "uid")
            && Some(uid) != meta_str(&live, "uid")
        {
            return Err(ApiError::conflict(rt, name, "Precondition failed: UID mismatch"));
        }
        self.finish_update(rt, &key, &live, doc, subresource, Owner::Update(ctx.manager.clone()), ctx)
    }

    /// Server-side apply. Returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        mut config: Value,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), ApiError> {
        if ctx.manager.is_empty() {
            return Err(ApiError::invalid(
                rt,
                name,
                &[("fieldManager".into(), "Required value: is required for apply patch".into())],
            ));
        }
        Self::check_type_meta(rt, &config)?;
        match meta_str(&config, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if rt.namespaced
            && let Some(ns) = meta_str(&config, "namespace").filter(|n| !n.is_empty())
            && Some(ns) != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        strip_nulls(&mut config);
        if rt.special == Special::Secret {
            // Fold stringData before ownership is computed (see the module docs).
            let had_type = config.get("type").is_some();
            Self::normalize(rt, &mut config);
            if !had_type {
                config.as_object_mut().expect("object").remove("type");
            }
        }
        let key = Self::key(rt, namespace, name);
        let Some(live) = self.objects.get(&key).cloned() else {
            if subresource.is_some() {
                return Err(ApiError::not_found(rt, name));
            }
            // An apply carrying a resourceVersion creates an object that does not exist, as if
            // it carried none: kube-apiserver 1.36 answered 201 Created (measured with kubectl
            // apply --server-side), where this double used to answer 404.
            meta_mut(&mut config).remove("resourceVersion");
            meta_mut(&mut config).insert("name".into(), json!(name));
            return self.create(rt, namespace, config, ctx, true).map(|o| (o, true));
        };
        Self::check_rv(rt, &live, &config)?;
        {
            let m = meta_mut(&mut config);
            for f in [
                "uid",
                "resourceVersion",
                "managedFields",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
        }
        let status_write = subresource == Some("status");
        if rt.status_subresource
            && let Some(c) = config.as_object_mut()
        {
            if status_write {
                c.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
            } else {
                c.remove("status");
            }
        }
        let applied = FieldSet::of(rt, &config);
        let applied = if rt.status_subresource { applied.restrict(status_write) } else { applied };
        let mut entries = ManagedEntry::parse_all(&live);
        let is_me = |e: &ManagedEntry| e.same_owner(&ctx.manager, "Apply", subresource);
        let previous = entries.iter().find(|e| is_me(e)).map(|e| e.fields.clone()).unwrap_or_default();

        let mut conflicts: Vec<(usize, Vec<String>)> = Vec::new();
        for leaf in applied.leaves() {
            let live_value = get_path(&live, leaf);
            if live_value.is_none() || live_value == get_path(&config, leaf) {
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                if !is_me(e) && e.fields.contains(leaf) {
                    conflicts.push((i, leaf.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                let listed: Vec<(String, String)> =
                    conflicts.iter().map(|(i, p)| (entries[*i].manager.clone(), display_path(p))).collect();
                return Err(ApiError::apply_conflicts(rt, name, &listed));
            }
            for (i, p) in &conflicts {
                entries[*i].fields.0.remove(p);
            }
        }
        let others = entries.iter().filter(|e| !is_me(e)).fold(FieldSet::default(), |acc, e| acc.union(&e.fields));
        let keep = others.union(&applied);
        let mut new = live.clone();
        let mut removed: Vec<Vec<String>> = Vec::new();
        for path in previous.difference(&applied).0 {
            if removed.iter().any(|r| path.starts_with(r)) || keep.covers(&path) {
                continue;
            }
            if remove_path(&mut new, &path) {
                removed.push(path);
            }
        }
        apply_merge(rt, &mut new, &config);
        let set_changed = previous != applied;
        match entries.iter_mut().find(|e| is_me(e)) {
            Some(e) => {
                e.fields = applied;
                e.api_version = ctx.api_version.clone();
            }
            None => entries.push(ManagedEntry {
                manager: ctx.manager.clone(),
                operation: "Apply".into(),
                api_version: ctx.api_version.clone(),
                time: None,
                subresource: subresource.map(String::from),
                fields: applied,
            }),
        }
        entries.retain(|e| !e.fields.0.is_empty());
        write_entries(&mut new, &entries);
        let owner = Owner::Apply { manager: ctx.manager.clone(), set_changed };
        self.finish_update(rt, &key, &live, new, subresource, owner, ctx).map(|o| (o, false))
    }

    // ---- delete and garbage collection -------------------------------------------------------

    /// DELETE. Returns the response body: the object when it stays (finalizers), else a
    /// success Status.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let live = self.live(rt, &key)?;
        if let Some(uid) = &opts.precondition_uid
            && Some(uid.as_str()) != meta_str(&live, "uid")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&live, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && Some(rv.as_str()) != meta_str(&live, "resourceVersion")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&live, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        if dry_run {
            return Ok(Self::present(rt, &live));
        }
        let extra = match opts.propagation.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        let result = self.delete_key(rt, &key, extra);
        self.gc();
        Ok(result)
    }

    /// Deletes or marks for deletion, without running the collector.
    fn delete_key(&mut self, rt: &ResourceType, key: &Key, extra_finalizer: Option<&str>) -> Value {
        let live = self.objects.get(key).cloned().expect("deleting a stored object");
        let mut obj = live.clone();
        if rt.special == Special::Namespace {
            obj["status"]["phase"] = json!("Terminating");
        }
        if let Some(f) = extra_finalizer
            && meta(&obj).get("deletionTimestamp").is_none()
            && self.has_dependents(meta_str(&obj, "uid").unwrap_or_default())
        {
            let mut list = finalizers(&obj);
            if !list.iter().any(|x| x == f) {
                list.push(f.to_string());
            }
            set_finalizers(&mut obj, &list);
        }
        let namespace_pending = rt.special == Special::Namespace
            && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if finalizers(&obj).is_empty() && !namespace_pending {
            let last = self.commit(key, None);
            return json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": key.name, "group": rt.group, "kind": rt.plural, "uid": meta_str(&last, "uid")},
            });
        }
        if meta(&obj).get("deletionTimestamp").is_none() {
            let m = meta_mut(&mut obj);
            m.insert("deletionTimestamp".into(), json!(now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                m.insert("generation".into(), json!(g + 1));
            }
        }
        if obj == live {
            return Self::present(rt, &live);
        }
        let stored = self.commit(key, Some(obj));
        Self::present(rt, &stored)
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.objects.values().any(|o| owner_refs(o).iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
    }

    /// Internal update by the double's controllers (garbage collector, namespace lifecycle).
    fn controller_update(&mut self, key: &Key, change: impl FnOnce(&mut Value)) {
        let Some(rt) = self.type_for(&key.group, &key.plural).cloned() else { return };
        let Some(live) = self.objects.get(key).cloned() else { return };
        let mut new = live.clone();
        change(&mut new);
        let ctx = WriteCtx { manager: GC_MANAGER.into(), dry_run: false, api_version: rt.api_version() };
        let mut entries = ManagedEntry::parse_all(&new);
        record_update(&rt, &mut entries, Some(&live), &new, GC_MANAGER, &ctx.api_version, None, &now());
        write_entries(&mut new, &entries);
        if new == live {
            return;
        }
        if meta(&new).get("deletionTimestamp").is_some()
            && finalizers(&new).is_empty()
            && !(rt.special == Special::Namespace
                && new.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty()))
        {
            self.commit_as(key, None, Some(new));
        } else {
            self.commit(key, Some(new));
        }
    }

    /// Background garbage collection and namespace termination, run after every write until
    /// nothing changes: dependents whose owners are all gone are deleted, dangling owner
    /// references of dependents with a remaining owner are removed, `foregroundDeletion` and
    /// `orphan` finalizers are processed, terminating namespaces are emptied and removed.
    pub fn gc(&mut self) {
        if !self.gc_enabled {
            return;
        }
        for _ in 0..1000 {
            let uids: HashMap<String, Key> = self
                .objects
                .iter()
                .filter_map(|(k, v)| meta_str(v, "uid").map(|u| (u.to_string(), k.clone())))
                .collect();
            let mut action: Option<(Key, Action)> = None;
            'scan: for (key, obj) in &self.objects {
                let deleting = meta(obj).get("deletionTimestamp").is_some();
                let uid = meta_str(obj, "uid").unwrap_or_default();
                let fins = finalizers(obj);
                if deleting && key.group.is_empty() && key.plural == "namespaces" {
                    let content = self
                        .objects
                        .iter()
                        .filter(|(k, _)| k.namespace == key.name)
                        .find(|(_, o)| meta(o).get("deletionTimestamp").is_none());
                    if let Some((k, _)) = content {
                        action = Some((k.clone(), Action::Delete));
                        break 'scan;
                    }
                    let empty = !self.objects.keys().any(|k| k.namespace == key.name);
                    if empty && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
                    {
                        action = Some((key.clone(), Action::FinalizeNamespace));
                        break 'scan;
                    }
                }
                let dependents: Vec<&Key> = if deleting {
                    self.objects
                        .iter()
                        .filter(|(_, o)| {
                            owner_refs(o).iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                        })
                        .map(|(k, _)| k)
                        .collect()
                } else {
                    Vec::new()
                };
                if deleting && fins.iter().any(|f| f == "orphan") {
                    if let Some(dep) = dependents.first() {
                        action = Some(((*dep).clone(), Action::RemoveOwner(uid.to_string())));
                    } else {
                        action = Some((key.clone(), Action::RemoveFinalizer("orphan")));
                    }
                    break 'scan;
                }
                if deleting && fins.iter().any(|f| f == "foregroundDeletion") {
                    let pending = dependents
                        .iter()
                        .find(|k| self.objects.get(*k).is_some_and(|o| meta(o).get("deletionTimestamp").is_none()));
                    if let Some(dep) = pending {
                        action = Some(((*dep).clone(), Action::Delete));
                        break 'scan;
                    }
                    if dependents.is_empty() {
                        action = Some((key.clone(), Action::RemoveFinalizer("foregroundDeletion")));
                        break 'scan;
                    }
                }
                let refs = owner_refs(obj);
                if refs.is_empty() {
                    continue;
                }
                let present = |r: &Value| {
                    r.get("uid")
                        .and_then(Value::as_str)
                        .and_then(|u| uids.get(u))
                        .is_some_and(|owner| owner.namespace.is_empty() || owner.namespace == key.namespace)
                };
                let alive = refs.iter().filter(|r| present(r)).count();
                if alive == 0 {
                    if !deleting {
                        action = Some((key.clone(), Action::Delete));
                        break 'scan;
                    }
                } else if alive < refs.len() {
                    let dangling: Vec<String> = refs
                        .iter()
                        .filter(|r| !present(r))
                        .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                        .collect();
                    action = Some((key.clone(), Action::RemoveOwners(dangling)));
                    break 'scan;
                }
            }
            let Some((key, action)) = action else { return };
            match action {
                Action::Delete => {
                    if let Some(rt) = self.type_for(&key.group, &key.plural).cloned() {
                        self.delete_key(&rt, &key, None);
                    }
                }
                Action::RemoveOwner(uid) => self.controller_update(&key, |o| remove_owner_refs(o, &[uid])),
                Action::RemoveOwners(uids) => self.controller_update(&key, |o| remove_owner_refs(o, &uids)),
                Action::RemoveFinalizer(f) => self.controller_update(&key, |o| {
                    let list: Vec<String> = finalizers(o).into_iter().filter(|x| x != f).collect();
                    set_finalizers(o, &list);
                }),
                Action::FinalizeNamespace => self.controller_update(&key, |o| {
                    o["spec"]["finalizers"] = json!([]);
                }),
            }
        }
    }
}

enum Action {
    Delete,
    RemoveOwner(String),
    RemoveOwners(Vec<String>),
    RemoveFinalizer(&'static str),
    FinalizeNamespace,
}

fn remove_owner_refs(obj: &mut Value, uids: &[String]) {
    let refs: Vec<Value> = owner_refs(obj)
        .into_iter()
        .filter(|r| !r.get("uid").and_then(Value::as_str).is_some_and(|u| uids.iter().any(|x| x == u)))
        .collect();
    let m = meta_mut(obj);
    if refs.is_empty() {
        m.remove("ownerReferences");
    } else {
        m.insert("ownerReferences".into(), Value::Array(refs));
    }
}

/// Strategic merge patch, reduced to what tokensync's objects need: a JSON merge patch in
/// which lists declared as maps (`metadata.ownerReferences` by uid, CRD list-type map) merge
/// by key, sets (`metadata.finalizers`) union, and `$patch: delete` in a keyed item removes it.
fn strategic_merge(rt: &ResourceType, names: &mut Vec<String>, target: &mut Value, patch: &Value) {
    use super::resources::ListType;
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if k.starts_with('$') {
                    continue;
                }
                if pv.is_null() {
                    t.remove(k);
                    continue;
                }
                names.push(k.clone());
                match t.get_mut(k) {
                    Some(tv) => strategic_merge(rt, names, tv, pv),
                    None => {
                        let mut fresh = pv.clone();
                        strip_nulls(&mut fresh);
                        t.insert(k.clone(), fresh);
                    }
                }
                names.pop();
            }
        }
        (Value::Array(t), Value::Array(p)) => match rt.list_type(&names.join(".")) {
            ListType::Map(keys) => {
                for item in p {
                    let pos = t.iter().position(|x| keys.iter().all(|k| x.get(k) == item.get(k)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            t.remove(i);
                        }
                        (Some(i), false) => strategic_merge(rt, names, &mut t[i], item),
                        (None, false) => t.push(item.clone()),
                        (None, true) => {}
                    }
                }
            }
            ListType::Set => {
                for item in p {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListType::Atomic => *t = p.clone(),
        },
        (target, patch) => *target = patch.clone(),
    }
}

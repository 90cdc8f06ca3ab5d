//! The REST surface: routing, content negotiation, verbs, watch streams, discovery.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::errors::ApiError;
use super::faults::{RequestRecord, Verb};
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{DeleteOpts, EventType, HistEvent, ListQuery, Store, WriteCtx};
use super::{CLIENT_HEADER, Shared};

const APPLY: &str = "application/apply-patch+yaml";
const AGGREGATED: &str = "as=APIGroupDiscoveryList";

pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A Status error; a `retryAfterSeconds` in its details is also sent as `Retry-After`, as
/// the real server's `responsewriters.ErrorNegotiated` does.
fn error_response(e: &ApiError) -> Response {
    let mut response = json_response(e.code, &e.to_status());
    if let Some(after) = e.details.as_ref().and_then(|d| d.get("retryAfterSeconds")).and_then(Value::as_u64)
        && after > 0
    {
        response.headers_mut().insert(header::RETRY_AFTER, after.into());
    }
    response
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Full,
    /// `as=PartialObjectMetadata` / `as=PartialObjectMetadataList`.
    Metadata,
}

fn parse_accept(headers: &HeaderMap) -> Result<Output, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Output::Full);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        match params.get("as") {
            None => return Ok(Output::Full),
            Some(&"PartialObjectMetadata" | &"PartialObjectMetadataList")
                if params.get("g") == Some(&"meta.k8s.io") && params.get("v") == Some(&"v1") =>
            {
                return Ok(Output::Metadata);
            }
            _ => continue,
        }
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, \
         application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, \
         application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
    ))
}

fn as_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// An object as sent to this client.
fn render(rt: &ResourceType, obj: &Value, output: Output) -> Value {
    let full = Store::present(rt, obj);
    match output {
        Output::Full => full,
        Output::Metadata => as_metadata(&full),
    }
}

/// A list item: built-in kinds' list items carry no apiVersion/kind, custom resources' do.
fn render_item(rt: &ResourceType, obj: &Value, output: Output) -> Value {
    let mut v = render(rt, obj, output);
    if output == Output::Full
        && !rt.custom
        && let Some(m) = v.as_object_mut()
    {
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn user_agent_manager(headers: &HeaderMap) -> String {
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    ua.split('/').next().unwrap_or_default().chars().take(128).collect()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = headers.get(CLIENT_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
    shared.wait_unpaused(client.as_deref()).await;
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let aggregated = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(AGGREGATED));
    if method == Method::GET {
        let store = shared.lock();
        match segs.as_slice() {
            ["version"] => return json_response(200, &version_info()),
            [".well-known", "openid-configuration"] => {
                let external = format!("http://{}", shared.addr);
                return match &store.issuer {
                    Some(i) => json_response(200, &i.discovery(&external)),
                    None => error_response(&ApiError::no_route()),
                };
            }
            ["openid", "v1", "jwks"] => {
                return match &store.issuer {
                    Some(i) => json_response(200, &i.jwks()),
                    None => error_response(&ApiError::no_route()),
                };
            }
            ["api"] if aggregated => return discovery_aggregated(&store, true),
            ["apis"] if aggregated => return discovery_aggregated(&store, false),
            ["api"] => {
                return json_response(
                    200,
                    &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}
                    ]}),
                );
            }
            ["apis"] => return json_response(200, &group_list(&store)),
            ["api", "v1"] => return resource_list(&store, "", "v1"),
            ["apis", g, v] => return resource_list(&store, g, v),
            _ => {}
        }
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return error_response(&ApiError::no_route()),
    };
    let Some(target) = resolve(&shared.lock(), group, version, rest) else {
        return error_response(&ApiError::no_route());
    };
    resource(shared, target, method, query, headers, body).await
}

struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn resolve(store: &Store, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let target = |rt: &ResourceType, ns: Option<&str>, tail: &[&str]| {
        if tail.len() > 2 {
            return None;
        }
        let subresource = tail.get(1).map(|s| s.to_string());
        let token = |s: &str| s == "token" && rt.group.is_empty() && rt.plural == "serviceaccounts";
        if subresource.as_deref().is_some_and(|s| !(token(s) || (s == "status" && rt.status_subresource))) {
            return None;
        }
        Some(Target {
            rt: rt.clone(),
            namespace: ns.map(String::from),
            name: tail.first().map(|s| s.to_string()),
            subresource,
        })
    };
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(rt) = store.find_type(group, version, plural).filter(|rt| rt.namespaced)
    {
        return target(rt, Some(ns), tail);
    }
    let [plural, tail @ ..] = rest else { return None };
    let rt = store.find_type(group, version, plural)?;
    if rt.namespaced && !tail.is_empty() {
        return None;
    }
    target(rt, None, tail)
}

fn parse_body(body: &Bytes, yaml_ok: bool) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if yaml_ok => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request(format!("invalid body: {e}")))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        Err(e) => Err(ApiError::bad_request(format!("the body of the request was in an unknown format: {e}"))),
    }
}

async fn resource(
    shared: Arc<Shared>,
    t: Target,
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let output = match parse_accept(&headers) {
        Ok(o) => o,
        Err(e) => return error_response(&e),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    let watching = query_bool(&query, "watch").unwrap_or(false);
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, false) if watching => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::GET, true) => Verb::Get,
        (&Method::POST, false) if t.namespace.is_some() || !t.rt.namespaced => Verb::Create,
        (&Method::POST, true) if t.subresource.as_deref() == Some("token") => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) if content_type == APPLY => Verb::Apply,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the server does not allow this method on the requested resource ({method})"),
            ));
        }
    };
    let field_manager =
        query.get("fieldManager").cloned().or_else(|| verb.is_write().then(|| user_agent_manager(&headers)));
    let mut record = RequestRecord {
        verb,
        group: t.rt.group.clone(),
        resource: t.rt.plural.clone(),
        subresource: t.subresource.clone(),
        namespace: t.namespace.clone(),
        // For a create, the name in the body (when it has one).
        name: t.name.clone().or_else(|| {
            let body: Value = serde_json::from_slice(&body).ok()?;
            body.pointer("/metadata/name").and_then(Value::as_str).map(String::from)
        }),
        field_manager: field_manager.clone(),
        patch_type: (method == Method::PATCH).then(|| content_type.clone()),
        code: 200,
        changed: false,
        metadata_only: output == Output::Metadata,
        label_selector: query.get("labelSelector").cloned(),
        client: headers.get(CLIENT_HEADER).and_then(|v| v.to_str().ok()).map(String::from),
        resource_version: query.get("resourceVersion").cloned(),
        send_initial_events: query.get("sendInitialEvents").cloned(),
        injected: None,
    };
    shared.wait_while(|store| store.faults.iter().any(|f| f.hang && f.matches(&record))).await;
    if verb == Verb::Watch {
        return start_watch(shared, t, query, output, record);
    }
    let ctx = WriteCtx {
        manager: field_manager.unwrap_or_default(),
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        api_version: t.rt.api_version(),
    };
    let response = {
        let mut store = shared.lock();
        let rv_before = store.rv;
        let fault = take_fault(&mut store, &record);
        record.injected = fault.as_ref().map(|f| f.1.code);
        let result = match &fault {
            Some(f) if !f.0 => Err(f.1.clone()),
            _ => dispatch(&mut store, verb, &t, &query, &content_type, &body, &ctx, output),
        };
        let result = match fault {
            Some((true, e)) => Err(e),
            _ => result,
        };
        record.changed = store.rv != rv_before;
        let (code, response) = match result {
            Ok((code, body)) => (code, json_response(code, &body)),
            Err(e) => (e.code, error_response(&e)),
        };
        record.code = code;
        store.requests.push(record);
        response
    };
    shared.notify();
    response
}

/// The first matching fault rule, used up by one: `(after_write, error)`.
fn take_fault(store: &mut Store, record: &RequestRecord) -> Option<(bool, ApiError)> {
    let i = store.faults.iter().position(|f| !f.hang && f.times > 0 && f.matches(record))?;
    let f = &mut store.faults[i];
    f.times -= 1;
    let out = (f.after_write, ApiError::from_code(f.code, f.message.clone()));
    store.faults.retain(|f| f.hang || f.times > 0);
    Some(out)
}

/// A boolean query parameter as the real server converts it (`Convert_Slice_string_To_bool`):
/// absent is `None`; "0" and "false" (any case) are false; any other value, "" included, true.
fn query_bool(query: &HashMap<String, String>, key: &str) -> Option<bool> {
    query.get(key).map(|v| !(v == "0" || v.eq_ignore_ascii_case("false")))
}

/// The options of a list, watch or deletecollection as the real handler sees them after
/// `SetListOptionsDefaults` (with the WatchList feature gate on, a watch without
/// `sendInitialEvents` and `resourceVersionMatch` from "" or "0" becomes a watch-list:
/// `sendInitialEvents=true&resourceVersionMatch=NotOlderThan`) and `ValidateListOptions`
/// (apimachinery meta/internalversion/validation), whose errors are a 422.
#[derive(Debug)]
struct ListOptions {
    resource_version: String,
    send_initial_events: Option<bool>,
    allow_bookmarks: bool,
}

fn list_options(query: &HashMap<String, String>, watch: bool, watch_list: bool) -> Result<ListOptions, ApiError> {
    let rv = query.get("resourceVersion").cloned().unwrap_or_default();
    let mut version_match = query.get("resourceVersionMatch").cloned().unwrap_or_default();
    let mut send_initial_events = query_bool(query, "sendInitialEvents");
    let continued = query.get("continue").is_some_and(|c| !c.is_empty());
    if watch_list && watch && send_initial_events.is_none() && version_match.is_empty() && (rv.is_empty() || rv == "0")
    {
        send_initial_events = Some(true);
        version_match = "NotOlderThan".into();
    }
    const RVM: &str = "resourceVersionMatch";
    type FieldError = (&'static str, &'static str, String);
    let forbidden =
        |field, detail: &str| -> FieldError { (field, "FieldValueForbidden", format!("Forbidden: {detail}")) };
    let not_supported = |value: &str, supported: &[&str]| -> FieldError {
        let listed = supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        (RVM, "FieldValueNotSupported", format!("Unsupported value: {value:?}: supported values: {listed}"))
    };
    // In the order validation.go appends them.
    let m = version_match.as_str();
    let mut errors: Vec<FieldError> = Vec::new();
    if watch {
        if send_initial_events.is_some() {
            if m != "NotOlderThan" {
                errors.push(forbidden(RVM, "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
            }
            if !watch_list {
                errors.push(forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                ));
            }
        }
        if !m.is_empty() {
            if send_initial_events.is_none() {
                errors.push(forbidden(
                    RVM,
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if m != "NotOlderThan" {
                errors.push(not_supported(m, &["NotOlderThan"]));
            }
            if continued {
                errors.push(forbidden(RVM, "resourceVersionMatch is forbidden when continue is provided"));
            }
        }
    } else {
        if !m.is_empty() {
            if rv.is_empty() {
                errors.push(forbidden(RVM, "resourceVersionMatch is forbidden unless resourceVersion is provided"));
            }
            if continued {
                errors.push(forbidden(RVM, "resourceVersionMatch is forbidden when continue is provided"));
            }
            if m != "Exact" && m != "NotOlderThan" {
                errors.push(not_supported(m, &["Exact", "NotOlderThan", ""]));
            }
            if m == "Exact" && rv == "0" {
                errors.push(forbidden(RVM, "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
            }
        }
        if send_initial_events.is_some() {
            errors.push(forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_list_options(&errors));
    }
    Ok(ListOptions {
        resource_version: rv,
        send_initial_events,
        allow_bookmarks: query_bool(query, "allowWatchBookmarks").unwrap_or(false),
    })
}

fn list_query(rt: &ResourceType, query: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    Ok(ListQuery {
        labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default(), rt)
            .map_err(ApiError::bad_request)?,
        limit: match query.get("limit") {
            Some(l) => Some(l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?),
            None => None,
        },
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: query.get("resourceVersion").filter(|c| !c.is_empty()).cloned(),
        resource_version_match: query.get("resourceVersionMatch").filter(|c| !c.is_empty()).cloned(),
    })
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    store: &mut Store,
    verb: Verb,
    t: &Target,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
    ctx: &WriteCtx,
    output: Output,
) -> Result<(u16, Value), ApiError> {
    let rt = &t.rt;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or_default();
    let sub = t.subresource.as_deref();
    let one = |obj: Value| render(rt, &obj, output);
    match verb {
        Verb::Get => store.get(rt, ns, name).map(|o| (200, one(o))),
        Verb::List => {
            list_options(query, false, store.watch_list)?;
            let q = list_query(rt, query)?;
            if let Some(e) = store.initializing_cache(rt, false, &q) {
                return Err(e);
            }
            let page = store.list(rt, ns, &q)?;
            let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = page.continue_token {
                metadata["continue"] = json!(c);
            }
            if let Some(r) = page.remaining {
                metadata["remainingItemCount"] = json!(r);
            }
            let (kind, api_version) = match output {
                Output::Full => (format!("{}List", rt.kind), rt.api_version()),
                Output::Metadata => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1".into()),
            };
            let items: Vec<Value> = page.items.iter().map(|o| render_item(rt, o, output)).collect();
            Ok((200, json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items})))
        }
        Verb::Create if sub == Some("token") => {
            let request = parse_body(body, false)?;
            let account = store.get(rt, ns, name)?;
            let issuer = store.issuer.as_mut().ok_or_else(ApiError::no_route)?;
            issuer.token_request(ns.unwrap_or_default(), &account, &request).map(|o| (201, o))
        }
        Verb::Create => {
            let obj = parse_body(body, false)?;
            store.create(rt, ns, obj, ctx, false).map(|o| (201, one(o)))
        }
        Verb::Update => {
            let obj = parse_body(body, false)?;
            store.replace(rt, ns, name, sub, obj, ctx).map(|o| (200, one(o)))
        }
        Verb::Patch => {
            let patch = parse_body(body, false)?;
            if query.contains_key("force") {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    &[("force".into(), "Forbidden: may not be specified for non-apply patch".into())],
                ));
            }
            store.patch(rt, ns, name, sub, content_type, &patch, ctx).map(|o| (200, one(o)))
        }
        Verb::Apply => {
            let config = parse_body(body, true)?;
            let force = query.get("force").is_some_and(|f| f == "true");
            store
                .apply(rt, ns, name, sub, config, force, ctx)
                .map(|(o, created)| (if created { 201 } else { 200 }, one(o)))
        }
        Verb::Delete => {
            let opts = delete_opts(body, query)?;
            let result = store.delete(rt, ns, name, &opts, ctx.dry_run)?;
            Ok((200, if result["kind"] == "Status" { result } else { one(result) }))
        }
        Verb::DeleteCollection => {
            list_options(query, false, store.watch_list)?;
            let opts = delete_opts(body, query)?;
            let q = ListQuery { limit: None, continue_token: None, ..list_query(rt, query)? };
            let page = store.list(rt, ns, &q)?;
            let mut deleted = Vec::new();
            for item in page.items {
                let item_name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let item_ns = item["metadata"]["namespace"].as_str().map(String::from);
                store.delete(rt, item_ns.as_deref(), &item_name, &opts, ctx.dry_run)?;
                deleted.push(render_item(rt, &item, output));
            }
            let rv = store.rv.to_string();
            Ok((
                200,
                json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                       "metadata": {"resourceVersion": rv}, "items": deleted}),
            ))
        }
        Verb::Watch => unreachable!("watches are streamed"),
    }
}

fn delete_opts(body: &Bytes, query: &HashMap<String, String>) -> Result<DeleteOpts, ApiError> {
    let options = if body.is_empty() { json!({}) } else { parse_body(body, false)? };
    Ok(DeleteOpts {
        propagation: options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| query.get("propagationPolicy").cloned()),
        precondition_uid: options.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from),
        precondition_rv: options.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(String::from),
    })
}

// ---- watch --------------------------------------------------------------------------------

struct WatchFilter {
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    output: Output,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event this watcher sees for a change, if any. An object that stops matching the
    /// selectors is DELETED for the watcher, one that starts matching is ADDED (as the real
    /// watch cache does).
    fn translate(&self, ev: &HistEvent) -> Option<Value> {
        if ev.key.group != self.rt.group || ev.key.plural != self.rt.plural {
            return None;
        }
        if self.namespace.as_ref().is_some_and(|ns| *ns != ev.key.namespace) {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        let etype = match ev.etype {
            EventType::Added if now => "ADDED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => {
                // Leaving the selection: the real watch cache sends the previous object (the
                // one that matched) at the change's resourceVersion
                // (`cacheWatcher.convertToWatchEvent`), not the object that no longer matches.
                let mut prev = ev.prev.clone().expect("a previous object");
                prev["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
                return Some(self.event("DELETED", &prev));
            }
            EventType::Deleted if now => "DELETED",
            _ => return None,
        };
        Some(self.event(etype, &ev.object))
    }

    /// ADDED for every object of the resource that matches, as the state a watch starts with.
    fn initial_events(&self, store: &Store) -> Vec<Bytes> {
        store
            .objects
            .iter()
            .filter(|(k, _)| k.group == self.rt.group && k.plural == self.rt.plural)
            .filter(|(k, _)| self.namespace.as_ref().is_none_or(|ns| *ns == k.namespace))
            .filter(|(_, obj)| self.matches(obj))
            .map(|(_, obj)| line(&self.event("ADDED", obj)))
            .collect()
    }

    fn event(&self, etype: &str, obj: &Value) -> Value {
        json!({"type": etype, "object": render(&self.rt, obj, self.output)})
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let (kind, api_version) = match self.output {
            Output::Full => (self.rt.kind.clone(), self.rt.api_version()),
            Output::Metadata => ("PartialObjectMetadata".into(), "meta.k8s.io/v1".into()),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": metadata}})
    }
}

fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).expect("JSON");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn gone_event(message: String) -> Value {
    json!({"type": "ERROR", "object": ApiError::expired(message).to_status()})
}

/// How long a watch-list waits for a resourceVersion the server has not reached
/// (`blockTimeout` of `k8s.io/apiserver` `storage/cacher/watch_cache.go`).
const FRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The ERROR event of a watch-list whose resourceVersion the server did not reach within
/// [`FRESH_WAIT`] (`storage.NewTooLargeResourceVersionError`, retry after 1 s; a
/// `NewTimeoutError`, whose message starts with "Timeout: ").
fn too_large_event(wanted: u64, current: u64) -> Value {
    let e = ApiError::new(504, "Timeout", format!("Timeout: Too large resource version: {wanted}, current: {current}"))
        .with_details(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                             "retryAfterSeconds": 1}),
        );
    json!({"type": "ERROR", "object": e.to_status()})
}

struct WatchStream {
    shared: Arc<Shared>,
    filter: WatchFilter,
    cursor: u64,
    deadline: Instant,
    epoch: u64,
    bookmark_epoch: u64,
    bookmarks: bool,
    /// The client's name ([`CLIENT_HEADER`]): its stream stalls while the client is paused.
    client: Option<String>,
    /// Served by a lagging watch cache: its backlog (the changes up to the restart) and the
    /// version the backlog ends at, delivered once the cache has caught up.
    lagging: Option<(Vec<HistEvent>, u64)>,
    /// A watch-list waiting for the server to reach this resourceVersion, until the deadline.
    until_fresh: Option<(u64, Instant)>,
    /// Whether the initial events end with a bookmark (watch-list with bookmarks).
    initial_end: bool,
    next_bookmark: Instant,
    pending: VecDeque<Bytes>,
    done: bool,
    rx: watch::Receiver<u64>,
}

impl WatchStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            {
                let store = self.shared.lock();
                if store.watch_epoch != self.epoch {
                    return None;
                }
                if let Some((n, deadline)) = self.until_fresh {
                    if store.rv >= n {
                        self.until_fresh = None;
                        self.pending.extend(self.filter.initial_events(&store));
                        if self.initial_end {
                            self.pending.push_back(line(&self.filter.bookmark(store.rv, true)));
                        }
                        self.cursor = store.rv;
                    } else if Instant::now() >= deadline {
                        self.pending.push_back(line(&too_large_event(n, store.rv)));
                        self.done = true;
                        continue;
                    }
                }
                let lagging = self.lagging.is_some() && store.lagging_cache.is_some();
                if let Some((backlog, until)) = self.lagging.take_if(|_| !lagging) {
                    for ev in backlog.iter().filter(|e| e.rv > self.cursor) {
                        if let Some(event) = self.filter.translate(ev) {
                            self.pending.push_back(line(&event));
                        }
                    }
                    self.cursor = self.cursor.max(until);
                }
                if self.until_fresh.is_none()
                    && !lagging
                    && !store.is_paused(self.client.as_deref())
                    && !store.held_watches.contains(&self.filter.rt.plural)
                {
                    if self.cursor < store.evicted_rv {
                        let msg = format!("too old resource version: {} ({})", self.cursor, store.evicted_rv);
                        self.pending.push_back(line(&gone_event(msg)));
                        self.done = true;
                        continue;
                    }
                    let start = store.history.partition_point(|e| e.rv <= self.cursor);
                    for ev in store.history.range(start..) {
                        if let Some(event) = self.filter.translate(ev) {
                            self.pending.push_back(line(&event));
                        }
                    }
                    self.cursor = self.cursor.max(store.rv);
                    if self.bookmarks && store.bookmark_epoch != self.bookmark_epoch {
                        self.pending.push_back(line(&self.filter.bookmark(self.cursor, false)));
                    }
                    self.bookmark_epoch = store.bookmark_epoch;
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            let (deadline, next_bookmark, bookmarks) = (self.deadline, self.next_bookmark, self.bookmarks);
            let fresh_deadline = self.until_fresh.map(|(_, at)| at);
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep_until(deadline) => self.done = true,
                _ = tokio::time::sleep_until(fresh_deadline.unwrap_or(deadline)), if fresh_deadline.is_some() => {}
                _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                    self.pending.push_back(line(&self.filter.bookmark(self.cursor, false)));
                    self.next_bookmark = Instant::now() + self.shared.bookmark_interval;
                }
            }
        }
    }
}

/// Where a watch starts.
enum Start {
    /// Events after this resourceVersion (410 if the history no longer reaches back to it).
    From(u64),
    /// The current state: ADDED for every matching object, then events after it.
    State,
    /// The state a lagging watch cache still serves ("any", `resourceVersion=0`, after
    /// [`super::ApiServer::restart_with_lagging_cache`]): its objects, then its backlog once it
    /// has caught up.
    Lagging { with_state: bool },
    /// A watch-list from a resourceVersion the server has not reached: it waits up to
    /// [`FRESH_WAIT`] for it, then starts, or gets a 504 "Too large resource version" ERROR
    /// event.
    TooLarge(u64),
}

fn start_watch(
    shared: Arc<Shared>,
    t: Target,
    query: HashMap<String, String>,
    output: Output,
    mut record: RequestRecord,
) -> Response {
    let parsed = (|| -> Result<_, ApiError> {
        let opts = list_options(&query, true, shared.lock().watch_list)?;
        let q = list_query(&t.rt, &query)?;
        let timeout = match query.get("timeoutSeconds") {
            Some(s) => s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s}")))?,
            None => 1800,
        };
        Ok((opts, q, timeout))
    })();
    let (opts, q, timeout) = match parsed {
        Ok(p) => p,
        Err(e) => {
            record.code = e.code;
            shared.lock().requests.push(record);
            shared.notify();
            return error_response(&e);
        }
    };
    let bookmarks = opts.allow_bookmarks;
    let rv = opts.resource_version.clone();
    let client = record.client.clone();
    let filter =
        WatchFilter { rt: t.rt.clone(), namespace: t.namespace.clone(), labels: q.labels, fields: q.fields, output };
    let mut pending = VecDeque::new();
    let mut done = false;
    let mut lagging = None;
    let mut until_fresh = None;
    let initial_end = opts.send_initial_events == Some(true) && bookmarks;
    let (cursor, epoch, bookmark_epoch) = {
        let mut store = shared.lock();
        if let Some((_, e)) = take_fault(&mut store, &record) {
            record.code = e.code;
            record.injected = Some(e.code);
            store.requests.push(record);
            drop(store);
            shared.notify();
            return error_response(&e);
        }
        let parse_rv =
            |rv: &str| rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")));
        // The resourceVersion semantics of the real watch cache (cacher.go: Watch,
        // getStartResourceVersionForWatchLockedFunc, getBookmarkAfterResourceVersionLockedFunc,
        // waitUntilWatchCacheFreshAndForceAllEvents).
        let start = match (opts.send_initial_events, rv.as_str()) {
            // Watch-list, consistent: the state now.
            (Some(true), "") => Ok(Start::State),
            // Watch-list, "any": whatever state the watch cache holds.
            (Some(true), "0") if store.lagging_cache.is_some() => Ok(Start::Lagging { with_state: true }),
            (Some(true), "0") => Ok(Start::State),
            // Watch-list, not older than N: once the cache has reached N, its state then.
            (Some(true), n) => parse_rv(n).map(|n| if n > store.rv { Start::TooLarge(n) } else { Start::State }),
            // sendInitialEvents=false: no initial state; from the most recent version, any
            // version, or exactly N.
            (Some(false), "") => Ok(Start::From(store.rv)),
            (Some(false), "0") if store.lagging_cache.is_some() => Ok(Start::Lagging { with_state: false }),
            (Some(false), "0") => Ok(Start::From(store.rv)),
            // Legacy watches (the WatchList gate off, or a resourceVersion other than "" and
            // "0"): "Get State and Start at Most Recent/Any", or exactly from N.
            (None, "" | "0") => Ok(Start::State),
            (_, n) => parse_rv(n).map(Start::From),
        };
        let start = match start.and_then(|s| match store.initializing_cache(&t.rt, true, &ListQuery::default()) {
            Some(e) => Err(e),
            None => Ok(s),
        }) {
            Ok(s) => s,
            Err(e) => {
                record.code = e.code;
                store.requests.push(record);
                drop(store);
                shared.notify();
                return error_response(&e);
            }
        };
        let gone = store.gone_watches > 0;
        if gone {
            store.gone_watches -= 1;
            record.injected = Some(410);
        }
        store.requests.push(record);
        let mut cursor = store.rv;
        if gone {
            pending.push_back(line(&gone_event(format!("too old resource version: {rv} ({})", store.rv))));
            done = true;
        } else {
            match start {
                Start::State => {
                    pending.extend(filter.initial_events(&store));
                    if initial_end {
                        pending.push_back(line(&filter.bookmark(store.rv, true)));
                    }
                }
                Start::Lagging { with_state } => {
                    let cache = store.lagging_cache.as_ref().expect("a lagging cache");
                    cursor = cache.rv;
                    if with_state {
                        for (k, obj) in &cache.objects {
                            if k.group == t.rt.group
                                && k.plural == t.rt.plural
                                && filter.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
                                && filter.matches(obj)
                            {
                                pending.push_back(line(&filter.event("ADDED", obj)));
                            }
                        }
                        if initial_end {
                            pending.push_back(line(&filter.bookmark(cache.rv, true)));
                        }
                    }
                    lagging = Some((cache.backlog.clone(), cache.until));
                }
                Start::TooLarge(n) => until_fresh = Some((n, Instant::now() + FRESH_WAIT)),
                Start::From(n) if n < store.evicted_rv => {
                    let msg = format!("too old resource version: {n} ({})", store.evicted_rv);
                    pending.push_back(line(&gone_event(msg)));
                    done = true;
                }
                Start::From(n) => cursor = n,
            }
        }
        (cursor, store.watch_epoch, store.bookmark_epoch)
    };
    shared.notify();
    let now = Instant::now();
    let stream = WatchStream {
        rx: shared.changes.subscribe(),
        next_bookmark: now + shared.bookmark_interval,
        shared,
        filter,
        cursor,
        deadline: now + std::time::Duration::from_secs(timeout),
        epoch,
        bookmark_epoch,
        bookmarks,
        client,
        lagging,
        until_fresh,
        initial_end,
        pending,
        done,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, WatchStream::next));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---- discovery ----------------------------------------------------------------------------

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "36", "gitVersion": "v1.36.0", "gitCommit": "apiserver-double",
        "gitTreeState": "clean", "buildDate": "2026-04-22T00:00:00Z", "goVersion": "go1.26.0",
        "compiler": "gc", "platform": "linux/amd64"
    })
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for rt in store.types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == rt.group) {
            Some((_, versions)) if !versions.contains(&rt.version) => versions.push(rt.version.clone()),
            Some(_) => {}
            None => groups.push((rt.group.clone(), vec![rt.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> =
                versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Response {
    let types: Vec<&ResourceType> = store.types.iter().filter(|t| t.group == group && t.version == version).collect();
    if types.is_empty() {
        return error_response(&ApiError::no_route());
    }
    let mut resources = Vec::new();
    for rt in types {
        resources.push(json!({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": VERBS}));
        if rt.status_subresource {
            resources.push(json!({"name": format!("{}/status", rt.plural), "singularName": "",
                                  "namespaced": rt.namespaced, "kind": rt.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json_response(
        200,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn discovery_aggregated(store: &Store, core: bool) -> Response {
    // group -> version -> resources
    type Versions = Vec<(String, Vec<Value>)>;
    let mut groups: Vec<(String, Versions)> = Vec::new();
    for rt in store.types.iter().filter(|t| t.group.is_empty() == core) {
        let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let mut res = json!({"resource": rt.plural, "responseKind": kind, "singularResource": rt.singular,
                             "scope": if rt.namespaced { "Namespaced" } else { "Cluster" }, "verbs": VERBS});
        if rt.status_subresource {
            res["subresources"] =
                json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
        }
        let g = match groups.iter_mut().position(|(g, _)| *g == rt.group) {
            Some(i) => &mut groups[i].1,
            None => {
                groups.push((rt.group.clone(), Vec::new()));
                &mut groups.last_mut().expect("pushed").1
            }
        };
        match g.iter_mut().find(|(v, _)| *v == rt.version) {
            Some((_, list)) => list.push(res),
            None => g.push((rt.version.clone(), vec![res])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(v, resources)| json!({"version": v, "resources": resources, "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")],
        body.to_string(),
    )
        .into_response()
}

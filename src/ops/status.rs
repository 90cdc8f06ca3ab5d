//! `tokensync status NAME`: one credential as an operator needs to see it — conditions,
//! token times, failures, target Secret keys, recent Events and the JWT claims of the
//! published token — like `cmctl status certificate`.
//!
//! Only the object itself must be readable: the target Secret, the state Secret and the
//! Events are extras, and a refusal to read one of them is printed in its place (naming
//! the permission) instead of failing the whole command.

use std::fmt::Write as _;

use base64::Engine;
use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{Connection, Kind, KubeArgs, OpsError, api_error, is_missing_object, when};
use crate::api::{ClientCredential, ClientCredentialSpec, ClientCredentialStatus, ClusterClientCredential};
use crate::controller::{labels, state};

/// Arguments of `tokensync status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The credential: NAME (a ClientCredential) or TYPE/NAME, e.g.
    /// clusterclientcredential/NAME.
    pub object: String,

    /// How many of the most recent Events to show.
    #[arg(long, default_value_t = 10)]
    pub events: usize,

    #[command(flatten)]
    pub kube: KubeArgs,
}

/// A ClusterClientCredential's namespaces.
struct FanOut {
    selected: i32,
    synced: i32,
    failed: i32,
    /// (namespace, why), the first few.
    failures: Vec<(String, String)>,
}

/// What `status` shows, read from the cluster.
struct Object {
    kind: Kind,
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    generation: Option<i64>,
    spec: ClientCredentialSpec,
    status: Option<ClientCredentialStatus>,
    /// ClusterClientCredential: how the fan-out to the selected namespaces went.
    fan_out: Option<FanOut>,
    /// Where the state Secret and the Events are.
    state_secret: (String, String),
    events_namespace: String,
}

/// Runs `status` and returns what to print.
pub async fn run(args: &StatusArgs) -> Result<String, OpsError> {
    let (kind, name) = super::parse_object(&args.object)?;
    let conn = super::connect(&args.kube).await?;
    status(&conn, kind, &name, args.events, Timestamp::now()).await
}

/// The status report of one credential, as of `now`.
pub async fn status(
    conn: &Connection,
    kind: Kind,
    name: &str,
    events: usize,
    now: Timestamp,
) -> Result<String, OpsError> {
    let object = fetch(conn, kind, name).await?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "Name:        {}", object.name);
    if let Some(ns) = &object.namespace {
        let _ = writeln!(w, "Namespace:   {ns}");
    }
    let _ = writeln!(w, "Kind:        {}", kind.as_str());
    let status = object.status.clone().unwrap_or_default();
    write_conditions(w, &status, object.generation);
    write_token(w, &status, now);
    write_failures(w, &status, now);
    write_targets(w, conn, &object).await;
    write_claims(w, conn, &object, now).await;
    write_events(w, conn, &object, events, now).await;
    Ok(out)
}

async fn fetch(conn: &Connection, kind: Kind, name: &str) -> Result<Object, OpsError> {
    let not_found = |e: kube::Error, namespace: Option<&str>| match is_missing_object(&e) {
        Some(true) => {
            OpsError::NotFound { kind: kind.as_str(), name: name.to_owned(), namespace: namespace.map(str::to_owned) }
        }
        Some(false) => OpsError::NoCrd { kind: kind.as_str(), plural: kind.plural() },
        None => api_error(conn, e, "get", kind.plural(), namespace),
    };
    match kind {
        Kind::ClientCredential => {
            let ns = conn.namespace.as_str();
            let api: Api<ClientCredential> = Api::namespaced(conn.client.clone(), ns);
            let cc = api.get(name).await.map_err(|e| not_found(e, Some(ns)))?;
            Ok(Object {
                kind,
                name: name.to_owned(),
                namespace: Some(ns.to_owned()),
                uid: cc.uid(),
                generation: cc.metadata.generation,
                state_secret: (ns.to_owned(), labels::state_secret_name(name)),
                events_namespace: ns.to_owned(),
                spec: cc.spec,
                status: cc.status,
                fan_out: None,
            })
        }
        Kind::ClusterClientCredential => {
            let api: Api<ClusterClientCredential> = Api::all(conn.client.clone());
            let ccc = api.get(name).await.map_err(|e| not_found(e, None))?;
            let credentials_ns = ccc.spec.token.home_namespace().unwrap_or_default().to_owned();
            let status = ccc.status.clone();
            Ok(Object {
                kind,
                name: name.to_owned(),
                namespace: None,
                uid: ccc.uid(),
                generation: ccc.metadata.generation,
                state_secret: (credentials_ns, labels::cluster_state_secret_name(name)),
                // kube's event recorder files Events about cluster-scoped objects in "default".
                events_namespace: "default".to_owned(),
                spec: ccc.spec.token,
                status: status.as_ref().map(|s| s.credential.clone()),
                fan_out: status.map(|s| FanOut {
                    selected: s.selected_namespaces.unwrap_or(0),
                    synced: s.synced_namespaces.unwrap_or(0),
                    failed: s.failed_namespaces.unwrap_or(0),
                    failures: s.namespace_failures.into_iter().map(|f| (f.namespace, f.message)).collect(),
                }),
            })
        }
    }
}

fn write_conditions(w: &mut String, status: &ClientCredentialStatus, generation: Option<i64>) {
    let find = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    for type_ in [crate::controller::status::READY, crate::controller::status::DEGRADED] {
        match find(type_) {
            Some(c) => {
                let _ = writeln!(
                    w,
                    "{:<13}{} ({}): {}{}",
                    format!("{type_}:"),
                    c.status,
                    c.reason,
                    c.message,
                    stale(c, generation)
                );
            }
            None => {
                let _ = writeln!(w, "{:<13}Unknown: the controller has not reported on it yet", format!("{type_}:"));
            }
        }
    }
}

/// A note when a condition describes an older generation of the spec.
fn stale(c: &Condition, generation: Option<i64>) -> String {
    match (c.observed_generation, generation) {
        (Some(seen), Some(current)) if seen < current => {
            format!(" [observed generation {seen}; the spec is at {current}: the controller has not caught up]")
        }
        _ => String::new(),
    }
}

fn write_token(w: &mut String, status: &ClientCredentialStatus, now: Timestamp) {
    let Some(expires) = &status.expires_at else {
        let _ = writeln!(w, "Token:       none published yet");
        return;
    };
    let _ = writeln!(w, "Token:");
    if let Some(t) = &status.token_type {
        let _ = writeln!(w, "  Type:      {t}");
    }
    if let Some(s) = &status.scope {
        let _ = writeln!(w, "  Scope:     {s}");
    }
    if let Some(issued) = &status.last_refresh_time {
        let _ = writeln!(w, "  Issued:    {}", when(issued.0, now));
    }
    let _ = writeln!(w, "  Expires:   {}", when(expires.0, now));
    match &status.renew_at {
        Some(r) => {
            let _ = writeln!(w, "  Renews:    {}", when(r.0, now));
        }
        None => {
            let _ =
                writeln!(w, "  Renews:    not scheduled (suspended, or waiting for a change to the spec or Secret)");
        }
    }
}

fn write_failures(w: &mut String, status: &ClientCredentialStatus, now: Timestamp) {
    let attempts = status.failed_attempts.unwrap_or(0);
    if attempts == 0 {
        let _ = writeln!(w, "Failures:    none since the last successful renewal");
        return;
    }
    let _ = writeln!(w, "Failures:    {attempts} failed attempt(s) since the last successful renewal");
    if let Some(t) = &status.last_failure_time {
        let _ = writeln!(w, "  Last:      {}", when(t.0, now));
    }
    if let Some(r) = &status.renew_at {
        let _ = writeln!(w, "  Next try:  {}", when(r.0, now));
    }
    if let Some(s) = status.retry_after_seconds {
        // The endpoint's Retry-After, or the maximum backoff after a permanent error.
        let _ = writeln!(
            w,
            "  Waits at least {} after a failure (Retry-After or backoff cap)",
            super::short_duration(s.max(0) as u64)
        );
    }
}

/// The target Secret's keys (a ClientCredential's, read from the cluster), or for a
/// ClusterClientCredential the keys its copies get and how the fan-out went.
async fn write_targets(w: &mut String, conn: &Connection, object: &Object) {
    let status = object.status.clone().unwrap_or_default();
    let target = status
        .target_secret_name
        .clone()
        .or_else(|| object.spec.target.name.clone())
        .unwrap_or_else(|| object.name.clone());
    let spec_keys = || -> Vec<String> {
        match &object.spec.target.template {
            Some(t) => t.keys().cloned().collect(),
            None => ["access_token", "expires_at", "token_type"].map(String::from).to_vec(),
        }
    };
    match (&object.namespace, &object.fan_out) {
        (Some(ns), _) => {
            let api: Api<Secret> = Api::namespaced(conn.client.clone(), ns);
            match api.get_opt(&target).await {
                Ok(Some(secret)) => {
                    // Only the key names leave this function; the values are dropped here.
                    let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
                    let _ = writeln!(w, "Target:      Secret {ns}/{target} (keys: {})", keys.join(", "));
                }
                Ok(None) => {
                    let _ = writeln!(w, "Target:      Secret {ns}/{target} does not exist (yet)");
                }
                Err(e) => {
                    let _ = writeln!(
                        w,
                        "Target:      Secret {ns}/{target}: {}",
                        api_error(conn, e, "get", "secrets", Some(ns))
                    );
                }
            }
        }
        (None, fan_out) => {
            let _ = writeln!(
                w,
                "Target:      Secret {target} in each selected namespace (keys: {})",
                spec_keys().join(", ")
            );
            if let Some(f) = fan_out {
                let _ = writeln!(w, "Namespaces:  {} selected, {} synced, {} failed", f.selected, f.synced, f.failed);
                for (ns, message) in &f.failures {
                    let _ = writeln!(w, "  {ns}: {message}");
                }
            }
        }
    }
}

/// The JWT claims an operator checks (issuer, subject, audience, scope, expiry), decoded
/// locally from the token in the state Secret. The token itself never leaves the
/// `SecretString`; only the listed claims are printed.
async fn write_claims(w: &mut String, conn: &Connection, object: &Object, now: Timestamp) {
    let (ns, name) = &object.state_secret;
    let api: Api<Secret> = Api::namespaced(conn.client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            let _ = writeln!(w, "JWT claims:  not shown: {}", api_error(conn, e, "get", "secrets", Some(ns)));
            return;
        }
    };
    let Some(stored) = state::read(&secret) else { return };
    match jwt_claims(stored.access_token.expose_secret()) {
        None => {
            let _ = writeln!(w, "JWT claims:  none (the access token is not a JWT)");
        }
        Some(claims) => {
            let _ = writeln!(w, "JWT claims:");
            for (claim, value) in claims {
                let value = match (claim, value.as_i64()) {
                    ("exp" | "iat" | "nbf", Some(t)) => {
                        Timestamp::from_second(t).map(|t| when(t, now)).unwrap_or_else(|_| t.to_string())
                    }
                    _ => claim_text(&value),
                };
                let _ = writeln!(w, "  {claim:<5}     {value}");
            }
        }
    }
}

/// The claims of a JWT that say whose token it is and for what; signature, header and
/// every other claim are left out.
fn jwt_claims(token: &str) -> Option<Vec<(&'static str, Value)>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let shown = ["iss", "sub", "aud", "azp", "scope", "scp", "iat", "exp"];
    Some(shown.into_iter().filter_map(|c| claims.get(c).map(|v| (c, v.clone()))).collect())
}

fn claim_text(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(claim_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    };
    // One line, bounded: a claim is for reading, not for pasting.
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

async fn write_events(w: &mut String, conn: &Connection, object: &Object, limit: usize, now: Timestamp) {
    let ns = object.events_namespace.as_str();
    let api: Api<Event> = Api::namespaced(conn.client.clone(), ns);
    let events = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            let _ =
                writeln!(w, "Events:      not shown: {}", api_error(conn, e, "list", "events.events.k8s.io", Some(ns)));
            return;
        }
    };
    let kind = object.kind.as_str();
    let mut ours: Vec<(Timestamp, Event)> = events
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some(kind)
                    && r.name.as_deref() == Some(object.name.as_str())
                    && (r.uid.is_none() || object.uid.is_none() || r.uid == object.uid)
            })
        })
        .map(|e| (event_time(&e), e))
        .collect();
    if ours.is_empty() {
        let _ = writeln!(w, "Events:      none");
        return;
    }
    ours.sort_by_key(|(t, _)| *t);
    let skip = ours.len().saturating_sub(limit);
    let _ = writeln!(w, "Events:");
    let _ = writeln!(w, "  {:<8} {:<26} {:<10} Message", "Type", "Reason", "Age");
    for (t, e) in ours.into_iter().skip(skip) {
        let count = e.series.as_ref().map(|s| format!(" (x{})", s.count)).unwrap_or_default();
        let age = super::short_duration(now.as_second().saturating_sub(t.as_second()).max(0) as u64);
        let _ = writeln!(
            w,
            "  {:<8} {:<26} {:<10} {}{count}",
            e.type_.as_deref().unwrap_or_default(),
            e.reason.as_deref().unwrap_or_default(),
            age,
            e.note.as_deref().unwrap_or_default()
        );
    }
}

/// When an Event last happened: its series' last observation, else its time.
fn event_time(e: &Event) -> Timestamp {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.meta().creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: Value) -> String {
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b64(&serde_json::json!({"alg": "RS256"})), b64(&claims))
    }

    #[test]
    fn only_the_identifying_claims_of_a_jwt_are_shown() {
        let token = jwt(serde_json::json!({"iss": "https://idp", "aud": ["a", "b"], "secret_thing": "x", "exp": 5}));
        let claims = jwt_claims(&token).unwrap();
        let names: Vec<_> = claims.iter().map(|(c, _)| *c).collect();
        assert_eq!(names, ["iss", "aud", "exp"]);
        assert_eq!(claim_text(&claims[1].1), "a, b");
        assert!(jwt_claims("opaque-token").is_none());
    }
}

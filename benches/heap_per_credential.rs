//! Where the controller's memory goes, per credential: the heap bytes each structure the
//! controller keeps for one ClientCredential holds, counted by dhat's allocator (exact, not
//! sampled: live bytes after building 1,000 of each, divided by 1,000).
//!
//! `cargo bench --bench heap-per-credential` prints a table (docs/performance.md, "Memory").
//! The objects are shaped as the bench (`tokensync-bench`) creates them on a real API server:
//! a ClientCredential with a source Secret and default target, status after its first token,
//! tokens of the length the bench's token server issues (`--token-bytes` for real JWT-sized
//! tokens, which add their length to what the state Secret holds).

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;
use tokensync::api::ClientCredential;
use tokensync::controller::context::{WriteMemo, Written};
use tokensync::controller::managed::CachedSecret;
use tokensync::controller::sources::{SecretRef, SourceCache, SourceIndex};
use tokensync::controller::{labels, state, status, target};
use tokensync::metrics::{CredentialLabels, Metrics};
use tokensync::token_state::StoredToken;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const N: usize = 1000;

fn live() -> usize {
    dhat::HeapStats::get().curr_bytes
}

/// Heap bytes per object that `build` keeps alive, over N objects.
fn per_object<T>(mut build: impl FnMut(usize) -> T) -> (usize, Vec<T>) {
    let before = live();
    let kept: Vec<T> = Vec::with_capacity(N);
    let vec_bytes = live() - before;
    let mut kept = kept;
    for i in 0..N {
        kept.push(build(i));
    }
    let bytes = live() - before - vec_bytes;
    (bytes / N, kept)
}

fn credential(i: usize) -> ClientCredential {
    let name = format!("bench-{i:06}");
    serde_json::from_value(json!({
        "apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
        "metadata": {
            "name": name, "namespace": "tokensync-bench", "uid": format!("0c9f1a52-7d3e-4b8a-9c1e-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i), "generation": 1,
            "creationTimestamp": "2026-12-07T03:00:00Z",
        },
        "spec": {"tokenEndpoint": "http://127.0.0.1:40123/token", "credentialsRef": {"name": format!("{name}-client")},
                 "clientAuthentication": "client_secret_post"},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "the token is published in Secret bench",
                 "lastTransitionTime": "2026-12-07T03:00:01Z", "observedGeneration": 1},
                {"type": "Degraded", "status": "False", "reason": "Healthy", "message": "the last token request succeeded",
                 "lastTransitionTime": "2026-12-07T03:00:01Z", "observedGeneration": 1},
            ],
            "expiresAt": "2026-12-07T04:00:01Z", "renewAt": "2026-12-07T03:42:11Z",
            "lastRefreshTime": "2026-12-07T03:00:01Z", "targetSecretName": name,
        }
    }))
    .unwrap()
}

fn stored(i: usize, token_bytes: usize) -> StoredToken {
    let token = format!("bench-{i:06}.1{}", "x".repeat(token_bytes.saturating_sub(14)));
    StoredToken {
        access_token: token.into(),
        token_type: "Bearer".into(),
        scope: None,
        issued_at: Timestamp::from_second(1_796_526_001).unwrap(),
        expires_at: Timestamp::from_second(1_796_529_601).unwrap(),
        refresh_token: None,
        inputs: "a3f1".repeat(16),
        bootstrap: None,
        renewal_request: None,
        bound_certificate: None,
    }
}

/// A Secret as the API server returns it: with uid and resourceVersion.
fn as_stored(mut secret: Secret, i: usize) -> Secret {
    secret.metadata.uid = Some(format!("5e2d8c41-0a7b-4f6e-8d2c-{i:012}"));
    secret.metadata.resource_version = Some(format!("{}", 200_000 + i));
    secret
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let token_bytes = std::env::args()
        .skip_while(|a| a != "--token-bytes")
        .nth(1)
        .map(|v| v.parse().expect("--token-bytes N"))
        .unwrap_or(16);
    let credentials: Vec<ClientCredential> = (0..N).map(credential).collect();
    let mut rows: Vec<(&str, usize)> = Vec::new();

    let (bytes, _ccs) = per_object(|i| Arc::new(credentials[i].clone()));
    rows.push(("ClientCredential in the reflector store (slimmed)", bytes));
    let (bytes, _status) = per_object(|i| credentials[i].status.clone());
    rows.push(("  of which its status", bytes));

    let (bytes, _targets) = per_object(|i| {
        let t = target::desired(&credentials[i], &stored(i, token_bytes)).unwrap();
        CachedSecret::from_secret(&as_stored(t, i))
    });
    rows.push(("target Secret as cached (metadata and a digest)", bytes));
    let (bytes, _states) = per_object(|i| {
        let s = state::desired(&credentials[i], &stored(i, token_bytes));
        CachedSecret::from_secret(&as_stored(s, i))
    });
    rows.push(("state Secret as cached (data whole)", bytes));

    let index = SourceIndex::new(Arc::new(SourceCache::default()));
    let (bytes, _) = per_object(|i| index.update(&credentials[i]));
    rows.push(("source index entry", bytes));
    let (bytes, _sources) = per_object(|i| {
        let name = credentials[i].name_any();
        BTreeMap::from([
            ("client_id".to_owned(), ByteString(name.into_bytes())),
            ("client_secret".to_owned(), ByteString(b"bench-secret".to_vec())),
        ])
    });
    rows.push(("source Secret data as read (SourceCache)", bytes));

    let metrics = Metrics::default();
    let (bytes, _) = per_object(|i| {
        let cc = &credentials[i];
        let labels = CredentialLabels { namespace: cc.namespace().unwrap(), name: cc.name_any() };
        metrics.token_expiry.get_or_create(&labels).set(1);
        metrics.token_renewal.get_or_create(&labels).set(1);
        metrics.record_status(&labels.namespace, &labels.name, cc.status.as_ref().unwrap());
    });
    rows.push(("metrics (expiry, renewal, ready, degraded, failed attempts)", bytes));

    let memo = WriteMemo::default();
    let (bytes, _) = per_object(|i| {
        let cc = &credentials[i];
        let comparable = status::comparable(cc.status.as_ref().unwrap());
        memo.remember(Written::Status(cc.metadata.uid.clone().unwrap()), Some("1"), Some("2".into()), &comparable);
    });
    rows.push(("write memo: the last status write (kept)", bytes));
    let (bytes, _) = per_object(|i| {
        let cc = &credentials[i];
        let ns = cc.namespace().unwrap();
        let state_ref = SecretRef::new(&ns, &labels::state_secret_name(&cc.name_any()));
        memo.remember(Written::Secret(state_ref), None, Some("3".into()), &"state");
        memo.remember(Written::Secret(SecretRef::new(&ns, &cc.name_any())), Some("4"), Some("5".into()), &"target");
    });
    rows.push(("  write memo: state and target writes, until the cache shows them", bytes));

    println!("heap bytes per credential ({N} each, token {token_bytes} bytes):");
    println!("| structure | bytes |");
    println!("| --- | --- |");
    let mut total = 0;
    for (what, bytes) in &rows {
        println!("| {what} | {bytes} |");
        if !what.starts_with("  ") {
            total += bytes;
        }
    }
    println!("| total | {total} |");
    println!("json: {}", json!(rows.iter().map(|(w, b)| json!({"structure": w, "bytes": b})).collect::<Vec<_>>()));
}

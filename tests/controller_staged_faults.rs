//! Controller behaviour under faults only the in-process API server double can stage on
//! demand (a watch held back at a chosen moment) or observe (every request the controller
//! made, by verb and selector). Everything else the controller does is tested on the real
//! control plane (tests/controller.rs).

mod support;
mod token_server;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::apiserver::{ApiServer, Verb};
use support::controller::*;
use token_server::Reply;
use token_server::issuer::Issuer;
use tokensync::api::ClientCredential;

async fn setup(name: &str, issuer: &Issuer, api: &ApiServer) -> ClientCredential {
    create_secret(api, source_secret(&format!("{name}-client"), &[("client_id", "cid"), ("client_secret", "csecret")]))
        .await;
    Cc::new(name, &issuer.url()).create(api).await
}

#[tokio::test]
async fn a_reconcile_from_a_stale_cached_status_spends_no_token_request() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    // The first request fails, and from the moment it arrives the controller's cache of
    // ClientCredentials stops following the server: it never sees the failure recorded.
    let (held, first) = (api.clone(), std::sync::atomic::AtomicBool::new(true));
    issuer.fail_with(move || {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            held.hold_watches("clientcredentials");
        }
        Reply::text(503, "text/html", "<h1>down</h1>")
    });
    let c = start(&api, args(&["--backoff-min", "2m"]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Degraded", ("True", "TokenEndpointUnavailable")).await;
    assert_eq!((issuer.requests(), status(&api, "demo").unwrap().failed_attempts), (1, Some(1)));

    // Any event makes the controller reconcile from its (stale) cache: here a change of an
    // unrelated key in the source Secret, whose watch is not held. The first reconcile
    // (the failed request) has completed first, so the next one counted is that one.
    assert!(c.metrics.wait_for_reconciles(1, WAIT).await);
    let before = c.metrics.reconciles();
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let unrelated = json!({"stringData": {"unrelated": "x"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&unrelated)).await.unwrap();
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(issuer.requests(), 1, "the backoff recorded in status was honoured");
    assert_eq!(status(&api, "demo").unwrap().failed_attempts, Some(1));
    api.release_watches("clientcredentials");
}

#[tokio::test]
async fn secrets_are_watched_whole_only_when_tokensync_manages_them() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    assert!(c.metrics.wait_for_reconciles(1, WAIT).await);
    let reads: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.resource == "secrets" && matches!(r.verb, Verb::List | Verb::Watch))
        .collect();
    assert!(reads.iter().any(|r| r.metadata_only), "a metadata-only watch notices source Secret changes");
    for r in &reads {
        assert!(
            r.metadata_only
                || r.label_selector.as_deref()
                    == Some("app.kubernetes.io/managed-by=tokensync,!tokensync.io/cluster-client-credential"),
            "a full Secret list/watch must select tokensync's own Secrets: {r:?}"
        );
    }
}

/// Issue 16 (a watch stuck after an API server restart): status patches computed from the
/// stale cache are refused (409); each is computed again from a fresh read, so the status
/// keeps recording every renewal and no token is requested twice, whatever the watch does.
#[tokio::test]
async fn with_the_credential_watch_stuck_status_still_records_every_renewal() {
    let api = api_server().await;
    let issuer = Issuer::start(3).await; // renewed about every 1.5 s
    let _c = start(&api, args(&["--min-renewal-interval", "1s"]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    api.hold_watches("clientcredentials");

    // Token 4 is published and its expiry recorded in status on the server.
    let recorded = api
        .wait_for(
            |v| {
                let target: Option<Secret> = v.get(Some(NS), "demo");
                let data = target.as_ref().and_then(|t| t.data.as_ref());
                let expiry = target
                    .as_ref()
                    .and_then(|t| t.metadata.annotations.as_ref()?.get("tokensync.io/expires-at").cloned());
                let status = v.get::<ClientCredential>(Some(NS), "demo").and_then(|c| c.status);
                data.and_then(|d| d.get("access_token")).is_some_and(|t| t.0 == b"token-4")
                    && expiry.is_some()
                    && expiry == status.and_then(|s| s.expires_at).map(|t| t.0.to_string())
            },
            WAIT,
        )
        .await;
    assert!(recorded.is_ok(), "status did not follow the renewals: {:#?}", status(&api, "demo"));
    assert_eq!(issuer.requests(), 4, "one request per renewal");
    api.release_watches("clientcredentials");
}

/// A spec the CRD's rules refuse reaches the controller only where admission did not run
/// them (a CRD older than the controller, an object restored from a backup): the real API
/// server always runs them (tests/api.rs shows each refused by `kubectl apply`), so this one
/// needs the double, which has no admission.
#[tokio::test]
async fn an_invalid_spec_is_reported_with_the_field_and_requests_nothing() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    create_secret(&api, source_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")])).await;
    Cc::new("demo", &issuer.url()).spec(json!({"grantType": "refresh_token"})).create(&api).await;
    wait_condition(&api, "demo", "Ready", ("False", "InvalidSpec")).await;
    assert!(status(&api, "demo").unwrap().conditions[0].message.contains("spec.credentialsRef.refreshTokenKey"));
    assert_eq!(issuer.requests(), 0);
}

//! The controller end to end: a real kube::Client against the API server double, real
//! token servers on 127.0.0.1, the controller running in-process. Each test names the
//! behaviour it proves; waits are on conditions with a timeout, never sleeps.

mod support;
mod token_server;

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::apiserver::{ApiServer, Verb};
use support::controller::*;
use token_server::{Recorded, Reply, TokenServer};
use tokensync::api::ClientCredential;

/// How the test token server behaves; tests change it while the controller runs.
struct Behaviour {
    lifetime: u64,
    issued: u32,
    /// Answer with this instead of a token.
    fail: Option<Box<dyn Fn() -> Reply + Send>>,
    /// Issue a new refresh token with every response and accept only the latest.
    rotating_refresh: bool,
    current_refresh: String,
}

struct Issuer {
    server: TokenServer,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Issuer {
    async fn start(lifetime: u64) -> Issuer {
        let behaviour = Arc::new(Mutex::new(Behaviour {
            lifetime,
            issued: 0,
            fail: None,
            rotating_refresh: false,
            current_refresh: String::new(),
        }));
        let b = behaviour.clone();
        let server = TokenServer::start(move |r: &Recorded| {
            let mut b = b.lock().unwrap();
            if let Some(fail) = &b.fail {
                return fail();
            }
            let p = r.params();
            if b.rotating_refresh
                && p.get("grant_type").map(String::as_str) == Some("refresh_token")
                && p.get("refresh_token") != Some(&b.current_refresh)
            {
                return Reply::oauth_error(400, "invalid_grant", "refresh token reused");
            }
            b.issued += 1;
            let mut body = json!({"access_token": format!("token-{}", b.issued), "token_type": "Bearer", "expires_in": b.lifetime});
            if b.rotating_refresh {
                b.current_refresh = format!("refresh-{}", b.issued);
                body["refresh_token"] = b.current_refresh.clone().into();
            }
            Reply::json(200, body)
        })
        .await;
        Issuer { server, behaviour }
    }

    fn url(&self) -> String {
        self.server.url("/token")
    }

    fn requests(&self) -> usize {
        self.server.requests().len()
    }

    fn fail_with(&self, reply: impl Fn() -> Reply + Send + 'static) {
        self.behaviour.lock().unwrap().fail = Some(Box::new(reply));
    }

    fn heal(&self) {
        self.behaviour.lock().unwrap().fail = None;
    }
}

async fn setup(name: &str, issuer: &Issuer, api: &ApiServer) -> ClientCredential {
    create_secret(api, source_secret(&format!("{name}-client"), &[("client_id", "cid"), ("client_secret", "csecret")]))
        .await;
    Cc::new(name, &issuer.url()).create(api).await
}

fn ccs(api: &ApiServer) -> Api<ClientCredential> {
    Api::namespaced(api.client(), NS)
}

async fn merge_patch_cc(api: &ApiServer, name: &str, patch: serde_json::Value) {
    ccs(api).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

#[tokio::test]
async fn issues_a_token_into_an_owned_labelled_target_secret_and_reports_ready() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    let cc = setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;

    let target: Secret = api.get(Some(NS), "demo").unwrap();
    let data = secret_data(&api, "demo").unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["access_token", "expires_at", "token_type"]);
    assert_eq!(data["token_type"], "Bearer");
    let labels = target.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "tokensync");
    let owner = &target.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("ClientCredential", cc.metadata.uid.as_deref().unwrap(), Some(true))
    );
    assert!(
        target
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|m| m.manager.as_deref() == Some("tokensync") && m.operation.as_deref() == Some("Apply"))
    );

    let st = status(&api, "demo").unwrap();
    assert_eq!(st.observed_generation, cc.metadata.generation);
    assert!(st.expires_at.is_some() && st.renew_at.is_some() && st.last_refresh_time.is_some());
    assert!(st.renew_at.unwrap().0 < st.expires_at.unwrap().0);
    assert_eq!(condition(&api, "demo", "Degraded"), Some(("False".into(), "Healthy".into())));
    assert_eq!(issuer.requests(), 1);
    // The client secret is in the request, never in the target Secret.
    assert!(!data.values().any(|v| v.contains("csecret")));
}

#[tokio::test]
async fn a_restarted_controller_requests_nothing_while_the_token_is_valid() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let first = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    first.crash();
    let second = start(&api, args(&[]));
    assert!(second.metrics.wait_for_reconciles(1, WAIT).await, "the new controller reconciled");
    // And once more after a resync-like trigger: an unrelated annotation.
    merge_patch_cc(&api, "demo", json!({"metadata": {"annotations": {"note": "x"}}})).await;
    assert!(second.metrics.wait_for_reconciles(2, WAIT).await);
    assert_eq!(issuer.requests(), 1, "no token request on restart or resync");
}

#[tokio::test]
async fn renews_before_expiry_with_exactly_one_request_per_renewal() {
    let api = api_server().await;
    let issuer = Issuer::start(3).await; // renewed after ~1.5 s (half of a lifetime shorter than the margin)
    let _c = start(&api, args(&["--min-renewal-interval", "1s"]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-3").await;
    let requests = issuer.server.requests();
    // Every request's token was published, in order, and requests are a renewal apart.
    assert!(requests.len() <= 4, "{} requests for 3 tokens", requests.len());
    let n = requests.len();
    wait_secret_value(&api, "demo", "access_token", &format!("token-{n}")).await;
    let st = status(&api, "demo").unwrap();
    assert!(st.failed_attempts.is_none());
}

#[tokio::test]
async fn a_spec_change_and_a_rotated_client_secret_each_cause_one_prompt_new_token() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;

    merge_patch_cc(&api, "demo", json!({"spec": {"scopes": ["read"]}})).await;
    wait_secret_value(&api, "demo", "access_token", "token-2").await;
    assert_eq!(issuer.server.requests().last().unwrap().params()["scope"], "read");
    let cc: ClientCredential = api.get(Some(NS), "demo").unwrap();
    api.wait_for(
        |v| {
            v.get::<ClientCredential>(Some(NS), "demo").and_then(|c| c.status).and_then(|s| s.observed_generation)
                == cc.metadata.generation
        },
        WAIT,
    )
    .await
    .expect("observedGeneration follows the spec change");
    assert_eq!(condition(&api, "demo", "Ready"), Some(("True".into(), "TokenIssued".into())));

    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let patch = json!({"stringData": {"client_secret": "rotated-secret"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_secret_value(&api, "demo", "access_token", "token-3").await;
    assert_eq!(issuer.server.requests().last().unwrap().params()["client_secret"], "rotated-secret");

    // A change to a key the spec does not use is not a reason for a new token.
    let before = c.metrics.reconciles();
    let patch = json!({"stringData": {"unrelated": "x"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(issuer.requests(), 3);
}

#[tokio::test]
async fn a_deleted_or_edited_target_secret_is_restored_without_a_token_request() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;

    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    secrets.delete("demo", &Default::default()).await.unwrap();
    wait_secret_value(&api, "demo", "access_token", "token-1").await;

    let patch = json!({"stringData": {"access_token": "tampered", "extra": "x"}});
    secrets.patch("demo", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    api.wait_for(|v| v.get::<Secret>(Some(NS), "demo").is_some_and(|s| !s.data.unwrap().contains_key("extra")), WAIT)
        .await
        .expect("the hand-added key is removed too");
    assert_eq!(issuer.requests(), 1);
}

/// Issue 16: server-side apply leaves fields another field manager owns alone, so a forced
/// apply alone never removes a key someone else added.
#[tokio::test]
async fn a_key_another_field_manager_adds_to_the_target_is_removed_and_its_labels_stay() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;

    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let intruder = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo", "labels": {"backup.example/include": "true"},
                     "annotations": {"reflector.example/reflects": "team-b"}},
        "data": {"junk": "anVuaw=="},
    });
    secrets.patch("demo", &PatchParams::apply("another-controller"), &Patch::Apply(&intruder)).await.unwrap();
    let secret = api
        .wait_for_value(
            |v| v.get::<Secret>(Some(NS), "demo").filter(|s| !s.data.as_ref().unwrap().contains_key("junk")),
            WAIT,
        )
        .await
        .expect("the key another manager added is removed");
    let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["access_token", "expires_at", "token_type"], "exactly what tokensync renders");
    assert_eq!(secret.metadata.labels.unwrap()["backup.example/include"], "true", "others' labels stay");
    assert_eq!(secret.metadata.annotations.unwrap()["reflector.example/reflects"], "team-b", "and annotations");
    assert_eq!(issuer.requests(), 1, "no token request");
}

/// Issue 12: a wrong client secret put back must not leave its rejection in status until the
/// next renewal (hours for long-lived tokens): the published token stems from exactly the
/// inputs now in use.
#[tokio::test]
async fn a_source_secret_put_back_clears_its_failure_within_seconds_without_a_request() {
    let api = api_server().await;
    let issuer = Issuer::start(600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    wait_condition(&api, "demo", "Degraded", ("False", "Healthy")).await;

    issuer.fail_with(|| Reply::oauth_error(401, "invalid_client", "Invalid client credentials"));
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let wrong = json!({"stringData": {"client_secret": "a-wrong-secret"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&wrong)).await.unwrap();
    wait_condition(&api, "demo", "Degraded", ("True", "TokenRequestRejected")).await;
    assert_eq!(status(&api, "demo").unwrap().failed_attempts, Some(1));
    assert_eq!(condition(&api, "demo", "Ready"), Some(("True".into(), "TokenIssued".into())));
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "token-1", "the valid token stays");

    issuer.heal();
    let original = json!({"stringData": {"client_secret": "csecret"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&original)).await.unwrap();
    wait_condition(&api, "demo", "Degraded", ("False", "Healthy")).await;
    let st = status(&api, "demo").unwrap();
    assert!(st.failed_attempts.is_none() && st.last_failure_time.is_none() && st.failed_inputs.is_none(), "{st:#?}");
    assert_eq!(issuer.requests(), 2, "the rejected attempt only: the token in use needs no proof");
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "token-1");
}

/// Issue 12: changing spec.target.name must not leave the old target behind with a token
/// nobody renews.
#[tokio::test]
async fn a_renamed_target_replaces_the_old_secret_unless_the_policy_retains_it() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    create_secret(&api, source_secret("not-ours", &[("keep", "me")])).await;

    merge_patch_cc(&api, "demo", json!({"spec": {"target": {"name": "demo-renamed"}}})).await;
    wait_secret_value(&api, "demo-renamed", "access_token", "token-1").await;
    api.wait_for(|v| v.get::<Secret>(Some(NS), "demo").is_none(), WAIT).await.expect("the old target is removed");
    wait_status(&api, "demo", |s| s.target_secret_name.as_deref() == Some("demo-renamed")).await;
    let events = api.list_json("events.events.k8s.io", Some(NS));
    assert!(events.iter().any(|e| e["reason"] == "PreviousTargetRemoved"), "an Event says so: {events:#?}");

    // Retain: the old one is kept (it may be mounted by workloads the user moves over later).
    merge_patch_cc(&api, "demo", json!({"spec": {"target": {"name": "demo-third", "deletionPolicy": "Retain"}}})).await;
    wait_secret_value(&api, "demo-third", "access_token", "token-1").await;
    wait_status(&api, "demo", |s| s.target_secret_name.as_deref() == Some("demo-third")).await;
    assert!(secret_data(&api, "demo-renamed").is_some(), "retained");
    assert_eq!(secret_data(&api, "not-ours").unwrap()["keep"], "me");
    assert_eq!(issuer.requests(), 1, "renaming the target needs no new token");
}

/// Issue 12: the state Secret was re-read before a token request, the status was not. A
/// reconcile that starts from a cached ClientCredential older than the server's (here: its
/// watch held back, so the cache never saw the failure recorded in status) must not spend
/// a request the newer status rules out (a backoff still running).
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

async fn wait_status(api: &ApiServer, name: &str, check: impl Fn(&tokensync::api::ClientCredentialStatus) -> bool) {
    let found = api
        .wait_for(|v| v.get::<ClientCredential>(Some(NS), name).and_then(|c| c.status).is_some_and(|s| check(&s)), WAIT)
        .await;
    assert!(found.is_ok(), "{name}: status never as expected: {:#?}", status(api, name));
}

#[tokio::test]
async fn a_secret_tokensync_does_not_manage_is_never_touched() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    create_secret(&api, source_secret("demo", &[("mine", "do not touch")])).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("False", "TargetSecretConflict")).await;
    assert_eq!(
        secret_data(&api, "demo").unwrap().into_iter().collect::<Vec<_>>(),
        [("mine".to_owned(), "do not touch".to_owned())]
    );
    assert_eq!(issuer.requests(), 0, "no token is requested for a Secret that cannot be written");
}

#[tokio::test]
async fn templates_type_labels_and_retain_policy_shape_the_target_secret() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    create_secret(&api, source_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")])).await;
    Cc::new("demo", &issuer.url())
        .spec(json!({"target": {
            "name": "demo-header",
            "labels": {"team": "a"},
            "annotations": {"note": "hi"},
            "template": {"Authorization": "Bearer {{ access_token }}"},
            "deletionPolicy": "Retain"
        }}))
        .create(&api)
        .await;
    wait_secret_value(&api, "demo-header", "Authorization", "Bearer token-1").await;
    let s: Secret = api.get(Some(NS), "demo-header").unwrap();
    assert_eq!(s.data.unwrap().len(), 1);
    assert_eq!(s.metadata.labels.unwrap()["team"], "a");
    assert_eq!(s.metadata.annotations.unwrap()["note"], "hi");
    assert!(s.metadata.owner_references.unwrap_or_default().is_empty(), "Retain: no ownerReference");
    assert!(api.get::<Secret>(Some(NS), "demo.tokensync-state").unwrap().metadata.owner_references.is_some());
}

#[tokio::test]
async fn labels_and_annotations_dropped_from_the_spec_leave_the_target_when_it_is_next_written() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    create_secret(&api, source_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")])).await;
    Cc::new("demo", &issuer.url())
        .spec(json!({"target": {"labels": {"team": "a"}, "annotations": {"note": "hi", "old": "x"}}}))
        .create(&api)
        .await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    // Dropped fields are tokensync's alone (server-side apply), so the next apply removes them.
    let ccs: Api<ClientCredential> = Api::namespaced(api.client(), NS);
    let spec = json!({"spec": {"target": {"labels": null, "annotations": {"note": "changed", "old": null}}}});
    ccs.patch("demo", &PatchParams::default(), &Patch::Merge(&spec)).await.unwrap();
    let cleaned = api
        .wait_for(
            |v| {
                v.get::<Secret>(Some(NS), "demo").is_some_and(|s| {
                    let (labels, annotations) =
                        (s.metadata.labels.unwrap_or_default(), s.metadata.annotations.unwrap_or_default());
                    annotations.get("note").map(String::as_str) == Some("changed")
                        && !annotations.contains_key("old")
                        && !labels.contains_key("team")
                        && labels.contains_key("tokensync.io/client-credential")
                })
            },
            WAIT,
        )
        .await;
    assert!(cleaned.is_ok(), "target metadata: {:#?}", api.get::<Secret>(Some(NS), "demo").map(|s| s.metadata));
    assert_eq!(issuer.requests(), 1, "re-rendering the target requests nothing");
}

#[tokio::test]
async fn missing_source_secret_and_key_are_reported_and_recovered_from() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    Cc::new("demo", &issuer.url()).create(&api).await;
    wait_condition(&api, "demo", "Ready", ("False", "SourceSecretNotFound")).await;
    create_secret(&api, source_secret("demo-client", &[("client_id", "cid")])).await;
    wait_condition(&api, "demo", "Ready", ("False", "SourceSecretInvalid")).await;
    let msg = status(&api, "demo").unwrap().conditions[0].message.clone();
    assert!(msg.contains("client_secret"), "{msg}");
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let patch = json!({"stringData": {"client_secret": "s"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(issuer.requests(), 1);
}

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

#[tokio::test]
async fn a_failing_endpoint_keeps_the_valid_token_ready_and_reports_degraded() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    issuer.fail_with(|| Reply::text(503, "text/html", "<h1>down</h1>"));
    merge_patch_cc(&api, "demo", json!({"spec": {"scopes": ["new"]}})).await;
    wait_condition(&api, "demo", "Degraded", ("True", "TokenEndpointUnavailable")).await;
    assert_eq!(condition(&api, "demo", "Ready"), Some(("True".into(), "TokenIssued".into())));
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "token-1", "the valid token stays");
    let st = status(&api, "demo").unwrap();
    assert_eq!(st.failed_attempts, Some(1));
    let wait = st.renew_at.unwrap().0.as_second() - st.last_failure_time.unwrap().0.as_second();
    assert!((4..=6).contains(&wait), "first retry after ~5s, got {wait}s");

    issuer.heal();
    wait_secret_value(&api, "demo", "access_token", "token-2").await;
    wait_condition(&api, "demo", "Degraded", ("False", "Healthy")).await;
    let st = status(&api, "demo").unwrap();
    assert!(st.failed_attempts.is_none(), "{st:#?}");
}

#[tokio::test]
async fn a_permanent_rejection_waits_the_maximum_backoff_and_retry_after_is_persisted() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    issuer.fail_with(|| Reply::oauth_error(401, "invalid_client", "bad secret"));
    let c = start(&api, args(&["--backoff-max", "2m"]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("False", "TokenRequestRejected")).await;
    let st = status(&api, "demo").unwrap();
    assert_eq!(st.retry_after_seconds, Some(120));
    let wait = st.renew_at.unwrap().0.as_second() - st.last_failure_time.unwrap().0.as_second();
    assert!(wait >= 120, "{wait}");
    assert!(st.conditions[0].message.contains("invalid_client"));

    // The backoff lives in status: a restarted controller does not retry early.
    c.crash();
    let c2 = start(&api, args(&["--backoff-max", "2m"]));
    assert!(c2.metrics.wait_for_reconciles(1, WAIT).await);
    assert_eq!(issuer.requests(), 1);

    // 429 with Retry-After: honoured and persisted.
    issuer.fail_with(|| Reply::text(429, "text/plain", "slow down").header("retry-after", "300"));
    merge_patch_cc(&api, "demo", json!({"spec": {"scopes": ["x"]}})).await;
    api.wait_for(
        |v| {
            v.get::<ClientCredential>(Some(NS), "demo").and_then(|c| c.status).and_then(|s| s.retry_after_seconds)
                == Some(300)
        },
        WAIT,
    )
    .await
    .expect("Retry-After persisted");
    assert_eq!(issuer.requests(), 2);
}

#[tokio::test]
async fn the_renew_annotation_triggers_exactly_one_immediate_renewal() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    merge_patch_cc(
        &api,
        "demo",
        json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": "2026-11-23T10:00:00Z"}}}),
    )
    .await;
    wait_secret_value(&api, "demo", "access_token", "token-2").await;
    api.wait_for(
        |v| {
            v.get::<ClientCredential>(Some(NS), "demo")
                .and_then(|c| c.status)
                .and_then(|s| s.handled_renewal_request)
                .as_deref()
                == Some("2026-11-23T10:00:00Z")
        },
        WAIT,
    )
    .await
    .unwrap();
    let before = c.metrics.reconciles();
    merge_patch_cc(&api, "demo", json!({"metadata": {"annotations": {"other": "y"}}})).await;
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(issuer.requests(), 2, "the same annotation value does not renew again");
}

#[tokio::test]
async fn suspend_stops_requests_and_leaves_the_published_token() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    merge_patch_cc(
        &api,
        "demo",
        json!({"spec": {"suspend": true}, "metadata": {"annotations": {"tokensync.io/renew-requested-at": "now"}}}),
    )
    .await;
    wait_condition(&api, "demo", "Ready", ("True", "Suspended")).await;
    let before = c.metrics.reconciles();
    merge_patch_cc(&api, "demo", json!({"spec": {"scopes": ["changed"]}})).await;
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(issuer.requests(), 1);
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "token-1");
}

#[tokio::test]
async fn a_rotated_refresh_token_lives_in_the_state_secret_and_survives_a_restart() {
    let api = api_server().await;
    let issuer = Issuer::start(3).await;
    issuer.behaviour.lock().unwrap().rotating_refresh = true;
    let c = start(&api, args(&["--min-renewal-interval", "1s"]));
    create_secret(&api, source_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")])).await;
    Cc::new("demo", &issuer.url()).spec(json!({"refreshEndpoint": {"url": issuer.url()}})).create(&api).await;
    wait_secret_value(&api, "demo", "access_token", "token-2").await;
    let state = secret_data(&api, "demo.tokensync-state").unwrap();
    assert!(state["refresh_token"].starts_with("refresh-"));
    assert!(!secret_data(&api, "demo").unwrap().contains_key("refresh_token"), "workloads never see the refresh token");
    c.crash();
    let _c2 = start(&api, args(&["--min-renewal-interval", "1s"]));
    wait_secret_value(&api, "demo", "access_token", "token-4").await;
    // Every renewal after the first was a refresh with the latest rotated token.
    let refreshes: Vec<_> = issuer
        .server
        .requests()
        .into_iter()
        .filter(|r| r.params().get("grant_type").map(String::as_str) == Some("refresh_token"))
        .collect();
    assert!(refreshes.len() >= 3, "{}", refreshes.len());
    assert_eq!(condition(&api, "demo", "Degraded"), Some(("False".into(), "Healthy".into())));
}

#[tokio::test]
async fn routine_reconciles_skip_unchanged_status_and_secret_writes() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    let writes = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.verb.is_write() && r.resource != "events" && r.code < 300 && r.changed)
            .count()
    };
    let before_writes = writes(&api);
    let before = c.metrics.reconciles();
    merge_patch_cc(&api, "demo", json!({"metadata": {"annotations": {"touch": "1"}}})).await;
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(writes(&api), before_writes + 1, "only the test's own patch changed anything");
    assert_eq!(api.count(Verb::Apply, "secrets", None), 2, "state and target applied once each");
}

#[tokio::test]
async fn events_report_issuance_and_failures_without_secrets() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    issuer.fail_with(|| Reply::oauth_error(400, "invalid_client", "client csecret unknown"));
    merge_patch_cc(&api, "demo", json!({"spec": {"scopes": ["x"]}})).await;
    wait_condition(&api, "demo", "Degraded", ("True", "TokenRequestRejected")).await;
    let events = api
        .wait_for_value(
            |v| {
                let all = [v.list_json("events.events.k8s.io", Some(NS)), v.list_json("events", Some(NS))].concat();
                let reasons: Vec<String> = all.iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect();
                (reasons.iter().any(|r| r == "TokenIssued") && reasons.iter().any(|r| r == "TokenRequestRejected"))
                    .then_some(all)
            },
            WAIT,
        )
        .await
        .expect("TokenIssued and TokenRequestRejected events");
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("csecret") && !text.contains("token-1"), "{text}");
}

#[tokio::test]
async fn changing_the_target_type_replaces_the_secret_without_a_token_request() {
    let api = api_server().await;
    let issuer = Issuer::start(3600).await;
    let _c = start(&api, args(&[]));
    setup("demo", &issuer, &api).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    let template =
        json!({"auths": {"registry.example": {"auth": "{{ ('x:' ~ access_token) | b64encode }}"}}}).to_string();
    merge_patch_cc(
        &api,
        "demo",
        json!({"spec": {"target": {"type": "kubernetes.io/dockerconfigjson", "template": {".dockerconfigjson": template}}}}),
    )
    .await;
    api.wait_for(
        |v| {
            v.get::<Secret>(Some(NS), "demo").and_then(|s| s.type_).as_deref() == Some("kubernetes.io/dockerconfigjson")
        },
        WAIT,
    )
    .await
    .expect("the target was replaced with the new type");
    let data = secret_data(&api, "demo").unwrap();
    assert!(data[".dockerconfigjson"].contains("registry.example"));
    assert_eq!(issuer.requests(), 1);
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

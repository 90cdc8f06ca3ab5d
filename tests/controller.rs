//! The ClientCredential controller end to end on a real Kubernetes control plane (etcd,
//! kube-apiserver and kube-controller-manager from Kubernetes' Go modules, see
//! `tests/support/control_plane.rs`): each test in a namespace of its own, the controller
//! in-process with the shipped API client stack, real token servers on 127.0.0.1. Each test
//! names the behaviour it proves; waits watch the object until a condition holds, with a
//! timeout, never sleeps. Faults only the API server double can stage on demand (held
//! watches, exact request logs) are in `tests/controller_staged_faults.rs`.

mod support;
mod token_server;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::controller::{Cc, args};
use support::real::{Env, WAIT, kube_requests};
use token_server::Reply;
use token_server::issuer::Issuer;
use tokensync::api::ClientCredential;

async fn setup(name: &str, issuer: &Issuer, env: &Env) -> ClientCredential {
    env.create_secret(&format!("{name}-client"), &[("client_id", "cid"), ("client_secret", "csecret")]).await;
    env.create_cc(Cc::new(name, &issuer.url())).await
}

#[tokio::test]
async fn issues_a_token_into_an_owned_labelled_target_secret_and_reports_ready() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    let cc = setup("demo", &issuer, &env).await;
    env.wait_condition("demo", "Ready", ("True", "TokenIssued")).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;

    let target = env.secret("demo").await.unwrap();
    let data = env.secret_data("demo").await.unwrap();
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

    let st = env.status("demo").await.unwrap();
    assert_eq!(st.observed_generation, cc.metadata.generation);
    assert!(st.expires_at.is_some() && st.renew_at.is_some() && st.last_refresh_time.is_some());
    assert!(st.renew_at.unwrap().0 < st.expires_at.unwrap().0);
    assert_eq!(env.condition("demo", "Degraded").await, Some(("False".into(), "Healthy".into())));
    assert_eq!(issuer.requests(), 1);
    // The client secret is in the request, never in the target Secret.
    assert!(!data.values().any(|v| v.contains("csecret")));
}

#[tokio::test]
async fn a_restarted_controller_requests_nothing_while_the_token_is_valid() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let first = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_condition("demo", "Ready", ("True", "TokenIssued")).await;
    first.crash();
    let second = env.start(args(&[])).await;
    assert!(second.metrics.wait_for_reconciles(1, WAIT).await, "the new controller reconciled");
    // And once more after a resync-like trigger: an unrelated annotation.
    env.merge_patch_cc("demo", json!({"metadata": {"annotations": {"note": "x"}}})).await;
    assert!(second.metrics.wait_for_reconciles(2, WAIT).await);
    assert_eq!(issuer.requests(), 1, "no token request on restart or resync");
}

#[tokio::test]
async fn renews_before_expiry_with_exactly_one_request_per_renewal() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3).await; // renewed after ~1.5 s (half of a lifetime shorter than the margin)
    let _c = env.start(args(&["--min-renewal-interval", "1s"])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-3").await;
    let requests = issuer.server.requests();
    // Every request's token was published, in order, and requests are a renewal apart.
    assert!(requests.len() <= 4, "{} requests for 3 tokens", requests.len());
    let n = requests.len();
    env.wait_secret_value("demo", "access_token", &format!("token-{n}")).await;
    let st = env.status("demo").await.unwrap();
    assert!(st.failed_attempts.is_none());
}

#[tokio::test]
async fn a_spec_change_and_a_rotated_client_secret_each_cause_one_prompt_new_token() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;

    env.merge_patch_cc("demo", json!({"spec": {"scopes": ["read"]}})).await;
    env.wait_secret_value("demo", "access_token", "token-2").await;
    assert_eq!(issuer.server.requests().last().unwrap().params()["scope"], "read");
    let generation = env.cc("demo").await.unwrap().metadata.generation;
    env.wait_status("demo", "observedGeneration follows the spec change", move |s| s.observed_generation == generation)
        .await;
    assert_eq!(env.condition("demo", "Ready").await, Some(("True".into(), "TokenIssued".into())));

    let secrets = env.secrets();
    let patch = json!({"stringData": {"client_secret": "rotated-secret"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.wait_secret_value("demo", "access_token", "token-3").await;
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
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;

    let secrets = env.secrets();
    secrets.delete("demo", &Default::default()).await.unwrap();
    env.wait_secret_value("demo", "access_token", "token-1").await;

    let patch = json!({"stringData": {"access_token": "tampered", "extra": "x"}});
    secrets.patch("demo", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.wait_secret_value("demo", "access_token", "token-1").await;
    env.wait::<Secret>("demo", "without the hand-added key", |s| {
        s.is_some_and(|s| !s.data.as_ref().unwrap().contains_key("extra"))
    })
    .await;
    assert_eq!(issuer.requests(), 1);
}

/// Issue 16: server-side apply leaves fields another field manager owns alone, so a forced
/// apply alone never removes a key someone else added.
#[tokio::test]
async fn a_key_another_field_manager_adds_to_the_target_is_removed_and_its_labels_stay() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;

    let secrets = env.secrets();
    let intruder = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo", "labels": {"backup.example/include": "true"},
                     "annotations": {"reflector.example/reflects": "team-b"}},
        "data": {"junk": "anVuaw=="},
    });
    secrets.patch("demo", &PatchParams::apply("another-controller"), &Patch::Apply(&intruder)).await.unwrap();
    let secret = env
        .wait::<Secret>("demo", "without the key another manager added", |s| {
            s.is_some_and(|s| !s.data.as_ref().unwrap().contains_key("junk"))
        })
        .await
        .unwrap();
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
    let env = Env::new("controller").await;
    let issuer = Issuer::start(600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    env.wait_condition("demo", "Degraded", ("False", "Healthy")).await;

    issuer.fail_with(|| Reply::oauth_error(401, "invalid_client", "Invalid client credentials"));
    let secrets = env.secrets();
    let wrong = json!({"stringData": {"client_secret": "a-wrong-secret"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&wrong)).await.unwrap();
    env.wait_condition("demo", "Degraded", ("True", "TokenRequestRejected")).await;
    assert_eq!(env.status("demo").await.unwrap().failed_attempts, Some(1));
    assert_eq!(env.condition("demo", "Ready").await, Some(("True".into(), "TokenIssued".into())));
    assert_eq!(env.secret_data("demo").await.unwrap()["access_token"], "token-1", "the valid token stays");

    issuer.heal();
    let original = json!({"stringData": {"client_secret": "csecret"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&original)).await.unwrap();
    env.wait_condition("demo", "Degraded", ("False", "Healthy")).await;
    let st = env.status("demo").await.unwrap();
    assert!(st.failed_attempts.is_none() && st.last_failure_time.is_none() && st.failed_inputs.is_none(), "{st:#?}");
    assert_eq!(issuer.requests(), 2, "the rejected attempt only: the token in use needs no proof");
    assert_eq!(env.secret_data("demo").await.unwrap()["access_token"], "token-1");
}

/// Issue 12: changing spec.target.name must not leave the old target behind with a token
/// nobody renews.
#[tokio::test]
async fn a_renamed_target_replaces_the_old_secret_unless_the_policy_retains_it() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    env.create_secret("not-ours", &[("keep", "me")]).await;

    env.merge_patch_cc("demo", json!({"spec": {"target": {"name": "demo-renamed"}}})).await;
    env.wait_secret_value("demo-renamed", "access_token", "token-1").await;
    env.wait_secret_gone("demo").await;
    env.wait_status("demo", "naming the new target", |s| s.target_secret_name.as_deref() == Some("demo-renamed")).await;
    env.wait_events("said PreviousTargetRemoved", |events| {
        events.iter().any(|e| e["reason"] == "PreviousTargetRemoved")
    })
    .await;

    // Retain: the old one is kept (it may be mounted by workloads the user moves over later).
    env.merge_patch_cc("demo", json!({"spec": {"target": {"name": "demo-third", "deletionPolicy": "Retain"}}})).await;
    env.wait_secret_value("demo-third", "access_token", "token-1").await;
    env.wait_status("demo", "naming the third target", |s| s.target_secret_name.as_deref() == Some("demo-third")).await;
    assert!(env.secret_data("demo-renamed").await.is_some(), "retained");
    assert_eq!(env.secret_data("not-ours").await.unwrap()["keep"], "me");
    assert_eq!(issuer.requests(), 1, "renaming the target needs no new token");
}

/// Issue 12: the state Secret was re-read before a token request, the status was not. A
/// reconcile that starts from a cached ClientCredential older than the server's (here: its
/// watch held back, so the cache never saw the failure recorded in status) must not spend
/// a request the newer status rules out (a backoff still running).
#[tokio::test]
async fn a_secret_tokensync_does_not_manage_is_never_touched() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    env.create_secret("demo", &[("mine", "do not touch")]).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_condition("demo", "Ready", ("False", "TargetSecretConflict")).await;
    assert_eq!(
        env.secret_data("demo").await.unwrap().into_iter().collect::<Vec<_>>(),
        [("mine".to_owned(), "do not touch".to_owned())]
    );
    assert_eq!(issuer.requests(), 0, "no token is requested for a Secret that cannot be written");
}

#[tokio::test]
async fn templates_type_labels_and_retain_policy_shape_the_target_secret() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    env.create_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")]).await;
    env.create_cc(Cc::new("demo", &issuer.url()).spec(json!({"target": {
        "name": "demo-header",
        "labels": {"team": "a"},
        "annotations": {"note": "hi"},
        "template": {"Authorization": "Bearer {{ access_token }}"},
        "deletionPolicy": "Retain"
    }})))
    .await;
    env.wait_secret_value("demo-header", "Authorization", "Bearer token-1").await;
    let s = env.secret("demo-header").await.unwrap();
    assert_eq!(s.data.unwrap().len(), 1);
    assert_eq!(s.metadata.labels.unwrap()["team"], "a");
    assert_eq!(s.metadata.annotations.unwrap()["note"], "hi");
    assert!(s.metadata.owner_references.unwrap_or_default().is_empty(), "Retain: no ownerReference");
    assert!(env.secret("demo.tokensync-state").await.unwrap().metadata.owner_references.is_some());
}

#[tokio::test]
async fn labels_and_annotations_dropped_from_the_spec_leave_the_target_when_it_is_next_written() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    env.create_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")]).await;
    env.create_cc(
        Cc::new("demo", &issuer.url())
            .spec(json!({"target": {"labels": {"team": "a"}, "annotations": {"note": "hi", "old": "x"}}})),
    )
    .await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    // Dropped fields are tokensync's alone (server-side apply), so the next apply removes them.
    let ccs = env.ccs();
    let spec = json!({"spec": {"target": {"labels": null, "annotations": {"note": "changed", "old": null}}}});
    ccs.patch("demo", &PatchParams::default(), &Patch::Merge(&spec)).await.unwrap();
    env.wait::<Secret>("demo", "re-rendered without the dropped labels and annotations", |s| {
        s.is_some_and(|s| {
            let (labels, annotations) =
                (s.metadata.labels.clone().unwrap_or_default(), s.metadata.annotations.clone().unwrap_or_default());
            annotations.get("note").map(String::as_str) == Some("changed")
                && !annotations.contains_key("old")
                && !labels.contains_key("team")
                && labels.contains_key("tokensync.io/client-credential")
        })
    })
    .await;
    assert_eq!(issuer.requests(), 1, "re-rendering the target requests nothing");
}

#[tokio::test]
async fn missing_source_secret_and_key_are_reported_and_recovered_from() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    env.create_cc(Cc::new("demo", &issuer.url())).await;
    env.wait_condition("demo", "Ready", ("False", "SourceSecretNotFound")).await;
    env.create_secret("demo-client", &[("client_id", "cid")]).await;
    env.wait_condition("demo", "Ready", ("False", "SourceSecretInvalid")).await;
    let msg = env.status("demo").await.unwrap().conditions[0].message.clone();
    assert!(msg.contains("client_secret"), "{msg}");
    let secrets = env.secrets();
    let patch = json!({"stringData": {"client_secret": "s"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.wait_condition("demo", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(issuer.requests(), 1);
}

#[tokio::test]
async fn a_failing_endpoint_keeps_the_valid_token_ready_and_reports_degraded() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    issuer.fail_with(|| Reply::text(503, "text/html", "<h1>down</h1>"));
    env.merge_patch_cc("demo", json!({"spec": {"scopes": ["new"]}})).await;
    env.wait_condition("demo", "Degraded", ("True", "TokenEndpointUnavailable")).await;
    assert_eq!(env.condition("demo", "Ready").await, Some(("True".into(), "TokenIssued".into())));
    assert_eq!(env.secret_data("demo").await.unwrap()["access_token"], "token-1", "the valid token stays");
    let st = env.status("demo").await.unwrap();
    assert_eq!(st.failed_attempts, Some(1));
    let wait = st.renew_at.unwrap().0.as_second() - st.last_failure_time.unwrap().0.as_second();
    assert!((4..=6).contains(&wait), "first retry after ~5s, got {wait}s");

    issuer.heal();
    env.wait_secret_value("demo", "access_token", "token-2").await;
    env.wait_condition("demo", "Degraded", ("False", "Healthy")).await;
    let st = env.status("demo").await.unwrap();
    assert!(st.failed_attempts.is_none(), "{st:#?}");
}

#[tokio::test]
async fn a_permanent_rejection_waits_the_maximum_backoff_and_retry_after_is_persisted() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    issuer.fail_with(|| Reply::oauth_error(401, "invalid_client", "bad secret"));
    let c = env.start(args(&["--backoff-max", "2m"])).await;
    setup("demo", &issuer, &env).await;
    env.wait_condition("demo", "Ready", ("False", "TokenRequestRejected")).await;
    let st = env.status("demo").await.unwrap();
    assert_eq!(st.retry_after_seconds, Some(120));
    let wait = st.renew_at.unwrap().0.as_second() - st.last_failure_time.unwrap().0.as_second();
    assert!(wait >= 120, "{wait}");
    assert!(st.conditions[0].message.contains("invalid_client"));

    // The backoff lives in status: a restarted controller does not retry early.
    c.crash();
    let c2 = env.start(args(&["--backoff-max", "2m"])).await;
    assert!(c2.metrics.wait_for_reconciles(1, WAIT).await);
    assert_eq!(issuer.requests(), 1);

    // 429 with Retry-After: honoured and persisted.
    issuer.fail_with(|| Reply::text(429, "text/plain", "slow down").header("retry-after", "300"));
    env.merge_patch_cc("demo", json!({"spec": {"scopes": ["x"]}})).await;
    env.wait_status("demo", "with Retry-After persisted", |s| s.retry_after_seconds == Some(300)).await;
    assert_eq!(issuer.requests(), 2);
}

#[tokio::test]
async fn the_renew_annotation_triggers_exactly_one_immediate_renewal() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    env.merge_patch_cc(
        "demo",
        json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": "2026-11-23T10:00:00Z"}}}),
    )
    .await;
    env.wait_secret_value("demo", "access_token", "token-2").await;
    env.wait_status("demo", "with the renewal request handled", |s| {
        s.handled_renewal_request.as_deref() == Some("2026-11-23T10:00:00Z")
    })
    .await;
    let before = c.metrics.reconciles();
    env.merge_patch_cc("demo", json!({"metadata": {"annotations": {"other": "y"}}})).await;
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(issuer.requests(), 2, "the same annotation value does not renew again");
}

#[tokio::test]
async fn suspend_stops_requests_and_leaves_the_published_token() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    env.merge_patch_cc(
        "demo",
        json!({"spec": {"suspend": true}, "metadata": {"annotations": {"tokensync.io/renew-requested-at": "now"}}}),
    )
    .await;
    env.wait_condition("demo", "Ready", ("True", "Suspended")).await;
    let before = c.metrics.reconciles();
    env.merge_patch_cc("demo", json!({"spec": {"scopes": ["changed"]}})).await;
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(issuer.requests(), 1);
    assert_eq!(env.secret_data("demo").await.unwrap()["access_token"], "token-1");
}

#[tokio::test]
async fn a_rotated_refresh_token_lives_in_the_state_secret_and_survives_a_restart() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3).await;
    issuer.behaviour.lock().unwrap().rotating_refresh = true;
    let c = env.start(args(&["--min-renewal-interval", "1s"])).await;
    env.create_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")]).await;
    env.create_cc(Cc::new("demo", &issuer.url()).spec(json!({"refreshEndpoint": {"url": issuer.url()}}))).await;
    env.wait_secret_value("demo", "access_token", "token-2").await;
    let state = env.secret_data("demo.tokensync-state").await.unwrap();
    assert!(state["refresh_token"].starts_with("refresh-"));
    assert!(
        !env.secret_data("demo").await.unwrap().contains_key("refresh_token"),
        "workloads never see the refresh token"
    );
    c.crash();
    let _c2 = env.start(args(&["--min-renewal-interval", "1s"])).await;
    env.wait_secret_value("demo", "access_token", "token-4").await;
    // Every renewal after the first was a refresh with the latest rotated token.
    let refreshes: Vec<_> = issuer
        .server
        .requests()
        .into_iter()
        .filter(|r| r.params().get("grant_type").map(String::as_str) == Some("refresh_token"))
        .collect();
    assert!(refreshes.len() >= 3, "{}", refreshes.len());
    assert_eq!(env.condition("demo", "Degraded").await, Some(("False".into(), "Healthy".into())));
}

#[tokio::test]
async fn routine_reconciles_skip_unchanged_status_and_secret_writes() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_condition("demo", "Ready", ("True", "TokenIssued")).await;
    assert!(c.metrics.wait_for_reconciles(1, WAIT).await);
    let version = |o: Option<&ObjectMeta>| o.and_then(|m| m.resource_version.clone()).expect("a resourceVersion");
    let target = version(env.secret("demo").await.as_ref().map(|s| &s.metadata));
    let state = version(env.secret("demo.tokensync-state").await.as_ref().map(|s| &s.metadata));
    let applies = kube_requests(&c.metrics, "apply", "secrets");
    let before = c.metrics.reconciles();
    let touched = env
        .ccs()
        .patch("demo", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})))
        .await
        .unwrap();
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    // The real server changes a resourceVersion only when a write changed the object.
    assert_eq!(
        version(env.cc("demo").await.as_ref().map(|c| &c.metadata)),
        version(Some(&touched.metadata)),
        "no status write"
    );
    assert_eq!(version(env.secret("demo").await.as_ref().map(|s| &s.metadata)), target, "the target is unchanged");
    assert_eq!(version(env.secret("demo.tokensync-state").await.as_ref().map(|s| &s.metadata)), state);
    assert_eq!(applies, 2, "state and target applied once each for the first token");
    assert_eq!(kube_requests(&c.metrics, "apply", "secrets"), 2, "and not again for a routine reconcile");
}

#[tokio::test]
async fn events_report_issuance_and_failures_without_secrets() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_condition("demo", "Ready", ("True", "TokenIssued")).await;
    issuer.fail_with(|| Reply::oauth_error(400, "invalid_client", "client csecret unknown"));
    env.merge_patch_cc("demo", json!({"spec": {"scopes": ["x"]}})).await;
    env.wait_condition("demo", "Degraded", ("True", "TokenRequestRejected")).await;
    let events = env
        .wait_events("said TokenIssued and TokenRequestRejected", |all| {
            ["TokenIssued", "TokenRequestRejected"].iter().all(|r| all.iter().any(|e| e["reason"] == *r))
        })
        .await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("csecret") && !text.contains("token-1"), "{text}");
}

#[tokio::test]
async fn changing_the_target_type_replaces_the_secret_without_a_token_request() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    let template =
        json!({"auths": {"registry.example": {"auth": "{{ ('x:' ~ access_token) | b64encode }}"}}}).to_string();
    env.merge_patch_cc(
        "demo",
        json!({"spec": {"target": {"type": "kubernetes.io/dockerconfigjson", "template": {".dockerconfigjson": template}}}}),
    )
    .await;
    env.wait::<Secret>("demo", "replaced with the new type", |s| {
        s.and_then(|s| s.type_.as_deref()) == Some("kubernetes.io/dockerconfigjson")
    })
    .await;
    let data = env.secret_data("demo").await.unwrap();
    assert!(data[".dockerconfigjson"].contains("registry.example"));
    assert_eq!(issuer.requests(), 1);
}

/// Deleting a ClientCredential removes its target and state Secrets: they carry an
/// ownerReference to it and the real garbage collector (kube-controller-manager) deletes
/// them; with `deletionPolicy: Retain` the target has no ownerReference and stays, with its
/// token, while the state Secret (the refresh chain) still goes.
#[tokio::test]
async fn deleting_the_credential_lets_the_garbage_collector_remove_its_secrets_unless_retained() {
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    let _c = env.start(args(&[])).await;
    setup("demo", &issuer, &env).await;
    env.create_secret("kept-client", &[("client_id", "cid"), ("client_secret", "csecret")]).await;
    env.create_cc(Cc::new("kept", &issuer.url()).spec(json!({"target": {"deletionPolicy": "Retain"}}))).await;
    // Both ask the same token server: which gets token-1 is up to the controller.
    let published =
        |s: Option<&Secret>| s.is_some_and(|s| s.data.as_ref().is_some_and(|d| d.contains_key("access_token")));
    env.wait::<Secret>("demo", "published", published).await;
    let kept = env.wait::<Secret>("kept", "published", published).await.unwrap();
    let kept_token = support::real::decoded(&kept)["access_token"].clone();
    assert!(env.secret("demo.tokensync-state").await.is_some() && env.secret("kept.tokensync-state").await.is_some());

    for name in ["demo", "kept"] {
        env.ccs().delete(name, &Default::default()).await.unwrap();
    }
    env.wait_secret_gone("demo").await;
    env.wait_secret_gone("demo.tokensync-state").await;
    env.wait_secret_gone("kept.tokensync-state").await;
    assert_eq!(env.secret_data("kept").await.expect("the retained target stays")["access_token"], kept_token);
    assert_eq!(env.secret_data("demo-client").await.unwrap()["client_secret"], "csecret", "the source is the user's");
    assert_eq!(issuer.requests(), 2);
}

/// Issue 26, item 4. The state Secret belongs to the ClientCredential by name and owner, not
/// to whoever sets its labels: a label another writer removes or changes (which takes it out
/// of the controller's label-filtered cache) is put back, and is never read as the loss of the
/// token: no token request, and the rotating refresh chain goes on from the stored token.
#[tokio::test]
async fn a_relabelled_state_secret_is_repaired_without_a_token_request_and_the_refresh_chain_goes_on() {
    if let Ok(filter) = std::env::var("TOKENSYNC_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let env = Env::new("controller").await;
    let issuer = Issuer::start(3600).await;
    issuer.behaviour.lock().unwrap().rotating_refresh = true;
    let c = env.start(args(&[])).await;
    env.create_secret("demo-client", &[("client_id", "cid"), ("client_secret", "s")]).await;
    env.create_cc(Cc::new("demo", &issuer.url()).spec(json!({"refreshEndpoint": {"url": issuer.url()}}))).await;
    env.wait_secret_value("demo", "access_token", "token-1").await;
    env.wait_secret_value("demo.tokensync-state", "refresh_token", "refresh-1").await;

    for labels in
        [json!({"app.kubernetes.io/managed-by": null}), json!({"app.kubernetes.io/managed-by": "someone-else"})]
    {
        env.merge_patch_secret("demo.tokensync-state", json!({"metadata": {"labels": labels}})).await;
        env.wait::<Secret>("demo.tokensync-state", "labelled as tokensync's again", |s| {
            s.and_then(|s| s.metadata.labels.as_ref())
                .is_some_and(|l| l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some("tokensync"))
        })
        .await;
        assert_eq!(issuer.requests(), 1, "a label edit ({labels}) cost a token request");
    }
    assert_eq!(env.secret_data("demo.tokensync-state").await.unwrap()["refresh_token"], "refresh-1");
    assert!(c.metrics.reconciles() >= 2);

    // The chain goes on from the stored refresh token.
    env.merge_patch_cc("demo", json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": "chain"}}}))
        .await;
    env.wait_secret_value("demo", "access_token", "token-2").await;
    let last = issuer.server.requests().last().unwrap().params();
    assert_eq!((last["grant_type"].as_str(), last["refresh_token"].as_str()), ("refresh_token", "refresh-1"));
    env.wait_condition("demo", "Degraded", ("False", "Healthy")).await;
}

/// tokensync's own Event recorder (bounded memory, `tokensync::controller::events`) on the real
/// API server: a repeat is the same Event with a series count, as `kubectl events` shows it;
/// another reason, note or object is an Event of its own.
#[tokio::test]
async fn a_repeated_event_is_one_event_with_a_series_and_another_one_is_new() {
    use kube::Resource;
    use tokensync::controller::events::{EventType, Recorder, Reporter};
    let env = Env::new("events").await;
    let issuer = Issuer::start(3600).await;
    let cc = setup("demo", &issuer, &env).await;
    let recorder = Recorder::new(env.client.clone(), Reporter { controller: "tokensync".into(), instance: None });
    let reference = cc.object_ref(&());
    for _ in 0..3 {
        recorder.publish(&reference, EventType::Warning, "TokenRequestFailed", "the endpoint said 503").await.unwrap();
    }
    recorder.publish(&reference, EventType::Normal, "TokenIssued", "issued a new token (first token)").await.unwrap();
    let events = env.events().await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let warning = events.iter().find(|e| e["reason"] == "TokenRequestFailed").unwrap();
    assert_eq!(warning["series"]["count"], 3, "{warning:#?}");
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["regarding"]["uid"], cc.metadata.uid.clone().unwrap().as_str());
    assert_eq!(warning["reportingController"], "tokensync");
    let issued = events.iter().find(|e| e["reason"] == "TokenIssued").unwrap();
    assert!(issued.get("series").is_none_or(|s| s.is_null()), "{issued:#?}");
}

//! ClusterClientCredential behaviour under conditions only the in-process API server double
//! can stage on demand; everything else the cluster controller does is tested on a real
//! control plane (tests/cluster_credentials.rs).
//!
//! - Writes of one Secret that fail with a chosen error, more times than a reconcile retries
//!   ([`Fault`]): a real API server fails a write only when it is down or overloaded, and
//!   then every write fails, not one object's.
//! - An object the API server's admission never checked: the real server refuses a
//!   ClientCredential that names another namespace's Secret (the CRD's validation rules), so
//!   only the double, which does not validate, can store one and show that the controller
//!   refuses it too (an object created before the rule existed, or with validation off).
//!
//! The controller runs in-process with --cluster-credentials; the token endpoint is a real
//! HTTP server on 127.0.0.1. Waits are on conditions with a timeout, never sleeps.

mod support;
mod token_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::apiserver::{ApiServer, Fault, Verb};
use support::controller::*;
use token_server::{Reply, TokenServer};
use tokensync::api::ClusterClientCredential;

const PLATFORM: &str = "platform";
const LABEL: &str = "tokensync.io/auth0-token";

/// A token endpoint that counts what it issues.
struct Endpoint {
    server: TokenServer,
    issued: Arc<AtomicU32>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let issued = Arc::new(AtomicU32::new(0));
        let i = issued.clone();
        let server = TokenServer::start(move |r| {
            if r.basic() != Some(("platform-client".into(), "platform-secret".into())) {
                return Reply::oauth_error(401, "invalid_client", "bad client");
            }
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(200, json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 3600}))
        })
        .await;
        Endpoint { server, issued }
    }

    fn issued(&self) -> u32 {
        self.issued.load(Ordering::SeqCst)
    }
}

async fn cluster_api() -> ApiServer {
    ApiServer::builder()
        .crd(&tokensync::api::crd())
        .crd(&tokensync::api::cluster::crd())
        .namespaces(&["default", PLATFORM])
        .start()
        .await
}

async fn create_namespace(api: &ApiServer, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(api.client()).create(&PostParams::default(), &ns).await.unwrap();
}

async fn create_source(api: &ApiServer) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("auth0-client".into()),
            namespace: Some(PLATFORM.into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([
            ("client_id".to_owned(), "platform-client".to_owned()),
            ("client_secret".to_owned(), "platform-secret".to_owned()),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(api.client(), PLATFORM).create(&PostParams::default(), &secret).await.unwrap();
}

fn ccc(name: &str, endpoint: &Endpoint) -> ClusterClientCredential {
    serde_json::from_value(json!({
        "apiVersion": "tokensync.io/v1alpha1",
        "kind": "ClusterClientCredential",
        "metadata": {"name": name},
        "spec": {
            "tokenEndpoint": endpoint.server.url("/oauth/token"),
            "credentialsRef": {"name": "auth0-client", "namespace": PLATFORM},
            "target": {
                "name": "auth0-token",
                "namespaces": ["listed"],
                "namespaceSelector": {"matchLabels": {LABEL: "yes"}},
                "excludeNamespaces": ["excluded"]
            }
        }
    }))
    .unwrap()
}

fn copy(v: &support::apiserver::View<'_>, namespace: &str) -> Option<String> {
    let s: Secret = v.get(Some(namespace), "auth0-token")?;
    s.data?.get("access_token").map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// Waits until the copies in `namespaces` are exactly `want` (None: no copy).
async fn wait_copies(api: &ApiServer, want: &[(&str, Option<&str>)]) {
    let result = api.wait_for(|v| want.iter().all(|(ns, token)| copy(v, ns).as_deref() == *token), WAIT).await;
    if result.is_err() {
        let now: BTreeMap<&str, Option<String>> =
            api.inspect(|v| want.iter().map(|(ns, _)| (*ns, copy(v, ns))).collect());
        let status = api.get::<ClusterClientCredential>(None, "auth0").and_then(|c| c.status);
        panic!("copies never became {want:?}: {now:?}; status {status:#?}");
    }
}

#[tokio::test]
async fn a_state_write_that_keeps_failing_costs_no_second_token_request() {
    let api = cluster_api().await;
    let endpoint = Endpoint::start().await;
    create_source(&api).await;
    create_namespace(&api, "listed", &[]).await;
    create_namespace(&api, "labelled-a", &[(LABEL, "yes")]).await;
    create_namespace(&api, "labelled-b", &[(LABEL, "yes")]).await;
    create_namespace(&api, "unlabelled", &[]).await;
    create_namespace(&api, "excluded", &[(LABEL, "yes")]).await;
    // More failures than one reconcile retries: the token must survive in memory.
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("auth0.tokensync-cluster-state").times(7));
    let _c = start(&api, args(&["--cluster-credentials"]));
    Api::<ClusterClientCredential>::all(api.client())
        .create(&PostParams::default(), &ccc("auth0", &endpoint))
        .await
        .unwrap();
    wait_copies(&api, &[("listed", Some("token-1")), ("labelled-a", Some("token-1")), ("labelled-b", Some("token-1"))])
        .await;
    assert!(api.get::<Secret>(Some(PLATFORM), "auth0.tokensync-cluster-state").is_some());
    assert_eq!(endpoint.issued(), 1);
}

/// The real API server refuses this ClientCredential at admission
/// (tests/cluster_credentials.rs); the controller refuses it as well, should one be stored.
#[tokio::test]
async fn a_client_credential_admission_never_checked_still_cannot_read_a_secret_in_another_namespace() {
    let api = cluster_api().await;
    let endpoint = Endpoint::start().await;
    create_source(&api).await;
    create_namespace(&api, NS, &[]).await;
    let _c = start(&api, args(&["--cluster-credentials"]));
    Cc::new("sneaky", &endpoint.server.url("/oauth/token"))
        .spec(json!({"credentialsRef": {"name": "auth0-client", "namespace": PLATFORM}}))
        .create(&api)
        .await;
    wait_condition(&api, "sneaky", "Ready", ("False", "InvalidSpec")).await;
    let message = status(&api, "sneaky").unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains("spec.credentialsRef.namespace"), "{message}");
    assert_eq!(endpoint.issued(), 0);
    assert!(secret_data(&api, "sneaky").is_none());
}

//! ClusterClientCredential: one token request per renewal, written to every selected
//! namespace. The controller runs in-process with --cluster-credentials against the API
//! server double; the token endpoint is a real HTTP server on 127.0.0.1. Waits are on
//! conditions with a timeout, never sleeps.

mod federation;
mod support;
mod token_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Fault, Verb};
use support::controller::*;
use token_server::{Reply, TokenServer};
use tokensync::api::{ClusterClientCredential, ClusterClientCredentialStatus, ServiceAccountStatus};

const PLATFORM: &str = "platform";
const LABEL: &str = "tokensync.io/auth0-token";

/// A token endpoint that counts what it issues and can be made to fail.
struct Endpoint {
    server: TokenServer,
    issued: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let (issued, failing) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
        let (i, f) = (issued.clone(), failing.clone());
        let server = TokenServer::start(move |r| {
            if f.load(Ordering::SeqCst) {
                return Reply::text(503, "text/html", "<html>maintenance</html>");
            }
            if r.basic() != Some(("platform-client".into(), "platform-secret".into())) {
                return Reply::oauth_error(401, "invalid_client", "bad client");
            }
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(200, json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 3600}))
        })
        .await;
        Endpoint { server, issued, failing }
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

async fn label_namespace(api: &ApiServer, name: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {LABEL: value}}});
    Api::<Namespace>::all(api.client()).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
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

/// Fixture builder for ClusterClientCredentials.
struct Ccc(Value);

impl Ccc {
    fn new(name: &str, endpoint: &Endpoint) -> Ccc {
        Ccc(json!({
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
    }

    fn spec(mut self, patch: Value) -> Ccc {
        merge(&mut self.0["spec"], patch);
        self
    }

    async fn create(self, api: &ApiServer) {
        let ccc: ClusterClientCredential = serde_json::from_value(self.0).unwrap();
        Api::<ClusterClientCredential>::all(api.client()).create(&PostParams::default(), &ccc).await.unwrap();
    }
}

fn copy(v: &support::apiserver::View<'_>, namespace: &str) -> Option<String> {
    let s: Secret = v.get(Some(namespace), "auth0-token")?;
    s.data?.get("access_token").map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

fn copies(api: &ApiServer, namespaces: &[&str]) -> BTreeMap<String, Option<String>> {
    api.inspect(|v| namespaces.iter().map(|ns| (ns.to_string(), copy(v, ns))).collect())
}

fn ccc_status(api: &ApiServer, name: &str) -> Option<ClusterClientCredentialStatus> {
    api.get::<ClusterClientCredential>(None, name).and_then(|c| c.status)
}

/// Waits until the copies in `namespaces` are exactly `want` (None: no copy).
async fn wait_copies(api: &ApiServer, want: &[(&str, Option<&str>)]) {
    let result = api.wait_for(|v| want.iter().all(|(ns, token)| copy(v, ns).as_deref() == *token), WAIT).await;
    if result.is_err() {
        let names: Vec<&str> = want.iter().map(|(ns, _)| *ns).collect();
        panic!("copies never became {want:?}: {:?}; status {:#?}", copies(api, &names), ccc_status(api, "auth0"));
    }
}

async fn wait_ccc(
    api: &ApiServer,
    name: &str,
    what: &str,
    mut check: impl FnMut(&ClusterClientCredentialStatus) -> bool,
) {
    let result = api
        .wait_for(
            |v| v.get::<ClusterClientCredential>(None, name).and_then(|c| c.status).is_some_and(|s| check(&s)),
            WAIT,
        )
        .await;
    if result.is_err() {
        panic!("{name}: never {what}; status {:#?}", ccc_status(api, name));
    }
}

fn cond(s: &ClusterClientCredentialStatus, type_: &str) -> (String, String) {
    s.credential
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// Platform namespace with the source Secret; `listed` (by name), `labelled-a` and
/// `labelled-b` (by label), `unlabelled` and `excluded` (labelled but excluded).
async fn fleet(api: &ApiServer) {
    create_source(api).await;
    create_namespace(api, "listed", &[]).await;
    create_namespace(api, "labelled-a", &[(LABEL, "yes")]).await;
    create_namespace(api, "labelled-b", &[(LABEL, "yes")]).await;
    create_namespace(api, "unlabelled", &[]).await;
    create_namespace(api, "excluded", &[(LABEL, "yes")]).await;
}

/// The fleet, a controller with --cluster-credentials and the ClusterClientCredential
/// `auth0` (spec patched by `spec`), once the three selected namespaces hold token-1.
async fn running_fleet(spec: Value) -> (ApiServer, Endpoint, Running) {
    let api = cluster_api().await;
    let endpoint = Endpoint::start().await;
    fleet(&api).await;
    let controller = start(&api, args(&["--cluster-credentials"]));
    Ccc::new("auth0", &endpoint).spec(spec).create(&api).await;
    wait_copies(&api, &SELECTED.map(|ns| (ns, Some("token-1")))).await;
    (api, endpoint, controller)
}

/// The namespaces [`fleet`] has selected.
const SELECTED: [&str; 3] = ["listed", "labelled-a", "labelled-b"];

fn renew_now(api: &ApiServer, value: &str) -> impl std::future::Future<Output = ()> {
    let api = Api::<ClusterClientCredential>::all(api.client());
    let patch = json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": value}}});
    async move {
        api.patch("auth0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
}

#[tokio::test]
async fn one_token_request_per_renewal_reaches_every_selected_namespace() {
    let api = cluster_api().await;
    let endpoint = Endpoint::start().await;
    fleet(&api).await;
    let _c = start(&api, args(&["--cluster-credentials"]));
    Ccc::new("auth0", &endpoint).create(&api).await;

    wait_copies(
        &api,
        &[
            ("listed", Some("token-1")),
            ("labelled-a", Some("token-1")),
            ("labelled-b", Some("token-1")),
            ("unlabelled", None),
            ("excluded", None),
        ],
    )
    .await;
    wait_ccc(&api, "auth0", "Ready with 3 synced", |s| {
        cond(s, "Ready") == ("True".into(), "TokenIssued".into()) && s.synced_namespaces == Some(3)
    })
    .await;
    let s = ccc_status(&api, "auth0").unwrap();
    assert_eq!((s.selected_namespaces, s.failed_namespaces), (Some(3), Some(0)));
    assert_eq!(endpoint.issued(), 1, "one request for three namespaces");
    // The copies are labelled for the cluster credential, and carry no ownerReference.
    let copy: Secret = api.get(Some("labelled-a"), "auth0-token").unwrap();
    let labels = copy.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("tokensync.io/cluster-client-credential").map(String::as_str), Some("auth0"));
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("tokensync"));
    assert!(copy.metadata.owner_references.is_none());
    // The client secret and the refresh state stay in the platform namespace.
    assert!(copy.data.unwrap().values().all(|v| !String::from_utf8_lossy(&v.0).contains("platform-secret")));
    let state: Option<Secret> = api.get(Some(PLATFORM), "auth0.tokensync-cluster-state");
    assert!(state.is_some(), "the state Secret lives in the credentials namespace");

    // A renewal is one more request, and every copy gets its token.
    renew_now(&api, "r1").await;
    wait_copies(&api, &[("listed", Some("token-2")), ("labelled-a", Some("token-2")), ("labelled-b", Some("token-2"))])
        .await;
    assert_eq!(endpoint.issued(), 2);
}

#[tokio::test]
async fn namespaces_that_start_matching_get_the_token_without_a_request_and_those_that_stop_lose_their_copy() {
    let (api, endpoint, _c) = running_fleet(json!({})).await;
    wait_copies(&api, &[("unlabelled", None)]).await;

    // A namespace gains the label, and a new labelled namespace is created.
    label_namespace(&api, "unlabelled", Some("yes")).await;
    create_namespace(&api, "created-later", &[(LABEL, "yes")]).await;
    wait_copies(&api, &[("unlabelled", Some("token-1")), ("created-later", Some("token-1"))]).await;
    assert_eq!(endpoint.issued(), 1, "the current token, without a new request");

    // A namespace loses the label: its copy is removed; the others stay.
    label_namespace(&api, "labelled-b", None).await;
    wait_copies(&api, &[("labelled-b", None), ("labelled-a", Some("token-1"))]).await;
    wait_ccc(&api, "auth0", "4 synced", |s| s.synced_namespaces == Some(4)).await;
    assert_eq!(endpoint.issued(), 1);
}

#[tokio::test]
async fn deleting_the_cluster_credential_removes_every_copy_and_its_state() {
    let (api, _endpoint, _c) = running_fleet(json!({})).await;
    let ccc: ClusterClientCredential = api.get(None, "auth0").unwrap();
    assert!(ccc.metadata.finalizers.unwrap_or_default().contains(&"tokensync.io/cleanup".to_owned()));

    Api::<ClusterClientCredential>::all(api.client()).delete("auth0", &DeleteParams::default()).await.unwrap();
    let gone = api
        .wait_for(
            |v| {
                ["listed", "labelled-a", "labelled-b"].iter().all(|ns| copy(v, ns).is_none())
                    && v.get::<Secret>(Some(PLATFORM), "auth0.tokensync-cluster-state").is_none()
                    && v.get::<ClusterClientCredential>(None, "auth0").is_none()
            },
            WAIT,
        )
        .await;
    assert!(gone.is_ok(), "copies left: {:?}", copies(&api, &["listed", "labelled-a", "labelled-b"]));
    // The source Secret is the platform team's: untouched.
    assert!(api.get::<Secret>(Some(PLATFORM), "auth0-client").is_some());
}

#[tokio::test]
async fn with_deletion_policy_retain_copies_outlive_the_cluster_credential() {
    let (api, _endpoint, _c) = running_fleet(json!({"target": {"deletionPolicy": "Retain"}})).await;
    Api::<ClusterClientCredential>::all(api.client()).delete("auth0", &DeleteParams::default()).await.unwrap();
    api.wait_for(|v| v.get::<ClusterClientCredential>(None, "auth0").is_none(), WAIT).await.unwrap();
    assert_eq!(copies(&api, &["listed", "labelled-a"]).values().flatten().count(), 2, "the copies stay");
    assert!(api.get::<Secret>(Some(PLATFORM), "auth0.tokensync-cluster-state").is_none(), "the state goes");
}

#[tokio::test]
async fn a_failing_endpoint_keeps_every_copy_s_valid_token() {
    let (api, endpoint, _c) = running_fleet(json!({})).await;

    endpoint.failing.store(true, Ordering::SeqCst);
    renew_now(&api, "r1").await;
    wait_ccc(&api, "auth0", "Degraded by the endpoint", |s| {
        cond(s, "Degraded") == ("True".into(), "TokenEndpointUnavailable".into())
            && s.credential.failed_attempts >= Some(1)
    })
    .await;
    let s = ccc_status(&api, "auth0").unwrap();
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()), "the published token is still valid");
    let message = &s.credential.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
    assert!(!message.contains("platform-secret"), "{message}");
    assert_eq!(
        copies(&api, &["listed", "labelled-a", "labelled-b"]).values().flatten().collect::<Vec<_>>(),
        vec!["token-1", "token-1", "token-1"],
        "every copy keeps its valid token"
    );

    // The endpoint heals; the next renewal reaches every namespace.
    endpoint.failing.store(false, Ordering::SeqCst);
    renew_now(&api, "r2").await;
    wait_copies(&api, &[("listed", Some("token-2")), ("labelled-a", Some("token-2")), ("labelled-b", Some("token-2"))])
        .await;
    wait_ccc(&api, "auth0", "healthy again", |s| cond(s, "Degraded") == ("False".into(), "Healthy".into())).await;
}

#[tokio::test]
async fn a_foreign_secret_in_one_namespace_is_left_alone_and_named_in_status() {
    let api = cluster_api().await;
    let endpoint = Endpoint::start().await;
    fleet(&api).await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("auth0-token".into()),
            namespace: Some("labelled-b".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("access_token".to_owned(), "theirs".to_owned())])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(api.client(), "labelled-b").create(&PostParams::default(), &foreign).await.unwrap();
    let _c = start(&api, args(&["--cluster-credentials"]));
    Ccc::new("auth0", &endpoint).create(&api).await;

    wait_copies(&api, &[("listed", Some("token-1")), ("labelled-a", Some("token-1"))]).await;
    wait_ccc(&api, "auth0", "one failed namespace", |s| s.failed_namespaces == Some(1)).await;
    let s = ccc_status(&api, "auth0").unwrap();
    assert_eq!(s.synced_namespaces, Some(2));
    assert_eq!(s.namespace_failures.len(), 1);
    assert_eq!(s.namespace_failures[0].namespace, "labelled-b");
    assert!(s.namespace_failures[0].message.contains("not managed by this ClusterClientCredential"));
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()));
    assert_eq!(cond(&s, "Degraded"), ("True".into(), "TargetNamespacesFailed".into()));
    assert_eq!(copies(&api, &["labelled-b"])["labelled-b"].as_deref(), Some("theirs"), "never overwritten");
}

#[tokio::test]
async fn a_client_credential_still_cannot_read_a_secret_in_another_namespace() {
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

#[tokio::test]
async fn a_state_write_that_keeps_failing_costs_no_second_token_request() {
    let api = cluster_api().await;
    let endpoint = Endpoint::start().await;
    fleet(&api).await;
    // More failures than one reconcile retries: the token must survive in memory.
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("auth0.tokensync-cluster-state").times(7));
    let _c = start(&api, args(&["--cluster-credentials"]));
    Ccc::new("auth0", &endpoint).create(&api).await;
    wait_copies(&api, &[("listed", Some("token-1")), ("labelled-a", Some("token-1")), ("labelled-b", Some("token-1"))])
        .await;
    assert!(api.get::<Secret>(Some(PLATFORM), "auth0.tokensync-cluster-state").is_some());
    assert_eq!(endpoint.issued(), 1);
}

#[tokio::test]
async fn an_invalid_spec_change_keeps_every_copy_s_valid_token() {
    let (api, endpoint, _c) = running_fleet(json!({})).await;
    // A scope with a space: refused by the schema at admission, and by the controller when
    // admission did not run.
    let patch = json!({"spec": {"scopes": ["read write"]}});
    Api::<ClusterClientCredential>::all(api.client())
        .patch("auth0", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_ccc(&api, "auth0", "Degraded by the invalid spec", |s| {
        cond(s, "Degraded") == ("True".into(), "InvalidSpec".into())
    })
    .await;
    let s = ccc_status(&api, "auth0").unwrap();
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()), "the published token is still valid");
    assert_eq!(copies(&api, &SELECTED).values().flatten().count(), 3, "every copy stays");
    assert_eq!(endpoint.issued(), 1);
}

/// Issue 12 (the rule the ClientCredential controller and the agent share): a wrong client
/// secret put back clears its rejection within seconds, without a token request. Issue 16:
/// a key another writer adds to a copy is removed, its labels stay.
#[tokio::test]
async fn a_source_secret_put_back_clears_its_failure_and_copies_hold_only_what_tokensync_renders() {
    let (api, endpoint, _c) = running_fleet(json!({})).await;
    let sources: Api<Secret> = Api::namespaced(api.client(), PLATFORM);
    let set_secret = |value: &str| json!({"stringData": {"client_secret": value}});

    sources.patch("auth0-client", &PatchParams::default(), &Patch::Merge(&set_secret("wrong"))).await.unwrap();
    wait_ccc(&api, "auth0", "rejected", |s| {
        cond(s, "Degraded") == ("True".into(), "TokenRequestRejected".into()) && s.credential.failed_attempts == Some(1)
    })
    .await;
    sources
        .patch("auth0-client", &PatchParams::default(), &Patch::Merge(&set_secret("platform-secret")))
        .await
        .unwrap();
    wait_ccc(&api, "auth0", "healthy again", |s| {
        cond(s, "Degraded") == ("False".into(), "Healthy".into()) && s.credential.failed_attempts.is_none()
    })
    .await;
    assert_eq!((endpoint.issued(), endpoint.server.requests().len()), (1, 2), "one token, one rejected attempt");

    let intruder = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "auth0-token", "labels": {"backup.example/include": "true"}},
        "data": {"junk": "anVuaw=="},
    });
    let copies_in_a: Api<Secret> = Api::namespaced(api.client(), "labelled-a");
    copies_in_a
        .patch("auth0-token", &PatchParams::apply("another-controller"), &Patch::Apply(&intruder))
        .await
        .unwrap();
    let copy = api
        .wait_for_value(
            |v| {
                v.get::<Secret>(Some("labelled-a"), "auth0-token")
                    .filter(|s| !s.data.as_ref().unwrap().contains_key("junk"))
            },
            WAIT,
        )
        .await
        .expect("the key another manager added to the copy is removed");
    assert_eq!(copy.metadata.labels.unwrap()["backup.example/include"], "true");
    assert_eq!(endpoint.issued(), 1);
}

#[tokio::test]
async fn a_service_account_token_replaces_the_secret_one_token_request_per_renewal_in_its_namespace() {
    const AUDIENCE: &str = "https://auth.example/oauth2/token";
    let api = cluster_api().await;
    fleet(&api).await;
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "platform-sync",
        "namespace": PLATFORM, "annotations": {"tokensync.io/allowed-audiences": AUDIENCE}}});
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), PLATFORM);
    sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
    // A jwt-bearer endpoint verifying each assertion against the double's published keys,
    // for the platform ServiceAccount only; token-N for the Nth verified one.
    let (issuer, subject) = (api.service_account_issuer(), format!("system:serviceaccount:{PLATFORM}:platform-sync"));
    let jwks = federation::fetch_jwks(&issuer).await;
    let issued = Arc::new(AtomicU32::new(0));
    let counter = issued.clone();
    let server = TokenServer::start(move |r| {
        let assertion = r.params().get("assertion").cloned().unwrap_or_default();
        match federation::verify(&assertion, &jwks, &issuer, AUDIENCE) {
            Ok(claims) if claims["sub"] == json!(subject) => {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                Reply::json(
                    200,
                    json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 3600}),
                )
            }
            Ok(claims) => Reply::oauth_error(400, "invalid_grant", &format!("untrusted subject {}", claims["sub"])),
            Err(e) => Reply::oauth_error(400, "invalid_grant", &e),
        }
    })
    .await;
    let _c = start(&api, args(&["--cluster-credentials"]));
    let spec = json!({
        "tokenEndpoint": server.url("/token"),
        "credentialsRef": null,
        "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": "platform-sync", "namespace": PLATFORM, "audience": AUDIENCE},
    });
    let endpoint = Endpoint::start().await;
    Ccc::new("auth0", &endpoint).spec(spec).create(&api).await;

    wait_copies(&api, &SELECTED.map(|ns| (ns, Some("token-1")))).await;
    wait_copies(&api, &[("unlabelled", None), ("excluded", None)]).await;
    wait_ccc(&api, "auth0", "Ready", |s| cond(s, "Ready") == ("True".into(), "TokenIssued".into())).await;
    assert_eq!(
        ccc_status(&api, "auth0").unwrap().credential.service_account,
        Some(ServiceAccountStatus {
            namespace: PLATFORM.into(),
            name: "platform-sync".into(),
            audience: AUDIENCE.into()
        })
    );
    let token_requests = |api: &ApiServer| api.count(Verb::Create, "serviceaccounts", Some("token"));
    assert_eq!((token_requests(&api), server.requests().len()), (1, 1), "one ServiceAccount token for all copies");

    for (n, at) in ["r1", "r2"].into_iter().enumerate() {
        renew_now(&api, at).await;
        let token = format!("token-{}", n + 2);
        wait_copies(&api, &SELECTED.map(|ns| (ns, Some(token.as_str())))).await;
        assert_eq!((token_requests(&api), server.requests().len()), (n + 2, n + 2), "renewal {at}");
    }
    // Every TokenRequest was for the ServiceAccount in its own namespace, none in a target.
    for r in api.requests().iter().filter(|r| r.subresource.as_deref() == Some("token")) {
        assert_eq!((r.namespace.as_deref(), r.name.as_deref()), (Some(PLATFORM), Some("platform-sync")));
    }
    assert_eq!((issued.load(Ordering::SeqCst), endpoint.issued()), (3, 0), "no client secret was used");
}

//! ClusterClientCredential: one token request per renewal, written to every selected
//! namespace, on a real Kubernetes control plane (etcd, kube-apiserver and
//! kube-controller-manager, see `tests/support/control_plane.rs`). The controller runs
//! in-process with --cluster-credentials and the shipped API client stack; the token endpoint
//! is a real HTTP server on 127.0.0.1. Waits watch the objects until a condition holds, with a
//! timeout, never sleeps.
//!
//! Each test has a control plane of its own ([`ControlPlane::dedicated`], a few seconds to
//! start): a controller with --cluster-credentials reconciles every ClusterClientCredential
//! in the cluster, and every ClientCredential in every namespace, whatever their names, so
//! two tests sharing a cluster would each request tokens for the other's credentials and
//! write the other's copies. Conditions only the API server double can stage (one Secret's
//! writes failing on demand, an object admission never checked) are in
//! `tests/cluster_credentials_staged_faults.rs`.

mod federation;
mod support;
mod token_server;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use jsonwebtoken::jwk::JwkSet;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::control_plane::ControlPlane;
use support::controller::{Cc, Running, args, merge};
use support::real::{Env, WAIT, kube_requests};
use token_server::{Reply, TokenServer};
use tokensync::api::{ClientCredential, ClusterClientCredential, ClusterClientCredentialStatus, ServiceAccountStatus};

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

/// A control plane of this test's own, with the platform team's namespace; the
/// environment's namespace is [`PLATFORM`].
async fn cluster() -> Cluster {
    let plane = ControlPlane::dedicated();
    let client = plane.client().await;
    let env = Env { plane, client, ns: PLATFORM.into() };
    create_namespace(&env, PLATFORM, &[]).await;
    Cluster(Some(env))
}

/// One test's control plane. Dropped, it stops the control plane on a thread of its own:
/// stopping takes seconds (the launcher's orderly stop), which the test need not wait for,
/// and which nothing outlives (the launcher stops everything once its stdin is closed).
struct Cluster(Option<Env>);

impl std::ops::Deref for Cluster {
    type Target = Env;

    fn deref(&self) -> &Env {
        self.0.as_ref().expect("a running cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(env) = self.0.take() {
            std::thread::spawn(move || drop(env));
        }
    }
}

async fn start_controller(env: &Env) -> Running {
    env.start_unscoped(args(&["--cluster-credentials"])).await
}

fn namespaces(env: &Env) -> Api<Namespace> {
    Api::all(env.client.clone())
}

fn cccs(env: &Env) -> Api<ClusterClientCredential> {
    Api::all(env.client.clone())
}

fn secrets_in(env: &Env, namespace: &str) -> Api<Secret> {
    Api::namespaced(env.client.clone(), namespace)
}

async fn create_namespace(env: &Env, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces(env).create(&PostParams::default(), &ns).await.unwrap();
}

async fn label_namespace(env: &Env, name: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {LABEL: value}}});
    namespaces(env).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn create_source(env: &Env) {
    env.create_secret("auth0-client", &[("client_id", "platform-client"), ("client_secret", "platform-secret")]).await;
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

    async fn create(self, env: &Env) {
        let ccc: ClusterClientCredential = serde_json::from_value(self.0).unwrap();
        cccs(env).create(&PostParams::default(), &ccc).await.unwrap();
    }
}

fn token_of(secret: Option<&Secret>) -> Option<String> {
    secret?.data.as_ref()?.get("access_token").map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

async fn copy(env: &Env, namespace: &str) -> Option<String> {
    token_of(secrets_in(env, namespace).get_opt("auth0-token").await.unwrap().as_ref())
}

async fn copies(env: &Env, namespaces: &[&str]) -> BTreeMap<String, Option<String>> {
    let mut all = BTreeMap::new();
    for ns in namespaces {
        all.insert(ns.to_string(), copy(env, ns).await);
    }
    all
}

async fn ccc_status(env: &Env, name: &str) -> Option<ClusterClientCredentialStatus> {
    cccs(env).get_opt(name).await.unwrap().and_then(|c| c.status)
}

/// Watches `name` in `api` until `cond` holds; None after [`WAIT`].
async fn watch_until<K>(
    api: Api<K>,
    name: &str,
    cond: impl Fn(Option<&K>) -> bool + Send + 'static,
) -> Option<Option<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    let found = tokio::time::timeout(WAIT, await_condition(api, name, cond)).await.ok()?;
    Some(found.expect("watching the object"))
}

/// Waits until the copies in these namespaces are `want` (None: no copy), then checks that
/// they all are at once.
async fn wait_copies(env: &Env, want: &[(&str, Option<&str>)]) {
    let names: Vec<&str> = want.iter().map(|(ns, _)| *ns).collect();
    let expected: BTreeMap<String, Option<String>> =
        want.iter().map(|(ns, token)| (ns.to_string(), token.map(str::to_owned))).collect();
    for (ns, token) in want {
        let token = token.map(str::to_owned);
        if watch_until(secrets_in(env, ns), "auth0-token", move |s| token_of(s) == token).await.is_none() {
            panic!(
                "copies never became {want:?}: {:?}; status {:#?}",
                copies(env, &names).await,
                ccc_status(env, "auth0").await
            );
        }
    }
    assert_eq!(copies(env, &names).await, expected, "the copies, all at once");
}

async fn wait_ccc(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&ClusterClientCredentialStatus) -> bool + Send + 'static,
) {
    let found = watch_until(cccs(env), name, move |c: Option<&ClusterClientCredential>| {
        c.and_then(|c| c.status.as_ref()).is_some_and(&check)
    })
    .await;
    if found.is_none() {
        panic!("{name}: never {what}; status {:#?}", ccc_status(env, name).await);
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
async fn fleet(env: &Env) {
    create_source(env).await;
    create_namespace(env, "listed", &[]).await;
    create_namespace(env, "labelled-a", &[(LABEL, "yes")]).await;
    create_namespace(env, "labelled-b", &[(LABEL, "yes")]).await;
    create_namespace(env, "unlabelled", &[]).await;
    create_namespace(env, "excluded", &[(LABEL, "yes")]).await;
}

/// The fleet, a controller with --cluster-credentials and the ClusterClientCredential
/// `auth0` (spec patched by `spec`), once the three selected namespaces hold token-1.
async fn running_fleet(spec: Value) -> (Cluster, Endpoint, Running) {
    let env = cluster().await;
    let endpoint = Endpoint::start().await;
    fleet(&env).await;
    let controller = start_controller(&env).await;
    Ccc::new("auth0", &endpoint).spec(spec).create(&env).await;
    wait_copies(&env, &SELECTED.map(|ns| (ns, Some("token-1")))).await;
    (env, endpoint, controller)
}

/// The namespaces [`fleet`] has selected.
const SELECTED: [&str; 3] = ["listed", "labelled-a", "labelled-b"];

async fn renew_now(env: &Env, value: &str) {
    let patch = json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": value}}});
    cccs(env).patch("auth0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

#[tokio::test]
async fn one_token_request_per_renewal_reaches_every_selected_namespace() {
    let env = cluster().await;
    let endpoint = Endpoint::start().await;
    fleet(&env).await;
    let _c = start_controller(&env).await;
    Ccc::new("auth0", &endpoint).create(&env).await;

    wait_copies(
        &env,
        &[
            ("listed", Some("token-1")),
            ("labelled-a", Some("token-1")),
            ("labelled-b", Some("token-1")),
            ("unlabelled", None),
            ("excluded", None),
        ],
    )
    .await;
    wait_ccc(&env, "auth0", "Ready with 3 synced", |s| {
        cond(s, "Ready") == ("True".into(), "TokenIssued".into()) && s.synced_namespaces == Some(3)
    })
    .await;
    let s = ccc_status(&env, "auth0").await.unwrap();
    assert_eq!((s.selected_namespaces, s.failed_namespaces), (Some(3), Some(0)));
    assert_eq!(endpoint.issued(), 1, "one request for three namespaces");
    // The copies are labelled for the cluster credential, and carry no ownerReference.
    let copy = secrets_in(&env, "labelled-a").get("auth0-token").await.unwrap();
    let labels = copy.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("tokensync.io/cluster-client-credential").map(String::as_str), Some("auth0"));
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("tokensync"));
    assert!(copy.metadata.owner_references.is_none());
    // The client secret and the refresh state stay in the platform namespace.
    assert!(copy.data.unwrap().values().all(|v| !String::from_utf8_lossy(&v.0).contains("platform-secret")));
    let state = env.secret("auth0.tokensync-cluster-state").await;
    assert!(state.is_some(), "the state Secret lives in the credentials namespace");

    // A renewal is one more request, and every copy gets its token.
    renew_now(&env, "r1").await;
    wait_copies(&env, &[("listed", Some("token-2")), ("labelled-a", Some("token-2")), ("labelled-b", Some("token-2"))])
        .await;
    assert_eq!(endpoint.issued(), 2);
}

#[tokio::test]
async fn namespaces_that_start_matching_get_the_token_without_a_request_and_those_that_stop_lose_their_copy() {
    let (env, endpoint, _c) = running_fleet(json!({})).await;
    wait_copies(&env, &[("unlabelled", None)]).await;

    // A namespace gains the label, and a new labelled namespace is created.
    label_namespace(&env, "unlabelled", Some("yes")).await;
    create_namespace(&env, "created-later", &[(LABEL, "yes")]).await;
    wait_copies(&env, &[("unlabelled", Some("token-1")), ("created-later", Some("token-1"))]).await;
    assert_eq!(endpoint.issued(), 1, "the current token, without a new request");

    // A namespace loses the label: its copy is removed; the others stay.
    label_namespace(&env, "labelled-b", None).await;
    wait_copies(&env, &[("labelled-b", None), ("labelled-a", Some("token-1"))]).await;
    wait_ccc(&env, "auth0", "4 synced", |s| s.synced_namespaces == Some(4)).await;
    assert_eq!(endpoint.issued(), 1);
}

/// The test control plane's kube-controller-manager runs every controller as
/// `system:kube-controller-manager` (`--use-service-account-credentials=false`), whose
/// bootstrap ClusterRole may not delete a namespace's content nor update namespaces/status:
/// its namespace controller fails ("cannot deletecollection resource ...") and a deleted
/// namespace stays Terminating for ever. A real cluster runs that controller as the
/// `namespace-controller` ServiceAccount with the bootstrap ClusterRole
/// `system:controller:namespace-controller`; this binds that role to the identity the test
/// control plane's controller manager has.
async fn let_the_namespace_controller_finalize_namespaces(env: &Env) {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tokensync-test:namespace-controller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "system:controller:namespace-controller"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-controller-manager"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(env.client.clone()).create(&PostParams::default(), &binding).await.unwrap();
}

/// Deleting a namespace is asynchronous on a real cluster: it is Terminating while the
/// namespace controller (kube-controller-manager) deletes its content, the copy included,
/// then it is gone. A terminating namespace is no longer selected, and is no failure; a
/// namespace created again under the same name gets the current token again.
#[tokio::test]
async fn a_deleted_namespace_leaves_the_selection_without_a_failure_and_gets_the_token_when_created_again() {
    let (env, endpoint, _c) = running_fleet(json!({})).await;
    let_the_namespace_controller_finalize_namespaces(&env).await;
    wait_ccc(&env, "auth0", "3 synced", |s| s.synced_namespaces == Some(3)).await;

    namespaces(&env).delete("labelled-b", &DeleteParams::default()).await.unwrap();
    if watch_until(namespaces(&env), "labelled-b", |ns| ns.is_none()).await.is_none() {
        panic!("namespace labelled-b was never finalized: {:#?}", namespaces(&env).get_opt("labelled-b").await);
    }
    wait_ccc(&env, "auth0", "2 selected and synced", |s| {
        (s.selected_namespaces, s.synced_namespaces) == (Some(2), Some(2))
    })
    .await;
    let s = ccc_status(&env, "auth0").await.unwrap();
    assert_eq!((s.failed_namespaces, s.namespace_failures.len()), (Some(0), 0), "{s:#?}");
    assert_eq!(cond(&s, "Degraded"), ("False".into(), "Healthy".into()));
    assert_eq!(copies(&env, &["listed", "labelled-a"]).await.values().flatten().count(), 2, "the others stay");

    create_namespace(&env, "labelled-b", &[(LABEL, "yes")]).await;
    wait_copies(&env, &SELECTED.map(|ns| (ns, Some("token-1")))).await;
    wait_ccc(&env, "auth0", "3 synced again", |s| s.synced_namespaces == Some(3)).await;
    assert_eq!(endpoint.issued(), 1, "the current token, without a new request");
}

#[tokio::test]
async fn deleting_the_cluster_credential_removes_every_copy_and_its_state() {
    let (env, _endpoint, _c) = running_fleet(json!({})).await;
    let ccc = cccs(&env).get("auth0").await.unwrap();
    assert!(ccc.metadata.finalizers.unwrap_or_default().contains(&"tokensync.io/cleanup".to_owned()));

    cccs(&env).delete("auth0", &DeleteParams::default()).await.unwrap();
    if watch_until(cccs(&env), "auth0", |c| c.is_none()).await.is_none() {
        panic!("auth0 was never deleted: {:#?}", cccs(&env).get_opt("auth0").await);
    }
    // The finalizer removed the copies and the state before letting it go.
    assert_eq!(
        copies(&env, &SELECTED).await,
        SELECTED.iter().map(|ns| (ns.to_string(), None)).collect(),
        "copies left"
    );
    assert!(env.secret("auth0.tokensync-cluster-state").await.is_none(), "the state goes");
    // The source Secret is the platform team's: untouched.
    assert!(env.secret("auth0-client").await.is_some());
}

#[tokio::test]
async fn with_deletion_policy_retain_copies_outlive_the_cluster_credential() {
    let (env, _endpoint, _c) = running_fleet(json!({"target": {"deletionPolicy": "Retain"}})).await;
    cccs(&env).delete("auth0", &DeleteParams::default()).await.unwrap();
    if watch_until(cccs(&env), "auth0", |c| c.is_none()).await.is_none() {
        panic!("auth0 was never deleted: {:#?}", cccs(&env).get_opt("auth0").await);
    }
    assert_eq!(copies(&env, &["listed", "labelled-a"]).await.values().flatten().count(), 2, "the copies stay");
    assert!(env.secret("auth0.tokensync-cluster-state").await.is_none(), "the state goes");
}

#[tokio::test]
async fn a_failing_endpoint_keeps_every_copy_s_valid_token() {
    let (env, endpoint, _c) = running_fleet(json!({})).await;

    endpoint.failing.store(true, Ordering::SeqCst);
    renew_now(&env, "r1").await;
    wait_ccc(&env, "auth0", "Degraded by the endpoint", |s| {
        cond(s, "Degraded") == ("True".into(), "TokenEndpointUnavailable".into())
            && s.credential.failed_attempts >= Some(1)
    })
    .await;
    let s = ccc_status(&env, "auth0").await.unwrap();
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()), "the published token is still valid");
    let message = &s.credential.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
    assert!(!message.contains("platform-secret"), "{message}");
    assert_eq!(
        copies(&env, &SELECTED).await.values().flatten().collect::<Vec<_>>(),
        vec!["token-1", "token-1", "token-1"],
        "every copy keeps its valid token"
    );

    // The endpoint heals; the next renewal reaches every namespace.
    endpoint.failing.store(false, Ordering::SeqCst);
    renew_now(&env, "r2").await;
    wait_copies(&env, &[("listed", Some("token-2")), ("labelled-a", Some("token-2")), ("labelled-b", Some("token-2"))])
        .await;
    wait_ccc(&env, "auth0", "healthy again", |s| cond(s, "Degraded") == ("False".into(), "Healthy".into())).await;
}

#[tokio::test]
async fn a_foreign_secret_in_one_namespace_is_left_alone_and_named_in_status() {
    let env = cluster().await;
    let endpoint = Endpoint::start().await;
    fleet(&env).await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("auth0-token".into()),
            namespace: Some("labelled-b".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("access_token".to_owned(), "theirs".to_owned())])),
        ..Default::default()
    };
    secrets_in(&env, "labelled-b").create(&PostParams::default(), &foreign).await.unwrap();
    let _c = start_controller(&env).await;
    Ccc::new("auth0", &endpoint).create(&env).await;

    wait_copies(&env, &[("listed", Some("token-1")), ("labelled-a", Some("token-1"))]).await;
    wait_ccc(&env, "auth0", "one failed namespace", |s| s.failed_namespaces == Some(1)).await;
    let s = ccc_status(&env, "auth0").await.unwrap();
    assert_eq!(s.synced_namespaces, Some(2));
    assert_eq!(s.namespace_failures.len(), 1);
    assert_eq!(s.namespace_failures[0].namespace, "labelled-b");
    assert!(s.namespace_failures[0].message.contains("not managed by this ClusterClientCredential"));
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()));
    assert_eq!(cond(&s, "Degraded"), ("True".into(), "TargetNamespacesFailed".into()));
    assert_eq!(copy(&env, "labelled-b").await.as_deref(), Some("theirs"), "never overwritten");
}

/// A ClientCredential reads Secrets in its own namespace only: the CRD's validation rules
/// make the API server refuse one that names another namespace, so no controller ever sees
/// it. (The controller refuses it too, should admission not have run:
/// tests/cluster_credentials_staged_faults.rs.)
#[tokio::test]
async fn the_api_server_refuses_a_client_credential_that_names_a_secret_in_another_namespace() {
    let env = cluster().await;
    let endpoint = Endpoint::start().await;
    create_source(&env).await;
    let team = env.plane.namespace("team").await;
    let sneaky = Cc::new("sneaky", &endpoint.server.url("/oauth/token"))
        .spec(json!({"credentialsRef": {"name": "auth0-client", "namespace": PLATFORM}}))
        .namespace(&team)
        .build();
    let ccs: Api<ClientCredential> = Api::namespaced(env.client.clone(), &team);
    let refused = ccs.create(&PostParams::default(), &sneaky).await.expect_err("the API server refuses it");
    let kube::Error::Api(status) = refused else { panic!("not an API error: {refused:?}") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{status:?}");
    assert!(status.message.contains("spec.credentialsRef.namespace"), "{}", status.message);
}

#[tokio::test]
async fn an_invalid_spec_change_keeps_every_copy_s_valid_token() {
    let (env, endpoint, _c) = running_fleet(json!({})).await;
    // A scope with a space is refused by the schema at admission.
    let patch = json!({"spec": {"scopes": ["read write"]}});
    let refused = cccs(&env).patch("auth0", &PatchParams::default(), &Patch::Merge(&patch)).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.scopes")),
        "{refused:?}"
    );
    // An operator a label selector does not have passes the schema (it types the operator
    // as a string), and the controller refuses it. Should the schema ever refuse it too, this
    // part can only run on the API server double, which does not validate.
    let patch = json!({"spec": {"target": {"namespaceSelector": {"matchExpressions": [
        {"key": LABEL, "operator": "Equals", "values": ["yes"]}
    ]}}}});
    cccs(&env).patch("auth0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_ccc(&env, "auth0", "Degraded by the invalid spec", |s| {
        cond(s, "Degraded") == ("True".into(), "InvalidSpec".into())
    })
    .await;
    let s = ccc_status(&env, "auth0").await.unwrap();
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()), "the published token is still valid");
    let message = &s.credential.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
    assert!(message.contains("spec.target.namespaceSelector"), "{message}");
    assert_eq!(copies(&env, &SELECTED).await.values().flatten().count(), 3, "every copy stays");
    assert_eq!(endpoint.issued(), 1);
}

/// Issue 12 (the rule the ClientCredential controller and the agent share): a wrong client
/// secret put back clears its rejection within seconds, without a token request. Issue 16:
/// a key another writer adds to a copy is removed, its labels stay.
#[tokio::test]
async fn a_source_secret_put_back_clears_its_failure_and_copies_hold_only_what_tokensync_renders() {
    let (env, endpoint, _c) = running_fleet(json!({})).await;
    let sources = env.secrets();
    let set_secret = |value: &str| json!({"stringData": {"client_secret": value}});

    sources.patch("auth0-client", &PatchParams::default(), &Patch::Merge(&set_secret("wrong"))).await.unwrap();
    wait_ccc(&env, "auth0", "rejected", |s| {
        cond(s, "Degraded") == ("True".into(), "TokenRequestRejected".into()) && s.credential.failed_attempts == Some(1)
    })
    .await;
    sources
        .patch("auth0-client", &PatchParams::default(), &Patch::Merge(&set_secret("platform-secret")))
        .await
        .unwrap();
    wait_ccc(&env, "auth0", "healthy again", |s| {
        cond(s, "Degraded") == ("False".into(), "Healthy".into()) && s.credential.failed_attempts.is_none()
    })
    .await;
    assert_eq!((endpoint.issued(), endpoint.server.requests().len()), (1, 2), "one token, one rejected attempt");

    let intruder = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "auth0-token", "labels": {"backup.example/include": "true"}},
        "data": {"junk": "anVuaw=="},
    });
    let copies_in_a = secrets_in(&env, "labelled-a");
    copies_in_a
        .patch("auth0-token", &PatchParams::apply("another-controller"), &Patch::Apply(&intruder))
        .await
        .unwrap();
    let copy = watch_until(copies_in_a, "auth0-token", |s: Option<&Secret>| {
        s.is_some_and(|s| !s.data.as_ref().unwrap().contains_key("junk"))
    })
    .await
    .expect("the key another manager added to the copy is removed")
    .unwrap();
    assert_eq!(copy.metadata.labels.unwrap()["backup.example/include"], "true");
    assert_eq!(endpoint.issued(), 1);
}

/// The keys the API server signs ServiceAccount tokens with, found as an identity provider
/// finds them (discovery, then jwks_uri), through the admin's client: the discovery
/// endpoints of this control plane are not open to anonymous requests.
async fn service_account_keys(env: &Env) -> JwkSet {
    let get = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
    let doc: Value = env.client.request(get("/.well-known/openid-configuration")).await.unwrap();
    assert_eq!(doc["issuer"], json!(env.plane.issuer()), "the discovery document names the issuer");
    let jwks_uri = url::Url::parse(doc["jwks_uri"].as_str().unwrap()).unwrap();
    env.client.request(get(jwks_uri.path())).await.unwrap()
}

#[tokio::test]
async fn a_service_account_token_replaces_the_secret_one_token_request_per_renewal_in_its_namespace() {
    const AUDIENCE: &str = "https://auth.example/oauth2/token";
    let env = cluster().await;
    fleet(&env).await;
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "platform-sync",
        "namespace": PLATFORM, "annotations": {"tokensync.io/allowed-audiences": AUDIENCE}}});
    let sas: Api<ServiceAccount> = env.api();
    sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
    // A jwt-bearer endpoint verifying each assertion against the API server's published
    // keys, for the platform ServiceAccount only; token-N for the Nth verified one.
    let (issuer, subject) = (env.plane.issuer().to_owned(), format!("system:serviceaccount:{PLATFORM}:platform-sync"));
    let jwks = service_account_keys(&env).await;
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
    let c = start_controller(&env).await;
    let spec = json!({
        "tokenEndpoint": server.url("/token"),
        "credentialsRef": null,
        "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": "platform-sync", "namespace": PLATFORM, "audience": AUDIENCE},
    });
    let endpoint = Endpoint::start().await;
    Ccc::new("auth0", &endpoint).spec(spec).create(&env).await;

    wait_copies(&env, &SELECTED.map(|ns| (ns, Some("token-1")))).await;
    wait_copies(&env, &[("unlabelled", None), ("excluded", None)]).await;
    wait_ccc(&env, "auth0", "Ready", |s| cond(s, "Ready") == ("True".into(), "TokenIssued".into())).await;
    assert_eq!(
        ccc_status(&env, "auth0").await.unwrap().credential.service_account,
        Some(ServiceAccountStatus {
            namespace: PLATFORM.into(),
            name: "platform-sync".into(),
            audience: AUDIENCE.into()
        })
    );
    // The controller's TokenRequests (serviceaccounts/token), as its client counts them.
    let token_requests = || kube_requests(&c.metrics, "create", "serviceaccounts/token") as usize;
    assert_eq!((token_requests(), server.requests().len()), (1, 1), "one ServiceAccount token for all copies");

    for (n, at) in ["r1", "r2"].into_iter().enumerate() {
        renew_now(&env, at).await;
        let token = format!("token-{}", n + 2);
        wait_copies(&env, &SELECTED.map(|ns| (ns, Some(token.as_str())))).await;
        assert_eq!((token_requests(), server.requests().len()), (n + 2, n + 2), "renewal {at}");
    }
    // Every TokenRequest was for the ServiceAccount in its own namespace, none in a target:
    // each one the controller made produced an assertion the endpoint verified as
    // platform/platform-sync's (a TokenRequest anywhere else would have failed, or been for
    // another subject).
    assert_eq!((issued.load(Ordering::SeqCst), endpoint.issued()), (3, 0), "no client secret was used");
}

/// The controller's requests of what a ClusterClientCredential costs: GETs, writes by kind.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Cost {
    secret_gets: u64,
    credential_gets: u64,
    secret_writes: u64,
    status_writes: u64,
}

fn cost(c: &Running) -> Cost {
    let count = |verb: &str, resource: &str| kube_requests(&c.metrics, verb, resource);
    Cost {
        secret_gets: count("get", "secrets"),
        credential_gets: count("get", "clusterclientcredentials"),
        secret_writes: ["create", "apply", "patch", "update", "delete"].iter().map(|v| count(v, "secrets")).sum(),
        status_writes: count("patch", "clusterclientcredentials/status")
            + count("apply", "clusterclientcredentials/status"),
    }
}

impl std::ops::Sub for Cost {
    type Output = Cost;

    fn sub(self, before: Cost) -> Cost {
        Cost {
            secret_gets: self.secret_gets - before.secret_gets,
            credential_gets: self.credential_gets - before.credential_gets,
            secret_writes: self.secret_writes - before.secret_writes,
            status_writes: self.status_writes - before.status_writes,
        }
    }
}

/// Waits until the status records the token the copies hold (the last write of a renewal).
async fn wait_recorded(env: &Env, token: &str) {
    wait_copies(env, &SELECTED.map(|ns| (ns, Some(token)))).await;
    let expires = secrets_in(env, "listed").get("auth0-token").await.unwrap().metadata.annotations.unwrap()
        ["tokensync.io/expires-at"]
        .clone();
    wait_ccc(env, "auth0", "recording the published token", move |s| {
        s.credential.expires_at.as_ref().map(|t| t.0.to_string()) == Some(expires.clone())
            && s.synced_namespaces == Some(3)
    })
    .await;
}

/// The cost rules of ClientCredentials (tests/api_costs.rs) hold for the cluster kind, which
/// runs the same pipeline: a renewal is one token request, one state write, one write per
/// copy and one status write, and reads nothing the cache vouches for; a restart with valid
/// tokens writes nothing and reads only the source Secret. Counted by the controller's
/// own request metric (`tokensync_kube_requests_total`) on a real API server.
#[tokio::test]
async fn a_cluster_credential_renewal_costs_one_request_and_one_write_per_copy_and_a_restart_writes_nothing() {
    let env = cluster().await;
    let endpoint = Endpoint::start().await;
    fleet(&env).await;
    let c = start_controller(&env).await;
    Ccc::new("auth0", &endpoint).create(&env).await;
    wait_recorded(&env, "token-1").await;
    let first = cost(&c);
    // The first token: the source Secret read once, and one look at each copy's name before
    // taking it (a Secret tokensync does not manage is never taken over); the state Secret
    // created then applied, three copies, one status.
    assert_eq!(first, Cost { secret_gets: 4, credential_gets: 0, secret_writes: 5, status_writes: 1 }, "first token");

    for (n, at) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let before = cost(&c);
        let reconciles = c.metrics.reconciles();
        renew_now(&env, at).await;
        wait_recorded(&env, &format!("token-{}", n + 2)).await;
        let spent = cost(&c) - before;
        assert_eq!(endpoint.issued(), n as u32 + 2, "one token request per renewal");
        assert_eq!(
            spent,
            Cost { secret_gets: 0, credential_gets: 0, secret_writes: 4, status_writes: 1 },
            "renewal {at}: the state Secret, three copies and the status, nothing read"
        );
        // Our own writes (state, copies, status) start no reconcile of their own: the
        // annotation's, and at most one more for a write the watch delivered before its
        // response arrived.
        let reconciled = c.metrics.reconciles() - reconciles;
        assert!(reconciled <= 2, "renewal {at}: {reconciled} reconciles");
    }

    // A restart with valid tokens: the caches are the truth, nothing is requested, read or written.
    c.stop().await;
    let restarted = start_controller(&env).await;
    assert!(restarted.metrics.wait_for_reconciles(1, WAIT).await, "the restarted controller reconciles");
    // A routine reconcile of the credential after the first one: it would show a write or a
    // read the first one made late.
    renew_status_check(&env).await;
    assert!(restarted.metrics.wait_for_reconciles(2, WAIT).await, "the restarted controller reconciles again");
    // Nothing written and no credential read; the source Secret is read once, as for a
    // ClientCredential: its data is what the stored token's inputs fingerprint is checked
    // against (docs/performance.md, "Restart").
    let spent = cost(&restarted);
    assert_eq!(spent, Cost { secret_gets: 1, credential_gets: 0, secret_writes: 0, status_writes: 0 }, "restart");
    assert_eq!(endpoint.issued(), 4, "no token request on restart");
}

/// Touches the ClusterClientCredential without changing what tokensync decides from (a label
/// of the user's): one more reconcile, which must find nothing to do.
async fn renew_status_check(env: &Env) {
    let patch = json!({"metadata": {"labels": {"team": "platform"}}});
    cccs(env).patch("auth0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

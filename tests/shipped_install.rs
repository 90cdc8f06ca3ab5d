//! The shipped installs on a real control plane, with exactly their RBAC: `kubectl apply -k`
//! of deploy/manifests (cluster-wide), deploy/manifests/namespaced and the
//! deploy/cluster-credentials overlay with the real kubectl, then the controller
//! in-process as the installed Deployment runs it, and with nothing more:
//!
//! - as the Deployment's ServiceAccount: a TokenRequest token for it (what `kubectl create
//!   token` gives, and what a pod gets mounted), the API server's CA, the token in a file
//!   ([`service_accounts::client_config`], kube's in-cluster configuration but for the URL);
//! - with the container's arguments, read from the Deployment the API server now holds, and
//!   its `POD_NAME` / `POD_NAMESPACE` fields (passed as the flags those variables feed);
//! - the whole operator ([`tokensync::controller::run_with`]): leader election on the Lease
//!   included, not only the reconcilers.
//!
//! Test-only additions, none of which touches the Kubernetes API: `--allow-http` (the token
//! servers are plain HTTP on 127.0.0.1) and `--admin-addr 127.0.0.1:0` (tests run in
//! parallel). A verb the RBAC lacks makes the API server refuse a request (403 Forbidden) and a
//! step below never happens; besides, no request of the controller may have been refused
//! ([`Replica::assert_nothing_forbidden`]: the client records every 403 answer, around the
//! shipped client stack), which also catches a refusal the controller only logs.
//! The cluster-wide and namespaced tests also prove the credentials are limited: what the
//! install does not grant is refused.
//!
//! Each install runs on a control plane of its own (`ControlPlane::dedicated`): they all use
//! the ServiceAccount tokensync-system/tokensync, so the bindings of one would grant the
//! controller of another. No pod runs (the control plane has no scheduler nor kubelet): the
//! Deployment is only read.

mod deploy;
mod federation;
mod service_accounts;
mod support;
mod token_server;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::control_plane::ControlPlane;
use support::controller::Cc;
use support::real::{Env, wait_on};
use token_server::{Reply, TokenServer};
use tokensync::api::{ClusterClientCredential, ClusterClientCredentialStatus};
use tokensync::controller::ControllerArgs;
use tokensync::metrics::Metrics;
use tokensync::telemetry::LogFormat;

const CLUSTER_WIDE: &str = "deploy/manifests";
const NAMESPACED: &str = "deploy/manifests/namespaced";
const CLUSTER_CREDENTIALS: &str = "deploy/cluster-credentials";

/// This replica's name, as POD_NAME would give it.
const POD_NAME: &str = "tokensync-7d9f8b6c4-x2x7q";

/// The `tokensync` command line, as src/main.rs reads it, for the subcommand the Deployment
/// runs.
#[derive(Parser)]
struct Binary {
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Controller(ControllerArgs),
}

/// Applies an install with the real kubectl (`kubectl apply -k DIR`); returns its Deployment
/// as the API server holds it.
async fn install(plane: &ControlPlane, dir: &str) -> Deployment {
    let path = deploy::repo().join(dir);
    let mut kubectl = plane.kubectl();
    kubectl.arg("apply").arg("-k").arg(&path);
    let out = tokio::task::spawn_blocking(move || kubectl.output()).await.unwrap().expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl apply -k {dir} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments: Api<Deployment> = Api::namespaced(plane.client().await, deploy::SYSTEM_NAMESPACE);
    deployments.get("tokensync").await.expect("the install's Deployment")
}

/// How the Deployment runs the controller.
struct Pod {
    namespace: String,
    service_account: String,
    /// The container's arguments, as installed.
    args: Vec<String>,
}

impl Pod {
    fn of(deployment: &Deployment) -> Pod {
        let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let container = pod.containers.iter().find(|c| c.name == "controller").expect("the controller container");
        // The environment the flags below stand for.
        let env: BTreeMap<&str, &str> = container
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.as_str(), e.value_from.as_ref()?.field_ref.as_ref()?.field_path.as_str())))
            .collect();
        assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"), "{env:?}");
        assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"), "{env:?}");
        Pod {
            namespace: deployment.metadata.namespace.clone().unwrap(),
            service_account: pod.service_account_name.clone().expect("a ServiceAccount"),
            args: container.args.clone().unwrap_or_default(),
        }
    }

    /// The controller's arguments: the container's, parsed as the binary parses them, then
    /// what its environment gives (POD_NAME, POD_NAMESPACE) and the test-only additions.
    fn controller_args(&self) -> ControllerArgs {
        let mut argv = vec!["tokensync".to_owned()];
        argv.extend(self.args.iter().cloned());
        argv.extend(["--identity".into(), POD_NAME.into()]);
        argv.extend(["--leader-election-namespace".into(), self.namespace.clone()]);
        argv.extend(["--allow-http", "--admin-addr", "127.0.0.1:0"].map(String::from));
        let Command::Controller(args) =
            Binary::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command;
        args
    }

    async fn client_config(&self, plane: &ControlPlane) -> kube::Config {
        let admin = plane.client().await;
        let config = service_accounts::client_config(plane, &admin, &self.namespace, &self.service_account).await;
        let me = format!("system:serviceaccount:{}:{}", self.namespace, self.service_account);
        assert_eq!(service_accounts::who_am_i(config.clone()).await, Ok(me), "the install's ServiceAccount");
        config
    }
}

/// The whole operator in-process, as `tokensync controller` runs it.
struct Replica {
    task: tokio::task::JoinHandle<Result<(), String>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Requests the API server answered 403 Forbidden: "METHOD path?query".
    forbidden: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn start(config: kube::Config, args: ControllerArgs) -> Replica {
        let metrics = Arc::new(Metrics::default());
        let forbidden = Arc::new(Mutex::new(Vec::new()));
        let client = recording_forbidden(config, &args, &metrics, forbidden.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            tokensync::controller::run_with(client, args, shutdown, metrics).await.map_err(|e| e.to_string())
        });
        Replica { task, stop: Some(tx), forbidden }
    }

    /// Runs a step of the test while the operator runs: the step fails if the operator
    /// exits first (leader election lost, a fatal error), and a failing step tells which
    /// requests the API server refused.
    async fn during<T>(&mut self, step: impl Future<Output = T>) -> T {
        let step = std::panic::AssertUnwindSafe(step).catch_unwind();
        let done = tokio::select! {
            biased;
            exited = &mut self.task => Err(exited),
            done = step => Ok(done),
        };
        match done {
            Err(exited) => panic!("the controller exited: {exited:?}; forbidden: {:#?}", self.forbidden()),
            Ok(Ok(out)) => out,
            Ok(Err(panic)) => {
                eprintln!("requests the API server refused (403): {:#?}", self.forbidden());
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn forbidden(&self) -> Vec<String> {
        self.forbidden.lock().unwrap().clone()
    }

    /// The install allowed every request the controller made.
    fn assert_nothing_forbidden(&self) {
        let forbidden = self.forbidden();
        assert!(forbidden.is_empty(), "the API server refused requests of the controller (403): {forbidden:#?}");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        let stopped = tokio::time::timeout(support::real::WAIT, task).await.expect("the controller stops on shutdown");
        assert_eq!(stopped.unwrap(), Ok(()));
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client the binary builds ([`tokensync::controller::api_client`]: API timeout,
/// retries, request counting), inside a layer that records every request answered 403.
fn recording_forbidden(
    config: kube::Config,
    args: &ControllerArgs,
    metrics: &Metrics,
    forbidden: Arc<Mutex<Vec<String>>>,
) -> kube::Client {
    let namespace = config.default_namespace.clone();
    let shipped = tokensync::controller::api_client(config, args.api_timeout, metrics).unwrap();
    let service = tower::service_fn(move |request: axum::http::Request<kube::client::Body>| {
        let (shipped, forbidden) = (shipped.clone(), forbidden.clone());
        async move {
            let what = format!("{} {}", request.method(), request.uri());
            let response = shipped.send(request).await?;
            if response.status() == axum::http::StatusCode::FORBIDDEN {
                forbidden.lock().unwrap().push(what);
            }
            Ok::<_, kube::Error>(response)
        }
    });
    kube::Client::new(service, namespace)
}

/// Waits until this replica holds the install's Lease (a get, and a create: the Lease is
/// new); returns its renew time.
async fn wait_leader(plane: &ControlPlane, pod: &Pod) -> jiff::Timestamp {
    let leases: Api<Lease> = Api::namespaced(plane.client().await, &pod.namespace);
    let held = wait_on(leases, deploy::LEASE, &format!("held by {POD_NAME}"), |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some(POD_NAME)
    })
    .await
    .unwrap();
    held.spec.unwrap().renew_time.expect("a renew time").0
}

/// Waits until the holder has renewed the Lease since `renewed` (a replace: the `update`
/// the Role grants by name).
async fn wait_renewed(plane: &ControlPlane, pod: &Pod, renewed: jiff::Timestamp) {
    let leases: Api<Lease> = Api::namespaced(plane.client().await, &pod.namespace);
    wait_on(leases, deploy::LEASE, "renewed by its holder", move |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref()).is_some_and(|s| {
            s.holder_identity.as_deref() == Some(POD_NAME) && s.renew_time.as_ref().is_some_and(|t| t.0 > renewed)
        })
    })
    .await;
}

/// A token endpoint issuing `token-N` valid `lifetime` seconds to client cid/csecret.
struct Endpoint {
    server: TokenServer,
    issued: Arc<AtomicU32>,
}

impl Endpoint {
    async fn start(lifetime: u64) -> Endpoint {
        let issued = Arc::new(AtomicU32::new(0));
        let n = issued.clone();
        let server = TokenServer::start(move |r| {
            let p = r.params();
            if p.get("client_id").map(String::as_str) != Some("cid")
                || p.get("client_secret").map(String::as_str) != Some("csecret")
            {
                return Reply::oauth_error(401, "invalid_client", "unknown client");
            }
            let n = n.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(
                200,
                json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": lifetime}),
            )
        })
        .await;
        Endpoint { server, issued }
    }

    fn url(&self) -> String {
        self.server.url("/token")
    }

    fn issued(&self) -> u32 {
        self.issued.load(Ordering::SeqCst)
    }
}

async fn create_namespace(admin: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// An environment in namespace `ns` of `plane`, which exists.
async fn env_in(plane: &ControlPlane, ns: &str) -> Env {
    Env { plane: plane.clone(), client: plane.client().await, ns: ns.into() }
}

/// A ClientCredential with its source Secret, as in examples/.
async fn credential(env: &Env, name: &str, endpoint: &Endpoint) {
    env.create_secret(&format!("{name}-client"), &[("client_id", "cid"), ("client_secret", "csecret")]).await;
    env.create_cc(Cc::new(name, &endpoint.url())).await;
}

/// Ready with a token in the target Secret, status written (observedGeneration, expiry,
/// Degraded False), and an Event saying so from this replica.
async fn assert_issued_and_reported(replica: &mut Replica, env: &Env, name: &str, token: &str) {
    replica.during(env.wait_condition(name, "Ready", ("True", "TokenIssued"))).await;
    replica.during(env.wait_secret_value(name, "access_token", token)).await;
    let cc = env.cc(name).await.unwrap();
    let status = cc.status.unwrap();
    assert_eq!(status.observed_generation, cc.metadata.generation);
    assert!(status.expires_at.is_some() && status.renew_at.is_some() && status.last_refresh_time.is_some());
    assert_eq!(env.condition(name, "Degraded").await, Some(("False".into(), "Healthy".into())));
    let target = env.secret(name).await.unwrap();
    assert_eq!(target.metadata.labels.unwrap()["app.kubernetes.io/managed-by"], "tokensync");
    let name = name.to_owned();
    replica
        .during(env.wait_events("said TokenIssued about the credential", move |all| {
            all.iter().any(|e| {
                e["reason"] == "TokenIssued"
                    && e["regarding"]["name"] == json!(name)
                    && e["reportingController"] == "tokensync"
                    && e["reportingInstance"] == POD_NAME
            })
        }))
        .await;
}

async fn wait_for<K>(
    replica: &mut Replica,
    api: Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool + Send + 'static,
) -> Option<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    replica.during(wait_on(api, name, what, cond)).await
}

/// The cluster-wide install: a ClientCredential becomes Ready with its token in the target
/// Secret, status and Events written; the token is renewed when due (default timings: half
/// of a 20 s lifetime, no sooner than --min-renewal-interval's 10 s); a renamed target
/// replaces the old Secret (delete); a secretless credential gets its ServiceAccount token
/// (serviceaccounts get, TokenRequest); the Lease is taken and renewed.
#[tokio::test]
async fn the_cluster_wide_install_issues_renews_and_reports_with_only_its_shipped_rbac() {
    let plane = ControlPlane::dedicated();
    let pod = Pod::of(&install(&plane, CLUSTER_WIDE).await);
    assert_eq!(pod.args, ["controller", "--leader-elect", "--log-format=json"], "the args this test was written for");
    let config = pod.client_config(&plane).await;

    // The credentials are the install's only: what it does not grant is refused.
    let as_install = kube::Client::try_from(config.clone()).unwrap();
    let refused = Api::<ConfigMap>::all(as_install.clone()).list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 403), "{refused}");
    let other_lease = Lease { metadata: ObjectMeta { name: Some("other".into()), ..Default::default() }, spec: None };
    let leases: Api<Lease> = Api::namespaced(as_install.clone(), &pod.namespace);
    leases.create(&PostParams::default(), &other_lease).await.unwrap();
    let refused = leases.get("other").await.unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "only the controller's Lease may be read: {refused}"
    );

    let env = Env::on(plane.clone(), "team").await;
    let endpoint = Endpoint::start(20).await;
    let mut replica = Replica::start(config, pod.controller_args());
    let acquired = replica.during(wait_leader(&plane, &pod)).await;

    credential(&env, "demo", &endpoint).await;
    assert_issued_and_reported(&mut replica, &env, "demo", "token-1").await;
    // Renewed when due, by the scheduled renewal.
    replica.during(env.wait_secret_value("demo", "access_token", "token-2")).await;

    // A renamed target: written anew, the old one deleted.
    env.merge_patch_cc("demo", json!({"spec": {"target": {"name": "demo-renamed"}}})).await;
    replica.during(env.wait_secret_value("demo-renamed", "access_token", "token-2")).await;
    replica.during(env.wait_secret_gone("demo")).await;

    // Secretless: the install reads the ServiceAccount and requests its token.
    service_accounts::make_public(&env.client).await;
    let jwks = service_accounts::jwks(&plane).await;
    let audience = "https://auth.example/oauth2/token";
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "batch", "annotations": {"tokensync.io/allowed-audiences": audience}}});
    env.api::<ServiceAccount>().create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
    let idp = federation::jwt_bearer::start_trusting(env.plane.issuer(), audience, jwks).await;
    let spec = json!({"credentialsRef": null, "clientAuthentication": "none",
        "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "serviceAccountRef": {"name": "batch", "audience": audience}});
    env.create_cc(Cc::new("batch", &idp.url("/token")).spec(spec)).await;
    replica.during(env.wait_condition("batch", "Ready", ("True", "TokenIssued"))).await;
    let subject = format!("system:serviceaccount:{}:batch", env.ns);
    assert_eq!(env.secret_data("batch").await.unwrap()["access_token"], format!("bearer-for-{subject}"));

    replica.during(wait_renewed(&plane, &pod, acquired)).await;
    replica.assert_nothing_forbidden();
    assert!(endpoint.issued() >= 2);
    replica.stop().await;
}

/// The namespaced install: the controller watches team-a and team-b, writes and reports in
/// both, renews on request; its ServiceAccount may not read or write Secrets anywhere else,
/// nor list them across the cluster.
#[tokio::test]
async fn the_namespaced_install_works_in_its_namespaces_and_is_refused_in_any_other() {
    let plane = ControlPlane::dedicated();
    let admin = plane.client().await;
    // The namespaces the install names must exist first (its manifest says so); team-c is not one.
    for ns in ["team-a", "team-b", "team-c"] {
        create_namespace(&admin, ns, &[]).await;
    }
    let pod = Pod::of(&install(&plane, NAMESPACED).await);
    let watched = deploy::watched_namespaces(&pod.args);
    assert_eq!(watched, ["team-a", "team-b"]);
    let config = pod.client_config(&plane).await;

    // What the install does not grant is refused: the controller's own requests (a
    // server-side apply of a target Secret, a read, a list) in team-c, or across the cluster.
    let as_install = kube::Client::try_from(config.clone()).unwrap();
    let elsewhere: Api<Secret> = Api::namespaced(as_install.clone(), "team-c");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo"}, "stringData": {"access_token": "x"}});
    let refusals = [
        elsewhere.patch("demo", &PatchParams::apply("tokensync").force(), &Patch::Apply(&secret)).await.unwrap_err(),
        elsewhere.get("demo").await.unwrap_err(),
        elsewhere.list(&ListParams::default()).await.unwrap_err(),
        Api::<Secret>::all(as_install.clone()).list(&ListParams::default()).await.unwrap_err(),
    ];
    for refused in refusals {
        assert!(matches!(&refused, kube::Error::Api(s) if s.code == 403), "{refused}");
    }
    assert!(Api::<Secret>::namespaced(admin.clone(), "team-c").get_opt("demo").await.unwrap().is_none());

    let endpoint = Endpoint::start(3600).await;
    let mut replica = Replica::start(config, pod.controller_args());
    let acquired = replica.during(wait_leader(&plane, &pod)).await;
    let (a, b) = (env_in(&plane, "team-a").await, env_in(&plane, "team-b").await);
    credential(&a, "demo", &endpoint).await;
    credential(&b, "demo", &endpoint).await;
    let mut tokens = Vec::new();
    for env in [&a, &b] {
        replica.during(env.wait_condition("demo", "Ready", ("True", "TokenIssued"))).await;
        tokens.push(env.secret_data("demo").await.unwrap()["access_token"].clone());
    }
    tokens.sort();
    assert_eq!(tokens, ["token-1", "token-2"]);
    for env in [&a, &b] {
        let token = env.secret_data("demo").await.unwrap()["access_token"].clone();
        assert_issued_and_reported(&mut replica, env, "demo", &token).await;
    }

    // A renewal on request.
    b.merge_patch_cc("demo", json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": "now"}}})).await;
    replica.during(b.wait_secret_value("demo", "access_token", "token-3")).await;
    replica
        .during(b.wait_status("demo", "with the renewal request handled", |s| {
            s.handled_renewal_request.as_deref() == Some("now")
        }))
        .await;

    replica.during(wait_renewed(&plane, &pod, acquired)).await;
    replica.assert_nothing_forbidden();
    assert_eq!(endpoint.issued(), 3);
    replica.stop().await;
}

/// The cluster-credentials overlay: the cluster-wide install plus --cluster-credentials and
/// its ClusterRole. A ClusterClientCredential gets its finalizer (patch), one token written
/// into the namespaces it selects by name and by label (including one labelled later: the
/// Namespace watch), status and an Event; deleting it removes every copy (the finalizer's
/// cleanup lists and deletes them).
#[tokio::test]
async fn the_cluster_credentials_overlay_copies_one_token_into_every_selected_namespace_with_only_its_rbac() {
    let plane = ControlPlane::dedicated();
    let admin = plane.client().await;
    let pod = Pod::of(&install(&plane, CLUSTER_CREDENTIALS).await);
    assert!(pod.args.iter().any(|a| a == "--cluster-credentials"), "{:?}", pod.args);
    let config = pod.client_config(&plane).await;

    const LABEL: &str = "tokensync.io/shared";
    create_namespace(&admin, "platform", &[]).await;
    create_namespace(&admin, "listed", &[]).await;
    create_namespace(&admin, "labelled", &[(LABEL, "yes")]).await;
    create_namespace(&admin, "later", &[]).await;
    let platform = env_in(&plane, "platform").await;
    platform.create_secret("shared-client", &[("client_id", "cid"), ("client_secret", "csecret")]).await;

    let endpoint = Endpoint::start(3600).await;
    let mut replica = Replica::start(config, pod.controller_args());
    let acquired = replica.during(wait_leader(&plane, &pod)).await;
    let ccc = json!({
        "apiVersion": "tokensync.io/v1alpha1", "kind": "ClusterClientCredential", "metadata": {"name": "shared"},
        "spec": {
            "tokenEndpoint": endpoint.url(),
            "clientAuthentication": "client_secret_post",
            "credentialsRef": {"name": "shared-client", "namespace": "platform"},
            "target": {"name": "shared-token", "namespaces": ["listed"], "namespaceSelector": {"matchLabels": {LABEL: "yes"}}},
        }
    });
    let cccs: Api<ClusterClientCredential> = Api::all(admin.clone());
    cccs.create(&PostParams::default(), &serde_json::from_value(ccc).unwrap()).await.unwrap();

    let synced = |n: i32| {
        move |c: Option<&ClusterClientCredential>| {
            c.and_then(|c| c.status.as_ref()).is_some_and(|s: &ClusterClientCredentialStatus| {
                s.synced_namespaces == Some(n)
                    && s.credential.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            })
        }
    };
    let ready =
        wait_for(&mut replica, cccs.clone(), "shared", "Ready with 2 namespaces synced", synced(2)).await.unwrap();
    assert!(ready.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "tokensync.io/cleanup"));
    for ns in ["listed", "labelled"] {
        let copy = env_in(&plane, ns).await;
        replica.during(copy.wait_secret_value("shared-token", "access_token", "token-1")).await;
    }
    // Events about a cluster-scoped object go to the default namespace.
    let default = env_in(&plane, "default").await;
    replica
        .during(default.wait_events("said TokenIssued about the ClusterClientCredential", |all| {
            all.iter().any(|e| e["reason"] == "TokenIssued" && e["regarding"]["name"] == "shared")
        }))
        .await;

    // A namespace labelled later gets the current token, without a token request.
    let patch = json!({"metadata": {"labels": {LABEL: "yes"}}});
    Api::<Namespace>::all(admin.clone()).patch("later", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let later = env_in(&plane, "later").await;
    replica.during(later.wait_secret_value("shared-token", "access_token", "token-1")).await;
    wait_for(&mut replica, cccs.clone(), "shared", "Ready with 3 namespaces synced", synced(3)).await;
    assert_eq!(endpoint.issued(), 1);

    // Deleting it removes every copy, then lets it go.
    cccs.delete("shared", &DeleteParams::default()).await.unwrap();
    wait_for(&mut replica, cccs.clone(), "shared", "deleted", |c| c.is_none()).await;
    for ns in ["listed", "labelled", "later"] {
        let copy = env_in(&plane, ns).await;
        assert!(copy.secret("shared-token").await.is_none(), "the copy in {ns} was removed");
    }
    replica.during(wait_renewed(&plane, &pod, acquired)).await;
    replica.assert_nothing_forbidden();
    replica.stop().await;
}

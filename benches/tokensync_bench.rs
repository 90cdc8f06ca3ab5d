//! tokensync-bench: the real `tokensync controller` binary against a Kubernetes API server
//! and a local token server, measuring scale, API requests per token, memory, and the time
//! of the issuance against the time of its writes alone (the "floor").
//!
//! The API server is the in-process double (`tests/support/apiserver`), or with
//! `--kubeconfig PATH` any real cluster (kind, k3d, a test cluster), or with `--real` a real
//! control plane of the run's own on loopback (`tests/support/control_plane.rs`: etcd,
//! kube-apiserver and kube-controller-manager built by `tests/kube/build.sh` on first use,
//! `TOKENSYNC_KUBE_VERSION` picks the version, default 1.36): the run is then exactly the
//! `--kubeconfig` run against it, and the control plane is stopped at the end, also after a
//! failure or Ctrl-C (its launcher stops when its stdin, held by this process, closes). The bench's own client
//! is built from a kubeconfig in both cases (on the double, one written for it), so every
//! object is created, watched and read through the same code.
//!
//! The controller runs as a CHILD PROCESS (the shipped binary, production logging to a file)
//! so that its CPU time and RSS are measured alone, without the API server double, the token
//! server or the benchmark's own bookkeeping, which live in this process. It reaches the
//! token server on 127.0.0.1, so it runs on this machine also against a real cluster.
//!
//! ```text
//! cargo bench --bench tokensync-bench -- [--credentials N] [--lifetime SECS] [--unrelated M]
//!     [--latency-ms MS] [--steady-seconds S] [--concurrency C] [--json]
//!     [--kubeconfig PATH [--context NAME] | --real] [--namespace NS] [--floor-namespace NS]
//!     [--controller-arg ARG]... [--no-steady]
//! ```
//! `--controller-arg` passes one more argument to every `tokensync controller` it starts
//! (e.g. `--controller-arg=--initial-list=streaming`); `--no-steady` stops after the restart
//! measurements. `TOKENSYNC_BENCH_LOG` (a RUST_LOG filter, e.g. `warn,tokensync=debug`) sets the
//! controller's log level; its log is kept when a credential got two tokens while issuing.
//! Defaults are a quick run (300 credentials, 90 s tokens) on the double. See
//! docs/performance.md.
//!
//! Duplicate token requests (`token_requests_duplicates`, per phase: issuance, restart,
//! renewal): the token server keeps every token it issued, a watch of the target Secrets every
//! token published; a request whose token was never published, or that came less than 0.4 × the
//! lifetime after the same credential's previous one, is counted. Figures the bench cannot
//! read (the controller's /metrics, /proc) fail the run instead of reading as 0.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, RequestRecord, Verb};
use tokensync::api::ClientCredential;

/// The double's name for the bench's own requests ([`support::apiserver::CLIENT_HEADER`]):
/// they are left out of the controller's counts. The controller's requests carry no name.
const BENCH_CLIENT: &str = "bench";

#[derive(Debug, Clone)]
struct Options {
    credentials: usize,
    lifetime: u64,
    unrelated: usize,
    latency_ms: u64,
    steady_seconds: u64,
    concurrency: u16,
    json: bool,
    controller_args: Vec<String>,
    steady: bool,
    kubeconfig: Option<PathBuf>,
    /// Start a real control plane (tests/kube) and run the --kubeconfig path against it.
    real: bool,
    context: Option<String>,
    namespace: String,
    floor_namespace: String,
    /// Test of the bench itself: the --kubeconfig path (counts from /metrics only, namespaces
    /// deleted and waited for) against the double, reached through a kubeconfig. Its double
    /// runs its garbage collector (for the namespace deletion), O(objects) per write: for a
    /// few hundred credentials at most.
    kubeconfig_on_double: bool,
}

fn options() -> Options {
    let mut o = Options {
        credentials: 300,
        lifetime: 90,
        unrelated: 0,
        latency_ms: 10,
        steady_seconds: 0,
        concurrency: 16,
        json: false,
        controller_args: Vec::new(),
        steady: true,
        kubeconfig: None,
        real: false,
        context: None,
        namespace: "tokensync-bench".into(),
        floor_namespace: "tokensync-bench-floor".into(),
        kubeconfig_on_double: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--credentials" | "-n" => o.credentials = value().parse().expect("number"),
            "--lifetime" => o.lifetime = value().parse().expect("seconds"),
            "--unrelated" => o.unrelated = value().parse().expect("number"),
            "--latency-ms" => o.latency_ms = value().parse().expect("ms"),
            "--steady-seconds" => o.steady_seconds = value().parse().expect("seconds"),
            "--concurrency" => o.concurrency = value().parse().expect("number"),
            "--kubeconfig" => o.kubeconfig = Some(value().into()),
            "--context" => o.context = Some(value()),
            "--namespace" => o.namespace = value(),
            "--floor-namespace" => o.floor_namespace = value(),
            "--kubeconfig-on-double" => o.kubeconfig_on_double = true,
            "--real" => o.real = true,
            "--controller-arg" => o.controller_args.push(value()),
            a if a.starts_with("--controller-arg=") => {
                o.controller_args.push(a["--controller-arg=".len()..].to_owned());
            }
            "--no-steady" => o.steady = false,
            "--json" => o.json = true,
            "--bench" => {} // passed by `cargo bench`
            "--help" | "-h" => {
                println!("see the top of benches/tokensync_bench.rs");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(o.context.is_none() || o.kubeconfig.is_some() || o.kubeconfig_on_double, "--context needs --kubeconfig");
    assert!(!(o.kubeconfig_on_double && o.kubeconfig.is_some()), "--kubeconfig-on-double writes its own kubeconfig");
    assert!(
        !o.real || (o.kubeconfig.is_none() && o.context.is_none() && !o.kubeconfig_on_double),
        "--real starts its own control plane: no --kubeconfig, --context or --kubeconfig-on-double with it"
    );
    assert_ne!(o.namespace, o.floor_namespace, "the floor needs its own namespace");
    o
}

// ---------------------------------------------------------------------------------------
// Token server: axum on 127.0.0.1, configurable latency and lifetime; counts requests per
// credential (client_id) and per wall-clock second, and keeps every token it issued.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Issued {
    /// Per credential: requests so far, and when the last one came.
    per_client: HashMap<String, (u32, Instant)>,
    per_second: BTreeMap<i64, u32>,
    /// Every token issued, in order (`<client_id>.<n>`, n counting that credential's requests),
    /// with whether its request was early: less than 0.4 × the lifetime after the previous
    /// request of the same credential. The earliest renewal the controller plans is at 0.45
    /// (half of the lifetime, moved earlier by at most 5 % of jitter), and nothing fails here.
    tokens: Vec<(String, bool)>,
    first: Option<Instant>,
}

#[derive(Clone)]
struct Issuer {
    issued: Arc<Mutex<Issued>>,
    lifetime: u64,
    latency: Duration,
}

async fn token(State(s): State<Issuer>, _headers: HeaderMap, body: String) -> axum::response::Response {
    let client = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let token = {
        let now = Instant::now();
        let mut i = s.issued.lock().unwrap();
        i.first.get_or_insert(now);
        *i.per_second.entry(jiff::Timestamp::now().as_second()).or_default() += 1;
        let (n, last) = i.per_client.entry(client.clone()).or_insert((0, now));
        let early = *n > 0 && now.duration_since(*last) < Duration::from_secs_f64(s.lifetime as f64 * 0.4);
        (*n, *last) = (*n + 1, now);
        let token = format!("{client}.{n}");
        i.tokens.push((token.clone(), early));
        token
    };
    if !s.latency.is_zero() {
        tokio::time::sleep(s.latency).await;
    }
    let body = json!({"access_token": token, "token_type": "Bearer", "expires_in": s.lifetime});
    axum::response::IntoResponse::into_response(([("content-type", "application/json")], body.to_string()))
}

impl Issuer {
    async fn start(lifetime: u64, latency: Duration) -> (Issuer, String) {
        let issuer = Issuer { issued: Arc::default(), lifetime, latency };
        let app = axum::Router::new().route("/token", axum::routing::post(token)).with_state(issuer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (issuer, url)
    }

    fn total(&self) -> u64 {
        self.issued.lock().unwrap().tokens.len() as u64
    }

    /// When the first token was requested.
    fn first(&self) -> Option<Instant> {
        self.issued.lock().unwrap().first
    }

    fn max_per_second(&self, from: i64, to: i64) -> u32 {
        let i = self.issued.lock().unwrap();
        i.per_second.range(from..=to).map(|(_, n)| *n).max().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// The cluster: the double or a kubeconfig's, reached the same way
// ---------------------------------------------------------------------------------------

struct Cluster {
    /// The bench's own client, built from `kubeconfig`.
    client: Client,
    /// The kubeconfig the controller runs with (its current context is the one used).
    kubeconfig: PathBuf,
    /// The API server double, when no --kubeconfig was given. Its request log is the primary
    /// count of the controller's requests there (checked against the controller's /metrics).
    double: Option<ApiServer>,
}

impl Cluster {
    async fn connect(o: &Options, dir: &Path) -> Cluster {
        let (double, path) = match &o.kubeconfig {
            Some(path) => (None, path.clone()),
            None => {
                let api = start_double(false).await;
                let path = dir.join("kubeconfig");
                write_kubeconfig(&api, &path);
                (Some(api), path)
            }
        };
        let mut kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("a readable kubeconfig");
        let path = match &o.context {
            None => path,
            Some(context) => {
                // The controller has no --context: it gets a copy whose current context is
                // this one (paths in it are absolute after read_from; kept in the temporary
                // directory, readable by this user only, removed at the end).
                assert!(
                    kubeconfig.contexts.iter().any(|c| &c.name == context),
                    "no context {context} in the kubeconfig"
                );
                kubeconfig.current_context = Some(context.clone());
                let copy = dir.join("kubeconfig-context.json");
                std::fs::write(&copy, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
                copy
            }
        };
        let options = kube::config::KubeConfigOptions::default();
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("a usable kubeconfig context");
        if double.is_some() {
            config.headers.push((
                axum::http::HeaderName::from_static(support::apiserver::CLIENT_HEADER),
                axum::http::HeaderValue::from_static(BENCH_CLIENT),
            ));
        }
        let client = Client::try_from(config).expect("a client");
        Cluster { client, kubeconfig: path, double }
    }

    /// The controller's requests in the double's log from `from` on.
    fn controller_log(&self, from: usize) -> Vec<RequestRecord> {
        let api = self.double.as_ref().expect("the double");
        api.requests()[from..].iter().filter(|r| r.client.as_deref() != Some(BENCH_CLIENT)).cloned().collect()
    }

    fn log_len(&self) -> usize {
        self.double.as_ref().map_or(0, |api| api.requests().len())
    }
}

/// The API server double, serving the ClientCredential CRD. `gc`: its garbage collector
/// scans every object after every write (O(n) per write); nothing is deleted while
/// measuring, so it is off for measurements (and namespaces deleted at the end are then never
/// emptied there: the bench does not wait for them on the double).
async fn start_double(gc: bool) -> ApiServer {
    ApiServer::builder()
        .crd(&tokensync::api::crd())
        .namespaces(&["default"])
        .history_limit(1_000_000)
        .garbage_collection(gc)
        .start()
        .await
}

fn write_kubeconfig(api: &ApiServer, path: &Path) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: double, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: double, context: {{cluster: double, user: u}}}}]\n\
             current-context: double\n",
            api.url()
        ),
    )
    .unwrap();
}

/// The ClientCredential CRD served, or its CRDs applied from crds/ (server-side apply, field
/// manager `tokensync-bench`) and established. They are left installed: deleting a CRD
/// deletes every object of it in the cluster.
async fn ensure_crds(client: &Client) {
    let ccs: Api<ClientCredential> = Api::all(client.clone());
    match ccs.list(&ListParams::default().limit(1)).await {
        Ok(_) => return,
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("cannot list ClientCredentials: {e}"),
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).expect("a CRD in crds/");
        let name = crd.name_any();
        eprintln!("applying {} (CRD {name} not installed)", path.display());
        crds.patch(&name, &PatchParams::apply("tokensync-bench"), &Patch::Apply(&crd)).await.expect("apply a CRD");
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established).await.expect("CRD established").unwrap();
    }
    // Established, and served (discovery can lag a moment behind).
    let deadline = Instant::now() + Duration::from_secs(60);
    while ccs.list(&ListParams::default().limit(1)).await.is_err() {
        assert!(Instant::now() < deadline, "ClientCredentials not served a minute after the CRD was established");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates namespace `name`, or uses it when it exists and holds no Secret and no
/// ClientCredential; refuses one with content (not the bench's to overwrite). A namespace
/// still terminating (an earlier run's) is waited for. Returns whether it was created here
/// (and is to be deleted at the end).
async fn prepare_namespace(client: &Client, name: &str) -> bool {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Some(ns) = namespaces.get_opt(name).await.expect("read the namespace") {
        if ns.metadata.deletion_timestamp.is_some() {
            eprintln!("namespace {name} is terminating; waiting for it to go");
            let uid = ns.uid().unwrap_or_default();
            let gone = kube::runtime::wait::await_condition(
                namespaces.clone(),
                name,
                kube::runtime::wait::conditions::is_deleted(&uid),
            );
            tokio::time::timeout(Duration::from_secs(600), gone).await.expect("the namespace went").unwrap();
        } else {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), name);
            let ccs: Api<ClientCredential> = Api::namespaced(client.clone(), name);
            let limit = ListParams::default().limit(1);
            let secret = secrets.list_metadata(&limit).await.expect("list Secrets").items.len();
            let cc = ccs.list_metadata(&limit).await.expect("list ClientCredentials").items.len();
            assert!(
                secret + cc == 0,
                "namespace {name} exists and holds Secrets or ClientCredentials: refusing to run in it \
                 (delete it, or pass --namespace/--floor-namespace)"
            );
            return false;
        }
    }
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tokensync-bench"}}}),
    )
    .unwrap();
    namespaces.create(&PostParams::default(), &ns).await.expect("create the namespace");
    true
}

/// Deletes the namespaces this run created; on a real cluster waits (up to 10 minutes) until
/// they are gone, so that the next run can start.
async fn delete_namespaces(cluster: &Cluster, names: &[String]) {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    for name in names {
        let Ok(Some(ns)) = namespaces.get_opt(name).await else { continue };
        if let Err(e) = namespaces.delete(name, &DeleteParams::background()).await {
            eprintln!("cannot delete namespace {name}: {e}");
            continue;
        }
        if cluster.double.is_none() {
            let uid = ns.uid().unwrap_or_default();
            let gone = kube::runtime::wait::await_condition(
                namespaces.clone(),
                name,
                kube::runtime::wait::conditions::is_deleted(&uid),
            );
            if tokio::time::timeout(Duration::from_secs(600), gone).await.is_err() {
                eprintln!("namespace {name} still terminating after 10 minutes");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The objects: source Secrets and ClientCredentials, created through the client
// ---------------------------------------------------------------------------------------

fn credential_name(i: usize) -> String {
    format!("cc-{i:05}")
}

/// Creates the source Secrets and ClientCredentials of `n` credentials in `ns`, `concurrency`
/// at a time; returns the ClientCredentials as created (uid, resourceVersion).
async fn populate(client: &Client, ns: &str, n: usize, issuer_url: &str, concurrency: usize) -> Vec<ClientCredential> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ccs: Api<ClientCredential> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let (secrets, ccs) = (secrets.clone(), ccs.clone());
            async move {
                let name = credential_name(i);
                let source: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-client")},
                    "stringData": {"client_id": name, "client_secret": "bench-secret"}}))
                .unwrap();
                secrets.create(&PostParams::default(), &source).await?;
                let cc: ClientCredential = serde_json::from_value(json!({
                    "apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
                    "metadata": {"name": name},
                    "spec": {"tokenEndpoint": issuer_url, "credentialsRef": {"name": format!("{name}-client")},
                             "clientAuthentication": "client_secret_post"}}))
                .unwrap();
                ccs.create(&PostParams::default(), &cc).await
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
        .expect("create the credentials")
}

async fn populate_unrelated(client: &Client, ns: &str, n: usize, concurrency: usize) {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 1024]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("unrelated-{i:06}"), "labels": {"app": "other"}},
                "data": {"payload": blob}}))
            .unwrap();
            let secrets = secrets.clone();
            async move { secrets.create(&PostParams::default(), &secret).await }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .expect("create the unrelated Secrets");
}

// ---------------------------------------------------------------------------------------
// The floor: the three writes of a first token and nothing else (no token request, no read,
// no watch), for every credential, as many at a time as the controller reconciles.
// ---------------------------------------------------------------------------------------

/// The state Secret apply, the target Secret apply and the status merge patch the controller
/// makes for a first token, with the same bodies (built by the controller's own functions and
/// sent by its `apply`), for each of `ccs`. Returns the seconds from the first write to the
/// last and the number of writes.
async fn floor(client: &Client, ccs: Vec<ClientCredential>, lifetime: u64, concurrency: usize) -> (f64, usize) {
    use tokensync::controller::{state, status, target};
    let started = Instant::now();
    let writes: Vec<usize> = futures::stream::iter(ccs)
        .map(|cc| {
            let ns = cc.namespace().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let statuses: Api<ClientCredential> = Api::namespaced(client.clone(), &ns);
            async move {
                let name = cc.name_any();
                let now = jiff::Timestamp::now();
                let expires = now + jiff::SignedDuration::from_secs(lifetime as i64);
                let stored = tokensync::token_state::StoredToken {
                    access_token: format!("{name}.1").into(),
                    token_type: "Bearer".into(),
                    scope: None,
                    issued_at: now,
                    expires_at: expires,
                    refresh_token: None,
                    inputs: {
                        use sha2::Digest;
                        hex::encode(&sha2::Sha256::digest(name.as_bytes())[..16])
                    },
                    bootstrap: None,
                    renewal_request: None,
                    bound_certificate: None,
                };
                target::apply(&secrets, &state::desired(&cc, &stored)).await.expect("state apply");
                let desired = target::desired(&cc, &stored).expect("render the target");
                target::apply(&secrets, &desired).await.expect("target apply");
                let facts = status::Facts {
                    now,
                    generation: cc.metadata.generation,
                    suspended: false,
                    token: Some(status::TokenFacts {
                        token_type: "Bearer".into(),
                        scope: None,
                        issued_at: now,
                        expires_at: expires,
                        bound_certificate: None,
                    }),
                    failure: None,
                    renew_at: Some(now + jiff::SignedDuration::from_secs(lifetime as i64 * 2 / 3)),
                    failed_attempts: 0,
                    last_failure: None,
                    retry_after_seconds: None,
                    failed_inputs: None,
                    handled_renewal_request: None,
                    target_secret_name: name.clone(),
                    service_account: None,
                    client_certificate: None,
                };
                let patch = json!({"metadata": {"resourceVersion": cc.resource_version()},
                                   "status": status::next(None, &facts)});
                statuses
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("status patch");
                3
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (started.elapsed().as_secs_f64(), writes.iter().sum())
}

// ---------------------------------------------------------------------------------------
// Readiness, watched: every change of a ClientCredential in the bench namespace
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Watched {
    listed: bool,
    ready: std::collections::HashSet<String>,
    renew_at: HashMap<String, String>,
    /// Changes seen after the first list (each write that changed a ClientCredential), and
    /// how many lists the watch made (more than one: changes may have been missed).
    changes: u64,
    lists: u32,
}

/// Watches the ClientCredentials of `ns`; the receiver carries how many are Ready with
/// TokenIssued (event-driven: no polling, exact times).
fn watch_ready(client: &Client, ns: &str) -> (Arc<Mutex<Watched>>, tokio::sync::watch::Receiver<usize>) {
    let ccs: Api<ClientCredential> = Api::namespaced(client.clone(), ns);
    let state = Arc::new(Mutex::new(Watched::default()));
    let (tx, rx) = tokio::sync::watch::channel(0);
    let shared = state.clone();
    tokio::spawn(async move {
        let mut events = watcher(ccs, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            let mut w = shared.lock().unwrap();
            w.changes += u64::from(matches!(event, watcher::Event::Apply(_)));
            match event {
                watcher::Event::Apply(cc) | watcher::Event::InitApply(cc) => {
                    let name = cc.name_any();
                    let status = cc.status.as_ref();
                    let ready = status.is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "TokenIssued")
                    });
                    if ready {
                        w.ready.insert(name.clone());
                    } else {
                        w.ready.remove(&name);
                    }
                    match status.and_then(|s| s.renew_at.as_ref()) {
                        Some(at) => w.renew_at.insert(name, at.0.to_string()),
                        None => w.renew_at.remove(&name),
                    };
                }
                watcher::Event::Delete(cc) => {
                    w.ready.remove(&cc.name_any());
                    w.renew_at.remove(&cc.name_any());
                }
                watcher::Event::Init => {}
                watcher::Event::InitDone => {
                    w.listed = true;
                    w.lists += 1;
                }
            }
            let _ = tx.send(if w.listed { w.ready.len() } else { 0 });
        }
    });
    (state, rx)
}

/// Every token ever published in a target Secret of a namespace, as a watch of tokensync's
/// Secrets there sees them (each change, in order); how many changes of those Secrets it saw
/// after its first list; and how often it listed: a token published and replaced while the
/// watch was down is missed, and then counted as never published (an overcount, never a
/// duplicate hidden), and a change missed counts as a no-op write.
#[derive(Default)]
struct Published {
    tokens: std::collections::HashSet<String>,
    changes: u64,
    lists: u32,
}

fn watch_published(client: &Client, ns: &str) -> Arc<Mutex<Published>> {
    use tokensync::controller::labels::{ROLE, ROLE_TARGET};
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let state = Arc::new(Mutex::new(Published::default()));
    let shared = state.clone();
    tokio::spawn(async move {
        let mut events = watcher(secrets, watcher::Config::default().labels(ROLE)).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let mut p = shared.lock().unwrap();
            // Apply: a change seen by the watch; InitApply: an object as a list shows it.
            p.changes += u64::from(matches!(event, Ok(watcher::Event::Apply(_))));
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    let target = s.labels().get(ROLE).is_some_and(|r| r == ROLE_TARGET);
                    if let Some(token) = s.data.as_ref().and_then(|d| d.get("access_token")).filter(|_| target) {
                        p.tokens.insert(String::from_utf8_lossy(&token.0).into_owned());
                    }
                }
                Ok(watcher::Event::InitDone) => p.lists += 1,
                _ => {}
            }
        }
    });
    state
}

/// The changes of tokensync's Secrets and of the ClientCredentials seen so far.
fn changes(watched: &Mutex<Watched>, published: &Mutex<Published>) -> u64 {
    watched.lock().unwrap().changes + published.lock().unwrap().changes
}

/// The controller's writes of Secrets and ClientCredentials (answered 2xx) from `from` (its
/// count then, and [`changes`] then) that changed nothing. A write that changes an object is
/// one watch event; one that changes nothing is neither written to etcd nor sent to watches.
/// Waits up to 5 s for the watches to catch up.
async fn no_op_writes(c: &Controller, watched: &Mutex<Watched>, published: &Mutex<Published>, from: (u64, u64)) -> i64 {
    let writes = c.writes().await - from.0;
    let mut changed = 0;
    for _ in 0..25 {
        changed = changes(watched, published) - from.1;
        if changed >= writes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writes as i64 - changed as i64
}

/// The token requests from the `from`-th to the `to`-th (one phase): how many there were, how
/// many of their tokens were never published (waiting up to 10 s for the last ones to show),
/// and how many were early (see [`Issued::tokens`]). A duplicate request shows in one of the
/// two: its token is overwritten before it is published, or published and replaced early.
async fn duplicates(issuer: &Issuer, published: &Mutex<Published>, from: u64, to: u64) -> Value {
    let phase: Vec<(String, bool)> = issuer.issued.lock().unwrap().tokens[from as usize..to as usize].to_vec();
    let early = phase.iter().filter(|(_, early)| *early).count();
    let mut never = Vec::new();
    for _ in 0..50 {
        never = {
            let p = published.lock().unwrap();
            phase.iter().filter(|(t, _)| !p.tokens.contains(t)).map(|(t, _)| t.clone()).collect()
        };
        if never.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !never.is_empty() || early > 0 {
        let some: Vec<&String> = never.iter().take(20).collect();
        eprintln!("{} token requests not published (first ones: {some:?}); {early} early", never.len());
    }
    json!({"requests": phase.len(), "never_published": never.len(), "early": early})
}

/// (Secret, token) of every target Secret in `ns`.
async fn target_tokens(client: &Client, ns: &str) -> Vec<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let params = ListParams::default().labels(&format!(
        "{}={}",
        tokensync::controller::labels::ROLE,
        tokensync::controller::labels::ROLE_TARGET
    ));
    let list = secrets.list(&params).await.expect("list the target Secrets");
    list.items
        .into_iter()
        .filter_map(|s| {
            let token = s.data.as_ref()?.get("access_token")?.0.clone();
            Some((s.name_any(), String::from_utf8(token).ok()?))
        })
        .collect()
}

fn renew_at_spread(watched: &Mutex<Watched>) -> (u32, usize) {
    let mut per_second: BTreeMap<String, u32> = BTreeMap::new();
    for at in watched.lock().unwrap().renew_at.values() {
        *per_second.entry(at.clone()).or_default() += 1;
    }
    (per_second.values().copied().max().unwrap_or(0), per_second.len())
}

// ---------------------------------------------------------------------------------------
// The controller child process
// ---------------------------------------------------------------------------------------

struct Controller {
    child: Child,
    admin: String,
}

impl Controller {
    fn start(cluster: &Cluster, dir: &Path, o: &Options, generation: u32) -> Controller {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join(format!("controller-{generation}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tokensync"))
            .args(["controller", "--allow-http", "--namespace", &o.namespace, "--min-renewal-interval", "1s"])
            .args(["--admin-addr", &format!("127.0.0.1:{port}"), "--concurrency", &o.concurrency.to_string()])
            .args(&o.controller_args)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env_remove("RUST_LOG")
            .envs(std::env::var("TOKENSYNC_BENCH_LOG").map(|f| ("RUST_LOG", f)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start target/release/tokensync");
        Controller { child, admin: format!("127.0.0.1:{port}") }
    }

    /// The controller's /proc file; fails (not 0) when it cannot be read.
    fn proc_file(&self, file: &str) -> String {
        let path = format!("/proc/{}/{file}", self.child.id());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        self.proc_file(file)
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/{file} (has the controller exited?)", self.child.id()))
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        self.proc_field("status", "VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.proc_field("status", "VmHWM:")
    }

    /// User + system CPU seconds (getrusage of the child, read from /proc/PID/stat).
    fn cpu_seconds(&self) -> f64 {
        let text = self.proc_file("stat");
        let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
        let field = |i: usize| -> u64 {
            fields.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no CPU times in {text:?}"))
        };
        (field(11) + field(12)) as f64 / 100.0 // CLK_TCK is 100 on Linux
    }

    /// The admin server's /metrics text; None while it does not answer (yet).
    async fn try_metrics(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
        let mut text = String::new();
        sock.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
        sock.read_to_string(&mut text).await.ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.split_whitespace().nth(1).is_some_and(|code| code == "200").then(|| body.to_owned())
    }

    /// The admin server's /metrics text; fails when it does not answer.
    async fn metrics(&self) -> String {
        self.try_metrics().await.unwrap_or_else(|| panic!("cannot read the controller's /metrics at {}", self.admin))
    }

    /// Reconciles so far; None while the admin server does not answer (the process starting).
    async fn reconciles(&self) -> Option<u64> {
        let text = self.try_metrics().await?;
        let count = text.lines().find_map(|l| l.strip_prefix("tokensync_reconcile_duration_seconds_count "));
        Some(count.and_then(|v| v.trim().parse().ok()).expect("tokensync_reconcile_duration_seconds_count in /metrics"))
    }

    /// The controller's Kubernetes API requests so far, by "VERB resource"
    /// (`tokensync_kube_requests_total`, every answer code).
    async fn requests(&self) -> Counts {
        self.requests_where(|_, _, _| true).await
    }

    /// Its answered (2xx) writes of Secrets and ClientCredentials so far (not Events).
    async fn writes(&self) -> u64 {
        let counts = self
            .requests_where(|verb, resource, code| {
                code == "2xx"
                    && ["apply", "patch", "create", "update"].contains(&verb)
                    && (resource == "secrets" || resource.starts_with("clientcredentials"))
            })
            .await;
        counts.values().sum::<f64>() as u64
    }

    /// Its requests by "VERB resource" that `keep(verb, resource, code)`.
    async fn requests_where(&self, keep: impl Fn(&str, &str, &str) -> bool) -> Counts {
        let mut out = Counts::new();
        let text = self.metrics().await;
        assert!(text.contains("tokensync_kube_requests_total{"), "no tokensync_kube_requests_total in /metrics");
        for line in text.lines().filter_map(|l| l.strip_prefix("tokensync_kube_requests_total{")) {
            let Some((labels, value)) = line.split_once("} ") else { continue };
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\""))?.strip_suffix('"'))
                    .unwrap_or_default()
                    .to_owned()
            };
            if !keep(&label("verb"), &label("resource"), &label("code")) {
                continue;
            }
            let key = format!("{} {}", label("verb").to_uppercase(), label("resource"));
            *out.entry(key).or_default() += value.trim().parse::<f64>().expect("a number in /metrics");
        }
        out
    }

    /// Waits until the controller has sent no API request for a second (at most a minute):
    /// the echoes of its last writes have settled.
    async fn settle(&self) -> f64 {
        let t = Instant::now();
        let mut seen = -1.0;
        loop {
            let now: f64 = self.requests().await.values().sum();
            if now == seen || t.elapsed() > Duration::from_secs(60) {
                return t.elapsed().as_secs_f64();
            }
            seen = now;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    /// Never leaves a controller running behind a failed run.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Counting requests: the double's log and the controller's /metrics
// ---------------------------------------------------------------------------------------

/// Requests by "VERB resource[/subresource]".
type Counts = BTreeMap<String, f64>;

fn minus(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

fn per(counts: &Counts, n: f64) -> Counts {
    counts.iter().map(|(k, v)| (k.clone(), v / n)).collect()
}

/// The double's log as the metric counts it: verb and resource, every code, metadata-only
/// requests not told apart.
fn logged(records: &[RequestRecord]) -> Counts {
    let mut counts = Counts::new();
    for r in records {
        let sub = r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
        *counts.entry(format!("{} {}{sub}", format!("{:?}", r.verb).to_uppercase(), r.resource)).or_default() += 1.0;
    }
    counts
}

/// Where the controller's /metrics and the double's log disagree: "VERB resource" ->
/// [metric, log]. Requests to paths that are not resources (discovery, /.well-known) are not
/// in the double's log and not compared.
fn disagreements(metric: &Counts, log: &Counts) -> BTreeMap<String, [f64; 2]> {
    let keys: std::collections::BTreeSet<&String> = metric.keys().chain(log.keys()).collect();
    keys.into_iter()
        .filter(|k| !k.ends_with(" nonresource"))
        .map(|k| (k.clone(), [metric.get(k).copied().unwrap_or(0.0), log.get(k).copied().unwrap_or(0.0)]))
        .filter(|(_, [m, l])| m != l)
        .collect()
}

/// API requests by verb and resource (`GET secrets`, `APPLY secrets`, `PATCH
/// clientcredentials/status`, `LIST secrets (metadata)`, ...) divided by `per`: the cost of
/// one token or one renewal. From the double's log, which tells metadata-only requests apart.
fn requests_by_verb(records: &[RequestRecord], n: f64) -> Counts {
    let mut counts = Counts::new();
    for r in records {
        let sub = r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
        let meta = if r.metadata_only { " (metadata)" } else { "" };
        let key = format!("{} {}{sub}{meta}", format!("{:?}", r.verb).to_uppercase(), r.resource);
        *counts.entry(key).or_default() += 1.0;
    }
    per(&counts, n)
}

#[derive(Default, Debug, Clone, serde::Serialize)]
struct Writes {
    state_applies: usize,
    target_applies: usize,
    status_patches: usize,
    events: usize,
    other: usize,
    /// Writes that changed nothing on the server (no-op applies).
    unchanged: usize,
}

fn writes(records: &[RequestRecord]) -> Writes {
    let mut w = Writes::default();
    for r in records.iter().filter(|r| r.verb.is_write() && r.code < 300) {
        let name = r.name.as_deref().unwrap_or_default();
        match (r.verb, r.resource.as_str(), r.subresource.as_deref()) {
            (Verb::Apply, "secrets", None) if name.ends_with(".tokensync-state") => w.state_applies += 1,
            (Verb::Apply, "secrets", None) => w.target_applies += 1,
            (Verb::Patch, "clientcredentials", Some("status")) => w.status_patches += 1,
            (_, "events", _) => w.events += 1,
            _ => w.other += 1,
        }
        if !r.changed {
            w.unchanged += 1;
        }
    }
    w
}

/// One phase's requests: on the double from its log (metadata-only requests told apart)
/// with the metric's disagreements, elsewhere from the metric. `log_from` is where the phase
/// starts in the double's log, `metric_before` the controller's counts then.
struct Phase {
    log: Vec<RequestRecord>,
    metric: Counts,
    disagreements: BTreeMap<String, [f64; 2]>,
}

impl Phase {
    async fn measure(cluster: &Cluster, controller: &Controller, log_from: usize, metric_before: &Counts) -> Phase {
        let metric = minus(&controller.requests().await, metric_before);
        let log = if cluster.double.is_some() { cluster.controller_log(log_from) } else { Vec::new() };
        let disagreements =
            if cluster.double.is_some() { disagreements(&metric, &logged(&log)) } else { BTreeMap::new() };
        if !disagreements.is_empty() {
            eprintln!("the controller's /metrics and the double's log disagree ([metric, log]): {disagreements:?}");
        }
        Phase { log, metric, disagreements }
    }

    fn per(&self, cluster: &Cluster, n: f64) -> Counts {
        if cluster.double.is_some() { requests_by_verb(&self.log, n) } else { per(&self.metric, n) }
    }
}

fn renewals_so_far(issuer: &Issuer, from: u64) -> f64 {
    (issuer.total() - from).max(1) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

async fn poll_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Restarts the controller with every token valid and waits until the new process has
/// reconciled every credential (through its /metrics). Returns it, the token requests it
/// made, the time it took, and its API requests (after they settled).
async fn restart(
    cluster: &Cluster,
    dir: &Path,
    o: &Options,
    generation: u32,
    issuer: &Issuer,
) -> (Controller, u64, f64, Phase) {
    let before_requests = issuer.total();
    let log_from = cluster.log_len();
    let mut c = Controller::start(cluster, dir, o, generation);
    let t = Instant::now();
    while c.reconciles().await.unwrap_or(0) < o.credentials as u64 {
        assert!(t.elapsed() < Duration::from_secs(900), "restart reconciles");
        assert!(
            matches!(c.child.try_wait(), Ok(None)),
            "the restarted controller exited (log: controller-{generation}.log)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = t.elapsed().as_secs_f64();
    c.settle().await;
    let phase = Phase::measure(cluster, &c, log_from, &Counts::new()).await;
    let requests = issuer.total() - before_requests;
    (c, requests, took, phase)
}

async fn run(cluster: Arc<Cluster>, o: Options, dir: PathBuf) -> BTreeMap<&'static str, Value> {
    let client = &cluster.client;
    let on_double = cluster.double.is_some();
    let concurrency = o.concurrency as usize;
    let n = o.credentials;
    let (issuer, issuer_url) = Issuer::start(o.lifetime, Duration::from_millis(o.latency_ms)).await;
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    let mut disagree: BTreeMap<&str, Value> = BTreeMap::new();

    // The same source Secrets and ClientCredentials in both namespaces, all created before
    // anything is measured, so that both measurements see the same store.
    let t = Instant::now();
    populate(client, &o.namespace, n, &issuer_url, concurrency).await;
    let floor_ccs = populate(client, &o.floor_namespace, n, &issuer_url, concurrency).await;
    results.insert("setup_s", json!(t.elapsed().as_secs_f64()));

    // 0. The floor: the three writes of every first token, without the controller. Measured
    // first: no controller is running yet (the floor then shares the API server with nobody,
    // where later it would share it with renewals), and the controller's issuance then runs
    // on a store (and etcd) that already holds the floor's writes, not the other way round:
    // if anything, the ratio errs on the controller's side.
    let log_from = cluster.log_len();
    let (floor_s, floor_writes) = floor(client, floor_ccs, o.lifetime, concurrency).await;
    if let Some(api) = &cluster.double {
        let logged = api.requests()[log_from..]
            .iter()
            .filter(|r| r.verb.is_write() && r.code < 300 && r.namespace.as_deref() == Some(o.floor_namespace.as_str()))
            .count();
        assert_eq!(logged, floor_writes, "the double logged the floor's writes");
    }
    results.insert("floor_seconds", json!(floor_s));
    results.insert("floor_writes", json!(floor_writes));

    // 1. Issuance: from the controller's start until every credential is Ready.
    let (watched, mut ready) = watch_ready(client, &o.namespace);
    let published = watch_published(client, &o.namespace);
    let mut duplicate_requests = BTreeMap::new();
    let mut no_ops = BTreeMap::new();
    tokio::time::timeout(Duration::from_secs(300), async {
        while !watched.lock().unwrap().listed {
            ready.changed().await.expect("the watch of the credentials runs");
        }
    })
    .await
    .expect("the credentials listed");
    let created = jiff::Timestamp::now().as_second();
    let log_from = cluster.log_len();
    let started = Instant::now();
    let changes_from = changes(&watched, &published);
    let c1 = Controller::start(&cluster, &dir, &o, 1);
    tokio::time::timeout(Duration::from_secs(1800), ready.wait_for(|r| *r >= n))
        .await
        .expect("all Ready within 30 minutes")
        .unwrap();
    let issuance_s = started.elapsed().as_secs_f64();
    let first_wave_end = jiff::Timestamp::now().as_second();
    let initial_requests = issuer.total();
    // What issuance cost, per credential, once the echoes of the last writes have settled
    // (the controller idle for a second). Renewals of the first tokens may start meanwhile
    // (at half of a short lifetime).
    results.insert("issuance_settled_after_s", json!(c1.settle().await));
    let issuance = Phase::measure(&cluster, &c1, log_from, &Counts::new()).await;
    no_ops.insert("issuance", no_op_writes(&c1, &watched, &published, (0, changes_from)).await);
    // A credential that got more than one token while issuing is a defect: name it, and keep
    // the controller's log for whoever looks into it.
    if initial_requests != n as u64 {
        let log = std::env::temp_dir().join("tokensync-bench-issuance.log");
        let _ = std::fs::copy(dir.join("controller-1.log"), &log);
        let twice: Vec<(String, String)> =
            target_tokens(client, &o.namespace).await.into_iter().filter(|(_, token)| !token.ends_with(".1")).collect();
        let more: Vec<String> = twice.iter().map(|(name, token)| format!("{name} holds {token}")).collect();
        eprintln!("more than one token while issuing: {more:?}; controller log kept at {}", log.display());
        // On the double, also every request about those credentials, in order.
        if let Some(api) = &cluster.double {
            let names: Vec<String> = twice
                .iter()
                .flat_map(|(name, _)| [name.clone(), format!("{name}.tokensync-state"), format!("{name}-client")])
                .collect();
            let lines: Vec<String> = api
                .requests()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.namespace.as_deref() == Some(o.namespace.as_str()))
                .filter(|(_, r)| r.name.as_ref().is_some_and(|n| names.contains(n)))
                .map(|(i, r)| {
                    format!(
                        "#{i} {:?} {}{} {} -> {} changed={} client={:?}",
                        r.verb,
                        r.resource,
                        r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default(),
                        r.name.as_deref().unwrap_or_default(),
                        r.code,
                        r.changed,
                        r.client
                    )
                })
                .collect();
            let path = std::env::temp_dir().join("tokensync-bench-issuance-requests.log");
            let _ = std::fs::write(&path, lines.join("\n"));
            eprintln!("their requests in the double's log: {}", path.display());
        }
    }
    results.insert("requests_per_first_token", json!(issuance.per(&cluster, n as f64)));
    if on_double {
        results.insert("issuance_writes", json!(writes(&issuance.log)));
    }
    disagree.insert("issuance", json!(issuance.disagreements));
    results.insert("issuance_seconds", json!(issuance_s));
    results.insert("ratio_to_floor", json!(issuance_s / floor_s));
    // How much of the issuance the controller spent starting (process, client, initial lists
    // and watches) before its first token request.
    let first_request = issuer.first().map(|t| t.duration_since(started).as_secs_f64());
    results.insert("issuance_first_token_request_after_s", json!(first_request));
    results.insert("initial_token_requests_per_credential", json!(initial_requests as f64 / n as f64));
    results.insert("issuance_max_requests_per_second", json!(issuer.max_per_second(created, first_wave_end)));
    results.insert("rss_after_issuance_mib", json!(mib(c1.rss_kib())));
    results.insert("peak_rss_during_issuance_mib", json!(mib(c1.peak_rss_kib())));
    results.insert("cpu_s_for_issuance", json!(c1.cpu_seconds()));
    let (planned_max, planned_seconds) = renew_at_spread(&watched);
    results.insert("planned_renewals_max_per_second", json!(planned_max));
    results.insert("planned_renewals_distinct_seconds", json!(planned_seconds));

    // 2. Restart with every token valid: no token request.
    c1.kill();
    let issuance_to = issuer.total();
    duplicate_requests.insert("issuance", duplicates(&issuer, &published, 0, issuance_to).await);
    let changes_from = changes(&watched, &published);
    let (c2, restart_requests, restart_s, phase) = restart(&cluster, &dir, &o, 2, &issuer).await;
    no_ops.insert("restart", no_op_writes(&c2, &watched, &published, (0, changes_from)).await);
    results.insert("restart_token_requests", json!(restart_requests));
    results.insert("restart_time_to_reconcile_all_s", json!(restart_s));
    if on_double {
        results.insert("restart_writes", json!(writes(&phase.log)));
    }
    results.insert("restart_requests", json!(phase.per(&cluster, 1.0)));
    disagree.insert("restart", json!(phase.disagreements));
    let rss_fresh = c2.rss_kib();
    results.insert("rss_fresh_process_mib", json!(mib(rss_fresh)));
    // The high-water mark of a process that started with every object already there: its
    // initial lists and first reconcile of every credential.
    results.insert("peak_rss_restart_mib", json!(mib(c2.peak_rss_kib())));

    // 5. Unrelated Secrets: a fresh process with and without them, same credentials.
    let mut controller = c2;
    if o.unrelated > 0 {
        populate_unrelated(client, &o.namespace, o.unrelated, concurrency).await;
        controller.kill();
        let (c3, requests, _, phase) = restart(&cluster, &dir, &o, 3, &issuer).await;
        let rss_with = c3.rss_kib();
        results.insert("unrelated_secrets", json!(o.unrelated));
        results.insert("rss_fresh_process_with_unrelated_mib", json!(mib(rss_with)));
        results.insert("peak_rss_restart_with_unrelated_mib", json!(mib(c3.peak_rss_kib())));
        results.insert("rss_increase_for_unrelated_mib", json!(mib(rss_with) - mib(rss_fresh)));
        results.insert("restart_token_requests_with_unrelated", json!(requests));
        disagree.insert("restart_with_unrelated", json!(phase.disagreements));
        controller = c3;
    }

    let restart_to = issuer.total();
    duplicate_requests.insert("restart", duplicates(&issuer, &published, issuance_to, restart_to).await);

    if o.steady {
        // 3/4. Steady state: every credential renewed at least once (plus --steady-seconds).
        let steady_from = restart_to;
        let cpu_from = controller.cpu_seconds();
        let log_from = cluster.log_len();
        let metric_from = controller.requests().await;
        let no_ops_from = (controller.writes().await, changes(&watched, &published));
        let t = Instant::now();
        let wave_from = jiff::Timestamp::now().as_second();
        let min_window = Duration::from_secs(o.steady_seconds);
        poll_until("a renewal of every credential", Duration::from_secs(o.lifetime * 3 + 900), || {
            issuer.total() >= steady_from + n as u64 && t.elapsed() >= min_window
        })
        .await;
        // Whole renewals only: their last writes settle before the requests are counted.
        controller.settle().await;
        let steady_to = issuer.total();
        let renewals = steady_to - steady_from;
        let cpu = controller.cpu_seconds() - cpu_from;
        let phase = Phase::measure(&cluster, &controller, log_from, &metric_from).await;
        results.insert("requests_per_renewal", json!(phase.per(&cluster, renewals_so_far(&issuer, steady_from))));
        disagree.insert("steady", json!(phase.disagreements));
        let wave_to = jiff::Timestamp::now().as_second();
        results.insert("steady_window_s", json!(t.elapsed().as_secs_f64()));
        results.insert("renewals_in_window", json!(renewals));
        results.insert("cpu_s_per_1000_renewals", json!(cpu / renewals as f64 * 1000.0));
        results.insert("renewal_max_requests_per_second", json!(issuer.max_per_second(wave_from, wave_to)));
        if on_double {
            let w = writes(&phase.log);
            let per = |x: usize| x as f64 / renewals as f64;
            results.insert(
                "writes_per_renewal",
                json!({"state_apply": per(w.state_applies), "target_apply": per(w.target_applies),
                       "status_patch": per(w.status_patches), "events": per(w.events), "other": per(w.other),
                       "unchanged": per(w.unchanged)}),
            );
        }
        results.insert("rss_steady_mib", json!(mib(controller.rss_kib())));
        results.insert("peak_rss_steady_process_mib", json!(mib(controller.peak_rss_kib())));
        duplicate_requests.insert("renewal", duplicates(&issuer, &published, steady_from, steady_to).await);
        no_ops.insert("renewal", no_op_writes(&controller, &watched, &published, no_ops_from).await);
    }
    controller.kill();
    // Token requests per phase, and those that could be duplicates: never published, or early.
    results.insert("token_requests_duplicates", json!(duplicate_requests));
    // Writes of Secrets and ClientCredentials that changed nothing, per phase (from the metric
    // and the watches: on any API server).
    results.insert("no_op_writes", json!(no_ops));
    // 1 each: the watches never listed again, so they saw every change.
    let lists = (watched.lock().unwrap().lists, published.lock().unwrap().lists);
    results.insert("watch_lists", json!({"clientcredentials": lists.0, "secrets": lists.1}));
    results.insert(
        "request_counts_from",
        json!(if on_double { "the double's request log" } else { "the controller's /metrics" }),
    );
    if on_double {
        // Empty maps: the controller's tokensync_kube_requests_total equals the double's log.
        results.insert("metrics_vs_double_log_disagreements", json!(disagree));
    }
    results
}

#[tokio::main]
async fn main() {
    let mut o = options();
    let dir = tempfile::tempdir().unwrap();
    // With its garbage collector on, so that the namespaces deleted at the end go.
    let _double = if o.kubeconfig_on_double {
        let api = start_double(true).await;
        let path = dir.path().join("double-kubeconfig");
        write_kubeconfig(&api, &path);
        o.kubeconfig = Some(path);
        Some(api)
    } else {
        None
    };
    // --real: a control plane of this run's own, then the --kubeconfig run against it. Dropped
    // at the end, after a failure (unwinding) and on Ctrl-C (below): dropping it closes the
    // launcher's stdin, which stops etcd, kube-apiserver and kube-controller-manager and removes
    // their data. Killed, this process leaves nothing either: its end closes that stdin too.
    let plane = o.real.then(support::control_plane::ControlPlane::dedicated);
    if let Some(plane) = &plane {
        o.kubeconfig = Some(plane.kubeconfig().to_owned());
    }
    let cluster = Arc::new(Cluster::connect(&o, dir.path()).await);
    ensure_crds(&cluster.client).await;
    let server_version = match &cluster.double {
        Some(_) => None,
        None => Some(cluster.client.apiserver_version().await.expect("the API server's /version").git_version),
    };
    let mut created = Vec::new();
    for ns in [&o.namespace, &o.floor_namespace] {
        // The namespaces of a --real run go with its control plane.
        if prepare_namespace(&cluster.client, ns).await && !o.real {
            created.push(ns.clone());
        }
    }
    // The run in a task of its own: when it fails (a timeout) or is interrupted (Ctrl-C), the
    // namespaces it created are still deleted (and the controller, dropped, killed).
    let mut task = tokio::spawn(run(cluster.clone(), o.clone(), dir.path().to_owned()));
    let outcome = tokio::select! {
        outcome = &mut task => Some(outcome),
        _ = tokio::signal::ctrl_c() => {
            task.abort();
            let _ = (&mut task).await;
            None
        }
    };
    delete_namespaces(&cluster, &created).await;
    let results = match outcome {
        Some(Ok(results)) => results,
        Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        None => {
            eprintln!("interrupted");
            drop(plane); // exit() runs no destructor
            std::process::exit(130);
        }
    };
    drop(plane);

    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))),
        "mem_total_kib": std::fs::read_to_string("/proc/meminfo").ok()
            .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())),
    });
    let api_server = match (&o.kubeconfig, o.kubeconfig_on_double, o.real) {
        (_, true, _) => "kubeconfig (of the double)",
        (_, _, true) => "real control plane (--real, tests/kube)",
        (Some(_), false, _) => "kubeconfig",
        (None, _, _) => "double",
    };
    let options = json!({"credentials": o.credentials, "lifetime_s": o.lifetime, "unrelated": o.unrelated,
                         "latency_ms": o.latency_ms, "concurrency": o.concurrency, "steady_seconds": o.steady_seconds,
                         "api_server": api_server, "server_version": server_version, "namespace": o.namespace, "floor_namespace": o.floor_namespace,
                         "controller_args": o.controller_args, "steady": o.steady});
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"options": options, "machine": machine, "results": results})).unwrap()
        );
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tokensync-bench  {options}").unwrap();
        writeln!(out, "machine          {machine}").unwrap();
        writeln!(out, "{:-<72}", "").unwrap();
        for (k, v) in &results {
            let v = match v {
                Value::Number(x) if x.is_f64() => format!("{:.3}", x.as_f64().unwrap()),
                other => other.to_string(),
            };
            writeln!(out, "{k:<44} {v}").unwrap();
        }
    }
}

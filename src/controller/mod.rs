//! The operator: kube-runtime Controllers for ClientCredentials and ClusterClientCredentials,
//! their watches, the admin server and leader election. Both kinds run one pipeline
//! ([`pipeline`]: load, decide, acquire, store, status, requeue); what differs is in
//! [`reconcile`] (one target Secret) and [`cluster`] (a copy in every selected namespace).
//! The pieces it uses are [`state`], [`target`], [`status`], [`events`] and, Kubernetes-free,
//! [`crate::token_state`] and [`crate::schedule`].

pub mod api_requests;
pub mod cluster;
pub mod context;
pub mod events;
pub mod initial_list;
pub mod labels;
pub mod leader;
pub mod managed;
pub mod pipeline;
pub mod reconcile;
pub mod service_account;
pub mod sources;
pub mod state;
pub mod status;
pub mod target;
pub mod watch_backoff;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use events::{Recorder, Reporter};
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::admin::{self, AdminState};
use crate::api::ClientCredential;
use crate::engine_args::EngineArgs;
use crate::metrics::Metrics;
use crate::oauth::TokenClient;
use context::{Context, Policy};
pub use initial_list::InitialList;
use managed::ManagedCache;
use sources::{SecretRef, SourceCache, SourceIndex};
use watch_backoff::RetryPromptly;

/// Flags of `tokensync controller`.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Namespace to watch; repeat for several. Default: all namespaces.
    #[arg(long = "namespace", value_name = "NAMESPACE", env = "TOKENSYNC_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// How many ClientCredentials are reconciled at the same time.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,

    /// How every watch gets the objects that exist when it starts: paged LIST requests then a
    /// WATCH, or one WATCH that streams them (watch-list; needs an API server whose WatchList
    /// feature gate is on: Kubernetes 1.32, 1.34 and later by default).
    #[arg(long, value_enum, env = "TOKENSYNC_INITIAL_LIST", default_value_t = InitialList::Paged)]
    pub initial_list: InitialList,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease, so that several replicas can run
    /// and only one reconciles.
    #[arg(long, env = "TOKENSYNC_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease. Default: the pod's namespace (POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tokensync-system")]
    pub leader_election_namespace: String,

    /// Name of the leader election Lease.
    #[arg(long, default_value = "tokensync-controller")]
    pub leader_election_lease: String,

    /// How long the Lease stays valid without renewal: the longest a failed leader can
    /// leave renewals unattended before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = crate::engine_args::duration_arg)]
    pub leader_election_lease_duration: Duration,

    /// How often the leader renews the Lease and standby replicas try to take it.
    #[arg(long, default_value = "4s", value_parser = crate::engine_args::duration_arg)]
    pub leader_election_retry_period: Duration,

    /// How long the leader goes on without a successful Lease renewal before it stops
    /// acting (and exits). Must be shorter than the lease duration, so that it has stopped
    /// before another replica can take over, and longer than the retry period. Default: two
    /// thirds of the lease duration (10s for 15s, as in client-go).
    #[arg(long, value_parser = crate::engine_args::duration_arg)]
    pub leader_election_renew_deadline: Option<Duration>,

    /// The longest wait for the Kubernetes API to start answering a request. A watch counts
    /// as answered once it has started (its events may then stream for minutes).
    #[arg(long, default_value = "30s", value_parser = crate::engine_args::duration_arg)]
    pub api_timeout: Duration,

    /// This replica's identity in the Lease. Default: the pod name (POD_NAME) or hostname.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Also reconcile ClusterClientCredentials: one token written to many namespaces. Needs
    /// the ClusterClientCredential CRD, cluster-wide Secret write and Namespace list/watch,
    /// and watches all namespaces (it cannot be combined with --namespace).
    #[arg(long, env = "TOKENSYNC_CLUSTER_CREDENTIALS")]
    pub cluster_credentials: bool,

    /// Audiences the cluster's API server accepts, besides those found on its own (the
    /// issuer and audiences of the controller's mounted token, the issuer in
    /// /.well-known/openid-configuration, https://kubernetes.default.svc[.cluster.local]).
    /// tokensync never requests a ServiceAccount token for any of them.
    #[arg(long, value_name = "AUDIENCE", env = "TOKENSYNC_KUBERNETES_AUDIENCES", value_delimiter = ',')]
    pub kubernetes_audiences: Vec<String>,
}

impl ControllerArgs {
    pub fn policy(&self) -> Policy {
        Policy { renewal: self.engine.renewal_policy(), backoff: self.engine.backoff_policy(), ..Default::default() }
    }

    pub fn engine(&self) -> TokenClient {
        self.engine.engine()
    }

    /// `--leader-election-renew-deadline`, or its default.
    pub fn renew_deadline(&self) -> Duration {
        self.leader_election_renew_deadline.unwrap_or(self.leader_election_lease_duration * 2 / 3)
    }
}

/// Runs the controller until SIGTERM/SIGINT (or loss of leadership).
pub async fn run(args: ControllerArgs) -> anyhow_like::Result<()> {
    let config = kube::Config::infer().await.map_err(|e| format!("cannot configure the Kubernetes client: {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let client =
        api_client(config, args.api_timeout, &metrics).map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    run_with(client, args, shutdown_signal(), metrics).await
}

/// A client whose every request fails unless the API server starts answering it within
/// `timeout`. kube's client has no such bound by default, and a request to an API server
/// that went away without closing the connection can hang for good: a reconcile waiting on
/// it never ends, and a leader that cannot renew its Lease would never notice. Only the
/// wait for the response headers is bounded, so watches (a long-running response) are not
/// cut; the watcher detects a stalled watch by its own idle timeout.
///
/// Every request is counted in `tokensync_kube_requests_total` ([`api_requests`]), each
/// attempt of a retried one included: kube's own retry (of 429, 503 and 504 answers) sits
/// inside its stack, where a layer added here cannot see the attempts, so it is turned off
/// and the same retry policy is put back outside the counting layer (through a buffer, which
/// makes the stack cloneable as the retry needs; kube documents this stack). The timeout
/// bounds all attempts together, as it did kube's retry before.
///
/// Must be called within a Tokio runtime (the buffer runs as a task).
pub fn api_client(mut config: kube::Config, timeout: Duration, metrics: &Metrics) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&api_requests::CountLayer::new(metrics.kube_requests.clone()))
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()))
        .with_layer(&tower::timeout::TimeoutLayer::new(timeout))
        .build())
}

/// [`run`] with a given client, shutdown trigger and metrics: the whole operator, admin
/// server and leader election included.
pub async fn run_with(
    client: Client,
    args: ControllerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    metrics: Arc<Metrics>,
) -> anyhow_like::Result<()> {
    if args.cluster_credentials && !args.namespaces.is_empty() {
        return Err("--cluster-credentials writes to any selected namespace and watches them all; it cannot be \
                    combined with --namespace"
            .into());
    }
    if args.leader_elect {
        let (lease, renew, retry) =
            (args.leader_election_lease_duration, args.renew_deadline(), args.leader_election_retry_period);
        if renew >= lease || renew <= retry {
            return Err(format!(
                "--leader-election-renew-deadline ({renew:?}) must be shorter than --leader-election-lease-duration \
                 ({lease:?}) and longer than --leader-election-retry-period ({retry:?})"
            )
            .into());
        }
    }
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown.boxed().shared();

    let admin_state = AdminState { ready: ready.clone(), metrics: metrics.clone() };
    let admin = tokio::spawn(admin::serve(args.admin_addr, admin_state, shutdown.clone()));

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| format!("tokensync-{}", std::process::id())));
    let mut leadership = None;
    if args.leader_elect {
        // A standby replica is healthy and able to take over, so it reports ready. Were it
        // unready until it leads, a Deployment of several replicas would never be Available:
        // every rolling update and every drain under a PodDisruptionBudget would stall.
        ready.store(true, Ordering::Release);
        let lease = leader::LeaseLock::new(
            client.clone(),
            &args.leader_election_namespace,
            &args.leader_election_lease,
            &identity,
        )
        .with_timing(args.leader_election_lease_duration, args.leader_election_retry_period)
        .with_renew_deadline(args.renew_deadline());
        tracing::info!(lease = %args.leader_election_lease, %identity, "waiting for leadership");
        tokio::select! {
            _ = shutdown.clone() => return Ok(()),
            held = lease.acquire() => leadership = Some(held.map_err(|e| format!("leader election failed: {e}"))?),
        }
        tracing::info!("became leader");
        // Unready again until this replica's caches have synced (run_controllers flips it).
        ready.store(false, Ordering::Release);
    }
    let lost = async {
        match leadership {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };

    let reporter = Reporter { controller: "tokensync".into(), instance: Some(identity) };
    let controllers = run_controllers(client, &args, metrics, ready, reporter, shutdown.clone());
    // Losing leadership drops the controllers at once: reconciles in flight, with their token
    // requests and API calls, are cancelled, and none starts after the renew deadline.
    // `biased` polls `lost` first, so a wake-up after the deadline never runs a reconcile.
    tokio::select! {
        biased;
        _ = lost => {
            admin.abort();
            Err("lost leadership; exiting so that another replica takes over".into())
        }
        _ = controllers => {
            let _ = admin.await;
            Ok(())
        }
    }
}

/// Drops from an object, before it enters a cache, what no reconcile reads and what makes up
/// much of its size: managedFields, and the copy of the whole object kubectl keeps in the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation after `kubectl apply`.
pub fn slim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A tiny error alias so `run` can report human-readable failures without another crate.
pub mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

/// One Controller per watched namespace (or one for all), all sharing the engine and metrics.
pub async fn run_controllers(
    client: Client,
    args: &ControllerArgs,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> =
        if args.namespaces.is_empty() { vec![None] } else { args.namespaces.iter().cloned().map(Some).collect() };
    let mut policy = args.policy();
    policy.kubernetes_audiences = service_account::api_server_audiences(&client, &args.kubernetes_audiences).await;
    let shared = Shared {
        client,
        engine: args.engine(),
        policy,
        metrics,
        reporter,
        concurrency: args.concurrency,
        initial_list: args.initial_list,
    };
    let mut synced = Vec::new();
    let mut runs = Vec::new();
    for scope in scopes {
        let (run, ready_signal) = controller_for_scope(shared.clone(), scope, shutdown.clone());
        runs.push(run);
        synced.push(ready_signal);
    }
    if args.cluster_credentials {
        if !args.namespaces.is_empty() {
            // run_with refuses this combination; a caller of run_controllers gets a loud log.
            tracing::error!("--cluster-credentials needs all namespaces; it is ignored with --namespace");
        } else {
            let (run, ready_signal) = cluster_controller(shared.clone(), shutdown.clone());
            runs.push(run);
            synced.push(ready_signal);
        }
    }
    let readiness = async move {
        futures::future::join_all(synced).await;
        ready.store(true, Ordering::Release);
        tracing::info!("caches synced; ready");
    };
    futures::future::join(futures::future::join_all(runs), readiness).await;
}

/// What every controller of one operator shares.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub engine: TokenClient,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    /// How many objects each controller reconciles at the same time.
    pub concurrency: u16,
    /// How the watchers list ([`InitialList`]).
    pub initial_list: InitialList,
}

impl Shared {
    fn context(
        &self,
        managed: ManagedCache,
        sources: Arc<SourceCache>,
        synced: tokio::sync::watch::Receiver<bool>,
    ) -> Context {
        Context {
            recorder: Recorder::new(self.client.clone(), self.reporter.clone()),
            client: self.client.clone(),
            managed,
            sources,
            synced,
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            policy: self.policy.clone(),
            unsaved: Default::default(),
            written: Default::default(),
        }
    }
}

/// Builds the Controller for one scope. Returns the run future and a future that resolves
/// once its caches (ClientCredentials and managed Secrets) have synced.
pub fn controller_for_scope(
    shared: Shared,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (futures::future::BoxFuture<'static, ()>, futures::future::BoxFuture<'static, ()>) {
    // The watchers' own client: see initial_list.rs.
    let list = shared.initial_list;
    let client = list.client(&shared.client);
    let (ccs, secrets, secret_metadata): (Api<ClientCredential>, Api<Secret>, Api<PartialObjectMeta<Secret>>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
        };

    let source_cache = Arc::new(SourceCache::default());
    let index = SourceIndex::new(source_cache.clone());
    let (cc_reader, cc_writer) = reflector::store();
    let managed = ManagedCache::default();
    let (managed_synced, managed_listed) = Synced::new();
    let ctx = Arc::new(shared.context(managed.clone(), source_cache, managed_listed.clone()));
    let indexer = index.clone();
    // Every watcher (re)lists consistently, never with "any" semantics (resourceVersion=0):
    // after an API server restart, a watch cache can answer rv=0 with a version older than
    // the one the restarted server refuses watches at, so a watcher that relists that way
    // after a 410 is refused again and again and sees no change (docs/faults.md). A
    // consistent read returns a version the server can watch from; since Kubernetes 1.31 it
    // is served from the watch cache too, so it costs little more than an rv=0 read.
    // - paged (the default): LIST with no resourceVersion (kube's default list semantic; kube
    //   5 also happens to drop rv=0 from paginated lists), then WATCH from its version;
    // - streaming: kube 5 sends its watch-list at resourceVersion=0 ("any": the watch cache's
    //   state as it stands); the watchers' client drops that resourceVersion, which makes the
    //   request a consistent read (initial_list.rs). Its resumed watches start from the
    //   version of the bookmark that ended the initial events, and after a 410 it starts
    //   over with a new, again consistent, watch-list.
    //
    // managedFields and kubectl's last-applied-configuration are dropped before objects
    // enter a cache ([`slim`]): tokensync never reads them, and they are a large share of
    // every object's size.
    //
    // An object exactly as our own last write left it (its resourceVersion is the one that
    // write produced) is cached but starts no reconcile: the reconcile that wrote it already
    // decided from it and scheduled the next one. A routine renewal writes three objects, so
    // this spares three of every four reconciles.
    let (cc_synced, cc_listed) = Synced::new();
    let echoes = ctx.clone();
    let cc_stream = reflector::reflector(cc_writer, watcher(ccs, list.config()).modify(slim))
        .inspect_ok(cc_synced.on_list())
        .retry_promptly();
    let cc_stream = changes_but_our_own(cc_stream, move |cc: &ClientCredential| {
        indexer.update(cc);
        let key = context::Written::Status(cc.metadata.uid.clone().unwrap_or_default());
        echoes.written.observed(&key, cc.metadata.resource_version.as_deref());
        echoes.written.is_own_write(&key, cc.metadata.resource_version.as_deref())
    });

    // The Secrets tokensync manages, cached as much as reconciles read ([`managed`]).
    let managed_config = list.config().labels(&labels::namespaced_managed_selector());
    let cache = managed.clone();
    let managed_stream = watcher(secrets.clone(), managed_config)
        .inspect_ok(move |event| cache.apply(event))
        .inspect_ok(managed_synced.on_list())
        .retry_promptly();
    let (memo_ctx, cached) = (ctx.clone(), managed.clone());
    let managed_stream = changes_but_our_own(managed_stream, move |secret: &Secret| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        let key = context::Written::Secret(SecretRef::new(&ns, &name));
        note_cached(&memo_ctx, &cached, &key);
        memo_ctx.written.take_own_write(&key, secret.resource_version().as_deref())
    });

    // Every other Secret, metadata only: enough to notice a change of a source Secret
    // without holding any Secret's data in memory. Nothing is cached.
    let source_stream = watcher(secret_metadata, list.config()).retry_promptly().touched_objects();

    let sources = index.clone();
    let controller = Controller::for_stream(cc_stream, cc_reader.clone())
        .with_config(ControllerConfig::default().concurrency(shared.concurrency))
        .trigger_backoff(WatchersBackOff)
        .watches_stream(managed_stream, move |secret: Secret| {
            let owner = secret.labels().get(labels::CREDENTIAL).cloned();
            owner.zip(secret.namespace()).map(|(name, ns)| ObjectRef::new(&name).within(&ns))
        })
        .watches_stream(source_stream, move |meta: PartialObjectMeta<Secret>| {
            let secret = SecretRef::new(&meta.namespace().unwrap_or_default(), &meta.name_any());
            sources.readers_of(secret, meta.resource_version())
        })
        .graceful_shutdown_on(shutdown);

    let run = drive(controller.run(reconcile::reconcile, reconcile::error_policy, ctx));
    let ready = all_listed(vec![cc_listed, managed_listed]);
    (run, ready)
}

/// Builds the ClusterClientCredential controller: watches ClusterClientCredentials, the
/// Namespaces (metadata), the Secrets it manages (labelled with the cluster credential) and
/// Secret metadata (to notice source Secret changes).
pub fn cluster_controller(
    shared: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (futures::future::BoxFuture<'static, ()>, futures::future::BoxFuture<'static, ()>) {
    // The watchers' own client (initial_list.rs); every relist is consistent, as for
    // ClientCredentials (controller_for_scope).
    let list = shared.initial_list;
    let client = list.client(&shared.client);
    use crate::api::ClusterClientCredential;
    use k8s_openapi::api::core::v1::Namespace;

    let cccs: Api<ClusterClientCredential> = Api::all(client.clone());
    let (ccc_reader, ccc_writer) = reflector::store();
    let (ccc_synced, ccc_listed) = Synced::new();
    let ccc_stream = reflector::reflector(ccc_writer, watcher(cccs, list.config()).modify(slim))
        .inspect_ok(ccc_synced.on_list())
        .retry_promptly();

    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let (ns_reader, ns_writer) = reflector::store();
    let (ns_synced, ns_listed) = Synced::new();
    let ns_stream = reflector::reflector(ns_writer, watcher(namespaces, list.config()).modify(slim))
        .inspect_ok(ns_synced.on_list())
        .retry_promptly()
        .touched_objects();

    // Its state Secrets and copies, cached whole; every other Secret metadata only.
    let (secrets, secret_metadata): (Api<Secret>, Api<PartialObjectMeta<Secret>>) =
        (Api::all(client.clone()), Api::all(client.clone()));
    let copies_config = list.config().labels(labels::CLUSTER_CREDENTIAL);
    let managed = ManagedCache::default();
    let (managed_synced, managed_listed) = Synced::new();
    let cache = managed.clone();
    let managed_stream = watcher(secrets, copies_config)
        .inspect_ok(move |event| cache.apply(event))
        .inspect_ok(managed_synced.on_list())
        .retry_promptly();

    let source_stream = watcher(secret_metadata, list.config()).retry_promptly().touched_objects();

    let source_cache = Arc::new(SourceCache::default());
    // Reconciles need the copies and the namespaces listed; readiness needs all three.
    let (both_synced, both_listed) = Synced::new();
    let ctx = Arc::new(cluster::ClusterContext {
        base: shared.context(managed.clone(), source_cache.clone(), both_listed),
        namespaces: ns_reader.clone(),
    });

    // As for ClientCredentials (controller_for_scope): an object exactly as our own last
    // write left it (a status, a state Secret, a copy) starts no reconcile.
    let echoes = ctx.clone();
    let ccc_stream = changes_but_our_own(ccc_stream, move |ccc: &ClusterClientCredential| {
        let key = context::Written::Status(ccc.metadata.uid.clone().unwrap_or_default());
        echoes.base.written.observed(&key, ccc.metadata.resource_version.as_deref());
        echoes.base.written.is_own_write(&key, ccc.metadata.resource_version.as_deref())
    });
    let (memo_ctx, cached) = (ctx.clone(), managed.clone());
    let managed_stream = changes_but_our_own(managed_stream, move |secret: &Secret| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        let key = context::Written::Secret(SecretRef::new(&ns, &name));
        note_cached(&memo_ctx.base, &cached, &key);
        memo_ctx.base.written.take_own_write(&key, secret.resource_version().as_deref())
    });
    let (all_for_ns, all_for_sources) = (ccc_reader.clone(), ccc_reader.clone());
    let controller = Controller::for_stream(ccc_stream, ccc_reader.clone())
        .with_config(ControllerConfig::default().concurrency(shared.concurrency))
        .trigger_backoff(WatchersBackOff)
        // A namespace created, relabelled or terminating can change any selection.
        .watches_stream(ns_stream, move |_ns: PartialObjectMeta<Namespace>| {
            all_for_ns.state().iter().map(|c| ObjectRef::from_obj(c.as_ref())).collect::<Vec<_>>()
        })
        .watches_stream(managed_stream, move |secret: Secret| {
            secret.labels().get(labels::CLUSTER_CREDENTIAL).map(|name| ObjectRef::new(name))
        })
        .watches_stream(source_stream, move |meta: PartialObjectMeta<Secret>| {
            let (ns, name) = (meta.namespace().unwrap_or_default(), meta.name_any());
            let readers = cluster::readers(&all_for_sources.state(), &ns, &name);
            if !readers.is_empty() {
                source_cache.saw(SecretRef::new(&ns, &name), meta.resource_version());
            }
            readers
        })
        .graceful_shutdown_on(shutdown);

    let run = drive(controller.run(cluster::reconcile, cluster::error_policy, ctx));
    let reconcilable = all_listed(vec![ns_listed, managed_listed.clone()]);
    let ready = async move {
        reconcilable.await;
        both_synced.set();
        all_listed(vec![ccc_listed, managed_listed]).await;
    }
    .boxed();
    (run, ready)
}

/// The Controller's own backoff on its merged watch streams: none. Each watcher already
/// backs off on its own ([`watch_backoff`]), while kube's default trigger backoff is one
/// for all of them, grows with every watch error and is reset only by an object: while it
/// sleeps no watch is polled. Watch errors without objects in between (a watch resumed after
/// an API server restart gets 410, then a watch-list gets 410 too) stalled every watch for
/// up to 30 s; with paged lists the objects of each relist happened to reset it.
struct WatchersBackOff;

impl Iterator for WatchersBackOff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for WatchersBackOff {
    fn reset(&mut self) {}
}

/// Turns true once a reflector's store holds a complete list. Set by the stream itself as the
/// watcher's `InitDone` passes (after the reflector applied it), rather than awaited through
/// the store's `wait_until_ready`: that wakes only the last of several waiters, and a
/// reconcile or readiness check that missed its wake-up sat until some unrelated event
/// (seconds to a minute) after the caches were ready.
#[derive(Clone)]
struct Synced(Arc<tokio::sync::watch::Sender<bool>>);

impl Synced {
    fn new() -> (Synced, tokio::sync::watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Synced(Arc::new(tx)), rx)
    }

    fn set(&self) {
        self.0.send_replace(true);
    }

    /// For `inspect_ok` on a reflector's stream.
    fn on_list<K>(self) -> impl FnMut(&watcher::Event<K>) {
        move |event| {
            if matches!(event, watcher::Event::InitDone) {
                self.set();
            }
        }
    }
}

/// Resolves once every one of `listed` is true.
fn all_listed(listed: Vec<tokio::sync::watch::Receiver<bool>>) -> futures::future::BoxFuture<'static, ()> {
    async move {
        for mut rx in listed {
            let _ = rx.wait_for(|listed| *listed).await;
        }
    }
    .boxed()
}

/// Tells the write memo what the cache now shows of a managed Secret the watch reported (the
/// reflector updates the cache before the event reaches here): present, the cache has caught
/// up with our writes of it; gone, it was deleted, and what this process remembers writing
/// to it no longer stands (a Secret of the same name may be somebody else's now).
/// The objects of a watch that may need a reconcile: every change but our own writes
/// (`own` tells them apart: it sees every object, whatever the event), and everything a
/// (re)list shows, our own writes included: after a relist, an object that is gone gives no
/// event at all, and the reconciles its siblings start are what notice it.
fn changes_but_our_own<K: Send + 'static>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    own: impl Fn(&K) -> bool + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    events.filter_map(move |event| {
        let object = match event {
            Ok(watcher::Event::Apply(o)) => (!own(&o)).then_some(Ok(o)),
            Ok(watcher::Event::Delete(o) | watcher::Event::InitApply(o)) => {
                own(&o);
                Some(Ok(o))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(object)
    })
}

fn note_cached(ctx: &Context, cache: &ManagedCache, key: &context::Written) {
    let context::Written::Secret(at) = key else { return };
    match cache.get(&at.namespace, &at.name) {
        Some(_) => ctx.written.seen(key),
        None => ctx.written.forget(key),
    }
}

/// Runs a controller's stream to its end (shutdown), logging what it reports at debug level:
/// reconcile errors are already logged and counted by the error policies.
fn drive<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    results: impl futures::Stream<Item = Result<T, E>> + Send + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    results
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .boxed()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_drops_managed_fields_and_the_last_applied_copy_and_keeps_other_annotations() {
        let mut cc: ClientCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
            "metadata": {
                "name": "demo", "namespace": "team-a",
                "annotations": {LAST_APPLIED: "{\"a\":\"very long copy\"}", "tokensync.io/renew-requested-at": "now"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]
            },
            "spec": {"tokenEndpoint": "https://auth.example/token", "credentialsRef": {"name": "demo-client"}}
        }))
        .unwrap();
        slim(&mut cc);
        assert!(cc.managed_fields().is_empty());
        assert_eq!(cc.annotations().keys().collect::<Vec<_>>(), ["tokensync.io/renew-requested-at"]);
    }
}

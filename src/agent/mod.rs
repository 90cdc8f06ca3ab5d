//! `tokensync agent`: the controller's engine without a cluster. It reads ClientCredential
//! and Secret manifests from files (plus secret values from files, directories and
//! environment variables, see [`sources`]), and keeps one token per credential fresh in
//! `OUT_DIR/<namespace>/<name>/<key>`, one file per key of the target Secret, like a
//! mounted Secret volume.
//!
//! Everything that decides or requests is shared with the controller: the token engine
//! ([`crate::oauth`]), [`crate::schedule::decide`], [`crate::token_state`] (preparation,
//! fingerprints, failure record, refresh-token chain) and [`crate::render`]. This module
//! only adds the storage ([`files`], [`state_file`]), the per-credential tasks
//! ([`worker`]) and the supervision: reload on SIGHUP or when a watched file changes,
//! clean shutdown on SIGTERM/SIGINT.
//!
//! Change detection polls a digest of the watched files' contents (`--watch-interval`)
//! instead of using inotify: kubelet updates ConfigMap and Secret volumes by swapping a
//! `..data` symlink, editors save by renaming, and network file systems send no events, all
//! of which inotify watches on the files miss or need special handling for; hashing a few
//! small files every few seconds costs nothing, and reloads that change nothing cause no
//! token request (fingerprints).
//!
//! With `--proxy`, the agent also serves each named credential's token as an authenticating
//! reverse proxy ([`proxy`]); workers hand the token over in memory ([`live`]).

pub mod files;
pub mod live;
pub mod proxy;
pub mod sources;
pub mod state_file;
pub mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState};
use crate::engine_args::{EngineArgs, duration_arg};
use crate::metrics::Metrics;
use crate::oauth::GrantType;
use sources::{DirSource, KeySource, LoadedCredential, SourceSpec};
pub use worker::Progress;
use worker::Shared;

/// Flags of `tokensync agent`.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// YAML file with ClientCredentials and the Secrets they reference (the files `tokensync
    /// fetch` reads; other kinds are ignored). Repeat for several files. Watched for changes.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// Directory for the tokens: OUT_DIR/<namespace>/<name>/<key>, one file per key of the
    /// target Secret (access_token, token_type, expires_at, or the template's keys).
    #[arg(long, value_name = "DIR", env = "TOKENSYNC_OUT_DIR")]
    pub out_dir: PathBuf,

    /// Directory for the agent's state (refresh tokens, failure records):
    /// STATE_DIR/<namespace>/<name>.json. Default: OUT_DIR/.tokensync-state. Put it where
    /// the applications reading OUT_DIR cannot see it when a grant uses refresh tokens.
    #[arg(long, value_name = "DIR", env = "TOKENSYNC_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Take every file in DIR as a key of Secret [NAMESPACE/]NAME, like a mounted Secret
    /// volume (or systemd's $CREDENTIALS_DIRECTORY). Watched for changes. Repeatable.
    #[arg(long, value_name = "[NS/]NAME=DIR", value_parser = sources::parse_dir_source)]
    pub secret_from_dir: Vec<DirSource>,

    /// Take key KEY of Secret [NAMESPACE/]NAME from the file PATH (a trailing newline is
    /// dropped, as for Secrets). Watched for changes. Repeatable.
    #[arg(long, value_name = "[NS/]NAME/KEY=PATH", value_parser = sources::parse_key_source)]
    pub secret_from_file: Vec<KeySource>,

    /// Take key KEY of Secret [NAMESPACE/]NAME from the environment variable VAR (read at
    /// start and on reload). Repeatable.
    #[arg(long, value_name = "[NS/]NAME/KEY=VAR", value_parser = sources::parse_key_source)]
    pub secret_from_env: Vec<KeySource>,

    /// How often the manifest and secret files are checked for changes (a change reloads
    /// them; so does SIGHUP). 0 turns the check off.
    #[arg(long, default_value = "5s", value_parser = interval_arg)]
    pub watch_interval: Duration,

    /// Serve /healthz, /readyz (ready when every credential has a valid token on disk) and
    /// /metrics on this address. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// The projected ServiceAccount token (a `serviceAccountToken` volume source; kubelet
    /// rotates it) of credentials whose spec names a serviceAccountRef. Read anew for every
    /// token request, never copied. Its audience is the one the pod spec projects.
    #[arg(long, value_name = "PATH", env = "TOKENSYNC_SERVICE_ACCOUNT_TOKEN_FILE")]
    pub service_account_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub proxy: proxy::ProxyArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Reads a ServiceAccount token file (projected volume). Errors name the file, never its
/// content.
pub fn read_token_file(path: &std::path::Path) -> Result<secrecy::SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the ServiceAccount token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the ServiceAccount token file {} is empty", path.display()));
    }
    Ok(secrecy::SecretString::from(token.to_owned()))
}

/// A duration, or a bare `0` for "off".
fn interval_arg(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" { Ok(Duration::ZERO) } else { duration_arg(s) }
}

impl AgentArgs {
    fn source_spec(&self) -> SourceSpec {
        SourceSpec {
            manifests: self.files.clone(),
            dirs: self.secret_from_dir.clone(),
            files: self.secret_from_file.clone(),
            envs: self.secret_from_env.clone(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| self.out_dir.join(".tokensync-state"))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

enum Command {
    Reload,
    Shutdown,
}

/// A running agent.
pub struct Agent {
    commands: mpsc::UnboundedSender<Command>,
    progress: watch::Receiver<Progress>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    supervisor: tokio::task::JoinHandle<()>,
    live: Arc<live::LiveTokens>,
    proxies: proxy::Proxies,
}

impl Agent {
    /// Loads the configuration, starts the proxies and one task per credential. Fails when
    /// the initial configuration cannot be loaded (unreadable or invalid manifests) or a
    /// `--proxy` cannot be served (unknown credential, refused address or upstream, address
    /// in use).
    pub fn start(args: &AgentArgs) -> Result<Agent, String> {
        let spec = args.source_spec();
        let digest = sources::watched_digest(&spec);
        let initial = sources::load(&spec)?;
        let mut metrics = Metrics::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        metrics.registry.register(
            "agent_config_loads",
            "Configuration loads by the agent (start, SIGHUP, file change), by result",
            reloads.clone(),
        );
        let proxy_metrics =
            (!args.proxy.proxies.is_empty()).then(|| proxy::metrics::ProxyMetrics::register(&mut metrics.registry));
        let live = Arc::new(live::LiveTokens::new(args.proxy.proxy_renewal_interval));
        let credentials: Vec<String> = initial.iter().map(|c| c.id()).collect();
        let proxies = proxy::Proxies::start(
            &args.proxy,
            proxy::Context {
                live: &live,
                metrics: proxy_metrics.as_ref(),
                allow_http: args.engine.allow_http,
                credentials: &credentials,
            },
        )?;
        let metrics = Arc::new(metrics);
        let ready = Arc::new(AtomicBool::new(false));
        let (progress_tx, progress) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            engine: args.engine.engine(),
            renewal: args.engine.renewal_policy(),
            backoff: args.engine.backoff_policy(),
            metrics: metrics.clone(),
            out_dir: args.out_dir.clone(),
            state_dir: args.state_dir(),
            progress: progress_tx,
            health: Default::default(),
            ready: ready.clone(),
            service_account_token_file: args.service_account_token_file.clone(),
            live: live.clone(),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let mut supervisor = Supervisor {
            shared,
            spec,
            digest,
            reloads,
            workers: HashMap::new(),
            stop: watch::channel(false).0,
            tasks: tokio::task::JoinSet::new(),
        };
        supervisor.apply(initial, false);
        let interval = args.watch_interval;
        let supervisor = tokio::spawn(supervisor.run(rx, interval));
        Ok(Agent { commands, progress, ready, metrics, supervisor, live, proxies })
    }

    /// Where each `--proxy` listens, with its credential (`namespace/name`), in the order of
    /// the flags.
    pub fn proxy_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.proxies.addrs()
    }

    /// What credential `id` (`namespace/name`) serves in memory right now.
    pub fn live_token(&self, id: &str) -> Arc<live::Slot> {
        self.live.slot(id)
    }

    /// Reloads the configuration now and re-checks every credential (what SIGHUP does).
    pub fn reload(&self) {
        let _ = self.commands.send(Command::Reload);
    }

    /// What the agent has done so far, as a watch channel.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until `condition` holds for the progress counters; false on timeout.
    pub async fn wait_for(&self, timeout: Duration, condition: impl FnMut(&Progress) -> bool) -> bool {
        let mut rx = self.progress.clone();
        tokio::time::timeout(timeout, rx.wait_for(condition)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState { ready: self.ready.clone(), metrics: self.metrics.clone() }
    }

    /// Stops: the proxies stop accepting and finish the requests in flight (within
    /// [`proxy::listener::GRACE`]); token requests in progress finish (and their state is
    /// written), then the tasks end.
    pub async fn shutdown(self) {
        self.proxies.shutdown().await;
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.supervisor.await;
    }
}

struct WorkerHandle {
    config: watch::Sender<Arc<LoadedCredential>>,
}

struct Supervisor {
    shared: Arc<Shared>,
    spec: SourceSpec,
    /// Digest of the watched files when they were last loaded.
    digest: String,
    reloads: Family<ReloadLabels, Counter>,
    workers: HashMap<String, WorkerHandle>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Supervisor {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, interval: Duration) {
        let mut ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Reload) => {
                        tracing::info!("reloading the configuration (SIGHUP)");
                        self.digest = sources::watched_digest(&self.spec);
                        self.reload(true);
                    }
                    Some(Command::Shutdown) | None => break,
                },
                _ = tick => {
                    let digest = sources::watched_digest(&self.spec);
                    if digest != self.digest {
                        tracing::info!("configuration files changed; reloading");
                        self.digest = digest;
                        self.reload(false);
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
        let _ = self.stop.send(true);
        self.workers.clear();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("agent stopped");
    }

    /// Loads the configuration again. `recheck`: run every credential's pass even when its
    /// configuration is unchanged (SIGHUP), which restores deleted or edited token files;
    /// it causes no token request unless one is due.
    fn reload(&mut self, recheck: bool) {
        match sources::load(&self.spec) {
            Ok(loaded) => self.apply(loaded, recheck),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the configuration; keeping the previous one");
                self.reloads.get_or_create(&ReloadLabels { result: "failure".into() }).inc();
                self.shared.progress.send_modify(|p| p.reload_failures += 1);
            }
        }
    }

    /// Starts, updates and stops workers to match `loaded`. Credentials that disappear
    /// stop being renewed; their files stay (they expire on their own).
    fn apply(&mut self, loaded: Vec<Arc<LoadedCredential>>, recheck: bool) {
        self.warn_if_state_is_visible(&loaded);
        let mut keep = HashMap::new();
        let (mut added, mut changed) = (0usize, 0usize);
        for cred in loaded {
            let id = cred.id();
            match self.workers.remove(&id) {
                Some(handle) => {
                    let differs = handle.config.borrow().digest != cred.digest;
                    changed += usize::from(differs);
                    if differs || recheck {
                        handle.config.send_replace(cred);
                    }
                    keep.insert(id, handle);
                }
                None => {
                    added += 1;
                    let (tx, rx) = watch::channel(cred);
                    self.shared.set_health(&id, Some(false));
                    self.tasks.spawn(worker::run(self.shared.clone(), rx, self.stop.subscribe()));
                    keep.insert(id, WorkerHandle { config: tx });
                }
            }
        }
        for id in self.workers.keys() {
            tracing::info!(credential = %id, "no longer in the configuration; its token files are left in place");
        }
        let removed = self.workers.len();
        // Dropping the handles of removed credentials ends their tasks.
        self.workers = keep;
        tracing::info!(credentials = self.workers.len(), added, changed, removed, "configuration loaded");
        self.reloads.get_or_create(&ReloadLabels { result: "success".into() }).inc();
        self.shared.progress.send_modify(|p| p.reloads += 1);
    }

    fn warn_if_state_is_visible(&self, loaded: &[Arc<LoadedCredential>]) {
        let chains = loaded.iter().any(|c| {
            let spec = &c.cc.spec;
            matches!(spec.grant_type, GrantType::RefreshToken | GrantType::AuthorizationCode)
                || spec.refresh_endpoint.is_some()
        });
        if chains && self.shared.state_dir.starts_with(&self.shared.out_dir) {
            tracing::warn!(
                state_dir = %self.shared.state_dir.display(),
                "refresh tokens are kept under --out-dir; use --state-dir outside it if applications read --out-dir"
            );
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT; SIGHUP reloads the configuration.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let agent = Agent::start(&args).map_err(AgentError::Config)?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match args.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| AgentError::Runtime(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "admin server listening");
            let router = admin::router(agent.admin_state());
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = admin_stopped.await;
                    })
                    .await
            }))
        }
        None => None,
    };
    let signal = |kind| {
        tokio::signal::unix::signal(kind).map_err(|e| AgentError::Runtime(format!("cannot handle signals: {e}")))
    };
    use tokio::signal::unix::SignalKind;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => agent.reload(),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down");
    agent.shutdown().await;
    let _ = stop_admin.send(());
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    Ok(())
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration could not be loaded at start (exit code 2).
    #[error("{0}")]
    Config(String),
    /// Anything else (exit code 1).
    #[error("{0}")]
    Runtime(String),
}

impl AgentError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Runtime(_) => 1,
        }
    }
}

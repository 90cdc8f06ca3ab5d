//! Faults of the Kubernetes control plane itself, staged on a real one (a control plane of the
//! test's own: `ControlPlane::dedicated`): kube-apiserver stopped with SIGTERM and started
//! again on the same etcd, etcd stopped and started again. The promises (docs/faults.md): a
//! token already obtained is published once the API answers, without a second request; once
//! the API answers, changes are acted on within seconds, whatever the outage's length.
//!
//! The API server double stages what a real server cannot on demand (held watches, a lagging
//! watch cache, hanging requests): those stay in tests/faults.rs.

mod support;
mod token_server;

/// `TOKENSYNC_TEST_LOG=tokensync=debug cargo test --test control_plane_faults` shows the
/// controller's log.
fn log() {
    if let Ok(filter) = std::env::var("TOKENSYNC_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::control_plane::ControlPlane;
use support::controller::{Cc, args};
use support::real::{Env, decoded};
use token_server::{Recorded, Reply, TokenServer};

/// How long "within seconds" is, from the moment a change is made after the outage. Watches
/// retry at most 2 s apart during an outage and relist at once after a 410; a restarted
/// kube-apiserver answers requests for custom resources with 503 and `Retry-After` until its
/// CRD informers have synced, which the client honours (a watch was back 5 s after the
/// restart, measured): 8 s leaves room for a loaded CI machine.
const PROMPTLY: Duration = Duration::from_secs(8);

/// Issues `<client_id>-<n>` (n counts that client's requests), after `delay_ms`.
struct Issuer {
    server: TokenServer,
    delay_ms: Arc<AtomicU64>,
    issued: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Issuer {
    async fn start() -> Issuer {
        let delay_ms = Arc::new(AtomicU64::new(0));
        let issued: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        let (d, i) = (delay_ms.clone(), issued.clone());
        let server = TokenServer::start(move |r: &Recorded| {
            let client = r.params().get("client_id").cloned().unwrap_or_default();
            let n = {
                let mut issued = i.lock().unwrap();
                let n = issued.entry(client.clone()).or_default();
                *n += 1;
                *n
            };
            let body = json!({"access_token": format!("{client}-{n}"), "token_type": "Bearer", "expires_in": 3600});
            Reply::json(200, body).delayed(Duration::from_millis(d.load(Ordering::SeqCst)))
        })
        .await;
        Issuer { server, delay_ms, issued }
    }

    fn requests(&self) -> usize {
        self.server.requests().len()
    }

    fn issued(&self, client: &str) -> u32 {
        self.issued.lock().unwrap().get(client).copied().unwrap_or(0)
    }
}

async fn credential(env: &Env, issuer: &Issuer, name: &str) {
    env.create_secret(&format!("{name}-client"), &[("client_id", name), ("client_secret", "s")]).await;
    env.create_cc(Cc::new(name, &issuer.server.url("/token"))).await;
}

/// Waits until `cond` holds, checking every 20 ms; panics after `timeout`.
async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until target `name` holds `token`; returns how long that took from `since`. Retries
/// while the API server is still coming back.
async fn published_within(env: &Env, name: &str, token: &str, since: Instant, limit: Duration) -> Duration {
    let deadline = since + limit;
    loop {
        if let Ok(Some(s)) = env.secrets().get_opt(name).await
            && decoded(&s).get("access_token").map(String::as_str) == Some(token)
        {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{name}: {token} not published within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn renew_now(env: &Env, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": value}}});
    env.ccs().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Right after an outage, changes made through the API: a deleted target is restored without
/// a request, a renewal request gives exactly one renewal, and a new credential becomes Ready,
/// each within [`PROMPTLY`].
async fn changes_are_acted_on_promptly(env: &Env, issuer: &Issuer, existing: &[&str], new: &str) {
    let (restored, renewed) = (existing[0], existing[1]);
    let restored_token = decoded(&env.secret(restored).await.unwrap())["access_token"].clone();
    let renewed_next = format!("{renewed}-{}", issuer.issued(renewed) + 1);
    let before = issuer.requests();

    let started = Instant::now();
    env.secrets().delete(restored, &Default::default()).await.unwrap();
    renew_now(env, renewed, "after-the-outage").await;
    credential(env, issuer, new).await;
    let restore = published_within(env, restored, &restored_token, started, PROMPTLY).await;
    let renewal = published_within(env, renewed, &renewed_next, started, PROMPTLY).await;
    let first = published_within(env, new, &format!("{new}-1"), started, PROMPTLY).await;
    eprintln!("after the outage: target restored in {restore:?}, renewal in {renewal:?}, new credential in {first:?}");
    assert_eq!(issuer.requests(), before + 2, "one renewal and one first token, nothing else");
}

/// Issue 26, items 1 and 2. Five renewals are under way (their token requests answered after
/// 6 s) when kube-apiserver is stopped; it stays down for 15 s. Every token obtained during
/// the outage is published once the API answers, without a second request, and changes made
/// after the restart are acted on within seconds.
#[tokio::test]
async fn after_an_api_server_restart_during_a_renewal_wave_tokens_obtained_are_published_without_a_second_request() {
    log();
    let plane = ControlPlane::dedicated();
    let env = Env::on(plane.clone(), "restart").await;
    let issuer = Issuer::start().await;
    let _c = env.start(args(&["--backoff-min", "1s", "--backoff-max", "10s"])).await;
    let names = ["a", "b", "c", "d", "e"];
    for name in names {
        credential(&env, &issuer, name).await;
    }
    for name in names {
        env.wait_secret_value(name, "access_token", &format!("{name}-1")).await;
    }

    // The wave: each renewal's token request is answered 6 s after it arrives.
    issuer.delay_ms.store(6000, Ordering::SeqCst);
    for name in names {
        renew_now(&env, name, "wave").await;
    }
    until("the wave's token requests arrive", Duration::from_secs(20), || issuer.requests() == 10).await;
    let asked = Instant::now();
    plane.stop_apiserver().await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "kube-apiserver took {:?} to stop: the answers may have been written before it was down, so the test \
         would prove nothing",
        asked.elapsed()
    );
    issuer.delay_ms.store(0, Ordering::SeqCst);
    // The outage itself: a fixed length of time is what is being staged.
    tokio::time::sleep(Duration::from_secs(15)).await;
    plane.start_apiserver().await;
    let back = Instant::now();

    let mut longest = Duration::ZERO;
    for name in names {
        longest = longest.max(published_within(&env, name, &format!("{name}-2"), back, Duration::from_secs(20)).await);
    }
    eprintln!("API server back: the wave's tokens published within {longest:?}; requests {}", issuer.requests());
    for name in names {
        env.wait_status(name, "with the wave's request handled", |s| {
            s.handled_renewal_request.as_deref() == Some("wave")
        })
        .await;
    }
    assert_eq!(issuer.requests(), 10, "every token obtained during the outage is published, none requested twice");

    changes_are_acted_on_promptly(&env, &issuer, &["a", "b"], "f").await;
}

/// Issue 26, item 3. etcd stopped for 15 s, then back: connections that died with the outage
/// must not hold the controller. A renewal requested once the API answers again is published,
/// and a deleted target restored, within seconds.
#[tokio::test]
async fn after_etcd_is_stopped_and_started_again_changes_are_acted_on_within_seconds() {
    log();
    let plane = ControlPlane::dedicated();
    let env = Env::on(plane.clone(), "etcd").await;
    let issuer = Issuer::start().await;
    let _c = env.start(args(&["--backoff-min", "1s", "--backoff-max", "10s"])).await;
    for name in ["a", "b"] {
        credential(&env, &issuer, name).await;
        env.wait_secret_value(name, "access_token", &format!("{name}-1")).await;
    }

    plane.stop_etcd().await;
    // The outage itself: a fixed length of time is what is being staged.
    tokio::time::sleep(Duration::from_secs(15)).await;
    plane.start_etcd().await;
    // The API server answers writes again once it has reconnected to etcd.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let patch = json!({"metadata": {"annotations": {"probe": "etcd-back"}}});
        match env.ccs().patch("a", &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the API server never answered after etcd came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    changes_are_acted_on_promptly(&env, &issuer, &["a", "b"], "c").await;
}

/// Two replicas of the whole operator under leader election, on a real coordination.k8s.io
/// Lease (issue 25, item 4; issue 26, item 5). Each replica is `run_with`, as
/// `tokensync controller --leader-elect` runs it, with short timings: a 6 s lease, renewed
/// every second, and a 4 s renew deadline.
mod leader_election {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use kube::api::Api;
    use tokensync::metrics::Metrics;

    use super::*;
    use support::real::wait_on;

    const LEASE: &str = "tokensync-controller";
    const RENEW_DEADLINE: Duration = Duration::from_secs(4);
    /// A replica's token request interval floor (`--min-renewal-interval`, default 10 s), less
    /// the second by which renewal times are rounded: a token requested sooner after the one
    /// before was requested twice.
    const NOT_BEFORE_DUE: Duration = Duration::from_secs(9);

    fn leader_args(env: &Env, id: &str) -> tokensync::controller::ControllerArgs {
        args(&[
            "--namespace",
            &env.ns,
            "--leader-elect",
            "--leader-election-namespace",
            &env.ns,
            "--leader-election-lease-duration",
            "6s",
            "--leader-election-renew-deadline",
            "4s",
            "--leader-election-retry-period",
            "1s",
            "--identity",
            id,
        ])
    }

    /// The whole operator in-process, as one pod runs it: [`Replica::crash`] aborts it, as a
    /// killed pod. Dropping it aborts it too.
    struct Replica {
        task: tokio::task::JoinHandle<Result<(), String>>,
        metrics: Arc<Metrics>,
        /// When `run_with` returned (lost leadership, or a fatal error).
        exited: Arc<Mutex<Option<Instant>>>,
    }

    impl Replica {
        fn start(id: &str, config: kube::Config, env: &Env) -> Replica {
            let args = leader_args(env, id);
            let metrics = Arc::new(Metrics::default());
            let client = tokensync::controller::api_client(config, args.api_timeout, &metrics).unwrap();
            let exited: Arc<Mutex<Option<Instant>>> = Arc::default();
            let (m, e) = (metrics.clone(), exited.clone());
            let task = tokio::spawn(async move {
                let result = tokensync::controller::run_with(client, args, std::future::pending(), m).await;
                *e.lock().unwrap() = Some(Instant::now());
                result.map_err(|e| e.to_string())
            });
            Replica { task, metrics, exited }
        }

        fn crash(&self) {
            self.task.abort();
        }

        fn exited(&self) -> Option<Instant> {
            *self.exited.lock().unwrap()
        }

        /// Token requests this replica made, from its metrics.
        fn token_requests(&self) -> u64 {
            self.metrics
                .encode()
                .lines()
                .filter(|l| l.starts_with("tokensync_token_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum()
        }

        fn reconciles(&self) -> u64 {
            self.metrics.reconciles()
        }

        async fn result(self) -> Result<(), String> {
            let task = tokio::spawn(async { Ok(()) });
            let task = std::mem::replace(&mut { self }.task, task);
            tokio::time::timeout(Duration::from_secs(1), task).await.expect("the replica has exited").unwrap()
        }
    }

    impl Drop for Replica {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Waits until the Lease satisfies `cond`; returns its spec.
    async fn wait_lease(env: &Env, what: &str, cond: impl Fn(&LeaseSpec) -> bool + Send + 'static) -> LeaseSpec {
        let leases: Api<Lease> = env.api();
        let lease =
            wait_on(leases, LEASE, what, move |l: Option<&Lease>| l.and_then(|l| l.spec.as_ref()).is_some_and(&cond))
                .await
                .expect("the Lease");
        lease.spec.unwrap()
    }

    fn holder(s: &LeaseSpec) -> &str {
        s.holder_identity.as_deref().unwrap_or_default()
    }

    fn renewed(s: &LeaseSpec) -> jiff::Timestamp {
        s.renew_time.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// Waits until `id` has renewed the Lease `times` more times after `spec`.
    async fn wait_renewals(env: &Env, id: &str, spec: &LeaseSpec, times: i64) -> LeaseSpec {
        let (id, since) = (id.to_owned(), renewed(spec));
        wait_lease(env, &format!("renewed {times} times more by {id}"), move |s| {
            holder(s) == id && (renewed(s) - since).get_seconds() >= times - 1 && renewed(s) > since
        })
        .await
    }

    /// One client's tokens at [`ChainIssuer`].
    #[derive(Default)]
    struct Chain {
        /// Each token issued, and when.
        issued: Vec<(String, Instant)>,
        /// The one refresh token the issuer honours (rotation: each use replaces it).
        refresh: Option<String>,
        /// Refresh requests refused because they presented another refresh token.
        refused: u32,
        /// Refresh requests answered.
        refreshed: u32,
    }

    type Hook = Box<dyn FnOnce() + Send>;

    /// Issues `<client_id>-<n>`, valid `lifetime` seconds, with a rotating refresh token
    /// `<client_id>-rt-<n>`: a refresh with any other than the client's latest refresh token
    /// is refused with `invalid_grant`, as OAuth 2.1 rotation does.
    struct ChainIssuer {
        server: TokenServer,
        chains: Arc<Mutex<BTreeMap<String, Chain>>>,
        /// Runs once, just before the next refresh is answered.
        on_refresh: Arc<Mutex<Option<Hook>>>,
        /// Every token is answered this many milliseconds after the request arrived.
        delay_ms: Arc<AtomicU64>,
    }

    impl ChainIssuer {
        async fn start(lifetime: u64) -> ChainIssuer {
            let chains: Arc<Mutex<BTreeMap<String, Chain>>> = Arc::default();
            let on_refresh: Arc<Mutex<Option<Hook>>> = Arc::default();
            let delay_ms = Arc::new(AtomicU64::new(0));
            let (c, hook, delay) = (chains.clone(), on_refresh.clone(), delay_ms.clone());
            let server = TokenServer::start(move |r: &Recorded| {
                let p = r.params();
                let client = p.get("client_id").cloned().unwrap_or_default();
                let mut chains = c.lock().unwrap();
                let chain = chains.entry(client.clone()).or_default();
                if p.get("grant_type").map(String::as_str) == Some("refresh_token") {
                    if p.get("refresh_token") != chain.refresh.as_ref() {
                        chain.refused += 1;
                        return Reply::oauth_error(400, "invalid_grant", "refresh token reused or unknown");
                    }
                    chain.refreshed += 1;
                    if let Some(hook) = hook.lock().unwrap().take() {
                        hook();
                    }
                }
                let n = chain.issued.len() + 1;
                let token = format!("{client}-{n}");
                chain.issued.push((token.clone(), Instant::now()));
                chain.refresh = Some(format!("{client}-rt-{n}"));
                let body = json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                                  "refresh_token": chain.refresh});
                Reply::json(200, body).delayed(Duration::from_millis(delay.load(Ordering::SeqCst)))
            })
            .await;
            ChainIssuer { server, chains, on_refresh, delay_ms }
        }

        fn url(&self) -> String {
            self.server.url("/token")
        }

        fn on_next_refresh(&self, hook: impl FnOnce() + Send + 'static) {
            *self.on_refresh.lock().unwrap() = Some(Box::new(hook));
        }

        fn issued(&self, client: &str) -> Vec<(String, Instant)> {
            self.chains.lock().unwrap().get(client).map(|c| c.issued.clone()).unwrap_or_default()
        }

        fn all_issued(&self) -> Vec<(String, Instant)> {
            self.chains.lock().unwrap().values().flat_map(|c| c.issued.clone()).collect()
        }

        fn current_refresh(&self, client: &str) -> Option<String> {
            self.chains.lock().unwrap().get(client).and_then(|c| c.refresh.clone())
        }

        fn refused(&self, client: &str) -> u32 {
            self.chains.lock().unwrap().get(client).map(|c| c.refused).unwrap_or(0)
        }

        async fn credential(&self, env: &Env, name: &str) {
            env.create_secret(&format!("{name}-client"), &[("client_id", name), ("client_secret", "s")]).await;
            env.create_cc(Cc::new(name, &self.url())).await;
        }
    }

    /// By Secret name, each access token it held and when it was first seen.
    type Seen = BTreeMap<String, Vec<(String, Instant)>>;

    /// Every access token each target Secret has held, with when it was first seen, from a
    /// watch of the namespace's managed Secrets (it resumes after an outage).
    struct Published {
        seen: Arc<Mutex<Seen>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Published {
        fn watch(env: &Env) -> Published {
            use futures::StreamExt;
            use tokensync::controller::watch_backoff::RetryPromptly;
            let seen: Arc<Mutex<Seen>> = Arc::default();
            let s = seen.clone();
            let config = kube::runtime::watcher::Config::default().labels("app.kubernetes.io/managed-by=tokensync");
            let stream = kube::runtime::watcher(env.secrets(), config).retry_promptly();
            let task = tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let Ok(
                        kube::runtime::watcher::Event::Apply(secret) | kube::runtime::watcher::Event::InitApply(secret),
                    ) = event
                    else {
                        continue;
                    };
                    let Some(token) = decoded(&secret).get("access_token").cloned() else { continue };
                    let name = secret.metadata.name.clone().unwrap_or_default();
                    let mut seen = s.lock().unwrap();
                    let tokens = seen.entry(name).or_default();
                    if !tokens.iter().any(|(t, _)| *t == token) {
                        tokens.push((token, Instant::now()));
                    }
                }
            });
            Published { seen, task }
        }

        /// When target `name` first held `token`.
        fn first_seen(&self, name: &str, token: &str) -> Option<Instant> {
            self.seen.lock().unwrap().get(name)?.iter().find(|(t, _)| t == token).map(|(_, at)| *at)
        }

        /// When target `name` first held `token`, once this watch has seen it (it may be a
        /// moment behind a target just seen through another watch).
        async fn seen(&self, name: &str, token: &str) -> Instant {
            until(&format!("{name}: {token} published"), support::real::WAIT, || {
                self.first_seen(name, token).is_some()
            })
            .await;
            self.first_seen(name, token).unwrap()
        }
    }

    impl Drop for Published {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// What became of every token the issuer issued to the credentials `names` (each
    /// credential's client_id is its name): each must have been published in its target, and
    /// none requested sooner than [`NOT_BEFORE_DUE`] after the one before (a duplicate).
    /// Returns the longest time from a token's issue to its publication.
    async fn assert_each_token_requested_once_and_published(
        issuer: &ChainIssuer,
        published: &Published,
        names: &[&str],
    ) -> Duration {
        let mut longest = Duration::ZERO;
        for name in names {
            let issued = issuer.issued(name);
            for (token, at) in &issued {
                let seen = published.seen(name, token).await;
                longest = longest.max(seen.saturating_duration_since(*at));
            }
            for pair in issued.windows(2) {
                let gap = pair[1].1.duration_since(pair[0].1);
                assert!(gap >= NOT_BEFORE_DUE, "{name}: {} requested {gap:?} after {}: twice", pair[1].0, pair[0].0);
            }
        }
        longest
    }

    /// Issue 25, item 4: the leader dies (its task aborted, as a killed pod) without releasing
    /// the Lease. The standby takes the Lease once it lapses, goes on renewing it, and renews
    /// every token as it comes due: no token is requested twice (every token issued is
    /// published, none is requested before the one before it was due), none is lost.
    #[tokio::test]
    async fn when_the_leader_dies_the_standby_takes_the_lease_and_renews_each_token_once() {
        log();
        let plane = ControlPlane::dedicated();
        let env = Env::on(plane.clone(), "failover").await;
        // 20-second tokens are renewed 10 s after they were issued: after the failover.
        let issuer = ChainIssuer::start(20).await;
        let published = Published::watch(&env);
        let a = Replica::start("a", plane.config().await, &env);
        wait_lease(&env, "held by a", |s| holder(s) == "a").await;
        let b = Replica::start("b", plane.config().await, &env);
        let names = ["c1", "c2", "c3"];
        for name in names {
            issuer.credential(&env, name).await;
        }
        for name in names {
            env.wait_secret_value(name, "access_token", &format!("{name}-1")).await;
        }
        assert_eq!(b.token_requests() + b.reconciles(), 0, "the standby neither reconciles nor requests");

        let crashed = Instant::now();
        a.crash();
        let taken = wait_lease(&env, "taken by b", |s| holder(s) == "b").await;
        let failover = crashed.elapsed();
        assert!(b.metrics.wait_for_reconciles(1, support::real::WAIT).await, "the new leader reconciles");
        let first_reconcile = crashed.elapsed();
        let mut renewal = Duration::ZERO;
        for name in names {
            env.wait_secret_value(name, "access_token", &format!("{name}-2")).await;
            let issued = issuer.issued(name)[1].1;
            renewal = renewal.max(published.seen(name, &format!("{name}-2")).await.duration_since(issued));
        }
        wait_renewals(&env, "b", &taken, 3).await;

        let longest = assert_each_token_requested_once_and_published(&issuer, &published, &names).await;
        eprintln!(
            "failover: Lease taken by b {failover:?} after a was killed, b's first reconcile after {first_reconcile:?}; \
             token requests a {} b {}; every token issued was published, the longest {longest:?} after it was issued",
            a.token_requests(),
            b.token_requests()
        );
        assert_eq!(a.token_requests(), 3, "a: the first tokens");
        assert_eq!(b.token_requests(), 3, "b: one renewal each, nothing on taking over");
        assert_eq!(issuer.all_issued().len(), 6);
        assert!(renewal < Duration::from_secs(2), "renewals are published at once: {renewal:?}");
    }

    /// Issue 25, item 4: the API server gone for longer than the lease (stopped for 15 s; the
    /// lease is 6 s). Renewals come due while it is down, after the leader's renew deadline:
    /// the leader stops at its deadline and requests no token after it (it is restarted, as
    /// its pod would be). Once the API server is back, exactly one replica leads: it renews
    /// each token once and goes on renewing the Lease. Nothing is requested twice.
    #[tokio::test]
    async fn with_the_api_server_gone_longer_than_the_lease_the_old_leader_requests_nothing_after_its_renew_deadline_and_one_replica_renews_each_token_once()
     {
        log();
        let plane = ControlPlane::dedicated();
        let env = Env::on(plane.clone(), "lease-outage").await;
        // 36-second tokens are renewed 16 to 18 s after they were issued: while the API server
        // is down, after the leader's renew deadline (checked below).
        let lifetime = Duration::from_secs(36);
        let issuer = ChainIssuer::start(lifetime.as_secs()).await;
        let published = Published::watch(&env);
        let config = plane.config().await;
        let a = Replica::start("a", config.clone(), &env);
        wait_lease(&env, "held by a", |s| holder(s) == "a").await;
        let b = Replica::start("b", config.clone(), &env);
        let names = ["c1", "c2", "c3"];
        for name in names {
            issuer.credential(&env, name).await;
        }
        let mut renew_at = Vec::new();
        for name in names {
            env.wait_secret_value(name, "access_token", &format!("{name}-1")).await;
            env.wait_status(name, "with renewAt", |s| s.renew_at.is_some()).await;
            renew_at.push(env.status(name).await.unwrap().renew_at.unwrap().0);
        }

        let stopping = Instant::now();
        plane.stop_apiserver().await;
        let (stopped, stopped_at) = (Instant::now(), jiff::Timestamp::now());
        // The leader renewed its Lease at the latest when the API server stopped answering, so
        // its renew deadline has passed at the latest RENEW_DEADLINE after that.
        let deadline = stopped + RENEW_DEADLINE;
        until("a stops at its renew deadline", Duration::from_secs(10), || a.exited().is_some()).await;
        let a_exited = a.exited().unwrap();
        // Its pod is restarted: the same identity.
        let a2 = Replica::start("a", config.clone(), &env);
        // The outage itself: a fixed length of time is what is being staged.
        tokio::time::sleep_until((stopped + Duration::from_secs(15)).into()).await;
        // The API server answers some requests before its /readyz says ok (when
        // start_apiserver returns): it is back from the moment it is started.
        let (restarting, restarting_at) = (Instant::now(), jiff::Timestamp::now());
        plane.start_apiserver().await;
        let ready = restarting.elapsed();
        for (name, at) in names.iter().zip(&renew_at) {
            let (after_stop, before_back) = (at.duration_since(stopped_at), restarting_at.duration_since(*at));
            assert!(
                after_stop.as_secs_f64() > RENEW_DEADLINE.as_secs_f64() + 1.0 && before_back.is_positive(),
                "staging: {name}'s renewal must come due after a's renew deadline and before the API server is \
                 started again: due {after_stop:?} after the API server stopped, {before_back:?} before it was started"
            );
        }

        for name in names {
            env.wait_secret_value(name, "access_token", &format!("{name}-2")).await;
        }
        let renewed = restarting.elapsed();
        let mut expired = Duration::ZERO;
        for name in names {
            let seen = published.seen(name, &format!("{name}-2")).await;
            let expiry = issuer.issued(name)[0].1 + lifetime;
            expired = expired.max(seen.saturating_duration_since(expiry));
        }
        let lease = wait_lease(&env, "held", |s| !holder(s).is_empty()).await;
        let leader = holder(&lease).to_owned();
        let (leading, standby) = if leader == "b" { (&b, &a2) } else { (&a2, &b) };
        wait_renewals(&env, &leader, &lease, 3).await;

        let longest = assert_each_token_requested_once_and_published(&issuer, &published, &names).await;
        let during: Vec<_> =
            issuer.all_issued().into_iter().filter(|(_, at)| *at > stopping && *at < restarting).collect();
        eprintln!(
            "API server gone: it took {:?} to stop, a stopped {:?} after that (renew deadline {RENEW_DEADLINE:?}); \
             started again {:?} after the stop began, ready in {ready:?}; {leader} leads; every renewal published \
             within {renewed:?} of the start; tokens requested while it was down {}; token requests a {} a2 {} b {}; \
             every token issued was published, the longest {longest:?} after it was issued; a target held an expired \
             token for at most {expired:?}",
            stopped.duration_since(stopping),
            a_exited.saturating_duration_since(stopped),
            restarting.duration_since(stopping),
            during.len(),
            a.token_requests(),
            a2.token_requests(),
            b.token_requests()
        );
        assert!(
            a_exited <= deadline + Duration::from_millis(500),
            "a stopped {:?} after the API server stopped, past its renew deadline",
            a_exited.duration_since(stopped)
        );
        assert_eq!(a.token_requests(), 3, "the old leader: the first tokens, nothing after its renew deadline");
        assert!(a.result().await.unwrap_err().contains("lost leadership"));
        assert!(during.is_empty(), "tokens requested while the API server was down: {during:?}");
        assert_eq!(leading.token_requests(), 3, "one renewal each, by the one leader");
        assert_eq!(standby.token_requests() + standby.reconciles(), 0, "the other replica stands by");
    }

    /// The network between one replica and the API server, partitioned on demand: a TCP proxy
    /// on 127.0.0.1. While held, no byte is delivered either way: each connection keeps what
    /// it receives, in order, as a partition that loses nothing does (TCP retransmits until it
    /// heals), so the replica's requests hang and nothing fails. Once released, what was held
    /// is delivered, in order; each burst the replica sent during the partition is delivered
    /// once the server has answered the one before (or a second has passed), so a request
    /// held arrives before the replica's close that followed it, as it does once a real
    /// network heals.
    struct Partition {
        url: String,
        held: Arc<tokio::sync::watch::Sender<bool>>,
        stats: Arc<PartitionStats>,
        task: tokio::task::JoinHandle<()>,
    }

    #[derive(Default)]
    struct PartitionStats {
        /// Bursts of the replica's bytes that arrived while held.
        held: AtomicUsize,
        /// Of those, the ones not yet delivered and answered.
        outstanding: AtomicUsize,
    }

    impl Partition {
        /// A proxy to `server` (`https://127.0.0.1:PORT`).
        async fn start(server: &str) -> Partition {
            let upstream: SocketAddr = server.trim_start_matches("https://").parse().expect("127.0.0.1:port");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let held = Arc::new(tokio::sync::watch::channel(false).0);
            let stats = Arc::new(PartitionStats::default());
            let (h, s) = (held.clone(), stats.clone());
            let task = tokio::spawn(async move {
                // Dropped with this task: every connection ends with the proxy.
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    connections.spawn(relay(client, upstream, h.subscribe(), s.clone()));
                }
            });
            Partition { url, held, stats, task }
        }

        /// `config` with its requests through this proxy (the API server's certificate names
        /// 127.0.0.1, whatever the port).
        fn config(&self, mut config: kube::Config) -> kube::Config {
            config.cluster_url = self.url.parse().unwrap();
            config
        }

        /// Something that starts the partition (from a token server's handler).
        fn trigger(&self) -> impl FnOnce() + Send + 'static {
            let held = self.held.clone();
            move || {
                held.send_replace(true);
            }
        }

        fn release(&self) {
            self.held.send_replace(false);
        }

        fn held(&self) -> usize {
            self.stats.held.load(Ordering::SeqCst)
        }

        fn outstanding(&self) -> usize {
            self.stats.outstanding.load(Ordering::SeqCst)
        }
    }

    impl Drop for Partition {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn relay(
        client: tokio::net::TcpStream,
        upstream: SocketAddr,
        held: tokio::sync::watch::Receiver<bool>,
        stats: Arc<PartitionStats>,
    ) {
        let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        // Bytes received from the server so far: how a burst is known to be answered.
        let (answers, answered) = tokio::sync::watch::channel(0u64);
        futures::join!(
            to_server(client_read, server_write, held.clone(), answered, stats),
            to_client(server_read, client_write, held, answers)
        );
    }

    type Burst = (Vec<u8>, bool);

    /// Reads `from` burst by burst as bytes arrive, held or not (an empty burst: the end),
    /// each marked with whether it arrived during the partition.
    async fn read_bursts(
        mut from: tokio::net::tcp::OwnedReadHalf,
        held: tokio::sync::watch::Receiver<bool>,
        bursts: tokio::sync::mpsc::UnboundedSender<Burst>,
        on_burst: impl Fn(usize, bool),
    ) {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let during = *held.borrow();
            on_burst(n, during);
            let _ = bursts.send((buf[..n].to_vec(), during));
            if n == 0 {
                return;
            }
        }
    }

    /// Writes a burst (an empty one: shuts the writing side); false once that side is closed.
    async fn deliver(to: &mut tokio::net::tcp::OwnedWriteHalf, burst: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        match burst.is_empty() {
            true => {
                let _ = to.shutdown().await;
                false
            }
            false => to.write_all(burst).await.is_ok(),
        }
    }

    async fn to_server(
        from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut held: tokio::sync::watch::Receiver<bool>,
        mut answered: tokio::sync::watch::Receiver<u64>,
        stats: Arc<PartitionStats>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Burst>();
        let counted = stats.clone();
        let read = read_bursts(from, held.clone(), tx, move |n, during| {
            if during {
                counted.held.fetch_add(usize::from(n > 0), Ordering::SeqCst);
                counted.outstanding.fetch_add(1, Ordering::SeqCst);
            }
        });
        let write = async move {
            let mut open = true;
            while let Some((burst, during)) = rx.recv().await {
                let _ = held.wait_for(|h| !*h).await;
                let before = *answered.borrow_and_update();
                if open {
                    open = deliver(&mut to, &burst).await;
                    if open && during {
                        let answer = answered.wait_for(|n| *n > before);
                        let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
                    }
                }
                if during {
                    stats.outstanding.fetch_sub(1, Ordering::SeqCst);
                }
            }
        };
        futures::join!(read, write);
    }

    async fn to_client(
        from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut held: tokio::sync::watch::Receiver<bool>,
        answers: tokio::sync::watch::Sender<u64>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Burst>();
        let read = read_bursts(from, held.clone(), tx, move |n, _| answers.send_modify(|a| *a += n as u64));
        let write = async move {
            let mut open = true;
            while let Some((burst, _)) = rx.recv().await {
                let _ = held.wait_for(|h| !*h).await;
                if open {
                    open = deliver(&mut to, &burst).await;
                }
            }
        };
        futures::join!(read, write);
    }

    /// Secret applies the API server refused with 409 Conflict, from its own metrics
    /// (`apiserver_request_total`, every client's).
    async fn refused_secret_applies(env: &Env) -> u64 {
        let request = axum::http::Request::get("/metrics").body(Vec::new()).unwrap();
        let text = env.client.request_text(request).await.unwrap();
        text.lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter(|l| {
                ["code=\"409\"", "resource=\"secrets\"", "verb=\"APPLY\""].iter().all(|label| l.contains(label))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Issue 26, item 5: a deposed leader's delayed write must not overwrite the new leader's
    /// state Secret. The leader is cut off from the API server (a partition holds its bytes:
    /// its connections hang) just as it has refreshed a rotating refresh token: its state
    /// write, carrying the rotated refresh token, is held. The standby takes over once the
    /// lease has lapsed, finds the stored refresh token spent, falls back to client
    /// credentials and stores a new chain. Then the partition heals and the held write
    /// arrives: it is refused, the new chain stays, and the next refresh continues it.
    #[tokio::test]
    async fn a_deposed_leaders_state_write_delivered_late_does_not_overwrite_the_new_leaders_refresh_chain() {
        log();
        let plane = ControlPlane::dedicated();
        let env = Env::on(plane.clone(), "partition").await;
        let issuer = ChainIssuer::start(3600).await;
        let partition = Partition::start(plane.server()).await;
        let a = Replica::start("a", partition.config(plane.config().await), &env);
        wait_lease(&env, "held by a", |s| holder(s) == "a").await;
        let b = Replica::start("b", plane.config().await, &env);
        let state = "charp.tokensync-state";
        env.create_secret("charp-client", &[("client_id", "charp"), ("client_secret", "s")]).await;
        env.create_cc(Cc::new("charp", &issuer.url()).spec(json!({"refreshEndpoint": {"url": issuer.url()}}))).await;
        env.wait_secret_value("charp", "access_token", "charp-1").await;
        env.wait_secret_value(state, "refresh_token", "charp-rt-1").await;

        // The leader refreshes (a renewal request); the partition starts just before the answer
        // leaves the token server: a holds the rotated refresh token, its state write hangs.
        issuer.on_next_refresh(partition.trigger());
        renew_now(&env, "charp", "before-the-partition").await;
        until("a's refresh answered", support::real::WAIT, || issuer.issued("charp").len() == 2).await;
        let cut = Instant::now();
        until("a's requests held", support::real::WAIT, || partition.held() > 0).await;

        // The standby takes over and stores a new chain: charp-rt-1 is spent, so it falls back.
        let taken = wait_lease(&env, "taken by b", |s| holder(s) == "b").await;
        let takeover = cut.elapsed();
        env.wait_secret_value(state, "refresh_token", "charp-rt-3").await;
        env.wait_secret_value("charp", "access_token", "charp-3").await;
        let new_chain = cut.elapsed();
        assert_eq!(issuer.refused("charp"), 1, "b presented the refresh token a had spent, once, and fell back");
        let a_exited = a.exited().expect("a stopped at its renew deadline");
        let acquired = taken.acquire_time.as_ref().unwrap().0;
        let lead = jiff::Timestamp::now().duration_since(acquired).as_secs_f64();
        assert!(
            a_exited.elapsed().as_secs_f64() > lead,
            "a stopped {:?} ago, after b took the Lease {lead} s ago",
            a_exited.elapsed()
        );

        // The partition heals: everything a sent arrives, its state write included.
        let refused_before = refused_secret_applies(&env).await;
        partition.release();
        let healed = Instant::now();
        until("every held request delivered and answered", support::real::WAIT, || partition.outstanding() == 0).await;
        let delivered = healed.elapsed();
        let stored = env.secret_data(state).await.unwrap();
        let refused = refused_secret_applies(&env).await - refused_before;
        eprintln!(
            "partition: a's refresh answered, its requests held ({} bursts); b took the Lease {takeover:?} later and \
             stored a new chain after {new_chain:?}; healed: held requests delivered and answered within {delivered:?}, \
             {refused} Secret apply refused with 409; state holds {:?} / {:?}",
            partition.held(),
            stored.get("access_token"),
            stored.get("refresh_token")
        );
        assert_eq!(
            (stored["access_token"].as_str(), stored["refresh_token"].as_str()),
            ("charp-3", "charp-rt-3"),
            "the new leader's chain, not the deposed leader's late write"
        );
        assert!(refused >= 1, "the late write arrived, and was refused");
        assert_eq!(env.secret_data("charp").await.unwrap()["access_token"], "charp-3");

        // The chain goes on from charp-rt-3.
        let asked = Instant::now();
        renew_now(&env, "charp", "after-the-partition").await;
        env.wait_secret_value("charp", "access_token", "charp-4").await;
        eprintln!("after the partition: a renewal request published in {:?}", asked.elapsed());
        assert_eq!(issuer.refused("charp"), 1, "the refresh presented the chain's latest refresh token");
        assert_eq!(issuer.current_refresh("charp").as_deref(), Some("charp-rt-4"));
        assert_eq!(b.token_requests(), 2, "b: the fallback (a refused refresh, then a new chain), and one refresh");
    }

    /// Issue 26, item 5, within one replica: while its refresh is under way, another writer
    /// (a replica that led before this one, its write delivered late) stores another token in
    /// the state Secret, one that answers the same renewal request. The replica's state write
    /// is refused, as it is conditional on the state it replaces: its token is never
    /// published; the reconcile goes on from the token stored, which it publishes, and
    /// requests nothing more.
    #[tokio::test]
    async fn a_token_whose_state_write_finds_another_token_stored_is_dropped_and_the_stored_one_published() {
        use tokensync::controller::labels::RENEWAL_REQUEST;
        log();
        let env = Env::new("superseded").await;
        let issuer = ChainIssuer::start(3600).await;
        let published = Published::watch(&env);
        let _c = env.start(args(&[])).await;
        let state = "charp.tokensync-state";
        env.create_secret("charp-client", &[("client_id", "charp"), ("client_secret", "s")]).await;
        env.create_cc(Cc::new("charp", &issuer.url()).spec(json!({"refreshEndpoint": {"url": issuer.url()}}))).await;
        env.wait_secret_value("charp", "access_token", "charp-1").await;
        env.wait_secret_value(state, "refresh_token", "charp-rt-1").await;

        // The refresh is answered 3 s after it arrives; meanwhile, the other writer's token.
        let (arrived, refreshing) = tokio::sync::oneshot::channel();
        issuer.on_next_refresh(move || {
            let _ = arrived.send(());
        });
        issuer.delay_ms.store(3000, Ordering::SeqCst);
        renew_now(&env, "charp", "now").await;
        tokio::time::timeout(support::real::WAIT, refreshing).await.expect("the refresh").unwrap();
        let other = json!({"metadata": {"annotations": {RENEWAL_REQUEST: "now"}},
                           "stringData": {"access_token": "elsewhere-1", "refresh_token": "elsewhere-rt-1"}});
        env.merge_patch_secret(state, other).await;
        let written = Instant::now();

        env.wait_status("charp", "with the renewal request handled", |s| {
            s.handled_renewal_request.as_deref() == Some("now")
        })
        .await;
        env.wait_secret_value("charp", "access_token", "elsewhere-1").await;
        let acted = written.elapsed();
        let stored = env.secret_data(state).await.unwrap();
        eprintln!("superseded: the stored token published {acted:?} after the other writer stored it");
        assert_eq!(
            (stored["access_token"].as_str(), stored["refresh_token"].as_str()),
            ("elsewhere-1", "elsewhere-rt-1"),
            "the other writer's token stays"
        );
        assert_eq!(issuer.issued("charp").len(), 2, "charp-2, dropped, and nothing more");
        // The watch delivers every change in order: once it has shown elsewhere-1, it would
        // have shown charp-2 had the target ever held it.
        published.seen("charp", "elsewhere-1").await;
        assert!(published.first_seen("charp", "charp-2").is_none(), "charp-2 was never published");
    }
}

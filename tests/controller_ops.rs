//! Operating the controller: leader election, the admin endpoints, watched-namespace
//! scoping, the endpoint deny list, expiry reporting and graceful shutdown.
//!
//! On the API server double, except the standby replica's readiness, which runs on the real
//! control plane with a real Lease; the double holds a list back and cuts a replica off.

mod support;
mod token_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use support::apiserver::{Fault, Verb};
use support::controller::*;
use token_server::{Reply, TokenServer};
use tokensync::controller::leader::LeaseLock;
use tokensync::metrics::Metrics;
use tokio::time::Instant;

async fn token_server(lifetime: u64) -> TokenServer {
    TokenServer::start(move |_| Reply::json(200, json!({"access_token": "tok", "expires_in": lifetime}))).await
}

async fn credential(api: &support::apiserver::ApiServer, name: &str, endpoint: &str) {
    create_secret(api, source_secret(&format!("{name}-client"), &[("client_id", "c"), ("client_secret", "s")])).await;
    Cc::new(name, endpoint).create(api).await;
}

#[tokio::test]
async fn only_one_replica_holds_the_lease_and_another_takes_over_when_it_lapses() {
    let api = api_server().await;
    let timing = (Duration::from_secs(1), Duration::from_millis(100));
    let a = LeaseLock::new(api.client(), NS, "tokensync-controller", "replica-a").with_timing(timing.0, timing.1);
    assert!(a.try_acquire_or_renew().await.unwrap(), "a free Lease is taken");
    let b = LeaseLock::new(api.client(), NS, "tokensync-controller", "replica-b").with_timing(timing.0, timing.1);
    assert!(!b.try_acquire_or_renew().await.unwrap(), "a held Lease is not taken");
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    // replica-a stops renewing (crashed); b takes over once the Lease has lapsed.
    drop(a);
    let held = tokio::time::timeout(Duration::from_secs(10), b.acquire()).await.expect("b acquires").unwrap();
    let lease: Lease = api.get(Some(NS), "tokensync-controller").unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    drop(held);
}

/// Free ports on 127.0.0.1 for controllers' admin servers (`--admin-addr`), all different.
fn free_admin_addrs<const N: usize>() -> [std::net::SocketAddr; N] {
    let listeners = [(); N].map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|l| l.local_addr().unwrap())
}

/// GET on a controller's admin server: (status, body), or None while nothing answers.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

/// Waits until the admin server answers `path` with `code`, and returns the body. It tells no
/// one when readiness changes, so it is asked again every 20 ms until `timeout`.
async fn wait_admin(who: &str, addr: std::net::SocketAddr, path: &str, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = admin_get(addr, path).await;
        if let Some((c, body)) = &answer
            && *c == code
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{who}: {path} on {addr} never answered {code} within {timeout:?}; it answers {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The controller's own admin server, as `tokensync controller` serves it ([`tokensync::controller::run_with`]
/// with the shipped client): /readyz says 503 while the ClientCredential list is held back
/// (its other caches have synced), 200 once it has synced; /metrics exports the reconcile.
/// On the double: only it can hold a list back.
#[tokio::test]
async fn readyz_answers_only_after_the_caches_synced_and_metrics_are_exported() {
    let api = api_server().await;
    let server = token_server(3600).await;
    credential(&api, "demo", &server.url("/token")).await;
    // The ClientCredential list (a LIST, or the watch-list of --initial-list=streaming) hangs.
    api.inject(Fault::verbs(&[Verb::List, Verb::Watch]).resource("clientcredentials").hang());
    let [admin] = free_admin_addrs();
    let mut args = args(&[]);
    args.admin_addr = admin;
    let metrics = Arc::new(Metrics::default());
    let client =
        tokensync::controller::api_client(api.config_named(CONTROLLER_CLIENT), args.api_timeout, &metrics).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let controller = tokio::spawn(tokensync::controller::run_with(client, args, shutdown, metrics));

    // Its other caches synced: the Secrets it manages were listed and are watched.
    let managed_watched = |v: &support::apiserver::View<'_>| {
        v.requests().iter().any(|r| r.resource == "secrets" && r.verb == Verb::Watch && r.label_selector.is_some())
    };
    api.wait_for(managed_watched, WAIT).await.expect("the managed Secrets are watched");
    assert_eq!(wait_admin("the controller", admin, "/healthz", 200, WAIT).await, "ok");
    assert_eq!(admin_get(admin, "/readyz").await, Some((503, "caches not synced yet".to_owned())));
    assert!(status(&api, "demo").is_none(), "nothing is reconciled before the caches synced");

    api.clear_faults();
    assert_eq!(wait_admin("the controller", admin, "/readyz", 200, WAIT).await, "ready");
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    let (_, metrics) = admin_get(admin, "/metrics").await.expect("/metrics answers");
    for name in [
        "tokensync_token_expiry_timestamp_seconds{namespace=\"team-a\",name=\"demo\"}",
        "tokensync_token_renewal_timestamp_seconds{namespace=\"team-a\",name=\"demo\"}",
        "tokensync_token_requests_total{result=\"success\",reason=\"TokenIssued\"} 1",
        "tokensync_token_request_duration_seconds_count{result=\"success\"} 1",
        "tokensync_reconcile_duration_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let _ = stop.send(());
    tokio::time::timeout(WAIT, controller).await.expect("the controller stops").unwrap().unwrap();
}

/// A replica of `tokensync controller` on the real control plane, in `env`'s namespace, with
/// leader election and its admin server on `admin`. Send on the sender to stop it.
async fn real_replica(
    env: &support::real::Env,
    id: &str,
    admin: std::net::SocketAddr,
) -> (tokio::task::JoinHandle<Result<(), String>>, tokio::sync::oneshot::Sender<()>, Arc<Metrics>) {
    let mut args =
        args(&["--leader-elect", "--leader-election-namespace", &env.ns, "--leader-election-retry-period", "1s"]);
    args.identity = Some(id.to_owned());
    args.namespaces = vec![env.ns.clone()];
    args.admin_addr = admin;
    let metrics = Arc::new(Metrics::default());
    let client = tokensync::controller::api_client(env.plane.config().await, args.api_timeout, &metrics).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let run = tokensync::controller::run_with(client, args, shutdown, metrics.clone());
    (tokio::spawn(async move { run.await.map_err(|e| e.to_string()) }), stop, metrics)
}

/// README: "a standby replica waiting for the Lease is ready" (otherwise a Deployment of
/// several replicas never becomes Available). On the real control plane, with a real Lease:
/// the leader is ready once its caches synced, and so is the standby while the leader holds
/// the Lease.
#[tokio::test]
async fn a_standby_replica_is_ready_while_another_replica_leads() {
    let env = support::real::Env::new("ops").await;
    let [a_admin, b_admin] = free_admin_addrs();
    let held_by = |id: &'static str| {
        move |lease: Option<&Lease>| {
            lease.and_then(|l| l.spec.as_ref()).and_then(|s| s.holder_identity.as_deref()) == Some(id)
        }
    };
    let (a, a_stop, _) = real_replica(&env, "a", a_admin).await;
    env.wait::<Lease>("tokensync-controller", "held by a", held_by("a")).await;
    assert_eq!(wait_admin("the leader", a_admin, "/readyz", 200, support::real::WAIT).await, "ready");

    let (b, b_stop, b_metrics) = real_replica(&env, "b", b_admin).await;
    assert_eq!(wait_admin("the standby", b_admin, "/readyz", 200, support::real::WAIT).await, "ready");
    let lease = env.api::<Lease>().get("tokensync-controller").await.unwrap();
    assert!(held_by("a")(Some(&lease)), "b is still a standby: {lease:?}");
    assert_eq!(b_metrics.reconciles(), 0, "the standby reconciles nothing");

    for (replica, stop) in [(a, a_stop), (b, b_stop)] {
        let _ = stop.send(());
        let stopped = tokio::time::timeout(support::real::WAIT, replica).await.expect("a replica stops");
        stopped.unwrap().expect("a clean stop");
    }
}

#[tokio::test]
async fn a_namespaced_controller_ignores_other_namespaces() {
    let api = api_server().await;
    let server = token_server(3600).await;
    let running = start(&api, args(&["--namespace", "default"]));
    credential(&api, "demo", &server.url("/token")).await;
    // A credential in the watched namespace is served...
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(api.client(), "default");
    let mut source = source_secret("other-client", &[("client_id", "c"), ("client_secret", "s")]);
    source.metadata.namespace = Some("default".into());
    secrets.create(&Default::default(), &source).await.unwrap();
    let mut other = Cc::new("other", &server.url("/token")).build();
    other.metadata.namespace = Some("default".into());
    let ccs: kube::Api<tokensync::api::ClientCredential> = kube::Api::namespaced(api.client(), "default");
    ccs.create(&Default::default(), &other).await.unwrap();
    api.wait_for(|v| v.get::<k8s_openapi::api::core::v1::Secret>(Some("default"), "other").is_some(), WAIT)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, running.stop()).await.unwrap();
    // ...and the one in team-a is not: no status, and only the one request from "other".
    assert!(status(&api, "demo").is_none());
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn cloud_metadata_endpoints_are_refused_before_any_connection() {
    let api = api_server().await;
    let _c = start(&api, args(&[]));
    credential(&api, "demo", "http://169.254.169.254/latest/token").await;
    wait_condition(&api, "demo", "Ready", ("False", "InvalidSpec")).await;
    let message = status(&api, "demo").unwrap().conditions[0].message.clone();
    assert!(message.contains("metadata"), "{message}");
}

#[tokio::test]
async fn an_expired_token_is_reported_while_the_endpoint_fails() {
    let api = api_server().await;
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let server = TokenServer::start(move |_| {
        if h.load(Ordering::SeqCst) {
            Reply::json(200, json!({"access_token": "short", "expires_in": 2}))
        } else {
            Reply::text(503, "text/plain", "down")
        }
    })
    .await;
    let _c = start(&api, args(&["--min-renewal-interval", "1s", "--backoff-min", "1s", "--backoff-max", "1s"]));
    credential(&api, "demo", &server.url("/token")).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    healthy.store(false, Ordering::SeqCst);
    wait_condition(&api, "demo", "Ready", ("False", "TokenEndpointUnavailable")).await;
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "short", "the lapsed token is left, not deleted");
    healthy.store(true, Ordering::SeqCst);
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
}

#[tokio::test]
async fn shutdown_stops_the_controller_promptly() {
    let api = api_server().await;
    let server = token_server(3600).await;
    let running = start(&api, args(&[]));
    credential(&api, "demo", &server.url("/token")).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    tokio::time::timeout(WAIT, running.stop()).await.expect("graceful shutdown completes");
}

#[tokio::test]
async fn a_standby_replica_takes_over_without_requesting_a_valid_token_again() {
    let api = api_server().await;
    let server = token_server(3600).await;
    let replica = |id: &str| {
        args(&[
            "--leader-elect",
            "--leader-election-namespace",
            NS,
            "--leader-election-lease-duration",
            "1s",
            "--leader-election-retry-period",
            "100ms",
            "--identity",
            id,
        ])
    };
    let a_metrics = Arc::new(Metrics::default());
    let b_metrics = Arc::new(Metrics::default());
    let (a_stop, a_rx) = tokio::sync::oneshot::channel::<()>();
    let a = tokio::spawn(tokensync::controller::run_with(
        api.client(),
        replica("a"),
        async {
            let _ = a_rx.await;
        },
        a_metrics.clone(),
    ));
    api.wait_for(|v| v.get::<Lease>(Some(NS), "tokensync-controller").is_some(), WAIT).await.unwrap();
    let (_b_stop, b_rx) = tokio::sync::oneshot::channel::<()>();
    let b = tokio::spawn(tokensync::controller::run_with(
        api.client(),
        replica("b"),
        async {
            let _ = b_rx.await;
        },
        b_metrics.clone(),
    ));

    credential(&api, "demo", &server.url("/token")).await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(b_metrics.reconciles(), 0, "the standby does not reconcile");
    let holder = |v: &support::apiserver::View<'_>| {
        v.get::<Lease>(Some(NS), "tokensync-controller").and_then(|l| l.spec).and_then(|s| s.holder_identity)
    };
    assert_eq!(api.inspect(holder).as_deref(), Some("a"));

    // The leader dies without releasing the Lease; b takes over and finds the token valid.
    a.abort();
    drop(a_stop);
    api.wait_for(|v| holder(v).as_deref() == Some("b"), WAIT).await.expect("b takes the Lease");
    assert!(b_metrics.wait_for_reconciles(1, WAIT).await, "the new leader reconciles");
    assert_eq!(server.requests().len(), 1, "failover causes no token request");
    b.abort();
}

/// Token requests this replica made, from its metrics.
fn token_requests(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("tokensync_token_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A replica as `tokensync controller` runs it: its own client (named, so that the test can
/// cut it off), bounded API calls, leader election with short timings.
fn replica(
    api: &support::apiserver::ApiServer,
    id: &str,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<(Instant, Result<(), String>)> {
    let args = args(&[
        "--leader-elect",
        "--leader-election-namespace",
        NS,
        "--leader-election-lease-duration",
        "2s",
        "--leader-election-renew-deadline",
        "1s",
        "--leader-election-retry-period",
        "200ms",
        "--api-timeout",
        "1s",
        "--min-renewal-interval",
        "1s",
        "--identity",
        id,
    ]);
    let client = tokensync::controller::api_client(api.config_named(id), args.api_timeout, &metrics).unwrap();
    tokio::spawn(async move {
        let result = tokensync::controller::run_with(client, args, std::future::pending(), metrics).await;
        (Instant::now(), result.map_err(|e| e.to_string()))
    })
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_stops_requesting_tokens_at_its_renew_deadline_and_none_is_requested_twice() {
    // Every request of the leader hangs: its Lease renewal, and the reads a renewal starts with.
    leader_cut_off(|api| api.pause_client("a")).await;
}

#[tokio::test]
async fn a_leader_whose_lease_renewal_hangs_stops_requesting_tokens_at_its_renew_deadline_and_none_is_requested_twice()
{
    // As seen on a real control plane: the Lease request hangs on a dead connection while the
    // leader's other requests reach the API, so it could go on requesting tokens whose state
    // writes succeed, while another replica takes over and requests them too.
    leader_cut_off(|api| {
        api.inject(Fault::verbs(&[Verb::Get, Verb::Create, Verb::Update]).resource("leases").client("a").hang())
    })
    .await;
}

/// Two replicas; the leader `a` is cut off by `cut` for longer than the lease.
async fn leader_cut_off(cut: impl FnOnce(&support::apiserver::ApiServer)) {
    const RENEW_DEADLINE: Duration = Duration::from_secs(1);
    let api = api_server().await;
    // 12-second tokens are renewed at half their lifetime (the propagation margin is longer),
    // i.e. after the cut-off leader's deadline and while it would still be running.
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = issued.clone();
    let server = TokenServer::start(move |r| {
        let mut log = log.lock().unwrap();
        log.push(r.params().get("client_id").cloned().unwrap_or_default());
        Reply::json(200, json!({"access_token": format!("tok-{}", log.len()), "expires_in": 12}))
    })
    .await;
    let (a_metrics, b_metrics) = (Arc::new(Metrics::default()), Arc::new(Metrics::default()));
    let a = replica(&api, "a", a_metrics.clone());
    let holder = |v: &support::apiserver::View<'_>| {
        v.get::<Lease>(Some(NS), "tokensync-controller").and_then(|l| l.spec).and_then(|s| s.holder_identity)
    };
    api.wait_for(|v| holder(v).as_deref() == Some("a"), WAIT).await.expect("a leads");
    let _b = replica(&api, "b", b_metrics.clone());
    let names = ["c1", "c2", "c3"];
    for name in names {
        create_secret(&api, source_secret(&format!("{name}-client"), &[("client_id", name), ("client_secret", "s")]))
            .await;
        Cc::new(name, &server.url("/token")).create(&api).await;
    }
    for name in names {
        wait_condition(&api, name, "Ready", ("True", "TokenIssued")).await;
    }
    assert_eq!(token_requests(&a_metrics), 3);

    // The leader's connection to the API hangs: no error, no answer, for longer than the lease.
    let cut_at = Instant::now();
    cut(&api);
    for name in names {
        let renew_at = status(&api, name).unwrap().renew_at.expect("renewAt");
        let due_in = renew_at.0.duration_since(jiff::Timestamp::now()).as_secs_f64();
        assert!(due_in > 2.0, "{name}: the renewal must come due after a's deadline (due in {due_in} s)");
    }
    api.wait_for(|v| holder(v).as_deref() == Some("b"), WAIT).await.expect("b takes over once the lease lapsed");
    let renewed = |v: &support::apiserver::View<'_>| {
        names.iter().all(|n| {
            v.get::<Secret>(Some(NS), n)
                .and_then(|s| s.data)
                .and_then(|d| d.get("access_token").cloned())
                .is_some_and(|t| t.0 != b"tok-1" && t.0 != b"tok-2" && t.0 != b"tok-3")
        })
    };
    api.wait_for(renewed, WAIT).await.expect("the new leader renews every token");

    assert_eq!(token_requests(&a_metrics), 3, "the cut-off leader requested no token");
    let per_credential = |n: &str| issued.lock().unwrap().iter().filter(|c| *c == n).count();
    for name in names {
        assert_eq!(per_credential(name), 2, "{name}: one request to issue, one to renew, none twice");
    }
    assert_eq!(token_requests(&b_metrics), 3);
    let (stopped, result) =
        tokio::time::timeout(Duration::from_secs(1), a).await.expect("the cut-off leader has stopped").unwrap();
    assert!(result.unwrap_err().contains("lost leadership"));
    let after = stopped.duration_since(cut_at);
    assert!(after <= RENEW_DEADLINE + Duration::from_millis(300), "a stopped {after:?} after it was cut off");
}

#[tokio::test]
async fn an_api_request_that_hangs_fails_after_the_api_timeout_while_a_quiet_watch_stays_open() {
    use futures::StreamExt;
    use kube::api::{Api, WatchEvent, WatchParams};
    let api = api_server().await;
    let timeout = Duration::from_millis(300);
    let client = tokensync::controller::api_client(api.config_named("replica"), timeout, &Metrics::default()).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let rv = api.resource_version().to_string();
    let mut watch = secrets.watch(&WatchParams::default(), &rv).await.unwrap().boxed();

    api.pause_client("replica");
    let started = Instant::now();
    // Failed by the API timeout itself (tower's Elapsed), within 4 times it: a timeout
    // missing, or several times longer than asked, fails here.
    let hung = tokio::time::timeout(timeout * 4, secrets.get_opt("anything"))
        .await
        .unwrap_or_else(|_| panic!("the hung request did not fail within 4 x {timeout:?}"));
    let took = started.elapsed();
    match hung {
        Err(kube::Error::Service(e)) if e.is::<tower::timeout::error::Elapsed>() => {}
        other => panic!("a request the API never answers fails with the API timeout, not {other:?}"),
    }
    assert!(took >= timeout, "failed after {took:?}, before the API timeout");
    api.resume_client("replica");

    // The watch has outlived the timeout (the request above waited that long) and delivers.
    create_secret(&api, source_secret("later", &[("k", "v")])).await;
    let event = tokio::time::timeout(WAIT, watch.next()).await.expect("an event").unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("later")));
}

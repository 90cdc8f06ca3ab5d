//! Fault suite: the controller, in-process against the API server double, facing a token
//! endpoint that misbehaves in every way we know of, an API server that conflicts, fails and
//! drops watches, and crashes at each point of a renewal. Waits are on conditions with a
//! timeout, never sleeps. Backoff flags are small (1 s .. 4 s) to keep the suite fast.

mod support;
mod token_server;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::apiserver::{ApiServer, Fault, Verb};
use support::controller::*;
use token_server::{Recorded, Reply, TokenServer};
use tokensync::api::{ClientCredential, ClientCredentialStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STATE_SUFFIX: &str = ".tokensync-state";

// ---------------------------------------------------------------------------------------
// A raw TCP token endpoint: the path names the credential, and each credential has a fault
// it shows while the endpoint is "failing". Raw sockets, because resets, truncation,
// trickling and silence cannot be produced through an HTTP framework.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Status(u16),
    /// 200 with an HTML page.
    Html200,
    /// 200, application/json, bytes that are not JSON.
    Garbage200,
    /// Content-Length promises more than is sent, then the connection closes.
    Truncated,
    /// The connection is reset (RST) after the request was read.
    Reset,
    /// Accepts and reads the request, never answers.
    Silent,
    /// Sends the headers, then one body byte every 300 ms.
    Trickle,
    /// 429 with Retry-After in seconds.
    RetryAfterSeconds(u64),
    /// 503 with Retry-After as an HTTP-date this many seconds ahead.
    RetryAfterDate(u64),
}

#[derive(Clone, Debug)]
struct Hit {
    path: String,
    at: Instant,
    /// The same moment on the wall clock, to compare with times persisted in status.
    wall: jiff::Timestamp,
    healthy: bool,
}

#[derive(Default)]
struct EndpointState {
    faults: HashMap<String, Mode>,
    lifetimes: HashMap<String, u64>,
    failing: bool,
    issued: HashMap<String, u32>,
    hits: Vec<Hit>,
}

#[derive(Clone)]
struct FaultyEndpoint {
    base: String,
    state: Arc<Mutex<EndpointState>>,
}

impl FaultyEndpoint {
    async fn start() -> FaultyEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state: Arc<Mutex<EndpointState>> = Arc::default();
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        FaultyEndpoint { base, state }
    }

    fn add(&self, name: &str, mode: Mode, lifetime: u64) -> String {
        let mut s = self.state.lock().unwrap();
        s.faults.insert(format!("/{name}"), mode);
        s.lifetimes.insert(format!("/{name}"), lifetime);
        format!("{}/{name}", self.base)
    }

    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    fn hits(&self, name: &str) -> Vec<Hit> {
        self.state.lock().unwrap().hits.iter().filter(|h| h.path == format!("/{name}")).cloned().collect()
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<EndpointState>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (fault, token) = {
        let mut s = state.lock().unwrap();
        let fault = s.faults.get(&path).copied().filter(|_| s.failing);
        s.hits.push(Hit {
            path: path.clone(),
            at: Instant::now(),
            wall: jiff::Timestamp::now(),
            healthy: fault.is_none(),
        });
        let lifetime = s.lifetimes.get(&path).copied().unwrap_or(3600);
        let n = s.issued.entry(path.clone()).or_default();
        if fault.is_none() {
            *n += 1;
        }
        (fault, (format!("{}-token-{n}", path.trim_start_matches('/')), lifetime))
    };
    let reply = |status: &str, content_type: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let out = match fault {
        None => {
            let body = json!({"access_token": token.0, "token_type": "Bearer", "expires_in": token.1}).to_string();
            reply("200 OK", "application/json", "", &body)
        }
        Some(Mode::Status(code)) => reply(&format!("{code} Oops"), "text/plain", "", "server trouble"),
        Some(Mode::Html200) => reply("200 OK", "text/html", "", "<html><body>Sign in to continue</body></html>"),
        Some(Mode::Garbage200) => reply("200 OK", "application/json", "", "\u{1}{{not json]]\u{7f}"),
        Some(Mode::RetryAfterSeconds(s)) => {
            reply("429 Too Many Requests", "text/plain", &format!("retry-after: {s}\r\n"), "slow down")
        }
        Some(Mode::RetryAfterDate(s)) => {
            let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(s));
            reply("503 Service Unavailable", "text/plain", &format!("retry-after: {date}\r\n"), "maintenance")
        }
        Some(Mode::Truncated) => {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"access_tok",
                )
                .await;
            return;
        }
        Some(Mode::Reset) => {
            #[allow(deprecated)]
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock);
            return;
        }
        Some(Mode::Silent) => {
            // Hold the connection until the client gives up.
            while let Ok(n) = sock.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        Some(Mode::Trickle) => {
            if sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            for _ in 0..1000 {
                if sock.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            return;
        }
    };
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn ccs(api: &ApiServer) -> Api<ClientCredential> {
    Api::namespaced(api.client(), NS)
}

async fn merge_patch_cc(api: &ApiServer, name: &str, patch: serde_json::Value) {
    ccs(api).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn create_cc(api: &ApiServer, name: &str, url: &str) {
    create_secret(api, source_secret(&format!("{name}-client"), &[("client_id", "cid"), ("client_secret", "csecret")]))
        .await;
    Cc::new(name, url).create(api).await;
}

fn view_status(v: &support::apiserver::View<'_>, name: &str) -> Option<ClientCredentialStatus> {
    v.get::<ClientCredential>(Some(NS), name).and_then(|c| c.status)
}

fn view_token(v: &support::apiserver::View<'_>, name: &str) -> Option<String> {
    let s: Secret = v.get(Some(NS), name)?;
    s.data?.get("access_token").map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

fn view_token_now(api: &ApiServer, name: &str) -> Option<String> {
    api.inspect(|v| view_token(v, name))
}

fn cond(s: &ClientCredentialStatus, type_: &str) -> (String, String) {
    s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone())).unwrap_or_default()
}

/// Seconds from the last failure to the planned retry, as persisted in status.
fn planned_wait(s: &ClientCredentialStatus) -> Option<i64> {
    Some(s.renew_at.as_ref()?.0.as_second() - s.last_failure_time.as_ref()?.0.as_second())
}

/// The backoff of `--backoff-min 1s --backoff-max 4s` after `attempt` failures, as whole
/// seconds: (shortest, longest) including the ±10 % jitter and the rounding up.
fn backoff_bounds(attempt: u32) -> (i64, i64) {
    let nominal = (1u64 << (attempt.saturating_sub(1)).min(10)).min(4) as f64;
    let low = (nominal * 0.9).ceil() as i64;
    let high = (nominal * 1.1).min(4.0).ceil() as i64;
    (low, high)
}

// ---------------------------------------------------------------------------------------
// 7. Token endpoint faults
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_transient_endpoint_fault_keeps_the_valid_token_backs_off_to_the_cap_and_recovers_on_the_first_healed_attempt()
 {
    let api = api_server().await;
    let endpoint = FaultyEndpoint::start().await;
    let cases: Vec<(&str, Mode, &str)> = vec![
        ("status-500", Mode::Status(500), "TokenEndpointUnavailable"),
        ("status-502", Mode::Status(502), "TokenEndpointUnavailable"),
        ("status-503", Mode::Status(503), "TokenEndpointUnavailable"),
        ("html-200", Mode::Html200, "InvalidTokenResponse"),
        ("garbage-200", Mode::Garbage200, "InvalidTokenResponse"),
        ("truncated", Mode::Truncated, "TokenEndpointUnavailable"),
        ("reset", Mode::Reset, "TokenEndpointUnavailable"),
        ("silent", Mode::Silent, "TokenEndpointUnavailable"),
        ("trickle", Mode::Trickle, "TokenEndpointUnavailable"),
    ];
    let _c = start(&api, args(&["--backoff-min", "1s", "--backoff-max", "4s", "--request-timeout", "1s"]));
    for (name, mode, _) in &cases {
        let url = endpoint.add(name, *mode, 3600);
        create_cc(&api, name, &url).await;
    }
    for (name, _, _) in &cases {
        wait_secret_value(&api, name, "access_token", &format!("{name}-token-1")).await;
    }

    // The endpoint starts failing; a spec change asks for a new token at once.
    let failing_from = api.resource_version();
    endpoint.set_failing(true);
    for (name, _, _) in &cases {
        merge_patch_cc(&api, name, json!({"spec": {"scopes": ["next"]}})).await;
    }
    let failed_4_times = api
        .wait_for(
            |v| cases.iter().all(|(name, _, _)| view_status(v, name).and_then(|s| s.failed_attempts) >= Some(4)),
            Duration::from_secs(40),
        )
        .await;
    assert!(failed_4_times.is_ok(), "not every credential failed 4 times");
    for (name, _, reason) in &cases {
        let s = status(&api, name).unwrap();
        assert_eq!(cond(&s, "Degraded"), ("True".to_owned(), reason.to_string()), "{name}");
        let msg = &s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message;
        assert!(!msg.contains("csecret"), "{name}: {msg}");
    }

    // Heal: the first attempt after healing succeeds.
    endpoint.set_failing(false);
    for (name, _, _) in &cases {
        let healed = api
            .wait_for(
                |v| {
                    view_token(v, name).as_deref() == Some(&format!("{name}-token-2"))
                        && view_status(v, name)
                            .is_some_and(|s| cond(&s, "Degraded") == ("False".into(), "Healthy".into()))
                },
                Duration::from_secs(40),
            )
            .await;
        if healed.is_err() {
            panic!(
                "{name} did not recover: {:?} {:#?} {:#?}",
                view_token_now(&api, name),
                status(&api, name),
                endpoint.hits(name)
            );
        }
    }

    // Every state each credential and its target went through since the endpoint began to
    // fail, from the server's record of every write (not what wake-ups happened to see).
    for (name, _, _) in &cases {
        let (statuses, targets) = api.inspect(|v| {
            let since = |rv: u64| rv > failing_from;
            let statuses: Vec<_> = v
                .versions::<ClientCredential>(Some(NS), name)
                .into_iter()
                .filter(|c| since(c.rv))
                .filter_map(|c| c.object?.status)
                .collect();
            let targets: Vec<_> = v
                .versions::<Secret>(Some(NS), name)
                .into_iter()
                .filter(|s| since(s.rv))
                .map(|s| {
                    s.object
                        .and_then(|s| s.data?.get("access_token").map(|b| String::from_utf8_lossy(&b.0).into_owned()))
                })
                .collect();
            (statuses, targets)
        });
        // The valid token stays published: token-1 until token-2 replaces it, nothing else,
        // never deleted; and Ready stays True through every recorded failure.
        let (first, second) = (format!("{name}-token-1"), format!("{name}-token-2"));
        let replaced = targets.iter().position(|t| t.as_deref() == Some(&second)).unwrap_or(targets.len());
        assert!(
            targets[..replaced].iter().all(|t| t.as_deref() == Some(&first))
                && targets[replaced..].iter().all(|t| t.as_deref() == Some(&second)),
            "{name}: the published token went through {targets:?}"
        );
        for s in &statuses {
            assert_eq!(cond(s, "Ready"), ("True".into(), "TokenIssued".into()), "{name}: {s:#?}");
        }
        let failing: Vec<&ClientCredentialStatus> = statuses.iter().filter(|s| s.failed_attempts > Some(0)).collect();
        // The backoff persisted after each failure grows and is capped: 1 s, 2 s, then 4 s
        // (each with ±10 % jitter, rounded up).
        let mut retry_at: BTreeMap<i32, jiff::Timestamp> = BTreeMap::new();
        for s in &failing {
            let attempt = s.failed_attempts.unwrap();
            let wait = planned_wait(s).unwrap_or_else(|| panic!("{name}: a failure without renewAt: {s:#?}"));
            let (low, high) = backoff_bounds(attempt as u32);
            assert!((low..=high).contains(&wait), "{name}: attempt {attempt} waits {wait}s, not {low}..={high}");
            retry_at.entry(attempt).or_insert(s.renew_at.as_ref().unwrap().0);
        }
        // Exactly one request per recorded failed attempt: what the status counted is what
        // the server saw.
        let counted = retry_at.keys().copied().max().unwrap_or(0) as usize;
        assert_eq!(retry_at.keys().copied().collect::<Vec<_>>(), (1..=counted as i32).collect::<Vec<_>>(), "{name}");
        let hits = endpoint.hits(name);
        let failed: Vec<&Hit> = hits.iter().filter(|h| !h.healthy).collect();
        assert_eq!(
            hits.iter().filter(|h| h.healthy).count(),
            2,
            "{name}: one request for the first token, one for the recovery"
        );
        assert_eq!(failed.len(), counted, "{name}: {} failed requests for {counted} recorded failures", failed.len());
        // No request before the retry time persisted after the failure before it: the
        // retries, and the recovery after the last failure.
        let recovery = hits.iter().rfind(|h| h.healthy).unwrap();
        for (attempt, hit) in failed.iter().skip(1).copied().chain([recovery]).enumerate() {
            let planned = retry_at[&(attempt as i32 + 1)];
            assert!(
                hit.wall >= planned,
                "{name}: request {} came at {}, before the renewAt {planned} persisted after failure {}",
                attempt + 2,
                hit.wall,
                attempt + 1
            );
        }
        assert!(status(&api, name).unwrap().failed_attempts.is_none());
    }
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_an_http_date_is_honoured_and_persisted() {
    let api = api_server().await;
    let endpoint = FaultyEndpoint::start().await;
    let cases = [("ra-seconds", Mode::RetryAfterSeconds(3), 3..=3), ("ra-date", Mode::RetryAfterDate(4), 3..=4)];
    let _c = start(&api, args(&["--backoff-min", "1s", "--backoff-max", "4s"]));
    for (name, mode, _) in &cases {
        let url = endpoint.add(name, *mode, 3600);
        create_cc(&api, name, &url).await;
        wait_secret_value(&api, name, "access_token", &format!("{name}-token-1")).await;
    }
    endpoint.set_failing(true);
    for (name, _, _) in &cases {
        merge_patch_cc(&api, name, json!({"spec": {"scopes": ["next"]}})).await;
    }
    for (name, _, range) in &cases {
        let s = api
            .wait_for_value(|v| view_status(v, name).filter(|s| s.failed_attempts == Some(1)), WAIT)
            .await
            .expect("first failure recorded");
        let after = s.retry_after_seconds.expect("status.retryAfterSeconds");
        assert!(range.contains(&after), "{name}: retryAfterSeconds {after}");
        // The backoff alone would retry after ~1 s; the server asked for longer.
        assert!(planned_wait(&s).unwrap() >= after, "{name}: renewAt honours Retry-After: {s:#?}");
        assert_eq!(cond(&s, "Degraded"), ("True".into(), "TokenEndpointUnavailable".into()));
    }
    for (name, _, range) in &cases {
        api.wait_for(|v| view_status(v, name).and_then(|s| s.failed_attempts) == Some(2), WAIT)
            .await
            .expect("a second attempt");
        let hits = endpoint.hits(name);
        let gap = hits[2].at.duration_since(hits[1].at).as_secs_f64();
        assert!(gap >= (*range.start() - 1) as f64, "{name}: retried {gap:.2}s after a Retry-After of {range:?}");
    }
    endpoint.set_failing(false);
    for (name, _, _) in &cases {
        wait_secret_value(&api, name, "access_token", &format!("{name}-token-2")).await;
        wait_condition(&api, name, "Degraded", ("False", "Healthy")).await;
        let s = status(&api, name).unwrap();
        assert!(s.retry_after_seconds.is_none() && s.failed_attempts.is_none(), "{s:#?}");
    }
}

#[tokio::test]
async fn a_token_stays_published_and_ready_until_it_expires_while_the_endpoint_fails() {
    let api = api_server().await;
    let endpoint = FaultyEndpoint::start().await;
    // 4 s tokens are renewed after 2 s; the endpoint fails from then on.
    let url = endpoint.add("expiring", Mode::Status(503), 4);
    let _c = start(&api, args(&["--backoff-min", "1s", "--backoff-max", "4s", "--min-renewal-interval", "1s"]));
    create_cc(&api, "expiring", &url).await;
    wait_secret_value(&api, "expiring", "access_token", "expiring-token-1").await;
    let failing_from = api.resource_version();
    endpoint.set_failing(true);
    wait_condition(&api, "expiring", "Ready", ("True", "TokenIssued")).await;
    let expires_at = status(&api, "expiring").unwrap().expires_at.unwrap().0;
    api.wait_for(|v| view_status(v, "expiring").is_some_and(|s| cond(&s, "Ready").0 == "False"), WAIT)
        .await
        .unwrap_or_else(|_| panic!("Ready never became False: {:#?}", status(&api, "expiring")));
    // Every state stored since, from the server's record of every write: before expiry,
    // still the first token and still Ready; not Ready only once the token expired.
    let (statuses, targets) = api.inspect(|v| {
        let statuses: Vec<_> = v
            .versions::<ClientCredential>(Some(NS), "expiring")
            .into_iter()
            .filter(|c| c.rv > failing_from)
            .map(|c| (c.at, c.object.and_then(|c| c.status)))
            .collect();
        let targets: Vec<_> = v
            .versions::<Secret>(Some(NS), "expiring")
            .into_iter()
            .filter(|s| s.rv > failing_from)
            .map(|s| {
                (
                    s.at,
                    s.object
                        .and_then(|s| s.data?.get("access_token").map(|b| String::from_utf8_lossy(&b.0).into_owned())),
                )
            })
            .collect();
        (statuses, targets)
    });
    let early: Vec<String> = targets
        .iter()
        .filter(|(at, token)| *at < expires_at && token.as_deref() != Some("expiring-token-1"))
        .map(|(at, token)| format!("{at}: target {token:?}"))
        .chain(
            statuses
                .iter()
                .filter(|(at, s)| *at < expires_at && s.as_ref().is_none_or(|s| cond(s, "Ready").0 != "True"))
                .map(|(at, s)| format!("{at}: Ready {:?}", s.as_ref().map(|s| cond(s, "Ready")))),
        )
        .collect();
    assert!(early.is_empty(), "the token was withdrawn before it expired at {expires_at}: {early:#?}");
    let not_ready = statuses.iter().find(|(_, s)| s.as_ref().is_some_and(|s| cond(s, "Ready").0 == "False"));
    assert!(not_ready.is_some_and(|(at, _)| *at >= expires_at), "not Ready only once the token expired: {not_ready:?}");
    let s = status(&api, "expiring").unwrap();
    // Without a valid token, Ready says why no new one could be had.
    assert_eq!(cond(&s, "Ready"), ("False".into(), "TokenEndpointUnavailable".into()));
    assert_eq!(cond(&s, "Degraded"), ("True".into(), "TokenEndpointUnavailable".into()));
    assert!(s.failed_attempts.unwrap() >= 1);

    endpoint.set_failing(false);
    wait_secret_value(&api, "expiring", "access_token", "expiring-token-2").await;
    wait_condition(&api, "expiring", "Ready", ("True", "TokenIssued")).await;
}

// ---------------------------------------------------------------------------------------
// A well-behaved issuer for the API fault and crash tests; optionally rotates refresh
// tokens and accepts only the latest one (RFC 6749 10.4 / OAuth 2.1 rotation).
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct IssuerState {
    issued: u32,
    rotating: bool,
    current_refresh: String,
    rejected: u32,
}

struct Issuer {
    server: TokenServer,
    state: Arc<Mutex<IssuerState>>,
}

impl Issuer {
    async fn start(rotating: bool) -> Issuer {
        let state =
            Arc::new(Mutex::new(IssuerState { rotating, current_refresh: "bootstrap-1".into(), ..Default::default() }));
        let s = state.clone();
        let server = TokenServer::start(move |r: &Recorded| {
            let mut s = s.lock().unwrap();
            let p = r.params();
            if s.rotating
                && p.get("grant_type").map(String::as_str) == Some("refresh_token")
                && p.get("refresh_token") != Some(&s.current_refresh)
            {
                s.rejected += 1;
                return Reply::oauth_error(400, "invalid_grant", "refresh token reused or unknown");
            }
            s.issued += 1;
            let mut body =
                json!({"access_token": format!("token-{}", s.issued), "token_type": "Bearer", "expires_in": 3600});
            if s.rotating {
                s.current_refresh = format!("refresh-{}", s.issued);
                body["refresh_token"] = s.current_refresh.clone().into();
            }
            Reply::json(200, body)
        })
        .await;
        Issuer { server, state }
    }

    fn url(&self) -> String {
        self.server.url("/token")
    }

    fn issued(&self) -> u32 {
        self.state.lock().unwrap().issued
    }

    fn rejected(&self) -> u32 {
        self.state.lock().unwrap().rejected
    }
}

async fn renew_now(api: &ApiServer, name: &str, value: &str) {
    merge_patch_cc(api, name, json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": value}}})).await;
}

/// A credential using the refresh_token grant, bootstrapped from its source Secret.
async fn create_refreshing_cc(api: &ApiServer, name: &str, issuer: &Issuer) {
    create_secret(
        api,
        source_secret(
            &format!("{name}-client"),
            &[("client_id", "cid"), ("client_secret", "csecret"), ("refresh_token", "bootstrap-1")],
        ),
    )
    .await;
    Cc::new(name, &issuer.url())
        .spec(json!({"grantType": "refresh_token", "credentialsRef": {"refreshTokenKey": "refresh_token"}}))
        .create(api)
        .await;
}

/// Reconciles that failed with a Kubernetes API error (`tokensync_reconcile_errors_total`).
fn reconcile_errors(c: &Running) -> u64 {
    c.metrics.reconcile_errors.get_or_create(&tokensync::metrics::ErrorLabels { kind: "kube".into() }).get()
}

async fn wait_failed_requests(api: &ApiServer, verb: Verb, name: &str, n: usize) {
    api.wait_for(
        |v| {
            v.requests().iter().filter(|r| r.verb == verb && r.name.as_deref() == Some(name) && r.code >= 400).count()
                >= n
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|_| panic!("{n} failed {verb:?} requests on {name}"));
}

// ---------------------------------------------------------------------------------------
// 8. Kubernetes API faults
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn conflicts_and_server_errors_on_every_write_converge_without_duplicate_token_requests() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    for name in ["a", "b"] {
        create_cc(&api, name, &issuer.url()).await;
    }
    // Every write fails for a while: first with 409 Conflict, then with 500.
    api.inject(Fault::writes().code(409).times(8));
    api.inject(Fault::writes().code(500).times(8));
    let _c = start(&api, args(&[]));
    for name in ["a", "b"] {
        wait_condition(&api, name, "Ready", ("True", "TokenIssued")).await;
        wait_secret_value(
            &api,
            name,
            "access_token",
            &secret_data(&api, &format!("{name}{STATE_SUFFIX}")).unwrap()["access_token"],
        )
        .await;
    }
    let failed = api.requests().iter().filter(|r| r.verb.is_write() && r.code >= 400).count();
    assert_eq!(failed, 16, "every injected fault was hit");
    assert_eq!(issuer.issued(), 2, "one token request per credential, however often its writes failed");
}

#[tokio::test]
async fn dropped_watches_and_410_gone_relist_without_token_requests_and_keep_watching() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    let c = start(&api, args(&[]));
    for name in ["a", "b"] {
        create_cc(&api, name, &issuer.url()).await;
        wait_condition(&api, name, "Ready", ("True", "TokenIssued")).await;
    }
    let relists =
        |v: &support::apiserver::View<'_>| initial_lists(v, "clientcredentials") + initial_lists(v, "secrets");
    let lists_before = api.inspect(relists);
    let reconciles = c.metrics.reconciles();
    // Streams end (clients resume), then the next 6 watch requests are answered 410 Gone:
    // the three watchers (ClientCredentials, managed Secrets, Secret metadata) resume, are
    // refused, relist and watch again until every 410 is used; each 410 costs one relist.
    api.compact();
    api.expire_next_watches(6);
    api.drop_watches();
    let refused = api.wait_for(|v| v.injected(410) == 6 && relists(v) >= lists_before + 6, WAIT).await;
    let (gone, lists) = api.inspect(|v| (v.injected(410), relists(v) - lists_before));
    assert!(refused.is_ok(), "{gone} watches refused with 410 of 6, {lists} relists");
    assert_eq!(lists, 6, "one relist per 410");
    assert!(c.metrics.wait_for_reconciles(reconciles + 2, WAIT).await, "the relist reconciles every credential");
    // Still watching: a new credential and a rotated client secret are noticed.
    create_cc(&api, "c", &issuer.url()).await;
    wait_condition(&api, "c", "Ready", ("True", "TokenIssued")).await;
    api.drop_watches();
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let patch = json!({"stringData": {"client_secret": "rotated"}});
    secrets.patch("a-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_secret_value(&api, "a", "access_token", "token-4").await;
    assert_eq!(issuer.issued(), 4, "a, b, c once, and a again for its rotated secret");
}

/// How long "within seconds" is: a watch refused with 410 is retried after kube's first
/// backoff (under a second) and a relist takes milliseconds on the double.
const PROMPTLY: Duration = Duration::from_secs(8);

async fn acted_on_promptly(api: &ApiServer, what: &str, condition: impl FnMut(&support::apiserver::View<'_>) -> bool) {
    if api.wait_for(condition, PROMPTLY).await.is_err() {
        let relists = api.inspect(|v| initial_lists(v, "clientcredentials"));
        panic!("{what}: not acted on within {PROMPTLY:?} ({relists} (watch-)lists of ClientCredentials so far)");
    }
}

/// After an API server restart, with credential "a" holding token-1: a deleted target is
/// restored without a request, a renewal request gives one renewal, and a new credential
/// becomes Ready, each within [`PROMPTLY`].
async fn changes_are_acted_on_promptly(api: &ApiServer, issuer: &Issuer) {
    api.delete::<Secret>(Some(NS), "a").unwrap();
    acted_on_promptly(api, "a deleted target Secret", |v| view_token(v, "a").as_deref() == Some("token-1")).await;
    renew_now(api, "a", "after-restart").await;
    acted_on_promptly(api, "a renewal request", |v| view_token(v, "a").as_deref() == Some("token-2")).await;
    create_cc(api, "b", &issuer.url()).await;
    acted_on_promptly(api, "a new ClientCredential", |v| {
        view_token(v, "b").is_some()
            && view_status(v, "b").is_some_and(|s| cond(&s, "Ready") == ("True".into(), "TokenIssued".into()))
    })
    .await;
    assert_eq!(issuer.issued(), 3, "token-1 restored without a request, one for the renewal, one for b");
}

/// After a restart, a real API server's watch cache can answer a `resourceVersion=0` list
/// with a version older than the one the restarted server refuses watches at: a watcher
/// that relists that way after a 410 is refused again, and again, and sees no change.
#[tokio::test]
async fn after_an_api_server_restart_with_a_lagging_watch_cache_changes_are_acted_on_within_seconds() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    let _c = start(&api, args(&[]));
    create_cc(&api, "a", &issuer.url()).await;
    wait_condition(&api, "a", "Ready", ("True", "TokenIssued")).await;
    wait_secret_value(&api, "a", "access_token", "token-1").await;
    // The lagging cache stops here; one more write, then the restart: watches are refused
    // from any version before it, the cache's version included.
    let lag_at = api.resource_version();
    create_secret(&api, source_secret("unrelated", &[("k", "v")])).await;
    api.restart_with_lagging_cache(lag_at);

    changes_are_acted_on_promptly(&api, &issuer).await;
}

/// `--initial-list=streaming`: each watcher gets the state from one watch-list, no LIST.
/// A restart with valid tokens lists nothing and writes nothing; after an API server restart
/// (watches end, every older resourceVersion is refused with 410) the watchers start over
/// with consistent watch-lists (never resourceVersion=0) and changes are acted on.
#[tokio::test]
async fn with_streaming_lists_a_restart_lists_and_writes_nothing_and_survives_an_api_server_restart() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    let streaming = || args(&["--initial-list", "streaming"]);
    let first = start(&api, streaming());
    create_cc(&api, "a", &issuer.url()).await;
    wait_condition(&api, "a", "Ready", ("True", "TokenIssued")).await;
    wait_secret_value(&api, "a", "access_token", "token-1").await;
    first.crash();

    api.clear_requests();
    let second = start(&api, streaming());
    assert!(second.metrics.wait_for_reconciles(1, WAIT).await, "the new controller reconciled");
    let log = api.requests();
    assert!(!log.iter().any(|r| r.verb == Verb::List), "no list request: {log:#?}");
    let writes: Vec<_> = log.iter().filter(|r| r.verb.is_write()).collect();
    assert!(writes.is_empty(), "a restart with a valid token writes nothing: {writes:#?}");
    // ClientCredentials, managed Secrets, Secret metadata: one consistent watch-list each.
    let watch_lists: Vec<_> = log.iter().filter(|r| r.verb == Verb::Watch).collect();
    assert_eq!(watch_lists.len(), 3, "{watch_lists:#?}");
    for w in &watch_lists {
        assert_eq!((w.send_initial_events.as_deref(), w.resource_version.as_deref()), (Some("true"), None), "{w:#?}");
    }
    assert_eq!(issuer.issued(), 1);

    // The API server restarts: open watches end, each resource's first watch is refused
    // while its cache initialises (429, Retry-After: 1) and resuming from an older version
    // gets 410: every watcher starts over with a watch-list, a full resync, and the
    // credential is reconciled again. Nothing is written up to then either: not only at the
    // moment the first reconcile ended.
    let started = log.len();
    // One more write first (not through the API: it is not in the request log), so that every
    // watcher's version is older than the restarted server's oldest.
    api.put(&source_secret("unrelated", &[("k", "v")])).unwrap();
    api.restart();
    // The reconciles completed when the relist was answered: the one it causes comes after.
    let reconciled = api
        .wait_for_value(
            |v| {
                v.requests()[started..]
                    .iter()
                    .any(|r| {
                        r.resource == "clientcredentials"
                            && r.send_initial_events.as_deref() == Some("true")
                            && r.code == 200
                    })
                    .then(|| second.metrics.reconciles())
            },
            WAIT,
        )
        .await
        .expect("the ClientCredentials were listed again after the restart");
    assert!(second.metrics.wait_for_reconciles(reconciled + 1, WAIT).await, "reconciled again after the relist");
    let log = api.requests();
    let writes: Vec<_> = log.iter().filter(|r| r.verb.is_write()).collect();
    assert!(writes.is_empty(), "nothing written through a restart and a resync with a valid token: {writes:#?}");
    assert!(log[started..].iter().any(|r| r.code == 429), "the initialising caches refused a watch");
    changes_are_acted_on_promptly(&api, &issuer).await;
    let log = api.requests();
    assert!(!log.iter().any(|r| r.verb == Verb::List), "still no list request");
    let refused: Vec<_> = log.iter().filter(|r| r.resource_version.as_deref() == Some("0")).collect();
    assert!(refused.is_empty(), "never resourceVersion=0 (\"any\"): {refused:#?}");
}

#[tokio::test]
async fn a_status_write_that_keeps_failing_does_not_cause_token_requests() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    create_cc(&api, "demo", &issuer.url()).await;
    api.inject(Fault::verbs(&[Verb::Patch]).resource("clientcredentials").subresource("status").code(409).times(3));
    let _c = start(&api, args(&[]));
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(api.count(Verb::Patch, "clientcredentials", Some("status")), 4);
    assert_eq!(issuer.issued(), 1);
}

// ---------------------------------------------------------------------------------------
// 9. Crash safety: the controller is aborted (like a killed process) at each point of a
// renewal, then restarted.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_crash_after_the_token_request_before_the_state_write_keeps_the_valid_token_published() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    let c = start(&api, args(&[]));
    create_cc(&api, "demo", &issuer.url()).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("demo.tokensync-state").times(1000));
    renew_now(&api, "demo", "r1").await;
    wait_failed_requests(&api, Verb::Apply, "demo.tokensync-state", 1).await;
    c.crash();
    assert_eq!(issuer.issued(), 2);
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "token-1", "the valid token stays published");
    assert_eq!(secret_data(&api, "demo.tokensync-state").unwrap()["access_token"], "token-1");
    api.clear_faults();
    // token-2 existed only in the crashed process: the request is repeated once.
    let _c2 = start(&api, args(&[]));
    wait_secret_value(&api, "demo", "access_token", "token-3").await;
    wait_condition(&api, "demo", "Degraded", ("False", "Healthy")).await;
    assert_eq!(issuer.issued(), 3);
}

#[tokio::test]
async fn a_crash_between_the_state_write_and_the_target_apply_publishes_the_stored_token_without_a_request() {
    let api = api_server().await;
    let issuer = Issuer::start(false).await;
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("demo").times(1000));
    let c = start(&api, args(&[]));
    create_cc(&api, "demo", &issuer.url()).await;
    wait_failed_requests(&api, Verb::Apply, "demo", 1).await;
    assert_eq!(secret_data(&api, "demo.tokensync-state").unwrap()["access_token"], "token-1");
    c.crash();
    api.clear_faults();
    let _c2 = start(&api, args(&[]));
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    wait_condition(&api, "demo", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(issuer.issued(), 1);
}

#[tokio::test]
async fn a_crash_before_the_status_records_a_recovery_clears_degraded_on_restart_without_a_request() {
    let api = api_server().await;
    let endpoint = FaultyEndpoint::start().await;
    let url = endpoint.add("demo", Mode::Status(503), 3600);
    endpoint.set_failing(true);
    let c = start(&api, args(&[]));
    create_cc(&api, "demo", &url).await;
    wait_condition(&api, "demo", "Degraded", ("True", "TokenEndpointUnavailable")).await;
    // The endpoint heals; the next attempt gets a token and stores it, but no status write
    // gets through before the process dies: status still records the failures.
    api.inject(Fault::verbs(&[Verb::Patch]).resource("clientcredentials").subresource("status").code(500).times(1000));
    endpoint.set_failing(false);
    wait_secret_value(&api, "demo", "access_token", "demo-token-1").await;
    c.crash();
    api.clear_faults();
    assert!(status(&api, "demo").unwrap().failed_attempts.unwrap_or(0) >= 1, "status still shows the failures");
    // The stored token was issued, with the inputs that failed, after the last failure: the
    // restarted controller reports the recovery instead of waiting for the next renewal.
    let _c2 = start(&api, args(&[]));
    wait_condition(&api, "demo", "Degraded", ("False", "Healthy")).await;
    let s = status(&api, "demo").unwrap();
    assert_eq!(s.failed_attempts.unwrap_or(0), 0);
    assert_eq!(cond(&s, "Ready"), ("True".into(), "TokenIssued".into()));
    assert_eq!(endpoint.hits("demo").iter().filter(|h| h.healthy).count(), 1, "no second request");
}

#[tokio::test]
async fn a_crash_after_a_lost_response_to_the_state_write_continues_the_refresh_chain() {
    let api = api_server().await;
    let issuer = Issuer::start(true).await;
    let c = start(&api, args(&[]));
    create_refreshing_cc(&api, "demo", &issuer).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    // The state write of the next renewal happens, but its response is lost; then the
    // process dies.
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("demo.tokensync-state").after_write().times(1000));
    renew_now(&api, "demo", "r1").await;
    wait_failed_requests(&api, Verb::Apply, "demo.tokensync-state", 1).await;
    c.crash();
    api.clear_faults();
    assert_eq!(secret_data(&api, "demo.tokensync-state").unwrap()["refresh_token"], "refresh-2");
    let c2 = start(&api, args(&[]));
    wait_secret_value(&api, "demo", "access_token", "token-2").await;
    assert_eq!(issuer.issued(), 2, "the stored token is published without a request");
    // The chain continues with the rotated refresh token, also across another restart.
    renew_now(&api, "demo", "r2").await;
    wait_secret_value(&api, "demo", "access_token", "token-3").await;
    c2.crash();
    let _c3 = start(&api, args(&[]));
    renew_now(&api, "demo", "r3").await;
    wait_secret_value(&api, "demo", "access_token", "token-4").await;
    assert_eq!(issuer.rejected(), 0, "no refresh token was presented twice");
}

#[tokio::test]
async fn failed_state_writes_without_a_crash_keep_the_rotated_refresh_token_in_memory_until_written() {
    let api = api_server().await;
    let issuer = Issuer::start(true).await;
    let c = start(&api, args(&[]));
    create_refreshing_cc(&api, "demo", &issuer).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    // Longer than the reconcile's own retries (5 attempts): the reconcile fails, and the
    // next one writes the token it kept in memory (after 2 more failures).
    let failed_before = reconcile_errors(&c);
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("demo.tokensync-state").code(500).times(7));
    renew_now(&api, "demo", "r1").await;
    wait_secret_value(&api, "demo", "access_token", "token-2").await;
    assert_eq!(secret_data(&api, "demo.tokensync-state").unwrap()["refresh_token"], "refresh-2");
    assert_eq!((api.faults_left(), api.injected(500)), (0, 7), "every injected 500 was used");
    assert_eq!(reconcile_errors(&c) - failed_before, 1, "one reconcile failed: the token was kept in memory");
    renew_now(&api, "demo", "r2").await;
    wait_secret_value(&api, "demo", "access_token", "token-3").await;
    assert_eq!((issuer.issued(), issuer.rejected()), (3, 0), "no duplicate request, no reused refresh token");
    drop(c);
}

/// The one window no client can close: the server rotated the refresh token, and its answer
/// never reached durable storage (lost in flight, or the process died before the state
/// write). tokensync keeps the published token while it is valid, reports the refused
/// refresh as TokenRequestRejected, and a new bootstrap refresh token in the source Secret
/// starts a new chain at once.
#[tokio::test]
async fn a_rotation_lost_before_it_was_stored_is_reported_and_a_new_bootstrap_restarts_the_chain() {
    let api = api_server().await;
    let issuer = Issuer::start(true).await;
    let c = start(&api, args(&[]));
    create_refreshing_cc(&api, "demo", &issuer).await;
    wait_secret_value(&api, "demo", "access_token", "token-1").await;
    api.inject(Fault::verbs(&[Verb::Apply]).resource("secrets").name("demo.tokensync-state").times(1000));
    renew_now(&api, "demo", "r1").await;
    wait_failed_requests(&api, Verb::Apply, "demo.tokensync-state", 1).await;
    c.crash(); // refresh-2 was issued; only the crashed process knew it
    api.clear_faults();
    let _c2 = start(&api, args(&[]));
    wait_condition(&api, "demo", "Degraded", ("True", "TokenRequestRejected")).await;
    assert_eq!(issuer.rejected(), 1);
    assert_eq!(condition(&api, "demo", "Ready"), Some(("True".into(), "TokenIssued".into())));
    assert_eq!(secret_data(&api, "demo").unwrap()["access_token"], "token-1", "the valid token stays");
    let msg = status(&api, "demo").unwrap().conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message.clone();
    assert!(msg.contains("invalid_grant") && !msg.contains("refresh-"), "{msg}");

    // The user puts a fresh refresh token into the source Secret: a new chain starts.
    issuer.state.lock().unwrap().current_refresh = "bootstrap-2".into();
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    let patch = json!({"stringData": {"refresh_token": "bootstrap-2"}});
    secrets.patch("demo-client", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_secret_value(&api, "demo", "access_token", "token-3").await;
    wait_condition(&api, "demo", "Degraded", ("False", "Healthy")).await;
    assert_eq!(secret_data(&api, "demo.tokensync-state").unwrap()["refresh_token"], "refresh-3");
}

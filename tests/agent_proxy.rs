//! `tokensync agent --proxy` against real HTTP servers on 127.0.0.1: a token server (the
//! scriptable Issuer) and an upstream that accepts only the tokens that Issuer issued
//! (tests/resource_server). Every behaviour of issue 22: the token in place of the caller's
//! credentials, rotation during a streaming request, the 401 path (one early renewal, never a
//! loop), the 503 path, the open-proxy refusals, hop-by-hop headers, redirects, streaming
//! both ways, TLS with a CA file and HTTP/2, keep-alive pooling, the loopback default, the
//! metrics, and no token in logs. Tests wait on the agent's watch channels or, across a
//! process boundary, poll with a deadline; none sleeps for state.

mod resource_server;
mod sidecar_example;
mod token_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use resource_server::ResourceServer;
use serde_json::Value;
use sidecar_example::SidecarExample;
use token_server::Reply;
use token_server::issuer::Issuer;
use tokensync::agent::live::ServedToken;
use tokensync::agent::{Agent, AgentArgs};

const WAIT: Duration = Duration::from_secs(30);
const ID: &str = "team-a/demo";

#[derive(Parser)]
#[command(args_override_self = true)]
struct Flags {
    #[command(flatten)]
    args: AgentArgs,
}

fn manifest(token_url: &str, annotations: &str, spec_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: demo-client, namespace: team-a}}
stringData: {{client_id: demo, client_secret: the-client-secret}}
---
apiVersion: tokensync.io/v1alpha1
kind: ClientCredential
metadata:
  name: demo
  namespace: team-a
  annotations: {{{annotations}}}
spec:
  tokenEndpoint: {token_url}
  credentialsRef: {{name: demo-client}}
{spec_extra}"#
    )
}

struct Setup {
    dir: tempfile::TempDir,
    manifest: PathBuf,
}

impl Setup {
    fn new(yaml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("credentials.yaml");
        std::fs::write(&manifest, yaml).unwrap();
        Setup { dir, manifest }
    }

    /// Agent flags as a user would pass them, with short backoffs for tests.
    fn args(&self, extra: &[&str]) -> Result<AgentArgs, clap::Error> {
        let root = self.dir.path();
        let mut argv: Vec<String> = vec!["tokensync".into(), "-f".into(), self.manifest.display().to_string()];
        argv.extend(["--out-dir".into(), root.join("out").display().to_string()]);
        argv.extend(["--state-dir".into(), root.join("state").display().to_string()]);
        argv.extend(
            ["--watch-interval", "0", "--allow-http", "--min-renewal-interval", "1s", "--backoff-min", "1s"]
                .map(String::from),
        );
        argv.extend(extra.iter().map(|s| s.to_string()));
        Flags::try_parse_from(argv).map(|f| f.args)
    }

    /// Starts the agent with one proxy for team-a/demo on a free loopback port.
    fn start(&self, upstream: &str, extra: &[&str]) -> (Agent, SocketAddr) {
        let proxy = format!("{ID}=127.0.0.1:0={upstream}");
        let mut all = vec!["--proxy", proxy.as_str()];
        all.extend_from_slice(extra);
        let agent = Agent::start(&self.args(&all).unwrap()).unwrap();
        let addr = agent.proxy_addrs()[0].1;
        (agent, addr)
    }
}

/// An Issuer, an upstream accepting its tokens, and an agent proxying to the upstream.
struct World {
    issuer: Issuer,
    upstream: ResourceServer,
    setup: Setup,
    agent: Agent,
    proxy: SocketAddr,
}

impl World {
    async fn start(lifetime: u64, spec_extra: &str, extra: &[&str]) -> World {
        let issuer = Issuer::start(lifetime).await;
        World::with_issuer(issuer, spec_extra, extra).await
    }

    async fn with_issuer(issuer: Issuer, spec_extra: &str, extra: &[&str]) -> World {
        let upstream = ResourceServer::start(issuer.behaviour.clone()).await;
        let setup = Setup::new(&manifest(&issuer.url(), "", spec_extra));
        let (agent, proxy) = setup.start(&upstream.url("/api"), extra);
        World { issuer, upstream, setup, agent, proxy }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Waits until the credential serves a token other than `old`, and returns it.
    async fn token_other_than(&self, old: Option<&Arc<ServedToken>>) -> Arc<ServedToken> {
        let mut live = self.agent.live_token(ID).subscribe();
        let found = tokio::time::timeout(
            WAIT,
            live.wait_for(|l| l.token.as_ref().is_some_and(|t| old.is_none_or(|o| !Arc::ptr_eq(o, t)))),
        )
        .await;
        found.expect("timed out waiting for a new token").unwrap().token.clone().unwrap()
    }

    fn metrics(&self) -> String {
        self.agent.admin_state().metrics.encode()
    }

    fn tokens_issued(&self) -> u32 {
        self.issuer.behaviour.lock().unwrap().issued
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn json(response: reqwest::Response) -> Value {
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` as bytes (for what an HTTP client library will not send) and reads the
/// answer until the server closes the connection (requests say `Connection: close`).
async fn raw(addr: SocketAddr, request: &str) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Raw { status, head: head.to_owned(), body: body.to_owned() }
}

#[tokio::test]
async fn requests_reach_the_fixed_upstream_with_the_current_token_in_place_of_the_callers() {
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    let response = client()
        .post(world.url("/v1/items?page=2&q=a%20b"))
        .header("authorization", "Bearer the-callers-own-token")
        .header("proxy-authorization", "Basic Y2FsbGVyOnNlY3JldA==")
        .header("x-request-id", "abc")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    assert_eq!(body["token"], "token-1");
    assert_eq!(body["target"], "/api/v1/items?page=2&q=a%20b", "the base path prefixes the request's path and query");

    let seen = world.upstream.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.headers.get_all("authorization").iter().count(), 1, "exactly one Authorization");
    assert_eq!(request.header("authorization"), Some("Bearer token-1"));
    assert_eq!(request.header("proxy-authorization"), None);
    assert_eq!(request.header("x-request-id"), Some("abc"), "end-to-end headers pass");
    assert_eq!(request.header("via"), Some("1.1 tokensync"));
    let host = world.upstream.base.trim_start_matches("http://");
    assert_eq!(request.header("host"), Some(host), "the upstream's Host, not the proxy's");
    assert!(!format!("{:?}", request.headers).contains("the-callers-own-token"));

    let metrics = world.metrics();
    let upstream = world.upstream.url("/api");
    assert!(
        metrics.contains(&format!(
            "tokensync_proxy_requests_total{{namespace=\"team-a\",name=\"demo\",upstream=\"{upstream}\",code=\"200\",answered_by=\"upstream\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tokensync_proxy_added_latency_seconds_count{{namespace=\"team-a\",name=\"demo\",upstream=\"{upstream}\"}} 1"
        )),
        "{metrics}"
    );
    world.agent.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways_and_end_to_end_ones_kept() {
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    let answer = raw(
        world.proxy,
        "GET /hop HTTP/1.1\r\nHost: localhost\r\nConnection: close, X-Private\r\nX-Private: 1\r\n\
         Keep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\nUpgrade: websocket\r\nTE: gzip\r\nX-End: kept\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = world.upstream.seen();
    let request = &seen[0];
    for hop in ["x-private", "keep-alive", "proxy-connection", "upgrade", "te"] {
        assert_eq!(request.header(hop), None, "{hop} reached the upstream");
    }
    assert!(request.header("connection").is_none_or(|c| !c.to_ascii_lowercase().contains("x-private")));
    assert_eq!(request.header("x-end"), Some("kept"));

    for hop in ["x-up-private", "keep-alive", "proxy-authenticate"] {
        assert_eq!(answer.header(hop), None, "{hop} reached the caller: {}", answer.head);
    }
    assert_eq!(answer.header("x-end"), Some("kept"));
    world.agent.shutdown().await;
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    let response = client().get(world.url("/redirect")).send().await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/elsewhere");
    let targets: Vec<String> = world.upstream.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/api/redirect"], "the proxy did not follow the redirect");
    world.agent.shutdown().await;
}

#[tokio::test]
async fn absolute_form_connect_trace_and_foreign_hosts_are_refused_without_reaching_the_upstream() {
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    let upstream_authority = world.upstream.base.trim_start_matches("http://").to_owned();
    let cases = [
        (
            format!("GET http://{upstream_authority}/x HTTP/1.1\r\nHost: {upstream_authority}\r\n"),
            400,
            "absolute_form_refused",
        ),
        ("GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n".to_owned(), 400, "absolute_form_refused"),
        ("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n".to_owned(), 405, "connect_refused"),
        ("TRACE / HTTP/1.1\r\nHost: localhost\r\n".to_owned(), 405, "trace_refused"),
        ("GET / HTTP/1.1\r\nHost: evil.example\r\n".to_owned(), 421, "foreign_host"),
        (format!("GET / HTTP/1.1\r\nHost: rebound.example:{}\r\n", world.proxy.port()), 421, "foreign_host"),
        ("GET / HTTP/1.1\r\n".to_owned(), 400, "missing_host"),
        ("OPTIONS * HTTP/1.1\r\nHost: localhost\r\n".to_owned(), 400, "asterisk_form_refused"),
        ("GET /v1/../../admin HTTP/1.1\r\nHost: localhost\r\n".to_owned(), 400, "dot_segment_refused"),
    ];
    for (head, status, code) in cases {
        let answer = raw(world.proxy, &format!("{head}Connection: close\r\n\r\n")).await;
        assert_eq!(answer.status, status, "{head:?}: {}", answer.head);
        let body: Value = serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("{head:?}: {}", answer.body));
        assert_eq!(body["error"], code, "{head:?}");
        assert!(!answer.body.contains("token-1") && !answer.head.contains("token-1"));
    }
    assert!(world.upstream.seen().is_empty(), "nothing reached the upstream");
    // The proxy's own names and addresses are accepted, with any port (port forwarding).
    for host in ["localhost:1234", "127.0.0.1", "[::1]:80"] {
        let answer = raw(world.proxy, &format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.head);
    }
    let metrics = world.metrics();
    assert!(metrics.contains("code=\"421\",answered_by=\"proxy\"} 2"), "{metrics}");
    world.agent.shutdown().await;
}

#[tokio::test]
async fn the_proxy_listens_on_loopback_unless_remote_is_allowed_explicitly() {
    let issuer = Issuer::start(3600).await;
    let setup = Setup::new(&manifest(&issuer.url(), "", ""));
    let upstream = "http://127.0.0.1:9/";

    // A bare port: loopback.
    let agent = Agent::start(&setup.args(&["--proxy", &format!("{ID}=0={upstream}")]).unwrap()).unwrap();
    let addr = agent.proxy_addrs()[0].1;
    assert!(addr.ip().is_loopback(), "{addr}");
    // Not reachable on another interface of this machine, if it has one.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    if probe.connect("192.0.2.1:9").is_ok() {
        let local = probe.local_addr().unwrap().ip();
        if !local.is_loopback() && !local.is_unspecified() {
            assert!(tokio::net::TcpStream::connect((local, addr.port())).await.is_err(), "reachable on {local}");
        }
    }
    agent.shutdown().await;

    // All interfaces: refused without the flag, before anything is served.
    let refused = Agent::start(&setup.args(&["--proxy", &format!("{ID}=0.0.0.0:0={upstream}")]).unwrap());
    let error = refused.err().expect("a non-loopback address needs --proxy-allow-remote");
    assert!(error.contains("--proxy-allow-remote") && error.contains("0.0.0.0"), "{error}");

    let allowed = setup.args(&["--proxy", &format!("{ID}=0.0.0.0:0={upstream}"), "--proxy-allow-remote"]).unwrap();
    let agent = Agent::start(&allowed).unwrap();
    assert!(agent.proxy_addrs()[0].1.ip().is_unspecified());
    agent.shutdown().await;

    // A credential that is not configured, or a plain http upstream without --allow-http.
    let unknown = Agent::start(&setup.args(&["--proxy", &format!("team-a/other=0={upstream}")]).unwrap());
    assert!(unknown.err().unwrap().contains("no ClientCredential team-a/other"));
    let mut https_only = setup.args(&["--proxy", &format!("{ID}=0={upstream}")]).unwrap();
    https_only.engine.allow_http = false;
    assert!(Agent::start(&https_only).err().unwrap().contains("--allow-http"));
}

#[tokio::test]
async fn a_response_streams_through_a_token_rotation_and_the_next_request_gets_the_new_one() {
    let world = World::start(3600, "", &[]).await;
    let first = world.token_other_than(None).await;
    let feed = world.upstream.feed_next_stream();
    let mut response = client().get(world.url("/stream")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    feed.send("one,".into()).await.unwrap();
    let chunk = tokio::time::timeout(WAIT, response.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(chunk, "one,", "the first chunk arrives before the upstream has finished: no buffering");

    // Rotate while the response is still streaming: a manual renewal through the annotation.
    std::fs::write(
        &world.setup.manifest,
        manifest(&world.issuer.url(), "tokensync.io/renew-requested-at: \"rotate-1\"", ""),
    )
    .unwrap();
    world.agent.reload();
    let second = world.token_other_than(Some(&first)).await;
    assert_eq!(world.tokens_issued(), 2);

    feed.send("two".into()).await.unwrap();
    drop(feed);
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, response.chunk()).await.unwrap().unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"two", "the request in flight completed across the rotation");

    let next = json(client().get(world.url("/after")).send().await.unwrap()).await;
    assert_eq!(next["token"], "token-2");
    let tokens: Vec<Option<String>> = world.upstream.seen().iter().map(|s| s.token().map(str::to_owned)).collect();
    assert_eq!(tokens, [Some("token-1".to_owned()), Some("token-2".to_owned())]);
    assert_eq!(second.value, "Bearer token-2");
    world.agent.shutdown().await;
}

#[tokio::test]
async fn a_request_body_streams_to_the_upstream_before_the_caller_finishes_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    let mut uploads = world.upstream.uploads();
    let mut stream = tokio::net::TcpStream::connect(world.proxy).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst,\r\n",
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, uploads.recv()).await.expect("the first chunk was held back").unwrap();
    assert_eq!(first, "first,");
    stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"received":12}"#), "{answer}");
    world.agent.shutdown().await;
}

#[tokio::test]
async fn an_upstream_401_invalid_token_triggers_one_early_renewal_not_a_loop() {
    let world = World::start(3600, "", &["--proxy-renewal-interval", "1h"]).await;
    let first = world.token_other_than(None).await;
    assert_eq!(client().get(world.url("/a")).send().await.unwrap().status(), 200);

    // The upstream revokes token-1: the 401 goes back to the caller and asks for a renewal.
    world.upstream.revoke("token-1");
    let response = client().get(world.url("/b")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    world.token_other_than(Some(&first)).await;
    assert_eq!(world.tokens_issued(), 2);
    assert_eq!(json(client().get(world.url("/c")).send().await.unwrap()).await["token"], "token-2");

    // token-2 is refused too (say the upstream rejects this client altogether): within the
    // interval no further renewal is asked for, however many 401s come back.
    world.upstream.revoke("token-2");
    for _ in 0..5 {
        assert_eq!(client().get(world.url("/d")).send().await.unwrap().status(), 401);
    }
    let passes = world.agent.progress().borrow().passes;
    world.agent.reload();
    assert!(world.agent.wait_for(WAIT, |p| p.passes > passes).await);
    assert_eq!(world.tokens_issued(), 2, "no renewal loop");
    assert_eq!(world.issuer.requests(), 2);
    let metrics = world.metrics();
    for (result, count) in [("triggered", 1), ("rate_limited", 5), ("superseded", 0)] {
        let line = format!(
            "tokensync_proxy_early_renewals_total{{namespace=\"team-a\",name=\"demo\",result=\"{result}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    assert!(metrics.contains("code=\"401\",answered_by=\"upstream\"} 6"), "{metrics}");
    world.agent.shutdown().await;
}

#[tokio::test]
async fn a_401_that_does_not_say_invalid_token_asks_for_no_renewal() {
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    for _ in 0..3 {
        let response = client().get(world.url("/plain-401")).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    let metrics = world.metrics();
    assert!(metrics.contains("result=\"triggered\"} 0"), "{metrics}");
    assert_eq!(world.tokens_issued(), 1);
    world.agent.shutdown().await;
}

#[tokio::test]
async fn with_no_token_yet_the_proxy_answers_503_with_retry_after_and_the_reason() {
    let issuer = Issuer::start(3600).await;
    issuer.fail_with(|| Reply::oauth_error(503, "temporarily_unavailable", "down for maintenance"));
    let world = World::with_issuer(issuer, "", &["--backoff-min", "20s", "--backoff-max", "40s"]).await;
    assert!(world.agent.wait_for(WAIT, |p| p.failures >= 1 && p.passes >= 1).await);
    let response = client().get(world.url("/x")).header("authorization", "Bearer caller").send().await.unwrap();
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=40).contains(&retry_after), "Retry-After {retry_after}: the agent's next attempt");
    let body = json(response).await;
    assert_eq!(body["error"], "no_valid_token");
    assert_eq!(body["credential"], ID);
    assert_eq!(body["reason"], "TokenEndpointUnavailable", "{body}");
    assert!(body["message"].as_str().unwrap().contains("503"), "{body}");
    assert!(world.upstream.seen().is_empty(), "nothing is forwarded without a token");
    assert!(world.metrics().contains("code=\"503\",answered_by=\"proxy\"} 1"));
    world.agent.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_never_forwarded_the_proxy_answers_503_instead() {
    let world = World::start(3, "", &["--backoff-min", "30s", "--backoff-max", "60s"]).await;
    let token = world.token_other_than(None).await;
    assert_eq!(client().get(world.url("/before")).send().await.unwrap().status(), 200);
    world.issuer.fail_with(|| Reply::text(500, "text/html", "<h1>oops</h1>"));
    // The worker republishes when the token expires (it wakes at the expiry to retry).
    let mut live = world.agent.live_token(ID).subscribe();
    tokio::time::timeout(
        WAIT,
        live.wait_for(|l| {
            l.trouble.is_some() && l.token.as_ref().is_some_and(|t| !t.is_valid_at(std::time::SystemTime::now()))
        }),
    )
    .await
    .expect("the token expired")
    .unwrap();
    assert!(!token.is_valid_at(std::time::SystemTime::now()));
    let forwarded = world.upstream.seen().len();

    let response = client().get(world.url("/after")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = json(response).await;
    assert_eq!(body["reason"], "Expired", "{body}");
    assert!(body["message"].as_str().unwrap().contains("TokenEndpointUnavailable"), "{body}");
    assert!(!body.to_string().contains("token-1"));
    assert_eq!(world.upstream.seen().len(), forwarded, "the expired token was not forwarded");
    world.agent.shutdown().await;
}

#[tokio::test]
async fn a_one_key_template_names_the_header_that_carries_the_token() {
    let template = "  target:\n    template:\n      X-Api-Key: \"{{ access_token }}\"\n";
    let world = World::start(3600, template, &[]).await;
    world.token_other_than(None).await;
    let response = client().get(world.url("/x")).header("x-api-key", "the-callers-key").send().await.unwrap();
    // The upstream wants a Bearer token, so it refuses: what matters is what it was sent.
    assert_eq!(response.status(), 401);
    let seen = world.upstream.seen();
    assert_eq!(seen[0].header("x-api-key"), Some("token-1"));
    assert_eq!(seen[0].headers.get_all("x-api-key").iter().count(), 1);
    assert_eq!(seen[0].header("authorization"), None);
    world.agent.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused_across_callers() {
    let world = World::start(3600, "", &[]).await;
    world.token_other_than(None).await;
    for i in 0..5 {
        // Every caller on a connection of its own, closed after one request.
        let answer =
            raw(world.proxy, &format!("GET /{i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(world.upstream.seen().len(), 5);
    assert_eq!(world.upstream.connections(), 1, "one pooled connection to the upstream");
    world.agent.shutdown().await;
}

/// A CA, and a server certificate for 127.0.0.1 it signed.
fn pki() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "proxy test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem(), config)
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_the_ca_file_and_spoken_to_over_http2() {
    let issuer = Issuer::start(3600).await;
    let (ca_pem, config) = pki();
    let upstream = ResourceServer::start_tls(issuer.behaviour.clone(), config).await;
    let setup = Setup::new(&manifest(&issuer.url(), "", ""));
    let ca_file = setup.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (agent, proxy) = setup.start(&upstream.url("/"), &["--proxy-ca-file", ca_file.to_str().unwrap()]);
    let mut live = agent.live_token(ID).subscribe();
    tokio::time::timeout(WAIT, live.wait_for(|l| l.token.is_some())).await.unwrap().unwrap();
    for i in 0..3 {
        let response = client().get(format!("http://{proxy}/{i}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let versions: Vec<_> = upstream.seen().iter().map(|s| s.version).collect();
    assert_eq!(versions, [http::Version::HTTP_2; 3], "HTTP/2 by ALPN");
    assert_eq!(upstream.connections(), 1, "requests share one HTTP/2 connection");
    agent.shutdown().await;

    // Without the CA file, the system's roots do not know the test CA: 502, and why.
    let other = Setup::new(&manifest(&issuer.url(), "", ""));
    let (agent, proxy) = other.start(&upstream.url("/"), &[]);
    let mut live = agent.live_token(ID).subscribe();
    tokio::time::timeout(WAIT, live.wait_for(|l| l.token.is_some())).await.unwrap().unwrap();
    let response = client().get(format!("http://{proxy}/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = json(response).await;
    assert_eq!(body["error"], "upstream_unavailable");
    assert!(body["message"].as_str().unwrap().to_lowercase().contains("certificate"), "{body}");
    assert_eq!(upstream.seen().len(), 3, "nothing reached the untrusted upstream");
    agent.shutdown().await;
}

// ---- the binary ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` against a deadline: across a process boundary there is nothing to wait on.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent binary, killed if the test fails before it stops it.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn the_binary_proxies_counts_in_metrics_and_never_logs_a_token() {
    let issuer = Issuer::start(3600).await;
    let upstream = ResourceServer::start(issuer.behaviour.clone()).await;
    let setup = Setup::new(&manifest(&issuer.url(), "", ""));
    let (proxy_port, admin_port) = (free_port(), free_port());
    let root = setup.dir.path();
    // A file, not a pipe: trace-level logs would fill a pipe nobody reads until the end.
    let log = root.join("agent.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["agent", "-f"])
        .arg(&setup.manifest)
        .arg("--out-dir")
        .arg(root.join("out"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .args(["--allow-http", "--watch-interval", "0", "--proxy-renewal-interval", "1s"])
        // The proxy from the environment, as a container spec would give it.
        .env("TOKENSYNC_PROXY", format!("{ID}={proxy_port}={}", upstream.url("/api")))
        .arg("--admin-addr")
        .arg(format!("127.0.0.1:{admin_port}"))
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(Some(child));
    let client = client();
    let url = |path: &str| format!("http://127.0.0.1:{proxy_port}{path}");
    eventually("the proxy serving token-1", async || {
        let response = client.get(url("/a")).header("authorization", "Bearer caller-secret").send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    upstream.revoke("token-1");
    assert_eq!(client.get(url("/b")).send().await.unwrap().status(), 401);
    let token_file = root.join("out/team-a/demo/access_token");
    eventually("token-2 after the 401", async || {
        std::fs::read_to_string(&token_file).ok().filter(|t| t == "token-2").map(drop)
    })
    .await;
    let body: Value = client.get(url("/c")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["token"], "token-2");
    let metrics = client.get(format!("http://127.0.0.1:{admin_port}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(
            "tokensync_proxy_early_renewals_total{namespace=\"team-a\",name=\"demo\",result=\"triggered\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("code=\"401\",answered_by=\"upstream\"} 1"), "{metrics}");
    assert!(metrics.contains("tokensync_proxy_added_latency_seconds_bucket"), "{metrics}");

    let mut child = running.0.take().unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("proxy listening"), "{stderr}");
    assert!(stderr.contains("TRACE"), "the logs were captured at trace level");
    for secret in ["token-1", "token-2", "the-client-secret", "caller-secret"] {
        assert!(!stderr.contains(secret), "{secret} in the logs");
    }
}

#[test]
fn the_proxy_sidecar_example_is_a_working_agent_configuration() {
    let example =
        SidecarExample::load("agent-proxy-sidecar.yaml", "/etc/tokensync/secrets/chalk-client", "secrets", "secrets");
    let pod = example.kind("Pod");
    let args = Flags::try_parse_from(&example.argv).unwrap().args;
    let proxy = &args.proxy.proxies[0];
    assert!(proxy.listen.ip().is_loopback(), "the sidecar's proxy listens on the Pod's loopback only");
    assert_eq!(proxy.upstream.scheme(), "https");
    let spec = tokensync::agent::sources::SourceSpec {
        manifests: args.files.clone(),
        dirs: args.secret_from_dir.clone(),
        files: vec![],
        envs: vec![],
    };
    let loaded = tokensync::agent::sources::load(&spec).unwrap();
    assert_eq!(loaded[0].id(), proxy.credential(), "the proxy names the configured credential");
    loaded[0].prepared.as_ref().unwrap_or_else(|p| panic!("{}: {}", p.reason, p.message));

    // The app calls the proxy on loopback, without any credential of its own.
    let app = &pod["spec"]["containers"][0];
    let command = app["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect::<Vec<_>>().join(" ");
    assert!(command.contains(&format!("http://localhost:{}/", proxy.listen.port())), "{command}");
    assert!(app["volumeMounts"].as_array().is_none_or(|m| m.is_empty()), "the app mounts no secret and no token");
}

//! `tokensync agent` against real token servers on 127.0.0.1: token files, renewal,
//! atomic replacement, the refresh-token chain across restarts, failures and backoff, reuse
//! of a valid token at start, and reloads (API, file change, SIGHUP). Tests wait on the
//! agent's progress channel (or, for the separate process, on files and /metrics with a
//! deadline), never on a fixed sleep.

mod sidecar_example;
mod support;
mod token_server;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sidecar_example::SidecarExample;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use token_server::{Recorded, Reply, TokenServer};
use tokensync::agent::{Agent, AgentArgs};

const WAIT: Duration = Duration::from_secs(30);

/// Later flags override earlier ones, so tests can change the defaults below.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Flags {
    #[command(flatten)]
    args: AgentArgs,
}

/// Agent flags as a user would pass them, tuned for short test lifetimes: renew 3-second
/// tokens after about a second and back off from 1 s, without waiting for a minute-long
/// propagation margin.
fn args(files: &[&Path], out: &Path, extra: &[&str]) -> AgentArgs {
    let mut argv: Vec<String> = vec!["tokensync".into()];
    for f in files {
        argv.extend(["-f".into(), f.display().to_string()]);
    }
    argv.extend(["--out-dir".into(), out.display().to_string()]);
    argv.extend(
        ["--allow-http", "--min-renewal-interval", "1s", "--backoff-min", "1s", "--backoff-max", "8s"]
            .map(String::from),
    );
    argv.extend(extra.iter().map(|s| s.to_string()));
    Flags::parse_from(argv).args
}

fn client_credentials(endpoint: &str, spec_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: demo-client, namespace: team-a}}
stringData: {{client_id: demo, client_secret: the-client-secret}}
---
apiVersion: tokensync.io/v1alpha1
kind: ClientCredential
metadata: {{name: demo, namespace: team-a}}
spec:
  tokenEndpoint: {endpoint}
  credentialsRef: {{name: demo-client}}
{spec_extra}"#
    )
}

/// The client secret, from HTTP Basic (the default authentication) or the body.
fn client_secret(r: &Recorded) -> Option<String> {
    r.basic().map(|(_, secret)| secret).or_else(|| r.params().get("client_secret").cloned())
}

/// A client_credentials server issuing `token-1`, `token-2`, ... living `lifetime` seconds.
async fn counting_server(lifetime: u64) -> (TokenServer, Arc<AtomicUsize>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let server = TokenServer::start(move |r: &Recorded| {
        if client_secret(r).as_deref() != Some("the-client-secret") {
            return Reply::oauth_error(401, "invalid_client", "bad client");
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::json(200, json!({"access_token": format!("token-{n}"), "token_type": "bearer", "expires_in": lifetime}))
    })
    .await;
    (server, issued)
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn mode(path: impl AsRef<Path>) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o777
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

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn token_dir(&self) -> PathBuf {
        self.out().join("team-a").join("demo")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn state_file(&self) -> PathBuf {
        self.state().join("team-a").join("demo.json")
    }

    fn args(&self, extra: &[&str]) -> AgentArgs {
        let state = self.state().display().to_string();
        let mut all = vec!["--state-dir", state.as_str(), "--watch-interval", "0s"];
        all.extend_from_slice(extra);
        args(&[&self.manifest], &self.out(), &all)
    }
}

#[tokio::test]
async fn token_files_appear_with_the_target_keys_and_private_permissions() {
    let (server, _) = counting_server(3600).await;
    let setup = Setup::new(&client_credentials(&server.url("/token"), ""));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.passes >= 1).await);

    let dir = setup.token_dir();
    assert_eq!(read(dir.join("access_token")), "token-1");
    assert_eq!(read(dir.join("token_type")), "Bearer");
    let expires: jiff::Timestamp = read(dir.join("expires_at")).parse().unwrap();
    assert!(expires > jiff::Timestamp::now() + Duration::from_secs(3000));
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["access_token", "expires_at", "token_type"], "only the target keys, no temporary files");
    for key in ["access_token", "expires_at", "token_type"] {
        assert_eq!(mode(dir.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(setup.out().join("team-a")), 0o700);
    assert_eq!(mode(setup.state_file()), 0o600);
    let state = read(setup.state_file());
    assert!(!state.contains("the-client-secret"), "the client secret is never stored");
    assert_eq!(server.requests().len(), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn templates_become_files_and_a_dropped_key_is_removed() {
    let (server, _) = counting_server(3600).await;
    let template = "  target:\n    template:\n      Authorization: \"Bearer {{ access_token }}\"\n      .env: \"TOKEN={{ access_token }}\"\n";
    let setup = Setup::new(&client_credentials(&server.url("/token"), template));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.passes >= 1).await);
    assert_eq!(read(setup.token_dir().join("Authorization")), "Bearer token-1");
    assert_eq!(read(setup.token_dir().join(".env")), "TOKEN=token-1");
    assert!(!setup.token_dir().join("access_token").exists());

    // The template is not an input of the token: changing it re-renders without a request.
    let template = "  target:\n    template:\n      Authorization: \"Bearer {{ access_token }}\"\n";
    std::fs::write(&setup.manifest, client_credentials(&server.url("/token"), template)).unwrap();
    let passes = agent.progress().borrow().passes;
    agent.reload();
    assert!(agent.wait_for(WAIT, |p| p.reloads >= 2 && p.passes > passes).await);
    assert!(!setup.token_dir().join(".env").exists());
    assert_eq!(read(setup.token_dir().join("Authorization")), "Bearer token-1");
    assert_eq!(server.requests().len(), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn tokens_are_renewed_before_they_expire() {
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log = times.clone();
    let server = TokenServer::start(move |_r: &Recorded| {
        let mut times = log.lock().unwrap();
        times.push(Instant::now());
        Reply::json(
            200,
            json!({"access_token": format!("token-{}", times.len()), "token_type": "Bearer", "expires_in": 3}),
        )
    })
    .await;
    let setup = Setup::new(&client_credentials(&server.url("/token"), ""));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 4).await);
    agent.shutdown().await;
    let times = times.lock().unwrap().clone();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < Duration::from_secs(3), "renewed {gap:?} after the previous token, which lived 3 s");
        assert!(gap >= Duration::from_millis(500), "renewed only {gap:?} after the previous token");
    }
    assert_eq!(read(setup.token_dir().join("access_token")), format!("token-{}", times.len()));
}

#[tokio::test]
async fn readers_never_see_a_partial_or_empty_token_file() {
    // Large tokens make a torn write visible: every token is its number plus 64 KiB.
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let server = TokenServer::start(move |_r: &Recorded| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("{n:08}{}", "x".repeat(64 * 1024));
        Reply::json(200, json!({"access_token": token, "token_type": "Bearer", "expires_in": 2}))
    })
    .await;
    let setup = Setup::new(&client_credentials(&server.url("/token"), ""));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.passes >= 1).await);

    let path = setup.token_dir().join("access_token");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut distinct = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let content = std::fs::read(&path).expect("the token file never disappears");
                assert_eq!(content.len(), 8 + 64 * 1024, "a reader saw a partial file");
                assert!(content[8..].iter().all(|b| *b == b'x'), "a reader saw a torn file");
                distinct.insert(content[..8].to_vec());
                reads += 1;
            }
            (reads, distinct.len())
        })
    };
    assert!(agent.wait_for(WAIT, |p| p.issued >= 4).await);
    stop.store(true, Ordering::Relaxed);
    let (reads, distinct) = reader.join().unwrap();
    assert!(reads > 100 && distinct >= 3, "{reads} reads saw {distinct} tokens");
    agent.shutdown().await;
}

/// A refresh_token server that rotates: `rt-N` buys `at-(N+1)` and `rt-(N+1)`; any other
/// refresh token (a reused one) is refused.
async fn rotating_server(lifetime: u64) -> TokenServer {
    let current = Arc::new(AtomicUsize::new(0));
    TokenServer::start(move |r: &Recorded| {
        let n = current.load(Ordering::SeqCst);
        if r.params().get("refresh_token") != Some(&format!("rt-{n}")) {
            return Reply::oauth_error(400, "invalid_grant", "refresh token reused or unknown");
        }
        current.store(n + 1, Ordering::SeqCst);
        Reply::json(
            200,
            json!({"access_token": format!("at-{}", n + 1), "refresh_token": format!("rt-{}", n + 1), "token_type": "Bearer", "expires_in": lifetime}),
        )
    })
    .await
}

fn refresh_credential(endpoint: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: demo-client, namespace: team-a}}
stringData: {{client_id: demo, client_secret: s, refresh_token: rt-0}}
---
apiVersion: tokensync.io/v1alpha1
kind: ClientCredential
metadata: {{name: demo, namespace: team-a}}
spec:
  tokenEndpoint: {endpoint}
  grantType: refresh_token
  credentialsRef: {{name: demo-client, refreshTokenKey: refresh_token}}
"#
    )
}

#[tokio::test]
async fn the_rotated_refresh_token_survives_a_restart() {
    let server = rotating_server(3).await;
    let setup = Setup::new(&refresh_credential(&server.url("/token")));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 1 && p.passes >= 1).await);
    agent.shutdown().await;
    assert_eq!(read(setup.token_dir().join("access_token")), "at-1");
    assert!(!std::fs::read_dir(setup.token_dir()).unwrap().any(|e| read(e.unwrap().path()).contains("rt-")));

    // A new process: the state file holds rt-1, so the next renewal continues the chain
    // instead of replaying the (already used) rt-0 from the Secret.
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 2 || p.failures > 0).await);
    let progress = *agent.progress().borrow();
    assert_eq!(progress.failures, 0, "no refresh was refused");
    agent.shutdown().await;
    let used: Vec<String> = server.requests().iter().map(|r| r.params()["refresh_token"].clone()).collect();
    assert_eq!(used[..3], ["rt-0", "rt-1", "rt-2"]);
    assert_eq!(read(setup.token_dir().join("access_token")), format!("at-{}", used.len()));
}

#[tokio::test]
async fn a_failing_endpoint_leaves_the_valid_token_and_backs_off_more_each_time() {
    let failing = Arc::new(AtomicBool::new(false));
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let (fail, log) = (failing.clone(), times.clone());
    let server = TokenServer::start(move |_r: &Recorded| {
        log.lock().unwrap().push(Instant::now());
        if fail.swap(true, Ordering::SeqCst) {
            Reply::text(503, "text/html", "<html>down</html>")
        } else {
            Reply::json(200, json!({"access_token": "the-only-token", "token_type": "Bearer", "expires_in": 4}))
        }
    })
    .await;
    let setup = Setup::new(&client_credentials(&server.url("/token"), ""));
    let agent = Agent::start(&setup.args(&["--backoff-min", "2s"])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.failures >= 3).await);
    agent.shutdown().await;

    assert_eq!(read(setup.token_dir().join("access_token")), "the-only-token", "never removed by a failure");
    let times = times.lock().unwrap().clone();
    let gaps: Vec<u128> = times.windows(2).skip(1).map(|w| (w[1] - w[0]).as_millis()).collect();
    // Backoff 2 s then 4 s (±10 %, from the failure time truncated to whole seconds, never
    // early): a constant 2 s backoff gives gaps under 3 s, the doubled one at least 3 s. A
    // comparison of the two gaps would be at the mercy of scheduling delays on a busy machine.
    assert!(gaps[0] >= 1000 && gaps[1] >= 3000, "gaps between failed requests: {gaps:?} ms");
    let state: Value = serde_json::from_str(&read(setup.state_file())).unwrap();
    assert_eq!(state["failures"]["attempts"], 3, "the failure record is persisted for the next start");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log = times.clone();
    let server = TokenServer::start(move |_r: &Recorded| {
        let mut times = log.lock().unwrap();
        times.push(Instant::now());
        if times.len() == 1 {
            Reply::oauth_error(429, "slow_down", "too many requests").header("Retry-After", "3")
        } else {
            Reply::json(200, json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
        }
    })
    .await;
    let setup = Setup::new(&client_credentials(&server.url("/token"), ""));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 1).await);
    agent.shutdown().await;
    let times = times.lock().unwrap().clone();
    assert!((times[1] - times[0]) >= Duration::from_secs(2), "retried after {:?}", times[1] - times[0]);
}

#[tokio::test]
async fn a_valid_token_on_disk_is_reused_at_start_and_a_changed_manifest_gets_a_new_one() {
    let (server, _) = counting_server(3600).await;
    let setup = Setup::new(&client_credentials(&server.url("/token"), ""));
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.passes >= 1).await);
    agent.shutdown().await;

    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.passes >= 1).await);
    assert_eq!(server.requests().len(), 1, "a restart causes no request");
    assert_eq!(agent.progress().borrow().issued, 0);
    // The files are restored from the state without a request, too.
    std::fs::remove_file(setup.token_dir().join("access_token")).unwrap();
    agent.reload();
    assert!(agent.wait_for(WAIT, |p| p.reloads >= 2 && p.passes >= 2).await);
    assert_eq!(read(setup.token_dir().join("access_token")), "token-1");
    assert_eq!(server.requests().len(), 1, "restored from the state file, without a request");

    std::fs::write(&setup.manifest, client_credentials(&server.url("/token"), "  scopes: [read]\n")).unwrap();
    agent.reload();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 1 && p.reloads >= 3).await);
    assert!(agent.wait_for(WAIT, |p| p.passes >= 3).await);
    assert_eq!(server.requests().len(), 2, "one prompt request for the changed spec");
    assert_eq!(server.requests()[1].params()["scope"], "read");
    assert_eq!(read(setup.token_dir().join("access_token")), "token-2");
    agent.shutdown().await;
}

/// A ClientCredential without its Secret in YAML: the client id from a mounted-Secret-like
/// directory, the client secret from a file holding `secret`. Returns the setup, the secret
/// file and the agent flags that name both (watched every 100 ms).
fn from_files(server: &TokenServer, secret: &str) -> (Setup, PathBuf, Vec<String>) {
    let yaml = client_credentials(&server.url("/token"), "");
    let setup = Setup::new(yaml.split("---\n").nth(1).unwrap());
    let secret_file = setup.dir.path().join("client_secret");
    std::fs::write(&secret_file, secret).unwrap();
    let mounted = setup.dir.path().join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    std::fs::write(mounted.join("client_id"), "demo").unwrap();
    let flags = vec![
        "--watch-interval".to_owned(),
        "100ms".to_owned(),
        "--secret-from-file".to_owned(),
        format!("team-a/demo-client/client_secret={}", secret_file.display()),
        "--secret-from-dir".to_owned(),
        format!("team-a/demo-client={}", mounted.display()),
    ];
    (setup, secret_file, flags)
}

#[tokio::test]
async fn a_rotated_secret_file_is_noticed_and_gets_a_new_token() {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let server = TokenServer::start(move |r: &Recorded| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let secret = client_secret(r).unwrap_or_default();
        Reply::json(200, json!({"access_token": format!("{secret}-{n}"), "token_type": "Bearer", "expires_in": 3600}))
    })
    .await;
    // The Secret is not in YAML at all: the id from a mounted-Secret-like directory, the
    // secret from a file.
    let (setup, secret_file, flags) = from_files(&server, "first\n");
    let agent = Agent::start(&setup.args(&flags.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.passes >= 1).await);
    assert_eq!(read(setup.token_dir().join("access_token")), "first-1");
    assert_eq!(server.requests()[0].basic().unwrap().0, "demo");

    std::fs::write(&secret_file, "second\n").unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 2 && p.reloads >= 2).await);
    assert!(agent.wait_for(WAIT, |p| p.passes >= 2).await);
    assert_eq!(read(setup.token_dir().join("access_token")), "second-2");
    agent.shutdown().await;
}

/// Issue 12: a wrong client secret put back must not leave its failure recorded until the
/// next renewal (hours for long-lived tokens); the token on disk stems from the secret in use.
#[tokio::test]
async fn a_source_secret_put_back_clears_its_failure_without_a_request() {
    let (server, _) = counting_server(3600).await;
    let good = client_credentials(&server.url("/token"), "");
    let setup = Setup::new(&good);
    let agent = Agent::start(&setup.args(&[])).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 1 && p.passes >= 1).await);

    std::fs::write(&setup.manifest, good.replace("the-client-secret", "a-wrong-secret")).unwrap();
    agent.reload();
    assert!(agent.wait_for(WAIT, |p| p.failures >= 1 && p.passes >= 2).await);
    let state: Value = serde_json::from_str(&read(setup.state_file())).unwrap();
    assert_eq!(state["failures"]["attempts"], 1, "the rejection is recorded");
    assert_eq!(read(setup.token_dir().join("access_token")), "token-1", "and the valid token stays");

    std::fs::write(&setup.manifest, &good).unwrap();
    agent.reload();
    assert!(agent.wait_for(WAIT, |p| p.reloads >= 3 && p.passes >= 3).await);
    let state: Value = serde_json::from_str(&read(setup.state_file())).unwrap();
    assert!(state.get("failures").is_none(), "the failure belonged to a secret no longer in use: {state}");
    assert_eq!(server.requests().len(), 2, "no request was needed: the token stems from the secret in use");
    assert_eq!(agent.progress().borrow().failures, 1);
    agent.shutdown().await;
}

/// Issue 20: a token that expired while the secret was wrong. Putting the right secret back
/// clears the failure (it belongs to inputs no longer in use), and that must never stand in the
/// way of the request that is due: exactly one request, at once, not after the backoff.
#[tokio::test]
async fn a_secret_put_back_after_the_token_expired_gets_a_new_token_at_once_with_one_request() {
    let (server, issued) = counting_server(2).await;
    // The client secret from a file, as a mounted Secret gives it; the agent notices changes.
    let (setup, secret_file, mut flags) = from_files(&server, "the-client-secret");
    // A backoff far longer than the test: a request it explains is not "at once".
    flags.extend(["--backoff-min", "60s", "--backoff-max", "120s"].map(String::from));
    let agent = Agent::start(&setup.args(&flags.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 1 && p.passes >= 1).await);

    std::fs::write(&secret_file, "a-wrong-secret").unwrap();
    assert!(agent.wait_for(WAIT, |p| p.failures >= 1).await);
    // The token on disk expires while the secret is wrong.
    let expires_at: jiff::Timestamp = read(setup.token_dir().join("expires_at")).trim().parse().unwrap();
    eventually("the token on disk to expire", || (jiff::Timestamp::now() > expires_at).then_some(())).await;
    let passes = agent.progress().borrow().passes;
    assert!(agent.wait_for(WAIT, |p| p.passes > passes).await, "a pass saw the expired token");

    std::fs::write(&secret_file, "the-client-secret").unwrap();
    let restored = Instant::now();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 2).await, "no token after the secret came back");
    assert!(restored.elapsed() < Duration::from_secs(10), "not at once: {:?}", restored.elapsed());
    eventually("the new token on disk", || (read(setup.token_dir().join("access_token")) == "token-2").then_some(()))
        .await;
    assert_eq!((issued.load(Ordering::SeqCst), server.requests().len()), (2, 3), "one rejected request, one new token");
    agent.shutdown().await;
}

// ---- the binary: SIGHUP, SIGTERM, /metrics ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` against a deadline: across a process boundary there is no notification
/// to wait on.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(port: u16) -> Option<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().ok()?;
    let response = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?;
    response.text().await.ok()
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_and_stops_cleanly_on_sigterm() {
    let (server, _) = counting_server(3600).await;
    // The Secret comes from the environment and a file, not from YAML.
    let only_cc =
        |extra: &str| client_credentials(&server.url("/token"), extra).split("---\n").nth(1).unwrap().to_owned();
    let setup = Setup::new(&only_cc(""));
    let secret_file = setup.dir.path().join("client_secret");
    std::fs::write(&secret_file, "the-client-secret\n").unwrap();
    let port = free_port();
    let state = setup.state().display().to_string();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .arg("agent")
        .arg("-f")
        .arg(&setup.manifest)
        .arg("--out-dir")
        .arg(setup.out())
        .args(["--state-dir", &state, "--allow-http", "--watch-interval", "0", "--admin-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--secret-from-file")
        .arg(format!("team-a/demo-client/client_secret={}", secret_file.display()))
        .args(["--secret-from-env", "team-a/demo-client/client_id=DEMO_CLIENT_ID"])
        .env("DEMO_CLIENT_ID", "demo")
        .env("RUST_LOG", "tokensync=debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token = setup.token_dir().join("access_token");
    eventually("the first token", || std::fs::read_to_string(&token).ok().filter(|t| t == "token-1")).await;

    std::fs::write(&setup.manifest, only_cc("  scopes: [write]\n")).unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    eventually("the token for the changed spec", || std::fs::read_to_string(&token).ok().filter(|t| t == "token-2"))
        .await;
    let text = metrics(port).await.unwrap();
    assert!(text.contains("tokensync_agent_config_loads_total{result=\"success\"} 2"), "{text}");
    assert!(text.contains("tokensync_token_requests_total{result=\"success\",reason=\"TokenIssued\"} 2"), "{text}");

    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("agent stopped"), "{stderr}");
    assert!(!stderr.contains("the-client-secret") && !stderr.contains("token-1"), "no secret in logs: {stderr}");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn the_binary_exits_2_when_the_configuration_cannot_be_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["agent", "-f", "/nonexistent/credentials.yaml", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/credentials.yaml"));
}

#[test]
fn the_sidecar_example_is_a_working_agent_configuration() {
    // The agent's flags, pointed at a copy of the ConfigMap and the Secret volume.
    let example = SidecarExample::load("agent-sidecar.yaml", "/etc/tokensync/secrets", "", "chatlayer-client");
    let pod = example.kind("Pod");
    let args = Flags::try_parse_from(&example.argv).unwrap().args;
    let spec = tokensync::agent::sources::SourceSpec {
        manifests: args.files.clone(),
        dirs: args.secret_from_dir.clone(),
        files: vec![],
        envs: vec![],
    };
    let loaded = tokensync::agent::sources::load(&spec).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id(), "default/chatlayer");
    let prepared = loaded[0].prepared.as_ref().unwrap_or_else(|p| panic!("{}: {}", p.reason, p.message));
    assert_eq!(prepared.credentials.client_id, "replace-with-your-client-id");

    // The app reads the path the agent writes, and mounts only the tokens.
    let app = &pod["spec"]["containers"][0];
    assert!(app["command"][2].as_str().unwrap().contains("/var/run/tokens/default/chatlayer/authorization"));
    assert_eq!(app["volumeMounts"].as_array().unwrap().len(), 1);
}

/// A directory laid out like a mounted kubernetes.io/tls Secret: tls.crt and tls.key are
/// symlinks into `..data`, which kubelet swaps atomically on every update.
struct MountedTls {
    dir: PathBuf,
    version: usize,
}

impl MountedTls {
    fn new(dir: PathBuf, identity: &support::oidc_provider::Identity) -> MountedTls {
        std::fs::create_dir(&dir).unwrap();
        for key in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        let mut mounted = MountedTls { dir, version: 0 };
        mounted.update(identity);
        mounted
    }

    /// Writes a new version and swaps `..data` to it in one rename, as kubelet does.
    fn update(&mut self, identity: &support::oidc_provider::Identity) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("tls.crt"), &identity.cert_pem).unwrap();
        std::fs::write(self.dir.join(&version).join("tls.key"), &identity.key_pem).unwrap();
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).unwrap();
        std::fs::rename(&link, self.dir.join("..data")).unwrap();
    }
}

/// The cnf.x5t#S256 claim of a JWT.
fn bound_thumbprint(jwt: &str) -> String {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    claims["cnf"]["x5t#S256"].as_str().unwrap_or_default().to_owned()
}

/// RFC 8705 outside Kubernetes: the certificate and key come from files (a mounted Secret),
/// the provider (npm's oidc-provider over HTTPS) authenticates the client by them and binds
/// the token to them; a renewed certificate on disk is used by the next request.
#[tokio::test]
async fn a_client_certificate_from_files_is_presented_and_a_renewed_one_is_used_once_the_files_change() {
    use support::oidc_provider::{self as node, Pki};
    let pki = Pki::new();
    let (_provider, ready) = node::spawn(&["--tls-dir".as_ref(), pki.dir.path().as_os_str()]);
    let endpoint = support::child_server::field(&ready, "mtls_token_endpoint");
    let setup = Setup::new(&format!(
        r#"apiVersion: tokensync.io/v1alpha1
kind: ClientCredential
metadata: {{name: demo, namespace: team-a}}
spec:
  tokenEndpoint: {endpoint}
  clientAuthentication: tls_client_auth
  clientId: interop-mtls
  resource: urn:tokensync:interop-jwt-api
  tls:
    caBundleSecretRef: {{name: provider-ca}}
    clientCertificateSecretRef: {{name: demo-tls}}
"#
    ));
    let ca_file = setup.dir.path().join("ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let first = pki.client("interop-mtls");
    let mut mounted = MountedTls::new(setup.dir.path().join("demo-tls"), &first);
    let flags = [
        "--watch-interval".to_owned(),
        "100ms".to_owned(),
        "--secret-from-file".to_owned(),
        format!("team-a/provider-ca/ca.crt={}", ca_file.display()),
        "--secret-from-dir".to_owned(),
        format!("team-a/demo-tls={}", mounted.dir.display()),
    ];
    let agent = Agent::start(&setup.args(&flags.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    assert!(agent.wait_for(Duration::from_secs(60), |p| p.issued >= 1).await, "a token was issued");
    let token = read(setup.token_dir().join("access_token"));
    assert_eq!(bound_thumbprint(&token), first.thumbprint(), "bound to the certificate on disk");

    let renewed = pki.client("interop-mtls");
    mounted.update(&renewed);
    assert!(agent.wait_for(Duration::from_secs(60), |p| p.issued >= 2).await, "the renewed certificate was used");
    assert!(agent.wait_for(WAIT, |p| p.passes >= 2).await);
    let token = read(setup.token_dir().join("access_token"));
    assert_eq!(bound_thumbprint(&token), renewed.thumbprint(), "bound to the renewed certificate");
    let state = read(setup.state_file());
    assert!(!state.contains(&renewed.key_body()[renewed.key_body().len() - 40..]), "no key in the state file");
    agent.shutdown().await;
}

//! tokensync-bench: the real `tokensync controller` binary against the in-process Kubernetes
//! API server double and a local token server, measuring scale, cost per renewal and memory.
//!
//! The controller runs as a CHILD PROCESS (the shipped binary, production logging to a file)
//! so that its CPU time and RSS are measured alone, without the API server double, the token
//! server or the benchmark's own bookkeeping, which live in this process.
//!
//! ```text
//! cargo bench --bench tokensync-bench -- [--credentials N] [--lifetime SECS] [--unrelated M]
//!     [--latency-ms MS] [--steady-seconds S] [--concurrency C] [--controller-arg ARG]...
//!     [--no-steady] [--json]
//! ```
//! `--controller-arg` passes one more argument to every `tokensync controller` it starts
//! (e.g. `--controller-arg=--initial-list=streaming`); `--no-steady` stops after the restart
//! measurements.
//! Defaults are a quick run (300 credentials, 90 s tokens). See docs/performance.md.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, RequestRecord, Verb};

const NS: &str = "bench";

#[derive(Debug, Clone)]
struct Options {
    credentials: usize,
    lifetime: u64,
    unrelated: usize,
    latency_ms: u64,
    steady_seconds: u64,
    concurrency: u16,
    controller_args: Vec<String>,
    steady: bool,
    json: bool,
}

fn options() -> Options {
    let mut o = Options {
        credentials: 300,
        lifetime: 90,
        unrelated: 0,
        latency_ms: 10,
        steady_seconds: 0,
        concurrency: 16,
        controller_args: Vec::new(),
        steady: true,
        json: false,
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
    o
}

// ---------------------------------------------------------------------------------------
// Token server: axum on 127.0.0.1, configurable latency and lifetime; counts requests per
// credential (client_id) and per wall-clock second.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Issued {
    per_client: HashMap<String, u32>,
    per_second: BTreeMap<i64, u32>,
    total: u64,
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
    let n = {
        let mut i = s.issued.lock().unwrap();
        i.total += 1;
        *i.per_second.entry(jiff::Timestamp::now().as_second()).or_default() += 1;
        let n = i.per_client.entry(client.clone()).or_default();
        *n += 1;
        *n
    };
    if !s.latency.is_zero() {
        tokio::time::sleep(s.latency).await;
    }
    let body = json!({"access_token": format!("{client}.{n}"), "token_type": "Bearer", "expires_in": s.lifetime});
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
        self.issued.lock().unwrap().total
    }

    fn max_per_second(&self, from: i64, to: i64) -> u32 {
        let i = self.issued.lock().unwrap();
        i.per_second.range(from..=to).map(|(_, n)| *n).max().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// The controller child process
// ---------------------------------------------------------------------------------------

struct Controller {
    child: Child,
    admin: String,
}

impl Controller {
    fn start(api: &ApiServer, dir: &std::path::Path, o: &Options, generation: u32) -> Controller {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: double, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: double, user: u, namespace: {NS}}}}}]\n\
                 current-context: c\n",
                api.url()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join(format!("controller-{generation}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tokensync"))
            .args(["controller", "--allow-http", "--namespace", NS, "--min-renewal-interval", "1s"])
            .args(["--admin-addr", &format!("127.0.0.1:{port}"), "--concurrency", &o.concurrency.to_string()])
            .args(&o.controller_args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("RUST_LOG")
            // TOKENSYNC_BENCH_LOG=debug (a RUST_LOG filter) for the controller's log file.
            .envs(std::env::var("TOKENSYNC_BENCH_LOG").map(|f| ("RUST_LOG", f)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start target/release/tokensync");
        Controller { child, admin: format!("127.0.0.1:{port}") }
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
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
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0 // CLK_TCK is 100 on Linux
    }

    async fn reconciles(&self) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut sock) = tokio::net::TcpStream::connect(&self.admin).await else { return 0 };
        let mut text = String::new();
        if sock.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.is_err()
            || sock.read_to_string(&mut text).await.is_err()
        {
            return 0;
        }
        text.lines()
            .find_map(|l| l.strip_prefix("tokensync_reconcile_duration_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Measurement helpers. Waiting here polls (every 500 ms): the condition scans thousands of
// objects, which is too costly to re-run on every change of the double.
// ---------------------------------------------------------------------------------------

async fn poll_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready_count(api: &ApiServer) -> usize {
    api.list_json("clientcredentials.tokensync.io", Some(NS))
        .iter()
        .filter(|cc| {
            cc["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "TokenIssued")
            })
        })
        .count()
}

/// Token index published in each target Secret, summed: the number of tokens published.
fn published_tokens(api: &ApiServer) -> u64 {
    use base64::Engine;
    api.list_json("secrets", Some(NS))
        .iter()
        .filter(|s| s["metadata"]["labels"]["tokensync.io/role"].as_str() != Some("state"))
        .filter_map(|s| s["data"]["access_token"].as_str())
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter_map(|t| String::from_utf8(t).ok()?.rsplit_once('.')?.1.parse::<u64>().ok())
        .sum()
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

/// API requests by verb and resource (`GET secrets`, `APPLY secrets`, `PATCH
/// clientcredentials/status`, ...) divided by `per`: the cost of one token or one renewal.
fn requests_by_verb(records: &[RequestRecord], per: f64) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for r in records {
        let sub = r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
        let meta = if r.metadata_only { " (metadata)" } else { "" };
        let key = format!("{} {}{sub}{meta}", format!("{:?}", r.verb).to_uppercase(), r.resource);
        *counts.entry(key).or_default() += 1.0 / per;
    }
    counts
}

fn renew_at_spread(api: &ApiServer) -> (u32, usize) {
    let mut per_second: BTreeMap<String, u32> = BTreeMap::new();
    for cc in api.list_json("clientcredentials.tokensync.io", Some(NS)) {
        if let Some(at) = cc["status"]["renewAt"].as_str() {
            *per_second.entry(at.to_owned()).or_default() += 1;
        }
    }
    (per_second.values().copied().max().unwrap_or(0), per_second.len())
}

fn populate(api: &ApiServer, o: &Options, issuer_url: &str) {
    for i in 0..o.credentials {
        let name = format!("cc-{i:05}");
        api.put_json(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": format!("{name}-client"), "namespace": NS},
                   "stringData": {"client_id": name, "client_secret": "bench-secret"}}),
        )
        .unwrap();
        api.put_json(
            "clientcredentials.tokensync.io",
            json!({"apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
                   "metadata": {"name": name, "namespace": NS},
                   "spec": {"tokenEndpoint": issuer_url, "credentialsRef": {"name": format!("{name}-client")},
                            "clientAuthentication": "client_secret_post"}}),
        )
        .unwrap();
    }
}

fn populate_unrelated(api: &ApiServer, n: usize) {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 1024]);
    for i in 0..n {
        api.put_json(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": format!("unrelated-{i:06}"), "namespace": NS, "labels": {"app": "other"}},
                   "data": {"payload": blob}}),
        )
        .unwrap();
    }
}

fn renewals_so_far(issuer: &Issuer, from: u64) -> f64 {
    (issuer.total() - from).max(1) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::builder()
        .crd(&tokensync::api::crd())
        .namespaces(&["default", NS])
        .history_limit(500_000)
        // The double's garbage collector scans every object after every write (O(n) per
        // write); nothing is deleted here, so it is off to keep the double out of the way.
        .garbage_collection(false)
        .start()
        .await;
    let (issuer, issuer_url) = Issuer::start(o.lifetime, Duration::from_millis(o.latency_ms)).await;
    populate(&api, &o, &issuer_url);
    let n = o.credentials;
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();

    // 1. Time until all credentials are Ready.
    let created = jiff::Timestamp::now().as_second();
    let started = Instant::now();
    let c1 = Controller::start(&api, dir.path(), &o, 1);
    poll_until("all Ready", Duration::from_secs(1800), || ready_count(&api) == n).await;
    let time_to_ready = started.elapsed().as_secs_f64();
    let first_wave_end = jiff::Timestamp::now().as_second();
    let initial_requests = issuer.total();
    // What issuance cost, per credential, once the echoes of the last writes have settled
    // (until the controller has been idle for a second: no new request in the log). Renewals
    // of the first tokens may start meanwhile (at half of a short lifetime): only requests
    // counted up to all Ready are the issuance's.
    let settle = Instant::now();
    let mut seen = 0;
    while api.requests().len() != seen {
        seen = api.requests().len();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    results.insert("issuance_settled_after_s", json!(settle.elapsed().as_secs_f64()));
    let issuance_log = api.requests();
    // A credential that got more than one token while issuing is a defect: name it, and keep
    // the controller's log for whoever looks into it.
    if initial_requests != n as u64 {
        let log = std::env::temp_dir().join("tokensync-bench-issuance.log");
        let _ = std::fs::copy(dir.path().join("controller-1.log"), &log);
        let more: Vec<String> = api
            .list_json("secrets", Some(NS))
            .iter()
            .filter_map(|s| {
                let token = s["data"]["access_token"].as_str()?;
                let token =
                    String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, token).ok()?)
                        .ok()?;
                (!token.ends_with(".1"))
                    .then(|| format!("{} holds {token}", s["metadata"]["name"].as_str().unwrap_or_default()))
            })
            .collect();
        eprintln!("more than one token while issuing: {more:?}; controller log kept at {}", log.display());
    }
    results.insert("requests_per_first_token", json!(requests_by_verb(&issuance_log, n as f64)));
    results.insert("issuance_writes", json!(writes(&issuance_log)));
    results.insert("time_to_all_ready_s", json!(time_to_ready));
    results.insert("initial_token_requests_per_credential", json!(initial_requests as f64 / n as f64));
    results.insert("issuance_max_requests_per_second", json!(issuer.max_per_second(created, first_wave_end)));
    results.insert("rss_after_issuance_mib", json!(mib(c1.rss_kib())));
    results.insert("peak_rss_during_issuance_mib", json!(mib(c1.peak_rss_kib())));
    results.insert("cpu_s_for_issuance", json!(c1.cpu_seconds()));
    let (planned_max, planned_seconds) = renew_at_spread(&api);
    results.insert("planned_renewals_max_per_second", json!(planned_max));
    results.insert("planned_renewals_distinct_seconds", json!(planned_seconds));

    // 2. Restart with every token valid: no token request. The new process's reconciles of
    // all credentials are awaited through its /metrics.
    let restart = |generation: u32| {
        let api = api.clone();
        let o = o.clone();
        let dir = dir.path().to_owned();
        let issuer = issuer.clone();
        async move {
            let before_requests = issuer.total();
            let before_log = api.requests().len();
            let c = Controller::start(&api, &dir, &o, generation);
            let t = Instant::now();
            loop {
                if c.reconciles().await >= n as u64 {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(900), "restart reconciles");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let log = api.requests()[before_log..].to_vec();
            let w = (writes(&log), requests_by_verb(&log, 1.0));
            (c, issuer.total() - before_requests, t.elapsed().as_secs_f64(), w)
        }
    };
    c1.kill();
    let (c2, restart_requests, restart_s, restart_writes) = restart(2).await;
    results.insert("restart_token_requests", json!(restart_requests));
    results.insert("restart_time_to_reconcile_all_s", json!(restart_s));
    results.insert("restart_writes", json!(restart_writes.0));
    results.insert("restart_requests", json!(restart_writes.1));
    let rss_fresh = c2.rss_kib();
    results.insert("rss_fresh_process_mib", json!(mib(rss_fresh)));
    // The high-water mark of a process that started with every object already there: its
    // initial lists and first reconcile of every credential.
    results.insert("peak_rss_restart_mib", json!(mib(c2.peak_rss_kib())));

    // 5. Unrelated Secrets: a fresh process with and without them, same credentials.
    let mut controller = c2;
    if o.unrelated > 0 {
        populate_unrelated(&api, o.unrelated);
        controller.kill();
        let (c3, requests, _, _) = restart(3).await;
        let rss_with = c3.rss_kib();
        results.insert("unrelated_secrets", json!(o.unrelated));
        results.insert("rss_fresh_process_with_unrelated_mib", json!(mib(rss_with)));
        results.insert("peak_rss_restart_with_unrelated_mib", json!(mib(c3.peak_rss_kib())));
        results.insert("rss_increase_for_unrelated_mib", json!(mib(rss_with) - mib(rss_fresh)));
        results.insert("restart_token_requests_with_unrelated", json!(requests));
        controller = c3;
    }

    // 3/4. Steady state: every credential renewed at least once (plus --steady-seconds).
    if o.steady {
        steady(&api, &o, &issuer, &controller, &mut results).await;
    }
    controller.kill();
    report(&o, results);
}

async fn steady(
    api: &ApiServer,
    o: &Options,
    issuer: &Issuer,
    controller: &Controller,
    results: &mut BTreeMap<&'static str, Value>,
) {
    let n = o.credentials;
    let steady_from = issuer.total();
    let cpu_from = controller.cpu_seconds();
    let log_from = api.requests().len();
    let t = Instant::now();
    let wave_from = jiff::Timestamp::now().as_second();
    let min_window = Duration::from_secs(o.steady_seconds);
    poll_until("a renewal of every credential", Duration::from_secs(o.lifetime * 3 + 900), || {
        issuer.total() >= steady_from + n as u64 && t.elapsed() >= min_window
    })
    .await;
    let renewals = issuer.total() - steady_from;
    let cpu = controller.cpu_seconds() - cpu_from;
    let steady_log = api.requests()[log_from..].to_vec();
    let w = writes(&steady_log);
    results.insert("requests_per_renewal", json!(requests_by_verb(&steady_log, renewals_so_far(issuer, steady_from))));
    let wave_to = jiff::Timestamp::now().as_second();
    results.insert("steady_window_s", json!(t.elapsed().as_secs_f64()));
    results.insert("renewals_in_window", json!(renewals));
    results.insert("cpu_s_per_1000_renewals", json!(cpu / renewals as f64 * 1000.0));
    results.insert("renewal_max_requests_per_second", json!(issuer.max_per_second(wave_from, wave_to)));
    let per = |x: usize| x as f64 / renewals as f64;
    results.insert(
        "writes_per_renewal",
        json!({"state_apply": per(w.state_applies), "target_apply": per(w.target_applies),
               "status_patch": per(w.status_patches), "events": per(w.events), "other": per(w.other),
               "unchanged": per(w.unchanged)}),
    );
    results.insert("rss_steady_mib", json!(mib(controller.rss_kib())));
    results.insert("peak_rss_steady_process_mib", json!(mib(controller.peak_rss_kib())));

    // 2. Requests per published token: requests / tokens published (sum of token indices).
    let mut ratio = 0.0;
    for _ in 0..50 {
        let (requests, published) = (issuer.total(), published_tokens(api));
        ratio = requests as f64 / published as f64;
        if requests == published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    results.insert("token_requests_per_published_token", json!(ratio));
}

fn report(o: &Options, results: BTreeMap<&str, Value>) {
    let n = o.credentials;
    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))),
        "mem_total_kib": std::fs::read_to_string("/proc/meminfo").ok()
            .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())),
    });
    let options = json!({"credentials": n, "lifetime_s": o.lifetime, "unrelated": o.unrelated,
                         "latency_ms": o.latency_ms, "concurrency": o.concurrency, "steady_seconds": o.steady_seconds,
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

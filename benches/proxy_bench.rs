//! proxy-bench: throughput and latency of `tokensync agent --proxy`, side by side with the
//! same load sent directly to the upstream, in one run.
//!
//! ```text
//! cargo bench --bench proxy-bench -- [--seconds S] [--connections C] [--threads T]
//!     [--rounds R] [--upstream-cpu-us N] [--json]
//! ```
//! Defaults: 10 s per measurement, 64 connections, 2 wrk threads, 3 rounds, an upstream
//! that does no work. `--upstream-cpu-us N` makes the upstream spin N µs of CPU per request,
//! to show how the comparison changes when the upstream does work of its own.
//!
//! Besides the loaded measurements (C connections, the targets), each round also measures one
//! connection (wrk -t1 -c1), direct and proxied: without queueing, the difference is the
//! time the proxy itself adds to a request.
//!
//! - The upstream is a small hyper HTTP/1.1 server on 127.0.0.1 in this process (its own
//!   2-thread runtime): it answers `200 ok` (2 bytes) to requests carrying
//!   `Authorization: Bearer bench-token` and `401` to others, so a run in which the proxy did
//!   not add the token fails. The same server issues that token at `POST /token`.
//! - The proxy is the shipped binary, `tokensync agent --proxy`, as a child process (its
//!   own CPU time is read from /proc), logging at `warn`.
//! - The load generator is wrk (`apt-get install wrk`), HTTP/1.1 keep-alive, `--latency`.
//!   Each round measures direct and proxied back to back, alternating which goes first, after
//!   a warm-up of both; the figures are the medians over the rounds. Any non-2xx answer or
//!   socket error fails the run.
//!
//! Targets (issue 22): proxied throughput at least 90 % of direct, at most 200 µs added at
//! p99. The run prints both, with the load average before and after (the machine may be
//! shared) and the CPU time per request of the proxy and of the upstream, which is what
//! decides throughput when wrk, proxy and upstream share the same cores.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    connections: u32,
    threads: u32,
    rounds: u32,
    upstream_cpu_us: u64,
    json: bool,
}

fn options() -> Options {
    let mut o = Options { seconds: 10, connections: 64, threads: 2, rounds: 3, upstream_cpu_us: 0, json: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => o.seconds = value().parse().expect("--seconds N"),
            "--connections" => o.connections = value().parse().expect("--connections N"),
            "--threads" => o.threads = value().parse().expect("--threads N"),
            "--rounds" => o.rounds = value().parse().expect("--rounds N"),
            "--upstream-cpu-us" => o.upstream_cpu_us = value().parse().expect("--upstream-cpu-us N"),
            "--json" => o.json = true,
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

const TOKEN: &str = "bench-token";

/// CPU the upstream spends per request (`--upstream-cpu-us`), in µs.
static UPSTREAM_CPU_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn upstream(request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/token" {
        let body = json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}).to_string();
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap());
    }
    let authorized = request.headers().get("authorization").is_some_and(|v| v == "Bearer bench-token");
    let status = if authorized { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    let work = Duration::from_micros(UPSTREAM_CPU_US.load(std::sync::atomic::Ordering::Relaxed));
    if !work.is_zero() {
        let start = Instant::now();
        while start.elapsed() < work {
            std::hint::spin_loop();
        }
    }
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"ok")))
        .unwrap())
}

/// The upstream (and token endpoint) on its own 2-thread runtime.
fn start_upstream() -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), hyper::service::service_fn(upstream)).await;
            });
        }
    });
    (addr, runtime)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(upstream: SocketAddr, proxy_port: u16) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("credentials.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-client, namespace: bench}}\n\
                 stringData: {{client_id: bench, client_secret: bench-secret}}\n---\n\
                 apiVersion: tokensync.io/v1alpha1\nkind: ClientCredential\n\
                 metadata: {{name: upstream, namespace: bench}}\n\
                 spec:\n  tokenEndpoint: http://{upstream}/token\n  credentialsRef: {{name: bench-client}}\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tokensync"))
            .args(["agent", "-f"])
            .arg(&manifest)
            .arg("--out-dir")
            .arg(dir.path().join("out"))
            .args(["--allow-http", "--watch-interval", "0", "--proxy"])
            .arg(format!("bench/upstream={proxy_port}=http://{upstream}/"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the tokensync binary");
        Agent { child, _dir: dir }
    }

    /// User + system CPU seconds of the agent so far (/proc/PID/stat, clock ticks of 1/100 s).
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_else(|e| panic!("cannot read {stat_path}: {e}"));
    let after_name = &stat[stat.rfind(')').expect("a /proc stat line") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One wrk measurement.
#[derive(Debug, Clone, Copy)]
struct Measure {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
}

fn duration_us(text: &str) -> f64 {
    let text = text.trim();
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        panic!("unknown wrk duration {text:?}")
    };
    number.parse::<f64>().unwrap_or_else(|_| panic!("wrk duration {text:?}")) * factor
}

fn parse_wrk(output: &str) -> Measure {
    assert!(
        !output.contains("Non-2xx or 3xx responses") && !output.contains("Socket errors"),
        "wrk saw failed requests:\n{output}"
    );
    let field = |prefix: &str| {
        output
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{output}"))
            .trim()
            .to_owned()
    };
    let requests = output
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap()))
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{output}"));
    Measure {
        requests_per_second: field("Requests/sec:").parse().unwrap(),
        p50_us: duration_us(&field("50%")),
        p99_us: duration_us(&field("99%")),
        requests,
    }
}

fn wrk(options: &Options, url: &str, seconds: u64, direct: bool) -> Measure {
    wrk_with(options.threads, options.connections, url, seconds, direct)
}

fn wrk_with(threads: u32, connections: u32, url: &str, seconds: u64, direct: bool) -> Measure {
    let mut command = Command::new("wrk");
    command.arg(format!("-t{threads}")).arg(format!("-c{connections}")).arg(format!("-d{seconds}s")).arg("--latency");
    if direct {
        command.args(["-H", "Authorization: Bearer bench-token"]);
    }
    let output = command.arg(url).output().expect("wrk is not installed: apt-get install -y wrk");
    assert!(output.status.success(), "wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn main() {
    let options = options();
    UPSTREAM_CPU_US.store(options.upstream_cpu_us, std::sync::atomic::Ordering::Relaxed);
    let load_before = load_average();
    let (upstream, _runtime) = start_upstream();
    let proxy_port = free_port();
    let agent = Agent::start(upstream, proxy_port);
    let direct_url = format!("http://{upstream}/");
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/");

    // Until the proxy serves the token (one request with a deadline; nothing else to wait on
    // across the process boundary).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = Command::new("wrk").args(["-t1", "-c1", "-d1s"]).arg(&proxy_url).output().ok();
        if status.is_some_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("Non-2xx")) {
            break;
        }
        assert!(Instant::now() < deadline, "the proxy did not serve a token within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Warm-up: connections, pools, caches.
    wrk(&options, &direct_url, 2, true);
    wrk(&options, &proxy_url, 2, false);

    let own_stat = "/proc/self/stat";
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    let (mut single_direct, mut single_proxied) = (Vec::new(), Vec::new());
    let (mut agent_cpu, mut upstream_cpu_proxied, mut upstream_cpu_direct) = (0.0, 0.0, 0.0);
    for round in 0..options.rounds {
        let run_direct = |direct: &mut Vec<Measure>, cpu: &mut f64| {
            let before = cpu_seconds(own_stat);
            direct.push(wrk(&options, &direct_url, options.seconds, true));
            *cpu += cpu_seconds(own_stat) - before;
        };
        let mut run_proxied = |proxied: &mut Vec<Measure>| {
            let (agent_before, own_before) = (agent.cpu_seconds(), cpu_seconds(own_stat));
            proxied.push(wrk(&options, &proxy_url, options.seconds, false));
            agent_cpu += agent.cpu_seconds() - agent_before;
            upstream_cpu_proxied += cpu_seconds(own_stat) - own_before;
        };
        if round % 2 == 0 {
            run_direct(&mut direct, &mut upstream_cpu_direct);
            run_proxied(&mut proxied);
        } else {
            run_proxied(&mut proxied);
            run_direct(&mut direct, &mut upstream_cpu_direct);
        }
        single_direct.push(wrk_with(1, 1, &direct_url, options.seconds, true));
        single_proxied.push(wrk_with(1, 1, &proxy_url, options.seconds, false));
        let (d, p) = (direct.last().unwrap(), proxied.last().unwrap());
        eprintln!(
            "round {}: direct {:.0} req/s p50 {:.0} µs p99 {:.0} µs | proxy {:.0} req/s p50 {:.0} µs p99 {:.0} µs",
            round + 1,
            d.requests_per_second,
            d.p50_us,
            d.p99_us,
            p.requests_per_second,
            p.p50_us,
            p.p99_us
        );
    }
    let load_after = load_average();
    let pick = |v: &[Measure], f: fn(&Measure) -> f64| median(v.iter().map(f).collect());
    let (d_rps, d_p50, d_p99) =
        (pick(&direct, |m| m.requests_per_second), pick(&direct, |m| m.p50_us), pick(&direct, |m| m.p99_us));
    let (p_rps, p_p50, p_p99) =
        (pick(&proxied, |m| m.requests_per_second), pick(&proxied, |m| m.p50_us), pick(&proxied, |m| m.p99_us));
    let (s_d_p50, s_d_p99) = (pick(&single_direct, |m| m.p50_us), pick(&single_direct, |m| m.p99_us));
    let (s_p_p50, s_p_p99) = (pick(&single_proxied, |m| m.p50_us), pick(&single_proxied, |m| m.p99_us));
    let proxied_requests: u64 = proxied.iter().map(|m| m.requests).sum();
    let direct_requests: u64 = direct.iter().map(|m| m.requests).sum();
    let agent_us_per_request = agent_cpu * 1e6 / proxied_requests as f64;
    let upstream_us_per_request = upstream_cpu_direct * 1e6 / direct_requests as f64;
    let upstream_us_per_proxied_request = upstream_cpu_proxied * 1e6 / proxied_requests as f64;
    let ratio = p_rps / d_rps;
    let added_p50 = p_p50 - d_p50;
    let added_p99 = p_p99 - d_p99;
    // The p99 of a saturated run is mostly scheduling noise of the shared cores (milliseconds,
    // either side): the difference of two such p99s can even be negative. A proxy that adds
    // more than 200 µs at p50 does not meet "at most 200 µs added at p99", whatever that
    // difference says, so the target is judged on both.
    let latency_target_met = added_p50 <= 200.0 && added_p99 <= 200.0;
    let result = json!({
        "load_generator": "wrk",
        "connections": options.connections,
        "wrk_threads": options.threads,
        "seconds": options.seconds,
        "rounds": options.rounds,
        "upstream_cpu_us": options.upstream_cpu_us,
        "direct": {"requests_per_second": d_rps, "p50_us": d_p50, "p99_us": d_p99},
        "proxied": {"requests_per_second": p_rps, "p50_us": p_p50, "p99_us": p_p99},
        "throughput_ratio": ratio,
        "added_p50_us": added_p50,
        "added_p99_us": added_p99,
        "one_connection": {
            "direct": {"p50_us": s_d_p50, "p99_us": s_d_p99},
            "proxied": {"p50_us": s_p_p50, "p99_us": s_p_p99},
            "added_p50_us": s_p_p50 - s_d_p50,
            "added_p99_us": s_p_p99 - s_d_p99,
        },
        "proxy_cpu_us_per_request": agent_us_per_request,
        "upstream_cpu_us_per_request": upstream_us_per_request,
        "upstream_cpu_us_per_proxied_request": upstream_us_per_proxied_request,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "targets_met": {"throughput_ratio_at_least_0.90": ratio >= 0.90, "added_p99_at_most_200us": latency_target_met},
    });
    if options.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
        return;
    }
    println!(
        "load generator: wrk, {} connections, {} threads, {} s x {} rounds (medians); upstream work {} µs/request",
        options.connections, options.threads, options.seconds, options.rounds, options.upstream_cpu_us
    );
    println!("load average before: {load_before}; after: {load_after}");
    println!("| | requests/s | p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    println!("| direct | {d_rps:.0} | {d_p50:.0} µs | {d_p99:.0} µs |");
    println!("| through the proxy | {p_rps:.0} | {p_p50:.0} µs | {p_p99:.0} µs |");
    println!("throughput: {:.1} % of direct (target >= 90 %)", ratio * 100.0);
    println!(
        "added latency: p50 {added_p50:.0} µs, p99 {added_p99:.0} µs (target p99 <= 200 µs: {})",
        if latency_target_met { "met" } else { "missed" }
    );
    println!(
        "one connection: direct p50 {s_d_p50:.0} µs p99 {s_d_p99:.0} µs | proxy p50 {s_p_p50:.0} µs p99 {s_p_p99:.0} µs \
         | added p50 {:.0} µs p99 {:.0} µs",
        s_p_p50 - s_d_p50,
        s_p_p99 - s_d_p99
    );
    println!(
        "CPU per request: proxy {agent_us_per_request:.1} µs; upstream {upstream_us_per_request:.1} µs direct, \
         {upstream_us_per_proxied_request:.1} µs proxied (wrk not counted)"
    );
}

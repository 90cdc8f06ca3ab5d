//! `tokensync agent --proxy NAME=LISTEN=UPSTREAM`: an authenticating reverse proxy for
//! programs that cannot re-read a token file (a Prometheus `remote_write`, an SDK that takes a
//! static header, a shell script). It listens on LISTEN (loopback unless
//! `--proxy-allow-remote`), forwards every request to the fixed UPSTREAM with credential
//! NAME's current token, and is never an open proxy.
//!
//! The pieces, one job each:
//! - [`listener`]: accepts connections (HTTP/1.1 and h2c) and shuts down gracefully;
//! - [`forward`]: one request: refuse, or take the token, forward, pass the answer back;
//! - [`hygiene`]: request targets, methods and Host headers refused, hop-by-hop headers;
//! - [`credential_header`]: which header carries the token (the target template's, or
//!   `Authorization: <token_type> <token>`);
//! - [`challenge`]: whether a 401 says the token is invalid (RFC 6750 `invalid_token`);
//! - [`upstream`]: the base URL and the pooled HTTP/1.1 + HTTP/2 client with TLS;
//! - [`answer`]: the proxy's own answers (refusals, 502, 503), JSON without secrets;
//! - [`metrics`]: requests by upstream and status, added latency, early renewals.
//!
//! The token comes from the credential's worker through [`super::live`], in memory.

pub mod answer;
pub mod challenge;
pub mod credential_header;
pub mod forward;
pub mod hygiene;
pub mod listener;
pub mod metrics;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use url::Url;

use super::live::LiveTokens;
use crate::engine_args::duration_arg;
use forward::Forwarder;
use hygiene::HostPolicy;
use metrics::ProxyMetrics;
use upstream::Upstream;

/// The proxy's flags of `tokensync agent`.
#[derive(Args, Debug, Clone, Default)]
pub struct ProxyArgs {
    /// Serve credential [NAMESPACE/]NAME as an authenticating reverse proxy: listen on LISTEN
    /// (PORT, localhost:PORT or IP:PORT; a bare port means 127.0.0.1) and forward every
    /// request to the fixed UPSTREAM base URL with the credential's current token.
    /// Repeatable (one listener each); in the environment, separated by spaces. Incoming
    /// Authorization headers are replaced, never forwarded.
    #[arg(
        long = "proxy",
        value_name = "[NS/]NAME=LISTEN=UPSTREAM",
        value_parser = parse_proxy_spec,
        env = "TOKENSYNC_PROXY",
        value_delimiter = ' '
    )]
    pub proxies: Vec<ProxySpec>,

    /// Permit --proxy listen addresses that are not loopback. Anyone who reaches such an
    /// address acts as the client: put it behind a NetworkPolicy or a firewall.
    #[arg(long)]
    pub proxy_allow_remote: bool,

    /// Host names (besides localhost, IP addresses and the upstream's host) callers may
    /// send in the Host header, e.g. a Service name with --proxy-allow-remote. Other names
    /// are refused (421), which defeats DNS rebinding from a browser. Comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub proxy_allowed_hosts: Vec<String>,

    /// PEM file with the CA certificates that sign the upstreams' TLS certificates, used
    /// instead of the system's trust store.
    #[arg(long, value_name = "FILE")]
    pub proxy_ca_file: Option<PathBuf>,

    /// Least time between two renewals triggered by an upstream's `401` with
    /// `WWW-Authenticate: Bearer error="invalid_token"`, per credential. Such a 401 asks for
    /// one early renewal; further ones within this interval ask for none.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub proxy_renewal_interval: Duration,
}

/// One `--proxy NAME=LISTEN=UPSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    pub namespace: String,
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: Url,
}

impl ProxySpec {
    /// `namespace/name`, the credential's id in the agent.
    pub fn credential(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Parses `[NS/]NAME=LISTEN=UPSTREAM` (clap value parser). The upstream is everything after
/// the second `=`, so it may hold `=` itself.
pub fn parse_proxy_spec(s: &str) -> Result<ProxySpec, String> {
    const SHAPE: &str = "expected [NAMESPACE/]NAME=LISTEN=UPSTREAM, e.g. chatlayer=8081=https://api.chatlayer.ai";
    let mut parts = s.splitn(3, '=');
    let (Some(credential), Some(listen), Some(upstream)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SHAPE.into());
    };
    let (namespace, name) = match credential.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("default", credential),
    };
    if !super::files::is_safe_component(namespace) || !super::files::is_safe_component(name) {
        return Err(format!("{credential:?} is not a ClientCredential name ({SHAPE})"));
    }
    Ok(ProxySpec {
        namespace: namespace.into(),
        name: name.into(),
        listen: parse_listen(listen)?,
        upstream: upstream::parse_base_url(upstream)?,
    })
}

/// `PORT` (loopback), `localhost:PORT`, `IP:PORT` or `[IPv6]:PORT`. A Go-style `:PORT`
/// (all interfaces there) is refused rather than guessed.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| format!("{s:?}: not a port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if s.starts_with(':') {
        return Err(format!(
            "{s:?}: give PORT for loopback or HOST:PORT (0.0.0.0:PORT for all interfaces, with --proxy-allow-remote)"
        ));
    }
    s.parse::<SocketAddr>().map_err(|_| format!("{s:?} is not PORT or HOST:PORT with an IP address"))
}

/// The running proxies.
pub struct Proxies {
    running: Vec<Running>,
    stop: tokio::sync::watch::Sender<bool>,
}

struct Running {
    spec: ProxySpec,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxies need from the rest of the agent.
pub struct Context<'a> {
    pub live: &'a LiveTokens,
    pub metrics: Option<&'a ProxyMetrics>,
    /// `--allow-http`: plain http upstreams are permitted.
    pub allow_http: bool,
    /// The credentials in the configuration at start (`namespace/name`).
    pub credentials: &'a [String],
}

impl Proxies {
    /// Checks every `--proxy`, binds its listener and starts serving. Fails, before anything
    /// is served, on an unknown credential, a refused address or upstream, or a bind error.
    pub fn start(args: &ProxyArgs, context: Context<'_>) -> Result<Proxies, String> {
        let (stop, _) = tokio::sync::watch::channel(false);
        if args.proxies.is_empty() {
            return Ok(Proxies { running: Vec::new(), stop });
        }
        let client = upstream::client(args.proxy_ca_file.as_deref())?;
        let mut bound = Vec::new();
        for spec in &args.proxies {
            let flag = format!("--proxy {}={}={}", spec.credential(), spec.listen, spec.upstream);
            let id = spec.credential();
            if !context.credentials.contains(&id) {
                return Err(format!("{flag}: no ClientCredential {id} in the configuration"));
            }
            if spec.upstream.scheme() == "http" && !context.allow_http {
                return Err(format!(
                    "{flag}: a plain http upstream would carry the token in clear; use https, or run with --allow-http"
                ));
            }
            if !spec.listen.ip().is_loopback() {
                if !args.proxy_allow_remote {
                    return Err(format!(
                        "{flag}: {} is not a loopback address, and anyone who reaches it acts as {id}; \
                         pass --proxy-allow-remote to permit it",
                        spec.listen
                    ));
                }
                tracing::warn!(
                    credential = %id,
                    listen = %spec.listen,
                    "the proxy listens on a non-loopback address: anyone who reaches it acts as the client"
                );
            }
            let listener = std::net::TcpListener::bind(spec.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("{flag}: cannot listen on {}: {e}", spec.listen))?;
            let addr = listener.local_addr().map_err(|e| format!("{flag}: {e}"))?;
            bound.push((spec.clone(), addr, listener));
        }
        let mut running = Vec::new();
        for (spec, addr, listener) in bound {
            let upstream = Upstream::new(&spec.upstream);
            let hosts = HostPolicy::new(&args.proxy_allowed_hosts, upstream.host());
            let counters = context.metrics.map(|m| m.for_proxy(&spec.namespace, &spec.name, upstream.label()));
            let forwarder = Arc::new(Forwarder::new(
                context.live.slot(&spec.credential()),
                upstream,
                client.clone(),
                hosts,
                counters,
            ));
            tracing::info!(credential = %spec.credential(), listen = %addr, upstream = %spec.upstream, "proxy listening");
            let task = tokio::spawn(listener::serve(listener, forwarder, stop.subscribe()));
            running.push(Running { spec, addr, task });
        }
        Ok(Proxies { running, stop })
    }

    /// The address each proxy listens on, with its credential (`namespace/name`), in the
    /// order of the flags.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.running.iter().map(|r| (r.spec.credential(), r.addr)).collect()
    }

    /// Stops accepting, lets requests in flight finish (up to [`listener::GRACE`]), then
    /// returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for running in self.running {
            let _ = running.task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback() {
        let spec = parse_proxy_spec("demo=8081=https://api.example/v1").unwrap();
        assert_eq!(spec.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!((spec.namespace.as_str(), spec.name.as_str()), ("default", "demo"));
        assert_eq!(spec.upstream.as_str(), "https://api.example/v1");
        assert_eq!(parse_proxy_spec("a/b=localhost:9=https://x").unwrap().listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(parse_proxy_spec("a/b=[::1]:9=https://x").unwrap().listen, "[::1]:9".parse().unwrap());
        assert_eq!(parse_proxy_spec("a/b=0.0.0.0:9=https://x").unwrap().listen, "0.0.0.0:9".parse().unwrap());
    }

    #[test]
    fn the_upstream_may_hold_equals_signs_but_not_a_query_or_credentials() {
        assert_eq!(parse_proxy_spec("a/b=9=https://x/p=q").unwrap().upstream.path(), "/p=q");
        for bad in [
            "a/b=9=https://x/?q=1",
            "a/b=9=https://user:pw@x/",
            "a/b=9=ftp://x/",
            "a/b=9=https://x/#f",
            "a/b=:9=https://x",
            "a/b=9",
            "a/b/c=9=https://x",
            "a/b=host:9=https://x",
        ] {
            assert!(parse_proxy_spec(bad).is_err(), "{bad}");
        }
    }
}

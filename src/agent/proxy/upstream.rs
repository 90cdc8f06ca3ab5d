//! The upstream: a fixed base URL, and one pooled client for every proxy of the agent.
//!
//! hyper-util's client keeps idle connections per scheme and authority (keep-alive pooling),
//! speaks HTTP/2 when the upstream offers it by ALPN and HTTP/1.1 otherwise, streams bodies
//! both ways, and never follows a redirect: a 3xx is an answer like any other, passed back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

/// How long a connection to an upstream may take to open (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Checks an UPSTREAM base URL: http or https, a host, no credentials, query or fragment
/// (requests bring their own query; a base with one could not be joined unambiguously).
pub fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?}: the upstream must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: the upstream URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{s:?}: the upstream URL must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?}: the upstream base URL must not have a query or fragment"));
    }
    Ok(url)
}

/// Where requests go: the base URL's scheme and authority, and its path as a prefix.
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host: String,
    /// The base path without its trailing slash ("" for the root).
    prefix: String,
    /// The base URL as configured, for metrics and logs (it carries no credentials).
    label: String,
}

impl Upstream {
    /// From a URL [`parse_base_url`] accepted.
    pub fn new(base: &Url) -> Upstream {
        let host = base.host_str().unwrap_or_default().to_owned();
        let authority = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        Upstream {
            scheme: if base.scheme() == "https" { Scheme::HTTPS } else { Scheme::HTTP },
            authority: authority.parse().expect("a host and port from a parsed URL form an authority"),
            host: host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(),
            prefix: base.path().trim_end_matches('/').to_owned(),
            label: base.as_str().trim_end_matches('/').to_owned(),
        }
    }

    /// The upstream's host name (or address), lower case, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The upstream URI for an incoming request's path and query: the base path, then the
    /// request's (origin-form, so it starts with `/`).
    pub fn uri_for(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = incoming.path_and_query().map(PathAndQuery::as_str).unwrap_or("/");
        let joined = if self.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)?
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", self.prefix))?
        };
        Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone()).path_and_query(joined).build()
    }
}

/// The client all proxies share: trust roots from `ca_file`, or else the system's store
/// (webpki-roots when the system has none); ALPN offers h2 and http/1.1.
pub fn client(ca_file: Option<&Path>) -> Result<UpstreamClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read --proxy-ca-file {}: {e}", path.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--proxy-ca-file {} is not valid PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("--proxy-ca-file {} holds no PEM certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--proxy-ca-file {} holds an unusable certificate: {e}", path.display()))?;
        }
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system trust store entry could not be read");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::info!("no system trust store found; upstream certificates are checked against the Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> Upstream {
        Upstream::new(&parse_base_url(base).unwrap())
    }

    #[test]
    fn the_base_path_prefixes_the_request_path_and_the_query_is_kept() {
        let uri = |base: &str, path: &str| upstream(base).uri_for(&path.parse().unwrap()).unwrap().to_string();
        assert_eq!(uri("https://api.example/v1", "/users?page=2"), "https://api.example/v1/users?page=2");
        assert_eq!(uri("https://api.example/v1/", "/users"), "https://api.example/v1/users");
        assert_eq!(uri("https://api.example", "/"), "https://api.example/");
        assert_eq!(uri("http://127.0.0.1:8080/", "/a?b=c"), "http://127.0.0.1:8080/a?b=c");
        assert_eq!(uri("https://[::1]:8443/x", "/y"), "https://[::1]:8443/x/y");
    }

    #[test]
    fn the_host_is_lower_case_without_brackets() {
        assert_eq!(upstream("https://API.Example/v1").host(), "api.example");
        assert_eq!(upstream("https://[::1]:8443/").host(), "::1");
        assert_eq!(upstream("https://api.example/v1/").label(), "https://api.example/v1");
    }
}

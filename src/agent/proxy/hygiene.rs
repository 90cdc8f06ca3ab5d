//! What makes the proxy a reverse proxy to one upstream and never an open one, and which
//! headers belong to one hop only.
//!
//! Refused before any token is looked at:
//! - absolute-form (`GET http://elsewhere/ HTTP/1.1`) and authority-form (`CONNECT`) request
//!   targets, and `OPTIONS *`: those are for forward proxies;
//! - `TRACE`: the upstream would echo the request, token included, back to the caller;
//! - a Host (or HTTP/2 `:authority`) that names neither this proxy nor the upstream. The
//!   upstream is fixed, so a foreign Host cannot redirect a request; it is refused because it
//!   is what DNS rebinding looks like: a web page whose name was re-pointed to 127.0.0.1
//!   sends its own name as Host, and must not get answers made with the token. IP addresses
//!   and `localhost` are accepted with any port (port forwarding changes the port), other
//!   names only when configured;
//! - path dot-segments (`/v1/../admin`), so the base URL's path stays a prefix;
//! - an HTTP/1.1 request without Host (RFC 9112 §3.2).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it lists, plus
//! `Proxy-Connection`, `Keep-Alive`, `TE` (except `TE: trailers`), `Transfer-Encoding`,
//! `Upgrade`, and the proxy authentication headers, are removed in both directions.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AbsoluteForm,
    Connect,
    Trace,
    AsteriskForm,
    MissingHost,
    ForeignHost,
    DotSegment,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Connect | Refusal::Trace => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::ForeignHost => StatusCode::MISDIRECTED_REQUEST,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A short code for the JSON answer and the metrics.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::AbsoluteForm => "absolute_form_refused",
            Refusal::Connect => "connect_refused",
            Refusal::Trace => "trace_refused",
            Refusal::AsteriskForm => "asterisk_form_refused",
            Refusal::MissingHost => "missing_host",
            Refusal::ForeignHost => "foreign_host",
            Refusal::DotSegment => "dot_segment_refused",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::AbsoluteForm => {
                "this is a reverse proxy to one fixed upstream, not a forward proxy: send origin-form request targets (GET /path)"
            }
            Refusal::Connect => "CONNECT is refused: this is a reverse proxy to one fixed upstream, not a tunnel",
            Refusal::Trace => "TRACE is refused: the upstream would echo the credentials back",
            Refusal::AsteriskForm => "OPTIONS * is refused: send requests for paths of the upstream",
            Refusal::MissingHost => "an HTTP/1.1 request needs a Host header",
            Refusal::ForeignHost => {
                "the Host header names neither this proxy nor its upstream (see --proxy-allowed-hosts)"
            }
            Refusal::DotSegment => "paths with . or .. segments are refused",
        }
    }
}

/// The Host names accepted.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Lower case: the upstream's host and the configured names.
    names: Vec<String>,
}

impl HostPolicy {
    pub fn new(extra: &[String], upstream_host: &str) -> HostPolicy {
        let mut names: Vec<String> =
            extra.iter().map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect();
        names.push(upstream_host.to_ascii_lowercase());
        HostPolicy { names }
    }

    /// Whether a Host header value (`host[:port]`) is acceptable; the port is not checked.
    pub fn allows(&self, authority: &str) -> bool {
        let Some(host) = host_part(authority) else { return false };
        if host.parse::<IpAddr>().is_ok() {
            return true;
        }
        let host = host.trim_end_matches('.');
        host.eq_ignore_ascii_case("localhost")
            || host.len() > ".localhost".len()
                && host[host.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }
}

/// The host of `host[:port]` or `[v6][:port]`, brackets removed; None when malformed.
fn host_part(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return (after.is_empty() || after.starts_with(':')).then_some(host);
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => authority,
    };
    (!host.is_empty()).then_some(host)
}

/// Refuses what an open proxy would forward; see the module documentation.
pub fn check<B>(request: &Request<B>, hosts: &HostPolicy) -> Result<(), Refusal> {
    let method = request.method();
    if method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    if method == Method::TRACE {
        return Err(Refusal::Trace);
    }
    let uri = request.uri();
    if uri.path() == "*" {
        return Err(Refusal::AsteriskForm);
    }
    let host = if request.version() == Version::HTTP_2 {
        // HTTP/2 always carries :scheme and :authority; the authority is the Host.
        match uri.authority() {
            Some(authority) => Some(authority.as_str()),
            None => request.headers().get(header::HOST).and_then(|h| h.to_str().ok()),
        }
    } else {
        if uri.scheme().is_some() || uri.authority().is_some() {
            return Err(Refusal::AbsoluteForm);
        }
        match request.headers().get(header::HOST) {
            Some(value) => Some(value.to_str().unwrap_or("")),
            None if request.version() == Version::HTTP_11 => return Err(Refusal::MissingHost),
            None => None,
        }
    };
    if host.is_some_and(|h| !hosts.allows(h)) {
        return Err(Refusal::ForeignHost);
    }
    if has_dot_segment(uri.path()) {
        return Err(Refusal::DotSegment);
    }
    Ok(())
}

/// Whether a path has a `.` or `..` segment, also percent-encoded (`%2e`).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        segment.len() <= 6 && !segment.is_empty() && {
            let mut rest = segment;
            let mut dots = 0;
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix('.') {
                    rest = r;
                } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
                    rest = &rest[3..];
                } else {
                    return false;
                }
                dots += 1;
            }
            dots <= 2
        }
    })
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers of a request (`request: true`) or response. `TE: trailers`
/// is kept on requests: it is end-to-end in meaning (gRPC needs it) and HTTP/2 allows it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TRANSFER_ENCODING, &header::UPGRADE] {
        headers.remove(name);
    }
    if request {
        headers.remove(header::PROXY_AUTHORIZATION);
        let trailers_only = {
            let mut values = headers.get_all(header::TE).iter();
            matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        };
        if trailers_only {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    } else {
        headers.remove(header::PROXY_AUTHENTICATE);
    }
}

/// `Via` for a request received with `version` (RFC 9110 §7.6.3: a gateway sends one in
/// every request it forwards), named by a pseudonym rather than a host name.
pub fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 tokensync",
        Version::HTTP_10 => "1.0 tokensync",
        Version::HTTP_2 => "2 tokensync",
        Version::HTTP_3 => "3 tokensync",
        _ => "1.1 tokensync",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    }

    fn policy() -> HostPolicy {
        HostPolicy::new(&["svc.team-a.svc".into()], "api.example")
    }

    #[test]
    fn origin_form_requests_for_this_proxy_pass() {
        for host in [
            "localhost:8081",
            "127.0.0.1:8081",
            "[::1]:8081",
            "10.1.2.3:9999",
            "api.example",
            "LOCALHOST",
            "svc.team-a.svc:80",
            "app.localhost:1",
        ] {
            assert_eq!(check(&request("GET", "/v1/users?x=1", Some(host)), &policy()), Ok(()), "{host}");
        }
        let http10 = Request::builder().uri("/").version(Version::HTTP_10).body(()).unwrap();
        assert_eq!(check(&http10, &policy()), Ok(()), "HTTP/1.0 needs no Host");
    }

    #[test]
    fn forward_proxy_requests_are_refused() {
        let p = policy();
        assert_eq!(
            check(&request("GET", "http://evil.example/", Some("evil.example")), &p),
            Err(Refusal::AbsoluteForm)
        );
        assert_eq!(check(&request("GET", "http://localhost/", Some("localhost")), &p), Err(Refusal::AbsoluteForm));
        assert_eq!(check(&request("CONNECT", "evil.example:443", Some("evil.example:443")), &p), Err(Refusal::Connect));
        assert_eq!(check(&request("TRACE", "/", Some("localhost")), &p), Err(Refusal::Trace));
        assert_eq!(check(&request("OPTIONS", "*", Some("localhost")), &p), Err(Refusal::AsteriskForm));
        assert_eq!(check(&request("GET", "/", None), &p), Err(Refusal::MissingHost));
        for host in ["evil.example", "evil.example:8081", "localhost.evil.example", "", "a:b:c", "[::1"] {
            assert_eq!(check(&request("GET", "/", Some(host)), &p), Err(Refusal::ForeignHost), "{host:?}");
        }
        for path in ["/v1/../admin", "/..", "/./x", "/v1/%2e%2E/admin", "/%2e/x"] {
            assert_eq!(check(&request("GET", path, Some("localhost")), &p), Err(Refusal::DotSegment), "{path}");
        }
        for path in ["/v1/...", "/a.b/c", "/.well-known/x", "/%2e%2e%2e"] {
            assert_eq!(check(&request("GET", path, Some("localhost")), &p), Ok(()), "{path}");
        }
    }

    #[test]
    fn an_http2_authority_is_checked_like_a_host() {
        let h2 = |authority: &str| {
            Request::builder().uri(format!("http://{authority}/x")).version(Version::HTTP_2).body(()).unwrap()
        };
        assert_eq!(check(&h2("localhost:8081"), &policy()), Ok(()));
        assert_eq!(check(&h2("evil.example:8081"), &policy()), Err(Refusal::ForeignHost));
    }

    #[test]
    fn connection_listed_and_hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("x-end-to-end", "kept"),
            ("content-type", "text/plain"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        remove_hop_by_hop(&mut headers, true);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-end-to-end"]);

        let mut trailers = HeaderMap::new();
        trailers.insert("te", HeaderValue::from_static("Trailers"));
        remove_hop_by_hop(&mut trailers, true);
        assert_eq!(trailers.get("te").unwrap(), "trailers");

        let mut response = HeaderMap::new();
        response.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        response.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        remove_hop_by_hop(&mut response, false);
        assert_eq!(response.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["www-authenticate"]);
    }
}

//! HTTP for token, refresh, discovery and verify requests: one shared connection pool per
//! TLS configuration, timeouts, a response size cap, no redirects, and the operator's
//! endpoint policy (https only unless allowed, host allow/deny lists, cloud metadata and
//! link-local addresses refused).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use url::Url;

use super::config::TlsMaterial;
use super::error::{ErrorKind, TokenError};

/// Which endpoints tokensync may call. Set by the operator (controller flags, CLI flags),
/// not by ClientCredential authors.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    /// Permit plain http:// endpoints (tests, in-cluster endpoints behind a mesh).
    pub allow_http: bool,
    /// When non-empty, only these hosts may be called. `*.example.com` matches subdomains.
    pub allowed_hosts: Vec<String>,
    /// Hosts that may never be called; checked before the allow list.
    pub denied_hosts: Vec<String>,
    /// Refuse link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
    /// fd00:ec2::254, 100.100.100.200, metadata.google.internal), also when a name resolves
    /// to them. On by default: a ClientCredential author must not be able to make the
    /// operator fetch cloud credentials from the metadata service.
    pub deny_metadata_addresses: bool,
}

impl Default for EndpointPolicy {
    fn default() -> Self {
        EndpointPolicy {
            allow_http: false,
            allowed_hosts: Vec::new(),
            denied_hosts: Vec::new(),
            deny_metadata_addresses: true,
        }
    }
}

impl EndpointPolicy {
    /// Checks a URL before any connection is made.
    pub fn check(&self, url: &Url) -> Result<(), TokenError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(TokenError::config(format!(
                    "{url} uses plain http; use https, or run tokensync with --allow-http"
                )));
            }
            other => return Err(TokenError::config(format!("{url}: unsupported scheme {other}"))),
        }
        let host =
            url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if self.denied_hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(TokenError::config(format!("host {host} is on the operator's deny list")));
        }
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(TokenError::config(format!("host {host} is not on the operator's allow list")));
        }
        if self.deny_metadata_addresses {
            let literal = host.parse::<IpAddr>().ok();
            if literal.is_some_and(is_metadata_address) || METADATA_HOSTS.contains(&host.as_str()) {
                return Err(TokenError::config(format!("host {host} is a link-local or cloud metadata address")));
            }
        }
        Ok(())
    }
}

const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata.goog", "metadata"];

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

/// Link-local and well-known cloud metadata addresses.
pub fn is_metadata_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_metadata_address(IpAddr::V4(v4));
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == "fd00:ec2::254".parse::<std::net::Ipv6Addr>().unwrap()
        }
    }
}

/// Resolves names with the system resolver and drops metadata addresses, so a DNS name
/// pointing at 169.254.169.254 is refused like the literal address.
struct PolicyResolver;

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved.iter().copied().filter(|a| !is_metadata_address(a.ip())).collect();
            if allowed.is_empty() && !resolved.is_empty() {
                return Err(format!("{host} resolves only to link-local or cloud metadata addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Limits for every request.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub connect_timeout: Duration,
    /// The whole request, from connect to the last body byte.
    pub request_timeout: Duration,
    /// Larger responses are refused: a token response is a few KiB.
    pub max_response_bytes: usize,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// One outgoing request.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: reqwest::Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    /// Content type and bytes.
    pub body: Option<(&'static str, Vec<u8>)>,
}

/// A response, read whole (within the size cap).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Shared HTTP machinery. Clone is cheap; clones share the connection pools.
#[derive(Clone)]
pub struct Transport {
    policy: Arc<EndpointPolicy>,
    settings: Arc<TransportSettings>,
    /// One client (and pool) per distinct TLS configuration, keyed by a hash of it.
    clients: Arc<Mutex<HashMap<[u8; 32], reqwest::Client>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("policy", &self.policy).field("settings", &self.settings).finish()
    }
}

impl Transport {
    pub fn new(policy: EndpointPolicy, settings: TransportSettings) -> Self {
        Transport { policy: Arc::new(policy), settings: Arc::new(settings), clients: Default::default() }
    }

    pub fn policy(&self) -> &EndpointPolicy {
        &self.policy
    }

    /// Sends a request and reads the response body, refusing bodies over the cap.
    pub async fn send(&self, tls: &TlsMaterial, request: HttpRequest) -> Result<HttpResponse, TokenError> {
        self.policy.check(&request.url)?;
        let client = self.client(tls)?;
        let mut builder = client.request(request.method, request.url.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some((content_type, body)) = request.body {
            builder = builder.header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        }
        let url = &request.url;
        let presented = tls.client_identity.is_some();
        let mut response = builder.send().await.map_err(|e| self.describe(url, e, presented))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let max = self.settings.max_response_bytes;
        if response.content_length().is_some_and(|len| len > max as u64) {
            return Err(TokenError::invalid_response(format!("{url} answered with more than {max} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(url, e, presented))? {
            if body.len() + chunk.len() > max {
                return Err(TokenError::invalid_response(format!("{url} answered with more than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body })
    }

    /// A transport error as a user can act on it. reqwest's messages name the URL and the
    /// root cause (refused, timed out, certificate); no request body is ever part of them.
    /// `presented`: a client certificate was offered, so a certificate alert from the server
    /// is its verdict on that certificate.
    fn describe(&self, url: &Url, error: reqwest::Error, presented: bool) -> TokenError {
        if error.is_timeout() {
            return TokenError::unavailable(format!(
                "{url} did not answer within {}s",
                self.settings.request_timeout.as_secs()
            ));
        }
        let mut cause = String::new();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&error);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        if let Some(alert) = refused_certificate_alert(&cause, presented) {
            // Asking again with the same certificate gets the same answer.
            return TokenError::new(
                ErrorKind::Rejected,
                true,
                format!(
                    "{url} refused the client certificate: the TLS handshake ended with the alert {alert} ({}); \
                     the server does not trust the certificate's issuer or does not accept this certificate",
                    alert_meaning(alert)
                ),
            );
        }
        let what = if error.is_connect() { "cannot connect to" } else { "request failed for" };
        if cause.is_empty() {
            TokenError::unavailable(format!("{what} {url}"))
        } else {
            TokenError::unavailable(format!("{what} {url}: {cause}"))
        }
    }

    fn client(&self, tls: &TlsMaterial) -> Result<reqwest::Client, TokenError> {
        let key = tls_key(tls);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls_config(tls)?)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.settings.connect_timeout)
            .timeout(self.settings.request_timeout)
            .dns_resolver(Arc::new(PolicyResolver))
            .user_agent(concat!("tokensync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TokenError::config(format!("cannot build the HTTP client: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The TLS alerts a server sends about a client certificate (RFC 8446 6.2), when `cause`
/// (rustls: "received fatal alert: BadCertificate") reports one and a certificate was offered.
fn refused_certificate_alert(cause: &str, presented: bool) -> Option<&str> {
    const ABOUT_THE_CERTIFICATE: &[&str] = &[
        "BadCertificate",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateUnknown",
        "UnknownCA",
        "AccessDenied",
        "CertificateRequired",
        "DecryptError",
    ];
    let alert = cause.split("received fatal alert: ").nth(1)?.trim();
    (presented && ABOUT_THE_CERTIFICATE.contains(&alert)).then_some(alert)
}

fn alert_meaning(alert: &str) -> &'static str {
    match alert {
        "UnknownCA" => "the certificate's issuer is not a CA the server trusts",
        "CertificateExpired" => "the server considers the certificate expired",
        "CertificateRevoked" => "the certificate was revoked",
        "CertificateRequired" => "the server required a certificate it could accept",
        "AccessDenied" => "the certificate is valid but not allowed access",
        "DecryptError" => "the certificate's signature or key proof did not verify",
        _ => "the server could not accept the certificate",
    }
}

fn tls_key(tls: &TlsMaterial) -> [u8; 32] {
    let mut hasher = Sha256::new();
    if let Some(ca) = &tls.ca_bundle_pem {
        hasher.update(b"ca");
        hasher.update(ca);
    }
    if let Some(id) = &tls.client_identity {
        hasher.update(b"id");
        hasher.update(&id.certificate_pem);
        hasher.update(id.private_key_pem.expose_secret().as_bytes());
    }
    hasher.finalize().into()
}

fn rustls_config(tls: &TlsMaterial) -> Result<rustls::ClientConfig, TokenError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_bundle_pem {
        Some(pem) => {
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TokenError::config(format!("the CA bundle is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(TokenError::config("the CA bundle holds no PEM certificate"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TokenError::config(format!("the CA bundle holds an unusable certificate: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TokenError::config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = rustls_pemfile::certs(&mut id.certificate_pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TokenError::config(format!("the client certificate is not valid PEM: {e}")))?;
            if chain.is_empty() {
                return Err(TokenError::config("the client certificate Secret holds no PEM certificate"));
            }
            let key = rustls_pemfile::private_key(&mut id.private_key_pem.expose_secret().as_bytes())
                .ok()
                .flatten()
                .ok_or_else(|| TokenError::config("the client certificate's private key is not a PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TokenError::config(format!("the client certificate and key do not fit together: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn certificate_alerts_are_recognised_only_when_a_certificate_was_offered() {
        assert_eq!(refused_certificate_alert("received fatal alert: UnknownCA", true), Some("UnknownCA"));
        assert_eq!(refused_certificate_alert("received fatal alert: UnknownCA", false), None);
        assert_eq!(refused_certificate_alert("received fatal alert: ProtocolVersion", true), None);
        assert_eq!(refused_certificate_alert("connection refused", true), None);
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let policy = EndpointPolicy::default();
        assert!(policy.check(&url("http://auth.example/token")).is_err());
        assert!(policy.check(&url("https://auth.example/token")).is_ok());
        let allow = EndpointPolicy { allow_http: true, ..Default::default() };
        assert!(allow.check(&url("http://auth.example/token")).is_ok());
    }

    #[test]
    fn metadata_addresses_are_refused_by_default() {
        let policy = EndpointPolicy { allow_http: true, ..Default::default() };
        for u in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(policy.check(&url(u)).is_err(), "{u}");
        }
        let off = EndpointPolicy { allow_http: true, deny_metadata_addresses: false, ..Default::default() };
        assert!(off.check(&url("http://169.254.169.254/")).is_ok());
    }

    #[test]
    fn host_lists_match_exact_names_and_wildcard_subdomains() {
        let policy = EndpointPolicy {
            allowed_hosts: vec!["*.example.com".into(), "auth.vendor.io".into()],
            denied_hosts: vec!["evil.example.com".into()],
            ..Default::default()
        };
        assert!(policy.check(&url("https://login.example.com/t")).is_ok());
        assert!(policy.check(&url("https://auth.vendor.io/t")).is_ok());
        assert!(policy.check(&url("https://example.com/t")).is_err());
        assert!(policy.check(&url("https://evil.example.com/t")).is_err());
        assert!(policy.check(&url("https://other.io/t")).is_err());
    }
}

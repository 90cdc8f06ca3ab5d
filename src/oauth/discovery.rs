//! OpenID Connect discovery: the token endpoint of an issuer, read from
//! `<issuer>/.well-known/openid-configuration` and cached. A client that presents a
//! certificate uses `mtls_endpoint_aliases.token_endpoint` when the document has one
//! (RFC 8705 5): servers often take mutual TLS on another host or port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;
use url::Url;

use super::config::TlsMaterial;
use super::error::{Redactor, TokenError};
use super::response::classify_error;
use super::transport::{HttpRequest, Transport};

/// How long a discovery document is trusted before it is fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// Cached token endpoints by issuer.
#[derive(Clone, Default)]
pub struct DiscoveryCache {
    entries: Arc<Mutex<HashMap<String, (Endpoints, Instant)>>>,
}

/// The token endpoints a discovery document names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints {
    token: Url,
    /// mtls_endpoint_aliases.token_endpoint (RFC 8705 5).
    mtls_token: Option<Url>,
}

impl DiscoveryCache {
    /// The issuer's token endpoint, from the cache or a fresh discovery request: its mutual
    /// TLS alias when `tls` presents a client certificate and the document has one.
    pub async fn token_endpoint(
        &self,
        transport: &Transport,
        tls: &TlsMaterial,
        issuer: &Url,
    ) -> Result<Url, TokenError> {
        let key = issuer.as_str().to_owned();
        let cached = self.lock().get(&key).filter(|(_, at)| at.elapsed() < DISCOVERY_TTL).map(|(e, _)| e.clone());
        let endpoints = match cached {
            Some(endpoints) => endpoints,
            None => {
                let endpoints = discover(transport, tls, issuer).await?;
                self.lock().insert(key, (endpoints.clone(), Instant::now()));
                endpoints
            }
        };
        Ok(match (tls.client_identity.is_some(), endpoints.mtls_token) {
            (true, Some(alias)) => alias,
            _ => endpoints.token,
        })
    }

    /// Forgets an issuer, e.g. after its token endpoint stopped answering.
    pub fn forget(&self, issuer: &Url) {
        self.lock().remove(issuer.as_str());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Endpoints, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The issuer identifier as configured, without a trailing slash, which is how OIDC
/// Discovery 4 builds the configuration URL.
fn configuration_url(issuer: &Url) -> Result<Url, TokenError> {
    let base = issuer.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/.well-known/openid-configuration"))
        .map_err(|e| TokenError::config(format!("issuer {issuer} gives no valid discovery URL: {e}")))
}

async fn discover(transport: &Transport, tls: &TlsMaterial, issuer: &Url) -> Result<Endpoints, TokenError> {
    let url = configuration_url(issuer)?;
    let request = HttpRequest {
        method: reqwest::Method::GET,
        url: url.clone(),
        headers: vec![("Accept".into(), "application/json".into())],
        body: None,
    };
    let response = transport.send(tls, request).await.map_err(|e| e.context("OIDC discovery"))?;
    if !(200..300).contains(&response.status) {
        return Err(classify_error(&response, Timestamp::now(), &Redactor::default())
            .context(format!("OIDC discovery at {url}")));
    }
    let doc: Value = serde_json::from_slice(&response.body)
        .map_err(|_| TokenError::invalid_response(format!("OIDC discovery at {url}: the document is not JSON")))?;
    // OIDC Discovery 4.3: the issuer in the document must equal the configured one exactly.
    let stated = doc.get("issuer").and_then(Value::as_str).unwrap_or_default();
    let configured = issuer.as_str();
    if stated != configured && stated != configured.trim_end_matches('/') {
        return Err(TokenError::config(format!(
            "OIDC discovery at {url}: the document's issuer {stated:?} does not match spec.issuer {configured:?}"
        )));
    }
    let token = endpoint(transport, &url, &doc, "token_endpoint")?.ok_or_else(|| {
        TokenError::invalid_response(format!("OIDC discovery at {url}: the document has no token_endpoint"))
    })?;
    let aliases = doc.get("mtls_endpoint_aliases").cloned().unwrap_or_default();
    let mtls_token = endpoint(transport, &url, &aliases, "token_endpoint")
        .map_err(|e| e.context("mtls_endpoint_aliases (RFC 8705 5)"))?;
    Ok(Endpoints { token, mtls_token })
}

/// A URL member of a discovery document, checked against the endpoint policy.
fn endpoint(transport: &Transport, url: &Url, doc: &Value, member: &str) -> Result<Option<Url>, TokenError> {
    let Some(value) = doc.get(member).and_then(Value::as_str) else { return Ok(None) };
    let endpoint = Url::parse(value)
        .map_err(|e| TokenError::invalid_response(format!("OIDC discovery at {url}: {member} is not a URL: {e}")))?;
    transport.policy().check(&endpoint).map_err(|e| e.context(format!("the discovered {member}")))?;
    Ok(Some(endpoint))
}

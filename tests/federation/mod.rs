//! Identity providers that trust a Kubernetes ServiceAccount issuer (workload identity
//! federation), emulated faithfully enough that tokensync's secretless requests are checked
//! the way the real ones check them. Each VERIFIES the ServiceAccount token: signature against
//! the issuer's JWKS (found over HTTP through `{iss}/.well-known/openid-configuration`, as an
//! identity provider does when the trust is set up), issuer, subject, audience and lifetime.
//!
//! - [`entra`]: Microsoft Entra ID, `POST /{tenant}/oauth2/v2.0/token`, client_credentials
//!   with a client assertion; federated identity credentials match on issuer + subject +
//!   audience; Entra's error bodies (AADSTS codes, `error_codes`, trace ids).
//! - [`sts`]: Google Security Token Service, `POST /v1/token`, RFC 8693 token exchange
//!   without client authentication; its response shape with `issued_token_type`.
//! - [`jwt_bearer`]: an RFC 7523 2.1 authorization grant endpoint.
#![allow(dead_code)]

use std::collections::BTreeMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::token_server::{Recorded, Reply, TokenServer};

/// The keys of an issuer, fetched like an identity provider does: discovery, then jwks_uri.
pub async fn fetch_jwks(issuer: &str) -> JwkSet {
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], json!(issuer), "the discovery document names the issuer");
    http.get(doc["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap()
}

/// Verifies a ServiceAccount token: RS256 signature by a key of `jwks`, iss, aud, exp, nbf,
/// and a sub of the form system:serviceaccount:NS:NAME. Returns the claims.
pub fn verify(token: &str, jwks: &JwkSet, issuer: &str, audience: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or_else(|| format!("unknown key {kid}"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| format!("{e:?}"))?;
    let sub = data.claims["sub"].as_str().unwrap_or_default();
    if !sub.starts_with("system:serviceaccount:") || sub.split(':').count() != 4 {
        return Err(format!("subject {sub} is not a ServiceAccount"));
    }
    Ok(data.claims)
}

/// The claims of a JWT, unverified (to find the federated credential first, as Entra does).
pub fn peek(token: &str) -> Option<Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// A federated identity credential of an Entra application.
#[derive(Clone)]
pub struct FederatedCredential {
    pub client_id: String,
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

/// Microsoft Entra ID's token endpoint for federated credentials.
pub mod entra {
    use super::*;

    pub const AUDIENCE: &str = "api://AzureADTokenExchange";
    pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

    fn error(status: u16, error: &str, code: u32, text: &str) -> Reply {
        Reply::json(
            status,
            json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {text} Trace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333 Correlation ID: aaaa0000-bb11-2222-33cc-444444dddddd Timestamp: 2026-01-01 00:00:00Z"),
                "error_codes": [code],
                "timestamp": "2026-01-01 00:00:00Z",
                "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
                "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
                "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
            }),
        )
    }

    /// Serves `/{tenant}/oauth2/v2.0/token`; `issuer` must publish discovery and JWKS.
    pub async fn start(tenant: &str, issuer: &str, credentials: Vec<FederatedCredential>) -> TokenServer {
        start_trusting(tenant, fetch_jwks(issuer).await, credentials).await
    }

    /// [`start`] with the issuer's keys already fetched.
    pub async fn start_trusting(tenant: &str, jwks: JwkSet, credentials: Vec<FederatedCredential>) -> TokenServer {
        let path = format!("/{tenant}/oauth2/v2.0/token");
        TokenServer::start(move |r: &Recorded| {
            if r.path != path {
                return error(400, "invalid_request", 90002, "Tenant not found.");
            }
            let p = r.form().unwrap_or_default();
            let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
            if get("grant_type") != "client_credentials" {
                return error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.");
            }
            if get("client_assertion_type") != ASSERTION_TYPE || get("client_assertion").is_empty() {
                return error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
            if !get("scope").ends_with("/.default") {
                return error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.");
            }
            let assertion = get("client_assertion");
            let Some(claims) = peek(assertion) else {
                return error(400, "invalid_client", 50027, "JWT token is invalid or malformed.");
            };
            let (iss, sub) = (claims["iss"].as_str().unwrap_or_default(), claims["sub"].as_str().unwrap_or_default());
            let auds: Vec<&str> = match &claims["aud"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let matching = credentials.iter().find(|c| {
                c.client_id == get("client_id") && c.issuer == iss && c.subject == sub && auds.contains(&c.audience.as_str())
            });
            let Some(fic) = matching else {
                return error(
                    400,
                    "invalid_client",
                    70021,
                    &format!(
                        "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                        auds.join(",")
                    ),
                );
            };
            if let Err(e) = verify(assertion, &jwks, &fic.issuer, &fic.audience) {
                let (code, text) = if e.contains("Expired") || e.contains("ImmatureSignature") {
                    (700024, "Client assertion is not within its valid time range.".to_owned())
                } else {
                    (50013, format!("Assertion failed signature validation. [{e}]"))
                };
                return error(401, "invalid_client", code, &text);
            }
            Reply::json(
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": format!("entra-at-for-{sub}")}),
            )
        })
        .await
    }
}

/// Google Cloud's Security Token Service.
pub mod sts {
    use super::*;

    pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

    /// A workload identity pool provider: `//iam.googleapis.com/projects/N/...` (the audience
    /// parameter), trusting `issuer`, accepting subject tokens for `allowed_audience`.
    pub struct Provider {
        pub name: String,
        pub issuer: String,
        pub allowed_audience: String,
    }

    fn error(error: &str, description: &str) -> Reply {
        Reply::json(400, json!({"error": error, "error_description": description}))
    }

    /// Serves `POST /v1/token`.
    pub async fn start(provider: Provider) -> TokenServer {
        let jwks = fetch_jwks(&provider.issuer).await;
        start_trusting(provider, jwks).await
    }

    /// [`start`] with the issuer's keys already fetched.
    pub async fn start_trusting(provider: Provider, jwks: JwkSet) -> TokenServer {
        TokenServer::start(move |r: &Recorded| {
            if r.path != "/v1/token" {
                return Reply::json(404, json!({"error": {"code": 404, "status": "NOT_FOUND"}}));
            }
            let p: BTreeMap<String, String> = r.params();
            let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
            if get("grant_type") != GRANT {
                return error("unsupported_grant_type", "Invalid value for \"grant_type\".");
            }
            if get("audience") != provider.name {
                return error(
                    "invalid_target",
                    "The target service indicated by the \"audience\" parameters is invalid.",
                );
            }
            if !matches!(
                get("subject_token_type"),
                "urn:ietf:params:oauth:token-type:jwt" | "urn:ietf:params:oauth:token-type:id_token"
            ) {
                return error("invalid_request", "Invalid value for \"subject_token_type\".");
            }
            if get("requested_token_type") != ACCESS_TOKEN_TYPE {
                return error("invalid_request", "Invalid value for \"requested_token_type\".");
            }
            if r.header("authorization").is_some() || p.contains_key("client_id") {
                return error("invalid_request", "Client authentication is not supported.");
            }
            match verify(get("subject_token"), &jwks, &provider.issuer, &provider.allowed_audience) {
                Err(e) if e.contains("InvalidAudience") => {
                    error("invalid_grant", "The audience in ID Token does not match the expected audience.")
                }
                Err(e) => error("invalid_grant", &format!("The ID Token is invalid: {e}")),
                Ok(claims) => Reply::json(
                    200,
                    json!({
                        "access_token": format!("ya29.sts-for-{}", claims["sub"].as_str().unwrap_or_default()),
                        "issued_token_type": ACCESS_TOKEN_TYPE,
                        "token_type": "Bearer",
                        "expires_in": 3600,
                    }),
                ),
            }
        })
        .await
    }
}

/// An RFC 7523 2.1 jwt-bearer authorization grant endpoint trusting `issuer` for `audience`,
/// with optional client authentication.
pub mod jwt_bearer {
    use super::*;

    pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

    pub async fn start(issuer: &str, audience: &str) -> TokenServer {
        start_trusting(issuer, audience, fetch_jwks(issuer).await).await
    }

    /// [`start`] with the issuer's keys already fetched.
    pub async fn start_trusting(issuer: &str, audience: &str, jwks: JwkSet) -> TokenServer {
        let (issuer, audience) = (issuer.to_owned(), audience.to_owned());
        TokenServer::start(move |r: &Recorded| {
            let p = r.params();
            if p.get("grant_type").map(String::as_str) != Some(GRANT) {
                return Reply::oauth_error(400, "unsupported_grant_type", "jwt-bearer only");
            }
            let assertion = p.get("assertion").map(String::as_str).unwrap_or_default();
            match verify(assertion, &jwks, &issuer, &audience) {
                Err(e) => Reply::oauth_error(400, "invalid_grant", &format!("assertion refused: {e}")),
                Ok(claims) => Reply::json(
                    200,
                    json!({"access_token": format!("bearer-for-{}", claims["sub"].as_str().unwrap_or_default()), "token_type": "Bearer", "expires_in": 900}),
                ),
            }
        })
        .await
    }
}

//! Secretless credentials: a Kubernetes ServiceAccount token stands where a client secret
//! stood (workload identity federation). Right before each token request the controller asks
//! the API server for a fresh token of the ServiceAccount the spec names (TokenRequest API,
//! `create` on `serviceaccounts/token`), with the spec's audience and the shortest lifetime
//! the API server allows. The token goes into that one request and is dropped: it is never
//! stored, logged, fingerprinted, or shown in status or Events.
//!
//! Safety rules, checked before anything is requested:
//! - the ServiceAccount opts in: its annotation [`ALLOWED_AUDIENCES`] lists the audiences
//!   tokensync may request for it (otherwise anyone allowed to create a ClientCredential in
//!   a namespace could mint tokens for every ServiceAccount there);
//! - the audience is never one the cluster's own API server accepts (its issuer and API
//!   audiences, [`api_server_audiences`]): a token tokensync mints must never be usable
//!   against Kubernetes itself;
//! - a ClientCredential names only a ServiceAccount in its own namespace (admission rule and
//!   `validate`); a ClusterClientCredential names the namespace.
//!
//! Not bound to an object (TokenRequest boundObjectRef): the API server accepts only Pods,
//! Secrets and Nodes, in the ServiceAccount's namespace, and a binding is only enforced
//! when Kubernetes itself authenticates the token (TokenReview). Identity providers verify
//! the token offline against the issuer's JWKS and never see the binding, and the audience
//! rule above already keeps these tokens away from Kubernetes; each token lives 10 minutes
//! and exists only in memory for one request.

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use secrecy::SecretString;

use super::context::Context;
use crate::oauth::{ErrorKind, TokenError};
use crate::token_state::{Prepared, ServiceAccountSource};

/// The opt-in annotation on a ServiceAccount: comma-separated audiences tokensync may
/// request tokens for.
pub const ALLOWED_AUDIENCES: &str = "tokensync.io/allowed-audiences";

/// Condition reasons of this module.
pub const NOT_FOUND: &str = "ServiceAccountNotFound";
pub const NOT_OPTED_IN: &str = "ServiceAccountNotOptedIn";
pub const FORBIDDEN_AUDIENCE: &str = "ForbiddenAudience";
pub const TOKEN_FAILED: &str = "ServiceAccountTokenFailed";

/// Where a pod's own ServiceAccount token is mounted.
const OWN_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The ServiceAccount token for the next request of `prep`, or None when the credential
/// uses none. Refusals (missing ServiceAccount, no opt-in, an API server audience) come
/// back as errors with their condition reason, before anything is requested.
pub async fn token_for(ctx: &Context, prep: &Prepared) -> Result<Option<SecretString>, TokenError> {
    let Some(sa) = &prep.service_account else { return Ok(None) };
    mint(&ctx.client, sa, &ctx.policy.kubernetes_audiences).await.map(Some)
}

/// Checks the safety rules and requests one token.
pub async fn mint(
    client: &kube::Client,
    sa: &ServiceAccountSource,
    forbidden: &[String],
) -> Result<SecretString, TokenError> {
    let namespace = sa.namespace.as_deref().unwrap_or_default();
    let who = format!("ServiceAccount {namespace}/{}", sa.name);
    if let Some(hit) = forbidden.iter().find(|f| same_audience(f, &sa.audience)) {
        return Err(refusal(
            FORBIDDEN_AUDIENCE,
            true,
            format!(
                "audience {:?} is accepted by this cluster's API server ({hit}); a token for it would be usable \
                 against Kubernetes itself. Use the audience your identity provider expects",
                sa.audience
            ),
        ));
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = api
        .get_opt(&sa.name)
        .await
        .map_err(|e| refusal(TOKEN_FAILED, false, format!("cannot read {who}: {}", api_error(&e))))?
        .ok_or_else(|| refusal(NOT_FOUND, false, format!("{who} not found")))?;
    let allowed = account.metadata.annotations.as_ref().and_then(|a| a.get(ALLOWED_AUDIENCES));
    if !allowed.is_some_and(|list| list.split(',').any(|a| same_audience(a.trim(), &sa.audience))) {
        return Err(refusal(
            NOT_OPTED_IN,
            false,
            format!(
                "{who} does not allow tokensync to request tokens for audience {:?}: add it to the annotation \
                 {ALLOWED_AUDIENCES} on the ServiceAccount (comma-separated)",
                sa.audience
            ),
        ));
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![sa.audience.clone()],
            expiration_seconds: Some(sa.expiration_seconds),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued = api.create_token_request(&sa.name, &PostParams::default(), &request).await.map_err(|e| match &e {
        kube::Error::Api(s) if s.code == 404 => refusal(NOT_FOUND, false, format!("{who} not found")),
        _ => refusal(
            TOKEN_FAILED,
            matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 422),
            format!("cannot request a token for {who}: {}", api_error(&e)),
        ),
    })?;
    let token = issued.status.map(|s| s.token).filter(|t| !t.is_empty());
    token.map(SecretString::from).ok_or_else(|| refusal(TOKEN_FAILED, false, format!("no token for {who}")))
}

fn refusal(reason: &'static str, permanent: bool, message: String) -> TokenError {
    TokenError::new(ErrorKind::Source(reason), permanent, message)
}

/// An API error without anything that could echo a token (TokenRequest responses carry one;
/// errors do not, but only the status, reason and message are kept).
fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {} {}", s.code, s.reason, s.message).chars().take(300).collect(),
        other => other.to_string().chars().take(300).collect(),
    }
}

/// Audiences compare exactly, but a trailing slash does not make another audience.
fn same_audience(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('/').to_owned();
    !a.trim().is_empty() && norm(a) == norm(b)
}

/// The audiences this cluster's API server accepts, found without extra privileges: the
/// `iss` and `aud` claims of the controller's own mounted ServiceAccount token (read, not
/// verified), the issuer of the API server's `/.well-known/openid-configuration`, the usual
/// in-cluster defaults, and `extra` (the --kubernetes-audiences flag).
pub async fn api_server_audiences(client: &kube::Client, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "https://kubernetes.default.svc".into(),
        "https://kubernetes.default.svc.cluster.local".into(),
        "kubernetes.default.svc".into(),
    ];
    out.extend(extra.iter().cloned());
    if let Ok(token) = std::fs::read_to_string(OWN_TOKEN) {
        out.extend(claims_iss_aud(&token));
    }
    let request = axum::http::Request::get("/.well-known/openid-configuration").body(Vec::new());
    if let Ok(request) = request {
        match client.request_text(request).await {
            Ok(text) => {
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(issuer) = doc.get("issuer").and_then(|i| i.as_str()) {
                    out.push(issuer.to_owned());
                }
            }
            Err(e) => {
                tracing::info!(error = %api_error(&e), "cannot read the API server's service account issuer; using the other audiences")
            }
        }
    }
    out.retain(|a| !a.trim().is_empty());
    out.sort();
    out.dedup();
    tracing::info!(audiences = ?out, "ServiceAccount tokens are never requested for these API server audiences");
    out
}

/// `iss` and `aud` of a JWT, read without verification (only to learn names).
fn claims_iss_aud(token: &str) -> Vec<String> {
    let Some(payload) = token.trim().split('.').nth(1) else { return Vec::new() };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return Vec::new();
    };
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut out = Vec::new();
    out.extend(claims.get("iss").and_then(|v| v.as_str()).map(str::to_owned));
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => out.push(a.clone()),
        Some(serde_json::Value::Array(list)) => out.extend(list.iter().filter_map(|a| a.as_str()).map(str::to_owned)),
        _ => {}
    }
    out
}

/// What status shows about the ServiceAccount a credential uses.
pub fn status_of(prep: &Prepared) -> Option<crate::api::ServiceAccountStatus> {
    prep.service_account.as_ref().map(|sa| crate::api::ServiceAccountStatus {
        namespace: sa.namespace.clone().unwrap_or_default(),
        name: sa.name.clone(),
        audience: sa.audience.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_token_claims_name_the_issuer_and_every_audience() {
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "RS256"})),
            enc(serde_json::json!({"iss": "https://issuer.example", "aud": ["https://kubernetes.default.svc", "k3s"]}))
        );
        assert_eq!(claims_iss_aud(&token), ["https://issuer.example", "https://kubernetes.default.svc", "k3s"]);
        assert!(claims_iss_aud("not a jwt").is_empty());
    }

    #[test]
    fn a_trailing_slash_does_not_make_another_audience() {
        assert!(same_audience("https://kubernetes.default.svc/", "https://kubernetes.default.svc"));
        assert!(!same_audience("api://AzureADTokenExchange", "https://kubernetes.default.svc"));
        assert!(!same_audience("", ""));
    }
}

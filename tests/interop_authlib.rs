//! Interop: secretless jwt-bearer (RFC 7523 2.1) under the controller against a real,
//! independently written authorization server, Authlib's `JWTBearerGrant` from PyPI
//! (tests/authlib/server.py), configured to trust the API server double's ServiceAccount
//! issuer. Authlib verifies each ServiceAccount token itself: signature against the keys the
//! double publishes at /openid/v1/jwks (found through its discovery document), iss, aud and
//! exp; the server only says which subjects it trusts and which audience is its own (the
//! token endpoint URL).
//!
//! Tokens are proved genuine through the server's /whoami, a resource guarded by Authlib's
//! ResourceProtector: it accepts only tokens the server issued, and tells the subject and
//! the jti of the assertion each was issued for.
//!
//! Needs target/authlib-venv: `bash tests/authlib/install.sh` (.ci/run runs it). Without it
//! the tests fail, saying so.

mod authlib;
mod support;

use authlib::AuthlibServer;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Verb};
use support::controller::*;

const TRUSTED: &str = "batch";

fn subject(sa: &str) -> String {
    format!("system:serviceaccount:{NS}:{sa}")
}

/// A ServiceAccount opted in to tokens for `audience` (tokensync's own safety rule).
async fn service_account(api: &ApiServer, name: &str, audience: &str) {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": NS, "annotations": {"tokensync.io/allowed-audiences": audience}}});
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
    sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
}

/// An Authlib server trusting the double's issuer for the ServiceAccount `batch` only.
async fn authlib_server(api: &ApiServer) -> AuthlibServer {
    AuthlibServer::start(&api.service_account_issuer(), &[&subject(TRUSTED)], &[]).await
}

/// A secretless jwt-bearer ClientCredential: no Secret, no client authentication, the
/// ServiceAccount token is the assertion.
fn jwt_bearer(name: &str, endpoint: &str, sa: &str, audience: &str) -> Cc {
    Cc::new(name, endpoint).spec(json!({"credentialsRef": null, "clientAuthentication": null})).spec(json!({
        "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": sa, "audience": audience},
    }))
}

fn claims(jwt: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn token_requests(api: &ApiServer) -> usize {
    api.count(Verb::Create, "serviceaccounts", Some("token"))
}

/// Refused by Authlib: Ready False TokenRequestRejected with Authlib's invalid_grant and its
/// description, no token stored, and the ServiceAccount token was really requested and
/// presented (so the refusal is the server's verification, not tokensync's).
async fn assert_refused_by_authlib(api: &ApiServer, name: &str, description: &str) {
    wait_condition(api, name, "Ready", ("False", "TokenRequestRejected")).await;
    let message = status(api, name).unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(message.contains("invalid_grant") && message.contains(description), "{message}");
    assert!(secret_data(api, name).is_none(), "no token was stored");
    assert!(token_requests(api) >= 1, "a ServiceAccount token was requested");
}

#[tokio::test]
async fn authlib_issues_a_token_for_a_trusted_service_account_and_accepts_it_as_its_own() {
    let api = api_server().await;
    let server = authlib_server(&api).await;
    let audience = server.token_endpoint.clone();
    service_account(&api, TRUSTED, &audience).await;
    let _controller = start(&api, args(&[]));
    jwt_bearer("batch", &server.token_endpoint, TRUSTED, &audience).create(&api).await;

    wait_condition(&api, "batch", "Ready", ("True", "TokenIssued")).await;
    let stored = secret_data(&api, "batch").unwrap();
    let access_token = &stored["access_token"];
    let (code, who) = server.whoami(access_token).await;
    assert_eq!(code, 200, "Authlib accepts the token it issued: {who}");
    // Issued for the ServiceAccount token the double issued to tokensync for this request.
    let issued = api.issued_service_account_tokens();
    assert_eq!((issued.len(), token_requests(&api)), (1, 1));
    let presented = claims(&issued[0]);
    assert_eq!(presented["aud"], json!([audience]));
    assert_eq!(who["sub"], json!(subject(TRUSTED)));
    assert_eq!(who["assertion_jti"], presented["jti"]);
    // A token the server did not issue is refused by the same resource: /whoami can fail.
    let (code, refused) = server.whoami("not-a-token-it-issued").await;
    assert_eq!((code, refused["error"].as_str()), (401, Some("invalid_token")));
}

#[tokio::test]
async fn authlib_refuses_a_service_account_it_does_not_trust_with_invalid_grant() {
    let api = api_server().await;
    let server = authlib_server(&api).await;
    let audience = server.token_endpoint.clone();
    // Same issuer, valid signature and audience: only the subject is not trusted.
    service_account(&api, "intruder", &audience).await;
    let _controller = start(&api, args(&[]));
    jwt_bearer("intruder", &server.token_endpoint, "intruder", &audience).create(&api).await;
    assert_refused_by_authlib(&api, "intruder", "Invalid 'sub' value in assertion").await;
}

#[tokio::test]
async fn authlib_refuses_a_service_account_token_for_another_audience_with_invalid_grant() {
    let api = api_server().await;
    let server = authlib_server(&api).await;
    // The trusted ServiceAccount, but a token meant for another server.
    let elsewhere = "https://other-authorization-server.example/token";
    service_account(&api, TRUSTED, elsewhere).await;
    let _controller = start(&api, args(&[]));
    jwt_bearer("batch", &server.token_endpoint, TRUSTED, elsewhere).create(&api).await;
    assert_refused_by_authlib(&api, "batch", "'aud'").await;
}

#[tokio::test]
async fn authlib_refuses_a_service_account_token_whose_signature_is_not_the_issuers() {
    // The server's trust is in the double's keys, not in the claims: a genuine token is
    // accepted, the same token with a changed payload (its signature no longer matches) is not.
    let api = api_server().await;
    let server = authlib_server(&api).await;
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
    service_account(&api, TRUSTED, &server.token_endpoint).await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![server.token_endpoint.clone()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued = sas.create_token_request(TRUSTED, &PostParams::default(), &request).await.unwrap();
    let genuine = issued.status.unwrap().token;
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let mut payload = claims(&genuine);
    payload["jti"] = json!("forged");
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    let forged = parts.join(".");

    let (code, body) = server.token(&forged).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let (code, body) = server.token(&genuine).await;
    assert_eq!(code, 200, "{}", body["error"]);
}

//! Interop: secretless jwt-bearer (RFC 7523 2.1) under the controller against a real,
//! independently written authorization server, Authlib's `JWTBearerGrant` from PyPI
//! (tests/authlib/server.py), trusting the ServiceAccount issuer of a real Kubernetes control
//! plane (tests/support/control_plane.rs). tokensync requests real TokenRequest tokens from
//! the real kube-apiserver; Authlib verifies each itself: signature against the keys the API
//! server publishes at /openid/v1/jwks (found through its discovery document, over TLS
//! trusting the control plane's CA, anonymously: the tests make the issuer public as
//! Kubernetes documents, tests/service_accounts), iss, aud and exp. The server only says which
//! subjects it trusts and which audience is its own (the token endpoint URL).
//!
//! Tokens are proved genuine through the server's /whoami, a resource guarded by Authlib's
//! ResourceProtector: it accepts only tokens the server issued, and tells the subject and
//! the claims of the assertion each was issued for.
//!
//! Needs target/authlib-venv: `bash tests/authlib/install.sh` (.ci/run runs it). Without it
//! the tests fail, saying so.

mod authlib;
mod service_accounts;
mod support;

use authlib::AuthlibServer;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::controller::{Cc, Running, args};
use support::real::Env;
use tokensync::metrics::Metrics;

const TRUSTED: &str = "batch";

fn subject(env: &Env, sa: &str) -> String {
    format!("system:serviceaccount:{}:{sa}", env.ns)
}

/// A ServiceAccount opted in to tokens for `audience` (tokensync's own safety rule).
async fn service_account(env: &Env, name: &str, audience: &str) -> ServiceAccount {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "annotations": {"tokensync.io/allowed-audiences": audience}}});
    env.api::<ServiceAccount>().create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap()
}

/// An Authlib server trusting the control plane's issuer for the ServiceAccount `batch` of
/// this test's namespace only.
async fn authlib_server(env: &Env) -> AuthlibServer {
    service_accounts::make_public(&env.client).await;
    AuthlibServer::start(env.plane.issuer(), env.plane.ca_file(), &[&subject(env, TRUSTED)], &[]).await
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

/// TokenRequests the controller sent that the API server granted (2xx).
fn granted_token_requests(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("tokensync_kube_requests_total{"))
        .filter(|l| {
            l.contains("verb=\"create\"")
                && l.contains("resource=\"serviceaccounts/token\"")
                && l.contains("code=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Refused by Authlib: Ready False TokenRequestRejected with Authlib's invalid_grant and its
/// description, no token stored, and a real ServiceAccount token was granted by the API
/// server and presented (so the refusal is the server's verification, not tokensync's).
async fn assert_refused_by_authlib(env: &Env, controller: &Running, name: &str, description: &str) {
    env.wait_condition(name, "Ready", ("False", "TokenRequestRejected")).await;
    let status = env.status(name).await.unwrap();
    let message = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(message.contains("invalid_grant") && message.contains(description), "{message}");
    assert!(env.secret_data(name).await.is_none(), "no token was stored");
    assert!(granted_token_requests(&controller.metrics) >= 1, "a ServiceAccount token was granted");
}

#[tokio::test]
async fn authlib_issues_a_token_for_a_trusted_service_account_and_accepts_it_as_its_own() {
    let env = Env::new("authlib").await;
    let server = authlib_server(&env).await;
    let audience = server.token_endpoint.clone();
    let account = service_account(&env, TRUSTED, &audience).await;
    let controller = env.start(args(&[])).await;
    env.create_cc(jwt_bearer("batch", &server.token_endpoint, TRUSTED, &audience)).await;

    env.wait_condition("batch", "Ready", ("True", "TokenIssued")).await;
    let stored = env.secret_data("batch").await.unwrap();
    let (code, who) = server.whoami(&stored["access_token"]).await;
    assert_eq!(code, 200, "Authlib accepts the token it issued: {who}");
    assert_eq!(granted_token_requests(&controller.metrics), 1, "one ServiceAccount token for one token request");
    // Issued for the ServiceAccount token the real API server issued to tokensync for this
    // request: its issuer, the audience asked for, the shortest lifetime the API server
    // allows, and the uid of the ServiceAccount object on that server.
    let presented = &who["assertion"];
    assert_eq!(who["sub"], json!(subject(&env, TRUSTED)));
    assert_eq!(presented["iss"], json!(env.plane.issuer()));
    assert_eq!(presented["aud"], json!([audience]));
    assert_eq!(presented["exp"].as_i64().unwrap() - presented["iat"].as_i64().unwrap(), 600);
    assert_eq!(presented["kubernetes.io"]["serviceaccount"]["uid"], json!(account.metadata.uid.unwrap()));
    assert_eq!(who["assertion_jti"], presented["jti"]);
    // A token the server did not issue is refused by the same resource: /whoami can fail.
    let (code, refused) = server.whoami("not-a-token-it-issued").await;
    assert_eq!((code, refused["error"].as_str()), (401, Some("invalid_token")));
}

#[tokio::test]
async fn authlib_refuses_a_service_account_it_does_not_trust_with_invalid_grant() {
    let env = Env::new("authlib").await;
    let server = authlib_server(&env).await;
    let audience = server.token_endpoint.clone();
    // Same issuer, valid signature and audience: only the subject is not trusted.
    service_account(&env, "intruder", &audience).await;
    let controller = env.start(args(&[])).await;
    env.create_cc(jwt_bearer("intruder", &server.token_endpoint, "intruder", &audience)).await;
    assert_refused_by_authlib(&env, &controller, "intruder", "Invalid 'sub' value in assertion").await;
}

#[tokio::test]
async fn authlib_refuses_a_service_account_token_for_another_audience_with_invalid_grant() {
    let env = Env::new("authlib").await;
    let server = authlib_server(&env).await;
    // The trusted ServiceAccount, but a token meant for another server.
    let elsewhere = "https://other-authorization-server.example/token";
    service_account(&env, TRUSTED, elsewhere).await;
    let controller = env.start(args(&[])).await;
    env.create_cc(jwt_bearer("batch", &server.token_endpoint, TRUSTED, elsewhere)).await;
    assert_refused_by_authlib(&env, &controller, "batch", "'aud'").await;
}

/// The server's trust is in the issuer's keys, not in the claims. A real token from the API
/// server is accepted; the same token with a changed payload (its signature no longer
/// matches), and the same claims signed by a key the issuer does not publish (under the kid
/// of the issuer's key), are not. The test sends them itself: tokensync only ever presents
/// what the API server issued.
#[tokio::test]
async fn authlib_refuses_a_service_account_token_whose_signature_is_not_the_issuers() {
    let env = Env::new("authlib").await;
    let server = authlib_server(&env).await;
    service_account(&env, TRUSTED, &server.token_endpoint).await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![server.token_endpoint.clone()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued =
        env.api::<ServiceAccount>().create_token_request(TRUSTED, &PostParams::default(), &request).await.unwrap();
    let genuine = issued.status.unwrap().token;

    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let mut payload = claims(&genuine);
    payload["jti"] = json!("forged");
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    let tampered = parts.join(".");

    let header = jsonwebtoken::decode_header(&genuine).unwrap();
    assert!(header.kid.is_some(), "the API server names its key");
    let pem = std::fs::read(format!("{}/tests/fixtures/keys/rsa.pem", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let other_key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let signed_elsewhere = jsonwebtoken::encode(&header, &claims(&genuine), &other_key).unwrap();

    for (what, token) in [("a changed payload", &tampered), ("another key's signature", &signed_elsewhere)] {
        let (code, body) = server.token(token).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("invalid_grant")), "{what}: {body}");
    }
    let (code, body) = server.token(&genuine).await;
    assert_eq!(code, 200, "{}", body["error"]);
}

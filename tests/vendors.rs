//! Each vendor in shared/seeds, reproduced as its documentation shows it (paths, body
//! encodings, credential placement, response shapes), driven through the examples in
//! examples/ with `tokensync fetch`'s code path. Each test proves the request tokensync
//! sends is the one the vendor documents, and that the token comes back.

mod token_server;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use token_server::{Recorded, Reply, TokenServer, vendors};
use tokensync::api::engine;
use tokensync::fetch::{self, FetchArgs, OutputFormat};
use tokensync::manifest::Manifests;
use tokensync::oauth::{EndpointPolicy, Flow, TokenClient, TransportSettings};

/// The example file with the vendor's host swapped for the local server.
fn example_pointing_at(name: &str, real_base: &str, server: &TokenServer) -> (tempfile::TempDir, std::path::PathBuf) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(real_base), "examples/{name}.yaml uses {real_base}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, text.replace(real_base, &server.base)).unwrap();
    (dir, file)
}

async fn fetch_json(file: &std::path::Path) -> Value {
    let args = FetchArgs {
        files: vec![file.to_owned()],
        name: None,
        output: OutputFormat::Json,
        allow_http: true,
        timeout: 10,
        service_account_token_file: None,
    };
    let out = fetch::run(&args).await.unwrap_or_else(|e| panic!("fetch failed: {e}"));
    serde_json::from_str(&out).unwrap()
}

fn engine_for(file: &std::path::Path) -> (tokensync::oauth::TokenRequestConfig, tokensync::oauth::Credentials) {
    let m = Manifests::load_files(&[file]).unwrap();
    let cc = &m.client_credentials[0];
    let config = engine::token_request_config(&cc.spec).unwrap();
    let name = &cc.spec.credentials_ref.as_ref().unwrap().name;
    let data = m.secret("default", name).unwrap().data.as_ref().unwrap();
    (config, engine::credentials(&cc.spec, Some(data)).unwrap())
}

fn client() -> TokenClient {
    TokenClient::new(EndpointPolicy { allow_http: true, ..Default::default() }, TransportSettings::default())
}

#[tokio::test]
async fn chalk_client_credentials_as_documented_and_verified_with_who_am_i() {
    let server = TokenServer::start(vendors::chalk()).await;
    let (_dir, file) = example_pointing_at("chalk", "https://api.chalk.ai", &server);
    let out = fetch_json(&file).await;
    assert_eq!(out["access_token"], "chalk-token-1");
    assert_eq!(out["token_type"], "Bearer");
    let token_requests = server.requests_to("/v1/oauth/token");
    assert_eq!(token_requests.len(), 1);
    assert!(token_requests[0].header("authorization").is_none(), "Chalk takes the credentials in the body");
    assert_eq!(server.requests_to("/v1/who-am-i").len(), 1, "the token was verified before it was returned");
}

#[tokio::test]
async fn chalk_token_refused_by_who_am_i_is_not_returned() {
    let server = TokenServer::start(|r: &Recorded| match r.path.as_str() {
        "/v1/oauth/token" => {
            Reply::json(200, json!({"access_token": "revoked", "expires_in": 3600, "token_type": "Bearer"}))
        }
        _ => Reply::json(401, json!({"detail": "token revoked"})),
    })
    .await;
    let (_dir, file) = example_pointing_at("chalk", "https://api.chalk.ai", &server);
    let args = FetchArgs {
        files: vec![file],
        name: None,
        output: OutputFormat::Json,
        allow_http: true,
        timeout: 10,
        service_account_token_file: None,
    };
    let err = fetch::run(&args).await.unwrap_err().to_string();
    assert!(err.contains("TokenVerificationFailed") && err.contains("401"), "{err}");
    assert!(!err.contains("revoked\""), "{err}");
}

#[tokio::test]
async fn chatlayer_keycloak_form_body_with_credentials_in_the_body() {
    let path = vendors::CHATLAYER_PATH;
    let server = TokenServer::start(vendors::chatlayer()).await;
    let (_dir, file) = example_pointing_at("chatlayer", "https://auth.prod.europe-west1.gc.chatlayer.ai", &server);
    let before = jiff::Timestamp::now();
    let out = fetch_json(&file).await;
    assert_eq!(out["access_token"], "eyJhbGciOi.chatlayer");
    assert_eq!(out["scope"], "offline_access profile public_api email");
    let expires: jiff::Timestamp = out["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires.as_second() - before.as_second();
    assert!((299..=301).contains(&lifetime), "5-minute token, got {lifetime}s");
    let requests = server.requests_to(path);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].content_type(), "application/x-www-form-urlencoded");
}

#[tokio::test]
async fn cerkl_http_basic_form_body_and_documented_headers() {
    let server = TokenServer::start(vendors::cerkl()).await;
    let (_dir, file) = example_pointing_at("cerkl", "https://api.cerkl.com", &server);
    let out = fetch_json(&file).await;
    assert_eq!(out["access_token"], "cerkl-token");
    assert_eq!(out["token_type"], "Bearer", "token_type in any case is normalised");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn charp_json_token_without_grant_type_then_separate_refresh_endpoint_with_rotation() {
    let server = TokenServer::start(vendors::charp()).await;
    let (_dir, file) = example_pointing_at("charp", "https://api.charp.ai", &server);
    let out = fetch_json(&file).await;
    assert_eq!(out["access_token"], "charp-access-1");
    assert_eq!(out["refresh_token"], "def50201", "fetch shows the refresh token to keep");
    assert!(server.requests_to("/auth/token")[0].header("authorization").is_none());

    // Renewals go to /auth/refresh with only the refresh token, and each rotates it.
    let (config, creds) = engine_for(&file);
    let client = client();
    let mut refresh = SecretString::from("def50201".to_owned());
    for n in 2..=4 {
        let acquired = client.acquire(&config, &creds, Some(&refresh)).await.unwrap();
        assert_eq!(acquired.flow, Flow::Refresh);
        assert_eq!(acquired.token.access_token.expose_secret(), format!("charp-access-{n}"));
        assert!(acquired.refresh_token_rotated(Some(&refresh)));
        refresh = acquired.refresh_token_to_keep(Some(&refresh)).unwrap().clone();
    }
    assert_eq!(server.requests_to("/auth/refresh").len(), 3);
    assert_eq!(server.requests_to("/auth/token").len(), 1, "no client-credentials request while refresh works");

    // A refresh token the server no longer accepts falls back to the client credentials.
    let stale = SecretString::from("def50201".to_owned());
    let acquired = client.acquire(&config, &creds, Some(&stale)).await.unwrap();
    assert_eq!(acquired.flow, Flow::RefreshFellBackToClientCredentials);
    assert_eq!(server.requests_to("/auth/token").len(), 2);
}

#[tokio::test]
async fn tali_authorization_code_exchange_then_json_refresh_with_string_expires_in() {
    let server = TokenServer::start(vendors::tali()).await;
    let (_dir, file) = example_pointing_at("tali", "https://api.tali.ai", &server);
    let before = jiff::Timestamp::now();
    let out = fetch_json(&file).await;
    assert_eq!(out["access_token"], "MBEehXv6KQcLH39ObZ8F6FVhQsJ2Bcf7XTf64");
    assert_eq!(out["refresh_token"], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
    let expires: jiff::Timestamp = out["expires_at"].as_str().unwrap().parse().unwrap();
    assert!((86399..=86401).contains(&(expires.as_second() - before.as_second())), "expires_in \"86400\" is a string");

    // Later renewals use the refresh token with the same JSON shape; the code is not sent again.
    let (config, creds) = engine_for(&file);
    let rt = SecretString::from("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9".to_owned());
    let acquired = client().acquire(&config, &creds, Some(&rt)).await.unwrap();
    assert_eq!(acquired.flow, Flow::Refresh);
    assert_eq!(acquired.token.access_token.expose_secret(), "second-access");
    assert!(!acquired.refresh_token_rotated(Some(&rt)), "Tali returned the same refresh token");
    let last = server.requests().pop().unwrap();
    assert_eq!(last.content_type(), "application/json");
    assert!(!last.json().unwrap().contains_key("code"));
}

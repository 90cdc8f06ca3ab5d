//! `--service-account-token-file` of `tokensync agent` and `tokensync fetch`: a secretless
//! credential (spec.serviceAccountRef) takes its ServiceAccount token from a file, as a pod
//! gets it from a projected `serviceAccountToken` volume that kubelet rotates.
//!
//! The tokens are real: the API server double issues them (TokenRequest) and publishes its
//! issuer's keys; the token server is an RFC 7523 2.1 jwt-bearer endpoint that verifies each
//! assertion against those keys (signature, iss, aud, exp) and records what it was sent.

mod federation;
mod support;
mod token_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::apiserver::ApiServer;
use support::controller::{NS, api_server};
use token_server::{Recorded, Reply, TokenServer};
use tokensync::agent::{Agent, AgentArgs};

const AUDIENCE: &str = "https://auth.example/oauth2/token";
const WAIT: Duration = Duration::from_secs(30);

/// A ServiceAccount token for AUDIENCE, as kubelet would project it.
async fn service_account_token(api: &ApiServer, sa: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
    if sas.get_opt(sa).await.unwrap().is_none() {
        let object = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}});
        sas.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.into()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    sas.create_token_request(sa, &PostParams::default(), &request).await.unwrap().status.unwrap().token
}

/// Replaces the file's content at once (kubelet swaps a symlink; a rename is as atomic), with
/// the trailing newline `kubectl create token` prints.
fn project(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A jwt-bearer endpoint trusting the double's issuer for AUDIENCE: a verified assertion
/// gets `at-N` living `lifetime` seconds, anything else invalid_grant.
async fn verifying_server(api: &ApiServer, lifetime: u64) -> TokenServer {
    // reqwest is built without a default TLS provider; tokensync installs ring at start.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = api.service_account_issuer();
    let jwks = federation::fetch_jwks(&issuer).await;
    let issued = Arc::new(AtomicUsize::new(0));
    TokenServer::start(move |r: &Recorded| {
        let p = r.params();
        if p.get("grant_type").map(String::as_str) != Some(federation::jwt_bearer::GRANT) {
            return Reply::oauth_error(400, "unsupported_grant_type", "jwt-bearer only");
        }
        let assertion = p.get("assertion").map(String::as_str).unwrap_or_default();
        match federation::verify(assertion, &jwks, &issuer, AUDIENCE) {
            Err(e) => Reply::oauth_error(400, "invalid_grant", &format!("assertion refused: {e}")),
            Ok(_) => {
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                Reply::json(
                    200,
                    json!({"access_token": format!("at-{n}"), "token_type": "Bearer", "expires_in": lifetime}),
                )
            }
        }
    })
    .await
}

/// The assertions the server was sent, in order.
fn assertions(server: &TokenServer) -> Vec<String> {
    server.requests().iter().map(|r| r.params().get("assertion").cloned().unwrap_or_default()).collect()
}

fn manifest(endpoint: &str) -> String {
    format!(
        r#"apiVersion: tokensync.io/v1alpha1
kind: ClientCredential
metadata: {{name: batch, namespace: {NS}}}
spec:
  tokenEndpoint: {endpoint}
  grantType: urn:ietf:params:oauth:grant-type:jwt-bearer
  clientAuthentication: none
  serviceAccountRef: {{name: batch, audience: "{AUDIENCE}"}}
"#
    )
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: AgentArgs,
}

fn agent_args(dir: &Path, manifest: &Path, token_file: &Path) -> AgentArgs {
    let argv: Vec<String> = vec![
        "tokensync".into(),
        "-f".into(),
        manifest.display().to_string(),
        "--out-dir".into(),
        dir.join("out").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--service-account-token-file".into(),
        token_file.display().to_string(),
        // Renew 3-second tokens after about a second, without a minute-long margin.
        "--allow-http".into(),
        "--watch-interval".into(),
        "0s".into(),
        "--min-renewal-interval".into(),
        "1s".into(),
        "--backoff-min".into(),
        "1s".into(),
        "--backoff-max".into(),
        "8s".into(),
    ];
    Flags::parse_from(argv).args
}

#[tokio::test]
async fn the_agent_reads_the_service_account_token_file_anew_for_every_renewal() {
    let api = api_server().await;
    let server = verifying_server(&api, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("credentials.yaml");
    std::fs::write(&manifest, manifest_text(&server)).unwrap();
    let token_file = dir.path().join("token");
    let projected = [
        service_account_token(&api, "batch").await,
        service_account_token(&api, "batch").await,
        service_account_token(&api, "batch").await,
    ];
    project(&token_file, &projected[0]);

    let agent = Agent::start(&agent_args(dir.path(), &manifest, &token_file)).unwrap();
    assert!(agent.wait_for(WAIT, |p| p.issued >= 1).await, "first token");
    let access_token = dir.path().join("out").join(NS).join("batch").join("access_token");
    assert!(std::fs::read_to_string(&access_token).unwrap().starts_with("at-"));
    // kubelet rotates the projected token: each renewal after it presents the new content.
    for next in &projected[1..] {
        project(&token_file, next);
        let seen = agent.wait_for(WAIT, |_| assertions(&server).contains(next)).await;
        assert!(seen, "the server never saw the rotated token; it saw {} requests", server.requests().len());
    }
    let sent = assertions(&server);
    // In order, each content until the file changed, never an old one after a new one, and
    // nothing that was not in the file (no cached or copied token).
    let positions: Vec<usize> =
        sent.iter().map(|a| projected.iter().position(|p| p == a).expect("only file contents")).collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
    assert_eq!((positions.first(), positions.last()), (Some(&0), Some(&2)), "{positions:?}");
    assert_eq!(agent.progress().borrow().failures, 0, "every assertion was verified");
}

fn manifest_text(server: &TokenServer) -> String {
    manifest(&server.url("/token"))
}

/// Runs `tokensync fetch` on the manifest with `args`.
async fn fetch(server: &TokenServer, args: Vec<String>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cc.yaml");
    std::fs::write(&file, manifest_text(server)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokensync"));
    cmd.arg("fetch").arg("-f").arg(&file).arg("--allow-http").args(args);
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env_remove(var);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

fn token_file_arg(path: &Path) -> Vec<String> {
    vec!["--service-account-token-file".into(), path.display().to_string()]
}

#[tokio::test]
async fn fetch_presents_the_service_account_token_file_as_the_assertion() {
    let api = api_server().await;
    let server = verifying_server(&api, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file: PathBuf = dir.path().join("token");
    let token = service_account_token(&api, "batch").await;
    project(&token_file, &token);

    let out = fetch(&server, [token_file_arg(&token_file), vec!["--output".into(), "token".into()]].concat()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "at-1\n");
    assert_eq!(assertions(&server), vec![token.clone()], "the file's token, without its newline");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains(token.rsplit('.').next().unwrap()), "the ServiceAccount token is not logged");
}

#[tokio::test]
async fn fetch_without_the_token_file_flag_exits_2_naming_it_and_sends_nothing() {
    let api = api_server().await;
    let server = verifying_server(&api, 300).await;
    let out = fetch(&server, vec![]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--service-account-token-file"));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn fetch_with_a_token_the_server_cannot_verify_exits_1_with_invalid_grant() {
    // The server really verifies what the file holds: the same token with its signature
    // from another token does not pass.
    let api = api_server().await;
    let server = verifying_server(&api, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let (a, b) = (service_account_token(&api, "batch").await, service_account_token(&api, "batch").await);
    let spliced = format!("{}.{}", a.rsplit_once('.').unwrap().0, b.rsplit('.').next().unwrap());
    project(&token_file, &spliced);

    let out = fetch(&server, token_file_arg(&token_file)).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_grant"));
    assert!(out.stdout.is_empty(), "no token printed");
    assert_eq!(assertions(&server), vec![spliced]);
}

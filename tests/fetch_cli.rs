//! `tokensync fetch` as users run it: the binary, its output formats, exit codes, error
//! text, and the standard proxy environment variables.

mod token_server;

use std::process::{Command, Output};

use serde_json::json;
use token_server::{Recorded, Reply, TokenServer};

const PROXY_VARS: &[&str] =
    &["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"];

fn manifest(endpoint: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: demo-client, namespace: team-a}}
stringData: {{client_id: demo, client_secret: "{secret}"}}
---
apiVersion: tokensync.io/v1alpha1
kind: ClientCredential
metadata: {{name: demo, namespace: team-a}}
spec:
  tokenEndpoint: {endpoint}
  clientAuthentication: client_secret_post
  credentialsRef: {{name: demo-client}}
"#
    )
}

/// Runs the binary with a clean proxy environment plus `env`.
async fn fetch(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cc.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokensync"));
    cmd.arg("fetch").arg("-f").arg(&file).args(args);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

fn token_server_handler(r: &Recorded) -> Reply {
    if r.params().get("client_secret").map(String::as_str) == Some("right-secret") {
        Reply::json(
            200,
            json!({"access_token": "the-access-token", "token_type": "bearer", "expires_in": 300, "scope": "s1"}),
        )
    } else {
        Reply::oauth_error(401, "invalid_client", "Invalid client credentials")
    }
}

#[tokio::test]
async fn fetch_prints_json_or_only_the_token() {
    let server = TokenServer::start(token_server_handler).await;
    let yaml = manifest(&server.url("/token"), "right-secret");
    let out = fetch(&yaml, &["--allow-http"], &[]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["access_token"].as_str(), json["token_type"].as_str(), json["scope"].as_str()),
        (Some("the-access-token"), Some("Bearer"), Some("s1"))
    );
    assert!(json["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(json.get("refresh_token").is_none());

    let out = fetch(&yaml, &["--allow-http", "--output", "token"], &[]).await;
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "the-access-token\n");
}

#[tokio::test]
async fn fetch_exits_1_with_the_classified_error_and_no_secret_when_refused() {
    let server = TokenServer::start(token_server_handler).await;
    let out = fetch(&manifest(&server.url("/token"), "wrong-secret-value"), &["--allow-http"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid_client") && stderr.contains("TokenRequestRejected") && stderr.contains("permanent"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-value") && out.stdout.is_empty());
}

#[tokio::test]
async fn fetch_exits_2_on_unusable_input_naming_the_problem() {
    let out =
        fetch(&manifest("https://auth.example/token", "x").replace("client_secret_post", "private_key_jwt"), &[], &[])
            .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.credentialsRef.privateKeyKey"));

    let out = fetch(
        &manifest("https://auth.example/token", "x").replace("name: demo-client, namespace", "name: other, namespace"),
        &[],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SourceSecretNotFound"));

    let out = fetch(&manifest("http://auth.example/token", "x"), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "plain http without --allow-http is refused before any request");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-http"));
}

#[tokio::test]
async fn fetch_honours_http_proxy_and_no_proxy() {
    // The "proxy" is a token server: reaching it proves the request went through the proxy,
    // since token.invalid cannot be resolved.
    let proxy = TokenServer::start(token_server_handler).await;
    let yaml = manifest("http://token.invalid/token", "right-secret");
    let out = fetch(&yaml, &["--allow-http", "-o", "token"], &[("HTTP_PROXY", proxy.base.as_str())]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.requests().len(), 1);

    let out =
        fetch(&yaml, &["--allow-http"], &[("HTTP_PROXY", proxy.base.as_str()), ("NO_PROXY", "token.invalid")]).await;
    assert_eq!(out.status.code(), Some(1), "NO_PROXY sends the request direct, where the name does not resolve");
    assert_eq!(proxy.requests().len(), 1);
}

/// Runs `tokensync fetch` on a pseudo-terminal (util-linux `script`), so that stderr IS a
/// terminal, and returns everything it wrote there.
async fn fetch_on_a_terminal(yaml: &str, no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cc.yaml");
    std::fs::write(&file, yaml).unwrap();
    let inner = format!("{} fetch --allow-http -o token -f {}", env!("CARGO_BIN_EXE_tokensync"), file.display());
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &inner, "/dev/null"]);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("util-linux `script`")).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn log_lines_carry_colour_codes_only_on_a_terminal_without_no_color() {
    const ESC: char = '\u{1b}';
    let server = TokenServer::start(token_server_handler).await;
    let yaml = manifest(&server.url("/token"), "right-secret");

    // Piped, as a log file or a pod's log is: plain text.
    let out = fetch(&yaml, &["--allow-http"], &[]).await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("token acquired") && stderr.contains("expires_at="), "{stderr}");
    assert!(!stderr.contains(ESC), "escape codes in piped logs: {stderr:?}");

    // On a terminal: coloured, unless NO_COLOR says otherwise.
    let tty = fetch_on_a_terminal(&yaml, None).await;
    assert!(tty.contains("token acquired") && tty.contains(ESC), "a terminal gets colour: {tty:?}");
    let tty = fetch_on_a_terminal(&yaml, Some("1")).await;
    assert!(tty.contains("token acquired") && !tty.contains(ESC), "NO_COLOR=1: {tty:?}");
}

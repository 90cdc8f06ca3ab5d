//! Interop tests: `tokensync fetch` against a real, independently written OAuth 2.0 / OpenID
//! Connect server, panva's `oidc-provider` from the npm registry (tests/oidc-provider/).
//!
//! Each test starts its own server (`node tests/oidc-provider/server.mjs`) on 127.0.0.1 with a
//! free port, reads the issuer from the server's first stdout line, writes a Secret and a
//! ClientCredential into a temporary directory and runs the real `tokensync` binary. Tokens
//! are proved genuine with the provider's introspection endpoint (RFC 7662): `active`, the
//! client, the audience and the expiry must match what tokensync printed.
//!
//! Needs Node.js (>= 20) and npm on PATH. When tests/oidc-provider/node_modules is missing or
//! stale, the first test runs `npm ci --prefix tests/oidc-provider` itself (the npm registry is
//! reachable where the tests run); a missing `node` or a failed install fails the tests with the
//! command to run, it never skips them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use support::child_server::{ChildServer, field};
use support::oidc_provider::{self as node, Identity, Pki, server_dir};
use tempfile::TempDir;

/// Upper bound for one `tokensync fetch` run; it only talks to 127.0.0.1.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The resource server (RFC 8707) every access token of the test server is issued for.
const RESOURCE: &str = "urn:tokensync:interop-api";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// The test clients registered in tests/oidc-provider/server.mjs (test-only secrets).
const BASIC: (&str, &str) = ("interop-basic", "basic-secret-0123456789abcdef0123456789abcdef");
const POST: (&str, &str) = ("interop-post", "post-secret-0123456789abcdef0123456789abcdef");
const SECRET_JWT: (&str, &str) = ("interop-secret-jwt", "jwt-secret-0123456789abcdef0123456789abcdef");
const ROTATION: (&str, &str) = ("interop-rotation", "rotation-secret-0123456789abcdef0123456789abcdef");
const RS256_CLIENT: &str = "interop-rs256";
const ES256_CLIENT: &str = "interop-es256";

// ---------------------------------------------------------------------------------------------
// The provider process

/// A running oidc-provider; killed when dropped.
struct Provider {
    process: ChildServer,
    issuer: String,
    token_endpoint: String,
    introspection_endpoint: String,
    /// With TLS: the token endpoint that asks for client certificates.
    mtls_token_endpoint: Option<String>,
    /// With TLS: the CA of the server's certificate.
    ca_pem: Option<String>,
}

impl Provider {
    fn start() -> Provider {
        Provider::from(node::spawn(&[]), None)
    }

    /// The provider over HTTPS with mutual TLS (`server.mjs --tls-dir`).
    fn start_tls(pki: &Pki) -> Provider {
        Provider::from(node::spawn(&["--tls-dir".as_ref(), pki.dir.path().as_os_str()]), Some(pki.ca_pem.clone()))
    }

    fn from((process, ready): (ChildServer, Value), ca_pem: Option<String>) -> Provider {
        Provider {
            issuer: field(&ready, "issuer"),
            token_endpoint: field(&ready, "token_endpoint"),
            introspection_endpoint: field(&ready, "introspection_endpoint"),
            mtls_token_endpoint: ready["mtls_token_endpoint"].as_str().map(str::to_owned),
            ca_pem,
            process,
        }
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// A fresh one-time authorization code for interop-rotation (redirect_uri REDIRECT_URI),
    /// from the server's test-only helper that drives the whole authorization code flow.
    fn authorization_code(&self) -> String {
        let response = http(reqwest::Method::GET, &format!("{}/test/code", self.issuer), None, &[], None);
        assert_eq!(response.0, 200, "GET /test/code failed: {}; server stderr:\n{}", response.1, self.stderr());
        let body: Value = serde_json::from_str(&response.1).expect("/test/code answers JSON");
        assert_eq!(body["redirect_uri"], REDIRECT_URI);
        body["code"].as_str().expect("/test/code gives a code").to_owned()
    }

    /// RFC 7662 introspection, authenticated as interop-basic (the test server lets any
    /// client introspect any token).
    fn introspect(&self, token: &str) -> Value {
        let (status, body) = http(
            reqwest::Method::POST,
            &self.introspection_endpoint,
            Some(BASIC),
            &[("token", token)],
            self.ca_pem.as_deref(),
        );
        assert_eq!(status, 200, "introspection failed: {body}");
        serde_json::from_str(&body).expect("introspection answers JSON")
    }
}

/// One plain HTTP call from the test itself (not through tokensync): (status, body). `ca_pem`:
/// the only CA trusted for https.
fn http(
    method: reqwest::Method,
    url: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
    ca_pem: Option<&str>,
) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let mut builder = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("the test CA");
            builder = builder.tls_certs_only([ca]);
        }
        let client = builder.build().expect("client");
        let mut request = client.request(method, url);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        if !form.is_empty() {
            request = request.form(form);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("response body"))
    })
}

// ---------------------------------------------------------------------------------------------
// Manifests and the tokensync binary

/// A Secret named `creds`: `string_data` as stringData, `data` base64-encoded as data.
fn secret_yaml(string_data: &[(&str, &str)], data: &[(&str, &str)]) -> String {
    let mut yaml = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\ntype: Opaque\n");
    if !string_data.is_empty() {
        yaml.push_str("stringData:\n");
        for (key, value) in string_data {
            // A JSON string is a valid YAML double-quoted scalar.
            yaml.push_str(&format!("  {key}: {}\n", serde_json::to_string(value).unwrap()));
        }
    }
    if !data.is_empty() {
        yaml.push_str("data:\n");
        for (key, value) in data {
            yaml.push_str(&format!("  {key}: {}\n", BASE64.encode(value)));
        }
    }
    yaml
}

/// A ClientCredential named `interop`; `spec` holds the spec's fields, indented by two spaces.
fn client_credential_yaml(spec: &str) -> String {
    format!("apiVersion: tokensync.io/v1alpha1\nkind: ClientCredential\nmetadata:\n  name: interop\nspec:\n{spec}")
}

/// Writes `documents` as one multi-document YAML file and checks that tokensync's own
/// manifest reader and validation accept it, so a failure later is about the token request.
fn write_manifest(dir: &TempDir, file: &str, documents: &[String]) -> PathBuf {
    let text = documents.join("---\n");
    let manifests = tokensync::manifest::Manifests::parse(&text, file)
        .unwrap_or_else(|e| panic!("the test's manifest {file} does not parse: {e}\n{text}"));
    for cc in &manifests.client_credentials {
        if let Err(e) = tokensync::api::validate::validate(&cc.spec, "interop") {
            panic!("the test's ClientCredential in {file} is invalid: {e}\n{text}");
        }
    }
    let path = dir.path().join(file);
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The outcome of one `tokensync fetch` run.
struct Fetch {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Fetch {
    /// The printed token response; panics with the whole run when the fetch failed.
    fn token(&self) -> Value {
        assert_eq!(self.code, Some(0), "tokensync fetch failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("tokensync fetch printed no JSON object ({e}):\n{}", self.stdout))
    }

    /// Asserts that none of `secrets` appears in stdout or stderr.
    fn assert_leaks_none(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(!self.stdout.contains(secret), "a secret value appears on stdout:\n{}", self.stdout);
            assert!(!self.stderr.contains(secret), "a secret value appears on stderr:\n{}", self.stderr);
        }
    }

    /// Asserts a classified failure: exit code 1 and stderr naming the OAuth error and the class.
    fn assert_failed_with(&self, oauth_error: &str, class: &str) {
        assert_eq!(self.code, Some(1), "expected exit code 1:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert!(self.stderr.contains(oauth_error), "stderr does not mention {oauth_error}:\n{}", self.stderr);
        assert!(self.stderr.contains(class), "stderr does not say {class}:\n{}", self.stderr);
        assert!(self.stdout.trim().is_empty(), "a failed fetch printed on stdout:\n{}", self.stdout);
    }
}

/// Runs `tokensync fetch --allow-http -f FILE...` with debug logging (so the no-leak checks
/// cover debug logs too), killing it if it runs longer than FETCH_TIMEOUT.
fn fetch(files: &[&Path], extra_args: &[&str]) -> Fetch {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokensync"));
    command.arg("fetch").arg("--allow-http");
    for file in files {
        command.arg("-f").arg(file);
    }
    let child = command
        .args(extra_args)
        .env("RUST_LOG", "warn,tokensync=debug")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tokensync");
    let output = wait_with_timeout(child, FETCH_TIMEOUT);
    Fetch {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Waits for the child; a watchdog thread kills it when `timeout` passes first.
fn wait_with_timeout(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if done_rx.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            return true;
        }
        false
    });
    let output = child.wait_with_output().expect("wait for tokensync");
    let _ = done_tx.send(());
    assert!(!watchdog.join().unwrap(), "tokensync fetch did not finish within {timeout:?} and was killed");
    output
}

/// The RFC 3339 expires_at of a printed token, as epoch seconds.
fn expires_at(token: &Value) -> i64 {
    let text = token["expires_at"].as_str().unwrap_or_else(|| panic!("no expires_at in {token}"));
    let at: jiff::Timestamp = text.parse().unwrap_or_else(|e| panic!("expires_at {text:?} is not RFC 3339: {e}"));
    at.as_second()
}

/// Proves a printed token genuine: the provider knows it as active, issued to `client_id` for
/// the test resource, and tokensync's expires_at is the provider's exp (give or take clock
/// rounding). Returns the introspection response.
fn assert_genuine(provider: &Provider, token: &Value, client_id: &str) -> Value {
    let access_token = token["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {token}"));
    assert!(token["token_type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")), "token_type: {token}");
    let info = provider.introspect(access_token);
    assert_eq!(info["active"], true, "the provider does not know the token as active: {info}");
    assert_eq!(info["client_id"], client_id, "{info}");
    assert_eq!(info["iss"], provider.issuer.as_str(), "{info}");
    assert_eq!(info["aud"], RESOURCE, "{info}");
    let exp = info["exp"].as_i64().expect("introspection exp");
    let printed = expires_at(token);
    assert!((printed - exp).abs() <= 5, "expires_at {printed} is not the token's exp {exp}");
    info
}

// ---------------------------------------------------------------------------------------------
// client_credentials with every client authentication method

/// client_credentials with a client_id/client_secret method; returns the printed token.
fn client_credentials_with_secret(provider: &Provider, method: &str, (client_id, secret): (&str, &str)) -> Value {
    let dir = TempDir::new().unwrap();
    let spec = format!(
        "  tokenEndpoint: {}\n  grantType: client_credentials\n  clientAuthentication: {method}\n  credentialsRef:\n    name: creds\n  scopes: [\"api:read\"]\n",
        provider.token_endpoint
    );
    let file = write_manifest(
        &dir,
        "cc.yaml",
        &[secret_yaml(&[("client_id", client_id), ("client_secret", secret)], &[]), client_credential_yaml(&spec)],
    );
    let run = fetch(&[&file], &[]);
    let token = run.token();
    run.assert_leaks_none(&[secret]);
    let info = assert_genuine(provider, &token, client_id);
    assert_eq!(info["scope"], "api:read", "{info}");
    assert_eq!(token["scope"], "api:read", "{token}");
    token
}

#[test]
fn client_credentials_with_client_secret_basic_gets_a_genuine_token() {
    let provider = Provider::start();
    client_credentials_with_secret(&provider, "client_secret_basic", BASIC);
}

#[test]
fn client_credentials_with_client_secret_post_gets_a_genuine_token() {
    let provider = Provider::start();
    client_credentials_with_secret(&provider, "client_secret_post", POST);
}

#[test]
fn client_credentials_with_client_secret_jwt_hs256_gets_a_genuine_token() {
    let provider = Provider::start();
    let dir = TempDir::new().unwrap();
    let (client_id, secret) = SECRET_JWT;
    let spec = format!(
        "  tokenEndpoint: {}\n  clientAuthentication: client_secret_jwt\n  credentialsRef:\n    name: creds\n  assertion:\n    algorithm: HS256\n",
        provider.token_endpoint
    );
    let file = write_manifest(
        &dir,
        "cc.yaml",
        &[secret_yaml(&[("client_id", client_id), ("client_secret", secret)], &[]), client_credential_yaml(&spec)],
    );
    let run = fetch(&[&file], &[]);
    let token = run.token();
    run.assert_leaks_none(&[secret]);
    assert_genuine(&provider, &token, client_id);
}

/// private_key_jwt: the key sits base64-encoded in the Secret's `data`, as kubectl would store it.
fn client_credentials_with_private_key_jwt(provider: &Provider, client_id: &str, key_file: &str, algorithm: &str) {
    let key = std::fs::read_to_string(server_dir().join("keys").join(key_file)).expect("test key");
    let dir = TempDir::new().unwrap();
    let spec = format!(
        "  tokenEndpoint: {}\n  grantType: client_credentials\n  clientAuthentication: private_key_jwt\n  credentialsRef:\n    name: creds\n    privateKeyKey: private_key.pem\n  scopes: [\"api:read\", \"api:write\"]\n  assertion:\n    algorithm: {algorithm}\n    keyId: {client_id}\n",
        provider.token_endpoint
    );
    // The Secret and the ClientCredential in two files, like `kubectl apply -f a -f b`.
    let secret_file = write_manifest(
        &dir,
        "secret.yaml",
        &[secret_yaml(&[("client_id", client_id)], &[("private_key.pem", key.as_str())])],
    );
    let cc_file = write_manifest(&dir, "cc.yaml", &[client_credential_yaml(&spec)]);
    let run = fetch(&[&secret_file, &cc_file], &[]);
    let token = run.token();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    run.assert_leaks_none(&[&key_body, key.lines().nth(1).unwrap()]);
    let info = assert_genuine(provider, &token, client_id);
    assert_eq!(info["scope"], "api:read api:write", "{info}");
}

#[test]
fn client_credentials_with_private_key_jwt_rs256_gets_a_genuine_token() {
    let provider = Provider::start();
    client_credentials_with_private_key_jwt(&provider, RS256_CLIENT, "rs256.pem", "RS256");
}

#[test]
fn client_credentials_with_private_key_jwt_es256_gets_a_genuine_token() {
    let provider = Provider::start();
    client_credentials_with_private_key_jwt(&provider, ES256_CLIENT, "es256.pem", "ES256");
}

// ---------------------------------------------------------------------------------------------
// Discovery, resource indicators, --output token

#[test]
fn oidc_discovery_via_issuer_finds_the_token_endpoint_for_basic_and_private_key_jwt() {
    let provider = Provider::start();
    let dir = TempDir::new().unwrap();

    let (client_id, secret) = BASIC;
    let spec = format!(
        "  issuer: {}\n  clientAuthentication: client_secret_basic\n  credentialsRef:\n    name: creds\n",
        provider.issuer
    );
    let file = write_manifest(
        &dir,
        "basic.yaml",
        &[secret_yaml(&[("client_id", client_id), ("client_secret", secret)], &[]), client_credential_yaml(&spec)],
    );
    let run = fetch(&[&file], &[]);
    run.assert_leaks_none(&[secret]);
    assert_genuine(&provider, &run.token(), client_id);

    // The client assertion's default aud is the discovered token endpoint.
    let key = std::fs::read_to_string(server_dir().join("keys/es256.pem")).expect("test key");
    let spec = format!(
        "  issuer: {}\n  clientAuthentication: private_key_jwt\n  credentialsRef:\n    name: creds\n    privateKeyKey: key\n",
        provider.issuer
    );
    let file = write_manifest(
        &dir,
        "es256.yaml",
        &[secret_yaml(&[("client_id", ES256_CLIENT), ("key", key.as_str())], &[]), client_credential_yaml(&spec)],
    );
    assert_genuine(&provider, &fetch(&[&file], &[]).token(), ES256_CLIENT);
}

#[test]
fn resource_indicator_is_sent_and_an_unknown_one_is_a_permanent_invalid_target() {
    let provider = Provider::start();
    let dir = TempDir::new().unwrap();
    let (client_id, secret) = POST;
    let manifest = |resource: &str| {
        let spec = format!(
            "  tokenEndpoint: {}\n  clientAuthentication: client_secret_post\n  credentialsRef:\n    name: creds\n  resource: \"{resource}\"\n",
            provider.token_endpoint
        );
        write_manifest(
            &dir,
            "cc.yaml",
            &[secret_yaml(&[("client_id", client_id), ("client_secret", secret)], &[]), client_credential_yaml(&spec)],
        )
    };

    assert_genuine(&provider, &fetch(&[&manifest(RESOURCE)], &[]).token(), client_id);

    let run = fetch(&[&manifest("urn:tokensync:not-a-resource-of-this-server")], &[]);
    run.assert_failed_with("invalid_target", "permanent");
    run.assert_leaks_none(&[secret]);
}

#[test]
fn output_token_prints_only_the_access_token() {
    let provider = Provider::start();
    let dir = TempDir::new().unwrap();
    let (client_id, secret) = BASIC;
    let spec = format!(
        "  tokenEndpoint: {}\n  clientAuthentication: client_secret_basic\n  credentialsRef:\n    name: creds\n",
        provider.token_endpoint
    );
    let file = write_manifest(
        &dir,
        "cc.yaml",
        &[secret_yaml(&[("client_id", client_id), ("client_secret", secret)], &[]), client_credential_yaml(&spec)],
    );
    let run = fetch(&[&file], &["--output", "token"]);
    assert_eq!(run.code, Some(0), "tokensync fetch failed: {}", run.stderr);
    let access_token = run.stdout.trim();
    assert!(!access_token.is_empty() && !access_token.contains(char::is_whitespace), "stdout: {:?}", run.stdout);
    let info = provider.introspect(access_token);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], client_id, "{info}");
}

// ---------------------------------------------------------------------------------------------
// Failures

#[test]
fn wrong_client_secret_is_a_permanent_invalid_client_and_is_never_printed() {
    let provider = Provider::start();
    let dir = TempDir::new().unwrap();
    let wrong = "wrong-secret-b6f1c0a2d9e84e7f";
    for (method, client_id) in [("client_secret_basic", BASIC.0), ("client_secret_post", POST.0)] {
        let spec = format!(
            "  tokenEndpoint: {}\n  clientAuthentication: {method}\n  credentialsRef:\n    name: creds\n",
            provider.token_endpoint
        );
        let file = write_manifest(
            &dir,
            "cc.yaml",
            &[secret_yaml(&[("client_id", client_id), ("client_secret", wrong)], &[]), client_credential_yaml(&spec)],
        );
        let run = fetch(&[&file], &[]);
        run.assert_failed_with("invalid_client", "permanent");
        run.assert_leaks_none(&[wrong, &BASE64.encode(format!("{client_id}:{wrong}"))]);
    }
}

// ---------------------------------------------------------------------------------------------
// authorization_code bootstrap and refresh token rotation

/// The rotation client's manifest: `grant` is authorization_code (the Secret holds `code`) or
/// refresh_token (the Secret holds `refresh_token`).
fn rotation_manifest(provider: &Provider, dir: &TempDir, grant: &str, value: &str) -> PathBuf {
    let (client_id, secret) = ROTATION;
    let (key_field, key) = match grant {
        "authorization_code" => ("authorizationCodeKey", "code"),
        "refresh_token" => ("refreshTokenKey", "refresh_token"),
        other => panic!("no such grant in this test: {other}"),
    };
    let spec = format!(
        "  tokenEndpoint: {}\n  grantType: {grant}\n  clientAuthentication: client_secret_post\n  credentialsRef:\n    name: creds\n    {key_field}: {key}\n  extraParameters:\n    redirect_uri: \"{REDIRECT_URI}\"\n",
        provider.token_endpoint
    );
    write_manifest(
        dir,
        &format!("{grant}.yaml"),
        &[
            secret_yaml(&[("client_id", client_id), ("client_secret", secret), (key, value)], &[]),
            client_credential_yaml(&spec),
        ],
    )
}

fn refresh_token_of(token: &Value) -> String {
    token["refresh_token"].as_str().unwrap_or_else(|| panic!("no refresh_token printed: {token}")).to_owned()
}

#[test]
fn authorization_code_bootstrap_then_rotating_refresh_chain_and_reuse_is_a_permanent_invalid_grant() {
    let provider = Provider::start();
    let dir = TempDir::new().unwrap();
    let (client_id, secret) = ROTATION;

    // Bootstrap: exchange a one-time code (with the redirect_uri it was issued for).
    let code = provider.authorization_code();
    let run = fetch(&[&rotation_manifest(&provider, &dir, "authorization_code", &code)], &[]);
    let token = run.token();
    run.assert_leaks_none(&[secret, &code]);
    let info = assert_genuine(&provider, &token, client_id);
    assert_eq!(info["sub"], "interop-user", "{info}");
    assert_eq!(token["scope"], "api:read", "{token}");
    let first = refresh_token_of(&token);

    // Three refreshes, each with the refresh token the previous step returned.
    let mut used = vec![first.clone()];
    let mut current = first;
    for step in 1..=3 {
        let run = fetch(&[&rotation_manifest(&provider, &dir, "refresh_token", &current)], &[]);
        let token = run.token();
        let next = refresh_token_of(&token);
        assert!(!used.contains(&next), "refresh {step} did not rotate the refresh token");
        run.assert_leaks_none(&[secret, &current]);
        assert_genuine(&provider, &token, client_id);
        used.push(next.clone());
        current = next;
    }

    // Presenting an already used refresh token is rejected (and revokes the grant).
    let reused = &used[1];
    let run = fetch(&[&rotation_manifest(&provider, &dir, "refresh_token", reused)], &[]);
    run.assert_failed_with("invalid_grant", "permanent");
    run.assert_leaks_none(&[secret, reused]);
    assert!(
        provider.stderr().lines().all(|l| !l.contains("server_error")),
        "the provider logged a server error:\n{}",
        provider.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS client authentication (RFC 8705) over HTTPS, with certificate-bound tokens

const MTLS_CLIENT: &str = "interop-mtls";
const SELF_SIGNED_CLIENT: &str = "interop-self-signed";
/// The server's resource with JWT access tokens: their cnf claim is visible to the test.
const JWT_RESOURCE: &str = "urn:tokensync:interop-jwt-api";

/// The CA bundle Secret `ca` and the client certificate Secret `client-tls` (kubernetes.io/tls,
/// as cert-manager writes it, or other key names), base64 in `data` as kubectl stores them.
fn tls_secrets_yaml(pki: &Pki, client: &Identity, cert_key: &str, key_key: &str) -> Vec<String> {
    let ca = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ca\ntype: Opaque\ndata:\n  ca.crt: {}\n",
        BASE64.encode(&pki.ca_pem)
    );
    let tls = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: client-tls\ntype: kubernetes.io/tls\ndata:\n  {cert_key}: {}\n  {key_key}: {}\n",
        BASE64.encode(&client.cert_pem),
        BASE64.encode(&client.key_pem)
    );
    vec![ca, tls]
}

/// A ClientCredential for mutual TLS client authentication; `endpoint` is the spec's
/// `tokenEndpoint: ...` or `issuer: ...` line, `extra` more spec lines.
fn mtls_credential_yaml(endpoint: &str, method: &str, client_id: &str, extra: &str) -> String {
    client_credential_yaml(&format!(
        "  {endpoint}\n  clientAuthentication: {method}\n  clientId: {client_id}\n  tls:\n    caBundleSecretRef:\n      name: ca\n    clientCertificateSecretRef:\n      name: client-tls\n{extra}"
    ))
}

/// Runs fetch with a kubernetes.io/tls Secret holding `client`.
fn fetch_mtls(pki: &Pki, client: &Identity, endpoint: &str, method: &str, client_id: &str) -> Fetch {
    let dir = TempDir::new().unwrap();
    let mut documents = tls_secrets_yaml(pki, client, "tls.crt", "tls.key");
    documents.push(mtls_credential_yaml(endpoint, method, client_id, ""));
    let run = fetch(&[&write_manifest(&dir, "mtls.yaml", &documents)], &[]);
    run.assert_leaks_none(&[&client.key_body()]);
    run
}

/// The claims of a JWT, decoded by the test itself.
fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[test]
fn tls_client_auth_through_the_discovered_mtls_alias_gets_a_token_bound_to_the_presented_certificate() {
    let pki = Pki::new();
    let provider = Provider::start_tls(&pki);
    let client = pki.client(MTLS_CLIENT);

    let run = fetch_mtls(&pki, &client, &format!("issuer: {}", provider.issuer), "tls_client_auth", MTLS_CLIENT);
    let token = run.token();
    assert_eq!(token["client_certificate"]["x5t#S256"], client.thumbprint(), "{token}");
    assert_eq!(token["client_certificate"]["subject"], "CN=interop-mtls", "{token}");
    let info = assert_genuine(&provider, &token, MTLS_CLIENT);
    assert_eq!(info["cnf"]["x5t#S256"], client.thumbprint(), "the token is bound to the certificate presented: {info}");

    // A renewed certificate (same subject, new key, as cert-manager renews) is used by the
    // next request, and the new token is bound to it.
    let renewed = pki.client(MTLS_CLIENT);
    assert_ne!(renewed.thumbprint(), client.thumbprint());
    let run = fetch_mtls(&pki, &renewed, &format!("issuer: {}", provider.issuer), "tls_client_auth", MTLS_CLIENT);
    let info = assert_genuine(&provider, &run.token(), MTLS_CLIENT);
    assert_eq!(info["cnf"]["x5t#S256"], renewed.thumbprint(), "{info}");

    // The plain token_endpoint never asks for a certificate: without the alias (RFC 8705 5)
    // the server sees none, which is why discovery must prefer the alias.
    let plain = fetch_mtls(
        &pki,
        &client,
        &format!("tokenEndpoint: {}", provider.token_endpoint),
        "tls_client_auth",
        MTLS_CLIENT,
    );
    plain.assert_failed_with("invalid_client", "permanent");
}

#[test]
fn self_signed_tls_client_auth_with_the_registered_certificate_gets_a_jwt_whose_cnf_is_its_thumbprint() {
    let pki = Pki::new();
    let provider = Provider::start_tls(&pki);
    let mtls_endpoint = provider.mtls_token_endpoint.clone().expect("the TLS server has an mTLS token endpoint");
    let dir = TempDir::new().unwrap();
    // Other key names than cert-manager's.
    let mut documents = tls_secrets_yaml(&pki, &pki.self_signed, "client.pem", "client-key.pem");
    documents.push(mtls_credential_yaml(
        &format!("tokenEndpoint: {mtls_endpoint}"),
        "self_signed_tls_client_auth",
        SELF_SIGNED_CLIENT,
        &format!("      certificateKey: client.pem\n      privateKeyKey: client-key.pem\n  resource: {JWT_RESOURCE}\n"),
    ));
    let run = fetch(&[&write_manifest(&dir, "self-signed.yaml", &documents)], &[]);
    let token = run.token();
    run.assert_leaks_none(&[&pki.self_signed.key_body()]);
    let thumbprint = pki.self_signed.thumbprint();
    let claims = jwt_claims(token["access_token"].as_str().unwrap());
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint, "{claims}");
    assert_eq!(claims["client_id"], SELF_SIGNED_CLIENT, "{claims}");
    assert_eq!(claims["aud"], JWT_RESOURCE, "{claims}");
    // tokensync read the binding and says so.
    assert_eq!(token["cnf"]["x5t#S256"], thumbprint, "{token}");
    assert_eq!(token["client_certificate"]["x5t#S256"], thumbprint, "{token}");
}

#[test]
fn a_certificate_the_server_does_not_accept_is_a_permanent_invalid_client_that_names_the_certificate() {
    let pki = Pki::new();
    let provider = Provider::start_tls(&pki);
    let endpoint = format!("tokenEndpoint: {}", provider.mtls_token_endpoint.clone().unwrap());
    for (method, client_id, certificate, subject) in [
        // The right subject from a CA the server does not trust.
        ("tls_client_auth", MTLS_CLIENT, node::untrusted_client(MTLS_CLIENT), "CN=interop-mtls"),
        // The trusted CA, another subject than the one registered.
        ("tls_client_auth", MTLS_CLIENT, pki.client("someone-else"), "CN=someone-else"),
        // A self-signed certificate that is not the registered one.
        (
            "self_signed_tls_client_auth",
            SELF_SIGNED_CLIENT,
            node::self_signed(SELF_SIGNED_CLIENT),
            "CN=interop-self-signed",
        ),
    ] {
        let run = fetch_mtls(&pki, &certificate, &endpoint, method, client_id);
        run.assert_failed_with("invalid_client", "permanent");
        assert!(run.stderr.contains("the server did not accept the client certificate"), "{}", run.stderr);
        assert!(run.stderr.contains(subject) && run.stderr.contains(&certificate.thumbprint()), "{}", run.stderr);
    }
}

#[test]
fn unusable_client_certificates_fail_before_any_request_with_what_is_wrong() {
    let pki = Pki::new();
    let good = pki.client(MTLS_CLIENT);
    let other = pki.client(MTLS_CLIENT);
    // Nothing listens here: had a request been made, the error would be a connection error.
    let endpoint = "tokenEndpoint: https://127.0.0.1:1/token";
    let cases = [
        (pki.expired_client(MTLS_CLIENT), "the client certificate expired at 2021-01-01T00:00:00Z"),
        (
            Identity { cert_pem: good.cert_pem.clone(), key_pem: other.key_pem.clone() },
            "does not belong to the client certificate",
        ),
        (Identity { cert_pem: "not a certificate".into(), key_pem: good.key_pem.clone() }, "holds no PEM certificate"),
        (Identity { cert_pem: good.cert_pem.clone(), key_pem: "not a key".into() }, "is not a PEM private key"),
    ];
    for (identity, expected) in cases {
        let run = fetch_mtls(&pki, &identity, endpoint, "tls_client_auth", MTLS_CLIENT);
        run.assert_failed_with("SourceSecretInvalid", "permanent");
        assert!(run.stderr.contains(expected), "expected {expected:?}:\n{}", run.stderr);
        assert!(!run.stderr.contains("cannot connect"), "a request was made:\n{}", run.stderr);
        run.assert_leaks_none(&[&good.key_body(), &other.key_body()]);
    }

    // A Secret without the key is named with the key.
    let dir = TempDir::new().unwrap();
    let mut documents = tls_secrets_yaml(&pki, &good, "tls.crt", "not-tls.key");
    documents.push(mtls_credential_yaml(endpoint, "tls_client_auth", MTLS_CLIENT, ""));
    let run = fetch(&[&write_manifest(&dir, "missing.yaml", &documents)], &[]);
    // Exit code 2: the input files are incomplete.
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains(r#"SourceSecretInvalid: Secret client-tls has no key "tls.key""#), "{}", run.stderr);
}

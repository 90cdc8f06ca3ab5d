//! No credential ever reaches an error, a Debug rendering or a log line — even when the
//! server echoes the request back at us. Every failure path runs with recognisable secrets,
//! all logging (tokensync's, reqwest's, hyper's) is captured at TRACE, and the canaries are
//! searched for in every form they were sent in.

mod token_server;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use secrecy::SecretString;
use serde_json::json;
use token_server::{Recorded, Reply, TokenServer};
use tokensync::oauth::config::RefreshEndpointConfig;
use tokensync::oauth::{
    ClientAuthentication, Credentials, Endpoint, EndpointPolicy, GrantType, RequestEncoding, TokenClient,
    TokenRequestConfig, TransportSettings,
};
use url::Url;

const CLIENT_SECRET: &str = "CANARY-client-secret-1f2e";
const REFRESH_TOKEN: &str = "CANARY-refresh-token-9a8b";
const STATE_REFRESH_TOKEN: &str = "CANARY-state-refresh-3d3d";
const AUTH_CODE: &str = "CANARY-auth-code-7c6d";
const ACCESS_TOKEN: &str = "CANARY-access-token-5e4f";
/// A ServiceAccount token (the client assertion, jwt-bearer assertion or token-exchange
/// subject token of a secretless credential).
const SA_TOKEN: &str = "CANARY-sa-token.eyJpc3MiOiJrOHMifQ.sig-2b2b";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every way a server can throw the request back at us.
fn echoing_replies(r: &Recorded) -> Vec<Reply> {
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let auth = r.header("authorization").unwrap_or_default().to_owned();
    let echo = format!("{body} {auth}");
    vec![
        Reply::text(500, "text/html", &format!("<html><pre>{echo}</pre></html>")),
        Reply::json(400, json!({"error": "invalid_client", "error_description": echo})),
        Reply::json(200, json!({"error": "invalid_grant", "error_description": echo})),
        Reply::text(200, "text/plain", &echo),
        Reply::text(401, "text/plain", &auth),
        Reply::json(200, json!({"access_token": 42, "echo": echo})),
        Reply::text(429, "application/json", &format!("{{\"message\": \"{echo}\"}}")).header("retry-after", "1"),
    ]
}

fn private_key() -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/keys/rsa.pem", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn setups(base: &str) -> Vec<(String, TokenRequestConfig, Credentials, Option<SecretString>)> {
    let endpoint = || Endpoint::Token(Url::parse(&format!("{base}/token")).unwrap());
    let creds = Credentials {
        client_id: "client-id".into(),
        client_secret: Some(CLIENT_SECRET.to_owned().into()),
        private_key: Some(private_key().into()),
        refresh_token: Some(REFRESH_TOKEN.to_owned().into()),
        authorization_code: Some(AUTH_CODE.to_owned().into()),
        federated_token: None,
    };
    let mut out = Vec::new();
    for auth in [
        ClientAuthentication::ClientSecretBasic,
        ClientAuthentication::ClientSecretPost,
        ClientAuthentication::PrivateKeyJwt,
        ClientAuthentication::ClientSecretJwt,
        ClientAuthentication::ServiceAccountToken,
        ClientAuthentication::None,
    ] {
        for grant in [
            GrantType::ClientCredentials,
            GrantType::RefreshToken,
            GrantType::AuthorizationCode,
            GrantType::JwtBearer,
            GrantType::TokenExchange,
        ] {
            // The ServiceAccount token stands in for the secret material where it is used.
            let sa_based = auth == ClientAuthentication::ServiceAccountToken
                || (auth == ClientAuthentication::None
                    && matches!(grant, GrantType::JwtBearer | GrantType::TokenExchange));
            if auth == ClientAuthentication::None && !sa_based {
                continue;
            }
            let creds = Credentials {
                federated_token: (sa_based || grant == GrantType::TokenExchange).then(|| SA_TOKEN.to_owned().into()),
                ..creds.clone()
            };
            for encoding in [RequestEncoding::Form, RequestEncoding::Json] {
                let mut c = TokenRequestConfig::new(endpoint());
                c.client_authentication = auth;
                c.grant = grant;
                c.encoding = encoding;
                out.push((format!("{auth:?}/{grant:?}/{encoding:?}"), c, creds.clone(), None));
            }
        }
    }
    // A stored refresh token and a separate refresh endpoint taking only the token.
    let mut c = TokenRequestConfig::new(endpoint());
    c.refresh_endpoint = Some(RefreshEndpointConfig {
        url: Url::parse(&format!("{base}/refresh")).unwrap(),
        encoding: RequestEncoding::Json,
        refresh_token_only: true,
    });
    out.push(("refresh endpoint".into(), c, creds.clone(), Some(STATE_REFRESH_TOKEN.to_owned().into())));
    out
}

fn forms_of(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![secret.to_owned(), form]
}

#[tokio::test]
async fn no_failure_path_reveals_a_credential_in_errors_debug_or_logs() {
    let logs = Captured::default();
    let _ = tracing_log::LogTracer::init();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Which echo the server uses next; every setup is run against every echo.
    let which = Arc::new(Mutex::new(0usize));
    let w = which.clone();
    let sent_assertions = Arc::new(Mutex::new(Vec::<String>::new()));
    let sa = sent_assertions.clone();
    let server = TokenServer::start(move |r: &Recorded| {
        let p = r.params();
        for k in ["client_assertion", "assertion", "subject_token"] {
            if let Some(a) = p.get(k) {
                sa.lock().unwrap().push(a.clone());
            }
        }
        if let Some(b) = r.header("authorization") {
            sa.lock().unwrap().push(b.trim_start_matches("Basic ").to_owned());
        }
        let mut replies = echoing_replies(r);
        let i = *w.lock().unwrap() % replies.len();
        replies.swap_remove(i)
    })
    .await;
    let engine =
        TokenClient::new(EndpointPolicy { allow_http: true, ..Default::default() }, TransportSettings::default());
    let mut outputs = Vec::new();
    let echo_count = echoing_replies(&Recorded {
        method: axum::http::Method::POST,
        path: String::new(),
        headers: Default::default(),
        body: Vec::new(),
    })
    .len();
    for (what, config, creds, state) in setups(&server.base) {
        outputs.push(format!("{config:?} {creds:?}"));
        for i in 0..echo_count {
            *which.lock().unwrap() = i;
            let e = engine.acquire(&config, &creds, state.as_ref()).await.expect_err(&what);
            outputs.push(format!("{what}: {e} | {e:?}"));
        }
    }

    // A token that the verify probe refuses, with the probe echoing the Authorization header.
    let verify = TokenServer::start(|r: &Recorded| match r.path.as_str() {
        "/token" => Reply::json(
            200,
            json!({"access_token": ACCESS_TOKEN, "expires_in": 60, "refresh_token": "CANARY-rt-new-0000"}),
        ),
        _ => Reply::text(401, "text/plain", &format!("bad token {}", r.header("authorization").unwrap_or_default())),
    })
    .await;
    let mut config = TokenRequestConfig::new(Endpoint::Token(Url::parse(&verify.url("/token")).unwrap()));
    config.verify_url = Some(Url::parse(&verify.url("/me")).unwrap());
    let creds = Credentials {
        client_id: "c".into(),
        client_secret: Some(CLIENT_SECRET.to_owned().into()),
        ..Default::default()
    };
    let e = engine.acquire(&config, &creds, None).await.unwrap_err();
    outputs.push(format!("{e} | {e:?}"));
    config.verify_url = None;
    let acquired = engine.acquire(&config, &creds, None).await.unwrap();
    outputs.push(format!("{acquired:?}"));

    let text = format!("{}\n{}", outputs.join("\n"), String::from_utf8_lossy(&logs.0.lock().unwrap()));
    assert!(text.len() > 10_000, "the failure paths ran and logged ({} bytes)", text.len());
    let mut needles: Vec<String> =
        [CLIENT_SECRET, REFRESH_TOKEN, STATE_REFRESH_TOKEN, AUTH_CODE, ACCESS_TOKEN, "CANARY-rt-new-0000", SA_TOKEN]
            .iter()
            .flat_map(|s| forms_of(s))
            .collect();
    needles.push(base64::engine::general_purpose::STANDARD.encode(format!("client-id:{CLIENT_SECRET}")));
    needles.push(private_key().lines().nth(3).unwrap().to_owned());
    needles.extend(sent_assertions.lock().unwrap().iter().filter(|a| a.len() > 20).cloned());
    assert!(needles.len() > 20, "assertions were captured");
    for needle in needles {
        assert!(!text.contains(&needle), "a credential leaked: {needle:.12}… found in output");
    }
    assert!(text.contains("[redacted]"), "echoed secrets were replaced, not dropped silently");
}

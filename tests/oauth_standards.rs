//! The token engine against the standards: every client authentication method, every
//! grant, OIDC discovery, request parameters, and every error class, each against a real
//! HTTP server on 127.0.0.1 that checks what it receives.

mod token_server;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use token_server::{Recorded, Reply, TokenServer};
use tokensync::oauth::config::{AssertionConfig, RefreshEndpointConfig, ResponseMapping};
use tokensync::oauth::{
    ClientAuthentication, Credentials, Endpoint, EndpointPolicy, ErrorKind, Flow, GrantType, RequestEncoding,
    SigningAlgorithm, TokenClient, TokenError, TokenRequestConfig, TransportSettings,
};
use url::Url;

fn key(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn ok_token() -> Reply {
    Reply::json(200, json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 600}))
}

fn config(server: &TokenServer) -> TokenRequestConfig {
    TokenRequestConfig::new(Endpoint::Token(Url::parse(&server.url("/token")).unwrap()))
}

fn creds(id: &str, secret: &str) -> Credentials {
    Credentials {
        client_id: id.into(),
        client_secret: Some(SecretString::from(secret.to_owned())),
        ..Default::default()
    }
}

fn client() -> TokenClient {
    TokenClient::new(EndpointPolicy { allow_http: true, ..Default::default() }, TransportSettings::default())
}

async fn acquire(config: &TokenRequestConfig, creds: &Credentials) -> Result<tokensync::oauth::Acquired, TokenError> {
    client().acquire(config, creds, None).await
}

#[tokio::test]
async fn client_secret_basic_form_urlencodes_id_and_secret_with_reserved_and_non_ascii_characters() {
    let server = TokenServer::start(|_| ok_token()).await;
    for (id, secret) in [("my:client", "p%ss+w:rd"), ("klïent id", "sécret/ü=&"), ("plain", "a+b%2Bc")] {
        acquire(&config(&server), &creds(id, secret)).await.unwrap();
        let r = server.requests().pop().unwrap();
        assert_eq!(r.basic(), Some((id.to_owned(), secret.to_owned())), "{id} / {secret}");
        let form = r.form().unwrap();
        assert_eq!(form.get("grant_type").map(String::as_str), Some("client_credentials"));
        assert!(!form.contains_key("client_secret") && !form.contains_key("client_id"));
    }
}

#[tokio::test]
async fn client_secret_post_puts_credentials_in_a_form_or_json_body() {
    let server = TokenServer::start(|_| ok_token()).await;
    let mut cfg = config(&server);
    cfg.client_authentication = ClientAuthentication::ClientSecretPost;
    for encoding in [RequestEncoding::Form, RequestEncoding::Json] {
        cfg.encoding = encoding;
        acquire(&cfg, &creds("cid", "csecret")).await.unwrap();
        let r = server.requests().pop().unwrap();
        assert!(r.header("authorization").is_none());
        let p = r.params();
        assert_eq!((p["client_id"].as_str(), p["client_secret"].as_str()), ("cid", "csecret"));
        let expected =
            if encoding == RequestEncoding::Json { "application/json" } else { "application/x-www-form-urlencoded" };
        assert_eq!(r.content_type(), expected);
    }
}

/// Verifies a client assertion as a server would and returns its claims.
fn verify_assertion(r: &Recorded, key: &DecodingKey, alg: Algorithm, audience: &str) -> Value {
    let p = r.params();
    assert_eq!(p["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    let mut validation = Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud", "jti"]);
    let data = jsonwebtoken::decode::<Value>(&p["client_assertion"], key, &validation).expect("the assertion verifies");
    assert_eq!(data.claims["iss"], p["client_id"]);
    assert_eq!(data.claims["sub"], p["client_id"]);
    assert_eq!(data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap(), 300);
    let mut claims = data.claims;
    claims["kid"] = data.header.kid.map(Value::from).unwrap_or(Value::Null);
    claims
}

#[tokio::test]
async fn private_key_jwt_signs_verifiable_assertions_with_rsa_and_ec_keys() {
    let server = TokenServer::start(|_| ok_token()).await;
    let audience = server.url("/token");
    let cases = [
        ("rsa.pem", "rsa.pub.pem", None, Algorithm::RS256),
        ("rsa-pkcs1.pem", "rsa.pub.pem", None, Algorithm::RS256),
        ("rsa.pem", "rsa.pub.pem", Some(SigningAlgorithm::PS256), Algorithm::PS256),
        ("ec256.pem", "ec256.pub.pem", None, Algorithm::ES256),
        ("ec384.pem", "ec384.pub.pem", None, Algorithm::ES384),
    ];
    let mut jtis = HashSet::new();
    for (private, public, wanted, alg) in cases {
        let mut cfg = config(&server);
        cfg.client_authentication = ClientAuthentication::PrivateKeyJwt;
        cfg.assertion = AssertionConfig { algorithm: wanted, key_id: Some("key-1".into()), ..Default::default() };
        let c = Credentials { client_id: "svc".into(), private_key: Some(key(private).into()), ..Default::default() };
        acquire(&cfg, &c).await.unwrap_or_else(|e| panic!("{private}: {e}"));
        let pem = key(public);
        let dk = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            _ => DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let r = server.requests().pop().unwrap();
        let claims = verify_assertion(&r, &dk, alg, &audience);
        assert_eq!(claims["kid"], "key-1");
        assert!(jtis.insert(claims["jti"].as_str().unwrap().to_owned()), "jti is unique");
        assert!(r.header("authorization").is_none());
    }
}

#[tokio::test]
async fn client_secret_jwt_signs_with_the_client_secret() {
    let server = TokenServer::start(|_| ok_token()).await;
    let mut cfg = config(&server);
    cfg.client_authentication = ClientAuthentication::ClientSecretJwt;
    cfg.assertion.audience = Some("https://issuer.example".into());
    acquire(&cfg, &creds("cid", "a-shared-secret-of-decent-length")).await.unwrap();
    let r = server.requests().pop().unwrap();
    let dk = DecodingKey::from_secret(b"a-shared-secret-of-decent-length");
    verify_assertion(&r, &dk, Algorithm::HS256, "https://issuer.example");
    assert!(!r.params().contains_key("client_secret"), "the secret itself is not sent");
}

#[tokio::test]
async fn unusable_private_keys_are_credential_errors() {
    let server = TokenServer::start(|_| ok_token()).await;
    let mut cfg = config(&server);
    cfg.client_authentication = ClientAuthentication::PrivateKeyJwt;
    let c =
        Credentials { client_id: "svc".into(), private_key: Some("not a key".to_owned().into()), ..Default::default() };
    let e = acquire(&cfg, &c).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidCredentials);
    cfg.assertion.algorithm = Some(SigningAlgorithm::ES256);
    let c = Credentials { client_id: "svc".into(), private_key: Some(key("rsa.pem").into()), ..Default::default() };
    assert_eq!(acquire(&cfg, &c).await.unwrap_err().kind, ErrorKind::InvalidConfiguration);
    assert!(server.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn scopes_audience_resource_extra_parameters_and_headers_are_sent() {
    let server = TokenServer::start(|_| ok_token()).await;
    let mut cfg = config(&server);
    cfg.scopes = vec!["read".into(), "write:all".into()];
    cfg.audience = Some("https://api.example".into());
    cfg.resource = Some("https://rs.example/".into());
    cfg.extra_parameters = BTreeMap::from([("tenant".into(), "t1".into())]);
    cfg.extra_headers = vec![("Accept-Language".into(), "en_US".into()), ("X-Trace".into(), "1".into())];
    acquire(&cfg, &creds("c", "s")).await.unwrap();
    let r = server.requests().pop().unwrap();
    let p = r.params();
    assert_eq!(p["scope"], "read write:all");
    assert_eq!(p["audience"], "https://api.example");
    assert_eq!(p["resource"], "https://rs.example/");
    assert_eq!(p["tenant"], "t1");
    assert_eq!(r.header("accept-language"), Some("en_US"));
    assert_eq!(r.header("x-trace"), Some("1"));
}

#[tokio::test]
async fn refresh_token_grant_sends_scope_again_and_hands_back_the_rotated_token() {
    let server = TokenServer::start(|r: &Recorded| {
        let p = r.params();
        if p.get("grant_type").map(String::as_str) == Some("refresh_token")
            && p.get("refresh_token").map(String::as_str) == Some("rt-old")
        {
            Reply::json(
                200,
                json!({"access_token": "at-2", "expires_in": 60, "refresh_token": "rt-new", "scope": "read"}),
            )
        } else {
            Reply::oauth_error(400, "invalid_grant", "refresh token reused")
        }
    })
    .await;
    let mut cfg = config(&server);
    cfg.grant = GrantType::RefreshToken;
    cfg.client_authentication = ClientAuthentication::None;
    cfg.scopes = vec!["read".into()];
    let c = Credentials {
        client_id: "public-client".into(),
        refresh_token: Some("rt-old".to_owned().into()),
        ..Default::default()
    };
    let acquired = acquire(&cfg, &c).await.unwrap();
    assert_eq!(acquired.flow, Flow::Refresh);
    assert!(acquired.refresh_token_rotated(c.refresh_token.as_ref()));
    assert_eq!(acquired.refresh_token_to_keep(c.refresh_token.as_ref()).unwrap().expose_secret(), "rt-new");
    let p = server.requests().pop().unwrap().params();
    assert_eq!((p["scope"].as_str(), p["client_id"].as_str()), ("read", "public-client"));
    assert!(!p.contains_key("client_secret"));

    // The state refresh token wins over the bootstrap one from the Secret.
    let stale = SecretString::from("rt-reused".to_owned());
    let e = client().acquire(&cfg, &c, Some(&stale)).await.unwrap_err();
    assert_eq!((e.kind, e.permanent, e.oauth_error.as_deref()), (ErrorKind::Rejected, true, Some("invalid_grant")));
}

#[tokio::test]
async fn authorization_code_is_exchanged_once_then_refreshed() {
    let server = TokenServer::start(|r: &Recorded| {
        let p = r.params();
        match p.get("grant_type").map(String::as_str) {
            Some("authorization_code") if p.get("code").map(String::as_str) == Some("one-time") => {
                Reply::json(200, json!({"access_token": "at-code", "expires_in": 60, "refresh_token": "rt-1"}))
            }
            Some("refresh_token") => Reply::json(200, json!({"access_token": "at-refresh", "expires_in": 60})),
            _ => Reply::oauth_error(400, "invalid_grant", "code already used"),
        }
    })
    .await;
    let mut cfg = config(&server);
    cfg.grant = GrantType::AuthorizationCode;
    cfg.extra_parameters.insert("redirect_uri".into(), "https://app.example/cb".into());
    let mut c = creds("cid", "sec");
    c.authorization_code = Some("one-time".to_owned().into());
    let first = acquire(&cfg, &c).await.unwrap();
    assert_eq!(first.flow, Flow::AuthorizationCode);
    let rt = first.refresh_token_to_keep(None).unwrap().clone();
    let p = server.requests().pop().unwrap().params();
    assert_eq!(p["redirect_uri"], "https://app.example/cb");
    let second = client().acquire(&cfg, &c, Some(&rt)).await.unwrap();
    assert_eq!(second.flow, Flow::Refresh);
    assert_eq!(
        second.refresh_token_to_keep(Some(&rt)).unwrap().expose_secret(),
        "rt-1",
        "the old one is kept when none is returned"
    );
    assert!(!server.requests().pop().unwrap().params().contains_key("code"));
}

#[tokio::test]
async fn jwt_bearer_grant_sends_a_signed_assertion_with_configured_claims() {
    let server = TokenServer::start(|_| ok_token()).await;
    let mut cfg = config(&server);
    cfg.grant = GrantType::JwtBearer;
    cfg.client_authentication = ClientAuthentication::None;
    cfg.scopes = vec!["https://www.googleapis.com/auth/cloud-platform".into()];
    cfg.assertion = AssertionConfig {
        issuer: Some("sa@project.iam.example".into()),
        subject: Some("user@example.com".into()),
        audience: Some("https://oauth2.example/token".into()),
        extra_claims: BTreeMap::from([("scope".into(), "a b".into())]),
        ..Default::default()
    };
    let c = Credentials {
        client_id: "sa@project.iam.example".into(),
        private_key: Some(key("rsa.pem").into()),
        ..Default::default()
    };
    assert_eq!(acquire(&cfg, &c).await.unwrap().flow, Flow::JwtBearer);
    let p = server.requests().pop().unwrap().params();
    assert_eq!(p["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert!(!p.contains_key("client_id"), "auth none sends only the assertion");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["https://oauth2.example/token"]);
    let dk = DecodingKey::from_rsa_pem(key("rsa.pub.pem").as_bytes()).unwrap();
    let claims = jsonwebtoken::decode::<Value>(&p["assertion"], &dk, &validation).unwrap().claims;
    assert_eq!(
        (claims["iss"].as_str(), claims["sub"].as_str(), claims["scope"].as_str()),
        (Some("sa@project.iam.example"), Some("user@example.com"), Some("a b"))
    );
}

#[tokio::test]
async fn oidc_discovery_finds_the_token_endpoint_checks_the_issuer_and_caches() {
    let issuer = Arc::new(Mutex::new(String::new()));
    let i = issuer.clone();
    let server = TokenServer::start(move |r: &Recorded| match r.path.as_str() {
        "/realms/x/.well-known/openid-configuration" => {
            let iss = i.lock().unwrap().clone();
            Reply::json(200, json!({"issuer": iss, "token_endpoint": format!("{iss}/protocol/openid-connect/token")}))
        }
        "/realms/x/protocol/openid-connect/token" => ok_token(),
        _ => Reply::text(404, "text/plain", "no"),
    })
    .await;
    *issuer.lock().unwrap() = server.url("/realms/x");
    let mut cfg = config(&server);
    cfg.endpoint = Endpoint::Issuer(Url::parse(&server.url("/realms/x")).unwrap());
    let engine = client();
    for _ in 0..2 {
        engine.acquire(&cfg, &creds("c", "s"), None).await.unwrap();
    }
    assert_eq!(server.requests_to("/realms/x/.well-known/openid-configuration").len(), 1, "cached");
    assert_eq!(server.requests_to("/realms/x/protocol/openid-connect/token").len(), 2);

    *issuer.lock().unwrap() = "https://impostor.example/realms/x".into();
    let e = client().acquire(&cfg, &creds("c", "s"), None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidConfiguration);
    assert!(e.message.contains("does not match"), "{e}");
}

#[tokio::test]
async fn separate_refresh_endpoint_standard_mode_authenticates_like_the_token_request() {
    let server = TokenServer::start(|r: &Recorded| match r.path.as_str() {
        "/refresh" => Reply::json(200, json!({"access_token": "at-r", "expires_in": 60, "refresh_token": "rt-2"})),
        _ => Reply::json(200, json!({"access_token": "at-t", "expires_in": 60, "refresh_token": "rt-1"})),
    })
    .await;
    let mut cfg = config(&server);
    cfg.refresh_endpoint = Some(RefreshEndpointConfig {
        url: Url::parse(&server.url("/refresh")).unwrap(),
        encoding: RequestEncoding::Json,
        refresh_token_only: false,
    });
    let rt = SecretString::from("rt-1".to_owned());
    let acquired = client().acquire(&cfg, &creds("c", "s"), Some(&rt)).await.unwrap();
    assert_eq!(acquired.flow, Flow::Refresh);
    let r = server.requests_to("/refresh").pop().unwrap();
    assert_eq!(r.basic(), Some(("c".into(), "s".into())));
    let p = r.params();
    assert_eq!((p["grant_type"].as_str(), p["refresh_token"].as_str()), ("refresh_token", "rt-1"));
}

/// (what the server does, the expected kind, permanent, retry-after seconds)
#[tokio::test]
async fn every_error_response_is_classified() {
    let cases: Vec<(&str, Reply, ErrorKind, bool, Option<u64>)> = vec![
        ("invalid_client", Reply::oauth_error(401, "invalid_client", "bad"), ErrorKind::Rejected, true, None),
        ("invalid_grant", Reply::oauth_error(400, "invalid_grant", "bad"), ErrorKind::Rejected, true, None),
        ("invalid_scope", Reply::oauth_error(400, "invalid_scope", "bad"), ErrorKind::Rejected, true, None),
        ("unauthorized_client", Reply::oauth_error(400, "unauthorized_client", ""), ErrorKind::Rejected, true, None),
        (
            "unsupported_grant_type",
            Reply::oauth_error(400, "unsupported_grant_type", ""),
            ErrorKind::Rejected,
            true,
            None,
        ),
        ("invalid_request", Reply::oauth_error(400, "invalid_request", ""), ErrorKind::Rejected, true, None),
        (
            "200 carrying an error",
            Reply::oauth_error(200, "invalid_client", "in a 200"),
            ErrorKind::Rejected,
            true,
            None,
        ),
        ("empty 401", Reply::text(401, "text/plain", ""), ErrorKind::Rejected, true, None),
        ("HTML 403", Reply::text(403, "text/html", "<html><h1>Forbidden</h1></html>"), ErrorKind::Rejected, true, None),
        ("HTML 200", Reply::text(200, "text/html", "<html>Login</html>"), ErrorKind::InvalidResponse, false, None),
        ("non-JSON 200", Reply::text(200, "text/plain", "access_token=abc"), ErrorKind::InvalidResponse, false, None),
        ("empty 200", Reply::text(200, "application/json", ""), ErrorKind::InvalidResponse, false, None),
        (
            "truncated JSON",
            Reply::text(200, "application/json", r#"{"access_token": "ab"#),
            ErrorKind::InvalidResponse,
            false,
            None,
        ),
        (
            "429 seconds",
            Reply::text(429, "text/plain", "slow down").header("retry-after", "42"),
            ErrorKind::Unavailable,
            false,
            Some(42),
        ),
        (
            "503 date",
            Reply::text(503, "text/html", "<h1>maintenance</h1>").header(
                "retry-after",
                &httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120)),
            ),
            ErrorKind::Unavailable,
            false,
            Some(120),
        ),
        ("500", Reply::text(500, "text/html", "Internal Server Error"), ErrorKind::Unavailable, false, None),
        ("502", Reply::text(502, "text/html", "Bad Gateway"), ErrorKind::Unavailable, false, None),
        ("JSON 503 server_error", Reply::oauth_error(503, "server_error", "down"), ErrorKind::Unavailable, false, None),
        (
            "temporarily_unavailable",
            Reply::oauth_error(400, "temporarily_unavailable", ""),
            ErrorKind::Unavailable,
            false,
            None,
        ),
    ];
    for (what, reply, kind, permanent, retry) in cases {
        let reply = Arc::new(Mutex::new(Some(reply)));
        let server = TokenServer::start(move |_| reply.lock().unwrap().take().unwrap_or_else(ok_token)).await;
        let e = acquire(&config(&server), &creds("c", "s")).await.unwrap_err();
        assert_eq!((e.kind, e.permanent), (kind, permanent), "{what}: {e}");
        let secs = e.retry_after.map(|d| d.as_secs());
        match retry {
            Some(expected) => assert!(secs.is_some_and(|s| s.abs_diff(expected) <= 2), "{what}: retry after {secs:?}"),
            None => assert_eq!(secs, None, "{what}"),
        }
        assert!(!e.message.is_empty() && !e.message.contains('\n'), "{what}: {e}");
    }
}

#[tokio::test]
async fn a_slow_server_times_out_as_transient() {
    let server = TokenServer::start(|_| ok_token().delayed(Duration::from_secs(5))).await;
    let engine = TokenClient::new(
        EndpointPolicy { allow_http: true, ..Default::default() },
        TransportSettings { request_timeout: Duration::from_millis(300), ..Default::default() },
    );
    let started = std::time::Instant::now();
    let e = engine.acquire(&config(&server), &creds("c", "s"), None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!((e.kind, e.permanent), (ErrorKind::Unavailable, false));
    assert!(e.message.contains("did not answer"), "{e}");
}

#[tokio::test]
async fn refused_connections_and_tls_failures_are_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut cfg =
        TokenRequestConfig::new(Endpoint::Token(Url::parse(&format!("http://127.0.0.1:{port}/token")).unwrap()));
    let e = acquire(&cfg, &creds("c", "s")).await.unwrap_err();
    assert_eq!((e.kind, e.permanent), (ErrorKind::Unavailable, false));
    assert!(e.message.contains("cannot connect"), "{e}");

    // https to a server that speaks plain http: the TLS handshake fails.
    let server = TokenServer::start(|_| ok_token()).await;
    cfg.endpoint = Endpoint::Token(Url::parse(&server.url("/token").replace("http://", "https://")).unwrap());
    let e = acquire(&cfg, &creds("c", "s")).await.unwrap_err();
    assert_eq!((e.kind, e.permanent), (ErrorKind::Unavailable, false), "{e}");
}

#[tokio::test]
async fn oversized_responses_are_refused() {
    let big = format!(r#"{{"access_token":"{}","expires_in":60}}"#, "a".repeat(2 * 1024 * 1024));
    let server = TokenServer::start(move |_| Reply::text(200, "application/json", &big)).await;
    let e = acquire(&config(&server), &creds("c", "s")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse);
    assert!(e.message.contains("more than"), "{e}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = TokenServer::start(|r: &Recorded| match r.path.as_str() {
        "/token" => Reply::text(307, "text/plain", "").header("location", "/elsewhere"),
        _ => ok_token(),
    })
    .await;
    let e = acquire(&config(&server), &creds("c", "s")).await.unwrap_err();
    assert_eq!(e.status, Some(307));
    assert!(server.requests_to("/elsewhere").is_empty(), "credentials never follow a redirect");
}

#[tokio::test]
async fn plain_http_needs_explicit_permission() {
    let server = TokenServer::start(|_| ok_token()).await;
    let strict = TokenClient::new(EndpointPolicy::default(), TransportSettings::default());
    let e = strict.acquire(&config(&server), &creds("c", "s"), None).await.unwrap_err();
    assert_eq!((e.kind, e.permanent), (ErrorKind::InvalidConfiguration, true));
    assert!(e.message.contains("--allow-http"), "{e}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn missing_credential_material_is_reported_before_any_request() {
    let server = TokenServer::start(|_| ok_token()).await;
    let c = Credentials { client_id: "c".into(), ..Default::default() };
    let e = acquire(&config(&server), &c).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidCredentials);
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn mapped_response_fields_and_default_lifetime_are_used() {
    let server = TokenServer::start(|_| Reply::json(200, json!({"result": {"jwt": "opaque-token"}}))).await;
    let mut cfg = config(&server);
    cfg.response = ResponseMapping {
        access_token: "result.jwt".into(),
        default_lifetime: Some(Duration::from_secs(1800)),
        ..Default::default()
    };
    let acquired = acquire(&cfg, &creds("c", "s")).await.unwrap();
    assert_eq!(acquired.token.access_token.expose_secret(), "opaque-token");
    let lifetime = acquired.token.expires_at.as_second() - acquired.token.issued_at.as_second();
    assert_eq!(lifetime, 1800);
}

//! Secretless credentials under the controller: a Kubernetes ServiceAccount token stands where
//! a client secret stood.
//!
//! On a real control plane (tests/support/control_plane.rs), each test in a namespace of its
//! own: the real kube-apiserver issues the ServiceAccount tokens (TokenRequest) and publishes
//! its issuer's discovery document and keys, made public as Kubernetes documents for issuers
//! that others verify (tests/service_accounts). The token servers are emulators of Microsoft
//! Entra ID and Google STS and an RFC 7523 endpoint (tests/federation) that verify each token
//! against those keys, fetched anonymously through discovery trusting only the control
//! plane's CA, as the real identity providers do.
//!
//! On the API server double (support::apiserver), what a real server cannot stage:
//! - a ClientCredential naming a ServiceAccount in another namespace: the real server's
//!   admission (the CRD's CEL rule) refuses it, so only the double, which runs no CEL, shows
//!   the controller's own validation holding when admission did not run;
//! - the double's own TokenRequest: the same checks run against the real server and the
//!   double ([`assert_token_request_contract`]), so the double the other suites use stays
//!   faithful.

mod federation;
mod service_accounts;
mod support;
mod token_server;

use jsonwebtoken::jwk::JwkSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::controller::{Cc, NS, Running, args};
use support::real::{Env, decoded, kube_requests};
use token_server::TokenServer;
use tokensync::api::ServiceAccountStatus;

const TENANT: &str = "7f3c0e1a-0000-4000-8000-000000000001";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const GOOGLE_PROVIDER: &str =
    "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tokensync/providers/test";
const GOOGLE_AUDIENCE: &str =
    "https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tokensync/providers/test";

fn service_account_json(name: &str, allowed: Option<&str>) -> ServiceAccount {
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    if let Some(a) = allowed {
        sa["metadata"]["annotations"] = json!({"tokensync.io/allowed-audiences": a});
    }
    serde_json::from_value(sa).unwrap()
}

/// A ClientCredential with no Secret at all: inline client id, a ServiceAccount.
fn secretless(name: &str, endpoint: &str, spec: Value) -> Cc {
    Cc::new(name, endpoint).spec(json!({"credentialsRef": null, "clientAuthentication": null})).spec(spec)
}

fn entra_spec(sa: &str) -> Value {
    json!({
        "clientId": CLIENT_ID,
        "clientAuthentication": "service_account_token",
        "serviceAccountRef": {"name": sa, "audience": federation::entra::AUDIENCE},
        "scopes": ["https://graph.microsoft.com/.default"],
    })
}

fn claims(jwt: &str) -> Value {
    federation::peek(jwt).expect("a JWT")
}

// ---- On the real control plane ------------------------------------------------------------

/// A namespace on the real control plane, with its issuer made public, and the issuer's keys
/// as an identity provider fetched them.
async fn real() -> (Env, JwkSet) {
    let env = Env::new("secretless").await;
    service_accounts::make_public(&env.client).await;
    let jwks = service_accounts::jwks(&env.plane).await;
    (env, jwks)
}

async fn service_account(env: &Env, name: &str, allowed: Option<&str>) -> ServiceAccount {
    env.api::<ServiceAccount>().create(&PostParams::default(), &service_account_json(name, allowed)).await.unwrap()
}

fn subject(env: &Env, sa: &str) -> String {
    format!("system:serviceaccount:{}:{sa}", env.ns)
}

/// Entra trusting the real issuer for ServiceAccount `subject_sa` of the test's namespace.
async fn entra(env: &Env, jwks: &JwkSet, subject_sa: &str) -> TokenServer {
    let fic = federation::FederatedCredential {
        client_id: CLIENT_ID.into(),
        issuer: env.plane.issuer().into(),
        subject: subject(env, subject_sa),
        audience: federation::entra::AUDIENCE.into(),
    };
    federation::entra::start_trusting(TENANT, jwks.clone(), vec![fic]).await
}

fn entra_endpoint(idp: &TokenServer) -> String {
    idp.url(&format!("/{TENANT}/oauth2/v2.0/token"))
}

/// TokenRequests the controller sent (any answer).
fn token_requests(controller: &Running) -> u64 {
    kube_requests(&controller.metrics, "create", "serviceaccounts/token")
}

/// The ServiceAccount tokens an identity provider was presented, under `param`.
fn presented(idp: &TokenServer, param: &str) -> Vec<String> {
    idp.requests().iter().map(|r| r.params().get(param).cloned().expect("the token was presented")).collect()
}

/// The lifetime tokensync asks for when spec.serviceAccountRef.expirationSeconds is unset: the
/// shortest the API server allows.
const DEFAULT_LIFETIME: i64 = 600;

/// Each token is one the real API server issued for what the controller asked in its
/// TokenRequest: its signature verifies against the issuer's keys, its subject is `sa`, its
/// `aud` is exactly `audience`, `exp - iat` is `lifetime` seconds; and it does not
/// authenticate to the API server (a token tokensync mints is never usable against
/// Kubernetes itself).
async fn assert_issued_by_the_api_server(
    env: &Env,
    jwks: &JwkSet,
    tokens: &[String],
    sa: &str,
    audience: &str,
    lifetime: i64,
) {
    assert!(!tokens.is_empty(), "tokens were presented");
    for token in tokens {
        let claims = federation::verify(token, jwks, env.plane.issuer(), audience).expect("a genuine token");
        assert_eq!(claims["sub"], json!(subject(env, sa)));
        assert_eq!(claims["aud"], json!([audience]), "the audience asked for, and no other");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            lifetime,
            "the lifetime asked for"
        );
        let as_token = service_accounts::config_with_token(&env.plane, &env.ns, token);
        assert_eq!(service_accounts::who_am_i(as_token).await, Err(401), "the API server does not accept it");
    }
}

/// Every log line written on the test's thread, where the controller runs (a current-thread
/// runtime), at TRACE: tokensync's, kube's, hyper's and reqwest's.
struct Logs {
    lines: Captured,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        let _ = tracing_log::LogTracer::init();
        let lines = Captured::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        Logs { lines, _guard: tracing::subscriber::set_default(subscriber) }
    }

    /// No log line holds one of `tokens`, nor its signature (the part that makes it a
    /// credential).
    fn assert_hold_none_of(&self, tokens: &[String]) {
        assert!(!tokens.is_empty(), "tokens were issued");
        let text = String::from_utf8_lossy(&self.lines.0.lock().unwrap()).into_owned();
        assert!(
            text.contains("ServiceAccount tokens are never requested for these API server audiences"),
            "the controller's logs were captured ({} bytes)",
            text.len()
        );
        for (i, token) in tokens.iter().enumerate() {
            let signature = token.rsplit('.').next().unwrap();
            assert!(signature.len() > 40, "a signed JWT");
            assert!(!text.contains(signature), "ServiceAccount token {i} (or its signature) was logged");
        }
    }
}

/// Nothing tokensync persisted or reported in the namespace holds one of `tokens`: not a
/// Secret (values decoded), a ClientCredential (status included) or an Event of either API.
async fn assert_no_service_account_token_anywhere(env: &Env, tokens: &[String]) {
    assert!(!tokens.is_empty(), "tokens were issued");
    let lp = ListParams::default();
    let mut text = String::new();
    for s in env.secrets().list(&lp).await.unwrap() {
        text.push_str(&serde_json::to_string(&s).unwrap());
        text.extend(decoded(&s).into_values());
    }
    for cc in env.ccs().list(&lp).await.unwrap() {
        text.push_str(&serde_json::to_string(&cc).unwrap());
    }
    for e in env.api::<k8s_openapi::api::events::v1::Event>().list(&lp).await.unwrap() {
        text.push_str(&serde_json::to_string(&e).unwrap());
    }
    for e in env.api::<k8s_openapi::api::core::v1::Event>().list(&lp).await.unwrap() {
        text.push_str(&serde_json::to_string(&e).unwrap());
    }
    for token in tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a ServiceAccount token was stored or reported");
    }
}

#[tokio::test]
async fn an_entra_federated_credential_without_any_secret_becomes_ready_and_shows_its_service_account() {
    let (env, jwks) = real().await;
    service_account(&env, "orders", Some(federation::entra::AUDIENCE)).await;
    let idp = entra(&env, &jwks, "orders").await;
    let logs = Logs::capture();
    let controller = env.start(args(&[])).await;
    env.create_cc(secretless("graph", &entra_endpoint(&idp), entra_spec("orders"))).await;

    env.wait_condition("graph", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(
        env.secret_data("graph").await.unwrap()["access_token"],
        format!("entra-at-for-{}", subject(&env, "orders"))
    );
    let status = env.status("graph").await.unwrap();
    assert_eq!(
        status.service_account,
        Some(ServiceAccountStatus {
            namespace: env.ns.clone(),
            name: "orders".into(),
            audience: federation::entra::AUDIENCE.into()
        })
    );
    assert_eq!((idp.requests().len(), token_requests(&controller)), (1, 1));
    // The token asked for: the audience, and the shortest lifetime the API server allows.
    let tokens = presented(&idp, "client_assertion");
    assert_issued_by_the_api_server(&env, &jwks, &tokens, "orders", federation::entra::AUDIENCE, DEFAULT_LIFETIME)
        .await;
    assert_no_service_account_token_anywhere(&env, &tokens).await;
    logs.assert_hold_none_of(&tokens);
}

#[tokio::test]
async fn each_renewal_spends_one_token_request_and_one_service_account_token() {
    let (env, jwks) = real().await;
    service_account(&env, "orders", Some(&format!("other,{}", federation::entra::AUDIENCE))).await;
    let idp = entra(&env, &jwks, "orders").await;
    let logs = Logs::capture();
    let controller = env.start(args(&[])).await;
    env.create_cc(secretless("graph", &entra_endpoint(&idp), entra_spec("orders"))).await;
    env.wait_condition("graph", "Ready", ("True", "TokenIssued")).await;

    for (i, at) in ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"].into_iter().enumerate() {
        env.merge_patch_cc("graph", json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": at}}}))
            .await;
        env.wait_status("graph", &format!("with renewal request {at} handled"), move |s| {
            s.handled_renewal_request.as_deref() == Some(at)
        })
        .await;
        assert_eq!((idp.requests().len(), token_requests(&controller)), (i + 2, i as u64 + 2), "renewal {}", i + 1);
    }
    // Every ServiceAccount token was a new one, from the API server.
    let tokens = presented(&idp, "client_assertion");
    assert_eq!(tokens.len(), 3);
    assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2]);
    let jtis: std::collections::BTreeSet<String> =
        tokens.iter().map(|t| claims(t)["jti"].as_str().unwrap().to_owned()).collect();
    assert_eq!(jtis.len(), 3, "three tokens the API server issued");
    assert_issued_by_the_api_server(&env, &jwks, &tokens, "orders", federation::entra::AUDIENCE, DEFAULT_LIFETIME)
        .await;
    assert_no_service_account_token_anywhere(&env, &tokens).await;
    logs.assert_hold_none_of(&tokens);
}

#[tokio::test]
async fn a_google_sts_token_exchange_without_client_authentication_becomes_ready() {
    let (env, jwks) = real().await;
    service_account(&env, "reports", Some(GOOGLE_AUDIENCE)).await;
    let provider = federation::sts::Provider {
        name: GOOGLE_PROVIDER.into(),
        issuer: env.plane.issuer().into(),
        allowed_audience: GOOGLE_AUDIENCE.into(),
    };
    let sts = federation::sts::start_trusting(provider, jwks.clone()).await;
    let logs = Logs::capture();
    let controller = env.start(args(&[])).await;
    let spec = json!({
        "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": "reports", "audience": GOOGLE_AUDIENCE},
        "audience": GOOGLE_PROVIDER,
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        "tokenExchange": {"requestedTokenType": "urn:ietf:params:oauth:token-type:access_token"},
    });
    env.create_cc(secretless("gcp", &sts.url("/v1/token"), spec)).await;

    env.wait_condition("gcp", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(
        env.secret_data("gcp").await.unwrap()["access_token"],
        format!("ya29.sts-for-{}", subject(&env, "reports"))
    );
    let sent = &sts.requests()[0].params();
    assert_eq!(sent["subject_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!((sts.requests().len(), token_requests(&controller)), (1, 1));
    let tokens = presented(&sts, "subject_token");
    assert_issued_by_the_api_server(&env, &jwks, &tokens, "reports", GOOGLE_AUDIENCE, DEFAULT_LIFETIME).await;
    assert_no_service_account_token_anywhere(&env, &tokens).await;
    logs.assert_hold_none_of(&tokens);
}

#[tokio::test]
async fn a_jwt_bearer_grant_presents_the_service_account_token_as_the_assertion() {
    let (env, jwks) = real().await;
    let audience = "https://auth.example/oauth2/token";
    service_account(&env, "batch", Some(audience)).await;
    let server = federation::jwt_bearer::start_trusting(env.plane.issuer(), audience, jwks.clone()).await;
    let logs = Logs::capture();
    let _controller = env.start(args(&[])).await;
    let spec = json!({
        "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": "batch", "audience": audience},
    });
    env.create_cc(secretless("batch", &server.url("/token"), spec)).await;
    env.wait_condition("batch", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(
        env.secret_data("batch").await.unwrap()["access_token"],
        format!("bearer-for-{}", subject(&env, "batch"))
    );
    let tokens = presented(&server, "assertion");
    assert_issued_by_the_api_server(&env, &jwks, &tokens, "batch", audience, DEFAULT_LIFETIME).await;
    logs.assert_hold_none_of(&tokens);
}

/// spec.serviceAccountRef.expirationSeconds is what the TokenRequest asks for: the token the
/// identity provider is presented lives that long (not the 600 s default, nor the API
/// server's own default of 3600 s), for the spec's audience.
#[tokio::test]
async fn the_service_account_token_is_requested_for_the_specs_audience_and_expiration_seconds() {
    const LIFETIME: i64 = 7200;
    let (env, jwks) = real().await;
    service_account(&env, "orders", Some(federation::entra::AUDIENCE)).await;
    let idp = entra(&env, &jwks, "orders").await;
    let logs = Logs::capture();
    let _controller = env.start(args(&[])).await;
    let mut spec = entra_spec("orders");
    spec["serviceAccountRef"]["expirationSeconds"] = json!(LIFETIME);
    env.create_cc(secretless("graph", &entra_endpoint(&idp), spec)).await;
    env.wait_condition("graph", "Ready", ("True", "TokenIssued")).await;
    let tokens = presented(&idp, "client_assertion");
    assert_issued_by_the_api_server(&env, &jwks, &tokens, "orders", federation::entra::AUDIENCE, LIFETIME).await;
    logs.assert_hold_none_of(&tokens);
}

#[tokio::test]
async fn entra_refuses_a_token_of_another_service_account_with_its_error() {
    // The emulator checks the federated credential's subject: a token of "intruder" is refused.
    let (env, jwks) = real().await;
    service_account(&env, "intruder", Some(federation::entra::AUDIENCE)).await;
    let idp = entra(&env, &jwks, "orders").await;
    let logs = Logs::capture();
    let _controller = env.start(args(&[])).await;
    env.create_cc(secretless("graph", &entra_endpoint(&idp), entra_spec("intruder"))).await;
    env.wait_condition("graph", "Degraded", ("True", "TokenRequestRejected")).await;
    let status = env.status("graph").await.unwrap();
    let message = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message.clone();
    assert!(message.contains("invalid_client") && message.contains("AADSTS70021"), "{message}");
    // Issue 20: there is no client secret to check; the hint names what to check instead.
    assert!(!message.contains("client_secret"), "{message}");
    let subject = format!("system:serviceaccount:{}:intruder", env.ns);
    for what in ["issuer", subject.as_str(), federation::entra::AUDIENCE] {
        assert!(message.contains(what), "the hint names {what}: {message}");
    }
    // The refused token is kept nowhere either.
    let tokens = presented(&idp, "client_assertion");
    assert_no_service_account_token_anywhere(&env, &tokens).await;
    logs.assert_hold_none_of(&tokens);
}

/// A refusal: the condition reason, and nothing requested from the token server or the
/// TokenRequest API.
async fn assert_refused(env: &Env, controller: &Running, idp: &TokenServer, name: &str, reason: &str, says: &str) {
    env.wait_condition(name, "Ready", ("False", reason)).await;
    let status = env.status(name).await.unwrap();
    let message = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(message.contains(says), "{reason}: {message}");
    assert_eq!((idp.requests().len(), token_requests(controller)), (0, 0), "{reason}: nothing was requested");
}

#[tokio::test]
async fn a_service_account_without_the_opt_in_annotation_is_refused_without_any_request() {
    let (env, jwks) = real().await;
    service_account(&env, "orders", None).await;
    service_account(&env, "other-audience", Some("https://somewhere.else")).await;
    let idp = entra(&env, &jwks, "orders").await;
    let controller = env.start(args(&[])).await;
    env.create_cc(secretless("graph", &entra_endpoint(&idp), entra_spec("orders"))).await;
    assert_refused(&env, &controller, &idp, "graph", "ServiceAccountNotOptedIn", "tokensync.io/allowed-audiences")
        .await;
    env.create_cc(secretless("graph2", &entra_endpoint(&idp), entra_spec("other-audience"))).await;
    assert_refused(&env, &controller, &idp, "graph2", "ServiceAccountNotOptedIn", "api://AzureADTokenExchange").await;
}

/// The audiences the real API server accepts: a token for its default audiences (a
/// TokenRequest naming none) carries its issuer as audience and authenticates to it as the
/// ServiceAccount, while a token for an identity provider's audience does not. The controller
/// finds the issuer through the API server's discovery document and refuses to request a
/// token for it, for an audience given with --kubernetes-audiences, or for the in-cluster
/// names of the API server that clusters commonly accept (`kubernetes.default.svc`, with and
/// without `https://`, `.cluster.local` and a trailing slash), even when the ServiceAccount
/// opted in.
#[tokio::test]
async fn an_audience_the_api_server_accepts_is_refused_without_any_request() {
    let (env, jwks) = real().await;
    let issuer = env.plane.issuer().to_owned();
    let opted_in = [
        issuer.as_str(),
        "vault",
        "https://kubernetes.default.svc/",
        "https://kubernetes.default.svc.cluster.local",
        "kubernetes.default.svc",
    ];
    service_account(&env, "orders", Some(&opted_in.join(","))).await;

    let own = service_accounts::token(&env.client, &env.ns, "orders").await;
    assert_eq!(claims(&own)["aud"], json!([issuer]), "the API server's own audience is its issuer");
    let as_orders = service_accounts::config_with_token(&env.plane, &env.ns, &own);
    assert_eq!(service_accounts::who_am_i(as_orders).await, Ok(subject(&env, "orders")), "usable against Kubernetes");
    let elsewhere = service_accounts::token_for(&env.client, &env.ns, "orders", &[federation::entra::AUDIENCE]).await;
    let as_elsewhere = service_accounts::config_with_token(&env.plane, &env.ns, &elsewhere);
    assert_eq!(service_accounts::who_am_i(as_elsewhere).await, Err(401), "a token for another audience is not");

    let idp = entra(&env, &jwks, "orders").await;
    // The issuer is found through discovery; "vault" comes from the flag.
    let controller = env.start(args(&["--kubernetes-audiences", "vault"])).await;
    let refused = [
        ("by-issuer", issuer.as_str()),
        ("by-flag", "vault"),
        ("by-service", "https://kubernetes.default.svc"),
        ("by-service-slash", "https://kubernetes.default.svc/"),
        ("by-service-fqdn", "https://kubernetes.default.svc.cluster.local"),
        ("by-service-host", "kubernetes.default.svc"),
    ];
    for (name, audience) in refused {
        let spec = json!({"clientId": CLIENT_ID, "clientAuthentication": "service_account_token",
            "serviceAccountRef": {"name": "orders", "audience": audience}, "scopes": ["x/.default"]});
        env.create_cc(secretless(name, &entra_endpoint(&idp), spec)).await;
        assert_refused(&env, &controller, &idp, name, "ForbiddenAudience", "API server").await;
    }
}

#[tokio::test]
async fn a_missing_service_account_is_refused_without_any_request() {
    let (env, jwks) = real().await;
    let idp = entra(&env, &jwks, "orders").await;
    let controller = env.start(args(&[])).await;
    env.create_cc(secretless("graph", &entra_endpoint(&idp), entra_spec("orders"))).await;
    let says = format!("ServiceAccount {}/orders not found", env.ns);
    assert_refused(&env, &controller, &idp, "graph", "ServiceAccountNotFound", &says).await;
}

/// Why the controller-side check of a ServiceAccount in another namespace runs on the double
/// ([`a_service_account_in_another_namespace_is_refused_without_any_request`]): the real
/// API server refuses such a ClientCredential at admission.
#[tokio::test]
async fn a_service_account_in_another_namespace_is_refused_at_admission() {
    let env = Env::new("secretless").await;
    let mut spec = entra_spec("admin");
    spec["serviceAccountRef"]["namespace"] = json!("default");
    let cc = secretless("graph", "https://login.example/token", spec).namespace(&env.ns).build();
    let refused = env.ccs().create(&PostParams::default(), &cc).await.unwrap_err();
    let kube::Error::Api(status) = refused else { panic!("{refused}") };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.serviceAccountRef.namespace is only for a ClusterClientCredential"),
        "{}",
        status.message
    );
}

/// The checks [`the_double_issues_verifiable_service_account_tokens_and_refuses_a_lifetime_below_its_minimum`]
/// makes of the double, made of the real API server: what the double imitates.
#[tokio::test]
async fn the_real_api_server_issues_verifiable_service_account_tokens_and_refuses_a_lifetime_below_its_minimum() {
    let (env, jwks) = real().await;
    assert_token_request_contract(env.client.clone(), &env.ns, env.plane.issuer(), &jwks).await;
}

// ---- On the API server double --------------------------------------------------------------

/// TokenRequest as the real API server answers it (and the double must): a 10-minute token
/// that verifies against the issuer's published keys, with sub, aud, iat = nbf and the
/// `kubernetes.io` claims; a shorter lifetime refused with 422 Invalid naming the field; a
/// missing ServiceAccount 404.
async fn assert_token_request_contract(client: kube::Client, ns: &str, issuer: &str, jwks: &JwkSet) {
    let sas: Api<ServiceAccount> = Api::namespaced(client, ns);
    sas.create(&PostParams::default(), &service_account_json("orders", None)).await.unwrap();
    let request = |seconds: i64| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["api://AzureADTokenExchange".into()],
            expiration_seconds: Some(seconds),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued = sas.create_token_request("orders", &PostParams::default(), &request(600)).await.unwrap();
    let token = issued.status.unwrap().token;
    let claims = federation::verify(&token, jwks, issuer, "api://AzureADTokenExchange").unwrap();
    assert_eq!(claims["sub"], json!(format!("system:serviceaccount:{ns}:orders")));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], json!("orders"));
    assert!(federation::verify(&token, jwks, issuer, "other").is_err(), "audience is checked");

    let too_short = sas.create_token_request("orders", &PostParams::default(), &request(599)).await.unwrap_err();
    let kube::Error::Api(status) = too_short else { panic!("{too_short}") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("spec.expirationSeconds") && status.message.contains("less than 10 minutes"));
    let missing = sas.create_token_request("nobody", &PostParams::default(), &request(600)).await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn the_double_issues_verifiable_service_account_tokens_and_refuses_a_lifetime_below_its_minimum() {
    let api = support::controller::api_server().await;
    let jwks = federation::fetch_jwks(&api.service_account_issuer()).await;
    assert_token_request_contract(api.client(), NS, &api.service_account_issuer(), &jwks).await;
}

/// Kept on the double: the real API server refuses this ClientCredential at admission (the
/// CRD's CEL rule on spec.serviceAccountRef.namespace), and the double runs no CEL, so only
/// here does the controller's own validation face it.
#[tokio::test]
async fn a_service_account_in_another_namespace_is_refused_without_any_request() {
    let api = support::controller::api_server().await;
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), "default");
    let mut admin = service_account_json("admin", Some(federation::entra::AUDIENCE));
    admin.metadata.namespace = Some("default".into());
    sas.create(&PostParams::default(), &admin).await.unwrap();
    let fic = federation::FederatedCredential {
        client_id: CLIENT_ID.into(),
        issuer: api.service_account_issuer(),
        subject: format!("system:serviceaccount:{NS}:orders"),
        audience: federation::entra::AUDIENCE.into(),
    };
    let idp = federation::entra::start(TENANT, &api.service_account_issuer(), vec![fic]).await;
    let _controller = support::controller::start(&api, args(&[]));
    let mut spec = entra_spec("admin");
    spec["serviceAccountRef"]["namespace"] = json!("default");
    secretless("graph", &entra_endpoint(&idp), spec).create(&api).await;
    support::controller::wait_condition(&api, "graph", "Ready", ("False", "InvalidSpec")).await;
    let status = support::controller::status(&api, "graph").unwrap();
    let message = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(message.contains("spec.serviceAccountRef.namespace"), "{message}");
    let token_requests = api.count(support::apiserver::Verb::Create, "serviceaccounts", Some("token"));
    assert_eq!((idp.requests().len(), token_requests), (0, 0), "nothing was requested");
}

//! Secretless credentials under the controller: a Kubernetes ServiceAccount token stands
//! where a client secret stood. The API server double issues real RS256 ServiceAccount
//! tokens (TokenRequest) and publishes its issuer's discovery document and keys; the token
//! servers are emulators of Microsoft Entra ID and Google STS and an RFC 7523 endpoint that
//! verify each token against those keys, as the real identity providers do.

mod federation;
mod support;
mod token_server;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Verb};
use support::controller::*;
use tokensync::api::{ClientCredential, ServiceAccountStatus};

const TENANT: &str = "7f3c0e1a-0000-4000-8000-000000000001";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const GOOGLE_PROVIDER: &str =
    "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tokensync/providers/test";
const GOOGLE_AUDIENCE: &str =
    "https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tokensync/providers/test";

async fn service_account(api: &ApiServer, name: &str, allowed: Option<&str>) {
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}});
    if let Some(a) = allowed {
        sa["metadata"]["annotations"] = json!({"tokensync.io/allowed-audiences": a});
    }
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
    sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
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

fn token_requests(api: &ApiServer) -> usize {
    api.count(Verb::Create, "serviceaccounts", Some("token"))
}

async fn entra(api: &ApiServer, subject_sa: &str) -> token_server::TokenServer {
    let fic = federation::FederatedCredential {
        client_id: CLIENT_ID.into(),
        issuer: api.service_account_issuer(),
        subject: format!("system:serviceaccount:{NS}:{subject_sa}"),
        audience: federation::entra::AUDIENCE.into(),
    };
    federation::entra::start(TENANT, &api.service_account_issuer(), vec![fic]).await
}

/// Nothing tokensync persisted or reported holds a ServiceAccount token it was issued.
fn assert_no_service_account_token_anywhere(api: &ApiServer) {
    let issued = api.issued_service_account_tokens();
    assert!(!issued.is_empty(), "tokens were issued");
    let mut text = String::new();
    for kind in ["secrets", "clientcredentials.tokensync.io", "events.events.k8s.io", "events"] {
        for o in api.list_json(kind, None) {
            text.push_str(&o.to_string());
        }
    }
    for s in api.list::<Secret>(None) {
        for v in s.data.unwrap_or_default().values() {
            text.push_str(&String::from_utf8_lossy(&v.0));
        }
    }
    for token in issued {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a ServiceAccount token was stored or reported");
    }
}

#[tokio::test]
async fn an_entra_federated_credential_without_any_secret_becomes_ready_and_shows_its_service_account() {
    let api = api_server().await;
    service_account(&api, "orders", Some(federation::entra::AUDIENCE)).await;
    let idp = entra(&api, "orders").await;
    let endpoint = idp.url(&format!("/{TENANT}/oauth2/v2.0/token"));
    let _controller = start(&api, args(&[]));
    secretless("graph", &endpoint, entra_spec("orders")).create(&api).await;

    wait_condition(&api, "graph", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(
        secret_data(&api, "graph").unwrap()["access_token"],
        format!("entra-at-for-system:serviceaccount:{NS}:orders")
    );
    let status = status(&api, "graph").unwrap();
    assert_eq!(
        status.service_account,
        Some(ServiceAccountStatus {
            namespace: NS.into(),
            name: "orders".into(),
            audience: federation::entra::AUDIENCE.into()
        })
    );
    assert_eq!((idp.requests().len(), token_requests(&api)), (1, 1));
    // The token asked for: the audience, and the shortest lifetime the API server allows.
    let requests = api.requests();
    let tr = requests.iter().find(|r| r.subresource.as_deref() == Some("token")).unwrap();
    assert_eq!((tr.namespace.as_deref(), tr.name.as_deref()), (Some(NS), Some("orders")));
    assert_no_service_account_token_anywhere(&api);
}

#[tokio::test]
async fn each_renewal_spends_one_token_request_and_one_service_account_token() {
    let api = api_server().await;
    service_account(&api, "orders", Some(&format!("other,{}", federation::entra::AUDIENCE))).await;
    let idp = entra(&api, "orders").await;
    let endpoint = idp.url(&format!("/{TENANT}/oauth2/v2.0/token"));
    let _controller = start(&api, args(&[]));
    secretless("graph", &endpoint, entra_spec("orders")).create(&api).await;
    wait_condition(&api, "graph", "Ready", ("True", "TokenIssued")).await;

    let ccs: Api<ClientCredential> = Api::namespaced(api.client(), NS);
    for (i, at) in ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"].iter().enumerate() {
        let patch = json!({"metadata": {"annotations": {"tokensync.io/renew-requested-at": at}}});
        ccs.patch("graph", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        api.wait_for(
            |v| {
                let cc: Option<ClientCredential> = v.get(Some(NS), "graph");
                cc.and_then(|c| c.status).and_then(|s| s.handled_renewal_request).as_deref() == Some(*at)
            },
            WAIT,
        )
        .await
        .unwrap();
        assert_eq!((idp.requests().len(), token_requests(&api)), (i + 2, i + 2), "renewal {}", i + 1);
    }
    // Every ServiceAccount token was a new one.
    let issued = api.issued_service_account_tokens();
    assert_eq!(issued.len(), 3);
    assert!(issued[0] != issued[1] && issued[1] != issued[2]);
    assert_no_service_account_token_anywhere(&api);
}

#[tokio::test]
async fn a_google_sts_token_exchange_without_client_authentication_becomes_ready() {
    let api = api_server().await;
    service_account(&api, "reports", Some(GOOGLE_AUDIENCE)).await;
    let sts = federation::sts::start(federation::sts::Provider {
        name: GOOGLE_PROVIDER.into(),
        issuer: api.service_account_issuer(),
        allowed_audience: GOOGLE_AUDIENCE.into(),
    })
    .await;
    let _controller = start(&api, args(&[]));
    let spec = json!({
        "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": "reports", "audience": GOOGLE_AUDIENCE},
        "audience": GOOGLE_PROVIDER,
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        "tokenExchange": {"requestedTokenType": "urn:ietf:params:oauth:token-type:access_token"},
    });
    secretless("gcp", &sts.url("/v1/token"), spec).create(&api).await;

    wait_condition(&api, "gcp", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(
        secret_data(&api, "gcp").unwrap()["access_token"],
        format!("ya29.sts-for-system:serviceaccount:{NS}:reports")
    );
    let sent = &sts.requests()[0].params();
    assert_eq!(sent["subject_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!((sts.requests().len(), token_requests(&api)), (1, 1));
    assert_no_service_account_token_anywhere(&api);
}

#[tokio::test]
async fn a_jwt_bearer_grant_presents_the_service_account_token_as_the_assertion() {
    let api = api_server().await;
    let audience = "https://auth.example/oauth2/token";
    service_account(&api, "batch", Some(audience)).await;
    let server = federation::jwt_bearer::start(&api.service_account_issuer(), audience).await;
    let _controller = start(&api, args(&[]));
    let spec = json!({
        "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "clientAuthentication": "none",
        "serviceAccountRef": {"name": "batch", "audience": audience},
    });
    secretless("batch", &server.url("/token"), spec).create(&api).await;
    wait_condition(&api, "batch", "Ready", ("True", "TokenIssued")).await;
    assert_eq!(
        secret_data(&api, "batch").unwrap()["access_token"],
        format!("bearer-for-system:serviceaccount:{NS}:batch")
    );
}

#[tokio::test]
async fn entra_refuses_a_token_of_another_service_account_with_its_error() {
    // The emulator checks the federated credential's subject: a token of "intruder" is refused.
    let api = api_server().await;
    service_account(&api, "intruder", Some(federation::entra::AUDIENCE)).await;
    let idp = entra(&api, "orders").await;
    let _controller = start(&api, args(&[]));
    secretless("graph", &idp.url(&format!("/{TENANT}/oauth2/v2.0/token")), entra_spec("intruder")).create(&api).await;
    wait_condition(&api, "graph", "Degraded", ("True", "TokenRequestRejected")).await;
    let message =
        status(&api, "graph").unwrap().conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message.clone();
    assert!(message.contains("invalid_client") && message.contains("AADSTS70021"), "{message}");
}

/// A refusal: the condition reason, and nothing requested from the token server or the
/// TokenRequest API.
async fn assert_refused(api: &ApiServer, idp: &token_server::TokenServer, name: &str, reason: &str, says: &str) {
    wait_condition(api, name, "Ready", ("False", reason)).await;
    let message = status(api, name).unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(message.contains(says), "{reason}: {message}");
    assert_eq!((idp.requests().len(), token_requests(api)), (0, 0), "{reason}: nothing was requested");
}

#[tokio::test]
async fn a_service_account_without_the_opt_in_annotation_is_refused_without_any_request() {
    let api = api_server().await;
    service_account(&api, "orders", None).await;
    service_account(&api, "other-audience", Some("https://somewhere.else")).await;
    let idp = entra(&api, "orders").await;
    let endpoint = idp.url(&format!("/{TENANT}/oauth2/v2.0/token"));
    let _controller = start(&api, args(&[]));
    secretless("graph", &endpoint, entra_spec("orders")).create(&api).await;
    assert_refused(&api, &idp, "graph", "ServiceAccountNotOptedIn", "tokensync.io/allowed-audiences").await;
    secretless("graph2", &endpoint, entra_spec("other-audience")).create(&api).await;
    assert_refused(&api, &idp, "graph2", "ServiceAccountNotOptedIn", "api://AzureADTokenExchange").await;
}

#[tokio::test]
async fn an_audience_the_api_server_accepts_is_refused_without_any_request() {
    let api = ApiServer::builder()
        .crd(&tokensync::api::crd())
        .namespaces(&["default", NS])
        .api_audiences(&["https://kubernetes.default.svc.example", "vault"])
        .start()
        .await;
    let issuer = api.service_account_issuer();
    service_account(&api, "orders", Some(&format!("{issuer},vault,https://kubernetes.default.svc.example/"))).await;
    let idp = entra(&api, "orders").await;
    let endpoint = idp.url(&format!("/{TENANT}/oauth2/v2.0/token"));
    // The issuer is found through discovery; "vault" comes from the flag.
    let _controller = start(&api, args(&["--kubernetes-audiences", "vault"]));
    for (name, audience) in [("by-issuer", issuer.as_str()), ("by-flag", "vault")] {
        let spec = json!({"clientId": CLIENT_ID, "clientAuthentication": "service_account_token",
            "serviceAccountRef": {"name": "orders", "audience": audience}, "scopes": ["x/.default"]});
        secretless(name, &endpoint, spec).create(&api).await;
        assert_refused(&api, &idp, name, "ForbiddenAudience", "API server").await;
    }
}

#[tokio::test]
async fn a_missing_service_account_is_refused_without_any_request() {
    let api = api_server().await;
    let idp = entra(&api, "orders").await;
    let _controller = start(&api, args(&[]));
    secretless("graph", &idp.url(&format!("/{TENANT}/oauth2/v2.0/token")), entra_spec("orders")).create(&api).await;
    assert_refused(&api, &idp, "graph", "ServiceAccountNotFound", "ServiceAccount team-a/orders not found").await;
}

#[tokio::test]
async fn a_service_account_in_another_namespace_is_refused_without_any_request() {
    // The CRD rule refuses it at admission; the double does not run CEL, so this shows the
    // controller's own validation holding when admission did not run.
    let api = api_server().await;
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), "default");
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "admin", "namespace": "default",
        "annotations": {"tokensync.io/allowed-audiences": federation::entra::AUDIENCE}}});
    sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
    let idp = entra(&api, "orders").await;
    let _controller = start(&api, args(&[]));
    let mut spec = entra_spec("admin");
    spec["serviceAccountRef"]["namespace"] = json!("default");
    secretless("graph", &idp.url(&format!("/{TENANT}/oauth2/v2.0/token")), spec).create(&api).await;
    assert_refused(&api, &idp, "graph", "InvalidSpec", "spec.serviceAccountRef.namespace").await;
}

#[tokio::test]
async fn the_double_issues_verifiable_service_account_tokens_and_refuses_a_lifetime_below_its_minimum() {
    let api = api_server().await;
    service_account(&api, "orders", None).await;
    let sas: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
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
    let jwks = federation::fetch_jwks(&api.service_account_issuer()).await;
    let claims =
        federation::verify(&token, &jwks, &api.service_account_issuer(), "api://AzureADTokenExchange").unwrap();
    assert_eq!(claims["sub"], json!(format!("system:serviceaccount:{NS}:orders")));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], json!("orders"));
    assert!(federation::verify(&token, &jwks, &api.service_account_issuer(), "other").is_err(), "audience is checked");

    let too_short = sas.create_token_request("orders", &PostParams::default(), &request(599)).await.unwrap_err();
    let kube::Error::Api(status) = too_short else { panic!("{too_short}") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("spec.expirationSeconds") && status.message.contains("less than 10 minutes"));
    let missing = sas.create_token_request("nobody", &PostParams::default(), &request(600)).await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404));
}

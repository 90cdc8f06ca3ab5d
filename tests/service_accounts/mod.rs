//! ServiceAccounts of a real control plane (tests/support/control_plane.rs) as others see
//! them: a client authenticated by a ServiceAccount token ([`client_config`]), and the
//! ServiceAccount issuer as identity providers outside the cluster see it: its discovery document (`/.well-known/openid-configuration`) and keys
//! (`/openid/v1/jwks`) are served by kube-apiserver, over TLS signed by the control plane's
//! own CA, and by default only to authenticated clients. Kubernetes documents binding the
//! `system:service-account-issuer-discovery` ClusterRole to `system:unauthenticated` for an
//! issuer that others verify tokens against ([`make_public`]); the tests that trust the
//! issuer do that, and fetch the keys anonymously, trusting only the control plane's CA.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::control_plane::ControlPlane;

/// The binding Kubernetes documents for a public issuer.
pub const BINDING: &str = "tokensync-tests-public-service-account-issuer";

/// Lets anyone read the issuer's discovery document and keys (idempotent: server-side
/// apply, so tests of one control plane may all call it).
pub async fn make_public(admin: &kube::Client) {
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": BINDING},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:service-account-issuer-discovery"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}],
    });
    let api: Api<ClusterRoleBinding> = Api::all(admin.clone());
    api.patch(BINDING, &PatchParams::apply("tokensync-tests").force(), &Patch::Apply(&binding))
        .await
        .expect("bind system:service-account-issuer-discovery to system:unauthenticated");
}

/// An anonymous HTTPS client that trusts only the control plane's CA.
pub fn https(ca_file: &Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca_file).unwrap_or_else(|e| panic!("{}: {e}", ca_file.display()));
    let ca = reqwest::Certificate::from_pem(&pem).expect("the control plane's CA");
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTPS client")
}

/// The issuer's discovery document, fetched anonymously.
pub async fn discovery(plane: &ControlPlane) -> (u16, Value) {
    let url = format!("{}/.well-known/openid-configuration", plane.issuer().trim_end_matches('/'));
    let response = https(plane.ca_file()).get(url).send().await.expect("the API server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The issuer's keys, found as an identity provider finds them: discovery, then jwks_uri,
/// anonymously (the issuer must be public: [`make_public`]).
pub async fn jwks(plane: &ControlPlane) -> JwkSet {
    let (status, doc) = discovery(plane).await;
    assert_eq!(status, 200, "the discovery document is public: {doc}");
    assert_eq!(doc["issuer"], json!(plane.issuer()), "the discovery document names the issuer");
    let uri = doc["jwks_uri"].as_str().expect("jwks_uri");
    let response = https(plane.ca_file()).get(uri).send().await.expect("the API server answers");
    assert_eq!(response.status(), 200, "{uri}");
    response.json().await.expect("a JWKS")
}

/// A token for ServiceAccount `namespace/name` from the TokenRequest API (what `kubectl create
/// token` does), for the API server's own audiences, valid one hour.
pub async fn token(admin: &kube::Client, namespace: &str, name: &str) -> String {
    token_for(admin, namespace, name, &[]).await
}

/// [`token`] for `audiences` (none: the API server's own).
pub async fn token_for(admin: &kube::Client, namespace: &str, name: &str, audiences: &[&str]) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let issued = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {namespace}/{name}: {e}"));
    issued.status.expect("a TokenRequest status").token
}

/// The client configuration a pod running as ServiceAccount `namespace/name` gets in the
/// cluster (kube's `Config::incluster`): the API server's URL, its CA (as PEM certificates
/// and the file they come from) and the ServiceAccount token in a file, the namespace as the
/// default one. Only the URL differs: the API server on 127.0.0.1, not the Service.
pub async fn client_config(plane: &ControlPlane, admin: &kube::Client, namespace: &str, name: &str) -> kube::Config {
    config_with_token(plane, namespace, &token(admin, namespace, name).await)
}

/// [`client_config`] with a given bearer token.
pub fn config_with_token(plane: &ControlPlane, namespace: &str, token: &str) -> kube::Config {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serviceaccount-tokens");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{namespace}-{:016x}", rand::random::<u64>()));
    std::fs::write(&file, token).unwrap();
    let pem = std::fs::read(plane.ca_file()).unwrap();
    let roots: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice()).map(|c| c.unwrap().to_vec()).collect();
    let mut config = kube::Config::new(plane.server().parse().expect("the API server URL"));
    config.default_namespace = namespace.to_owned();
    config.root_cert = Some(roots);
    config.root_cert_file = Some(plane.ca_file().to_owned());
    config.auth_info.token_file = Some(file.to_string_lossy().into_owned());
    config
}

/// Who the API server says the client of `config` is (SelfSubjectReview, which every
/// authenticated user may create): Ok(username), or Err(HTTP status) when it refuses.
pub async fn who_am_i(config: kube::Config) -> Result<String, u16> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let client = kube::Client::try_from(config).expect("a client");
    let reviews: Api<SelfSubjectReview> = Api::all(client);
    match reviews.create(&PostParams::default(), &SelfSubjectReview::default()).await {
        Ok(review) => Ok(review.status.and_then(|s| s.user_info).and_then(|u| u.username).unwrap_or_default()),
        Err(kube::Error::Api(status)) => Err(status.code),
        Err(e) => panic!("SelfSubjectReview: {e}"),
    }
}

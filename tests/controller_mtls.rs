//! Mutual TLS client authentication (RFC 8705) in the controller, on a real Kubernetes control
//! plane (tests/support/control_plane.rs) against a real identity provider: npm's
//! oidc-provider over HTTPS with certificate-bound tokens (tests/oidc-provider/server.mjs
//! --tls-dir). The client certificate lives in a kubernetes.io/tls Secret, as cert-manager
//! keeps it; the tests renew it there the way cert-manager does (new key, same subject) and
//! break it, and watch what the controller does. Waits are on conditions, with timeouts.

mod support;

use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::child_server::{ChildServer, field};
use support::control_plane::ControlPlane;
use support::controller::{Cc, args};
use support::oidc_provider::{self as node, Identity, Pki};
use support::real::{Env, WAIT, wait_on};
use tokensync::api::ClusterClientCredential;
use tokensync::metrics::Metrics;

/// The provider's tls_client_auth client (subject DN CN=interop-mtls, certificate-bound tokens).
const CLIENT_ID: &str = "interop-mtls";
/// The provider's resource with JWT access tokens, whose cnf claim the test reads.
const JWT_RESOURCE: &str = "urn:tokensync:interop-jwt-api";
const CERT_SECRET: &str = "payments-tls";

/// The provider over HTTPS with mutual TLS; returns it and its issuer URL.
fn start_provider(pki: &Pki) -> (ChildServer, String) {
    let (process, ready) = node::spawn(&["--tls-dir".as_ref(), pki.dir.path().as_os_str()]);
    let issuer = field(&ready, "issuer");
    (process, issuer)
}

/// The CA bundle Secret, the kubernetes.io/tls Secret with `client`, and a ClientCredential
/// `payments` that authenticates with it through the provider's discovery document.
async fn setup(env: &Env, pki: &Pki, issuer: &str, client: &Identity) {
    env.create_secret("provider-ca", &[("ca.crt", &pki.ca_pem)]).await;
    create_tls_secret(env, client).await;
    let cc = Cc::new("payments", "https://unused.example/token").spec(json!({
        "tokenEndpoint": null,
        "credentialsRef": null,
        "issuer": issuer,
        "clientAuthentication": "tls_client_auth",
        "clientId": CLIENT_ID,
        "resource": JWT_RESOURCE,
        "tls": {"caBundleSecretRef": {"name": "provider-ca"}, "clientCertificateSecretRef": {"name": CERT_SECRET}},
        "target": {"certificateSecretNameKey": "tls-secret-name"},
    }));
    env.create_cc(cc).await;
}

/// Creates the kubernetes.io/tls Secret `CERT_SECRET` with `client` in `env`'s namespace.
async fn create_tls_secret(env: &Env, client: &Identity) {
    let tls = Secret {
        metadata: ObjectMeta { name: Some(CERT_SECRET.into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(
            [("tls.crt".to_owned(), client.cert_pem.clone()), ("tls.key".to_owned(), client.key_pem.clone())].into(),
        ),
        ..Default::default()
    };
    env.secrets().create(&PostParams::default(), &tls).await.unwrap();
}

/// Replaces the certificate and key in the kubernetes.io/tls Secret, as cert-manager does.
async fn put_certificate(env: &Env, client: &Identity) {
    env.merge_patch_secret(CERT_SECRET, json!({"stringData": {"tls.crt": client.cert_pem, "tls.key": client.key_pem}}))
        .await;
}

/// The cnf.x5t#S256 claim of the JWT access token published in the target Secret.
async fn published_binding(env: &Env) -> (String, String) {
    let data = env.secret_data("payments").await.expect("the target Secret");
    let token = data["access_token"].clone();
    (token.clone(), cnf_of(&token))
}

/// The cnf.x5t#S256 claim of a JWT.
fn cnf_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT access token");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["cnf"]["x5t#S256"].as_str().unwrap_or_default().to_owned()
}

/// Successful token requests the controller made, from its metrics.
fn tokens_issued(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.contains("token_requests_total{") && l.contains(r#"result="success""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_certificate_renewed_in_its_secret_is_used_by_the_next_request_and_the_bound_token_follows_it() {
    let pki = Pki::new();
    let (_provider, issuer) = start_provider(&pki);
    let env = Env::new("mtls").await;
    let first = pki.client(CLIENT_ID);
    let c = env.start(args(&[])).await;
    setup(&env, &pki, &issuer, &first).await;

    env.wait_condition("payments", "Ready", ("True", "TokenIssued")).await;
    let status = env.status("payments").await.unwrap();
    let presented = status.client_certificate.clone().expect("status names the client certificate");
    assert_eq!((presented.secret_name.as_str(), presented.subject.as_str()), (CERT_SECRET, "CN=interop-mtls"));
    assert_eq!(presented.x5t_s256, first.thumbprint());
    // The provider bound the token to the certificate presented, and the status says so.
    let (token, bound) = published_binding(&env).await;
    assert_eq!(bound, first.thumbprint());
    assert_eq!(status.bound_certificate_thumbprint.as_deref(), Some(first.thumbprint().as_str()));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(&format!("bound to the client certificate with x5t#S256 {}", first.thumbprint())));
    // The workload learns which certificate Secret to mount with the token.
    assert_eq!(env.secret_data("payments").await.unwrap()["tls-secret-name"], CERT_SECRET);
    assert_eq!(tokens_issued(&c.metrics), 1);

    // cert-manager renews the certificate: the next request presents the new one, and the
    // new token is bound to it. Like a rotated client secret, this is one prompt request.
    let renewed = pki.client(CLIENT_ID);
    put_certificate(&env, &renewed).await;
    let want = renewed.thumbprint();
    env.wait_status("payments", "the token is bound to the renewed certificate", move |s| {
        s.bound_certificate_thumbprint.as_deref() == Some(want.as_str())
    })
    .await;
    let (renewed_token, bound) = published_binding(&env).await;
    assert_ne!(renewed_token, token);
    assert_eq!(bound, renewed.thumbprint());
    assert_eq!(env.status("payments").await.unwrap().client_certificate.unwrap().x5t_s256, renewed.thumbprint());
    assert_eq!(tokens_issued(&c.metrics), 2);

    // Nothing else causes a request while the token is valid.
    let before = c.metrics.reconciles();
    env.merge_patch_cc("payments", json!({"metadata": {"annotations": {"note": "x"}}})).await;
    assert!(c.metrics.wait_for_reconciles(before + 1, WAIT).await);
    assert_eq!(tokens_issued(&c.metrics), 2);
    assert_eq!(published_binding(&env).await.0, renewed_token);
}

#[tokio::test]
async fn a_refused_or_expired_certificate_is_reported_in_words_while_the_valid_token_stays_published() {
    let pki = Pki::new();
    let (_provider, issuer) = start_provider(&pki);
    let env = Env::new("mtls").await;
    let good = pki.client(CLIENT_ID);
    let c = env.start(args(&[])).await;
    setup(&env, &pki, &issuer, &good).await;
    env.wait_condition("payments", "Ready", ("True", "TokenIssued")).await;
    let (token, _) = published_binding(&env).await;

    // A certificate from a CA the provider does not trust: the provider answers invalid_client.
    let stranger = node::untrusted_client(CLIENT_ID);
    put_certificate(&env, &stranger).await;
    env.wait_condition("payments", "Degraded", ("True", "TokenRequestRejected")).await;
    let status = env.status("payments").await.unwrap();
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(degraded.message.contains("invalid_client"), "{}", degraded.message);
    assert!(
        degraded.message.contains("the server did not accept the client certificate")
            && degraded.message.contains(&stranger.thumbprint()),
        "{}",
        degraded.message
    );
    assert_eq!(env.condition("payments", "Ready").await, Some(("True".into(), "TokenIssued".into())));

    // An expired certificate is refused before any request.
    let attempts_before = tokens_attempted(&c.metrics);
    put_certificate(&env, &pki.expired_client(CLIENT_ID)).await;
    env.wait_condition("payments", "Degraded", ("True", "SourceSecretInvalid")).await;
    let status = env.status("payments").await.unwrap();
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(
        degraded.message.contains(&format!("Secret {CERT_SECRET}"))
            && degraded.message.contains("the client certificate expired at 2021-01-01T00:00:00Z"),
        "{}",
        degraded.message
    );
    assert_eq!(tokens_attempted(&c.metrics), attempts_before, "no request with an expired certificate");
    assert_eq!(env.condition("payments", "Ready").await, Some(("True".into(), "TokenIssued".into())));
    assert_eq!(published_binding(&env).await.0, token, "the valid token stays published");

    // No key in status or Events.
    let everything = format!("{:?}{:?}", env.status("payments").await, env.events().await);
    for key in [&good, &stranger] {
        let body = key.key_body();
        assert!(!everything.contains(&body[body.len() - 40..]), "a private key appears in status or Events");
    }
}

/// Token requests the controller made, successful or not, from its metrics.
fn tokens_attempted(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.contains("token_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A ClusterClientCredential reads the certificate from its credentials namespace (where the
/// platform team's cert-manager keeps it) and copies the bound token to every selected
/// namespace; a renewal there reaches every copy.
#[tokio::test]
async fn a_cluster_credential_presents_the_certificate_of_its_credentials_namespace_to_every_copy() {
    let pki = Pki::new();
    let (_provider, issuer) = start_provider(&pki);
    // A control plane of its own: a --cluster-credentials controller reconciles everything.
    let plane = ControlPlane::dedicated();
    let client = plane.client().await;
    let env = Env { plane, client, ns: "platform".into() };
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    for name in ["platform", "team-a", "team-b"] {
        let ns =
            Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
    }
    let first = pki.client(CLIENT_ID);
    env.create_secret("provider-ca", &[("ca.crt", &pki.ca_pem)]).await;
    env.create_secret("payments-client", &[("client_id", CLIENT_ID)]).await;
    create_tls_secret(&env, &first).await;
    let _c = env.start_unscoped(args(&["--cluster-credentials"])).await;
    let ccc: ClusterClientCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.io/v1alpha1",
        "kind": "ClusterClientCredential",
        "metadata": {"name": "payments"},
        "spec": {
            "issuer": issuer,
            "clientAuthentication": "tls_client_auth",
            "credentialsRef": {"name": "payments-client", "namespace": "platform"},
            "resource": JWT_RESOURCE,
            "tls": {"caBundleSecretRef": {"name": "provider-ca"}, "clientCertificateSecretRef": {"name": CERT_SECRET}},
            "target": {"name": "payments-token", "namespaces": ["team-a", "team-b"]},
        }
    }))
    .unwrap();
    let cccs: Api<ClusterClientCredential> = Api::all(env.client.clone());
    cccs.create(&PostParams::default(), &ccc).await.unwrap();

    for (certificate, what) in [(&first, "the first certificate"), (&pki.client(CLIENT_ID), "the renewed certificate")]
    {
        if what != "the first certificate" {
            put_certificate(&env, certificate).await;
        }
        let thumbprint = certificate.thumbprint();
        let want = thumbprint.clone();
        let status = wait_on(cccs.clone(), "payments", &format!("bound to {what} in both namespaces"), move |c| {
            c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.credential.bound_certificate_thumbprint.as_deref() == Some(want.as_str())
                    && s.synced_namespaces == Some(2)
            })
        })
        .await
        .and_then(|c| c.status)
        .unwrap();
        assert_eq!(status.credential.client_certificate.unwrap().x5t_s256, thumbprint);
        for ns in ["team-a", "team-b"] {
            let copy = Api::<Secret>::namespaced(env.client.clone(), ns).get("payments-token").await.unwrap();
            let token = String::from_utf8(copy.data.unwrap()["access_token"].0.clone()).unwrap();
            assert_eq!(cnf_of(&token), thumbprint, "{ns}: the copy is bound to {what}");
        }
    }
    std::thread::spawn(move || drop(env));
}

//! TLS from the spec: a private CA bundle replaces the public roots, and a client
//! certificate is presented for mutual TLS (RFC 8705). The server here is a real rustls
//! server on 127.0.0.1 that requires a client certificate signed by the test CA.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::SecretString;
use tokensync::oauth::config::{ClientIdentity, TlsMaterial};
use tokensync::oauth::{
    Credentials, Endpoint, EndpointPolicy, ErrorKind, TokenClient, TokenRequestConfig, TransportSettings,
};
use url::Url;

struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tokensync test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, "tokensync client");
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// Starts an mTLS token server; returns its https URL.
async fn mtls_server(pki: &Pki) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(br#"{"access_token":"mtls-token","expires_in":60}"#)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    format!("https://localhost:{port}/token")
}

fn config(url: &str, tls: TlsMaterial) -> TokenRequestConfig {
    let mut c = TokenRequestConfig::new(Endpoint::Token(Url::parse(url).unwrap()));
    c.tls = tls;
    c
}

fn creds() -> Credentials {
    Credentials { client_id: "c".into(), client_secret: Some(SecretString::from("s".to_owned())), ..Default::default() }
}

#[tokio::test]
async fn private_ca_and_client_certificate_from_the_spec_are_used() {
    let pki = pki();
    let url = mtls_server(&pki).await;
    let engine = TokenClient::new(EndpointPolicy::default(), TransportSettings::default());
    let identity = ClientIdentity {
        certificate_pem: pki.client_cert_pem.clone().into_bytes(),
        private_key_pem: pki.client_key_pem.clone().into(),
    };
    let full = TlsMaterial { ca_bundle_pem: Some(pki.ca_pem.clone().into_bytes()), client_identity: Some(identity) };
    let acquired = engine.acquire(&config(&url, full), &creds(), None).await.unwrap();
    assert_eq!(acquired.token.token_type, "Bearer");

    // Without the private CA, the server's certificate is not trusted.
    let e = engine.acquire(&config(&url, TlsMaterial::default()), &creds(), None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.to_lowercase().contains("certificate"), "{e}");

    // Without a client certificate, the server refuses the handshake.
    let ca_only = TlsMaterial { ca_bundle_pem: Some(pki.ca_pem.clone().into_bytes()), client_identity: None };
    let e = engine.acquire(&config(&url, ca_only), &creds(), None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn unusable_tls_material_is_a_configuration_error() {
    let engine = TokenClient::new(EndpointPolicy::default(), TransportSettings::default());
    let bad_ca = TlsMaterial { ca_bundle_pem: Some(b"not pem".to_vec()), client_identity: None };
    let e = engine.acquire(&config("https://localhost:1/token", bad_ca), &creds(), None).await.unwrap_err();
    assert_eq!((e.kind, e.permanent), (ErrorKind::InvalidConfiguration, true), "{e}");
}

#[tokio::test]
async fn a_client_certificate_the_server_refuses_in_the_handshake_is_a_permanent_rejection_said_in_words() {
    let pki = pki();
    let url = mtls_server(&pki).await;
    let engine = TokenClient::new(EndpointPolicy::default(), TransportSettings::default());
    // A certificate from another CA (of the same name) than the one the server trusts.
    let stranger = self::pki();
    let identity = ClientIdentity {
        certificate_pem: stranger.client_cert_pem.clone().into_bytes(),
        private_key_pem: stranger.client_key_pem.clone().into(),
    };
    let tls = TlsMaterial { ca_bundle_pem: Some(pki.ca_pem.clone().into_bytes()), client_identity: Some(identity) };
    let mut c = config(&url, tls);
    c.client_authentication = tokensync::oauth::ClientAuthentication::TlsClientAuth;
    let e = engine.acquire(&c, &creds(), None).await.unwrap_err();
    assert_eq!((e.kind, e.permanent), (ErrorKind::Rejected, true), "{e}");
    assert!(e.message.contains("refused the client certificate"), "{e}");
    // A CA of the same name that did not sign it: rustls answers decrypt_error.
    assert!(
        e.message.contains("the alert DecryptError (the certificate's signature or key proof did not verify)"),
        "{e}"
    );
    assert!(!e.message.contains(stranger.client_key_pem.lines().nth(1).unwrap()), "{e}");
}

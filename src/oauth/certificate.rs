//! The client certificate of mutual TLS (RFC 8705), checked before any request: the PEM
//! chain and key parse, the key belongs to the certificate, and the certificate is valid
//! now. Also the certificate's SHA-256 thumbprint (`x5t#S256`, RFC 8705 3.1), which a
//! certificate-bound access token names in its `cnf` claim.
//!
//! Messages name the certificate by subject, expiry and thumbprint; never the key.

use std::sync::Arc;

use base64::Engine;
use jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::config::ClientIdentity;
use super::error::TokenError;

/// What tokensync knows about the certificate it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The subject distinguished name, e.g. `CN=payments-client,O=Example`.
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// base64url(SHA-256(DER)) of the leaf certificate: the `x5t#S256` of RFC 8705 3.1.
    pub thumbprint: String,
}

impl std::fmt::Display for CertificateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "subject {:?}, x5t#S256 {}, valid until {}", self.subject, self.thumbprint, self.not_after)
    }
}

/// The `x5t#S256` thumbprint of a DER certificate.
pub fn thumbprint(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The PEM certificate chain, leaf first.
pub fn chain(identity: &ClientIdentity) -> Result<Vec<CertificateDer<'static>>, TokenError> {
    let chain = rustls_pemfile::certs(&mut identity.certificate_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TokenError::credentials(format!("the client certificate is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TokenError::credentials(
            "the client certificate holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

/// Checks the certificate and key as they will be presented, at `now`; returns the leaf's
/// summary. Every failure is permanent: it holds until the Secret (or file) changes.
pub fn inspect(identity: &ClientIdentity, now: Timestamp) -> Result<CertificateSummary, TokenError> {
    let chain = chain(identity)?;
    let summary = summarize(&chain[0])?;
    let key = rustls_pemfile::private_key(&mut identity.private_key_pem.expose_secret().as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| {
            TokenError::credentials(format!(
                "the client certificate's private key is not a PEM private key (PKCS#8, PKCS#1 or SEC1); \
                 certificate {summary}"
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TokenError::credentials(format!(
            "the private key does not belong to the client certificate ({summary}): the key and the \
             certificate must be the same key pair"
        )),
        other => TokenError::credentials(format!("the client certificate's private key is not usable: {other}")),
    })?;
    if now >= summary.not_after {
        return Err(TokenError::credentials(format!(
            "the client certificate expired at {} ({summary}); renew it (cert-manager renews the Secret it \
             keeps) before tokens can be requested",
            summary.not_after
        )));
    }
    if now < summary.not_before {
        return Err(TokenError::credentials(format!(
            "the client certificate is not valid before {} ({summary})",
            summary.not_before
        )));
    }
    Ok(summary)
}

fn summarize(der: &CertificateDer<'_>) -> Result<CertificateSummary, TokenError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        TokenError::credentials(format!("the client certificate is PEM but not a valid X.509 certificate: {e}"))
    })?;
    let time = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp())
            .map_err(|_| TokenError::credentials("the client certificate has a validity time out of range"))
    };
    Ok(CertificateSummary {
        subject: cert.subject().to_string(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        thumbprint: thumbprint(der.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::ErrorKind;

    fn identity(cert: &str, key: &str) -> ClientIdentity {
        ClientIdentity { certificate_pem: cert.as_bytes().to_vec(), private_key_pem: key.to_owned().into() }
    }

    /// A self-signed P-256 certificate for CN=unit client, valid from 2020 to the year given,
    /// and its key.
    fn generated(not_after_year: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "unit client");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_valid_certificate_is_summarized_with_its_thumbprint() {
        let (cert, key) = generated(2100);
        let summary = inspect(&identity(&cert, &key), Timestamp::now()).unwrap();
        assert_eq!(summary.subject, "CN=unit client");
        let der = rustls_pemfile::certs(&mut cert.as_bytes()).next().unwrap().unwrap();
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref()));
        assert_eq!(summary.thumbprint, expected);
        assert_eq!(summary.thumbprint.len(), 43);
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_expiry() {
        let (cert, key) = generated(2021);
        let e = inspect(&identity(&cert, &key), Timestamp::now()).unwrap_err();
        assert_eq!((e.kind, e.permanent), (ErrorKind::InvalidCredentials, true));
        assert!(e.message.contains("expired at 2021-01-01T00:00:00Z"), "{e}");
        assert!(e.message.contains("CN=unit client"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_without_showing_either_key() {
        let (cert, _) = generated(2100);
        let (_, other_key) = generated(2100);
        let e = inspect(&identity(&cert, &other_key), Timestamp::now()).unwrap_err();
        assert!(e.message.contains("does not belong to the client certificate"), "{e}");
        let body: String = other_key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!e.message.contains(&body[..20]) && !format!("{e:?}").contains(&body[..20]));
    }

    #[test]
    fn malformed_certificate_and_key_are_named() {
        let (cert, key) = generated(2100);
        let no_cert = inspect(&identity("not a certificate", &key), Timestamp::now()).unwrap_err();
        assert!(no_cert.message.contains("holds no PEM certificate"), "{no_cert}");
        let garbage =
            "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHBfpegPjMCMA0GCSqGSIb3DQEBCwUA\n-----END CERTIFICATE-----\n";
        let bad = inspect(&identity(garbage, &key), Timestamp::now()).unwrap_err();
        assert!(bad.message.contains("not a valid X.509 certificate"), "{bad}");
        let no_key = inspect(&identity(&cert, "not a key"), Timestamp::now()).unwrap_err();
        assert!(no_key.message.contains("is not a PEM private key"), "{no_key}");
        for e in [no_cert, bad, no_key] {
            assert_eq!((e.kind, e.permanent), (ErrorKind::InvalidCredentials, true), "{e}");
        }
    }
}

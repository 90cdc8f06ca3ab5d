//! JWTs that tokensync signs (RFC 7523): client assertions for private_key_jwt and
//! client_secret_jwt (section 2.2 / 3), and authorization grant assertions for the
//! jwt-bearer grant (section 2.1).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::PrivateKeyDer;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::config::AssertionConfig;
use super::error::TokenError;
use super::vocabulary::SigningAlgorithm;

/// The assertion type for client assertions (RFC 7523 2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What signs an assertion.
pub enum SigningKey<'a> {
    /// A PEM private key (private_key_jwt, jwt-bearer).
    PrivateKey(&'a SecretString),
    /// The client secret as an HMAC key (client_secret_jwt).
    ClientSecret(&'a SecretString),
}

/// Claims of one assertion.
pub struct Claims<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audience: &'a str,
    pub extra: &'a BTreeMap<String, String>,
}

/// Signs an assertion with a fresh jti, iat = now and exp = now + lifetime. The result is a
/// credential: callers wrap it in a SecretString.
pub fn sign(
    key: SigningKey<'_>,
    claims: Claims<'_>,
    settings: &AssertionConfig,
    now: Timestamp,
) -> Result<SecretString, TokenError> {
    let (algorithm, encoding_key) = match key {
        SigningKey::ClientSecret(secret) => {
            let alg = settings.algorithm.unwrap_or(SigningAlgorithm::HS256);
            if !alg.is_hmac() {
                return Err(TokenError::config("client_secret_jwt signs with HS256, HS384 or HS512"));
            }
            (alg, EncodingKey::from_secret(secret.expose_secret().as_bytes()))
        }
        SigningKey::PrivateKey(pem) => private_key(pem.expose_secret().as_bytes(), settings.algorithm)?,
    };
    let mut header = Header::new(jwt_algorithm(algorithm));
    header.kid = settings.key_id.clone();
    let iat = now.as_second();
    let mut body = serde_json::Map::new();
    for (k, v) in claims.extra {
        body.insert(k.clone(), Value::String(v.clone()));
    }
    body.insert("iss".into(), claims.issuer.into());
    body.insert("sub".into(), claims.subject.into());
    body.insert("aud".into(), claims.audience.into());
    body.insert("iat".into(), iat.into());
    body.insert("exp".into(), (iat + settings.lifetime.as_secs().max(1) as i64).into());
    body.insert("jti".into(), random_jti().into());
    jsonwebtoken::encode(&header, &body, &encoding_key)
        .map(SecretString::from)
        .map_err(|e| TokenError::config(format!("cannot sign the {algorithm:?} assertion: {e}")))
}

/// Loads a PEM private key and picks (or checks) its algorithm.
fn private_key(pem: &[u8], wanted: Option<SigningAlgorithm>) -> Result<(SigningAlgorithm, EncodingKey), TokenError> {
    const FORMATS: &str = "use a PKCS#8 key (BEGIN PRIVATE KEY, RSA or EC P-256/P-384) or a PKCS#1 RSA key \
                           (BEGIN RSA PRIVATE KEY); convert SEC1 EC keys with `openssl pkcs8 -topk8 -nocrypt`";
    let der = rustls_pemfile::private_key(&mut &pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TokenError::credentials(format!("the private key is not a PEM private key; {FORMATS}")))?;
    if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        let alg = wanted.unwrap_or(SigningAlgorithm::RS256);
        return match alg {
            SigningAlgorithm::RS256
            | SigningAlgorithm::RS384
            | SigningAlgorithm::RS512
            | SigningAlgorithm::PS256
            | SigningAlgorithm::PS384
            | SigningAlgorithm::PS512 => Ok((alg, key)),
            other => {
                Err(TokenError::config(format!("an RSA key cannot sign {other:?}; use RS256, RS384, RS512 or PS*")))
            }
        };
    }
    if let (PrivateKeyDer::Pkcs8(pkcs8), Ok(key)) = (&der, EncodingKey::from_ec_pem(pem)) {
        // The curve decides the algorithm: P-384's OID is 1.3.132.0.34.
        let p384 = contains(pkcs8.secret_pkcs8_der(), &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]);
        let natural = if p384 { SigningAlgorithm::ES384 } else { SigningAlgorithm::ES256 };
        let alg = wanted.unwrap_or(natural);
        if alg != natural {
            return Err(TokenError::config(format!("this EC key signs {natural:?}, not {alg:?}")));
        }
        return Ok((alg, key));
    }
    Err(TokenError::credentials(format!("unsupported private key; {FORMATS}")))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::RS384 => Algorithm::RS384,
        SigningAlgorithm::RS512 => Algorithm::RS512,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::PS384 => Algorithm::PS384,
        SigningAlgorithm::PS512 => Algorithm::PS512,
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::ES384 => Algorithm::ES384,
        SigningAlgorithm::HS256 => Algorithm::HS256,
        SigningAlgorithm::HS384 => Algorithm::HS384,
        SigningAlgorithm::HS512 => Algorithm::HS512,
    }
}

/// 128 random bits, hex: unique per assertion so servers can reject replays.
fn random_jti() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

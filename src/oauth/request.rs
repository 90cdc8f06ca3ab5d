//! Building token and refresh requests: the grant's parameters, client authentication
//! (RFC 6749 2.3, RFC 7523), the body encoding and the extra headers.

use base64::Engine;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::assertion::{self, CLIENT_ASSERTION_TYPE, Claims, SigningKey};
use super::config::{Credentials, TokenRequestConfig};
use super::error::{Redactor, TokenError};
use super::transport::HttpRequest;
use super::vocabulary::{ClientAuthentication, RequestEncoding};

/// Parameters of one request. Values that are credentials are kept as secrets until the
/// body is encoded, and registered with the request's [`Redactor`].
#[derive(Default)]
pub struct Params {
    entries: Vec<(String, SecretString)>,
}

impl Params {
    pub fn add(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push((name.to_owned(), SecretString::from(value.into())));
    }

    pub fn add_secret(&mut self, name: &str, value: &SecretString, redactor: &mut Redactor) {
        redactor.add(value.expose_secret());
        self.entries.push((name.to_owned(), value.clone()));
    }

    fn encode(&self, encoding: RequestEncoding) -> (&'static str, Vec<u8>) {
        match encoding {
            RequestEncoding::Form => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &self.entries {
                    form.append_pair(k, v.expose_secret());
                }
                ("application/x-www-form-urlencoded", form.finish().into_bytes())
            }
            RequestEncoding::Json => {
                let map: serde_json::Map<String, serde_json::Value> =
                    self.entries.iter().map(|(k, v)| (k.clone(), v.expose_secret().into())).collect();
                ("application/json", serde_json::to_vec(&map).expect("a string map serializes"))
            }
        }
    }
}

/// How the client proves its identity on one request.
pub enum Auth<'a> {
    /// The configured method.
    Configured(&'a Credentials),
    /// No client authentication at all (Charp's refresh endpoint takes only the token).
    Nothing,
}

/// Builds a POST to `url` with `params`, adding client authentication and extra headers.
/// `redactor` collects every secret that went into the request.
pub fn build(
    config: &TokenRequestConfig,
    url: &Url,
    encoding: RequestEncoding,
    mut params: Params,
    auth: Auth<'_>,
    redactor: &mut Redactor,
    now: Timestamp,
) -> Result<HttpRequest, TokenError> {
    let mut headers = vec![("Accept".to_owned(), "application/json".to_owned())];
    if let Auth::Configured(creds) = auth {
        if creds.client_id.is_empty() {
            return Err(TokenError::credentials("the client_id is empty"));
        }
        match config.client_authentication {
            ClientAuthentication::ClientSecretBasic => {
                let secret = client_secret(creds)?;
                redactor.add(secret.expose_secret());
                let value = basic_authorization(&creds.client_id, secret.expose_secret());
                redactor.add(&value);
                headers.push(("Authorization".to_owned(), value));
            }
            ClientAuthentication::ClientSecretPost => {
                params.add("client_id", creds.client_id.clone());
                params.add_secret("client_secret", client_secret(creds)?, redactor);
            }
            ClientAuthentication::PrivateKeyJwt | ClientAuthentication::ClientSecretJwt => {
                let key = match config.client_authentication {
                    ClientAuthentication::PrivateKeyJwt => SigningKey::PrivateKey(
                        creds
                            .private_key
                            .as_ref()
                            .ok_or_else(|| TokenError::credentials("the private key is missing"))?,
                    ),
                    _ => SigningKey::ClientSecret(client_secret(creds)?),
                };
                if let SigningKey::ClientSecret(s) = &key {
                    redactor.add(s.expose_secret());
                }
                let audience = config.assertion.audience.clone().unwrap_or_else(|| url.to_string());
                let claims = Claims {
                    issuer: &creds.client_id,
                    subject: &creds.client_id,
                    audience: &audience,
                    extra: &Default::default(),
                };
                let jwt = assertion::sign(key, claims, &config.assertion, now)?;
                params.add("client_id", creds.client_id.clone());
                params.add("client_assertion_type", CLIENT_ASSERTION_TYPE);
                params.add_secret("client_assertion", &jwt, redactor);
            }
            // RFC 8705 2: the certificate on the connection authenticates; the body names
            // the client and carries no secret.
            ClientAuthentication::None
            | ClientAuthentication::TlsClientAuth
            | ClientAuthentication::SelfSignedTlsClientAuth => params.add("client_id", creds.client_id.clone()),
            ClientAuthentication::ServiceAccountToken => {
                let token = federated_token(creds)?;
                params.add("client_id", creds.client_id.clone());
                params.add("client_assertion_type", CLIENT_ASSERTION_TYPE);
                params.add_secret("client_assertion", token, redactor);
            }
        }
    }
    for (name, value) in &config.extra_headers {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.clone(), value.clone()));
    }
    Ok(HttpRequest { method: reqwest::Method::POST, url: url.clone(), headers, body: Some(params.encode(encoding)) })
}

/// The federated token (a ServiceAccount token, a projected token file, a subject token).
pub fn federated_token(creds: &Credentials) -> Result<&SecretString, TokenError> {
    creds
        .federated_token
        .as_ref()
        .filter(|s| !s.expose_secret().trim().is_empty())
        .ok_or_else(|| TokenError::credentials("the ServiceAccount (federated) token is missing or empty"))
}

fn client_secret(creds: &Credentials) -> Result<&SecretString, TokenError> {
    creds
        .client_secret
        .as_ref()
        .filter(|s| !s.expose_secret().is_empty())
        .ok_or_else(|| TokenError::credentials("the client_secret is missing or empty"))
}

/// RFC 6749 2.3.1: id and secret are form-urlencoded before they are joined with ':' and
/// base64-encoded, so a ':' in the id survives.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(client_id), enc(client_secret));
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urlencoded_before_base64() {
        let header = basic_authorization("my:client", "p%ss+word é");
        let b64 = header.strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(decoded, "my%3Aclient:p%25ss%2Bword+%C3%A9");
    }
}

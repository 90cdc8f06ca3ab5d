//! From a ClientCredential to what the token engine needs: the request configuration
//! (from the spec) and the credential material (from the referenced Secrets). This is the
//! "build" step between validation and acquisition; it is shared by the controller and
//! `tokensync fetch` so both send exactly the same requests.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use secrecy::SecretString;

use super::v1alpha1::ClientCredentialSpec;
use super::validate::check_url;
use crate::oauth::config::{
    AssertionConfig, ClientIdentity, Credentials, Endpoint, RefreshEndpointConfig, ResponseMapping, TlsMaterial,
    TokenExchangeConfig, TokenRequestConfig,
};
use crate::oauth::{ClientAuthentication, GrantType};

/// The data of one Secret.
pub type SecretData = BTreeMap<String, ByteString>;

/// Why the source material cannot be used. Reported as `SourceSecretNotFound` or
/// `SourceSecretInvalid`; messages name the Secret and key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("Secret {0} not found")]
    NotFound(String),
    #[error("Secret {secret} has no key {key:?} ({needed_by})")]
    MissingKey { secret: String, key: String, needed_by: String },
    #[error("Secret {secret} key {key:?} is not UTF-8 text")]
    NotText { secret: String, key: String },
}

impl SourceError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::NotFound(_) => "SourceSecretNotFound",
            _ => "SourceSecretInvalid",
        }
    }
}

/// The request configuration of a spec that passed [`super::validate::validate`]. Fields
/// that validation guarantees are parsed again here but cannot fail then; the error is
/// still returned rather than unwrapped, because the spec may not have been validated.
pub fn token_request_config(spec: &ClientCredentialSpec) -> Result<TokenRequestConfig, String> {
    let endpoint = match (&spec.token_endpoint, &spec.issuer) {
        (Some(url), None) => Endpoint::Token(check_url(url)?),
        (None, Some(url)) => Endpoint::Issuer(check_url(url)?),
        _ => return Err("exactly one of spec.tokenEndpoint and spec.issuer must be set".into()),
    };
    let mut config = TokenRequestConfig::new(endpoint);
    config.grant = spec.grant_type;
    config.client_authentication = spec.client_authentication;
    config.encoding = spec.request_encoding;
    config.omit_grant_type = spec.omit_grant_type;
    config.scopes = spec.scopes.clone();
    config.audience = spec.audience.clone();
    config.resource = spec.resource.clone();
    config.extra_parameters = spec.extra_parameters.clone();
    config.extra_headers = spec.extra_headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    if let Some(r) = &spec.refresh_endpoint {
        config.refresh_endpoint = Some(RefreshEndpointConfig {
            url: check_url(&r.url)?,
            encoding: r.request_encoding.unwrap_or(spec.request_encoding),
            refresh_token_only: r.refresh_token_only,
        });
    }
    if let Some(r) = &spec.response {
        let defaults = ResponseMapping::default();
        config.response = ResponseMapping {
            access_token: r.access_token_field.clone().unwrap_or(defaults.access_token),
            token_type: r.token_type_field.clone().unwrap_or(defaults.token_type),
            expires_in: r.expires_in_field.clone().unwrap_or(defaults.expires_in),
            expires_at: r.expires_at_field.clone().unwrap_or(defaults.expires_at),
            refresh_token: r.refresh_token_field.clone().unwrap_or(defaults.refresh_token),
            default_lifetime: r.default_lifetime.as_ref().map(|d| d.parse()).transpose()?,
        };
    }
    if let Some(a) = &spec.assertion {
        config.assertion = AssertionConfig {
            algorithm: a.algorithm,
            key_id: a.key_id.clone(),
            audience: a.audience.clone(),
            issuer: a.issuer.clone(),
            subject: a.subject.clone(),
            lifetime: a
                .lifetime
                .as_ref()
                .map(|d| d.parse())
                .transpose()?
                .unwrap_or(AssertionConfig::default().lifetime),
            extra_claims: a.extra_claims.clone(),
        };
    }
    if let Some(v) = &spec.verify {
        config.verify_url = Some(check_url(&v.url)?);
    }
    if let Some(x) = &spec.token_exchange {
        let defaults = TokenExchangeConfig::default();
        config.token_exchange = TokenExchangeConfig {
            subject_token_type: x.subject_token_type.clone().unwrap_or(defaults.subject_token_type),
            requested_token_type: x.requested_token_type.clone(),
        };
    }
    Ok(config)
}

/// The names of every Secret a spec reads: credentials, CA bundle, client certificate.
pub fn referenced_secrets(spec: &ClientCredentialSpec) -> Vec<String> {
    let mut names: Vec<String> = spec.credentials_ref.iter().map(|r| r.name.clone()).collect();
    if let Some(tls) = &spec.tls {
        names.extend(tls.ca_bundle_secret_ref.as_ref().map(|r| r.name.clone()));
        names.extend(tls.client_certificate_secret_ref.as_ref().map(|r| r.name.clone()));
    }
    names.dedup();
    names
}

/// Reads the credential material the grant and authentication method need, and only that.
/// `secret` is the data of the credentials Secret (None when the spec names none: a
/// secretless credential, whose client id is spec.clientId).
pub fn credentials(spec: &ClientCredentialSpec, secret: Option<&SecretData>) -> Result<Credentials, SourceError> {
    let Some(r) = &spec.credentials_ref else {
        return Ok(Credentials { client_id: spec.client_id.clone().unwrap_or_default(), ..Default::default() });
    };
    let empty = SecretData::new();
    let secret = secret.unwrap_or(&empty);
    let read = |key: &str, needed_by: &str| text(&r.name, secret, key, needed_by);
    let client_id = match &spec.client_id {
        Some(inline) => inline.clone(),
        None => read(&r.client_id_key, "the client_id")?,
    };
    let mut creds = Credentials { client_id, ..Default::default() };
    let auth = spec.client_authentication;
    let needs_secret = auth.needs_client_secret()
        && !(matches!(spec.grant_type, GrantType::JwtBearer | GrantType::TokenExchange)
            && auth == ClientAuthentication::None);
    if needs_secret {
        creds.client_secret =
            Some(read(&r.client_secret_key, &format!("clientAuthentication {}", auth.as_str()))?.into());
    }
    if let Some(key) = &r.private_key_key
        && (auth == ClientAuthentication::PrivateKeyJwt
            || (spec.grant_type == GrantType::JwtBearer && spec.service_account_ref.is_none()))
    {
        creds.private_key = Some(read(key, "the assertion signing key")?.into());
    }
    if let Some(key) = &r.refresh_token_key
        && spec.grant_type == GrantType::RefreshToken
    {
        creds.refresh_token = Some(SecretString::from(read(key, "grantType refresh_token")?.trim().to_owned()));
    }
    if let Some(key) = &r.authorization_code_key
        && spec.grant_type == GrantType::AuthorizationCode
    {
        creds.authorization_code =
            Some(SecretString::from(read(key, "grantType authorization_code")?.trim().to_owned()));
    }
    if let Some(key) = &r.subject_token_key
        && spec.grant_type == GrantType::TokenExchange
        && spec.service_account_ref.is_none()
    {
        creds.federated_token = Some(SecretString::from(read(key, "grantType token-exchange")?.trim().to_owned()));
    }
    Ok(creds)
}

/// TLS material from the Secrets spec.tls names; `lookup` returns a Secret's data by name.
pub fn tls_material<'a>(
    spec: &ClientCredentialSpec,
    lookup: impl Fn(&str) -> Option<&'a SecretData>,
) -> Result<TlsMaterial, SourceError> {
    let Some(tls) = &spec.tls else { return Ok(TlsMaterial::default()) };
    let mut material = TlsMaterial::default();
    if let Some(ca) = &tls.ca_bundle_secret_ref {
        let data = lookup(&ca.name).ok_or_else(|| SourceError::NotFound(ca.name.clone()))?;
        material.ca_bundle_pem = Some(text(&ca.name, data, &ca.key, "spec.tls.caBundleSecretRef")?.into_bytes());
    }
    if let Some(cert) = &tls.client_certificate_secret_ref {
        let data = lookup(&cert.name).ok_or_else(|| SourceError::NotFound(cert.name.clone()))?;
        let needed_by = "spec.tls.clientCertificateSecretRef";
        material.client_identity = Some(ClientIdentity {
            certificate_pem: text(&cert.name, data, &cert.certificate_key, needed_by)?.into_bytes(),
            private_key_pem: text(&cert.name, data, &cert.private_key_key, needed_by)?.into(),
        });
    }
    Ok(material)
}

/// A key's value as text. Trailing newlines are dropped from identifiers and secrets by the
/// callers that need it; PEM keeps them.
fn text(secret_name: &str, data: &SecretData, key: &str, needed_by: &str) -> Result<String, SourceError> {
    let bytes = data.get(key).ok_or_else(|| SourceError::MissingKey {
        secret: secret_name.to_owned(),
        key: key.to_owned(),
        needed_by: format!("needed by {needed_by}"),
    })?;
    let value = String::from_utf8(bytes.0.clone())
        .map_err(|_| SourceError::NotText { secret: secret_name.to_owned(), key: key.to_owned() })?;
    // `echo secret | kubectl create secret --from-file` leaves a newline no server expects.
    Ok(value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v).to_owned()).unwrap_or(value))
}

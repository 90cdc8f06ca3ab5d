//! What a token request needs to know, in plain Rust types. The controller, `fetch` and the
//! agent build a [`TokenRequestConfig`] from a ClientCredential spec (see
//! `api::engine_config`); the engine never sees Kubernetes types.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::vocabulary::{ClientAuthentication, GrantType, RequestEncoding, SigningAlgorithm};

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A token endpoint URL.
    Token(Url),
    /// An OIDC issuer whose discovery document names the token endpoint.
    Issuer(Url),
}

/// A separate endpoint for refresh requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshEndpointConfig {
    pub url: Url,
    pub encoding: RequestEncoding,
    /// Send only `refresh_token`: no grant_type, no client authentication, no extras.
    pub refresh_token_only: bool,
}

/// Where to find things in a token response; dotted paths into nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMapping {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: String,
    pub expires_at: String,
    pub refresh_token: String,
    /// Lifetime assumed when the response states none and the token is not a JWT with exp.
    pub default_lifetime: Option<Duration>,
}

impl Default for ResponseMapping {
    fn default() -> Self {
        ResponseMapping {
            access_token: "access_token".into(),
            token_type: "token_type".into(),
            expires_in: "expires_in".into(),
            expires_at: "expires_at".into(),
            refresh_token: "refresh_token".into(),
            default_lifetime: None,
        }
    }
}

/// How tokensync signs the JWTs it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionConfig {
    /// None: chosen from the key (RS256, ES256/ES384) or HS256 for client_secret_jwt.
    pub algorithm: Option<SigningAlgorithm>,
    pub key_id: Option<String>,
    /// aud; None means the token endpoint URL.
    pub audience: Option<String>,
    /// iss of jwt-bearer grant assertions; None means the client_id.
    pub issuer: Option<String>,
    /// sub of jwt-bearer grant assertions; None means the client_id.
    pub subject: Option<String>,
    pub lifetime: Duration,
    pub extra_claims: BTreeMap<String, String>,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            algorithm: None,
            key_id: None,
            audience: None,
            issuer: None,
            subject: None,
            lifetime: Duration::from_secs(300),
            extra_claims: BTreeMap::new(),
        }
    }
}

/// TLS material for the token, refresh and verify endpoints.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// PEM CA certificates; when set, they replace the public roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key for mutual TLS.
    pub client_identity: Option<ClientIdentity>,
}

/// A client certificate and its key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub certificate_pem: Vec<u8>,
    pub private_key_pem: SecretString,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_bundle", &self.ca_bundle_pem.as_ref().map(|b| format!("{} bytes", b.len())))
            .field("client_identity", &self.client_identity.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Everything about how to ask for a token, except the credentials themselves.
#[derive(Debug, Clone)]
pub struct TokenRequestConfig {
    pub endpoint: Endpoint,
    pub grant: GrantType,
    pub client_authentication: ClientAuthentication,
    pub encoding: RequestEncoding,
    pub omit_grant_type: bool,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub extra_parameters: BTreeMap<String, String>,
    /// (name, value) pairs.
    pub extra_headers: Vec<(String, String)>,
    pub refresh_endpoint: Option<RefreshEndpointConfig>,
    pub response: ResponseMapping,
    pub assertion: AssertionConfig,
    pub verify_url: Option<Url>,
    pub tls: TlsMaterial,
    /// RFC 8693 token exchange settings (grant token-exchange).
    pub token_exchange: TokenExchangeConfig,
}

/// RFC 8693: how the subject token ([`Credentials::federated_token`]) is described, and
/// which token is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchangeConfig {
    /// subject_token_type; default urn:ietf:params:oauth:token-type:jwt.
    pub subject_token_type: String,
    /// requested_token_type; None leaves it to the server.
    pub requested_token_type: Option<String>,
}

/// The token type URI of a JWT (RFC 8693 3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

impl Default for TokenExchangeConfig {
    fn default() -> Self {
        TokenExchangeConfig { subject_token_type: TOKEN_TYPE_JWT.into(), requested_token_type: None }
    }
}

impl TokenRequestConfig {
    /// A client_credentials configuration with defaults everywhere else; handy for tests
    /// and as a starting point.
    pub fn new(endpoint: Endpoint) -> Self {
        TokenRequestConfig {
            endpoint,
            grant: GrantType::ClientCredentials,
            client_authentication: ClientAuthentication::ClientSecretBasic,
            encoding: RequestEncoding::Form,
            omit_grant_type: false,
            scopes: Vec::new(),
            audience: None,
            resource: None,
            extra_parameters: BTreeMap::new(),
            extra_headers: Vec::new(),
            refresh_endpoint: None,
            response: ResponseMapping::default(),
            assertion: AssertionConfig::default(),
            verify_url: None,
            tls: TlsMaterial::default(),
            token_exchange: TokenExchangeConfig::default(),
        }
    }
}

/// The credential material from the source Secret. Every secret is a [`SecretString`], so
/// Debug output shows `[REDACTED]`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// PEM private key for private_key_jwt and jwt-bearer.
    pub private_key: Option<SecretString>,
    /// The bootstrap refresh token from the source Secret.
    pub refresh_token: Option<SecretString>,
    /// A one-time authorization code.
    pub authorization_code: Option<SecretString>,
    /// A token issued to this workload by an issuer the server trusts (workload identity
    /// federation): a Kubernetes ServiceAccount token minted for this one request, a
    /// projected token file, or a subject token from the source Secret. It is the
    /// client_assertion of clientAuthentication service_account_token, the assertion of the
    /// jwt-bearer grant (instead of signing one) and the subject_token of token exchange.
    pub federated_token: Option<SecretString>,
}

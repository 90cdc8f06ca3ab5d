//! The closed vocabularies of OAuth2 that a ClientCredential chooses from. They live in the
//! Kubernetes-free core; the CRD reuses them so the schema's enums and the engine can never
//! disagree.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// OAuth2 grant types tokensync can drive.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GrantType {
    #[default]
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    #[serde(rename = "refresh_token")]
    RefreshToken,
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:jwt-bearer")]
    JwtBearer,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

/// Client authentication methods (OAuth 2.0 / OIDC token_endpoint_auth_method names).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ClientAuthentication {
    #[default]
    #[serde(rename = "client_secret_basic")]
    ClientSecretBasic,
    #[serde(rename = "client_secret_post")]
    ClientSecretPost,
    #[serde(rename = "private_key_jwt")]
    PrivateKeyJwt,
    #[serde(rename = "client_secret_jwt")]
    ClientSecretJwt,
    #[serde(rename = "none")]
    None,
    /// The client assertion (RFC 7523 2.2) is a token issued elsewhere that the server
    /// trusts, such as a Kubernetes ServiceAccount token (workload identity federation):
    /// [`crate::oauth::Credentials::federated_token`].
    #[serde(rename = "service_account_token")]
    ServiceAccountToken,
    /// RFC 8705 2.1: the client proves its identity with a certificate from a CA the server
    /// trusts, presented on the TLS connection; only client_id is in the body.
    #[serde(rename = "tls_client_auth")]
    TlsClientAuth,
    /// RFC 8705 2.2: like tls_client_auth, with a certificate the server knows by its
    /// thumbprint (registered JWK set) rather than by its issuer.
    #[serde(rename = "self_signed_tls_client_auth")]
    SelfSignedTlsClientAuth,
}

/// Body encodings for token requests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestEncoding {
    /// application/x-www-form-urlencoded (RFC 6749).
    #[default]
    Form,
    /// application/json.
    Json,
}

/// JWS algorithms for assertions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SigningAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    HS256,
    HS384,
    HS512,
}

impl GrantType {
    /// The grant_type value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            GrantType::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

impl ClientAuthentication {
    /// The token_endpoint_auth_method name (RFC 7591, OIDC Discovery).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthentication::ClientSecretBasic => "client_secret_basic",
            ClientAuthentication::ClientSecretPost => "client_secret_post",
            ClientAuthentication::PrivateKeyJwt => "private_key_jwt",
            ClientAuthentication::ClientSecretJwt => "client_secret_jwt",
            ClientAuthentication::None => "none",
            ClientAuthentication::ServiceAccountToken => "service_account_token",
            ClientAuthentication::TlsClientAuth => "tls_client_auth",
            ClientAuthentication::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }

    /// Whether the client authenticates with the certificate it presents on the TLS
    /// connection (RFC 8705).
    pub fn is_mutual_tls(self) -> bool {
        matches!(self, ClientAuthentication::TlsClientAuth | ClientAuthentication::SelfSignedTlsClientAuth)
    }

    /// Whether this method needs the client secret.
    pub fn needs_client_secret(self) -> bool {
        matches!(
            self,
            ClientAuthentication::ClientSecretBasic
                | ClientAuthentication::ClientSecretPost
                | ClientAuthentication::ClientSecretJwt
        )
    }
}

impl SigningAlgorithm {
    /// Whether the algorithm is an HMAC keyed with the client secret.
    pub fn is_hmac(self) -> bool {
        matches!(self, SigningAlgorithm::HS256 | SigningAlgorithm::HS384 | SigningAlgorithm::HS512)
    }
}

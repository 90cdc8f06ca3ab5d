//! `ClientCredential` (tokensync.io/v1alpha1): the custom resource and its status.
//!
//! Every doc comment here becomes the field's description in the CRD and therefore in
//! `kubectl explain clientcredential.spec.<field>`: write them for users.
//! Admission-time rules (`x-kubernetes-validations`) are declared next to the fields they
//! guard; `super::validate` mirrors each of them in Rust with a message naming the field.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::DurationString;
pub use crate::oauth::{ClientAuthentication, GrantType, RequestEncoding, SigningAlgorithm};

/// The admission rules that keep a ClientCredential in its own namespace. The
/// ClusterClientCredential CRD, which shares the spec, replaces them with
/// [`super::cluster::CLUSTER_RULES`].
pub const NAMESPACED_CREDENTIALS_RULE: &str = "!has(self.credentialsRef) || !has(self.credentialsRef.namespace)";
pub const NAMESPACED_SERVICE_ACCOUNT_RULE: &str =
    "!has(self.serviceAccountRef) || !has(self.serviceAccountRef.namespace)";
pub const NAMESPACED_TARGET_RULE: &str =
    "!has(self.target.namespaces) && !has(self.target.namespaceSelector) && !has(self.target.excludeNamespaces)";

/// RFC 8705 client authentication needs the certificate it authenticates with.
pub const MUTUAL_TLS_CERTIFICATE_RULE: &str = "!has(self.clientAuthentication) || !(self.clientAuthentication in ['tls_client_auth', 'self_signed_tls_client_auth']) || (has(self.tls) && has(self.tls.clientCertificateSecretRef))";

/// Desired state of a ClientCredential: where and how to obtain an access token, and the
/// Secret to keep it in.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tokensync.io",
    version = "v1alpha1",
    kind = "ClientCredential",
    plural = "clientcredentials",
    shortname = "clientcred",
    category = "tokensync",
    namespaced,
    status = "ClientCredentialStatus",
    derive = "PartialEq",
    doc = "Keeps a short-lived OAuth2 access token fresh in a Secret. The client secret (or refresh token) stays in the source Secret; workloads mount only the target Secret.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    // kubectl prints a date column as an age, and a time in the future as `<invalid>`:
    // expiry is a string column (the RFC 3339 time); only past times are date columns.
    printcolumn = r#"{"name":"Expires","type":"string","description":"When the published token expires (RFC 3339).","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Refreshed","type":"date","description":"How long ago the published token was issued.","jsonPath":".status.lastRefreshTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.tokenEndpoint) != has(self.issuer)").message("exactly one of spec.tokenEndpoint and spec.issuer must be set").field_path(".tokenEndpoint"),
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))").message("spec.renewBefore and spec.renewBeforePercentage are mutually exclusive").field_path(".renewBefore"),
    validation = Rule::new("!has(self.grantType) || self.grantType != 'refresh_token' || (has(self.credentialsRef) && has(self.credentialsRef.refreshTokenKey))").message("grantType refresh_token needs spec.credentialsRef.refreshTokenKey").field_path(".credentialsRef.refreshTokenKey"),
    validation = Rule::new("!has(self.grantType) || self.grantType != 'authorization_code' || (has(self.credentialsRef) && has(self.credentialsRef.authorizationCodeKey))").message("grantType authorization_code needs spec.credentialsRef.authorizationCodeKey").field_path(".credentialsRef.authorizationCodeKey"),
    validation = Rule::new("!has(self.grantType) || self.grantType != 'urn:ietf:params:oauth:grant-type:jwt-bearer' || has(self.serviceAccountRef) || (has(self.credentialsRef) && has(self.credentialsRef.privateKeyKey))").message("grantType urn:ietf:params:oauth:grant-type:jwt-bearer needs spec.credentialsRef.privateKeyKey to sign the assertion, or spec.serviceAccountRef whose token is the assertion").field_path(".credentialsRef.privateKeyKey"),
    validation = Rule::new("!has(self.clientAuthentication) || self.clientAuthentication != 'private_key_jwt' || (has(self.credentialsRef) && has(self.credentialsRef.privateKeyKey))").message("clientAuthentication private_key_jwt needs spec.credentialsRef.privateKeyKey").field_path(".credentialsRef.privateKeyKey"),
    validation = Rule::new("!has(self.clientAuthentication) || self.clientAuthentication != 'none' || !has(self.grantType) || self.grantType != 'client_credentials'").message("grantType client_credentials needs client authentication; clientAuthentication none is only for refresh_token, authorization_code and jwt-bearer").field_path(".clientAuthentication"),
    validation = Rule::new("!has(self.clientAuthentication) || self.clientAuthentication != 'client_secret_jwt' || !has(self.assertion) || !has(self.assertion.algorithm) || self.assertion.algorithm in ['HS256', 'HS384', 'HS512']").message("clientAuthentication client_secret_jwt signs with the client secret: spec.assertion.algorithm must be HS256, HS384 or HS512").field_path(".assertion.algorithm"),
    validation = Rule::new("!has(self.target.name) || !has(self.credentialsRef) || self.target.name != self.credentialsRef.name").message("the target Secret must not be the credentials Secret").field_path(".target.name"),
    validation = Rule::new("!has(self.assertion) || !has(self.assertion.algorithm) || !(self.assertion.algorithm in ['HS256', 'HS384', 'HS512']) || (has(self.clientAuthentication) && self.clientAuthentication == 'client_secret_jwt')").message("HS256/HS384/HS512 assertions are only for clientAuthentication client_secret_jwt; private keys sign with RS*, PS* or ES*").field_path(".assertion.algorithm"),
    validation = Rule::new(NAMESPACED_CREDENTIALS_RULE).message("spec.credentialsRef.namespace is only for a ClusterClientCredential: a ClientCredential reads Secrets in its own namespace").field_path(".credentialsRef.namespace"),
    validation = Rule::new("has(self.credentialsRef) || (has(self.serviceAccountRef) && has(self.clientAuthentication) && self.clientAuthentication in ['none', 'service_account_token']) || (has(self.clientId) && has(self.clientAuthentication) && self.clientAuthentication in ['tls_client_auth', 'self_signed_tls_client_auth'])").message("spec.credentialsRef is required unless no secret is needed: spec.serviceAccountRef with clientAuthentication service_account_token or none, or spec.clientId with clientAuthentication tls_client_auth or self_signed_tls_client_auth").field_path(".credentialsRef"),
    validation = Rule::new("!has(self.target.certificateSecretNameKey) || (has(self.tls) && has(self.tls.clientCertificateSecretRef))").message("spec.target.certificateSecretNameKey names the client certificate Secret: set spec.tls.clientCertificateSecretRef").field_path(".target.certificateSecretNameKey"),
    validation = Rule::new(MUTUAL_TLS_CERTIFICATE_RULE).message("clientAuthentication tls_client_auth and self_signed_tls_client_auth authenticate with the client certificate: set spec.tls.clientCertificateSecretRef").field_path(".tls.clientCertificateSecretRef"),
    validation = Rule::new("!has(self.clientAuthentication) || self.clientAuthentication != 'service_account_token' || has(self.serviceAccountRef)").message("clientAuthentication service_account_token needs spec.serviceAccountRef, whose token is the client assertion").field_path(".serviceAccountRef"),
    validation = Rule::new("!has(self.clientAuthentication) || self.clientAuthentication != 'service_account_token' || has(self.clientId) || has(self.credentialsRef)").message("clientAuthentication service_account_token needs the client id: spec.clientId, or spec.credentialsRef with the clientIdKey").field_path(".clientId"),
    validation = Rule::new("!has(self.grantType) || self.grantType != 'urn:ietf:params:oauth:grant-type:token-exchange' || has(self.serviceAccountRef) || (has(self.credentialsRef) && has(self.credentialsRef.subjectTokenKey))").message("grantType urn:ietf:params:oauth:grant-type:token-exchange needs a subject token: spec.serviceAccountRef or spec.credentialsRef.subjectTokenKey").field_path(".serviceAccountRef"),
    validation = Rule::new("!has(self.serviceAccountRef) || (has(self.clientAuthentication) && self.clientAuthentication == 'service_account_token') || (has(self.grantType) && self.grantType in ['urn:ietf:params:oauth:grant-type:jwt-bearer', 'urn:ietf:params:oauth:grant-type:token-exchange'])").message("spec.serviceAccountRef is used by clientAuthentication service_account_token or grantType jwt-bearer or token-exchange; set one of them").field_path(".serviceAccountRef"),
    validation = Rule::new(NAMESPACED_SERVICE_ACCOUNT_RULE).message("spec.serviceAccountRef.namespace is only for a ClusterClientCredential: a ClientCredential uses a ServiceAccount in its own namespace").field_path(".serviceAccountRef.namespace"),
    validation = Rule::new(NAMESPACED_TARGET_RULE).message("spec.target.namespaces, namespaceSelector and excludeNamespaces are only for a ClusterClientCredential: a ClientCredential writes its target in its own namespace").field_path(".target")
)]
pub struct ClientCredentialSpec {
    /// URL of the OAuth2 token endpoint, e.g. https://auth.example/realms/x/protocol/openid-connect/token.
    /// Exactly one of tokenEndpoint and issuer must be set. Plain http is refused unless the
    /// operator runs with --allow-http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub token_endpoint: Option<String>,

    /// OpenID Connect issuer URL. The token endpoint is read from
    /// <issuer>/.well-known/openid-configuration, whose "issuer" must equal this value exactly.
    /// Exactly one of tokenEndpoint and issuer must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub issuer: Option<String>,

    /// OAuth2 grant used to obtain tokens. client_credentials (RFC 6749 4.4, the default);
    /// refresh_token (RFC 6749 6: a bootstrap refresh token from the source Secret, rotated
    /// refresh tokens are kept by tokensync); authorization_code (a one-time code from the
    /// source Secret is exchanged once, then the refresh token is used);
    /// urn:ietf:params:oauth:grant-type:jwt-bearer (RFC 7523 2.1: an assertion signed with the
    /// private key, or the token of spec.serviceAccountRef);
    /// urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693: the token of
    /// spec.serviceAccountRef, or credentialsRef.subjectTokenKey, is the subject_token; Google
    /// STS, Keycloak, Dex).
    #[serde(default)]
    pub grant_type: GrantType,

    /// How the client authenticates to the token endpoint. client_secret_basic (HTTP Basic,
    /// RFC 6749 2.3.1, the default), client_secret_post (client_id and client_secret in the
    /// body), private_key_jwt and client_secret_jwt (RFC 7523 client assertions), none (public
    /// client: only client_id is sent; with jwt-bearer nothing, with token-exchange client_id
    /// only when one is configured), service_account_token (no client secret: the client
    /// assertion is a token of spec.serviceAccountRef, as Microsoft Entra ID federated
    /// credentials and Keycloak federated client authentication expect).
    /// tls_client_auth and self_signed_tls_client_auth (RFC 8705 mutual TLS, no shared
    /// secret): the certificate of spec.tls.clientCertificateSecretRef is presented on the TLS
    /// connection and only client_id is in the body; tls_client_auth for a certificate from a
    /// CA the server trusts (matched by subject or SAN), self_signed_tls_client_auth for one
    /// the server knows by its thumbprint. With an issuer, the discovery document's
    /// mtls_endpoint_aliases.token_endpoint is used when it has one.
    #[serde(default)]
    pub client_authentication: ClientAuthentication,

    /// Encoding of the token request body: form (application/x-www-form-urlencoded, the
    /// standard, the default) or json (application/json, for endpoints that only take JSON).
    #[serde(default)]
    pub request_encoding: RequestEncoding,

    /// Leave grant_type out of the token request. Only for non-standard endpoints that
    /// identify the flow by their path, such as Charp's /auth/token. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub omit_grant_type: bool,

    /// The client id, inline: it is not a secret. When set, credentialsRef.clientIdKey is not
    /// read. With spec.serviceAccountRef it makes a credential that needs no Secret at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub client_id: Option<String>,

    /// The Secret holding the client credentials and, for the other flows, the private key,
    /// bootstrap refresh token, authorization code or subject token. A ClientCredential reads
    /// it from its own namespace (cross-namespace references are not possible); a
    /// ClusterClientCredential from credentialsRef.namespace. Not needed by a secretless
    /// credential (spec.serviceAccountRef with clientAuthentication service_account_token or
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<Box<CredentialsRef>>,

    /// A Kubernetes ServiceAccount whose short-lived token stands where a client secret
    /// stood (workload identity federation): the client assertion of clientAuthentication
    /// service_account_token, the assertion of grantType jwt-bearer, or the subject token of
    /// grantType token-exchange. tokensync requests a new token for every token request
    /// (TokenRequest API), never stores or logs it. The ServiceAccount must opt in: its
    /// annotation tokensync.io/allowed-audiences lists (comma-separated) the audiences
    /// tokensync may request for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<Box<ServiceAccountRef>>,

    /// RFC 8693 token exchange settings (grantType urn:ietf:params:oauth:grant-type:token-exchange).
    /// The audience, scope and resource parameters are spec.audience, spec.scopes and
    /// spec.resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<Box<TokenExchangeSettings>>,

    /// Scopes to request, sent space-separated in the scope parameter (also on refresh).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256), regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$")))]
    pub scopes: Vec<String>,

    /// Value of the audience parameter (Auth0 and others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub audience: Option<String>,

    /// Value of the resource parameter (RFC 8707 resource indicators, Azure AD v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub resource: Option<String>,

    /// Additional parameters sent in every token and refresh request, e.g. redirect_uri.
    /// Parameters that tokensync sets itself (grant_type, client_id, client_secret,
    /// client_assertion, client_assertion_type, refresh_token, code, assertion, scope,
    /// audience, resource, subject_token, subject_token_type, requested_token_type) cannot be
    /// overridden here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) > 0 && !(k in ['grant_type', 'client_id', 'client_secret', 'client_assertion', 'client_assertion_type', 'refresh_token', 'code', 'assertion', 'scope', 'audience', 'resource', 'subject_token', 'subject_token_type', 'requested_token_type']))").message("extraParameters keys must not be empty nor a parameter tokensync sets itself (grant_type, client_id, client_secret, client_assertion, client_assertion_type, refresh_token, code, assertion, scope, audience, resource, subject_token, subject_token_type, requested_token_type)"))]
    pub extra_parameters: BTreeMap<String, String>,

    /// Additional HTTP headers sent with every token and refresh request, e.g.
    /// {name: Accept-Language, value: en_US}. Authorization, Content-Type, Content-Length and
    /// Host are set by tokensync and cannot be given here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub extra_headers: Vec<HttpHeader>,

    /// A separate endpoint for the refresh_token grant, for vendors that renew at another URL
    /// (for example Charp's /auth/refresh). When set, a refresh token returned by the token
    /// endpoint is kept and used for renewals; if the refresh is rejected, a client_credentials
    /// grant falls back to a fresh token request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_endpoint: Option<RefreshEndpoint>,

    /// Mapping for non-standard token responses. Leave unset for RFC 6749 responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<ResponseMapping>>,

    /// Settings for the JWTs tokensync signs: client assertions (private_key_jwt,
    /// client_secret_jwt) and jwt-bearer grant assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion: Option<Box<AssertionSettings>>,

    /// TLS settings for the token, refresh and verify endpoints: a private CA and a client
    /// certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TlsSettings>>,

    /// Renew this long before the token expires, e.g. 10m. Mutually exclusive with
    /// renewBeforePercentage. Default: renew after two thirds of the token's lifetime.
    /// tokensync never renews later than the operator's propagation margin before expiry, so
    /// pods reading a mounted Secret get a token with time left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<DurationString>,

    /// Renew when this percentage of the token's lifetime remains (1-99). Mutually exclusive
    /// with renewBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,

    /// Optional probe that proves a new token works before it is published: the URL is called
    /// with GET and "Authorization: <token_type> <access_token>"; a non-2xx answer keeps the
    /// previous token and reports TokenVerificationFailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySettings>,

    /// Stop requesting tokens. The published token is left in place until it expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// The Secret that receives the access token. Default: a Secret named like the
    /// ClientCredential with the keys access_token, token_type and expires_at.
    #[serde(default)]
    pub target: TargetSecret,
}

impl ClientCredentialSpec {
    /// A ClusterClientCredential's own namespace, where its state is kept: that of its
    /// credentials Secret, or of its ServiceAccount when it has no Secret.
    pub fn home_namespace(&self) -> Option<&str> {
        self.credentials_ref
            .as_ref()
            .and_then(|r| r.namespace.as_deref())
            .or_else(|| self.service_account_ref.as_ref().and_then(|r| r.namespace.as_deref()))
    }
}

/// A ServiceAccount whose token tokensync requests for each token request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the ServiceAccount, in the ClientCredential's namespace (a
    /// ClusterClientCredential names the namespace).
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,

    /// Namespace of the ServiceAccount. Required on a ClusterClientCredential and rejected on
    /// a ClientCredential, which may only use ServiceAccounts in its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,

    /// The aud claim of the ServiceAccount token: what the identity provider expects, e.g.
    /// api://AzureADTokenExchange (Entra ID) or
    /// https://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X
    /// (Google). It must be listed in the ServiceAccount's tokensync.io/allowed-audiences
    /// annotation, and must not be an audience the cluster's API server accepts.
    #[schemars(length(min = 1, max = 2048))]
    pub audience: String,

    /// Lifetime requested for each ServiceAccount token, in seconds. Default 600, the
    /// shortest the API server allows: the token is used at once, for one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 600, max = 86400))]
    pub expiration_seconds: Option<i64>,
}

/// RFC 8693 token exchange parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangeSettings {
    /// subject_token_type. Default urn:ietf:params:oauth:token-type:jwt (a ServiceAccount
    /// token is a JWT); e.g. urn:ietf:params:oauth:token-type:id_token or access_token for a
    /// subject token from credentialsRef.subjectTokenKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^\S+$"))]
    pub subject_token_type: Option<String>,

    /// requested_token_type, e.g. urn:ietf:params:oauth:token-type:access_token (Google STS
    /// requires it). Default: not sent, the server decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^\S+$"))]
    pub requested_token_type: Option<String>,
}

/// One extra HTTP header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!(self.name.lowerAscii() in ['authorization', 'content-type', 'content-length', 'host'])").message("Authorization, Content-Type, Content-Length and Host are set by tokensync").field_path(".name")
)]
pub struct HttpHeader {
    /// Header name, e.g. Accept-Language.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096), regex(pattern = r"^[^\r\n]*$"))]
    pub value: String,
}

/// Where the credentials live: a Secret in the ClientCredential's namespace, and the keys in
/// it. Only the keys the chosen grant and authentication method need are read.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the Secret: in the ClientCredential's namespace, or for a
    /// ClusterClientCredential in credentialsRef.namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,

    /// Namespace of the Secret. Required on a ClusterClientCredential (the platform team's
    /// namespace that holds the client secret; the CA bundle and client certificate Secrets
    /// are read from it too) and rejected on a ClientCredential, which only ever reads
    /// Secrets in its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,

    /// Key holding the client_id. Default client_id.
    #[serde(default = "default_client_id_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_id_key: String,

    /// Key holding the client_secret (client_secret_basic, client_secret_post,
    /// client_secret_jwt). Default client_secret.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_secret_key: String,

    /// Key holding a PEM private key (PKCS#8 RSA or EC P-256/P-384, or PKCS#1 RSA) that signs client
    /// assertions (private_key_jwt) and jwt-bearer grant assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub private_key_key: Option<String>,

    /// Key holding the bootstrap refresh token (grantType refresh_token). It is used when
    /// tokensync has no refresh token of its own yet, or when its value changes; rotated
    /// refresh tokens are kept in a state Secret owned by the ClientCredential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub refresh_token_key: Option<String>,

    /// Key holding a one-time authorization code (grantType authorization_code). It is
    /// exchanged once; later renewals use the refresh token the exchange returned. Putting a
    /// new code in the Secret starts a new chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub authorization_code_key: Option<String>,

    /// Key holding the subject token of grantType token-exchange when it does not come from
    /// spec.serviceAccountRef (for example an id_token another system keeps fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub subject_token_key: Option<String>,
}

fn default_client_id_key() -> String {
    "client_id".into()
}

fn default_client_secret_key() -> String {
    "client_secret".into()
}

/// A separate refresh endpoint (vendor specific).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshEndpoint {
    /// URL of the refresh endpoint.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub url: String,

    /// Body encoding for refresh requests. Default: the same as spec.requestEncoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_encoding: Option<RequestEncoding>,

    /// Send nothing but the refresh_token in the body: no grant_type, no client credentials,
    /// no scope or extra parameters (Charp's /auth/refresh). Default false: a standard
    /// refresh_token grant authenticated like the token request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_token_only: bool,
}

/// Where to find the token in a non-standard response. Field names may be dotted paths into
/// nested objects, e.g. data.accessToken.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMapping {
    /// Field holding the access token. Default access_token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub access_token_field: Option<String>,

    /// Field holding the token type. Default token_type; Bearer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_type_field: Option<String>,

    /// Field holding the lifetime in seconds, as a number or a numeric string.
    /// Default expires_in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub expires_in_field: Option<String>,

    /// Field holding the absolute expiry, as RFC 3339 or epoch seconds. Used when the
    /// lifetime field is absent. Default expires_at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub expires_at_field: Option<String>,

    /// Field holding a (rotated) refresh token. Default refresh_token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub refresh_token_field: Option<String>,

    /// Lifetime assumed when the response states none and the token is not a JWT with an exp
    /// claim, e.g. 1h. Without it such a response is rejected as InvalidTokenResponse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_lifetime: Option<DurationString>,
}

/// Signing settings for the JWTs tokensync creates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssertionSettings {
    /// JWS algorithm. Default RS256 for RSA keys, ES256 for P-256 keys, ES384 for P-384 keys,
    /// HS256 for client_secret_jwt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,

    /// kid header, when the server looks keys up by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_id: Option<String>,

    /// aud claim. Default: the token endpoint URL (RFC 7523 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub audience: Option<String>,

    /// iss claim of jwt-bearer grant assertions. Default: the client_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: Option<String>,

    /// sub claim of jwt-bearer grant assertions (the principal the token is for). Default:
    /// the client_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub subject: Option<String>,

    /// Lifetime of each assertion (exp - iat). Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<DurationString>,

    /// Additional string claims for jwt-bearer grant assertions, e.g. scope for Google
    /// service accounts. Registered claims (iss, sub, aud, exp, iat, nbf, jti) cannot be set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) > 0 && !(k in ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti']))").message("extraClaims keys must not be empty nor a registered claim (iss, sub, aud, exp, iat, nbf, jti)"))]
    pub extra_claims: BTreeMap<String, String>,
}

/// TLS settings for outgoing requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    /// A Secret in the same namespace with PEM CA certificates. When set, only these CAs are
    /// trusted for the token, refresh and verify endpoints (not the built-in public roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<CaBundleRef>,

    /// A Secret in the same namespace with a PEM client certificate (chain) and key for mutual
    /// TLS (RFC 8705), for example the kubernetes.io/tls Secret of a cert-manager Certificate.
    /// The certificate is presented to the token, refresh, discovery and verify endpoints;
    /// with clientAuthentication tls_client_auth or self_signed_tls_client_auth it is the
    /// client's credential. It is checked before every request (key matches, not expired);
    /// a renewed certificate is used from the next request on and, like a rotated client
    /// secret, causes one prompt new token (a certificate-bound token follows its
    /// certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<ClientCertificateRef>,
}

/// Reference to a CA bundle in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// Name of the Secret, in the same namespace as the credentials Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Key holding the PEM bundle. Default ca.crt.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Reference to a client certificate and key in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateRef {
    /// Name of the Secret: in the ClientCredential's namespace, or for a
    /// ClusterClientCredential in credentialsRef.namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Key holding the PEM certificate chain, leaf first. Default tls.crt.
    #[serde(default = "default_cert_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub certificate_key: String,
    /// Key holding the PEM private key (PKCS#8, PKCS#1 or SEC1). Default tls.key. Never
    /// logged, never copied to the target Secret.
    #[serde(default = "default_tls_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub private_key_key: String,
}

fn default_cert_key() -> String {
    "tls.crt".into()
}

fn default_tls_key_key() -> String {
    "tls.key".into()
}

/// A probe that proves a new token works before it is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySettings {
    /// URL called with GET and "Authorization: <token_type> <access_token>", e.g. Chalk's
    /// https://api.chalk.ai/v1/who-am-i. Any 2xx answer accepts the token.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub url: String,
}

/// The Secret that receives the token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.type) || self.type != 'kubernetes.io/dockerconfigjson' || (has(self.template) && '.dockerconfigjson' in self.template)").message("a kubernetes.io/dockerconfigjson target needs a template for the key .dockerconfigjson").field_path(".template")
)]
pub struct TargetSecret {
    /// Name of the target Secret in the same namespace. Default: the ClientCredential's name.
    /// When it changes, the token is written under the new name (no new token is requested)
    /// and then the Secret published under the old name is deleted, unless deletionPolicy
    /// is Retain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: Option<String>,

    /// Secret type. Default Opaque.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub type_: Option<String>,

    /// Labels added to the target Secret (tokensync adds its own managed-by label).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the target Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,

    /// Secret keys and the templates that render them (minijinja syntax), replacing the
    /// default keys access_token, token_type and expires_at. Variables: access_token,
    /// token_type, expires_at (RFC 3339), expires_in (seconds), scope. Filters include
    /// b64encode and tojson. Example: Authorization: "Bearer {{ access_token }}".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[-._a-zA-Z0-9]+$'))").message("template keys must be valid Secret keys: letters, digits, '-', '_' and '.'"))]
    pub template: Option<BTreeMap<String, String>>,

    /// What happens to the target Secret when the ClientCredential is deleted or
    /// spec.target.name changes: Delete (the default; it is garbage-collected through its
    /// ownerReference, or deleted after a rename) or Retain (no ownerReference; the Secret
    /// stays until someone deletes it, and is no longer renewed after a rename). On a
    /// ClusterClientCredential, Delete also removes the copy from a namespace that stops
    /// being selected; Retain leaves it there (it is no longer renewed).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Also write the name of the client certificate Secret (spec.tls.clientCertificateSecretRef)
    /// into the target Secret, under this key, e.g. tls-secret-name. A certificate-bound token
    /// (RFC 8705) is only accepted together with its certificate: this tells the workload
    /// which kubernetes.io/tls Secret to mount with the token. ClientCredential only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub certificate_secret_name_key: Option<String>,

    /// ClusterClientCredential only: namespaces that receive a copy of the target Secret, by
    /// name. Combined with namespaceSelector (a namespace matching either is selected);
    /// namespaces that do not exist yet receive their copy when they are created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1024),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub namespaces: Vec<String>,

    /// ClusterClientCredential only: namespaces whose labels match receive a copy of the
    /// target Secret. A namespace that gains a matching label receives the current token at
    /// once, without a token request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// ClusterClientCredential only: namespaces that never receive a copy, even when listed in
    /// namespaces or matched by namespaceSelector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1024),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exclude_namespaces: Vec<String>,
}

/// Fate of the target Secret when its ClientCredential is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// Observed state of a ClientCredential.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCredentialStatus {
    /// Ready says whether the target Secret holds a valid token; Renewing says whether the
    /// last renewal attempt failed while a valid token is still published. Reasons are listed
    /// in the README.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// token_type of the published token, e.g. Bearer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,

    /// Scope granted with the published token, when the server stated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,

    /// When the published token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When tokensync will next request a token (renewal, or retry after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,

    /// When the published token was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,

    /// Consecutive failed token requests since the last success; drives the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,

    /// When the last token request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,

    /// The least time, in seconds, the next attempt waits after the last failure: the token
    /// endpoint's Retry-After, or the maximum backoff after a permanent error (a rejected
    /// request will not succeed sooner by asking more often).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<i64>,

    /// Fingerprint of the spec and source Secret the failed attempts were made with. When the
    /// inputs change (a fixed spec, a rotated client secret), the backoff starts over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_inputs: Option<String>,

    /// The value of the tokensync.io/renew-requested-at annotation that was last acted upon.
    /// Setting the annotation to any other value requests one immediate renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_renewal_request: Option<String>,

    /// Name of the target Secret that holds the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_secret_name: Option<String>,

    /// The ServiceAccount and audience of the tokens tokensync requests for this credential
    /// (spec.serviceAccountRef). The tokens themselves are never shown or stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountStatus>,

    /// The client certificate tokensync presents for mutual TLS
    /// (spec.tls.clientCertificateSecretRef), as it was last read: never the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateStatus>,

    /// Set when the published token is bound to a client certificate (RFC 8705 3: the token
    /// response's cnf member, or the cnf claim of a JWT access token): the x5t#S256
    /// thumbprint (base64url SHA-256 of the DER certificate) of that certificate. A resource
    /// server accepts the token only on a TLS connection that presents this certificate.
    /// Absent for tokens that are not bound, or whose binding the server does not disclose
    /// (opaque tokens without cnf in the response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_certificate_thumbprint: Option<String>,
}

/// The client certificate a credential presents.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateStatus {
    /// The Secret it is read from.
    pub secret_name: String,
    /// Its subject distinguished name.
    pub subject: String,
    /// When it expires (RFC 3339); cert-manager renews it before then, and tokensync uses
    /// the renewed one from the next request on.
    pub not_after: String,
    /// Its x5t#S256 thumbprint (base64url SHA-256 of the DER certificate), the value a
    /// certificate-bound token's cnf claim carries.
    #[serde(rename = "x5tS256")]
    pub x5t_s256: String,
}

/// Which ServiceAccount token a credential uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountStatus {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// Name of the ServiceAccount.
    pub name: String,
    /// The audience of its tokens.
    pub audience: String,
}

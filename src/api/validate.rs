//! Rust-side validation of a ClientCredential spec.
//!
//! The CRD's schema and CEL rules reject most mistakes at admission, but the controller and
//! `tokensync fetch` must not trust that admission ran (an older CRD, a manifest read from a
//! file). Every rule here mirrors one in the schema and names the field it is about, so the
//! message in the `InvalidSpec` condition tells the user exactly what to fix.

use std::fmt;

use url::Url;

use super::duration::DurationString;
use super::v1alpha1::ClientCredentialSpec;
use crate::oauth::{ClientAuthentication, GrantType};

/// Parameters tokensync sets itself; extraParameters may not override them.
pub const RESERVED_PARAMETERS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "refresh_token",
    "code",
    "assertion",
    "scope",
    "audience",
    "resource",
    "subject_token",
    "subject_token_type",
    "requested_token_type",
];

/// Headers tokensync sets itself; extraHeaders may not override them.
pub const RESERVED_HEADERS: &[&str] = &["authorization", "content-type", "content-length", "host"];

/// Registered JWT claims; assertion.extraClaims may not override them.
pub const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// One violated rule: the field (as a path under the resource, e.g. `spec.scopes[1]`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All rules a spec violates, in field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Whether some error is about `field`.
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn check(&mut self, ok: bool, field: &str, message: &str) {
        if !ok {
            self.fail(field, message);
        }
    }

    fn url(&mut self, field: &str, value: &str) {
        if let Err(message) = check_url(value) {
            self.fail(field, message);
        }
    }

    fn duration(&mut self, field: &str, value: Option<&DurationString>) {
        if let Some(Err(message)) = value.map(|d| d.parse()) {
            self.fail(field, message);
        } else if value.and_then(|d| d.parse().ok()).is_some_and(|d| d.is_zero()) {
            self.fail(field, "must be greater than zero");
        }
    }

    fn object_name(&mut self, field: &str, value: &str) {
        if !is_dns_subdomain(value) {
            self.fail(field, format!("{value:?} is not a valid Secret name (lowercase letters, digits, '-' and '.', at most 253 characters)"));
        }
    }

    fn secret_key(&mut self, field: &str, value: &str) {
        if !is_secret_key(value) {
            self.fail(field, format!("{value:?} is not a valid Secret key (letters, digits, '-', '_' and '.')"));
        }
    }
}

/// Checks a spec. `resource_name` is the ClientCredential's metadata.name, which is the
/// default target Secret name.
pub fn validate(spec: &ClientCredentialSpec, resource_name: &str) -> Result<(), ValidationErrors> {
    let mut c = Collector::default();

    match (&spec.token_endpoint, &spec.issuer) {
        (Some(url), None) => c.url("spec.tokenEndpoint", url),
        (None, Some(url)) => c.url("spec.issuer", url),
        _ => c.fail("spec.tokenEndpoint", "exactly one of spec.tokenEndpoint and spec.issuer must be set"),
    }

    let creds = spec.credentials_ref.as_ref();
    if let Some(creds) = creds {
        c.object_name("spec.credentialsRef.name", &creds.name);
        c.secret_key("spec.credentialsRef.clientIdKey", &creds.client_id_key);
        c.secret_key("spec.credentialsRef.clientSecretKey", &creds.client_secret_key);
        for (field, key) in [
            ("spec.credentialsRef.privateKeyKey", &creds.private_key_key),
            ("spec.credentialsRef.refreshTokenKey", &creds.refresh_token_key),
            ("spec.credentialsRef.authorizationCodeKey", &creds.authorization_code_key),
            ("spec.credentialsRef.subjectTokenKey", &creds.subject_token_key),
        ] {
            if let Some(key) = key {
                c.secret_key(field, key);
            }
        }
    }
    let key_set =
        |key: fn(&super::v1alpha1::CredentialsRef) -> &Option<String>| creds.is_some_and(|r| key(r).is_some());
    let auth = spec.client_authentication;
    let sa = spec.service_account_ref.as_ref();
    if let Some(client_id) = &spec.client_id {
        c.check(
            !client_id.is_empty() && client_id.len() <= 1024,
            "spec.clientId",
            "the client id is 1-1024 characters",
        );
    }
    c.check(
        creds.is_some()
            || (sa.is_some() && matches!(auth, ClientAuthentication::None | ClientAuthentication::ServiceAccountToken))
            || (spec.client_id.is_some() && auth.is_mutual_tls()),
        "spec.credentialsRef",
        "spec.credentialsRef is required unless no secret is needed: spec.serviceAccountRef with clientAuthentication service_account_token or none, or spec.clientId with clientAuthentication tls_client_auth or self_signed_tls_client_auth",
    );
    if let Some(key) = &spec.target.certificate_secret_name_key {
        c.secret_key("spec.target.certificateSecretNameKey", key);
        c.check(
            spec.tls.as_ref().is_some_and(|t| t.client_certificate_secret_ref.is_some()),
            "spec.target.certificateSecretNameKey",
            "spec.target.certificateSecretNameKey names the client certificate Secret: set spec.tls.clientCertificateSecretRef",
        );
    }
    if auth.is_mutual_tls() {
        c.check(
            spec.tls.as_ref().is_some_and(|t| t.client_certificate_secret_ref.is_some()),
            "spec.tls.clientCertificateSecretRef",
            "clientAuthentication tls_client_auth and self_signed_tls_client_auth authenticate with the client certificate: set spec.tls.clientCertificateSecretRef",
        );
    }
    if auth == ClientAuthentication::ServiceAccountToken {
        c.check(
            sa.is_some(),
            "spec.serviceAccountRef",
            "clientAuthentication service_account_token needs spec.serviceAccountRef, whose token is the client assertion",
        );
        c.check(
            spec.client_id.is_some() || creds.is_some(),
            "spec.clientId",
            "clientAuthentication service_account_token needs the client id: spec.clientId, or spec.credentialsRef with the clientIdKey",
        );
    }
    if let Some(sa) = sa {
        c.check(
            auth == ClientAuthentication::ServiceAccountToken
                || matches!(spec.grant_type, GrantType::JwtBearer | GrantType::TokenExchange),
            "spec.serviceAccountRef",
            "spec.serviceAccountRef is used by clientAuthentication service_account_token or grantType jwt-bearer or token-exchange; set one of them",
        );
        c.object_name("spec.serviceAccountRef.name", &sa.name);
        c.check(
            !sa.audience.is_empty() && sa.audience.len() <= 2048,
            "spec.serviceAccountRef.audience",
            "the audience is 1-2048 characters",
        );
        if let Some(seconds) = sa.expiration_seconds {
            c.check(
                (600..=86400).contains(&seconds),
                "spec.serviceAccountRef.expirationSeconds",
                "between 600 (the shortest lifetime the API server allows) and 86400",
            );
        }
    }
    if let Some(exchange) = &spec.token_exchange {
        for (field, value) in [
            ("spec.tokenExchange.subjectTokenType", &exchange.subject_token_type),
            ("spec.tokenExchange.requestedTokenType", &exchange.requested_token_type),
        ] {
            if let Some(v) = value {
                c.check(
                    !v.is_empty() && v.len() <= 256 && !v.contains(char::is_whitespace),
                    field,
                    "a token type URI of 1-256 characters without spaces",
                );
            }
        }
    }

    match spec.grant_type {
        GrantType::RefreshToken => c.check(
            key_set(|r| &r.refresh_token_key),
            "spec.credentialsRef.refreshTokenKey",
            "grantType refresh_token needs spec.credentialsRef.refreshTokenKey",
        ),
        GrantType::AuthorizationCode => c.check(
            key_set(|r| &r.authorization_code_key),
            "spec.credentialsRef.authorizationCodeKey",
            "grantType authorization_code needs spec.credentialsRef.authorizationCodeKey",
        ),
        GrantType::JwtBearer => c.check(
            sa.is_some() || key_set(|r| &r.private_key_key),
            "spec.credentialsRef.privateKeyKey",
            "grantType urn:ietf:params:oauth:grant-type:jwt-bearer needs spec.credentialsRef.privateKeyKey to sign the assertion, or spec.serviceAccountRef whose token is the assertion",
        ),
        GrantType::TokenExchange => c.check(
            sa.is_some() || key_set(|r| &r.subject_token_key),
            "spec.serviceAccountRef",
            "grantType urn:ietf:params:oauth:grant-type:token-exchange needs a subject token: spec.serviceAccountRef or spec.credentialsRef.subjectTokenKey",
        ),
        GrantType::ClientCredentials => c.check(
            spec.client_authentication != ClientAuthentication::None,
            "spec.clientAuthentication",
            "grantType client_credentials needs client authentication; clientAuthentication none is only for refresh_token, authorization_code and jwt-bearer",
        ),
    }
    if spec.client_authentication == ClientAuthentication::PrivateKeyJwt {
        c.check(
            key_set(|r| &r.private_key_key),
            "spec.credentialsRef.privateKeyKey",
            "clientAuthentication private_key_jwt needs spec.credentialsRef.privateKeyKey",
        );
    }

    let algorithm = spec.assertion.as_ref().and_then(|a| a.algorithm);
    match (spec.client_authentication, algorithm) {
        (ClientAuthentication::ClientSecretJwt, Some(alg)) if !alg.is_hmac() => c.fail(
            "spec.assertion.algorithm",
            "clientAuthentication client_secret_jwt signs with the client secret: spec.assertion.algorithm must be HS256, HS384 or HS512",
        ),
        (auth, Some(alg)) if alg.is_hmac() && auth != ClientAuthentication::ClientSecretJwt => c.fail(
            "spec.assertion.algorithm",
            "HS256/HS384/HS512 assertions are only for clientAuthentication client_secret_jwt; private keys sign with RS*, PS* or ES*",
        ),
        _ => {}
    }

    for (i, scope) in spec.scopes.iter().enumerate() {
        let ok = !scope.is_empty()
            && scope.len() <= 256
            && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        c.check(
            ok,
            &format!("spec.scopes[{i}]"),
            "a scope is 1-256 printable ASCII characters without spaces, '\"' or '\\' (RFC 6749 3.3)",
        );
    }
    c.check(spec.scopes.len() <= 64, "spec.scopes", "at most 64 scopes");

    for key in spec.extra_parameters.keys() {
        c.check(
            !key.is_empty() && !RESERVED_PARAMETERS.contains(&key.as_str()),
            &format!("spec.extraParameters[{key}]"),
            "extraParameters keys must not be empty nor a parameter tokensync sets itself (grant_type, client_id, client_secret, client_assertion, client_assertion_type, refresh_token, code, assertion, scope, audience, resource, subject_token, subject_token_type, requested_token_type)",
        );
    }
    c.check(spec.extra_parameters.len() <= 32, "spec.extraParameters", "at most 32 parameters");

    for (i, header) in spec.extra_headers.iter().enumerate() {
        let field = format!("spec.extraHeaders[{i}].name");
        let token_chars = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b);
        c.check(
            !header.name.is_empty() && header.name.len() <= 128 && header.name.bytes().all(token_chars),
            &field,
            "a header name is 1-128 token characters (RFC 9110 5.1)",
        );
        c.check(
            !RESERVED_HEADERS.contains(&header.name.to_ascii_lowercase().as_str()),
            &field,
            "Authorization, Content-Type, Content-Length and Host are set by tokensync",
        );
        c.check(
            spec.extra_headers[..i].iter().all(|h| !h.name.eq_ignore_ascii_case(&header.name)),
            &field,
            "each header may be given once",
        );
        c.check(
            header.value.len() <= 4096 && !header.value.contains(['\r', '\n', '\0']),
            &format!("spec.extraHeaders[{i}].value"),
            "a header value is at most 4096 characters on one line",
        );
    }
    c.check(spec.extra_headers.len() <= 32, "spec.extraHeaders", "at most 32 headers");

    if let Some(refresh) = &spec.refresh_endpoint {
        c.url("spec.refreshEndpoint.url", &refresh.url);
    }
    if let Some(verify) = &spec.verify {
        c.url("spec.verify.url", &verify.url);
    }
    if let Some(response) = &spec.response {
        c.duration("spec.response.defaultLifetime", response.default_lifetime.as_ref());
        for (field, value) in [
            ("spec.response.accessTokenField", &response.access_token_field),
            ("spec.response.tokenTypeField", &response.token_type_field),
            ("spec.response.expiresInField", &response.expires_in_field),
            ("spec.response.expiresAtField", &response.expires_at_field),
            ("spec.response.refreshTokenField", &response.refresh_token_field),
        ] {
            if let Some(path) = value {
                c.check(
                    !path.is_empty() && path.len() <= 253 && path.split('.').all(|p| !p.is_empty()),
                    field,
                    "a field path is one or more non-empty names separated by '.', e.g. data.accessToken",
                );
            }
        }
    }
    if let Some(assertion) = &spec.assertion {
        c.duration("spec.assertion.lifetime", assertion.lifetime.as_ref());
        for key in assertion.extra_claims.keys() {
            c.check(
                !key.is_empty() && !RESERVED_CLAIMS.contains(&key.as_str()),
                &format!("spec.assertion.extraClaims[{key}]"),
                "extraClaims keys must not be empty nor a registered claim (iss, sub, aud, exp, iat, nbf, jti)",
            );
        }
    }
    if let Some(tls) = &spec.tls {
        if let Some(ca) = &tls.ca_bundle_secret_ref {
            c.object_name("spec.tls.caBundleSecretRef.name", &ca.name);
            c.secret_key("spec.tls.caBundleSecretRef.key", &ca.key);
        }
        if let Some(cert) = &tls.client_certificate_secret_ref {
            c.object_name("spec.tls.clientCertificateSecretRef.name", &cert.name);
            c.secret_key("spec.tls.clientCertificateSecretRef.certificateKey", &cert.certificate_key);
            c.secret_key("spec.tls.clientCertificateSecretRef.privateKeyKey", &cert.private_key_key);
        }
    }

    c.duration("spec.renewBefore", spec.renew_before.as_ref());
    c.check(
        !(spec.renew_before.is_some() && spec.renew_before_percentage.is_some()),
        "spec.renewBefore",
        "spec.renewBefore and spec.renewBeforePercentage are mutually exclusive",
    );
    if let Some(pct) = spec.renew_before_percentage {
        c.check((1..=99).contains(&pct), "spec.renewBeforePercentage", "must be between 1 and 99");
    }

    let target = &spec.target;
    let target_name = target.name.as_deref().unwrap_or(resource_name);
    if let Some(name) = &target.name {
        c.object_name("spec.target.name", name);
    }
    c.check(
        creds.is_none_or(|r| target_name != r.name),
        "spec.target.name",
        "the target Secret must not be the credentials Secret (it defaults to the ClientCredential's name)",
    );
    if let Some(templates) = &target.template {
        c.check(
            !templates.is_empty(),
            "spec.target.template",
            "give at least one key, or leave template unset for the default keys",
        );
        c.check(templates.len() <= 32, "spec.target.template", "at most 32 keys");
        for key in templates.keys() {
            c.secret_key(&format!("spec.target.template[{key}]"), key);
        }
    }
    if target.type_.as_deref() == Some("kubernetes.io/dockerconfigjson") {
        c.check(
            target.template.as_ref().is_some_and(|t| t.contains_key(".dockerconfigjson")),
            "spec.target.template",
            "a kubernetes.io/dockerconfigjson target needs a template for the key .dockerconfigjson",
        );
    }

    // A ClientCredential stays in its own namespace: the fields that reach into others
    // belong to ClusterClientCredential ([`validate_cluster`] takes them out before calling
    // this).
    c.check(
        creds.is_none_or(|r| r.namespace.is_none()),
        "spec.credentialsRef.namespace",
        "only for a ClusterClientCredential: a ClientCredential reads Secrets in its own namespace",
    );
    c.check(
        sa.is_none_or(|r| r.namespace.is_none()),
        "spec.serviceAccountRef.namespace",
        "only for a ClusterClientCredential: a ClientCredential uses a ServiceAccount in its own namespace",
    );
    c.check(
        target.namespaces.is_empty() && target.namespace_selector.is_none() && target.exclude_namespaces.is_empty(),
        "spec.target",
        "namespaces, namespaceSelector and excludeNamespaces are only for a ClusterClientCredential: a ClientCredential writes its target in its own namespace",
    );

    if c.0.is_empty() { Ok(()) } else { Err(ValidationErrors(c.0)) }
}

/// Checks a ClusterClientCredential's spec: the cluster rules, then every ClientCredential
/// rule on the spec as it reads from the credentials namespace ([`localized`]).
pub fn validate_cluster(spec: &ClientCredentialSpec, resource_name: &str) -> Result<(), ValidationErrors> {
    let mut c = Collector::default();
    if let Some(creds) = &spec.credentials_ref {
        match &creds.namespace {
            Some(ns) => c.check(
                is_dns_label(ns),
                "spec.credentialsRef.namespace",
                &format!("{ns:?} is not a valid namespace name"),
            ),
            None => c.fail(
                "spec.credentialsRef.namespace",
                "a ClusterClientCredential names the namespace of its credentials Secret",
            ),
        }
    }
    if let Some(sa) = &spec.service_account_ref {
        match &sa.namespace {
            Some(ns) => c.check(
                is_dns_label(ns),
                "spec.serviceAccountRef.namespace",
                &format!("{ns:?} is not a valid namespace name"),
            ),
            None => c.fail(
                "spec.serviceAccountRef.namespace",
                "a ClusterClientCredential names the namespace of its ServiceAccount",
            ),
        }
    }
    c.check(
        spec.target.certificate_secret_name_key.is_none(),
        "spec.target.certificateSecretNameKey",
        "spec.target.certificateSecretNameKey is only for a ClientCredential: the client certificate Secret of a ClusterClientCredential is in another namespace than its copies",
    );
    c.check(
        !spec.client_authentication.is_mutual_tls() || spec.credentials_ref.is_some(),
        "spec.credentialsRef",
        "a ClusterClientCredential reads its client certificate Secret from spec.credentialsRef.namespace: set spec.credentialsRef",
    );
    let target = &spec.target;
    c.check(
        !target.namespaces.is_empty() || target.namespace_selector.is_some(),
        "spec.target",
        "select the namespaces that receive the token: spec.target.namespaces and/or spec.target.namespaceSelector",
    );
    for (field, list) in
        [("spec.target.namespaces", &target.namespaces), ("spec.target.excludeNamespaces", &target.exclude_namespaces)]
    {
        for (i, ns) in list.iter().enumerate() {
            c.check(is_dns_label(ns), &format!("{field}[{i}]"), &format!("{ns:?} is not a valid namespace name"));
        }
    }
    if let Some(Err(e)) = target.namespace_selector.clone().map(kube::core::Selector::try_from) {
        c.fail("spec.target.namespaceSelector", e.to_string());
    }
    if let Err(ValidationErrors(errors)) = validate(&localized(spec), resource_name) {
        c.0.extend(errors);
    }
    if c.0.is_empty() { Ok(()) } else { Err(ValidationErrors(c.0)) }
}

/// A ClusterClientCredential's spec as the token engine sees it: the same request, made
/// from the credentials namespace, without the fields that reach into other namespaces.
pub fn localized(spec: &ClientCredentialSpec) -> ClientCredentialSpec {
    let mut spec = spec.clone();
    if let Some(creds) = spec.credentials_ref.as_mut() {
        creds.namespace = None;
    }
    if let Some(sa) = spec.service_account_ref.as_mut() {
        sa.namespace = None;
    }
    spec.target.namespaces.clear();
    spec.target.namespace_selector = None;
    spec.target.exclude_namespaces.clear();
    spec
}

/// An RFC 1123 label, as namespace names are.
fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// A URL tokensync may call: absolute http(s), with a host, no credentials in it and no
/// fragment (RFC 6749 3.2). Whether plain http is allowed is the operator's decision, made
/// where the request is sent.
pub fn check_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{value:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("{value:?} must be an https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not contain credentials; put them in the credentials Secret".into());
    }
    if url.fragment().is_some() {
        return Err(format!("{value:?} must not have a #fragment"));
    }
    Ok(url)
}

/// RFC 1123 DNS subdomain, as Kubernetes requires for Secret names.
fn is_dns_subdomain(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 253
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes Secret data key.
fn is_secret_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

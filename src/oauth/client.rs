//! The token engine: given a configuration, credentials and (optionally) the refresh token
//! tokensync holds, obtain one access token. Which request that takes depends on the grant:
//!
//! | grant | with a refresh token | without |
//! | --- | --- | --- |
//! | client_credentials | refresh at spec.refreshEndpoint if set, falling back to a new token when the refresh is refused | client_credentials request |
//! | refresh_token | refresh | error: no refresh token |
//! | authorization_code | refresh | exchange the one-time code |
//! | jwt-bearer | (ignored) | assertion grant (a signed assertion, or the federated token) |
//! | token-exchange | (ignored) | RFC 8693 exchange of the federated (subject) token |
//!
//! Then, when spec.verify is set, the new token is probed before it is handed back.

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::assertion::{self, Claims, SigningKey};
use super::certificate::{self, CertificateSummary};
use super::config::{Credentials, Endpoint, TokenRequestConfig};
use super::discovery::DiscoveryCache;
use super::error::{ErrorKind, Redactor, TokenError};
use super::request::{self, Auth, Params};
use super::response::{self, Token};
use super::transport::{EndpointPolicy, HttpRequest, Transport, TransportSettings};
use super::vocabulary::{ClientAuthentication, GrantType, RequestEncoding};

/// Which request produced a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    ClientCredentials,
    Refresh,
    /// A refresh was refused and a client_credentials request replaced it.
    RefreshFellBackToClientCredentials,
    AuthorizationCode,
    JwtBearer,
    TokenExchange,
}

/// A token and how it was obtained.
#[derive(Debug)]
pub struct Acquired {
    pub token: Token,
    pub flow: Flow,
    /// The client certificate presented on the connection (mutual TLS), if any.
    pub certificate: Option<CertificateSummary>,
}

impl Acquired {
    /// The refresh token to keep after this acquisition: the one the server returned, or
    /// (RFC 6749 6: a server may keep the old one valid) the one that was used.
    pub fn refresh_token_to_keep<'a>(&'a self, used: Option<&'a SecretString>) -> Option<&'a SecretString> {
        self.token.refresh_token.as_ref().or(match self.flow {
            Flow::Refresh => used,
            _ => None,
        })
    }

    /// True when the server handed out a refresh token different from `used`: the caller
    /// must persist it before publishing the access token.
    pub fn refresh_token_rotated(&self, used: Option<&SecretString>) -> bool {
        match (&self.token.refresh_token, used) {
            (Some(new), Some(old)) => new.expose_secret() != old.expose_secret(),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The client certificate the requests will present, checked now: parsed, its key matching,
/// valid at this moment. An authentication method that needs one fails here without it.
fn presented_certificate(config: &TokenRequestConfig) -> Result<Option<CertificateSummary>, TokenError> {
    match &config.tls.client_identity {
        Some(identity) => certificate::inspect(identity, Timestamp::now()).map(Some),
        None if config.client_authentication.is_mutual_tls() => Err(TokenError::config(format!(
            "clientAuthentication {} authenticates with a client certificate, but none is configured \
             (spec.tls.clientCertificateSecretRef)",
            config.client_authentication.as_str()
        ))),
        None => Ok(None),
    }
}

/// Says which certificate the server did not accept, when its refusal is about the client:
/// an `invalid_client` answer to a mutual TLS client.
fn certificate_refused(config: &TokenRequestConfig, cert: &CertificateSummary, mut e: TokenError) -> TokenError {
    if e.oauth_error.as_deref() == Some("invalid_client") && config.client_authentication.is_mutual_tls() {
        let hint = match config.client_authentication {
            ClientAuthentication::SelfSignedTlsClientAuth => {
                "it must be registered for this client_id by its thumbprint (a JWK with this x5t#S256 or x5c)"
            }
            _ => {
                "it must be issued by a CA the server trusts and its subject or SAN must match what is \
                 registered for this client_id"
            }
        };
        e.message = format!("{}; the server did not accept the client certificate ({cert}): {hint}", e.message);
    }
    e
}

/// A token and the request that produced it, before verification.
struct Obtained {
    token: Token,
    flow: Flow,
}

/// The engine. Clone is cheap: clones share connection pools and the discovery cache.
#[derive(Clone, Debug)]
pub struct TokenClient {
    transport: Transport,
    discovery: DiscoveryCache,
}

impl std::fmt::Debug for DiscoveryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiscoveryCache")
    }
}

impl TokenClient {
    pub fn new(policy: EndpointPolicy, settings: TransportSettings) -> Self {
        TokenClient { transport: Transport::new(policy, settings), discovery: DiscoveryCache::default() }
    }

    /// Obtains one access token. `refresh_token` is the refresh token tokensync holds for
    /// this credential (state), if any; the bootstrap one from the source Secret is in
    /// `credentials.refresh_token` and is used when `refresh_token` is None.
    pub async fn acquire(
        &self,
        config: &TokenRequestConfig,
        credentials: &Credentials,
        refresh_token: Option<&SecretString>,
    ) -> Result<Acquired, TokenError> {
        // The certificate is checked before any request, discovery included.
        let certificate = presented_certificate(config)?;
        let Obtained { token, flow } =
            self.obtain(config, credentials, refresh_token).await.map_err(|e| match &certificate {
                Some(cert) => certificate_refused(config, cert, e),
                None => e,
            })?;
        let acquired = Acquired { token, flow, certificate };
        if let Some(verify) = &config.verify_url {
            self.verify(config, verify, &acquired.token).await?;
        }
        Ok(acquired)
    }

    async fn obtain(
        &self,
        config: &TokenRequestConfig,
        credentials: &Credentials,
        refresh_token: Option<&SecretString>,
    ) -> Result<Obtained, TokenError> {
        let token_url = self.token_url(config).await?;
        let acquired = match config.grant {
            GrantType::ClientCredentials => match (refresh_token, &config.refresh_endpoint) {
                (Some(rt), Some(_)) => match self.refresh(config, &token_url, credentials, rt).await {
                    Ok(token) => Obtained { token, flow: Flow::Refresh },
                    Err(e) if e.permanent => Obtained {
                        token: self.client_credentials(config, &token_url, credentials).await?,
                        flow: Flow::RefreshFellBackToClientCredentials,
                    },
                    Err(e) => return Err(e),
                },
                _ => Obtained {
                    token: self.client_credentials(config, &token_url, credentials).await?,
                    flow: Flow::ClientCredentials,
                },
            },
            GrantType::RefreshToken => {
                let rt = refresh_token
                    .or(credentials.refresh_token.as_ref())
                    .ok_or_else(|| TokenError::credentials("grantType refresh_token but there is no refresh token"))?;
                Obtained { token: self.refresh(config, &token_url, credentials, rt).await?, flow: Flow::Refresh }
            }
            GrantType::AuthorizationCode => match refresh_token {
                Some(rt) => {
                    Obtained { token: self.refresh(config, &token_url, credentials, rt).await?, flow: Flow::Refresh }
                }
                None => Obtained {
                    token: self.exchange_code(config, &token_url, credentials).await?,
                    flow: Flow::AuthorizationCode,
                },
            },
            GrantType::JwtBearer => {
                Obtained { token: self.jwt_bearer(config, &token_url, credentials).await?, flow: Flow::JwtBearer }
            }
            GrantType::TokenExchange => Obtained {
                token: self.token_exchange(config, &token_url, credentials).await?,
                flow: Flow::TokenExchange,
            },
        };
        Ok(acquired)
    }

    async fn token_url(&self, config: &TokenRequestConfig) -> Result<Url, TokenError> {
        match &config.endpoint {
            Endpoint::Token(url) => Ok(url.clone()),
            Endpoint::Issuer(issuer) => self.discovery.token_endpoint(&self.transport, &config.tls, issuer).await,
        }
    }

    /// The parameters every grant shares: scope, audience, resource, extras.
    fn common_params(config: &TokenRequestConfig, params: &mut Params) {
        if !config.scopes.is_empty() {
            params.add("scope", config.scopes.join(" "));
        }
        if let Some(audience) = &config.audience {
            params.add("audience", audience.clone());
        }
        if let Some(resource) = &config.resource {
            params.add("resource", resource.clone());
        }
        for (k, v) in &config.extra_parameters {
            params.add(k, v.clone());
        }
    }

    async fn client_credentials(
        &self,
        config: &TokenRequestConfig,
        url: &Url,
        creds: &Credentials,
    ) -> Result<Token, TokenError> {
        let mut params = Params::default();
        if !config.omit_grant_type {
            params.add("grant_type", GrantType::ClientCredentials.as_str());
        }
        Self::common_params(config, &mut params);
        self.post(config, url, config.encoding, params, Auth::Configured(creds), None)
            .await
            .map_err(|e| e.context(format!("token request to {url}")))
    }

    async fn refresh(
        &self,
        config: &TokenRequestConfig,
        token_url: &Url,
        creds: &Credentials,
        rt: &SecretString,
    ) -> Result<Token, TokenError> {
        let mut redactor = Redactor::default();
        let mut params = Params::default();
        let separate = config.refresh_endpoint.as_ref();
        let url = separate.map_or(token_url, |r| &r.url);
        let encoding = separate.map_or(config.encoding, |r| r.encoding);
        let minimal = separate.is_some_and(|r| r.refresh_token_only);
        if !minimal {
            params.add("grant_type", GrantType::RefreshToken.as_str());
        }
        params.add_secret("refresh_token", rt, &mut redactor);
        let auth = if minimal {
            Auth::Nothing
        } else {
            Self::common_params(config, &mut params);
            Auth::Configured(creds)
        };
        self.post(config, url, encoding, params, auth, Some(redactor))
            .await
            .map_err(|e| e.context(format!("refresh request to {url}")))
    }

    async fn exchange_code(
        &self,
        config: &TokenRequestConfig,
        url: &Url,
        creds: &Credentials,
    ) -> Result<Token, TokenError> {
        let code = creds.authorization_code.as_ref().filter(|c| !c.expose_secret().is_empty()).ok_or_else(|| {
            TokenError::credentials("grantType authorization_code but the authorization code is missing")
        })?;
        let mut redactor = Redactor::default();
        let mut params = Params::default();
        params.add("grant_type", GrantType::AuthorizationCode.as_str());
        params.add_secret("code", code, &mut redactor);
        // redirect_uri travels in extraParameters, as the vendor registered it.
        for (k, v) in &config.extra_parameters {
            params.add(k, v.clone());
        }
        self.post(config, url, config.encoding, params, Auth::Configured(creds), Some(redactor))
            .await
            .map_err(|e| e.context(format!("authorization code exchange at {url}")))
    }

    async fn jwt_bearer(
        &self,
        config: &TokenRequestConfig,
        url: &Url,
        creds: &Credentials,
    ) -> Result<Token, TokenError> {
        // A federated token (a ServiceAccount token) is the assertion as it is; otherwise
        // tokensync signs one with the private key.
        let jwt = match &creds.federated_token {
            Some(token) => request::federated_token(creds).map(|_| token.clone())?,
            None => {
                let key =
                    creds.private_key.as_ref().ok_or_else(|| TokenError::credentials("the private key is missing"))?;
                let settings = &config.assertion;
                let audience = settings.audience.clone().unwrap_or_else(|| url.to_string());
                let claims = Claims {
                    issuer: settings.issuer.as_deref().unwrap_or(&creds.client_id),
                    subject: settings.subject.as_deref().unwrap_or(&creds.client_id),
                    audience: &audience,
                    extra: &settings.extra_claims,
                };
                assertion::sign(SigningKey::PrivateKey(key), claims, settings, Timestamp::now())?
            }
        };
        let mut redactor = Redactor::default();
        let mut params = Params::default();
        params.add("grant_type", GrantType::JwtBearer.as_str());
        params.add_secret("assertion", &jwt, &mut redactor);
        Self::common_params(config, &mut params);
        // RFC 7523 2.1: client authentication is optional with this grant; `none` sends
        // nothing but the assertion (Google-style service accounts).
        let auth = match config.client_authentication {
            ClientAuthentication::None => Auth::Nothing,
            _ => Auth::Configured(creds),
        };
        self.post(config, url, config.encoding, params, auth, Some(redactor))
            .await
            .map_err(|e| e.context(format!("jwt-bearer request to {url}")))
    }

    /// RFC 8693 2.1: the federated token is the subject token. audience, scope and resource
    /// are the common parameters. Client authentication is optional: with `none`, a
    /// client_id is sent when one is configured (Keycloak, Dex public clients), nothing
    /// otherwise (Google STS).
    async fn token_exchange(
        &self,
        config: &TokenRequestConfig,
        url: &Url,
        creds: &Credentials,
    ) -> Result<Token, TokenError> {
        let subject = request::federated_token(creds)?;
        let mut redactor = Redactor::default();
        let mut params = Params::default();
        params.add("grant_type", GrantType::TokenExchange.as_str());
        params.add_secret("subject_token", subject, &mut redactor);
        params.add("subject_token_type", config.token_exchange.subject_token_type.clone());
        if let Some(requested) = &config.token_exchange.requested_token_type {
            params.add("requested_token_type", requested.clone());
        }
        Self::common_params(config, &mut params);
        let auth = match config.client_authentication {
            ClientAuthentication::None if creds.client_id.is_empty() => Auth::Nothing,
            _ => Auth::Configured(creds),
        };
        self.post(config, url, config.encoding, params, auth, Some(redactor))
            .await
            .map_err(|e| e.context(format!("token exchange at {url}")))
    }

    async fn post(
        &self,
        config: &TokenRequestConfig,
        url: &Url,
        encoding: RequestEncoding,
        params: Params,
        auth: Auth<'_>,
        redactor: Option<Redactor>,
    ) -> Result<Token, TokenError> {
        let mut redactor = redactor.unwrap_or_default();
        let now = Timestamp::now();
        let request = request::build(config, url, encoding, params, auth, &mut redactor, now)?;
        let response = self.transport.send(&config.tls, request).await?;
        let token = response::parse(&response, &config.response, now, &redactor)?;
        Ok(token)
    }

    /// Calls spec.verify with the new token; any 2xx accepts it.
    async fn verify(&self, config: &TokenRequestConfig, url: &Url, token: &Token) -> Result<(), TokenError> {
        let mut redactor = Redactor::default();
        redactor.add(token.access_token.expose_secret());
        let request = HttpRequest {
            method: reqwest::Method::GET,
            url: url.clone(),
            headers: vec![(
                "Authorization".into(),
                format!("{} {}", token.token_type, token.access_token.expose_secret()),
            )],
            body: None,
        };
        let as_verification = |mut e: TokenError| {
            if e.kind != ErrorKind::InvalidConfiguration {
                e.kind = ErrorKind::VerificationFailed;
            }
            e.context(format!("verification at {url}"))
        };
        let response = self.transport.send(&config.tls, request).await.map_err(as_verification)?;
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        let mut e = response::classify_error(&response, Timestamp::now(), &redactor);
        e.message = format!("the new token was refused: {}", e.message);
        Err(as_verification(e))
    }
}

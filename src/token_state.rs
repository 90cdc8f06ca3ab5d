//! What tokensync remembers about a credential's token and its failed attempts, and the
//! steps of one renewal that do not depend on where that memory is kept: the controller
//! keeps it in a state Secret and the ClientCredential's status, `tokensync agent` in a
//! state file. Both run exactly these functions, so they prepare the same requests, decide
//! the same schedule ([`crate::schedule::decide`]), back off the same way and keep the same
//! refresh-token chain. No Kubernetes API here.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::ClientCredentialSpec;
use crate::api::engine::{self, SecretData, SourceError};
use crate::api::validate::validate;
use crate::oauth::certificate::{self, CertificateSummary};
use crate::oauth::config::TlsMaterial;
use crate::oauth::{Acquired, Credentials, TokenError, TokenRequestConfig};
use crate::render::{RenderError, TokenView};
use crate::schedule::{BackoffPolicy, Decision, Published, RenewalPolicy, RequestReason, ScheduleState};

/// The published token and what it was made from.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub refresh_token: Option<SecretString>,
    /// Fingerprint of the spec and source material ([`inputs_fingerprint`]).
    pub inputs: String,
    /// Fingerprint of the bootstrap refresh token or authorization code that started the
    /// current refresh chain; a new value in the source Secret starts a new chain.
    pub bootstrap: Option<String>,
    /// The renew-requested-at value this token answered, if it was a manual renewal.
    pub renewal_request: Option<String>,
    /// The x5t#S256 thumbprint of the client certificate the token is bound to (RFC 8705
    /// 3), when the server said so.
    pub bound_certificate: Option<String>,
}

impl StoredToken {
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }

    /// What a failed attempt with this token's inputs would have been recorded against
    /// ([`Prepared::attempt_inputs`]).
    pub fn attempt_inputs(&self) -> String {
        attempt_inputs(&self.inputs, self.bootstrap.as_deref())
    }
}

/// The inputs plus the bootstrap fingerprint: what failed attempts are recorded against.
fn attempt_inputs(inputs: &str, bootstrap: Option<&str>) -> String {
    match bootstrap {
        Some(b) => format!("{inputs}+{b}"),
        None => inputs.to_owned(),
    }
}

/// The target data (Secret keys or files) for `stored`: the default keys, or the
/// templates rendered ([`crate::render::render`]).
pub fn render_target(
    templates: Option<&BTreeMap<String, String>>,
    stored: &StoredToken,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let view = TokenView {
        access_token: stored.access_token.expose_secret(),
        token_type: &stored.token_type,
        expires_at: stored.expires_at,
        issued_at: stored.issued_at,
        scope: stored.scope.as_deref(),
    };
    crate::render::render(templates, &view)
}

/// RFC 3339 with whole seconds, as Kubernetes stores times.
pub fn seconds(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// Everything the token request needs, once the spec and the source material are valid.
pub struct Prepared {
    pub config: TokenRequestConfig,
    pub credentials: Credentials,
    /// [`inputs_fingerprint`] of the spec and the material.
    pub inputs: String,
    /// [`bootstrap_fingerprint`] of the material.
    pub bootstrap: Option<String>,
    /// What failed attempts are recorded against (failedInputs): the inputs and the
    /// bootstrap refresh token or code. A new bootstrap value (the fix for a refused refresh
    /// token) is a change like a rotated client secret: it is tried at once, not after the
    /// backoff earned by the old one.
    pub attempt_inputs: String,
    /// The ServiceAccount whose token must be obtained right before each request
    /// (spec.serviceAccountRef); the controller mints it, the agent reads a projected file.
    pub service_account: Option<ServiceAccountSource>,
    /// The client certificate (mutual TLS), checked: key matches, valid now.
    pub certificate: Option<CertificateSummary>,
}

/// Which ServiceAccount token a request needs. Only names: the token itself is obtained
/// for each request and is part of nothing persisted or fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountSource {
    /// None: the credential's own namespace ([`Prepared::in_namespace`]).
    pub namespace: Option<String>,
    pub name: String,
    pub audience: String,
    pub expiration_seconds: i64,
}

/// The shortest ServiceAccount token lifetime the Kubernetes API server accepts.
pub const MIN_SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;

impl Prepared {
    /// Resolves a ServiceAccount reference without a namespace to `namespace` (a
    /// ClientCredential's own).
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        if let Some(sa) = self.service_account.as_mut() {
            sa.namespace.get_or_insert_with(|| namespace.to_owned());
        }
        self
    }
}

/// Why a credential cannot be prepared: a condition reason (`InvalidSpec`,
/// `SourceSecretNotFound`, `SourceSecretInvalid`) and a message without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// Validates a spec and its templates and builds the request from the source Secrets'
/// data (`secrets`: the referenced Secrets that exist, by name).
pub fn prepare(
    spec: &ClientCredentialSpec,
    name: &str,
    secrets: &BTreeMap<String, SecretData>,
) -> Result<Prepared, Problem> {
    let invalid = |message: String| Problem { reason: "InvalidSpec", message };
    validate(spec, name).map_err(|e| invalid(e.to_string()))?;
    if let Some(templates) = &spec.target.template {
        crate::render::validate_templates(templates).map_err(|e| invalid(format!("spec.target.template: {e}")))?;
    }
    let mut config = engine::token_request_config(spec).map_err(invalid)?;
    let source = |e: SourceError| Problem { reason: e.reason(), message: e.to_string() };
    if let Some(missing) = engine::referenced_secrets(spec).into_iter().find(|n| !secrets.contains_key(n)) {
        return Err(source(SourceError::NotFound(missing)));
    }
    let source_data = spec.credentials_ref.as_ref().and_then(|r| secrets.get(&r.name));
    let credentials = engine::credentials(spec, source_data).map_err(source)?;
    config.tls = engine::tls_material(spec, |n| secrets.get(n)).map_err(source)?;
    // Before any request: a certificate that cannot work is the Secret's problem.
    let certificate = match &config.tls.client_identity {
        Some(identity) => Some(certificate::inspect(identity, Timestamp::now()).map_err(|e| Problem {
            reason: "SourceSecretInvalid",
            message: format!("{}: {}", certificate_origin(spec), e.message),
        })?),
        None => None,
    };
    let inputs = inputs_fingerprint(spec, &credentials, &config.tls);
    let bootstrap = bootstrap_fingerprint(&credentials);
    let attempt_inputs = attempt_inputs(&inputs, bootstrap.as_deref());
    let service_account = spec.service_account_ref.as_ref().map(|r| ServiceAccountSource {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        audience: r.audience.clone(),
        expiration_seconds: r.expiration_seconds.unwrap_or(MIN_SERVICE_ACCOUNT_TOKEN_SECONDS),
    });
    Ok(Prepared { config, credentials, inputs, bootstrap, attempt_inputs, service_account, certificate })
}

/// Where the client certificate comes from, for messages: the Secret and its keys.
fn certificate_origin(spec: &ClientCredentialSpec) -> String {
    match spec.tls.as_ref().and_then(|t| t.client_certificate_secret_ref.as_ref()) {
        Some(r) => format!(
            "spec.tls.clientCertificateSecretRef (Secret {}, keys {} and {})",
            r.name, r.certificate_key, r.private_key_key
        ),
        None => "the client certificate".to_owned(),
    }
}

/// Consecutive failed token requests since the last success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureRecord {
    pub attempts: u32,
    pub last_failure: Option<Timestamp>,
    pub retry_after: Option<Duration>,
    /// The inputs fingerprint the failures were made with.
    pub inputs: Option<String>,
}

impl FailureRecord {
    /// The record after one more failure. Failures made with other inputs start over.
    pub fn failed(self, now: Timestamp, e: &TokenError, inputs: &str, max_backoff: Duration) -> Self {
        let same_inputs = self.inputs.as_deref() == Some(inputs);
        let attempts = if same_inputs { self.attempts.saturating_add(1) } else { 1 };
        // A permanent error (wrong credentials, rejected request) will not succeed sooner
        // by asking more often: wait the maximum backoff at once.
        let floor = if e.permanent { Some(max_backoff) } else { None };
        let retry_after = match (e.retry_after, floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        FailureRecord { attempts, last_failure: Some(now), retry_after, inputs: Some(inputs.to_owned()) }
    }

    /// The failures that still stand, given the stored token and the inputs in use now
    /// (`current`: [`Prepared::attempt_inputs`], None when the credential cannot be prepared).
    /// The one rule the controller, the cluster controller and the agent all apply; a
    /// failure is over when
    /// - **a later success settled it**: a token issued with the inputs that failed, in a
    ///   later second than the last failure. A success normally resets the record itself;
    ///   this covers a success whose record was not written (a crash between storing the
    ///   token and recording the outcome, or a record write lost to a stale read). Times are
    ///   compared in whole seconds because that is how Kubernetes stores them; within one
    ///   second the order is unknown, and the failure stands: a renewal that fails right
    ///   after a token was issued (a manual renewal) is real, while a retry never comes
    ///   sooner than the next whole second after a failure (backoff is counted from it).
    /// - **it belongs to inputs no longer in use**, and the stored token was issued from
    ///   exactly the inputs in use now: a source Secret changed to a wrong client secret and
    ///   then put back, a spec edit reverted. Nothing is failing: the published token is what
    ///   the current inputs produce, so no request is needed to prove them (and none is made).
    ///   Failures made with the current inputs, or while the token stems from other inputs,
    ///   still stand.
    pub fn still_pending(self, stored: Option<&StoredToken>, current: Option<&str>) -> Self {
        let Some(stored) = stored.filter(|_| self.attempts > 0) else { return self };
        let failed_with = self.inputs.as_deref();
        let token_from = stored.attempt_inputs();
        let settled = failed_with == Some(token_from.as_str())
            && self.last_failure.is_none_or(|f| stored.issued_at.as_second() > f.as_second());
        let superseded = current.is_some_and(|now| failed_with != Some(now) && token_from == now);
        if settled || superseded { FailureRecord::default() } else { self }
    }
}

/// The input of [`crate::schedule::decide`] for a credential: what is published, whether it
/// still reflects the inputs, and the failures pending.
pub fn schedule_state(
    now: Timestamp,
    stored: Option<&StoredToken>,
    prep: &Prepared,
    record: &FailureRecord,
    suspended: bool,
    renewal_requested: bool,
) -> ScheduleState {
    let bootstrap_changed = prep.bootstrap.is_some() && stored.is_some_and(|s| s.bootstrap != prep.bootstrap);
    ScheduleState {
        now,
        published: stored.map(|s| Published { issued_at: s.issued_at, expires_at: s.expires_at }),
        inputs_changed: stored.is_some_and(|s| s.inputs != prep.inputs) || bootstrap_changed,
        renewal_requested,
        suspended,
        failed_attempts: record.attempts,
        last_failure: record.last_failure,
        retry_after: record.retry_after,
        inputs_changed_since_failure: record.attempts > 0
            && record.inputs.as_deref() != Some(prep.attempt_inputs.as_str()),
    }
}

/// One credential's renewal rules: the operator's (or agent's) policies with the spec's own
/// renewBefore, renewBeforePercentage and suspend. The controller's pipeline and the agent's
/// worker both decide through it, so that a rule is written once for both.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub renewal: RenewalPolicy,
    pub backoff: BackoffPolicy,
    /// Spreads renewals of many credentials ([`crate::schedule::renewal_time`]).
    pub jitter_key: String,
    pub suspended: bool,
}

impl Schedule {
    pub fn new(
        spec: &ClientCredentialSpec,
        renewal: &RenewalPolicy,
        backoff: &BackoffPolicy,
        jitter_key: String,
    ) -> Self {
        Schedule {
            renewal: RenewalPolicy {
                renew_before: spec.renew_before.as_ref().and_then(|d| d.parse().ok()),
                renew_before_percentage: spec.renew_before_percentage.and_then(|p| u8::try_from(p).ok()),
                ..renewal.clone()
            },
            backoff: backoff.clone(),
            jitter_key,
            suspended: spec.suspend,
        }
    }

    /// Whether to request a token now ([`crate::schedule::decide`]) for what is stored, the
    /// failures pending, and whether a renewal request awaits an answer.
    pub fn decide(
        &self,
        now: Timestamp,
        stored: Option<&StoredToken>,
        prep: &Prepared,
        record: &FailureRecord,
        renewal_requested: bool,
    ) -> Decision {
        let state = schedule_state(now, stored, prep, record, self.suspended, renewal_requested);
        crate::schedule::decide(&state, &self.renewal, &self.backoff, &self.jitter_key)
    }

    /// When the token will be requested next if nothing changes (status.renewAt); None while
    /// suspended.
    pub fn renew_at(&self, next: Option<&Decision>) -> Option<Timestamp> {
        next.and_then(Decision::requeue_at).filter(|_| !self.suspended)
    }
}

/// Why a token was requested, in words for logs and Events.
pub fn describe(reason: RequestReason) -> &'static str {
    match reason {
        RequestReason::NoToken => "first token",
        RequestReason::InputsChanged => "the spec or the source material changed",
        RequestReason::ManualRenewal => "renewal requested with the tokensync.io/renew-requested-at annotation",
        RequestReason::RenewalDue => "scheduled renewal",
        RequestReason::Expired => "the published token had expired",
        RequestReason::Retry => "retry after a failure",
    }
}

/// Whether the renew-requested-at value `annotation` asks for a renewal: it is set, and it is
/// neither the request last acted upon (`handled`) nor the one the stored token answered.
pub fn renewal_requested(annotation: Option<&str>, handled: Option<&str>, stored: Option<&StoredToken>) -> bool {
    annotation
        .is_some_and(|value| Some(value) != handled && Some(value) != stored.and_then(|s| s.renewal_request.as_deref()))
}

/// The renew-requested-at value status records as handled: `handled`, or the current
/// `annotation` when the stored token answered it. The reconcile that requested that token
/// may not have recorded it: its state write failed (the API server was down) and a later
/// reconcile wrote the token it kept in memory.
pub fn handled_request(
    annotation: Option<&str>,
    handled: Option<&str>,
    stored: Option<&StoredToken>,
) -> Option<String> {
    let answered = stored.and_then(|s| s.renewal_request.as_deref());
    match annotation {
        Some(value) if Some(value) == answered => Some(value.to_owned()),
        _ => handled.map(str::to_owned),
    }
}

/// One token request with the refresh token held in `stored` (if any), timed and counted
/// in `metrics`. `federated_token`: the ServiceAccount token obtained for this one request
/// ([`Prepared::service_account`]); it is used and dropped, never stored. Returns the state
/// to persist, whether a bootstrap refresh token was exchanged for a rotated one
/// ([`issued`]), and the flow the engine took.
pub async fn request(
    engine: &crate::oauth::TokenClient,
    metrics: &crate::metrics::Metrics,
    prep: &Prepared,
    stored: Option<&StoredToken>,
    renewal_request: Option<String>,
    federated_token: Option<SecretString>,
) -> Result<(StoredToken, bool, crate::oauth::Flow), TokenError> {
    let held = held_refresh_token(stored, prep);
    let started = std::time::Instant::now();
    let with_token;
    let credentials = match federated_token {
        Some(token) => {
            with_token = Credentials { federated_token: Some(token), ..prep.credentials.clone() };
            &with_token
        }
        None => &prep.credentials,
    };
    let result = engine.acquire(&prep.config, credentials, held).await;
    metrics.observe_token_request(&result, started.elapsed());
    let acquired = result.map_err(|e| match &prep.service_account {
        Some(sa) => service_account_hint(e, sa),
        None => e,
    })?;
    let flow = acquired.flow;
    let (stored, rotated) = issued(acquired, held, prep, renewal_request);
    Ok((stored, rotated, flow))
}

/// A refusal of a credential that proves itself with a ServiceAccount token (client
/// assertion, jwt-bearer, token exchange) names what to check there: there is no client
/// secret, and the usual hint would send the user looking for one (issue 20).
fn service_account_hint(mut e: TokenError, sa: &ServiceAccountSource) -> TokenError {
    use crate::oauth::response::{INVALID_CLIENT_HINT, INVALID_GRANT_HINT};
    let generic = match e.oauth_error.as_deref() {
        Some("invalid_client") => INVALID_CLIENT_HINT,
        Some("invalid_grant") => INVALID_GRANT_HINT,
        _ => return e,
    };
    let Some(message) = e.message.strip_suffix(generic) else { return e };
    let namespace = sa.namespace.as_deref().unwrap_or("<namespace>");
    e.message = format!(
        "{message} (the identity provider refused the ServiceAccount token: check that it trusts this cluster's \
         ServiceAccount issuer, that it accepts the subject system:serviceaccount:{namespace}:{name}, and the \
         audience {audience})",
        name = sa.name,
        audience = sa.audience,
    );
    e
}

/// The refresh token tokensync holds for the next request, unless the bootstrap value in
/// the source material changed (a user starting a new chain) or there is none yet.
pub fn held_refresh_token<'a>(stored: Option<&'a StoredToken>, prep: &Prepared) -> Option<&'a SecretString> {
    stored.filter(|s| s.bootstrap == prep.bootstrap).and_then(|s| s.refresh_token.as_ref())
}

/// The state to persist after a successful acquisition made with `held` (from
/// [`held_refresh_token`]), and whether a bootstrap refresh token from the source material
/// was consumed and replaced by a rotated one.
pub fn issued(
    acquired: Acquired,
    held: Option<&SecretString>,
    prep: &Prepared,
    renewal_request: Option<String>,
) -> (StoredToken, bool) {
    let used = held.or(prep.credentials.refresh_token.as_ref());
    let rotated_bootstrap =
        held.is_none() && prep.credentials.refresh_token.is_some() && acquired.refresh_token_rotated(used);
    let refresh_token = acquired.refresh_token_to_keep(used).cloned();
    let token = acquired.token;
    let stored = StoredToken {
        access_token: token.access_token,
        token_type: token.token_type,
        scope: token.scope,
        issued_at: token.issued_at,
        expires_at: token.expires_at,
        refresh_token,
        inputs: prep.inputs.clone(),
        bootstrap: prep.bootstrap.clone(),
        renewal_request,
        bound_certificate: token.bound_certificate,
    };
    (stored, rotated_bootstrap)
}

/// A fingerprint of everything that determines which token the server issues: the spec
/// minus the fields that only affect where and when it is published, plus the credential
/// material and TLS material actually used. A change to any of them means the published
/// token no longer reflects the configuration, so a new one is requested.
pub fn inputs_fingerprint(spec: &ClientCredentialSpec, credentials: &Credentials, tls: &TlsMaterial) -> String {
    let mut relevant = serde_json::to_value(spec).unwrap_or_default();
    if let Some(map) = relevant.as_object_mut() {
        for field in ["target", "renewBefore", "renewBeforePercentage", "suspend"] {
            map.remove(field);
        }
    }
    let secret = |s: &Option<SecretString>| s.as_ref().map(|v| v.expose_secret().to_owned());
    let mut material = json!({
        "spec": relevant,
        "client_id": credentials.client_id,
        "client_secret": secret(&credentials.client_secret),
        "private_key": secret(&credentials.private_key),
        "ca": tls.ca_bundle_pem.as_ref().map(hex::encode),
        "client_cert": tls.client_identity.as_ref().map(|i| (hex::encode(&i.certificate_pem), i.private_key_pem.expose_secret().to_owned())),
    });
    // Only a subject token from the source Secret is set here: a ServiceAccount token is
    // obtained per request, after this fingerprint, and is not part of it (the spec's
    // serviceAccountRef name and audience are). Added only when present, so that the
    // fingerprints of existing credentials stay what they were (no request on upgrade).
    if let Some(subject) = secret(&credentials.federated_token) {
        material["subject_token"] = subject.into();
    }
    fingerprint(material.to_string().as_bytes())
}

/// A fingerprint of the bootstrap material (refresh token or authorization code) in the
/// source Secret. Kept apart from the inputs: using a bootstrap value once must not make
/// every later refresh look like a configuration change.
pub fn bootstrap_fingerprint(credentials: &Credentials) -> Option<String> {
    let value = credentials.refresh_token.as_ref().or(credentials.authorization_code.as_ref())?;
    Some(fingerprint(value.expose_secret().as_bytes()))
}

/// A salted, truncated SHA-256: enough to detect change, useless to recover a secret from
/// (the inputs hold high-entropy secrets, and the salt defeats precomputed tables).
fn fingerprint(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"tokensync-inputs-v1\0");
    h.update(bytes);
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::ErrorKind;

    fn spec() -> ClientCredentialSpec {
        serde_json::from_value(
            json!({"tokenEndpoint": "https://auth.example/token", "credentialsRef": {"name": "demo-client"}}),
        )
        .unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        pairs.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn fingerprint_ignores_publishing_fields_but_not_credentials() {
        let creds =
            Credentials { client_id: "c".into(), client_secret: Some("s".to_owned().into()), ..Default::default() };
        let tls = TlsMaterial::default();
        let mut spec = spec();
        let base = inputs_fingerprint(&spec, &creds, &tls);
        spec.target.name = Some("other".into());
        spec.suspend = true;
        assert_eq!(inputs_fingerprint(&spec, &creds, &tls), base);
        spec.scopes = vec!["write".into()];
        assert_ne!(inputs_fingerprint(&spec, &creds, &tls), base);
        let rotated = Credentials { client_secret: Some("s2".to_owned().into()), ..creds.clone() };
        assert_ne!(inputs_fingerprint(&self::spec(), &rotated, &tls), base);
        assert!(!base.contains('s') || base.len() == 32);
    }

    #[test]
    fn prepare_reports_missing_secrets_and_keys_by_reason() {
        let none = BTreeMap::new();
        assert_eq!(prepare(&spec(), "demo", &none).err().unwrap().reason, "SourceSecretNotFound");
        let partial = BTreeMap::from([("demo-client".to_owned(), data(&[("client_id", "c")]))]);
        let problem = prepare(&spec(), "demo", &partial).err().unwrap();
        assert_eq!(problem.reason, "SourceSecretInvalid");
        assert!(problem.message.contains("client_secret"), "{}", problem.message);
        let full = BTreeMap::from([("demo-client".to_owned(), data(&[("client_id", "c"), ("client_secret", "s")]))]);
        let prep = prepare(&spec(), "demo", &full).unwrap();
        assert_eq!(prep.inputs.len(), 32);
    }

    #[test]
    fn permanent_failures_wait_the_maximum_backoff_and_other_inputs_start_over() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let max = Duration::from_secs(300);
        let transient = TokenError::unavailable("down");
        let record = FailureRecord::default().failed(now, &transient, "a", max);
        assert_eq!((record.attempts, record.retry_after), (1, None));
        let record = record.failed(now, &transient, "a", max);
        assert_eq!(record.attempts, 2);
        let rejected = TokenError::new(ErrorKind::Rejected, true, "no");
        let record = record.failed(now, &rejected, "b", max);
        assert_eq!((record.attempts, record.retry_after), (1, Some(max)));
    }
    #[test]
    fn a_token_issued_with_the_failed_inputs_after_the_last_failure_settles_the_record() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let transient = TokenError::unavailable("down");
        let record = FailureRecord::default().failed(at(10), &transient, "in", Duration::from_secs(300));
        let token = |issued: i64, inputs: &str| StoredToken {
            bound_certificate: None,
            access_token: "t".to_owned().into(),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: at(issued),
            expires_at: at(issued + 3600),
            refresh_token: None,
            inputs: inputs.into(),
            bootstrap: None,
            renewal_request: None,
        };
        // Issued after the failure with the same inputs: a success whose record was lost.
        assert_eq!(record.clone().still_pending(Some(&token(12, "in")), Some("in")).attempts, 0);
        // Issued before the failure (a renewal that then failed), or with other inputs (a
        // spec change that failed): still failing.
        assert_eq!(record.clone().still_pending(Some(&token(5, "in")), Some("in")).attempts, 1);
        // Issued in the same second as the failure: the order is unknown, the failure stands
        // (a manual renewal failing right after the token was issued).
        assert_eq!(record.clone().still_pending(Some(&token(10, "in")), Some("in")).attempts, 1);
        assert_eq!(record.clone().still_pending(Some(&token(12, "old")), Some("in")).attempts, 1);
        assert_eq!(record.clone().still_pending(None, Some("in")).attempts, 1);
        assert_eq!(record.clone().still_pending(Some(&token(12, "old")), None).attempts, 1, "cannot prepare");
        // Attempts recorded against a bootstrap value compare with the chain it started.
        let chained = FailureRecord { inputs: Some("in+boot".into()), ..record };
        let with_boot = StoredToken { bootstrap: Some("boot".into()), ..token(12, "in") };
        assert_eq!(chained.still_pending(Some(&with_boot), Some("in+boot")).attempts, 0);
    }

    #[test]
    fn a_failure_of_inputs_no_longer_in_use_is_over_when_the_token_stems_from_the_current_ones() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let rejected = TokenError::new(ErrorKind::Rejected, true, "invalid_client");
        // The token came from inputs "good"; a wrong secret ("bad") was rejected afterwards.
        let record = FailureRecord::default().failed(at(100), &rejected, "bad", Duration::from_secs(300));
        let token = StoredToken {
            bound_certificate: None,
            access_token: "t".to_owned().into(),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: at(0),
            expires_at: at(3600),
            refresh_token: None,
            inputs: "good".into(),
            bootstrap: None,
            renewal_request: None,
        };
        // The good secret is back: nothing is failing.
        assert_eq!(record.clone().still_pending(Some(&token), Some("good")), FailureRecord::default());
        // Still the bad secret, or a third value the token does not stem from: it stands.
        assert_eq!(record.clone().still_pending(Some(&token), Some("bad")).attempts, 1);
        assert_eq!(record.clone().still_pending(Some(&token), Some("other")).attempts, 1);
        // A new bootstrap value is part of the inputs: a token from the old chain does not
        // show the new one works.
        let chained = StoredToken { bootstrap: Some("b1".into()), ..token };
        assert_eq!(record.still_pending(Some(&chained), Some("good+b2")).attempts, 1);
    }
}

//! Conditions and status, as pure functions of what the reconcile found and did.
//!
//! Two conditions:
//! - `Ready`: the target Secret holds a token that has not expired. Reasons: TokenIssued,
//!   Suspended (True while the token lasts), and when False: the failure that prevents a
//!   token (see [`Reason`]), or Expired.
//! - `Degraded`: the last attempt to renew (or to read what renewal needs) failed, while
//!   Ready may still be True thanks to a token that is still valid. Reason Healthy when not.
//!
//! lastTransitionTime changes only when a condition's status flips (Kubernetes API
//! conventions), and [`needs_patch`] skips status writes that would change nothing but
//! timestamps.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::ClientCredentialStatus;

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";

/// The fixed set of condition reasons. Documented in the README with what to do about each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    TokenIssued,
    Suspended,
    Expired,
    Healthy,
    InvalidSpec,
    SourceSecretNotFound,
    SourceSecretInvalid,
    TokenRequestRejected,
    TokenEndpointUnavailable,
    InvalidTokenResponse,
    TokenVerificationFailed,
    TargetSecretConflict,
    /// ClusterClientCredential only: some selected namespaces did not receive the token.
    TargetNamespacesFailed,
    /// spec.serviceAccountRef names a ServiceAccount that does not exist.
    ServiceAccountNotFound,
    /// The ServiceAccount's tokensync.io/allowed-audiences annotation does not list the audience.
    ServiceAccountNotOptedIn,
    /// The audience is one the cluster's own API server accepts.
    ForbiddenAudience,
    /// The TokenRequest API refused or failed (RBAC, API errors).
    ServiceAccountTokenFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenIssued => "TokenIssued",
            Reason::Suspended => "Suspended",
            Reason::Expired => "Expired",
            Reason::Healthy => "Healthy",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SourceSecretNotFound => "SourceSecretNotFound",
            Reason::SourceSecretInvalid => "SourceSecretInvalid",
            Reason::TokenRequestRejected => "TokenRequestRejected",
            Reason::TokenEndpointUnavailable => "TokenEndpointUnavailable",
            Reason::InvalidTokenResponse => "InvalidTokenResponse",
            Reason::TokenVerificationFailed => "TokenVerificationFailed",
            Reason::TargetSecretConflict => "TargetSecretConflict",
            Reason::TargetNamespacesFailed => "TargetNamespacesFailed",
            Reason::ServiceAccountNotFound => "ServiceAccountNotFound",
            Reason::ServiceAccountNotOptedIn => "ServiceAccountNotOptedIn",
            Reason::ForbiddenAudience => "ForbiddenAudience",
            Reason::ServiceAccountTokenFailed => "ServiceAccountTokenFailed",
        }
    }

    /// The reason for a token engine error kind.
    pub fn from_reason_str(s: &str) -> Reason {
        match s {
            "InvalidSpec" => Reason::InvalidSpec,
            "SourceSecretNotFound" => Reason::SourceSecretNotFound,
            "SourceSecretInvalid" => Reason::SourceSecretInvalid,
            "TokenRequestRejected" => Reason::TokenRequestRejected,
            "InvalidTokenResponse" => Reason::InvalidTokenResponse,
            "TokenVerificationFailed" => Reason::TokenVerificationFailed,
            "TargetSecretConflict" => Reason::TargetSecretConflict,
            "TargetNamespacesFailed" => Reason::TargetNamespacesFailed,
            "ServiceAccountNotFound" => Reason::ServiceAccountNotFound,
            "ServiceAccountNotOptedIn" => Reason::ServiceAccountNotOptedIn,
            "ForbiddenAudience" => Reason::ForbiddenAudience,
            "ServiceAccountTokenFailed" => Reason::ServiceAccountTokenFailed,
            _ => Reason::TokenEndpointUnavailable,
        }
    }
}

/// A failure to report: its reason and a message without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

/// The failure a status records as Degraded=True: failed attempts still waiting out their
/// backoff keep it until a request succeeds.
pub fn recorded_failure(status: &ClientCredentialStatus) -> Option<Failure> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .map(|c| Failure { reason: Reason::from_reason_str(&c.reason), message: c.message.clone() })
}

/// What the reconcile established, for the status.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub now: Timestamp,
    pub generation: Option<i64>,
    pub suspended: bool,
    /// The published token's type, scope, issue and expiry, if one is published.
    pub token: Option<TokenFacts>,
    /// What failed in this reconcile, if anything.
    pub failure: Option<Failure>,
    /// When tokensync will next request a token.
    pub renew_at: Option<Timestamp>,
    pub failed_attempts: u32,
    pub last_failure: Option<Timestamp>,
    pub retry_after_seconds: Option<i64>,
    pub failed_inputs: Option<String>,
    pub handled_renewal_request: Option<String>,
    pub target_secret_name: String,
    /// The ServiceAccount and audience of the credential's ServiceAccount tokens.
    pub service_account: Option<crate::api::ServiceAccountStatus>,
    /// The client certificate presented for mutual TLS.
    pub client_certificate: Option<crate::api::v1alpha1::ClientCertificateStatus>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenFacts {
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// x5t#S256 of the certificate the token is bound to.
    pub bound_certificate: Option<String>,
}

/// The status the facts call for, carrying over lastTransitionTime where nothing flipped.
pub fn next(current: Option<&ClientCredentialStatus>, facts: &Facts) -> ClientCredentialStatus {
    let valid = facts.token.as_ref().is_some_and(|t| t.expires_at > facts.now);
    let conflict = facts.failure.as_ref().is_some_and(|f| f.reason == Reason::TargetSecretConflict);
    let (ready, ready_reason, ready_message) = if conflict {
        let f = facts.failure.as_ref().unwrap();
        (false, f.reason, f.message.clone())
    } else if valid {
        let t = facts.token.as_ref().unwrap();
        let reason = if facts.suspended { Reason::Suspended } else { Reason::TokenIssued };
        let verb = if facts.suspended { "renewal is suspended; the published token" } else { "the published token" };
        let bound = match &t.bound_certificate {
            Some(x5t) => format!("; it is bound to the client certificate with x5t#S256 {x5t}"),
            None => String::new(),
        };
        (true, reason, format!("{verb} expires at {}{bound}", crate::controller::state::seconds(t.expires_at)))
    } else if let Some(f) = &facts.failure {
        (false, f.reason, f.message.clone())
    } else if facts.suspended {
        (false, Reason::Suspended, "renewal is suspended and no valid token is published".to_owned())
    } else if let Some(t) = &facts.token {
        (
            false,
            Reason::Expired,
            format!("the published token expired at {}", crate::controller::state::seconds(t.expires_at)),
        )
    } else {
        (false, Reason::Expired, "no token has been published yet".to_owned())
    };
    let (degraded, degraded_reason, degraded_message) = match &facts.failure {
        Some(f) => (true, f.reason, f.message.clone()),
        None => (false, Reason::Healthy, "the last renewal succeeded".to_owned()),
    };
    let previous = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = vec![
        condition(previous, READY, ready, ready_reason, ready_message, facts),
        condition(previous, DEGRADED, degraded, degraded_reason, degraded_message, facts),
    ];
    let time = |t: Timestamp| Time(Timestamp::from_second(t.as_second()).unwrap_or(t));
    ClientCredentialStatus {
        conditions,
        observed_generation: facts.generation,
        token_type: facts.token.as_ref().map(|t| t.token_type.clone()),
        scope: facts.token.as_ref().and_then(|t| t.scope.clone()),
        expires_at: facts.token.as_ref().map(|t| time(t.expires_at)),
        renew_at: facts.renew_at.map(time),
        last_refresh_time: facts.token.as_ref().map(|t| time(t.issued_at)),
        failed_attempts: (facts.failed_attempts > 0).then_some(facts.failed_attempts.min(i32::MAX as u32) as i32),
        last_failure_time: facts.last_failure.map(time),
        retry_after_seconds: facts.retry_after_seconds,
        failed_inputs: facts.failed_inputs.clone(),
        handled_renewal_request: facts.handled_renewal_request.clone(),
        target_secret_name: Some(facts.target_secret_name.clone()),
        service_account: facts.service_account.clone(),
        client_certificate: facts.client_certificate.clone(),
        bound_certificate_thumbprint: facts.token.as_ref().and_then(|t| t.bound_certificate.clone()),
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    value: bool,
    reason: Reason,
    message: String,
    facts: &Facts,
) -> Condition {
    let status = if value { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::from_second(facts.now.as_second()).unwrap_or(facts.now)));
    // Condition messages are bounded (the API allows 32 KiB); ours are one line.
    let message: String = message.chars().take(1024).collect();
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.as_str().to_owned(),
        message,
        observed_generation: facts.generation,
        last_transition_time,
    }
}

/// Whether writing `next` would change anything but timestamps that only move because time
/// passes. renewAt, expiresAt and the like do change meaningfully with a renewal, so they
/// count; the comparison ignores only lastTransitionTime (carried over by [`next`] anyway).
pub fn needs_patch(current: Option<&ClientCredentialStatus>, next: &ClientCredentialStatus) -> bool {
    let Some(current) = current else { return true };
    comparable(current) != comparable(next)
}

/// The status of the client certificate a prepared credential presents.
pub fn client_certificate(
    spec: &crate::api::ClientCredentialSpec,
    prep: Option<&crate::token_state::Prepared>,
) -> Option<crate::api::v1alpha1::ClientCertificateStatus> {
    let secret = spec.tls.as_ref()?.client_certificate_secret_ref.as_ref()?;
    let summary = prep?.certificate.as_ref()?;
    Some(crate::api::v1alpha1::ClientCertificateStatus {
        secret_name: secret.name.clone(),
        subject: summary.subject.clone(),
        not_after: crate::controller::state::seconds(summary.not_after),
        x5t_s256: summary.thumbprint.clone(),
    })
}

/// A status with what [`needs_patch`] ignores taken out: lastTransitionTime, condition order.
pub fn comparable(status: &ClientCredentialStatus) -> ClientCredentialStatus {
    let mut s = status.clone();
    for c in &mut s.conditions {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    s.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn facts(now: &str) -> Facts {
        Facts {
            now: t(now),
            generation: Some(3),
            suspended: false,
            token: Some(TokenFacts {
                token_type: "Bearer".into(),
                scope: None,
                issued_at: t("2026-11-22T10:00:00Z"),
                expires_at: t("2026-11-22T11:00:00Z"),
                bound_certificate: None,
            }),
            failure: None,
            renew_at: Some(t("2026-11-22T10:40:00Z")),
            failed_attempts: 0,
            last_failure: None,
            retry_after_seconds: None,
            failed_inputs: None,
            handled_renewal_request: None,
            target_secret_name: "demo".into(),
            service_account: None,
            client_certificate: None,
        }
    }

    fn cond<'a>(s: &'a ClientCredentialStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_valid_token_is_ready_even_while_renewal_fails() {
        let mut f = facts("2026-11-22T10:45:00Z");
        f.failure = Some(Failure { reason: Reason::TokenEndpointUnavailable, message: "down".into() });
        let s = next(None, &f);
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("True", "TokenIssued"));
        assert_eq!(
            (cond(&s, DEGRADED).status.as_str(), cond(&s, DEGRADED).reason.as_str()),
            ("True", "TokenEndpointUnavailable")
        );
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, READY).observed_generation, Some(3));
    }

    #[test]
    fn an_expired_token_is_not_ready() {
        let s = next(None, &facts("2026-11-22T11:00:00Z"));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "Expired"));
        let mut f = facts("2026-11-22T12:00:00Z");
        f.failure = Some(Failure { reason: Reason::TokenRequestRejected, message: "invalid_client".into() });
        let s = next(None, &f);
        assert_eq!(cond(&s, READY).reason, "TokenRequestRejected");
    }

    #[test]
    fn a_conflict_is_never_ready() {
        let mut f = facts("2026-11-22T10:10:00Z");
        f.failure = Some(Failure { reason: Reason::TargetSecretConflict, message: "not ours".into() });
        assert_eq!(cond(&next(None, &f), READY).status, "False");
    }

    #[test]
    fn last_transition_time_changes_only_when_status_flips() {
        let first = next(None, &facts("2026-11-22T10:01:00Z"));
        let later = next(Some(&first), &facts("2026-11-22T10:30:00Z"));
        assert_eq!(cond(&first, READY).last_transition_time, cond(&later, READY).last_transition_time);
        assert!(!needs_patch(Some(&first), &later), "nothing but time changed");
        let expired = next(Some(&later), &facts("2026-11-22T11:30:00Z"));
        assert_eq!(cond(&expired, READY).last_transition_time.0, t("2026-11-22T11:30:00Z"));
        assert!(needs_patch(Some(&later), &expired));
    }
}

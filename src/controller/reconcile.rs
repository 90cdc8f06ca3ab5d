//! One reconcile of a ClientCredential, as a pipeline:
//!
//! 1. **load**: the state and target Secrets (cache), the source Secrets (API);
//! 2. **validate**: the spec, its templates, the source material;
//! 3. **decide** (pure, [`crate::schedule::decide`]): is a token due, and why;
//! 4. **acquire**: one token request, through the token engine;
//! 5. **publish**: the state Secret first (it holds a rotated refresh token), then the
//!    target Secret, each applied only when it differs;
//! 6. **status**: conditions and timestamps, patched only when something changed.
//!
//! Problems a user can cause end as a [`Failure`] in the status and a requeue; only
//! Kubernetes API errors are returned as errors (handled by the error policy).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use secrecy::SecretString;

use super::context::Context;
use super::labels;
use super::state::{self, StoredToken};
use super::status::{self, Facts, Failure, Reason, TokenFacts};
use super::target::{self, Ownership};
use crate::api::engine::{self, SourceError};
use crate::api::validate::validate;
use crate::api::{ClientCredential, ClientCredentialStatus};
use crate::metrics::{CredentialLabels, RequestLabels, ResultLabels};
use crate::oauth::{Credentials, TokenError, TokenRequestConfig};
use crate::schedule::{Decision, Published, RenewalPolicy, RequestReason, ScheduleState, decide};

/// Kubernetes API failures; everything else is a condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the ClientCredential has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// Everything the token request needs, once the spec and the source material are valid.
struct Prepared {
    config: TokenRequestConfig,
    credentials: Credentials,
    inputs: String,
    bootstrap: Option<String>,
    /// What failed attempts are recorded against (status.failedInputs): the inputs and the
    /// bootstrap refresh token or code. A new bootstrap value (the fix for a refused refresh
    /// token) is a change like a rotated client secret: it is tried at once, not after the
    /// backoff earned by the old one.
    attempt_inputs: String,
}

pub async fn reconcile(cc: Arc<ClientCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = cc.namespace().ok_or(Error::NoNamespace)?;
    let name = cc.name_any();
    if cc.metadata.deletion_timestamp.is_some() {
        // The state Secret and (unless Retain) the target are garbage-collected through
        // their ownerReferences.
        ctx.metrics.forget_credential(&namespace, &name);
        ctx.take_unsaved(&namespace, &name);
        return Ok(Action::await_change());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let jitter_key = format!("{namespace}/{name}");
    let renewal = RenewalPolicy {
        renew_before: cc.spec.renew_before.as_ref().and_then(|d| d.parse().ok()),
        renew_before_percentage: cc.spec.renew_before_percentage.and_then(|p| u8::try_from(p).ok()),
        ..ctx.policy.renewal.clone()
    };

    // 1. load (from the cache: no API call on routine reconciles)
    let state_name = labels::state_secret_name(&name);
    let mut stored = cached(&ctx, &namespace, &state_name).as_deref().and_then(state::read);
    // A token acquired by an earlier reconcile whose state write failed: write it now. It is
    // newer than anything stored, and may carry the only copy of a rotated refresh token.
    if let Some(unsaved) = ctx.take_unsaved(&namespace, &name) {
        if let Err(e) = apply_state(&secrets, &state::desired(&cc, &unsaved)).await {
            ctx.keep_unsaved(&namespace, &name, unsaved);
            return Err(e);
        }
        stored = Some(unsaved);
    }
    let target_name = target::name(&cc);
    let cached_target = cached(&ctx, &namespace, &target_name);

    // 2. validate
    let prepared = prepare(&cc, &secrets).await?;
    let conflict = match &cached_target {
        Some(t) => conflict_with(t, &name),
        // Not a Secret of ours (or not created yet): look before applying, because an
        // apply would take over a Secret somebody else owns.
        None => secrets.get_opt(&target_name).await?.and_then(|t| conflict_with(&t, &name)),
    };

    let status = cc.status.clone().unwrap_or_default();
    let renew_annotation = cc.annotations().get(labels::RENEW_REQUESTED_AT).cloned();
    let mut record = FailureRecord::from_status(&status);
    let mut failure = conflict.clone().or_else(|| prepared.as_ref().err().cloned());
    let mut handled_request = status.handled_renewal_request.clone();

    // 3. decide, 4. acquire
    if let (Ok(prep), None) = (&prepared, &conflict) {
        let due = |stored: Option<&StoredToken>| {
            let schedule = schedule_state(&cc, now, stored, prep, &record, renew_annotation.as_deref());
            match decide(&schedule, &renewal, &ctx.policy.backoff, &jitter_key) {
                Decision::RequestNow(reason) => Some(reason),
                _ => None,
            }
        };
        // The cache may lag behind our own last write: before spending a token request,
        // confirm with the state Secret as the API server has it.
        let reason = match due(stored.as_ref()) {
            Some(_) => {
                stored = secrets.get_opt(&state_name).await?.as_ref().and_then(state::read);
                due(stored.as_ref())
            }
            None => None,
        };
        if let Some(reason_now) = reason {
            let manual = reason_now == RequestReason::ManualRenewal;
            if manual {
                handled_request = renew_annotation.clone();
            }
            match acquire(&ctx, &cc, prep, stored.as_ref(), manual.then(|| renew_annotation.clone()).flatten()).await {
                Ok((new_state, rotated_bootstrap)) => {
                    // 5. publish: state first, so a rotated refresh token is never lost.
                    if let Err(e) = apply_state(&secrets, &state::desired(&cc, &new_state)).await {
                        ctx.keep_unsaved(&namespace, &name, new_state);
                        return Err(e);
                    }
                    stored = Some(new_state);
                    record = FailureRecord::default();
                    if reason_now != RequestReason::RenewalDue && reason_now != RequestReason::Expired {
                        event(
                            &ctx,
                            &cc,
                            EventType::Normal,
                            "TokenIssued",
                            format!("issued a new token ({})", describe(reason_now)),
                        )
                        .await;
                    }
                    if rotated_bootstrap {
                        event(&ctx, &cc, EventType::Normal, "RefreshTokenRotated", "the bootstrap refresh token from the source Secret was exchanged; tokensync now keeps the rotated refresh token in its state Secret".into()).await;
                    }
                }
                Err(e) => {
                    record = record.failed(now, &e, &prep.attempt_inputs, ctx.policy.backoff.max);
                    let f = Failure { reason: Reason::from_reason_str(e.kind.reason()), message: e.to_string() };
                    event(&ctx, &cc, EventType::Warning, f.reason.as_str(), f.message.clone()).await;
                    failure = Some(f);
                }
            }
        }
    }

    // 5. publish the target from the stored token: also restores a deleted or edited
    // target Secret, without a token request.
    if conflict.is_none()
        && let Some(s) = stored.as_ref().filter(|s| s.is_valid_at(now))
    {
        match target::desired(&cc, s) {
            Ok(desired) if cached_target.as_deref().is_some_and(|t| target::up_to_date(t, &desired)) => {}
            Ok(desired) => apply(&secrets, &desired).await?,
            Err(e) => {
                failure.get_or_insert(Failure {
                    reason: Reason::InvalidSpec,
                    message: format!("spec.target.template: {e}"),
                });
            }
        }
    }

    // 6. status. Failed attempts still pending (waiting out a backoff) keep the failure
    // they recorded: Degraded stays True until a request succeeds.
    if failure.is_none() && record.attempts > 0 {
        failure = status
            .conditions
            .iter()
            .find(|c| c.type_ == status::DEGRADED && c.status == "True")
            .map(|c| Failure { reason: Reason::from_reason_str(&c.reason), message: c.message.clone() });
    }
    let inputs = prepared.as_ref().ok().map(|p| p.attempt_inputs.clone());
    let next_decision = match (&prepared, &conflict) {
        (Ok(prep), None) => {
            let schedule = ScheduleState {
                renewal_requested: false,
                ..schedule_state(&cc, now, stored.as_ref(), prep, &record, None)
            };
            Some(decide(&schedule, &renewal, &ctx.policy.backoff, &jitter_key))
        }
        _ => None,
    };
    let renew_at = next_decision.as_ref().and_then(Decision::requeue_at).filter(|_| !cc.spec.suspend);
    let facts = Facts {
        now,
        generation: cc.metadata.generation,
        suspended: cc.spec.suspend,
        token: stored.as_ref().map(|s| TokenFacts {
            token_type: s.token_type.clone(),
            scope: s.scope.clone(),
            issued_at: s.issued_at,
            expires_at: s.expires_at,
        }),
        failure,
        renew_at,
        failed_attempts: record.attempts,
        last_failure: record.last_failure,
        retry_after_seconds: record.retry_after.map(|d| d.as_secs() as i64),
        failed_inputs: if record.attempts > 0 { record.inputs.clone().or(inputs) } else { None },
        handled_renewal_request: handled_request,
        target_secret_name: target_name,
    };
    let next = status::next(cc.status.as_ref(), &facts);
    if status::needs_patch(cc.status.as_ref(), &next) {
        patch_status(&ctx, &cc, &namespace, &next).await?;
    }
    record_gauges(&ctx, &namespace, &name, stored.as_ref(), renew_at);

    // Requeue at the next decision point, and no later than expiry (to report Expired) or
    // the recheck interval.
    let mut wake = vec![now + ctx.policy.recheck];
    wake.extend(next_decision.as_ref().and_then(Decision::requeue_at));
    wake.extend(stored.as_ref().map(|s| s.expires_at).filter(|e| *e > now));
    let at = wake.into_iter().min().unwrap_or(now);
    let delay = Duration::from_secs((at.as_second() - now.as_second()).max(1) as u64);
    Ok(Action::requeue(delay))
}

fn cached(ctx: &Context, namespace: &str, name: &str) -> Option<Arc<Secret>> {
    ctx.managed.get(&ObjectRef::new(name).within(namespace))
}

fn conflict_with(secret: &Secret, credential: &str) -> Option<Failure> {
    let name = secret.name_any();
    match target::ownership(secret, credential) {
        Ownership::Ours => None,
        Ownership::Foreign => Some(Failure {
            reason: Reason::TargetSecretConflict,
            message: format!(
                "Secret {name} exists and is not managed by tokensync; choose another spec.target.name or delete it"
            ),
        }),
        Ownership::OtherCredential(other) => Some(Failure {
            reason: Reason::TargetSecretConflict,
            message: format!("Secret {name} is the target of ClientCredential {other}"),
        }),
    }
}

/// Validates the spec and reads the source material. API errors other than NotFound are
/// returned as errors; everything a user can fix is a Failure.
async fn prepare(cc: &ClientCredential, secrets: &Api<Secret>) -> Result<Result<Prepared, Failure>, Error> {
    let invalid = |message: String| Failure { reason: Reason::InvalidSpec, message };
    if let Err(e) = validate(&cc.spec, &cc.name_any()) {
        return Ok(Err(invalid(e.to_string())));
    }
    if let Some(templates) = &cc.spec.target.template
        && let Err(e) = crate::render::validate_templates(templates)
    {
        return Ok(Err(invalid(format!("spec.target.template: {e}"))));
    }
    let mut config = match engine::token_request_config(&cc.spec) {
        Ok(c) => c,
        Err(e) => return Ok(Err(invalid(e))),
    };
    let mut data: BTreeMap<String, engine::SecretData> = BTreeMap::new();
    for name in engine::referenced_secrets(&cc.spec) {
        match secrets.get_opt(&name).await? {
            Some(s) => {
                data.insert(name, s.data.unwrap_or_default());
            }
            None => {
                let e = SourceError::NotFound(name);
                return Ok(Err(Failure { reason: Reason::SourceSecretNotFound, message: e.to_string() }));
            }
        }
    }
    let source = |e: SourceError| Failure { reason: Reason::from_reason_str(e.reason()), message: e.to_string() };
    let credentials = match engine::credentials(&cc.spec, &data[&cc.spec.credentials_ref.name]) {
        Ok(c) => c,
        Err(e) => return Ok(Err(source(e))),
    };
    config.tls = match engine::tls_material(&cc.spec, |n| data.get(n)) {
        Ok(t) => t,
        Err(e) => return Ok(Err(source(e))),
    };
    let inputs = state::inputs_fingerprint(&cc.spec, &credentials, &config.tls);
    let bootstrap = state::bootstrap_fingerprint(&credentials);
    let attempt_inputs = match &bootstrap {
        Some(b) => format!("{inputs}+{b}"),
        None => inputs.clone(),
    };
    Ok(Ok(Prepared { config, credentials, inputs, bootstrap, attempt_inputs }))
}

/// Consecutive failed token requests, as persisted in status.
#[derive(Debug, Clone, Default)]
struct FailureRecord {
    attempts: u32,
    last_failure: Option<Timestamp>,
    retry_after: Option<Duration>,
    inputs: Option<String>,
}

impl FailureRecord {
    fn from_status(s: &ClientCredentialStatus) -> Self {
        FailureRecord {
            attempts: s.failed_attempts.unwrap_or(0).max(0) as u32,
            last_failure: s.last_failure_time.as_ref().map(|t| t.0),
            retry_after: s.retry_after_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
            inputs: s.failed_inputs.clone(),
        }
    }

    /// The record after one more failure. Failures made with other inputs start over.
    fn failed(self, now: Timestamp, e: &TokenError, inputs: &str, max_backoff: Duration) -> Self {
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
}

fn schedule_state(
    cc: &ClientCredential,
    now: Timestamp,
    stored: Option<&StoredToken>,
    prep: &Prepared,
    record: &FailureRecord,
    renew_annotation: Option<&str>,
) -> ScheduleState {
    let handled = cc.status.as_ref().and_then(|s| s.handled_renewal_request.as_deref());
    let renewal_requested = renew_annotation.is_some_and(|value| {
        Some(value) != handled && Some(value) != stored.and_then(|s| s.renewal_request.as_deref())
    });
    let bootstrap_changed = prep.bootstrap.is_some() && stored.is_some_and(|s| s.bootstrap != prep.bootstrap);
    ScheduleState {
        now,
        published: stored.map(|s| Published { issued_at: s.issued_at, expires_at: s.expires_at }),
        inputs_changed: stored.is_some_and(|s| s.inputs != prep.inputs) || bootstrap_changed,
        renewal_requested,
        suspended: cc.spec.suspend,
        failed_attempts: record.attempts,
        last_failure: record.last_failure,
        retry_after: record.retry_after,
        inputs_changed_since_failure: record.attempts > 0
            && record.inputs.as_deref() != Some(prep.attempt_inputs.as_str()),
    }
}

/// Requests one token. Returns the new state, and whether a bootstrap refresh token from
/// the source Secret was consumed (and replaced by a rotated one).
async fn acquire(
    ctx: &Context,
    cc: &ClientCredential,
    prep: &Prepared,
    stored: Option<&StoredToken>,
    renewal_request: Option<String>,
) -> Result<(StoredToken, bool), TokenError> {
    // The refresh token tokensync holds, unless the bootstrap value in the source Secret
    // changed (a user starting a new chain) or there is none yet.
    let same_chain = stored.is_some_and(|s| s.bootstrap == prep.bootstrap);
    let held: Option<&SecretString> = stored.filter(|_| same_chain).and_then(|s| s.refresh_token.as_ref());
    let started = std::time::Instant::now();
    let result = ctx.engine.acquire(&prep.config, &prep.credentials, held).await;
    let (outcome, reason) = match &result {
        Ok(_) => ("success", "TokenIssued"),
        Err(e) => ("failure", e.kind.reason()),
    };
    ctx.metrics
        .token_request_duration
        .get_or_create(&ResultLabels { result: outcome.into() })
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.token_requests.get_or_create(&RequestLabels { result: outcome.into(), reason: reason.into() }).inc();
    let acquired = result?;
    let used = held.or(prep.credentials.refresh_token.as_ref());
    let rotated_bootstrap =
        held.is_none() && prep.credentials.refresh_token.is_some() && acquired.refresh_token_rotated(used);
    let refresh_token = acquired.refresh_token_to_keep(used).cloned();
    tracing::info!(
        namespace = cc.namespace().unwrap_or_default(),
        name = cc.name_any(),
        flow = ?acquired.flow,
        expires_at = %acquired.token.expires_at,
        "token issued"
    );
    let token = acquired.token;
    Ok((
        StoredToken {
            access_token: token.access_token,
            token_type: token.token_type,
            scope: token.scope,
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            refresh_token,
            inputs: prep.inputs.clone(),
            bootstrap: prep.bootstrap.clone(),
            renewal_request,
        },
        rotated_bootstrap,
    ))
}

fn describe(reason: RequestReason) -> &'static str {
    match reason {
        RequestReason::NoToken => "first token",
        RequestReason::InputsChanged => "the spec or the source Secret changed",
        RequestReason::ManualRenewal => "renewal requested with the tokensync.io/renew-requested-at annotation",
        RequestReason::RenewalDue => "scheduled renewal",
        RequestReason::Expired => "the published token had expired",
        RequestReason::Retry => "retry after a failure succeeded",
    }
}

/// Server-side apply under tokensync's field manager. `force`: tokensync is the only
/// writer of these fields; a conflicting manager (someone editing the Secret by hand) loses,
/// which is how an edited target is restored.
async fn apply(secrets: &Api<Secret>, secret: &Secret) -> Result<(), Error> {
    let mut secret = secret.clone();
    secret.metadata.managed_fields = None;
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": secret.metadata,
        "type": secret.type_,
        "data": secret.data,
    });
    let params = PatchParams::apply(labels::FIELD_MANAGER).force();
    secrets.patch(&secret.name_any(), &params, &Patch::Apply(&body)).await?;
    Ok(())
}

/// Applies the state Secret, retrying briefly: it may hold a rotated refresh token that
/// exists nowhere else, and losing it would break the refresh chain.
async fn apply_state(secrets: &Api<Secret>, secret: &Secret) -> Result<(), Error> {
    let mut delay = Duration::from_millis(200);
    for _ in 0..4 {
        match apply(secrets, secret).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the state Secret; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    apply(secrets, secret).await
}

async fn patch_status(
    ctx: &Context,
    cc: &ClientCredential,
    namespace: &str,
    status: &ClientCredentialStatus,
) -> Result<(), Error> {
    let api: Api<ClientCredential> = Api::namespaced(ctx.client.clone(), namespace);
    // A merge patch of the whole status: conditions are replaced as a list, which is what
    // we want, and no resourceVersion precondition is needed since status has one writer.
    // Fields that are no longer set are sent as null, which is how a merge patch removes.
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let (Some(current), Some(map)) =
        (cc.status.as_ref().and_then(|s| serde_json::to_value(s).ok()), body.as_object_mut())
    {
        for key in current.as_object().into_iter().flat_map(|o| o.keys()) {
            map.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": body });
    api.patch_status(&cc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn event(ctx: &Context, cc: &ClientCredential, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cc.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
}

fn record_gauges(
    ctx: &Context,
    namespace: &str,
    name: &str,
    stored: Option<&StoredToken>,
    renew_at: Option<Timestamp>,
) {
    let labels = CredentialLabels { namespace: namespace.into(), name: name.into() };
    if let Some(s) = stored {
        ctx.metrics.token_expiry.get_or_create(&labels).set(s.expires_at.as_second());
    }
    if let Some(r) = renew_at {
        ctx.metrics.token_renewal.get_or_create(&labels).set(r.as_second());
    }
}

/// What the error policy does with a Kubernetes API error: count it and retry soon. The
/// failing call is retried with a short fixed delay; kube's watcher already backs off on
/// watch errors.
pub fn error_policy(_cc: Arc<ClientCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.reconcile_errors.get_or_create(&crate::metrics::ErrorLabels { kind: error.kind().into() }).inc();
    Action::requeue(Duration::from_secs(5))
}

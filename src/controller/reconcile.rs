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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::context::{Context, Written};
use super::labels;
use super::managed::CachedSecret;
use super::sources::SecretRef;
use super::state::{self, Replaced, StoredToken};
use super::status::{self, Facts, Failure, Reason, TokenFacts};
use super::target::{self, Ownership};
use crate::api::engine;
use crate::api::{ClientCredential, ClientCredentialStatus, DeletionPolicy};
use crate::metrics::CredentialLabels;
use crate::oauth::TokenError;
use crate::schedule::{Decision, RenewalPolicy, RequestReason, ScheduleState, decide};
use crate::token_state::{self, FailureRecord, Prepared};

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

/// How soon to reconcile again when the status was computed from a stale read.
pub(super) const STALE_STATUS_RETRY: Duration = Duration::from_secs(1);

/// Whether the status on the server is what this reconcile computed.
#[derive(Debug, PartialEq, Eq)]
enum StatusWrite {
    /// Written, or already as computed.
    Current,
    /// Not written: the object changed since it was read (409 Conflict).
    Stale,
}

/// What one reconcile knows about a credential; each pipeline step reads and updates it.
struct Run {
    cc: Arc<ClientCredential>,
    ctx: Arc<Context>,
    secrets: Api<Secret>,
    now: Timestamp,
    jitter_key: String,
    renewal: RenewalPolicy,
    state_name: String,
    target_name: String,
    /// The published token, from the state Secret.
    stored: Option<StoredToken>,
    /// Consecutive failed token requests, from status.
    record: FailureRecord,
    /// What went wrong in this reconcile (or is still pending from earlier ones).
    failure: Option<Failure>,
    /// The renew-requested-at value acted upon.
    handled_request: Option<String>,
    renew_annotation: Option<String>,
    /// `cc` comes from the API server rather than the cache (see [`Outcome::Stale`]).
    confirmed: bool,
}

/// How a pipeline run over a `K` ended.
pub(super) enum Outcome<K> {
    Done(Action),
    /// A token was due, but the object as the API server has it is newer than the cached one
    /// the decision was made from: run again from the newer object.
    Stale(Arc<K>),
}

pub async fn reconcile(cc: Arc<ClientCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    ctx.wait_for_caches().await;
    let mut cc = cc;
    let mut confirmed = false;
    loop {
        match run_pipeline(cc, ctx.clone(), confirmed).await? {
            Outcome::Done(action) => return Ok(action),
            Outcome::Stale(fresh) => {
                tracing::debug!("the cached ClientCredential was stale; deciding again from the API server's");
                (cc, confirmed) = (fresh, true);
            }
        }
    }
}

/// One pass of the pipeline over `cc`. `confirmed`: `cc` was just read from the API server,
/// not from the cache, so it needs no confirmation before a token request.
async fn run_pipeline(
    cc: Arc<ClientCredential>,
    ctx: Arc<Context>,
    confirmed: bool,
) -> Result<Outcome<ClientCredential>, Error> {
    let namespace = cc.namespace().ok_or(Error::NoNamespace)?;
    let name = cc.name_any();
    if cc.metadata.deletion_timestamp.is_some() {
        // The state Secret and (unless Retain) the target are garbage-collected through
        // their ownerReferences.
        ctx.metrics.forget_credential(&namespace, &name);
        ctx.take_unsaved(&namespace, &name);
        ctx.written.forget(&Written::Status(cc.metadata.uid.clone().unwrap_or_default()));
        ctx.written.forget(&Written::Secret(SecretRef::new(&namespace, &target::name(&cc))));
        ctx.written.forget(&Written::Secret(SecretRef::new(&namespace, &labels::state_secret_name(&name))));
        return Ok(Outcome::Done(Action::await_change()));
    }
    let status = cc.status.clone().unwrap_or_default();
    let state_name = labels::state_secret_name(&name);
    let mut run = Run {
        secrets: Api::namespaced(ctx.client.clone(), &namespace),
        now: Timestamp::now(),
        jitter_key: format!("{namespace}/{name}"),
        renewal: RenewalPolicy {
            renew_before: cc.spec.renew_before.as_ref().and_then(|d| d.parse().ok()),
            renew_before_percentage: cc.spec.renew_before_percentage.and_then(|p| u8::try_from(p).ok()),
            ..ctx.policy.renewal.clone()
        },
        // 1. load (from the cache: no API call on routine reconciles)
        stored: cached(&ctx, &namespace, &state_name).as_deref().and_then(state::read_cached),
        state_name,
        target_name: target::name(&cc),
        record: failure_record(&status),
        failure: None,
        handled_request: status.handled_renewal_request.clone(),
        renew_annotation: cc.annotations().get(labels::RENEW_REQUESTED_AT).cloned(),
        confirmed,
        cc,
        ctx: ctx.clone(),
    };
    // A state Secret missing from the cache is not proof that there is none: the cache holds
    // Secrets by label, and another writer can remove or change one (issue 26). Once status
    // says a token was published, the Secret is read by name before its absence can mean
    // "no token", and when it is found (and ours) its labels are put back.
    if run.stored.is_none() && status.last_refresh_time.is_some() {
        run.recover_relabelled_state().await?;
    }
    let cached_target = cached(&run.ctx, &namespace, &run.target_name);
    // A token acquired by an earlier reconcile whose state write failed: write it now. It is
    // newer than anything stored, and may carry the only copy of a rotated refresh token.
    // Unless another writer stored another token since the state it was requested from.
    if let Some((unsaved, replaced)) = run.ctx.take_unsaved(&namespace, &name) {
        match run.write_state(&unsaved, &replaced).await {
            Err(e) => {
                run.ctx.keep_unsaved(&namespace, &name, unsaved, replaced);
                return Err(e);
            }
            Ok(true) => run.stored = Some(unsaved),
            Ok(false) => {}
        }
    }

    // 2. validate
    let prepared = prepare(&run.ctx, &run.cc, &run.secrets).await?;
    // Failures that are over (a success whose status write was lost, or inputs no longer in
    // use) are cleared from what status records.
    run.settle_failures(prepared.as_ref().ok());
    let conflict = match &cached_target {
        Some(t) => conflict_with(&t.name, target::cached_ownership(t, &name)),
        // Written by this process and not seen deleted since: ours, the cache lags.
        None if run.ctx.written.wrote(&run.target_key()) => None,
        // Not a Secret of ours (or not created yet): look before applying, because an
        // apply would take over a Secret somebody else owns.
        None => {
            let existing = run.secrets.get_opt(&run.target_name).await?;
            existing.and_then(|t| conflict_with(&run.target_name, target::ownership(&t, &name)))
        }
    };
    run.failure = conflict.clone().or_else(|| prepared.as_ref().err().cloned());
    let ready_to_request = prepared.as_ref().ok().filter(|_| conflict.is_none());

    // 3. decide, 4. acquire, 5. publish the state Secret
    if let Some(prep) = ready_to_request
        && let Some(fresh) = run.renew_if_due(prep).await?
    {
        return Ok(Outcome::Stale(fresh));
    }
    // 5. publish the target Secret, then remove one we published under an earlier name
    if conflict.is_none() && run.publish_target(cached_target.as_deref()).await? {
        run.remove_previous_targets().await?;
    }
    // 6. status
    let next = ready_to_request.map(|prep| run.next_decision(prep));
    if run.update_status(ready_to_request, next.as_ref()).await? == StatusWrite::Stale {
        // Computed from a stale read. The newer object normally arrives through the watch
        // first, but a watch can be stuck (an API server restart, a hung connection): read it
        // once and compute again from it, so the status converges whatever the watch does.
        if !run.confirmed
            && let Some(fresh) = run.read_fresh().await?
            && fresh.metadata.resource_version != run.cc.metadata.resource_version
        {
            return Ok(Outcome::Stale(Arc::new(fresh)));
        }
        return Ok(Outcome::Done(Action::requeue(STALE_STATUS_RETRY)));
    }
    Ok(Outcome::Done(run.requeue(next.as_ref())))
}

impl Run {
    /// The failure record with the failures that are over taken out
    /// ([`FailureRecord::still_pending`]).
    fn settle_failures(&mut self, prep: Option<&Prepared>) {
        let current = prep.map(|p| p.attempt_inputs.as_str());
        self.record = std::mem::take(&mut self.record).still_pending(self.stored.as_ref(), current);
    }

    /// Decides whether a token is due and, if so, requests it and writes the state Secret.
    /// Returns the ClientCredential as the API server has it when the cached one this
    /// decision was made from turns out to be stale: the caller decides again from it.
    async fn renew_if_due(&mut self, prep: &Prepared) -> Result<Option<Arc<ClientCredential>>, Error> {
        if self.due(prep).is_none() {
            return Ok(None);
        }
        // The caches may lag behind our own last writes (a slow watch, or one that is broken
        // until it recovers). A token request is the one thing that cannot be undone, so
        // before spending one, what the decision rests on is confirmed, reading from the API
        // server only what the cache cannot vouch for:
        // - the state Secret (the published token and refresh token), when this process wrote
        //   it and the cache does not show it exactly as that write left it;
        // - the ClientCredential (its status holds the failure record and the handled renewal
        //   request), when the watch has not delivered our own last status write: the cache
        //   may show the version that write replaced (a status patch computed from it would
        //   fail with 409, but only after the request was spent) or an older one still (after
        //   an API server outage the watch relists seconds later, while other watches already
        //   trigger reconciles: a renewal request handled since looked new, issue 26).
        // After a restart or a leader change nothing is remembered, and nothing needs to be:
        // reconciles start only once the caches have synced, from a consistent list made
        // after this replica started leading, and only the leader writes state Secrets. So
        // the cache is the truth until this process writes, and the first token of a
        // credential or the first renewal after a restart reads nothing.
        let cached_state = cached(&self.ctx, &self.namespace(), &self.state_name);
        let state_version = cached_state.as_ref().and_then(|s| s.resource_version.clone());
        let read_state = self.ctx.written.cache_behind(&self.state_key(), state_version.as_deref());
        let cc_version = self.cc.metadata.resource_version.as_deref();
        let read_credential = !self.confirmed
            && (self.ctx.written.lags(&self.status_key(), cc_version)
                || self.ctx.written.unseen_write(&self.status_key(), cc_version));
        let state = async {
            match read_state {
                true => self.secrets.get_opt(&self.state_name).await.map(Some).map_err(Error::from),
                false => Ok(None),
            }
        };
        let fresh = async {
            match read_credential {
                true => self.read_fresh().await.map(Some),
                false => Ok(None),
            }
        };
        let (state, fresh) = futures::try_join!(state, fresh)?;
        match fresh {
            // Deleted meanwhile: nothing to renew.
            Some(None) => return Ok(None),
            Some(Some(fresh)) if fresh.metadata.resource_version != self.cc.metadata.resource_version => {
                return Ok(Some(Arc::new(fresh)));
            }
            _ => {}
        }
        // The token is taken from the very object whose version was just vouched for: the
        // one loaded when this reconcile started may be older, as the cache can catch up with
        // our own last write meanwhile (a second "first token" was requested that way).
        let version_read = match &state {
            Some(read) => read.as_ref().and_then(|s| s.metadata.resource_version.clone()),
            None => state_version.clone(),
        };
        self.stored = match state {
            Some(read) => read.as_ref().and_then(state::read),
            None => cached_state.as_deref().and_then(state::read_cached),
        };
        // What a new token's state write replaces, and only that (issue 26).
        let replaced = Replaced { version: version_read, token: self.stored.clone() };
        self.settle_failures(Some(prep));
        let Some(reason) = self.due(prep) else { return Ok(None) };
        tracing::debug!(
            credential = %format!("{}/{}", self.namespace(), self.cc.name_any()),
            ?reason,
            state_read = read_state,
            state_version = ?state_version,
            credential_version = ?self.cc.metadata.resource_version,
            confirmed = self.confirmed,
            stored_issued_at = ?self.stored.as_ref().map(|s| s.issued_at),
            "requesting a token"
        );
        let manual = reason == RequestReason::ManualRenewal;
        let handled_before = self.handled_request.clone();
        if manual {
            self.handled_request = self.renew_annotation.clone();
        }
        let request = manual.then(|| self.renew_annotation.clone()).flatten();
        let who = format!("{}/{}", self.cc.namespace().unwrap_or_default(), self.cc.name_any());
        match acquire(&self.ctx, &who, prep, self.stored.as_ref(), request).await {
            Ok((new_state, rotated_bootstrap)) => {
                // State first, so a rotated refresh token is never lost. When another writer
                // stored another token since, this one is not published: the reconcile goes on
                // from the stored one, and the renewal request, if any, is not answered yet.
                match self.write_state(&new_state, &replaced).await {
                    Err(e) => {
                        let (namespace, name) = (self.cc.namespace().unwrap_or_default(), self.cc.name_any());
                        self.ctx.keep_unsaved(&namespace, &name, new_state, replaced);
                        return Err(e);
                    }
                    Ok(false) => {
                        self.handled_request = handled_before;
                        return Ok(None);
                    }
                    Ok(true) => {}
                }
                self.stored = Some(new_state);
                self.record = FailureRecord::default();
                // Routine renewals emit no Event; everything else is worth telling.
                if reason != RequestReason::RenewalDue && reason != RequestReason::Expired {
                    let note = format!("issued a new token ({})", describe(reason));
                    event(&self.ctx, self.cc.as_ref(), EventType::Normal, "TokenIssued", note).await;
                }
                if rotated_bootstrap {
                    let note = "the bootstrap refresh token from the source Secret was exchanged; tokensync now keeps \
                                the rotated refresh token in its state Secret";
                    event(&self.ctx, self.cc.as_ref(), EventType::Normal, "RefreshTokenRotated", note.into()).await;
                }
            }
            Err(e) => {
                self.record =
                    self.record.clone().failed(self.now, &e, &prep.attempt_inputs, self.ctx.policy.backoff.max);
                let f = Failure { reason: Reason::from_reason_str(e.kind.reason()), message: e.to_string() };
                event(&self.ctx, self.cc.as_ref(), EventType::Warning, f.reason.as_str(), f.message.clone()).await;
                self.failure = Some(f);
            }
        }
        Ok(None)
    }

    fn namespace(&self) -> String {
        self.cc.namespace().unwrap_or_default()
    }

    /// The ClientCredential as the API server has it now (managedFields dropped, as in the
    /// cache); None when it was deleted.
    async fn read_fresh(&self) -> Result<Option<ClientCredential>, Error> {
        let credentials: Api<ClientCredential> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        let mut fresh = credentials.get_opt(&self.cc.name_any()).await?;
        if let Some(cc) = fresh.as_mut() {
            super::slim(cc);
        }
        Ok(fresh)
    }

    fn state_key(&self) -> Written {
        Written::Secret(SecretRef::new(&self.namespace(), &self.state_name))
    }

    fn target_key(&self) -> Written {
        Written::Secret(SecretRef::new(&self.namespace(), &self.target_name))
    }

    fn status_key(&self) -> Written {
        Written::Status(self.cc.metadata.uid.clone().unwrap_or_default())
    }

    /// Reads the state Secret by name; when it is this credential's (its owner), takes the
    /// stored token from it and writes it again, which restores the labels the cache selects
    /// by. Nothing is requested.
    async fn recover_relabelled_state(&mut self) -> Result<(), Error> {
        let Some(found) = self.secrets.get_opt(&self.state_name).await? else { return Ok(()) };
        let uid = self.cc.metadata.uid.as_deref();
        let ours = found.metadata.owner_references.iter().flatten().any(|o| Some(o.uid.as_str()) == uid);
        if let Some(stored) = state::read(&found).filter(|_| ours) {
            tracing::info!(secret = %self.state_name, "the state Secret lost its labels; putting them back");
            let replaced = Replaced { version: found.resource_version(), token: Some(stored.clone()) };
            if self.write_state(&stored, &replaced).await? {
                self.stored = Some(stored);
            }
        }
        Ok(())
    }

    /// Writes the state Secret for `stored` over `replaced`, the state it was decided from
    /// ([`write_state_over`]), and remembers the version it produced, so that the next
    /// renewal can trust a cache that shows it. Returns false when another writer stored
    /// another token there meanwhile: nothing was written, and `self.stored` is now the token
    /// stored, the one this reconcile goes on from (published, reported). The version read is
    /// remembered like one written, so that the next decision reads the state Secret again
    /// as long as the cache does not show it yet.
    async fn write_state(&mut self, stored: &StoredToken, replaced: &Replaced) -> Result<bool, Error> {
        let desired = state::desired(&self.cc, stored);
        match write_state_over(&self.secrets, &desired, replaced).await? {
            StateWrite::Written(produced) => {
                self.ctx.written.remember(self.state_key(), None, produced, &desired);
                Ok(true)
            }
            StateWrite::Superseded(current) => {
                tracing::warn!(
                    credential = %format!("{}/{}", self.namespace(), self.cc.name_any()),
                    secret = %self.state_name,
                    "another writer stored a token in the state Secret since it was read (a replica that led \
                     before this one?); this token is dropped, the stored one is kept"
                );
                let version = current.as_ref().and_then(|c| c.resource_version());
                self.ctx.written.remember(self.state_key(), None, version, &current);
                self.stored = current.as_deref().and_then(state::read);
                Ok(false)
            }
        }
    }

    fn due(&self, prep: &Prepared) -> Option<RequestReason> {
        let schedule = schedule_state(
            &self.cc,
            self.now,
            self.stored.as_ref(),
            prep,
            &self.record,
            self.renew_annotation.as_deref(),
        );
        match decide(&schedule, &self.renewal, &self.ctx.policy.backoff, &self.jitter_key) {
            Decision::RequestNow(reason) => Some(reason),
            _ => None,
        }
    }

    /// Publishes the stored token into the target Secret when it differs from what is
    /// there: also restores a deleted or edited target, without a token request. Returns
    /// whether the target now holds the stored token.
    async fn publish_target(&mut self, cached_target: Option<&CachedSecret>) -> Result<bool, Error> {
        let Some(stored) = self.stored.as_ref().filter(|s| s.is_valid_at(self.now)) else { return Ok(false) };
        match target::desired(&self.cc, stored) {
            Ok(desired) if cached_target.is_some_and(|t| target::up_to_date(t, &desired)) => {}
            Ok(desired) => {
                let key = self.target_key();
                let cached_version = cached_target.and_then(|t| t.resource_version.as_deref());
                let echo = match cached_target {
                    Some(_) => self.ctx.written.is_lagging_echo(&key, cached_version, &desired),
                    None => self.ctx.written.is_unseen_create(&key, &desired),
                };
                if echo {
                    return Ok(true);
                }
                // A Secret's type is immutable: when spec.target.type changed, replace ours.
                let old_type = cached_target.map(|t| t.type_.clone());
                if old_type.is_some_and(|t| Some(&t) != desired.type_.as_ref()) {
                    self.secrets.delete(&self.target_name, &Default::default()).await?;
                }
                let produced = apply_target(&self.secrets, &desired).await?;
                self.ctx.written.remember(key.clone(), cached_version, produced, &desired);
                // The watch may have delivered our write before it was remembered.
                if cached(&self.ctx, &self.namespace(), &self.target_name).is_some() {
                    self.ctx.written.seen(&key);
                }
            }
            Err(e) => {
                self.failure.get_or_insert(Failure {
                    reason: Reason::InvalidSpec,
                    message: format!("spec.target.template: {e}"),
                });
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes the target Secrets this ClientCredential published under an earlier
    /// spec.target.name, once the current target holds the token, unless the deletion policy
    /// keeps them: nobody renews them any more, and a workload still mounting one would fail
    /// when its token expires, far from the cause. Only Secrets that are ours: labelled as
    /// this credential's target and owned by it. Looked for only when status names another
    /// target than the current one, so routine reconciles do not scan the cache.
    async fn remove_previous_targets(&self) -> Result<(), Error> {
        let previous = self.cc.status.as_ref().and_then(|s| s.target_secret_name.as_deref());
        if previous.is_none_or(|p| p == self.target_name)
            || self.cc.spec.target.deletion_policy == DeletionPolicy::Retain
        {
            return Ok(());
        }
        let (namespace, name, uid) = (self.namespace(), self.cc.name_any(), self.cc.metadata.uid.clone());
        let earlier = self.ctx.managed.find(|s| {
            s.namespace == namespace
                && s.name != self.target_name
                && target::cached_ownership(s, &name) == Ownership::Ours
                && s.owners.iter().any(|(owner, controller)| Some(owner) == uid.as_ref() && *controller)
        });
        for old in earlier {
            // Only the object we looked at: a Secret recreated under that name meanwhile is not ours.
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: old.uid.clone(), resource_version: None }),
                ..Default::default()
            };
            match self.secrets.delete(&old.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
            let note =
                format!("removed Secret {}, the target before spec.target.name became {}", old.name, self.target_name);
            tracing::info!(credential = %format!("{namespace}/{name}"), secret = %old.name, "removed the previous target Secret");
            event(&self.ctx, self.cc.as_ref(), EventType::Normal, "PreviousTargetRemoved", note).await;
        }
        Ok(())
    }

    /// What happens next if nothing changes: the basis of renewAt and the requeue.
    fn next_decision(&self, prep: &Prepared) -> Decision {
        let schedule = ScheduleState {
            renewal_requested: false,
            ..schedule_state(&self.cc, self.now, self.stored.as_ref(), prep, &self.record, None)
        };
        decide(&schedule, &self.renewal, &self.ctx.policy.backoff, &self.jitter_key)
    }

    async fn update_status(&mut self, prep: Option<&Prepared>, next: Option<&Decision>) -> Result<StatusWrite, Error> {
        let cc = self.cc.clone();
        // Failed attempts still pending (waiting out a backoff) keep the failure they
        // recorded: Degraded stays True until a request succeeds.
        if self.failure.is_none() && self.record.attempts > 0 {
            self.failure = cc.status.as_ref().and_then(status::recorded_failure);
        }
        let renew_at = next.and_then(Decision::requeue_at).filter(|_| !cc.spec.suspend);
        let record = &self.record;
        let facts = Facts {
            now: self.now,
            generation: cc.metadata.generation,
            suspended: cc.spec.suspend,
            token: self.stored.as_ref().map(|s| TokenFacts {
                token_type: s.token_type.clone(),
                scope: s.scope.clone(),
                issued_at: s.issued_at,
                expires_at: s.expires_at,
                bound_certificate: s.bound_certificate.clone(),
            }),
            failure: self.failure.clone(),
            renew_at,
            failed_attempts: record.attempts,
            last_failure: record.last_failure,
            retry_after_seconds: record.retry_after.map(|d| d.as_secs() as i64),
            failed_inputs: (record.attempts > 0)
                .then(|| record.inputs.clone().or_else(|| prep.map(|p| p.attempt_inputs.clone())))
                .flatten(),
            handled_renewal_request: token_state::handled_request(
                self.renew_annotation.as_deref(),
                self.handled_request.as_deref(),
                self.stored.as_ref(),
            ),
            target_secret_name: self.target_name.clone(),
            service_account: prep.and_then(super::service_account::status_of),
            client_certificate: status::client_certificate(&cc.spec, prep),
        };
        let next_status = status::next(cc.status.as_ref(), &facts);
        let key = self.status_key();
        let version = cc.metadata.resource_version.as_deref();
        if status::needs_patch(cc.status.as_ref(), &next_status)
            && !self.ctx.written.is_lagging_echo(&key, version, &status::comparable(&next_status))
        {
            match patch_status(&self.ctx, &cc, &next_status).await {
                Ok(produced) => self.ctx.written.remember(key, version, produced, &status::comparable(&next_status)),
                // The status changed since the cache showed it to us: what we computed is
                // stale. The newer object is on its way through the watch and starts the
                // next reconcile, which computes from it.
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
                    tracing::debug!("status changed since it was read; reconciling again from the newer version");
                    return Ok(StatusWrite::Stale);
                }
                Err(e) => return Err(e),
            }
        }
        record_gauges(&self.ctx, &cc, self.stored.as_ref(), renew_at);
        self.ctx.metrics.record_status(&cc.namespace().unwrap_or_default(), &cc.name_any(), &next_status);
        Ok(StatusWrite::Current)
    }

    /// Requeue at the next decision point, and no later than expiry (to report Expired)
    /// or the recheck interval.
    fn requeue(&self, next: Option<&Decision>) -> Action {
        requeue(&self.ctx, self.now, next, self.stored.as_ref())
    }
}

/// Requeue at the next decision point, and no later than expiry (to report Expired) or the
/// recheck interval.
pub(super) fn requeue(ctx: &Context, now: Timestamp, next: Option<&Decision>, stored: Option<&StoredToken>) -> Action {
    let mut wake = vec![now + ctx.policy.recheck];
    wake.extend(next.and_then(|d| d.look_again_at(now)));
    wake.extend(stored.map(|s| s.expires_at).filter(|e| *e > now));
    let at = wake.into_iter().min().unwrap_or(now);
    Action::requeue(Duration::from_secs((at.as_second() - now.as_second()).max(1) as u64))
}

fn cached(ctx: &Context, namespace: &str, name: &str) -> Option<Arc<CachedSecret>> {
    ctx.managed.get(namespace, name)
}

/// The failure an existing Secret named `name` at the target's name means, if any.
fn conflict_with(name: &str, ownership: Ownership) -> Option<Failure> {
    match ownership {
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

/// Reads the source Secrets and validates the spec and the material
/// ([`token_state::prepare`]). API errors other than NotFound are returned as errors;
/// everything a user can fix is a Failure.
async fn prepare(
    ctx: &Context,
    cc: &ClientCredential,
    secrets: &Api<Secret>,
) -> Result<Result<Prepared, Failure>, Error> {
    let mut data: BTreeMap<String, engine::SecretData> = BTreeMap::new();
    let namespace = cc.namespace().unwrap_or_default();
    for name in engine::referenced_secrets(&cc.spec) {
        if let Some(d) = ctx.sources.read(secrets, &SecretRef::new(&namespace, &name)).await? {
            data.insert(name, d);
        }
    }
    Ok(token_state::prepare(&cc.spec, &cc.name_any(), &data)
        .map(|p| p.in_namespace(&cc.namespace().unwrap_or_default()))
        .map_err(|p| Failure { reason: Reason::from_reason_str(p.reason), message: p.message }))
}

/// The failure record as persisted in status.
pub(super) fn failure_record(s: &ClientCredentialStatus) -> FailureRecord {
    FailureRecord {
        attempts: s.failed_attempts.unwrap_or(0).max(0) as u32,
        last_failure: s.last_failure_time.as_ref().map(|t| t.0),
        retry_after: s.retry_after_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
        inputs: s.failed_inputs.clone(),
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
    let renewal_requested = token_state::renewal_requested(renew_annotation, handled, stored);
    token_state::schedule_state(now, stored, prep, record, cc.spec.suspend, renewal_requested)
}

/// Requests one token. Returns the new state, and whether a bootstrap refresh token from
/// the source Secret was consumed (and replaced by a rotated one).
pub(super) async fn acquire(
    ctx: &Context,
    who: &str,
    prep: &Prepared,
    stored: Option<&StoredToken>,
    renewal_request: Option<String>,
) -> Result<(StoredToken, bool), TokenError> {
    let federated = super::service_account::token_for(ctx, prep).await?;
    let (stored, rotated, flow) =
        token_state::request(&ctx.engine, &ctx.metrics, prep, stored, renewal_request, federated).await?;
    tracing::info!(credential = who, ?flow, expires_at = %stored.expires_at, "token issued");
    Ok((stored, rotated))
}

pub(super) fn describe(reason: RequestReason) -> &'static str {
    match reason {
        RequestReason::NoToken => "first token",
        RequestReason::InputsChanged => "the spec or the source Secret changed",
        RequestReason::ManualRenewal => "renewal requested with the tokensync.io/renew-requested-at annotation",
        RequestReason::RenewalDue => "scheduled renewal",
        RequestReason::Expired => "the published token had expired",
        RequestReason::Retry => "retry after a failure succeeded",
    }
}

/// Writes a target Secret (a ClientCredential's, or a ClusterClientCredential's copy) so that
/// its data is exactly what tokensync renders. The forced apply takes back every key tokensync
/// renders, but server-side apply leaves fields another manager owns alone, so a key someone
/// added survives it: such keys are removed with a merge patch that carries the
/// resourceVersion the apply produced (a change made meanwhile fails it, and the next
/// reconcile looks again). Labels and annotations others added are kept: other controllers
/// (backup tools, reflectors, policy engines) legitimately add them.
pub(super) async fn apply_target(secrets: &Api<Secret>, desired: &Secret) -> Result<Option<String>, Error> {
    let applied = apply(secrets, desired).await?;
    let rendered = desired.data.as_ref();
    let foreign: serde_json::Map<String, serde_json::Value> = applied
        .data
        .iter()
        .flatten()
        .filter(|(key, _)| !rendered.is_some_and(|d| d.contains_key(*key)))
        .map(|(key, _)| (key.clone(), serde_json::Value::Null))
        .collect();
    if foreign.is_empty() {
        return Ok(applied.resource_version());
    }
    tracing::info!(secret = %applied.name_any(), keys = foreign.len(), "removing keys another writer added to a target Secret");
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": applied.resource_version() },
        "data": foreign,
    });
    let patched = secrets.patch(&applied.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(patched.resource_version())
}

/// Server-side apply under tokensync's field manager. `force`: tokensync is the only
/// writer of these fields; a conflicting manager (someone editing the Secret by hand) loses,
/// which is how an edited value is restored. Returns the object as stored.
pub async fn apply(secrets: &Api<Secret>, secret: &Secret) -> Result<Secret, Error> {
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
    Ok(secrets.patch(&secret.name_any(), &params, &Patch::Apply(&body)).await?)
}

/// How a state Secret write ended ([`write_state_over`]).
#[derive(Debug)]
pub(super) enum StateWrite {
    /// Written; the resourceVersion it produced.
    Written(Option<String>),
    /// Not written: since the state it was to replace was read, another writer stored
    /// another token there (a replica that led before this one, its write delivered late).
    /// The state Secret as it now is.
    Superseded(Option<Box<Secret>>),
}

/// Writes a state Secret over the state it replaces (`replaced`), and only over that: a
/// network can deliver a request late, and a replica that lost its leadership meanwhile
/// must not overwrite the token, and the refresh chain, that its successor stored since
/// (issue 26). An existing state Secret is applied with the resourceVersion it was read at
/// (server-side apply honours it: 409 Conflict once the object changed); a new one is
/// created ([`create_state`]: 409 AlreadyExists once another writer created one). After a
/// conflict the state Secret is read again: when it still holds the token this write
/// replaces (only its labels or other keys changed), or this very token (an earlier attempt
/// landed, its answer lost), or no token at all, the write is tried again over that version;
/// when it holds another token, nothing is written. Other errors are retried briefly: the
/// write may carry a rotated refresh token that exists nowhere else.
pub(super) async fn write_state_over(
    secrets: &Api<Secret>,
    desired: &Secret,
    replaced: &Replaced,
) -> Result<StateWrite, Error> {
    let ours = state::read(desired);
    let mut version = replaced.version.clone();
    let (mut conflicts, mut failures) = (0, 0);
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = match &version {
            Some(version) => apply_over(secrets, desired, version).await,
            None => create_state(secrets, desired).await,
        };
        match attempt {
            Ok(produced) => return Ok(StateWrite::Written(produced)),
            // Changed or created since (409), or deleted since (404: a server that refuses an
            // apply with a resourceVersion of an object that is gone): look at it now.
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 || e.code == 404 => {
                conflicts += 1;
                if conflicts > 5 {
                    return Err(Error::Kube(kube::Error::Api(e)));
                }
                let current = secrets.get_opt(&desired.name_any()).await?;
                let token = current.as_ref().and_then(state::read);
                let free = token.is_none()
                    || state::same_token(token.as_ref(), replaced.token.as_ref())
                    || state::same_token(token.as_ref(), ours.as_ref());
                if !free {
                    return Ok(StateWrite::Superseded(current.map(Box::new)));
                }
                version = current.and_then(|c| c.metadata.resource_version);
            }
            Err(e) if failures < 4 => {
                tracing::warn!(error = %e, "cannot write the state Secret; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                failures += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies `desired` over the object at `version` only. Returns the version it produced.
async fn apply_over(secrets: &Api<Secret>, desired: &Secret, version: &str) -> Result<Option<String>, Error> {
    let mut secret = desired.clone();
    secret.metadata.resource_version = Some(version.to_owned());
    Ok(apply(secrets, &secret).await?.resource_version())
}

/// Creates a state Secret that does not exist yet; 409 AlreadyExists when another writer
/// created one meanwhile. A create (POST) holds what every write of it sets alike (name,
/// labels, owner, type), then the token is applied over the version it produced: fields a
/// create sets belong to its own field manager, which server-side apply never removes, so a
/// key created with the token (a refresh token the server later stops returning, say) would
/// stay for good. Returns the version the apply produced.
async fn create_state(secrets: &Api<Secret>, desired: &Secret) -> Result<Option<String>, Error> {
    let shell = Secret {
        metadata: ObjectMeta {
            name: desired.metadata.name.clone(),
            namespace: desired.metadata.namespace.clone(),
            labels: desired.metadata.labels.clone(),
            owner_references: desired.metadata.owner_references.clone(),
            ..Default::default()
        },
        type_: desired.type_.clone(),
        ..Default::default()
    };
    let params = PostParams { field_manager: Some(labels::FIELD_MANAGER.into()), ..Default::default() };
    let created = secrets.create(&params, &shell).await?;
    apply_over(secrets, desired, &created.resource_version().unwrap_or_default()).await
}

/// Returns the resourceVersion the patch produced.
async fn patch_status(
    ctx: &Context,
    cc: &ClientCredential,
    status: &ClientCredentialStatus,
) -> Result<Option<String>, Error> {
    let api: Api<ClientCredential> = Api::namespaced(ctx.client.clone(), &cc.namespace().unwrap_or_default());
    // A merge patch of the whole status: conditions are replaced as a list, which is what
    // we want. Fields that are no longer set are sent as null, which is how a merge patch
    // removes. The status is computed from the cached one (failure counts, transition times),
    // so the patch carries the resourceVersion it was computed from: the cache can lag behind
    // our own last write, and a patch from a stale read must fail (409) rather than undo it.
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let (Some(current), Some(map)) =
        (cc.status.as_ref().and_then(|s| serde_json::to_value(s).ok()), body.as_object_mut())
    {
        for key in current.as_object().into_iter().flat_map(|o| o.keys()) {
            map.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = match cc.metadata.resource_version.as_deref() {
        Some(rv) => serde_json::json!({ "metadata": { "resourceVersion": rv }, "status": body }),
        None => serde_json::json!({ "status": body }),
    };
    let patched = api.patch_status(&cc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(patched.resource_version())
}

/// Records an Event about `object` (a ClientCredential or a ClusterClientCredential); a
/// failure to record is logged, never fatal.
pub(super) async fn event<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &object.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
}

fn record_gauges(ctx: &Context, cc: &ClientCredential, stored: Option<&StoredToken>, renew_at: Option<Timestamp>) {
    let labels = CredentialLabels { namespace: cc.namespace().unwrap_or_default(), name: cc.name_any() };
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
    error_policy_for(error, &ctx)
}

/// Logs and counts a reconcile error; the object is looked at again in 5 s.
pub(super) fn error_policy_for(error: &Error, ctx: &Context) -> Action {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.reconcile_errors.get_or_create(&crate::metrics::ErrorLabels { kind: error.kind().into() }).inc();
    Action::requeue(Duration::from_secs(5))
}

//! The steps every credential kind runs, written once.
//!
//! A ClientCredential ([`super::reconcile`]) and a ClusterClientCredential
//! ([`super::cluster`]) differ only in where their token is published (one target Secret, or
//! a copy in every selected namespace), where their state Secret lives, and what their
//! status adds. Everything that decides whether a token request is made, and what a
//! reconcile costs in API requests, is here, so that every rule reaches both kinds:
//!
//! 1. **load** ([`Run::load`]): the stored token from the cache; a state Secret that lost the
//!    labels the cache selects by, read by name; a token whose state write failed, written;
//! 2. **settle** ([`Run::settle_failures`]): failures that are over leave the record;
//! 3. **decide, confirm, acquire, store** ([`Run::renew_if_due`]): a token request only when
//!    the decision holds on what the API server has, reading only what the cache cannot
//!    vouch for ([`super::context::WriteMemo`]); the state Secret written first, and only over
//!    the state the request was decided from;
//! 4. the kind publishes the token (its own step);
//! 5. **status** ([`Run::facts`], [`Run::write_status`]): patched only when it changed, and
//!    never again for a cache that merely lags behind our own write;
//! 6. **requeue** ([`Run::requeue`]) at the next decision point.

use std::sync::Arc;
use std::time::Duration;

use super::events::EventType;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Context, Written};
use super::labels;
use super::sources::SecretRef;
use super::state::{self, Replaced, StateWrite, StoredToken, write_state_over};
use super::status::{self, Facts, Failure, Reason, TokenFacts};
use crate::api::{ClientCredentialSpec, ClientCredentialStatus};
use crate::metrics::CredentialLabels;
use crate::oauth::TokenError;
use crate::schedule::{Decision, RequestReason};
use crate::token_state::{self, FailureRecord, Prepared, Schedule};

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

/// How a pipeline run over a `K` ended.
pub(super) enum Outcome<K> {
    Done(Action),
    /// A token was due, or the status computed, from a cached object older than the one the
    /// API server has: run again from the newer object.
    Stale(Arc<K>),
}

/// Runs `pass` over `object`, and again over the API server's newer object each time the
/// cached one turns out to be stale; the second pass starts `confirmed`, so it does not read
/// the object again before a token request.
pub(super) async fn until_current<K, F, Fut>(object: Arc<K>, mut pass: F) -> Result<Action, Error>
where
    F: FnMut(Arc<K>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome<K>, Error>>,
{
    let (mut object, mut confirmed) = (object, false);
    loop {
        match pass(object, confirmed).await? {
            Outcome::Done(action) => return Ok(action),
            Outcome::Stale(fresh) => {
                tracing::debug!("the cached object was stale; deciding again from the API server's");
                (object, confirmed) = (fresh, true);
            }
        }
    }
}

/// A kind of credential the pipeline runs for: where its state lives, how its status is
/// compared and patched, how it is named in logs, metrics and memory.
pub(super) trait Credential:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static
{
    /// The whole status the kind patches.
    type Status: Serialize;

    /// The token request, renewal and target: a ClientCredential's spec.
    fn token_spec(&self) -> &ClientCredentialSpec;
    /// The part of the status every kind has (conditions, failure record, token facts).
    fn credential_status(&self) -> Option<&ClientCredentialStatus>;
    /// The namespace ("" for a cluster-scoped kind) and name: the key of a token whose state
    /// write failed, of metrics, and of the schedule's jitter.
    fn key(&self) -> (String, String);
    /// Where its state Secret is.
    fn state_ref(&self) -> SecretRef;
    /// The state Secret holding `stored`, as it is written.
    fn state_secret(&self, stored: &StoredToken) -> Secret;
    /// Whether an existing Secret at [`Self::state_ref`] is this credential's state.
    fn owns_state(&self, secret: &Secret) -> bool;
    /// The API of this kind (namespaced or cluster-wide).
    fn api(&self, client: kube::Client) -> Api<Self>;
    /// The status with what does not count as a change taken out: equal values need no patch.
    fn comparable(status: &Self::Status) -> serde_json::Value;
    fn current_status(&self) -> Option<&Self::Status>;
}

/// Whether the status on the server is what this reconcile computed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StatusWrite {
    /// Written, or already as computed.
    Current,
    /// Not written: the object changed since it was read (409 Conflict).
    Stale,
}

/// What one reconcile of a credential knows; each step reads and updates it.
pub(super) struct Run<'a, K: Credential> {
    pub cc: Arc<K>,
    pub ctx: &'a Context,
    pub now: Timestamp,
    /// "ns/name", or "cluster/name" for a cluster-scoped kind.
    who: String,
    schedule: Schedule,
    state: SecretRef,
    state_api: Api<Secret>,
    /// The published token, from the state Secret.
    pub stored: Option<StoredToken>,
    /// Consecutive failed token requests, from status.
    pub record: FailureRecord,
    /// What went wrong in this reconcile (or is still pending from earlier ones).
    pub failure: Option<Failure>,
    /// The renew-requested-at value acted upon.
    handled_request: Option<String>,
    renew_annotation: Option<String>,
    /// `cc` comes from the API server rather than the cache (see [`Outcome::Stale`]).
    pub confirmed: bool,
}

impl<'a, K: Credential> Run<'a, K> {
    /// Step 1: what is stored, from the cache, and what only a read or a write can settle.
    pub async fn load(cc: Arc<K>, ctx: &'a Context, confirmed: bool) -> Result<Self, Error> {
        let spec = cc.token_spec();
        let status = cc.credential_status().cloned().unwrap_or_default();
        let state = cc.state_ref();
        let (namespace, name) = cc.key();
        let who = match namespace.as_str() {
            "" => format!("cluster/{name}"),
            ns => format!("{ns}/{name}"),
        };
        let mut run = Run {
            state_api: Api::namespaced(ctx.client.clone(), &state.namespace),
            now: Timestamp::now(),
            schedule: Schedule::new(spec, &ctx.policy.renewal, &ctx.policy.backoff, who.clone()),
            who,
            stored: None,
            state,
            record: failure_record(&status),
            failure: None,
            handled_request: status.handled_renewal_request.clone(),
            renew_annotation: cc.annotations().get(labels::RENEW_REQUESTED_AT).cloned(),
            confirmed,
            cc,
            ctx,
        };
        let cached_state = ctx.managed.get(&run.state.namespace, &run.state.name);
        run.stored = cached_state.as_deref().and_then(state::read_cached);
        // A state Secret missing from the cache is not proof that there is none: the cache
        // holds Secrets by label, and another writer can remove or change one (issue 26).
        // Once status says a token was published, the Secret is read by name before its
        // absence can mean "no token", and when it is found (and ours) its labels are put back.
        // One the cache shows without a token is our own create whose token write the watch
        // has not delivered yet: the write memo has the decision read it before any request.
        // Nor is a state Secret this process wrote and the Secret watch has not delivered yet
        // (the credential's watch, delivering the status written after it, can be faster): the
        // decision reads that one before any request ([`Run::renew_if_due`]).
        if cached_state.is_none() && status.last_refresh_time.is_some() && !ctx.written.wrote(&run.state_key()) {
            run.recover_relabelled_state().await?;
        }
        // A token acquired by an earlier reconcile whose state write failed: write it now. It
        // is newer than anything stored, and may carry the only copy of a rotated refresh
        // token. Unless another writer stored another token since the state it was requested
        // from.
        if let Some((unsaved, replaced)) = ctx.take_unsaved(&namespace, &name) {
            match run.write_state(&unsaved, &replaced).await {
                Err(e) => {
                    ctx.keep_unsaved(&namespace, &name, unsaved, replaced);
                    return Err(e);
                }
                Ok(true) => run.stored = Some(unsaved),
                Ok(false) => {}
            }
        }
        Ok(run)
    }

    /// "ns/name", or "cluster/name" for a cluster-scoped kind: how logs name the credential.
    pub fn who(&self) -> &str {
        &self.who
    }

    /// Step 2: the failure record with the failures that are over taken out
    /// ([`FailureRecord::still_pending`]).
    pub fn settle_failures(&mut self, prep: Option<&Prepared>) {
        let current = prep.map(|p| p.attempt_inputs.as_str());
        self.record = std::mem::take(&mut self.record).still_pending(self.stored.as_ref(), current);
    }

    /// Step 3: decides whether a token is due and, if so, requests it and writes the state
    /// Secret. Returns the object as the API server has it when the cached one this decision
    /// was made from turns out to be stale: the caller decides again from it.
    pub async fn renew_if_due(&mut self, prep: &Prepared) -> Result<Option<Arc<K>>, Error> {
        if self.due(prep).is_none() {
            return Ok(None);
        }
        // The caches may lag behind our own last writes (a slow watch, or one that is broken
        // until it recovers). A token request is the one thing that cannot be undone, so
        // before spending one, what the decision rests on is confirmed, reading from the API
        // server only what the cache cannot vouch for:
        // - the state Secret (the published token and refresh token), when this process wrote
        //   it and the cache does not show it exactly as that write left it;
        // - the credential (its status holds the failure record and the handled renewal
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
        let cached_state = self.ctx.managed.get(&self.state.namespace, &self.state.name);
        let state_version = cached_state.as_ref().and_then(|s| s.resource_version.clone());
        let read_state = self.ctx.written.cache_behind(&self.state_key(), state_version.as_deref());
        let cc_version = self.cc.meta().resource_version.as_deref();
        let read_credential = !self.confirmed
            && (self.ctx.written.lags(&self.status_key(), cc_version)
                || self.ctx.written.unseen_write(&self.status_key(), cc_version));
        let state = async {
            match read_state {
                true => self.state_api.get_opt(&self.state.name).await.map(Some).map_err(Error::from),
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
            Some(Some(fresh)) if fresh.meta().resource_version != self.cc.meta().resource_version => {
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
            credential = %self.who(),
            ?reason,
            state_read = read_state,
            state_version = ?state_version,
            credential_version = ?self.cc.meta().resource_version,
            confirmed = self.confirmed,
            stored_issued_at = ?self.stored.as_ref().map(|s| s.issued_at),
            "requesting a token"
        );
        // A manual renewal is one attempt, whatever its outcome: a failure is retried on the
        // normal schedule.
        let manual = reason == RequestReason::ManualRenewal;
        let handled_before = self.handled_request.clone();
        if manual {
            self.handled_request = self.renew_annotation.clone();
        }
        let request = manual.then(|| self.renew_annotation.clone()).flatten();
        match acquire(self.ctx, self.who(), prep, self.stored.as_ref(), request).await {
            Ok((new_state, rotated_bootstrap)) => {
                // State first, so a rotated refresh token is never lost. When another writer
                // stored another token since, this one is not published: the reconcile goes on
                // from the stored one, and the renewal request, if any, is not answered yet.
                match self.write_state(&new_state, &replaced).await {
                    Err(e) => {
                        let (namespace, name) = self.cc.key();
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
                    let note = format!("issued a new token ({})", token_state::describe(reason));
                    event(self.ctx, self.cc.as_ref(), EventType::Normal, "TokenIssued", note).await;
                }
                if rotated_bootstrap {
                    let note = "the bootstrap refresh token from the source Secret was exchanged; tokensync now keeps \
                                the rotated refresh token in its state Secret";
                    event(self.ctx, self.cc.as_ref(), EventType::Normal, "RefreshTokenRotated", note.into()).await;
                }
            }
            Err(e) => {
                self.record =
                    self.record.clone().failed(self.now, &e, &prep.attempt_inputs, self.ctx.policy.backoff.max);
                let f = Failure { reason: Reason::from_reason_str(e.kind.reason()), message: e.to_string() };
                event(self.ctx, self.cc.as_ref(), EventType::Warning, f.reason.as_str(), f.message.clone()).await;
                self.failure = Some(f);
            }
        }
        Ok(None)
    }

    /// The object as the API server has it now (managedFields dropped, as in the cache);
    /// None when it was deleted.
    pub async fn read_fresh(&self) -> Result<Option<K>, Error> {
        let mut fresh = self.cc.api(self.ctx.client.clone()).get_opt(&self.cc.name_any()).await?;
        if let Some(cc) = fresh.as_mut() {
            super::slim(cc);
        }
        Ok(fresh)
    }

    fn state_key(&self) -> Written {
        Written::Secret(self.state.clone())
    }

    fn status_key(&self) -> Written {
        Written::Status(self.cc.meta().uid.clone().unwrap_or_default())
    }

    /// Reads the state Secret by name; when it is this credential's, takes the stored token
    /// from it and writes it again, which restores the labels the cache selects by. Nothing
    /// is requested.
    async fn recover_relabelled_state(&mut self) -> Result<(), Error> {
        let Some(found) = self.state_api.get_opt(&self.state.name).await? else { return Ok(()) };
        let stored = state::read(&found).filter(|_| self.cc.owns_state(&found));
        // Our own write, which the Secret watch has not delivered yet, or has delivered since the
        // cache was looked at (the cache selects by label: it is labelled): nothing to repair.
        let shown = self.ctx.managed.get(&self.state.namespace, &self.state.name).is_some();
        if shown || self.ctx.written.is_own_write(&self.state_key(), found.metadata.resource_version.as_deref()) {
            self.stored = stored;
            return Ok(());
        }
        if let Some(stored) = stored {
            tracing::info!(secret = %self.state.name, "the state Secret lost its labels; putting them back");
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
        let desired = self.cc.state_secret(stored);
        match write_state_over(&self.state_api, &desired, replaced).await? {
            StateWrite::Written(produced) => {
                self.ctx.written.remember(self.state_key(), None, produced, &desired);
                Ok(true)
            }
            StateWrite::Superseded(current) => {
                tracing::warn!(
                    credential = %self.who(),
                    secret = %self.state.name,
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

    fn decide(&self, prep: &Prepared, renew_annotation: Option<&str>) -> Decision {
        let handled = self.cc.credential_status().and_then(|s| s.handled_renewal_request.as_deref());
        let stored = self.stored.as_ref();
        let renewal_requested = token_state::renewal_requested(renew_annotation, handled, stored);
        self.schedule.decide(self.now, stored, prep, &self.record, renewal_requested)
    }

    fn due(&self, prep: &Prepared) -> Option<RequestReason> {
        match self.decide(prep, self.renew_annotation.as_deref()) {
            Decision::RequestNow(reason) => Some(reason),
            _ => None,
        }
    }

    /// What happens next if nothing changes: the basis of renewAt and the requeue.
    pub fn next_decision(&self, prep: &Prepared) -> Decision {
        self.decide(prep, None)
    }

    /// Failed attempts still pending (waiting out a backoff) keep the failure they recorded:
    /// Degraded stays True until a request succeeds.
    pub fn keep_recorded_failure(&mut self) {
        if self.failure.is_none() && self.record.attempts > 0 {
            self.failure = self.cc.credential_status().and_then(status::recorded_failure);
        }
    }

    /// Step 5: what this reconcile established, for the status.
    pub fn facts(&self, prep: Option<&Prepared>, next: Option<&Decision>, target_secret_name: String) -> Facts {
        let suspended = self.cc.token_spec().suspend;
        let record = &self.record;
        Facts {
            now: self.now,
            generation: self.cc.meta().generation,
            suspended,
            token: self.stored.as_ref().map(|s| TokenFacts {
                token_type: s.token_type.clone(),
                scope: s.scope.clone(),
                issued_at: s.issued_at,
                expires_at: s.expires_at,
                bound_certificate: s.bound_certificate.clone(),
            }),
            failure: self.failure.clone(),
            renew_at: self.renew_at(next),
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
            target_secret_name,
            service_account: prep.and_then(super::service_account::status_of),
            client_certificate: status::client_certificate(self.cc.token_spec(), prep),
        }
    }

    fn renew_at(&self, next: Option<&Decision>) -> Option<Timestamp> {
        self.schedule.renew_at(next)
    }

    /// Patches the status to `next` unless it is what the object already shows, or what our
    /// own last write made of the version the cache still shows. The patch carries the
    /// resourceVersion it was computed from: a 409 means it was computed from a stale read.
    pub async fn write_status(&self, next: &K::Status) -> Result<StatusWrite, Error> {
        let key = self.status_key();
        let version = self.cc.meta().resource_version.as_deref();
        let comparable = K::comparable(next);
        let changed = self.cc.current_status().is_none_or(|current| K::comparable(current) != comparable);
        if changed && !self.ctx.written.is_lagging_echo(&key, version, &comparable) {
            self.ctx.written.begin(&key);
            match patch_status(self.ctx, self.cc.as_ref(), next).await {
                Ok(produced) => self.ctx.written.remember(key, version, produced, &comparable),
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
        Ok(StatusWrite::Current)
    }

    /// After a status computed from a stale read: the newer object normally arrives through
    /// the watch first, but a watch can be stuck (an API server restart, a hung connection):
    /// it is read once and the pipeline runs again from it, so the status converges whatever
    /// the watch does.
    pub async fn after_stale_status(&self) -> Result<Outcome<K>, Error> {
        if !self.confirmed
            && let Some(fresh) = self.read_fresh().await?
            && fresh.meta().resource_version != self.cc.meta().resource_version
        {
            return Ok(Outcome::Stale(Arc::new(fresh)));
        }
        Ok(Outcome::Done(Action::requeue(STALE_STATUS_RETRY)))
    }

    /// The expiry and renewal gauges.
    pub fn record_gauges(&self, next: Option<&Decision>) {
        let (namespace, name) = self.cc.key();
        let labels = CredentialLabels { namespace, name };
        if let Some(s) = &self.stored {
            self.ctx.metrics.token_expiry.get_or_create(&labels).set(s.expires_at.as_second());
        }
        if let Some(r) = self.renew_at(next) {
            self.ctx.metrics.token_renewal.get_or_create(&labels).set(r.as_second());
        }
    }

    /// Step 6: requeue at the next decision point, and no later than expiry (to report
    /// Expired) or the recheck interval.
    pub fn requeue(&self, next: Option<&Decision>) -> Action {
        let now = self.now;
        let mut wake = vec![now + self.ctx.policy.recheck];
        wake.extend(next.and_then(|d| d.look_again_at(now)));
        wake.extend(self.stored.as_ref().map(|s| s.expires_at).filter(|e| *e > now));
        let at = wake.into_iter().min().unwrap_or(now);
        Action::requeue(Duration::from_secs((at.as_second() - now.as_second()).max(1) as u64))
    }
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

/// Requests one token. Returns the new state, and whether a bootstrap refresh token from
/// the source Secret was consumed (and replaced by a rotated one).
async fn acquire(
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

/// A merge patch of the whole status: conditions are replaced as a list, which is what we
/// want. Fields that are no longer set are sent as null, which is how a merge patch removes.
/// The status is computed from the cached one (failure counts, transition times), so the
/// patch carries the resourceVersion it was computed from: the cache can lag behind our own
/// last write, and a patch from a stale read must fail (409) rather than undo it. Returns
/// the resourceVersion the patch produced.
async fn patch_status<K: Credential>(ctx: &Context, object: &K, status: &K::Status) -> Result<Option<String>, Error> {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let (Some(current), Some(map)) =
        (object.current_status().and_then(|s| serde_json::to_value(s).ok()), body.as_object_mut())
    {
        for key in current.as_object().into_iter().flat_map(|o| o.keys()) {
            map.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = match object.meta().resource_version.as_deref() {
        Some(rv) => serde_json::json!({ "metadata": { "resourceVersion": rv }, "status": body }),
        None => serde_json::json!({ "status": body }),
    };
    let api = object.api(ctx.client.clone());
    let patched = api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(patched.meta().resource_version.clone())
}

/// Records an Event about `object`; a failure to record is logged, never fatal.
pub(super) async fn event<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    if let Err(e) = ctx.recorder.publish(&object.object_ref(&()), type_, reason, &note).await {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
}

/// Logs and counts a reconcile error; the object is looked at again in 5 s.
pub(super) fn error_policy_for(error: &Error, ctx: &Context) -> Action {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.reconcile_errors.get_or_create(&crate::metrics::ErrorLabels { kind: error.kind().into() }).inc();
    Action::requeue(Duration::from_secs(5))
}

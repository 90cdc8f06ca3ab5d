//! The ClusterClientCredential reconcile: one token, many namespaces.
//!
//! The same pipeline as a ClientCredential's ([`super::reconcile`]), with the same engine,
//! schedule, failure record and status computation; what differs is where things live:
//! - the source Secrets and the state Secret are in spec.credentialsRef.namespace;
//! - the target is written to every selected namespace (one token request, N copies);
//! - copies carry the `tokensync.io/cluster-client-credential` label instead of an
//!   ownerReference, and a finalizer removes them when the resource is deleted (unless
//!   spec.target.deletionPolicy is Retain). Copies in namespaces that stop being selected
//!   are removed the same way.
//!
//! Steps: finalize or add the finalizer; validate; load the state; decide and acquire;
//! fan out; clean up; update status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};

use super::context::Context;
use super::labels;
use super::managed::CachedSecret;
use super::reconcile::{
    Error, Outcome, STALE_STATUS_RETRY, StateWrite, acquire, apply_target, describe, event, failure_record, requeue,
    write_state_over,
};
use super::sources::SecretRef;
use super::state::{self, Replaced, StoredToken};
use super::status::{self, Facts, Failure, Reason, TokenFacts};
use super::target;
use crate::api::cluster::{MAX_NAMESPACE_FAILURES, selects};
use crate::api::engine;
use crate::api::validate::{localized, validate_cluster};
use crate::api::{ClusterClientCredential, ClusterClientCredentialStatus, DeletionPolicy, NamespaceFailure};
use crate::schedule::{Decision, RenewalPolicy, RequestReason, decide};
use crate::token_state::{self, FailureRecord, Prepared};

/// The finalizer that removes the copies before a ClusterClientCredential goes away.
pub const FINALIZER: &str = "tokensync.io/cleanup";

/// What the cluster reconcile shares besides the namespaced [`Context`] (whose `managed`
/// cache holds this controller's Secrets: state Secrets and copies).
pub struct ClusterContext {
    pub base: Context,
    /// Namespaces, metadata only: names, labels, whether they are terminating.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

pub async fn reconcile(ccc: Arc<ClusterClientCredential>, ctx: Arc<ClusterContext>) -> Result<Action, Error> {
    let _timer = ctx.base.metrics.reconcile_started();
    ctx.base.wait_for_caches().await;
    let mut ccc = ccc;
    let mut confirmed = false;
    loop {
        match run_pipeline(ccc, &ctx, confirmed).await? {
            Outcome::Done(action) => return Ok(action),
            Outcome::Stale(fresh) => (ccc, confirmed) = (fresh, true),
        }
    }
}

/// One pass over `ccc`. `confirmed`: `ccc` was just read from the API server, not from the
/// cache, so it needs no confirmation before a token request.
async fn run_pipeline(
    ccc: Arc<ClusterClientCredential>,
    ctx: &ClusterContext,
    confirmed: bool,
) -> Result<Outcome<ClusterClientCredential>, Error> {
    let base = &ctx.base;
    let name = ccc.name_any();
    if ccc.metadata.deletion_timestamp.is_some() {
        return finalize(&ccc, ctx).await.map(Outcome::Done);
    }
    if !ccc.finalizers().iter().any(|f| f == FINALIZER) {
        // Before any copy exists, so that deleting the resource always cleans up.
        let mut finalizers = ccc.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        patch_finalizers(&base.client, &ccc, finalizers).await?;
        return Ok(Outcome::Done(Action::requeue(Duration::from_millis(1))));
    }
    let spec = &ccc.spec.token;
    let now = Timestamp::now();
    let current = ccc.status.clone().unwrap_or_default();
    let mut failure: Option<Failure> = None;

    // 1. validate
    let prepared = match validate_cluster(spec, &name) {
        Err(e) => Err(Failure { reason: Reason::InvalidSpec, message: e.to_string() }),
        Ok(()) => Ok(()),
    };
    let credentials_ns = spec.home_namespace().unwrap_or_default().to_owned();
    let source: Api<Secret> = Api::namespaced(base.client.clone(), &credentials_ns);
    let state_name = labels::cluster_state_secret_name(&name);

    // 2. load (the state Secret, from the cache)
    // Even when the spec is invalid, so that status reports the token the copies still hold.
    let mut stored = cached(base, &credentials_ns, &state_name).as_deref().and_then(state::read_cached);
    // A token acquired by an earlier reconcile whose state write failed: write it first. It
    // is newer than anything stored and may carry the only copy of a rotated refresh token.
    // Unless another writer stored another token since the state it was requested from.
    if let Some((unsaved, replaced)) = base.take_unsaved("", &name) {
        let state_api: Api<Secret> = Api::namespaced(base.client.clone(), &credentials_ns);
        match write_state_over(&state_api, &state_secret(&ccc, &credentials_ns, &unsaved), &replaced).await {
            Err(e) => {
                base.keep_unsaved("", &name, unsaved, replaced);
                return Err(e);
            }
            Ok(StateWrite::Written(_)) => stored = Some(unsaved),
            Ok(StateWrite::Superseded(now_stored)) => stored = now_stored.as_deref().and_then(state::read),
        }
    }
    let mut record = failure_record(&current.credential);
    let mut handled_request = current.credential.handled_renewal_request.clone();
    let renew_annotation = ccc.annotations().get(labels::RENEW_REQUESTED_AT).cloned();

    // 3. prepare the request from the source Secrets
    let prepared = match prepared {
        Ok(()) => prepare(base, spec, &name, &source).await?,
        Err(f) => Err(f),
    };
    // Failures that are over (a success whose status write was lost, or inputs no longer in
    // use) are cleared from what status records.
    let attempt_inputs = prepared.as_ref().ok().map(|p| p.attempt_inputs.as_str());
    record = record.still_pending(stored.as_ref(), attempt_inputs);
    let renewal = RenewalPolicy {
        renew_before: spec.renew_before.as_ref().and_then(|d| d.parse().ok()),
        renew_before_percentage: spec.renew_before_percentage.and_then(|p| u8::try_from(p).ok()),
        ..base.policy.renewal.clone()
    };
    let jitter_key = format!("cluster/{name}");
    let schedule = |stored: Option<&StoredToken>, record: &FailureRecord, prep: &Prepared, annotation: Option<&str>| {
        let handled = current.credential.handled_renewal_request.as_deref();
        let renewal_requested = token_state::renewal_requested(annotation, handled, stored);
        let state = token_state::schedule_state(now, stored, prep, record, spec.suspend, renewal_requested);
        decide(&state, &renewal, &base.policy.backoff, &jitter_key)
    };

    // 4. decide and acquire: one token request for all namespaces
    match &prepared {
        Err(f) => failure = Some(f.clone()),
        Ok(prep) => {
            if let Decision::RequestNow(_) = schedule(stored.as_ref(), &record, prep, renew_annotation.as_deref()) {
                // The caches may lag (behind our own writes, or anyone's): before spending a
                // request, confirm the state Secret and the status (failure record, handled
                // renewal request) with the API server, as for ClientCredentials.
                let state_api: Api<Secret> = Api::namespaced(base.client.clone(), &credentials_ns);
                let state = if confirmed {
                    state_api.get_opt(&state_name).await?
                } else {
                    let all: Api<ClusterClientCredential> = Api::all(base.client.clone());
                    let state = state_api.get_opt(&state_name);
                    let fresh = all.get_opt(&name);
                    let (state, fresh) = futures::try_join!(state, fresh)?;
                    match fresh {
                        None => return Ok(Outcome::Done(Action::await_change())),
                        Some(mut fresh) if fresh.metadata.resource_version != ccc.metadata.resource_version => {
                            super::slim(&mut fresh);
                            return Ok(Outcome::Stale(Arc::new(fresh)));
                        }
                        Some(_) => state,
                    }
                };
                stored = state.as_ref().and_then(state::read);
                // What a new token's state write replaces, and only that (issue 26).
                let replaced = Replaced::of(state.as_ref());
                record = record.still_pending(stored.as_ref(), Some(&prep.attempt_inputs));
                if let Decision::RequestNow(reason) =
                    schedule(stored.as_ref(), &record, prep, renew_annotation.as_deref())
                {
                    // A manual renewal is one attempt, whatever its outcome (as for
                    // ClientCredentials): a failure is retried on the normal schedule.
                    let manual = reason == RequestReason::ManualRenewal;
                    let request = manual.then(|| renew_annotation.clone()).flatten();
                    if manual {
                        handled_request = request.clone();
                    }
                    match acquire(base, &format!("cluster/{name}"), prep, stored.as_ref(), request.clone()).await {
                        Ok((new_state, _rotated)) => {
                            let secret = state_secret(&ccc, &credentials_ns, &new_state);
                            match write_state_over(&state_api, &secret, &replaced).await {
                                Err(e) => {
                                    // Kept in memory (the cluster controller's own map, keyed
                                    // by name alone) and written first by the next reconcile.
                                    base.keep_unsaved("", &name, new_state, replaced);
                                    return Err(e);
                                }
                                // Another writer stored another token since: this one is not
                                // published, the stored one is, and a renewal request is
                                // not answered yet.
                                Ok(StateWrite::Superseded(now_stored)) => {
                                    tracing::warn!(
                                        credential = %format!("cluster/{name}"),
                                        "another writer stored a token in the state Secret since it was read (a \
                                         replica that led before this one?); this token is dropped, the stored one \
                                         is kept"
                                    );
                                    stored = now_stored.as_deref().and_then(state::read);
                                    handled_request = current.credential.handled_renewal_request.clone();
                                }
                                Ok(StateWrite::Written(_)) => {
                                    stored = Some(new_state);
                                    record = FailureRecord::default();
                                    if reason != RequestReason::RenewalDue && reason != RequestReason::Expired {
                                        let note = format!("issued a new token ({})", describe(reason));
                                        event(base, ccc.as_ref(), EventType::Normal, "TokenIssued", note).await;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            record = record.failed(now, &e, &prep.attempt_inputs, base.policy.backoff.max);
                            let f =
                                Failure { reason: Reason::from_reason_str(e.kind.reason()), message: e.to_string() };
                            event(base, ccc.as_ref(), EventType::Warning, f.reason.as_str(), f.message.clone()).await;
                            failure = Some(f);
                        }
                    }
                }
            }
        }
    }

    // 5. fan out to the selected namespaces, 6. clean up the others
    let target_name = spec.target.name.clone().unwrap_or_else(|| name.clone());
    let selected: BTreeSet<String> = ctx
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter(|ns| selects(&spec.target, &ns.name_any(), ns.labels()))
        .map(|ns| ns.name_any())
        .collect();
    let mut namespace_failures = Vec::new();
    let mut synced = 0;
    if prepared.is_ok() {
        let valid = stored.as_ref().filter(|s| s.is_valid_at(now));
        for ns in &selected {
            match publish_copy(&ccc, base, ns, &target_name, valid).await {
                Ok(true) => synced += 1,
                Ok(false) => {}
                Err(message) => namespace_failures.push(NamespaceFailure { namespace: ns.clone(), message }),
            }
        }
        remove_unselected_copies(&ccc, base, &selected).await?;
    }
    if failure.is_none() && record.attempts > 0 {
        failure = status::recorded_failure(&current.credential);
    }
    if failure.is_none() && !namespace_failures.is_empty() {
        let names: Vec<&str> = namespace_failures.iter().take(3).map(|f| f.namespace.as_str()).collect();
        failure = Some(Failure {
            reason: Reason::TargetNamespacesFailed,
            message: format!(
                "{} of {} selected namespaces did not receive the token ({}{}); see status.namespaceFailures",
                namespace_failures.len(),
                selected.len(),
                names.join(", "),
                if namespace_failures.len() > 3 { ", ..." } else { "" }
            ),
        });
    }

    // 7. status
    let next = prepared.as_ref().ok().map(|prep| schedule(stored.as_ref(), &record, prep, None));
    let renew_at = next.as_ref().and_then(Decision::requeue_at).filter(|_| !spec.suspend);
    let facts = Facts {
        now,
        generation: ccc.metadata.generation,
        suspended: spec.suspend,
        token: stored.as_ref().map(|s| TokenFacts {
            token_type: s.token_type.clone(),
            scope: s.scope.clone(),
            issued_at: s.issued_at,
            expires_at: s.expires_at,
            bound_certificate: s.bound_certificate.clone(),
        }),
        failure,
        renew_at,
        failed_attempts: record.attempts,
        last_failure: record.last_failure,
        retry_after_seconds: record.retry_after.map(|d| d.as_secs() as i64),
        failed_inputs: (record.attempts > 0)
            .then(|| record.inputs.clone().or_else(|| prepared.as_ref().ok().map(|p| p.attempt_inputs.clone())))
            .flatten(),
        handled_renewal_request: token_state::handled_request(
            renew_annotation.as_deref(),
            handled_request.as_deref(),
            stored.as_ref(),
        ),
        target_secret_name: target_name,
        service_account: prepared.as_ref().ok().and_then(super::service_account::status_of),
        client_certificate: status::client_certificate(spec, prepared.as_ref().ok()),
    };
    // Namespaces that did not get the token make Degraded True (TargetNamespacesFailed);
    // Ready follows the token, which the other namespaces hold.
    let credential = status::next(Some(&current.credential), &facts);
    let failed = namespace_failures.len();
    namespace_failures.truncate(MAX_NAMESPACE_FAILURES);
    let next_status = ClusterClientCredentialStatus {
        credential,
        selected_namespaces: Some(selected.len() as i32),
        synced_namespaces: Some(synced),
        failed_namespaces: Some(failed as i32),
        namespace_failures,
    };
    if status_changed(ccc.status.as_ref(), &next_status) {
        match patch_status(&base.client, &ccc, &next_status).await {
            Ok(()) => {}
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
                return Ok(Outcome::Done(Action::requeue(STALE_STATUS_RETRY)));
            }
            Err(e) => return Err(e),
        }
    }

    // The same gauges as for ClientCredentials; a cluster-scoped resource has namespace "".
    let gauge_labels = crate::metrics::CredentialLabels { namespace: String::new(), name: name.clone() };
    if let Some(s) = &stored {
        base.metrics.token_expiry.get_or_create(&gauge_labels).set(s.expires_at.as_second());
    }
    if let Some(r) = renew_at {
        base.metrics.token_renewal.get_or_create(&gauge_labels).set(r.as_second());
    }
    base.metrics.record_cluster_status(&name, &next_status);

    Ok(Outcome::Done(requeue(base, now, next.as_ref(), stored.as_ref())))
}

pub fn error_policy(_ccc: Arc<ClusterClientCredential>, error: &Error, ctx: Arc<ClusterContext>) -> Action {
    super::reconcile::error_policy_for(error, &ctx.base)
}

/// The state Secret, in the credentials namespace: labelled for this controller's watch and
/// owned by no one (cleaned up by the finalizer).
fn state_secret(ccc: &ClusterClientCredential, namespace: &str, stored: &StoredToken) -> Secret {
    let name = ccc.name_any();
    let mut secret = state::secret_for(stored);
    secret.metadata.name = Some(labels::cluster_state_secret_name(&name));
    secret.metadata.namespace = Some(namespace.to_owned());
    secret.metadata.labels = Some(BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        (labels::CLUSTER_CREDENTIAL.to_owned(), name),
        (labels::ROLE.to_owned(), labels::ROLE_STATE.to_owned()),
    ]));
    secret
}

/// Writes the copy in `namespace` when it differs from the stored token. Ok(true): the copy
/// holds the current token; Ok(false): there is no valid token to publish yet; Err: why
/// this namespace could not be given it.
async fn publish_copy(
    ccc: &ClusterClientCredential,
    ctx: &Context,
    namespace: &str,
    target_name: &str,
    stored: Option<&StoredToken>,
) -> Result<bool, String> {
    let Some(stored) = stored else { return Ok(false) };
    let name = ccc.name_any();
    let target_spec = &ccc.spec.token.target;
    let data = token_state::render_target(target_spec.template.as_ref(), stored)
        .map_err(|e| format!("spec.target.template: {e}"))?;
    let mut desired = target::secret_for(target_spec, (labels::CLUSTER_CREDENTIAL, &name), stored, data);
    desired.metadata.name = Some(target_name.to_owned());
    desired.metadata.namespace = Some(namespace.to_owned());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let cached_copy = cached(ctx, namespace, target_name);
    if let Some(copy) = &cached_copy {
        if target::up_to_date(copy, &desired) {
            return Ok(true);
        }
    } else {
        // Not a copy of ours (or not created yet): look before applying, because an apply
        // would take over a Secret somebody else owns.
        let existing =
            secrets.get_opt(target_name).await.map_err(|e| format!("cannot read Secret {target_name}: {e}"))?;
        if let Some(existing) = existing
            && existing.labels().get(labels::CLUSTER_CREDENTIAL) != Some(&name)
        {
            return Err(format!(
                "Secret {target_name} exists and is not managed by this ClusterClientCredential; it is left alone"
            ));
        }
    }
    let old_type = cached_copy.as_ref().map(|t| t.type_.clone());
    if old_type.is_some_and(|t| Some(&t) != desired.type_.as_ref()) {
        // A Secret's type is immutable: replace the copy.
        secrets
            .delete(target_name, &DeleteParams::default())
            .await
            .map_err(|e| format!("cannot replace Secret {target_name}: {e}"))?;
    }
    apply_target(&secrets, &desired).await.map_err(|e| format!("cannot write Secret {target_name}: {e}"))?;
    Ok(true)
}

/// Copies in namespaces that are no longer selected (or under an old target name) are
/// removed, unless the deletion policy keeps them.
async fn remove_unselected_copies(
    ccc: &ClusterClientCredential,
    ctx: &Context,
    selected: &BTreeSet<String>,
) -> Result<(), Error> {
    if ccc.spec.token.target.deletion_policy == DeletionPolicy::Retain {
        return Ok(());
    }
    let target_name = ccc.spec.token.target.name.clone().unwrap_or_else(|| ccc.name_any());
    for copy in copies(ccc, ctx) {
        let ns = copy.namespace.clone();
        if selected.contains(&ns) && copy.name == target_name {
            continue;
        }
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        delete_if_present(&secrets, &copy.name).await?;
        tracing::info!(credential = %ccc.name_any(), namespace = %ns, "removed the copy from a namespace no longer selected");
    }
    Ok(())
}

/// Deletion: remove every copy (unless Retain) and the state Secret, then the finalizer.
async fn finalize(ccc: &ClusterClientCredential, ctx: &ClusterContext) -> Result<Action, Error> {
    let base = &ctx.base;
    if !ccc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let retain = ccc.spec.token.target.deletion_policy == DeletionPolicy::Retain;
    let name = ccc.name_any();
    // Everything labelled for this resource, from the API rather than the cache: a copy the
    // cache has not seen yet must not survive.
    let all: Api<Secret> = Api::all(base.client.clone());
    let params = kube::api::ListParams::default().labels(&format!("{}={name}", labels::CLUSTER_CREDENTIAL));
    for secret in all.list(&params).await?.items {
        let is_state = secret.labels().get(labels::ROLE).map(String::as_str) == Some(labels::ROLE_STATE);
        if retain && !is_state {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(base.client.clone(), &secret.namespace().unwrap_or_default());
        delete_if_present(&api, &secret.name_any()).await?;
    }
    base.take_unsaved("", &name);
    let finalizers = ccc.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(&base.client, ccc, finalizers).await?;
    base.metrics.forget_credential("", &name);
    Ok(Action::await_change())
}

async fn delete_if_present(api: &Api<Secret>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sets metadata.finalizers, with the resourceVersion it was read at: the list is shared
/// with other controllers, and a stale write must not drop theirs.
async fn patch_finalizers(
    client: &kube::Client,
    ccc: &ClusterClientCredential,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let api: Api<ClusterClientCredential> = Api::all(client.clone());
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": ccc.resource_version() }
    });
    api.patch(&ccc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn patch_status(
    client: &kube::Client,
    ccc: &ClusterClientCredential,
    next: &ClusterClientCredentialStatus,
) -> Result<(), Error> {
    let api: Api<ClusterClientCredential> = Api::all(client.clone());
    // As for ClientCredentials: the whole status, removed fields as null, and the
    // resourceVersion it was computed from.
    let mut body = serde_json::to_value(next).unwrap_or_default();
    if let (Some(current), Some(map)) =
        (ccc.status.as_ref().and_then(|s| serde_json::to_value(s).ok()), body.as_object_mut())
    {
        for key in current.as_object().into_iter().flat_map(|o| o.keys()) {
            map.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "metadata": { "resourceVersion": ccc.resource_version() }, "status": body });
    api.patch_status(&ccc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

fn status_changed(current: Option<&ClusterClientCredentialStatus>, next: &ClusterClientCredentialStatus) -> bool {
    let Some(current) = current else { return true };
    let counts = |s: &ClusterClientCredentialStatus| {
        (s.selected_namespaces, s.synced_namespaces, s.failed_namespaces, s.namespace_failures.clone())
    };
    status::needs_patch(Some(&current.credential), &next.credential) || counts(current) != counts(next)
}

/// The source Secrets, read from the credentials namespace, made into a request.
async fn prepare(
    ctx: &Context,
    spec: &crate::api::ClientCredentialSpec,
    name: &str,
    secrets: &Api<Secret>,
) -> Result<Result<Prepared, Failure>, Error> {
    let local = localized(spec);
    let namespace = spec.home_namespace().unwrap_or_default().to_owned();
    let mut data: BTreeMap<String, engine::SecretData> = BTreeMap::new();
    for secret in engine::referenced_secrets(&local) {
        if let Some(d) = ctx.sources.read(secrets, &SecretRef::new(&namespace, &secret)).await? {
            data.insert(secret, d);
        }
    }
    // `localized` dropped spec.serviceAccountRef.namespace (the engine knows no namespaces);
    // the ServiceAccount is in the namespace the spec names, which may differ from that of
    // the credentials Secret.
    let sa_namespace = spec.service_account_ref.as_ref().and_then(|r| r.namespace.clone()).unwrap_or_default();
    Ok(token_state::prepare(&local, name, &data)
        .map(|p| p.in_namespace(&sa_namespace))
        .map_err(|p| Failure { reason: Reason::from_reason_str(p.reason), message: p.message }))
}

fn cached(ctx: &Context, namespace: &str, name: &str) -> Option<Arc<CachedSecret>> {
    ctx.managed.get(namespace, name)
}

/// The target copies of `ccc` the cache holds.
fn copies(ccc: &ClusterClientCredential, ctx: &Context) -> Vec<Arc<CachedSecret>> {
    let name = ccc.name_any();
    ctx.managed.find(|s| {
        s.label(labels::CLUSTER_CREDENTIAL) == Some(name.as_str()) && s.label(labels::ROLE) == Some(labels::ROLE_TARGET)
    })
}

/// Which ClusterClientCredentials read a Secret: those whose credentials namespace it is in
/// and that reference it by name. There are few ClusterClientCredentials; a scan is enough.
pub fn readers(
    all: &[Arc<ClusterClientCredential>],
    namespace: &str,
    secret: &str,
) -> Vec<ObjectRef<ClusterClientCredential>> {
    all.iter()
        .filter(|c| c.spec.token.credentials_ref.as_ref().and_then(|r| r.namespace.as_deref()) == Some(namespace))
        .filter(|c| engine::referenced_secrets(&localized(&c.spec.token)).iter().any(|n| n == secret))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

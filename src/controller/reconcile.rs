//! One reconcile of a ClientCredential: the shared pipeline ([`super::pipeline`]) with one
//! target Secret in the credential's own namespace.
//!
//! 1. **load**: the state and target Secrets (cache), the source Secrets (API);
//! 2. **validate**: the spec, its templates, the source material; the target's ownership;
//! 3. **decide, acquire, store** ([`Run::renew_if_due`]): at most one token request;
//! 4. **publish**: the target Secret, applied only when it differs; a target published under
//!    an earlier name removed;
//! 5. **status**: conditions and timestamps, patched only when something changed.
//!
//! Problems a user can cause end as a [`Failure`] in the status and a requeue; only
//! Kubernetes API errors are returned as errors (handled by the error policy).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::events::EventType;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;

use super::context::{Context, Written};
use super::labels;
use super::pipeline::{Credential, Outcome, Run, StatusWrite, event, until_current};
use super::sources::SecretRef;
use super::state::{self, StoredToken};
use super::status::{self, Failure, Reason};
use super::target::{self, Ownership, apply_target};
use crate::api::engine;
use crate::api::{ClientCredential, ClientCredentialSpec, ClientCredentialStatus, DeletionPolicy};
use crate::token_state::{self, Prepared};

pub use super::pipeline::Error;

impl Credential for ClientCredential {
    type Status = ClientCredentialStatus;

    fn token_spec(&self) -> &ClientCredentialSpec {
        &self.spec
    }

    fn credential_status(&self) -> Option<&ClientCredentialStatus> {
        self.status.as_ref()
    }

    fn key(&self) -> (String, String) {
        (self.namespace().unwrap_or_default(), self.name_any())
    }

    fn state_ref(&self) -> SecretRef {
        SecretRef::new(&self.namespace().unwrap_or_default(), &labels::state_secret_name(&self.name_any()))
    }

    fn state_secret(&self, stored: &StoredToken) -> Secret {
        state::desired(self, stored)
    }

    /// Owned by this very ClientCredential (by uid: not one deleted and created again).
    fn owns_state(&self, secret: &Secret) -> bool {
        let uid = self.metadata.uid.as_deref();
        secret.metadata.owner_references.iter().flatten().any(|o| Some(o.uid.as_str()) == uid)
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    fn comparable(status: &ClientCredentialStatus) -> serde_json::Value {
        serde_json::to_value(status::comparable(status)).unwrap_or_default()
    }

    fn current_status(&self) -> Option<&ClientCredentialStatus> {
        self.status.as_ref()
    }
}

pub async fn reconcile(cc: Arc<ClientCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    ctx.wait_for_caches().await;
    until_current(cc, |cc, confirmed| run_pipeline(cc, &ctx, confirmed)).await
}

/// One pass of the pipeline over `cc`. `confirmed`: `cc` was just read from the API server,
/// not from the cache, so it needs no confirmation before a token request.
async fn run_pipeline(
    cc: Arc<ClientCredential>,
    ctx: &Context,
    confirmed: bool,
) -> Result<Outcome<ClientCredential>, Error> {
    let namespace = cc.namespace().ok_or(Error::NoNamespace)?;
    let name = cc.name_any();
    let target_name = target::name(&cc);
    if cc.metadata.deletion_timestamp.is_some() {
        // The state Secret and (unless Retain) the target are garbage-collected through
        // their ownerReferences.
        ctx.metrics.forget_credential(&namespace, &name);
        ctx.take_unsaved(&namespace, &name);
        ctx.written.forget(&Written::Status(cc.metadata.uid.clone().unwrap_or_default()));
        ctx.written.forget(&Written::Secret(SecretRef::new(&namespace, &target_name)));
        ctx.written.forget(&Written::Secret(cc.state_ref()));
        return Ok(Outcome::Done(Action::await_change()));
    }
    // 1. load
    let mut run = Run::load(cc, ctx, confirmed).await?;
    let cached_target = ctx.managed.get(&namespace, &target_name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    // 2. validate
    let prepared = prepare(ctx, &run.cc, &secrets).await?;
    // Failures that are over (a success whose status write was lost, or inputs no longer in
    // use) are cleared from what status records.
    run.settle_failures(prepared.as_ref().ok());
    let target_key = Written::Secret(SecretRef::new(&namespace, &target_name));
    let conflict = match &cached_target {
        Some(t) => conflict_with(&t.name, target::cached_ownership(t, &name)),
        // Written by this process and not seen deleted since: ours, the cache lags.
        None if ctx.written.wrote(&target_key) => None,
        // Not a Secret of ours (or not created yet): look before applying, because an
        // apply would take over a Secret somebody else owns.
        None => {
            let existing = secrets.get_opt(&target_name).await?;
            existing.and_then(|t| conflict_with(&target_name, target::ownership(&t, &name)))
        }
    };
    run.failure = conflict.clone().or_else(|| prepared.as_ref().err().cloned());
    let ready_to_request = prepared.as_ref().ok().filter(|_| conflict.is_none());

    // 3. decide, acquire, store the state Secret
    if let Some(prep) = ready_to_request
        && let Some(fresh) = run.renew_if_due(prep).await?
    {
        return Ok(Outcome::Stale(fresh));
    }
    // 4. publish the target Secret, then remove one we published under an earlier name
    if conflict.is_none() && publish_target(&mut run, &secrets, &target_name).await? {
        remove_previous_targets(&run, &secrets, &target_name).await?;
    }
    // 5. status
    let next = ready_to_request.map(|prep| run.next_decision(prep));
    run.keep_recorded_failure();
    let facts = run.facts(ready_to_request, next.as_ref(), target_name);
    let next_status = status::next(run.cc.status.as_ref(), &facts);
    if run.write_status(&next_status).await? == StatusWrite::Stale {
        return run.after_stale_status().await;
    }
    run.record_gauges(next.as_ref());
    ctx.metrics.record_status(&namespace, &name, &next_status);
    Ok(Outcome::Done(run.requeue(next.as_ref())))
}

/// Publishes the stored token into the target Secret when it differs from what is there:
/// also restores a deleted or edited target, without a token request. Returns whether the
/// target now holds the stored token.
async fn publish_target(
    run: &mut Run<'_, ClientCredential>,
    secrets: &Api<Secret>,
    target_name: &str,
) -> Result<bool, Error> {
    let Some(stored) = run.stored.as_ref().filter(|s| s.is_valid_at(run.now)) else { return Ok(false) };
    // Looked up now, not when the reconcile started: the watch may have delivered our own
    // last write of it meanwhile, and the write memo forgets a write once the cache shows it.
    let cached_target = run.ctx.managed.get(&run.cc.namespace().unwrap_or_default(), target_name);
    let cached_target = cached_target.as_deref();
    let desired = match target::desired(&run.cc, stored) {
        Ok(desired) => desired,
        Err(e) => {
            run.failure
                .get_or_insert(Failure { reason: Reason::InvalidSpec, message: format!("spec.target.template: {e}") });
            return Ok(false);
        }
    };
    if cached_target.is_some_and(|t| target::up_to_date(t, &desired)) {
        return Ok(true);
    }
    let ctx = run.ctx;
    let namespace = run.cc.namespace().unwrap_or_default();
    let key = Written::Secret(SecretRef::new(&namespace, target_name));
    let cached_version = cached_target.and_then(|t| t.resource_version.as_deref());
    let echo = match cached_target {
        Some(_) => ctx.written.is_lagging_echo(&key, cached_version, &desired),
        None => ctx.written.is_unseen_create(&key, &desired),
    };
    if echo {
        return Ok(true);
    }
    // A Secret's type is immutable: when spec.target.type changed, replace ours.
    let old_type = cached_target.map(|t| t.type_.clone());
    if old_type.is_some_and(|t| Some(&t) != desired.type_.as_ref()) {
        secrets.delete(target_name, &Default::default()).await?;
    }
    let produced = apply_target(secrets, &desired).await?;
    ctx.written.remember(key.clone(), cached_version, produced, &desired);
    // The watch may have delivered our write before it was remembered.
    if ctx.managed.get(&namespace, target_name).is_some() {
        ctx.written.seen(&key);
    }
    Ok(true)
}

/// Removes the target Secrets this ClientCredential published under an earlier
/// spec.target.name, once the current target holds the token, unless the deletion policy
/// keeps them: nobody renews them any more, and a workload still mounting one would fail
/// when its token expires, far from the cause. Only Secrets that are ours: labelled as this
/// credential's target and owned by it. Looked for only when status names another target
/// than the current one, so routine reconciles do not scan the cache.
async fn remove_previous_targets(
    run: &Run<'_, ClientCredential>,
    secrets: &Api<Secret>,
    target_name: &str,
) -> Result<(), Error> {
    let cc = run.cc.as_ref();
    let previous = cc.status.as_ref().and_then(|s| s.target_secret_name.as_deref());
    if previous.is_none_or(|p| p == target_name) || cc.spec.target.deletion_policy == DeletionPolicy::Retain {
        return Ok(());
    }
    let (namespace, name) = cc.key();
    let uid = cc.metadata.uid.clone();
    let earlier = run.ctx.managed.find(|s| {
        s.namespace == namespace
            && s.name != target_name
            && target::cached_ownership(s, &name) == Ownership::Ours
            && s.owners.iter().any(|(owner, controller)| Some(owner) == uid.as_ref() && *controller)
    });
    for old in earlier {
        // Only the object we looked at: a Secret recreated under that name meanwhile is not ours.
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: old.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match secrets.delete(&old.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        let note = format!("removed Secret {}, the target before spec.target.name became {target_name}", old.name);
        tracing::info!(credential = %run.who(), secret = %old.name, "removed the previous target Secret");
        event(run.ctx, cc, EventType::Normal, "PreviousTargetRemoved", note).await;
    }
    Ok(())
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

/// What the error policy does with a Kubernetes API error: count it and retry soon. The
/// failing call is retried with a short fixed delay; kube's watcher already backs off on
/// watch errors.
pub fn error_policy(_cc: Arc<ClientCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    super::pipeline::error_policy_for(error, &ctx)
}

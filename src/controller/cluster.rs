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

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};

use super::context::{Context, Written};
use super::labels;
use super::managed::CachedSecret;
use super::pipeline::{Credential, Error, Outcome, Run, StatusWrite, until_current};
use super::sources::SecretRef;
use super::state::{self, StoredToken};
use super::status::{self, Failure, Reason};
use super::target::{self, apply_target};
use crate::api::cluster::{MAX_NAMESPACE_FAILURES, selects};
use crate::api::engine;
use crate::api::validate::{localized, validate_cluster};
use crate::api::{
    ClientCredentialSpec, ClientCredentialStatus, ClusterClientCredential, ClusterClientCredentialStatus,
    DeletionPolicy, NamespaceFailure,
};
use crate::token_state::{self, Prepared};

/// The finalizer that removes the copies before a ClusterClientCredential goes away.
pub const FINALIZER: &str = "tokensync.io/cleanup";

/// What the cluster reconcile shares besides the namespaced [`Context`] (whose `managed`
/// cache holds this controller's Secrets: state Secrets and copies).
pub struct ClusterContext {
    pub base: Context,
    /// Namespaces, metadata only: names, labels, whether they are terminating.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Credential for ClusterClientCredential {
    type Status = ClusterClientCredentialStatus;

    fn token_spec(&self) -> &ClientCredentialSpec {
        &self.spec.token
    }

    fn credential_status(&self) -> Option<&ClientCredentialStatus> {
        self.status.as_ref().map(|s| &s.credential)
    }

    fn key(&self) -> (String, String) {
        (String::new(), self.name_any())
    }

    /// In spec.credentialsRef.namespace, beside the source Secrets.
    fn state_ref(&self) -> SecretRef {
        let namespace = self.spec.token.home_namespace().unwrap_or_default();
        SecretRef::new(namespace, &labels::cluster_state_secret_name(&self.name_any()))
    }

    fn state_secret(&self, stored: &StoredToken) -> Secret {
        state_secret(self, &self.state_ref().namespace, stored)
    }

    /// A cluster-scoped owner cannot be named by a namespaced Secret's ownerReferences:
    /// labelled for this ClusterClientCredential as its state.
    fn owns_state(&self, secret: &Secret) -> bool {
        let labels = secret.labels();
        labels.get(labels::CLUSTER_CREDENTIAL) == Some(&self.name_any())
            && labels.get(labels::ROLE).map(String::as_str) == Some(labels::ROLE_STATE)
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    fn comparable(status: &ClusterClientCredentialStatus) -> serde_json::Value {
        let mut comparable = status.clone();
        comparable.credential = status::comparable(&status.credential);
        serde_json::to_value(comparable).unwrap_or_default()
    }

    fn current_status(&self) -> Option<&ClusterClientCredentialStatus> {
        self.status.as_ref()
    }
}

pub async fn reconcile(ccc: Arc<ClusterClientCredential>, ctx: Arc<ClusterContext>) -> Result<Action, Error> {
    let _timer = ctx.base.metrics.reconcile_started();
    ctx.base.wait_for_caches().await;
    until_current(ccc, |ccc, confirmed| run_pipeline(ccc, &ctx, confirmed)).await
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
    // 1. load (the state Secret, from the cache). Even when the spec is invalid, so that
    // status reports the token the copies still hold.
    let mut run = Run::load(ccc.clone(), base, confirmed).await?;
    let spec = &ccc.spec.token;

    // 2. validate, and prepare the request from the source Secrets
    let prepared = match validate_cluster(spec, &name) {
        Err(e) => Err(Failure { reason: Reason::InvalidSpec, message: e.to_string() }),
        Ok(()) => {
            let source: Api<Secret> = Api::namespaced(base.client.clone(), spec.home_namespace().unwrap_or_default());
            prepare(base, spec, &name, &source).await?
        }
    };
    // Failures that are over (a success whose status write was lost, or inputs no longer in
    // use) are cleared from what status records.
    run.settle_failures(prepared.as_ref().ok());
    run.failure = prepared.as_ref().err().cloned();

    // 3. decide, acquire, store: one token request for all namespaces
    if let Ok(prep) = &prepared
        && let Some(fresh) = run.renew_if_due(prep).await?
    {
        return Ok(Outcome::Stale(fresh));
    }

    // 4. fan out to the selected namespaces, clean up the others
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
        let valid = run.stored.as_ref().filter(|s| s.is_valid_at(run.now));
        for ns in &selected {
            match publish_copy(&ccc, base, ns, &target_name, valid).await {
                Ok(true) => synced += 1,
                Ok(false) => {}
                Err(message) => namespace_failures.push(NamespaceFailure { namespace: ns.clone(), message }),
            }
        }
        remove_unselected_copies(&ccc, base, &selected).await?;
    }
    run.keep_recorded_failure();
    if run.failure.is_none() && !namespace_failures.is_empty() {
        let names: Vec<&str> = namespace_failures.iter().take(3).map(|f| f.namespace.as_str()).collect();
        run.failure = Some(Failure {
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

    // 5. status. Namespaces that did not get the token make Degraded True
    // (TargetNamespacesFailed); Ready follows the token, which the other namespaces hold.
    let next = prepared.as_ref().ok().map(|prep| run.next_decision(prep));
    let facts = run.facts(prepared.as_ref().ok(), next.as_ref(), target_name);
    let credential = status::next(ccc.status.as_ref().map(|s| &s.credential), &facts);
    let failed = namespace_failures.len();
    namespace_failures.truncate(MAX_NAMESPACE_FAILURES);
    let next_status = ClusterClientCredentialStatus {
        credential,
        selected_namespaces: Some(selected.len() as i32),
        synced_namespaces: Some(synced),
        failed_namespaces: Some(failed as i32),
        namespace_failures,
    };
    if run.write_status(&next_status).await? == StatusWrite::Stale {
        return run.after_stale_status().await;
    }
    // The same gauges as for ClientCredentials; a cluster-scoped resource has namespace "".
    run.record_gauges(next.as_ref());
    base.metrics.record_cluster_status(&name, &next_status);
    Ok(Outcome::Done(run.requeue(next.as_ref())))
}

pub fn error_policy(_ccc: Arc<ClusterClientCredential>, error: &Error, ctx: Arc<ClusterContext>) -> Action {
    super::pipeline::error_policy_for(error, &ctx.base)
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

/// Writes the copy in `namespace` when it differs from the stored token, with the same
/// write memo as a ClientCredential's target: a cache that merely lags behind our own write
/// is not written again. Ok(true): the copy holds the current token; Ok(false): there is no
/// valid token to publish yet; Err: why this namespace could not be given it.
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
    let cached_copy = ctx.managed.get(namespace, target_name);
    let key = Written::Secret(SecretRef::new(namespace, target_name));
    let cached_version = cached_copy.as_ref().and_then(|t| t.resource_version.as_deref());
    match &cached_copy {
        Some(copy) if target::up_to_date(copy, &desired) => return Ok(true),
        Some(_) if ctx.written.is_lagging_echo(&key, cached_version, &desired) => return Ok(true),
        Some(_) => {}
        None if ctx.written.is_unseen_create(&key, &desired) => return Ok(true),
        // Written by this process and not seen deleted since: ours, the cache lags.
        None if ctx.written.wrote(&key) => {}
        None => {
            // Not a copy of ours (or not created yet): look before applying, because an
            // apply would take over a Secret somebody else owns.
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
    }
    let old_type = cached_copy.as_ref().map(|t| t.type_.clone());
    if old_type.is_some_and(|t| Some(&t) != desired.type_.as_ref()) {
        // A Secret's type is immutable: replace the copy.
        secrets
            .delete(target_name, &DeleteParams::default())
            .await
            .map_err(|e| format!("cannot replace Secret {target_name}: {e}"))?;
    }
    let produced =
        apply_target(&secrets, &desired).await.map_err(|e| format!("cannot write Secret {target_name}: {e}"))?;
    ctx.written.remember(key.clone(), cached_version, produced, &desired);
    // The watch may have delivered our write before it was remembered.
    if ctx.managed.get(namespace, target_name).is_some() {
        ctx.written.seen(&key);
    }
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
    // What the write memo keeps of it (its last status write is kept for good, as for a
    // ClientCredential, whose deletion forgets it the same way).
    base.written.forget(&Written::Status(ccc.metadata.uid.clone().unwrap_or_default()));
    base.written.forget(&Written::Secret(ccc.state_ref()));
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

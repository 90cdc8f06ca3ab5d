//! The target Secret: what workloads mount. Built purely from the spec and the stored token,
//! so it can be restored at any time without a token request.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::labels;
use super::managed::CachedSecret;
use super::pipeline::Error;
use super::state::{StoredToken, seconds};
use crate::api::{ClientCredential, DeletionPolicy, TargetSecret};
use crate::render::RenderError;

/// The target Secret's name: spec.target.name, or the ClientCredential's own name.
pub fn name(cc: &ClientCredential) -> String {
    cc.spec.target.name.clone().unwrap_or_else(|| cc.metadata.name.clone().unwrap_or_default())
}

/// Who an existing Secret at the target's name belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Managed by tokensync for this ClientCredential.
    Ours,
    /// Not managed by tokensync: never touched.
    Foreign,
    /// Managed by tokensync for another ClientCredential.
    OtherCredential(String),
}

pub fn ownership(secret: &Secret, credential: &str) -> Ownership {
    let labels = secret.metadata.labels.as_ref();
    ownership_by_labels(|key| labels.and_then(|l| l.get(key)).map(String::as_str), credential)
}

/// [`ownership`] of a cached Secret.
pub fn cached_ownership(secret: &CachedSecret, credential: &str) -> Ownership {
    ownership_by_labels(|key| secret.label(key), credential)
}

fn ownership_by_labels<'a>(label: impl Fn(&str) -> Option<&'a str>, credential: &str) -> Ownership {
    if label(labels::MANAGED_BY) != Some(labels::MANAGED_BY_VALUE) || label(labels::ROLE) != Some(labels::ROLE_TARGET) {
        return Ownership::Foreign;
    }
    match label(labels::CREDENTIAL) {
        Some(owner) if owner == credential => Ownership::Ours,
        Some(owner) => Ownership::OtherCredential(owner.to_owned()),
        None => Ownership::Foreign,
    }
}

/// The target Secret for `stored`, as tokensync applies it.
pub fn desired(cc: &ClientCredential, stored: &StoredToken) -> Result<Secret, RenderError> {
    let target = &cc.spec.target;
    let mut data = crate::token_state::render_target(target.template.as_ref(), stored)?;
    let certificate = cc.spec.tls.as_ref().and_then(|t| t.client_certificate_secret_ref.as_ref());
    if let (Some(key), Some(certificate)) = (&target.certificate_secret_name_key, certificate) {
        data.insert(key.clone(), certificate.name.clone().into_bytes());
    }
    let credential = cc.metadata.name.clone().unwrap_or_default();
    let mut secret = secret_for(target, (labels::CREDENTIAL, &credential), stored, data);
    secret.metadata.name = Some(name(cc));
    secret.metadata.namespace = cc.metadata.namespace.clone();
    secret.metadata.owner_references = match target.deletion_policy {
        DeletionPolicy::Delete => cc.controller_owner_ref(&()).map(|r| vec![r]),
        DeletionPolicy::Retain => None,
    };
    Ok(secret)
}

/// A target Secret with `data` (rendered from `stored`), the spec's type, labels and
/// annotations, and tokensync's own: `owner` is the label naming the resource it belongs
/// to. The caller names it and sets its owner references.
pub fn secret_for(
    target: &TargetSecret,
    owner: (&str, &str),
    stored: &StoredToken,
    data: BTreeMap<String, Vec<u8>>,
) -> Secret {
    let mut labels_map = target.labels.clone();
    labels_map.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    labels_map.insert(owner.0.into(), owner.1.into());
    labels_map.insert(labels::ROLE.into(), labels::ROLE_TARGET.into());
    let mut annotations = target.annotations.clone();
    annotations.insert(labels::EXPIRES_AT.into(), seconds(stored.expires_at));
    annotations.insert(labels::ISSUED_AT.into(), seconds(stored.issued_at));
    Secret {
        metadata: ObjectMeta { labels: Some(labels_map), annotations: Some(annotations), ..Default::default() },
        type_: Some(target.type_.clone().unwrap_or_else(|| "Opaque".into())),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    }
}

/// Whether `actual` already is what writing `desired` would make it: same data (exactly: a
/// key someone added is removed by the next write, see `reconcile::apply_target`), type,
/// owner references, and every desired label and annotation present. Skipping identical
/// writes keeps routine reconciles free of API writes.
pub fn up_to_date(actual: &CachedSecret, desired: &Secret) -> bool {
    let desired_owners: Vec<(String, bool)> =
        desired.owner_references().iter().map(|o| (o.uid.clone(), o.controller == Some(true))).collect();
    actual.data_is(desired.data.as_ref())
        && actual.type_ == desired.type_.as_deref().unwrap_or("Opaque")
        && desired.labels().iter().all(|(k, v)| actual.label(k) == Some(v.as_str()))
        && desired.annotations().iter().all(|(k, v)| actual.annotation(k) == Some(v.as_str()))
        && *actual.owners == desired_owners
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

//! The state Secret: what tokensync knows about the token it published, kept in the cluster
//! (not in memory) so that restarts, resyncs and leader changes never cause a token request.
//!
//! It holds the raw token (so the target Secret can be re-rendered without a request when
//! it is deleted, edited or its template changes), the refresh token tokensync holds, and
//! fingerprints of the inputs the token was made from. It is written BEFORE the target
//! Secret, so a crash between the two writes never loses a rotated refresh token.
//!
//! What is stored ([`StoredToken`]) and the fingerprints are shared with the agent and live
//! in the Kubernetes-free [`crate::token_state`]; this module maps them onto a Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::labels;
use super::managed::CachedSecret;
use super::pipeline::Error;
use crate::api::ClientCredential;

pub use crate::token_state::{StoredToken, bootstrap_fingerprint, inputs_fingerprint, seconds};

/// Reads a state Secret; None when it is missing or unreadable (a hand-edited state Secret
/// is treated as no state: the next reconcile requests a token and rewrites it).
pub fn read(secret: &Secret) -> Option<StoredToken> {
    let data = secret.data.as_ref()?;
    let annotations = secret.metadata.annotations.as_ref()?;
    let text = |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok());
    let time = |key: &str| annotations.get(key)?.parse::<Timestamp>().ok();
    Some(StoredToken {
        access_token: text("access_token").filter(|t| !t.is_empty())?.into(),
        token_type: text("token_type").unwrap_or_else(|| "Bearer".into()),
        scope: text("scope").filter(|s| !s.is_empty()),
        issued_at: time(labels::ISSUED_AT)?,
        expires_at: time(labels::EXPIRES_AT)?,
        refresh_token: text("refresh_token").filter(|t| !t.is_empty()).map(SecretString::from),
        inputs: annotations.get(labels::INPUTS)?.clone(),
        bootstrap: annotations.get(labels::BOOTSTRAP).cloned(),
        renewal_request: annotations.get(labels::RENEWAL_REQUEST).cloned(),
        bound_certificate: annotations.get(labels::BOUND_CERTIFICATE).cloned(),
    })
}

/// [`read`] of a cached state Secret.
pub fn read_cached(secret: &CachedSecret) -> Option<StoredToken> {
    read(&secret.to_secret())
}

/// The state Secret a write replaces, as the decision to write saw it: every write of a
/// state Secret is conditional on it, so that a replica that no longer leads (its write
/// delivered late by the network) cannot overwrite the token, and the refresh chain, that
/// its successor stored since (issue 26).
#[derive(Debug, Clone, Default)]
pub struct Replaced {
    /// Its resourceVersion; None when there was no state Secret.
    pub version: Option<String>,
    /// The token it held; None when it held none (or none readable).
    pub token: Option<StoredToken>,
}

impl Replaced {
    /// The state Secret `secret` (None: there is none).
    pub fn of(secret: Option<&Secret>) -> Replaced {
        Replaced { version: secret.and_then(|s| s.metadata.resource_version.clone()), token: secret.and_then(read) }
    }
}

/// Whether `a` and `b` are the same stored token: everything a state Secret keeps of them.
pub fn same_token(a: Option<&StoredToken>, b: Option<&StoredToken>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => secret_for(a) == secret_for(b),
        _ => false,
    }
}

/// The state Secret to apply for `stored`. Always owned by the ClientCredential (it is
/// useless without it), whatever the target's deletion policy.
pub fn desired(cc: &ClientCredential, stored: &StoredToken) -> Secret {
    let name = cc.metadata.name.clone().unwrap_or_default();
    let mut secret = secret_for(stored);
    secret.metadata.name = Some(labels::state_secret_name(&name));
    secret.metadata.namespace = cc.metadata.namespace.clone();
    secret.metadata.labels = Some(BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        (labels::CREDENTIAL.to_owned(), name),
        (labels::ROLE.to_owned(), labels::ROLE_STATE.to_owned()),
    ]));
    secret.metadata.owner_references = cc.controller_owner_ref(&()).map(|r| vec![r]);
    secret
}

/// The data and annotations of a state Secret for `stored`; the caller names, labels and
/// owns it.
pub fn secret_for(stored: &StoredToken) -> Secret {
    let mut data = BTreeMap::from([
        ("access_token".to_owned(), ByteString(stored.access_token.expose_secret().as_bytes().to_vec())),
        ("token_type".to_owned(), ByteString(stored.token_type.clone().into_bytes())),
    ]);
    if let Some(scope) = &stored.scope {
        data.insert("scope".into(), ByteString(scope.clone().into_bytes()));
    }
    if let Some(rt) = &stored.refresh_token {
        data.insert("refresh_token".into(), ByteString(rt.expose_secret().as_bytes().to_vec()));
    }
    let mut annotations = BTreeMap::from([
        (labels::ISSUED_AT.to_owned(), seconds(stored.issued_at)),
        (labels::EXPIRES_AT.to_owned(), seconds(stored.expires_at)),
        (labels::INPUTS.to_owned(), stored.inputs.clone()),
    ]);
    if let Some(b) = &stored.bootstrap {
        annotations.insert(labels::BOOTSTRAP.into(), b.clone());
    }
    if let Some(r) = &stored.renewal_request {
        annotations.insert(labels::RENEWAL_REQUEST.into(), r.clone());
    }
    if let Some(x5t) = &stored.bound_certificate {
        annotations.insert(labels::BOUND_CERTIFICATE.into(), x5t.clone());
    }
    Secret {
        metadata: ObjectMeta { annotations: Some(annotations), ..Default::default() },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
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
    let ours = read(desired);
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
                let token = current.as_ref().and_then(read);
                let free = token.is_none()
                    || same_token(token.as_ref(), replaced.token.as_ref())
                    || same_token(token.as_ref(), ours.as_ref());
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
    Ok(super::target::apply(secrets, &secret).await?.resource_version())
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cc() -> ClientCredential {
        serde_json::from_value(json!({
            "apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1"},
            "spec": {"tokenEndpoint": "https://auth.example/token", "credentialsRef": {"name": "demo-client"}}
        }))
        .unwrap()
    }

    fn stored() -> StoredToken {
        StoredToken {
            bound_certificate: None,
            access_token: "at".to_owned().into(),
            token_type: "Bearer".into(),
            scope: Some("read".into()),
            issued_at: "2026-11-22T10:00:00.7Z".parse().unwrap(),
            expires_at: "2026-11-22T11:00:00Z".parse().unwrap(),
            refresh_token: Some("rt".to_owned().into()),
            inputs: "abc".into(),
            bootstrap: Some("b".into()),
            renewal_request: Some("now".into()),
        }
    }

    #[test]
    fn state_secret_round_trips() {
        let secret = desired(&cc(), &stored());
        assert_eq!(secret.metadata.name.as_deref(), Some("demo.tokensync-state"));
        assert_eq!(secret.metadata.owner_references.as_ref().unwrap()[0].controller, Some(true));
        let back = read(&secret).unwrap();
        assert_eq!(back.access_token.expose_secret(), "at");
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(back.issued_at.as_second(), stored().issued_at.as_second());
        assert_eq!((back.inputs.as_str(), back.renewal_request.as_deref()), ("abc", Some("now")));
    }

    #[test]
    fn the_same_token_is_everything_the_state_secret_keeps_of_it() {
        assert!(same_token(Some(&stored()), Some(&stored())) && same_token(None, None));
        assert!(!same_token(Some(&stored()), None) && !same_token(None, Some(&stored())));
        let rotated = StoredToken { refresh_token: Some("rt-2".to_owned().into()), ..stored() };
        assert!(!same_token(Some(&stored()), Some(&rotated)), "another refresh token: another chain");
        let answered = StoredToken { renewal_request: None, ..stored() };
        assert!(!same_token(Some(&stored()), Some(&answered)));
        let mut secret = desired(&cc(), &stored());
        secret.metadata.resource_version = Some("7".into());
        let replaced = Replaced::of(Some(&secret));
        assert_eq!(replaced.version.as_deref(), Some("7"));
        assert!(same_token(replaced.token.as_ref(), Some(&stored())));
        assert!(Replaced::of(None).version.is_none() && Replaced::of(None).token.is_none());
    }
}

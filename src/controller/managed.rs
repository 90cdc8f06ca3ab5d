//! The cache of the Secrets tokensync manages (state Secrets, targets, cluster copies), kept
//! small: what reconciles read of each, and no more.
//!
//! kube's reflector would keep every Secret whole: its ObjectMeta with every field, maps of
//! labels, annotations and data, twice per credential. Reconciles read only a few labels and
//! annotations, the owner references, the type, the data of state Secrets (the stored token,
//! which renewals and restores need) and, of targets and copies, only whether their data is
//! exactly what tokensync would render: a digest of the data answers that as well as the
//! data itself. So each Secret is cached as a [`CachedSecret`], built from the full object
//! as the watch delivers it, which is then dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::watcher;
use sha2::{Digest, Sha256};

use super::labels;
use super::sources::SecretRef;

/// A managed Secret as the cache keeps it. Deliberately not `Debug`: a state Secret's data is
/// the token and the refresh token.
#[derive(Clone)]
pub struct CachedSecret {
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// The Secret's type ("Opaque" when unset).
    pub type_: String,
    labels: Box<[(String, String)]>,
    annotations: Box<[(String, String)]>,
    /// (uid, controller) of each ownerReference.
    pub owners: Box<[(String, bool)]>,
    pub data: CachedData,
}

/// What the cache keeps of a Secret's data.
#[derive(Clone)]
pub enum CachedData {
    /// A state Secret's data, whole: reconciles read the stored token from it.
    Whole(BTreeMap<String, ByteString>),
    /// Any other Secret's: a digest, enough to tell whether it is exactly what would be written.
    Digest([u8; 32]),
}

impl CachedSecret {
    pub fn from_secret(secret: &Secret) -> CachedSecret {
        let pairs = |m: &Option<BTreeMap<String, String>>| -> Box<[(String, String)]> {
            m.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let is_state = secret.labels().get(labels::ROLE).map(String::as_str) == Some(labels::ROLE_STATE);
        let data = secret.data.as_ref();
        CachedSecret {
            name: secret.name_any(),
            namespace: secret.namespace().unwrap_or_default(),
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
            type_: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
            labels: pairs(&secret.metadata.labels),
            // kubectl's copy of the whole object is never read (see `super::slim`).
            annotations: pairs(&secret.metadata.annotations)
                .into_iter()
                .filter(|(k, _)| k != super::LAST_APPLIED)
                .collect(),
            owners: secret.owner_references().iter().map(|o| (o.uid.clone(), o.controller == Some(true))).collect(),
            data: match is_state {
                true => CachedData::Whole(data.cloned().unwrap_or_default()),
                false => CachedData::Digest(data_digest(data)),
            },
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether the data is exactly `data`.
    pub fn data_is(&self, data: Option<&BTreeMap<String, ByteString>>) -> bool {
        match &self.data {
            CachedData::Whole(whole) => whole == data.unwrap_or(&BTreeMap::new()),
            CachedData::Digest(digest) => *digest == data_digest(data),
        }
    }

    /// The Secret as far as the cache knows it: metadata that reconciles read and, for a
    /// state Secret, its data. What [`super::state::read`] reads.
    pub fn to_secret(&self) -> Secret {
        let map = |pairs: &[(String, String)]| Some(pairs.iter().cloned().collect::<BTreeMap<_, _>>());
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: self.uid.clone(),
                resource_version: self.resource_version.clone(),
                labels: map(&self.labels),
                annotations: map(&self.annotations),
                ..Default::default()
            },
            type_: Some(self.type_.clone()),
            data: match &self.data {
                CachedData::Whole(whole) => Some(whole.clone()),
                CachedData::Digest(_) => None,
            },
            ..Default::default()
        }
    }
}

/// A digest of a Secret's data, the same for equal maps (keys in order, lengths prefixed so
/// that no two different maps hash the same input).
pub fn data_digest(data: Option<&BTreeMap<String, ByteString>>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (key, value) in data.into_iter().flatten() {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.0.len() as u64).to_be_bytes());
        hasher.update(&value.0);
    }
    hasher.finalize().into()
}

/// The managed Secrets, by namespace and name, fed by a watch ([`ManagedCache::apply`]). Like
/// kube's reflector, a (re)list is collected aside and replaces the contents when complete, so
/// that readers never see a half-listed cache and Secrets deleted during a watch outage go.
#[derive(Default, Clone)]
pub struct ManagedCache(Arc<RwLock<Inner>>);

#[derive(Default)]
struct Inner {
    secrets: HashMap<SecretRef, Arc<CachedSecret>>,
    /// The (re)list in progress.
    listing: Option<HashMap<SecretRef, Arc<CachedSecret>>>,
}

impl ManagedCache {
    /// Takes in one watch event.
    pub fn apply(&self, event: &watcher::Event<Secret>) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        let key = |s: &Secret| SecretRef::new(&s.namespace().unwrap_or_default(), &s.name_any());
        match event {
            watcher::Event::Apply(s) => {
                inner.secrets.insert(key(s), Arc::new(CachedSecret::from_secret(s)));
            }
            watcher::Event::Delete(s) => {
                inner.secrets.remove(&key(s));
            }
            watcher::Event::Init => inner.listing = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                let cached = Arc::new(CachedSecret::from_secret(s));
                inner.listing.get_or_insert_with(HashMap::new).insert(key(s), cached);
            }
            watcher::Event::InitDone => {
                if let Some(mut listed) = inner.listing.take() {
                    listed.shrink_to_fit();
                    inner.secrets = listed;
                }
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedSecret>> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.secrets.get(&SecretRef::new(namespace, name)).cloned()
    }

    /// Every cached Secret that `matches`.
    pub fn find(&self, matches: impl Fn(&CachedSecret) -> bool) -> Vec<Arc<CachedSecret>> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.secrets.values().filter(|s| matches(s)).cloned().collect()
    }

    /// How many Secrets are cached.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn secret(name: &str, role: &str, data: serde_json::Value) -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "7", "uid": "u",
                         "labels": {labels::ROLE: role, "team": "a"},
                         "annotations": {super::super::LAST_APPLIED: "{}", "note": "hi"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "o", "controller": true}]},
            "type": "Opaque",
            "data": data,
        }))
        .unwrap()
    }

    #[test]
    fn a_target_is_cached_with_a_digest_of_its_data_and_a_state_secret_whole() {
        let target = secret("t", labels::ROLE_TARGET, json!({"access_token": "dG9rZW4="}));
        let cached = CachedSecret::from_secret(&target);
        assert!(matches!(cached.data, CachedData::Digest(_)));
        assert!(cached.data_is(target.data.as_ref()));
        let other: BTreeMap<String, ByteString> = [("access_token".to_owned(), ByteString(b"other".to_vec()))].into();
        assert!(!cached.data_is(Some(&other)));
        let more = [("access_token".to_owned(), ByteString(b"token".to_vec())), ("x".to_owned(), ByteString(vec![]))];
        assert!(!cached.data_is(Some(&more.into())), "a key added is a difference, even an empty one");
        assert_eq!((cached.label("team"), cached.annotation("note")), (Some("a"), Some("hi")));
        assert_eq!(cached.annotation(super::super::LAST_APPLIED), None);
        assert_eq!(&*cached.owners, &[("o".to_owned(), true)]);

        let state = secret("s", labels::ROLE_STATE, json!({"access_token": "dG9rZW4="}));
        let cached = CachedSecret::from_secret(&state);
        assert!(matches!(&cached.data, CachedData::Whole(d) if d["access_token"].0 == b"token"));
        assert_eq!(cached.to_secret().data, state.data);
    }

    #[test]
    fn digests_tell_key_and_value_boundaries_apart() {
        let a: BTreeMap<String, ByteString> = [("ab".to_owned(), ByteString(b"c".to_vec()))].into();
        let b: BTreeMap<String, ByteString> = [("a".to_owned(), ByteString(b"bc".to_vec()))].into();
        assert_ne!(data_digest(Some(&a)), data_digest(Some(&b)));
        assert_eq!(data_digest(None), data_digest(Some(&BTreeMap::new())));
    }

    #[test]
    fn a_relist_replaces_the_contents_when_complete() {
        let cache = ManagedCache::default();
        let (one, two) = (secret("one", "target", json!({})), secret("two", "target", json!({})));
        cache.apply(&watcher::Event::Apply(one.clone()));
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(two));
        assert!(cache.get("ns", "one").is_some() && cache.get("ns", "two").is_none(), "not before the list is done");
        cache.apply(&watcher::Event::InitDone);
        assert!(cache.get("ns", "one").is_none(), "gone while unwatched");
        assert!(cache.get("ns", "two").is_some());
        cache.apply(&watcher::Event::Delete(secret("two", "target", json!({}))));
        assert!(cache.is_empty());
    }
}

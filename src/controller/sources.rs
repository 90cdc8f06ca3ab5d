//! Source Secrets: which credentials read which Secret, and what was last read from it.
//!
//! The metadata-only watch of all Secrets says which Secret changed and at which
//! resourceVersion. [`SourceIndex`] maps a Secret to the ClientCredentials that read it in
//! O(1), however many unrelated Secrets there are. [`SourceCache`] keeps what a reconcile last
//! read from each source Secret, with its resourceVersion, so that a source Secret is read from
//! the API only when the watch saw it move since: most reconciles are caused by tokensync's own
//! writes, which never change a source Secret.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use crate::api::ClientCredential;
use crate::api::engine::{self, SecretData};

/// A Secret, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl SecretRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        SecretRef { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

/// What was last read from source Secrets, and which version the watch saw last.
/// Deliberately not `Debug`: it holds client secrets.
#[derive(Default)]
pub struct SourceCache {
    entries: Mutex<HashMap<SecretRef, Entry>>,
}

#[derive(Default)]
struct Entry {
    /// The resourceVersion the metadata watch last saw (None: not seen since it was read).
    seen: Option<String>,
    /// The last read: the version it stands for, and the data (None: the Secret did not
    /// exist). For a Secret that did not exist, the version is what the watch had seen when
    /// the read started, so a creation the watch reports later is a change.
    read: Option<(Option<String>, Option<SecretData>)>,
}

impl Entry {
    fn current(&self) -> Option<Option<SecretData>> {
        let (version, data) = self.read.as_ref()?;
        (self.seen.is_none() || self.seen == *version).then(|| data.clone())
    }
}

impl SourceCache {
    /// Records the resourceVersion the watch saw for a source Secret (a deleted Secret is seen
    /// at the version of its deletion, so it counts as a change too).
    pub fn saw(&self, secret: SecretRef, resource_version: Option<String>) {
        self.lock().entry(secret).or_default().seen = resource_version;
    }

    /// The data of `secret` (None: it does not exist): as last read when the watch has seen no
    /// other version since, otherwise read from the API server now.
    pub async fn read(&self, api: &Api<Secret>, secret: &SecretRef) -> Result<Option<SecretData>, kube::Error> {
        let seen_before = {
            let entries = self.lock();
            let entry = entries.get(secret);
            if let Some(data) = entry.and_then(Entry::current) {
                return Ok(data);
            }
            entry.and_then(|e| e.seen.clone())
        };
        let fetched = api.get_opt(&secret.name).await?;
        let read = match fetched {
            Some(s) => (s.resource_version(), Some(s.data.unwrap_or_default())),
            None => (seen_before, None),
        };
        let data = read.1.clone();
        self.lock().entry(secret.clone()).or_default().read = Some(read);
        Ok(data)
    }

    /// Drops what is kept of a Secret no credential reads any more.
    pub fn forget(&self, secret: &SecretRef) {
        self.lock().remove(secret);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SecretRef, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type CredentialRef = ObjectRef<ClientCredential>;

/// A ClientCredential by (namespace, name).
type CredentialKey = (String, String);

/// Which ClientCredentials read which Secret, kept up to date from the ClientCredential watch.
/// A ClientCredential reads Secrets of its own namespace only, so readers are kept by name;
/// plain vectors, as a Secret almost always has one reader and a credential one or two Secrets.
#[derive(Clone)]
pub struct SourceIndex {
    /// Secret → the names of the credentials (in its namespace) that read it.
    by_secret: Arc<RwLock<HashMap<SecretRef, Vec<String>>>>,
    /// (namespace, credential name) → the names of the Secrets it reads.
    by_credential: Arc<RwLock<HashMap<CredentialKey, Box<[String]>>>>,
    /// Secrets nobody reads any more are dropped from it.
    cache: Arc<SourceCache>,
}

impl SourceIndex {
    pub fn new(cache: Arc<SourceCache>) -> Self {
        SourceIndex { by_secret: Default::default(), by_credential: Default::default(), cache }
    }

    pub fn update(&self, cc: &ClientCredential) {
        let Some(ns) = cc.namespace() else { return };
        let name = cc.name_any();
        let wanted: BTreeSet<String> = if cc.metadata.deletion_timestamp.is_some() {
            BTreeSet::new()
        } else {
            engine::referenced_secrets(&cc.spec).into_iter().collect()
        };
        let key: CredentialKey = (ns.clone(), name.clone());
        let mut by_credential = self.by_credential.write().unwrap_or_else(|e| e.into_inner());
        let mut by_secret = self.by_secret.write().unwrap_or_else(|e| e.into_inner());
        let old = by_credential.remove(&key).unwrap_or_default();
        for gone in old.iter().filter(|s| !wanted.contains(*s)) {
            let secret = SecretRef::new(&ns, gone);
            if let Some(readers) = by_secret.get_mut(&secret) {
                readers.retain(|r| *r != name);
                if readers.is_empty() {
                    by_secret.remove(&secret);
                    self.cache.forget(&secret);
                }
            }
        }
        for secret in &wanted {
            let readers = by_secret.entry(SecretRef::new(&ns, secret)).or_default();
            if !readers.contains(&name) {
                readers.push(name.clone());
                readers.shrink_to_fit();
            }
        }
        if !wanted.is_empty() {
            by_credential.insert(key, wanted.into_iter().collect());
        }
    }

    /// The credentials that read `secret`; a Secret some credential reads has its version
    /// recorded in the cache.
    pub fn readers_of(&self, secret: SecretRef, resource_version: Option<String>) -> Vec<CredentialRef> {
        let readers: Vec<CredentialRef> = {
            let by_secret = self.by_secret.read().unwrap_or_else(|e| e.into_inner());
            let names = by_secret.get(&secret).map(Vec::as_slice).unwrap_or_default();
            names.iter().map(|name| ObjectRef::new(name).within(&secret.namespace)).collect()
        };
        if !readers.is_empty() {
            self.cache.saw(secret, resource_version);
        }
        readers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_stands_until_the_watch_sees_another_version() {
        let cache = SourceCache::default();
        let s = SecretRef::new("ns", "src");
        assert!(cache.lock().get(&s).and_then(Entry::current).is_none(), "never read");
        let data: SecretData = [("k".to_owned(), k8s_openapi::ByteString(b"v".to_vec()))].into();
        cache.lock().entry(s.clone()).or_default().read = Some((Some("5".into()), Some(data)));
        assert!(cache.lock().get(&s).and_then(Entry::current).is_some(), "read, nothing seen since");
        cache.saw(s.clone(), Some("5".into()));
        assert!(cache.lock().get(&s).and_then(Entry::current).is_some(), "the watch caught up with the read");
        cache.saw(s.clone(), Some("7".into()));
        assert!(cache.lock().get(&s).and_then(Entry::current).is_none(), "changed since the read");
        // Read as missing while the watch had seen version 7 (its deletion): it stays missing
        // until the watch sees something else (a creation).
        cache.lock().entry(s.clone()).or_default().read = Some((Some("7".into()), None));
        assert_eq!(cache.lock().get(&s).and_then(Entry::current).map(|d| d.is_none()), Some(true));
        cache.saw(s.clone(), Some("9".into()));
        assert!(cache.lock().get(&s).and_then(Entry::current).is_none(), "created again");
        cache.forget(&s);
        assert!(cache.lock().get(&s).is_none());
    }

    fn reading(name: &str, secret: &str) -> ClientCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensync.io/v1alpha1", "kind": "ClientCredential",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"tokenEndpoint": "https://auth.example/token", "credentialsRef": {"name": secret}}
        }))
        .unwrap()
    }

    #[test]
    fn the_index_follows_what_each_credential_reads() {
        let index = SourceIndex::new(Default::default());
        let readers = |secret: &str| -> Vec<String> {
            let mut names: Vec<String> =
                index.readers_of(SecretRef::new("ns", secret), None).into_iter().map(|r| r.name).collect();
            names.sort();
            names
        };
        index.update(&reading("one", "shared"));
        index.update(&reading("two", "shared"));
        index.update(&reading("two", "shared"));
        assert_eq!(readers("shared"), ["one", "two"], "each reader once");
        index.update(&reading("two", "own"));
        assert_eq!((readers("shared"), readers("own")), (vec!["one".to_owned()], vec!["two".to_owned()]));
        let mut gone = reading("one", "shared");
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        index.update(&gone);
        assert!(readers("shared").is_empty());
        assert!(index.readers_of(SecretRef::new("other", "own"), None).is_empty(), "namespaces apart");
    }
}

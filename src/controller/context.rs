//! What every reconcile shares: API client, caches, the token engine, policies, metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::events::Recorder;
use super::managed::ManagedCache;
use super::sources::{SecretRef, SourceCache};
use super::state::{Replaced, StoredToken};
use crate::metrics::Metrics;
use crate::oauth::TokenClient;
use crate::schedule::{BackoffPolicy, RenewalPolicy};

/// Operator-wide policy, from the controller's flags.
#[derive(Debug, Clone)]
pub struct Policy {
    pub renewal: RenewalPolicy,
    pub backoff: BackoffPolicy,
    /// How often a credential that is waiting on a user's fix (bad spec, missing Secret) is
    /// looked at again even without a change event.
    pub recheck: Duration,
    /// Audiences the cluster's API server accepts: ServiceAccount tokens are never
    /// requested for them ([`super::service_account::api_server_audiences`]).
    pub kubernetes_audiences: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            renewal: RenewalPolicy::default(),
            backoff: BackoffPolicy::default(),
            recheck: Duration::from_secs(600),
            kubernetes_audiences: Vec::new(),
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    /// The Secrets tokensync manages (target and state), from a label-selected watch.
    pub managed: ManagedCache,
    /// What was last read from source Secrets, by resourceVersion.
    pub sources: Arc<SourceCache>,
    /// Turns true once the caches reconciles read have synced (see `controller::Synced`).
    pub synced: tokio::sync::watch::Receiver<bool>,
    pub engine: TokenClient,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    /// Tokens acquired whose state Secret write failed (API errors, conflicts, a lost
    /// response), by (namespace, name). The next reconcile writes them before anything else
    /// instead of requesting again: a second request would be a duplicate and, with rotating
    /// refresh tokens, would present a refresh token the server already replaced. Each with
    /// the state it was requested from, which its write replaces.
    pub unsaved: Mutex<HashMap<(String, String), (StoredToken, Replaced)>>,
    /// What this controller last wrote, so reconciles triggered by its own writes do not
    /// write the same thing again while the cache still shows the object as it was before.
    pub written: WriteMemo,
}

/// An object tokensync writes, as the [`WriteMemo`] knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Written {
    /// A Secret (target, state or copy).
    Secret(SecretRef),
    /// The status of the object with this uid.
    Status(String),
}

/// Remembers, per object, the resourceVersion a write replaced, the one it produced, and a
/// hash of what was written. A cached object still at the replaced resourceVersion is the
/// cache lagging behind our own write, not a change by someone else: any other change gives
/// a new resourceVersion. A cached object at the produced resourceVersion is exactly what we
/// wrote: the cache is current.
#[derive(Default)]
pub struct WriteMemo {
    writes: Mutex<HashMap<Written, Write>>,
    /// Writes under way, and the versions the watch delivered of their objects meanwhile: a
    /// watch can deliver our write before its response arrives, and that event must still
    /// count as the cache showing it ([`Self::begin`]).
    in_flight: Mutex<HashMap<Written, Vec<String>>>,
}

struct Write {
    replaced: Option<String>,
    produced: Option<String>,
    content: [u8; 32],
    /// The cache has shown the object since this write.
    seen: bool,
}

impl WriteMemo {
    pub fn remember(
        &self,
        key: Written,
        replaced: Option<&str>,
        produced: Option<String>,
        written: &impl serde::Serialize,
    ) {
        let delivered = self.flights().remove(&key).unwrap_or_default();
        let seen = produced.as_ref().is_some_and(|p| delivered.contains(p));
        let entry = Write { replaced: replaced.map(str::to_owned), produced, content: hash(written), seen };
        self.lock().insert(key, entry);
    }

    /// A write of `key` is about to be sent: versions of it the watch delivers before
    /// [`Self::remember`] are kept, so that a watch faster than the write's response still
    /// counts as having shown it.
    pub fn begin(&self, key: &Written) {
        self.flights().insert(key.clone(), Vec::new());
    }

    /// True when `cached_version` is the version our last write of `key` replaced and we
    /// would write the same again.
    pub fn is_lagging_echo(
        &self,
        key: &Written,
        cached_version: Option<&str>,
        would_write: &impl serde::Serialize,
    ) -> bool {
        self.lock().get(key).is_some_and(|w| {
            cached_version.is_some() && w.replaced.as_deref() == cached_version && w.content == hash(would_write)
        })
    }

    /// True when the cache has not shown `key` since our last write of it, which created it
    /// with the content we would write now: the cache has not caught up with our own create.
    /// (Once the cache has shown it, its absence is a deletion: a relist after a watch outage
    /// drops deleted objects from the cache without any event.)
    pub fn is_unseen_create(&self, key: &Written, would_write: &impl serde::Serialize) -> bool {
        self.lock().get(key).is_some_and(|w| !w.seen && w.replaced.is_none() && w.content == hash(would_write))
    }

    /// The cache now shows `key`.
    pub fn seen(&self, key: &Written) {
        if let Some(w) = self.lock().get_mut(key) {
            w.seen = true;
        }
    }

    /// The watch delivered `key` at `version`: once it is the version our last write
    /// produced, the cache has shown that write, and whatever it shows later is newer.
    pub fn observed(&self, key: &Written, version: Option<&str>) {
        if let (Some(delivered), Some(version)) = (self.flights().get_mut(key), version) {
            delivered.push(version.to_owned());
        }
        if let Some(w) = self.lock().get_mut(key)
            && version.is_some()
            && w.produced.as_deref() == version
        {
            w.seen = true;
        }
    }

    /// True when this process wrote `key`, and the watch has not delivered that write yet
    /// ([`Self::observed`]) while the cache shows another version: an older one (the watch
    /// lags, or is down and not relisted yet after an API server outage), or one another
    /// writer made after ours, which cannot be told apart without reading.
    pub fn unseen_write(&self, key: &Written, cached_version: Option<&str>) -> bool {
        self.lock().get(key).is_some_and(|w| !w.seen && w.produced.as_deref() != cached_version)
    }

    /// True when the cache shows `key` at the version our last write of it replaced: the
    /// cache lags behind that write.
    pub fn lags(&self, key: &Written, cached_version: Option<&str>) -> bool {
        self.lock().get(key).is_some_and(|w| cached_version.is_some() && w.replaced.as_deref() == cached_version)
    }

    /// True when this process wrote `key` and the cache does not show the version that write
    /// produced: the cache may still show the object as it was before our write. Without a
    /// remembered write the cache is the truth: it was listed (consistently) after this
    /// replica started leading, and only the leader writes tokensync's Secrets.
    pub fn cache_behind(&self, key: &Written, cached_version: Option<&str>) -> bool {
        self.lock().get(key).is_some_and(|w| w.produced.is_none() || w.produced.as_deref() != cached_version)
    }

    /// True when `version` is the resourceVersion our last write of `key` produced: the
    /// object is exactly what we wrote.
    pub fn is_own_write(&self, key: &Written, version: Option<&str>) -> bool {
        self.lock().get(key).is_some_and(|w| version.is_some() && w.produced.as_deref() == version)
    }

    /// [`Self::is_own_write`] for a Secret the cache now shows, and the memory of that write
    /// dropped when it is: once the cache shows our write, it is the truth about the Secret
    /// (every later version is newer), and reconciles look the Secret up in the cache when they
    /// decide, so nothing needs remembering. Without this the memo kept two entries per
    /// credential for good. Not for statuses: a reconcile decides from the object it was
    /// started with, which can be the version our write replaced even after the watch
    /// delivered the write ([`Self::lags`] must still tell).
    pub fn take_own_write(&self, key: &Written, version: Option<&str>) -> bool {
        let mut writes = self.lock();
        let own = writes.get(key).is_some_and(|w| version.is_some() && w.produced.as_deref() == version);
        if own {
            writes.remove(key);
        }
        own
    }

    /// How many writes are remembered (their objects not shown by the cache yet, or written
    /// again since).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this process wrote `key` and has not seen it deleted since.
    pub fn wrote(&self, key: &Written) -> bool {
        self.lock().contains_key(key)
    }

    pub fn forget(&self, key: &Written) {
        self.lock().remove(key);
        self.flights().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Written, Write>> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<Written, Vec<String>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn hash(value: &impl serde::Serialize) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(serde_json::to_vec(value).unwrap_or_default()).into()
}

impl Context {
    /// Waits until the cache of managed Secrets has synced (at once, once it has). Reconciles
    /// start as soon as ClientCredentials arrive; before the managed Secrets are listed, every
    /// target and state Secret would look missing and be written again for nothing (or, for a
    /// state Secret, make a token look due).
    pub async fn wait_for_caches(&self) {
        let _ = self.synced.clone().wait_for(|synced| *synced).await;
    }

    pub fn take_unsaved(&self, namespace: &str, name: &str) -> Option<(StoredToken, Replaced)> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn keep_unsaved(&self, namespace: &str, name: &str, token: StoredToken, replaced: Replaced) {
        let key = (namespace.to_owned(), name.to_owned());
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (token, replaced));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_version_our_write_replaced_is_a_lagging_echo() {
        let memo = WriteMemo::default();
        let key = Written::Secret(SecretRef::new("ns", "t"));
        memo.remember(key.clone(), Some("10"), Some("11".into()), &"new content");
        assert!(memo.is_lagging_echo(&key, Some("10"), &"new content"), "the cache still shows v10");
        assert!(!memo.is_lagging_echo(&key, Some("12"), &"new content"), "someone changed it since");
        assert!(!memo.is_lagging_echo(&key, None, &"new content"), "deleted: restore it");
        assert!(!memo.is_lagging_echo(&key, Some("10"), &"other content"), "a different write is due");
        assert!(memo.lags(&key, Some("10")) && !memo.lags(&key, Some("11")));
        assert!(memo.wrote(&key));
        assert!(memo.cache_behind(&key, Some("10")) && memo.cache_behind(&key, None));
        assert!(!memo.cache_behind(&key, Some("11")), "the cache shows our write");
        assert!(memo.is_own_write(&key, Some("11")) && !memo.is_own_write(&key, Some("12")));
        assert!(!memo.is_own_write(&key, None), "a deletion is never our own write");
        assert!(!memo.cache_behind(&Written::Status("never-written".into()), Some("1")), "nothing to be behind");
        assert!(!memo.is_unseen_create(&key, &"new content"), "it replaced a version: not a create");
        let created = Written::Secret(SecretRef::new("ns", "new"));
        memo.remember(created.clone(), None, Some("3".into()), &"content");
        assert!(memo.is_unseen_create(&created, &"content") && !memo.is_unseen_create(&created, &"other"));
        memo.seen(&created);
        assert!(!memo.is_unseen_create(&created, &"content"), "the cache showed it: now missing means deleted");
        memo.forget(&key);
        assert!(!memo.is_lagging_echo(&key, Some("10"), &"new content") && !memo.wrote(&key));
    }

    #[test]
    fn a_write_is_forgotten_once_the_cache_shows_it() {
        let memo = WriteMemo::default();
        let key = Written::Secret(SecretRef::new("ns", "state"));
        memo.remember(key.clone(), None, Some("5".into()), &"state");
        assert!(!memo.take_own_write(&key, Some("4")) && memo.len() == 1, "another version: kept");
        assert!(memo.take_own_write(&key, Some("5")), "our write");
        assert!(memo.is_empty(), "nothing left to remember");
        assert!(!memo.cache_behind(&key, Some("5")) && !memo.cache_behind(&key, Some("6")), "the cache is the truth");
    }

    #[test]
    fn a_write_the_watch_delivered_before_its_response_counts_as_shown() {
        let memo = WriteMemo::default();
        let key = Written::Status("uid".into());
        memo.begin(&key);
        memo.observed(&key, Some("7"));
        memo.remember(key.clone(), Some("6"), Some("7".into()), &"status");
        assert!(!memo.unseen_write(&key, Some("8")), "delivered before the response: a later version is newer");
        let other = Written::Status("other".into());
        memo.begin(&other);
        memo.observed(&other, Some("3"));
        memo.remember(other.clone(), Some("3"), Some("4".into()), &"status");
        assert!(memo.unseen_write(&other, Some("3")), "only the version the write produced counts");
    }
}

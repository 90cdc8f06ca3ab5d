//! What every reconcile shares: API client, caches, the token engine, policies, metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use super::state::StoredToken;
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
    pub managed: Store<Secret>,
    pub engine: TokenClient,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    /// Tokens acquired whose state Secret write failed (API errors, conflicts, a lost
    /// response), by (namespace, name). The next reconcile writes them before anything else
    /// instead of requesting again: a second request would be a duplicate and, with rotating
    /// refresh tokens, would present a refresh token the server already replaced.
    pub unsaved: Mutex<HashMap<(String, String), StoredToken>>,
    /// What this controller last wrote, so reconciles triggered by its own writes do not
    /// write the same thing again while the cache still shows the object as it was before.
    pub written: WriteMemo,
}

/// Remembers, per object, the resourceVersion a write replaced and a hash of what was
/// written. A cached object still at that resourceVersion is the cache lagging behind our own
/// write, not a change by someone else: any other change gives a new resourceVersion.
#[derive(Default)]
pub struct WriteMemo(Mutex<HashMap<String, Written>>);

/// The resourceVersion a write replaced (None: it created the object) and a hash of it.
type Written = (Option<String>, [u8; 32]);

impl WriteMemo {
    pub fn remember(&self, key: &str, replaced_version: Option<&str>, written: &impl serde::Serialize) {
        let entry = (replaced_version.map(str::to_owned), hash(written));
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), entry);
    }

    /// True when `cached_version` is the version our last write of `key` replaced and we
    /// would write the same again.
    pub fn is_lagging_echo(
        &self,
        key: &str,
        cached_version: Option<&str>,
        would_write: &impl serde::Serialize,
    ) -> bool {
        let memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        memo.get(key).is_some_and(|(replaced, h)| {
            cached_version.is_some() && replaced.as_deref() == cached_version && *h == hash(would_write)
        })
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

fn hash(value: &impl serde::Serialize) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(serde_json::to_vec(value).unwrap_or_default()).into()
}

impl Context {
    pub fn take_unsaved(&self, namespace: &str, name: &str) -> Option<StoredToken> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn keep_unsaved(&self, namespace: &str, name: &str, token: StoredToken) {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).insert((namespace.to_owned(), name.to_owned()), token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_version_our_write_replaced_is_a_lagging_echo() {
        let memo = WriteMemo::default();
        memo.remember("secret/ns/t", Some("10"), &"new content");
        assert!(memo.is_lagging_echo("secret/ns/t", Some("10"), &"new content"), "the cache still shows v10");
        assert!(!memo.is_lagging_echo("secret/ns/t", Some("12"), &"new content"), "someone changed it since");
        assert!(!memo.is_lagging_echo("secret/ns/t", None, &"new content"), "deleted: restore it");
        assert!(!memo.is_lagging_echo("secret/ns/t", Some("10"), &"other content"), "a different write is due");
        memo.forget("secret/ns/t");
        assert!(!memo.is_lagging_echo("secret/ns/t", Some("10"), &"new content"));
    }
}

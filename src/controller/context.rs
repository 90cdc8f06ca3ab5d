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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            renewal: RenewalPolicy::default(),
            backoff: BackoffPolicy::default(),
            recheck: Duration::from_secs(600),
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
}

impl Context {
    pub fn take_unsaved(&self, namespace: &str, name: &str) -> Option<StoredToken> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn keep_unsaved(&self, namespace: &str, name: &str, token: StoredToken) {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).insert((namespace.to_owned(), name.to_owned()), token);
    }
}

//! Prometheus metrics. Label cardinality is bounded (result, reason, error kind) except for
//! the per-credential gauges, which have one series per ClientCredential and are removed
//! when it is deleted.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicI64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterNamespaceLabels {
    /// The ClusterClientCredential.
    pub name: String,
    /// selected, synced or failed.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// success or failure
    pub result: String,
    /// The condition reason (TokenIssued for successes).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Labels of `tokensync_kube_requests_total`: never a name or a namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// get, list, watch, create, update, patch, apply, delete, deletecollection.
    pub verb: String,
    /// The plural, with the subresource joined by "/" (`clientcredentials/status`), or
    /// `nonresource` for discovery and other paths that are not resources.
    pub resource: String,
    /// 2xx, 4xx, ... by the answer's status; `error` without an answer, `cancelled` when
    /// given up (the API timeout) before it came.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

/// The `state` label values of `tokensync_cluster_credential_namespaces`.
const CLUSTER_NAMESPACE_STATES: [&str; 3] = ["selected", "synced", "failed"];

/// Every metric tokensync exports.
pub struct Metrics {
    pub registry: Registry,
    pub token_expiry: Family<CredentialLabels, Gauge<i64, AtomicI64>>,
    pub token_renewal: Family<CredentialLabels, Gauge<i64, AtomicI64>>,
    pub token_requests: Family<RequestLabels, Counter>,
    pub token_request_duration: Family<ResultLabels, Histogram>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// 1 while the credential's Ready condition is True, else 0 (the alerts' and the
    /// dashboard's view of the status; the reason stays in the status, not in a label).
    pub credential_ready: Family<CredentialLabels, Gauge<i64, AtomicI64>>,
    /// 1 while the credential's Degraded condition is True (renewal failing), else 0.
    pub credential_degraded: Family<CredentialLabels, Gauge<i64, AtomicI64>>,
    /// Consecutive failed token requests since the last success (status.failedAttempts).
    pub credential_failed_attempts: Family<CredentialLabels, Gauge<i64, AtomicI64>>,
    /// Namespaces of a ClusterClientCredential by state (selected, synced, failed).
    pub cluster_namespaces: Family<ClusterNamespaceLabels, Gauge<i64, AtomicI64>>,
    /// Kubernetes API requests the controller sent, by verb, resource and answer
    /// ([`crate::controller::api_requests`]).
    pub kube_requests: Family<KubeRequestLabels, Counter>,
    /// Completed reconciles, also observable as a stream: tests and the benchmark wait on it
    /// instead of sleeping.
    reconciled: tokio::sync::watch::Sender<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokensync");
        let token_expiry = Family::<CredentialLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "When the published token of a ClientCredential expires (Unix seconds)",
            token_expiry.clone(),
        );
        let token_renewal = Family::<CredentialLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "token_renewal_timestamp_seconds",
            "When tokensync will next request a token for a ClientCredential (Unix seconds)",
            token_renewal.clone(),
        );
        let token_requests = Family::<RequestLabels, Counter>::default();
        registry.register("token_requests", "Token requests by result and condition reason", token_requests.clone());
        let token_request_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "token_request_duration_seconds",
            "Duration of token acquisitions (including verification), by result",
            token_request_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed with a Kubernetes API error, by kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_duration_seconds", "Duration of reconciles", reconcile_duration.clone());
        let credential_ready = Family::<CredentialLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "credential_ready",
            "1 when the Ready condition of a credential is True, else 0 (namespace \"\" for a ClusterClientCredential)",
            credential_ready.clone(),
        );
        let credential_degraded = Family::<CredentialLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "credential_degraded",
            "1 when the Degraded condition of a credential is True (its renewal is failing), else 0",
            credential_degraded.clone(),
        );
        let credential_failed_attempts = Family::<CredentialLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "credential_failed_attempts",
            "Consecutive failed token requests of a credential since its last success",
            credential_failed_attempts.clone(),
        );
        let cluster_namespaces = Family::<ClusterNamespaceLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "cluster_credential_namespaces",
            "Namespaces of a ClusterClientCredential by state: selected, synced (hold the current token), failed",
            cluster_namespaces.clone(),
        );
        let kube_requests = Family::<KubeRequestLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Kubernetes API requests sent, by verb, resource (plural/subresource) and answer (2xx, 4xx, ..., error, cancelled)",
            kube_requests.clone(),
        );
        Metrics {
            registry,
            kube_requests,
            credential_ready,
            credential_degraded,
            credential_failed_attempts,
            cluster_namespaces,
            token_expiry,
            token_renewal,
            token_requests,
            token_request_duration,
            reconcile_errors,
            reconcile_duration,
            reconciled: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn forget_credential(&self, namespace: &str, name: &str) {
        let labels = CredentialLabels { namespace: namespace.into(), name: name.into() };
        self.token_expiry.remove(&labels);
        self.token_renewal.remove(&labels);
        self.credential_ready.remove(&labels);
        self.credential_degraded.remove(&labels);
        self.credential_failed_attempts.remove(&labels);
        if namespace.is_empty() {
            for state in CLUSTER_NAMESPACE_STATES {
                self.cluster_namespaces.remove(&ClusterNamespaceLabels { name: name.into(), state: state.into() });
            }
        }
    }

    /// Records the status a reconcile computed for a ClientCredential (or, with namespace
    /// "", the credential part of a ClusterClientCredential's): Ready, Degraded, failed
    /// attempts, and drops the renewal gauge when no renewal is scheduled (suspended, or a
    /// failure only a change can fix), so that a stale renewal time never looks overdue.
    pub fn record_status(&self, namespace: &str, name: &str, status: &crate::api::ClientCredentialStatus) {
        let labels = CredentialLabels { namespace: namespace.into(), name: name.into() };
        let is_true = |type_: &str| status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True");
        self.credential_ready.get_or_create(&labels).set(is_true(crate::controller::status::READY).into());
        self.credential_degraded.get_or_create(&labels).set(is_true(crate::controller::status::DEGRADED).into());
        self.credential_failed_attempts.get_or_create(&labels).set(status.failed_attempts.unwrap_or(0).into());
        if status.renew_at.is_none() {
            self.token_renewal.remove(&labels);
        }
    }

    /// [`Metrics::record_status`] for a ClusterClientCredential, plus its namespace counts.
    pub fn record_cluster_status(&self, name: &str, status: &crate::api::cluster::ClusterClientCredentialStatus) {
        self.record_status("", name, &status.credential);
        let counts = [status.selected_namespaces, status.synced_namespaces, status.failed_namespaces];
        for (state, count) in CLUSTER_NAMESPACE_STATES.into_iter().zip(counts) {
            let labels = ClusterNamespaceLabels { name: name.into(), state: state.into() };
            self.cluster_namespaces.get_or_create(&labels).set(count.unwrap_or(0).into());
        }
    }

    /// Counts one token acquisition and records its duration, by result and condition
    /// reason. Shared by the controller and the agent.
    pub fn observe_token_request<T>(&self, result: &Result<T, crate::oauth::TokenError>, elapsed: Duration) {
        let (outcome, reason) = match result {
            Ok(_) => ("success", "TokenIssued"),
            Err(e) => ("failure", e.kind.reason()),
        };
        self.token_request_duration
            .get_or_create(&ResultLabels { result: outcome.into() })
            .observe(elapsed.as_secs_f64());
        self.token_requests.get_or_create(&RequestLabels { result: outcome.into(), reason: reason.into() }).inc();
    }

    /// Starts measuring a reconcile; the measurement is recorded when the guard is dropped,
    /// so every exit path of a reconcile is measured and counted.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, started: Instant::now() }
    }

    /// How many reconciles have completed.
    pub fn reconciles(&self) -> u64 {
        *self.reconciled.borrow()
    }

    /// Waits until at least `count` reconciles have completed; false on timeout.
    pub async fn wait_for_reconciles(&self, count: u64, timeout: Duration) -> bool {
        let mut rx = self.reconciled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n >= count)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Records a reconcile's duration and completion when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.observe(self.started.elapsed().as_secs_f64());
        self.metrics.reconciled.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClientCredentialStatus;

    #[test]
    fn a_deleted_credential_leaves_no_series_behind() {
        let metrics = Metrics::default();
        let status = ClientCredentialStatus { failed_attempts: Some(3), ..Default::default() };
        metrics.record_status("team-a", "demo", &status);
        let cluster = crate::api::cluster::ClusterClientCredentialStatus {
            credential: status,
            failed_namespaces: Some(2),
            ..Default::default()
        };
        metrics.record_cluster_status("shared", &cluster);
        let text = metrics.encode();
        assert!(text.contains("tokensync_credential_failed_attempts{namespace=\"team-a\",name=\"demo\"} 3"), "{text}");
        assert!(text.contains("tokensync_cluster_credential_namespaces{name=\"shared\",state=\"failed\"} 2"), "{text}");
        metrics.forget_credential("team-a", "demo");
        metrics.forget_credential("", "shared");
        let text = metrics.encode();
        assert!(!text.contains("name=\"demo\"") && !text.contains("name=\"shared\""), "{text}");
    }
}

//! The proxy's metrics, on the agent's registry (served by `--admin-addr` /metrics):
//! - `tokensync_proxy_requests_total{namespace,name,upstream,code,answered_by}`: requests by
//!   upstream and status; `answered_by` is `upstream`, or `proxy` for the proxy's own answers
//!   (refusals, 502, 503);
//! - `tokensync_proxy_added_latency_seconds{namespace,name,upstream}`: time the proxy spends
//!   on a request outside the upstream exchange (checks, token, headers before it; headers
//!   after it). Bodies are streamed afterwards and not included;
//! - `tokensync_proxy_early_renewals_total{namespace,name,result}`: 401 `invalid_token`
//!   answers by what they caused: `triggered`, `rate_limited`, `superseded`.
//!
//! Cardinality is bounded: one series per proxy and status code. Handles are looked up once
//! per proxy and per status code, not per request.

use std::collections::HashMap;
use std::sync::RwLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::agent::live::EarlyRenewal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    namespace: String,
    name: String,
    upstream: String,
    code: String,
    answered_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    namespace: String,
    name: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    namespace: String,
    name: String,
    result: String,
}

type HistogramFamily = Family<ProxyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs to about 80 ms.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 14))
}

/// The families, registered once per agent.
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    added_latency: HistogramFamily,
    early_renewals: Family<RenewalLabels, Counter>,
}

impl ProxyMetrics {
    pub fn register(registry: &mut Registry) -> ProxyMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests through `agent --proxy`, by credential, upstream, status code and who answered (upstream or proxy)",
            requests.clone(),
        );
        let added_latency = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "proxy_added_latency_seconds",
            "Time the proxy spends on a request outside the upstream exchange (before it and after its response head)",
            added_latency.clone(),
        );
        let early_renewals = Family::<RenewalLabels, Counter>::default();
        registry.register(
            "proxy_early_renewals",
            "Upstream 401 invalid_token answers, by what they caused: triggered (an early renewal), rate_limited, superseded",
            early_renewals.clone(),
        );
        ProxyMetrics { requests, added_latency, early_renewals }
    }

    /// The handles of one proxy.
    pub fn for_proxy(&self, namespace: &str, name: &str, upstream: &str) -> ProxyCounters {
        let labels = ProxyLabels { namespace: namespace.into(), name: name.into(), upstream: upstream.into() };
        let renewal = |result: EarlyRenewal| {
            self.early_renewals.get_or_create_owned(&RenewalLabels {
                namespace: namespace.into(),
                name: name.into(),
                result: result.as_str().into(),
            })
        };
        ProxyCounters {
            requests: self.requests.clone(),
            latency: self.added_latency.get_or_create_owned(&labels),
            early: [
                renewal(EarlyRenewal::Triggered),
                renewal(EarlyRenewal::RateLimited),
                renewal(EarlyRenewal::Superseded),
            ],
            by_code: RwLock::default(),
            labels,
        }
    }
}

/// One proxy's handles.
pub struct ProxyCounters {
    labels: ProxyLabels,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    early: [Counter; 3],
    /// (status, answered by the upstream) -> counter, filled on first use.
    by_code: RwLock<HashMap<(u16, bool), Counter>>,
}

impl ProxyCounters {
    pub fn request(&self, status: u16, by_upstream: bool) {
        if let Some(counter) = self.by_code.read().unwrap_or_else(|e| e.into_inner()).get(&(status, by_upstream)) {
            counter.inc();
            return;
        }
        let counter = self.requests.get_or_create_owned(&RequestLabels {
            namespace: self.labels.namespace.clone(),
            name: self.labels.name.clone(),
            upstream: self.labels.upstream.clone(),
            code: status.to_string(),
            answered_by: if by_upstream { "upstream" } else { "proxy" }.into(),
        });
        counter.inc();
        self.by_code.write().unwrap_or_else(|e| e.into_inner()).insert((status, by_upstream), counter);
    }

    pub fn added_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn early_renewal(&self, outcome: EarlyRenewal) {
        let index = match outcome {
            EarlyRenewal::Triggered => 0,
            EarlyRenewal::RateLimited => 1,
            EarlyRenewal::Superseded => 2,
        };
        self.early[index].inc();
    }
}

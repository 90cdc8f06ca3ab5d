//! Leader election on a coordination.k8s.io Lease: several replicas run, one reconciles.
//!
//! Correctness does not depend on it: every decision is made from state in the cluster,
//! so two reconcilers briefly overlapping during a failover would still not request extra
//! tokens for valid ones. It keeps the token request rate and API load to one replica's.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and how often others try to take over.
pub const RETRY_PERIOD: Duration = Duration::from_secs(4);

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    retry_period: Duration,
}

/// A held leadership; [`Held::lost`] resolves when renewing fails for a whole lease term.
pub struct Held {
    lock: LeaseLock,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            retry_period: RETRY_PERIOD,
        }
    }

    /// Other timings than the defaults (tests, or clusters with slow API servers).
    pub fn with_timing(mut self, lease_duration: Duration, retry_period: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.retry_period = retry_period;
        self
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(self) -> Result<Held, kube::Error> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(Held { lock: self }),
                Ok(false) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the Lease"),
            }
            tokio::time::sleep(self.retry_period).await;
        }
    }

    /// One round: take the Lease if it is free or expired, renew it if ours. Writes use the
    /// Lease's resourceVersion, so two candidates cannot both win (the loser gets a 409).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(now, 0, now)),
            };
            self.api.create(&PostParams::default(), &lease).await?;
            return Ok(true);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
        let duration = Duration::from_secs(
            spec.lease_duration_seconds.unwrap_or(self.lease_duration.as_secs() as i32).max(1) as u64,
        );
        let expired = renewed + duration <= now;
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        let acquired = if holder == self.identity { spec.acquire_time.map(|t| t.0).unwrap_or(now) } else { now };
        lease.spec = Some(self.spec(acquired, transitions, now));
        self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await?;
        Ok(true)
    }

    fn spec(&self, acquired: Timestamp, transitions: i32, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

impl Held {
    /// Keeps renewing; resolves when the Lease could not be renewed for a whole term (or
    /// another replica took it), after which this replica must stop reconciling.
    pub async fn lost(self) {
        let mut last_renewal = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.lock.retry_period).await;
            match self.lock.try_acquire_or_renew().await {
                Ok(true) => last_renewal = std::time::Instant::now(),
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
            }
            if last_renewal.elapsed() >= self.lock.lease_duration {
                return;
            }
        }
    }
}

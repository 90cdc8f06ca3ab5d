//! Leader election on a coordination.k8s.io Lease: several replicas run, one reconciles.
//!
//! Correctness does not depend on it: every decision is made from state in the cluster,
//! so two reconcilers briefly overlapping during a failover would still not request extra
//! tokens for valid ones, and every state Secret write is conditional on the state it
//! replaces, so that a write a deposed leader sent before its deadline, delivered late by the
//! network, is refused instead of overwriting its successor's refresh chain
//! ([`super::reconcile::write_state_over`]). It keeps the token request rate and API load to
//! one replica's.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and how often others try to take over.
pub const RETRY_PERIOD: Duration = Duration::from_secs(4);
/// How long the leader keeps acting without a successful renewal (client-go's default for a
/// 15 s lease): shorter than the lease, so that it has stopped before another replica can
/// take the Lease over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    retry_period: Duration,
    renew_deadline: Option<Duration>,
}

/// A held leadership; [`Held::lost`] resolves when it can no longer be proven.
pub struct Held {
    lock: LeaseLock,
    /// When the last successful acquisition or renewal started.
    renewed: Instant,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            retry_period: RETRY_PERIOD,
            renew_deadline: None,
        }
    }

    /// Other timings than the defaults (tests, or clusters with slow API servers). Unless
    /// [`Self::with_renew_deadline`] says otherwise, the renew deadline is two thirds of the
    /// lease duration.
    pub fn with_timing(mut self, lease_duration: Duration, retry_period: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.retry_period = retry_period;
        self
    }

    pub fn with_renew_deadline(mut self, renew_deadline: Duration) -> Self {
        self.renew_deadline = Some(renew_deadline);
        self
    }

    fn renew_deadline(&self) -> Duration {
        self.renew_deadline.unwrap_or(self.lease_duration * 2 / 3)
    }

    /// Waits until this replica holds the Lease. Each attempt is bounded by the renew
    /// deadline: a request that hangs must not stall the candidate for good.
    pub async fn acquire(self) -> Result<Held, kube::Error> {
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.renew_deadline(), self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return Ok(Held { lock: self, renewed: started }),
                Ok(Ok(false)) => {}
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: cannot read or write the Lease"),
                Err(_) => tracing::warn!("leader election: the API did not answer within the renew deadline"),
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
    /// Keeps renewing every retry period; resolves when no renewal has succeeded for the
    /// renew deadline (or another replica holds the Lease), after which this replica must
    /// stop acting. Like client-go, the deadline counts from the start of the last successful
    /// renewal, and a renewal still in flight at the deadline is abandoned: a request to an
    /// unreachable API server can hang far longer than the lease, while another replica
    /// takes over as soon as the lease has lapsed. Because the renew deadline is shorter
    /// than the lease, this replica has stopped before another one can start.
    pub async fn lost(self) {
        let renew_deadline = self.lock.renew_deadline();
        let mut deadline = self.renewed + renew_deadline;
        loop {
            tokio::time::sleep_until((Instant::now() + self.lock.retry_period).min(deadline)).await;
            let started = Instant::now();
            if started >= deadline {
                tracing::warn!(?renew_deadline, "could not renew the leader Lease within the renew deadline");
                return;
            }
            match tokio::time::timeout_at(deadline, self.lock.try_acquire_or_renew()).await {
                Ok(Ok(true)) => deadline = started + renew_deadline,
                Ok(Ok(false)) => {
                    tracing::warn!("another replica holds the leader Lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
                Err(_) => {
                    tracing::warn!(
                        ?renew_deadline,
                        "the leader Lease renewal did not finish within the renew deadline"
                    );
                    return;
                }
            }
        }
    }
}

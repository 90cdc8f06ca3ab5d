//! When to request a token: renewal time, retry backoff and the decision that combines them.
//!
//! Deciding is kept apart from doing (as in cert-manager): everything here is a pure function
//! of the current time, the state the caller persisted (status and Secret annotations) and the
//! policy. A restarted controller, a resync or a new leader therefore recomputes exactly the
//! same schedule and never causes an extra token request. For the same reason all inputs are
//! truncated to whole seconds before use: Kubernetes persists times (`metav1.Time`) with
//! second precision, so a value read back after a restart must lead to the same answer as the
//! value held in memory before it.
//!
//! Nothing here knows about Kubernetes; the controller and the file-based agent both call
//! [`decide`].

use std::time::Duration;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// Default [`RenewalPolicy::propagation_margin`]: kubelet refreshes mounted Secrets on its
/// sync period (about a minute by default), so a token published later than this before
/// expiry may reach a pod already expired.
pub const DEFAULT_PROPAGATION_MARGIN: Duration = Duration::from_secs(60);

/// Default [`RenewalPolicy::min_interval`]: low enough for any real token lifetime, high
/// enough that a server issuing 1-second (or already expired) tokens is asked at most once
/// every ten seconds instead of in a tight loop.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Default [`RenewalPolicy::jitter`]: 5 % of the lifetime spreads a herd of credentials
/// created together over 3 minutes for 1-hour tokens (15 s for 5-minute tokens) while
/// costing on average only 2.5 % of the lifetime, i.e. about 4 % more requests under the
/// default two-thirds rule.
pub const DEFAULT_JITTER: f64 = 0.05;

/// Default [`BackoffPolicy::initial`]: long enough not to hammer a struggling endpoint, short
/// enough that a transient network blip is repaired before anyone notices.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(5);

/// Default [`BackoffPolicy::max`]: 5 minutes keeps a long outage cheap for the token server
/// while still recovering well within the lifetime of typical (≥ 1 h) tokens.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Upper bound on a server's `Retry-After`. A server (or a proxy in front of it) that asks for
/// days must not silently stop renewals until every published token has long expired; after
/// an hour tokensync asks again, and the server may send a new `Retry-After`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Backoff jitter, in per mille of the delay: ±10 % spreads credentials that failed together
/// (an identity provider outage) without making the delay unpredictable for users.
const BACKOFF_JITTER_PER_MILLE: u64 = 100;

/// When a valid token should be replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    /// Renew this long before expiry. Wins over `renew_before_percentage` when both are set
    /// (the API rejects that combination; this only makes the function total). Ignored when
    /// it is not shorter than the token's lifetime, like cert-manager: a vendor that shortens
    /// its token lifetime must not turn a configured `10m` into a renewal loop.
    pub renew_before: Option<Duration>,
    /// Renew when this percentage of the lifetime remains. Ignored when ≥ 100 for the same
    /// reason as an oversized `renew_before`.
    pub renew_before_percentage: Option<u8>,
    /// A renewal is never scheduled later than this before expiry, so that a pod reading a
    /// mounted Secret still gets a token with this much time left, unless honouring it would
    /// mean renewing before half of the lifetime has passed (then half wins).
    pub propagation_margin: Duration,
    /// Renewals are never scheduled sooner than this after the token was issued.
    pub min_interval: Duration,
    /// Largest fraction (0.0-1.0) of the lifetime by which a renewal is moved earlier, per
    /// credential, to spread credentials that were issued together.
    pub jitter: f64,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            renew_before: None,
            renew_before_percentage: None,
            propagation_margin: DEFAULT_PROPAGATION_MARGIN,
            min_interval: DEFAULT_MIN_INTERVAL,
            jitter: DEFAULT_JITTER,
        }
    }
}

/// How long to wait after failed token requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the first failure; it doubles with each further consecutive failure.
    pub initial: Duration,
    /// Cap on the delay (before a server's `Retry-After` is taken into account).
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self { initial: DEFAULT_BACKOFF_INITIAL, max: DEFAULT_BACKOFF_MAX }
    }
}

/// When a token issued at `issued_at` and expiring at `expires_at` should be renewed.
///
/// The planned time is `expires_at - renew_before`, or `expires_at - percentage × lifetime`,
/// or two thirds of the lifetime. It is then pulled earlier to keep the propagation margin
/// (but not before half of the lifetime), moved earlier by a deterministic jitter derived
/// from `jitter_key` (pass a stable identity such as `namespace/name`; the issue time is
/// mixed in by this function), and finally never earlier than `issued_at + min_interval`,
/// also for tokens that were expired when issued. The result is whole seconds.
pub fn renewal_time(
    issued_at: Timestamp,
    expires_at: Timestamp,
    policy: &RenewalPolicy,
    jitter_key: &str,
) -> Timestamp {
    let issued = whole_seconds(issued_at);
    let expires = whole_seconds(expires_at);
    let earliest = issued.saturating_add(seconds_rounded_up(policy.min_interval));
    let lifetime = expires.saturating_sub(issued);
    if lifetime <= 0 {
        return timestamp_from_seconds(earliest);
    }
    let planned = expires - lead_time(lifetime, policy);
    let latest = latest_renewal(issued, expires, seconds_rounded_up(policy.propagation_margin));
    let jitter = renewal_jitter(lifetime, policy.jitter, jitter_key, issued);
    timestamp_from_seconds(planned.min(latest).saturating_sub(jitter).max(earliest))
}

/// How long before expiry the policy wants to renew; always shorter than the lifetime.
fn lead_time(lifetime: i64, policy: &RenewalPolicy) -> i64 {
    let configured = match (policy.renew_before, policy.renew_before_percentage) {
        (Some(before), _) => Some(seconds_rounded_up(before)),
        (None, Some(percentage)) => Some(lifetime.saturating_mul(i64::from(percentage)) / 100),
        (None, None) => None,
    };
    match configured {
        Some(lead) if lead < lifetime => lead,
        _ => lifetime / 3,
    }
}

/// The latest renewal that still leaves `margin` before expiry, except that it is never
/// earlier than half of the lifetime: for a token that lives about as long as the margin,
/// renewing twice per lifetime is the best that can be done without hammering the server.
fn latest_renewal(issued: i64, expires: i64, margin: i64) -> i64 {
    let halfway = issued + (expires - issued) / 2;
    expires.saturating_sub(margin).max(halfway)
}

/// Seconds by which this credential's renewal moves earlier: in `[0, jitter × lifetime]`.
fn renewal_jitter(lifetime: i64, fraction: f64, jitter_key: &str, issued: i64) -> i64 {
    let fraction = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    // Truncation is intended: the span only has to be roughly `fraction` of the lifetime.
    let span = (lifetime as f64 * fraction) as u64;
    let hash = stable_hash(&[jitter_key.as_bytes(), b"renewal", &issued.to_be_bytes()]);
    i64::try_from(pick_below(hash, span.saturating_add(1))).unwrap_or(0)
}

/// When to try again after `failed_attempts` consecutive failures, the last at `last_failure`.
///
/// The delay is `initial × 2^(failed_attempts - 1)` (0 attempts count as 1), capped at `max`,
/// spread by a deterministic ±10 % jitter that never exceeds `max`. A server's `Retry-After`
/// is a lower bound, itself capped at [`MAX_RETRY_AFTER`]. The delay is rounded up to whole
/// seconds, so a retry never happens before the server asked for it.
pub fn retry_time(
    last_failure: Timestamp,
    failed_attempts: u32,
    retry_after: Option<Duration>,
    policy: &BackoffPolicy,
    jitter_key: &str,
) -> Timestamp {
    let failed_at = whole_seconds(last_failure);
    let hash =
        stable_hash(&[jitter_key.as_bytes(), b"retry", &failed_at.to_be_bytes(), &failed_attempts.to_be_bytes()]);
    let backoff = jittered_backoff_millis(failed_attempts, policy, hash);
    let requested = retry_after.map_or(0, |after| millis(after.min(MAX_RETRY_AFTER)));
    let delay = seconds_from_millis_rounded_up(backoff.max(requested));
    timestamp_from_seconds(failed_at.saturating_add(delay))
}

/// `initial × 2^(attempts - 1)`, saturating instead of overflowing, capped at `max`.
fn exponential_backoff_millis(failed_attempts: u32, policy: &BackoffPolicy) -> u64 {
    let doublings = failed_attempts.saturating_sub(1);
    let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
    millis(policy.initial).saturating_mul(factor).min(millis(policy.max))
}

/// The capped backoff moved by up to ±10 %, but never above `max`: at the cap the jitter can
/// only shorten the delay, so the cap stays a promise.
fn jittered_backoff_millis(failed_attempts: u32, policy: &BackoffPolicy, hash: u64) -> u64 {
    let delay = exponential_backoff_millis(failed_attempts, policy);
    let spread = delay / 1000 * BACKOFF_JITTER_PER_MILLE + delay % 1000 * BACKOFF_JITTER_PER_MILLE / 1000;
    let lowest = delay - spread;
    let highest = delay.saturating_add(spread).min(millis(policy.max)).max(delay);
    lowest + pick_below(hash, highest - lowest + 1)
}

/// A token that is currently published (in the target Secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Everything [`decide`] needs, as persisted by the caller. Plain data, so the controller
/// (status, Secret annotations) and the file-based agent can fill it alike.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleState {
    pub now: Timestamp,
    /// The token currently published, if any.
    pub published: Option<Published>,
    /// The spec or the source Secret differ from the inputs the published token was made from.
    pub inputs_changed: bool,
    /// The manual renewal annotation holds a value that has not been acted upon yet. The
    /// caller records the value as handled after the attempt, whether it succeeded or not.
    pub renewal_requested: bool,
    pub suspended: bool,
    /// Consecutive failed token requests since the last success (or since the inputs
    /// changed: after `inputs_changed_since_failure`, the caller counts again from 1).
    pub failed_attempts: u32,
    pub last_failure: Option<Timestamp>,
    /// The `Retry-After` the server sent with the last failure.
    pub retry_after: Option<Duration>,
    /// The spec or the source Secret changed after the last failure, so the failures were made
    /// with other inputs than the current ones. This is separate from `inputs_changed`: a
    /// failed attempt with new inputs leaves the published token made from the old ones, and
    /// judging by `inputs_changed` alone would retry such a failure immediately, forever.
    pub inputs_changed_since_failure: bool,
}

/// Why a token should be requested now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestReason {
    /// No token has been published yet.
    NoToken,
    /// The spec or the source Secret changed since the published token was issued.
    InputsChanged,
    /// A user asked for a renewal (annotation).
    ManualRenewal,
    /// The published token reached its renewal time.
    RenewalDue,
    /// The published token has expired without having been renewed (e.g. the controller was
    /// not running at its renewal time).
    Expired,
    /// Earlier attempts failed and the backoff has passed.
    Retry,
}

/// Why nothing should be requested yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// The published token is not due for renewal yet.
    Renewal,
    /// Backing off after failed attempts.
    Backoff,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Request a token now, then decide again with the updated state.
    RequestNow(RequestReason),
    /// Request nothing before `until`.
    Wait { until: Timestamp, reason: WaitReason },
    /// Suspended: request nothing. `requeue_at` is the expiry of the published token, when
    /// the caller should look again to report it as expired.
    Suspended { requeue_at: Option<Timestamp> },
}

impl Decision {
    /// When the caller should run [`decide`] again if nothing changes in between. `None` for
    /// [`Decision::RequestNow`] (act now, then decide again) and for a suspended credential
    /// without a live token (only a change can make a difference).
    pub fn requeue_at(&self) -> Option<Timestamp> {
        match *self {
            Decision::RequestNow(_) => None,
            Decision::Wait { until, .. } => Some(until),
            Decision::Suspended { requeue_at } => requeue_at,
        }
    }

    /// When the caller should look again, having acted on everything it could in this pass:
    /// [`Self::requeue_at`], and `now` for [`Decision::RequestNow`] — a request that is due
    /// but was not made in this pass (the agent writes a changed state file first) is made
    /// in the next one, never left to a far-off wake-up (issue 20).
    pub fn look_again_at(&self, now: Timestamp) -> Option<Timestamp> {
        match self {
            Decision::RequestNow(_) => Some(now),
            _ => self.requeue_at(),
        }
    }
}

/// Whether to request a token now and, if not, until when to wait.
///
/// Rules, in order of precedence:
/// 1. Suspended: never request, not even on a manual request or a change: suspend is how a
///    user stops all traffic to a token endpoint (e.g. a vendor's quota or an incident).
/// 2. Manual renewal requested: request now, bypassing backoff; a human asking (typically
///    after fixing the cause of the failures) knows more than the backoff timer. It is
///    one-shot because the caller records the handled annotation value.
/// 3. Failures made with other inputs than the current ones are forgotten, as cert-manager
///    does on a spec change: a rotated client secret or a fixed spec deserves a prompt try,
///    not a wait inherited from the broken configuration.
/// 4. No token yet, or inputs changed: request now, unless (remaining) failures are pending;
///    then wait for the retry time, because the current inputs already failed.
/// 5. Published token expired with failures pending: retry at the retry time; the renewal
///    schedule no longer matters once the token is useless.
/// 6. Published token with failures pending: request at the later of the renewal time and
///    the retry time, so a failed (e.g. manual) early attempt neither hammers the server nor
///    renews a valid token earlier than planned.
/// 7. Otherwise: request at the renewal time. A token found expired counts as a renewal the
///    controller missed, but the minimum interval after issue still applies, so an endpoint
///    issuing already expired tokens is not asked in a tight loop.
pub fn decide(state: &ScheduleState, renewal: &RenewalPolicy, backoff: &BackoffPolicy, jitter_key: &str) -> Decision {
    if state.suspended {
        return Decision::Suspended { requeue_at: live_expiry(state) };
    }
    if state.renewal_requested {
        return Decision::RequestNow(RequestReason::ManualRenewal);
    }
    let retry_at = pending_retry(state, backoff, jitter_key);
    let Some(published) = state.published else {
        return request_unless_backing_off(state.now, retry_at, RequestReason::NoToken);
    };
    if state.inputs_changed {
        return request_unless_backing_off(state.now, retry_at, RequestReason::InputsChanged);
    }
    let expired = state.now >= published.expires_at;
    match retry_at {
        Some(retry_at) if expired => request_at(state.now, retry_at, RequestReason::Retry, WaitReason::Backoff),
        Some(retry_at) => {
            let renew_at = renewal_time(published.issued_at, published.expires_at, renewal, jitter_key);
            let reason = if retry_at > renew_at { WaitReason::Backoff } else { WaitReason::Renewal };
            request_at(state.now, renew_at.max(retry_at), RequestReason::Retry, reason)
        }
        None => {
            let renew_at = renewal_time(published.issued_at, published.expires_at, renewal, jitter_key);
            let reason = if expired { RequestReason::Expired } else { RequestReason::RenewalDue };
            request_at(state.now, renew_at, reason, WaitReason::Renewal)
        }
    }
}

/// The expiry of the published token, if it is still in the future.
fn live_expiry(state: &ScheduleState) -> Option<Timestamp> {
    state.published.map(|published| published.expires_at).filter(|expires_at| *expires_at > state.now)
}

/// The retry time of the failures that still count, if any. Failures without a recorded
/// time cannot be scheduled and are ignored rather than blocking renewals forever.
fn pending_retry(state: &ScheduleState, backoff: &BackoffPolicy, jitter_key: &str) -> Option<Timestamp> {
    if state.failed_attempts == 0 || state.inputs_changed_since_failure {
        return None;
    }
    let last_failure = state.last_failure?;
    Some(retry_time(last_failure, state.failed_attempts, state.retry_after, backoff, jitter_key))
}

fn request_unless_backing_off(now: Timestamp, retry_at: Option<Timestamp>, reason: RequestReason) -> Decision {
    match retry_at {
        Some(retry_at) => request_at(now, retry_at, RequestReason::Retry, WaitReason::Backoff),
        None => Decision::RequestNow(reason),
    }
}

fn request_at(now: Timestamp, at: Timestamp, reason: RequestReason, wait_reason: WaitReason) -> Decision {
    if now >= at { Decision::RequestNow(reason) } else { Decision::Wait { until: at, reason: wait_reason } }
}

/// Seconds since the epoch, rounded towards the past.
fn whole_seconds(timestamp: Timestamp) -> i64 {
    let seconds = timestamp.as_second();
    if timestamp.subsec_nanosecond() < 0 { seconds - 1 } else { seconds }
}

/// A timestamp for `seconds`, clamped to the range jiff can represent: schedules so far
/// out only arise from absurd inputs, and clamping keeps the functions total.
fn timestamp_from_seconds(seconds: i64) -> Timestamp {
    let clamped = seconds.clamp(Timestamp::MIN.as_second() + 1, Timestamp::MAX.as_second());
    Timestamp::from_second(clamped).unwrap_or(if seconds < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

fn seconds_rounded_up(duration: Duration) -> i64 {
    let seconds = duration.as_secs().saturating_add(u64::from(duration.subsec_nanos() > 0));
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

fn seconds_from_millis_rounded_up(millis: u64) -> i64 {
    i64::try_from(millis.div_ceil(1000)).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A hash that is the same on every run, platform and Rust version (unlike `DefaultHasher`),
/// so a jittered schedule survives an operator upgrade.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Maps a uniform 64-bit hash onto `0..bound` without modulo bias worth mentioning.
fn pick_below(hash: u64, bound: u64) -> u64 {
    ((u128::from(hash) * u128::from(bound)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// A fixed, whole-second issue time, so expectations can be written as offsets.
    const T0: i64 = 1_800_000_000;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn without_jitter() -> RenewalPolicy {
        RenewalPolicy { jitter: 0.0, ..RenewalPolicy::default() }
    }

    fn renew_offset(lifetime: i64, policy: &RenewalPolicy, key: &str) -> i64 {
        renewal_time(at(0), at(lifetime), policy, key).as_second() - T0
    }

    fn retry_offset(failed_attempts: u32, retry_after: Option<Duration>, key: &str) -> i64 {
        retry_time(at(0), failed_attempts, retry_after, &BackoffPolicy::default(), key).as_second() - T0
    }

    fn keys(count: usize) -> impl Iterator<Item = String> {
        (0..count).map(|i| format!("team-{}/credential-{i}", i % 7))
    }

    // ---- renewal_time ----

    #[test]
    fn default_renews_after_two_thirds_of_lifetime() {
        assert_eq!(renew_offset(3 * 3600, &without_jitter(), "ns/a"), 2 * 3600);
    }

    #[test]
    fn percentage_renews_when_that_share_of_lifetime_remains() {
        let policy = RenewalPolicy { renew_before_percentage: Some(25), ..without_jitter() };
        assert_eq!(renew_offset(4 * 3600, &policy, "ns/a"), 3 * 3600);
    }

    #[test]
    fn renew_before_renews_that_long_before_expiry() {
        let policy = RenewalPolicy { renew_before: Some(secs(600)), ..without_jitter() };
        assert_eq!(renew_offset(12 * 3600, &policy, "ns/a"), 12 * 3600 - 600);
    }

    #[test]
    fn renew_before_wins_over_percentage_when_both_are_set() {
        let policy =
            RenewalPolicy { renew_before: Some(secs(600)), renew_before_percentage: Some(50), ..without_jitter() };
        assert_eq!(renew_offset(3600, &policy, "ns/a"), 3000);
    }

    #[test]
    fn renew_before_not_shorter_than_lifetime_falls_back_to_two_thirds() {
        for before in [3600, 7200] {
            let policy = RenewalPolicy { renew_before: Some(secs(before)), ..without_jitter() };
            assert_eq!(renew_offset(3600, &policy, "ns/a"), 2400, "renewBefore {before}s");
        }
    }

    #[test]
    fn percentage_of_whole_lifetime_falls_back_to_two_thirds() {
        for percentage in [100, 255] {
            let policy = RenewalPolicy { renew_before_percentage: Some(percentage), ..without_jitter() };
            assert_eq!(renew_offset(3600, &policy, "ns/a"), 2400, "{percentage}%");
        }
    }

    #[test]
    fn late_renewal_is_pulled_earlier_to_keep_the_propagation_margin() {
        let policy = RenewalPolicy { renew_before: Some(secs(10)), ..without_jitter() };
        assert_eq!(renew_offset(3600, &policy, "ns/a"), 3600 - 60);
        let policy = RenewalPolicy { renew_before_percentage: Some(0), ..without_jitter() };
        assert_eq!(renew_offset(3600, &policy, "ns/a"), 3600 - 60);
    }

    #[test]
    fn five_minute_token_renews_around_200s_with_at_least_a_minute_left() {
        for key in keys(500) {
            let renew = renew_offset(300, &RenewalPolicy::default(), &key);
            assert!((185..=200).contains(&renew), "{key}: renews at {renew}s");
            assert!(300 - renew >= 60, "{key}: only {}s left", 300 - renew);
        }
    }

    #[test]
    fn minute_token_with_minute_margin_renews_halfway() {
        assert_eq!(renew_offset(60, &without_jitter(), "ns/a"), 30);
        for key in keys(200) {
            let renew = renew_offset(60, &RenewalPolicy::default(), &key);
            assert!((27..=30).contains(&renew), "{key}: renews at {renew}s");
        }
    }

    #[test]
    fn margin_never_pulls_renewal_before_halfway() {
        // Keeping the full 60 s margin would mean renewing a 90 s token after 30 s.
        assert_eq!(renew_offset(90, &without_jitter(), "ns/a"), 45);
    }

    #[test]
    fn one_second_token_is_renewed_no_sooner_than_min_interval() {
        assert_eq!(renew_offset(1, &RenewalPolicy::default(), "ns/a"), 10);
    }

    #[test]
    fn token_expired_at_issue_is_renewed_no_sooner_than_min_interval() {
        for lifetime in [0, -1, -86_400] {
            assert_eq!(renew_offset(lifetime, &RenewalPolicy::default(), "ns/a"), 10, "lifetime {lifetime}s");
        }
    }

    #[test]
    fn jitter_is_deterministic_for_the_same_key_and_issue_time() {
        let policy = RenewalPolicy::default();
        for key in keys(100) {
            assert_eq!(renew_offset(3600, &policy, &key), renew_offset(3600, &policy, &key));
        }
    }

    #[test]
    fn jitter_differs_between_renewal_cycles_of_one_credential() {
        let policy = RenewalPolicy::default();
        let offsets: BTreeSet<i64> = (0..50)
            .map(|cycle| {
                let issued = at(cycle * 2400);
                renewal_time(issued, at(cycle * 2400 + 3600), &policy, "ns/a").as_second() - issued.as_second()
            })
            .collect();
        assert!(offsets.len() > 10, "only {} distinct offsets", offsets.len());
    }

    #[test]
    fn jitter_only_moves_renewal_earlier_and_by_at_most_its_fraction() {
        let policy = RenewalPolicy::default();
        for key in keys(2000) {
            let renew = renew_offset(3 * 3600, &policy, &key);
            assert!((2 * 3600 - 540..=2 * 3600).contains(&renew), "{key}: renews at {renew}s");
        }
    }

    #[test]
    fn jitter_spreads_ten_thousand_credentials_over_many_seconds() {
        let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
        for key in keys(10_000) {
            *per_second.entry(renew_offset(3600, &RenewalPolicy::default(), &key)).or_default() += 1;
        }
        let busiest = per_second.values().copied().max().unwrap();
        // 5 % of an hour is 180 s: about 55 renewals per second on average.
        assert!(per_second.len() >= 170, "only {} distinct seconds", per_second.len());
        assert!(busiest <= 100, "{busiest} renewals in one second");
    }

    #[test]
    fn jitter_never_moves_renewal_before_min_interval() {
        let policy = RenewalPolicy { jitter: 1.0, ..RenewalPolicy::default() };
        for key in keys(500) {
            assert!(renew_offset(20, &policy, &key) >= 10, "{key}");
        }
    }

    #[test]
    fn nonsensical_jitter_is_treated_as_none() {
        for jitter in [f64::NAN, -1.0, f64::NEG_INFINITY, f64::INFINITY] {
            let policy = RenewalPolicy { jitter, ..RenewalPolicy::default() };
            assert_eq!(renew_offset(3600, &policy, "ns/a"), 2400, "jitter {jitter}");
        }
    }

    #[test]
    fn renewal_time_is_whole_seconds_and_ignores_subsecond_inputs() {
        let policy = RenewalPolicy::default();
        let issued = at(0) + jiff::SignedDuration::from_millis(999);
        let expires = at(3600) + jiff::SignedDuration::from_millis(999);
        let renew = renewal_time(issued, expires, &policy, "ns/a");
        assert_eq!(renew.subsec_nanosecond(), 0);
        assert_eq!(renew, renewal_time(at(0), at(3600), &policy, "ns/a"));
    }

    #[test]
    fn renewal_time_saturates_at_the_edges_of_time() {
        let policy =
            RenewalPolicy { min_interval: Duration::MAX, propagation_margin: Duration::MAX, ..Default::default() };
        assert_eq!(
            renewal_time(at(0), Timestamp::MAX, &policy, "ns/a"),
            Timestamp::from_second(Timestamp::MAX.as_second()).unwrap()
        );
        let renew = renewal_time(Timestamp::MIN, Timestamp::MAX, &RenewalPolicy::default(), "ns/a");
        assert!(renew > Timestamp::MIN && renew < Timestamp::MAX);
    }

    proptest! {
        #[test]
        fn renewal_time_stays_between_min_interval_and_expiry(
            issued in -1_000_000_000i64..4_000_000_000,
            min_interval in 0u64..120,
            extra in 0i64..100_000_000,
            margin in 0u64..7200,
            renew_before in proptest::option::of(0u64..200_000_000),
            percentage in proptest::option::of(0u8..=255),
            jitter in 0.0f64..=1.0,
            key in "[a-z0-9/-]{0,40}",
        ) {
            let policy = RenewalPolicy {
                renew_before: renew_before.map(Duration::from_secs),
                renew_before_percentage: percentage,
                propagation_margin: secs(margin),
                min_interval: secs(min_interval),
                jitter,
            };
            let issued_at = Timestamp::from_second(issued).unwrap();
            let expires_at = Timestamp::from_second(issued + min_interval as i64 + extra).unwrap();
            let renew = renewal_time(issued_at, expires_at, &policy, &key).as_second();
            prop_assert!(renew >= issued + min_interval as i64);
            prop_assert!(renew <= expires_at.as_second());
        }
    }

    // ---- retry_time ----

    #[test]
    fn backoff_starts_at_initial_and_doubles_until_the_cap() {
        let policy = BackoffPolicy::default();
        let expected = [(1, 5_000), (2, 10_000), (3, 20_000), (4, 40_000), (6, 160_000), (7, 300_000), (8, 300_000)];
        for (attempts, millis) in expected {
            assert_eq!(exponential_backoff_millis(attempts, &policy), millis, "attempt {attempts}");
        }
    }

    #[test]
    fn retry_is_jittered_by_at_most_ten_percent() {
        for key in keys(500) {
            assert!((5..=6).contains(&retry_offset(1, None, &key)), "{key}");
            assert!((36..=44).contains(&retry_offset(4, None, &key)), "{key}");
        }
    }

    #[test]
    fn retry_never_exceeds_the_cap_despite_jitter() {
        for key in keys(500) {
            let retry = retry_offset(20, None, &key);
            assert!((270..=300).contains(&retry), "{key}: retry after {retry}s");
        }
    }

    #[test]
    fn retry_jitter_is_deterministic_and_spreads_credentials() {
        let offsets: Vec<i64> = keys(500).map(|key| retry_offset(5, None, &key)).collect();
        let again: Vec<i64> = keys(500).map(|key| retry_offset(5, None, &key)).collect();
        assert_eq!(offsets, again);
        let distinct: BTreeSet<i64> = offsets.into_iter().collect();
        assert!(distinct.len() >= 15, "only {} distinct retry times", distinct.len());
    }

    #[test]
    fn zero_failed_attempts_count_as_one() {
        assert_eq!(retry_offset(0, None, "ns/a"), retry_offset(1, None, "ns/a"));
        assert_eq!(exponential_backoff_millis(0, &BackoffPolicy::default()), 5_000);
    }

    #[test]
    fn huge_failed_attempt_counts_do_not_overflow() {
        for attempts in [63, 64, 65, 1000, u32::MAX] {
            assert_eq!(exponential_backoff_millis(attempts, &BackoffPolicy::default()), 300_000);
            assert!((270..=300).contains(&retry_offset(attempts, None, "ns/a")), "attempt {attempts}");
        }
        let endless = BackoffPolicy { initial: Duration::MAX, max: Duration::MAX };
        let retry = retry_time(at(0), u32::MAX, Some(Duration::MAX), &endless, "ns/a");
        assert_eq!(retry, Timestamp::from_second(Timestamp::MAX.as_second()).unwrap());
    }

    #[test]
    fn retry_after_longer_than_backoff_is_honoured() {
        assert_eq!(retry_offset(1, Some(secs(120)), "ns/a"), 120);
    }

    #[test]
    fn retry_after_shorter_than_backoff_is_ignored() {
        assert_eq!(retry_offset(4, Some(secs(1)), "ns/a"), retry_offset(4, None, "ns/a"));
    }

    #[test]
    fn retry_after_is_capped_at_one_hour() {
        assert_eq!(retry_offset(1, Some(secs(86_400)), "ns/a"), 3600);
        assert_eq!(retry_offset(1, Some(Duration::MAX), "ns/a"), 3600);
    }

    #[test]
    fn retry_time_is_whole_seconds_and_never_before_retry_after() {
        let no_backoff = BackoffPolicy { initial: Duration::ZERO, max: Duration::ZERO };
        let failed_at = at(0) + jiff::SignedDuration::from_millis(700);
        let retry = retry_time(failed_at, 1, Some(Duration::from_millis(1500)), &no_backoff, "ns/a");
        assert_eq!(retry, at(2));
    }

    // ---- decide ----

    const ISSUED: i64 = 0;
    const EXPIRES: i64 = 3600;
    const KEY: &str = "team-a/chatlayer";

    fn valid_token() -> Option<Published> {
        Some(Published { issued_at: at(ISSUED), expires_at: at(EXPIRES) })
    }

    fn state(now: i64) -> ScheduleState {
        ScheduleState {
            now: at(now),
            published: valid_token(),
            inputs_changed: false,
            renewal_requested: false,
            suspended: false,
            failed_attempts: 0,
            last_failure: None,
            retry_after: None,
            inputs_changed_since_failure: false,
        }
    }

    fn failing(now: i64, failed_at: i64, failed_attempts: u32) -> ScheduleState {
        ScheduleState { failed_attempts, last_failure: Some(at(failed_at)), ..state(now) }
    }

    fn decision(state: &ScheduleState) -> Decision {
        decide(state, &RenewalPolicy::default(), &BackoffPolicy::default(), KEY)
    }

    /// Issue 20, the rule the controller, the cluster controller and the agent share: a
    /// token that expired while a wrong secret was refused. The secret put back clears the
    /// failure (it belongs to inputs no longer in use); what remains is an expired token, and
    /// exactly one request is due at once, with the next look now, not at a far-off wake-up.
    #[test]
    fn a_token_expired_during_a_failure_is_requested_at_once_when_the_inputs_are_restored() {
        use crate::oauth::{ErrorKind, TokenError};
        use crate::token_state::{FailureRecord, StoredToken};
        let rejected = TokenError::new(ErrorKind::Rejected, true, "invalid_client");
        let record = FailureRecord::default().failed(at(EXPIRES - 5), &rejected, "wrong", Duration::from_secs(600));
        let token = StoredToken {
            bound_certificate: None,
            access_token: "t".to_owned().into(),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: at(ISSUED),
            expires_at: at(EXPIRES),
            refresh_token: None,
            inputs: "right".into(),
            bootstrap: None,
            renewal_request: None,
        };
        let now = EXPIRES + 10;
        // Still the wrong secret: the failure stands and the backoff holds.
        let still = record.clone().still_pending(Some(&token), Some("wrong"));
        let waiting = ScheduleState {
            failed_attempts: still.attempts,
            last_failure: still.last_failure,
            retry_after: still.retry_after,
            ..state(now)
        };
        assert!(matches!(decision(&waiting), Decision::Wait { .. }), "{:?}", decision(&waiting));
        // The right secret is back: the failure is over, and the expired token is due now.
        let cleared = record.still_pending(Some(&token), Some("right"));
        assert_eq!(cleared, FailureRecord::default());
        let next = decision(&ScheduleState { failed_attempts: cleared.attempts, ..state(now) });
        assert_eq!(next, Decision::RequestNow(RequestReason::Expired));
        assert_eq!(next.look_again_at(at(now)), Some(at(now)), "looked at again at once");
    }

    fn renew_at() -> Timestamp {
        renewal_time(at(ISSUED), at(EXPIRES), &RenewalPolicy::default(), KEY)
    }

    fn retry_at(failed_at: i64, failed_attempts: u32) -> Timestamp {
        retry_time(at(failed_at), failed_attempts, None, &BackoffPolicy::default(), KEY)
    }

    fn offset(timestamp: Timestamp) -> i64 {
        timestamp.as_second() - T0
    }

    #[test]
    fn suspended_never_requests_even_when_asked_or_changed() {
        let suspended =
            ScheduleState { suspended: true, renewal_requested: true, inputs_changed: true, ..state(EXPIRES - 1) };
        assert_eq!(decision(&suspended), Decision::Suspended { requeue_at: Some(at(EXPIRES)) });
        assert_eq!(decision(&ScheduleState { published: None, ..suspended }), Decision::Suspended { requeue_at: None });
    }

    #[test]
    fn suspended_with_expired_token_needs_no_requeue() {
        let suspended = ScheduleState { suspended: true, ..state(EXPIRES + 1) };
        assert_eq!(decision(&suspended), Decision::Suspended { requeue_at: None });
        assert_eq!(decision(&suspended).requeue_at(), None);
    }

    #[test]
    fn manual_renewal_requests_now_even_while_backing_off() {
        let asked = ScheduleState { renewal_requested: true, ..failing(100, 99, 3) };
        assert_eq!(decision(&asked), Decision::RequestNow(RequestReason::ManualRenewal));
        assert_eq!(decision(&asked).requeue_at(), None);
    }

    #[test]
    fn missing_token_is_requested_now() {
        let first = ScheduleState { published: None, ..state(0) };
        assert_eq!(decision(&first), Decision::RequestNow(RequestReason::NoToken));
    }

    #[test]
    fn missing_token_after_a_failure_waits_for_the_retry_time() {
        let retry = retry_at(0, 2);
        let waiting = ScheduleState { published: None, ..failing(1, 0, 2) };
        assert_eq!(decision(&waiting), Decision::Wait { until: retry, reason: WaitReason::Backoff });
        assert_eq!(decision(&waiting).requeue_at(), Some(retry));
        let due = ScheduleState { now: retry, ..waiting };
        assert_eq!(decision(&due), Decision::RequestNow(RequestReason::Retry));
    }

    #[test]
    fn changed_inputs_request_a_token_now() {
        let changed = ScheduleState { inputs_changed: true, ..state(100) };
        assert_eq!(decision(&changed), Decision::RequestNow(RequestReason::InputsChanged));
    }

    #[test]
    fn changed_inputs_that_already_failed_wait_for_the_retry_time() {
        let changed = ScheduleState { inputs_changed: true, ..failing(101, 100, 1) };
        assert_eq!(decision(&changed), Decision::Wait { until: retry_at(100, 1), reason: WaitReason::Backoff });
    }

    #[test]
    fn change_after_a_failure_resets_the_backoff() {
        let changed =
            ScheduleState { inputs_changed: true, inputs_changed_since_failure: true, ..failing(101, 100, 6) };
        assert_eq!(decision(&changed), Decision::RequestNow(RequestReason::InputsChanged));
        let first = ScheduleState { published: None, inputs_changed_since_failure: true, ..failing(101, 100, 6) };
        assert_eq!(decision(&first), Decision::RequestNow(RequestReason::NoToken));
    }

    #[test]
    fn reverting_a_failed_change_resumes_the_renewal_schedule() {
        let reverted = ScheduleState { inputs_changed_since_failure: true, ..failing(101, 100, 6) };
        assert_eq!(decision(&reverted), Decision::Wait { until: renew_at(), reason: WaitReason::Renewal });
    }

    #[test]
    fn valid_token_waits_for_its_renewal_time() {
        let waiting = state(100);
        assert_eq!(decision(&waiting), Decision::Wait { until: renew_at(), reason: WaitReason::Renewal });
        assert_eq!(decision(&waiting).requeue_at(), Some(renew_at()));
        assert!((2400 - 180..=2400).contains(&offset(renew_at())));
    }

    #[test]
    fn valid_token_is_renewed_at_its_renewal_time() {
        let due = ScheduleState { now: renew_at(), ..state(0) };
        assert_eq!(decision(&due), Decision::RequestNow(RequestReason::RenewalDue));
    }

    #[test]
    fn failed_renewal_waits_for_the_backoff_when_it_ends_after_the_renewal_time() {
        let failed_at = offset(renew_at());
        let backing_off = failing(failed_at + 1, failed_at, 3);
        assert_eq!(
            decision(&backing_off),
            Decision::Wait { until: retry_at(failed_at, 3), reason: WaitReason::Backoff }
        );
    }

    #[test]
    fn failed_early_attempt_does_not_move_the_renewal_earlier() {
        let early_failure = failing(101, 100, 1);
        assert_eq!(decision(&early_failure), Decision::Wait { until: renew_at(), reason: WaitReason::Renewal });
    }

    #[test]
    fn failed_renewal_is_retried_once_the_backoff_has_passed() {
        let failed_at = offset(renew_at());
        let due = ScheduleState { now: retry_at(failed_at, 3), ..failing(0, failed_at, 3) };
        assert_eq!(decision(&due), Decision::RequestNow(RequestReason::Retry));
    }

    #[test]
    fn expired_token_without_failures_is_requested_now() {
        assert_eq!(decision(&state(EXPIRES + 600)), Decision::RequestNow(RequestReason::Expired));
    }

    #[test]
    fn expired_token_with_failures_waits_only_for_the_retry_time() {
        // A 1 s token: its renewal time (min interval) lies after the retry time.
        let tiny = Some(Published { issued_at: at(0), expires_at: at(1) });
        let expired = ScheduleState { published: tiny, ..failing(3, 2, 1) };
        assert_eq!(decision(&expired), Decision::Wait { until: retry_at(2, 1), reason: WaitReason::Backoff });
        assert!(retry_at(2, 1) < at(10));
    }

    #[test]
    fn expired_tiny_token_is_not_renewed_before_the_min_interval() {
        let tiny = Some(Published { issued_at: at(0), expires_at: at(1) });
        let expired = ScheduleState { published: tiny, ..state(5) };
        assert_eq!(decision(&expired), Decision::Wait { until: at(10), reason: WaitReason::Renewal });
        assert_eq!(decision(&ScheduleState { now: at(10), ..expired }), Decision::RequestNow(RequestReason::Expired));
    }

    #[test]
    fn failures_without_a_recorded_time_do_not_block_renewal() {
        let unknown_time = ScheduleState { failed_attempts: 4, last_failure: None, ..state(EXPIRES - 1) };
        assert_eq!(decision(&unknown_time), Decision::RequestNow(RequestReason::RenewalDue));
    }

    #[test]
    fn retry_after_delays_the_next_attempt() {
        let throttled = ScheduleState { published: None, retry_after: Some(secs(900)), ..failing(101, 100, 1) };
        assert_eq!(decision(&throttled), Decision::Wait { until: at(1000), reason: WaitReason::Backoff });
    }

    #[test]
    fn decision_is_the_same_after_a_restart_that_truncated_persisted_times() {
        let precise = |t: Timestamp| t + jiff::SignedDuration::from_millis(640);
        let in_memory = ScheduleState {
            now: at(2500),
            published: Some(Published { issued_at: precise(at(ISSUED)), expires_at: precise(at(EXPIRES)) }),
            last_failure: Some(precise(at(2450))),
            ..failing(2500, 2450, 2)
        };
        let from_status = failing(2500, 2450, 2);
        assert_eq!(decision(&in_memory), decision(&from_status));
    }
}

//! The token each credential serves right now, in memory, for `--proxy`: the credential's
//! worker publishes after every pass, a proxy reads it for every request (one watch channel
//! per credential, no file read), and a proxy whose upstream rejects the token can ask the
//! worker for one early renewal.
//!
//! A request takes the token as it is when the request starts (an `Arc`), so a rotation
//! never changes the credentials of a request in flight; the next request sees the new one.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

/// A token ready to be put on a request: the header it travels in, its value (marked
/// sensitive, so HTTP/2 never indexes it in HPACK tables) and when it expires.
pub struct ServedToken {
    pub header: HeaderName,
    pub value: HeaderValue,
    pub expires_at: SystemTime,
}

impl ServedToken {
    pub fn new(header: HeaderName, mut value: HeaderValue, expires_at: Timestamp) -> ServedToken {
        value.set_sensitive(true);
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_millis(expires_at.as_millisecond().max(0) as u64);
        ServedToken { header, value, expires_at }
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }

    fn same_as(&self, other: &ServedToken) -> bool {
        self.header == other.header && self.value == other.value && self.expires_at == other.expires_at
    }
}

impl fmt::Debug for ServedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedToken")
            .field("header", &self.header)
            .field("value", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a credential has no valid token to serve: a condition reason (`TokenEndpointUnavailable`,
/// `InvalidSpec`, ...) and a message that, like every tokensync error, holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    pub reason: String,
    pub message: String,
}

/// What a credential serves at the moment.
#[derive(Debug, Clone)]
pub struct Live {
    /// The token to forward, if a valid one was issued (it may have expired since: readers
    /// check [`ServedToken::is_valid_at`]).
    pub token: Option<Arc<ServedToken>>,
    /// Why no (new) token could be obtained, while that is so.
    pub trouble: Option<Trouble>,
    /// When the worker will next look at the credential (and request a token if one is due).
    pub next_attempt: Option<Timestamp>,
}

impl Live {
    fn not_configured(id: &str) -> Live {
        Live {
            token: None,
            trouble: Some(Trouble {
                reason: "NotConfigured".into(),
                message: format!("no ClientCredential {id} in the agent's configuration"),
            }),
            next_attempt: None,
        }
    }
}

/// What became of a request for an early renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyRenewal {
    /// The worker was asked to renew now.
    Triggered,
    /// An early renewal of this credential happened less than the minimum interval ago.
    RateLimited,
    /// The rejected token is no longer the one served: a newer one is already there.
    Superseded,
}

impl EarlyRenewal {
    pub fn as_str(self) -> &'static str {
        match self {
            EarlyRenewal::Triggered => "triggered",
            EarlyRenewal::RateLimited => "rate_limited",
            EarlyRenewal::Superseded => "superseded",
        }
    }
}

/// One credential's slot.
pub struct Slot {
    id: String,
    live: watch::Sender<Live>,
    renew: Notify,
    last_early_renewal: Mutex<Option<Instant>>,
    early_renewal_interval: Duration,
}

impl Slot {
    /// `namespace/name`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token served now (valid or not), cheaply: an `Arc` clone under a read lock.
    pub fn token(&self) -> Option<Arc<ServedToken>> {
        self.live.borrow().token.clone()
    }

    /// Everything known about the credential now (for answers when there is no token).
    pub fn live(&self) -> Live {
        self.live.borrow().clone()
    }

    /// Subscribes to changes (tests and callers that wait for a token).
    pub fn subscribe(&self) -> watch::Receiver<Live> {
        self.live.subscribe()
    }

    /// Publishes the worker's view. An unchanged token keeps its `Arc`, so "is this still
    /// the token served" stays a pointer comparison.
    pub fn publish(&self, token: Option<ServedToken>, trouble: Option<Trouble>, next_attempt: Option<Timestamp>) {
        self.live.send_modify(|live| {
            let same = matches!((&live.token, &token), (Some(old), Some(new)) if old.same_as(new));
            if !same {
                live.token = token.map(Arc::new);
            }
            live.trouble = trouble;
            live.next_attempt = next_attempt;
        });
    }

    /// The credential left the configuration (or the agent stops).
    pub fn withdraw(&self) {
        self.live.send_replace(Live::not_configured(&self.id));
    }

    /// Asks for one early renewal because an upstream rejected `rejected`. Rate-limited per
    /// credential, and only for the token currently served: requests still in flight with an
    /// older token that come back 401 ask for nothing.
    pub fn request_early_renewal(&self, rejected: &Arc<ServedToken>) -> EarlyRenewal {
        let current = self.token();
        if !current.is_some_and(|c| Arc::ptr_eq(&c, rejected)) {
            return EarlyRenewal::Superseded;
        }
        let mut last = self.last_early_renewal.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.early_renewal_interval) {
            return EarlyRenewal::RateLimited;
        }
        *last = Some(now);
        // A permit is stored when the worker is busy, so the request is never lost.
        self.renew.notify_one();
        EarlyRenewal::Triggered
    }

    /// Resolves when a proxy asked for an early renewal (the worker's wake-up).
    pub async fn early_renewal_requested(&self) {
        self.renew.notified().await
    }
}

/// Every credential's slot, created on first use by either side: a proxy may name a
/// credential before its worker starts, or after it left the configuration.
pub struct LiveTokens {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    early_renewal_interval: Duration,
}

impl LiveTokens {
    /// `early_renewal_interval`: the least time between two renewals triggered by rejected
    /// tokens, per credential.
    pub fn new(early_renewal_interval: Duration) -> LiveTokens {
        LiveTokens { slots: Mutex::default(), early_renewal_interval }
    }

    /// The slot of credential `id` (`namespace/name`).
    pub fn slot(&self, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    id: id.to_owned(),
                    live: watch::channel(Live::not_configured(id)).0,
                    renew: Notify::new(),
                    last_early_renewal: Mutex::new(None),
                    early_renewal_interval: self.early_renewal_interval,
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str) -> ServedToken {
        ServedToken::new(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(value).unwrap(),
            Timestamp::now() + Duration::from_secs(60),
        )
    }

    #[test]
    fn an_unchanged_token_keeps_its_identity_and_a_new_one_replaces_it() {
        let tokens = LiveTokens::new(Duration::from_secs(60));
        let slot = tokens.slot("team-a/demo");
        assert!(slot.token().is_none());
        let t = token("Bearer one");
        let expires = Timestamp::from_millisecond(
            t.expires_at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64,
        )
        .unwrap();
        slot.publish(Some(t), None, None);
        let first = slot.token().unwrap();
        slot.publish(
            Some(ServedToken::new(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer one"), expires)),
            None,
            None,
        );
        assert!(Arc::ptr_eq(&first, &slot.token().unwrap()), "same token, same Arc");
        slot.publish(Some(token("Bearer two")), None, None);
        assert!(!Arc::ptr_eq(&first, &slot.token().unwrap()));
        assert!(Arc::ptr_eq(&tokens.slot("team-a/demo"), &slot), "one slot per credential");
    }

    #[test]
    fn early_renewals_are_rate_limited_and_only_for_the_token_served() {
        let slot = LiveTokens::new(Duration::from_secs(3600)).slot("team-a/demo");
        slot.publish(Some(token("Bearer one")), None, None);
        let one = slot.token().unwrap();
        assert_eq!(slot.request_early_renewal(&one), EarlyRenewal::Triggered);
        assert_eq!(slot.request_early_renewal(&one), EarlyRenewal::RateLimited);
        slot.publish(Some(token("Bearer two")), None, None);
        assert_eq!(slot.request_early_renewal(&one), EarlyRenewal::Superseded);
        let two = slot.token().unwrap();
        assert_eq!(slot.request_early_renewal(&two), EarlyRenewal::RateLimited, "the interval is per credential");
    }

    #[test]
    fn the_debug_output_never_shows_the_token() {
        let text = format!("{:?}", token("Bearer secret-value"));
        assert!(!text.contains("secret-value"), "{text}");
    }
}

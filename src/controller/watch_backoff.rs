//! How long a watch waits before it tries again after an error.
//!
//! kube's default (client-go's reflector numbers: 0.8 s doubling to 30 s, reset only after two
//! minutes without an error) grows through an API server outage, so that when the server
//! answers again each watch still sleeps out its grown delay, and the 410 "too old resource
//! version" the first attempt gets after a restart grows it further: on a real API server,
//! changes went unnoticed for 30 s and more after a 20 s outage (issue 26). Here the delay is
//! capped at [`MAX`], so every watch is back within a few seconds of the API server answering,
//! whatever the outage's length, and an answer (any event) resets it. A retry every
//! 2 s per watch during an outage costs the API server one refused connection each. A 410
//! (the watch's resourceVersion is too old, so the watcher relists next) is an answer: the
//! relist goes at once, as client-go's reflector does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};

/// The first delay after an error.
pub const MIN: Duration = Duration::from_millis(200);
/// The longest delay between two attempts.
pub const MAX: Duration = Duration::from_secs(2);

/// Exponential from [`MIN`] to [`MAX`], with ±20 % jitter so that the watches of many
/// replicas do not retry in step; reset by any event the watch delivers.
#[derive(Debug, Clone, Default)]
pub struct WatchBackoff {
    /// The next delay; zero means [`MIN`] (the state after a reset).
    next: Duration,
    /// Set when the last error was a 410: the next attempt (a relist) goes at once.
    expired: Arc<AtomicBool>,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.expired.swap(false, Ordering::SeqCst) {
            self.next = MIN;
            return Some(Duration::ZERO);
        }
        let delay = self.next.max(MIN);
        self.next = (delay * 2).min(MAX);
        Some(delay.mul_f64(rand::random_range(0.8..=1.2)).min(MAX))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = MIN;
    }
}

/// Whether a watcher error is a 410 Gone: the API server answered, and the watcher relists.
fn expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// `.retry_promptly()` on a watcher stream: [`WatchBackoff`] between attempts, none after a 410.
pub trait RetryPromptly<T>: Stream<Item = Result<T, watcher::Error>> + Sized + Send {
    fn retry_promptly(self) -> impl Stream<Item = Result<T, watcher::Error>> + Send {
        let backoff = WatchBackoff::default();
        let flag = backoff.expired.clone();
        self.inspect_err(move |e| {
            if expired(e) {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .backoff(backoff)
    }
}

impl<T, S: Stream<Item = Result<T, watcher::Error>> + Send> RetryPromptly<T> for S {}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn delays_double_from_the_minimum_and_never_exceed_the_cap() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next().unwrap()).collect();
        assert!(delays[0] >= MIN.mul_f64(0.8) && delays[0] <= MIN.mul_f64(1.2), "{delays:?}");
        assert!(delays[1] >= (MIN * 2).mul_f64(0.8), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX), "{delays:?}");
        assert!(delays[9] >= MAX.mul_f64(0.8), "a long outage ends at the cap: {delays:?}");
    }

    #[test]
    fn after_a_410_the_next_attempt_goes_at_once_and_the_delays_start_over() {
        let mut b = WatchBackoff::default();
        for _ in 0..10 {
            b.next();
        }
        b.expired.store(true, Ordering::SeqCst);
        assert_eq!(b.next(), Some(Duration::ZERO));
        assert!(b.next().unwrap() <= MIN.mul_f64(1.2), "and a further error waits the minimum");
    }

    #[test]
    fn an_answer_resets_the_delay_to_the_minimum() {
        let mut b = WatchBackoff::default();
        for _ in 0..10 {
            b.next();
        }
        b.reset();
        assert!(b.next().unwrap() <= MIN.mul_f64(1.2));
    }
}

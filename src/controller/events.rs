//! Events (events.k8s.io/v1) about credentials, with repeats folded into a series, in bounded
//! memory.
//!
//! kube's `Recorder` keeps a copy of every Event it published for six minutes (to fold a
//! repeat into a series) and scans that whole cache on every publish: after 10,000 first
//! tokens it held 10,000 Events (about 1.5 KiB each, most of them never repeated) and each
//! publish walked all of them. This recorder keeps, per (object, type, reason, note) it may
//! see again, only what a repeat needs: the Event's name, count and first time, in a cache
//! with a fixed capacity, pruned by age only when it is full. Events are still created and
//! patched exactly as kube's recorder does (same API group, same series rules), so the RBAC
//! and what `kubectl events` shows are unchanged.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};

pub use kube::runtime::events::{EventType, Reporter};

/// How long a repeat is folded into the earlier Event's series (as kube's recorder, and
/// client-go's, do).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How many Events are remembered for folding. A credential that fails keeps one entry (its
/// Warning repeats); past this, the oldest are dropped, and a repeat of a dropped one is
/// published as a new Event: more Events, never more memory.
const CAPACITY: usize = 4096;

pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    recent: Mutex<HashMap<u64, Recent>>,
    capacity: usize,
}

/// What a repeat of an Event needs: its name (in the namespace of the object it is about),
/// count and when it was last seen.
struct Recent {
    name: String,
    count: i32,
    last: Timestamp,
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Recorder { client, reporter, recent: Mutex::default(), capacity: CAPACITY }
    }

    /// Publishes an Event about `regarding`: a new Event, or, when the same one was published
    /// less than six minutes ago, its series count raised.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key(regarding, type_, reason, note);
        let repeat = self.remembered(key, now);
        // Cluster-scoped objects get their Events in "default", as with kube's recorder.
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let (name, count) = match repeat {
            Some((name, count)) => {
                let series = EventSeries { count, last_observed_time: MicroTime(now) };
                let patch = serde_json::json!({ "series": series });
                events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                (name, count)
            }
            None => {
                let event = self.event(regarding, type_, reason, note, now, &namespace);
                let created = events.create(&PostParams::default(), &event).await?;
                (created.metadata.name.unwrap_or_default(), 1)
            }
        };
        self.remember(key, Recent { name, count, last: now });
        Ok(())
    }

    /// The name and next count of an Event published within the window, if any.
    fn remembered(&self, key: u64, now: Timestamp) -> Option<(String, i32)> {
        let recent = self.lock();
        let entry = recent.get(&key).filter(|e| e.last + SERIES_WINDOW > now)?;
        // A series count starts at 2: the Event itself was the first.
        Some((entry.name.clone(), entry.count.max(1) + 1))
    }

    fn remember(&self, key: u64, entry: Recent) {
        let mut recent = self.lock();
        if recent.len() >= self.capacity && !recent.contains_key(&key) {
            let cutoff = entry.last - SERIES_WINDOW;
            recent.retain(|_, e| e.last > cutoff);
            // Still full: drop the oldest quarter, so that pruning stays rare.
            if recent.len() >= self.capacity {
                let mut ages: Vec<Timestamp> = recent.values().map(|e| e.last).collect();
                ages.sort_unstable();
                let keep_after = ages[ages.len() / 4];
                recent.retain(|_, e| e.last > keep_after);
            }
        }
        recent.insert(key, entry);
    }

    fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
        now: Timestamp,
        namespace: &str,
    ) -> K8sEvent {
        let object = regarding.name.clone().unwrap_or_else(|| self.reporter.controller.clone());
        K8sEvent {
            action: Some("Reconcile".into()),
            reason: Some(reason.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: Some(note.chars().take(1024).collect()),
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Recent>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Which Events are one: the same object (by uid), type, reason and note.
fn key(regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (regarding.uid.as_deref(), regarding.namespace.as_deref(), regarding.name.as_deref()).hash(&mut h);
    (type_ == EventType::Warning, reason, note).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(capacity: usize) -> Recorder {
        // A client that is never called: only the cache is exercised here.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let reporter = Reporter { controller: "tokensync".into(), instance: None };
        Recorder { client, reporter, recent: Mutex::default(), capacity }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn entry(name: &str, last: Timestamp) -> Recent {
        Recent { name: name.into(), count: 1, last }
    }

    #[tokio::test]
    async fn a_repeat_within_six_minutes_continues_the_series_and_a_later_one_starts_anew() {
        let r = recorder(8);
        r.remember(1, entry("ev.1", at(0)));
        assert_eq!(r.remembered(1, at(60)), Some(("ev.1".into(), 2)));
        r.remember(1, Recent { count: 2, ..entry("ev.1", at(60)) });
        assert_eq!(r.remembered(1, at(120)), Some(("ev.1".into(), 3)));
        assert_eq!(r.remembered(1, at(60 + 361)), None, "six minutes after the last: a new Event");
        assert_eq!(r.remembered(2, at(60)), None, "another Event");
    }

    #[tokio::test]
    async fn the_cache_never_grows_past_its_capacity() {
        let r = recorder(100);
        for i in 0..10_000u64 {
            r.remember(i, entry("ev", at(i as i64 / 100)));
            assert!(r.len() <= 100, "{} entries after {i}", r.len());
        }
        assert!(r.remembered(9_999, at(100)).is_some(), "the newest is kept");
    }
}

//! The etcd engine's replica: every object under `/registry/` as of one etcd revision and
//! the most recent events (with the objects before them), fed by one etcd watch
//! ([`super::etcd`]). Reads, lists at older revisions and watches are served from here, as
//! kube-apiserver serves them from its watch cache.
//!
//! # Invariants
//! - `revision` only grows; every event up to it has been applied, and an event `r` is
//!   applied exactly once, in revision order.
//! - `history` holds every event after `oldest` (etcd revisions are not dense: other keys and
//!   compactions take revisions too); a watch or list from before `oldest` is `Expired`.
//! - Objects are stored with `metadata.resourceVersion` stamped with their etcd mod revision
//!   (etcd's values carry none).

use super::watch::{Source, WatchStream};
use super::{merge_overlay, page, Event, ListPage, Stored, StoreError};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, watch};

/// The replica; see the module docs.
pub(crate) struct Mirror {
    state: RwLock<State>,
    /// Live events; replaced when the replica is loaded anew (its receivers then close).
    events: RwLock<broadcast::Sender<Arc<Event>>>,
    /// The applied revision, for writers waiting to see their write.
    applied: watch::Sender<u64>,
    /// Most events kept.
    keep: usize,
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Stored>,
    history: VecDeque<Arc<Event>>,
    revision: u64,
    oldest: u64,
}

impl Mirror {
    pub(crate) fn new(keep: u64) -> Arc<Mirror> {
        let (events, _) = broadcast::channel(8192);
        Arc::new(Mirror {
            state: RwLock::default(),
            events: RwLock::new(events),
            applied: watch::Sender::new(0),
            keep: keep.max(1) as usize,
            closed: AtomicBool::new(false),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything with `objects` as read at `revision`; watchers of the old state
    /// are ended (they get `Expired` and start over).
    pub(crate) fn load(&self, objects: BTreeMap<String, Stored>, revision: u64) {
        {
            let mut st = self.write();
            *st = State { objects, history: VecDeque::new(), revision, oldest: revision };
            let (fresh, _) = broadcast::channel(8192);
            *self.events.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        self.applied.send_replace(revision);
    }

    /// Applies one watch response's events, in revision order (those at or below the
    /// applied revision are skipped: a resumed watch may repeat some).
    pub(crate) fn apply(&self, events: Vec<Event>) {
        let mut top = 0;
        {
            let mut st = self.write();
            let tx = self.events.read().unwrap_or_else(|e| e.into_inner()).clone();
            // One etcd transaction may change several keys at one revision: those all apply.
            let floor = st.revision;
            for ev in events {
                if ev.revision <= floor {
                    continue;
                }
                match ev.kind {
                    super::EventType::Deleted => {
                        st.objects.remove(&ev.key);
                    }
                    _ => {
                        st.objects.insert(ev.key.clone(), Stored { revision: ev.revision, json: ev.object.clone() });
                    }
                }
                st.revision = ev.revision;
                top = ev.revision;
                let ev = Arc::new(ev);
                st.history.push_back(ev.clone());
                while st.history.len() > self.keep {
                    if let Some(old) = st.history.pop_front() {
                        st.oldest = st.oldest.max(old.revision);
                    }
                }
                let _ = tx.send(ev);
            }
        }
        if top > 0 {
            self.reached(top);
        }
    }

    /// Tells writers waiting in [`Mirror::wait_for`] that `revision` is applied.
    fn reached(&self, revision: u64) {
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
    }

    /// Moves the applied revision to `revision` without events (an etcd progress
    /// notification: nothing under the prefix changed up to it).
    pub(crate) fn advance(&self, revision: u64) {
        {
            let mut st = self.write();
            if revision <= st.revision {
                return;
            }
            st.revision = revision;
        }
        self.reached(revision);
    }

    /// etcd was compacted at `revision`: older states can no longer be served.
    pub(crate) fn compacted_at(&self, revision: u64) {
        let mut st = self.write();
        if revision <= st.oldest {
            return;
        }
        st.oldest = revision;
        while st.history.front().is_some_and(|e| e.revision <= revision) {
            st.history.pop_front();
        }
    }

    pub(crate) fn revision(&self) -> u64 {
        self.read().revision
    }

    pub(crate) fn oldest(&self) -> u64 {
        self.read().oldest
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the replica has applied `revision`, for at most `timeout`.
    pub(crate) async fn wait_for(&self, revision: u64, timeout: std::time::Duration) -> Result<(), StoreError> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, async { rx.wait_for(|r| *r >= revision).await.is_ok() }).await;
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout(format!("the datastore's changes up to revision {revision} did not arrive within {}s", timeout.as_secs()))),
        }
    }

    /// The event of revision `revision`, while the history holds it.
    pub(crate) fn event_at(&self, revision: u64) -> Option<Arc<Event>> {
        let st = self.read();
        let i = st.history.partition_point(|e| e.revision < revision);
        st.history.get(i).filter(|e| e.revision == revision).cloned()
    }

    pub(crate) fn get(&self, key: &str) -> Option<Stored> {
        self.read().objects.get(key).cloned()
    }

    /// Every object under `prefix` now (for rewriting them).
    pub(crate) fn entries(&self, prefix: &str) -> Vec<(String, Stored)> {
        let st = self.read();
        under(&st.objects, std::ops::Bound::Included(prefix), prefix).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The events under `prefix` after `last`, and the revision they reach.
    pub(crate) fn events_after(&self, last: u64, prefix: &str) -> Result<(Vec<Arc<Event>>, u64), StoreError> {
        let st = self.read();
        if last < st.oldest {
            return Err(StoreError::Expired { requested: last, oldest: st.oldest });
        }
        let i = st.history.partition_point(|e| e.revision <= last);
        let events = st.history.iter().skip(i).filter(|e| e.key.starts_with(prefix)).cloned().collect();
        Ok((events, st.revision))
    }

    /// A watch of `prefix` from `from` (0: from now). A revision this replica has not yet
    /// reached is fine: the watch delivers what comes after it.
    pub(crate) fn watch(self: &Arc<Self>, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        let tx = self.events.read().unwrap_or_else(|e| e.into_inner()).clone();
        WatchStream::start(Source::Mirror(self.clone()), &tx, prefix, from)
    }

    /// As the embedded store's list: entries under `prefix` after `after`, kept by `filter`,
    /// at most `limit` (0: all), at revision `at` (rebuilt from the history) or now.
    pub(crate) fn list(&self, prefix: &str, after: Option<&str>, limit: usize, at: Option<u64>, filter: &dyn Fn(&[u8]) -> bool) -> Result<ListPage, StoreError> {
        let st = self.read();
        let mut overlay: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
        let revision = match at {
            Some(r) if r < st.revision => {
                if r < st.oldest {
                    return Err(StoreError::Expired { requested: r, oldest: st.oldest });
                }
                let i = st.history.partition_point(|e| e.revision <= r);
                for ev in st.history.iter().skip(i) {
                    if !ev.key.starts_with(prefix) || after.is_some_and(|a| ev.key.as_str() <= a) {
                        continue;
                    }
                    overlay.entry(ev.key.clone()).or_insert_with(|| ev.prev.clone());
                }
                r
            }
            Some(r) if r > st.revision => return Err(StoreError::TooNew { requested: r, current: st.revision }),
            _ => st.revision,
        };
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
            _ => std::ops::Bound::Included(prefix),
        };
        let current = under(&st.objects, start, prefix).map(|(k, v)| Ok((k.clone(), v.json.clone())));
        page(merge_overlay(current, overlay), limit, filter, revision)
    }

    pub(crate) fn count_after(&self, prefix: &str, key: &str) -> u64 {
        let st = self.read();
        let start = if key >= prefix { std::ops::Bound::Excluded(key) } else { std::ops::Bound::Included(prefix) };
        under(&st.objects, start, prefix).count() as u64
    }
}

/// The objects from `start` on whose keys begin with `prefix`.
fn under<'a>(objects: &'a BTreeMap<String, Stored>, start: std::ops::Bound<&'a str>, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Stored)> {
    objects.range::<str, _>((start, std::ops::Bound::Unbounded)).take_while(move |(k, _)| k.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventType;

    fn ev(revision: u64, kind: EventType, key: &str, object: &str, prev: Option<&str>) -> Event {
        Event { revision, kind, key: key.into(), object: Bytes::from(object.to_string()), prev: prev.map(|p| Bytes::from(p.to_string())) }
    }

    #[test]
    fn lists_now_and_at_older_revisions() {
        let m = Mirror::new(100);
        m.load(BTreeMap::new(), 10);
        m.apply(vec![ev(11, EventType::Added, "/core/a/x", "x1", None), ev(13, EventType::Added, "/core/a/y", "y1", None)]);
        m.apply(vec![ev(14, EventType::Modified, "/core/a/x", "x2", Some("x1")), ev(15, EventType::Deleted, "/core/a/y", "y1", Some("y1"))]);
        let now = m.list("/core/a/", None, 0, None, &|_| true).unwrap();
        assert_eq!(now.revision, 15);
        assert_eq!(now.items.iter().map(|(k, v)| (k.as_str(), &v[..])).collect::<Vec<_>>(), vec![("/core/a/x", &b"x2"[..])]);
        let then = m.list("/core/a/", None, 0, Some(13), &|_| true).unwrap();
        assert_eq!(then.items.iter().map(|(_, v)| &v[..]).collect::<Vec<_>>(), vec![&b"x1"[..], &b"y1"[..]]);
        assert!(matches!(m.list("/core/a/", None, 0, Some(9), &|_| true), Err(StoreError::Expired { .. })));
        assert!(matches!(m.list("/core/a/", None, 0, Some(16), &|_| true), Err(StoreError::TooNew { .. })));
        let page = m.list("/core/a/", None, 1, Some(13), &|_| true).unwrap();
        assert_eq!(page.next_key.as_deref(), Some("/core/a/x"));
        assert_eq!(m.count_after("/core/a/", "/core/a/x"), 0);
    }

    #[test]
    fn repeated_events_apply_once_and_history_is_bounded() {
        let m = Mirror::new(2);
        m.load(BTreeMap::new(), 1);
        m.apply(vec![ev(2, EventType::Added, "/k/a", "a", None), ev(3, EventType::Added, "/k/b", "b", None)]);
        m.apply(vec![ev(3, EventType::Added, "/k/b", "b", None), ev(4, EventType::Added, "/k/c", "c", None)]);
        assert_eq!(m.revision(), 4);
        assert_eq!(m.oldest(), 2, "event 2 fell out of the history");
        assert!(m.events_after(1, "/k/").is_err());
        let (evs, top) = m.events_after(2, "/k/").unwrap();
        assert_eq!((evs.iter().map(|e| e.revision).collect::<Vec<_>>(), top), (vec![3, 4], 4));
        m.compacted_at(3);
        assert!(matches!(m.events_after(2, "/k/"), Err(StoreError::Expired { oldest: 3, .. })));
        assert!(m.event_at(4).is_some() && m.event_at(3).is_none());
    }

    #[tokio::test]
    async fn a_watch_from_a_revision_not_yet_reached_gets_what_follows_it() {
        let m = Mirror::new(100);
        m.load(BTreeMap::new(), 5);
        let mut w = m.watch("/k/", 7).unwrap();
        m.apply(vec![ev(6, EventType::Added, "/k/a", "a", None), ev(7, EventType::Added, "/k/b", "b", None), ev(8, EventType::Added, "/k/c", "c", None)]);
        let got = w.next().await.unwrap();
        assert_eq!(got.revision, 8);
        // A reload ends watches: they start over from a list.
        m.load(BTreeMap::new(), 20);
        assert!(matches!(w.next().await, Err(StoreError::Expired { .. })));
        assert!(m.wait_for(20, std::time::Duration::from_millis(10)).await.is_ok());
        assert!(matches!(m.wait_for(21, std::time::Duration::from_millis(10)).await, Err(StoreError::Timeout(_))));
    }
}

//! The work queue controllers and the scheduler run on: keys are de-duplicated (a key waiting
//! is not added twice, a key being worked on is run once more after it finishes), can be
//! scheduled for later (one timer task per queue, in the owner's scope), and failing keys come
//! back with exponential back-off. Once the scope is cancelled, [`Queue::next`] returns `None`.

use super::task::Scope;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    waiting: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Keys added while being worked on: queued again when that work is done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
    /// Keys due later, by due time (a sequence number keeps equal times apart).
    later: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

/// A de-duplicating, rate-limited queue of object keys (`namespace/name` or `name`).
#[derive(Clone)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
    timer: Arc<Notify>,
    scope: Scope,
}

/// Back-off of a key that failed `n` times in a row: 50 ms doubling, at most 2 minutes.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << n.min(12))).min(Duration::from_secs(120))
}

impl Queue {
    /// A queue whose timer runs in `scope` and whose [`Queue::next`] ends with it.
    pub fn new(scope: &Scope) -> Queue {
        let q = Queue { state: Default::default(), ready: Default::default(), timer: Default::default(), scope: scope.clone() };
        let t = q.clone();
        scope.spawn(async move { t.run_timer().await });
        q
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run_timer(&self) {
        loop {
            let woken = self.timer.notified();
            let next = {
                let mut s = self.lock();
                let now = Instant::now();
                let due: Vec<(Instant, u64)> = s.later.range(..=(now, u64::MAX)).map(|(k, _)| *k).collect();
                let keys: Vec<String> = due.iter().filter_map(|k| s.later.remove(k)).collect();
                drop(s);
                for k in keys {
                    self.add(k);
                }
                self.lock().later.keys().next().map(|(t, _)| *t)
            };
            match next {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Queues `key` now, unless it is already waiting.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.active.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.waiting.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let mut s = self.lock();
        s.seq += 1;
        let seq = s.seq;
        s.later.insert((Instant::now() + delay, seq), key.into());
        drop(s);
        self.timer.notify_one();
    }

    /// Waits for the next key; the caller must call [`Queue::done`] with it. `None` once the
    /// queue's scope is cancelled.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.waiting.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    if !s.waiting.is_empty() {
                        drop(s);
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = self.scope.cancelled() => return None,
            }
        }
    }

    /// Ends the work on `key`: `ok` resets its back-off; a failure retries it later.
    pub fn done(&self, key: &str, ok: bool) {
        let mut s = self.lock();
        s.active.remove(key);
        let rerun = s.dirty.remove(key);
        let retry = if ok {
            s.failures.remove(key);
            None
        } else {
            let n = s.failures.entry(key.to_string()).or_insert(0);
            *n += 1;
            Some(backoff(*n - 1))
        };
        drop(s);
        if rerun {
            self.add(key.to_string());
        } else if let Some(delay) = retry {
            self.add_after(key.to_string(), delay);
        }
    }

    /// Keys waiting now (not those due later).
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_rerun_once_when_added_during_work() {
        let scope = Scope::new();
        let q = Queue::new(&scope);
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await.unwrap();
        assert_eq!(k, "a");
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 1, "a is being worked on: only marked dirty");
        q.done("a", true);
        assert_eq!(q.next().await.unwrap(), "b");
        assert_eq!(q.next().await.unwrap(), "a");
        q.done("b", true);
        q.done("a", true);
        assert!(q.is_empty());
        scope.stop().await;
    }

    #[tokio::test]
    async fn failures_come_back_with_growing_backoff() {
        assert!(backoff(0) < backoff(3));
        assert_eq!(backoff(40), Duration::from_secs(120));
        let scope = Scope::new();
        let q = Queue::new(&scope);
        q.add("x");
        let k = q.next().await.unwrap();
        q.done(&k, false);
        assert!(q.is_empty());
        let again = tokio::time::timeout(Duration::from_secs(2), q.next()).await;
        assert_eq!(again.ok().flatten().as_deref(), Some("x"));
        scope.stop().await;
    }

    #[tokio::test]
    async fn delayed_keys_come_in_due_order_and_next_ends_with_the_scope() {
        let scope = Scope::new();
        let q = Queue::new(&scope);
        q.add_after("late", Duration::from_millis(300));
        q.add_after("early", Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(q.next().await.as_deref(), Some("early"));
        assert!(t0.elapsed() >= Duration::from_millis(90));
        assert_eq!(q.next().await.as_deref(), Some("late"));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        scope.stop().await;
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap(), None);
    }
}

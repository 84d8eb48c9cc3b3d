//! The work queue every controller runs on: keys are de-duplicated (a key waiting is not
//! added twice, a key being worked on is re-run once after it finishes), can be scheduled
//! for later, and failing keys come back with exponential back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    waiting: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Keys added while being worked on: queued again when that work is done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// A de-duplicating, rate-limited queue of object keys (`namespace/name` or `name`).
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

/// Back-off of a key that failed `n` times in a row: 50 ms doubling, at most 2 minutes.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << n.min(12))).min(Duration::from_secs(120))
}

impl Queue {
    pub fn new() -> Queue {
        Queue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let key = key.into();
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Waits for the next key; the caller must call [`Queue::done`] with it.
    pub async fn next(&self) -> String {
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
                    return key;
                }
            }
            notified.await;
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

    /// Keys waiting (for tests and metrics).
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
        let q = Queue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, "a");
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 1, "a is being worked on: only marked dirty");
        q.done("a", true);
        assert_eq!(q.next().await, "b");
        assert_eq!(q.next().await, "a");
        q.done("b", true);
        q.done("a", true);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn failures_come_back_with_growing_backoff() {
        assert!(backoff(0) < backoff(3));
        assert_eq!(backoff(40), Duration::from_secs(120));
        let q = Queue::new();
        q.add("x");
        let k = q.next().await;
        q.done(&k, false);
        assert!(q.is_empty());
        let again = tokio::time::timeout(Duration::from_secs(2), q.next()).await;
        assert_eq!(again.ok().as_deref(), Some("x"));
    }
}

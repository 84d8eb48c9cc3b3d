//! Follows a collection: lists it (in pages, one consistent snapshot), then watches from the
//! list's resourceVersion with bookmarks, resuming after a watch ends and listing again when
//! the server says the history is gone (410). A relist is marked: [`Event::Init`], the listed
//! objects as [`Event::InitApply`], then [`Event::InitDone`], so a cache can replace its
//! contents whole and learn what was deleted while it was not watching. Failures back off
//! (0.8 s doubling to 30 s, with jitter) instead of hammering the server.

use super::client::{Client, EventKind};
use crate::vocab::resource::Target;
use serde_json::Value;
use std::time::Duration;

/// What a watcher reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A (re)list starts: what follows until [`Event::InitDone`] is the whole collection.
    Init,
    /// One object of the list.
    InitApply(Value),
    /// The list is complete: objects not seen since [`Event::Init`] are gone.
    InitDone,
    /// An object was added or changed.
    Apply(Value),
    /// An object was deleted (its last state).
    Delete(Value),
}

/// Watches end after a random time in [5, 10) minutes, as client-go's reflector asks, so
/// connections are refreshed and load spreads out.
const MIN_WATCH_TIMEOUT: u64 = 300;

/// A random value in `0..n` (not for cryptography: spreads timeouts and retries).
fn jitter(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % n.max(1) as u128) as u64
}

/// Back-off after `failures` failures in a row: 0.8 s doubling, at most 30 s, plus up to
/// half of it again at random.
pub fn backoff(failures: u32) -> Duration {
    let base = (800u64 << failures.min(6)).min(30_000);
    Duration::from_millis(base + jitter(base / 2 + 1))
}

/// Follows `target` until the calling task is dropped, handing every event to `sink` in
/// order.
pub async fn run<F>(client: Client, target: Target, mut sink: F)
where
    F: FnMut(Event) + Send,
{
    let mut failures = 0u32;
    loop {
        // List, as one snapshot.
        let (items, mut rv) = match client.list_at(target.clone()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%target, error = %e, "list failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
                continue;
            }
        };
        sink(Event::Init);
        for item in items {
            sink(Event::InitApply(item));
        }
        sink(Event::InitDone);
        // Watch from the list's revision; come back to listing only when the history is gone.
        loop {
            let w = target.clone().param("resourceVersion", &rv).param("allowWatchBookmarks", "true").param("timeoutSeconds", MIN_WATCH_TIMEOUT + jitter(MIN_WATCH_TIMEOUT));
            let mut watch = match client.watch(w).await {
                Ok(w) => w,
                Err(e) if e.code == 410 => break,
                Err(e) => {
                    tracing::debug!(%target, error = %e, "watch failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                    continue;
                }
            };
            let mut expired = false;
            while let Some(ev) = watch.next().await {
                if ev.kind == EventKind::Error {
                    // 410 Gone, or another failure mid-stream: either way the events since
                    // `rv` may be lost, so list again.
                    tracing::debug!(%target, status = %ev.object, "watch error; listing again");
                    expired = true;
                    break;
                }
                failures = 0;
                if let Some(r) = ev.object["metadata"]["resourceVersion"].as_str() {
                    rv = r.to_string();
                }
                match ev.kind {
                    EventKind::Added | EventKind::Modified => sink(Event::Apply(ev.object)),
                    EventKind::Deleted => sink(Event::Delete(ev.object)),
                    EventKind::Bookmark | EventKind::Error => {}
                }
            }
            if expired {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_bound() {
        assert!(backoff(0) >= Duration::from_millis(800) && backoff(0) < Duration::from_millis(1300));
        assert!(backoff(3) >= Duration::from_millis(6400));
        assert!(backoff(40) <= Duration::from_secs(45));
    }
}

//! Follows a collection: gets its whole state as one consistent snapshot, then its changes,
//! resuming after a watch ends and starting over when the server says the history is gone
//! (410). The snapshot comes from a watch-list (`sendInitialEvents=true`: the objects as
//! events up to the bookmark marked `k8s.io/initial-events-end`, then live events on the
//! same stream, as client-go's reflector asks), or, from a server that refuses that, from a
//! list in pages followed by a watch from the list's resourceVersion. Either way a relist is
//! marked: [`Event::Init`], the objects as [`Event::InitApply`], then [`Event::InitDone`],
//! so a cache can replace its contents whole and learn what was deleted while it was not
//! watching. Failures back off (0.8 s doubling to 30 s, with jitter).

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

/// The annotation of the bookmark that ends a watch-list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Follows `target` until the calling task is dropped, handing every event to `sink` in
/// order.
pub async fn run<F>(client: Client, target: Target, mut sink: F)
where
    F: FnMut(Event) + Send,
{
    let mut failures = 0u32;
    let mut watch_list = true;
    loop {
        let mut rv = if watch_list {
            match watch_listed(&client, &target, &mut sink, &mut failures).await {
                Listing::Resume(rv) => rv,
                Listing::Again => continue,
                Listing::Refused => {
                    tracing::debug!(%target, "the server refuses watch-lists; listing instead");
                    watch_list = false;
                    continue;
                }
            }
        } else {
            match listed(&client, &target, &mut sink, &mut failures).await {
                Some(rv) => rv,
                None => continue,
            }
        };
        follow(&client, &target, &mut rv, &mut sink, &mut failures).await;
    }
}

/// How a watch-list attempt ended.
enum Listing {
    /// The snapshot was delivered and the stream ended later: resume from this revision.
    Resume(String),
    /// Failed (after backing off): start over.
    Again,
    /// The server does not serve watch-lists.
    Refused,
}

/// A watch-list: the snapshot as events, then live events until the stream ends.
async fn watch_listed<F: FnMut(Event) + Send>(client: &Client, target: &Target, sink: &mut F, failures: &mut u32) -> Listing {
    let w = target.clone().param("sendInitialEvents", "true").param("resourceVersionMatch", "NotOlderThan").param("allowWatchBookmarks", "true").param("timeoutSeconds", MIN_WATCH_TIMEOUT + jitter(MIN_WATCH_TIMEOUT));
    let mut watch = match client.watch(w).await {
        Ok(w) => w,
        Err(e) if e.code == 400 || e.code == 422 || e.code == 404 => return Listing::Refused,
        Err(e) => {
            tracing::debug!(%target, error = %e, "watch-list failed; retrying");
            tokio::time::sleep(backoff(*failures)).await;
            *failures += 1;
            return Listing::Again;
        }
    };
    // Objects until the end-of-initial-events bookmark; nothing reaches the sink unless the
    // whole snapshot arrived.
    let mut initial = Vec::new();
    let rv = loop {
        match watch.next().await {
            Some(ev) if ev.kind == EventKind::Added => initial.push(ev.object),
            Some(ev) if ev.kind == EventKind::Bookmark && ev.object["metadata"]["annotations"][INITIAL_EVENTS_END] == "true" => {
                break ev.object["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
            }
            Some(ev) if ev.kind == EventKind::Bookmark => {}
            Some(ev) if ev.kind == EventKind::Error && matches!(ev.object["code"].as_i64(), Some(400 | 422)) => return Listing::Refused,
            other => {
                let why = other.map(|e| e.object.to_string()).unwrap_or_else(|| "the stream ended".into());
                tracing::debug!(%target, %why, "watch-list ended before its initial events did; retrying");
                tokio::time::sleep(backoff(*failures)).await;
                *failures += 1;
                return Listing::Again;
            }
        }
    };
    sink(Event::Init);
    for o in initial {
        sink(Event::InitApply(o));
    }
    sink(Event::InitDone);
    *failures = 0;
    let mut rv = rv;
    if relay(&mut watch, &mut rv, sink).await {
        return Listing::Again;
    }
    Listing::Resume(rv)
}

/// A paged list: the snapshot, and the revision it was read at (`None` after a failure).
async fn listed<F: FnMut(Event) + Send>(client: &Client, target: &Target, sink: &mut F, failures: &mut u32) -> Option<String> {
    let (items, rv) = match client.list_at(target.clone()).await {
            Ok(l) => l,
        Err(e) => {
            tracing::debug!(%target, error = %e, "list failed; retrying");
            tokio::time::sleep(backoff(*failures)).await;
            *failures += 1;
            return None;
        }
    };
    sink(Event::Init);
    for item in items {
        sink(Event::InitApply(item));
    }
    sink(Event::InitDone);
    Some(rv)
}

/// Watches from `rv` until the history is gone (then the caller starts over).
async fn follow<F: FnMut(Event) + Send>(client: &Client, target: &Target, rv: &mut String, sink: &mut F, failures: &mut u32) {
    loop {
        let w = target.clone().param("resourceVersion", rv.as_str()).param("allowWatchBookmarks", "true").param("timeoutSeconds", MIN_WATCH_TIMEOUT + jitter(MIN_WATCH_TIMEOUT));
        let mut watch = match client.watch(w).await {
            Ok(w) => {
                *failures = 0;
                w
            }
            Err(e) if e.code == 410 => return,
            Err(e) => {
                tracing::debug!(%target, error = %e, "watch failed; retrying");
                tokio::time::sleep(backoff(*failures)).await;
                *failures += 1;
                continue;
            }
        };
        if relay(&mut watch, rv, sink).await {
            return;
        }
    }
}

/// Hands live events to `sink`, keeping `rv` at the last one seen, until the stream ends;
/// true if it ended in an error (410 Gone, or another failure: the events since `rv` may
/// be lost, so the caller starts over).
async fn relay<F: FnMut(Event) + Send>(watch: &mut super::client::Watch, rv: &mut String, sink: &mut F) -> bool {
    while let Some(ev) = watch.next().await {
        if ev.kind == EventKind::Error {
            tracing::debug!(status = %ev.object, "watch error; starting over");
            return true;
        }
        if let Some(r) = ev.object["metadata"]["resourceVersion"].as_str() {
            *rv = r.to_string();
        }
        match ev.kind {
            EventKind::Added | EventKind::Modified => sink(Event::Apply(ev.object)),
            EventKind::Deleted => sink(Event::Delete(ev.object)),
            EventKind::Bookmark | EventKind::Error => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::client::{BoxFuture, Request, Response, ResponseBody, Transport};
    use crate::vocab::resource::builtin::CONFIGMAPS;
    use crate::vocab::status::ApiError;
    use bytes::Bytes;

    /// A server that refuses watch-lists (as one without the feature does): lists hold one
    /// object, watches report one change.
    struct OldServer;

    impl Transport for OldServer {
        fn send<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Response, ApiError>> {
            Box::pin(async move {
                if req.query.contains("sendInitialEvents=true") {
                    let status = ApiError::bad_request("sendInitialEvents is not supported").to_status();
                    return Ok(Response { code: 400, body: ResponseBody::Full(Bytes::from(status.to_string())) });
                }
                if req.query.contains("watch=true") {
                    assert!(req.query.contains("resourceVersion=7"), "watches resume from the list: {}", req.query);
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    tx.send(Bytes::from_static(b"{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"8\"}}}\n")).await.unwrap();
                    tokio::spawn(async move {
                        // Keep the stream open (as a server does until its timeout).
                        tx.closed().await;
                    });
                    return Ok(Response { code: 200, body: ResponseBody::Stream(rx) });
                }
                let list = br#"{"kind":"ConfigMapList","metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"a","resourceVersion":"7"}}]}"#;
                Ok(Response { code: 200, body: ResponseBody::Full(Bytes::from_static(list)) })
            })
        }
    }

    #[tokio::test]
    async fn a_server_without_watch_lists_gets_list_and_watch() {
        let client = Client::new(std::sync::Arc::new(OldServer), "test");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run(client, CONFIGMAPS.all(), move |ev| {
            let _ = tx.send(ev);
        }));
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.expect("events arrive").unwrap();
            seen.push(match ev {
                Event::Init => "init".to_string(),
                Event::InitApply(o) => format!("list {}", o["metadata"]["name"].as_str().unwrap()),
                Event::InitDone => "done".to_string(),
                Event::Apply(o) => format!("apply {}", o["metadata"]["resourceVersion"].as_str().unwrap()),
                Event::Delete(_) => "delete".to_string(),
            });
        }
        assert_eq!(seen, ["init", "list a", "done", "apply 8"]);
        task.abort();
    }

    #[test]
    fn backoff_grows_to_a_bound() {
        assert!(backoff(0) >= Duration::from_millis(800) && backoff(0) < Duration::from_millis(1300));
        assert!(backoff(3) >= Duration::from_millis(6400));
        assert!(backoff(40) <= Duration::from_secs(45));
    }
}

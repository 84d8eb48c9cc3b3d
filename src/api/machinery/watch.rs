//! Watch requests: initial state (when asked), then events streamed as JSON lines, with
//! bookmarks and an `ERROR` event (410) when the requested revision is gone.

use crate::api::handlers::Selection;
use crate::vocab::object as vobj;
use crate::api::kinds::Kind;
use crate::api::negotiate::Format;
use crate::api::request::{Query, ResourceReq};
use crate::vocab::status::ApiError;
use crate::api::{table, Api};
use crate::store::{EventType, StoreError, WatchStream};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Interval between bookmarks when the client allows them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// Longest a watch runs when the client sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What a watch stream is rendered with.
struct Encoder {
    kind: &'static Kind,
    format: Format,
    include: Option<String>,
}

impl Encoder {
    fn event(&self, ty: &str, object: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(object.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(ty.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        match self.format {
            Format::Table => {
                let o: Value = serde_json::from_slice(object).unwrap_or(Value::Null);
                let t = table::render(self.kind, &[o], json!({}), self.include.as_deref());
                out.extend_from_slice(t.to_string().as_bytes());
            }
            Format::Metadata { .. } => {
                let o: Value = serde_json::from_slice(object).unwrap_or(Value::Null);
                out.extend_from_slice(table::partial(&o).to_string().as_bytes());
            }
            _ => out.extend_from_slice(object),
        }
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }

    fn value_event(&self, ty: &str, v: &Value) -> Bytes {
        Bytes::from(format!("{}\n", json!({"type": ty, "object": v})))
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let o = match self.format {
            Format::Metadata { .. } => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}),
            _ => json!({"kind": self.kind.kind, "apiVersion": self.kind.api_version(), "metadata": meta}),
        };
        self.value_event("BOOKMARK", &o)
    }
}

impl Api {
    /// Starts a watch; the returned receiver yields the encoded stream. `open` (the open
    /// watches' gauge) stays with the stream until it ends.
    pub async fn watch(self: &Arc<Self>, rr: &ResourceReq, q: &Query, format: Format, open: crate::api::front::instruments::Watching) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let mut sel = Selection::from_query(rr.kind, q)?;
        if let Some(name) = &rr.name {
            sel.fields.0.push(("metadata.name".into(), true, name.clone()));
        }
        let rv = vobj::parse_rv(q.get("resourceVersion"))?;
        // Initial events: asked for explicitly, or the legacy behaviour of a watch without a
        // resourceVersion (or "0").
        let explicit_initial = match q.get("sendInitialEvents") {
            Some("true") => true,
            Some("false") | None => false,
            Some(other) => return Err(ApiError::bad_request(format!("invalid sendInitialEvents {other:?}"))),
        };
        let send_initial = explicit_initial || (q.get("sendInitialEvents").is_none() && rv.is_none_or(|r| r == 0));
        if explicit_initial && !q.flag("allowWatchBookmarks") {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", vec![crate::vocab::status::Cause::forbidden(
                "allowWatchBookmarks",
                "allowWatchBookmarks must be true when sendInitialEvents is set",
            )]));
        }
        let bookmarks = q.flag("allowWatchBookmarks");
        let timeout = q.uint("timeoutSeconds")?.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
        let prefix = rr.kind.prefix(rr.namespace.as_deref());
        let enc = Encoder { kind: rr.kind, format, include: q.get("includeObject").map(String::from) };
        let (tx, rx) = mpsc::channel::<Bytes>(256);

        // Initial state first (a consistent list), then changes after its revision.
        let mut initial = Vec::new();
        let from = if send_initial {
            self.store.sync().await?;
            let filter = |raw: &[u8]| sel.matches_bytes(raw);
            let page = self.store.list(&prefix, None, 0, None, &filter)?;
            initial = page.items;
            page.revision
        } else {
            rv.unwrap_or(0)
        };
        let stream = match self.store.watch(&prefix, from) {
            Ok(s) => Some(s),
            Err(StoreError::Expired { requested, oldest }) => {
                let err = ApiError::gone_watch(requested, oldest).to_status();
                let _ = tx.send(enc.value_event("ERROR", &err)).await;
                None
            }
            Err(e) => return Err(e.into()),
        };
        let Some(stream) = stream else { return Ok(rx) };
        tokio::spawn(async move {
            let _open = open;
            for (_, raw) in initial {
                if tx.send(enc.event("ADDED", &raw)).await.is_err() {
                    return;
                }
            }
            if explicit_initial && tx.send(enc.bookmark(from, true)).await.is_err() {
                return;
            }
            pump(stream, tx, enc, sel, bookmarks, timeout).await;
        });
        Ok(rx)
    }
}

async fn pump(mut stream: WatchStream, tx: mpsc::Sender<Bytes>, enc: Encoder, sel: Selection, bookmarks: bool, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    loop {
        let next = tokio::select! {
            ev = stream.next() => ev,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = ticker.tick() => {
                if bookmarks && tx.send(enc.bookmark(stream.progress(), false)).await.is_err() {
                    return;
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        let ev = match next {
            Ok(ev) => ev,
            Err(StoreError::Expired { requested, oldest }) => {
                let _ = tx.send(enc.value_event("ERROR", &ApiError::gone_watch(requested, oldest).to_status())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(enc.value_event("ERROR", &ApiError::from(e).to_status())).await;
                return;
            }
        };
        // With a selector, an object moving in or out of it is ADDED or DELETED.
        let ty = if sel.is_everything() {
            ev.kind.as_str()
        } else {
            let now = sel.matches_stored(&ev.key, &ev.object);
            let before = ev.prev.as_ref().is_some_and(|p| sel.matches_stored(&ev.key, p));
            match (ev.kind, before, now) {
                (EventType::Deleted, true, _) => "DELETED",
                (EventType::Deleted, false, _) => continue,
                (_, false, true) => "ADDED",
                (_, true, true) => "MODIFIED",
                (_, true, false) => "DELETED",
                (_, false, false) => continue,
            }
        };
        if tx.send(enc.event(ty, &ev.object)).await.is_err() {
            return;
        }
    }
}

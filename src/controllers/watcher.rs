//! Keeps a controller informed: lists a collection, then follows its watch from the list's
//! resourceVersion, resuming after a dropped stream and listing again after `410 Gone`.
//! Every object seen (listed or changed) is handed to the controller's mapper, which turns
//! it into queue keys; reconcilers then read the current state from the API.

use crate::client::Client;
use serde_json::Value;
use std::time::Duration;

/// Follows `path` (a collection URL, optionally with a query) for as long as the process
/// runs, calling `seen(event_type, object)` for each object listed or changed
/// (`ADDED` for listed ones).
pub fn follow<F>(client: Client, path: String, seen: F)
where
    F: Fn(&str, &Value) + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let list = match client.get(&path).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(%path, error = %e, "list failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for item in list["items"].as_array().into_iter().flatten() {
                seen("ADDED", item);
            }
            let mut rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
            // Follow the watch; come back to listing only when the history is gone.
            loop {
                let url = format!("{path}{sep}resourceVersion={rv}&allowWatchBookmarks=true");
                let mut events = match client.watch(&url).await {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!(%path, error = %e, "watch failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                };
                let mut expired = false;
                while let Some(ev) = events.recv().await {
                    if ev.kind == "ERROR" {
                        expired = true;
                        break;
                    }
                    if let Some(r) = ev.object["metadata"]["resourceVersion"].as_str() {
                        rv = r.to_string();
                    }
                    if ev.kind != "BOOKMARK" {
                        seen(&ev.kind, &ev.object);
                    }
                }
                if expired {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}

type Seen = Box<dyn Fn(&str, &Value) + Send + Sync>;

/// Shared watches: controllers register what they follow, then [`Hub::run`] starts one
/// list+watch per collection and hands each object to every controller that asked for it,
/// so a pod event is decoded once, not once per controller.
#[derive(Default)]
pub struct Hub {
    subscribers: std::collections::BTreeMap<String, Vec<Seen>>,
}

impl Hub {
    /// Registers `seen` for the objects of collection `path`.
    pub fn follow<F>(&mut self, path: &str, seen: F)
    where
        F: Fn(&str, &Value) + Send + Sync + 'static,
    {
        self.subscribers.entry(path.to_string()).or_default().push(Box::new(seen));
    }

    /// Starts the watches.
    pub fn run(self, client: Client) {
        for (path, subs) in self.subscribers {
            follow(client.clone(), path, move |ty, o| {
                for s in &subs {
                    s(ty, o);
                }
            });
        }
    }
}

/// A copy of a collection, by `namespace/name`, kept current from its watch.
pub type Mirror = std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, Value>>>;

/// Mirrors collection `path`; `changed(event_type, object)` runs after each change is in.
pub fn mirror<F>(client: Client, path: &str, changed: F) -> Mirror
where
    F: Fn(&str, &Value) + Send + Sync + 'static,
{
    let m: Mirror = Default::default();
    let copy = m.clone();
    follow(client, path.to_string(), move |ty, o| {
        {
            let mut w = copy.write().unwrap_or_else(|p| p.into_inner());
            let key = crate::controllers::key_of(o);
            if ty == "DELETED" {
                w.remove(&key);
            } else {
                w.insert(key, o.clone());
            }
        }
        changed(ty, o);
    });
    m
}

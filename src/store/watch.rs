//! Watch streams: replay from the on-disk history, then follow live events.

use super::codec;
use super::{Event, Shared, StoreError, EVENTS, META};
use redb::{Database, ReadableDatabase};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// An event as delivered to a watcher.
pub type WatchEvent = Arc<Event>;

/// Changes under one key prefix, in revision order, each exactly once.
pub struct WatchStream {
    shared: Arc<Shared>,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    /// Highest revision already delivered or passed over.
    last: u64,
    backlog: VecDeque<Arc<Event>>,
}

impl WatchStream {
    pub(crate) fn start(
        shared: Arc<Shared>,
        events: &broadcast::Sender<Arc<Event>>,
        prefix: &str,
        from: u64,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the disk so nothing falls between the two.
        let rx = events.subscribe();
        let mut w = WatchStream {
            shared,
            rx,
            prefix: prefix.to_string(),
            last: from,
            backlog: VecDeque::new(),
        };
        if from == 0 {
            w.last = read_meta(&w.shared.db())?.0;
        } else {
            w.fill_from_disk()?;
        }
        Ok(w)
    }

    /// The revision up to which this watcher has seen every change (for bookmarks).
    pub fn progress(&self) -> u64 {
        self.last
    }

    /// Waits for the next change under the prefix.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                return Ok(ev);
            }
            match self.rx.recv().await {
                Ok(ev) => {
                    if ev.revision <= self.last {
                        continue;
                    }
                    self.last = ev.revision;
                    if ev.key.starts_with(&self.prefix) {
                        return Ok(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.fill_from_disk()?,
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }

    /// Loads events after `last` from the history into the backlog.
    fn fill_from_disk(&mut self) -> Result<(), StoreError> {
        let db = self.shared.db();
        let sealer = self.shared.sealer();
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let current = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
        let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
        if self.last < compacted {
            return Err(StoreError::Expired { requested: self.last, oldest: compacted });
        }
        if self.last >= current {
            return Ok(());
        }
        let log = tx.open_table(EVENTS)?;
        for item in log.range((self.last + 1)..=current)? {
            let (k, v) = item?;
            let mut ev = codec::decode_event(v.value(), &sealer)?;
            ev.revision = k.value();
            if ev.key.starts_with(&self.prefix) {
                self.backlog.push_back(Arc::new(ev));
            }
        }
        self.last = current;
        Ok(())
    }
}

fn read_meta(db: &Database) -> Result<(u64, u64), StoreError> {
    let tx = db.begin_read()?;
    let meta = tx.open_table(META)?;
    let current = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
    let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
    Ok((current, compacted))
}

//! Watch streams: replay from the history (the embedded store's on disk, the etcd
//! replica's in memory), then follow live events.

use super::codec;
use super::mirror::Mirror;
use super::{Event, Shared, StoreError, EVENTS, META};
use redb::{Database, ReadableDatabase};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// An event as delivered to a watcher.
pub type WatchEvent = Arc<Event>;

/// Changes under one key prefix, in revision order, each exactly once.
pub struct WatchStream {
    source: Source,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    /// Highest revision already delivered or passed over.
    last: u64,
    backlog: VecDeque<Arc<Event>>,
}

/// Where a watcher that is behind reads the events it missed.
pub(crate) enum Source {
    Embedded(Arc<Shared>),
    Mirror(Arc<Mirror>),
}

impl WatchStream {
    pub(crate) fn start(
        source: Source,
        events: &broadcast::Sender<Arc<Event>>,
        prefix: &str,
        from: u64,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the disk so nothing falls between the two.
        let rx = events.subscribe();
        let mut w = WatchStream {
            source,
            rx,
            prefix: prefix.to_string(),
            last: from,
            backlog: VecDeque::new(),
        };
        if from == 0 {
            w.last = match &w.source {
                Source::Embedded(shared) => read_meta(&shared.db())?.0,
                Source::Mirror(m) => m.revision(),
            };
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
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(match &self.source {
                        // The replica was loaded again (its watch could not resume): what
                        // happened in between is unknown here, so the watcher starts over.
                        Source::Mirror(m) if !m.is_closed() => StoreError::Expired { requested: self.last, oldest: m.oldest() },
                        _ => StoreError::Closed,
                    })
                }
            }
        }
    }

    /// Loads events after `last` from the history into the backlog.
    fn fill_from_disk(&mut self) -> Result<(), StoreError> {
        let shared = match &self.source {
            Source::Embedded(shared) => shared,
            Source::Mirror(m) => {
                let (events, current) = m.events_after(self.last, &self.prefix)?;
                self.backlog.extend(events);
                self.last = self.last.max(current);
                return Ok(());
            }
        };
        let db = shared.db();
        let sealer = shared.sealer();
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

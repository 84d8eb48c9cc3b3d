//! The write-ahead log beside the store file: what makes a group commit durable with one
//! sequential append and one `fdatasync`, instead of syncing the B-tree pages the commit
//! touched all over the file.
//!
//! The writer appends each batch's events (the bytes the history table stores) as one record
//! and syncs it, then commits the batch to redb without syncing (`Durability::None`). Every few
//! seconds, or once the log is large, a batch is committed durably instead (a checkpoint):
//! redb then holds everything, and the log starts again from its beginning. Opening the store
//! after a crash replays the records newer than redb's revision.
//!
//! Record: `payload length (4, BE) || CRC-32 of payload (4, BE) || payload`, payload =
//! `first revision (8) || event count (4) || count x (length (4) || event)`. Records follow each
//! other without gaps, and their revisions follow each other without gaps: reading stops at
//! the first record that is torn, fails its checksum or does not continue the revisions of the
//! one before it (what is left of the log before the last checkpoint is older).

use super::codec;
use super::crypt::Sealer;
use super::{EventType, StoreError, EVENTS, META, OBJECTS};
use redb::{Database, ReadableTable};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// A record claiming more than this is garbage, not a batch.
const MAX_RECORD: usize = 1 << 30;

/// Where the log of the store file at `store` lives.
pub(crate) fn path_for(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

/// The open log, written only by the writer thread.
pub(crate) struct Wal {
    file: File,
    /// Where the next record goes (bytes since the last checkpoint).
    end: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (or creates) the log for appending from its beginning: call after [`replay`].
    pub(crate) fn open(path: &Path) -> Result<Wal, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::Storage(format!("open {}: {e}", path.display())))?;
        Ok(Wal { file, end: 0, buf: Vec::new() })
    }

    /// Bytes appended since the last checkpoint.
    pub(crate) fn len(&self) -> u64 {
        self.end
    }

    /// Appends one batch (events `first ..` in order) and syncs it; returns where the record
    /// starts, for [`Wal::undo`].
    pub(crate) fn append(&mut self, first: u64, events: &[Vec<u8>]) -> Result<u64, StoreError> {
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(&[0; HEADER]);
        buf.extend_from_slice(&first.to_be_bytes());
        buf.extend_from_slice(&(events.len() as u32).to_be_bytes());
        for ev in events {
            buf.extend_from_slice(&(ev.len() as u32).to_be_bytes());
            buf.extend_from_slice(ev);
        }
        let payload = buf.len() - HEADER;
        let crc = crc32fast::hash(&buf[HEADER..]);
        buf[..4].copy_from_slice(&(payload as u32).to_be_bytes());
        buf[4..HEADER].copy_from_slice(&crc.to_be_bytes());
        let at = self.end;
        self.file.write_all_at(buf, at).and_then(|()| self.file.sync_data()).map_err(|e| StoreError::Storage(format!("write-ahead log: {e}")))?;
        self.end = at + buf.len() as u64;
        Ok(at)
    }

    /// Takes back the record appended at `at` (its commit failed): zeroes its header, so
    /// that reading stops before it.
    pub(crate) fn undo(&mut self, at: u64) {
        let zero = [0u8; HEADER];
        if let Err(e) = self.file.write_all_at(&zero, at).and_then(|()| self.file.sync_data()) {
            tracing::error!(error = %e, "cannot take back a write-ahead log record");
        }
        self.end = at;
    }

    /// Everything appended is in redb, durably: empties the file too, so that no byte of
    /// what it held stays on disk (after values were sealed anew, old records held them the
    /// old way).
    pub(crate) fn clear(&mut self) -> Result<(), StoreError> {
        self.end = 0;
        self.file.set_len(0).and_then(|()| self.file.sync_all()).map_err(|e| StoreError::Storage(format!("empty the write-ahead log: {e}")))
    }

    /// Everything appended is in redb, durably: start again from the beginning.
    pub(crate) fn checkpointed(&mut self) {
        self.end = 0;
    }
}

/// One record as read back.
struct Record {
    first: u64,
    events: Vec<Vec<u8>>,
}

/// The records of `raw` that follow each other (see the module's doc).
fn records(raw: &[u8]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut pos = 0usize;
    while let Some(rec) = record_at(raw, pos) {
        let (record, len) = rec;
        if let Some(prev) = out.last() {
            if record.first != prev.first + prev.events.len() as u64 {
                break;
            }
        }
        pos += len;
        out.push(record);
    }
    out
}

fn record_at(raw: &[u8], pos: usize) -> Option<(Record, usize)> {
    let head = raw.get(pos..pos.checked_add(HEADER)?)?;
    let len = u32::from_be_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(head[4..].try_into().ok()?);
    if len < 12 || len > MAX_RECORD {
        return None;
    }
    let payload = raw.get(pos + HEADER..(pos + HEADER).checked_add(len)?)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let first = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let count = u32::from_be_bytes(payload[8..12].try_into().ok()?) as usize;
    let mut at = 12;
    let mut events = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let n = u32::from_be_bytes(payload.get(at..at + 4)?.try_into().ok()?) as usize;
        events.push(payload.get(at + 4..(at + 4).checked_add(n)?)?.to_vec());
        at += 4 + n;
    }
    (first > 0 && at == len).then_some((Record { first, events }, HEADER + len))
}

/// Applies the logged events newer than the store's revision to `db` in one durable
/// transaction, as the writer would have: objects, history, revision, compaction. Returns how
/// many events were replayed. A log whose revisions do not continue the store's (a store file
/// put back from elsewhere) is left unapplied, with a warning.
pub(crate) fn replay(db: &Database, path: &Path, sealer: &Sealer, history: u64) -> Result<usize, StoreError> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::Storage(format!("read {}: {e}", path.display()))),
    };
    let tx = db.begin_write()?;
    let mut applied = 0;
    {
        let mut meta = tx.open_table(META)?;
        let mut objects = tx.open_table(OBJECTS)?;
        let mut log = tx.open_table(EVENTS)?;
        let mut revision = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
        for record in records(&raw) {
            for (i, bytes) in record.events.iter().enumerate() {
                let rev = record.first + i as u64;
                if rev <= revision {
                    continue;
                }
                if rev != revision + 1 {
                    tracing::warn!(store_revision = revision, log_revision = rev, "write-ahead log does not continue the store; not replayed");
                    break;
                }
                let ev = codec::decode_event(bytes, sealer)?;
                match ev.kind {
                    EventType::Deleted => {
                        objects.remove(ev.key.as_str())?;
                    }
                    EventType::Added | EventType::Modified => {
                        objects.insert(ev.key.as_str(), codec::encode_value(rev, &ev.key, &ev.object, sealer).as_slice())?;
                    }
                }
                log.insert(rev, bytes.as_slice())?;
                revision = rev;
                applied += 1;
            }
        }
        if applied > 0 {
            super::writer::advance(&mut meta, &mut log, revision, history)?;
        }
    }
    tx.commit()?;
    if applied > 0 {
        tracing::info!(events = applied, "replayed the write-ahead log");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(batches: &[(u64, usize)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut wal = Wal::open(&path).unwrap();
        for &(first, n) in batches {
            let evs: Vec<Vec<u8>> = (0..n).map(|i| format!("ev{}", first + i as u64).into_bytes()).collect();
            wal.append(first, &evs).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn records_read_back_in_order() {
        let (_d, path) = log_with(&[(1, 2), (3, 1), (4, 3)]);
        let recs = records(&std::fs::read(&path).unwrap());
        assert_eq!(recs.iter().map(|r| (r.first, r.events.len())).collect::<Vec<_>>(), vec![(1, 2), (3, 1), (4, 3)]);
        assert_eq!(recs[2].events[2], b"ev6");
    }

    #[test]
    fn a_torn_tail_is_where_reading_stops() {
        let (_d, path) = log_with(&[(1, 2), (3, 2)]);
        let raw = std::fs::read(&path).unwrap();
        for cut in 0..raw.len() {
            let n: usize = records(&raw[..cut]).iter().map(|r| r.events.len()).sum();
            assert!(n == 0 || n == 2, "cut at {cut}: {n}");
        }
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(records(&flipped).len(), 1);
    }

    #[test]
    fn older_records_after_a_checkpoint_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut wal = Wal::open(&path).unwrap();
        for first in [1, 2, 3, 4] {
            wal.append(first, &[b"old-event".to_vec()]).unwrap();
        }
        wal.checkpointed();
        wal.append(5, &[b"new-event".to_vec()]).unwrap();
        let recs = records(&std::fs::read(&path).unwrap());
        assert_eq!(recs.iter().map(|r| r.first).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn an_undone_record_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut wal = Wal::open(&path).unwrap();
        wal.append(1, &[b"a".to_vec()]).unwrap();
        let at = wal.append(2, &[b"b".to_vec()]).unwrap();
        wal.undo(at);
        assert_eq!(records(&std::fs::read(&path).unwrap()).len(), 1);
        wal.append(2, &[b"c".to_vec()]).unwrap();
        let recs = records(&std::fs::read(&path).unwrap());
        assert_eq!(recs[1].events[0], b"c");
    }

    #[test]
    fn garbage_is_no_record() {
        assert!(records(&[0xff; 64]).is_empty());
        assert!(records(&[]).is_empty());
        let mut huge = vec![0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        huge.extend_from_slice(&[1; 32]);
        assert!(records(&huge).is_empty());
    }
}

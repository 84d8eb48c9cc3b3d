//! Byte layouts of stored values and history events.

use super::crypt::Sealer;
use super::{Event, EventType, Stored, StoreError};
use bytes::Bytes;

/// `revision (8 bytes BE) || object JSON` (the JSON sealed where the sealer covers `key`).
pub(crate) fn encode_value(revision: u64, key: &str, json: &[u8], sealer: &Sealer) -> Vec<u8> {
    let body = sealer.seal(key, json);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub(crate) fn decode_value(key: &str, raw: &[u8], sealer: &Sealer) -> Result<Stored, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt { key: key.into(), reason: "value shorter than header".into() });
    }
    let (head, body) = raw.split_at(8);
    let revision = u64::from_be_bytes(head.try_into().expect("8 bytes"));
    let json = opened(key, body, sealer)?;
    Ok(Stored { revision, json })
}

/// A stored body in plain.
fn opened(key: &str, body: &[u8], sealer: &Sealer) -> Result<Bytes, StoreError> {
    match sealer.open(key, body) {
        Ok(plain) => Ok(Bytes::copy_from_slice(&plain)),
        Err(e) => Err(StoreError::Corrupt { key: key.into(), reason: e.to_string() }),
    }
}

/// `type (1) || key len (4) || key || object len (4) || object || prev flag (1) [|| prev len (4) || prev]`.
/// Object images are sealed where the sealer covers the key.
pub(crate) fn encode_event(ev: &Event, sealer: &Sealer) -> Vec<u8> {
    let object = sealer.seal(&ev.key, &ev.object);
    let prev = ev.prev.as_ref().map(|p| sealer.seal(&ev.key, p));
    let prev_len = prev.as_ref().map_or(0, |p| p.len() + 4);
    let mut out = Vec::with_capacity(10 + ev.key.len() + object.len() + prev_len);
    out.push(match ev.kind {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    });
    put_chunk(&mut out, ev.key.as_bytes());
    put_chunk(&mut out, &object);
    match &prev {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_chunk(&mut out, p);
        }
    }
    out
}

/// Decodes an event record; the revision is the record's key and is filled in by the caller.
pub(crate) fn decode_event(raw: &[u8], sealer: &Sealer) -> Result<Event, StoreError> {
    let bad = |what: &str| StoreError::Corrupt { key: "<event>".into(), reason: what.into() };
    let mut r = Reader { raw, pos: 0 };
    let kind = match r.byte().ok_or_else(|| bad("missing type"))? {
        0 => EventType::Added,
        1 => EventType::Modified,
        2 => EventType::Deleted,
        _ => return Err(bad("unknown event type")),
    };
    let key = r.chunk().ok_or_else(|| bad("truncated key"))?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| bad("key is not UTF-8"))?;
    let object = opened(&key, r.chunk().ok_or_else(|| bad("truncated object"))?, sealer)?;
    let prev = match r.byte().ok_or_else(|| bad("missing prev flag"))? {
        0 => None,
        _ => Some(opened(&key, r.chunk().ok_or_else(|| bad("truncated prev"))?, sealer)?),
    };
    Ok(Event { revision: 0, kind, key, object, prev })
}

fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.raw.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn chunk(&mut self) -> Option<&'a [u8]> {
        let len = self.raw.get(self.pos..self.pos + 4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let start = self.pos + 4;
        let data = self.raw.get(start..start + len)?;
        self.pos = start + len;
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trip() {
        let ev = Event {
            revision: 0,
            kind: EventType::Modified,
            key: "/core/configmaps/default/a".into(),
            object: Bytes::from_static(b"{\"new\":1}"),
            prev: Some(Bytes::from_static(b"{\"old\":1}")),
        };
        let back = decode_event(&encode_event(&ev, &Sealer::default()), &Sealer::default()).unwrap();
        assert_eq!(back.kind, EventType::Modified);
        assert_eq!(back.key, ev.key);
        assert_eq!(back.object, ev.object);
        assert_eq!(back.prev, ev.prev);
    }

    #[test]
    fn truncated_event_is_an_error_not_a_panic() {
        let ev = Event {
            revision: 0,
            kind: EventType::Added,
            key: "/k".into(),
            object: Bytes::from_static(b"{}"),
            prev: None,
        };
        let raw = encode_event(&ev, &Sealer::default());
        for cut in 0..raw.len() {
            assert!(decode_event(&raw[..cut], &Sealer::default()).is_err(), "cut at {cut}");
        }
    }
}

//! Byte layouts of stored values and history events.

use super::{Event, EventType, Stored, StoreError};
use bytes::Bytes;

/// `revision (8 bytes BE) || object JSON`.
pub(crate) fn encode_value(revision: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(json);
    out
}

pub(crate) fn decode_value(key: &str, raw: &[u8]) -> Result<Stored, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt { key: key.into(), reason: "value shorter than header".into() });
    }
    let (head, json) = raw.split_at(8);
    let revision = u64::from_be_bytes(head.try_into().expect("8 bytes"));
    Ok(Stored { revision, json: Bytes::copy_from_slice(json) })
}

/// `type (1) || key len (4) || key || object len (4) || object || prev flag (1) [|| prev len (4) || prev]`.
pub(crate) fn encode_event(ev: &Event) -> Vec<u8> {
    let prev_len = ev.prev.as_ref().map_or(0, |p| p.len() + 4);
    let mut out = Vec::with_capacity(10 + ev.key.len() + ev.object.len() + prev_len);
    out.push(match ev.kind {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    });
    put_chunk(&mut out, ev.key.as_bytes());
    put_chunk(&mut out, &ev.object);
    match &ev.prev {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_chunk(&mut out, p);
        }
    }
    out
}

/// Decodes an event record; the revision is the record's key and is filled in by the caller.
pub(crate) fn decode_event(raw: &[u8]) -> Result<Event, StoreError> {
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
    let object = Bytes::copy_from_slice(r.chunk().ok_or_else(|| bad("truncated object"))?);
    let prev = match r.byte().ok_or_else(|| bad("missing prev flag"))? {
        0 => None,
        _ => Some(Bytes::copy_from_slice(r.chunk().ok_or_else(|| bad("truncated prev"))?)),
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
        let back = decode_event(&encode_event(&ev)).unwrap();
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
        let raw = encode_event(&ev);
        for cut in 0..raw.len() {
            assert!(decode_event(&raw[..cut]).is_err(), "cut at {cut}");
        }
    }
}

//! Exec and attach to the runtime over SPDY/3.1, the remote-command transport that can end
//! stdin on its own: the runtime's websocket protocol (v4) cannot, so a v5 client's "close
//! stdin" would otherwise have to close the whole connection and lose the exit status.
//!
//! The client side of a SPDY session, as far as remote commands need it: the HTTP upgrade
//! (`X-Stream-Protocol-Version: v4.channel.k8s.io`), one stream per channel opened with a
//! `streamtype` header (error, stdin, stdout, stderr, resize), data frames, FIN to end
//! stdin, PING answered. Header blocks must be zlib streams; ours are written with stored
//! (uncompressed) deflate blocks, which every inflater reads whatever the dictionary, and
//! the runtime's header blocks are not needed (stream ids are outside them), so no zlib is
//! linked. Flow control is not enforced by the runtime's SPDY library and not used here.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// Largest data frame written (the format allows 16 MiB).
const MAX_DATA: usize = 32 * 1024;

/// The remote-command channels, as the websocket protocol numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    Error = 3,
    Resize = 4,
}

impl Channel {
    fn stream_type(self) -> &'static str {
        match self {
            Channel::Stdin => "stdin",
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Error => "error",
            Channel::Resize => "resize",
        }
    }
}

/// Writes header blocks as one zlib stream of stored deflate blocks, each block followed by
/// an empty one (a sync flush, as compressors end each header block).
#[derive(Default)]
struct HeaderWriter {
    started: bool,
}

impl HeaderWriter {
    fn block(&mut self, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut nv = BytesMut::new();
        nv.put_u32(pairs.len() as u32);
        for (name, value) in pairs {
            nv.put_u32(name.len() as u32);
            nv.put_slice(name.as_bytes());
            nv.put_u32(value.len() as u32);
            nv.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(nv.len() + 16);
        if !self.started {
            // CMF 0x78 (deflate, 32 KiB window), FLG 0x01: no preset dictionary, check bits.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in nv.chunks(u16::MAX as usize) {
            let len = chunk.len() as u16;
            out.push(0x00);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// A frame read from the runtime.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Data { stream: u32, fin: bool, payload: Bytes },
    Control { kind: u16, flags: u8, payload: Bytes },
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let payload = Bytes::from(payload);
    Ok(if head[0] & 0x80 != 0 {
        Frame::Control { kind: u16::from_be_bytes([head[2], head[3]]), flags: head[4], payload }
    } else {
        Frame::Data { stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff, fin: head[4] & FLAG_FIN != 0, payload }
    })
}

fn stream_id(payload: &[u8]) -> u32 {
    payload.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff).unwrap_or(0)
}

/// Opens the streams of `channels` on `io` (a connection upgraded to SPDY/3.1) and relays
/// them to and from the client's websocket (`v5`: its protocol is v5.channel.k8s.io, whose
/// close message ends stdin). The error channel is opened always; its one status message
/// reaches the client when the runtime ends it, then the client's websocket is closed
/// normally.
pub async fn relay<C>(client: tokio_tungstenite::WebSocketStream<C>, io: Upgraded, channels: &[Channel], v5: bool)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (rd, mut wr) = tokio::io::split(TokioIo::new(io));
    // Frames as a stream, so that a frame half read when a client message wins the select
    // below is not dropped with its future (read_exact is not cancel-safe; the stream keeps
    // its pending read).
    let frames = futures_util::stream::unfold(rd, |mut rd| async move {
        let frame = read_frame(&mut rd).await;
        Some((frame, rd))
    });
    let mut frames = std::pin::pin!(frames);
    let (mut client_tx, mut client_rx) = client.split();
    let mut headers = HeaderWriter::default();
    // Client-initiated streams have odd ids; the error stream goes first, as client-go opens it.
    let mut ids: Vec<(Channel, u32)> = Vec::new();
    let mut open = Vec::new();
    for (i, ch) in std::iter::once(Channel::Error).chain(channels.iter().copied().filter(|c| *c != Channel::Error)).enumerate() {
        let id = 2 * i as u32 + 1;
        ids.push((ch, id));
        let mut p = Vec::new();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&headers.block(&[("streamtype", ch.stream_type())]));
        open.extend_from_slice(&control(SYN_STREAM, 0, &p));
    }
    if wr.write_all(&open).await.is_err() {
        return;
    }
    let id_of = |ch: Channel| ids.iter().find(|(c, _)| *c == ch).map(|(_, id)| *id);
    let channel_of = |id: u32| ids.iter().find(|(_, i)| *i == id).map(|(c, _)| *c);
    let mut error = BytesMut::new();
    let mut stdin_open = id_of(Channel::Stdin).is_some();
    let normal = || Message::Close(Some(tungstenite::protocol::CloseFrame { code: tungstenite::protocol::frame::coding::CloseCode::Normal, reason: "".into() }));
    loop {
        tokio::select! {
            msg = client_rx.next() => match msg {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    let bytes: Vec<u8> = match m {
                        Message::Text(t) => t.as_bytes().to_vec(),
                        Message::Binary(b) => b.to_vec(),
                        _ => continue,
                    };
                    let Some((&channel, payload)) = bytes.split_first() else { continue };
                    let frames = match channel {
                        255 if v5 && payload.first() == Some(&(Channel::Stdin as u8)) && stdin_open => {
                            stdin_open = false;
                            id_of(Channel::Stdin).map(|id| data(id, FLAG_FIN, &[])).unwrap_or_default()
                        }
                        0 if stdin_open => id_of(Channel::Stdin).map(|id| payload.chunks(MAX_DATA).flat_map(|c| data(id, 0, c)).collect()).unwrap_or_default(),
                        4 => id_of(Channel::Resize).map(|id| data(id, 0, payload)).unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    if !frames.is_empty() && wr.write_all(&frames).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            Some(frame) = frames.next() => match frame {
                Ok(Frame::Data { stream, fin, payload }) => match channel_of(stream) {
                    Some(Channel::Error) => {
                        error.extend_from_slice(&payload);
                        if fin {
                            break;
                        }
                    }
                    Some(ch @ (Channel::Stdout | Channel::Stderr)) if !payload.is_empty() => {
                        let mut m = Vec::with_capacity(payload.len() + 1);
                        m.push(ch as u8);
                        m.extend_from_slice(&payload);
                        if client_tx.send(Message::Binary(m.into())).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                },
                Ok(Frame::Control { kind: PING, payload, .. }) => {
                    if wr.write_all(&control(PING, 0, &payload)).await.is_err() {
                        break;
                    }
                }
                Ok(Frame::Control { kind: RST_STREAM, payload, .. }) if channel_of(stream_id(&payload)) == Some(Channel::Error) => break,
                Ok(Frame::Control { kind: GOAWAY, .. }) => break,
                Ok(Frame::Control { kind: SYN_REPLY, .. }) | Ok(Frame::Control { .. }) => {}
                Err(_) => break,
            },
        }
    }
    // The runtime writes the exit status (or nothing, for success in older protocol
    // versions) on the error stream before ending it.
    if !error.is_empty() {
        let mut status = vec![Channel::Error as u8];
        status.extend_from_slice(&error);
        let _ = client_tx.send(Message::Binary(status.into())).await;
    }
    let _ = client_tx.send(normal()).await;
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back what [`HeaderWriter`] wrote: the zlib header once, then stored blocks.
    fn inflate_stored(mut b: &[u8], first: bool) -> Vec<u8> {
        if first {
            assert_eq!(&b[..2], &[0x78, 0x01]);
            assert_eq!((0x78u16 * 256 + 0x01) % 31, 0, "zlib header check bits");
            b = &b[2..];
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0], 0, "a non-final stored block");
            let len = u16::from_le_bytes([b[1], b[2]]) as usize;
            assert_eq!(!u16::from_le_bytes([b[3], b[4]]) as usize, len);
            out.extend_from_slice(&b[5..5 + len]);
            b = &b[5 + len..];
        }
        out
    }

    #[test]
    fn header_blocks_are_name_value_pairs_in_stored_deflate() {
        let mut w = HeaderWriter::default();
        let first = w.block(&[("streamtype", "error")]);
        assert!(first.ends_with(&[0x00, 0x00, 0x00, 0xff, 0xff]), "sync flush after every block");
        let nv = inflate_stored(&first, true);
        assert_eq!(nv, [&[0, 0, 0, 1, 0, 0, 0, 10][..], b"streamtype", &[0, 0, 0, 5], b"error"].concat());
        let second = w.block(&[("streamtype", "stdin")]);
        assert_eq!(inflate_stored(&second, false).len(), 4 + 4 + 10 + 4 + 5);
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut bytes = control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        bytes.extend(data(3, FLAG_FIN, b"bye"));
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.unwrap(), Frame::Control { kind: SYN_STREAM, flags: 0, payload: Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]) });
        assert_eq!(read_frame(&mut r).await.unwrap(), Frame::Data { stream: 3, fin: true, payload: Bytes::from_static(b"bye") });
        assert_eq!(&bytes[..4], &[0x80, 0x03, 0x00, 0x01], "control bit, version 3, type");
    }
}

//! The native frame format (see `docs/protocol.md`).
//!
//! ```text
//! +----------------+--------+--------+----------------+-------------------+
//! | length: u32 BE | kind:u8| flags:u8| stream: u32 BE | payload: `length` |
//! +----------------+--------+--------+----------------+-------------------+
//! ```

use crate::error::Error;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The bytes a native client sends first, before any frame.
pub const PREFACE: &[u8; 8] = b"MICRO/1\n";
/// Size of a frame header.
pub const HEADER_LEN: usize = 10;
/// The default bound on a frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client → server: opens a stream with a request head and (optionally) a body.
    Request = 1,
    /// Server → client: the reply (a body, or an error with [`flags::ERROR`]).
    Response = 2,
    /// Either way: one message of an open stream.
    Data = 3,
    /// Either way: abandon a stream; the server cancels the handler's task.
    Cancel = 4,
    /// Either way: grants the peer more bytes of send window (stream 0: the connection).
    Credit = 5,
    /// Either way: liveness check, answered with the same payload and [`flags::ACK`].
    Ping = 6,
    /// Server → client: no new streams on this connection; payload says why.
    GoAway = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Data,
            4 => Kind::Cancel,
            5 => Kind::Credit,
            6 => Kind::Ping,
            7 => Kind::GoAway,
            _ => return None,
        })
    }
}

/// Frame flags.
pub mod flags {
    /// The sender sends nothing more on this stream.
    pub const END_STREAM: u8 = 0x01;
    /// A ping's answer.
    pub const ACK: u8 = 0x02;
    /// A response whose payload is an encoded [`crate::Error`].
    pub const ERROR: u8 = 0x04;
    /// With `ERROR`: the request was refused before any work was done, so it is safe to retry.
    pub const REFUSED: u8 = 0x08;
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Its flags.
    pub flags: u8,
    /// The stream it belongs to (0: the connection).
    pub stream: u32,
    /// Its payload.
    pub payload: Bytes,
}

/// A frame header, decoded but not yet checked against its payload.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Payload length.
    pub len: usize,
    /// Raw kind byte.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
}

impl Header {
    /// Parses the 10 header bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
            kind: b[4],
            flags: b[5],
            stream: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        }
    }

    /// Checks the header against the protocol's bounds.
    pub fn validate(&self, max_frame: usize) -> Result<Kind, ProtocolError> {
        if self.len > max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len: self.len,
                max: max_frame,
            });
        }
        Kind::from_u8(self.kind).ok_or(ProtocolError::UnknownKind(self.kind))
    }
}

/// Encodes a frame into `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, flags: u8, stream: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind as u8);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Writes a frame header into the first [`HEADER_LEN`] bytes of `frame`,
/// whose payload follows them.
pub fn write_header(frame: &mut [u8], kind: Kind, flags: u8, stream: u32) {
    let len = (frame.len() - HEADER_LEN) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame[4] = kind as u8;
    frame[5] = flags;
    set_stream(frame, stream);
}

/// Encodes one frame as its own buffer.
pub fn frame(kind: Kind, flags: u8, stream: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, kind, flags, stream, parts);
    out
}

/// Rewrites the stream id of an encoded frame.
pub fn set_stream(frame: &mut [u8], stream: u32) {
    frame[6..HEADER_LEN].copy_from_slice(&stream.to_be_bytes());
}

/// The head of a request: what to call, how the body is encoded, and the
/// call's context. Encoded as a MessagePack array of the fields in this order;
/// decoding borrows the strings from the frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RequestHead<'a> {
    /// The service the caller meant.
    pub service: &'a str,
    /// The endpoint, e.g. `Greeter.Hello`.
    pub endpoint: &'a str,
    /// The body's content type.
    pub content_type: &'a str,
    /// Time the caller will wait, in microseconds, relative to receipt (0: no deadline).
    pub timeout_us: u64,
    /// The trace id (0: none).
    pub trace_id: u128,
    /// Request metadata.
    pub metadata: Cow<'a, BTreeMap<String, String>>,
}

/// Encodes a request frame, in one buffer: a u32 head length, the head
/// (MessagePack), the body.
pub fn request(stream: u32, flags: u8, head: &RequestHead<'_>, body: &[u8]) -> Vec<u8> {
    request_with(stream, flags, head, |out| {
        out.extend_from_slice(body);
        Ok(())
    })
    .expect("copying a body cannot fail")
}

/// Encodes a request frame whose body `write_body` appends to the buffer, so a
/// typed request is encoded straight into the frame.
pub fn request_with(
    stream: u32,
    flags: u8,
    head: &RequestHead<'_>,
    write_body: impl FnOnce(&mut Vec<u8>) -> crate::Result<()>,
) -> crate::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + 128);
    out.extend_from_slice(&[0; HEADER_LEN + 4]);
    rmp_serde::encode::write(&mut out, head).expect("request heads always encode");
    let head_len = (out.len() - HEADER_LEN - 4) as u32;
    out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&head_len.to_be_bytes());
    write_body(&mut out)?;
    write_header(&mut out, Kind::Request, flags, stream);
    Ok(out)
}

/// Splits a request payload into its head, decoded in place, and its body.
pub fn parse_request(payload: &Bytes) -> Result<(RequestHead<'_>, Bytes), ProtocolError> {
    let (head, body) = split_request(payload)?;
    let head = rmp_serde::from_slice(head)
        .map_err(|_| ProtocolError::Malformed("request head is not valid msgpack"))?;
    Ok((head, body))
}

fn split_request(payload: &Bytes) -> Result<(&[u8], Bytes), ProtocolError> {
    if payload.len() < 4 {
        return Err(ProtocolError::Malformed(
            "request frame shorter than its head length",
        ));
    }
    let head_len = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    if head_len > payload.len() - 4 {
        return Err(ProtocolError::Malformed(
            "request head length exceeds the frame",
        ));
    }
    Ok((&payload[4..4 + head_len], payload.slice(4 + head_len..)))
}

/// Encodes an error for a response or go-away payload.
pub fn encode_error(e: &Error) -> Vec<u8> {
    rmp_serde::to_vec_named(e).expect("errors always encode")
}

/// Decodes an error payload; garbage becomes an internal error saying so.
pub fn decode_error(payload: &[u8]) -> Error {
    rmp_serde::from_slice(payload).unwrap_or_else(|e| {
        Error::internal("micro.transport", format!("undecodable error payload: {e}"))
    })
}

/// A go-away payload: the last stream the server will process, then the reason.
pub fn goaway(last_stream: u32, reason: &Error) -> Vec<u8> {
    frame(
        Kind::GoAway,
        0,
        0,
        &[&last_stream.to_be_bytes(), &encode_error(reason)],
    )
}

/// Splits a go-away payload.
pub fn parse_goaway(payload: &[u8]) -> (u32, Error) {
    if payload.len() < 4 {
        return (0, Error::unavailable("micro.transport", "go-away"));
    }
    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    (last, decode_error(&payload[4..]))
}

/// A violation of the wire protocol. The connection that committed it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first bytes were not the native preface (nor anything else this port speaks).
    #[error(
        "bad preface: expected {:?}, got {got:?}",
        String::from_utf8_lossy(PREFACE)
    )]
    BadPreface {
        /// What arrived instead (lossy text).
        got: String,
    },
    /// A frame longer than the bound.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The connection ended in the middle of a frame.
    #[error("truncated frame: connection closed after {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// A frame whose contents do not parse.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A stream id used twice, or 0 where a stream is needed.
    #[error("invalid stream id {0}")]
    BadStream(u32),
}

impl ProtocolError {
    /// The error sent to the peer in the go-away frame before closing.
    pub fn to_error(&self) -> Error {
        let e = Error::bad_request("micro.transport", format!("protocol error: {self}"));
        match self {
            ProtocolError::FrameTooLarge { .. } => Error {
                code: 413,
                status: crate::error::status_text(413).into(),
                ..e
            },
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let metadata: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let head = RequestHead {
            service: "greeter",
            endpoint: "Greeter.Hello",
            content_type: "application/json",
            timeout_us: 1500,
            trace_id: u128::MAX - 7,
            metadata: Cow::Borrowed(&metadata),
        };
        let buf = request(7, flags::END_STREAM, &head, b"{}");
        let h = Header::parse(buf[..HEADER_LEN].try_into().unwrap());
        assert_eq!(
            (h.stream, h.flags, h.len),
            (7, flags::END_STREAM, buf.len() - HEADER_LEN)
        );
        assert_eq!(h.validate(DEFAULT_MAX_FRAME).unwrap(), Kind::Request);
        let payload = Bytes::copy_from_slice(&buf[HEADER_LEN..]);
        let (back, body) = parse_request(&payload).unwrap();
        assert_eq!(back, head);
        assert_eq!(&body[..], b"{}");
    }

    #[test]
    fn bounds_are_enforced() {
        let mut raw = [0u8; HEADER_LEN];
        raw[..4].copy_from_slice(&(64u32 << 20).to_be_bytes());
        raw[4] = 1;
        let err = Header::parse(&raw).validate(DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
        assert_eq!(err.to_error().code, 413);
        raw[..4].copy_from_slice(&0u32.to_be_bytes());
        raw[4] = 0x7f;
        assert_eq!(
            Header::parse(&raw).validate(DEFAULT_MAX_FRAME).unwrap_err(),
            ProtocolError::UnknownKind(0x7f)
        );
    }

    #[test]
    fn malformed_request_heads_are_rejected() {
        assert!(parse_request(&Bytes::from_static(&[0, 0])).is_err());
        assert!(parse_request(&Bytes::from_static(&[0, 0, 0, 9, 1])).is_err());
        assert!(parse_request(&Bytes::from_static(&[0, 0, 0, 1, 0xc1])).is_err());
    }

    #[test]
    fn goaway_round_trip() {
        let f = goaway(9, &Error::unavailable("s", "draining"));
        let (last, e) = parse_goaway(&f[HEADER_LEN..]);
        assert_eq!(last, 9);
        assert_eq!(e.detail, "draining");
    }
}

//! A minimal DNS message codec: just what DNS-SD over mDNS needs (PTR, SRV,
//! TXT, A, AAAA; other record types are skipped). Decoding never panics:
//! every read is bounds-checked and compression loops are cut short.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub(super) const TYPE_A: u16 = 1;
pub(super) const TYPE_PTR: u16 = 12;
pub(super) const TYPE_TXT: u16 = 16;
pub(super) const TYPE_AAAA: u16 = 28;
pub(super) const TYPE_SRV: u16 = 33;
pub(super) const TYPE_ANY: u16 = 255;

const CLASS_IN: u16 = 1;
/// mDNS "cache flush" bit of the class of unique records (RFC 6762 §10.2).
const CACHE_FLUSH: u16 = 0x8000;
/// Flags of a response: QR and AA.
const FLAGS_RESPONSE: u16 = 0x8400;
const MAX_NAME: usize = 255;
const MAX_LABEL: usize = 63;
const MAX_POINTER_HOPS: usize = 64;

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WireError(pub(super) String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(msg.into()))
}

/// A domain name as its labels (without the empty root label).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Name(pub(super) Vec<Vec<u8>>);

impl Name {
    /// From labels given as strings.
    pub(super) fn from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        Name(labels.into_iter().map(|l| l.as_bytes().to_vec()).collect())
    }

    /// Whether the name equals `labels`, ignoring ASCII case.
    pub(super) fn is(&self, labels: &[&str]) -> bool {
        self.0.len() == labels.len()
            && self
                .0
                .iter()
                .zip(labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b.as_bytes()))
    }

    /// The first label if the name is `<label>.<suffix>`, ignoring ASCII case.
    pub(super) fn first_under(&self, suffix: &[&str]) -> Option<&[u8]> {
        let (first, rest) = self.0.split_first()?;
        (rest.len() == suffix.len()
            && rest
                .iter()
                .zip(suffix)
                .all(|(a, b)| a.eq_ignore_ascii_case(b.as_bytes())))
        .then_some(first.as_slice())
    }

    /// Lower-cased dotted form, for use as a map key.
    pub(super) fn key(&self) -> String {
        let mut s = String::new();
        for l in &self.0 {
            s.push_str(&String::from_utf8_lossy(l).to_ascii_lowercase());
            s.push('.');
        }
        s
    }
}

/// The data of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RData {
    Ptr(Name),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    Txt(Vec<Vec<u8>>),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// A type this codec does not interpret.
    Other(u16),
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) name: Name,
    /// Set the cache-flush bit (unique records: SRV, TXT, A, AAAA).
    pub(super) flush: bool,
    pub(super) ttl: u32,
    pub(super) data: RData,
}

/// A question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Question {
    pub(super) name: Name,
    pub(super) qtype: u16,
}

/// A DNS message. `records` holds answers, authority and additional records alike.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Message {
    pub(super) response: bool,
    pub(super) questions: Vec<Question>,
    pub(super) records: Vec<Record>,
}

impl Message {
    /// Encodes the message (names uncompressed; all records as answers).
    pub(super) fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(512);
        let count = |n: usize| u16::try_from(n).map_err(|_| WireError("too many entries".into()));
        put_u16(&mut out, 0);
        put_u16(&mut out, if self.response { FLAGS_RESPONSE } else { 0 });
        put_u16(&mut out, count(self.questions.len())?);
        put_u16(&mut out, count(self.records.len())?);
        put_u16(&mut out, 0);
        put_u16(&mut out, 0);
        for q in &self.questions {
            put_name(&mut out, &q.name)?;
            put_u16(&mut out, q.qtype);
            put_u16(&mut out, CLASS_IN);
        }
        for r in &self.records {
            put_name(&mut out, &r.name)?;
            let rtype = match &r.data {
                RData::Ptr(_) => TYPE_PTR,
                RData::Srv { .. } => TYPE_SRV,
                RData::Txt(_) => TYPE_TXT,
                RData::A(_) => TYPE_A,
                RData::Aaaa(_) => TYPE_AAAA,
                RData::Other(_) => return err("cannot encode an uninterpreted record"),
            };
            put_u16(&mut out, rtype);
            put_u16(&mut out, CLASS_IN | if r.flush { CACHE_FLUSH } else { 0 });
            out.extend_from_slice(&r.ttl.to_be_bytes());
            let len_at = out.len();
            put_u16(&mut out, 0);
            match &r.data {
                RData::Ptr(n) => put_name(&mut out, n)?,
                RData::Srv {
                    priority,
                    weight,
                    port,
                    target,
                } => {
                    put_u16(&mut out, *priority);
                    put_u16(&mut out, *weight);
                    put_u16(&mut out, *port);
                    put_name(&mut out, target)?;
                }
                RData::Txt(entries) => {
                    if entries.is_empty() {
                        out.push(0);
                    }
                    for e in entries {
                        let Ok(len) = u8::try_from(e.len()) else {
                            return err("TXT entry over 255 bytes");
                        };
                        out.push(len);
                        out.extend_from_slice(e);
                    }
                }
                RData::A(ip) => out.extend_from_slice(&ip.octets()),
                RData::Aaaa(ip) => out.extend_from_slice(&ip.octets()),
                RData::Other(_) => unreachable!("rejected above"),
            }
            let rdlen = u16::try_from(out.len() - len_at - 2)
                .map_err(|_| WireError("record data over 65535 bytes".into()))?;
            out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        }
        Ok(out)
    }

    /// Decodes a message; anything malformed is an error, never a panic.
    pub(super) fn decode(buf: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { buf, pos: 0 };
        let _id = r.u16()?;
        let flags = r.u16()?;
        let qd = r.u16()?;
        let an = r.u16()?;
        let ns = r.u16()?;
        let ar = r.u16()?;
        let mut msg = Message {
            response: flags & 0x8000 != 0,
            ..Default::default()
        };
        for _ in 0..qd {
            let name = r.name()?;
            let qtype = r.u16()?;
            let _class = r.u16()?;
            msg.questions.push(Question { name, qtype });
        }
        for _ in 0..(an as usize + ns as usize + ar as usize) {
            let name = r.name()?;
            let rtype = r.u16()?;
            let class = r.u16()?;
            let ttl = r.u32()?;
            let rdlen = r.u16()? as usize;
            let start = r.pos;
            let end = start.checked_add(rdlen).filter(|e| *e <= buf.len());
            let Some(end) = end else {
                return err("record data past the end");
            };
            let data = match rtype {
                TYPE_PTR => RData::Ptr(r.name()?),
                TYPE_SRV => RData::Srv {
                    priority: r.u16()?,
                    weight: r.u16()?,
                    port: r.u16()?,
                    target: r.name()?,
                },
                TYPE_TXT => {
                    let mut entries = Vec::new();
                    while r.pos < end {
                        let len = r.u8()? as usize;
                        entries.push(r.bytes(len)?.to_vec());
                    }
                    entries.retain(|e| !e.is_empty());
                    RData::Txt(entries)
                }
                TYPE_A => RData::A(Ipv4Addr::from(
                    <[u8; 4]>::try_from(r.bytes(4)?).map_err(|_| WireError("A".into()))?,
                )),
                TYPE_AAAA => RData::Aaaa(Ipv6Addr::from(
                    <[u8; 16]>::try_from(r.bytes(16)?).map_err(|_| WireError("AAAA".into()))?,
                )),
                other => RData::Other(other),
            };
            if !matches!(data, RData::Other(_)) && r.pos != end {
                return err(format!("record data of type {rtype} has a wrong length"));
            }
            r.pos = end;
            msg.records.push(Record {
                name,
                flush: class & CACHE_FLUSH != 0,
                ttl,
                data,
            });
        }
        Ok(msg)
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &Name) -> Result<(), WireError> {
    let mut total = 1;
    for l in &name.0 {
        if l.is_empty() || l.len() > MAX_LABEL {
            return err(format!("label of {} bytes", l.len()));
        }
        total += l.len() + 1;
        if total > MAX_NAME {
            return err("name over 255 bytes");
        }
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return err("truncated message");
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name, leaving `pos` after it.
    fn name(&mut self) -> Result<Name, WireError> {
        let mut labels = Vec::new();
        let mut total = 1;
        let mut pos = self.pos;
        let mut resume: Option<usize> = None;
        let mut hops = 0;
        loop {
            let Some(&len) = self.buf.get(pos) else {
                return err("truncated name");
            };
            match len & 0xC0 {
                0x00 if len == 0 => {
                    pos += 1;
                    break;
                }
                0x00 => {
                    let len = len as usize;
                    let Some(label) = self.buf.get(pos + 1..pos + 1 + len) else {
                        return err("truncated label");
                    };
                    total += len + 1;
                    if total > MAX_NAME {
                        return err("name over 255 bytes");
                    }
                    labels.push(label.to_vec());
                    pos += 1 + len;
                }
                0xC0 => {
                    let Some(&lo) = self.buf.get(pos + 1) else {
                        return err("truncated pointer");
                    };
                    hops += 1;
                    if hops > MAX_POINTER_HOPS {
                        return err("compression loop");
                    }
                    resume.get_or_insert(pos + 2);
                    pos = (((len & 0x3F) as usize) << 8) | lo as usize;
                }
                _ => return err("bad label type"),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(Name(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let inst = Name::from_labels(["node-1", "_micro", "_tcp", "local"]);
        Message {
            response: true,
            questions: vec![],
            records: vec![
                Record {
                    name: Name::from_labels(["_micro", "_tcp", "local"]),
                    flush: false,
                    ttl: 30,
                    data: RData::Ptr(inst.clone()),
                },
                Record {
                    name: inst.clone(),
                    flush: true,
                    ttl: 30,
                    data: RData::Srv {
                        priority: 0,
                        weight: 0,
                        port: 8080,
                        target: Name::from_labels(["node-1", "local"]),
                    },
                },
                Record {
                    name: inst,
                    flush: true,
                    ttl: 30,
                    data: RData::Txt(vec![b"a=1".to_vec(), vec![b'x'; 255]]),
                },
                Record {
                    name: Name::from_labels(["node-1", "local"]),
                    flush: true,
                    ttl: 30,
                    data: RData::A(Ipv4Addr::LOCALHOST),
                },
                Record {
                    name: Name::from_labels(["node-1", "local"]),
                    flush: true,
                    ttl: 30,
                    data: RData::Aaaa(Ipv6Addr::LOCALHOST),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        let q = Message {
            response: false,
            questions: vec![Question {
                name: Name::from_labels(["_micro", "_tcp", "local"]),
                qtype: TYPE_PTR,
            }],
            records: vec![],
        };
        assert_eq!(Message::decode(&q.encode().unwrap()).unwrap(), q);
    }

    #[test]
    fn decodes_compressed_names_and_rejects_loops() {
        // Header: 1 question; name "a.local" then a PTR answer whose name points at it.
        let mut buf = vec![0, 0, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        buf.extend_from_slice(&[1, b'a', 5, b'l', b'o', b'c', b'a', b'l', 0, 0, 12, 0, 1]);
        buf.extend_from_slice(&[0xC0, 12, 0, 12, 0, 1, 0, 0, 0, 5, 0, 4, 1, b'b', 0xC0, 14]);
        let m = Message::decode(&buf).unwrap();
        assert!(m.questions[0].name.is(&["a", "local"]));
        assert_eq!(
            m.records[0].data,
            RData::Ptr(Name::from_labels(["b", "local"]))
        );

        let looped = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 12, 0, 1];
        assert!(Message::decode(&looped).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let good = sample().encode().unwrap();
        for cut in 0..good.len() {
            let _ = Message::decode(&good[..cut]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut buf = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % buf.len();
                buf[i] = (seed >> 32) as u8;
            }
            let _ = Message::decode(&buf);
        }
    }

    #[test]
    fn rejects_oversized_labels_and_txt() {
        let long = "x".repeat(64);
        let m = Message {
            response: true,
            questions: vec![Question {
                name: Name::from_labels([long.as_str()]),
                qtype: TYPE_PTR,
            }],
            records: vec![],
        };
        assert!(m.encode().is_err());
        let m = Message {
            response: true,
            questions: vec![],
            records: vec![Record {
                name: Name::from_labels(["a"]),
                flush: true,
                ttl: 1,
                data: RData::Txt(vec![vec![b'x'; 256]]),
            }],
        };
        assert!(m.encode().is_err());
    }
}

//! A node's record as TXT entries (RFC 6763 §6: `key=value`, at most 255
//! bytes each). Values too long for one entry (endpoint lists with docs,
//! metadata) are split: `key*=<count>` then `key*0=...`, `key*1=...`, and
//! reassembled on receipt.

use crate::registry::{Endpoint, Node, ServiceRecord};
use std::collections::{BTreeMap, HashMap};

/// Bytes of value per chunk (leaves room for `key*NNN=`).
const CHUNK: usize = 200;
/// Refuse absurd chunk counts from other speakers.
const MAX_CHUNKS: usize = 4096;
const TXT_VERSION: &str = "1";

/// A node record decoded from TXT entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decoded {
    /// The service with exactly one node.
    pub(super) record: ServiceRecord,
    /// The node address, if the entries carried one.
    pub(super) addr: Option<String>,
    /// Id of the registry that announced it.
    pub(super) origin: Option<u64>,
}

/// Encodes one node of `service` (announced by registry `origin`).
pub(super) fn encode(
    service: &ServiceRecord,
    node: &Node,
    origin: u64,
) -> Result<Vec<Vec<u8>>, String> {
    let mut out = vec![format!("txtvers={TXT_VERSION}").into_bytes()];
    push(&mut out, "name", service.name.as_bytes());
    push(&mut out, "version", service.version.as_bytes());
    push(&mut out, "id", node.id.as_bytes());
    push(&mut out, "addr", node.address.as_bytes());
    push(&mut out, "reg", format!("{origin:016x}").as_bytes());
    if !service.metadata.is_empty() {
        push(&mut out, "meta", &json(&service.metadata)?);
    }
    if !node.metadata.is_empty() {
        push(&mut out, "nmeta", &json(&node.metadata)?);
    }
    if !service.endpoints.is_empty() {
        push(&mut out, "eps", &json(&service.endpoints)?);
    }
    Ok(out)
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("cannot encode record: {e}"))
}

fn push(out: &mut Vec<Vec<u8>>, key: &str, value: &[u8]) {
    if key.len() + 1 + value.len() <= 255 {
        let mut e = format!("{key}=").into_bytes();
        e.extend_from_slice(value);
        out.push(e);
        return;
    }
    let chunks: Vec<&[u8]> = value.chunks(CHUNK).collect();
    out.push(format!("{key}*={}", chunks.len()).into_bytes());
    for (i, c) in chunks.into_iter().enumerate() {
        let mut e = format!("{key}*{i}=").into_bytes();
        e.extend_from_slice(c);
        out.push(e);
    }
}

/// Decodes TXT entries; an error means the record is not one of ours or is
/// malformed, and should be ignored.
pub(super) fn decode(entries: &[Vec<u8>]) -> Result<Decoded, String> {
    let mut map: HashMap<String, &[u8]> = HashMap::new();
    for e in entries {
        let Some(eq) = e.iter().position(|b| *b == b'=') else {
            continue;
        };
        let Ok(key) = std::str::from_utf8(&e[..eq]) else {
            continue;
        };
        // RFC 6763 §6.4: keys are case-insensitive; the first one wins.
        map.entry(key.to_ascii_lowercase()).or_insert(&e[eq + 1..]);
    }
    let get = |key: &str| -> Result<Option<Vec<u8>>, String> {
        if let Some(v) = map.get(key) {
            return Ok(Some(v.to_vec()));
        }
        let Some(count) = map.get(&format!("{key}*")) else {
            return Ok(None);
        };
        let count: usize = std::str::from_utf8(count)
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|c| *c <= MAX_CHUNKS)
            .ok_or_else(|| format!("bad chunk count of {key}"))?;
        let mut v = Vec::new();
        for i in 0..count {
            let chunk = map
                .get(&format!("{key}*{i}"))
                .ok_or_else(|| format!("chunk {i} of {key} missing"))?;
            v.extend_from_slice(chunk);
        }
        Ok(Some(v))
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        get(key)?
            .map(|v| String::from_utf8(v).map_err(|_| format!("{key} is not UTF-8")))
            .transpose()
    };
    match text("txtvers")? {
        Some(v) if v == TXT_VERSION => {}
        other => return Err(format!("unsupported txtvers {other:?}")),
    }
    let name = text("name")?
        .filter(|n| !n.is_empty())
        .ok_or("no service name")?;
    let id = text("id")?.filter(|n| !n.is_empty()).ok_or("no node id")?;
    let version = text("version")?.unwrap_or_default();
    let addr = text("addr")?.filter(|a| !a.is_empty());
    let origin = text("reg")?.and_then(|r| u64::from_str_radix(&r, 16).ok());
    let metadata: BTreeMap<String, String> = match get("meta")? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| format!("bad meta: {e}"))?,
        None => BTreeMap::new(),
    };
    let node_metadata: BTreeMap<String, String> = match get("nmeta")? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| format!("bad nmeta: {e}"))?,
        None => BTreeMap::new(),
    };
    let endpoints: Vec<Endpoint> = match get("eps")? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| format!("bad eps: {e}"))?,
        None => Vec::new(),
    };
    Ok(Decoded {
        record: ServiceRecord {
            name,
            version,
            metadata,
            endpoints,
            nodes: vec![Node {
                id,
                address: addr.clone().unwrap_or_default(),
                metadata: node_metadata,
            }],
        },
        addr,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceRecord {
        let endpoints = (0..5)
            .map(|i| Endpoint {
                name: format!("Greeter.Method{i}"),
                request: "HelloRequest".into(),
                response: "HelloReply".into(),
                doc: format!("Says hello — ünïcödé {i}. ").repeat(40),
                metadata: BTreeMap::from([("stream".into(), "false".into())]),
            })
            .collect();
        ServiceRecord {
            name: "greeter".into(),
            version: "1.2.3".into(),
            metadata: BTreeMap::from([("owner".into(), "x".repeat(300))]),
            endpoints,
            nodes: vec![Node {
                id: "greeter-1234".into(),
                address: "127.0.0.1:4000".into(),
                metadata: BTreeMap::from([("transport".into(), "tcp".into())]),
            }],
        }
    }

    #[test]
    fn round_trip_with_chunked_endpoints() {
        let s = service();
        let entries = encode(&s, &s.nodes[0], 0xabc).unwrap();
        assert!(entries.iter().all(|e| e.len() <= 255));
        assert!(
            entries.len() > 20,
            "endpoints should be chunked: {}",
            entries.len()
        );
        let d = decode(&entries).unwrap();
        assert_eq!(d.record, s);
        assert_eq!(d.origin, Some(0xabc));
        assert_eq!(d.addr.as_deref(), Some("127.0.0.1:4000"));
    }

    #[test]
    fn minimal_record_round_trips() {
        let s = ServiceRecord {
            name: "a".into(),
            nodes: vec![Node {
                id: "n".into(),
                address: "h:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = decode(&encode(&s, &s.nodes[0], 1).unwrap()).unwrap();
        assert_eq!(d.record, s);
    }

    #[test]
    fn malformed_entries_are_rejected() {
        let s = service();
        let good = encode(&s, &s.nodes[0], 1).unwrap();
        // A missing chunk.
        let missing: Vec<_> = good
            .iter()
            .filter(|e| !e.starts_with(b"eps*3="))
            .cloned()
            .collect();
        assert!(decode(&missing).is_err());
        // Bad JSON.
        let mut bad = good.clone();
        for e in bad.iter_mut().filter(|e| e.starts_with(b"eps*0=")) {
            *e = b"eps*0=]]]".to_vec();
        }
        assert!(decode(&bad).is_err());
        // Someone else's service, no fields, binary garbage, absurd counts.
        assert!(decode(&[b"path=/".to_vec(), b"txtvers=1".to_vec()]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[vec![0xff, b'=', 0xfe], b"=".to_vec()]).is_err());
        assert!(decode(&[
            b"txtvers=1".to_vec(),
            b"name=a".to_vec(),
            b"id=b".to_vec(),
            b"eps*=99999999999999999999".to_vec()
        ])
        .is_err());
        assert!(decode(&[b"txtvers=2".to_vec(), b"name=a".to_vec(), b"id=b".to_vec()]).is_err());
    }
}

//! What the NATS broker ([`crate::broker::NatsBroker`]) and the JetStream
//! events backend ([`crate::events::JetStreamEvents`]) share: connecting,
//! metadata as headers, and the errors naming the server.
//!
//! The errors carry the error id of the caller (`micro.broker`,
//! `micro.events`), given to [`Server::connect`].

use crate::context::Metadata;
use crate::error::{Error, Result};
use async_nats::connection::State;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, HeaderMap, HeaderName, HeaderValue};
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to the server may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A NATS server as one broker or backend reaches it.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) client: Client,
    /// The address connected with, named by the errors.
    pub(crate) address: Arc<str>,
    /// The id of the errors.
    error_id: &'static str,
}

impl Server {
    /// Connects to the NATS server at `address` (`nats://host:port` or
    /// `host:port`) as the client `name`, with errors of id `error_id`,
    /// without retrying: an unreachable server is a 503 naming it, within
    /// [`CONNECT_TIMEOUT`]; a malformed address is a 400.
    pub(crate) async fn connect(error_id: &'static str, name: &str, address: &str) -> Result<Self> {
        let connecting = ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(address);
        // The client's own timeout covers the TCP connection; this one covers
        // the handshake too.
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(client)) => Ok(Self {
                client,
                address: address.into(),
                error_id,
            }),
            Ok(Err(e)) if e.kind() == ConnectErrorKind::ServerParse => Err(Error::bad_request(
                error_id,
                format!("invalid NATS server address `{address}`: {e}"),
            )),
            Ok(Err(e)) => Err(unavailable(error_id, address, e)),
            Err(_) => Err(unavailable(
                error_id,
                address,
                format_args!("no answer within {CONNECT_TIMEOUT:?}"),
            )),
        }
    }

    /// A 503 unless the client is connected: while the server is away the
    /// client would buffer what is sent, hiding the outage.
    pub(crate) fn check_connected(&self) -> Result<()> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            _ => Err(self.unavailable("disconnected; reconnecting")),
        }
    }

    /// The headers of a message to send (see [`to_headers`]), after checking
    /// that its payload of `len` bytes is not larger than the server takes:
    /// else a 413 saying what was refused (`what()`).
    pub(crate) fn headers(
        &self,
        metadata: &Metadata,
        len: usize,
        what: impl FnOnce() -> String,
    ) -> Result<HeaderMap> {
        let headers = to_headers(self.error_id, metadata)?;
        let max = self.client.server_info().max_payload;
        if max > 0 && len > max {
            return Err(Error::payload_too_large(
                self.error_id,
                format!(
                    "{}: the NATS server at {} takes at most {max}",
                    what(),
                    self.address
                ),
            ));
        }
        Ok(headers)
    }

    /// A 413 saying what was refused (`what()`) if a payload of `len` bytes
    /// is larger than the server takes.
    pub(crate) fn check_payload(&self, len: usize, what: impl FnOnce() -> String) -> Result<()> {
        let max = self.client.server_info().max_payload;
        if max > 0 && len > max {
            return Err(Error::payload_too_large(
                self.error_id,
                format!(
                    "{}: the NATS server at {} takes at most {max}",
                    what(),
                    self.address
                ),
            ));
        }
        Ok(())
    }

    /// A 503 naming the server, saying `why`.
    pub(crate) fn unavailable(&self, why: impl Display) -> Error {
        unavailable(self.error_id, &self.address, why)
    }
}

/// [`to_headers`], consuming the metadata to spare copies: a value without
/// line breaks moves into its header as is, and a key among `known` (names
/// known to be valid) is not checked again. Entries whose key is in `skip`
/// are left out.
pub(crate) fn into_headers(
    error_id: &str,
    metadata: Metadata,
    known: &[&'static str],
    skip: &[&str],
) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (key, value) in metadata {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let name = match known.iter().find(|k| **k == key) {
            Some(k) => HeaderName::from_static(k),
            None => {
                let valid = !key.is_empty() && key.is_ascii();
                let name = HeaderName::from_str(&key).ok().filter(|_| valid);
                name.ok_or_else(|| {
                    Error::bad_request(
                        error_id,
                        format!("metadata key `{key}` cannot be a NATS header name"),
                    )
                })?
            }
        };
        let value = if value.contains(['\r', '\n']) {
            value.replace(['\r', '\n'], " ")
        } else {
            value
        };
        headers.insert(name, HeaderValue::from(value));
    }
    Ok(headers)
}

/// One header per metadata entry, line breaks in values sent as spaces; a
/// key that cannot be a header name is a 400.
pub(crate) fn to_headers(error_id: &str, metadata: &Metadata) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (key, value) in metadata {
        let valid = !key.is_empty() && key.is_ascii();
        let name = HeaderName::from_str(key).ok().filter(|_| valid);
        let name = name.ok_or_else(|| {
            Error::bad_request(
                error_id,
                format!("metadata key `{key}` cannot be a NATS header name"),
            )
        })?;
        headers.insert(name, HeaderValue::from(value.replace(['\r', '\n'], " ")));
    }
    Ok(headers)
}

/// The metadata of received headers: the last value of each, under the
/// header's name; a name matching one of `known` regardless of case is
/// spelled as in `known`.
pub(crate) fn to_metadata(headers: &HeaderMap, known: &[&str]) -> Metadata {
    headers
        .iter()
        .filter_map(|(name, values)| {
            let name: &str = name.as_ref();
            let key = known
                .iter()
                .find(|k| name.eq_ignore_ascii_case(k))
                .map_or(name, |k| *k);
            Some((key.to_owned(), values.last()?.as_str().to_owned()))
        })
        .collect()
}

/// A 503 naming the server at `address`, saying `why`.
fn unavailable(error_id: &str, address: &str, why: impl Display) -> Error {
    Error::unavailable(error_id, format!("NATS server at {address}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_headers() {
        let mut md = Metadata::new();
        md.insert("Micro-Id".into(), "abc".into());
        md.insert("Content-Type".into(), "application/json".into());
        md.insert("Micro-Dead-Error".into(), "line one\nline two".into());
        let back = to_metadata(&to_headers("test", &md).unwrap(), &[]);
        assert_eq!(back["Micro-Id"], "abc");
        assert_eq!(back["Content-Type"], "application/json");
        assert_eq!(back["Micro-Dead-Error"], "line one line two");

        for bad in ["a key", "a:b", "", "\u{141}"] {
            let md = Metadata::from([(bad.to_owned(), "v".to_owned())]);
            let e = to_headers("test", &md).unwrap_err();
            assert_eq!((e.code, e.id.as_str()), (400, "test"), "{bad:?}");
        }
    }

    #[test]
    fn owned_metadata_becomes_the_same_headers() {
        let mut md = Metadata::new();
        md.insert("Micro-Id".into(), "abc".into());
        md.insert("Content-Type".into(), "application/msgpack".into());
        md.insert("Micro-Dead-Error".into(), "line one\nline two".into());
        let headers = into_headers("test", md.clone(), &["Micro-Id"], &[]).unwrap();
        assert_eq!(headers, to_headers("test", &md).unwrap());
        let headers = into_headers("test", md, &[], &["Content-Type"]).unwrap();
        let back = to_metadata(&headers, &[]);
        assert_eq!(back.len(), 2);
        assert_eq!(back["Micro-Dead-Error"], "line one line two");
        for bad in ["a key", "a:b", "", "\u{141}"] {
            let md = Metadata::from([(bad.to_owned(), "v".to_owned())]);
            let e = into_headers("test", md, &["Micro-Id"], &[]).unwrap_err();
            assert_eq!((e.code, e.id.as_str()), (400, "test"), "{bad:?}");
        }
    }

    #[test]
    fn known_names_are_matched_regardless_of_case() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json");
        headers.insert("x-other", "v");
        let md = to_metadata(&headers, &["Content-Type"]);
        assert_eq!(md["Content-Type"], "application/json");
        assert_eq!(md["x-other"], "v");
        assert_eq!(
            to_metadata(&headers, &[])["content-type"],
            "application/json"
        );
    }
}

//! Codecs: how request and response bodies become bytes.
//!
//! The caller picks a content type per request; the server decodes with it and
//! answers in the same one. MessagePack with named fields is the default (compact,
//! and still self-describing so fields can be added); JSON is there for humans and
//! other languages.

use crate::error::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::str::FromStr;

/// The content types micro speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContentType {
    /// `application/msgpack`: MessagePack with named fields (the default).
    #[default]
    MsgPack,
    /// `application/json`.
    Json,
}

impl ContentType {
    /// Every supported content type, as written on the wire.
    pub const SUPPORTED: &'static [&'static str] = &["application/msgpack", "application/json"];

    /// The canonical MIME string.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::MsgPack => "application/msgpack",
            ContentType::Json => "application/json",
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(&mut out, value)?;
        Ok(out)
    }

    /// Encodes a value at the end of `out`.
    pub fn encode_into<T: Serialize + ?Sized>(self, out: &mut Vec<u8>, value: &T) -> Result<()> {
        match self {
            ContentType::MsgPack => rmp_serde::encode::write_named(out, value)
                .map_err(|e| Error::internal("micro.codec", format!("msgpack encode: {e}"))),
            ContentType::Json => serde_json::to_writer(out, value)
                .map_err(|e| Error::internal("micro.codec", format!("json encode: {e}"))),
        }
    }

    /// Decodes a value; a body that does not fit `T` is a `400 Bad Request` that
    /// says what was wrong with it.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            ContentType::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| {
                Error::bad_request("micro.codec", format!("malformed msgpack body: {e}"))
            }),
            ContentType::Json => {
                // An empty body stands for "no arguments" in JSON, as it does for curl users.
                let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
                    b"null"
                } else {
                    bytes
                };
                serde_json::from_slice(bytes).map_err(|e| {
                    Error::bad_request("micro.codec", format!("malformed json body: {e}"))
                })
            }
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentType {
    type Err = Error;

    /// Parses a MIME string, ignoring parameters such as `; charset=utf-8`.
    fn from_str(s: &str) -> Result<Self> {
        // The exact canonical strings are what micro clients send: no allocation for them.
        match s {
            "application/msgpack" => return Ok(ContentType::MsgPack),
            "application/json" => return Ok(ContentType::Json),
            _ => {}
        }
        let essence = s
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(ContentType::MsgPack)
            }
            "application/json" | "text/json" => Ok(ContentType::Json),
            _ => Err(Error::unsupported_media_type(
                "micro.codec",
                format!(
                    "unsupported content type `{s}`, expected one of: {}",
                    ContentType::SUPPORTED.join(", ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hello {
        name: String,
        n: u32,
    }

    #[test]
    fn round_trips_in_both() {
        let v = Hello {
            name: "a".into(),
            n: 7,
        };
        for ct in [ContentType::MsgPack, ContentType::Json] {
            let bytes = ct.encode(&v).unwrap();
            assert_eq!(ct.decode::<Hello>(&bytes).unwrap(), v);
        }
    }

    #[test]
    fn msgpack_uses_named_fields() {
        let bytes = ContentType::MsgPack
            .encode(&Hello {
                name: "a".into(),
                n: 1,
            })
            .unwrap();
        // A fixmap of two entries, not a fixarray.
        assert_eq!(bytes[0], 0x82);
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        let e = ContentType::Json
            .decode::<Hello>(b"{\"name\":")
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.detail.contains("malformed json"), "{e}");
        let e = ContentType::MsgPack
            .decode::<Hello>(&[0xc1, 0xff])
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.detail.contains("malformed msgpack"), "{e}");
        let e = ContentType::Json
            .decode::<Hello>(b"{\"name\":1,\"n\":2}")
            .unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn parses_mime_strings() {
        assert_eq!(
            "application/json; charset=utf-8"
                .parse::<ContentType>()
                .unwrap(),
            ContentType::Json
        );
        assert_eq!(
            "Application/MsgPack".parse::<ContentType>().unwrap(),
            ContentType::MsgPack
        );
        let e = "text/plain".parse::<ContentType>().unwrap_err();
        assert_eq!(e.code, 415);
        assert!(e.detail.contains("text/plain") && e.detail.contains("application/json"));
    }

    #[test]
    fn empty_json_body_is_unit() {
        ContentType::Json.decode::<()>(b"").unwrap();
    }
}

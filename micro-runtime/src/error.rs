//! The error that crosses the wire.
//!
//! [`Error`] follows go-micro's model: an `id` naming where it came from (usually
//! the service), an HTTP-like numeric `code`, a human `detail`, and the `status`
//! text of the code. It is serialized intact between client and server, so a
//! caller sees exactly what the handler returned.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The result type of every handler and every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error carried intact between services.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// Where the error was raised, e.g. the service name or `micro.client`.
    pub id: String,
    /// An HTTP-like status code (400, 401, 403, 404, 408, 409, 500, 503, ...).
    pub code: u16,
    /// A human-readable description.
    pub detail: String,
    /// The standard text of `code`, e.g. `Not Found`.
    pub status: String,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(id: impl Into<String>, detail: impl Into<String>) -> Self {
                Self::new(id, $code, detail)
            }
        )*
    };
}

impl Error {
    /// An error with any code; `status` is derived from the code.
    pub fn new(id: impl Into<String>, code: u16, detail: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            code,
            detail: detail.into(),
            status: status_text(code).to_owned(),
        }
    }

    constructors! {
        /// 400: the request was malformed.
        bad_request => 400;
        /// 401: the caller is not authenticated.
        unauthorized => 401;
        /// 403: the caller may not do this.
        forbidden => 403;
        /// 404: the thing asked for does not exist.
        not_found => 404;
        /// 405: the method is not allowed.
        method_not_allowed => 405;
        /// 408: the deadline passed before an answer came.
        timeout => 408;
        /// 409: the request conflicts with current state.
        conflict => 409;
        /// 413: the request is larger than allowed.
        payload_too_large => 413;
        /// 415: the content type is not supported.
        unsupported_media_type => 415;
        /// 500: something failed inside the service.
        internal => 500;
        /// 503: no node could take the call (none registered, all unreachable, or draining).
        unavailable => 503;
    }
}

/// The standard reason phrase of an HTTP-like code.
pub fn status_text(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}): {}",
            self.code, self.status, self.id, self.detail
        )
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::internal("micro.io", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_code_and_status() {
        let e = Error::not_found("greeter", "no such user");
        assert_eq!(e.code, 404);
        assert_eq!(e.status, "Not Found");
        assert_eq!(e.to_string(), "404 Not Found (greeter): no such user");
        assert_eq!(Error::timeout("a", "b").code, 408);
        assert_eq!(Error::conflict("a", "b").status, "Conflict");
    }

    #[test]
    fn survives_both_codecs() {
        let e = Error::forbidden("auth", "nope");
        let m: Error = rmp_serde::from_slice(&rmp_serde::to_vec_named(&e).unwrap()).unwrap();
        let j: Error = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(m, e);
        assert_eq!(j, e);
    }
}

//! Environment overrides, in go-micro's style.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `MICRO_REGISTRY` | `mdns` or `memory` | `mdns` |
//! | `MICRO_MDNS_INTERFACES` | interfaces mDNS uses: names (`lo,eth0`) or `all` | `lo` |
//! | `MICRO_MDNS_PORT` | the mDNS UDP port | `5353` |
//! | `MICRO_SERVER_ADDRESS` | address the server binds | `0.0.0.0:0` |
//! | `MICRO_SERVER_ADVERTISE` | address registered for clients to dial | derived |
//! | `MICRO_REGISTER_TTL` | how long a registration lives unrefreshed | `30s` |
//! | `MICRO_REGISTER_INTERVAL` | how often the service re-registers | `10s` |
//! | `MICRO_GRACE_PERIOD` | how long shutdown waits for in-flight calls | `10s` |
//! | `MICRO_CLIENT_TIMEOUT` | per-call timeout | `5s` |
//! | `MICRO_CLIENT_RETRIES` | retries on connection failures | `2` |
//! | `MICRO_CLIENT_POOL_SIZE` | connections per node | `1` |
//! | `MICRO_SELECTOR` | `random` or `roundrobin` | `random` |
//! | `MICRO_BROKER` | the pub/sub broker: `native`, `memory`, `nats` or `redis` | `native` |
//! | `MICRO_BROKER_ADDRESS` | the server of a `nats` or `redis` broker; the listen address of the `native` one | see below |
//! | `MICRO_EVENTS` | the durable events backend: `file`, `nats` or `redis` | `file` |
//! | `MICRO_EVENTS_ADDRESS` | the server of a `nats` or `redis` events backend | see below |
//! | `MICRO_EVENTS_DIR` | the directory of the `file` events log | `./.micro/events` |
//!
//! A remote backend without an address dials the local default:
//! [`DEFAULT_NATS_ADDRESS`] or [`DEFAULT_REDIS_ADDRESS`].
//!
//! Durations are written `250ms`, `5s`, `2m` (a bare number is seconds).

use crate::error::{Error, Result};
use std::time::Duration;

/// The NATS server a `nats` broker or events backend dials by default.
pub const DEFAULT_NATS_ADDRESS: &str = "nats://127.0.0.1:4222";
/// The Redis server a `redis` broker or events backend dials by default.
pub const DEFAULT_REDIS_ADDRESS: &str = "redis://127.0.0.1:6379";

/// Reads a variable; unset or empty is `None`.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads a duration variable; a malformed value is an error naming it.
pub fn duration(name: &str) -> Result<Option<Duration>> {
    var(name)
        .map(|v| {
            parse_duration(&v).map_err(|e| Error::bad_request("micro.env", format!("{name}: {e}")))
        })
        .transpose()
}

/// Reads a parsed variable; a malformed value is an error naming it.
pub fn parsed<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    var(name)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|e| Error::bad_request("micro.env", format!("{name}={v}: {e}")))
        })
        .transpose()
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{s}`, expected e.g. `250ms` or `5s`"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => {
            return Err(format!(
                "invalid duration unit `{u}` in `{s}`, expected one of: ms, s, m, h"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration `{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_out_of_range_are_errors() {
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 fortnights").unwrap_err().contains("unit"));
        assert!(parse_duration("abc").is_err());
    }
}

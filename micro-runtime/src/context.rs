//! The per-call [`Context`]: deadline, metadata and trace id.
//!
//! The server runs every handler inside the context of its call, so a handler
//! reaches it with [`Context::current`]. Calls a handler makes through a micro
//! client pick the context up on their own: the remaining deadline bounds the
//! outgoing call, and the metadata and trace id travel with it.
//!
//! The context is task-local: a task the handler spawns itself starts without
//! one unless it is wrapped with [`Context::scope`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request metadata: string keys to string values, sent with every call.
pub type Metadata = BTreeMap<String, String>;

/// The metadata key (and, over HTTP, header) by which a caller may set the
/// trace id of a call: 32 hex digits. Natively it travels in the request head.
pub const TRACE_ID_KEY: &str = "Micro-Trace-Id";

/// A 128-bit trace id, shown as 32 hex digits (as in W3C trace context).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub u128);

impl TraceId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random::<u128>().max(1))
    }

    /// Whether this is the zero id, which stands for none.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for TraceId {
    type Err = String;

    /// Parses 1 to 32 hex digits.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "invalid trace id `{s}`: expected 1 to 32 hex digits"
            ));
        }
        Ok(Self(u128::from_str_radix(s, 16).expect("checked hex")))
    }
}

tokio::task_local! {
    static CURRENT: Context;
}

/// What a handler knows about the call it is serving.
#[derive(Debug, Clone, Default)]
pub struct Context {
    deadline: Option<Instant>,
    /// `None` when empty, which spares the allocation for most calls.
    metadata: Option<Arc<Metadata>>,
    endpoint: Arc<str>,
    trace_id: TraceId,
}

static NO_METADATA: Metadata = Metadata::new();

impl Context {
    /// A context with a deadline and metadata, as the server builds it for a call.
    pub fn new(
        deadline: Option<Instant>,
        metadata: Metadata,
        endpoint: Arc<str>,
        trace_id: TraceId,
    ) -> Self {
        Self {
            deadline,
            metadata: (!metadata.is_empty()).then(|| Arc::new(metadata)),
            endpoint,
            trace_id,
        }
    }

    /// The context of the call being served on this task, if any.
    pub fn try_current() -> Option<Context> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The context of the call being served on this task, or an empty one
    /// (no deadline, no metadata) outside a handler.
    pub fn current() -> Context {
        Self::try_current().unwrap_or_default()
    }

    /// Runs `fut` with this context as the current one.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// When the caller stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// All request metadata.
    pub fn metadata(&self) -> &Metadata {
        self.metadata.as_deref().unwrap_or(&NO_METADATA)
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata().get(key).map(String::as_str)
    }

    /// The trace id of the call (set by the first client in a chain of calls;
    /// zero outside a handler).
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The endpoint being served, e.g. `Greeter.Hello`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn current_is_scoped_to_the_task() {
        assert!(Context::try_current().is_none());
        let mut md = Metadata::new();
        md.insert("user".into(), "u1".into());
        let ctx = Context::new(
            Some(Instant::now() + Duration::from_secs(5)),
            md,
            "Greeter.Hello".into(),
            TraceId(0xabc),
        );
        ctx.scope(async {
            let c = Context::current();
            assert_eq!(c.trace_id().to_string(), format!("{:032x}", 0xabc));
            assert_eq!(c.get("user"), Some("u1"));
            assert_eq!(c.endpoint(), "Greeter.Hello");
            assert!(c.remaining().unwrap() <= Duration::from_secs(5));
        })
        .await;
        assert!(Context::try_current().is_none());
        assert!(Context::current().trace_id().is_none());
        assert_eq!(TraceId::random().to_string().len(), 32);
        assert_eq!("00ff".parse::<TraceId>().unwrap(), TraceId(255));
        assert!("xyz".parse::<TraceId>().unwrap_err().contains("hex"));
        assert!("0".repeat(33).parse::<TraceId>().is_err());
    }
}

//! The server: accepts connections, dispatches requests to routes, answers
//! the built-in `Debug.*` endpoints, and drains on shutdown.

mod conn;
mod dispatch;
mod http;
mod route;

pub use route::{
    bidi_streaming, client_streaming, server_streaming, unary, BoxFuture, Call, EndpointDef,
    Handler, Reply, Request, Route, Shape, StreamFn, StreamReply, StreamRequest, UnaryFn,
};

use crate::registry::Endpoint;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The reply of `Debug.Health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` while the server serves.
    pub status: String,
}

/// The reply of `Debug.Stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Unix time (seconds) the server started.
    pub started: u64,
    /// Seconds since it started.
    pub uptime: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Requests being served now.
    pub in_flight: u64,
    /// Connections open now.
    pub connections: u64,
}

#[derive(Debug)]
pub(crate) struct Counters {
    started: Instant,
    started_unix: u64,
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// The handler tasks; its length is the number of calls in flight.
    tracker: TaskTracker,
    pub(crate) connections: AtomicU64,
}

impl Counters {
    fn new(tracker: TaskTracker) -> Self {
        Self {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tracker,
            connections: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> Stats {
        Stats {
            started: self.started_unix,
            uptime: self.started.elapsed().as_secs(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.tracker.len() as u64,
            connections: self.connections.load(Ordering::Relaxed),
        }
    }
}

/// How long shutdown waits for the connections to write their last replies.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) service: String,
    pub(crate) routes: HashMap<String, Route>,
    pub(crate) counters: Arc<Counters>,
    /// Handler tasks, waited for on shutdown.
    pub(crate) tracker: TaskTracker,
    /// Connection tasks: on shutdown, waited for (briefly) after the handlers,
    /// so that the replies the handlers queued are written before it returns.
    connections: TaskTracker,
    /// Cancelled when shutdown starts: connections send go-away and refuse new calls.
    pub(crate) draining: CancellationToken,
    /// Cancelled when shutdown ends: connections close and abort what is left.
    pub(crate) closed: CancellationToken,
    pub(crate) max_frame: usize,
    /// How long a stream waits for its peer's next item.
    pub(crate) idle_timeout: Duration,
}

/// Built-in endpoints every service answers.
struct Debug(Arc<Counters>);

fn builtin_routes(counters: Arc<Counters>) -> Vec<Route> {
    let this = Arc::new(Debug(counters));
    vec![
        unary(
            EndpointDef {
                name: "Debug.Health",
                request: "()",
                response: "Health",
                doc: "Whether the service is serving.",
            },
            Arc::clone(&this),
            |_this: Arc<Debug>, (): ()| async move {
                Ok(Health {
                    status: "ok".into(),
                })
            },
        ),
        unary(
            EndpointDef {
                name: "Debug.Stats",
                request: "()",
                response: "Stats",
                doc: "Uptime, request and error counts.",
            },
            this,
            |this: Arc<Debug>, (): ()| async move { Ok(this.0.snapshot()) },
        ),
    ]
}

/// A bound, serving server.
#[derive(Debug)]
pub(crate) struct Server {
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    endpoints: Vec<Endpoint>,
}

impl Server {
    /// Starts serving `routes` on `listener`.
    pub(crate) fn start(
        service: &str,
        routes: Vec<Route>,
        listener: TcpListener,
        max_frame: usize,
        idle_timeout: Duration,
    ) -> Server {
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::new(tracker.clone()));
        let mut table: HashMap<String, Route> = HashMap::new();
        for r in builtin_routes(Arc::clone(&counters))
            .into_iter()
            .chain(routes)
        {
            table.insert(r.endpoint.name.clone(), r);
        }
        let mut endpoints: Vec<Endpoint> = table.values().map(|r| r.endpoint.clone()).collect();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            routes: table,
            counters,
            tracker,
            connections: TaskTracker::new(),
            draining: CancellationToken::new(),
            closed: CancellationToken::new(),
            max_frame,
            idle_timeout,
        });
        let accept = tokio::spawn(accept_loop(Arc::clone(&shared), listener));
        Server {
            shared,
            accept,
            endpoints,
        }
    }

    pub(crate) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Stops accepting, tells clients to go away, waits up to `grace` for
    /// in-flight calls, then closes every connection. Returns whether every
    /// call finished within the grace period.
    pub(crate) async fn shutdown(self, grace: Duration) -> bool {
        self.accept.abort();
        let _ = self.accept.await;
        self.shared.draining.cancel();
        self.shared.tracker.close();
        let drained = tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok();
        self.shared.closed.cancel();
        // The calls are done, but their replies may still sit in the
        // connections' write queues: a process exiting right after this
        // would drop them, and the callers would retry calls that ran.
        self.shared.connections.close();
        if tokio::time::timeout(FLUSH_WAIT, self.shared.connections.wait())
            .await
            .is_err()
        {
            tracing::debug!(service = %self.shared.service, "connections still open after the flush wait");
        }
        drained
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shared
                    .connections
                    .spawn(conn::serve(Arc::clone(&shared), stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

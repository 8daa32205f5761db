//! What every protocol does with a call once decoded: find the route, run
//! the handler in its context (deadline, panics), open streams.

use super::{Call, Reply, Request, Route, Shared, StreamReply, StreamRequest};
use crate::context::Context;
use crate::error::{Error, Result};
use futures_util::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;

impl Shared {
    /// The route of `endpoint`, or a 404 that lists what is served. A
    /// non-empty `service` must name this service.
    pub(crate) fn route(&self, service: &str, endpoint: &str) -> Result<&Route> {
        let this = self.service.as_str();
        if !service.is_empty() && service != this {
            return Err(Error::not_found(
                this,
                format!("service `{service}` is not served here (this node serves `{this}`)"),
            ));
        }
        self.routes.get(endpoint).ok_or_else(|| {
            let mut known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
            known.sort_unstable();
            Error::not_found(
                this,
                format!(
                    "unknown endpoint `{endpoint}` on service `{this}`; it serves: {}",
                    known.join(", ")
                ),
            )
        })
    }

    /// Runs a unary route under `ctx` until `deadline`; panics become 500s.
    pub(crate) async fn run_unary(
        &self,
        route: &Route,
        ctx: Context,
        request: Request,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Reply> {
        let service = self.service.as_str();
        let Call::Unary(f) = &route.call else {
            return Err(Error::bad_request(
                service,
                format!(
                    "{} is a streaming endpoint; open it as a stream",
                    route.name
                ),
            ));
        };
        let call = AssertUnwindSafe(ctx.scope(f(request))).catch_unwind();
        let outcome = match deadline {
            Some(d) => until_deadline(call, d).await.ok_or_else(|| {
                Error::timeout(
                    service,
                    format!("{} did not finish within the caller's deadline", route.name),
                )
            })?,
            None => call.await,
        };
        outcome.unwrap_or_else(|panic| Err(self.panicked(route, panic)))
    }

    /// Opens a streaming route under `ctx`: the handler runs until it returns
    /// its reply or its stream of replies. Streams have no deadline; their
    /// idle timeout applies instead.
    pub(crate) async fn open_stream(
        &self,
        route: &Route,
        ctx: Context,
        request: StreamRequest,
    ) -> Result<StreamReply> {
        let Call::Stream(_, f) = &route.call else {
            return Err(Error::bad_request(
                self.service.as_str(),
                format!(
                    "{} is a unary endpoint; call it without a stream",
                    route.name
                ),
            ));
        };
        AssertUnwindSafe(ctx.scope(f(request)))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(self.panicked(route, panic)))
    }

    /// The error a panic of `route`'s handler turns into.
    pub(crate) fn panicked(&self, route: &Route, panic: Box<dyn Any + Send>) -> Error {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(endpoint = %route.name, panic = %msg, "handler panicked");
        Error::internal(
            self.service.as_str(),
            format!("handler of {} panicked: {msg}", route.name),
        )
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline came first (and `fut`
/// is dropped, which cancels it). Unlike `tokio::time::timeout_at`, the timer
/// is only made once `fut` has to wait, so calls answered at once cost none.
async fn until_deadline<F: Future>(fut: F, deadline: tokio::time::Instant) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

//! Endpoints opened as WebSockets: one JSON text message per item each way.
//! The rules are in the parent module's documentation.

use super::{
    endpoint_of, error_json, error_response, spawn_handler, CallInfo, Out, Running, Shared,
};
use crate::context::TraceId;
use crate::error::{Error, Result};
use crate::stream::{Inbound, Msg, OnAbandon, OnConsume, WINDOW};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore, TryAcquireError};

/// How long the server waits for the client to answer its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server keeps a connection it can no longer read open after
/// its close frame, so the client reads the error before the connection is
/// reset (closing a socket with unread input resets it).
const LINGER: Duration = Duration::from_secs(1);
/// The close code of a normal end.
const NORMAL: u16 = 1000;

/// Answers a WebSocket handshake on an endpoint path; the session runs on
/// its own task once the connection is upgraded, holding `alive` until it
/// ends.
pub(super) async fn upgrade(
    shared: Arc<Shared>,
    mut parts: Parts,
    trace: Result<TraceId>,
    alive: mpsc::Sender<()>,
) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return error_response(&Error::new(
                shared.service.as_str(),
                rejection.status().as_u16(),
                rejection.body_text(),
            ))
        }
    };
    // Header errors are answered in the session, like every other error.
    let call = trace.and_then(|trace| CallInfo::from_headers(&shared, &parts.headers, trace));
    let endpoint = endpoint_of(&parts.uri).to_owned();
    upgrade
        .max_message_size(shared.max_frame)
        .max_frame_size(shared.max_frame)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let _alive = alive;
            session(shared, endpoint, call, socket).await;
        })
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The handler finished: close normally.
    Done,
    /// Tell the client, then close with `4000 + code`.
    Failed(Error),
    /// The same, after the socket failed to read: it cannot be read any more.
    Unreadable(Error),
    /// The client sent a close frame: finish the closing handshake.
    Closed,
    /// The client went away: nothing more can be sent.
    Gone,
}

/// Where the client's messages go.
#[derive(Debug)]
enum Input {
    /// Unary and server streaming: the first message is the request.
    AwaitRequest,
    /// The request was received; only empty messages may follow.
    Requested,
    /// Client and bidirectional streaming: the handler's inbound items.
    Items(mpsc::UnboundedSender<Msg>),
    /// The client ended its stream with an empty message.
    Ended,
}

async fn session(
    shared: Arc<Shared>,
    endpoint: String,
    call: Result<CallInfo>,
    mut socket: WebSocket,
) {
    let (e, readable) = match run(&shared, &endpoint, call, &mut socket).await {
        End::Done => {
            if send(
                &shared,
                &mut socket,
                close_frame(NORMAL, ""),
                Some(CLOSE_TIMEOUT),
            )
            .await
            {
                finish(&shared, &mut socket, true).await;
            }
            return;
        }
        // Reading on sends the reply tungstenite queued for the close frame.
        End::Closed => return finish(&shared, &mut socket, true).await,
        End::Gone => return,
        End::Failed(e) => (e, true),
        End::Unreadable(e) => (e, false),
    };
    shared
        .counters
        .errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(text) = Utf8Bytes::try_from(error_json(&e)) else {
        return;
    };
    let limit = Some(CLOSE_TIMEOUT);
    if send(&shared, &mut socket, Message::Text(text), limit).await
        && send(
            &shared,
            &mut socket,
            close_frame(close_code(e.code), &e.status),
            limit,
        )
        .await
    {
        finish(&shared, &mut socket, readable).await;
    }
}

/// The close code of an error: `4000 + code` for error codes, else 4500.
fn close_code(code: u16) -> u16 {
    if (400..=599).contains(&code) {
        4000 + code
    } else {
        4500
    }
}

/// Sends one message, waiting while the client does not read (up to `limit`,
/// if given) but not past the server's closing. Whether it was sent.
async fn send(
    shared: &Shared,
    socket: &mut WebSocket,
    msg: Message,
    limit: Option<Duration>,
) -> bool {
    let sending = async {
        match limit {
            Some(limit) => matches!(
                tokio::time::timeout(limit, socket.send(msg)).await,
                Ok(Ok(()))
            ),
            None => socket.send(msg).await.is_ok(),
        }
    };
    tokio::select! {
        sent = sending => sent,
        () = shared.closed.cancelled() => false,
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// After the close frames: waits (briefly) for the client to finish the
/// closing handshake, reading and dropping whatever it still sends, or, if
/// the socket cannot be read any more, gives the client a moment to read
/// what was sent before the connection goes.
async fn finish(shared: &Shared, socket: &mut WebSocket, readable: bool) {
    let wait = async {
        if readable {
            let drain = async { while let Some(Ok(_)) = socket.recv().await {} };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        } else {
            tokio::time::sleep(LINGER).await;
        }
    };
    tokio::select! {
        () = wait => {}
        () = shared.closed.cancelled() => {}
    }
}

/// Runs the call until it ends one way or another.
async fn run(
    shared: &Arc<Shared>,
    endpoint: &str,
    call: Result<CallInfo>,
    socket: &mut WebSocket,
) -> End {
    let service = shared.service.as_str();
    let (route, call) = match call.and_then(|call| Ok((shared.route("", endpoint)?, call))) {
        Ok(found) => found,
        Err(e) => return End::Failed(e),
    };
    if shared.draining.is_cancelled() {
        return End::Failed(Error::unavailable(service, "server shutting down"));
    }
    let (name, shape) = (Arc::clone(&route.name), route.shape());
    // Bytes the reader may still hand over before the handler consumes more.
    let window = Arc::new(Semaphore::new(WINDOW));
    let mut call = Some(call);
    let mut running: Option<Running> = None;
    let mut input = if shape.streams_in() {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbound = Inbound::new(
            rx,
            shared.idle_timeout,
            Some(on_consume(&window)),
            Some(on_abandon(&window)),
        );
        let call = call.take().expect("not taken yet");
        running = Some(spawn_handler(
            shared,
            &name,
            shape,
            call,
            Bytes::new(),
            Some(inbound),
        ));
        Input::Items(tx)
    } else {
        Input::AwaitRequest
    };
    // Armed while the server waits for the client's request, or while the
    // client waits for the handler to take its next item.
    let idle = tokio::time::sleep(shared.idle_timeout);
    let closed = shared.closed.cancelled();
    tokio::pin!(idle, closed);
    let rearm = |idle: std::pin::Pin<&mut tokio::time::Sleep>| {
        idle.reset(tokio::time::Instant::now() + shared.idle_timeout);
    };
    // A message read but not yet within the window.
    let mut pending: Option<Bytes> = None;
    loop {
        let cost = pending.as_ref().map_or(0, |b| b.len().min(WINDOW)) as u32;
        tokio::select! {
            biased;
            () = &mut closed => {
                return End::Failed(Error::unavailable(service, "server shutting down"));
            }
            out = next_out(&mut running) => match out {
                Some(Out::Open) => {}
                Some(Out::Item(item)) => {
                    let Ok(text) = Utf8Bytes::try_from(item) else {
                        return End::Failed(Error::internal(service, "the reply is not UTF-8"));
                    };
                    // A client that does not read holds the handler back.
                    if !send(shared, socket, Message::Text(text), None).await {
                        return End::Gone;
                    }
                    if pending.is_some() {
                        rearm(idle.as_mut());
                    }
                }
                Some(Out::End) => return End::Done,
                Some(Out::Fail(e)) => return End::Failed(e),
                None => return End::Failed(super::ended_silently(service)),
            },
            permit = window.acquire_many(cost), if pending.is_some() => {
                let item = pending.take().expect("guarded by the branch condition");
                // A closed window: the handler stopped reading; drop the item.
                if let Ok(permit) = permit {
                    permit.forget();
                    if let Input::Items(tx) = &input {
                        let _ = tx.send(Msg::Item(item));
                    }
                }
            }
            msg = socket.recv(), if pending.is_none() => {
                let text = match msg {
                    Some(Ok(Message::Text(text))) => Bytes::from(text),
                    Some(Ok(Message::Binary(_))) => {
                        return End::Failed(Error::unsupported_media_type(
                            service,
                            "binary messages are not supported: send each JSON item as a text message",
                        ));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) => return End::Closed,
                    None => return End::Gone,
                    Some(Err(e)) => return read_error(shared, e),
                };
                match &input {
                    Input::AwaitRequest => {
                        let call = call.take().expect("one request");
                        running = Some(spawn_handler(shared, &name, shape, call, text, None));
                        input = Input::Requested;
                    }
                    Input::Requested | Input::Ended if text.is_empty() => {}
                    Input::Requested => {
                        return End::Failed(Error::bad_request(
                            service,
                            format!(
                                "{name} takes one request message; send nothing more than empty messages"
                            ),
                        ));
                    }
                    Input::Ended => {
                        return End::Failed(Error::bad_request(
                            service,
                            "a message after the end of the stream (the empty message)",
                        ));
                    }
                    Input::Items(tx) if text.is_empty() => {
                        let _ = tx.send(Msg::End);
                        input = Input::Ended;
                    }
                    Input::Items(tx) => {
                        if let Err(e) = crate::codec::ContentType::Json
                            .decode::<serde::de::IgnoredAny>(&text)
                        {
                            return End::Failed(Error::bad_request(
                                service,
                                format!("stream item is not JSON: {}", e.detail),
                            ));
                        }
                        match window.try_acquire_many(text.len().min(WINDOW) as u32) {
                            Ok(permit) => {
                                permit.forget();
                                let _ = tx.send(Msg::Item(text));
                            }
                            // The handler stopped reading: drop the item.
                            Err(TryAcquireError::Closed) => {}
                            // The handler is behind: wait for it before reading on.
                            Err(TryAcquireError::NoPermits) => {
                                pending = Some(text);
                                rearm(idle.as_mut());
                            }
                        }
                    }
                }
            }
            () = &mut idle, if pending.is_some() || matches!(input, Input::AwaitRequest) => {
                let waited = if pending.is_some() {
                    "the handler took no stream item"
                } else {
                    "no request message"
                };
                return End::Failed(Error::timeout(
                    service,
                    format!("{waited} within the idle timeout of {:?}", shared.idle_timeout),
                ));
            }
        }
    }
}

/// The handler's next output, once there is a handler.
async fn next_out(running: &mut Option<Running>) -> Option<Out> {
    match running {
        Some(running) => running.next().await,
        None => std::future::pending().await,
    }
}

/// The handler consumed `n` bytes: the reader may read that much further.
fn on_consume(window: &Arc<Semaphore>) -> OnConsume {
    let window = Arc::clone(window);
    Box::new(move |n| window.add_permits(n.min(WINDOW)))
}

/// The handler gave up on its inbound items: the reader drops them from now on.
fn on_abandon(window: &Arc<Semaphore>) -> OnAbandon {
    let window = Arc::clone(window);
    Box::new(move || window.close())
}

/// What a failed read means: the client's fault, or the client gone.
/// Either way the socket cannot be read any more.
fn read_error(shared: &Shared, e: axum::Error) -> End {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let service = shared.service.as_str();
    let Ok(e) = e.into_inner().downcast::<WsError>() else {
        return End::Gone;
    };
    match *e {
        WsError::Capacity(e) => End::Unreadable(Error::payload_too_large(
            service,
            format!(
                "websocket message over the limit of {} bytes: {e}",
                shared.max_frame
            ),
        )),
        WsError::Utf8(e) => End::Unreadable(Error::bad_request(
            service,
            format!("text message is not UTF-8: {e}"),
        )),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        WsError::Protocol(e) => End::Unreadable(Error::bad_request(
            service,
            format!("websocket protocol error: {e}"),
        )),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        assert_eq!(close_code(400), 4400);
        assert_eq!(close_code(404), 4404);
        assert_eq!(close_code(503), 4503);
        assert_eq!(close_code(200), 4500);
        assert_eq!(close_code(999), 4500);
    }
}

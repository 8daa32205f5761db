//! # micro
//!
//! Code-first distributed services for Rust. Declare a service as a plain trait,
//! implement it, run it: it registers itself, and any process finds it by name
//! through a generated, load-balanced, typed client.
//!
//! ```
//! use micro::prelude::*;
//! use std::sync::Arc;
//!
//! #[micro::message]
//! pub struct HelloRequest { pub name: String }
//! #[micro::message]
//! pub struct HelloReply { pub message: String }
//!
//! /// The contract, usually in a small crate shared by servers and clients.
//! #[micro::service(name = "greeter", version = "1.0.0")]
//! pub trait Greeter {
//!     /// Endpoint `Greeter.Hello`.
//!     async fn hello(&self, req: HelloRequest) -> micro::Result<HelloReply>;
//! }
//!
//! struct MyGreeter;
//!
//! #[micro::handler]
//! impl Greeter for MyGreeter {
//!     async fn hello(&self, req: HelloRequest) -> micro::Result<HelloReply> {
//!         Ok(HelloReply { message: format!("Hello, {}", req.name) })
//!     }
//! }
//!
//! # #[micro::main] async fn main() -> micro::Result<()> {
//! // Real programs call `.run()`, which serves until SIGINT/SIGTERM; the
//! // in-process registry keeps this example self-contained.
//! let service = Service::new("greeter")
//!     .handler(MyGreeter)
//!     .registry(Arc::new(micro::MemoryRegistry::new()))
//!     .start()
//!     .await?;
//!
//! let greeter = GreeterClient::new(&service.client());
//! let reply = greeter.hello(HelloRequest { name: "Alice".into() }).await?;
//! assert_eq!(reply.message, "Hello, Alice");
//! service.stop().await
//! # }
//! ```
//!
//! The README lists the environment variables; `docs/architecture.md` and
//! `docs/protocol.md` in the repository describe the design and the wire format.
#![doc(html_root_url = "https://docs.rs/micro/0.1.0")]

pub use micro_macros::{handler, main, message, service, subscriber};
pub use micro_runtime::*;

/// Crates generated code and users reach through `micro`.
pub use serde;
pub use tokio;

/// The names most programs need.
pub mod prelude {
    pub use crate::{handler, message, service, subscriber};
    pub use micro_runtime::stream::StreamExt;
    pub use micro_runtime::{Client, Context, Error, Result, Service, StreamSender, Streaming};
}

/// What generated code refers to. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use micro_runtime::broker::{topic_handler, Subscriber, TopicHandler};
    pub use micro_runtime::client::{CallOptions, Client, ServiceClient};
    pub use micro_runtime::server::{
        bidi_streaming, client_streaming, server_streaming, unary, EndpointDef, Handler, Route,
    };
    pub use micro_runtime::stream::Streaming;
    pub use micro_runtime::{Error, Result};
    pub use serde;
    pub use tokio;

    pub use ::core::future::Future;
    pub use ::core::marker::Send;
    pub use ::core::time::Duration;
    pub use ::std::boxed::Box;
    pub use ::std::string::String;
    pub use ::std::sync::Arc;
    pub use ::std::vec::Vec;
}

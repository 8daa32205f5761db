//! The runtime of `micro`: everything that runs.
//!
//! Users depend on the `micro` crate, which re-exports this one; the module
//! layout follows the architecture (see `docs/architecture.md`).

pub mod broker;
pub mod client;
pub mod codec;
pub mod context;
pub mod env;
pub mod error;
pub mod events;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
pub mod registry;
pub mod selector;
pub mod server;
pub mod service;
pub mod stream;
pub mod transport;

pub use broker::{Broker, MemoryBroker, NativeBroker, SubscribeOptions, Subscriber};
pub use client::{CallOptions, Client, ClientBuilder, ServiceClient};
pub use codec::ContentType;
pub use context::{Context, Metadata, TraceId};
pub use error::{Error, Result};
pub use registry::{MdnsOptions, MdnsRegistry, MemoryRegistry, Registry};
pub use selector::Strategy;
pub use server::{Handler, Health, Stats};
pub use service::{shutdown_signal, RunningService, Service};
pub use stream::{StreamSender, Streaming};

//! Service discovery.
//!
//! A [`Registry`] knows which nodes serve which service. Services register
//! themselves with a TTL and re-register before it runs out; a node that stops
//! re-registering drops out when its TTL passes. Clients read through a
//! [`cache::Cache`] that a watch keeps fresh.
//!
//! Implementations: [`MemoryRegistry`] (one process, for tests) and
//! [`MdnsRegistry`] (zero configuration, the default).

pub mod cache;
mod mdns;
mod memory;

pub use mdns::{MdnsInterfaces, MdnsOptions, MdnsRegistry};
pub use memory::MemoryRegistry;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// A service as the registry knows it: its name, version, endpoints and nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceRecord {
    /// The name clients call it by, e.g. `greeter`.
    pub name: String,
    /// The version the nodes run.
    pub version: String,
    /// Free-form metadata of the service.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The endpoints it serves.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The nodes that serve it.
    #[serde(default)]
    pub nodes: Vec<Node>,
}

/// One process serving a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Node {
    /// Unique per process, e.g. `greeter-3f2a...`.
    pub id: String,
    /// `host:port` that clients dial.
    pub address: String,
    /// Free-form metadata of the node (transport, protocol, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// The description of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Endpoint {
    /// The wire name, e.g. `Greeter.Hello`.
    pub name: String,
    /// The request type's name as written in the source.
    pub request: String,
    /// The response type's name as written in the source.
    pub response: String,
    /// The doc comment of the method.
    #[serde(default)]
    pub doc: String,
    /// Free-form metadata (e.g. `stream`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What happened to a service, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A node appeared.
    Create,
    /// A node's record changed (or was refreshed).
    Update,
    /// A node left (deregistered or expired).
    Delete,
}

/// One change seen by a watch. `service.nodes` holds the nodes concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The service, with the nodes concerned.
    pub service: ServiceRecord,
}

/// A stream of registry changes; dropping it ends the watch.
pub type Watcher = mpsc::Receiver<Event>;

/// Errors of registries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached or set up.
    #[error("registry {registry} unavailable: {detail}")]
    Unavailable {
        /// Which registry.
        registry: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A record was rejected (e.g. too large for the medium).
    #[error("invalid service record: {0}")]
    Invalid(String),
}

impl From<RegistryError> for crate::Error {
    fn from(e: RegistryError) -> Self {
        crate::Error::unavailable("micro.registry", e.to_string())
    }
}

/// Service discovery: register, deregister, look up and watch services.
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// Registers (or refreshes) the nodes in `service` for `ttl`.
    async fn register(&self, service: &ServiceRecord, ttl: Duration) -> Result<(), RegistryError>;
    /// Removes the nodes in `service` at once.
    async fn deregister(&self, service: &ServiceRecord) -> Result<(), RegistryError>;
    /// Every live record of `name` (one per version), empty if none.
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceRecord>, RegistryError>;
    /// Every live service.
    async fn list_services(&self) -> Result<Vec<ServiceRecord>, RegistryError>;
    /// Changes to `service` (or to every service when `None`) from now on.
    async fn watch(&self, service: Option<&str>) -> Result<Watcher, RegistryError>;
    /// A short name for messages, e.g. `mdns`.
    fn name(&self) -> &'static str;
    /// Whether every party of this registry is on this machine (then services
    /// bound to all interfaces advertise a loopback address).
    fn local_only(&self) -> bool {
        false
    }
}

/// The watches of a registry, each with its service filter.
#[derive(Debug, Default)]
pub(crate) struct Watchers(Vec<(Option<String>, mpsc::Sender<Event>)>);

impl Watchers {
    /// A new watch of `service` (or of every service).
    pub(crate) fn add(&mut self, service: Option<&str>) -> Watcher {
        let (tx, rx) = mpsc::channel(256);
        self.0.push((service.map(str::to_owned), tx));
        rx
    }

    /// Tells every interested watch; drops the watches whose receiver is gone.
    pub(crate) fn notify(&mut self, kind: EventKind, service: &ServiceRecord) {
        self.0.retain(|(filter, tx)| {
            if filter.as_deref().is_some_and(|f| f != service.name) {
                return !tx.is_closed();
            }
            // A watch that cannot keep up loses events rather than stalling the registry.
            !matches!(
                tx.try_send(Event {
                    kind,
                    service: service.clone()
                }),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }
}

/// Merges node lists of records with the same name and version.
pub(crate) fn merge_records(
    records: impl IntoIterator<Item = ServiceRecord>,
) -> Vec<ServiceRecord> {
    let mut out: Vec<ServiceRecord> = Vec::new();
    for rec in records {
        match out
            .iter_mut()
            .find(|r| r.name == rec.name && r.version == rec.version)
        {
            Some(existing) => {
                for node in rec.nodes {
                    if let Some(n) = existing.nodes.iter_mut().find(|n| n.id == node.id) {
                        *n = node;
                    } else {
                        existing.nodes.push(node);
                    }
                }
                if existing.endpoints.is_empty() {
                    existing.endpoints = rec.endpoints;
                }
            }
            None => out.push(rec),
        }
    }
    out
}

/// The registry the environment asks for (`MICRO_REGISTRY`: `mdns`, the default, or `memory`).
pub fn from_env() -> crate::Result<std::sync::Arc<dyn Registry>> {
    match crate::env::var("MICRO_REGISTRY").as_deref().map(str::trim) {
        None | Some("mdns") => Ok(std::sync::Arc::new(MdnsRegistry::new(
            MdnsOptions::from_env(),
        )?)),
        Some("memory") => Ok(std::sync::Arc::new(MemoryRegistry::new())),
        Some(other) => Err(crate::Error::bad_request(
            "micro.env",
            format!(
                "MICRO_REGISTRY: unknown registry `{other}`, expected one of: `mdns`, `memory`"
            ),
        )),
    }
}

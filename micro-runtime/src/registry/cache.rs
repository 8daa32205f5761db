//! The client's view of the registry: looked up once per service, then kept
//! fresh by a watch, so a call costs no registry round trip.

use super::{EventKind, Node, Registry, RegistryError};
use dashmap::DashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How long an entry is trusted when its watch has ended (e.g. the registry failed).
const STALE_AFTER: Duration = Duration::from_secs(30);

/// A watch-fed cache of the nodes of each service.
#[derive(Debug)]
pub struct Cache {
    registry: Arc<dyn Registry>,
    entries: Arc<DashMap<String, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    nodes: Arc<Vec<Node>>,
    fetched: Instant,
    watched: bool,
}

impl Cache {
    /// A cache in front of `registry`.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Self {
            registry,
            entries: Arc::new(DashMap::new()),
        }
    }

    /// The registry behind the cache.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The live nodes of `service` (empty if none).
    pub async fn nodes(&self, service: &str) -> Result<Arc<Vec<Node>>, RegistryError> {
        if let Some(e) = self.entries.get(service) {
            if (e.watched || e.fetched.elapsed() < STALE_AFTER) && !e.nodes.is_empty() {
                return Ok(Arc::clone(&e.nodes));
            }
        }
        self.refresh(service).await
    }

    /// Looks `service` up in the registry again and (re)starts its watch.
    pub async fn refresh(&self, service: &str) -> Result<Arc<Vec<Node>>, RegistryError> {
        let watcher = match self.entries.get(service) {
            Some(e) if e.watched => None,
            _ => Some(self.registry.watch(Some(service)).await?),
        };
        let records = self.registry.get_service(service).await?;
        let mut nodes: Vec<Node> = Vec::new();
        for r in records {
            for n in r.nodes {
                if !nodes.iter().any(|m| m.id == n.id) {
                    nodes.push(n);
                }
            }
        }
        let nodes = Arc::new(nodes);
        let watched = watcher.is_some() || self.entries.get(service).is_some_and(|e| e.watched);
        self.entries.insert(
            service.to_owned(),
            Entry {
                nodes: Arc::clone(&nodes),
                fetched: Instant::now(),
                watched,
            },
        );
        if let Some(mut watcher) = watcher {
            let entries: Weak<DashMap<String, Entry>> = Arc::downgrade(&self.entries);
            let name = service.to_owned();
            tokio::spawn(async move {
                while let Some(ev) = watcher.recv().await {
                    let Some(entries) = entries.upgrade() else {
                        return;
                    };
                    let Some(mut e) = entries.get_mut(&name) else {
                        continue;
                    };
                    let mut nodes: Vec<Node> = e.nodes.as_ref().clone();
                    for n in ev.service.nodes {
                        nodes.retain(|m| m.id != n.id);
                        if ev.kind != EventKind::Delete {
                            nodes.push(n);
                        }
                    }
                    e.nodes = Arc::new(nodes);
                    e.fetched = Instant::now();
                }
                if let Some(entries) = entries.upgrade() {
                    if let Some(mut e) = entries.get_mut(&name) {
                        e.watched = false;
                    }
                }
            });
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MemoryRegistry, ServiceRecord};

    fn rec(id: &str) -> ServiceRecord {
        ServiceRecord {
            name: "svc".into(),
            version: "1".into(),
            nodes: vec![Node {
                id: id.into(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    async fn wait_for(cache: &Cache, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.nodes("svc").await.unwrap().len() != want {
            assert!(
                Instant::now() < deadline,
                "cache never reached {want} nodes"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn follows_the_registry_through_its_watch() {
        let reg = MemoryRegistry::new();
        let cache = Cache::new(Arc::new(reg.clone()));
        assert!(cache.nodes("svc").await.unwrap().is_empty());
        reg.register(&rec("a"), Duration::from_secs(30))
            .await
            .unwrap();
        wait_for(&cache, 1).await;
        reg.register(&rec("b"), Duration::from_secs(30))
            .await
            .unwrap();
        wait_for(&cache, 2).await;
        reg.deregister(&rec("a")).await.unwrap();
        wait_for(&cache, 1).await;
        assert_eq!(cache.nodes("svc").await.unwrap()[0].id, "b");
    }
}

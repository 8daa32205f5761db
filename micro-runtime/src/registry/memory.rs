//! An in-process registry, for tests and single-process programs.

use super::{merge_records, EventKind, Registry, RegistryError, ServiceRecord, Watcher, Watchers};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How often expired nodes are swept out (and watchers told).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A registry that lives in this process. Clones share the same records.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// (service name, node id) → single-node record and its expiry.
    nodes: HashMap<(String, String), (ServiceRecord, Instant)>,
    watchers: Watchers,
    sweeper: bool,
}

impl State {
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<_> = self
            .nodes
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some((rec, _)) = self.nodes.remove(&key) {
                self.watchers.notify(EventKind::Delete, &rec);
            }
        }
    }

    fn live(&self, name: Option<&str>) -> Vec<ServiceRecord> {
        let now = Instant::now();
        let mut recs: Vec<_> = self
            .nodes
            .iter()
            .filter(|((n, _), (_, exp))| *exp > now && name.is_none_or(|name| name == n))
            .map(|(_, (rec, _))| rec.clone())
            .collect();
        recs.sort_by(|a, b| a.nodes[0].id.cmp(&b.nodes[0].id));
        merge_records(recs)
    }
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn start_sweeper(&self, state: &mut State) {
        if state.sweeper || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        state.sweeper = true;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.state.lock().unwrap().sweep(Instant::now());
            }
        });
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, service: &ServiceRecord, ttl: Duration) -> Result<(), RegistryError> {
        let mut state = self.inner.state.lock().unwrap();
        self.start_sweeper(&mut state);
        let expires = Instant::now() + ttl;
        for node in &service.nodes {
            let rec = ServiceRecord {
                nodes: vec![node.clone()],
                ..service.clone()
            };
            let key = (service.name.clone(), node.id.clone());
            let kind = if state.nodes.contains_key(&key) {
                EventKind::Update
            } else {
                EventKind::Create
            };
            state.nodes.insert(key, (rec.clone(), expires));
            state.watchers.notify(kind, &rec);
        }
        Ok(())
    }

    async fn deregister(&self, service: &ServiceRecord) -> Result<(), RegistryError> {
        let mut state = self.inner.state.lock().unwrap();
        for node in &service.nodes {
            if let Some((rec, _)) = state.nodes.remove(&(service.name.clone(), node.id.clone())) {
                state.watchers.notify(EventKind::Delete, &rec);
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<ServiceRecord>, RegistryError> {
        Ok(self.inner.state.lock().unwrap().live(Some(name)))
    }

    async fn list_services(&self) -> Result<Vec<ServiceRecord>, RegistryError> {
        Ok(self.inner.state.lock().unwrap().live(None))
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher, RegistryError> {
        let mut state = self.inner.state.lock().unwrap();
        self.start_sweeper(&mut state);
        Ok(state.watchers.add(service))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn local_only(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Node;

    fn record(name: &str, id: &str) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            version: "1".into(),
            nodes: vec![Node {
                id: id.into(),
                address: format!("127.0.0.1:{}", id.len()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn register_get_deregister_and_watch() {
        let r = MemoryRegistry::new();
        let mut w = r.watch(Some("a")).await.unwrap();
        r.register(&record("a", "n1"), Duration::from_secs(30))
            .await
            .unwrap();
        r.register(&record("a", "n2"), Duration::from_secs(30))
            .await
            .unwrap();
        r.register(&record("b", "n3"), Duration::from_secs(30))
            .await
            .unwrap();
        let got = r.get_service("a").await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].nodes.len(), 2);
        assert_eq!(r.list_services().await.unwrap().len(), 2);
        assert_eq!(w.recv().await.unwrap().kind, EventKind::Create);
        assert_eq!(w.recv().await.unwrap().kind, EventKind::Create);
        r.deregister(&record("a", "n1")).await.unwrap();
        let ev = w.recv().await.unwrap();
        assert_eq!(
            (ev.kind, ev.service.nodes[0].id.as_str()),
            (EventKind::Delete, "n1")
        );
        assert_eq!(r.get_service("a").await.unwrap()[0].nodes.len(), 1);
        assert!(r.get_service("zzz").await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_expire_after_their_ttl() {
        let r = MemoryRegistry::new();
        let mut w = r.watch(None).await.unwrap();
        r.register(&record("a", "n1"), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(w.recv().await.unwrap().kind, EventKind::Create);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(r.get_service("a").await.unwrap().len(), 1);
        let ev = tokio::time::timeout(Duration::from_secs(3), w.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.kind, EventKind::Delete);
        assert!(r.get_service("a").await.unwrap().is_empty());
    }
}

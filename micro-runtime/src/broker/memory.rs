//! A broker within one process, for tests.

use super::{run_subscription, sender_of, Broker, MessageHandler, SubscribeOptions, Subscription};
use crate::context::Metadata;
use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

type Inbox = mpsc::UnboundedSender<(Bytes, Metadata)>;

/// A broker within one process: same semantics as the others (queue groups,
/// retries, dead letters), nothing leaves the process. For tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    topics: Arc<Mutex<HashMap<String, Vec<Member>>>>,
}

#[derive(Debug)]
struct Member {
    id: u64,
    queue: Option<String>,
    inbox: Inbox,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn send(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<()> {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(members) = topics.get(topic) else {
            return Ok(());
        };
        let mut groups: HashMap<&str, Vec<&Member>> = HashMap::new();
        for m in members {
            match &m.queue {
                None => {
                    let _ = m.inbox.send((payload.clone(), metadata.clone()));
                }
                Some(q) => groups.entry(q.as_str()).or_default().push(m),
            }
        }
        for group in groups.values() {
            let pick = group[rand::random_range(0..group.len())];
            let _ = pick.inbox.send((payload.clone(), metadata.clone()));
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        opts: SubscribeOptions,
        handler: MessageHandler,
    ) -> Result<Subscription> {
        opts.validate(topic)?;
        let (inbox, rx) = mpsc::unbounded_channel();
        let id = rand::random();
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .push(Member {
                id,
                queue: opts.queue.clone(),
                inbox,
            });
        let queue = opts.queue.clone();
        let messages = tokio_stream_of(rx);
        let task = tokio::spawn(run_subscription(
            topic.to_owned(),
            messages,
            opts,
            handler,
            sender_of(self),
        ));
        let (topics, topic_owned) = (Arc::clone(&self.topics), topic.to_owned());
        Ok(Subscription::new(topic, queue, async move {
            if let Some(members) = topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&topic_owned)
            {
                members.retain(|m| m.id != id);
            }
            // The loop ends once the queued messages are handled.
            let _ = task.await;
        }))
    }
}

/// The messages of an inbox as a stream.
fn tokio_stream_of(
    mut rx: mpsc::UnboundedReceiver<(Bytes, Metadata)>,
) -> impl futures_util::Stream<Item = (Bytes, Metadata)> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

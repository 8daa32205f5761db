//! `#[subscriber]` on a free function and on an impl block; the function
//! stays callable as `<name>::call`.

use micro::broker::Subscriber;
use std::sync::Arc;

#[micro::message]
pub struct UserCreated {
    pub id: u64,
}

/// Sends the welcome mail.
#[micro::subscriber(topic = "user.created", queue = "mailer")]
pub async fn welcome(event: UserCreated) -> micro::Result<()> {
    let _ = event.id;
    Ok(())
}

struct Audit {
    prefix: String,
}

#[micro::subscriber]
impl Audit {
    #[subscriber(topic = "user.created")]
    async fn created(&self, event: UserCreated) -> micro::Result<()> {
        let _ = (&self.prefix, event.id);
        Ok(())
    }

    #[micro::subscriber(topic = "user.deleted", queue = "audit")]
    async fn deleted(&self, _: u64) -> Result<(), micro::Error> {
        Ok(())
    }

    /// Not a subscriber: no attribute.
    fn helper(&self) {}
}

fn main() {
    let subs = Arc::new(welcome).subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].topic, "user.created");
    assert_eq!(subs[0].options.queue.as_deref(), Some("mailer"));

    let audit = Audit { prefix: "a".into() };
    audit.helper();
    let subs = Arc::new(audit).subscriptions();
    let topics: Vec<_> = subs
        .iter()
        .map(|s| (s.topic.as_str(), s.options.queue.clone()))
        .collect();
    assert_eq!(
        topics,
        [
            ("user.created", None),
            ("user.deleted", Some("audit".to_owned()))
        ]
    );

    let rt = micro::tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(welcome::call(UserCreated { id: 1 })).unwrap();
    let _service = micro::Service::new("mailer").subscriber(welcome);
}

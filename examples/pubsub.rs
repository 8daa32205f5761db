//! Pub/sub on the default broker: a publisher, a queue group of two mailers
//! (each signup is mailed once) and a broadcast auditor (sees every signup).
//!
//! `cargo run --example pubsub`
//!
//! The native broker needs nothing but the registry. Set `MICRO_BROKER=nats`
//! or `MICRO_BROKER=redis` (and `MICRO_BROKER_ADDRESS` if the server is not on
//! its default local port) to run the same code on NATS or Redis.

use micro::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[micro::message]
#[derive(Debug, Clone)]
struct UserCreated {
    id: u64,
    email: String,
}

/// One member of the `mailer` queue group.
struct Mailer {
    name: &'static str,
    sent: Arc<AtomicUsize>,
}

#[micro::subscriber]
impl Mailer {
    #[subscriber(topic = "user.created", queue = "mailer")]
    async fn welcome(&self, user: UserCreated) -> micro::Result<()> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        println!(
            "{}: welcome mail to {} (user {})",
            self.name, user.email, user.id
        );
        Ok(())
    }
}

static AUDITED: AtomicUsize = AtomicUsize::new(0);

/// Broadcast: no queue, so this subscriber sees every message.
#[micro::subscriber(topic = "user.created")]
async fn audit(user: UserCreated) -> micro::Result<()> {
    AUDITED.fetch_add(1, Ordering::SeqCst);
    let ctx = Context::current();
    println!(
        "audit: user {} created (trace {}, message {})",
        user.id,
        ctx.trace_id(),
        ctx.get(micro::broker::ID_KEY).unwrap_or("?")
    );
    Ok(())
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let (sent_a, sent_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mailer = |name, sent: &Arc<AtomicUsize>| Mailer {
        name,
        sent: Arc::clone(sent),
    };
    // One registry for the four services of this process (mDNS unless
    // MICRO_REGISTRY says otherwise): they see each other's subscriptions at
    // once. Separate processes find them the same way, within moments.
    let registry = micro::registry::from_env()?;
    let service = |name: &str| Service::new(name).registry(registry.clone());
    let mailer_a = service("mailer")
        .subscriber(mailer("mailer-a", &sent_a))
        .start()
        .await?;
    let mailer_b = service("mailer")
        .subscriber(mailer("mailer-b", &sent_b))
        .start()
        .await?;
    let auditor = service("audit").subscriber(audit).start().await?;
    let signup = service("signup").start().await?;

    let users = 6;
    for id in 1..=users {
        let user = UserCreated {
            id,
            email: format!("user{id}@example.com"),
        };
        // With the native broker this returns once the mailer group and the
        // auditor have handled the message.
        let message_id = signup.publish("user.created", &user).await?;
        println!("signup: published user {id} as message {message_id}");
    }

    let delivered = |n: &AtomicUsize| n.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while delivered(&sent_a) + delivered(&sent_b) < users as usize
        || delivered(&AUDITED) < users as usize
    {
        if std::time::Instant::now() > deadline {
            return Err(Error::timeout(
                "pubsub",
                "not every message arrived within 10 s",
            ));
        }
        micro::tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (mailed, audited) = (delivered(&sent_a) + delivered(&sent_b), delivered(&AUDITED));
    if mailed != users as usize || audited != users as usize {
        return Err(Error::internal(
            "pubsub",
            format!("{users} signups, but {mailed} mails and {audited} audits"),
        ));
    }
    println!(
        "mailer-a sent {}, mailer-b sent {} (each signup once), audit saw {}",
        delivered(&sent_a),
        delivered(&sent_b),
        delivered(&AUDITED)
    );
    for service in [signup, mailer_a, mailer_b, auditor] {
        service.stop().await?;
    }
    Ok(())
}

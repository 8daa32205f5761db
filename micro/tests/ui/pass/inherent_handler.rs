//! `#[handler]` on an inherent impl: every `pub async fn` taking `&self` is an
//! endpoint; private and sync methods are helpers.

use micro::server::Handler;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Counter {
    total: AtomicI64,
}

#[micro::handler(name = "counter", version = "2")]
impl Counter {
    /// Adds `n` and returns the new total.
    pub async fn add(&self, n: i64) -> micro::Result<i64> {
        Ok(self.bump(n))
    }

    /// Adds `a * b`.
    #[micro(name = "Mul")]
    pub async fn add_product(&self, a: i64, b: i64) -> micro::Result<i64> {
        Ok(self.bump(a * b))
    }

    /// The current total.
    pub async fn get(&self) -> micro::Result<i64> {
        Ok(self.total.load(Ordering::SeqCst))
    }

    /// A public constructor: not async, so not an endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    async fn _private_helper(&self) -> micro::Result<()> {
        Ok(())
    }

    fn bump(&self, n: i64) -> i64 {
        self.total.fetch_add(n, Ordering::SeqCst) + n
    }
}

fn main() {
    let routes = Handler::routes(Arc::new(Counter::new()));
    let names: Vec<&str> = routes.iter().map(|r| r.endpoint.name.as_str()).collect();
    assert_eq!(names, ["Counter.Add", "Counter.Mul", "Counter.Get"]);
    assert_eq!(routes[1].endpoint.request, "(a: i64, b: i64)");
    assert_eq!(CounterClient::SERVICE, "counter");
    assert_eq!(CounterClient::VERSION, "2");
    fn _client_api(client: &micro::Client) {
        let counter = CounterClient::new(client);
        let _add = counter.add(1);
        let _mul = counter.add_product(2, 3);
    }
}

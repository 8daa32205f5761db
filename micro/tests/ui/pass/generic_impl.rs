//! A generic type implementing a `#[service]` trait.

use micro::server::Handler;
use std::sync::Arc;

#[micro::service]
trait Store {
    async fn len(&self) -> micro::Result<usize>;
}

struct Memory<T> {
    items: Vec<T>,
}

#[micro::handler]
impl<T> Store for Memory<T>
where
    T: Send + Sync + 'static,
{
    async fn len(&self) -> micro::Result<usize> {
        Ok(self.items.len())
    }
}

struct Tagged<T: Send + Sync + 'static>(T);

#[micro::handler]
impl<T: Send + Sync + 'static> Store for Tagged<T> {
    async fn len(&self) -> micro::Result<usize> {
        Ok(1)
    }
}

fn main() {
    let routes = Handler::routes(Arc::new(Memory::<String> { items: vec![] }));
    assert_eq!(routes[0].endpoint.name, "Store.Len");
    assert_eq!(StoreClient::SERVICE, "store");
    assert_eq!(StoreClient::VERSION, "latest");
    let routes = Handler::routes(Arc::new(Tagged(1u8)));
    assert_eq!(routes.len(), 1);
}

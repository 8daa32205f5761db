// A mistake in the trait is reported once: the impl and the handler built on
// it raise no further errors.
use std::sync::Arc;

#[micro::service]
trait Greeter {
    async fn hello(&mut self, name: String) -> micro::Result<String>;
}

struct MyGreeter;

#[micro::handler]
impl Greeter for MyGreeter {
    async fn hello(&mut self, name: String) -> micro::Result<String> {
        Ok(name)
    }
}

fn main() {
    let _ = micro::server::Handler::routes(Arc::new(MyGreeter));
}

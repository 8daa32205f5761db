//! The greeter contract shared by the `greeter_server` and `greeter_client`
//! examples: the kind of small crate a team shares between a service and its
//! callers.

use micro::prelude::*;

/// Who to greet.
#[micro::message]
#[derive(Debug, Clone)]
pub struct HelloRequest {
    /// The name to greet.
    pub name: String,
}

/// The greeting.
#[micro::message]
#[derive(Debug, Clone)]
pub struct HelloReply {
    /// `Hello, <name>`.
    pub message: String,
}

/// Greets people.
#[micro::service(name = "greeter", version = "1.0.0")]
pub trait Greeter {
    /// Says hello: endpoint `Greeter.Hello`.
    async fn hello(&self, req: HelloRequest) -> micro::Result<HelloReply>;
    /// Says hello to everyone who arrives, as they arrive: endpoint
    /// `Greeter.Chat`, a bidirectional stream.
    async fn chat(&self, people: Streaming<HelloRequest>) -> micro::Result<Streaming<HelloReply>>;
}

/// A greeter that says hello, and which node said it.
#[derive(Debug, Default)]
pub struct MyGreeter;

#[micro::handler]
impl Greeter for MyGreeter {
    async fn hello(&self, req: HelloRequest) -> micro::Result<HelloReply> {
        if req.name.is_empty() {
            return Err(Error::bad_request("greeter", "name must not be empty"));
        }
        Ok(HelloReply {
            message: format!("Hello, {}", req.name),
        })
    }

    async fn chat(&self, people: Streaming<HelloRequest>) -> micro::Result<Streaming<HelloReply>> {
        Ok(Streaming::try_new(
            people.then(|req| async move { MyGreeter.hello(req?).await }),
        ))
    }
}

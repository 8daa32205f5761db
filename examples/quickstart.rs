//! One process: start a greeter service, find it through the registry, call it
//! through the generated typed client, stop it.
//!
//! `cargo run --example quickstart`

use micro::prelude::*;

#[micro::message]
struct HelloRequest {
    name: String,
}

#[micro::message]
struct HelloReply {
    message: String,
}

#[micro::service(name = "greeter")]
trait Greeter {
    async fn hello(&self, req: HelloRequest) -> micro::Result<HelloReply>;
}

struct MyGreeter;

#[micro::handler]
impl Greeter for MyGreeter {
    async fn hello(&self, req: HelloRequest) -> micro::Result<HelloReply> {
        Ok(HelloReply {
            message: format!("Hello, {}", req.name),
        })
    }
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let service = Service::new("greeter").handler(MyGreeter).start().await?;

    let greeter = GreeterClient::new(&service.client());
    let reply = greeter
        .hello(HelloRequest {
            name: "World".into(),
        })
        .await?;
    println!("{}", reply.message);

    service.stop().await
}

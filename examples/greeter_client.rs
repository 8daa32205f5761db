//! Finds the greeter by name (mDNS by default) and calls it.
//!
//! `cargo run --example greeter_client -- Alice` prints `Hello, Alice`.

use micro::prelude::*;
use micro_examples::{GreeterClient, HelloRequest};

#[micro::main]
async fn main() -> micro::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "World".into());
    let client = Client::new()?;
    let reply = GreeterClient::new(&client)
        .hello(HelloRequest { name })
        .await?;
    println!("{}", reply.message);
    Ok(())
}

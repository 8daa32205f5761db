//! A greeter service: registers itself (mDNS by default) and serves until
//! SIGINT/SIGTERM, then deregisters and drains in-flight calls.
//!
//! `cargo run --example greeter_server`, then in another terminal
//! `cargo run --example greeter_client -- Alice`.
//!
//! `Service::run()` does all of this in one call; the steps are spelled out
//! here to print where the service listens.

use micro::prelude::*;
use micro_examples::MyGreeter;

#[micro::main]
async fn main() -> micro::Result<()> {
    let service = Service::new("greeter")
        .version("1.0.0")
        .handler(MyGreeter)
        .start()
        .await?;
    let node = service.node();
    println!(
        "greeter serving on {} as {} ({} registry)",
        node.address,
        node.id,
        service.registry().name()
    );

    micro::shutdown_signal().await;
    println!("greeter shutting down");
    service.stop().await
}

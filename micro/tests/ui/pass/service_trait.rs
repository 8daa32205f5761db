//! A `#[service]` trait with 0, 1 and 3 arguments and a `#[micro(name)]`
//! override, implemented by a `#[handler]` impl.

use micro::server::Handler;
use std::sync::Arc;

#[micro::message]
#[derive(Debug, PartialEq)]
pub struct Greeting {
    pub text: String,
}

/// Greets people.
#[micro::service(name = "greeter", version = "1.0.0")]
pub trait Greeter {
    /// Checks the service is up.
    async fn ping(&self) -> micro::Result<()>;

    /// Says hello.
    ///
    /// Politely.
    async fn say_hello(&self, name: String) -> micro::Result<Greeting>;

    /// Adds three numbers.
    async fn add3(&self, a: i64, b: i64, c: i64) -> micro::Result<i64>;

    /// Says hi, on the wire as `Greeter.Hi`.
    #[micro(name = "Hi")]
    async fn say_hi(&self) -> micro::Result<String>;

    /// A provided method is an endpoint too.
    async fn version(&self) -> micro::Result<String> {
        Ok("1.0.0".to_owned())
    }
}

struct MyGreeter;

#[micro::handler]
impl Greeter for MyGreeter {
    async fn ping(&self) -> micro::Result<()> {
        Ok(())
    }

    async fn say_hello(&self, name: String) -> micro::Result<Greeting> {
        Ok(Greeting {
            text: format!("hello {name}"),
        })
    }

    async fn add3(&self, a: i64, b: i64, c: i64) -> micro::Result<i64> {
        Ok(a + b + c)
    }

    async fn say_hi(&self) -> micro::Result<String> {
        Ok("hi".to_owned())
    }
}

fn main() {
    let routes = Handler::routes(Arc::new(MyGreeter));
    let names: Vec<&str> = routes.iter().map(|r| r.endpoint.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Greeter.Ping",
            "Greeter.SayHello",
            "Greeter.Add3",
            "Greeter.Hi",
            "Greeter.Version",
        ]
    );
    let e = |i: usize| &routes[i].endpoint;
    assert_eq!(
        (e(0).request.as_str(), e(0).response.as_str()),
        ("()", "()")
    );
    assert_eq!(e(1).request, "String");
    assert_eq!(e(1).response, "Greeting");
    assert_eq!(e(1).doc, "Says hello.\n\nPolitely.");
    assert_eq!(e(2).request, "(a: i64, b: i64, c: i64)");
    assert_eq!(GreeterClient::SERVICE, "greeter");
    assert_eq!(GreeterClient::VERSION, "1.0.0");

    // The typed client has one method per endpoint, with the trait's signature.
    fn _client_api(client: &micro::Client) {
        let greeter = GreeterClient::new(client)
            .with_timeout(std::time::Duration::from_secs(1))
            .with_options(micro::CallOptions::default());
        let _ = GreeterClient::with_service(client, "greeter-v2");
        let _ping = greeter.ping();
        let _hello = greeter.say_hello("bob".to_owned());
        let _sum = greeter.add3(1, 2, 3);
        let _hi = greeter.say_hi();
    }
}

//! Everything generated is documented: this compiles under `deny(missing_docs)`.
#![deny(missing_docs)]

/// Services of this crate.
pub mod api {
    /// A greeting.
    #[micro::message]
    pub struct Greeting {
        /// Its text.
        pub text: String,
    }

    /// Greets people.
    #[micro::service]
    pub trait Greeter {
        /// Says hello.
        async fn hello(&self, name: String) -> micro::Result<Greeting>;
        /// Says hello to two people.
        async fn hello2(&self, a: String, b: String) -> micro::Result<Greeting>;
    }

    /// Counts.
    #[derive(Debug, Default)]
    pub struct Counter;

    #[micro::handler]
    impl Counter {
        /// Adds.
        pub async fn add(&self, n: i64) -> micro::Result<i64> {
            Ok(n)
        }
        #[allow(missing_docs)]
        pub async fn undocumented(&self) -> micro::Result<()> {
            Ok(())
        }
    }
}

#[micro::main]
async fn main() {
    let _ = api::GreeterClient::SERVICE;
    let _ = api::CounterClient::SERVICE;
}

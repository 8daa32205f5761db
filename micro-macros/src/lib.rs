//! Procedural macros of the micro service framework, used through the `micro`
//! crate: `#[micro::service]`, `#[micro::handler]`, `#[micro::message]` and
//! `#[micro::main]`.
//!
//! This file holds only the entry points; each macro lives in its own module
//! with a `parse` (syn → model), `validate` and `expand` step. Generated code
//! names only `::micro::__private::…` and `::core::…`.

mod attrs;
mod client;
mod diag;
mod handler;
mod main_fn;
mod message;
mod model;
mod naming;
mod routes;
mod rules;
mod service;
mod subscriber;

use proc_macro::TokenStream;

/// Declares a service: a trait whose `async fn`s are remote endpoints.
///
/// ```ignore
/// #[micro::service(name = "greeter", version = "1.0.0")]
/// pub trait Greeter {
///     /// Says hello.
///     async fn hello(&self, name: String) -> micro::Result<String>;
///     #[micro(name = "Hi")]
///     async fn say_hi(&self) -> micro::Result<()>;
/// }
/// ```
///
/// Both arguments are optional: the name defaults to the trait name in lower
/// case, the version to `latest`. Endpoints are named `Greeter.Hello`
/// (`<Trait>.<MethodInUpperCamelCase>`) unless `#[micro(name = "..")]` says
/// otherwise. Besides the trait (now `Send + Sync + 'static`, with `Send`
/// futures) this generates `GreeterClient`, a typed client with one method
/// per endpoint. Implement the trait with plain `async fn`s and mark the impl
/// with `#[micro::handler]`.
///
/// An endpoint streams when `micro::Streaming<T>` is its only argument
/// (client streaming), its reply (server streaming), or both (bidirectional):
///
/// ```ignore
/// async fn countdown(&self, from: u32) -> micro::Result<micro::Streaming<u32>>;
/// async fn sum(&self, nums: micro::Streaming<i64>) -> micro::Result<i64>;
/// async fn chat(&self, lines: micro::Streaming<Line>) -> micro::Result<micro::Streaming<Line>>;
/// ```
///
/// `Streaming` may appear nowhere else (not inside `Vec`, `Option`, ..).
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    service::service(attr.into(), item.into()).into()
}

/// Makes an impl block servable.
///
/// On `impl Greeter for MyGreeter` it serves the routes of the `#[service]`
/// trait. On an inherent impl (`impl Counter { .. }`, optionally with
/// `#[handler(name = "..", version = "..")]`) every `pub async fn` taking
/// `&self` is an endpoint `Counter.<Method>` (streaming as for `#[service]`),
/// and a `CounterClient` is generated.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    handler::handler(attr.into(), item.into()).into()
}

/// Subscribes an `async fn` of one message to a topic.
///
/// ```ignore
/// #[micro::subscriber(topic = "user.created", queue = "mailer")]
/// async fn on_user_created(event: UserCreated) -> micro::Result<()> {
///     Ok(())
/// }
///
/// Service::new("mailer").subscriber(on_user_created)
/// ```
///
/// `topic` is required; `queue` makes the subscriber one member of a queue
/// group (each message goes to one member), without it every subscriber gets
/// every message. The function becomes a unit struct of the same name that
/// `Service::subscriber` takes; it stays callable as `on_user_created::call(..)`.
/// Returning an error retries the message, then dead-letters it.
///
/// On an impl block, `#[micro::subscriber]` (no arguments) subscribes every
/// method marked `#[subscriber(topic = "..")]`; the methods take `&self`:
///
/// ```ignore
/// #[micro::subscriber]
/// impl Mailer {
///     #[subscriber(topic = "user.created", queue = "mailer")]
///     async fn welcome(&self, event: UserCreated) -> micro::Result<()> { Ok(()) }
/// }
///
/// Service::new("mailer").subscriber(Mailer::new())
/// ```
#[proc_macro_attribute]
pub fn subscriber(attr: TokenStream, item: TokenStream) -> TokenStream {
    subscriber::subscriber(attr.into(), item.into()).into()
}

/// Makes a struct or enum a message: serde's `Serialize` and `Deserialize`,
/// without a serde dependency of your own.
#[proc_macro_attribute]
pub fn message(attr: TokenStream, item: TokenStream) -> TokenStream {
    message::message(attr.into(), item.into()).into()
}

/// Runs `async fn main` on tokio's multi-threaded runtime.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    main_fn::main(attr.into(), item.into()).into()
}

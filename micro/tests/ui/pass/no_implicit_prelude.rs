//! Generated code names nothing the user's scope could shadow.
#![no_implicit_prelude]

// Shadow the names generated code might be tempted to use.
#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Vec;
#[allow(dead_code)]
struct Arc;
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
trait Send {}
#[allow(dead_code)]
trait Sync {}
#[allow(dead_code)]
trait Clone {}
#[allow(dead_code)]
mod serde {}
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
struct Streaming;

#[::micro::message]
pub struct Reply {
    pub value: i64,
}

#[::micro::service]
pub trait Calc {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> ::micro::Result<Reply>;
    /// Negates.
    async fn neg(&self, a: i64) -> ::micro::Result<i64>;
    /// Zero.
    async fn zero(&self) -> ::micro::Result<::std::option::Option<i64>>;
    /// Counts up.
    async fn count(&self, to: i64, step: i64) -> ::micro::Result<::micro::Streaming<i64>>;
    /// Adds up.
    async fn total(&self, nums: ::micro::Streaming<i64>) -> ::micro::Result<i64>;
    /// Echoes.
    async fn echo(&self, nums: ::micro::Streaming<i64>)
        -> ::micro::Result<::micro::Streaming<i64>>;
}

struct MyCalc;

#[::micro::handler]
impl Calc for MyCalc {
    async fn add(&self, a: i64, b: i64) -> ::micro::Result<Reply> {
        ::core::result::Result::Ok(Reply { value: a + b })
    }
    async fn neg(&self, a: i64) -> ::micro::Result<i64> {
        ::core::result::Result::Ok(-a)
    }
    async fn zero(&self) -> ::micro::Result<::std::option::Option<i64>> {
        ::core::result::Result::Ok(::std::option::Option::None)
    }
    async fn count(&self, to: i64, step: i64) -> ::micro::Result<::micro::Streaming<i64>> {
        ::core::result::Result::Ok(::micro::Streaming::iter(::std::iter::Iterator::step_by(
            0..to,
            step as usize,
        )))
    }
    async fn total(&self, nums: ::micro::Streaming<i64>) -> ::micro::Result<i64> {
        let _ = nums;
        ::core::result::Result::Ok(0)
    }
    async fn echo(
        &self,
        nums: ::micro::Streaming<i64>,
    ) -> ::micro::Result<::micro::Streaming<i64>> {
        ::core::result::Result::Ok(nums)
    }
}

struct Counter;

#[::micro::handler]
impl Counter {
    /// Echoes.
    pub async fn echo(
        &self,
        a: i64,
        b: ::std::string::String,
    ) -> ::micro::Result<::std::string::String> {
        let _ = a;
        ::core::result::Result::Ok(b)
    }
}

fn main() {
    let routes = ::micro::server::Handler::routes(::std::sync::Arc::new(MyCalc));
    ::std::assert_eq!(routes.len(), 6);
    let routes = ::micro::server::Handler::routes(::std::sync::Arc::new(Counter));
    ::std::assert_eq!(routes[0].endpoint.name, "Counter.Echo");
}

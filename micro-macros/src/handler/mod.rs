//! `#[handler]`: an impl block becomes something a service can serve.
//!
//! On `impl Greeter for MyGreeter` (a `#[service]` trait) it adds the
//! `Handler` impl that serves the trait's routes. On an inherent impl every
//! `pub async fn` taking `&self` is an endpoint, and a typed client is
//! generated as for a `#[service]` trait.

mod expand;
mod parse;
mod validate;

use crate::diag::{self, Errors};
use proc_macro2::TokenStream;
use quote::quote;

/// Expands `#[handler(attr)] item`.
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let item_impl = match diag::parse_item(item, "handler", "an impl block", &mut errors) {
        Ok(syn::Item::Impl(item_impl)) => item_impl,
        Ok(other) => {
            diag::wrong_item(&other, "handler", "an impl block", &mut errors);
            let errors = errors.to_compile_errors();
            return quote!(#errors #other);
        }
        Err(fallback) => return fallback,
    };
    let handler = parse::parse(attr, &item_impl, &mut errors);
    validate::validate(&handler, &item_impl, &mut errors);
    if errors.is_empty() {
        expand::expand(&handler, item_impl)
    } else {
        let errors = errors.to_compile_errors();
        let fallback = expand::fallback(item_impl);
        quote!(#errors #fallback)
    }
}

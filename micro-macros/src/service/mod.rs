//! `#[service]`: a trait becomes a service definition, its routes and a typed client.

mod expand;
mod parse;
mod validate;

use crate::diag::{self, Errors};
use proc_macro2::TokenStream;
use quote::quote;

/// Expands `#[service(attr)] item`.
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let item_trait = match diag::parse_item(item, "service", "a trait", &mut errors) {
        Ok(syn::Item::Trait(item_trait)) => item_trait,
        Ok(other) => {
            diag::wrong_item(&other, "service", "a trait", &mut errors);
            let errors = errors.to_compile_errors();
            return quote!(#errors #other);
        }
        Err(fallback) => return fallback,
    };
    let service = parse::parse(attr, &item_trait, &mut errors);
    validate::validate(&service, &item_trait, &mut errors);
    if errors.is_empty() {
        expand::expand(&service, item_trait)
    } else {
        let errors = errors.to_compile_errors();
        let fallback = expand::fallback(item_trait);
        quote!(#errors #fallback)
    }
}

//! `#[message]`: a struct or enum that crosses the wire, without a direct
//! serde dependency in the user's crate.

use crate::attrs;
use crate::diag::{self, Errors};
use proc_macro2::TokenStream;
use quote::quote;
use syn::Item;

/// Expands `#[message(attr)] item`.
pub fn message(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    attrs::parse_args(attr, "message", &[], &mut errors);
    let item = match diag::parse_item(item, "message", "a struct or an enum", &mut errors) {
        Ok(item) => item,
        Err(fallback) => return fallback,
    };
    if !matches!(item, Item::Struct(_) | Item::Enum(_)) {
        diag::wrong_item(&item, "message", "a struct or an enum", &mut errors);
    }
    if !errors.is_empty() {
        let errors = errors.to_compile_errors();
        return quote!(#errors #item);
    }
    derive_serde(&item)
}

/// The item with serde's derives, reached through `micro`.
fn derive_serde(item: &Item) -> TokenStream {
    quote! {
        #[derive(::micro::__private::serde::Serialize, ::micro::__private::serde::Deserialize)]
        #[serde(crate = "::micro::__private::serde")]
        #item
    }
}

//! `#[main]`: `async fn main` on tokio's multi-threaded runtime, reached through `micro`.

use crate::attrs;
use crate::diag::{self, Errors};
use proc_macro2::TokenStream;
use quote::quote;
use syn::Item;

/// Expands `#[main(attr)] item`.
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    attrs::parse_args(attr, "main", &[], &mut errors);
    let item = match diag::parse_item(item, "main", "`async fn main`", &mut errors) {
        Ok(item) => item,
        Err(fallback) => return fallback,
    };
    let Item::Fn(function) = item else {
        diag::wrong_item(&item, "main", "`async fn main`", &mut errors);
        let errors = errors.to_compile_errors();
        return quote!(#errors #item);
    };
    if function.sig.asyncness.is_none() {
        errors.spanned(
            function.sig.fn_token,
            "`#[micro::main]` expects an `async fn`",
        );
    }
    if !function.sig.inputs.is_empty() {
        errors.spanned(
            &function.sig.inputs,
            "`#[micro::main]` functions take no arguments",
        );
    }
    if !errors.is_empty() {
        let errors = errors.to_compile_errors();
        return quote!(#errors #function);
    }
    quote! {
        #[::micro::__private::tokio::main(crate = "::micro::__private::tokio")]
        #function
    }
}

//! Error collection: every check records its error here instead of bailing,
//! so the user sees all problems of an item at once.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use std::fmt::Display;

/// All errors found while expanding one item.
#[derive(Default)]
pub struct Errors {
    error: Option<syn::Error>,
}

impl Errors {
    /// Records an error.
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.error {
            Some(existing) => existing.combine(error),
            None => self.error = Some(error),
        }
    }

    /// Records an error at `span`.
    pub fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error spanning the tokens of `tokens`.
    pub fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Whether nothing went wrong.
    pub fn is_empty(&self) -> bool {
        self.error.is_none()
    }

    /// The `compile_error!` invocations of all errors (empty if none).
    pub fn to_compile_errors(&self) -> TokenStream {
        self.error
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }

    /// `Ok(())` if nothing went wrong, otherwise all errors combined.
    #[cfg(test)]
    pub fn finish(self) -> syn::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// Parses the item an attribute is on. If it does not parse, the error comes
/// back as the item's tokens plus the parse error, so rustc reports the real
/// problem in the user's code.
pub fn parse_item(
    item: TokenStream,
    attr: &str,
    expected: &str,
    errors: &mut Errors,
) -> Result<syn::Item, TokenStream> {
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(parsed) => Ok(parsed),
        Err(err) => {
            errors.at(err.span(), format!("`#[{attr}]` expects {expected}: {err}"));
            let errors = errors.to_compile_errors();
            Err(quote::quote!(#errors #item))
        }
    }
}

/// Reports `#[attr]` on an item of the wrong kind, at the item's keyword and name.
pub fn wrong_item(item: &syn::Item, attr: &str, expected: &str, errors: &mut Errors) {
    use quote::quote;
    use syn::Item;
    let (head, kind) = match item {
        Item::Fn(f) => {
            let (token, ident) = (&f.sig.fn_token, &f.sig.ident);
            (quote!(#token #ident), "a function")
        }
        Item::Struct(s) => {
            let (token, ident) = (&s.struct_token, &s.ident);
            (quote!(#token #ident), "a struct")
        }
        Item::Enum(e) => {
            let (token, ident) = (&e.enum_token, &e.ident);
            (quote!(#token #ident), "an enum")
        }
        Item::Union(u) => {
            let (token, ident) = (&u.union_token, &u.ident);
            (quote!(#token #ident), "a union")
        }
        Item::Trait(t) => {
            let (token, ident) = (&t.trait_token, &t.ident);
            (quote!(#token #ident), "a trait")
        }
        Item::Impl(i) => {
            let (token, ty) = (&i.impl_token, &i.self_ty);
            (quote!(#token #ty), "an impl block")
        }
        Item::Mod(m) => {
            let (token, ident) = (&m.mod_token, &m.ident);
            (quote!(#token #ident), "a module")
        }
        other => (quote!(#other), "this item"),
    };
    errors.spanned(
        head,
        format!("`#[{attr}]` expects {expected}, found {kind}"),
    );
}

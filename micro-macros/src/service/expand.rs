//! Output of `#[service]`: the rewritten trait, the request structs and the client.

use crate::attrs;
use crate::client;
use crate::model::Service;
use crate::routes;
use proc_macro2::TokenStream;
use quote::quote;
use syn::{parse_quote, ItemTrait, TraitItem, TraitItemFn};

/// Everything `#[service]` emits for a valid trait.
pub fn expand(service: &Service, item: ItemTrait) -> TokenStream {
    let service_trait = service_trait(service, item);
    let args_structs = service
        .endpoints
        .iter()
        .map(|ep| routes::args_struct(service, ep));
    let client_struct = client::client_struct(service);
    let client_impl = client::client_impl(service);
    quote! {
        #service_trait
        #(#args_structs)*
        #client_struct
        #client_impl
    }
}

/// The trait with `Send + Sync + 'static` bounds, `Send` futures and a
/// provided `__micro_routes`.
fn service_trait(service: &Service, mut item: ItemTrait) -> ItemTrait {
    item.colon_token.get_or_insert_with(Default::default);
    item.supertraits.push(parse_quote!(::core::marker::Send));
    item.supertraits.push(parse_quote!(::core::marker::Sync));
    item.supertraits.push(parse_quote!('static));
    let mut endpoints = service.endpoints.iter();
    for trait_item in &mut item.items {
        if let TraitItem::Fn(method) = trait_item {
            let reply = endpoints.next().and_then(|ep| ep.reply.as_ref());
            send_future_method(method, reply);
        }
    }
    item.items.push(TraitItem::Fn(routes_method(service)));
    item
}

/// `async fn m(..) -> Result<T>` → `fn m(..) -> impl Future<Output = Result<T>> + Send`
/// (a provided body becomes an `async move` block).
fn send_future_method(method: &mut TraitItemFn, reply: Option<&syn::Type>) {
    attrs::strip_micro(&mut method.attrs);
    method.sig.asyncness = None;
    method.sig.output = parse_quote! {
        -> impl ::core::future::Future<Output = ::micro::__private::Result<#reply>>
            + ::core::marker::Send
    };
    if let Some(body) = &mut method.default {
        let stmts = &body.stmts;
        *body = parse_quote!({ async move { #(#stmts)* } });
    }
}

/// `fn __micro_routes(self: Arc<Self>) -> Vec<Route>`, called by `#[handler]`.
fn routes_method(service: &Service) -> TraitItemFn {
    let body = routes::routes_body(service);
    let bounds = routes::wire_bounds(&service.endpoints);
    parse_quote! {
        /// The routes of this service (generated; called by `#[micro::handler]`).
        #[doc(hidden)]
        fn __micro_routes(
            self: ::micro::__private::Arc<Self>,
        ) -> ::micro::__private::Vec<::micro::__private::Route>
        where
            Self: ::core::marker::Sized,
            #bounds
        {
            #body
        }
    }
}

/// The trait as the user wrote it (minus `#[micro]` attributes) plus a stub
/// `__micro_routes`, so a failed expansion causes no further errors.
pub fn fallback(mut item: ItemTrait) -> ItemTrait {
    for trait_item in &mut item.items {
        if let TraitItem::Fn(method) = trait_item {
            attrs::strip_micro(&mut method.attrs);
        }
    }
    item.items.push(parse_quote! {
        #[doc(hidden)]
        fn __micro_routes(
            self: ::micro::__private::Arc<Self>,
        ) -> ::micro::__private::Vec<::micro::__private::Route>
        where
            Self: ::core::marker::Sized,
        {
            ::micro::__private::Vec::new()
        }
    });
    item
}

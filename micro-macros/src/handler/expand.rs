//! Output of `#[handler]`: the impl block, the `Handler` impl and, for an
//! inherent impl, the request structs and the typed client.

use super::parse::Handler;
use crate::attrs;
use crate::client;
use crate::model::Service;
use crate::routes;
use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl, Path};

/// Everything `#[handler]` emits for a valid impl block.
pub fn expand(handler: &Handler, item: ItemImpl) -> TokenStream {
    let item = strip_micro_attrs(item);
    match handler {
        Handler::TraitImpl { trait_path } => {
            let handler_impl = trait_handler_impl(&item, trait_path);
            quote!(#item #handler_impl)
        }
        Handler::Inherent(service) => {
            let handler_impl = inherent_handler_impl(&item, service);
            let args_structs = service
                .endpoints
                .iter()
                .map(|ep| routes::args_struct(service, ep));
            let client_struct = client::client_struct(service);
            let client_impl = client::client_impl(service);
            quote! {
                #item
                #handler_impl
                #(#args_structs)*
                #client_struct
                #client_impl
            }
        }
    }
}

/// `impl Handler for MyGreeter`, serving the routes of the trait.
fn trait_handler_impl(item: &ItemImpl, trait_path: &Path) -> TokenStream {
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    // Spanned at the trait, so a trait that is not a `#[service]` is reported there.
    let routes = syn::Ident::new("__micro_routes", trait_path.span());
    quote! {
        impl #impl_generics ::micro::__private::Handler for #self_ty #where_clause {
            fn routes(
                self: ::micro::__private::Arc<Self>,
            ) -> ::micro::__private::Vec<::micro::__private::Route> {
                <Self as #trait_path>::#routes(self)
            }
        }
    }
}

/// `impl Handler for Counter`, serving its public async methods.
fn inherent_handler_impl(item: &ItemImpl, service: &Service) -> TokenStream {
    let self_ty = &item.self_ty;
    let body = routes::routes_body(service);
    let bounds = routes::wire_bounds(&service.endpoints);
    quote! {
        impl ::micro::__private::Handler for #self_ty
        where
            #bounds
        {
            fn routes(
                self: ::micro::__private::Arc<Self>,
            ) -> ::micro::__private::Vec<::micro::__private::Route> {
                #body
            }
        }
    }
}

fn strip_micro_attrs(mut item: ItemImpl) -> ItemImpl {
    for impl_item in &mut item.items {
        if let ImplItem::Fn(method) = impl_item {
            attrs::strip_micro(&mut method.attrs);
        }
    }
    item
}

/// The impl block as written (minus `#[micro]` attributes), so a failed
/// expansion causes no further errors.
pub fn fallback(item: ItemImpl) -> TokenStream {
    let item = strip_micro_attrs(item);
    quote!(#item)
}

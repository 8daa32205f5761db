//! Server side of a service: the request structs and the route table.

use crate::model::{Endpoint, Service, Shape};
use crate::naming;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Ident;

/// The type an endpoint's request decodes to: `()`, the single argument's
/// type (the runtime's `Streaming` of a streaming one), or the generated
/// struct of several arguments.
pub fn request_type(service: &Service, ep: &Endpoint) -> TokenStream {
    match ep.args.as_slice() {
        [] => quote!(()),
        [arg] => match &arg.stream_item {
            Some(item) => quote!(::micro::__private::Streaming<#item>),
            None => {
                let ty = &arg.ty;
                quote!(#ty)
            }
        },
        args => {
            let ident = service.args_struct_ident(ep);
            let types = args.iter().map(|a| &a.ty);
            quote!(#ident<#(#types),*>)
        }
    }
}

/// The request value built from the arguments (by the client), or the pattern
/// that takes it apart again (on the server): the same tokens serve both.
pub fn request_value(service: &Service, ep: &Endpoint) -> TokenStream {
    let idents = ep.args.iter().map(|a| &a.ident);
    match ep.args.as_slice() {
        [] => quote!(()),
        [arg] => {
            let ident = &arg.ident;
            quote!(#ident)
        }
        _ => {
            let ident = service.args_struct_ident(ep);
            quote!(#ident { #(#idents),* })
        }
    }
}

/// The request struct of an endpoint with several arguments (nothing otherwise).
///
/// It is generic over the field types so that an argument type that cannot be
/// encoded is reported once, by [`wire_bounds`], rather than inside serde's derive.
pub fn args_struct(service: &Service, ep: &Endpoint) -> TokenStream {
    if ep.args.len() < 2 {
        return TokenStream::new();
    }
    let ident = service.args_struct_ident(ep);
    let params: Vec<Ident> = (0..ep.args.len())
        .map(|i| Ident::new(&format!("__MicroArg{i}"), Span::call_site()))
        .collect();
    let fields = ep.args.iter().zip(&params).map(|(a, param)| {
        let name = &a.ident;
        quote!(#name: #param)
    });
    let doc = format!("The arguments of `{}` (generated).", ep.wire);
    quote! {
        #[doc = #doc]
        #[doc(hidden)]
        #[allow(dead_code, non_camel_case_types)]
        #[derive(::micro::__private::serde::Serialize, ::micro::__private::serde::Deserialize)]
        #[serde(crate = "::micro::__private::serde")]
        struct #ident<#(#params),*> {
            #(#fields,)*
        }
    }
}

/// What the registry shows as the request type.
fn request_description(ep: &Endpoint) -> String {
    match ep.args.as_slice() {
        [] => "()".to_owned(),
        [arg] => naming::type_string(&arg.ty),
        args => {
            let list: Vec<String> = args
                .iter()
                .map(|a| format!("{}: {}", a.ident, naming::type_string(&a.ty)))
                .collect();
            format!("({})", list.join(", "))
        }
    }
}

/// Where-clause predicates `T: Serialize + DeserializeOwned + Send + 'static`
/// for every argument and reply type of `endpoints` (the item type of a
/// `Streaming` one), each spanned at the type.
///
/// A type that cannot cross the wire fails its predicate, reported where the
/// user wrote the type; the body of the item carrying the where clause may
/// assume the bounds, so no further errors follow from generated code (the
/// same predicate on the routes and on the client is reported once).
pub fn wire_bounds<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> TokenStream {
    let types = endpoints.into_iter().flat_map(Endpoint::wire_types);
    let bounds = types.map(|ty| {
        quote_spanned! {ty.span()=>
            #ty: ::micro::__private::serde::Serialize
                + ::micro::__private::serde::de::DeserializeOwned
                + ::core::marker::Send
                + 'static,
        }
    });
    quote!(#(#bounds)*)
}

/// The route builder of each shape.
fn builder(shape: Shape) -> Ident {
    let name = match shape {
        Shape::Unary => "unary",
        Shape::ServerStream => "server_streaming",
        Shape::ClientStream => "client_streaming",
        Shape::Bidi => "bidi_streaming",
    };
    Ident::new(name, Span::call_site())
}

/// One route: `unary(..)` or one of the streaming builders.
fn route(service: &Service, ep: &Endpoint) -> TokenStream {
    let this = Ident::new("__micro_this", Span::mixed_site());
    let builder = builder(ep.shape());
    let method = &ep.ident;
    let (name, request) = (&ep.wire, request_description(ep));
    let response = ep
        .reply
        .as_ref()
        .map(naming::type_string)
        .unwrap_or_default();
    let doc = naming::doc_text(&ep.docs);
    let req_ty = request_type(service, ep);
    let req_pat = request_value(service, ep);
    let args = ep.args.iter().map(|a| &a.ident);
    quote_spanned! {ep.sig.ident.span()=>
        ::micro::__private::#builder(
            ::micro::__private::EndpointDef {
                name: #name,
                request: #request,
                response: #response,
                doc: #doc,
            },
            <::micro::__private::Arc<Self> as ::core::clone::Clone>::clone(&self),
            |#this: ::micro::__private::Arc<Self>, #req_pat: #req_ty| async move {
                Self::#method(&*#this, #(#args),*).await
            },
        )
    }
}

/// The body of a `fn(self: Arc<Self>) -> Vec<Route>`: one route per endpoint.
/// The item around it carries [`wire_bounds`].
pub fn routes_body(service: &Service) -> TokenStream {
    if service.endpoints.is_empty() {
        return quote!(::micro::__private::Vec::new());
    }
    let routes = service.endpoints.iter().map(|ep| route(service, ep));
    quote!(::core::convert::From::from([#(#routes),*]))
}

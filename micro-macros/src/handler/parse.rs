//! `#[handler]` input → [`Handler`].

use crate::attrs;
use crate::diag::Errors;
use crate::model::{self, Service};
use proc_macro2::TokenStream;
use syn::{ImplItem, ItemImpl, Path, Type, Visibility};

/// The keys `#[handler(..)]` accepts on an inherent impl.
const KEYS: &[&str] = &["name", "version"];

/// What a `#[handler]` impl block is.
pub enum Handler {
    /// `impl path::Greeter for MyGreeter`: serves the routes of a `#[service]` trait.
    TraitImpl {
        /// The trait as written.
        trait_path: Path,
    },
    /// `impl Counter { pub async fn .. }`: its public async methods are the endpoints.
    Inherent(Service),
}

/// Builds the model of a handler impl.
pub fn parse(attr: TokenStream, item: &ItemImpl, errors: &mut Errors) -> Handler {
    match &item.trait_ {
        Some((_, trait_path, _)) => {
            if !attr.is_empty() {
                errors.spanned(
                    &attr,
                    "`#[handler]` on a trait impl takes no arguments: the service name and version belong on the trait's `#[service(..)]`",
                );
            }
            Handler::TraitImpl {
                trait_path: trait_path.clone(),
            }
        }
        None => Handler::Inherent(parse_inherent(attr, item, errors)),
    }
}

/// Whether an inherent method is an endpoint: `pub async fn`.
pub fn is_endpoint(method: &syn::ImplItemFn) -> bool {
    matches!(method.vis, Visibility::Public(_)) && method.sig.asyncness.is_some()
}

fn parse_inherent(attr: TokenStream, item: &ItemImpl, errors: &mut Errors) -> Service {
    let args = attrs::parse_args(attr, "handler", KEYS, errors);
    let ident = type_ident(&item.self_ty).unwrap_or_else(|| {
        errors.spanned(
            &item.self_ty,
            "`#[handler]` expects an impl of a named type, e.g. `impl Counter { .. }`",
        );
        syn::Ident::new("Handler", proc_macro2::Span::call_site())
    });
    let name = model::service_name(args.get("name"), &ident, errors);
    let version = model::service_version(args.get("version"), errors);
    let endpoints = item
        .items
        .iter()
        .filter_map(|impl_item| match impl_item {
            ImplItem::Fn(method) if is_endpoint(method) => Some(model::parse_endpoint(
                &ident,
                &method.attrs,
                &method.sig,
                errors,
            )),
            _ => None,
        })
        .collect();
    Service {
        macro_name: "handler",
        vis: syn::parse_quote!(pub),
        name,
        version,
        ident,
        endpoints,
    }
}

/// `Counter` of `Counter`, `crate::Counter` or `Counter<u8>`.
fn type_ident(ty: &Type) -> Option<syn::Ident> {
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().map(|s| s.ident.clone())
        }
        Type::Group(group) => type_ident(&group.elem),
        Type::Paren(paren) => type_ident(&paren.elem),
        _ => None,
    }
}

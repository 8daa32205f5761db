//! `#[service]` input → [`Service`].

use crate::attrs;
use crate::diag::Errors;
use crate::model::{self, Service};
use proc_macro2::TokenStream;
use syn::{ItemTrait, TraitItem};

/// The keys `#[service(..)]` accepts.
const KEYS: &[&str] = &["name", "version"];

/// Builds the model of a service trait. Trait items that are not methods are
/// skipped here and reported by validation.
pub fn parse(attr: TokenStream, item: &ItemTrait, errors: &mut Errors) -> Service {
    let args = attrs::parse_args(attr, "service", KEYS, errors);
    let name = model::service_name(args.get("name"), &item.ident, errors);
    let version = model::service_version(args.get("version"), errors);
    let endpoints = item
        .items
        .iter()
        .filter_map(|trait_item| match trait_item {
            TraitItem::Fn(method) => Some(model::parse_endpoint(
                &item.ident,
                &method.attrs,
                &method.sig,
                errors,
            )),
            _ => None,
        })
        .collect();
    Service {
        macro_name: "service",
        ident: item.ident.clone(),
        vis: item.vis.clone(),
        name,
        version,
        endpoints,
    }
}

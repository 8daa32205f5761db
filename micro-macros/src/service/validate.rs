//! Checks of a `#[service]` trait.

use crate::diag::Errors;
use crate::model::Service;
use crate::rules;
use syn::{ItemTrait, TraitItem};

/// Reports everything about the trait that cannot become a service.
pub fn validate(service: &Service, item: &ItemTrait, errors: &mut Errors) {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "a `#[service]` trait cannot be generic: clients and servers must agree on concrete types",
        );
    }
    if let Some(unsafety) = &item.unsafety {
        errors.spanned(unsafety, "a `#[service]` trait cannot be `unsafe`");
    }
    if let Some(auto) = &item.auto_token {
        errors.spanned(auto, "a `#[service]` trait cannot be an auto trait");
    }
    for trait_item in &item.items {
        let what = match trait_item {
            TraitItem::Fn(_) => continue,
            TraitItem::Const(_) => "associated constants",
            TraitItem::Type(_) => "associated types",
            TraitItem::Macro(_) => "macro invocations",
            _ => "such items",
        };
        errors.spanned(
            trait_item,
            format!(
                "{what} are not supported in a `#[service]` trait: it may only contain `async fn` endpoints"
            ),
        );
    }
    rules::check_endpoints(service, true, errors);
}

//! Checks of a `#[handler]` impl block.

use super::parse::{is_endpoint, Handler};
use crate::attrs;
use crate::diag::Errors;
use crate::rules;
use syn::{ImplItem, ItemImpl};

/// Reports everything about the impl block that cannot become a handler.
pub fn validate(handler: &Handler, item: &ItemImpl, errors: &mut Errors) {
    match handler {
        Handler::TraitImpl { .. } => validate_trait_impl(item, errors),
        Handler::Inherent(service) => {
            validate_inherent(item, errors);
            rules::check_endpoints(service, false, errors);
        }
    }
}

fn validate_trait_impl(item: &ItemImpl, errors: &mut Errors) {
    if let Some((Some(bang), _, _)) = &item.trait_ {
        errors.spanned(bang, "`#[handler]` cannot be a negative impl");
    }
    for impl_item in &item.items {
        if let ImplItem::Fn(method) = impl_item {
            if let Some(span) = attrs::first_micro_span(&method.attrs) {
                errors.at(
                    span,
                    "`#[micro(..)]` belongs on the method of the `#[service]` trait, not on its impl",
                );
            }
        }
    }
}

fn validate_inherent(item: &ItemImpl, errors: &mut Errors) {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "an inherent `#[handler]` impl cannot be generic; declare a `#[service]` trait and implement it for the generic type instead",
        );
    }
    for impl_item in &item.items {
        if let ImplItem::Fn(method) = impl_item {
            if is_endpoint(method) {
                continue;
            }
            if let Some(span) = attrs::first_micro_span(&method.attrs) {
                errors.at(
                    span,
                    "`#[micro(..)]` only applies to endpoints: `pub async fn`s taking `&self`",
                );
            }
        }
    }
}

//! Checks shared by `#[service]` and `#[handler]`: what would fail at run time
//! (or not compile in the generated code) is rejected here, at the user's span.

use crate::diag::Errors;
use crate::model::{self, Endpoint, Service};
use std::collections::HashMap;
use syn::spanned::Spanned;

/// Method names the generated client already uses.
pub const CLIENT_ITEMS: &[&str] = &[
    "new",
    "with_service",
    "with_timeout",
    "with_options",
    "SERVICE",
    "VERSION",
];

/// Checks every endpoint of `service` and that their wire names are unique.
/// `require_async` is off for `#[handler]`, where only `async fn`s are endpoints.
pub fn check_endpoints(service: &Service, require_async: bool, errors: &mut Errors) {
    for endpoint in &service.endpoints {
        check_endpoint(service, endpoint, require_async, errors);
    }
    check_unique(&service.endpoints, errors);
}

fn check_endpoint(service: &Service, ep: &Endpoint, require_async: bool, errors: &mut Errors) {
    let sig = &ep.sig;
    let name = &sig.ident;
    if require_async && sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format!(
                "`{name}` must be an `async fn`: every method of a `#[{}]` trait is a remote endpoint",
                service.macro_name
            ),
        );
    }
    if let Some(constness) = &sig.constness {
        errors.spanned(constness, format!("endpoint `{name}` cannot be `const`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(unsafety, format!("endpoint `{name}` cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, format!("endpoint `{name}` cannot have an ABI"));
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, format!("endpoint `{name}` cannot be variadic"));
    }
    check_receiver(ep, errors);
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span = if sig.generics.params.is_empty() {
            sig.generics.where_clause.span()
        } else {
            sig.generics.span()
        };
        errors.at(
            span,
            format!(
                "endpoint `{name}` cannot be generic: its argument and reply types must be known to encode them on the wire"
            ),
        );
    }
    let method = name.to_string();
    if CLIENT_ITEMS.contains(&method.as_str()) {
        errors.spanned(
            name,
            format!(
                "method name `{method}` clashes with the generated `{}::{method}`; rename the method (the wire name can stay with `#[micro(name = \"...\")]`)",
                service.client_ident()
            ),
        );
    } else if method.starts_with("__micro") {
        errors.spanned(
            name,
            "names starting with `__micro` are reserved for generated code",
        );
    }
}

fn check_receiver(ep: &Endpoint, errors: &mut Errors) {
    let sig = &ep.sig;
    let name = &sig.ident;
    let why = "the server shares one instance between concurrent calls";
    match model::receiver(sig) {
        None => errors.at(
            sig.paren_token.span.join(),
            format!("endpoint `{name}` must take `&self` as its first argument"),
        ),
        Some(_) if model::takes_ref_self(sig) => {}
        Some(r) if r.colon_token.is_some() => errors.spanned(
            r,
            format!("endpoint `{name}` must take `&self`, not a `self` of another type ({why})"),
        ),
        Some(r) if r.reference.is_none() => errors.spanned(
            r,
            format!("endpoint `{name}` must take `&self`, not `self` by value ({why})"),
        ),
        Some(r) if r.mutability.is_some() => errors.spanned(
            r,
            format!(
                "endpoint `{name}` must take `&self`, not `&mut self` ({why}); keep mutable state behind a lock such as `tokio::sync::Mutex`"
            ),
        ),
        Some(r) => errors.spanned(
            r,
            format!("endpoint `{name}` must take plain `&self`, without a lifetime"),
        ),
    }
}

fn check_unique(endpoints: &[Endpoint], errors: &mut Errors) {
    let mut seen: HashMap<&str, &Endpoint> = HashMap::new();
    for ep in endpoints {
        if let Some(first) = seen.get(ep.wire.as_str()) {
            errors.at(
                ep.wire_span,
                format!(
                    "duplicate endpoint name `{}`: `{}` already uses it; rename one method or set another name with `#[micro(name = \"...\")]`",
                    ep.wire, first.ident
                ),
            );
        } else {
            seen.insert(&ep.wire, ep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_endpoint;
    use syn::{parse_quote, Ident, TraitItemFn};

    fn check(methods: Vec<TraitItemFn>) -> Vec<String> {
        let mut errors = Errors::default();
        let ident: Ident = parse_quote!(Greeter);
        let endpoints = methods
            .iter()
            .map(|m| parse_endpoint(&ident, &m.attrs, &m.sig, &mut errors))
            .collect();
        let service = Service {
            macro_name: "service",
            ident,
            vis: syn::Visibility::Inherited,
            name: "greeter".into(),
            version: "latest".into(),
            endpoints,
        };
        check_endpoints(&service, true, &mut errors);
        match errors.finish() {
            Ok(()) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_good_methods() {
        assert!(check(vec![
            parse_quote!(
                async fn a(&self) -> Result<()>;
            ),
            parse_quote!(
                async fn b(&self, x: u8, y: String) -> micro::Result<u8>;
            ),
        ])
        .is_empty());
    }

    #[test]
    fn rejects_duplicates_after_camel_casing_and_overrides() {
        let errors = check(vec![
            parse_quote!(
                async fn say_hello(&self) -> Result<()>;
            ),
            parse_quote!(
                async fn say__hello(&self) -> Result<()>;
            ),
            parse_quote!(
                #[micro(name = "SayHello")]
                async fn other(&self) -> Result<()>;
            ),
        ]);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("duplicate endpoint name `Greeter.SayHello`"));
    }

    #[test]
    fn rejects_bad_shapes() {
        let errors = check(vec![
            parse_quote!(
                fn a(&self) -> Result<()>;
            ),
            parse_quote!(
                async fn b(self) -> Result<()>;
            ),
            parse_quote!(
                async fn c(&mut self) -> Result<()>;
            ),
            parse_quote!(
                async fn d() -> Result<()>;
            ),
            parse_quote!(
                async fn e<T>(&self, t: T) -> Result<()>;
            ),
            parse_quote!(
                async fn new(&self) -> Result<()>;
            ),
        ]);
        assert_eq!(errors.len(), 6, "{errors:#?}");
    }
}

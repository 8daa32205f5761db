//! Checks shared by `#[service]` and `#[handler]`: what would fail at run time
//! (or not compile in the generated code) is rejected here, at the user's span.

use crate::diag::Errors;
use crate::model::{self, Endpoint, Service};
use std::collections::HashMap;
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::TypePath;

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
    check_streaming(ep, errors);
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

/// Where `Streaming<T>` may appear, for the errors about it.
const STREAMING_PLACES: &str = "`Streaming<T>` may only be an endpoint's only argument besides `&self` (`items: Streaming<T>`) or its reply inside `micro::Result` (`-> micro::Result<Streaming<T>>`)";

/// A `Streaming` argument comes alone, and `Streaming<T>` appears nowhere but
/// as a whole argument or as the reply inside `Result`.
fn check_streaming(ep: &Endpoint, errors: &mut Errors) {
    for arg in &ep.args {
        if arg.stream_item.is_some() && ep.args.len() > 1 {
            errors.spanned(
                &arg.ty,
                format!(
                    "a `Streaming` argument must be the only argument besides `&self`: the stream is the whole request of `{}`; send the other values in the items, or make it a separate endpoint",
                    ep.sig.ident
                ),
            );
        }
    }
    // The wire types are what is inside the allowed places.
    for ty in ep.wire_types() {
        // `VisitMut` on a copy: syn's read-only `visit` feature is not enabled.
        MisplacedStreaming { errors }.visit_type_mut(&mut ty.clone());
    }
}

/// Reports every `Streaming` path it visits.
struct MisplacedStreaming<'a> {
    errors: &'a mut Errors,
}

impl VisitMut for MisplacedStreaming<'_> {
    fn visit_type_path_mut(&mut self, path: &mut TypePath) {
        if !model::is_streaming(path) {
            visit_mut::visit_type_path_mut(self, path);
        } else if model::streaming_path_item(path).is_none() {
            self.errors.spanned(
                &*path,
                "`Streaming` needs exactly one type argument, the item type: `Streaming<T>`",
            );
        } else {
            self.errors.spanned(
                &*path,
                format!("`Streaming` cannot appear here: {STREAMING_PLACES}"),
            );
        }
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

    #[test]
    fn accepts_streaming_shapes() {
        let errors = check(vec![
            parse_quote!(
                async fn a(&self, from: u32, to: u32) -> Result<Streaming<u32>>;
            ),
            parse_quote!(
                async fn b(&self, xs: micro::Streaming<i64>) -> micro::Result<i64>;
            ),
            parse_quote!(
                async fn c(&self, xs: ::micro::Streaming<L>) -> Result<::micro::Streaming<L>>;
            ),
            parse_quote!(
                async fn d(&self, xs: Streaming<Vec<(u8, String)>>) -> Result<()>;
            ),
        ]);
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn rejects_misplaced_streaming() {
        let errors = check(vec![
            parse_quote!(
                async fn a(&self, xs: Streaming<i64>, scale: i64) -> Result<i64>;
            ),
            parse_quote!(
                async fn b(&self, xs: Vec<Streaming<i64>>) -> Result<i64>;
            ),
            parse_quote!(
                async fn c(&self) -> Result<Option<Streaming<i64>>>;
            ),
            parse_quote!(
                async fn d(&self, xs: Streaming<Streaming<i64>>) -> Result<()>;
            ),
            parse_quote!(
                async fn e(&self) -> Streaming<i64>;
            ),
            parse_quote!(
                async fn f(&self, xs: Streaming) -> Result<Streaming<A, B>>;
            ),
        ]);
        let expected = [
            "a `Streaming` argument must be the only argument",
            "`Streaming` cannot appear here",
            "`Streaming` cannot appear here",
            "`Streaming` cannot appear here",
            "endpoint `e` must return `micro::Result<T>`",
            "`Streaming` needs exactly one type argument",
            "`Streaming` needs exactly one type argument",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for start in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(start)),
                "no error starting with {start:?} in {errors:#?}"
            );
        }
    }
}

//! The model shared by `#[service]` and `#[handler]`: a service with its
//! endpoints, parsed from method signatures.

use crate::attrs;
use crate::diag::Errors;
use crate::naming;
use proc_macro2::Span;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type,
    TypePath, Visibility,
};

/// A service: what the routes and the typed client are generated from.
pub struct Service {
    /// `service` or `handler`, for messages.
    pub macro_name: &'static str,
    /// The trait (`Greeter`) or the handler type (`Counter`).
    pub ident: Ident,
    /// The visibility of the generated client.
    pub vis: Visibility,
    /// The registered name, e.g. `greeter`.
    pub name: String,
    /// The declared version, `latest` by default.
    pub version: String,
    /// The endpoints, in declaration order.
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// `GreeterClient`.
    pub fn client_ident(&self) -> Ident {
        Ident::new(
            &format!("{}Client", self.ident.unraw_string()),
            self.ident.span(),
        )
    }

    /// `__MicroGreeterSayHelloArgs`: the request struct of an endpoint with several arguments.
    pub fn args_struct_ident(&self, endpoint: &Endpoint) -> Ident {
        Ident::new(
            &format!(
                "__Micro{}{}Args",
                self.ident.unraw_string(),
                naming::upper_camel(&endpoint.ident.to_string())
            ),
            Span::call_site(),
        )
    }
}

/// One endpoint: a method served remotely.
pub struct Endpoint {
    /// The method name.
    pub ident: Ident,
    /// The wire name, e.g. `Greeter.SayHello`.
    pub wire: String,
    /// Where the wire name comes from (the `#[micro(name)]` value or the method name).
    pub wire_span: Span,
    /// The arguments after `&self`, in order.
    pub args: Vec<Arg>,
    /// `T` of `Result<T>`, if the return type has that shape.
    pub reply: Option<Type>,
    /// `T` of `Result<Streaming<T>>`: the item type of a streamed reply.
    pub reply_item: Option<Type>,
    /// The method's `#[doc]` attributes.
    pub docs: Vec<Attribute>,
    /// The method's signature as written, for validation.
    pub sig: Signature,
}

impl Endpoint {
    /// Which sides of the endpoint stream.
    pub fn shape(&self) -> Shape {
        let streams_in = self.args.iter().any(|a| a.stream_item.is_some());
        match (streams_in, self.reply_item.is_some()) {
            (false, false) => Shape::Unary,
            (false, true) => Shape::ServerStream,
            (true, false) => Shape::ClientStream,
            (true, true) => Shape::Bidi,
        }
    }

    /// The types that cross the wire: each argument's (the item type of a
    /// `Streaming` one) and the reply's (its item type if streamed).
    pub fn wire_types(&self) -> impl Iterator<Item = &Type> {
        let args = self
            .args
            .iter()
            .map(|a| a.stream_item.as_ref().unwrap_or(&a.ty));
        args.chain(self.reply_item.as_ref().or(self.reply.as_ref()))
    }
}

/// Which sides of an endpoint stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One request, one reply.
    Unary,
    /// One request, `Result<Streaming<T>>` back.
    ServerStream,
    /// A `Streaming<T>` argument, one reply.
    ClientStream,
    /// A `Streaming<T>` argument, `Result<Streaming<T>>` back.
    Bidi,
}

/// One argument: a plain name and its type.
pub struct Arg {
    /// The name (without `mut`).
    pub ident: Ident,
    /// The type as written.
    pub ty: Type,
    /// `T` if the type is `Streaming<T>`.
    pub stream_item: Option<Type>,
}

/// Whether a path names `Streaming` (by its last segment, with or without
/// type arguments): `Streaming<T>`, `micro::Streaming<T>`, `::micro::Streaming<T>`.
pub fn is_streaming(path: &TypePath) -> bool {
    path.qself.is_none()
        && path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Streaming")
}

/// `T` if `path` is `Streaming<T>` with exactly one type argument.
pub fn streaming_path_item(path: &TypePath) -> Option<&Type> {
    if !is_streaming(path) {
        return None;
    }
    single_type_arg(&path.path.segments.last()?.arguments)
}

/// `T` if `ty` is `Streaming<T>` with exactly one type argument.
pub fn streaming_item(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(path) => streaming_path_item(path),
        _ => None,
    }
}

/// `T` of `<T>`.
fn single_type_arg(arguments: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(ty)] => Some(ty),
        _ => None,
    }
}

/// `ident.to_string()` without a leading `r#`.
trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        let s = self.to_string();
        s.strip_prefix("r#").map(str::to_owned).unwrap_or(s)
    }
}

/// The service name from `name = ".."` (checked) or the lowercased type name.
pub fn service_name(arg: Option<&syn::LitStr>, ident: &Ident, errors: &mut Errors) -> String {
    match arg {
        Some(lit) => {
            let name = lit.value();
            if !naming::is_valid_service_name(&name) {
                errors.spanned(
                    lit,
                    "service name must be non-empty and contain only letters, digits, `_`, `-` and `.`",
                );
            }
            name
        }
        None => naming::service_name(&ident.to_string()),
    }
}

/// The version from `version = ".."` (checked) or `latest`.
pub fn service_version(arg: Option<&syn::LitStr>, errors: &mut Errors) -> String {
    match arg {
        Some(lit) => {
            let version = lit.value();
            if version.trim().is_empty() || version.contains(char::is_whitespace) {
                errors.spanned(lit, "version must be non-empty and contain no whitespace");
            }
            version
        }
        None => "latest".to_owned(),
    }
}

/// Parses one endpoint method of the service `owner`. Shapes that cannot be
/// modelled (argument patterns, the return type) are reported here; the rest
/// is checked by [`crate::rules`].
pub fn parse_endpoint(
    owner: &Ident,
    attrs: &[Attribute],
    sig: &Signature,
    errors: &mut Errors,
) -> Endpoint {
    let micro = attrs::parse_micro_attrs(attrs, errors);
    let (method, wire_span) = match micro.get("name") {
        Some(lit) => {
            let name = lit.value();
            if !naming::is_valid_method_name(&name) {
                errors.spanned(
                    lit,
                    "endpoint name must be non-empty and contain only letters, digits and `_` (the service part is added for you)",
                );
            }
            (name, lit.span())
        }
        None => (
            naming::upper_camel(&sig.ident.to_string()),
            sig.ident.span(),
        ),
    };
    let reply = parse_reply(sig, errors);
    Endpoint {
        ident: sig.ident.clone(),
        wire: format!("{}.{}", owner.unraw_string(), method),
        wire_span,
        args: parse_args(sig, errors),
        reply_item: reply.as_ref().and_then(streaming_item).cloned(),
        reply,
        docs: crate::naming::doc_attrs(attrs),
        sig: sig.clone(),
    }
}

fn parse_args(sig: &Signature, errors: &mut Errors) -> Vec<Arg> {
    let mut args = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(typed) = input else { continue };
        let ident = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                Some(pat.ident.clone())
            }
            pat => {
                errors.spanned(
                    pat,
                    "endpoint arguments must be plain names like `name: String`: the name is the argument's field on the wire",
                );
                None
            }
        };
        match &*typed.ty {
            Type::Reference(_) => errors.spanned(
                &typed.ty,
                "endpoint arguments are decoded from the request and must be owned; use e.g. `String` instead of `&str`, `Vec<T>` instead of `&[T]`",
            ),
            Type::ImplTrait(_) => errors.spanned(
                &typed.ty,
                "endpoint arguments must be concrete types, not `impl Trait`",
            ),
            _ => {}
        }
        if let Some(ident) = ident {
            args.push(Arg {
                ident,
                ty: (*typed.ty).clone(),
                stream_item: streaming_item(&typed.ty).cloned(),
            });
        }
    }
    args
}

fn parse_reply(sig: &Signature, errors: &mut Errors) -> Option<Type> {
    let expected = format!("endpoint `{}` must return `micro::Result<T>`", sig.ident);
    let ty = match &sig.output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => {
            errors.at(
                sig.paren_token.span.close(),
                format!("{expected}; add `-> micro::Result<T>` after the arguments"),
            );
            return None;
        }
    };
    let path = match &**ty {
        Type::Path(path) if path.qself.is_none() => Some(path),
        _ => None,
    };
    if path.is_some_and(is_streaming) {
        errors.spanned(
            ty,
            format!(
                "{expected}, found `{ty}`: a stream is returned inside it, as `micro::Result<{ty}>`",
                ty = naming::type_string(ty)
            ),
        );
        return None;
    }
    let Some(segment) = path
        .and_then(|p| p.path.segments.last())
        .filter(|s| s.ident == "Result")
    else {
        errors.spanned(
            ty,
            format!("{expected}, found `{}`", naming::type_string(ty)),
        );
        return None;
    };
    match single_type_arg(&segment.arguments) {
        Some(reply) => Some(reply.clone()),
        None => {
            errors.spanned(
                ty,
                format!(
                    "{expected}: one type argument, the reply; the error type is always `micro::Error`"
                ),
            );
            None
        }
    }
}

/// The receiver of a signature, if it has one.
pub fn receiver(sig: &Signature) -> Option<&syn::Receiver> {
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => Some(r),
        _ => None,
    }
}

/// Whether a method takes exactly `&self` (no lifetime, no `mut`, no explicit type).
pub fn takes_ref_self(sig: &Signature) -> bool {
    matches!(receiver(sig), Some(r) if r.colon_token.is_none()
        && matches!(&r.reference, Some((_, None)))
        && r.mutability.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{parse_quote, TraitItemFn};

    fn endpoint(method: TraitItemFn) -> (Endpoint, syn::Result<()>) {
        let mut errors = Errors::default();
        let owner: Ident = parse_quote!(Greeter);
        let ep = parse_endpoint(&owner, &method.attrs, &method.sig, &mut errors);
        (ep, errors.finish())
    }

    #[test]
    fn parses_a_method() {
        let (ep, result) = endpoint(parse_quote! {
            /// Says hello.
            async fn say_hello(&self, name: String, mut times: u32) -> micro::Result<Vec<String>>;
        });
        result.unwrap();
        assert_eq!(ep.wire, "Greeter.SayHello");
        assert_eq!(ep.args.len(), 2);
        assert_eq!(ep.args[1].ident, "times");
        assert_eq!(
            naming::type_string(ep.reply.as_ref().unwrap()),
            "Vec<String>"
        );
        assert_eq!(naming::doc_text(&ep.docs), "Says hello.");
    }

    #[test]
    fn name_override() {
        let (ep, result) = endpoint(parse_quote! {
            #[micro(name = "Hi")]
            async fn hello(&self) -> Result<()>;
        });
        result.unwrap();
        assert_eq!(ep.wire, "Greeter.Hi");
    }

    #[test]
    fn rejects_patterns_and_bad_returns() {
        let (_, result) = endpoint(parse_quote! {
            async fn hello(&self, (a, b): (i32, i32), _: u8) -> std::result::Result<(), E>;
        });
        assert_eq!(result.unwrap_err().into_iter().count(), 3);
        let (_, result) = endpoint(parse_quote! { async fn hello(&self); });
        assert!(result.is_err());
        let (_, result) = endpoint(parse_quote! { async fn hello(&self) -> String; });
        assert!(result.is_err());
    }

    #[test]
    fn streaming_shapes() {
        let shape = |m: TraitItemFn| {
            let (ep, result) = endpoint(m);
            result.unwrap();
            ep.shape()
        };
        assert_eq!(
            shape(parse_quote! { async fn a(&self, x: u8) -> Result<u8>; }),
            Shape::Unary
        );
        assert_eq!(
            shape(
                parse_quote! { async fn a(&self, x: u8, y: u8) -> micro::Result<micro::Streaming<u32>>; }
            ),
            Shape::ServerStream
        );
        assert_eq!(
            shape(parse_quote! { async fn a(&self, xs: ::micro::Streaming<i64>) -> Result<i64>; }),
            Shape::ClientStream
        );
        assert_eq!(
            shape(
                parse_quote! { async fn a(&self, xs: Streaming<Line>) -> Result<Streaming<Line>>; }
            ),
            Shape::Bidi
        );
        let (ep, _) = endpoint(parse_quote! {
            async fn a(&self, xs: Streaming<i64>) -> Result<Streaming<Vec<u8>>>;
        });
        let wire: Vec<String> = ep.wire_types().map(naming::type_string).collect();
        assert_eq!(wire, ["i64", "Vec<u8>"]);
        assert_eq!(
            naming::type_string(ep.reply.as_ref().unwrap()),
            "Streaming<Vec<u8>>"
        );
    }

    #[test]
    fn streaming_items() {
        let item = |ty: Type| streaming_item(&ty).map(naming::type_string);
        assert_eq!(item(parse_quote!(Streaming<u8>)).as_deref(), Some("u8"));
        assert_eq!(
            item(parse_quote!(a::b::Streaming<(u8, i8)>)).as_deref(),
            Some("(u8, i8)")
        );
        assert_eq!(item(parse_quote!(Streaming)), None);
        assert_eq!(item(parse_quote!(Streaming<A, B>)), None);
        assert_eq!(item(parse_quote!(Streaming<'a>)), None);
        assert_eq!(item(parse_quote!(Vec<Streaming<u8>>)), None);
        assert_eq!(item(parse_quote!(<T as X>::Streaming<u8>)), None);
    }

    #[test]
    fn a_bare_streaming_return_is_an_error() {
        let (ep, result) = endpoint(parse_quote! {
            async fn a(&self) -> micro::Streaming<u32>;
        });
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("`micro::Result<micro::Streaming<u32>>`"),
            "{message}"
        );
        assert!(ep.reply.is_none());
    }

    #[test]
    fn receivers() {
        let sig = |m: TraitItemFn| m.sig;
        assert!(takes_ref_self(&sig(parse_quote!(
            fn a(&self);
        ))));
        assert!(!takes_ref_self(&sig(parse_quote!(
            fn a(&mut self);
        ))));
        assert!(!takes_ref_self(&sig(parse_quote!(
            fn a(self);
        ))));
        assert!(!takes_ref_self(&sig(parse_quote!(
            fn a(&'a self);
        ))));
        assert!(!takes_ref_self(&sig(parse_quote!(
            fn a(self: Arc<Self>);
        ))));
        assert!(!takes_ref_self(&sig(parse_quote!(
            fn a(x: u8);
        ))));
    }
}

//! `#[subscriber]`: an `async fn` of one message, or the methods of an impl
//! block, become subscriptions a service can register.
//!
//! On a free function `#[subscriber(topic = "..", queue = "..")]` turns the
//! function into a unit struct of the same name implementing `Subscriber`;
//! the function itself stays callable as `<name>::call(msg)`. On an impl block
//! (`#[subscriber]` without arguments) every method marked
//! `#[subscriber(topic = "..")]` is a subscription of the value.

use crate::attrs;
use crate::diag::{self, Errors};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, ImplItem, ItemFn, ItemImpl, LitStr, Pat, ReturnType, Signature, Type};

/// The keys `#[subscriber(..)]` accepts on a function or method.
const KEYS: &[&str] = &["topic", "queue"];

/// One subscription: where it listens and what it calls.
struct Subscription {
    topic: LitStr,
    queue: Option<LitStr>,
    message: Type,
}

/// Expands `#[subscriber(attr)] item`.
pub fn subscriber(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let expected = "an `async fn` of one message or an impl block";
    match diag::parse_item(item, "subscriber", expected, &mut errors) {
        Ok(syn::Item::Fn(f)) => free_fn(attr, f, errors),
        Ok(syn::Item::Impl(i)) => impl_block(attr, i, errors),
        Ok(other) => {
            diag::wrong_item(&other, "subscriber", expected, &mut errors);
            let errors = errors.to_compile_errors();
            quote!(#errors #other)
        }
        Err(fallback) => fallback,
    }
}

fn free_fn(attr: TokenStream, f: ItemFn, mut errors: Errors) -> TokenStream {
    if f.sig.receiver().is_some() {
        errors.spanned(
            &f.sig,
            "a method subscribes when its impl block is marked too: put `#[micro::subscriber]` on the `impl`",
        );
    }
    let sub = parse(attr, Span::call_site(), &f.sig, false, &mut errors);
    if !errors.is_empty() {
        let errors = errors.to_compile_errors();
        return quote!(#errors #f);
    }
    let sub = sub.expect("no errors");
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = f;
    let name = sig.ident.clone();
    sig.ident = format_ident!("call");
    let arg = format_ident!("__message");
    let handler = sub.handler(quote!(|#arg| #name::call(#arg)));
    let doc = format!(
        "The subscriber `{name}`: register it with `Service::subscriber({name})`. The \
         function as written is `{name}::call`."
    );
    quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #name;

        impl #name {
            /// The subscriber's function, as written.
            #vis #sig #block
        }

        impl ::micro::__private::Subscriber for #name {
            fn subscriptions(
                self: ::micro::__private::Arc<Self>,
            ) -> ::micro::__private::Vec<::micro::__private::TopicHandler> {
                ::micro::__private::Vec::from([#handler])
            }
        }
    }
}

fn impl_block(attr: TokenStream, mut item: ItemImpl, mut errors: Errors) -> TokenStream {
    if !attr.is_empty() {
        errors.spanned(
            &attr,
            "`#[subscriber]` on an impl block takes no arguments: put `topic = \"..\"` on each method's `#[subscriber(..)]`",
        );
    }
    if let Some((_, path, _)) = &item.trait_ {
        errors.spanned(
            path,
            "`#[subscriber]` expects an inherent impl (`impl Mailer { .. }`), not a trait impl",
        );
    }
    let mut handlers = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let marks: Vec<Attribute> = method
            .attrs
            .iter()
            .filter(|a| is_subscriber_attr(a))
            .cloned()
            .collect();
        method.attrs.retain(|a| !is_subscriber_attr(a));
        for mark in marks {
            let tokens = match &mark.meta {
                syn::Meta::List(list) => list.tokens.clone(),
                _ => TokenStream::new(),
            };
            if let Some(sub) = parse(tokens, mark.span(), &method.sig, true, &mut errors) {
                let name = &method.sig.ident;
                let arg = format_ident!("__message");
                handlers.push(sub.handler(quote!({
                    let this = ::micro::__private::Arc::clone(&self);
                    move |#arg| {
                        let this = ::micro::__private::Arc::clone(&this);
                        async move { this.#name(#arg).await }
                    }
                })));
            }
        }
    }
    if handlers.is_empty() && errors.is_empty() {
        errors.spanned(
            &item.self_ty,
            "no subscriber in this impl block: mark methods with `#[subscriber(topic = \"..\")]`",
        );
    }
    if !errors.is_empty() {
        let errors = errors.to_compile_errors();
        return quote!(#errors #item);
    }
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    quote! {
        #item

        impl #impl_generics ::micro::__private::Subscriber for #self_ty #where_clause {
            fn subscriptions(
                self: ::micro::__private::Arc<Self>,
            ) -> ::micro::__private::Vec<::micro::__private::TopicHandler> {
                ::micro::__private::Vec::from([#(#handlers),*])
            }
        }
    }
}

/// `#[subscriber(..)]` or `#[micro::subscriber(..)]` on a method.
fn is_subscriber_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "subscriber")
}

impl Subscription {
    /// The `TopicHandler` expression calling `f` with each decoded message.
    fn handler(&self, f: TokenStream) -> TokenStream {
        let (topic, message) = (&self.topic, &self.message);
        let queue = match &self.queue {
            Some(q) => quote!(::core::option::Option::Some(#q)),
            None => quote!(::core::option::Option::None),
        };
        quote! {
            ::micro::__private::topic_handler::<#message, _, _>(#topic, #queue, #f)
        }
    }
}

/// Checks a subscriber's arguments and signature; `None` if they are unusable.
fn parse(
    attr: TokenStream,
    attr_span: Span,
    sig: &Signature,
    method: bool,
    errors: &mut Errors,
) -> Option<Subscription> {
    let args = attrs::parse_args(attr, "subscriber", KEYS, errors);
    let topic = args.get("topic").cloned();
    match &topic {
        None => errors.at(
            attr_span,
            "`#[subscriber]` needs a topic: `#[subscriber(topic = \"user.created\")]`",
        ),
        Some(t) => check_name(t, "topic", errors),
    }
    let queue = args.get("queue").cloned();
    if let Some(q) = &queue {
        check_name(q, "queue", errors);
    }
    if sig.asyncness.is_none() {
        errors.spanned(sig.fn_token, "a subscriber must be an `async fn`");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "a subscriber cannot be generic: its message type must be known",
        );
    }
    if method && !crate::model::takes_ref_self(sig) {
        errors.spanned(sig, "a subscriber method takes `&self`");
    }
    let args: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let message = match args.as_slice() {
        [one] => {
            if !matches!(&*one.pat, Pat::Ident(_) | Pat::Wild(_)) {
                errors.spanned(
                    &one.pat,
                    "name the message with a plain identifier, e.g. `event: UserCreated`",
                );
            }
            Some((*one.ty).clone())
        }
        _ => {
            let span = if sig.inputs.is_empty() {
                quote!(#sig)
            } else {
                let inputs = &sig.inputs;
                quote!(#inputs)
            };
            errors.spanned(
                span,
                format!(
                    "a subscriber takes exactly one argument, the message (e.g. `event: UserCreated`); found {}",
                    args.len()
                ),
            );
            None
        }
    };
    if !returns_result(&sig.output) {
        errors.spanned(
            match &sig.output {
                ReturnType::Default => quote!(#sig),
                ReturnType::Type(_, ty) => quote!(#ty),
            },
            "a subscriber returns `micro::Result<()>`: `Ok(())` acknowledges the message, an error retries it",
        );
    }
    Some(Subscription {
        topic: topic?,
        queue,
        message: message?,
    })
}

fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

/// A topic or queue name: 1 to 200 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
fn check_name(lit: &LitStr, what: &str, errors: &mut Errors) {
    let name = lit.value();
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        errors.spanned(
            lit,
            format!("invalid {what} `{name}`: use 1 to 200 of A-Z a-z 0-9 . _ -, not starting with a dot"),
        );
    }
}

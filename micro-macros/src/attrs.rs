//! The one parser of `key = "value"` argument lists, shared by `#[service(..)]`,
//! `#[handler(..)]` and the per-method `#[micro(..)]`.
//!
//! Unknown and duplicate keys are errors that name what was expected; parsing
//! goes on after an error so every mistake is reported at once.

use crate::diag::Errors;
use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta, Token};

/// The parsed arguments of one attribute: each accepted key with its string value.
#[derive(Default)]
pub struct Args {
    values: Vec<(&'static str, LitStr)>,
}

impl Args {
    /// The value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&LitStr> {
        self.values.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether no argument was given.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn insert(&mut self, key: &'static str, value: LitStr, errors: &mut Errors, attr: &str) {
        if self.get(key).is_some() {
            errors.at(
                value.span(),
                format!("duplicate `#[{attr}]` argument `{key}`"),
            );
        } else {
            self.values.push((key, value));
        }
    }
}

/// Renders `expected one of: `a`, `b``.
fn expected(allowed: &[&str]) -> String {
    let list: Vec<String> = allowed.iter().map(|k| format!("`{k}`")).collect();
    format!("expected one of: {}", list.join(", "))
}

/// Parses the argument list `tokens` of `#[attr(..)]`, accepting only `allowed` keys.
pub fn parse_args(
    tokens: TokenStream,
    attr: &str,
    allowed: &'static [&'static str],
    errors: &mut Errors,
) -> Args {
    let mut args = Args::default();
    if tokens.is_empty() {
        return args;
    }
    if allowed.is_empty() {
        errors.spanned(&tokens, format!("`#[{attr}]` takes no arguments"));
        return args;
    }
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(metas) => metas,
        Err(err) => {
            errors.at(
                err.span(),
                format!(
                    "{err}; `#[{attr}]` arguments are written `key = \"value\"`, {}",
                    expected(allowed)
                ),
            );
            return args;
        }
    };
    for meta in metas {
        let path = meta.path();
        let Some(key) = path
            .get_ident()
            .and_then(|ident| allowed.iter().find(|k| ident == *k).copied())
        else {
            let written = quote::quote!(#path).to_string().replace(' ', "");
            errors.spanned(
                path,
                format!(
                    "unknown `#[{attr}]` argument `{written}`, {}",
                    expected(allowed)
                ),
            );
            continue;
        };
        match meta {
            Meta::NameValue(nv) => match nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(value),
                    ..
                }) => args.insert(key, value, errors, attr),
                other => errors.spanned(
                    other,
                    format!("`#[{attr}]` argument `{key}` expects a string literal, e.g. `{key} = \"...\"`"),
                ),
            },
            other => errors.at(
                other.span(),
                format!("`#[{attr}]` argument `{key}` expects a value, e.g. `{key} = \"...\"`"),
            ),
        }
    }
    args
}

/// Whether `attr` is a per-method `#[micro(..)]` attribute.
pub fn is_micro(attr: &Attribute) -> bool {
    attr.path().is_ident("micro")
}

/// The keys `#[micro(..)]` accepts on a method.
pub const METHOD_KEYS: &[&str] = &["name"];

/// Parses every `#[micro(..)]` attribute in `attrs` as one argument list.
pub fn parse_micro_attrs(attrs: &[Attribute], errors: &mut Errors) -> Args {
    let mut args = Args::default();
    for attr in attrs.iter().filter(|a| is_micro(a)) {
        match &attr.meta {
            Meta::List(list) if !list.tokens.is_empty() => {
                let parsed = parse_args(list.tokens.clone(), "micro", METHOD_KEYS, errors);
                for (key, value) in parsed.values {
                    args.insert(key, value, errors, "micro");
                }
            }
            meta => errors.spanned(meta, "expected `#[micro(name = \"...\")]`"),
        }
    }
    args
}

/// `attrs` without any `#[micro(..)]`.
pub fn strip_micro(attrs: &mut Vec<Attribute>) {
    attrs.retain(|a| !is_micro(a));
}

/// The span of the first `#[micro(..)]` attribute, if any.
pub fn first_micro_span(attrs: &[Attribute]) -> Option<Span> {
    attrs.iter().find(|a| is_micro(a)).map(Spanned::span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    const KEYS: &[&str] = &["name", "version"];

    fn parse(tokens: TokenStream) -> (Args, syn::Result<()>) {
        let mut errors = Errors::default();
        let args = parse_args(tokens, "service", KEYS, &mut errors);
        (args, errors.finish())
    }

    fn messages(result: syn::Result<()>) -> Vec<String> {
        result
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn accepts_known_keys() {
        let (args, result) = parse(quote!(name = "greeter", version = "1.0.0"));
        result.unwrap();
        assert_eq!(args.get("name").unwrap().value(), "greeter");
        assert_eq!(args.get("version").unwrap().value(), "1.0.0");
    }

    #[test]
    fn empty_is_fine() {
        let (args, result) = parse(quote!());
        result.unwrap();
        assert!(args.is_empty());
    }

    #[test]
    fn rejects_unknown_and_duplicate_keys_together() {
        let (args, result) = parse(quote!(nme = "a", name = "b", name = "c"));
        assert_eq!(
            messages(result),
            [
                "unknown `#[service]` argument `nme`, expected one of: `name`, `version`",
                "duplicate `#[service]` argument `name`",
            ]
        );
        assert_eq!(args.get("name").unwrap().value(), "b");
    }

    #[test]
    fn rejects_non_string_values_and_bare_keys() {
        let (_, result) = parse(quote!(name = 1, version));
        assert_eq!(
            messages(result),
            [
                "`#[service]` argument `name` expects a string literal, e.g. `name = \"...\"`",
                "`#[service]` argument `version` expects a value, e.g. `version = \"...\"`",
            ]
        );
    }

    #[test]
    fn no_args_allowed() {
        let mut errors = Errors::default();
        parse_args(quote!(x = "y"), "message", &[], &mut errors);
        assert_eq!(
            messages(errors.finish()),
            ["`#[message]` takes no arguments"]
        );
    }

    #[test]
    fn micro_attrs_merge_and_detect_duplicates() {
        let attrs: Vec<Attribute> = vec![
            syn::parse_quote!(#[micro(name = "Hi")]),
            syn::parse_quote!(#[doc = "x"]),
            syn::parse_quote!(#[micro(name = "Ho")]),
        ];
        let mut errors = Errors::default();
        let args = parse_micro_attrs(&attrs, &mut errors);
        assert_eq!(args.get("name").unwrap().value(), "Hi");
        assert_eq!(
            messages(errors.finish()),
            ["duplicate `#[micro]` argument `name`"]
        );
    }
}

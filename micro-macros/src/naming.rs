//! Pure helpers: wire names, type names as written, doc text.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Attribute, Expr, ExprLit, Lit, Meta};

/// `say_hello` → `SayHello`: the method part of a default endpoint name.
pub fn upper_camel(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let mut out = String::with_capacity(name.len());
    for word in name.split('_').filter(|w| !w.is_empty()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// `Greeter` → `greeter`: the default service name.
pub fn service_name(type_name: &str) -> String {
    type_name
        .strip_prefix("r#")
        .unwrap_or(type_name)
        .to_lowercase()
}

/// Whether `name` may be the method part of an endpoint name.
pub fn is_valid_method_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Whether `name` may be a service name (e.g. `greeter`, `go.micro.srv.greeter`).
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A type (or any tokens) as a human writes it: `Vec<String>`, `&'static str`,
/// `Option<(i64, String)>`.
pub fn type_string(ty: &impl ToTokens) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

/// What the previous token was, to decide on the space before the next one.
#[derive(Clone, Copy, PartialEq)]
enum Prev {
    Start,
    Word,
    Keyword,
    /// A punct that wants a space after it (`,`, `;`, `+`, `=`, `->`).
    SpacedPunct,
    /// Any other punct, or an opening delimiter.
    Punct,
    /// A closing delimiter.
    Close,
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    let mut prev = Prev::Start;
    let mut joint_punct = String::new();
    for tree in tokens {
        match tree {
            TokenTree::Punct(p) => {
                joint_punct.push(p.as_char());
                if p.spacing() == Spacing::Joint && p.as_char() != '\'' {
                    continue;
                }
                let op = std::mem::take(&mut joint_punct);
                let spaced = matches!(op.as_str(), "+" | "=" | "->" | "=>");
                if op == "'" {
                    // A lifetime: `'` joined to the following ident.
                    if matches!(prev, Prev::Word | Prev::Keyword | Prev::SpacedPunct) {
                        out.push(' ');
                    }
                    out.push('\'');
                    prev = Prev::Punct;
                    continue;
                }
                if spaced && prev != Prev::Start {
                    out.push(' ');
                }
                if prev == Prev::Keyword && !spaced {
                    out.push(' ');
                }
                out.push_str(&op);
                prev = if spaced || op == "," || op == ";" {
                    Prev::SpacedPunct
                } else {
                    Prev::Punct
                };
            }
            TokenTree::Ident(ident) => {
                let word = ident.to_string();
                if matches!(
                    prev,
                    Prev::Word | Prev::Keyword | Prev::SpacedPunct | Prev::Close
                ) {
                    out.push(' ');
                }
                out.push_str(&word);
                prev = if matches!(
                    word.as_str(),
                    "dyn" | "impl" | "mut" | "const" | "unsafe" | "extern" | "as"
                ) {
                    Prev::Keyword
                } else {
                    Prev::Word
                };
            }
            TokenTree::Literal(lit) => {
                if matches!(prev, Prev::Word | Prev::Keyword | Prev::SpacedPunct) {
                    out.push(' ');
                }
                out.push_str(&lit.to_string());
                prev = Prev::Word;
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                if matches!(prev, Prev::Keyword | Prev::SpacedPunct)
                    || (prev == Prev::Word && group.delimiter() == Delimiter::Brace)
                {
                    out.push(' ');
                }
                out.push_str(open);
                write_tokens(group.stream(), out);
                out.push_str(close);
                prev = if group.delimiter() == Delimiter::None {
                    Prev::Word
                } else {
                    Prev::Close
                };
            }
        }
    }
    out.push_str(&joint_punct);
}

/// The text of the `///` comments among `attrs`, one line each, trimmed.
pub fn doc_text(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .flat_map(|doc| {
            doc.split('\n')
                .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    lines.join("\n").trim().to_owned()
}

/// The `#[doc]` attributes among `attrs`.
pub fn doc_attrs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{parse_quote, Type};

    #[test]
    fn camel_cases_method_names() {
        assert_eq!(upper_camel("say_hello"), "SayHello");
        assert_eq!(upper_camel("hello"), "Hello");
        assert_eq!(upper_camel("get_v2_user"), "GetV2User");
        assert_eq!(upper_camel("_private__name_"), "PrivateName");
        assert_eq!(upper_camel("sayHello"), "SayHello");
        assert_eq!(upper_camel("r#type"), "Type");
        assert_eq!(upper_camel("_"), "");
    }

    #[test]
    fn lowercases_service_names() {
        assert_eq!(service_name("Greeter"), "greeter");
        assert_eq!(service_name("HTTPProxy"), "httpproxy");
        assert_eq!(service_name("r#Match"), "match");
    }

    #[test]
    fn validates_names() {
        assert!(is_valid_method_name("Hi_2"));
        assert!(!is_valid_method_name(""));
        assert!(!is_valid_method_name("Greeter.Hi"));
        assert!(!is_valid_method_name("say hi"));
        assert!(is_valid_service_name("go.micro.srv-greeter_1"));
        assert!(!is_valid_service_name(""));
        assert!(!is_valid_service_name("a b"));
    }

    #[track_caller]
    fn check(ty: Type, expected: &str) {
        assert_eq!(type_string(&ty), expected);
    }

    #[test]
    fn prints_types_as_written() {
        check(parse_quote!(String), "String");
        check(parse_quote!(Vec<String>), "Vec<String>");
        check(parse_quote!(::std::vec::Vec<u8>), "::std::vec::Vec<u8>");
        check(
            parse_quote!(micro::Result<Vec<u8>>),
            "micro::Result<Vec<u8>>",
        );
        check(parse_quote!(Option<(i64, String)>), "Option<(i64, String)>");
        check(
            parse_quote!(HashMap<String, Vec<u8>>),
            "HashMap<String, Vec<u8>>",
        );
        check(parse_quote!(&'static str), "&'static str");
        check(parse_quote!(&mut [u8]), "&mut [u8]");
        check(parse_quote!([u8; 4]), "[u8; 4]");
        check(parse_quote!(()), "()");
        check(
            parse_quote!(Box<dyn Fn(u8) -> u8 + Send>),
            "Box<dyn Fn(u8) -> u8 + Send>",
        );
        check(parse_quote!(<T as Trait>::Out), "<T as Trait>::Out");
    }

    #[test]
    fn extracts_doc_text() {
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[doc = " Says hello."]),
            parse_quote!(#[inline]),
            parse_quote!(#[doc = ""]),
            parse_quote!(#[doc = " Second  line. "]),
        ];
        assert_eq!(doc_text(&attrs), "Says hello.\n\nSecond  line.");
        assert_eq!(doc_attrs(&attrs).len(), 3);
        assert_eq!(doc_text(&[]), "");
    }
}

//! Compile-time behaviour of the macros, as users meet it: `pass/` must
//! compile (and run), `fail/` must fail with the message in its `.stderr`.
//!
//! After changing a macro's diagnostics, regenerate the snapshots with
//! `TRYBUILD=overwrite cargo test -p micro --test ui` and review every diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}

//! Compile tests of `#[job_agent]`: every misuse in `ui/fail` must be rejected with the error
//! recorded beside it, and every program in `ui/pass` must build and run.
//!
//! After changing a message on purpose, refresh the recorded errors with
//! `TRYBUILD=overwrite cargo test -p jobagent-macros --test ui`, then read every `.stderr` file.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}

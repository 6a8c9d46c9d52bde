//! Every trait `#[diarrhoea::service]` refuses fails to compile with its own message, pointing
//! at the offending tokens (`tests/compile_fail/*.stderr` hold the expected output; after a
//! deliberate change to a message, regenerate them with `TRYBUILD=overwrite cargo test --test
//! compile_fail` and review the diff).
//!
//! Grouped into two files, each one compiler run: these builds are the slow part of the suite.

#[test]
fn refused_service_traits_fail_with_their_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}

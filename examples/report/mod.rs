//! How an example fails: one line on stderr, `error: ` then the error and its causes, and a
//! non-zero exit. Each example's `main` is `report::exit(run().await)`.
//!
//! `main` returning `Result` directly would print the error's `Debug`, a struct meant for
//! tests and logs, not for a terminal.

use std::error::Error;
use std::process::ExitCode;

use diarrhoea::BoxError;

/// Ends `main`: nothing more on success; on failure the line [`chain`] makes, after `error: `,
/// and exit code 1.
pub(crate) fn exit(result: Result<(), impl Into<BoxError>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error: BoxError = error.into();
            eprintln!("error: {}", chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// The error and each `source()` below it, `: ` between them: each says only its own part
/// (`connect to ./test.sock` then `No such file or directory (os error 2)`).
pub(crate) fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

//! The ways in: each source reads one kind of input and turns it into the typed events of
//! [`crate::lock`] (and, for webhooks, the operation results they carry), by pure parsing.

pub mod bridge;
mod lenient;
mod nuki_shapes;
pub mod roster;
pub mod state_file;
pub mod web_api;
pub mod webhook;

/// The bytes of `tests/fixtures/<dir>/<file>`, read at compile time: the sources' unit tests and
/// the HTTP tests share one set of payload fixtures.
#[cfg(test)]
macro_rules! fixture {
    ($dir:literal, $file:expr) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $dir,
            "/",
            $file
        ))
        .as_slice()
    };
}
#[cfg(test)]
use fixture;

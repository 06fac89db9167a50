//! Small helpers every layer may use; they import nothing else of the crate.

pub mod background;
pub mod client;
pub mod off_thread;
pub mod secret_file;
pub mod upstream_text;

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds: the time events and file changes are stamped with.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An error and its causes on one line (hyper's own message is only "client error (Connect)"),
/// escaped: a cause may quote what the peer sent.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    upstream_text::escape(&text).into_owned()
}

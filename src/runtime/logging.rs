//! Log output with `tracing`: text or JSON on stderr, filtered by `log.level`.
//!
//! Nothing in the exporter logs a request body: DEVICE_AUTHS carries keypad codes and
//! ACCOUNT_USER e-mail addresses.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `log.level` was validated with the configuration.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour escapes only for a person at a terminal, not in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second call (tests starting several exporters) keeps the first subscriber.
    drop(installed);
}

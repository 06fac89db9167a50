//! The running exporter: loading and starting (bind, then serve), reloading secrets and tokens
//! on SIGHUP, shutting down, and log output.

pub mod loader;
pub mod logging;
pub mod reload;
pub mod server;

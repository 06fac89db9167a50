//! nuki-exporter: receives Nuki Web API webhooks, checks their signature, polls the Nuki Web
//! API and local Nuki Bridges, and serves what they report (error codes per lock, battery, lock
//! and server state, activity log, webhook delivery health) as Prometheus metrics.
//!
//! The layers, lowest first (a module imports only from the layers above it in this list):
//! [`util`] (time, error chains, secret files, threads), [`lock`] and [`catalogue`] (the model),
//! [`config`] (imports nothing but `util`), [`store`] (the per-lock table and its exposition),
//! [`source`] (one folder per way in), [`http`] (the listeners), [`runtime`] (start, reload,
//! shutdown) and [`cli`] (the subcommands). The binary is a thin shell around
//! [`runtime::server::Exporter`]; every piece is usable from tests.

pub mod catalogue;
pub mod cli;
pub mod config;
pub mod http;
pub mod lock;
pub mod runtime;
pub mod source;
pub mod store;
pub mod util;

pub use config::Config;
pub use runtime::server::Exporter;

//! nuki-exporter: receives Nuki Web API webhooks, checks their signature, and serves what they
//! report (error codes per lock, battery, lock and server state, activity log) as Prometheus
//! metrics.
//!
//! The binary is a thin shell around [`server::Exporter`]; every piece is usable from tests.

pub mod catalogue;
pub mod client;
pub mod config;
pub mod demo;
pub mod http;
pub mod lock;
pub mod lock_store;
pub mod logging;
pub mod metrics;
pub mod scrape;
pub mod server;
pub mod signature;
pub mod source;
pub mod web;
pub mod write_deadline;

pub use config::Config;
pub use server::Exporter;

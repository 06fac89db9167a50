//! nuki-exporter: receives Nuki Web API webhooks, checks their signature, polls the Nuki Web
//! API, and serves what they report (error codes per lock, battery, lock and server state,
//! activity log, webhook delivery health) as Prometheus metrics.
//!
//! The binary is a thin shell around [`server::Exporter`]; every piece is usable from tests.

pub mod background;
pub mod bridge_client;
pub mod bridge_lease;
pub mod bridge_metrics;
pub mod bridge_poller;
pub mod catalogue;
pub mod client;
pub mod config;
pub mod config_show;
pub mod decentral_webhook;
pub mod demo;
pub mod doctor;
pub mod forward;
pub mod http;
pub mod lock;
pub mod lock_store;
pub mod logging;
pub mod metrics;
pub mod nuki_api;
pub mod off_thread;
pub mod poller;
#[cfg(target_os = "linux")]
pub mod process_metrics;
pub mod quickstart;
pub mod reload;
mod request_progress;
pub mod roster;
pub mod scrape;
pub mod secret_file;
mod seen_ids;
pub mod server;
pub mod signature;
pub mod source;
pub mod state;
pub mod status_page;
pub mod upstream_text;
pub mod web;
pub mod write_deadline;

pub use config::Config;
pub use server::Exporter;

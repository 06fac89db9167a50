//! The Nuki Web API, polled: the HTTPS client, the parser of its answers, the poller that turns
//! them into lock events, the decentral-webhook registration, and the Web API's own metrics.

pub mod client;
pub mod decentral_webhook;
pub mod metrics;
pub mod parse;
pub mod poller;
mod seen_ids;

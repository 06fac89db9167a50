//! Local Nuki Bridges, polled over their HTTP API and heard through their callbacks: the
//! client, the parser, the poller (with the callback senders it allows), the Kubernetes Lease
//! that picks one polling replica per bridge, and the bridges' own metrics.

pub mod client;
pub mod lease;
pub mod metrics;
pub mod parse;
pub mod poller;

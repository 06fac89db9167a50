//! The ways in: each source reads one kind of input and turns it into the typed events of
//! [`crate::lock`] (and, for webhooks, the operation results they carry), by pure parsing.

pub mod bridge;
mod lenient;
pub mod web_api;
pub mod webhook;

//! Webhooks, pushed by Nuki to the webhook listener: the signature check, the parser (bytes in,
//! typed webhooks out) and the lock events a webhook becomes.

pub mod events;
pub mod parse;
pub mod signature;

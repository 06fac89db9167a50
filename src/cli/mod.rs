//! The subcommands beside `serve`: the configuration check and listing, the pre-flight doctor,
//! the quick-start stack, the demo fleet and the account's decentral webhooks.

pub mod config_show;
pub mod demo;
pub mod doctor;
pub mod quickstart;
pub mod webhook;

//! The subcommands beside `serve`: the configuration check and listing, the pre-flight doctor,
//! the quick-start stack and the demo fleet.

pub mod config_show;
pub mod demo;
pub mod doctor;
pub mod quickstart;

//! The loader: reads every file the configuration names, once, before anything binds, so
//! that a file that cannot be used stops start-up (and `--check-config`) with one line.

use std::sync::Arc;

use crate::config::Config;
use crate::config::file_backed::FileBacked;
use crate::http::metrics_auth::MetricsGuard;
use crate::http::relay::Relay;
use crate::source::bridge::lease;
use crate::source::web_api::client::ApiToken;
use crate::source::webhook::signature::Verifier;

/// What the files the configuration names hold.
pub struct Loaded {
    pub verifier: Arc<FileBacked<Verifier>>,
    pub guard: Arc<FileBacked<MetricsGuard>>,
    pub relay: Option<Relay>,
}

/// Reads every file the configuration names (webhook secrets, the web configuration, TLS
/// certificate and key, bearer tokens, the relay's CA file, the Web API token, bridge tokens), as start-up
/// and `--check-config` do.
pub fn load(config: &Config) -> Result<Loaded, crate::config::ConfigError> {
    for bridge in &config.bridges {
        bridge.read_token()?;
    }
    if let Some(lease) = &config.bridge_lease {
        lease::check_files(lease)?;
    }
    let webhook = config.clone();
    let verifier = FileBacked::load(
        "webhook.secret_files",
        config.webhook.secret_files.clone(),
        move || Ok(Verifier::new(&webhook.read_secrets()?)),
    )?;
    let metrics = config.metrics.clone();
    let guard = FileBacked::load(
        "metrics",
        config
            .metrics
            .web_config_file
            .iter()
            .chain(&config.metrics.bearer_token_files)
            .cloned()
            .collect(),
        move || MetricsGuard::load(&metrics),
    )?;
    if let Some(token_file) = &config.api.token_file {
        ApiToken::read(token_file)?;
    }
    Ok(Loaded {
        verifier,
        guard,
        relay: Relay::new(&config.forward)?,
    })
}

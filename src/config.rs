//! Configuration: built-in defaults < TOML file < `NUKI_EXPORTER_*` environment, via figment.
//!
//! Strict: an unknown key, a bad value or an unreadable file stops start-up with one line that
//! names the key or the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that configure the exporter.
pub const ENV_PREFIX: &str = "NUKI_EXPORTER_";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub webhook: WebhookConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub server: ServerConfig,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Address the webhook listener binds.
    pub listen: SocketAddr,
    /// Path Nuki posts webhooks to.
    pub path: String,
    /// HMAC-SHA256 keys; a webhook signed with any one of them is accepted.
    pub secrets: Vec<String>,
    /// Files holding one secret each (trailing newline ignored), read at start-up.
    pub secret_files: Vec<PathBuf>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("listen", &self.listen)
            .field("path", &self.path)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("secret_files", &self.secret_files)
            .finish()
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 10180).into(),
            path: "/webhook".into(),
            secrets: Vec::new(),
            secret_files: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the listener that serves `/metrics`; equal to `webhook.listen` for one port.
    pub listen: SocketAddr,
    /// A Prometheus exporter-toolkit web configuration file: TLS and basic auth for this
    /// listener (`tls_server_config.cert_file`/`key_file`, `basic_auth_users`).
    pub web_config_file: Option<PathBuf>,
    /// Files holding one bearer token each; a scrape must present one of them.
    pub bearer_token_files: Vec<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 10181).into(),
            web_config_file: None,
            bearer_token_files: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest webhook body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Distinct lock ids tracked; further ids are counted under `smartlock_id="other"`.
    pub max_smartlocks: usize,
    /// Distinct API webhook `type` values, and apart from them distinct device `feature`
    /// values; further ones are counted as `other`.
    pub max_operations: usize,
    /// Per-lock series held in all; past it, new series are refused and counted.
    pub max_series: usize,
    /// Series one lock (or `smartlock_id="other"`) may hold, so that one noisy lock cannot
    /// take the whole `max_series`.
    pub max_series_per_lock: usize,
    /// Open connections per listener; beyond it, new connections wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, idle keep-alive time included.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a whole request may take, body included; slower ones get 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_smartlocks: 10_000,
            max_operations: 64,
            max_series: 200_000,
            max_series_per_lock: 1_000,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `error`, `warn`, `info`, `debug`, `trace`, or directives.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// How long `/-/ready` answers 503 before the listeners close, so that a load balancer
    /// stops sending webhooks before the exporter stops taking them.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace_period: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// A configuration that cannot be used, with the key or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration key {key}: {reason}")]
    Key { key: &'static str, reason: String },
    #[error("webhook.secret_files: cannot read {path}: {reason}")]
    SecretFile { path: PathBuf, reason: String },
}

impl Config {
    /// Loads defaults, then the TOML file if given, then the environment; validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment treats a missing file as empty; a named file must exist.
            std::fs::metadata(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(one_line(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// What the metrics facade may hold.
    pub fn metric_limits(&self) -> crate::metrics::Limits {
        crate::metrics::Limits {
            max_smartlocks: self.limits.max_smartlocks,
            max_operations: self.limits.max_operations,
            max_series: self.limits.max_series,
            max_series_per_lock: self.limits.max_series_per_lock,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let key_error = |key, reason: &str| ConfigError::Key {
            key,
            reason: reason.to_owned(),
        };
        if !self.webhook.path.starts_with('/') {
            return Err(key_error("webhook.path", "must start with '/'"));
        }
        if ["/metrics", "/", "/-/healthy", "/-/ready"].contains(&self.webhook.path.as_str()) {
            return Err(key_error(
                "webhook.path",
                "must not be one of the exporter's own paths",
            ));
        }
        if self.webhook.secrets.iter().any(String::is_empty) {
            return Err(key_error(
                "webhook.secrets",
                "an empty secret would accept forged webhooks",
            ));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(key_error("limits.max_body_bytes", "must be at least 1"));
        }
        if self.limits.max_operations == 0 {
            return Err(key_error("limits.max_operations", "must be at least 1"));
        }
        if self.limits.max_series_per_lock == 0 {
            return Err(key_error(
                "limits.max_series_per_lock",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(key_error("limits.max_connections", "must be at least 1"));
        }
        if self.limits.header_read_timeout.is_zero() {
            return Err(key_error(
                "limits.header_read_timeout",
                "must be longer than 0s",
            ));
        }
        if self.limits.request_timeout.is_zero() {
            return Err(key_error(
                "limits.request_timeout",
                "must be longer than 0s",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| key_error("log.level", &e.to_string()))?;
        Ok(())
    }

    /// Every secret: `webhook.secrets` and the contents of `webhook.secret_files`.
    pub fn read_secrets(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut secrets: Vec<Vec<u8>> = self
            .webhook
            .secrets
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        for path in &self.webhook.secret_files {
            let unreadable = |reason: String| ConfigError::SecretFile {
                path: path.clone(),
                reason,
            };
            let content = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
            let secret = content.trim_ascii_end();
            if secret.is_empty() {
                return Err(unreadable(
                    "the file is empty; an empty secret would accept forged webhooks".into(),
                ));
            }
            secrets.push(secret.to_vec());
        }
        Ok(secrets)
    }
}

/// figment errors can span several lines (one per nested error); start-up reports one line,
/// naming each key in its configuration form and where the bad value came from.
fn one_line(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".").to_lowercase();
            let origin = match &e.metadata {
                Some(meta) if meta.name.contains("environment") => {
                    format!(
                        " (environment variable {ENV_PREFIX}{})",
                        e.path.join("__").to_uppercase()
                    )
                }
                Some(meta) => meta
                    .source
                    .as_ref()
                    .map(|s| format!(" (in {s})"))
                    .unwrap_or_default(),
                None => String::new(),
            };
            if key.is_empty() {
                format!("{}{origin}", e.kind)
            } else {
                format!("key {key}: {}{origin}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_toml(toml: &str) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        Config::load_from(
            Some(file.path()),
            Env::prefixed("NUKI_EXPORTER_TEST_UNUSED_").split("__"),
        )
    }

    #[test]
    fn defaults_need_no_file() {
        let config = Config::load_from(None, Env::prefixed("NUKI_EXPORTER_TEST_UNUSED_")).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.webhook.path, "/webhook");
        assert_eq!(config.limits.max_smartlocks, 10_000);
    }

    #[test]
    fn file_values_override_defaults() {
        let config = load_toml(
            "[webhook]\nlisten = \"127.0.0.1:9000\"\nsecrets = [\"a\", \"b\"]\n[limits]\nmax_smartlocks = 5\n[server]\nshutdown_grace_period = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(config.webhook.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.webhook.secrets, ["a", "b"]);
        assert_eq!(config.limits.max_smartlocks, 5);
        assert_eq!(config.server.shutdown_grace_period, Duration::from_secs(3));
        assert_eq!(config.metrics, MetricsConfig::default());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn environment_overrides_file_with_nested_keys_and_lists() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[webhook]\nlisten = \"127.0.0.1:9000\"\n")?;
            jail.set_env("NUKI_EXPORTER_WEBHOOK__LISTEN", "0.0.0.0:8080");
            jail.set_env(
                "NUKI_EXPORTER_WEBHOOK__SECRETS",
                "[first-secret,second-secret]",
            );
            jail.set_env("NUKI_EXPORTER_LIMITS__MAX_BODY_BYTES", "1024");
            let config = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(config.webhook.listen, "0.0.0.0:8080".parse().unwrap());
            assert_eq!(config.webhook.secrets, ["first-secret", "second-secret"]);
            assert_eq!(config.limits.max_body_bytes, 1024);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_on_one_line() {
        let unknown = load_toml("[webhook]\nlisten = \"127.0.0.1:9000\"\nsecret = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("secret"), "{unknown}");
        assert!(unknown.contains("webhook"), "{unknown}");
        let top = load_toml("[webhooks]\n").unwrap_err().to_string();
        assert!(top.contains("webhooks"), "{top}");
        let bad = load_toml("[limits]\nmax_smartlocks = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("max_smartlocks"), "{bad}");
        let address = load_toml("[metrics]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(address.contains("metrics.listen"), "{address}");
        for message in [unknown, top, bad, address] {
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn unreadable_file_is_named() {
        let error = Config::load(Some(Path::new("/nonexistent/nuki.toml")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/nuki.toml"), "{error}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let empty = load_toml("[webhook]\nsecrets = [\"\"]\n")
            .unwrap_err()
            .to_string();
        assert!(empty.contains("webhook.secrets"), "{empty}");
        let path = load_toml("[webhook]\npath = \"webhook\"\n")
            .unwrap_err()
            .to_string();
        assert!(path.contains("webhook.path"), "{path}");
        let level = load_toml("[log]\nlevel = \"[[\"\n")
            .unwrap_err()
            .to_string();
        assert!(level.contains("log.level"), "{level}");
        let format = load_toml("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(format.contains("format"), "{format}");
    }

    #[test]
    fn secrets_are_read_from_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut config = Config::default();
        config.webhook.secrets = vec!["inline".into()];
        config.webhook.secret_files = vec![file.clone()];
        assert_eq!(
            config.read_secrets().unwrap(),
            [b"inline".to_vec(), b"from-file".to_vec()]
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(
            config
                .read_secrets()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        config.webhook.secret_files = vec![dir.path().join("missing")];
        assert!(
            config
                .read_secrets()
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn shipped_example_states_the_defaults() {
        let example = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/nuki-exporter/config.toml"
        ));
        let mut config =
            Config::load_from(Some(example), Env::prefixed("NUKI_EXPORTER_TEST_UNUSED_")).unwrap();
        assert_eq!(
            config.webhook.secret_files,
            [PathBuf::from("/run/secrets/nuki_webhook_secret")]
        );
        config.webhook.secret_files.clear();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut config = Config::default();
        config.webhook.secrets = vec!["hunter2".into()];
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}

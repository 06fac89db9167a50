//! Configuration: built-in defaults < TOML file < `NUKI_EXPORTER_*` environment, via figment.
//!
//! Strict: an unknown key, a bad value or an unreadable file stops start-up with one line that
//! names the key or the file.

pub mod file_backed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Where the webhook listener takes Nuki Bridge callbacks; no `webhook.path` may take it.
pub const BRIDGE_CALLBACK_PATH: &str = "/bridge/callback";

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
    pub forward: ForwardConfig,
    pub api: ApiConfig,
    pub state: StateConfig,
    /// Nuki Bridges to poll (`[[bridges]]` tables); none by default.
    pub bridges: Vec<BridgeConfig>,
    /// With several replicas: each bridge is polled only by the holder of its Kubernetes Lease.
    /// Unset (one process, compose): every configured bridge is polled by this process.
    pub bridge_lease: Option<BridgeLeaseConfig>,
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
    /// Files holding one secret each (surrounding whitespace ignored), read at start-up and on
    /// SIGHUP.
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// The application behind the sidecar (`http://127.0.0.1:8080/nuki`): each webhook that
    /// passes the signature check is relayed to it. Unset: no relay.
    pub url: Option<String>,
    /// Time the application has to answer a relayed webhook; slower ones get 504.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file of CA certificates trusted for an `https` url, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// How the exporter authenticates to a bridge (Bridge HTTP API §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// Encrypted, falling back to hashed when the bridge refuses it (firmware older than
    /// 1.22.1 on a Bridge 1.0, 2.14.0 on a Bridge 2.0).
    #[default]
    Auto,
    /// `ctoken` and `nonce`: the token encrypted with XSalsa20-Poly1305.
    Encrypted,
    /// `ts`, `rnr` and `hash`: SHA-256 of timestamp, random number and token.
    Hashed,
    /// `token=`: the token itself in the URL, readable by anyone on the network.
    Plain,
}

/// One Nuki Bridge: a `[[bridges]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The `bridge` label value.
    pub name: String,
    /// The bridge's address, `http://HOST:8080`.
    pub url: String,
    /// File holding the bridge's API token.
    pub token_file: PathBuf,
    #[serde(default)]
    pub token_mode: TokenMode,
    /// Time between two `/list` polls.
    #[serde(
        default = "BridgeConfig::default_poll_interval",
        with = "humantime_serde"
    )]
    pub poll_interval: Duration,
    /// Time between two `/info` requests (and checks of the callback registration).
    #[serde(
        default = "BridgeConfig::default_info_interval",
        with = "humantime_serde"
    )]
    pub info_interval: Duration,
    /// Least time between the end of one request to the bridge and the start of the next: the
    /// bridge serves one request at a time and freezes when asked faster.
    #[serde(
        default = "BridgeConfig::default_request_spacing",
        with = "humantime_serde"
    )]
    pub request_spacing: Duration,
    /// Time one request may take.
    #[serde(default = "BridgeConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// This exporter's `POST /bridge/callback` URL as the bridge reaches it (`http://`); the
    /// exporter keeps it registered with the bridge. Unset: polling only.
    #[serde(default)]
    pub callback_url: Option<String>,
}

impl BridgeConfig {
    fn default_poll_interval() -> Duration {
        Duration::from_secs(30)
    }
    fn default_info_interval() -> Duration {
        Duration::from_secs(300)
    }
    fn default_request_spacing() -> Duration {
        Duration::from_secs(1)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// A bridge with every optional key at its default.
    pub fn new(name: &str, url: &str, token_file: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            token_file,
            token_mode: TokenMode::default(),
            poll_interval: Self::default_poll_interval(),
            info_interval: Self::default_info_interval(),
            request_spacing: Self::default_request_spacing(),
            timeout: Self::default_timeout(),
            callback_url: None,
        }
    }

    /// The token, from `token_file` (read as [`crate::util::secret_file::read`] reads).
    pub fn read_token(&self) -> Result<String, ConfigError> {
        let unreadable = |reason: String| ConfigError::BridgeTokenFile {
            bridge: self.name.clone(),
            path: self.token_file.clone(),
            reason,
        };
        let token = crate::util::secret_file::read(&self.token_file)
            .map_err(|e| unreadable(e.to_string()))?;
        String::from_utf8(token).map_err(|_| unreadable("the token is not UTF-8 text".into()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| {
            Err(ConfigError::Bridge {
                bridge: self.name.clone(),
                reason,
            })
        };
        if self.name.is_empty() {
            return invalid("name must not be empty".into());
        }
        let url: hyper::Uri = match self.url.parse() {
            Ok(url) => url,
            Err(e) => return invalid(format!("url: {e}")),
        };
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return invalid("url must be http://HOST:PORT (the Bridge API is plain HTTP)".into());
        }
        for (key, interval) in [
            ("poll_interval", self.poll_interval),
            ("info_interval", self.info_interval),
            ("request_spacing", self.request_spacing),
            ("timeout", self.timeout),
        ] {
            if interval.is_zero() {
                return invalid(format!("{key} must be longer than 0s"));
            }
        }
        if let Some(callback) = &self.callback_url {
            // The bridge takes http:// callbacks of at most 254 characters, URL-encoded.
            let encoded: String = form_urlencoded::byte_serialize(callback.as_bytes()).collect();
            if !callback.starts_with("http://") || encoded.len() > 254 {
                return invalid(
                    "callback_url must be an http:// URL of at most 254 characters once URL-encoded"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// `[bridge_lease]`: one Kubernetes Lease (coordination.k8s.io/v1) per bridge, named
/// `<name_prefix>-<bridge name>`; its holder polls the bridge and keeps the callback registered,
/// the other replicas leave the bridge alone and only take its callbacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeLeaseConfig {
    /// This replica's name in `holderIdentity`: the pod name (downward API), unique per replica.
    pub identity: String,
    /// The namespace of the Leases: the pod's own (downward API).
    pub namespace: String,
    /// Lease names are this prefix, a dash and the bridge's name.
    pub name_prefix: String,
    /// `leaseDurationSeconds`: how long a holder that stopped renewing keeps the bridge; the
    /// longest time a bridge goes unpolled after its poller dies.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// How often the holder renews, and how often the others look whether the Lease expired.
    /// A holder that cannot renew stops polling this long before its Lease expires, so that its
    /// last request is over before another replica may start.
    #[serde(with = "humantime_serde")]
    pub renew_period: Duration,
    /// The Kubernetes API server; unset: in-cluster (the pod's service account and
    /// `KUBERNETES_SERVICE_HOST`).
    pub api_url: Option<String>,
    /// PEM CA certificate(s) of `api_url`; unset: the in-cluster CA, or the system's roots.
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token for `api_url` (read at start-up, trailing newline
    /// ignored); unset: the in-cluster service-account token, re-read as it rotates.
    pub token_file: Option<PathBuf>,
    /// Time one request to the Kubernetes API may take; a slower one counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for BridgeLeaseConfig {
    fn default() -> Self {
        Self {
            identity: String::new(),
            namespace: String::new(),
            name_prefix: "nuki-exporter-bridge".into(),
            duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
            api_url: None,
            ca_file: None,
            token_file: None,
            timeout: Duration::from_secs(4),
        }
    }
}

impl BridgeLeaseConfig {
    /// The name of the Lease of the bridge called `bridge`.
    pub fn lease_name(&self, bridge: &str) -> String {
        format!("{}-{bridge}", self.name_prefix)
    }

    fn validate(&self, bridges: &[BridgeConfig]) -> Result<(), ConfigError> {
        let key_error = |key, reason: String| Err(ConfigError::Key { key, reason });
        if self.identity.is_empty() {
            return key_error(
                "bridge_lease.identity",
                "must be set, to the pod name (NUKI_EXPORTER_BRIDGE_LEASE__IDENTITY from the downward API)".into(),
            );
        }
        if !is_dns_subdomain(&self.namespace) {
            return key_error(
                "bridge_lease.namespace",
                "must be the pod's namespace (NUKI_EXPORTER_BRIDGE_LEASE__NAMESPACE from the downward API)".into(),
            );
        }
        if self.duration < Duration::from_secs(2) || self.duration.subsec_nanos() != 0 {
            return key_error(
                "bridge_lease.duration",
                "must be whole seconds, at least 2s (leaseDurationSeconds)".into(),
            );
        }
        if self.renew_period.is_zero() || self.renew_period * 2 > self.duration {
            return key_error(
                "bridge_lease.renew_period",
                "must be longer than 0s and at most half of bridge_lease.duration".into(),
            );
        }
        if self.timeout.is_zero() || self.timeout > self.renew_period {
            return key_error(
                "bridge_lease.timeout",
                "must be longer than 0s and at most bridge_lease.renew_period".into(),
            );
        }
        let scheme_ok = |url: &String| url.starts_with("https://") || url.starts_with("http://");
        if !self.api_url.iter().all(scheme_ok) {
            return key_error(
                "bridge_lease.api_url",
                "must be an http:// or https:// URL".into(),
            );
        }
        for bridge in bridges {
            if !is_dns_subdomain(&self.lease_name(&bridge.name)) {
                return Err(ConfigError::Bridge {
                    bridge: bridge.name.clone(),
                    reason: format!(
                        "with [bridge_lease], the name must make a valid Lease name ({:?} is not: lower-case letters, digits, '-' and '.', at most 253 characters)",
                        self.lease_name(&bridge.name)
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A Kubernetes object name (RFC 1123 subdomain): lower-case alphanumerics, '-' and '.',
/// starting and ending alphanumeric, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
        && name
            .chars()
            .all(|c| alphanumeric(c) || c == '-' || c == '.')
}

/// The Nuki Web API source: polled only when `token_file` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding a Nuki Web API token (API token or OAuth access token); unset: no polling.
    pub token_file: Option<PathBuf>,
    /// Base URL of the Web API.
    pub url: String,
    /// Accept an `http://` url, which sends the token in clear text: only for a local
    /// stand-in (tests, the demo), never for Nuki itself.
    pub allow_insecure_http: bool,
    /// Time between two polls of `GET /smartlock`, and of delivery health.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time one request may take, connecting included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The Advanced API key whose webhook delivery health is watched; unset: not watched.
    pub advanced_key_id: Option<u32>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            url: "https://api.nuki.io".into(),
            allow_insecure_http: false,
            poll_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            advanced_key_id: None,
        }
    }
}

impl ForwardConfig {
    /// The application's URL, when one is configured and usable.
    pub fn upstream(&self) -> Result<Option<hyper::Uri>, ConfigError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Key {
            key: "forward.url",
            reason,
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(format!(
                "{url:?} must be an http:// or https:// URL with a host"
            )));
        }
        Ok(Some(uri))
    }
}

/// Last-known lock state kept across restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The state file; unset: nothing is kept.
    pub file: Option<PathBuf>,
    /// Time between two writes of the state file (it is also written at shutdown).
    #[serde(with = "humantime_serde")]
    pub write_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            file: None,
            write_interval: Duration::from_secs(15),
        }
    }
}

/// A token file that cannot be used; names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("api.token_file: {path}: {reason}")]
pub struct TokenError {
    pub path: PathBuf,
    pub reason: String,
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
    #[error("bridges (name {bridge:?}): {reason}")]
    Bridge { bridge: String, reason: String },
    #[error("bridges (name {bridge:?}) token_file: cannot read {path}: {reason}")]
    BridgeTokenFile {
        bridge: String,
        path: PathBuf,
        reason: String,
    },
    #[error(transparent)]
    ApiToken(#[from] TokenError),
}

impl Config {
    /// Loads defaults, then the TOML file if given, then the environment; validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let config: Config = Self::layers(file, env)?
            .extract()
            .map_err(|e| ConfigError::Invalid(one_line(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The layers [`Config::load`] reads, each value tagged with where it came from.
    pub fn sources(file: Option<&Path>) -> Result<Figment, ConfigError> {
        Self::layers(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn layers(file: Option<&Path>, env: Env) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment treats a missing file as empty; a named file must exist and be readable.
            std::fs::read(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment.merge(env.filter(|key| !is_service_link(key.as_str()))))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let key_error = |key, reason: &str| ConfigError::Key {
            key,
            reason: reason.to_owned(),
        };
        if !self.webhook.path.starts_with('/') {
            return Err(key_error("webhook.path", "must start with '/'"));
        }
        if !matchable_path(&self.webhook.path) {
            return Err(key_error(
                "webhook.path",
                "can never match a request: use a plain URL path, without '?', '#', spaces or other characters a URL must escape",
            ));
        }
        if [
            "/metrics",
            "/",
            "/-/healthy",
            "/-/ready",
            BRIDGE_CALLBACK_PATH,
        ]
        .contains(&self.webhook.path.as_str())
        {
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
        if !(self.api.url.starts_with("https://") || self.api.url.starts_with("http://"))
            || self.api.url.parse::<hyper::Uri>().is_err()
        {
            return Err(key_error("api.url", "must be an http:// or https:// URL"));
        }
        if self.api.url.starts_with("http://") && !self.api.allow_insecure_http {
            return Err(key_error(
                "api.allow_insecure_http",
                "api.url is http://, which sends the Web API token in clear text: use https://, or set api.allow_insecure_http = true for a local stand-in",
            ));
        }
        if self.api.poll_interval.is_zero() {
            return Err(key_error("api.poll_interval", "must be longer than 0s"));
        }
        if self.api.timeout.is_zero() {
            return Err(key_error("api.timeout", "must be longer than 0s"));
        }
        if self.api.advanced_key_id.is_some() && self.api.token_file.is_none() {
            return Err(key_error(
                "api.advanced_key_id",
                "needs api.token_file: delivery health is read from the Web API",
            ));
        }
        if self.state.write_interval.is_zero() {
            return Err(key_error("state.write_interval", "must be longer than 0s"));
        }
        self.forward.upstream()?;
        if self.forward.timeout.is_zero() {
            return Err(key_error("forward.timeout", "must be longer than 0s"));
        }
        validate_log_level(&self.log.level).map_err(|reason| key_error("log.level", &reason))?;
        for (index, bridge) in self.bridges.iter().enumerate() {
            bridge.validate()?;
            if self.bridges[..index].iter().any(|b| b.name == bridge.name) {
                return Err(ConfigError::Bridge {
                    bridge: bridge.name.clone(),
                    reason: "two bridges have this name".into(),
                });
            }
        }
        if let Some(lease) = &self.bridge_lease {
            lease.validate(&self.bridges)?;
        }
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
            let secret = crate::util::secret_file::read(path).map_err(|error| match error {
                crate::util::secret_file::SecretFileError::Empty => unreadable(
                    "the file is empty; an empty secret would accept forged webhooks".into(),
                ),
                error => unreadable(error.to_string()),
            })?;
            secrets.push(secret);
        }
        Ok(secrets)
    }
}

/// Whether a request path can equal `path`: hyper hands the handler the path as sent, so it
/// must be a valid URL path that has no query or fragment.
fn matchable_path(path: &str) -> bool {
    path.parse::<hyper::http::uri::PathAndQuery>()
        .is_ok_and(|parsed| parsed.as_str() == path && parsed.query().is_none())
        && !path.contains('#')
}

/// A `tracing` filter reads a bare word as a target name (`warning` enables every level of a
/// target called "warning", and so silences every line of the exporter): a bare word must be a
/// level; anything else needs the `target=level` form.
fn validate_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    for directive in level.split(',').map(str::trim) {
        let bare_word = !directive.contains(['=', '[', ':']);
        if bare_word && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(format!(
                "{directive:?} is not a level: use one of {} or target=level directives",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether an environment variable (after the `NUKI_EXPORTER_` prefix) is one Kubernetes
/// injects for a Service whose name starts with `nuki-exporter`: `SERVICE_HOST`,
/// `SERVICE_PORT[_NAME]`, `PORT`, `PORT_10180_TCP[_ADDR|_PORT|_PROTO]`, each possibly after the
/// rest of the Service's name (`METRICS_SERVICE_HOST` for `nuki-exporter-metrics`). Every
/// configuration key has a `__`, which Kubernetes cannot produce, so these are never keys.
fn is_service_link(key: &str) -> bool {
    // figment has already turned `__` into `.` when the filter runs.
    if key.contains("__") || key.contains('.') {
        return false;
    }
    let words: Vec<String> = key.split('_').map(str::to_ascii_uppercase).collect();
    let is_link_tail = |tail: &[String]| match tail {
        [service, host] => service == "SERVICE" && host == "HOST",
        [service, port, ..] if service == "SERVICE" => port == "PORT",
        [port] => port == "PORT",
        [port, number, protocol, rest @ ..] => {
            port == "PORT"
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && ["TCP", "UDP", "SCTP"].contains(&protocol.as_str())
                && match rest {
                    [] => true,
                    [field] => ["ADDR", "PORT", "PROTO"].contains(&field.as_str()),
                    _ => false,
                }
        }
        _ => false,
    };
    (0..words.len()).any(|start| is_link_tail(&words[start..]))
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
            let kind = readable(&without_snippets(&e.kind.to_string()));
            if key.is_empty() {
                format!("{kind}{origin}")
            } else {
                format!("key {key}: {kind}{origin}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// serde's words for what a key takes, in the words of the documentation: Rust type names
/// become what to write, a list of choices loses its doubled backticks, and an address that is
/// not `IP:port` says so.
fn readable(kind: &str) -> String {
    const WHOLE_NUMBER: &str = "expected a whole number of 0 or more";
    let mut text = kind.to_owned();
    for rust_type in ["usize", "u64", "u32", "u16", "u8"] {
        text = text.replace(&format!("expected {rust_type}"), WHOLE_NUMBER);
    }
    // figment quotes a list of variants as a whole: ``text` or `json``.
    text = text.replace("``", "`");
    if text.contains("socket address") {
        text.push_str(
            ": expected IP:port, such as 0.0.0.0:10180 or 127.0.0.1:10180 (an IP address: a host name such as localhost is not accepted)",
        );
    }
    text
}

/// A TOML syntax error quotes the offending line under a gutter (`1 | [webhook`, `  |    ^`);
/// the position and the explanation are kept, on one line.
fn without_snippets(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            let gutter = line.trim_start_matches(|c: char| c.is_ascii_digit());
            !line.is_empty() && !gutter.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The error of a configuration file that sets `key` (in `[section]`) to `value` (TOML).
    fn error_of(section: &str, key: &str, value: &str) -> String {
        load_toml(&format!("[{section}]\n{key} = {value}\n"))
            .expect_err("an invalid value")
            .to_string()
    }

    #[test]
    fn errors_say_what_to_write_not_the_rust_type() {
        let number = error_of("limits", "max_body_bytes", "\"lots\"");
        assert!(
            number.contains("expected a whole number of 0 or more"),
            "{number}"
        );
        assert!(!number.contains("usize"), "{number}");
        let negative = error_of("limits", "max_body_bytes", "-1");
        assert!(
            negative.contains("expected a whole number of 0 or more"),
            "{negative}"
        );
        let choice = error_of("log", "format", "\"xml\"");
        assert!(
            choice.contains("found `xml`, expected `text` or `json` ("),
            "{choice}"
        );
        assert!(!choice.contains("``"), "{choice}");
        let host = error_of("webhook", "listen", "\"localhost:10180\"");
        assert!(
            host.contains("an IP address: a host name such as localhost is not accepted"),
            "{host}"
        );
    }

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
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn kubernetes_service_variables_are_not_keys() {
        figment::Jail::expect_with(|jail| {
            for (key, value) in [
                ("NUKI_EXPORTER_SERVICE_HOST", "10.96.0.12"),
                ("NUKI_EXPORTER_SERVICE_PORT", "10180"),
                ("NUKI_EXPORTER_SERVICE_PORT_WEBHOOK", "10180"),
                ("NUKI_EXPORTER_PORT", "tcp://10.96.0.12:10180"),
                ("NUKI_EXPORTER_PORT_10180_TCP", "tcp://10.96.0.12:10180"),
                ("NUKI_EXPORTER_PORT_10180_TCP_PROTO", "tcp"),
                ("NUKI_EXPORTER_PORT_10180_TCP_PORT", "10180"),
                ("NUKI_EXPORTER_PORT_10180_TCP_ADDR", "10.96.0.12"),
                ("NUKI_EXPORTER_METRICS_SERVICE_HOST", "10.96.0.13"),
                ("NUKI_EXPORTER_METRICS_PORT_10181_TCP_ADDR", "10.96.0.13"),
                ("NUKI_EXPORTER_WEBHOOK__PATH", "/nuki"),
            ] {
                jail.set_env(key, value);
            }
            let config = Config::load(None).unwrap();
            assert_eq!(config.webhook.path, "/nuki");
            // A key with one underscore where two belong is still a typo, not a service link.
            jail.set_env("NUKI_EXPORTER_WEBHOOK_LISTEN", "0.0.0.0:1");
            let typo = Config::load(None).unwrap_err().to_string();
            assert!(typo.contains("NUKI_EXPORTER_WEBHOOK_LISTEN"), "{typo}");
            Ok(())
        });
    }

    #[test]
    fn service_link_shapes() {
        for link in ["PORT_53_UDP", "SERVICE_PORT", "A_B_PORT_1_SCTP_PROTO"] {
            assert!(is_service_link(link), "{link}");
        }
        for key in [
            "PORTS",
            "PORT_X_TCP",
            "PORT_1_TCP_HOST",
            "SERVICE",
            "WEBHOOK.PORT",
            "LOG",
        ] {
            assert!(!is_service_link(key), "{key}");
        }
    }

    #[test]
    fn log_levels_must_be_levels_or_target_directives() {
        for level in ["warning", "inf", "info,warning"] {
            let error = load_toml(&format!("[log]\nlevel = \"{level}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("log.level"), "{error}");
            assert!(error.contains("is not a level"), "{error}");
        }
        for level in [
            "WARN",
            "off",
            "info,nuki_exporter=debug",
            "hyper[conn]=trace",
        ] {
            load_toml(&format!("[log]\nlevel = \"{level}\"\n"))
                .unwrap_or_else(|e| panic!("{level}: {e}"));
        }
    }

    #[test]
    fn webhook_paths_that_never_match_are_refused() {
        for path in ["/webhook?key=1", "/web#hook", "/web hook", "/webhook\\t"] {
            let error = load_toml(&format!("[webhook]\npath = \"{path}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("can never match"), "{path}: {error}");
        }
        let config = load_toml("[webhook]\npath = \"/nuki/hooks-1.0/%41\"\n").unwrap();
        assert_eq!(config.webhook.path, "/nuki/hooks-1.0/%41");
    }

    #[test]
    fn toml_syntax_errors_and_unreadable_files_are_one_line() {
        let syntax = load_toml("[webhook\nlisten = 1\n").unwrap_err().to_string();
        assert!(!syntax.contains('\n'), "{syntax}");
        assert!(syntax.contains("line 1"), "{syntax}");
        assert!(syntax.contains("invalid table header"), "{syntax}");
        let dir = tempfile::tempdir().unwrap();
        let error = Config::load_from(
            Some(dir.path()),
            Env::prefixed("NUKI_EXPORTER_TEST_UNUSED_"),
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains('\n'), "{error}");
        assert!(
            error.starts_with(&format!("configuration file {}:", dir.path().display())),
            "{error}"
        );
    }

    #[test]
    fn forward_url_must_be_an_http_or_https_url() {
        let config = load_toml("[forward]\nurl = \"https://app.internal:8443/nuki\"\n").unwrap();
        let upstream = config.forward.upstream().unwrap().unwrap();
        assert_eq!(upstream.host(), Some("app.internal"));
        assert_eq!(config.forward.timeout, Duration::from_secs(10));
        for url in ["127.0.0.1:8080", "ftp://app/x", "http://", "/nuki"] {
            let error = load_toml(&format!("[forward]\nurl = \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("forward.url"), "{url}: {error}");
        }
        let zero = load_toml("[forward]\ntimeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(zero.contains("forward.timeout"), "{zero}");
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
    fn bridges_are_tables_with_defaults_and_named_errors() {
        let config = load_toml(
            "[[bridges]]\nname = \"hall\"\nurl = \"http://192.168.1.20:8080\"\ntoken_file = \"/run/secrets/bridge\"\n\n[[bridges]]\nname = \"garage\"\nurl = \"http://bridge.lan:8080\"\ntoken_file = \"t\"\ntoken_mode = \"hashed\"\npoll_interval = \"1m\"\ncallback_url = \"http://192.168.1.5:10180/bridge/callback\"\n",
        )
        .unwrap();
        assert_eq!(
            config.bridges[0],
            BridgeConfig::new(
                "hall",
                "http://192.168.1.20:8080",
                PathBuf::from("/run/secrets/bridge")
            )
        );
        assert_eq!(config.bridges[0].poll_interval, Duration::from_secs(30));
        assert_eq!(config.bridges[0].token_mode, TokenMode::Auto);
        assert_eq!(config.bridges[1].token_mode, TokenMode::Hashed);
        assert_eq!(config.bridges[1].poll_interval, Duration::from_secs(60));

        let bridge = "[[bridges]]\nname = \"hall\"\ntoken_file = \"t\"\n";
        let refused = |extra: &str| {
            load_toml(&format!("{bridge}{extra}"))
                .unwrap_err()
                .to_string()
        };
        let unknown = refused("url = \"http://b:8080\"\ntoken = \"x\"\n");
        assert!(unknown.contains("token"), "{unknown}");
        let https = refused("url = \"https://b:8080\"\n");
        assert!(
            https.contains("hall") && https.contains("http://"),
            "{https}"
        );
        let mode = refused("url = \"http://b:8080\"\ntoken_mode = \"clear\"\n");
        assert!(mode.contains("token_mode"), "{mode}");
        let callback = refused("url = \"http://b:8080\"\ncallback_url = \"https://me/cb\"\n");
        assert!(callback.contains("callback_url"), "{callback}");
        let twice = load_toml(&format!(
            "{bridge}url = \"http://a:8080\"\n{bridge}url = \"http://b:8080\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(twice.contains("two bridges"), "{twice}");
        let path = load_toml("[webhook]\npath = \"/bridge/callback\"\n").unwrap_err();
        assert!(path.to_string().contains("webhook.path"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn bridges_can_come_from_the_environment_as_inline_tables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "NUKI_EXPORTER_BRIDGES",
                r#"[{name="demo",url="http://demo:8080",token_file="/run/secrets/t",poll_interval="15s"}]"#,
            );
            let config = Config::load(None).unwrap();
            let mut expected =
                BridgeConfig::new("demo", "http://demo:8080", PathBuf::from("/run/secrets/t"));
            expected.poll_interval = Duration::from_secs(15);
            assert_eq!(config.bridges, [expected]);
            Ok(())
        });
    }

    #[test]
    fn bridge_tokens_are_read_from_files_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        let bridge = BridgeConfig::new("hall", "http://b:8080", file.clone());
        assert_eq!(bridge.read_token().unwrap(), "abc123");
        std::fs::write(&file, "\n").unwrap();
        let empty = bridge.read_token().unwrap_err().to_string();
        assert!(empty.contains("hall") && empty.contains("empty"), "{empty}");
        let missing = BridgeConfig::new("hall", "http://b:8080", dir.path().join("missing"));
        assert!(
            missing
                .read_token()
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn api_and_state_keys_load_and_are_checked() {
        let config = load_toml(
            "[api]\ntoken_file = \"/run/secrets/nuki_api_token\"\npoll_interval = \"30s\"\nadvanced_key_id = 12\n[state]\nfile = \"/var/lib/nuki-exporter/state.json\"\n",
        )
        .unwrap();
        assert_eq!(config.api.url, "https://api.nuki.io");
        assert_eq!(config.api.poll_interval, Duration::from_secs(30));
        assert_eq!(config.api.advanced_key_id, Some(12));
        assert_eq!(
            config.state.file.as_deref(),
            Some(Path::new("/var/lib/nuki-exporter/state.json"))
        );
        let url = load_toml("[api]\nurl = \"api.nuki.io\"\n")
            .unwrap_err()
            .to_string();
        assert!(url.contains("api.url"), "{url}");
        let orphan = load_toml("[api]\nadvanced_key_id = 3\n")
            .unwrap_err()
            .to_string();
        assert!(orphan.contains("api.token_file"), "{orphan}");
        let unknown = load_toml("[api]\ntoken = \"x\"\n").unwrap_err().to_string();
        assert!(unknown.contains("token"), "{unknown}");
    }

    #[test]
    fn cleartext_api_url_needs_the_explicit_flag() {
        let refused = load_toml("[api]\nurl = \"http://nuki.internal:8080\"\n")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("api.allow_insecure_http"), "{refused}");
        assert!(refused.contains("clear text"), "{refused}");
        assert!(!refused.contains('\n'), "{refused}");
        let allowed =
            load_toml("[api]\nurl = \"http://nuki.internal:8080\"\nallow_insecure_http = true\n")
                .unwrap();
        assert!(allowed.api.allow_insecure_http);
        assert!(!Config::default().api.allow_insecure_http);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn bridge_lease_comes_from_the_downward_api_and_names_a_lease_per_bridge() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[[bridges]]\nname = \"hall\"\nurl = \"http://b:8080\"\ntoken_file = \"t\"\n",
            )?;
            let config = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(config.bridge_lease, None, "no section: one process polls");
            jail.set_env("NUKI_EXPORTER_BRIDGE_LEASE__IDENTITY", "nuki-exporter-1");
            let missing = Config::load(Some(Path::new("c.toml"))).unwrap_err();
            assert!(
                missing.to_string().contains("bridge_lease.namespace"),
                "{missing}"
            );
            jail.set_env("NUKI_EXPORTER_BRIDGE_LEASE__NAMESPACE", "monitoring");
            let lease = Config::load(Some(Path::new("c.toml")))
                .unwrap()
                .bridge_lease
                .unwrap();
            assert_eq!(lease.identity, "nuki-exporter-1");
            assert_eq!(lease.duration, Duration::from_secs(15));
            assert_eq!(lease.renew_period, Duration::from_secs(5));
            assert_eq!(lease.api_url, None, "in-cluster by default");
            assert_eq!(lease.lease_name("hall"), "nuki-exporter-bridge-hall");
            Ok(())
        });
    }

    #[test]
    fn bridge_lease_timings_and_lease_names_are_checked() {
        let section = |extra: &str| {
            let namespace = if extra.contains("namespace") {
                ""
            } else {
                "namespace = \"ns\"\n"
            };
            format!("[bridge_lease]\nidentity = \"p-0\"\n{namespace}{extra}")
        };
        for (extra, key) in [
            ("duration = \"1s\"\n", "bridge_lease.duration"),
            ("duration = \"2500ms\"\n", "bridge_lease.duration"),
            ("renew_period = \"10s\"\n", "bridge_lease.renew_period"),
            ("renew_period = \"0s\"\n", "bridge_lease.renew_period"),
            ("timeout = \"6s\"\n", "bridge_lease.timeout"),
            ("api_url = \"kubernetes:443\"\n", "bridge_lease.api_url"),
            (
                "namespace = \"Not_A_Namespace\"\n",
                "bridge_lease.namespace",
            ),
        ] {
            let error = load_toml(&section(extra)).unwrap_err().to_string();
            assert!(error.contains(key), "{extra}: {error}");
        }
        let identity = load_toml("[bridge_lease]\nnamespace = \"ns\"\n")
            .unwrap_err()
            .to_string();
        assert!(identity.contains("bridge_lease.identity"), "{identity}");
        let bridge = load_toml(&section(
            "[[bridges]]\nname = \"Hall_1\"\nurl = \"http://b:8080\"\ntoken_file = \"t\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            bridge.contains("Hall_1") && bridge.contains("Lease name"),
            "{bridge}"
        );
        load_toml(&section(
            "duration = \"10s\"\nrenew_period = \"5s\"\ntimeout = \"5s\"\n",
        ))
        .unwrap();
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut config = Config::default();
        config.webhook.secrets = vec!["hunter2".into()];
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}

//! `nuki-exporter doctor`: walks the path a webhook takes, hop by hop, and says which one fails
//! and what to do about it: the configuration, the webhook secret, the Web API token and its
//! scopes, Nuki's delivery status and recent log for the key, a signed test webhook through the
//! public URL, the Nuki Bridges, and the listeners of a running exporter (with the metrics auth).
//!
//! Every check is one [`Check`]; a hop that cannot be checked without an earlier one is skipped
//! with the reason. Nothing here changes anything at Nuki or at a bridge: the Web API and the
//! bridges are only read, and the test webhook is one the exporter counts and otherwise ignores.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use serde::Deserialize;

use crate::Config;
use crate::config::BridgeConfig;
use crate::http::metrics_auth::MetricsGuard;
use crate::source::bridge::client::{BridgeClient, Endpoint as BridgeEndpoint};
use crate::source::bridge::metrics::BridgeMetrics;
use crate::source::web_api::client::{ApiError, NukiApi};
use crate::source::web_api::metrics::Endpoint;
use crate::source::webhook::signature;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Works, but something is off or cannot be known.
    Warn,
    /// This hop is broken: webhooks or metrics are lost here.
    Fail,
    /// Not checked: not configured, or an earlier hop failed.
    Skip,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One hop's result: what was found and, unless it is fine, what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub hop: &'static str,
    pub outcome: Outcome,
    pub found: String,
    pub todo: Option<String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4}  {:<18} {}",
            self.outcome.word(),
            self.hop,
            self.found
        )?;
        match &self.todo {
            Some(todo) => write!(f, " → {todo}"),
            None => Ok(()),
        }
    }
}

fn check(hop: &'static str, outcome: Outcome, found: impl Into<String>) -> Check {
    Check {
        hop,
        outcome,
        found: found.into(),
        todo: None,
    }
}

impl Check {
    fn todo(mut self, todo: impl Into<String>) -> Self {
        self.todo = Some(todo.into());
        self
    }
}

/// What the doctor is told besides the configuration.
#[derive(Clone, Debug, Default)]
pub struct DoctorOptions {
    /// The webhook URL as Nuki reaches it (through the TLS front): a signed test webhook is
    /// sent there.
    pub public_url: Option<String>,
}

/// How long each probe of a listener, a bridge or the public URL may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries of Nuki's webhook log that are looked at.
const RECENT_DELIVERIES: usize = 20;

/// Runs every check, in the order of the path.
pub async fn run(config_file: Option<&Path>, options: &DoctorOptions) -> Vec<Check> {
    let config = match Config::load(config_file) {
        Ok(config) => config,
        Err(error) => {
            return vec![
                check("configuration", Outcome::Fail, error.to_string())
                    .todo("fix the key or file it names; nothing else can be checked before"),
            ];
        }
    };
    let mut checks = vec![check(
        "configuration",
        Outcome::Ok,
        match config_file {
            Some(file) => format!("{} and the environment load", file.display()),
            None => "built-in defaults and the environment load".to_owned(),
        },
    )];
    let secrets = secret(&config, &mut checks);
    web_api(&config, &mut checks).await;
    checks.push(public_url(options.public_url.as_deref(), &secrets).await);
    for bridge in &config.bridges {
        checks.push(bridge_check(bridge).await);
    }
    checks.extend(listeners(&config).await);
    checks
}

/// The webhook secrets; an empty list when there are none or they cannot be read.
fn secret(config: &Config, checks: &mut Vec<Check>) -> Vec<Vec<u8>> {
    match config.read_secrets() {
        Ok(secrets) if secrets.is_empty() => {
            checks.push(
                check(
                    "webhook secret",
                    Outcome::Warn,
                    "none: webhooks are accepted unsigned",
                )
                .todo(
                    "set webhook.secret_files to the file `nuki-exporter webhook register` wrote",
                ),
            );
            secrets
        }
        Ok(secrets) => {
            checks.push(check(
                "webhook secret",
                Outcome::Ok,
                format!("{} secret(s) read", secrets.len()),
            ));
            secrets
        }
        Err(error) => {
            checks.push(check("webhook secret", Outcome::Fail, error.to_string()).todo(
                "make the file readable by the exporter's user and non-empty; it holds the secret Nuki returned",
            ));
            Vec::new()
        }
    }
}

/// The token, its scopes (each endpoint the exporter uses, asked once), delivery health.
async fn web_api(config: &Config, checks: &mut Vec<Check>) {
    let Some(token_file) = &config.api.token_file else {
        checks.push(
            check(
                "web api token",
                Outcome::Skip,
                "api.token_file unset: no polling, webhooks only",
            )
            .todo("set api.token_file to see the whole fleet and Nuki's delivery status"),
        );
        return;
    };
    let api = match NukiApi::new(&config.api, token_file, None) {
        Ok(api) => api,
        Err(error) => {
            checks.push(
                check("web api token", Outcome::Fail, error.to_string())
                    .todo("put the token from Nuki Web (API → Generate API token) into that file"),
            );
            return;
        }
    };
    match api.get(Endpoint::Smartlocks, "/smartlock").await {
        Ok(body) => {
            let locks = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
                .map(|locks| format!("{} lock(s) listed", locks.len()))
                .unwrap_or_else(|error| format!("listed, but not as documented: {error}"));
            checks.push(check(
                "web api token",
                Outcome::Ok,
                format!("GET /smartlock: {locks}"),
            ));
        }
        Err(error) => {
            checks.push(api_failure(
                "web api token",
                &config.api.url,
                &error,
                "smartlock.readOnly",
            ));
            return;
        }
    }
    checks.push(
        match api
            .get(Endpoint::DecentralWebhooks, "/api/decentralWebhook")
            .await
        {
            Ok(body) => {
                let count = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
                    .map(|hooks| hooks.len())
                    .unwrap_or_default();
                check(
                    "webhook scope",
                    Outcome::Ok,
                    format!("{count} decentral webhook(s) registered"),
                )
            }
            Err(error) => {
                let failed = api_failure(
                    "webhook scope",
                    &config.api.url,
                    &error,
                    "webhook.decentral",
                );
                // Central webhooks of an Advanced API key need no such scope.
                Check {
                    outcome: Outcome::Warn,
                    ..failed
                }
            }
        },
    );
    match config.api.advanced_key_id {
        Some(key) => checks.push(delivery(&api, &config.api.url, key).await),
        None => checks.push(
            check(
                "webhook delivery",
                Outcome::Skip,
                "api.advanced_key_id unset",
            )
            .todo("set it (GET /api/key lists it) to learn when Nuki stops delivering"),
        ),
    }
}

/// A failed Web API request as a check: which URL, and what the status means.
fn api_failure(hop: &'static str, url: &str, error: &ApiError, scope: &str) -> Check {
    let failed = check(hop, Outcome::Fail, error.to_string());
    match error {
        ApiError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED => failed.todo(
            "Nuki refused the token: it is wrong or expired; make a new one in Nuki Web (API) and put it into api.token_file",
        ),
        ApiError::Status { status, .. } if *status == StatusCode::FORBIDDEN => failed.todo(format!(
            "the token lacks the `{scope}` scope: make a token with it (for webhook.decentral: an OAuth token of an Advanced API key)"
        )),
        ApiError::Unreachable { .. } | ApiError::Timeout { .. } => failed.todo(format!(
            "check DNS, proxy and firewall from this host to {url} (api.url)"
        )),
        _ => failed.todo(format!("check api.url ({url}): is it the Nuki Web API?")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdvancedKey {
    webhook_status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    #[serde(default)]
    succeeded: bool,
    response_status: Option<u16>,
}

/// Nuki's delivery status of the key and what its recent deliveries got back.
async fn delivery(api: &NukiApi, url: &str, key: u32) -> Check {
    const HOP: &str = "webhook delivery";
    let status = match api
        .get(Endpoint::AdvancedKey, &format!("/api/key/{key}/advanced"))
        .await
    {
        Ok(body) => serde_json::from_slice::<AdvancedKey>(&body)
            .ok()
            .and_then(|key| key.webhook_status)
            .unwrap_or_else(|| "not reported".to_owned()),
        Err(error) => return api_failure(HOP, url, &error, "webhook.central"),
    };
    let path = format!("/api/key/{key}/webhook/logs?limit={RECENT_DELIVERIES}");
    let recent = match api.get(Endpoint::WebhookLogs, &path).await {
        Ok(body) => serde_json::from_slice::<Vec<Delivery>>(&body).unwrap_or_default(),
        Err(error) => return api_failure(HOP, url, &error, "webhook.central"),
    };
    let failed: Vec<&Delivery> = recent.iter().filter(|d| !d.succeeded).collect();
    let found = format!(
        "key {key}: {status}; {} of the last {} deliveries failed{}",
        failed.len(),
        recent.len(),
        failed
            .first()
            .map(|last| format!(
                ", the latest answered {}",
                last.response_status
                    .map_or("nothing".to_owned(), |status| status.to_string())
            ))
            .unwrap_or_default()
    );
    if status == "DEACTIVATED" {
        return check(HOP, Outcome::Fail, found).todo(format!(
            "Nuki stopped delivering: fix the endpoint (see the failures), then reactivate: POST /api/key/{key}/advanced/reactivate or Nuki Web"
        ));
    }
    match failed.first().map(|last| last.response_status) {
        None => check(HOP, Outcome::Ok, found),
        Some(Some(401)) => check(HOP, Outcome::Warn, found)
            .todo("401: Nuki signs with a secret the exporter does not have; set webhook.secret_files to it"),
        Some(Some(_)) => check(HOP, Outcome::Warn, found)
            .todo("your endpoint (the exporter or its proxy) answered an error: see their logs"),
        Some(None) => check(HOP, Outcome::Warn, found)
            .todo("Nuki could not reach your endpoint: DNS, TLS certificate, firewall, the proxy"),
    }
}

/// A signed test webhook through the public URL, as Nuki would send it.
async fn public_url(url: Option<&str>, secrets: &[Vec<u8>]) -> Check {
    const HOP: &str = "public url";
    let Some(url) = url else {
        return check(HOP, Outcome::Skip, "no --public-url given")
            .todo("pass the URL registered with Nuki to send a signed test webhook through it");
    };
    // An object of no known kind: counted as source="unknown", changes no lock.
    let body = br#"{"nukiExporterDoctor":"test webhook"}"#;
    let mut request = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(secret) = secrets.first() {
        request = request.header(signature::HEADER, signature::sign(secret, body));
    }
    let request = match request.body(Full::new(Bytes::from_static(body))) {
        Ok(request) => request,
        Err(error) => {
            return check(HOP, Outcome::Fail, format!("{url}: {error}"))
                .todo("give a full https:// URL");
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(crate::util::client::webpki_https())
            .request(request)).await {
        Err(_) => check(HOP, Outcome::Fail, format!("{url}: no answer within {PROBE_TIMEOUT:?}"))
            .todo("the proxy or load balancer in front of the exporter does not pass it on"),
        Ok(Err(error)) => check(HOP, Outcome::Fail, format!("{url}: {error}"))
            .todo("DNS, TLS certificate, firewall or the proxy in front of the exporter"),
        Ok(Ok(response)) => match response.status() {
            status if status.is_success() => {
                check(HOP, Outcome::Ok, format!("{url}: a signed test webhook got {status}"))
            }
            StatusCode::UNAUTHORIZED => check(HOP, Outcome::Fail, format!("{url}: 401, the signature was refused"))
                .todo("the exporter behind this URL has other secrets than this configuration: give both the same webhook.secret_files"),
            status => check(HOP, Outcome::Fail, format!("{url}: answered {status}"))
                .todo("the URL does not end at the exporter's webhook.path, or its proxy failed"),
        },
    }
}

/// A bridge's `/info`, asked the way the poller asks it.
async fn bridge_check(bridge: &BridgeConfig) -> Check {
    const HOP: &str = "bridge";
    let name = &bridge.name;
    let token = match bridge.read_token() {
        Ok(token) => token,
        Err(error) => {
            return check(HOP, Outcome::Fail, format!("{name}: {error}"))
                .todo("put the bridge's token (Nuki app: Bridge → Manage → API) into token_file");
        }
    };
    let series = BridgeMetrics::new(&prometheus::Registry::new()).bridge(name);
    let client = BridgeClient::new(bridge, token, series);
    match client.get(BridgeEndpoint::Info, &[]).await {
        Ok(body) => {
            let connected = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|info| info["serverConnected"].as_bool());
            match connected {
                Some(false) => check(
                    HOP,
                    Outcome::Warn,
                    format!(
                        "{name} ({}): answers, but has no link to Nuki's servers",
                        bridge.url
                    ),
                )
                .todo("check the site's internet uplink; power-cycle the bridge"),
                _ => check(
                    HOP,
                    Outcome::Ok,
                    format!("{name} ({}): /info answered", bridge.url),
                ),
            }
        }
        Err(error) => {
            let todo = match &error {
                crate::source::bridge::client::BridgeError::Status(StatusCode::UNAUTHORIZED) => {
                    "the bridge refused the token: copy it again from the Nuki app (Bridge → Manage → API)".to_owned()
                }
                _ => format!(
                    "is the bridge powered and on the network, its HTTP API on (Nuki app), and {} reachable from this host?",
                    bridge.url
                ),
            };
            check(
                HOP,
                Outcome::Fail,
                format!("{name} ({}): {error}", bridge.url),
            )
            .todo(todo)
        }
    }
}

/// The metrics auth files, and the listeners of an exporter running with this configuration.
async fn listeners(config: &Config) -> Vec<Check> {
    let guard = match MetricsGuard::load(&config.metrics) {
        Ok(guard) => guard,
        Err(error) => {
            return vec![check("metrics auth", Outcome::Fail, error.to_string()).todo(
                "fix that file: Prometheus' web configuration format (`promtool check web-config` validates it)",
            )];
        }
    };
    let auth =
        config.metrics.web_config_file.is_some() || !config.metrics.bearer_token_files.is_empty();
    let mut checks = vec![check(
        "metrics auth",
        Outcome::Ok,
        if auth {
            "web configuration and tokens load"
        } else {
            "none configured: /metrics is open"
        },
    )];
    checks.push(
        probe(
            "webhook listener",
            reachable(config.webhook.listen),
            &config.webhook.path,
            false,
        )
        .await,
    );
    if guard.tls().is_some() {
        checks.push(
            check("metrics listener", Outcome::Skip, "TLS: not probed").todo(
                "curl --cacert <your CA> https://<host>/metrics with Prometheus' credentials",
            ),
        );
    } else {
        checks.push(
            probe(
                "metrics listener",
                reachable(config.metrics.listen),
                "/metrics",
                auth,
            )
            .await,
        );
    }
    checks
}

/// A listen address as a client on this host reaches it.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(
            if ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            },
            listen.port(),
        ),
        _ => listen,
    }
}

/// Asks `/-/ready`, and for the metrics listener `/metrics` without credentials.
async fn probe(hop: &'static str, address: SocketAddr, path: &str, auth: bool) -> Check {
    let client = crate::util::client::without_keep_alive();
    let get = |path: &str| {
        let request = hyper::Request::get(format!("http://{address}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("a request to a socket address");
        tokio::time::timeout(PROBE_TIMEOUT, client.request(request))
    };
    match get("/-/ready").await {
        Ok(Ok(response)) if response.status().is_success() => {}
        Ok(Ok(response)) => {
            return check(
                hop,
                Outcome::Fail,
                format!("{address}: /-/ready answered {}", response.status()),
            )
            .todo("the exporter is shutting down, or something else listens there");
        }
        Ok(Err(_)) | Err(_) => {
            return check(
                hop,
                Outcome::Warn,
                format!("no exporter answers at {address}"),
            )
            .todo("start it (the checks above hold for when it runs)");
        }
    }
    if !auth || path != "/metrics" {
        return check(hop, Outcome::Ok, format!("{address}: ready ({path})"));
    }
    match get(path).await {
        Ok(Ok(response)) if response.status() == StatusCode::UNAUTHORIZED => check(
            hop,
            Outcome::Ok,
            format!("{address}: ready; /metrics asks for credentials"),
        ),
        Ok(Ok(response)) => {
            let _ = response.into_body().collect().await;
            check(hop, Outcome::Fail, format!("{address}: /metrics served without credentials"))
                .todo("the running exporter does not use this configuration's metrics auth: restart it with it, or send SIGHUP")
        }
        Ok(Err(error)) => {
            check(hop, Outcome::Fail, format!("{address}: {error}")).todo("see the exporter's log")
        }
        Err(_) => check(
            hop,
            Outcome::Fail,
            format!("{address}: /metrics did not answer within {PROBE_TIMEOUT:?}"),
        )
        .todo("see the exporter's log"),
    }
}

/// Whether every check passed or only warned.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.outcome != Outcome::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_one_line_with_what_to_do() {
        let line = check(
            "bridge",
            Outcome::Fail,
            "hall (http://10.0.0.5:8080): cannot reach the bridge",
        )
        .todo("is it powered?")
        .to_string();
        assert_eq!(
            line,
            "FAIL  bridge             hall (http://10.0.0.5:8080): cannot reach the bridge → is it powered?"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:10181".parse().unwrap()).to_string(),
            "127.0.0.1:10181"
        );
        assert_eq!(
            reachable("[::]:10181".parse().unwrap()).to_string(),
            "[::1]:10181"
        );
        assert_eq!(
            reachable("10.0.0.2:10181".parse().unwrap()).to_string(),
            "10.0.0.2:10181"
        );
    }

    #[test]
    fn a_fail_fails_the_run_and_a_warning_does_not() {
        let warn = check("webhook secret", Outcome::Warn, "none");
        assert!(passed(std::slice::from_ref(&warn)));
        assert!(!passed(&[warn, check("bridge", Outcome::Fail, "down")]));
    }
}

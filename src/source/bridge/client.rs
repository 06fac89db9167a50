//! The HTTP client of one Nuki Bridge: strictly one request at a time, spaced by
//! `request_spacing`, a 503 ("another request already running") retried with exponential
//! backoff, and the token sent in the configured mode. It knows only the read-only endpoints
//! and the callback registration: never `/lockState`, which wakes the lock and drains its
//! batteries. The token never appears in a log line or an error.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{BridgeConfig, TokenMode};
use crate::source::bridge::metrics::BridgeSeries;
use crate::util::client::PlainClient;
use crate::util::error_chain;

/// Largest answer read from a bridge; `/list` of a full bridge is a few kilobytes.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Retries of a request the bridge answered 503 (busy with another client's request).
const BUSY_RETRIES: usize = 3;

/// What the exporter asks a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    List,
    Info,
    CallbackList,
    CallbackAdd,
    CallbackRemove,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::List => "/list",
            Self::Info => "/info",
            Self::CallbackList => "/callback/list",
            Self::CallbackAdd => "/callback/add",
            Self::CallbackRemove => "/callback/remove",
        }
    }

    /// The `endpoint` label of `nuki_bridge_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Info => "info",
            Self::CallbackList => "callback_list",
            Self::CallbackAdd => "callback_add",
            Self::CallbackRemove => "callback_remove",
        }
    }
}

/// A request that did not get a 200.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot reach the bridge: {0}")]
    Unreachable(String),
    #[error("the bridge did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the bridge answered {0}")]
    Status(StatusCode),
}

/// How the token goes into a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    Encrypted,
    Hashed,
    Plain,
}

/// The client of one bridge.
pub struct BridgeClient {
    name: String,
    base: String,
    token: String,
    mode: TokenMode,
    /// `token_mode = "auto"` and the bridge refused an encrypted token but took a hashed one:
    /// its firmware predates encrypted tokens, hashed ones are used from then on.
    encrypted_refused: AtomicBool,
    /// The next `rnr`: counted up from a random start, so that no (ts, rnr) pair repeats
    /// within a second, which the bridge would refuse as a replay.
    next_rnr: AtomicU16,
    http: PlainClient,
    spacing: Duration,
    timeout: Duration,
    series: BridgeSeries,
    /// Held for the whole of each request; holds when the previous one ended.
    turn: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for BridgeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeClient")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl BridgeClient {
    pub fn new(config: &BridgeConfig, token: String, series: BridgeSeries) -> Self {
        Self {
            name: config.name.clone(),
            base: config.url.trim_end_matches('/').to_owned(),
            token,
            mode: config.token_mode,
            encrypted_refused: AtomicBool::new(false),
            next_rnr: AtomicU16::new(rand::random()),
            http: crate::util::client::without_keep_alive(),
            spacing: config.request_spacing,
            timeout: config.timeout,
            series,
            turn: Mutex::new(None),
        }
    }

    /// GETs an endpoint with `params` (and the token); the body of a 200.
    pub async fn get(
        &self,
        endpoint: Endpoint,
        params: &[(&str, &str)],
    ) -> Result<Bytes, BridgeError> {
        let mut previous_end = self.turn.lock().await;
        // `request_spacing` doubled per retry, plus up to as much again of random jitter so
        // that several clients of one bridge do not retry in step.
        let mut busy_retries = ExponentialBuilder::new()
            .with_min_delay(self.spacing)
            .with_max_delay(self.spacing.saturating_mul(1 << BUSY_RETRIES))
            .with_jitter()
            .with_max_times(BUSY_RETRIES)
            .build();
        let mut credential = self.credential();
        loop {
            if let Some(end) = *previous_end {
                tokio::time::sleep_until(end + self.spacing).await;
            }
            let result = self.send(endpoint, params, credential).await;
            *previous_end = Some(Instant::now());
            let retry = match result {
                Err(BridgeError::Status(StatusCode::SERVICE_UNAVAILABLE)) => busy_retries.next(),
                _ => None,
            };
            if let Some(delay) = retry {
                tokio::time::sleep(delay).await;
                continue;
            }
            let auto_hashed = self.mode == TokenMode::Auto && credential == Credential::Hashed;
            match result {
                // Firmware before encrypted tokens, or a wrong token: a hashed one tells which.
                Err(BridgeError::Status(StatusCode::UNAUTHORIZED))
                    if self.mode == TokenMode::Auto && credential == Credential::Encrypted =>
                {
                    credential = Credential::Hashed;
                }
                Ok(body)
                    if auto_hashed && !self.encrypted_refused.swap(true, Ordering::Relaxed) =>
                {
                    tracing::info!(
                        bridge = %self.name,
                        "the bridge refuses encrypted tokens (firmware before 1.22.1 on a Bridge 1.0, 2.14.0 on a Bridge 2.0): using hashed tokens"
                    );
                    return Ok(body);
                }
                result => return result,
            }
        }
    }

    fn credential(&self) -> Credential {
        match self.mode {
            TokenMode::Auto if self.encrypted_refused.load(Ordering::Relaxed) => Credential::Hashed,
            TokenMode::Auto | TokenMode::Encrypted => Credential::Encrypted,
            TokenMode::Hashed => Credential::Hashed,
            TokenMode::Plain => Credential::Plain,
        }
    }

    async fn send(
        &self,
        endpoint: Endpoint,
        params: &[(&str, &str)],
        credential: Credential,
    ) -> Result<Bytes, BridgeError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .extend_pairs(auth_params(
                &self.token,
                credential,
                &timestamp(SystemTime::now()),
                self.next_rnr.fetch_add(1, Ordering::Relaxed),
                rand::random(),
            ))
            .finish();
        let uri: hyper::Uri = format!("{}{}?{}", self.base, endpoint.path(), query)
            .parse()
            .map_err(|_| BridgeError::Unreachable("the bridge url is not a valid URL".into()))?;
        let exchange = async {
            // The URL carries the token: errors describe the failure, never the URL (hyper's
            // own errors name none; a test reads every log line for the token).
            let response = self
                .http
                .get(uri)
                .await
                .map_err(|e| BridgeError::Unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| BridgeError::Unreachable(format!("reading the answer: {e}")));
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                self.series.request(endpoint.label(), None);
                Err(BridgeError::Timeout(self.timeout))
            }
            Ok(Err(error)) => {
                self.series.request(endpoint.label(), None);
                Err(error)
            }
            Ok(Ok((status, body))) => {
                self.series.request(endpoint.label(), Some(status.as_u16()));
                if status != StatusCode::OK {
                    return Err(BridgeError::Status(status));
                }
                Ok(body?.to_bytes())
            }
        }
    }
}

/// The bridge's timestamp format: UTC, `YYYY-MM-DDTHH:MM:SSZ`.
fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string()
}

/// The query parameters that carry the token.
fn auth_params(
    token: &str,
    credential: Credential,
    ts: &str,
    rnr: u16,
    nonce: [u8; 24],
) -> Vec<(&'static str, String)> {
    match credential {
        Credential::Plain => vec![("token", token.to_owned())],
        Credential::Hashed => vec![
            ("ts", ts.to_owned()),
            ("rnr", rnr.to_string()),
            ("hash", hashed_token(token, ts, rnr)),
        ],
        Credential::Encrypted => vec![
            ("ctoken", encrypted_token(token, ts, rnr, &nonce)),
            ("nonce", hex::encode(nonce)),
        ],
    }
}

/// The hashed mode's `hash`: hex SHA-256 of `"<ts>,<rnr>,<token>"`.
fn hashed_token(token: &str, ts: &str, rnr: u16) -> String {
    hex::encode(Sha256::digest(format!("{ts},{rnr},{token}")))
}

/// The encrypted mode's `ctoken`: `"<ts>,<rnr>"` sealed with XSalsa20-Poly1305 (NaCl's
/// secretbox, tag first) under SHA-256 of the token, hex-encoded, as pynuki sends it.
fn encrypted_token(token: &str, ts: &str, rnr: u16, nonce: &[u8; 24]) -> String {
    let key = Sha256::digest(token.as_bytes());
    let cipher = XSalsa20Poly1305::new_from_slice(&key).expect("SHA-256 is a 32-byte key");
    let sealed = cipher
        .encrypt(Nonce::from_slice(nonce), format!("{ts},{rnr}").as_bytes())
        .expect("sealing a short text in memory cannot fail");
    hex::encode(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_token_matches_the_bridge_api_example() {
        // Bridge HTTP API 1.13, §3.2: token 123456, ts 2019-03-05T01:06:53Z, rnr 4711.
        assert_eq!(
            hashed_token("123456", "2019-03-05T01:06:53Z", 4711),
            "f52eb5ce382e356c4239f8fb4d0a87402bb95b7b3124f0762b806ad7d0d01cb6"
        );
    }

    #[test]
    fn encrypted_token_matches_pynacl() {
        // PyNaCl: SecretBox(sha256(b"123456").digest()).encrypt(b"2019-03-05T01:06:53Z,4711",
        // bytes(range(24))).ciphertext.hex()
        let nonce: [u8; 24] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            encrypted_token("123456", "2019-03-05T01:06:53Z", 4711, &nonce),
            "a7068ee172cdd61d10030e9bf80fb43f0d186a1977fb7164ff6328f12e5d7d79de91d037e8a5ff3df6"
        );
    }

    #[test]
    fn timestamps_are_utc_seconds() {
        let ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_551_748_013);
        assert_eq!(timestamp(ts), "2019-03-05T01:06:53Z");
    }

    #[test]
    fn each_mode_sends_its_parameters_and_only_plain_sends_the_token() {
        let names = |credential| {
            auth_params("123456", credential, "2019-03-05T01:06:53Z", 4711, [7; 24])
                .into_iter()
                .map(|(name, value)| {
                    if credential != Credential::Plain {
                        assert!(!value.contains("123456"), "{name}={value}");
                    }
                    name
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Credential::Plain), ["token"]);
        assert_eq!(names(Credential::Hashed), ["ts", "rnr", "hash"]);
        assert_eq!(names(Credential::Encrypted), ["ctoken", "nonce"]);
    }
}

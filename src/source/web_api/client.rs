//! The Nuki Web API client: one pooled HTTPS client with a bearer token, a timeout per request,
//! request counting, and errors that say what Nuki answered without ever naming the token.
//!
//! Used by the poller and by `nuki-exporter webhook`. Retrying with backoff is the caller's
//! business (the poller's); this client retries only once, after a 401, when the token file
//! holds a new token: so a rotated token is picked up without a restart. The token file is read
//! again off the async threads, with a deadline ([`crate::util::off_thread`]): a token on a hung mount
//! fails the request, not the exporter.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{ApiConfig, TokenError};
use crate::source::web_api::metrics::{Endpoint, WebApiMetrics};
use crate::source::web_api::parse::ParseError;
use crate::util::background::JobFailed;
use crate::util::error_chain;
use crate::util::off_thread::{FILE_READ_DEADLINE, Reader, Stalled};

/// Largest answer read: `/smartlock` of a 10,000-lock account is about 20 MB.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Longest `Retry-After` honoured; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A Web API token: sent as `Authorization: Bearer`, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(HeaderValue);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(redacted)")
    }
}

impl ApiToken {
    /// Reads a token file (as [`crate::util::secret_file::read`] reads).
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let error = |reason: String| TokenError {
            path: path.to_owned(),
            reason,
        };
        let token = crate::util::secret_file::read(path).map_err(|e| error(e.to_string()))?;
        let mut value = HeaderValue::from_bytes(&[b"Bearer ", token.as_slice()].concat())
            .map_err(|_| error("the token holds characters an HTTP header cannot carry".into()))?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

/// A request that did not give the answer it should have.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    TokenStalled(#[from] Stalled),
    #[error("{}: no answer within {}", .endpoint.label(), humantime::format_duration(*.timeout))]
    Timeout {
        endpoint: Endpoint,
        timeout: Duration,
    },
    #[error("{}: cannot reach the Nuki Web API at {url}: {reason}", .endpoint.label())]
    Unreachable {
        endpoint: Endpoint,
        /// `api.url`, so that the message says where it looked.
        url: String,
        reason: String,
    },
    #[error("{}: Nuki answered {status}{detail}", .endpoint.label())]
    Status {
        endpoint: Endpoint,
        status: StatusCode,
        /// What the body said: Nuki's `detailMessage`, or that it was an HTML page.
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{}: {source}", .endpoint.label())]
    Malformed {
        endpoint: Endpoint,
        source: ParseError,
    },
    /// Recording what a poll read failed on the recording thread (a bug, not Nuki's answer).
    #[error("recording the poll: {0}")]
    Recording(#[from] JobFailed),
}

impl ApiError {
    /// How long Nuki asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The Nuki Web API at one base URL, with one token.
pub struct NukiApi {
    base: String,
    token_file: PathBuf,
    token: Mutex<ApiToken>,
    token_reads: Reader,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    metrics: Option<WebApiMetrics>,
}

impl std::fmt::Debug for NukiApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NukiApi")
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl NukiApi {
    /// A client for `api.url` with the token of `token_file`; counts its requests in `metrics`
    /// when given.
    pub fn new(
        config: &ApiConfig,
        token_file: &Path,
        metrics: Option<WebApiMetrics>,
    ) -> Result<Self, TokenError> {
        let token = ApiToken::read(token_file)?;
        let connector = crate::util::client::webpki_https();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            base: config.url.trim_end_matches('/').to_owned(),
            token_file: token_file.to_owned(),
            token: Mutex::new(token),
            token_reads: Reader::new("api-token-read"),
            client,
            timeout: config.timeout,
            metrics,
        })
    }

    pub async fn get(&self, endpoint: Endpoint, path: &str) -> Result<Bytes, ApiError> {
        self.send(Method::GET, endpoint, path, None).await
    }

    pub async fn put_json(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, ApiError> {
        self.send(Method::PUT, endpoint, path, Some(body.into()))
            .await
    }

    pub async fn delete(&self, endpoint: Endpoint, path: &str) -> Result<Bytes, ApiError> {
        self.send(Method::DELETE, endpoint, path, None).await
    }

    async fn send(
        &self,
        method: Method,
        endpoint: Endpoint,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        let answer = self
            .attempt(method.clone(), endpoint, path, body.clone())
            .await;
        let unauthorized = matches!(&answer, Err(ApiError::Status { status, .. }) if *status == StatusCode::UNAUTHORIZED);
        if unauthorized && self.reload_token().await? {
            tracing::info!(file = %self.token_file.display(), "api.token_file holds a new token; retrying with it");
            return self.attempt(method, endpoint, path, body).await;
        }
        answer
    }

    /// Re-reads the token file; `true` when it holds another token than the one in use.
    async fn reload_token(&self) -> Result<bool, ApiError> {
        let path = self.token_file.clone();
        let fresh = self
            .token_reads
            .run(FILE_READ_DEADLINE, move |progress| {
                progress.reading(format!("api.token_file {}", path.display()));
                ApiToken::read(&path)
            })
            .await??;
        let mut token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if *token == fresh {
            return Ok(false);
        }
        *token = fresh;
        Ok(true)
    }

    async fn attempt(
        &self,
        method: Method,
        endpoint: Endpoint,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        let authorization = self
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, authorization)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("nuki-exporter/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ApiError::Unreachable {
                endpoint,
                url: self.base.clone(),
                reason: format!("invalid request: {e}"),
            })?;
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = read_whole(Limited::new(body, MAX_RESPONSE_BYTES)).await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
        };
        let outcome = tokio::time::timeout(self.timeout, exchange).await;
        let elapsed = started.elapsed().as_secs_f64();
        let (parts, body) = match outcome {
            Err(_) => {
                self.count(endpoint, None, elapsed);
                return Err(ApiError::Timeout {
                    endpoint,
                    timeout: self.timeout,
                });
            }
            Ok(Err(error)) => {
                self.count(endpoint, None, elapsed);
                return Err(ApiError::Unreachable {
                    endpoint,
                    url: self.base.clone(),
                    reason: error_chain(error.as_ref()),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        self.count(endpoint, Some(parts.status.as_u16()), elapsed);
        let body = body.map_err(|error| ApiError::Unreachable {
            endpoint,
            url: self.base.clone(),
            reason: format!("reading the answer: {}", error_chain(error.as_ref())),
        })?;
        if parts.status.is_success() {
            return Ok(body);
        }
        Err(ApiError::Status {
            endpoint,
            status: parts.status,
            detail: error_detail(&body),
            retry_after: parts
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|value| retry_after(value, SystemTime::now())),
        })
    }

    fn count(&self, endpoint: Endpoint, status: Option<u16>, seconds: f64) {
        if let Some(metrics) = &self.metrics {
            metrics.request(endpoint, status, seconds);
        }
    }
}

/// Reads a whole body into one buffer as its chunks arrive, so that a large answer is held
/// once (collecting the chunks first and joining them would hold it twice).
async fn read_whole<B>(mut body: B) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let expected = body.size_hint().exact().unwrap_or_default();
    let mut buffer = Vec::with_capacity(
        usize::try_from(expected)
            .unwrap_or_default()
            .min(MAX_RESPONSE_BYTES),
    );
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.into())
}

/// What an error body says, for the log line: Nuki's `detailMessage` (escaped), or that it is
/// HTML.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct NukiError {
        #[serde(rename = "detailMessage")]
        detail_message: String,
    }
    if let Ok(error) = serde_json::from_slice::<NukiError>(body) {
        let message: String = error.detail_message.chars().take(200).collect();
        return format!(" ({})", crate::util::upstream_text::escape(&message));
    }
    let start = body.trim_ascii_start();
    if start.starts_with(b"<") {
        return " (an HTML error page)".into();
    }
    String::new()
}

/// `Retry-After`: seconds, or an HTTP date; capped at an hour.
fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_read_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t-token\n").unwrap();
        let token = ApiToken::read(&file).unwrap();
        assert_eq!(token.0, "Bearer s3cr3t-token");
        assert!(token.0.is_sensitive());
        assert!(!format!("{token:?}").contains("s3cr3t"));
        std::fs::write(&file, "bad\ntoken").unwrap();
        let error = ApiToken::read(&file).unwrap_err().to_string();
        assert!(error.contains("api.token_file"), "{error}");
        assert!(!error.contains("bad"), "{error}");
        std::fs::write(&file, " \n").unwrap();
        assert!(
            ApiToken::read(&file)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(
            retry_after(&header("120"), now),
            Some(Duration::from_secs(120))
        );
        let in_a_minute = httpdate::fmt_http_date(now + Duration::from_secs(60));
        assert_eq!(
            retry_after(&header(&in_a_minute), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after(&header("86400"), now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&header("soon"), now), None);
    }

    #[test]
    fn error_bodies_are_summarised() {
        let unauthorized = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/web_api/unauthorized.json"
        ));
        assert_eq!(
            error_detail(unauthorized),
            " (Your access token is not authorized)"
        );
        let html = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/web_api/bad-gateway.html"
        ));
        assert_eq!(error_detail(html), " (an HTML error page)");
        assert_eq!(error_detail(b""), "");
        assert_eq!(
            error_detail(br#"{"detailMessage":"no\n\u001b[31mFORGED"}"#),
            " (no\\n\\u{1b}[31mFORGED)"
        );
    }
}

//! The HTTP layer: routing of both listeners (the webhook path, Nuki Bridge callbacks, /metrics
//! and the health endpoints), status codes, the body limit, and the webhook pipeline (read the
//! body, check the signature, parse, record, relay).

pub mod connection_deadline;
pub mod metrics_auth;
pub mod relay;
pub mod request_progress;
pub mod status_page;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::config::BRIDGE_CALLBACK_PATH;
use crate::config::file_backed::FileBacked;
use crate::http::connection_deadline::ConnectionDeadline;
use crate::http::metrics_auth::{Access, MetricsGuard};
use crate::http::relay::{ClientConnection, Relay};
use crate::lock::Origin;
use crate::source::bridge::parse as bridge;
use crate::source::bridge::poller::CallbackSenders;
use crate::source::webhook::events;
use crate::source::webhook::parse as webhook;
use crate::source::webhook::signature::{self, Verifier};
use crate::store::scrape::{self, EncoderThread};
use crate::store::{CONTENT_TYPE, Metrics, RejectReason};
use crate::util::unix_now;

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub webhook: bool,
    pub metrics: bool,
}

impl Role {
    /// The `listener` label of the listener's own metrics.
    pub fn name(self) -> &'static str {
        match (self.webhook, self.metrics) {
            (true, true) => "shared",
            (true, false) => "webhook",
            _ => "metrics",
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
pub struct App {
    pub metrics: Arc<Metrics>,
    /// Rebuilt from `webhook.secret_files` on SIGHUP.
    pub verifier: Arc<FileBacked<Verifier>>,
    pub webhook_path: String,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Rebuilt from the metrics listener's files on SIGHUP.
    pub guard: Arc<FileBacked<MetricsGuard>>,
    /// The configured bridges' addresses: the callback route's guard.
    pub bridges: Arc<CallbackSenders>,
    encoder: EncoderThread,
    ready: AtomicBool,
    /// Relay mode: webhooks go on to the application, which answers the sender.
    relay: Option<Relay>,
}

type HttpResponse = Response<Full<Bytes>>;

/// The status page: every lock; `/status/<smartlock id>` is one lock's.
const STATUS_PATH: &str = "/status";
const STATUS_LOCK_PREFIX: &str = "/status/";

const LANDING_PAGE: &str = concat!(
    "<!DOCTYPE html>\n<html><head><title>nuki-exporter</title></head><body>\n",
    "<h1>nuki-exporter ",
    env!("CARGO_PKG_VERSION"),
    "</h1>\n<p>Prometheus exporter for Nuki smart-lock fleets: receives Nuki Web API webhooks and ",
    "serves their error codes, battery and lock state as metrics.</p>\n",
    "<ul><li><a href=\"/status\">Smart locks</a></li><li><a href=\"/metrics\">Metrics</a></li>",
    "<li><a href=\"/-/healthy\">Health</a></li>",
    "<li><a href=\"/-/ready\">Readiness</a></li></ul>\n</body></html>\n"
);

impl App {
    pub fn new(
        metrics: Arc<Metrics>,
        verifier: Arc<FileBacked<Verifier>>,
        webhook_path: String,
        max_body_bytes: usize,
        request_timeout: Duration,
        guard: Arc<FileBacked<MetricsGuard>>,
        bridges: Arc<CallbackSenders>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            encoder: EncoderThread::spawn(Arc::clone(&metrics))?,
            metrics,
            verifier,
            webhook_path,
            max_body_bytes,
            request_timeout,
            guard,
            bridges,
            ready: AtomicBool::new(true),
            relay: None,
        })
    }

    /// Relays every webhook that passes the signature check (`forward.url`).
    pub fn with_relay(self, relay: Option<Relay>) -> Self {
        Self { relay, ..self }
    }

    /// Turns `/-/ready` to 503: the exporter is shutting down.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Answers one request that arrived on `connection` to a listener with the given role,
    /// within `limits.request_timeout` (408 otherwise: `deadline` says when that time is up),
    /// then gives the response that long to be written. Never fails: the `Result` is what
    /// hyper's services return.
    ///
    /// Not an `async fn`: the request is split here and its head held once, by the returned
    /// future, and lent to the handlers below. Each `async fn` level would keep its own copy of a
    /// request argument in its future, which hyper moves on every request.
    pub fn handle<B>(
        self: Arc<Self>,
        role: Role,
        connection: ClientConnection,
        request: Request<B>,
        deadline: Arc<ConnectionDeadline>,
    ) -> impl Future<Output = Result<HttpResponse, Infallible>>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        async move {
            // A relayed webhook may take limits.request_timeout to arrive and forward.timeout for
            // the application's answer.
            deadline.handler_started(
                self.request_timeout + self.relay.as_ref().map_or(Duration::ZERO, Relay::timeout),
            );
            let mut route = pin!(self.route(role, connection, &parts, body));
            let answered = poll_fn(|cx| {
                if deadline.handler_expired() {
                    Poll::Ready(None)
                } else {
                    route.as_mut().poll(cx).map(Some)
                }
            })
            .await;
            let response = answered.unwrap_or_else(|| {
                self.refuse(
                    RejectReason::Timeout,
                    StatusCode::REQUEST_TIMEOUT,
                    "Request took too long.\n",
                )
            });
            deadline.response_ready(self.request_timeout);
            Ok(response)
        }
    }

    async fn route<B>(
        &self,
        role: Role,
        connection: ClientConnection,
        parts: &Parts,
        body: B,
    ) -> HttpResponse
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = parts.uri.path();
        let method = &parts.method;
        let readable = method == Method::GET || method == Method::HEAD;
        if role.webhook && path == self.webhook_path {
            if method == Method::POST {
                return self.receive_webhook(connection, parts, body).await;
            }
            self.metrics.reject(RejectReason::Method);
            return method_not_allowed("POST");
        }
        if role.webhook && path == BRIDGE_CALLBACK_PATH && self.bridges.accepts_callbacks() {
            if method == Method::POST {
                // Boxed, as are the relay and the pages behind credentials: the webhook path's
                // future stays small, and hyper moves it on every request.
                return Box::pin(self.receive_bridge_callback(connection.peer, parts, body)).await;
            }
            self.metrics.reject(RejectReason::Method);
            return method_not_allowed("POST");
        }
        let status_page = is_status_page(path);
        match path {
            _ if status_page && role.metrics && !readable => method_not_allowed("GET, HEAD"),
            "/-/healthy" | "/-/ready" | "/metrics" | "/" if !readable => {
                method_not_allowed("GET, HEAD")
            }
            "/-/healthy" => text(StatusCode::OK, "Healthy.\n"),
            "/-/ready" if self.ready.load(Ordering::SeqCst) => text(StatusCode::OK, "Ready.\n"),
            "/-/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "Shutting down.\n"),
            _ if (status_page || path == "/metrics" || path == "/") && role.metrics => {
                Box::pin(self.serve_behind_credentials(parts)).await
            }
            _ => {
                if role.webhook {
                    self.metrics.reject(RejectReason::NotFound);
                }
                text(StatusCode::NOT_FOUND, "Not found.\n")
            }
        }
    }

    /// The pages behind the metrics listener's credentials: `/metrics`, the status pages and
    /// the landing page.
    async fn serve_behind_credentials(&self, parts: &Parts) -> HttpResponse {
        let path = parts.uri.path();
        match self.guard.current().authorize(&parts.headers).await {
            Access::Denied(challenge) => {
                let mut response = self.refuse(
                    RejectReason::Unauthorized,
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized.\n",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                response
            }
            Access::Granted if path == "/metrics" => {
                self.serve_metrics(scrape::accepts_gzip(&parts.headers))
                    .await
            }
            Access::Granted if is_status_page(path) => {
                self.serve_status_page(path, parts.uri.query()).await
            }
            Access::Granted => html(LANDING_PAGE),
        }
    }

    /// `/status[?page=N]` or `/status/<smartlock id>`, rendered off the threads that serve
    /// webhooks.
    async fn serve_status_page(&self, path: &str, query: Option<&str>) -> HttpResponse {
        let metrics = Arc::clone(&self.metrics);
        let lock = path.strip_prefix(STATUS_LOCK_PREFIX).map(str::to_owned);
        let page = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(key, _)| key == "page")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(1);
        let rendered = tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let Some(lock) = lock else {
                return (
                    StatusCode::OK,
                    status_page::fleet_page(metrics.lock_views(), page, now),
                );
            };
            match lock.parse().ok().and_then(|id| metrics.lock_view(id)) {
                Some(view) => (StatusCode::OK, status_page::lock_page(&view, now)),
                None => (StatusCode::NOT_FOUND, status_page::unknown_lock_page(&lock)),
            }
        })
        .await;
        match rendered {
            Ok((status, page)) => with_type(status, page, "text/html; charset=utf-8"),
            Err(error) => {
                tracing::error!(%error, "rendering the status page failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Rendering the status page failed.\n",
                )
            }
        }
    }

    async fn serve_metrics(&self, gzip: bool) -> HttpResponse {
        match self.encoder.encode(gzip).await {
            Some(exposition) => {
                let compressed = exposition.gzip.filter(|_| gzip);
                let mut response =
                    Response::new(Full::new(compressed.clone().unwrap_or(exposition.text)));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
                if compressed.is_some() {
                    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                response
            }
            None => {
                tracing::error!("the metrics encoder thread is gone");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Encoding metrics failed.\n",
                )
            }
        }
    }

    /// Reads a POST body within `limits.max_body_bytes`; the refusal to answer otherwise.
    async fn read_body<B>(&self, parts: &Parts, body: B) -> Result<Bytes, HttpResponse>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_length.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(self.refuse(
                RejectReason::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large.\n",
            ));
        }
        match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<LengthLimitError>() => Err(self.refuse(
                RejectReason::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large.\n",
            )),
            Err(error) => {
                tracing::debug!(%error, "request body could not be read");
                Err(self.refuse(
                    RejectReason::Malformed,
                    StatusCode::BAD_REQUEST,
                    "Body could not be read.\n",
                ))
            }
        }
    }

    /// A Nuki Bridge's lock-state callback. A bridge cannot sign what it sends: the sender's
    /// address, which must be a configured bridge's, and the lock, which must be one that
    /// bridge's last `/list` listed, are the only checks.
    async fn receive_bridge_callback<B>(
        &self,
        peer: SocketAddr,
        parts: &Parts,
        body: B,
    ) -> HttpResponse
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(bridge) = self.bridges.sender(peer.ip()) else {
            tracing::debug!(%peer, "bridge callback from an address that is no configured bridge's");
            return self.refuse(
                RejectReason::Forbidden,
                StatusCode::FORBIDDEN,
                "Not a configured bridge's address.\n",
            );
        };
        let body = match self.read_body(parts, body).await {
            Ok(body) => body,
            Err(refusal) => return refusal,
        };
        let report = match bridge::parse_callback(&body) {
            Ok(report) => report,
            Err(error) => {
                tracing::debug!(bridge = %bridge.series.name(), %error, "bridge callback refused");
                return self.refuse(
                    RejectReason::Malformed,
                    StatusCode::BAD_REQUEST,
                    "Not a bridge callback.\n",
                );
            }
        };
        let id = report.smartlock_id;
        let recorded = bridge.roster.if_listed(id, || {
            self.metrics
                .observe(id, Origin::BridgeCallback, &report.events, unix_now());
        });
        if recorded.is_none() {
            tracing::debug!(bridge = %bridge.series.name(), smartlock_id = id, "bridge callback about a lock the bridge did not list: ignored");
            return self.refuse(
                RejectReason::Forbidden,
                StatusCode::FORBIDDEN,
                "Not a lock this bridge listed.\n",
            );
        }
        bridge.series.callback_received();
        text(StatusCode::OK, "OK.\n")
    }

    async fn receive_webhook<B>(
        &self,
        connection: ClientConnection,
        parts: &Parts,
        body: B,
    ) -> HttpResponse
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if self
            .relay
            .as_ref()
            .is_some_and(|relay| relay.is_own_relay(&parts.headers))
        {
            tracing::warn!(
                "a webhook this exporter relayed came back: forward.url leads back to it; refused"
            );
            return self.refuse(
                RejectReason::Loop,
                StatusCode::LOOP_DETECTED,
                "Relay loop: forward.url leads back to this exporter.\n",
            );
        }
        let body = match self.read_body(parts, body).await {
            Ok(body) => body,
            Err(refusal) => return refusal,
        };
        let signature = parts
            .headers
            .get(signature::HEADER)
            .map(HeaderValue::as_bytes);
        if let Err(error) = self.verifier.current().verify(signature, &body) {
            tracing::debug!(%error, "webhook signature refused");
            return self.refuse(
                RejectReason::Signature,
                StatusCode::UNAUTHORIZED,
                "Invalid signature.\n",
            );
        }
        let parsed = webhook::parse(&body);
        match &parsed {
            Ok(webhook) => events::record(&self.metrics, webhook, unix_now()),
            Err(error) => {
                // The parser's messages name a position or a field, never the body's content.
                tracing::debug!(%error, "webhook refused");
                self.metrics.reject(RejectReason::Malformed);
            }
        }
        // A signed body the exporter cannot read is still Nuki's: the application decides.
        if let Some(relay) = &self.relay {
            return Box::pin(relay.forward(parts, connection, body)).await;
        }
        match parsed {
            Ok(_) => with_status(StatusCode::NO_CONTENT, Bytes::new()),
            Err(error) => with_status(StatusCode::BAD_REQUEST, format!("{error}\n")),
        }
    }

    fn refuse(
        &self,
        reason: RejectReason,
        status: StatusCode,
        message: &'static str,
    ) -> HttpResponse {
        self.metrics.reject(reason);
        text(status, message)
    }
}

fn is_status_page(path: &str) -> bool {
    path == STATUS_PATH || path.starts_with(STATUS_LOCK_PREFIX)
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn html(body: &'static str) -> HttpResponse {
    with_type(StatusCode::OK, body, "text/html; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> HttpResponse {
    let mut response = with_status(status, body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A response without headers of its own (hyper adds the length and the date).
fn with_status(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

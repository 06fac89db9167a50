//! Relay mode (`forward.*`): the exporter in front of the application that Nuki's webhooks are
//! for. A webhook that passed the signature check is relayed with its raw body and its
//! signature header unchanged (the application keeps verifying it), and the sender gets the
//! application's status code and body, so that Nuki's webhook log shows what the application
//! answered.
//!
//! A relay to this exporter itself would multiply every webhook until the file descriptors run
//! out: a `forward.url` that resolves to one of its own listen addresses is refused at start,
//! and every relayed request carries this process's mark (`Nuki-Exporter-Relayed-By`), so that
//! a loop through other hops is refused the first time a webhook comes back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{ConfigError, ForwardConfig};
use crate::util::error_chain;

/// Largest application answer relayed back to the sender; Nuki only logs a short body.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `code` label of a relay that got no answer (connection refused, timeout, broken answer).
const NO_ANSWER: &str = "error";

/// The connection a webhook arrived on: the relay's `X-Forwarded-For` and `X-Forwarded-Proto`.
#[derive(Clone, Copy, Debug)]
pub struct ClientConnection {
    pub peer: SocketAddr,
    pub https: bool,
}

/// The header that marks a relayed request with the relaying process.
const RELAYED_BY: HeaderName = HeaderName::from_static("nuki-exporter-relayed-by");

/// The pooled client that relays webhooks to `forward.url`.
pub struct Relay {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    upstream: Uri,
    /// This process's mark on the requests it relays: random, so that only its own come back
    /// refused, not those of another exporter in a chain.
    mark: HeaderValue,
    timeout: Duration,
    requests: IntCounterVec,
    duration: Histogram,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("upstream", &self.upstream)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay `forward.*` describes, or `None` without `forward.url`. Reads `forward.ca_file`.
    pub fn new(config: &ForwardConfig) -> Result<Option<Self>, ConfigError> {
        let Some(upstream) = config.upstream()? else {
            return Ok(None);
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(trusted_roots(config)?)
        .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        // A relayed request is written once and answered once: no reason to wait for more.
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let requests = IntCounterVec::new(
            Opts::new(
                "nuki_exporter_forward_requests_total",
                "Webhooks relayed to forward.url, by the application's HTTP status code (error: no answer, or none within forward.timeout).",
            ),
            &["code"],
        )
        .expect("valid metric definition");
        requests.with_label_values(&[NO_ANSWER]);
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "nuki_exporter_forward_duration_seconds",
                "Time from relaying a webhook to forward.url until the application's answer was read.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .expect("valid metric definition");
        Ok(Some(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            upstream,
            mark: HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>()))
                .expect("hex digits are header text"),
            timeout: config.timeout,
            requests,
            duration,
        }))
    }

    /// Adds the relay's metrics to the exporter's registry.
    pub fn register(&self, registry: &Registry) {
        for collector in [
            Box::new(self.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.duration.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
    }

    /// `forward.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a request is one this process relayed, come back through a loop.
    pub fn is_own_relay(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(RELAYED_BY)
            .iter()
            .flat_map(|value| value.as_bytes().split(|b| *b == b','))
            .any(|mark| mark.trim_ascii() == self.mark.as_bytes())
    }

    /// Relays a webhook and returns the application's answer: its status, headers and body;
    /// 502 when the application cannot be reached, 504 when it does not answer in time.
    pub async fn forward(
        &self,
        parts: &Parts,
        connection: ClientConnection,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let request = self.upstream_request(parts, connection, body);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| error_chain(&error))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>(Response::from_parts(parts, body))
        })
        .await;
        self.duration.observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(response)) if response.status().is_informational() => {
                self.requests
                    .with_label_values(&[response.status().as_str()])
                    .inc();
                tracing::warn!(upstream = %self.upstream, status = %response.status(), "the application answered a relayed webhook with an informational status, which is no final answer");
                plain(
                    StatusCode::BAD_GATEWAY,
                    "The application gave no final answer.\n",
                )
            }
            Ok(Ok(response)) => {
                self.requests
                    .with_label_values(&[response.status().as_str()])
                    .inc();
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, Full::new(body))
            }
            Ok(Err(error)) => {
                self.requests.with_label_values(&[NO_ANSWER]).inc();
                tracing::warn!(upstream = %self.upstream, %error, "relaying a webhook failed");
                plain(StatusCode::BAD_GATEWAY, "The application did not answer.\n")
            }
            Err(_) => {
                self.requests.with_label_values(&[NO_ANSWER]).inc();
                tracing::warn!(upstream = %self.upstream, timeout = ?self.timeout, "the application did not answer a relayed webhook in time");
                plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The application did not answer in time.\n",
                )
            }
        }
    }

    /// The relayed request: the sender's method and end-to-end headers (the signature among
    /// them) with the raw body, addressed to the application, plus `X-Forwarded-*`.
    fn upstream_request(
        &self,
        parts: &Parts,
        connection: ClientConnection,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut headers = parts.headers.clone();
        remove_hop_by_hop(&mut headers);
        let original_host = headers.remove(header::HOST);
        // The body is complete already: nothing to wait for a 100 Continue about.
        headers.remove(header::EXPECT);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.append(RELAYED_BY, self.mark.clone());
        // Every earlier line, in order, then the sender: one list (RFC 9110, section 5.3).
        let mut forwarded_for: Vec<u8> = Vec::new();
        for earlier in headers.get_all(X_FORWARDED_FOR) {
            forwarded_for.extend_from_slice(earlier.as_bytes());
            forwarded_for.extend_from_slice(b", ");
        }
        forwarded_for.extend_from_slice(connection.peer.ip().to_string().as_bytes());
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(&forwarded_for)
                .expect("header values and addresses are valid header text"),
        );
        // A TLS proxy in front of the exporter already said which scheme the sender used.
        if !headers.contains_key(X_FORWARDED_PROTO) {
            let scheme = if connection.https { "https" } else { "http" };
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        if let Some(host) = original_host {
            headers.entry(X_FORWARDED_HOST).or_insert(host);
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = self.upstream.clone();
        *request.headers_mut() = headers;
        request
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers about one connection, which a proxy must not pass on (RFC 9110, section 7.6.1):
/// the fixed list and every header the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Refuses a `forward.url` that resolves to one of `listeners` (the configured listen addresses):
/// the exporter would relay every webhook to itself. A name that does not resolve now is left to
/// the mark on relayed requests.
pub async fn refuse_relay_to_self(
    upstream: &Uri,
    listeners: &[(&'static str, SocketAddr)],
) -> Result<(), ConfigError> {
    let Some(host) = upstream.host() else {
        return Ok(());
    };
    let port = upstream.port_u16().unwrap_or(match upstream.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(resolved) = tokio::net::lookup_host((host, port)).await else {
        return Ok(());
    };
    for target in resolved {
        for (key, listener) in listeners {
            let same_address = listener.ip() == target.ip()
                || (listener.ip().is_unspecified() && is_local(target.ip()));
            if listener.port() == target.port() && same_address {
                return Err(ConfigError::Key {
                    key: "forward.url",
                    reason: format!(
                        "{upstream} is this exporter ({key} {listener}): it would relay every webhook to itself; point it at the application"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Whether `ip` is an address of this host: only those can be bound.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The system's CA certificates, and those of `forward.ca_file`.
fn trusted_roots(config: &ForwardConfig) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates only matter for an https url; its handshake says so.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = &config.ca_file {
        let unusable = |reason: String| ConfigError::Key {
            key: "forward.ca_file",
            reason: format!("{}: {reason}", path.display()),
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| unusable(e.to_string()))?;
        if certificates.is_empty() {
            return Err(unusable("holds no certificate".into()));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|e| unusable(e.to_string()))?;
        }
    }
    Ok(roots)
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private-hop"),
            ("keep-alive", "timeout=5"),
            ("x-private-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-nuki-signature-sha256", "abc"),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-nuki-signature-sha256"]);
    }

    fn relay() -> Relay {
        let config = ForwardConfig {
            url: Some("http://127.0.0.1:8080/nuki".into()),
            ..ForwardConfig::default()
        };
        Relay::new(&config).unwrap().unwrap()
    }

    /// What `relay` sends on for `incoming` from 192.0.2.1 over plain HTTP.
    fn relayed(relay: &Relay, incoming: Request<()>, body: &'static [u8]) -> Request<Full<Bytes>> {
        let connection = ClientConnection {
            peer: "192.0.2.1:5000".parse().unwrap(),
            https: false,
        };
        let (parts, ()) = incoming.into_parts();
        relay.upstream_request(&parts, connection, Bytes::from_static(body))
    }

    #[test]
    fn relayed_request_keeps_body_and_signature_and_adds_forwarded_headers() {
        let incoming = Request::post("/webhook")
            .header("host", "exporter.example:10180")
            .header("x-nuki-signature-sha256", "ABCDEF")
            .header("x-forwarded-for", "203.0.113.7")
            .header("connection", "close")
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        let relayed = relayed(&relay(), incoming, b"{\"a\":1}");
        assert_eq!(relayed.uri(), "http://127.0.0.1:8080/nuki");
        let headers = relayed.headers();
        assert_eq!(headers["x-nuki-signature-sha256"], "ABCDEF");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "exporter.example:10180");
        assert_eq!(headers["content-length"], "7");
        assert!(
            !headers.contains_key("host"),
            "the client sets the upstream's"
        );
        assert!(!headers.contains_key("connection"));
        assert!(!headers.contains_key("expect"));
    }

    #[test]
    fn every_x_forwarded_for_line_is_kept() {
        let incoming = Request::post("/webhook")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.2, 10.0.0.1")
            .body(())
            .unwrap();
        let relayed = relayed(&relay(), incoming, b"");
        let forwarded: Vec<_> = relayed
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .collect();
        assert_eq!(
            forwarded,
            ["203.0.113.7, 198.51.100.2, 10.0.0.1, 192.0.2.1"]
        );
    }

    #[test]
    fn a_relay_recognises_its_own_mark_and_only_its_own() {
        let (first, second) = (relay(), relay());
        let once = relayed(&first, Request::post("/webhook").body(()).unwrap(), b"");
        assert!(first.is_own_relay(once.headers()));
        assert!(!second.is_own_relay(once.headers()));
        // Through the second exporter and a proxy that folds the lines into one.
        let mut incoming = Request::post("/webhook").body(()).unwrap();
        *incoming.headers_mut() = once.headers().clone();
        let twice = relayed(&second, incoming, b"");
        let folded: Vec<&str> = twice
            .headers()
            .get_all(RELAYED_BY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(folded.len(), 2);
        let mut proxied = HeaderMap::new();
        proxied.insert(
            RELAYED_BY,
            HeaderValue::from_str(&folded.join(", ")).unwrap(),
        );
        assert!(first.is_own_relay(&proxied) && second.is_own_relay(&proxied));
        assert!(!relay().is_own_relay(&proxied));
    }

    #[test]
    fn an_unusable_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let config = ForwardConfig {
            url: Some("https://app:8443/".into()),
            ca_file: Some(empty.clone()),
            ..ForwardConfig::default()
        };
        let error = Relay::new(&config).unwrap_err().to_string();
        assert!(error.contains("forward.ca_file"), "{error}");
        assert!(error.contains(&*empty.to_string_lossy()), "{error}");
    }
}

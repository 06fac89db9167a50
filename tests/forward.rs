//! Relay mode: the exporter in front of an application stub, both real servers on loopback.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{SECRET, Scrape, TestExporter, fixture, test_config};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use nuki_exporter::Exporter;
use nuki_exporter::source::webhook::signature::{HEADER, sign};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

/// What the application stub received.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answer with this status and body.
    Answer(u16, &'static str),
    /// Never answer.
    Hang,
}

/// The application behind the exporter: records each request, then behaves as told.
struct AppStub {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

impl AppStub {
    async fn start(behaviour: Behaviour) -> Self {
        Self::start_serving(behaviour, None).await
    }

    async fn start_serving(behaviour: Behaviour, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = if tls.is_some() {
            format!("localhost:{}", address.port())
        } else {
            address.to_string()
        };
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (log, notify) = (Arc::clone(&received), Arc::clone(&arrived));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (log, notify, tls) = (Arc::clone(&log), Arc::clone(&notify), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (log, notify) = (Arc::clone(&log), Arc::clone(&notify));
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            log.lock().unwrap().push(Received {
                                headers: parts.headers,
                                body,
                            });
                            notify.notify_one();
                            match behaviour {
                                Behaviour::Answer(status, text) => Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "text/plain")
                                        .header("x-app", "stub")
                                        .body(Full::new(Bytes::from_static(text.as_bytes())))
                                        .unwrap(),
                                ),
                                Behaviour::Hang => std::future::pending().await,
                            }
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        Self {
            url: format!("{scheme}://{host}/nuki/webhook"),
            received,
            arrived,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn relaying_exporter(url: &str) -> TestExporter {
    let mut config = test_config();
    config.forward.url = Some(url.into());
    TestExporter::start_with(config).await
}

async fn post(exporter: &TestExporter, body: &[u8], signature: Option<&str>) -> reqwest::Response {
    let mut request = exporter
        .client
        .post(&exporter.webhook_url)
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header(HEADER, signature);
    }
    request.send().await.expect("webhook request")
}

fn received_total(scrape: &Scrape) -> f64 {
    scrape.sum("nuki_exporter_webhooks_received_total", &[])
}

#[tokio::test]
async fn a_signed_webhook_reaches_the_application_byte_for_byte_and_the_sender_gets_its_answer() {
    let app = AppStub::start(Behaviour::Answer(202, "queued by the app\n")).await;
    let exporter = relaying_exporter(&app.url).await;
    // Bytes a re-serialisation would change: spacing, key order, escapes, a trailing newline.
    let mut body = fixture("api-auth-creation-failed");
    body.extend_from_slice(b" \n");
    let signature = sign(SECRET.as_bytes(), &body).to_uppercase();
    let response = post(&exporter, &body, Some(&signature)).await;
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.headers()["x-app"], "stub");
    assert_eq!(response.text().await.unwrap(), "queued by the app\n");

    let received = app.received();
    assert_eq!(received.len(), 1);
    let relayed = &received[0];
    assert_eq!(relayed.body, body, "raw body bytes unchanged");
    assert_eq!(relayed.headers[HEADER], signature.as_str());
    assert_eq!(relayed.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(relayed.headers["x-forwarded-proto"], "http");
    assert_eq!(
        relayed.headers["host"],
        app.url.split('/').nth(2).unwrap(),
        "addressed to the application"
    );

    let scrape = exporter.scrape().await;
    assert_eq!(received_total(&scrape), 1.0, "counted as without the relay");
    assert_eq!(
        scrape.value("nuki_exporter_forward_requests_total", &[("code", "202")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("nuki_exporter_forward_duration_seconds_count", &[]),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_never_reaches_the_application() {
    let app = AppStub::start(Behaviour::Answer(200, "ok")).await;
    let exporter = relaying_exporter(&app.url).await;
    let body = fixture("device-status");
    let forged = sign(b"not the secret", &body);
    assert_eq!(
        post(&exporter, &body, Some(&forged))
            .await
            .status()
            .as_u16(),
        401
    );
    assert_eq!(post(&exporter, &body, None).await.status().as_u16(), 401);
    // A signed webhook after them arrives alone.
    let signed = sign(SECRET.as_bytes(), &body);
    assert_eq!(
        post(&exporter, &body, Some(&signed))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(app.received().len(), 1);
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "signature")]
        ),
        Some(2.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn without_secrets_every_webhook_is_relayed_even_one_the_exporter_cannot_read() {
    let app = AppStub::start(Behaviour::Answer(204, "")).await;
    let mut config = test_config();
    config.webhook.secrets.clear();
    config.forward.url = Some(app.url.clone());
    let exporter = TestExporter::start_with(config).await;
    assert_eq!(
        post(&exporter, &fixture("device-status"), None)
            .await
            .status()
            .as_u16(),
        204
    );
    assert_eq!(
        post(&exporter, b"not json", None).await.status().as_u16(),
        204,
        "the application's answer, not the exporter's 400"
    );
    let bodies: Vec<Bytes> = app.received().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, [fixture("device-status"), b"not json".to_vec()]);
    let scrape = exporter.scrape().await;
    assert_eq!(received_total(&scrape), 1.0);
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "malformed")]
        ),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn application_down_gives_502_and_the_webhook_is_still_counted() {
    // Bound but never listening: connections to it are refused.
    let (_guard, refused) = common::refused_address();
    let down = format!("http://{refused}/nuki");
    let exporter = relaying_exporter(&down).await;
    let body = fixture("api-auth-creation-failed");
    let response = post(&exporter, &body, Some(&sign(SECRET.as_bytes(), &body))).await;
    assert_eq!(response.status().as_u16(), 502);
    let scrape = exporter.scrape().await;
    assert_eq!(received_total(&scrape), 1.0);
    assert_eq!(
        scrape.sum("nuki_operation_errors_total", &[("error_code", "0xFF")]),
        1.0
    );
    assert_eq!(
        scrape.value("nuki_exporter_forward_requests_total", &[("code", "error")]),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn an_application_slower_than_forward_timeout_gives_504() {
    let app = AppStub::start(Behaviour::Hang).await;
    let mut config = test_config();
    config.forward.url = Some(app.url.clone());
    config.forward.timeout = Duration::from_millis(300);
    let exporter = TestExporter::start_with(config).await;
    let body = fixture("device-status");
    let response = post(&exporter, &body, Some(&sign(SECRET.as_bytes(), &body))).await;
    assert_eq!(response.status().as_u16(), 504);
    app.arrived.notified().await; // it did reach the application
    let scrape = exporter.scrape().await;
    assert_eq!(received_total(&scrape), 1.0);
    assert_eq!(
        scrape.value("nuki_exporter_forward_requests_total", &[("code", "error")]),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_thousand_concurrent_relayed_webhooks_lose_none() {
    const WEBHOOKS: usize = 1000;
    let app = AppStub::start(Behaviour::Answer(200, "ok")).await;
    let exporter = Arc::new(relaying_exporter(&app.url).await);
    let sends = (0..WEBHOOKS).map(|i| {
        let exporter = Arc::clone(&exporter);
        tokio::spawn(async move {
            let body = format!(
                r#"{{"feature":"DEVICE_STATUS","smartlockId":{},"state":{{"batteryCharge":50}}}}"#,
                i % 50
            )
            .into_bytes();
            let signature = sign(SECRET.as_bytes(), &body);
            post(&exporter, &body, Some(&signature))
                .await
                .status()
                .as_u16()
        })
    });
    let statuses = statuses_of(sends.collect()).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.received().len(), WEBHOOKS);
    let scrape = exporter.scrape().await;
    assert_eq!(received_total(&scrape), WEBHOOKS as f64);
    assert_eq!(
        scrape.value("nuki_exporter_forward_requests_total", &[("code", "200")]),
        Some(WEBHOOKS as f64)
    );
    Arc::into_inner(exporter).unwrap().shutdown().await;
}

async fn statuses_of(handles: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(handles.len());
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn https_applications_are_trusted_through_forward_ca_file() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("app-ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let app = AppStub::start_serving(
        Behaviour::Answer(200, "ok over tls"),
        Some(TlsAcceptor::from(Arc::new(server))),
    )
    .await;
    assert!(app.url.starts_with("https://localhost:"));

    // Without the CA, the application's certificate is not trusted: 502.
    let untrusting = relaying_exporter(&app.url).await;
    let body = fixture("device-status");
    let signature = sign(SECRET.as_bytes(), &body);
    assert_eq!(
        post(&untrusting, &body, Some(&signature))
            .await
            .status()
            .as_u16(),
        502
    );
    untrusting.shutdown().await;

    let mut config = test_config();
    config.forward.url = Some(app.url.clone());
    config.forward.ca_file = Some(ca_file);
    let exporter = TestExporter::start_with(config).await;
    let response = post(&exporter, &body, Some(&signature)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "ok over tls");
    assert_eq!(app.received().last().unwrap().body, body);
    exporter.shutdown().await;
}

/// A free loopback port: bound, then given back for the exporter to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_forward_url_at_the_exporters_own_listener_is_refused_at_start() {
    for (listen, host) in [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "localhost")] {
        let port = free_port();
        let mut config = test_config();
        config.webhook.listen = format!("{listen}:{port}").parse().unwrap();
        config.forward.url = Some(format!("http://{host}:{port}/webhook"));
        let error = Exporter::start(&config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{listen} and {host}: a relay to itself started"))
            .to_string();
        assert!(error.contains("forward.url"), "{error}");
        assert!(error.contains("this exporter"), "{error}");
    }
}

/// A proxy that passes every request on to `target` (set once the exporter runs) and answers
/// with what it got: a loop back to the exporter that no start-up check can see.
async fn looping_proxy(target: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/app", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (target, hits, client) = (Arc::clone(&target), Arc::clone(&hits), client.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (target, hits, client) =
                        (Arc::clone(&target), Arc::clone(&hits), client.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let mut headers = parts.headers;
                        headers.remove("host");
                        headers.remove("content-length");
                        let url = target.lock().unwrap().clone();
                        let answer = client.post(url).headers(headers).body(body).send().await;
                        let (status, text) = match answer {
                            Ok(answer) => (answer.status().as_u16(), answer.bytes().await.unwrap()),
                            Err(_) => (502, Bytes::new()),
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(text))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_loop_through_another_hop_is_refused_on_its_first_return() {
    let (target, hits) = (
        Arc::new(Mutex::new(String::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let proxy = looping_proxy(Arc::clone(&target), Arc::clone(&hits)).await;
    let mut config = test_config();
    config.forward.url = Some(proxy);
    config.forward.timeout = Duration::from_secs(3);
    let exporter = TestExporter::start_with(config).await;
    *target.lock().unwrap() = exporter.webhook_url.clone();
    let body = fixture("device-status");
    let response = post(&exporter, &body, Some(&sign(SECRET.as_bytes(), &body))).await;
    assert_eq!(response.status().as_u16(), 508, "Loop Detected");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let scrape = exporter.scrape().await;
    assert_eq!(received_total(&scrape), 1.0, "{}", scrape.0);
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "loop")]
        ),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn an_informational_answer_is_never_relayed_as_final() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/app", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = vec![0; 64 * 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: nuki\r\n\r\n")
                    .await;
                // Keeps the connection open, as an upgraded one would be.
                let _ = stream.read(&mut request).await;
            });
        }
    });
    let exporter = relaying_exporter(&url).await;
    let body = fixture("device-status");
    let response = tokio::time::timeout(
        Duration::from_secs(15),
        post(&exporter, &body, Some(&sign(SECRET.as_bytes(), &body))),
    )
    .await
    .expect("an answer");
    assert_eq!(response.status().as_u16(), 502);
    exporter.shutdown().await;
}

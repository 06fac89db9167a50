//! Connection and request limits under idle, trickling and slow clients.

mod common;

use std::time::{Duration, Instant};

use common::{Scrape, TestExporter, fixture, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a webhook may take before the test calls it stuck: a hang, not a slow machine. How
/// fast webhooks are answered beside held connections is measured by bench/.
const HANG: Duration = Duration::from_secs(60);

/// Posts `body`, failing the test if no answer comes within [`HANG`].
async fn post_within_hang(exporter: &TestExporter, body: &[u8]) -> u16 {
    tokio::time::timeout(HANG, exporter.post(body))
        .await
        .expect("a webhook hung")
}

/// Polls `condition` until it holds; fails after 60 seconds, naming what it waited for.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scrape on a new connection: with a short header timeout, a pooled keep-alive connection
/// may be closed by the exporter just as the client reuses it.
async fn scrape(exporter: &TestExporter) -> Scrape {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/metrics", exporter.metrics_base))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    Scrape(response.text().await.unwrap())
}

async fn hits(exporter: &TestExporter, limit: &str) -> f64 {
    scrape(exporter)
        .await
        .value(
            "nuki_exporter_connection_limit_hits_total",
            &[("limit", limit)],
        )
        .unwrap()
}

/// Waits (30 seconds at most) until the server closes the connection, sending nothing.
async fn closed_by_the_server(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await;
    assert_eq!(
        read.expect("the server closes the connection").unwrap_or(0),
        0
    );
}

/// Opens a connection that sends a request head one byte at a time, a byte every 100 ms.
fn trickle(address: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut stream) = TcpStream::connect(&address).await else {
            return;
        };
        for byte in b"POST /webhook HTTP/1.1\r\nHost: slow\r\nX-Padding: "
            .iter()
            .cycle()
            .take(10_000)
        {
            if stream.write_all(&[*byte]).await.is_err() {
                return; // closed by the server
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_idle_and_trickling_connections_do_not_delay_webhooks() {
    // The connections must outlive the time it takes a loaded machine to open all of them.
    let mut config = test_config();
    config.limits.header_read_timeout = Duration::from_secs(600);
    let exporter = TestExporter::start_with(config).await;
    let address = exporter.webhook_address();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    let trickling: Vec<_> = (0..500).map(|_| trickle(address.clone())).collect();
    let open_connections = || async {
        let scrape = exporter.scrape().await;
        scrape
            .value("nuki_exporter_open_connections", &[("listener", "webhook")])
            .unwrap_or(0.0)
    };
    wait_until("the exporter holds 1,000 connections", || async {
        open_connections().await >= 1000.0
    })
    .await;

    // Answered while the connections are held (checked below): a webhook that waited for them
    // would wait out the 600 s header timeout.
    let body = fixture("api-auth-creation-failed");
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(post_within_hang(&exporter, &body).await, 204);
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest webhook beside 1,000 held connections: {slowest:?}");
    assert_eq!(
        exporter
            .scrape()
            .await
            .sum("nuki_operation_errors_total", &[]),
        20.0
    );
    assert!(
        open_connections().await >= 1000.0,
        "the held connections stayed open throughout"
    );
    trickling.iter().for_each(tokio::task::JoinHandle::abort);
    drop(idle);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_clients_cannot_hold_the_connection_slots() {
    let mut config = test_config();
    config.limits.max_connections = 20;
    config.limits.header_read_timeout = Duration::from_secs(1);
    let exporter = TestExporter::start_with(config).await;
    let address = exporter.webhook_address();
    let trickling: Vec<_> = (0..30).map(|_| trickle(address.clone())).collect();
    wait_until("trickling clients hold every slot", || async {
        scrape(&exporter)
            .await
            .value("nuki_exporter_open_connections", &[("listener", "webhook")])
            == Some(20.0)
    })
    .await;

    // Every slot is held by a trickling client; the webhook queues until the header timeout
    // closes them (without it, the trickle would hold the slots for 1,000 s: a hang).
    let started = Instant::now();
    assert_eq!(
        post_within_hang(&exporter, &fixture("device-status")).await,
        204
    );
    eprintln!("the webhook waited {:?} for a slot", started.elapsed());

    // the 20 clients in the slots were cut off while sending their request heads
    wait_until("20 header-read timeouts and a wait for a slot", || async {
        hits(&exporter, "header_read_timeout").await >= 20.0
            && hits(&exporter, "max_connections").await >= 1.0
    })
    .await;
    trickling.iter().for_each(tokio::task::JoinHandle::abort);
    exporter.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let mut config = test_config();
    config.limits.header_read_timeout = Duration::from_millis(500);
    let exporter = TestExporter::start_with(config).await;
    let mut stream = TcpStream::connect(exporter.webhook_address())
        .await
        .unwrap();
    closed_by_the_server(&mut stream).await;
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_body_trickles_past_the_request_timeout_gets_408() {
    let mut config = test_config();
    config.limits.request_timeout = Duration::from_millis(500);
    let exporter = TestExporter::start_with(config).await;
    let mut stream = TcpStream::connect(exporter.webhook_address())
        .await
        .unwrap();
    stream
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"feature\":")
        .await
        .unwrap();
    let mut response = vec![0u8; 256];
    let read = tokio::time::timeout(HANG, stream.read(&mut response)).await;
    let n = read.expect("answered within the timeout").unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "timeout")]
        ),
        Some(1.0)
    );
    exporter.shutdown().await;
}

/// Sends one scrape on `stream` and reads the whole response (the exporter sends a
/// Content-Length); returns false if the server had closed the connection.
async fn scrape_on(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: prometheus\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut response = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        let n = stream.read(&mut buffer).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        response.extend_from_slice(&buffer[..n]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a Content-Length")
            .trim()
            .parse()
            .unwrap();
        if response.len() >= end + 4 + length {
            return true;
        }
    }
}

/// Prometheus keeps its scrape connection open between scrapes; with a 15 s scrape interval and
/// the default 10 s header timeout the exporter closes every one of them while it waits for the
/// next request. An hour of that (240 scrapes, the timeout shortened) trips no limit.
#[tokio::test]
async fn an_hour_of_keep_alive_scrapes_idle_past_the_header_timeout_trips_no_limit() {
    let mut config = test_config();
    config.limits.header_read_timeout = Duration::from_millis(100);
    let exporter = TestExporter::start_with(config).await;
    let address = exporter.metrics_address();
    let mut closed_while_idle = 0;
    for _ in 0..240 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        // a new connection may in rare cases lose the race against the 100 ms timeout
        // on a loaded machine: then Prometheus, too, scrapes again on a new one
        while !scrape_on(&mut stream).await {
            stream = TcpStream::connect(&address).await.unwrap();
        }
        // idle, as between two scrapes, until the header timeout closes the connection
        closed_by_the_server(&mut stream).await;
        closed_while_idle += 1;
    }
    assert_eq!(closed_while_idle, 240);
    assert_eq!(hits(&exporter, "header_read_timeout").await, 0.0);
    exporter.shutdown().await;
}

/// A client cut off in the middle of its request head trips the limit; one that connected and
/// never sent a byte did not start a request.
#[tokio::test]
async fn only_a_request_cut_off_while_its_head_arrives_counts_as_a_header_timeout() {
    let mut config = test_config();
    config.limits.header_read_timeout = Duration::from_millis(200);
    let exporter = TestExporter::start_with(config).await;
    let address = exporter.webhook_address();
    let mut silent = TcpStream::connect(&address).await.unwrap();
    let mut partial = TcpStream::connect(&address).await.unwrap();
    partial
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_by_the_server(&mut silent).await;
    closed_by_the_server(&mut partial).await;
    wait_until("the cut request is counted", || async {
        hits(&exporter, "header_read_timeout").await >= 1.0
    })
    .await;
    assert_eq!(hits(&exporter, "header_read_timeout").await, 1.0);
    exporter.shutdown().await;
}

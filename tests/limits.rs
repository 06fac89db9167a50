//! Connection and request limits under idle, trickling and slow clients.

mod common;

use std::time::{Duration, Instant};

use common::{TestExporter, fixture, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn address(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
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
    let exporter = TestExporter::start().await;
    let address = address(&exporter.webhook_url);
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections().await < 1000.0 {
        assert!(
            Instant::now() < deadline,
            "the exporter never held 1,000 connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let body = fixture("api-auth-creation-failed");
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(exporter.post(&body).await, 204);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a webhook took {slowest:?} beside 1,000 held connections"
    );
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
    let address = address(&exporter.webhook_url);
    let trickling: Vec<_> = (0..30).map(|_| trickle(address.clone())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every slot is held by a trickling client; the webhook queues until the header timeout
    // closes them.
    let started = Instant::now();
    assert_eq!(exporter.post(&fixture("device-status")).await, 204);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "webhook waited {waited:?}");

    let scrape = exporter.scrape().await;
    let hits = |limit| {
        scrape
            .value(
                "nuki_exporter_connection_limit_hits_total",
                &[("limit", limit)],
            )
            .unwrap()
    };
    assert!(hits("header_read_timeout") >= 20.0, "{}", scrape.0);
    assert!(hits("max_connections") >= 1.0);
    trickling.iter().for_each(tokio::task::JoinHandle::abort);
    exporter.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let mut config = test_config();
    config.limits.header_read_timeout = Duration::from_millis(500);
    let exporter = TestExporter::start_with(config).await;
    let mut stream = TcpStream::connect(address(&exporter.webhook_url))
        .await
        .unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    assert_eq!(read.expect("server closed the idle connection").unwrap(), 0);
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_body_trickles_past_the_request_timeout_gets_408() {
    let mut config = test_config();
    config.limits.request_timeout = Duration::from_millis(500);
    let exporter = TestExporter::start_with(config).await;
    let mut stream = TcpStream::connect(address(&exporter.webhook_url))
        .await
        .unwrap();
    stream
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"feature\":")
        .await
        .unwrap();
    let mut response = vec![0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response)).await;
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

//! The exporter's HTTP contract, against the real server on loopback.

mod common;

use common::{SECRET, TestExporter, fixture, test_config};
use nuki_exporter::source::webhook::signature::sign;

const ERRORS: &str = "nuki_operation_errors_total";
const REJECTED: &str = "nuki_exporter_webhooks_rejected_total";

#[tokio::test]
async fn seed_example_counts_the_contract_series() {
    let exporter = TestExporter::start().await;
    assert_eq!(
        exporter.post(&fixture("api-auth-creation-failed")).await,
        204
    );
    let scrape = exporter.scrape().await;
    let labels = [
        ("operation", "AuthCreation"),
        ("error_code", "0xFF"),
        ("error_name", "ERROR_UNKNOWN"),
        ("smartlock_id", "123456789"),
    ];
    assert_eq!(scrape.value(ERRORS, &labels), Some(1.0));
    assert_eq!(
        scrape.value(
            "nuki_operations_total",
            &[("operation", "AuthCreation"), ("smartlock_id", "123456789")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_received_total",
            &[("source", "api"), ("kind", "AuthCreation")]
        ),
        Some(1.0)
    );
    assert!(
        scrape
            .value("nuki_exporter_last_webhook_timestamp_seconds", &[])
            .unwrap()
            > 1.7e9
    );
    assert!(
        scrape
            .value(
                "nuki_smartlock_last_seen_timestamp_seconds",
                &[("smartlock_id", "123456789")]
            )
            .unwrap()
            > 1.7e9
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn signature_is_required_when_a_secret_is_configured() {
    let exporter = TestExporter::start().await;
    let body = fixture("api-auth-creation-failed");
    let good = sign(SECRET.as_bytes(), &body);
    assert_eq!(exporter.post_signed(&body, None).await, 401);
    assert_eq!(
        exporter
            .post_signed(&body, Some(&sign(b"wrong", &body)))
            .await,
        401
    );
    assert_eq!(exporter.post_signed(&body, Some(&good[..60])).await, 401);
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(exporter.post_signed(&tampered, Some(&good)).await, 401);
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(REJECTED, &[("reason", "signature")]),
        Some(4.0)
    );
    assert_eq!(
        scrape.sum(ERRORS, &[]),
        0.0,
        "a refused webhook changes no domain metric"
    );
    assert_eq!(
        scrape.sum("nuki_exporter_webhooks_received_total", &[]),
        0.0
    );
    assert_eq!(
        scrape.value("nuki_exporter_last_webhook_timestamp_seconds", &[]),
        Some(0.0)
    );

    assert_eq!(
        exporter
            .post_signed(&body, Some(&good.to_uppercase()))
            .await,
        204
    );
    assert_eq!(exporter.scrape().await.sum(ERRORS, &[]), 1.0);
    exporter.shutdown().await;
}

#[tokio::test]
async fn rotated_secrets_are_all_accepted() {
    let mut config = test_config();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("next-secret");
    std::fs::write(&file, "next-secret\n").unwrap();
    config.webhook.secret_files = vec![file];
    let exporter = TestExporter::start_with(config).await;
    let body = fixture("device-status");
    assert_eq!(
        exporter
            .post_signed(&body, Some(&sign(SECRET.as_bytes(), &body)))
            .await,
        204
    );
    assert_eq!(
        exporter
            .post_signed(&body, Some(&sign(b"next-secret", &body)))
            .await,
        204
    );
    assert_eq!(
        exporter
            .post_signed(&body, Some(&sign(b"next-secret\n", &body)))
            .await,
        401
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn without_secrets_unsigned_webhooks_are_accepted() {
    let mut config = test_config();
    config.webhook.secrets.clear();
    let exporter = TestExporter::start_with(config).await;
    assert_eq!(
        exporter.post_signed(&fixture("device-status"), None).await,
        204
    );
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(
            "nuki_smartlock_battery_charge_percent",
            &[("smartlock_id", "123456789")]
        ),
        Some(90.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_are_refused_and_change_nothing_else() {
    let exporter = TestExporter::start().await;
    assert_eq!(
        exporter.post(&fixture("api-auth-creation-failed")).await,
        204
    );
    let before = exporter.scrape().await;
    for body in [
        &b"not json"[..],
        b"[1,2]",
        b"42",
        b"",
        b"{\"feature\":",
        b"\xff\xfe{}",
    ] {
        assert_eq!(
            exporter.post(body).await,
            400,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    let duplicate = exporter
        .client
        .post(&exporter.webhook_url)
        .header(
            nuki_exporter::source::webhook::signature::HEADER,
            sign(SECRET.as_bytes(), br#"{"type":"A","type":"B"}"#),
        )
        .body(r#"{"type":"A","type":"B"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status().as_u16(), 400);
    let message = duplicate.text().await.unwrap();
    assert!(
        message.contains("duplicate field `type`"),
        "a clear error: {message}"
    );
    let after = exporter.scrape().await;
    assert_eq!(after.value(REJECTED, &[("reason", "malformed")]), Some(7.0));
    for metric in [
        ERRORS,
        "nuki_operations_total",
        "nuki_exporter_webhooks_received_total",
    ] {
        assert_eq!(before.samples(metric), after.samples(metric), "{metric}");
    }
    assert_eq!(
        before.value("nuki_exporter_last_webhook_timestamp_seconds", &[]),
        after.value("nuki_exporter_last_webhook_timestamp_seconds", &[])
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let mut config = test_config();
    config.limits.max_body_bytes = 1024;
    let exporter = TestExporter::start_with(config).await;
    let mut large = br#"{"feature":"DEVICE_STATUS","padding":""#.to_vec();
    large.extend(std::iter::repeat_n(b'x', 2048));
    large.extend(br#""}"#);
    assert_eq!(exporter.post(&large).await, 413);

    // Without a Content-Length (chunked), the limit holds while the body streams in.
    let mut chunked = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Nuki-Signature-SHA256: {}\r\nConnection: close\r\n\r\n",
        sign(SECRET.as_bytes(), &large)
    )
    .into_bytes();
    for chunk in large.chunks(100) {
        chunked.extend(format!("{:x}\r\n", chunk.len()).bytes());
        chunked.extend(chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let response = raw_request(&exporter.webhook_address(), &chunked).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(
        exporter.post(&fixture("device-status")).await,
        204,
        "a body under the limit passes"
    );
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(REJECTED, &[("reason", "too_large")]),
        Some(2.0)
    );
    exporter.shutdown().await;
}

/// Sends raw bytes to `address` (`host:port`) and reads the answer until the server closes.
async fn raw_request(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The server may answer 413 and close before the whole body is written.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn wrong_method_and_unknown_path() {
    let exporter = TestExporter::start().await;
    let response = exporter
        .client
        .get(&exporter.webhook_url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let put = exporter
        .client
        .put(&exporter.webhook_url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 405);
    let base = exporter.webhook_url.trim_end_matches("/webhook");
    let missing = exporter
        .client
        .post(format!("{base}/elsewhere"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let post_metrics = exporter
        .client
        .post(format!("{}/metrics", exporter.metrics_base))
        .send()
        .await
        .unwrap();
    assert_eq!(post_metrics.status().as_u16(), 405);
    let scrape = exporter.scrape().await;
    assert_eq!(scrape.value(REJECTED, &[("reason", "method")]), Some(2.0));
    assert_eq!(
        scrape.value(REJECTED, &[("reason", "not_found")]),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn metrics_listener_serves_landing_page_health_and_readiness() {
    let exporter = TestExporter::start().await;
    let get = |path: &str| {
        exporter
            .client
            .get(format!("{}{path}", exporter.metrics_base))
            .send()
    };
    let landing = get("/").await.unwrap();
    assert_eq!(landing.status().as_u16(), 200);
    assert!(
        landing.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = landing.text().await.unwrap();
    assert!(
        page.contains("nuki-exporter") && page.contains("href=\"/metrics\""),
        "{page}"
    );
    assert_eq!(get("/-/healthy").await.unwrap().status().as_u16(), 200);
    assert_eq!(get("/-/ready").await.unwrap().status().as_u16(), 200);
    assert_eq!(
        get("/webhook").await.unwrap().status().as_u16(),
        404,
        "webhooks only on their listener"
    );

    let webhook_base = exporter.webhook_url.trim_end_matches("/webhook").to_owned();
    let on_webhook = |path: &str| exporter.client.get(format!("{webhook_base}{path}")).send();
    assert_eq!(
        on_webhook("/-/healthy").await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(on_webhook("/-/ready").await.unwrap().status().as_u16(), 200);
    assert_eq!(
        on_webhook("/metrics").await.unwrap().status().as_u16(),
        404,
        "metrics only on their listener"
    );

    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(
            "nuki_exporter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(scrape.value("process_resident_memory_bytes", &[]).unwrap() > 0.0);
    exporter.shutdown().await;
}

#[tokio::test]
async fn equal_addresses_serve_everything_on_one_port() {
    let mut config = test_config();
    config.metrics.listen = config.webhook.listen;
    config.webhook.path = "/nuki/hook".into();
    let exporter = TestExporter::start_with(config).await;
    assert!(exporter.webhook_url.starts_with(&exporter.metrics_base));
    assert_eq!(exporter.post(&fixture("device-status")).await, 204);
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_received_total",
            &[("source", "device"), ("kind", "DEVICE_STATUS")]
        ),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn thousands_of_concurrent_webhooks_are_counted_exactly() {
    // Room for every client connection at once, and time for each on two busy cores (4,000
    // connections wait for their headers to be read): this test is about counting, not limits.
    let mut config = test_config();
    config.limits.max_connections = 8192;
    config.limits.header_read_timeout = std::time::Duration::from_secs(300);
    config.limits.request_timeout = std::time::Duration::from_secs(300);
    let exporter = std::sync::Arc::new(TestExporter::start_with(config).await);
    const WEBHOOKS: usize = 4000;
    const LOCKS: usize = 50;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WEBHOOKS {
        let exporter = exporter.clone();
        tasks.spawn(async move {
            let body = format!(
                r#"{{"type":"AuthCreation","requestId":"r{i}","success":false,"detail":[{{"smartlockId":{},"success":false,"errorCode":"ff"}},{{"smartlockId":999,"success":true}}]}}"#,
                i % LOCKS
            );
            exporter.post(body.as_bytes()).await
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 204);
    }
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.sum(ERRORS, &[("error_code", "0xFF")]),
        WEBHOOKS as f64
    );
    for lock in 0..LOCKS {
        let id = lock.to_string();
        assert_eq!(
            scrape.value(
                ERRORS,
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "0xFF"),
                    ("error_name", "ERROR_UNKNOWN"),
                    ("smartlock_id", &id)
                ]
            ),
            Some((WEBHOOKS / LOCKS) as f64)
        );
    }
    assert_eq!(
        scrape.value(
            "nuki_operations_total",
            &[("operation", "AuthCreation"), ("smartlock_id", "999")]
        ),
        Some(WEBHOOKS as f64)
    );
    assert_eq!(
        scrape.sum("nuki_exporter_webhooks_received_total", &[]),
        WEBHOOKS as f64
    );
}

#[tokio::test]
async fn lock_ids_beyond_the_cap_fold_into_other() {
    let mut config = test_config();
    config.limits.max_smartlocks = 3;
    let exporter = TestExporter::start_with(config).await;
    for id in 1..=10 {
        let body = format!(
            r#"{{"type":"UnlockAction","smartlockId":{id},"success":false,"errorCode":"ff"}}"#
        );
        assert_eq!(exporter.post(body.as_bytes()).await, 204);
    }
    let scrape = exporter.scrape().await;
    assert_eq!(scrape.samples(ERRORS).len(), 4, "three locks and other");
    assert_eq!(scrape.sum(ERRORS, &[("smartlock_id", "other")]), 7.0);
    assert_eq!(
        scrape.value(
            "nuki_exporter_label_overflow_total",
            &[("label", "smartlock_id")]
        ),
        Some(7.0)
    );
    assert_eq!(
        scrape.value("nuki_exporter_smartlocks_tracked", &[]),
        Some(3.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_turns_readiness_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    // long enough for a loaded machine to see readiness turn 503 before the listeners close
    config.server.shutdown_delay = std::time::Duration::from_secs(10);
    let mut exporter = TestExporter::start_with(config).await;
    let body = fixture("api-auth-creation-failed");
    let address = exporter.webhook_address();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Nuki-Signature-SHA256: {}\r\n\r\n",
        body.len(),
        sign(SECRET.as_bytes(), &body)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    // the request is in flight: the exporter holds its connection
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while exporter
        .scrape()
        .await
        .value("nuki_exporter_open_connections", &[("listener", "webhook")])
        != Some(1.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "connection never held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let server = exporter.take();
    let shutdown = tokio::spawn(server.shutdown());
    // readiness turns 503 first, while the listeners stay open for shutdown_delay
    let ready_url = format!("{}/-/ready", exporter.metrics_base);
    loop {
        let ready = exporter.client.get(&ready_url).send().await.unwrap();
        if ready.status().as_u16() == 503 {
            break;
        }
        assert_eq!(ready.status().as_u16(), 200);
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never turned 503"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    stream.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    tokio::time::timeout(std::time::Duration::from_secs(90), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "listener closed"
    );
}

//! `/metrics` over HTTP: gzip when the scraper accepts it, identity otherwise.

mod common;

use std::io::Read as _;

use common::{Scrape, TestExporter, fixture};

#[tokio::test]
async fn gzip_is_served_to_scrapers_that_accept_it() {
    let exporter = TestExporter::start().await;
    assert_eq!(exporter.post(&fixture("device-status")).await, 204);
    let url = format!("{}/metrics", exporter.metrics_base);
    // As Prometheus asks.
    let response = exporter
        .client
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "Accept-Encoding");
    let compressed = response.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        compressed.len() * 3 < text.len(),
        "{} of {}",
        compressed.len(),
        text.len()
    );
    let scrape = Scrape(text);
    assert!(
        scrape
            .samples("nuki_smartlock_battery_charge_percent")
            .len()
            == 1
    );

    let refused = exporter
        .client
        .get(&url)
        .header("Accept-Encoding", "gzip;q=0, identity")
        .send()
        .await
        .unwrap();
    assert!(refused.headers().get("content-encoding").is_none());
    let plain = refused.text().await.unwrap();
    assert!(plain.contains("# TYPE nuki_smartlock_battery_charge_percent gauge\n"));
    exporter.shutdown().await;
}

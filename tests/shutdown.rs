//! SIGTERM while webhooks stream in: no webhook answered 2xx is missing from the last scrape,
//! and the binary exits 0 within its grace period.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Running, SECRET, Scrape, exporter_command, fixture};
use nuki_exporter::source::webhook::signature::{HEADER, sign};

const SENDERS: usize = 8;
/// What a loaded machine may add to the exporter's own shutdown bound.
const HANG_MARGIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_webhook() {
    let delay = Duration::from_millis(700);
    let grace = Duration::from_secs(5);
    let mut running = Running::spawn(
        exporter_command()
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
            .env("NUKI_EXPORTER_WEBHOOK__SECRETS", format!("[{SECRET}]"))
            .env("NUKI_EXPORTER_SERVER__SHUTDOWN_DELAY", "700ms")
            .env("NUKI_EXPORTER_SERVER__SHUTDOWN_GRACE_PERIOD", "5s")
            .env("NUKI_EXPORTER_LOG__FORMAT", "json"),
    );
    let webhook_url = format!("http://{}/webhook", running.address_of("webhook"));
    let metrics_url = format!("http://{}/metrics", running.address_of("metrics"));

    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body = fixture("api-auth-creation-failed");
    let signature = sign(SECRET.as_bytes(), &body);
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (accepted, failed, stop) = (accepted.clone(), failed.clone(), stop.clone());
            let (url, body, signature) = (webhook_url.clone(), body.clone(), signature.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let sent = client
                        .post(&url)
                        .header(HEADER, &signature)
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            accepted.fetch_add(1, Ordering::SeqCst)
                        }
                        Ok(response) => panic!("webhook answered {}", response.status()),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    let scraper = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = reqwest::Client::new();
            let mut last = None;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(response) = client.get(&metrics_url).send().await {
                    if let Ok(text) = response.text().await {
                        last = Some(Scrape(text));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last
        }
    });

    // load is flowing: more than 100 webhooks answered before the signal
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.load(Ordering::SeqCst) <= 100 {
        assert!(
            Instant::now() < deadline,
            "load never flowed: {} accepted, {} failed",
            accepted.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terminated = Instant::now();
    running.sigterm();
    // The senders keep every connection busy until the exit: an exporter that did not give up on
    // them after its grace period would never exit. The margin is for a loaded machine; how fast
    // the exit is belongs in bench/.
    let (clean, lines) = running.exited_within(delay + grace + HANG_MARGIN).await;
    eprintln!("exit took {:?} after SIGTERM", terminated.elapsed());
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }
    let last = scraper.await.unwrap().expect("at least one scrape");

    assert!(clean, "exit status after SIGTERM:\n{}", lines.join("\n"));
    let accepted = accepted.load(Ordering::SeqCst) as f64;
    let counted = last.sum("nuki_exporter_webhooks_received_total", &[]);
    let failed = failed.load(Ordering::SeqCst) as f64;
    // Every 2xx is in the last scrape; a request cut off by the close may be counted without
    // its answer arriving, never the other way round.
    assert!(
        counted >= accepted,
        "{accepted} webhooks answered 2xx, last scrape counted {counted}"
    );
    assert!(
        counted <= accepted + failed,
        "counted {counted} of {accepted} answered and {failed} failed"
    );
    assert_eq!(last.sum("nuki_operation_errors_total", &[]), counted);
}

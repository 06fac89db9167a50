//! The real binary with `state.file`: last-known state survives `kill -9`; a damaged or
//! foreign file is reported in one line and ignored. And the Web API token stays out of every
//! log line at every level.

mod common;

use std::time::{Duration, Instant};

use common::nuki_api_stub::{NukiApiStub, Reply, fleet};
use common::{Running, SECRET, Scrape, exporter_command, exporter_with_state_file, run};
use nuki_exporter::signature::{HEADER, sign};

const CRITICAL: &str = r#"{"feature":"DEVICE_STATUS","smartlockId":42,"state":{"batteryCritical":true,"batteryCharge":4,"state":1}}"#;

async fn scrape(metrics: &str) -> Scrape {
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape(body)
}

fn lock_battery_critical(scrape: &Scrape) -> Option<f64> {
    scrape.value(
        "nuki_smartlock_battery_critical",
        &[("smartlock_id", "42"), ("battery", "lock")],
    )
}

/// Waits until `ready` holds, for at most ten seconds.
async fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn after_kill_9_a_battery_critical_lock_is_critical_from_the_first_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let mut first = Running::spawn(&mut exporter_with_state_file(&state_file));
    let webhook = first.address_of("webhook");
    let status = reqwest::Client::new()
        .post(format!("http://{webhook}/webhook"))
        .header(HEADER, sign(SECRET.as_bytes(), CRITICAL.as_bytes()))
        .body(CRITICAL)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    wait_until("the state file names lock 42", || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains(r#""smartlock_id":42"#))
    })
    .await;
    first.kill();

    let mut second = Running::spawn(&mut exporter_with_state_file(&state_file));
    let metrics = second.address_of("metrics");
    let scrape = scrape(&metrics).await;
    assert_eq!(lock_battery_critical(&scrape), Some(1.0), "{}", scrape.0);
    assert_eq!(
        scrape.value(
            "nuki_smartlock_battery_charge_percent",
            &[("smartlock_id", "42")]
        ),
        Some(4.0)
    );
    let (clean, lines) = second.terminate();
    assert!(clean);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("last-known state restored")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_truncated_or_foreign_state_file_is_reported_in_one_line_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let valid = br#"{"format":"nuki-exporter-state","version":1,"locks":[{"smartlock_id":42,"status":{"battery_critical":true},"info":null,"updated_at":1700000000.0}]}"#;
    for damaged in [
        &valid[..valid.len() / 2],
        b"# prometheus.yml\nscrape_configs: []\n".as_slice(),
    ] {
        std::fs::write(&state_file, damaged).unwrap();
        let mut running = Running::spawn(&mut exporter_with_state_file(&state_file));
        let metrics = running.address_of("metrics");
        let scrape = scrape(&metrics).await;
        assert_eq!(lock_battery_critical(&scrape), None);
        let (clean, lines) = running.terminate();
        assert!(clean, "{lines:#?}");
        let reports: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("ignoring the state file"))
            .collect();
        assert_eq!(reports.len(), 1, "{lines:#?}");
        assert!(reports[0].contains("state.json"), "{}", reports[0]);
    }
}

// Multi-threaded: the stand-in keeps answering while a test thread waits for the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_in_no_log_line_at_any_level() {
    const TOKEN: &str = "tok-Zq8xV3-never-log-me";
    let stub = NukiApiStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut lines = Vec::new();
    for reply in [
        Reply::unauthorized(),
        Reply::bad_gateway(),
        Reply::json(b"[{".to_vec()),
        Reply::json(fleet(1, 2, &[])),
    ] {
        stub.route("GET", "/smartlock", reply);
        let requests_before = stub.count("/smartlock");
        let mut running = Running::spawn(
            exporter_with_state_file(&dir.path().join("state.json"))
                .env("NUKI_EXPORTER_LOG__LEVEL", "trace")
                .env("NUKI_EXPORTER_API__TOKEN_FILE", &token_file)
                .env("NUKI_EXPORTER_API__URL", &stub.url)
                .env("NUKI_EXPORTER_API__POLL_INTERVAL", "50ms")
                .env("NUKI_EXPORTER_API__ADVANCED_KEY_ID", "812"),
        );
        running.address_of("metrics");
        wait_until("three polls", || {
            stub.count("/smartlock") >= requests_before + 3
        })
        .await;
        let (clean, seen) = running.terminate();
        assert!(clean, "{seen:#?}");
        lines.extend(seen);
    }
    assert!(lines.iter().any(|l| l.contains("Nuki Web API poll failed")));
    assert!(lines.iter().any(|l| l.contains("401")));
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "{leaks:#?}");

    // Nor in a configuration error about the token file.
    std::fs::write(&token_file, format!("{TOKEN}\nsecond line")).unwrap();
    let ran = run(exporter_command()
        .arg("--check-config")
        .env("NUKI_EXPORTER_API__TOKEN_FILE", &token_file));
    assert!(!ran.ok);
    assert!(ran.stderr.contains("api.token_file"), "{}", ran.stderr);
    assert!(!ran.output().contains(TOKEN), "{}", ran.stderr);
}

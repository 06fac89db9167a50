//! The real binary with `state.file`: last-known state survives `kill -9`; a damaged or
//! foreign file is reported in one line and ignored. And the Web API token stays out of every
//! log line at every level.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::nuki_api_stub::{NukiApiStub, Reply, fleet};
use common::{
    Running, SECRET, Scrape, exporter_command, exporter_with_state_file, run, scrape_address,
};
use nuki_exporter::source::webhook::signature::{HEADER, sign};

const CRITICAL: &str = r#"{"feature":"DEVICE_STATUS","smartlockId":42,"state":{"batteryCritical":true,"batteryCharge":4,"state":1}}"#;

fn lock_battery_critical(scrape: &Scrape) -> Option<f64> {
    scrape.value(
        "nuki_smartlock_battery_critical",
        &[("smartlock_id", "42"), ("battery", "lock")],
    )
}

/// Posts a signed webhook; returns the status code.
async fn post(webhook: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{webhook}/webhook"))
        .header(HEADER, sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `ready` holds, for at most a minute (a hang, not a slow machine).
async fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
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
    assert_eq!(post(&webhook, CRITICAL).await, 204);
    wait_until("the state file names lock 42", || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains(r#""smartlock_id":42"#))
    })
    .await;
    first.kill();

    let mut second = Running::spawn(&mut exporter_with_state_file(&state_file));
    let metrics = second.address_of("metrics");
    let scrape = scrape_address(&metrics).await;
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

/// A battery change seen before a `kill -9` keeps its time: the restart is no new change.
#[tokio::test]
async fn a_battery_change_is_restored_unchanged_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let mut first = Running::spawn(&mut exporter_with_state_file(&state_file));
    let webhook = first.address_of("webhook");
    assert_eq!(post(&webhook, CRITICAL).await, 204);
    let fresh = r#"{"feature":"DEVICE_STATUS","smartlockId":42,"state":{"batteryCritical":false,"batteryCharge":100,"state":1}}"#;
    assert_eq!(post(&webhook, fresh).await, 204);
    let replaced = |scrape: &Scrape| {
        scrape.value(
            "nuki_smartlock_battery_replaced_timestamp_seconds",
            &[("smartlock_id", "42")],
        )
    };
    let seen =
        replaced(&scrape_address(&first.address_of("metrics")).await).expect("a battery change");
    wait_until("the state file keeps the battery change", || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("battery_replaced_at"))
    })
    .await;
    first.kill();

    let mut second = Running::spawn(&mut exporter_with_state_file(&state_file));
    let scrape = scrape_address(&second.address_of("metrics")).await;
    assert_eq!(replaced(&scrape), Some(seen), "{}", scrape.0);
    assert!(second.terminate().0);
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
        let scrape = scrape_address(&metrics).await;
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
                .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true")
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

/// A `detailMessage` with a newline and escape sequences stays inside the one line that
/// reports it, in text and in JSON logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_text_cannot_forge_a_log_line() {
    const FORGED: &str = "FORGED-LINE level=INFO all locks fine";
    let stub = NukiApiStub::start().await;
    let detail = format!("denied\n{FORGED}\u{1b}[2K\u{1b}[1A\r");
    stub.route(
        "GET",
        "/smartlock",
        Reply::status(
            401,
            serde_json::to_vec(&serde_json::json!({ "detailMessage": detail })).unwrap(),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token").unwrap();
    for format in ["text", "json"] {
        let requests_before = stub.count("/smartlock");
        let mut command = exporter_command();
        command
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
            .env("NUKI_EXPORTER_LOG__FORMAT", format)
            .env("NUKI_EXPORTER_API__TOKEN_FILE", &token_file)
            .env("NUKI_EXPORTER_API__URL", &stub.url)
            .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true")
            .env("NUKI_EXPORTER_API__POLL_INTERVAL", "50ms");
        let mut running = Running::spawn(&mut command);
        // The failed poll's log line itself, not the stand-in's count of the request (the line
        // is written after the answer arrives), and not after "listening": the first poll can
        // fail before the listeners log, and the backoff delays the next line.
        running.wait_for("FORGED");
        assert!(stub.count("/smartlock") > requests_before);
        let (clean, lines) = running.terminate();
        assert!(clean, "{format}: {lines:#?}");
        let reported: Vec<&String> = lines.iter().filter(|l| l.contains("FORGED")).collect();
        assert!(!reported.is_empty(), "{format}: {lines:#?}");
        for line in reported {
            assert!(
                line.contains("poll failed"),
                "{format}: a line of its own: {line:?}"
            );
            assert!(!line.contains(['\u{1b}', '\r']), "{format}: {line:?}");
        }
    }
}

/// Peak resident memory of a running process, in bytes.
fn peak_rss(running: &Running) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid())).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Starts the exporter with this state file and `limits.max_smartlocks`; its peak memory once
/// it serves, and its log.
async fn peak_after_start(state_file: &Path, max_smartlocks: &str) -> (u64, Vec<String>) {
    let mut running = Running::spawn(
        exporter_with_state_file(state_file)
            .env("NUKI_EXPORTER_LIMITS__MAX_SMARTLOCKS", max_smartlocks),
    );
    let metrics = running.address_of("metrics");
    scrape_address(&metrics).await;
    let peak = peak_rss(&running);
    let (clean, lines) = running.terminate();
    assert!(clean, "{lines:#?}");
    (peak, lines)
}

#[tokio::test]
async fn a_huge_state_file_costs_memory_by_the_lock_limit_not_by_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let (baseline, _) = peak_after_start(&state_file, "1000").await;

    // 600,000 locks, 40 MB: what a file of another deployment (or anyone who can write the
    // volume) may hold.
    let mut huge = br#"{"format":"nuki-exporter-state","version":1,"locks":["#.to_vec();
    for id in 1..=600_000u64 {
        if id > 1 {
            huge.push(b',');
        }
        huge.extend_from_slice(
            format!(r#"{{"smartlock_id":{id},"status":{{}},"info":null,"updated_at":null}}"#)
                .as_bytes(),
        );
    }
    huge.extend_from_slice(b"]}");
    assert!(huge.len() > 36_000_000, "{}", huge.len());
    std::fs::write(&state_file, &huge).unwrap();
    drop(huge);
    let (peak, lines) = peak_after_start(&state_file, "1000").await;
    assert!(
        peak < baseline + 16 * 1024 * 1024,
        "peak {peak} bytes with the state file, {baseline} without"
    );
    let reports: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("ignoring the state file"))
        .collect();
    assert_eq!(reports.len(), 1, "{lines:#?}");
    assert!(
        reports[0].contains("limits.max_smartlocks"),
        "{}",
        reports[0]
    );
}

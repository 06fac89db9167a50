//! The Nuki Web API source against a local stand-in of the API: the fleet visible before any
//! webhook, locks leaving the account, every error shape, token rotation, delivery health.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nuki_api_stub::{NukiApiStub, Reply, fleet, web_api_fixture};
use common::{Running, Scrape, TestExporter, exporter_command, scrape_address, test_config};
use nuki_exporter::Config;

const TOKEN: &str = "stub-token-0123456789";
/// How long a test waits for what it asserts: a hang, not a slow machine.
const WAIT: Duration = Duration::from_secs(60);
/// `api.timeout` of the tests: a local stand-in that answers later than this has hung.
const API_TIMEOUT: Duration = Duration::from_secs(5);

fn write_token(dir: &Path, token: &str) -> PathBuf {
    let file = dir.join("nuki_api_token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    file
}

/// The test exporter, polling the stand-in every 100 ms.
fn polling_config(stub: &NukiApiStub, token_file: PathBuf) -> Config {
    let mut config = test_config();
    config.api.token_file = Some(token_file);
    config.api.url = stub.url.clone();
    config.api.allow_insecure_http = true;
    config.api.poll_interval = Duration::from_millis(100);
    config.api.timeout = API_TIMEOUT;
    config
}

fn lock_value(scrape: &Scrape, metric: &str, id: &str) -> Option<f64> {
    scrape.value(metric, &[("smartlock_id", id)])
}

fn requests(scrape: &Scrape, endpoint: &str, code: &str) -> f64 {
    scrape.sum(
        "nuki_exporter_api_requests_total",
        &[("endpoint", endpoint), ("code", code)],
    )
}

/// An exporter that polls `stub` with [`TOKEN`], from a token file written into `dir`.
async fn exporter_polling(stub: &NukiApiStub, dir: &Path) -> TestExporter {
    TestExporter::start_with(polling_config(stub, write_token(dir, TOKEN))).await
}

#[tokio::test]
async fn the_fleet_is_visible_before_any_webhook_and_absent_fields_give_no_series() {
    let stub = NukiApiStub::start().await;
    stub.route(
        "GET",
        "/smartlock",
        Reply::json(web_api_fixture("smartlock.json")),
    );
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_polling(&stub, dir.path()).await;
    // `api_up` is set last: the scrape that shows it shows everything that poll read.
    let scrape = exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    assert_eq!(scrape.value("nuki_exporter_api_smartlocks", &[]), Some(3.0));

    let battery = "nuki_smartlock_battery_charge_percent";
    assert_eq!(lock_value(&scrape, battery, "17891012"), Some(78.0));
    assert_eq!(
        lock_value(&scrape, battery, "17891013"),
        None,
        "no batteryCharge, no series"
    );
    assert_eq!(lock_value(&scrape, battery, "17891014"), None);
    let critical = |id, battery| {
        scrape.value(
            "nuki_smartlock_battery_critical",
            &[("smartlock_id", id), ("battery", battery)],
        )
    };
    assert_eq!(critical("17891013", "lock"), Some(1.0));
    assert_eq!(critical("17891013", "keypad"), None);
    assert_eq!(
        critical("17891014", "lock"),
        None,
        "the opener sent no state"
    );
    assert_eq!(
        lock_value(&scrape, "nuki_smartlock_server_state", "17891013"),
        Some(4.0)
    );
    assert_eq!(
        lock_value(&scrape, "nuki_smartlock_server_state", "17891014"),
        Some(0.0)
    );
    assert_eq!(
        lock_value(&scrape, "nuki_smartlock_lock_state", "17891012"),
        Some(1.0)
    );
    assert_eq!(
        lock_value(&scrape, "nuki_smartlock_door_state", "17891012"),
        Some(2.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_smartlock_info",
            &[
                ("smartlock_id", "17891014"),
                ("name", "Intercom"),
                ("device_type", "opener"),
                ("firmware_version", "1.6.6"),
            ]
        ),
        Some(1.0)
    );
    // A poll is not the lock speaking, and no webhook arrived.
    assert!(
        scrape
            .samples("nuki_smartlock_last_seen_timestamp_seconds")
            .is_empty()
    );
    assert_eq!(
        scrape.sum("nuki_exporter_webhooks_received_total", &[]),
        0.0
    );
    assert_eq!(scrape.value("nuki_exporter_api_up", &[]), Some(1.0));
    assert!(requests(&scrape, "/smartlock", "200") >= 1.0);
    assert!(
        scrape
            .value("nuki_exporter_api_last_success_timestamp_seconds", &[])
            .unwrap()
            > 1.7e9
    );

    let request = &stub.received()[0];
    assert_eq!(request.target, "/smartlock");
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn five_hundred_locks_show_battery_and_server_state_after_one_poll() {
    let stub = NukiApiStub::start().await;
    stub.route(
        "GET",
        "/smartlock",
        Reply::json(fleet(30_000_000, 500, &[30_000_007])),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = polling_config(&stub, write_token(dir.path(), TOKEN));
    config.api.poll_interval = Duration::from_secs(3600);
    let exporter = TestExporter::start_with(config).await;
    let scrape = exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_exporter_api_smartlocks", &[]) == Some(500.0)
        })
        .await;
    assert_eq!(stub.count("/smartlock"), 1, "one poll");
    assert_eq!(
        scrape
            .samples("nuki_smartlock_battery_charge_percent")
            .len(),
        500
    );
    assert_eq!(scrape.samples("nuki_smartlock_server_state").len(), 500);
    assert_eq!(
        scrape.sum("nuki_smartlock_battery_critical", &[("battery", "lock")]),
        1.0
    );
    assert_eq!(
        scrape.value(
            "nuki_smartlock_battery_critical",
            &[("smartlock_id", "30000007"), ("battery", "lock")]
        ),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_lock_that_left_the_account_loses_every_series() {
    let stub = NukiApiStub::start().await;
    stub.route("GET", "/smartlock", Reply::json(fleet(100, 3, &[])));
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_polling(&stub, dir.path()).await;
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_exporter_api_smartlocks", &[]) == Some(3.0)
        })
        .await;
    stub.route("GET", "/smartlock", Reply::json(fleet(100, 2, &[])));
    let scrape = exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_exporter_api_smartlocks", &[]) == Some(2.0)
        })
        .await;
    assert!(!scrape.contains(r#"smartlock_id="102""#), "{}", scrape.0);
    assert!(lock_value(&scrape, "nuki_smartlock_server_state", "101").is_some());
    assert_eq!(
        scrape.value("nuki_exporter_smartlocks_tracked", &[]),
        Some(2.0)
    );
    exporter.shutdown().await;
}

/// Each failure Nuki's API is known for: counted, `api_up` 0, the last good values kept, and
/// recovery once the API answers again.
#[tokio::test]
async fn every_error_shape_is_counted_and_keeps_the_last_good_values() {
    let stub = NukiApiStub::start().await;
    let good = Reply::json(web_api_fixture("smartlock.json"));
    stub.route("GET", "/smartlock", good.clone());
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_polling(&stub, dir.path()).await;
    exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;

    let failures: [(&str, Reply, &str, &str); 5] = [
        (
            "401 JSON",
            Reply::unauthorized(),
            "nuki_exporter_api_requests_total",
            "401",
        ),
        (
            "500",
            Reply::status(500, Vec::new()),
            "nuki_exporter_api_requests_total",
            "500",
        ),
        (
            "HTML 502",
            Reply::bad_gateway(),
            "nuki_exporter_api_requests_total",
            "502",
        ),
        (
            "slow answer",
            good.clone().after(API_TIMEOUT * 12),
            "nuki_exporter_api_requests_total",
            "error",
        ),
        (
            "malformed JSON",
            Reply::json(web_api_fixture("truncated.json")),
            "nuki_exporter_api_malformed_responses_total",
            "",
        ),
    ];
    for (name, reply, counter, code) in failures {
        stub.route("GET", "/smartlock", reply);
        let counted = |s: &Scrape| {
            let labels: Vec<(&str, &str)> = if code.is_empty() {
                vec![("endpoint", "/smartlock")]
            } else {
                vec![("endpoint", "/smartlock"), ("code", code)]
            };
            s.sum(counter, &labels) >= 1.0
        };
        let scrape = exporter
            .scrape_until(WAIT, |s| {
                counted(s) && s.value("nuki_exporter_api_up", &[]) == Some(0.0)
            })
            .await;
        assert_eq!(
            lock_value(&scrape, "nuki_smartlock_battery_charge_percent", "17891012"),
            Some(78.0),
            "{name}: the last good value stays"
        );
        assert_eq!(
            scrape.value("nuki_exporter_api_smartlocks", &[]),
            Some(3.0),
            "{name}"
        );
        stub.route("GET", "/smartlock", good.clone());
        exporter
            .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
            .await;
    }
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_rotated_token_is_read_again_after_a_401() {
    let stub = NukiApiStub::start().await;
    stub.route("GET", "/smartlock", Reply::json(fleet(1, 1, &[])));
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_polling(&stub, dir.path()).await;
    exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    // The old token is destroyed (a password change) and the file gets a new one.
    stub.accept_only("rotated-token");
    write_token(dir.path(), "rotated-token");
    exporter
        .scrape_until(WAIT, |_| {
            stub.received()
                .iter()
                .any(|r| r.authorization.as_deref() == Some("Bearer rotated-token"))
        })
        .await;
    // The stand-in has seen the new token, so the 401 before it is counted, and a poll that
    // failed on it has set `api_up` 0 already: a 1 now comes from a poll with the new token.
    exporter
        .scrape_until(WAIT, |s| {
            requests(s, "/smartlock", "401") >= 1.0
                && s.value("nuki_exporter_api_up", &[]) == Some(1.0)
        })
        .await;
    exporter.shutdown().await;
}

#[tokio::test]
async fn delivery_health_reads_webhook_status_and_counts_each_delivery_once() {
    let stub = NukiApiStub::start().await;
    stub.route("GET", "/smartlock", Reply::json(fleet(1, 1, &[])));
    stub.route(
        "GET",
        "/api/key/812/advanced",
        Reply::json(web_api_fixture("advanced-active.json")),
    );
    stub.route(
        "GET",
        "/api/key/812/webhook/logs",
        Reply::json(b"[]".to_vec()),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = polling_config(&stub, write_token(dir.path(), TOKEN));
    config.api.advanced_key_id = Some(812);
    let exporter = TestExporter::start_with(config).await;
    let active = |s: &Scrape| s.value("nuki_webhook_delivery_active", &[("api_key_id", "812")]);
    let deliveries = |s: &Scrape, result| {
        s.value(
            "nuki_webhook_deliveries_total",
            &[("api_key_id", "812"), ("result", result)],
        )
    };
    // `api_up` comes last: the first poll has read the (empty) log, the baseline, by then.
    let scrape = exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    assert_eq!(active(&scrape), Some(1.0));
    assert_eq!(deliveries(&scrape, "success"), Some(0.0));
    assert_eq!(deliveries(&scrape, "failure"), Some(0.0));

    // Three deliveries arrive in the log (one 401: our secret is wrong), then Nuki gives up.
    stub.route(
        "GET",
        "/api/key/812/webhook/logs",
        Reply::json(web_api_fixture("webhook-logs.json")),
    );
    stub.route(
        "GET",
        "/api/key/812/advanced",
        Reply::json(web_api_fixture("advanced-deactivated.json")),
    );
    // The key is reported deactivated before its log is read: wait for both.
    let responses = |s: &Scrape, code| {
        s.value(
            "nuki_webhook_delivery_responses_total",
            &[("api_key_id", "812"), ("code", code)],
        )
    };
    let counted = |s: &Scrape| {
        deliveries(s, "success") == Some(1.0)
            && deliveries(s, "failure") == Some(2.0)
            && responses(s, "401") == Some(1.0)
            && responses(s, "none") == Some(1.0)
    };
    exporter
        .scrape_until(WAIT, |s| active(s) == Some(0.0) && counted(s))
        .await;
    let polls_before = stub.count("/api/key/812/webhook/logs");
    exporter
        .scrape_until(WAIT, |_| {
            stub.count("/api/key/812/webhook/logs") >= polls_before + 2
        })
        .await;
    // Two more reads of the same log: the first of them is recorded before the second is sent.
    let scrape_after = exporter.scrape().await;
    assert!(counted(&scrape_after), "counted again:\n{}", scrape_after.0);
    assert_eq!(scrape_after.value("nuki_exporter_api_up", &[]), Some(1.0));
    assert!(requests(&scrape_after, "/api/key/{id}/advanced", "200") >= 2.0);
    assert!(
        stub.received()
            .iter()
            .any(|r| r.target == "/api/key/812/webhook/logs?limit=100")
    );
    exporter.shutdown().await;
}

/// Webhook log entries `ids` (newest first), all delivered with 204.
fn log_page(ids: std::ops::RangeInclusive<u32>) -> Reply {
    let entries: Vec<serde_json::Value> = ids
        .rev()
        .map(|id| serde_json::json!({"id": format!("{id:024}"), "succeeded": true, "responseStatus": 204}))
        .collect();
    Reply::json(serde_json::to_vec(&entries).unwrap())
}

/// More deliveries than one page of 100 between two polls: the poller pages back with `id` until
/// it reaches entries it counted, and counts each new one once.
#[tokio::test]
async fn a_busy_webhook_log_is_paged_back_to_the_last_counted_entry() {
    let stub = NukiApiStub::start().await;
    stub.route("GET", "/smartlock", Reply::json(fleet(1, 1, &[])));
    stub.route(
        "GET",
        "/api/key/7/advanced",
        Reply::json(web_api_fixture("advanced-active.json")),
    );
    let logs = "/api/key/7/webhook/logs";
    stub.route("GET", logs, log_page(201..=300));
    let dir = tempfile::tempdir().unwrap();
    let mut config = polling_config(&stub, write_token(dir.path(), TOKEN));
    config.api.advanced_key_id = Some(7);
    let exporter = TestExporter::start_with(config).await;
    exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    // 150 new deliveries: a full first page, then a second page reaching the counted ones.
    stub.route(
        "GET",
        &format!("{logs}?limit=100&id={:024}", 351),
        log_page(251..=350),
    );
    stub.route("GET", logs, log_page(351..=450));
    let successes = |s: &Scrape| {
        s.value(
            "nuki_webhook_deliveries_total",
            &[("api_key_id", "7"), ("result", "success")],
        )
    };
    exporter
        .scrape_until(WAIT, |s| successes(s) == Some(150.0))
        .await;
    // Later polls see the same log: nothing is counted twice.
    let reads = stub.count(logs);
    exporter
        .scrape_until(WAIT, |_| stub.count(logs) >= reads + 4)
        .await;
    assert_eq!(successes(&exporter.scrape().await), Some(150.0));
    exporter.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let stub = NukiApiStub::start().await;
    stub.route(
        "GET",
        "/smartlock",
        Reply::status(429, Vec::new()).header("retry-after", "3600"),
    );
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_polling(&stub, dir.path()).await;
    exporter
        .scrape_until(WAIT, |s| requests(s, "/smartlock", "429") == 1.0)
        .await;
    // With a 100 ms interval the poller would have asked again many times over; Nuki asked
    // for an hour. Waiting for other polls to happen instead: a second exporter without the
    // header polls again and again meanwhile.
    let other = NukiApiStub::start().await;
    other.route("GET", "/smartlock", Reply::status(429, Vec::new()));
    let second =
        TestExporter::start_with(polling_config(&other, write_token(dir.path(), TOKEN))).await;
    second
        .scrape_until(WAIT, |s| requests(s, "/smartlock", "429") >= 3.0)
        .await;
    assert_eq!(stub.count("/smartlock"), 1);
    second.shutdown().await;
    exporter.shutdown().await;
}

/// The demo profile's simulated Web API is one the exporter can poll: the demo fleet appears
/// without any webhook, and the key's delivery is ACTIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_polls_the_demo_fleets_simulated_api() {
    let mut demo = common::Running::spawn(common::exporter_command().args([
        "demo",
        "--api-listen",
        "127.0.0.1:0",
        "--locks",
        "5",
        "--interval",
        "1h",
    ]));
    let line = demo.wait_for("SIMULATED Nuki Web API");
    // `… listening address=127.0.0.1:PORT`, with colour codes around the key.
    let address = line[line.rfind("127.0.0.1:").expect("bound address")..].trim();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.api.token_file = Some(write_token(dir.path(), "demo"));
    config.api.url = format!("http://{address}");
    config.api.allow_insecure_http = true;
    config.api.advanced_key_id = Some(1);
    let exporter = TestExporter::start_with(config).await;
    // Each poll sets `api_up` once it has asked every endpoint.
    let scrape = exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    assert_eq!(scrape.value("nuki_exporter_api_smartlocks", &[]), Some(5.0));
    // Four locks and an Opener, which has no battery level.
    let batteries = scrape.samples("nuki_smartlock_battery_charge_percent");
    assert_eq!(batteries.len(), 4);
    assert_eq!(
        scrape.value("nuki_webhook_delivery_active", &[("api_key_id", "1")]),
        Some(1.0)
    );
    exporter.shutdown().await;
    demo.kill();
}

/// Webhook log entries with these ids (newest first), all delivered with 204.
fn log_entries(ids: &[String]) -> Reply {
    let entries: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "succeeded": true, "responseStatus": 204}))
        .collect();
    Reply::json(serde_json::to_vec(&entries).unwrap())
}

fn log_id(id: u32) -> String {
    format!("{id:024}")
}

/// An exporter reading the webhook log of key 7 with 201..=300 already delivered; the
/// deliveries counted as successes so far.
async fn exporter_reading_a_webhook_log(stub: &NukiApiStub, dir: &Path) -> TestExporter {
    stub.route("GET", "/smartlock", Reply::json(fleet(1, 1, &[])));
    stub.route(
        "GET",
        "/api/key/7/advanced",
        Reply::json(web_api_fixture("advanced-active.json")),
    );
    stub.route("GET", LOGS, log_page(201..=300));
    let mut config = polling_config(stub, write_token(dir, TOKEN));
    config.api.advanced_key_id = Some(7);
    let exporter = TestExporter::start_with(config).await;
    exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    exporter
}

const LOGS: &str = "/api/key/7/webhook/logs";

fn log_successes(scrape: &Scrape) -> Option<f64> {
    scrape.value(
        "nuki_webhook_deliveries_total",
        &[("api_key_id", "7"), ("result", "success")],
    )
}

/// Waits until the log was asked for `page` and read four more times: the count is final.
async fn count_after_reading(stub: &NukiApiStub, exporter: &TestExporter, page: &str) -> f64 {
    exporter
        .scrape_until(WAIT, |_| stub.received().iter().any(|r| r.target == page))
        .await;
    let reads = stub.count(LOGS);
    exporter
        .scrape_until(WAIT, |_| stub.count(LOGS) >= reads + 4)
        .await;
    log_successes(&exporter.scrape().await).unwrap_or_default()
}

/// A page that repeats an id, and a next page that starts at the id it was asked for
/// (inclusive): each delivery is counted once.
#[tokio::test]
async fn repeated_log_ids_and_an_inclusive_page_boundary_count_once() {
    let stub = NukiApiStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_reading_a_webhook_log(&stub, dir.path()).await;
    // 150 new deliveries: 450 listed twice, 449..=352; then, asked for from 352, 352 again
    // and 351..=290 (301..=351 new).
    let mut first: Vec<String> = vec![log_id(450)];
    first.extend((352..=450).rev().map(log_id));
    assert_eq!(first.len(), 100);
    let second_page = format!("{LOGS}?limit=100&id={}", log_id(352));
    stub.route("GET", &second_page, log_page(290..=352));
    stub.route("GET", LOGS, log_entries(&first));
    assert_eq!(
        count_after_reading(&stub, &exporter, &second_page).await,
        150.0
    );
    exporter.shutdown().await;
}

/// A log id full of URL syntax is URL-encoded in the paging URL.
#[tokio::test]
async fn a_paging_log_id_is_url_encoded() {
    let stub = NukiApiStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_reading_a_webhook_log(&stub, dir.path()).await;
    let odd = "65f1 c0de&id=1/é?#";
    let mut first: Vec<String> = (352..=450).rev().map(log_id).collect();
    first.push(odd.into());
    let second_page = format!("{LOGS}?limit=100&id=65f1+c0de%26id%3D1%2F%C3%A9%3F%23");
    stub.route("GET", &second_page, log_page(290..=351));
    stub.route("GET", LOGS, log_entries(&first));
    // 450..=352, the odd one, 351..=301.
    assert_eq!(
        count_after_reading(&stub, &exporter, &second_page).await,
        151.0
    );
    exporter.shutdown().await;
}

/// One lock that no Rust value can hold (a lone surrogate in its name, `1e400` in a read
/// field) is skipped and counted; the other locks are recorded and the poll succeeds.
#[tokio::test]
async fn an_unreadable_lock_is_skipped_and_the_others_are_recorded() {
    let stub = NukiApiStub::start().await;
    let body = br#"[
        {"smartlockId":1,"name":"Hall \ud800","serverState":0,"state":{"batteryCharge":50}},
        {"smartlockId":2,"serverState":0,"state":{"batteryCharge":1e400}},
        {"smartlockId":3,"serverState":0,"state":{"batteryCharge":70,"batteryCritical":true}}
    ]"#;
    stub.route("GET", "/smartlock", Reply::json(body.to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter_polling(&stub, dir.path()).await;
    let scrape = exporter
        .scrape_until(WAIT, |s| s.value("nuki_exporter_api_up", &[]) == Some(1.0))
        .await;
    assert_eq!(
        lock_value(&scrape, "nuki_smartlock_battery_charge_percent", "3"),
        Some(70.0)
    );
    for skipped in ["1", "2"] {
        assert_eq!(
            scrape.sum("nuki_smartlock_server_state", &[("smartlock_id", skipped)]),
            0.0,
            "lock {skipped} has no series"
        );
    }
    assert_eq!(
        scrape.value(
            "nuki_exporter_api_smartlocks_skipped",
            &[("reason", "malformed")]
        ),
        Some(2.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_exporter_api_malformed_responses_total",
            &[("endpoint", "/smartlock")]
        ),
        Some(0.0)
    );
    exporter.shutdown().await;
}

/// The real binary polling the stand-in every `interval`, with JSON logs.
fn polling_binary(stub: &NukiApiStub, dir: &Path, interval: &str) -> Running {
    let token_file = write_token(dir, TOKEN);
    Running::spawn(
        exporter_command()
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
            .env("NUKI_EXPORTER_LOG__FORMAT", "json")
            .env("NUKI_EXPORTER_API__URL", &stub.url)
            .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true")
            .env("NUKI_EXPORTER_API__TOKEN_FILE", token_file)
            .env("NUKI_EXPORTER_API__TIMEOUT", "60s")
            .env("NUKI_EXPORTER_API__POLL_INTERVAL", interval),
    )
}

/// Scrapes the binary's metrics listener until `ready` holds; five minutes is a hang (a debug
/// build records the 60 MB answer's millions of locks in over a minute on two loaded cores).
async fn scrape_binary_until(metrics: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let scrape = scrape_address(metrics).await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reached:\n{}",
            scrape.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const MIB: u64 = 1024 * 1024;
/// The memory limit the Kubernetes deployment ships (deploy/kubernetes: 256Mi).
const SHIPPED_MEMORY_LIMIT: u64 = 256 * MIB;

/// A `GET /smartlock` answer of `bytes` bytes of minimal locks (`{"smartlockId":N}`); the
/// number of locks.
fn minimal_locks(bytes: usize) -> (Vec<u8>, u64) {
    let mut body = Vec::with_capacity(bytes + 64);
    body.push(b'[');
    let mut id = 0;
    while body.len() < bytes {
        id += 1;
        if id > 1 {
            body.push(b',');
        }
        body.extend_from_slice(format!(r#"{{"smartlockId":{id}}}"#).as_bytes());
    }
    body.push(b']');
    (body, id)
}

/// An answer of 60 MB (under the 64 MiB body cap) of millions of minimal locks: the exporter
/// keeps `limits.max_smartlocks` of them, counts the rest, and its peak memory stays under the
/// shipped limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_mb_answer_keeps_the_exporter_under_its_memory_limit() {
    let stub = NukiApiStub::start().await;
    let (body, locks) = minimal_locks(60_000_000);
    stub.route("GET", "/smartlock", Reply::json(body));
    let dir = tempfile::tempdir().unwrap();
    let mut exporter = polling_binary(&stub, dir.path(), "1h");
    let metrics = exporter.address_of("metrics");
    let scrape = scrape_binary_until(&metrics, |s| {
        s.value("nuki_exporter_api_up", &[]) == Some(1.0)
    })
    .await;
    let (_, peak) = exporter.memory();
    println!("60 MB answer of {locks} locks: peak RSS {} MiB", peak / MIB);
    assert!(
        peak < SHIPPED_MEMORY_LIMIT,
        "peak RSS {} MiB is over the shipped limit",
        peak / MIB
    );
    assert_eq!(
        scrape.value("nuki_exporter_smartlocks_tracked", &[]),
        Some(10_000.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_exporter_api_smartlocks_skipped",
            &[("reason", "over_limit")]
        ),
        Some((locks - 10_000) as f64)
    );
    assert_eq!(
        scrape.value("nuki_exporter_api_smartlocks", &[]),
        Some(locks as f64)
    );
    assert_eq!(scrape.value("nuki_exporter_api_up", &[]), Some(1.0));
}

/// A full 10,000-lock account (the default `limits.max_smartlocks`) raises the peak memory by
/// at most 40 MiB over what the exporter held before the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_lock_poll_raises_the_peak_by_at_most_40_mib() {
    let stub = NukiApiStub::start().await;
    stub.route("GET", "/smartlock", Reply::json(b"[]".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let mut exporter = polling_binary(&stub, dir.path(), "200ms");
    let metrics = exporter.address_of("metrics");
    scrape_binary_until(&metrics, |s| {
        s.value("nuki_exporter_api_up", &[]) == Some(1.0)
    })
    .await;
    let (before, _) = exporter.memory();
    let body = fleet(1, 10_000, &[]);
    let size = body.len();
    stub.route("GET", "/smartlock", Reply::json(body));
    scrape_binary_until(&metrics, |s| {
        s.value("nuki_exporter_smartlocks_tracked", &[]) == Some(10_000.0)
    })
    .await;
    let (after, peak) = exporter.memory();
    println!(
        "10,000 locks ({} MB answer): RSS {} MiB before the poll, {} MiB after, peak {} MiB",
        size / 1_000_000,
        before / MIB,
        after / MIB,
        peak / MIB
    );
    assert!(
        peak.saturating_sub(before) <= 40 * MIB,
        "peak {} MiB is more than 40 MiB over {} MiB",
        peak / MIB,
        before / MIB
    );
}

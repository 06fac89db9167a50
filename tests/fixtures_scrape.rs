//! Every webhook fixture, posted signed to a fresh exporter, and the exact series a scrape then
//! shows; `promtool check metrics` on a scrape that holds every metric.

mod common;

use common::{TestExporter, fixture, fixture_names, tool};

type Series = (&'static str, &'static [(&'static str, &'static str)], f64);

const LOCK: &str = "123456789";

/// What a scrape shows after each fixture, beyond the received counter and timestamps.
fn expectations(name: &str) -> Vec<Series> {
    match name {
        "api-auth-creation-failed" => vec![
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "0xFF"),
                    ("error_name", "ERROR_UNKNOWN"),
                    ("smartlock_id", LOCK),
                ],
                1.0,
            ),
            (
                "nuki_operations_total",
                &[("operation", "AuthCreation"), ("smartlock_id", LOCK)],
                1.0,
            ),
        ],
        "api-auth-creation-mixed" => vec![
            (
                "nuki_operations_total",
                &[("operation", "AuthCreation"), ("smartlock_id", "1001")],
                1.0,
            ),
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "0x4C"),
                    ("error_name", "K_ERROR_VOLTAGE_TOO_LOW"),
                    ("smartlock_id", "1002"),
                ],
                1.0,
            ),
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "0x13"),
                    ("error_name", "P_ERROR_MAX_USER"),
                    ("smartlock_id", "1003"),
                ],
                1.0,
            ),
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "0x62"),
                    ("error_name", "UNKNOWN"),
                    ("smartlock_id", "1004"),
                ],
                1.0,
            ),
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "invalid"),
                    ("error_name", "INVALID"),
                    ("smartlock_id", "1005"),
                ],
                1.0,
            ),
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "AuthCreation"),
                    ("error_code", "missing"),
                    ("error_name", "MISSING"),
                    ("smartlock_id", "1006"),
                ],
                1.0,
            ),
            ("nuki_exporter_smartlocks_tracked", &[], 6.0),
        ],
        "api-unlock-action-success" => vec![(
            "nuki_operations_total",
            &[("operation", "UnlockAction"), ("smartlock_id", LOCK)],
            1.0,
        )],
        "api-lock-action-failed-flat" => vec![
            (
                "nuki_operations_total",
                &[("operation", "LockAction"), ("smartlock_id", LOCK)],
                1.0,
            ),
            (
                "nuki_operation_errors_total",
                &[
                    ("operation", "LockAction"),
                    ("error_code", "0x42"),
                    ("error_name", "K_ERROR_MOTOR_BLOCKED"),
                    ("smartlock_id", LOCK),
                ],
                1.0,
            ),
        ],
        "device-status" => vec![
            (
                "nuki_smartlock_battery_charge_percent",
                &[("smartlock_id", LOCK)],
                90.0,
            ),
            (
                "nuki_smartlock_battery_critical",
                &[("smartlock_id", LOCK), ("battery", "lock")],
                0.0,
            ),
            (
                "nuki_smartlock_battery_critical",
                &[("smartlock_id", LOCK), ("battery", "keypad")],
                0.0,
            ),
            (
                "nuki_smartlock_battery_critical",
                &[("smartlock_id", LOCK), ("battery", "doorsensor")],
                1.0,
            ),
            (
                "nuki_smartlock_server_state",
                &[("smartlock_id", LOCK)],
                0.0,
            ),
            ("nuki_smartlock_lock_state", &[("smartlock_id", LOCK)], 1.0),
            ("nuki_smartlock_door_state", &[("smartlock_id", LOCK)], 2.0),
        ],
        "device-status-offline" => vec![
            (
                "nuki_smartlock_battery_charge_percent",
                &[("smartlock_id", "555000111")],
                8.0,
            ),
            (
                "nuki_smartlock_battery_critical",
                &[("smartlock_id", "555000111"), ("battery", "lock")],
                1.0,
            ),
            (
                "nuki_smartlock_server_state",
                &[("smartlock_id", "555000111")],
                4.0,
            ),
            (
                "nuki_smartlock_lock_state",
                &[("smartlock_id", "555000111")],
                254.0,
            ),
            (
                "nuki_smartlock_door_state",
                &[("smartlock_id", "555000111")],
                3.0,
            ),
        ],
        // Alone, a first report: nothing to compare with, so no battery change.
        "device-status-replaced-battery" => vec![
            (
                "nuki_smartlock_battery_charge_percent",
                &[("smartlock_id", "555000111")],
                100.0,
            ),
            (
                "nuki_smartlock_battery_charging",
                &[("smartlock_id", "555000111")],
                0.0,
            ),
        ],
        "device-masterdata" => vec![
            (
                "nuki_smartlock_info",
                &[
                    ("smartlock_id", LOCK),
                    ("name", "Front door"),
                    ("device_type", "smartlock_3_4"),
                    ("firmware_version", "3.10.7"),
                ],
                1.0,
            ),
            (
                "nuki_smartlock_server_state",
                &[("smartlock_id", LOCK)],
                0.0,
            ),
        ],
        // A lock Nuki reports deleted and the exporter never saw: nothing to remove, nothing added.
        "device-masterdata-deleted" => vec![("nuki_exporter_smartlocks_tracked", &[], 0.0)],
        "device-config" | "device-auths" | "device-unknown-feature" => {
            vec![("nuki_exporter_smartlocks_tracked", &[], 1.0)]
        }
        "device-logs-motor-blocked" => vec![(
            "nuki_smartlock_activity_log_entries_total",
            &[
                ("smartlock_id", LOCK),
                ("action", "unlock"),
                ("completion_state", "motor_blocked"),
            ],
            1.0,
        )],
        "device-logs-invalid-code" => vec![(
            "nuki_smartlock_activity_log_entries_total",
            &[
                ("smartlock_id", LOCK),
                ("action", "unlock"),
                ("completion_state", "invalid_code"),
            ],
            1.0,
        )],
        "device-logs-success" => vec![(
            "nuki_smartlock_activity_log_entries_total",
            &[
                ("smartlock_id", LOCK),
                ("action", "lock"),
                ("completion_state", "success"),
            ],
            1.0,
        )],
        "account-user" | "unknown-shape" => vec![("nuki_exporter_smartlocks_tracked", &[], 0.0)],
        other => panic!("fixture {other} has no expectation: add one here"),
    }
}

/// The (source, kind) each fixture is received as.
fn received_as(name: &str) -> (&'static str, &'static str) {
    match name {
        "api-auth-creation-failed" | "api-auth-creation-mixed" => ("api", "AuthCreation"),
        "api-unlock-action-success" => ("api", "UnlockAction"),
        "api-lock-action-failed-flat" => ("api", "LockAction"),
        "device-status" | "device-status-offline" | "device-status-replaced-battery" => {
            ("device", "DEVICE_STATUS")
        }
        "device-masterdata" | "device-masterdata-deleted" => ("device", "DEVICE_MASTERDATA"),
        "device-config" => ("device", "DEVICE_CONFIG"),
        "device-auths" => ("device", "DEVICE_AUTHS"),
        "account-user" => ("device", "ACCOUNT_USER"),
        "device-unknown-feature" => ("device", "DEVICE_FUTURE_THING"),
        "unknown-shape" => ("unknown", "unknown"),
        name if name.starts_with("device-logs") => ("device", "DEVICE_LOGS"),
        other => panic!("fixture {other} has no expectation: add one here"),
    }
}

#[tokio::test]
async fn each_fixture_shows_its_series_in_a_scrape() {
    let names = fixture_names();
    assert!(names.len() >= 16, "{names:?}");
    for name in names {
        let exporter = TestExporter::start().await;
        assert_eq!(exporter.post(&fixture(&name)).await, 204, "{name}");
        let scrape = exporter.scrape().await;
        let (source, kind) = received_as(&name);
        assert_eq!(
            scrape.value(
                "nuki_exporter_webhooks_received_total",
                &[("source", source), ("kind", kind)]
            ),
            Some(1.0),
            "{name}"
        );
        assert_eq!(
            scrape.sum("nuki_exporter_webhooks_received_total", &[]),
            1.0,
            "{name}"
        );
        for (metric, labels, value) in expectations(&name) {
            assert_eq!(
                scrape.value(metric, labels),
                Some(value),
                "{name}: {metric}{labels:?}\n{}",
                scrape.0
            );
        }
        exporter.shutdown().await;
    }
}

/// A lock at 8 % that reports 100 % has new batteries: the time of the report is kept.
#[tokio::test]
async fn a_jump_in_charge_is_a_battery_change() {
    let exporter = TestExporter::start().await;
    let replaced = "nuki_smartlock_battery_replaced_timestamp_seconds";
    let lock = [("smartlock_id", "555000111")];
    assert_eq!(exporter.post(&fixture("device-status-offline")).await, 204);
    assert_eq!(exporter.scrape().await.value(replaced, &lock), None);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        exporter
            .post(&fixture("device-status-replaced-battery"))
            .await,
        204
    );
    let scrape = exporter.scrape().await;
    let at = scrape.value(replaced, &lock).expect("a battery change");
    assert!((before - 1.0..before + 60.0).contains(&at), "{at} {before}");
    assert_eq!(
        scrape.value("nuki_smartlock_state_timestamp_seconds", &lock),
        Some(at)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn deleted_lock_loses_every_series() {
    let exporter = TestExporter::start().await;
    for name in [
        "device-masterdata",
        "device-status",
        "api-auth-creation-failed",
        "device-logs-motor-blocked",
        "device-status-offline",
    ] {
        assert_eq!(exporter.post(&fixture(name)).await, 204);
    }
    assert!(
        exporter
            .scrape()
            .await
            .contains(&format!("smartlock_id=\"{LOCK}\""))
    );
    assert_eq!(
        exporter.post(&fixture("device-masterdata-deleted")).await,
        204
    );
    let scrape = exporter.scrape().await;
    assert!(
        !scrape.contains(&format!("smartlock_id=\"{LOCK}\"")),
        "{}",
        scrape.0
    );
    assert!(
        scrape.contains("smartlock_id=\"555000111\""),
        "other locks keep their series"
    );
    assert_eq!(
        scrape.value("nuki_exporter_smartlocks_tracked", &[]),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn keypad_codes_and_emails_never_become_labels() {
    let exporter = TestExporter::start().await;
    assert_eq!(exporter.post(&fixture("device-auths")).await, 204);
    assert_eq!(exporter.post(&fixture("account-user")).await, 204);
    let scrape = exporter.scrape().await;
    for secret in [
        "982345",
        "Guest Maria",
        "alice.host@example.org",
        "65219648fe57075d71a6cb01",
    ] {
        assert!(!scrape.contains(secret), "{secret} leaked into /metrics");
    }
    exporter.shutdown().await;
}

#[tokio::test]
async fn promtool_accepts_a_scrape_with_every_metric() {
    let promtool = tool("promtool", "prometheus");
    let exporter = TestExporter::start().await;
    // Every fixture but the deletion, which would remove lock 123456789's series again.
    for name in fixture_names()
        .iter()
        .filter(|n| *n != "device-masterdata-deleted")
    {
        assert_eq!(exporter.post(&fixture(name)).await, 204);
    }
    assert_eq!(exporter.post(b"not json").await, 400);
    let scrape = exporter.scrape().await;
    for metric in [
        "nuki_operation_errors_total",
        "nuki_operations_total",
        "nuki_smartlock_battery_charge_percent",
        "nuki_smartlock_battery_critical",
        "nuki_smartlock_server_state",
        "nuki_smartlock_lock_state",
        "nuki_smartlock_door_state",
        "nuki_smartlock_last_seen_timestamp_seconds",
        "nuki_smartlock_activity_log_entries_total",
        "nuki_exporter_webhooks_received_total",
        "nuki_exporter_webhooks_rejected_total",
        "nuki_exporter_last_webhook_timestamp_seconds",
        "nuki_exporter_label_overflow_total",
        "nuki_exporter_smartlocks_tracked",
        "nuki_exporter_build_info",
        "nuki_smartlock_info",
    ] {
        assert!(
            !scrape.samples(metric).is_empty(),
            "{metric} missing from the scrape"
        );
        assert!(
            scrape.contains(&format!("# HELP {metric} ")),
            "{metric} has no HELP"
        );
    }

    let mut child = common::ChildGuard::spawn(
        std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
    .unwrap();
    use std::io::Write;
    child
        .take_stdin()
        .unwrap()
        .write_all(scrape.0.as_bytes())
        .unwrap();
    let output = child.wait_with_output();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool check metrics found problems:\n{report}"
    );
    exporter.shutdown().await;
}

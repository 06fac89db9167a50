//! The shipped Alertmanager configuration (deploy/alertmanager/alertmanager.yml): amtool's checks,
//! routing of every alert by its severity, and inhibition proven with the real Alertmanager.

mod stack_support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stack_support::*;

const PAGER: &str = "pagerduty";

fn config() -> std::path::PathBuf {
    repo().join("deploy/alertmanager/alertmanager.yml")
}

/// The receivers `amtool config routes test` resolves for a label set.
fn route(labels: &[(&str, &str)]) -> Vec<String> {
    let mut command = Command::new(amtool());
    command
        .args(["config", "routes", "test"])
        .arg(format!("--config.file={}", config().display()));
    for (k, v) in labels {
        command.arg(format!("{k}={v}"));
    }
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .split(',')
        .map(|r| r.trim().to_string())
        .collect()
}

#[test]
fn amtool_check_config_accepts_the_configuration() {
    let output = run_ok(Command::new(amtool()).arg("check-config").arg(config()));
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn critical_alerts_page_and_warnings_do_not() {
    assert_eq!(route(&[("severity", "critical")]), [PAGER]);
    assert_ne!(route(&[("severity", "warning")]), [PAGER]);
    assert_eq!(route(&[("severity", "warning")]), ["team-webhook"]);
    assert_eq!(route(&[("severity", "info")]), ["null"]);
    // an alert without severity must not vanish, and must not page
    assert_eq!(route(&[("alertname", "Unlabelled")]), ["team-webhook"]);

    // every shipped alert, with the labels its rule gives it
    for rule in alert_rules() {
        let severity = rule.label("severity").expect("severity");
        let labels = [
            ("alertname", rule.alert.as_str()),
            ("job", "nuki-exporter"),
            ("smartlock_id", "123456789"),
            ("severity", severity),
        ];
        let receivers = route(&labels);
        match severity {
            "critical" => assert_eq!(receivers, [PAGER], "{} must page", rule.alert),
            _ => assert!(
                !receivers.iter().any(|r| r == PAGER),
                "{} ({severity}) must not page, goes to {receivers:?}",
                rule.alert
            ),
        }
    }
}

#[test]
fn the_pager_is_pagerduty_events_v2_with_a_key_file_and_groups_per_alert() {
    let doc = yaml(config());
    let receivers = doc["receivers"].as_sequence().expect("receivers");
    let pager = receivers
        .iter()
        .find(|r| r["name"].as_str() == Some(PAGER))
        .expect("a pagerduty receiver");
    let pd = &pager["pagerduty_configs"][0];
    assert!(
        pd["routing_key_file"]
            .as_str()
            .is_some_and(|f| f.starts_with("/run/secrets/")),
        "PagerDuty Events v2 must read its routing key from a secret file"
    );
    assert!(
        pd["routing_key"].is_null()
            && pd["service_key"].is_null()
            && pd["service_key_file"].is_null(),
        "no inline key, and Events v2 (routing_key), not the v1 service_key"
    );
    let group_by: Vec<&str> = doc["route"]["group_by"]
        .as_sequence()
        .expect("route.group_by")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        group_by.contains(&"alertname") && group_by.contains(&"job"),
        "{group_by:?}"
    );

    // the inhibition while the exporter is down must be scoped by job (without a shared label an
    // inhibit rule mutes everything it matches)
    let rules = doc["inhibit_rules"].as_sequence().expect("inhibit_rules");
    let down = rules
        .iter()
        .find(|r| {
            r["source_matchers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|m| m.as_str() == Some("alertname=\"NukiExporterDown\""))
        })
        .expect("an inhibit rule with source alertname=\"NukiExporterDown\"");
    let equal: Vec<&str> = down["equal"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(equal, ["job"]);
}

// ------------------------------------------------------------------------------------------------
// Inhibition, with the real Alertmanager

fn alert(labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({ "labels": labels, "annotations": { "summary": "test." } })
}

/// alertname/job/smartlock_id -> state ("active" or "suppressed") of every alert Alertmanager holds.
async fn states(client: &reqwest::Client, am: &common::Alertmanager) -> Vec<(String, String)> {
    let alerts: Value = client
        .get(format!("{}/api/v2/alerts", am.url()))
        .send()
        .await
        .expect("GET alerts")
        .json()
        .await
        .expect("alerts JSON");
    let mut out: Vec<(String, String)> = alerts
        .as_array()
        .expect("alert list")
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let key = format!(
                "{}/{}/{}",
                l["alertname"].as_str().unwrap_or(""),
                l["job"].as_str().unwrap_or(""),
                l["smartlock_id"].as_str().unwrap_or("")
            );
            (key, a["status"]["state"].as_str().unwrap_or("").to_string())
        })
        .collect();
    out.sort();
    out
}

async fn post(client: &reqwest::Client, am: &common::Alertmanager, alerts: Vec<Value>) {
    let r = client
        .post(format!("{}/api/v2/alerts", am.url()))
        .json(&alerts)
        .send()
        .await
        .expect("POST alerts");
    assert!(r.status().is_success(), "POST alerts: {}", r.status());
}

async fn wait_for(
    client: &reqwest::Client,
    am: &common::Alertmanager,
    expected: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = states(client, am).await;
        if got == expected || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inhibition_mutes_lock_alerts_while_the_exporter_is_down_and_unreachable_while_offline() {
    let client = reqwest::Client::new();
    let shipped = read(config());
    let am = common::Alertmanager::start(&shipped, &[]).await;
    let job = "nuki-exporter";

    // an offline lock mutes its own Unreachable alert, not another lock's
    post(
        &client,
        &am,
        vec![
            alert(&[
                ("alertname", "NukiSmartlockOffline"),
                ("job", job),
                ("smartlock_id", "202"),
                ("severity", "critical"),
            ]),
            alert(&[
                ("alertname", "NukiSmartlockUnreachable"),
                ("job", job),
                ("smartlock_id", "202"),
                ("severity", "warning"),
            ]),
            alert(&[
                ("alertname", "NukiSmartlockUnreachable"),
                ("job", job),
                ("smartlock_id", "303"),
                ("severity", "warning"),
            ]),
            alert(&[
                ("alertname", "NukiSmartlockUnreachable"),
                ("job", "other-exporter"),
                ("smartlock_id", "303"),
                ("severity", "warning"),
            ]),
        ],
    )
    .await;
    let expected = [
        ("NukiSmartlockOffline/nuki-exporter/202", "active"),
        ("NukiSmartlockUnreachable/nuki-exporter/202", "suppressed"),
        ("NukiSmartlockUnreachable/nuki-exporter/303", "active"),
        ("NukiSmartlockUnreachable/other-exporter/303", "active"),
    ];
    let got = wait_for(&client, &am, &expected).await;
    assert_eq!(
        got,
        expected.map(|(k, v)| (k.to_string(), v.to_string())),
        "Offline must inhibit Unreachable of the same lock only"
    );

    // the exporter down mutes every other Nuki alert of its job, and nothing of another job
    post(
        &client,
        &am,
        vec![
            alert(&[
                ("alertname", "NukiExporterDown"),
                ("job", job),
                ("severity", "critical"),
            ]),
            alert(&[
                ("alertname", "NukiWebhooksStalled"),
                ("job", job),
                ("severity", "warning"),
            ]),
        ],
    )
    .await;
    let expected = [
        ("NukiExporterDown/nuki-exporter/", "active"),
        ("NukiSmartlockOffline/nuki-exporter/202", "suppressed"),
        ("NukiSmartlockUnreachable/nuki-exporter/202", "suppressed"),
        ("NukiSmartlockUnreachable/nuki-exporter/303", "suppressed"),
        ("NukiSmartlockUnreachable/other-exporter/303", "active"),
        ("NukiWebhooksStalled/nuki-exporter/", "suppressed"),
    ];
    let got = wait_for(&client, &am, &expected).await;
    assert_eq!(
        got,
        expected.map(|(k, v)| (k.to_string(), v.to_string())),
        "NukiExporterDown must inhibit the other Nuki alerts of its job only"
    );
}

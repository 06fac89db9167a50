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
    let ran = run(&mut command);
    assert!(ran.ok, "{command:?} failed: {}", ran.stderr);
    ran.stdout
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
            "none" => assert_eq!(
                receivers,
                ["deadmansswitch"],
                "{} goes to the dead man's switch only",
                rule.alert
            ),
            "info" => assert_eq!(receivers, ["null"], "{} notifies nobody", rule.alert),
            _ => assert!(
                !receivers.iter().any(|r| r == PAGER),
                "{} ({severity}) must not page, goes to {receivers:?}",
                rule.alert
            ),
        }
    }
}

/// docs/alerts.md says where each alert goes: its Route column starts with the receiver amtool
/// finds for the alert's labels.
#[test]
fn the_routes_in_docs_alerts_md_are_the_shipped_routes() {
    let table = alert_table(&read(repo().join("docs/alerts.md")));
    assert!(!table.is_empty(), "docs/alerts.md has no alert table");
    for rule in alert_rules() {
        let cells = table
            .get(&rule.alert)
            .unwrap_or_else(|| panic!("docs/alerts.md lacks {}", rule.alert));
        let documented = cells.get(1).map(String::as_str).unwrap_or_default();
        let mut labels = vec![
            ("alertname", rule.alert.as_str()),
            ("job", "nuki-exporter"),
            ("severity", rule.label("severity").unwrap_or_default()),
        ];
        if documented.contains("per lock") {
            labels.push(("smartlock_id", "123456789"));
        }
        let receivers = route(&labels).join(", ");
        assert!(
            documented.starts_with(&receivers),
            "{}: docs/alerts.md says {documented:?}, amtool routes it to {receivers}",
            rule.alert
        );
    }
}

/// The runbook's test page mutes nothing: every shipped alert (in the job the inhibitions use and
/// in the test page's own job) has the same state in an Alertmanager that holds the test page
/// (the runbook's `amtool ... alert add` line, its labels as written) as in one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbook_test_page_mutes_no_other_alert() {
    let runbook = read(repo().join("docs/runbook.md"));
    let command = runbook
        .lines()
        .find(|l| l.contains(" alert add "))
        .expect("docs/runbook.md has an `amtool ... alert add` test page");
    let words: Vec<&str> = command
        .split(" alert add ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take_while(|w| !w.starts_with('\\'))
        .collect();
    let mut test_page = vec![("alertname", words[0])];
    test_page.extend(words[1..].iter().filter_map(|w| w.split_once('=')));
    assert!(
        test_page.contains(&("severity", "critical")),
        "{test_page:?}"
    );
    let page_job = test_page
        .iter()
        .find(|(k, _)| *k == "job")
        .map_or("", |(_, v)| *v);

    let shipped: Vec<Value> = ["nuki-exporter", page_job]
        .iter()
        .flat_map(|job| {
            alert_rules().into_iter().map(move |rule| {
                alert(&[
                    ("alertname", rule.alert.as_str()),
                    ("job", job),
                    ("smartlock_id", "123456789"),
                    ("severity", rule.label("severity").unwrap_or_default()),
                ])
            })
        })
        .collect();
    let client = reqwest::Client::new();
    let mut outcomes = Vec::new();
    for with_page in [false, true] {
        let am = common::Alertmanager::start(&read(config()), &[]).await;
        if with_page {
            post(&client, &am, vec![alert(&test_page)]).await;
        }
        post(&client, &am, shipped.clone()).await;
        // Alertmanager's inhibitor takes alerts in the order they were posted: once an alert
        // posted last is muted by its pair, it has seen every earlier one.
        let barrier = |name: &str, severity: &str| {
            alert(&[
                ("alertname", name),
                ("job", "barrier"),
                ("smartlock_id", "1"),
                ("severity", severity),
            ])
        };
        post(
            &client,
            &am,
            vec![
                barrier("NukiSmartlockOffline", "critical"),
                barrier("NukiSmartlockUnreachable", "warning"),
            ],
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let settled = loop {
            let got = states(&client, &am).await;
            let barrier_muted = got
                .iter()
                .any(|(k, v)| k == "NukiSmartlockUnreachable/barrier/1" && v == "suppressed");
            if barrier_muted {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "the barrier was never muted: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let page_key = format!("{}/{page_job}/", words[0]);
        outcomes.push(
            settled
                .into_iter()
                .filter(|(k, _)| !k.contains("/barrier/") && *k != page_key)
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(outcomes[0].len(), 2 * alert_rules().len());
    assert!(outcomes[0].iter().any(|(_, v)| v == "suppressed"));
    assert_eq!(
        outcomes[1], outcomes[0],
        "the test page changed other alerts' states"
    );
}

#[test]
fn the_pager_is_pagerduty_events_v2_with_a_key_file_and_groups_per_lock_or_per_alert() {
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
        "fleet alerts: one notification per alert name and job, {group_by:?}"
    );
    // per-lock alerts: one notification (one incident) per lock
    let per_lock = doc["route"]["routes"]
        .as_sequence()
        .expect("routes")
        .iter()
        .find(|r| {
            r["matchers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|m| m.as_str() == Some("smartlock_id=~\".+\""))
        })
        .expect("a route for alerts with a smartlock_id");
    let lock_group_by: Vec<&str> = per_lock["group_by"]
        .as_sequence()
        .expect("group_by of the per-lock route")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(lock_group_by, ["job", "smartlock_id"]);

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
    let deadline = Instant::now() + Duration::from_secs(60);
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

// ------------------------------------------------------------------------------------------------
// One problem, one notification: the shipped routing, grouping and inhibitions, counted at a sink

/// `alertmanager_notifications_total` per integration (`webhook`, `pagerduty`).
async fn notifications_sent(client: &reqwest::Client, am: &common::Alertmanager) -> (u64, u64) {
    let text = client
        .get(format!("{}/metrics", am.url()))
        .send()
        .await
        .expect("GET metrics")
        .text()
        .await
        .expect("metrics text");
    let count = |integration: &str| {
        common::Scrape(text.clone()).sum(
            "alertmanager_notifications_total",
            &[("integration", integration)],
        ) as u64
    };
    (count("webhook"), count("pagerduty"))
}

/// Every alert of `alertname` in a notification body (webhook: `alerts[]`; PagerDuty: the
/// description lists them).
fn alertnames(body: &Value) -> Vec<String> {
    match body["alerts"].as_array() {
        Some(alerts) => alerts
            .iter()
            .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
            .collect(),
        None => vec![
            body["payload"]["summary"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ],
    }
}

/// Posts `alerts` to `am` and returns once every notification they cause has reached `sink`:
/// after they are grouped, a marker (a per-lock alert, whose group waits longest) is posted in a
/// group of its own; when it arrives, every earlier group's group_wait has ended, and the sink
/// then holds every notification Alertmanager counted.
async fn deliver(
    client: &reqwest::Client,
    am: &common::Alertmanager,
    sink: &Sink,
    alerts: Vec<Value>,
) {
    let posted = alerts.len();
    post(client, am, alerts).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let groups: Value = client
            .get(format!("{}/api/v2/alerts/groups", am.url()))
            .send()
            .await
            .expect("GET groups")
            .json()
            .await
            .expect("groups JSON");
        let grouped: usize = groups
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["alerts"].as_array().map_or(0, Vec::len))
            .sum();
        if grouped == posted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts never grouped: {grouped} of {posted}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post(
        client,
        am,
        vec![alert(&[
            ("alertname", "NukiTestMarker"),
            ("job", "nuki-exporter"),
            ("smartlock_id", "marker"),
            ("severity", "warning"),
        ])],
    )
    .await;
    sink.wait_for(
        "/alertmanager",
        &["NukiTestMarker"],
        Duration::from_secs(90),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = notifications_sent(client, am).await;
        let received = (
            (sink.bodies("/alertmanager").len() + sink.bodies("/deadmansswitch").len()) as u64,
            sink.bodies("/pagerduty").len() as u64,
        );
        if sent == received {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager sent {sent:?} (webhook, pagerduty), the sink received {received:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_of_one_lock_problem_reach_the_sink_as_one_notification() {
    let client = reqwest::Client::new();
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let routing_key_file = keys.path().join("routing_key");
    std::fs::write(&routing_key_file, "routing-key").unwrap();
    let am = common::Alertmanager::start(
        &quick_alertmanager_config(&sink, routing_key_file.to_str().unwrap()),
        &[],
    )
    .await;
    let job = ("job", "nuki-exporter");
    let problems = vec![
        // low voltage: the voltage alert, the critical lock battery and the log's low_motor_voltage
        alert(&[
            ("alertname", "NukiSmartlockVoltageTooLow"),
            job,
            ("smartlock_id", "501"),
            ("severity", "warning"),
        ]),
        alert(&[
            ("alertname", "NukiSmartlockBatteryCritical"),
            job,
            ("smartlock_id", "501"),
            ("battery", "lock"),
            ("severity", "warning"),
        ]),
        alert(&[
            ("alertname", "NukiSmartlockActivityLogFailures"),
            job,
            ("smartlock_id", "501"),
            ("completion_state", "low_motor_voltage"),
            ("severity", "warning"),
        ]),
        // a blocked motor: 0x42 and the log's motor_blocked
        alert(&[
            ("alertname", "NukiSmartlockMechanicalFailure"),
            job,
            ("smartlock_id", "502"),
            ("error_code", "0x42"),
            ("error_name", "K_ERROR_MOTOR_BLOCKED"),
            ("severity", "warning"),
        ]),
        alert(&[
            ("alertname", "NukiSmartlockActivityLogFailures"),
            job,
            ("smartlock_id", "502"),
            ("completion_state", "motor_blocked"),
            ("severity", "warning"),
        ]),
        // two locks offline (and unreachable): one page each
        alert(&[
            ("alertname", "NukiSmartlockOffline"),
            job,
            ("smartlock_id", "503"),
            ("severity", "critical"),
        ]),
        alert(&[
            ("alertname", "NukiSmartlockUnreachable"),
            job,
            ("smartlock_id", "503"),
            ("severity", "warning"),
        ]),
        alert(&[
            ("alertname", "NukiSmartlockOffline"),
            job,
            ("smartlock_id", "504"),
            ("severity", "critical"),
        ]),
        alert(&[
            ("alertname", "NukiSmartlockUnreachable"),
            job,
            ("smartlock_id", "504"),
            ("severity", "warning"),
        ]),
        // a bridge down stalls the webhooks; its stale server link says nothing more
        alert(&[
            ("alertname", "NukiBridgeDown"),
            job,
            ("bridge", "hall"),
            ("severity", "warning"),
        ]),
        alert(&[
            ("alertname", "NukiBridgeCloudDisconnected"),
            job,
            ("bridge", "hall"),
            ("severity", "warning"),
        ]),
        // another bridge, polled fine, lost Nuki's server: its own notification
        alert(&[
            ("alertname", "NukiBridgeCloudDisconnected"),
            job,
            ("bridge", "garage"),
            ("severity", "warning"),
        ]),
        // the application behind the relay fails: Nuki's log records the failed deliveries
        alert(&[
            ("alertname", "NukiWebhookRelayFailing"),
            job,
            ("severity", "critical"),
        ]),
        alert(&[
            ("alertname", "NukiWebhookDeliveriesFailing"),
            job,
            ("api_key_id", "812"),
            ("severity", "warning"),
        ]),
        alert(&[
            ("alertname", "NukiWebhooksStalled"),
            job,
            ("severity", "warning"),
        ]),
    ];
    deliver(&client, &am, &sink, problems).await;

    let mut chat: Vec<Vec<String>> = sink
        .bodies("/alertmanager")
        .iter()
        .map(alertnames)
        .collect();
    chat.sort();
    assert_eq!(
        chat,
        [
            vec!["NukiBridgeCloudDisconnected"],
            vec!["NukiBridgeDown"],
            vec!["NukiSmartlockMechanicalFailure"],
            vec!["NukiSmartlockVoltageTooLow"],
            vec!["NukiTestMarker"],
        ],
        "one warning notification per problem, naming only the most specific alert"
    );
    let pages = sink.bodies("/pagerduty");
    let mut paged: Vec<String> = pages
        .iter()
        .map(|p| p["payload"]["summary"].as_str().unwrap_or("").to_string())
        .collect();
    paged.sort();
    assert_eq!(
        paged,
        [
            "NukiWebhookRelayFailing: test. (1 firing)",
            "Smart lock 503: NukiSmartlockOffline: test. (1 firing)",
            "Smart lock 504: NukiSmartlockOffline: test. (1 firing)",
        ],
        "one PagerDuty incident per offline lock, and one for the relay"
    );
    let dedup: std::collections::BTreeSet<&str> = pages
        .iter()
        .filter_map(|p| p["dedup_key"].as_str())
        .collect();
    assert_eq!(dedup.len(), 3, "three incidents, not one: {pages:?}");
}

/// The shipped configuration pointed at the sink, its dead man's switch enabled at
/// `/deadmansswitch` of the sink (as a user enables it: uncommented, with a URL).
fn with_deadmansswitch(config: &str, sink: &Sink) -> String {
    rewrite(
        config,
        "    # webhook_configs:\n    #   - url: https://hc-ping.com/your-check-uuid\n    #     send_resolved: false",
        &format!(
            "    webhook_configs:\n      - url: {}/deadmansswitch\n        send_resolved: false",
            sink.url
        ),
        1,
    )
}

/// Pages (PagerDuty summaries) and chat notifications (their alert names) the sink received,
/// sorted; the marker's notification left out.
fn received(sink: &Sink) -> (Vec<String>, Vec<Vec<String>>) {
    let mut pages: Vec<String> = sink
        .bodies("/pagerduty")
        .iter()
        .map(|p| p["payload"]["summary"].as_str().unwrap_or("").to_string())
        .collect();
    pages.sort();
    let mut chat: Vec<Vec<String>> = sink
        .bodies("/alertmanager")
        .iter()
        .map(alertnames)
        .filter(|names| names != &["NukiTestMarker"])
        .collect();
    chat.sort();
    (pages, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_locks_down_together_reach_people_as_at_most_three_notifications() {
    let client = reqwest::Client::new();
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let routing_key_file = keys.path().join("routing_key");
    std::fs::write(&routing_key_file, "routing-key").unwrap();
    let config = quick_alertmanager_config(&sink, routing_key_file.to_str().unwrap());
    let am = common::Alertmanager::start(&with_deadmansswitch(&config, &sink), &[]).await;
    let job = ("job", "nuki-exporter");
    let berlin = ("site", "berlin");
    // What the shipped rules raise when site berlin's 500 locks behind 100 bridges go down: per
    // lock Offline (critical) and Unreachable (warning), and NukiSmartlockInFleetOutage (info);
    // per bridge NukiBridgeOutage; NukiFleetOutage for the site; the fleet's failure ratio; and
    // the watchdog, always.
    let mut alerts = Vec::new();
    for lock in 0..500 {
        let id = (70_000 + lock).to_string();
        let id = ("smartlock_id", id.as_str());
        alerts.push(alert(&[
            ("alertname", "NukiSmartlockOffline"),
            job,
            berlin,
            id,
            ("severity", "critical"),
        ]));
        alerts.push(alert(&[
            ("alertname", "NukiSmartlockUnreachable"),
            job,
            berlin,
            id,
            ("severity", "warning"),
        ]));
        alerts.push(alert(&[
            ("alertname", "NukiSmartlockInFleetOutage"),
            job,
            berlin,
            id,
            ("severity", "info"),
        ]));
    }
    for bridge in 0..100 {
        let name = format!("bridge-{bridge}");
        alerts.push(alert(&[
            ("alertname", "NukiBridgeOutage"),
            job,
            berlin,
            ("bridge", &name),
            ("severity", "critical"),
        ]));
    }
    alerts.push(alert(&[
        ("alertname", "NukiFleetOutage"),
        job,
        berlin,
        ("severity", "critical"),
    ]));
    alerts.push(alert(&[
        ("alertname", "NukiOperationsFailing"),
        job,
        ("operation", "UnlockAction"),
        ("severity", "warning"),
    ]));
    alerts.push(alert(&[
        ("alertname", "NukiWatchdog"),
        job,
        ("severity", "none"),
    ]));
    // A lock of another site, offline on its own: still its own page.
    alerts.push(alert(&[
        ("alertname", "NukiSmartlockOffline"),
        job,
        ("site", "munich"),
        ("smartlock_id", "80001"),
        ("severity", "critical"),
    ]));
    deliver(&client, &am, &sink, alerts).await;

    let (pages, chat) = received(&sink);
    assert_eq!(
        pages,
        [
            "Site berlin: NukiFleetOutage: test. (1 firing)",
            "Site munich: Smart lock 80001: NukiSmartlockOffline: test. (1 firing)",
        ],
        "the site outage pages once, the lone lock elsewhere once"
    );
    assert_eq!(chat, Vec::<Vec<String>>::new(), "no chat notification");
    let about_berlin = pages.iter().filter(|p| p.contains("berlin")).count() + chat.len();
    assert!(
        about_berlin <= 3,
        "{about_berlin} notifications for one outage"
    );
    let watchdog = sink.bodies("/deadmansswitch");
    assert_eq!(
        watchdog.len(),
        1,
        "the watchdog reaches the dead man's switch: {watchdog:?}"
    );
    assert_eq!(alertnames(&watchdog[0]), ["NukiWatchdog"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lock_offline_is_one_notification_and_the_watchdog_goes_nowhere_while_disabled() {
    let client = reqwest::Client::new();
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let routing_key_file = keys.path().join("routing_key");
    std::fs::write(&routing_key_file, "routing-key").unwrap();
    let am = common::Alertmanager::start(
        &quick_alertmanager_config(&sink, routing_key_file.to_str().unwrap()),
        &[],
    )
    .await;
    let job = ("job", "nuki-exporter");
    let lock = ("smartlock_id", "70001");
    deliver(
        &client,
        &am,
        &sink,
        vec![
            alert(&[
                ("alertname", "NukiSmartlockOffline"),
                job,
                lock,
                ("severity", "critical"),
            ]),
            alert(&[
                ("alertname", "NukiSmartlockUnreachable"),
                job,
                lock,
                ("severity", "warning"),
            ]),
            alert(&[("alertname", "NukiWatchdog"), job, ("severity", "none")]),
        ],
    )
    .await;
    let (pages, chat) = received(&sink);
    assert_eq!(
        pages,
        ["Smart lock 70001: NukiSmartlockOffline: test. (1 firing)"]
    );
    assert_eq!(chat, Vec::<Vec<String>>::new());
    assert!(sink.bodies("/deadmansswitch").is_empty());
}

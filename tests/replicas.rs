//! Two (and more) real exporter processes behind one real Prometheus with the shipped rules:
//! the replica that heard from a lock last speaks for it, replacing a replica (restored from its
//! state file) keeps the open alerts with their `activeAt`, and a lock's first 0xFF that reaches a
//! replica Prometheus has not scraped yet is alerted.
//!
//! Prometheus finds the replicas through a file_sd file whose `instance` label is the replica's
//! stable name (as a StatefulSet pod's), so a replacement on another port can keep the label or
//! take a new one (a Deployment's new pod).

mod stack_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nuki_exporter::source::webhook::signature::{HEADER, sign};
use serde_json::Value;
use stack_support::common::{Prometheus, Running, SECRET, exporter_with_state_file};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Wide: the machine that runs the tests may be busy.
const DEADLINE: Duration = Duration::from_secs(120);

/// A real exporter process with its own state file, killed when dropped (pass or fail).
struct Replica {
    process: Option<Running>,
    webhook: String,
    metrics: String,
    state_file: PathBuf,
}

impl Replica {
    fn start(state_file: &Path) -> Self {
        let mut process = Running::spawn(&mut exporter_with_state_file(state_file));
        let webhook = process.address_of("webhook");
        let metrics = process.address_of("metrics");
        Self {
            process: Some(process),
            webhook,
            metrics,
            state_file: state_file.to_owned(),
        }
    }

    async fn post(&self, body: &str) {
        let status = reqwest::Client::new()
            .post(format!("http://{}/webhook", self.webhook))
            .header(HEADER, sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204, "{body}");
    }

    /// Waits until the state file holds `lock`, then stops the process (SIGTERM).
    async fn stop_once_saved(mut self, lock: &str) {
        let needle = format!(r#""smartlock_id":{lock}"#);
        let deadline = Deadline::new("the state file names the lock");
        while !std::fs::read_to_string(&self.state_file).is_ok_and(|s| s.contains(&needle)) {
            deadline.tick().await;
        }
        let (clean, lines) = self.process.take().unwrap().terminate();
        assert!(clean, "{lines:#?}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}

/// The end of a wait for a condition: each `tick` fails the test once [`DEADLINE`] has passed,
/// and otherwise waits a little before the condition is checked again.
struct Deadline {
    what: String,
    at: Instant,
}

impl Deadline {
    fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            at: Instant::now() + DEADLINE,
        }
    }

    async fn tick(&self) {
        assert!(
            Instant::now() < self.at,
            "{}: not within {DEADLINE:?}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prometheus scraping the replicas of `targets.json` every second and evaluating the shipped
/// rules every second, with `for:` of the alerts in `quick` shortened to 2 s so that the test does
/// not sit out the production delays; every other rule as shipped.
async fn prometheus(quick: &[&str]) -> (Prometheus, tempfile::TempDir) {
    let sd = tempfile::tempdir().unwrap();
    std::fs::write(sd.path().join("targets.json"), "[]").unwrap();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - nuki-exporter.rules.yml
scrape_configs:
  - job_name: nuki-exporter
    file_sd_configs:
      - files: ["{}/targets.json"]
        refresh_interval: 1s
"#,
        sd.path().display()
    );
    let mut rules =
        std::fs::read_to_string(format!("{REPO}/alerts/nuki-exporter.rules.yml")).unwrap();
    for alert in quick {
        rules = quick_for(&rules, alert);
    }
    let prometheus =
        Prometheus::start(&config, &[("nuki-exporter.rules.yml", rules.as_bytes())]).await;
    (prometheus, sd)
}

/// `rules` with the `for:` of `alert` set to 2s.
fn quick_for(rules: &str, alert: &str) -> String {
    let start = rules
        .find(&format!("- alert: {alert}\n"))
        .unwrap_or_else(|| panic!("no alert {alert}"));
    let at = start + rules[start..].find("\n        for: ").unwrap();
    let end = at + 1 + rules[at + 1..].find('\n').unwrap();
    format!("{}\n        for: 2s{}", &rules[..at], &rules[end..])
}

/// Points Prometheus at `replicas`, each under its `instance` label.
fn scrape(sd: &Path, replicas: &[(&str, &Replica)]) {
    let targets: Vec<Value> = replicas
        .iter()
        .map(|(instance, replica)| {
            serde_json::json!({"targets": [replica.metrics], "labels": {"instance": instance}})
        })
        .collect();
    let file = sd.join("targets.json");
    std::fs::write(
        file.with_extension("tmp"),
        serde_json::to_vec(&targets).unwrap(),
    )
    .unwrap();
    std::fs::rename(file.with_extension("tmp"), file).unwrap();
}

/// The value of a one-sample query, if it has one.
async fn value(prometheus: &Prometheus, promql: &str) -> Option<f64> {
    let result = prometheus.query(promql).await;
    assert!(result.len() <= 1, "{promql}: {result:?}");
    result
        .first()
        .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
}

async fn wait_value(prometheus: &Prometheus, promql: &str, expected: f64) {
    let deadline = Deadline::new(format!("{promql} == {expected}"));
    while value(prometheus, promql).await != Some(expected) {
        deadline.tick().await;
    }
}

/// The alerts Prometheus holds (pending or firing) named `alert` for `lock`.
async fn alerts(prometheus: &Prometheus, alert: &str, lock: &str) -> Vec<Value> {
    let response: Value = reqwest::get(format!("{}/api/v1/alerts", prometheus.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == alert && a["labels"]["smartlock_id"] == lock)
        .cloned()
        .collect()
}

/// Waits until `alert` fires for `lock`; returns its `activeAt`.
async fn firing(prometheus: &Prometheus, alert: &str, lock: &str) -> String {
    let deadline = Deadline::new(format!("{alert} fires for lock {lock}"));
    loop {
        if let [a] = alerts(prometheus, alert, lock).await.as_slice() {
            if a["state"] == "firing" {
                return a["activeAt"].as_str().unwrap().to_owned();
            }
        }
        deadline.tick().await;
    }
}

/// Fails unless `alert` fires for `lock`, once, active since `active_at`.
async fn assert_still_open(prometheus: &Prometheus, alert: &str, lock: &str, active_at: &str) {
    let now = alerts(prometheus, alert, lock).await;
    assert!(
        matches!(now.as_slice(), [a] if a["state"] == "firing" && a["activeAt"] == active_at),
        "{alert} changed while a replica was replaced (active since {active_at}): {now:?}"
    );
}

fn status(lock: &str, critical: bool, charge: u32, server_state: u32) -> String {
    format!(
        r#"{{"feature":"DEVICE_STATUS","smartlockId":{lock},"state":{{"mode":2,"state":1,"batteryCritical":{critical},"batteryCharge":{charge}}},"serverState":{server_state}}}"#
    )
}

const LOCK: &str = "4101";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_report_wins_and_a_replaced_replica_keeps_the_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let a = Replica::start(&dir.path().join("a.json"));
    let b = Replica::start(&dir.path().join("b.json"));
    let (prometheus, sd) = prometheus(&["NukiSmartlockBatteryCritical"]).await;
    let critical = format!(
        r#"max(smartlock:nuki_smartlock_battery_critical:freshest{{job="nuki-exporter", smartlock_id="{LOCK}", battery="lock"}})"#
    );
    let charge = format!(
        r#"max(smartlock:nuki_smartlock_battery_charge_percent:freshest{{job="nuki-exporter", smartlock_id="{LOCK}"}})"#
    );

    // A hears "critical, offline, 5 %"; then B hears "fine, online, 100 %" (new batteries). Both
    // before Prometheus scrapes either, as after a restart of Prometheus.
    a.post(&status(LOCK, true, 5, 4)).await;
    b.post(&status(LOCK, false, 100, 0)).await;
    scrape(sd.path(), &[("exporter-0", &a), ("exporter-1", &b)]);
    // Both replicas scraped, not only B (whose report alone already gives the freshest values).
    let reporting_replicas = format!(
        r#"count(nuki_smartlock_battery_critical{{smartlock_id="{LOCK}", battery="lock"}})"#
    );
    wait_value(&prometheus, &reporting_replicas, 2.0).await;
    wait_value(&prometheus, &charge, 100.0).await;
    wait_value(&prometheus, &critical, 0.0).await;
    assert_eq!(
        value(
            &prometheus,
            &format!(
                r#"max(smartlock:nuki_smartlock_server_state:freshest{{smartlock_id="{LOCK}"}})"#
            )
        )
        .await,
        Some(0.0)
    );
    // A still holds the stale "critical": the max over replicas of before would page.
    assert_eq!(
        value(
            &prometheus,
            &format!(
                r#"max(nuki_smartlock_battery_critical{{smartlock_id="{LOCK}", battery="lock"}})"#
            )
        )
        .await,
        Some(1.0)
    );
    // Nothing fires, for several evaluations after both reports were recorded (for: is 2 s here).
    let quiet_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < quiet_until {
        assert!(
            alerts(&prometheus, "NukiSmartlockBatteryCritical", LOCK)
                .await
                .iter()
                .all(|a| a["state"] != "firing"),
            "a stale report on replica A raised the alert"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A hears "critical" again, now the newest report: alerted.
    a.post(&status(LOCK, true, 4, 4)).await;
    wait_value(&prometheus, &charge, 4.0).await;
    let active_at = firing(&prometheus, "NukiSmartlockBatteryCritical", LOCK).await;

    // Replace A by a new process restored from A's state file, on another port, under the same
    // instance label (a StatefulSet pod): the alert stays open with the same activeAt throughout.
    let alert = "NukiSmartlockBatteryCritical";
    let a_state = a.state_file.clone();
    a.stop_once_saved(LOCK).await;
    let deadline = Deadline::new("Prometheus sees replica A down");
    loop {
        assert_still_open(&prometheus, alert, LOCK, &active_at).await;
        if value(&prometheus, r#"up{instance="exporter-0"}"#).await == Some(0.0) {
            break;
        }
        deadline.tick().await;
    }
    let a2 = Replica::start(&a_state);
    scrape(sd.path(), &[("exporter-0", &a2), ("exporter-1", &b)]);
    let restored = |instance: &str| {
        format!(
            r#"nuki_smartlock_battery_critical{{instance="{instance}", smartlock_id="{LOCK}", battery="lock"}}"#
        )
    };
    let deadline = Deadline::new("the restored replica is scraped");
    loop {
        assert_still_open(&prometheus, alert, LOCK, &active_at).await;
        if value(&prometheus, &restored("exporter-0")).await == Some(1.0) {
            break;
        }
        deadline.tick().await;
    }

    // And again under a new instance label (a Deployment's new pod), restored the same way.
    let a2_state = a2.state_file.clone();
    a2.stop_once_saved(LOCK).await;
    let a3 = Replica::start(&a2_state);
    scrape(sd.path(), &[("exporter-1", &b), ("exporter-2", &a3)]);
    let deadline = Deadline::new("the new pod is scraped and the old one gone");
    loop {
        assert_still_open(&prometheus, alert, LOCK, &active_at).await;
        if value(&prometheus, &restored("exporter-2")).await == Some(1.0)
            && prometheus
                .query(r#"up{instance="exporter-0"}"#)
                .await
                .is_empty()
        {
            break;
        }
        deadline.tick().await;
    }
    // a few more evaluations with the new pod alone
    let settled = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settled {
        assert_still_open(&prometheus, alert, LOCK, &active_at).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(value(&prometheus, &charge).await, Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_0xff_on_a_replica_not_yet_scraped_is_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let a = Replica::start(&dir.path().join("a.json"));
    let (prometheus, sd) = prometheus(&["NukiSmartlockUnreachable"]).await;
    scrape(sd.path(), &[("exporter-0", &a)]);
    wait_value(&prometheus, r#"up{instance="exporter-0"}"#, 1.0).await;

    // A new replica starts; the lock's first 0xFF reaches it before Prometheus knows it.
    let c = Replica::start(&dir.path().join("c.json"));
    c.post(&format!(
        r#"{{"type":"AuthCreation","requestId":"r0000000000000000000001","success":false,"detail":[{{"smartlockId":{LOCK},"success":false,"errorCode":"ff","id":"000000000000000000000001"}}]}}"#
    ))
    .await;
    scrape(sd.path(), &[("exporter-0", &a), ("exporter-3", &c)]);
    firing(&prometheus, "NukiSmartlockUnreachable", LOCK).await;
    // Prometheus' first sample of the counter already was 1: increase() alone saw nothing.
    assert_eq!(
        value(
            &prometheus,
            &format!(
                r#"sum(increase(nuki_operation_errors_total{{smartlock_id="{LOCK}", error_code="0xFF"}}[15m]))"#
            )
        )
        .await,
        Some(0.0)
    );
}

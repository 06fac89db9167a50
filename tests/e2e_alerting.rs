//! End to end with the real binaries: signed webhooks and Web API polls (of a stand-in) →
//! nuki-exporter → Prometheus (shipped configuration and rules) → Alertmanager (shipped routing)
//! → a pager and a webhook sink owned by this test; then every dashboard query against that
//! Prometheus and a seeded fleet. And a Nuki Bridge stand-in that stops answering →
//! `NukiBridgeDown` at the webhook sink.

mod stack_support;

use std::time::Duration;

use nuki_exporter::Config;
use stack_support::common::bridge_stub::{BridgeStub, exporter_polling};
use stack_support::common::nuki_api_stub::{NukiApiStub, Reply, web_api_fixture};
use stack_support::common::{Alertmanager, Prometheus, TestExporter, test_config};
use stack_support::{
    Sink, quick_alertmanager_config, rewrite, runnable_queries, without_zero_fallback,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// A lock that fails once with 0xFF: unreachable (warning, to the webhook receiver).
const UNREACHABLE_LOCK: &str = "31000001";
/// A lock that fails three times with 0xFF: offline (critical, to the pager).
const OFFLINE_LOCK: &str = "31000002";
const ROUTING_KEY: &str = "e2e-routing-key-0123456789abcdef";
/// The Advanced API key whose webhook delivery the exporter watches.
const API_KEY_ID: u32 = 812;

/// The demo fleet in `round`, and one lock more, which never sends a webhook (a lock only the
/// API knows), as the Web API lists it.
fn demo_fleet(round: u64) -> Reply {
    Reply::json(serde_json::to_vec(&nuki_exporter::cli::demo::smartlocks(round, 9)).unwrap())
}

/// A Web API stand-in listing the demo fleet as it starts (round 0), with the key's delivery
/// status from `advanced_fixture` and an empty webhook log.
async fn web_api(advanced_fixture: &str) -> NukiApiStub {
    let api = NukiApiStub::start().await;
    api.route("GET", "/smartlock", demo_fleet(0));
    api.route(
        "GET",
        &format!("/api/key/{API_KEY_ID}/advanced"),
        Reply::json(web_api_fixture(advanced_fixture)),
    );
    api.route(
        "GET",
        &format!("/api/key/{API_KEY_ID}/webhook/logs"),
        Reply::json(b"[]".to_vec()),
    );
    api
}

/// The test exporter, polling `api` every second with a token from `dir`.
fn polling(api: &NukiApiStub, dir: &std::path::Path) -> Config {
    let token_file = dir.join("nuki_api_token");
    std::fs::write(&token_file, "e2e-api-token").unwrap();
    let mut config = test_config();
    config.api.token_file = Some(token_file);
    config.api.url = api.url.clone();
    config.api.allow_insecure_http = true;
    config.api.poll_interval = Duration::from_secs(1);
    config.api.advanced_key_id = Some(API_KEY_ID);
    config
}

/// The far end of the alert path: a sink, and a real Alertmanager with the shipped routing (its
/// waits shortened) that pages with a routing key from a file in the returned directory.
async fn alert_path() -> (Sink, tempfile::TempDir, Alertmanager) {
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let routing_key_file = keys.path().join("routing_key");
    std::fs::write(&routing_key_file, ROUTING_KEY).unwrap();
    let alertmanager = Alertmanager::start(
        &quick_alertmanager_config(&sink, routing_key_file.to_str().unwrap()),
        &[],
    )
    .await;
    (sink, keys, alertmanager)
}

/// The shipped Prometheus configuration, pointed at `targets`, this test's Alertmanager and the
/// repository's rule files, scraping and evaluating every second.
fn prometheus_config(targets: &[&str], alertmanager: &str) -> String {
    let shipped =
        std::fs::read_to_string(format!("{REPO}/deploy/prometheus/prometheus.yml")).unwrap();
    let config = rewrite(&shipped, "scrape_interval: 15s", "scrape_interval: 1s", 1);
    let config = rewrite(&config, "scrape_timeout: 10s", "scrape_timeout: 1s", 1);
    let config = rewrite(
        &config,
        "evaluation_interval: 15s",
        "evaluation_interval: 1s",
        1,
    );
    let config = rewrite(
        &config,
        "/etc/prometheus/rules/*.yml",
        &format!("{REPO}/alerts/*.yml"),
        1,
    );
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("          - {t}\n"))
        .collect();
    let config = rewrite(
        &config,
        "          - nuki-exporter:10181\n",
        &targets.concat(),
        1,
    );
    rewrite(&config, "alertmanager:9093", alertmanager, 2)
}

/// Prometheus with the shipped configuration pointed at `targets`, and the shipped rules but for
/// one: the rule whose expression ends in `expression_end` fires after 1 s instead of its
/// shipped `for: 5m`, so that the test does not sit out the production delay.
async fn prometheus_with_quick_rule(
    targets: &[&str],
    alertmanager: &str,
    expression_end: &str,
) -> Prometheus {
    let config = prometheus_config(targets, alertmanager);
    let config = rewrite(
        &config,
        &format!("{REPO}/alerts/*.yml"),
        "nuki-exporter.rules.yml",
        1,
    );
    let rules = std::fs::read_to_string(format!("{REPO}/alerts/nuki-exporter.rules.yml")).unwrap();
    let rules = rewrite(
        &rules,
        &format!("{expression_end}\n        for: 5m"),
        &format!("{expression_end}\n        for: 1s"),
        1,
    );
    Prometheus::start(&config, &[("nuki-exporter.rules.yml", rules.as_bytes())]).await
}

fn failure(lock: &str, request: u32) -> Vec<u8> {
    format!(
        r#"{{"type":"AuthCreation","requestId":"e2e{request:021}","success":false,"detail":[{{"smartlockId":{lock},"success":false,"errorCode":"ff","id":"{request:024}"}}]}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_0xff_webhook_pages_through_prometheus_and_alertmanager() {
    let (sink, keys, alertmanager) = alert_path().await;
    let api = web_api("advanced-active.json").await;
    // And a healthy bridge with its callback registered: the dashboards' bridge row has data.
    let bridge = BridgeStub::start([127, 0, 0, 1].into()).await;
    let exporter = exporter_polling(&bridge, polling(&api, keys.path()), |_| {}).await;
    let metrics_address = exporter.metrics_address();
    // A second target that is down (the webhook listener has no /metrics), so the health
    // dashboard's "Targets down" has a target to show.
    let down_target = exporter.webhook_address();
    let alertmanager_address = alertmanager.url().trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(
        &prometheus_config(&[&metrics_address, &down_target], &alertmanager_address),
        &[],
    )
    .await;

    // Prometheus knows the exporter before the first error, as in a running stack.
    // (a few scrapes: the new-series guard needs an `up` sample from before the first error)
    prometheus
        .wait_for(
            r#"count_over_time(up{job="nuki-exporter"}[1m]) >= 3"#,
            Duration::from_secs(60),
        )
        .await;
    let masterdata = format!(
        r#"{{"feature":"DEVICE_MASTERDATA","smartlockId":{UNREACHABLE_LOCK},"type":4,"name":"Holiday flat 7","firmwareVersion":199175,"serverState":0}}"#
    );
    assert_eq!(exporter.post(masterdata.as_bytes()).await, 204);
    assert_eq!(exporter.post(&failure(UNREACHABLE_LOCK, 1)).await, 204);
    for request in 2..5 {
        assert_eq!(exporter.post(&failure(OFFLINE_LOCK, request)).await, 204);
    }

    let warning = sink
        .wait_for(
            "/alertmanager",
            &["NukiSmartlockUnreachable", UNREACHABLE_LOCK],
            Duration::from_secs(150),
        )
        .await;
    let alert = warning["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["smartlock_id"] == UNREACHABLE_LOCK)
        .unwrap();
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["job"], "nuki-exporter");
    assert_eq!(alert["status"], "firing");
    let description = alert["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("Holiday flat 7"),
        "the lock's name is in the description: {description}"
    );
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("#nukismartlockunreachable")
    );

    let page = sink
        .wait_for(
            "/pagerduty",
            &["NukiSmartlockOffline", OFFLINE_LOCK],
            Duration::from_secs(150),
        )
        .await;
    assert_eq!(page["routing_key"], ROUTING_KEY);
    assert_eq!(page["event_action"], "trigger");
    assert_eq!(page["payload"]["severity"], "critical");
    let received = sink.received.lock().unwrap().clone();
    assert!(
        received.iter().all(|(path, body)| path != "/pagerduty"
            || !body.to_string().contains("NukiSmartlockUnreachable")),
        "a warning never reaches the pager"
    );

    seed_fleet(&exporter, &prometheus, &api).await;
    // Each query is retried until it has data (rule evaluation and rate windows lag a scrape).
    let mut empty: Vec<String> = runnable_queries(DRILL_DOWN_LOCK)
        .into_iter()
        .map(|(dashboard, panel, query)| format!("{dashboard} / {panel}: {query}"))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut still_empty = Vec::new();
        for entry in empty {
            let query = entry.split_once(": ").unwrap().1;
            if prometheus
                .query(&without_zero_fallback(query))
                .await
                .is_empty()
            {
                still_empty.push(entry);
            }
        }
        empty = still_empty;
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    exporter.shutdown().await;
}

/// The lock the per-lock dashboard is opened for: the demo fleet's low-voltage lock.
const DRILL_DOWN_LOCK: &str = "17000003";

/// Three rounds of the demo fleet (every webhook kind, unreachable and low-voltage locks, the
/// Web API listing each round too), a
/// refused webhook of two kinds of refusal, and deliveries in the Web API's webhook log; after
/// each, waits until Prometheus scraped it.
async fn seed_fleet(exporter: &TestExporter, prometheus: &Prometheus, api: &NukiApiStub) {
    api.route(
        "GET",
        &format!("/api/key/{API_KEY_ID}/webhook/logs"),
        Reply::json(web_api_fixture("webhook-logs.json")),
    );
    for round in 0..3 {
        // The Web API reports what the webhooks do: the batteries drain over the rounds.
        api.route("GET", "/smartlock", demo_fleet(round));
        for webhook in nuki_exporter::cli::demo::round(round, 8) {
            assert_eq!(
                exporter.post(&serde_json::to_vec(&webhook).unwrap()).await,
                204
            );
        }
        scraped(
            exporter,
            prometheus,
            "nuki_exporter_webhooks_received_total",
        )
        .await;
        // Each round's charge is one step of the drain the battery-care rules derive, and a
        // step counts only once a rule evaluation recorded it: scraped alone, the next round
        // could replace it first, and the drain would lack a step for good.
        prometheus
            .wait_for(BATTERY_RECORDED, Duration::from_secs(60))
            .await;
    }
    assert_eq!(exporter.post_signed(b"{}", Some("00")).await, 401);
    assert_eq!(exporter.post(b"not json").await, 400);
    scraped(
        exporter,
        prometheus,
        "nuki_exporter_webhooks_rejected_total",
    )
    .await;
    scraped(exporter, prometheus, "nuki_webhook_deliveries_total").await;
}

/// Every lock's charge as last scraped is also what the freshest-charge rule last recorded.
const BATTERY_RECORDED: &str = r#"count(nuki_smartlock_battery_charge_percent{job="nuki-exporter"})
  == count(
      smartlock:nuki_smartlock_battery_charge_percent:freshest{job="nuki-exporter"}
    == on (job, smartlock_id)
      max by (job, smartlock_id) (nuki_smartlock_battery_charge_percent{job="nuki-exporter"})
  )"#;

/// Waits until Prometheus holds the exporter's current total of `counter`.
async fn scraped(exporter: &TestExporter, prometheus: &Prometheus, counter: &str) {
    let total = exporter.scrape().await.sum(counter, &[]);
    prometheus
        .wait_for(
            &format!(r#"sum({counter}{{job="nuki-exporter"}}) >= {total}"#),
            Duration::from_secs(60),
        )
        .await;
}

/// Nuki switches webhook delivery off: the Web API poll sees `DEACTIVATED`, and the page reaches
/// the pager through the shipped rules (the alert's `for:` shortened) and routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_webhook_delivery_pages_through_prometheus_and_alertmanager() {
    let (sink, keys, alertmanager) = alert_path().await;
    let api = web_api("advanced-deactivated.json").await;
    let exporter = TestExporter::start_with(polling(&api, keys.path())).await;
    let alertmanager_address = alertmanager.url().trim_start_matches("http://").to_owned();
    let _prometheus = prometheus_with_quick_rule(
        &[&exporter.metrics_address()],
        &alertmanager_address,
        "(nuki_webhook_delivery_active{job=\"nuki-exporter\"}) == 0",
    )
    .await;
    let key = API_KEY_ID.to_string();
    let page = sink
        .wait_for(
            "/pagerduty",
            &["NukiWebhookDeliveryDeactivated", &key],
            Duration::from_secs(150),
        )
        .await;
    assert_eq!(page["routing_key"], ROUTING_KEY);
    assert_eq!(page["event_action"], "trigger");
    assert_eq!(page["payload"]["severity"], "critical");
    let details = page["payload"]["custom_details"].to_string();
    assert!(
        details.contains("reactivate"),
        "the page says how to restore delivery: {details}"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_stops_answering_raises_nuki_bridge_down_at_the_webhook_sink() {
    let (sink, _keys, alertmanager) = alert_path().await;
    let bridge = BridgeStub::start([127, 0, 0, 1].into()).await;
    let exporter = exporter_polling(&bridge, test_config(), |bridge| {
        bridge.poll_interval = Duration::from_millis(500);
    })
    .await;
    let alertmanager_address = alertmanager.url().trim_start_matches("http://").to_owned();
    let prometheus = prometheus_with_quick_rule(
        &[&exporter.metrics_address()],
        &alertmanager_address,
        "(nuki_bridge_up{job=\"nuki-exporter\"}) == 0",
    )
    .await;
    prometheus
        .wait_for(
            r#"nuki_bridge_up{job="nuki-exporter", bridge="hall"} == 1"#,
            Duration::from_secs(30),
        )
        .await;

    // The bridge reboots, or someone pulled its plug: every request fails from now on.
    bridge.set_failing(Some(hyper::StatusCode::INTERNAL_SERVER_ERROR));
    let notification = sink
        .wait_for(
            "/alertmanager",
            &["NukiBridgeDown", "hall"],
            Duration::from_secs(120),
        )
        .await;
    let alert = notification["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "NukiBridgeDown")
        .unwrap();
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["bridge"], "hall");
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("#nukibridgedown")
    );
    assert!(
        sink.received.lock().unwrap().iter().all(
            |(path, body)| path != "/pagerduty" || !body.to_string().contains("NukiBridgeDown")
        ),
        "a warning never reaches the pager"
    );
    exporter.shutdown().await;
    assert_eq!(bridge.max_in_flight(), 1);
}

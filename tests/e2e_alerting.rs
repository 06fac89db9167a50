//! End to end with the real binaries: signed webhooks and Web API polls (of a stand-in) →
//! nuki-exporter → Prometheus (shipped configuration and rules) → Alertmanager (shipped routing)
//! → a pager and a webhook sink owned by this test; then every dashboard query against that
//! Prometheus and a seeded fleet. And a Nuki Bridge stand-in that stops answering →
//! `NukiBridgeDown` at the webhook sink.

mod stack_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use nuki_exporter::Config;
use serde_json::Value;
use stack_support::common::bridge_stub::{BridgeStub, exporter_polling};
use stack_support::common::nuki_api_stub::{NukiApiStub, Reply, web_api_fixture};
use stack_support::common::{Alertmanager, Prometheus, TestExporter, free_port, test_config};
use stack_support::runnable_queries;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// A lock that fails once with 0xFF: unreachable (warning, to the webhook receiver).
const UNREACHABLE_LOCK: &str = "31000001";
/// A lock that fails three times with 0xFF: offline (critical, to the pager).
const OFFLINE_LOCK: &str = "31000002";
const ROUTING_KEY: &str = "e2e-routing-key-0123456789abcdef";
/// The Advanced API key whose webhook delivery the exporter watches.
const API_KEY_ID: u32 = 812;

/// A Web API stand-in listing the demo fleet, with the key's delivery status from
/// `advanced_fixture` and an empty webhook log.
async fn web_api(advanced_fixture: &str) -> NukiApiStub {
    let api = NukiApiStub::start().await;
    let fleet = serde_json::to_vec(&nuki_exporter::demo::smartlocks(2, 8)).unwrap();
    api.route("GET", "/smartlock", Reply::json(fleet));
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
    config.api.poll_interval = Duration::from_secs(1);
    config.api.advanced_key_id = Some(API_KEY_ID);
    config
}

/// Starts Alertmanager (shipped routing, notifications to `sink`) and Prometheus (shipped
/// configuration and rules, scraping `exporter`), and waits until Prometheus scrapes it.
async fn monitoring(
    sink: &Sink,
    keys: &std::path::Path,
    exporter: &TestExporter,
) -> (Alertmanager, Prometheus) {
    monitoring_with_rules(sink, keys, exporter, &format!("{REPO}/alerts/*.yml"), &[]).await
}

/// [`monitoring`] with the rule files `rules` (a glob), `files` written beside Prometheus'
/// configuration first.
async fn monitoring_with_rules(
    sink: &Sink,
    keys: &std::path::Path,
    exporter: &TestExporter,
    rules: &str,
    files: &[(&str, &[u8])],
) -> (Alertmanager, Prometheus) {
    let routing_key_file = keys.join("routing_key");
    std::fs::write(&routing_key_file, ROUTING_KEY).unwrap();
    let alertmanager = Alertmanager::start(
        &alertmanager_config(sink, routing_key_file.to_str().unwrap()),
        &[],
    )
    .await;
    let metrics_address = exporter
        .metrics_base
        .trim_start_matches("http://")
        .to_owned();
    let alertmanager_address = alertmanager.url().trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(
        &prometheus_config(&metrics_address, &alertmanager_address, rules),
        files,
    )
    .await;
    prometheus
        .wait_for(r#"up{job="nuki-exporter"} == 1"#, Duration::from_secs(30))
        .await;
    (alertmanager, prometheus)
}

/// Records every POST it receives: (path, JSON body).
struct Sink {
    url: String,
    received: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Sink {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let store = store.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        store.lock().unwrap().push((path, json));
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"{}",
                        ))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self { url, received }
    }

    /// Waits for a notification on `path` whose body contains every one of `needles`.
    async fn wait_for(&self, path: &str, needles: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.received.lock().unwrap().iter().find_map(|(p, body)| {
                let text = body.to_string();
                (p == path && needles.iter().all(|n| text.contains(n))).then(|| body.clone())
            });
            if let Some(body) = found {
                return body;
            }
            let seen: Vec<String> = self
                .received
                .lock()
                .unwrap()
                .iter()
                .map(|(p, b)| format!("{p}: {b}"))
                .collect();
            assert!(
                Instant::now() < deadline,
                "no notification on {path} with {needles:?}; received:\n{}",
                seen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur exactly `times` times: a shipped file
/// that drifts from what this test rewrites fails loudly.
fn rewrite(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "expected {from:?} {times} time(s) in:\n{text}"
    );
    text.replace(from, to)
}

/// The shipped Alertmanager configuration, with the pager and webhook pointed at the sink and the
/// grouping delays shortened; routes, receivers and inhibitions stay as shipped.
fn alertmanager_config(sink: &Sink, routing_key_file: &str) -> String {
    let shipped =
        std::fs::read_to_string(format!("{REPO}/deploy/alertmanager/alertmanager.yml")).unwrap();
    let config = rewrite(
        &shipped,
        "      - routing_key_file: /run/secrets/pagerduty_routing_key\n",
        &format!(
            "      - routing_key_file: {routing_key_file}\n        url: {}/pagerduty\n",
            sink.url
        ),
        1,
    );
    let config = rewrite(
        &config,
        "http://alert-sink:8080/alertmanager",
        &format!("{}/alertmanager", sink.url),
        1,
    );
    let config = rewrite(&config, "group_wait: 30s", "group_wait: 1s", 1);
    rewrite(&config, "group_interval: 5m", "group_interval: 2s", 1)
}

/// The shipped Prometheus configuration, pointed at this test's exporter, Alertmanager and rule
/// files (`rules`, a glob), scraping and evaluating every second.
fn prometheus_config(exporter: &str, alertmanager: &str, rules: &str) -> String {
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
    let config = rewrite(&config, "/etc/prometheus/rules/*.yml", rules, 1);
    let config = rewrite(&config, "nuki-exporter:10181", exporter, 1);
    rewrite(&config, "alertmanager:9093", alertmanager, 2)
}

fn failure(lock: &str, request: u32) -> Vec<u8> {
    format!(
        r#"{{"type":"AuthCreation","requestId":"e2e{request:021}","success":false,"detail":[{{"smartlockId":{lock},"success":false,"errorCode":"ff","id":"{request:024}"}}]}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_0xff_webhook_pages_through_prometheus_and_alertmanager() {
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let api = web_api("advanced-active.json").await;
    // And a healthy bridge with its callback registered: the dashboards' bridge row has data.
    let bridge = BridgeStub::start([127, 0, 0, 1].into()).await;
    let mut config = polling(&api, keys.path());
    config.webhook.listen = ([127, 0, 0, 1], free_port()).into();
    let exporter = exporter_polling(&bridge, config, |_| {}).await;
    // Prometheus knows the exporter before the first error, as in a running stack.
    let (_alertmanager, prometheus) = monitoring(&sink, keys.path(), &exporter).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
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

    seed_fleet(&exporter, &api).await;
    let mut empty = Vec::new();
    for (dashboard, panel, query) in runnable_queries(DRILL_DOWN_LOCK) {
        if prometheus.query(&query).await.is_empty() {
            empty.push(format!("{dashboard} / {panel}: {query}"));
        }
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

/// Three rounds of the demo fleet (every webhook kind, unreachable and low-voltage locks), a
/// refused webhook of two kinds of refusal, and deliveries in the webhook log of the Web API,
/// with time for Prometheus to scrape in between.
async fn seed_fleet(exporter: &TestExporter, api: &NukiApiStub) {
    api.route(
        "GET",
        &format!("/api/key/{API_KEY_ID}/webhook/logs"),
        Reply::json(web_api_fixture("webhook-logs.json")),
    );
    for round in 0..3 {
        for webhook in nuki_exporter::demo::round(round, 8) {
            assert_eq!(
                exporter.post(&serde_json::to_vec(&webhook).unwrap()).await,
                204
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(exporter.post_signed(b"{}", Some("00")).await, 401);
    assert_eq!(exporter.post(b"not json").await, 400);
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Nuki switches webhook delivery off: the Web API poll sees `DEACTIVATED`, and the page reaches
/// the pager through the shipped rules and routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_webhook_delivery_pages_through_prometheus_and_alertmanager() {
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let api = web_api("advanced-deactivated.json").await;
    let exporter = TestExporter::start_with(polling(&api, keys.path())).await;
    let (_alertmanager, _prometheus) = monitoring(&sink, keys.path(), &exporter).await;
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
        details.contains("#nukiwebhookdeliverydeactivated"),
        "the page links the runbook: {details}"
    );
    exporter.shutdown().await;
}

/// The shipped rule files, with `NukiBridgeDown`'s `for` shortened to `wait` so that the test
/// does not sit out the production delay; every other rule as shipped.
fn rules_with_short_bridge_down(wait: &str) -> Vec<(String, Vec<u8>)> {
    let mut found = false;
    let files = stack_support::rule_files()
        .into_iter()
        .map(|path| {
            let mut doc: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for group in doc["groups"].as_sequence_mut().into_iter().flatten() {
                for rule in group["rules"].as_sequence_mut().into_iter().flatten() {
                    if rule["alert"] == "NukiBridgeDown" {
                        rule["for"] = wait.into();
                        found = true;
                    }
                }
            }
            // Prefixed: the rule glob must not match prometheus.yml beside them.
            let name = format!("rules-{}", path.file_name().unwrap().to_string_lossy());
            (name, serde_yaml_ng::to_string(&doc).unwrap().into_bytes())
        })
        .collect();
    assert!(found, "no NukiBridgeDown rule under alerts/");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_stops_answering_raises_nuki_bridge_down_at_the_webhook_sink() {
    let sink = Sink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let bridge = BridgeStub::start([127, 0, 0, 1].into()).await;
    let exporter = exporter_polling(&bridge, test_config(), |bridge| {
        bridge.poll_interval = Duration::from_millis(500);
    })
    .await;
    let rules = rules_with_short_bridge_down("5s");
    let files: Vec<(&str, &[u8])> = rules
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_slice()))
        .collect();
    let (_alertmanager, prometheus) =
        monitoring_with_rules(&sink, keys.path(), &exporter, "rules-*.yml", &files).await;
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

//! Helpers shared by the tests of the monitoring stack (alerts, dashboards, Alertmanager, compose).
//! Include with `mod stack_support;`. Every test file uses a different subset; `common` is the
//! HTTP tests' module (a real exporter), for the checks that need the exporter itself.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

#[allow(unused_imports)] // each test crate uses a different part
pub use common::{ChildGuard, Ran, run, run_ok, tool};

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use serde_json::Value;

use promql_parser::label::{Labels, MatchOp, Matcher, Matchers};
use promql_parser::parser::{
    AggregateExpr, Expr, LabelModifier, Offset, ParenExpr, StringLiteral, SubqueryExpr, UnaryExpr,
    VectorMatchCardinality, VectorSelector,
};
use promql_parser::util::{ExprVisitor, display_duration, parse_duration, walk_expr};

/// The job selector every alert rule carries.
pub const ALERT_JOB_MATCHER: (&str, &str, &str) = ("job", "=", "nuki-exporter");
/// Where every alert's runbook_url points (plus `#<lowercase alert name>`).
pub const RUNBOOK_URL: &str =
    "https://github.com/nuki-exporter/nuki-exporter/blob/main/docs/runbook.md";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn yaml(path: impl AsRef<Path>) -> serde_yaml_ng::Value {
    let path = path.as_ref();
    serde_yaml_ng::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

pub fn json(path: impl AsRef<Path>) -> serde_json::Value {
    let path = path.as_ref();
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Files directly in `dir` whose name ends with `suffix`, sorted.
pub fn files(dir: impl AsRef<Path>, suffix: &str) -> Vec<PathBuf> {
    let dir = dir.as_ref();
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *{suffix} file in {}", dir.display());
    out
}

// ------------------------------------------------------------------------------------------------
// External tools

pub fn promtool() -> PathBuf {
    tool("promtool", "prometheus")
}

pub fn amtool() -> PathBuf {
    tool("amtool", "prometheus-alertmanager")
}

pub fn alertmanager() -> PathBuf {
    tool("prometheus-alertmanager", "prometheus-alertmanager")
}

pub fn docker_compose() -> PathBuf {
    tool("docker-compose", "docker-compose")
}

// ------------------------------------------------------------------------------------------------
// Alert rules

#[derive(Debug, Clone)]
pub struct AlertRule {
    pub file: PathBuf,
    pub group: String,
    pub alert: String,
    pub expr: String,
    pub for_: Option<String>,
    pub keep_firing_for: Option<String>,
    pub labels: serde_yaml_ng::Mapping,
    pub annotations: serde_yaml_ng::Mapping,
}

impl AlertRule {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(|v| v.as_str())
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).and_then(|v| v.as_str())
    }
}

/// The rule files Prometheus loads: alerts/*.yml (not the unit tests in alerts/tests/).
pub fn rule_files() -> Vec<PathBuf> {
    files(repo().join("alerts"), ".yml")
}

pub fn unit_test_files() -> Vec<PathBuf> {
    files(repo().join("alerts/tests"), ".test.yml")
}

pub fn alert_rules() -> Vec<AlertRule> {
    let mut out = Vec::new();
    for file in rule_files() {
        let doc = yaml(&file);
        let groups = doc["groups"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{}: no groups", file.display()));
        for group in groups {
            let group_name = group["name"].as_str().unwrap_or_default().to_string();
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                let Some(alert) = rule["alert"].as_str() else {
                    continue; // a recording rule
                };
                out.push(AlertRule {
                    file: file.clone(),
                    group: group_name.clone(),
                    alert: alert.to_string(),
                    expr: rule["expr"].as_str().unwrap_or_default().to_string(),
                    for_: rule["for"].as_str().map(str::to_string),
                    keep_firing_for: rule["keep_firing_for"].as_str().map(str::to_string),
                    labels: rule["labels"].as_mapping().cloned().unwrap_or_default(),
                    annotations: rule["annotations"]
                        .as_mapping()
                        .cloned()
                        .unwrap_or_default(),
                });
            }
        }
    }
    assert!(!out.is_empty(), "no alert rules found under alerts/");
    out
}

/// The rows of the alert tables of a document (`| [NukiAlert](...) | severity | ... |`): alert
/// name -> its cells after the first, in order; a name listed twice panics.
pub fn alert_table(doc: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| [") else {
            continue;
        };
        let Some((name, _)) = rest.split_once(']') else {
            continue;
        };
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .skip(1)
            .map(|c| c.trim().to_string())
            .collect();
        assert!(
            out.insert(name.to_string(), cells).is_none(),
            "{name} is listed twice in a table"
        );
    }
    out
}

/// A recording rule of alerts/*.yml: the series it records and the expression it records.
pub struct RecordingRule {
    pub record: String,
    pub expr: String,
}

pub fn recording_rules() -> Vec<RecordingRule> {
    let mut out = Vec::new();
    for file in rule_files() {
        let doc = yaml(&file);
        for group in doc["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                if let Some(record) = rule["record"].as_str() {
                    out.push(RecordingRule {
                        record: record.to_string(),
                        expr: rule["expr"].as_str().unwrap_or_default().to_string(),
                    });
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Alertmanager receivers

/// Records every POST it receives: (path, JSON body).
pub struct Sink {
    pub url: String,
    pub received: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Sink {
    pub async fn start() -> Self {
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

    /// The bodies received on `path`, in arrival order.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Waits for a notification on `path` whose body contains every one of `needles`.
    pub async fn wait_for(&self, path: &str, needles: &[&str], timeout: Duration) -> Value {
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
pub fn rewrite(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "expected {from:?} {times} time(s) in:\n{text}"
    );
    text.replace(from, to)
}

/// The shipped Alertmanager configuration with its pager and webhook pointed at `sink`
/// (`/pagerduty`, `/alertmanager`); routes, grouping, timing and inhibitions stay as shipped.
pub fn shipped_alertmanager_config(sink: &Sink, routing_key_file: &str) -> String {
    let shipped = read(repo().join("deploy/alertmanager/alertmanager.yml"));
    let config = rewrite(
        &shipped,
        "      - routing_key_file: /run/secrets/pagerduty_routing_key\n",
        &format!(
            "      - routing_key_file: {routing_key_file}\n        url: {}/pagerduty\n",
            sink.url
        ),
        1,
    );
    rewrite(
        &config,
        "http://alert-sink:8080/alertmanager",
        &format!("{}/alertmanager", sink.url),
        1,
    )
}

/// [`shipped_alertmanager_config`] with its waits shortened in proportion (fleet groups 1 s,
/// per-lock groups 2 s, so a lock's notification still waits longer than a fleet alert's;
/// group_interval 2 s); routes, receivers and inhibitions stay as shipped.
pub fn quick_alertmanager_config(sink: &Sink, routing_key_file: &str) -> String {
    let config = shipped_alertmanager_config(sink, routing_key_file);
    let config = rewrite(&config, "group_wait: 30s", "group_wait: 1s", 1);
    let config = rewrite(&config, "group_wait: 1m", "group_wait: 2s", 1);
    rewrite(&config, "group_interval: 5m", "group_interval: 2s", 1)
}

// ------------------------------------------------------------------------------------------------
// Dashboards

pub fn dashboard_files() -> Vec<PathBuf> {
    files(repo().join("dashboards"), ".json")
}

/// Every dashboard: (file name, JSON).
pub fn dashboards() -> Vec<(String, serde_json::Value)> {
    dashboard_files()
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (name, json(&path))
        })
        .collect()
}

pub fn variables(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

/// A panel query without its `or vector(0)` fallbacks (a stat that shows 0 when there is no
/// data): with them every query "returns data", so a check for data must look at the rest.
pub fn without_zero_fallback(expr: &str) -> String {
    let stripped = expr.replace(" or vector(0)", "");
    assert!(
        !stripped.contains("vector("),
        "write a zero fallback as ` or vector(0)`: {expr}"
    );
    stripped
}

/// Every query of a dashboard, Grafana variables replaced: (dashboard, panel, PromQL).
pub fn runnable_queries(smartlock_id: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for (title, expr) in panel_queries(&d) {
            out.push((
                file.clone(),
                title,
                substitute_grafana_variables(&expr, smartlock_id),
            ));
        }
        for v in variables(&d) {
            if let Some(selector) = variable_query(v).as_deref().and_then(label_values_selector) {
                let title = format!("variable {}", v["name"].as_str().unwrap_or("?"));
                out.push((
                    file.clone(),
                    title,
                    substitute_grafana_variables(&selector, smartlock_id),
                ));
            }
        }
    }
    out
}

/// Every panel of a dashboard, including the panels nested in collapsed rows.
pub fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The PromQL of every panel target, with the panel's title.
pub fn panel_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// The query of a template variable (`label_values(...)` etc.), if it has one.
pub fn variable_query(variable: &serde_json::Value) -> Option<String> {
    match &variable["query"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("query").and_then(|q| q.as_str()).map(str::to_string),
        _ => None,
    }
}

/// The series selector inside `label_values(<selector>, <label>)`.
pub fn label_values_selector(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let mut depth = 0i32;
    let mut split = None;
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    Some(match split {
        Some(i) => inner[..i].trim().to_string(),
        None => inner.trim().to_string(),
    })
}

/// Replaces Grafana's variables by values Prometheus accepts, for checking and running queries.
pub fn substitute_grafana_variables(expr: &str, smartlock_id: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${job}", "nuki-exporter")
        .replace("$job", "nuki-exporter")
        .replace("${instance}", ".+")
        .replace("$instance", ".+")
        .replace("${smartlock_id}", smartlock_id)
        .replace("$smartlock_id", smartlock_id)
}

// ------------------------------------------------------------------------------------------------
// Metric names the exporter exposes

/// The metrics a real exporter exposes once it has received every webhook fixture, read from the
/// `# TYPE` lines of its scrape, plus the series Prometheus itself attaches to every target.
pub struct ExportedMetrics {
    names: BTreeSet<String>,
}

/// Series Prometheus writes for every scrape target.
pub const SCRAPE_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

impl ExportedMetrics {
    pub fn contains(&self, metric: &str) -> bool {
        SCRAPE_SERIES.contains(&metric) || self.names.contains(metric)
    }
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }
}

/// Starts the real exporter polling a Nuki Web API stand-in (lock list, delivery health and two
/// reads of the webhook log) and a Nuki Bridge stand-in (callback registered), posts every webhook fixture but `device-masterdata-deleted` (which
/// removes a lock's series again) and one malformed body, and names every metric of the scrape.
/// Runs its own tokio runtime: call it from a plain `#[test]`.
pub fn exported_metrics() -> ExportedMetrics {
    use common::nuki_api_stub::{NukiApiStub, Reply, web_api_fixture};
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let scrape = runtime.block_on(async {
        let api = NukiApiStub::start().await;
        api.route(
            "GET",
            "/smartlock",
            Reply::json(web_api_fixture("smartlock.json")),
        );
        api.route(
            "GET",
            "/api/key/812/advanced",
            Reply::json(web_api_fixture("advanced-active.json")),
        );
        api.route(
            "GET",
            "/api/key/812/webhook/logs",
            Reply::json(b"[]".to_vec()),
        );
        // The application behind the relay (forward.url): it takes every webhook.
        api.route("POST", "/application", Reply::status(204, Vec::new()));
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        fs::write(&token_file, "token").unwrap();
        let mut config = common::test_config();
        config.api.token_file = Some(token_file);
        config.api.url = api.url.clone();
        config.api.allow_insecure_http = true;
        config.api.poll_interval = Duration::from_millis(100);
        config.api.advanced_key_id = Some(812);
        config.forward.url = Some(format!("{}/application", api.url));
        config.state.file = Some(dir.path().join("state.json"));
        let bridge = common::bridge_stub::BridgeStub::start([127, 0, 0, 1].into()).await;
        let exporter = common::bridge_stub::exporter_polling(&bridge, config, |_| {}).await;
        exporter
            .scrape_until(Duration::from_secs(60), |s| {
                s.value("nuki_exporter_api_up", &[]) == Some(1.0)
                    && s.value("nuki_bridge_callbacks_registered", &[("bridge", "hall")])
                        .is_some()
            })
            .await;
        api.route(
            "GET",
            "/api/key/812/webhook/logs",
            Reply::json(web_api_fixture("webhook-logs.json")),
        );
        exporter
            .scrape_until(Duration::from_secs(60), |s| {
                !s.samples("nuki_webhook_delivery_responses_total")
                    .is_empty()
            })
            .await;
        for name in common::fixture_names()
            .iter()
            .filter(|n| *n != "device-masterdata-deleted")
        {
            assert_eq!(
                exporter.post(&common::fixture(name)).await,
                204,
                "fixture {name}"
            );
        }
        // Counted as malformed; in relay mode the application decides on a signed body.
        assert_eq!(exporter.post(b"not json").await, 204, "malformed body");
        let scrape = exporter.scrape().await;
        exporter.shutdown().await;
        scrape
    });
    let mut names = BTreeSet::new();
    for line in scrape.0.lines() {
        let Some(family) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = family
            .split_once(' ')
            .unwrap_or_else(|| panic!("malformed TYPE line {line:?}"));
        let suffixes: &[&str] = match kind.trim() {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["_sum", "_count"],
            _ => &[],
        };
        names.insert(name.to_string());
        names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    assert!(
        names.len() >= 10,
        "the scrape has only {} metrics: {names:?}\n{}",
        names.len(),
        scrape.0
    );
    ExportedMetrics { names }
}

/// `nuki_*` metric names mentioned anywhere in a text: the PromQL inside annotation templates
/// (built with `printf`, so not parseable before Prometheus renders it) and promtool unit tests.
pub fn nuki_metric_mentions(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("nuki_") {
        let start = i + pos;
        // Inside a recorded name (`job_site:nuki_smartlocks:count`) is no metric mention.
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Markdown

/// GitHub's anchors of the headings of a Markdown document.
pub fn markdown_anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// PromQL, read by the promql-parser crate

/// Grafana's variables in dashboard queries, each with a stand-in the PromQL parser accepts: an
/// interval no query writes itself, or a plain label value. `${name}` is read as `$name`.
/// [`Promql`] puts the variable back in what it returns, so a check can still ask for
/// `job=~"$job"` or `[$__rate_interval]`.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "1000001ms"),
    ("$__interval", "1000002ms"),
    ("$__range", "1000003ms"),
    ("$job", "grafana_variable_job"),
    ("$instance", "grafana_variable_instance"),
    ("$smartlock_id", "grafana_variable_smartlock_id"),
];

/// A parsed PromQL expression (Grafana variables allowed).
pub struct Promql(Expr);

impl Promql {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let mut text = expr.to_string();
        for (variable, stand_in) in GRAFANA_VARIABLES {
            text = text
                .replace(&format!("${{{}}}", &variable[1..]), variable)
                .replace(variable, stand_in);
        }
        promql_parser::parser::parse(&text).map(Self)
    }

    /// Every vector selector, in the order written: alone, in a range (`x[5m]`), a subquery, a
    /// function argument, an aggregation or either side of a binary operator.
    pub fn selectors(&self) -> Vec<VectorSelector> {
        let mut out = Vec::new();
        visit(&self.0, |node| match node {
            Expr::VectorSelector(vs) => out.push(restore_variables(vs)),
            Expr::MatrixSelector(ms) => out.push(restore_variables(&ms.vs)),
            _ => {}
        });
        out
    }

    /// The range of every call of `function` (`5m`, `$__rate_interval`): its range-vector or
    /// subquery argument's.
    pub fn range_windows(&self, function: &str) -> Vec<String> {
        let mut out = Vec::new();
        visit(&self.0, |node| {
            let Expr::Call(call) = node else { return };
            if call.func.name != function {
                return;
            }
            let window = call.args.args.iter().find_map(|arg| match arg.as_ref() {
                Expr::MatrixSelector(ms) => Some(ms.range),
                Expr::Subquery(sq) => Some(sq.range),
                _ => None,
            });
            out.extend(window.as_ref().map(duration));
        });
        out
    }

    /// The `offset` of every selector on the right of an `unless` (`x unless x offset 15m`).
    pub fn unless_offsets(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        visit(&self.0, |node| {
            let Expr::Binary(binary) = node else { return };
            if binary.op.to_string() != "unless" {
                return;
            }
            visit(&binary.rhs, |node| {
                let offset = match node {
                    Expr::VectorSelector(vs) => &vs.offset,
                    Expr::MatrixSelector(ms) => &ms.vs.offset,
                    Expr::Subquery(sq) => &sq.offset,
                    _ => return,
                };
                out.extend(offset.as_ref().map(|offset| match offset {
                    Offset::Pos(d) => duration(d),
                    Offset::Neg(d) => format!("-{}", duration(d)),
                }));
            });
        });
        out
    }

    /// The labels of every `by (...)` clause of an aggregation.
    pub fn grouping_labels(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        visit(&self.0, |node| {
            if let Expr::Aggregate(AggregateExpr {
                modifier: Some(LabelModifier::Include(labels)),
                ..
            }) = node
            {
                out.extend(labels.labels.iter().cloned());
            }
        });
        out
    }

    /// Whether the series the expression returns can carry `label`, by Prometheus' rules for
    /// aggregations, functions and binary operators. It errs towards "yes": a function keeps its
    /// arguments' labels, and one-to-one arithmetic those of either side.
    pub fn keeps_label(&self, label: &str) -> bool {
        keeps_label(&self.0, label)
    }
}

fn keeps_label(expr: &Expr, label: &str) -> bool {
    let listed = |labels: &Labels| labels.labels.iter().any(|l| l == label);
    match expr {
        // A recording rule's series keeps the labels its level names (`instance_smartlock:...`
        // keeps instance, `job_site:...` does not); other labels: see above, "yes".
        Expr::VectorSelector(vs) => record_keeps_label(vs, label),
        Expr::MatrixSelector(ms) => record_keeps_label(&ms.vs, label),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => false,
        Expr::Paren(ParenExpr { expr })
        | Expr::Unary(UnaryExpr { expr })
        | Expr::Subquery(SubqueryExpr { expr, .. }) => keeps_label(expr, label),
        Expr::Aggregate(aggregate) => {
            let input = keeps_label(&aggregate.expr, label);
            match (aggregate.op.to_string().as_str(), &aggregate.modifier) {
                // these return series of their input, whatever they group by
                ("topk" | "bottomk" | "limitk" | "limit_ratio", _) => input,
                (_, Some(LabelModifier::Include(by))) => input && listed(by),
                (_, Some(LabelModifier::Exclude(without))) => input && !listed(without),
                (_, None) => false,
            }
        }
        Expr::Call(call) => {
            let args = &call.args.args;
            match call.func.name {
                "scalar" | "time" | "vector" => false,
                // labels from the selector's equality matchers
                "absent" | "absent_over_time" => args.iter().any(|arg| {
                    let vs = match arg.as_ref() {
                        Expr::VectorSelector(vs) => vs,
                        Expr::MatrixSelector(ms) => &ms.vs,
                        _ => return false,
                    };
                    vs.matchers
                        .matchers
                        .iter()
                        .any(|m| m.name == label && m.op == MatchOp::Equal)
                }),
                "label_replace" | "label_join"
                    if matches!(args.get(1).map(AsRef::as_ref),
                        Some(Expr::StringLiteral(StringLiteral { val })) if val == label) =>
                {
                    true
                }
                _ => args.iter().any(|arg| keeps_label(arg, label)),
            }
        }
        Expr::Binary(binary) => {
            let lhs = keeps_label(&binary.lhs, label);
            let rhs = keeps_label(&binary.rhs, label);
            let card = binary.modifier.as_ref().map(|m| (&m.card, &m.matching));
            match (binary.op.to_string().as_str(), card) {
                ("or", _) => lhs || rhs,
                ("and" | "unless", _) => lhs,
                (_, Some((VectorMatchCardinality::ManyToOne(include), _))) => {
                    lhs || listed(include)
                }
                (_, Some((VectorMatchCardinality::OneToMany(include), _))) => {
                    rhs || listed(include)
                }
                (_, Some((_, Some(LabelModifier::Include(on))))) => (lhs || rhs) && listed(on),
                (_, Some((_, Some(LabelModifier::Exclude(ignoring))))) => {
                    (lhs || rhs) && !listed(ignoring)
                }
                _ => lhs || rhs,
            }
        }
        Expr::Extension(_) => true,
    }
}

fn record_keeps_label(vs: &VectorSelector, label: &str) -> bool {
    match vs.metric().split_once(':') {
        Some((level, _)) if label == "instance" => level.split('_').any(|l| l == "instance"),
        _ => true,
    }
}

/// Calls `f` on every node of `expr`, parents first (promql-parser's `walk_expr`).
fn visit(expr: &Expr, f: impl FnMut(&Expr)) {
    struct Visitor<F>(F);
    impl<F: FnMut(&Expr)> ExprVisitor for Visitor<F> {
        type Error = Infallible;
        fn pre_visit(&mut self, node: &Expr) -> Result<bool, Infallible> {
            (self.0)(node);
            Ok(true)
        }
    }
    let Ok(_) = walk_expr(&mut Visitor(f), expr);
}

/// A duration as Prometheus writes it, or the Grafana variable it stands in for.
fn duration(d: &Duration) -> String {
    GRAFANA_VARIABLES
        .iter()
        .find(|(_, stand_in)| parse_duration(stand_in).ok().as_ref() == Some(d))
        .map(|(variable, _)| variable.to_string())
        .unwrap_or_else(|| display_duration(d))
}

/// The selector with the Grafana variables back in its label values.
fn restore_variables(vs: &VectorSelector) -> VectorSelector {
    let mut vs = vs.clone();
    let matchers = &mut vs.matchers;
    for matcher in matchers
        .matchers
        .iter_mut()
        .chain(matchers.or_matchers.iter_mut().flatten())
    {
        for (variable, stand_in) in GRAFANA_VARIABLES {
            matcher.value = matcher.value.replace(stand_in, variable);
        }
    }
    vs
}

/// What the checks ask of a vector selector.
pub trait SelectorExt {
    /// The metric name: written before the braces or as `__name__="..."`; "" without one.
    fn metric(&self) -> &str;
    /// Whether it has the matcher `label op "value"` (in each alternative of an `or` selector).
    fn has(&self, label: &str, op: &str, value: &str) -> bool;
}

impl SelectorExt for VectorSelector {
    fn metric(&self) -> &str {
        let Matchers {
            matchers,
            or_matchers,
        } = &self.matchers;
        let named = matchers
            .iter()
            .chain(or_matchers.iter().flatten())
            .find(|m| m.name == "__name__" && m.op == MatchOp::Equal);
        self.name
            .as_deref()
            .or(named.map(|m| m.value.as_str()))
            .unwrap_or("")
    }

    fn has(&self, label: &str, op: &str, value: &str) -> bool {
        let is = |m: &Matcher| m.name == label && m.op.to_string() == op && m.value == value;
        let Matchers {
            matchers,
            or_matchers,
        } = &self.matchers;
        matchers.iter().any(is)
            || (!or_matchers.is_empty() && or_matchers.iter().all(|alt| alt.iter().any(is)))
    }
}

//! Grafana dashboards (dashboards/*.json): the dashboard-linter rules of prometheus-conventions.md
//! B5/B6, their PromQL checked and run by promtool against a seeded fleet, and the metric names
//! of dashboards and alert rules checked against the names the exporter exposes.

mod stack_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use serde_json::{Value, json};
use stack_support::*;

const DATASOURCE_UID: &str = "${datasource}";
/// Lock id the seeded fleet has and `$smartlock_id` stands for when queries are run.
const SEEDED_LOCK: &str = "101";

fn uses_templated_datasource(v: &Value) -> bool {
    v["datasource"]["uid"].as_str() == Some(DATASOURCE_UID)
        && v["datasource"]["type"].as_str() == Some("prometheus")
}

/// Metrics carrying a smartlock_id label, which the drill-down's `$smartlock_id` must filter: the
/// exporter's per-lock series and the per-lock records of alerts/ (`smartlock:...`).
fn has_smartlock_label(metric: &str) -> bool {
    metric.starts_with("nuki_smartlock_")
        || metric.starts_with("nuki_operation")
        || metric.starts_with("smartlock:")
}

/// The series the recording rules of alerts/ record. They aggregate over replicas: they have no
/// instance label, so `$instance` cannot filter them.
fn recorded() -> BTreeSet<String> {
    recording_rules().into_iter().map(|r| r.record).collect()
}

#[test]
fn dashboards_follow_the_linter_rules() {
    let recorded = recorded();
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    let all = dashboards();
    for required in [
        "nuki-fleet-overview.json",
        "nuki-smartlock.json",
        "nuki-exporter-health.json",
    ] {
        if !all.iter().any(|(name, _)| name == required) {
            problems.push(format!("dashboards/{required} is missing"));
        }
    }
    for (file, d) in &all {
        let mut problem = |text: String| problems.push(format!("{file}: {text}"));

        // dashboard level
        let uid = d["uid"].as_str().unwrap_or_default();
        let uid_ok = (8..=40).contains(&uid.len())
            && uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !uid_ok {
            problem(format!(
                "uid {uid:?} must be fixed, 8-40 characters of [A-Za-z0-9_-]"
            ));
        }
        if format!("{uid}.json") != *file {
            problem(format!("file name must be the uid ({uid}.json)"));
        }
        if !uids.insert(uid.to_string()) {
            problem(format!("uid {uid} is used twice"));
        }
        for key in ["title", "description"] {
            if d[key].as_str().is_none_or(str::is_empty) {
                problem(format!("no {key}"));
            }
        }
        let tags: Vec<&str> = d["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        if !tags.contains(&"nuki") {
            problem(format!("tags {tags:?} must include \"nuki\""));
        }
        if d["editable"] != json!(false) {
            problem("editable must be false (provisioned dashboards are code)".into());
        }
        if d["schemaVersion"] != json!(39) {
            problem(format!(
                "schemaVersion must be 39 (Grafana 10.4), is {}",
                d["schemaVersion"]
            ));
        }
        if !d["__inputs"].is_null() || !d["__requires"].is_null() {
            problem("no __inputs/__requires: provisioning leaves ${DS_...} unresolved".into());
        }
        if !d["id"].is_null() {
            problem("id must be null; Grafana assigns it".into());
        }

        // template variables
        let vars = variables(d);
        let datasources: Vec<&&Value> = vars.iter().filter(|v| v["type"] == "datasource").collect();
        if datasources.len() != 1
            || datasources[0]["name"] != "datasource"
            || datasources[0]["query"] != "prometheus"
        {
            problem("exactly one datasource variable, named datasource, of type prometheus".into());
        }
        let names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        for required in ["job", "instance"] {
            if !names.contains(required) {
                problem(format!("no {required} variable"));
            }
        }
        for v in vars.iter().filter(|v| v["includeAll"] == json!(true)) {
            // without allValue, Grafana's "All" sends every value as one long regex alternation
            if v["allValue"]
                .as_str()
                .is_none_or(|a| ![".+", ".*"].contains(&a))
            {
                problem(format!(
                    "variable {} offers All: set allValue to \".+\"",
                    v["name"]
                ));
            }
        }

        // firing alerts as annotations, scoped like the dashboard's queries
        let alerts: Vec<&str> = d["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| uses_templated_datasource(a) && a["enable"] == json!(true))
            .filter_map(|a| a["expr"].as_str())
            .filter(|e| e.starts_with("ALERTS{"))
            .collect();
        match alerts.as_slice() {
            [expr] => match Promql::parse(expr) {
                Ok(promql) => {
                    let s = &promql.selectors()[0];
                    let per_lock = names.contains("smartlock_id");
                    if !s.has("alertstate", "=", "firing")
                        || !s.has("job", "=~", "$job")
                        || (per_lock && !s.has("smartlock_id", "=~", "$smartlock_id"))
                    {
                        problem(format!(
                            "the alerts annotation must select alertstate=\"firing\", job=~\"$job\"{}: {expr}",
                            if per_lock {
                                " and smartlock_id=~\"$smartlock_id\""
                            } else {
                                ""
                            }
                        ));
                    }
                }
                Err(e) => problem(format!("annotation {expr}: {e}")),
            },
            other => problem(format!(
                "needs one enabled annotation of firing ALERTS on the datasource variable, has {other:?}"
            )),
        }

        for v in vars.iter().filter(|v| v["type"] == "query") {
            let name = v["name"].as_str().unwrap_or("?");
            if !uses_templated_datasource(v) {
                problem(format!("variable {name} must use the datasource variable"));
            }
            if v["refresh"] != json!(2) {
                problem(format!(
                    "variable {name} must refresh on time-range change (refresh: 2)"
                ));
            }
            let query = variable_query(v).unwrap_or_default();
            let selector = label_values_selector(&query).or_else(|| query_result_expr(&query));
            let Some(selector) = selector else {
                problem(format!(
                    "variable {name}: query {query:?} is not label_values(...) or query_result(...)"
                ));
                continue;
            };
            match Promql::parse(&selector) {
                Err(e) => problem(format!("variable {name}: cannot parse {selector}: {e}")),
                Ok(promql) if name != "job" => {
                    let scoped = promql
                        .selectors()
                        .iter()
                        .all(|s| s.has("job", "=~", "$job"));
                    if !scoped {
                        problem(format!("variable {name}: {query} lacks job=~\"$job\""));
                    }
                }
                Ok(_) => {}
            }
        }

        // panels and queries
        let mut ids = BTreeSet::new();
        let mut used_variables = BTreeSet::new();
        for panel in panels(d) {
            let title = panel["title"].as_str().unwrap_or_default();
            let mut problem =
                |text: String| problems.push(format!("{file}: panel {title:?}: {text}"));
            if panel["type"] == "row" {
                continue;
            }
            if !ids.insert(panel["id"].to_string()) {
                problem(format!("duplicate panel id {}", panel["id"]));
            }
            if title.is_empty() {
                problem("no title".into());
            }
            if panel["description"].as_str().is_none_or(str::is_empty) {
                problem("no description".into());
            }
            if panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problem("no unit".into());
            }
            if !uses_templated_datasource(panel) {
                problem("must use the datasource variable".into());
            }
            let grid = &panel["gridPos"];
            let (x, w, h) = (grid["x"].as_i64(), grid["w"].as_i64(), grid["h"].as_i64());
            if !matches!((x, w, h), (Some(x), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24) {
                problem(format!("bad gridPos {grid}"));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problem("no query".into());
            }
            for target in &targets {
                if !uses_templated_datasource(target) {
                    problem("query must use the datasource variable".into());
                }
                let expr = target["expr"].as_str().unwrap_or_default();
                for var in ["job", "instance", "smartlock_id"] {
                    if expr.contains(&format!("${var}")) {
                        used_variables.insert(var);
                    }
                }
                let promql = match Promql::parse(expr) {
                    Ok(promql) => promql,
                    Err(e) => {
                        problem(format!("cannot parse {expr}: {e}"));
                        continue;
                    }
                };
                let selectors = promql.selectors();
                if selectors.is_empty() {
                    problem(format!("{expr} selects no series"));
                }
                for s in &selectors {
                    let scoped: &[(&str, &str)] = if recorded.contains(s.metric()) {
                        &[("job", "$job")]
                    } else {
                        &[("job", "$job"), ("instance", "$instance")]
                    };
                    for &(label, value) in scoped {
                        if !s.has(label, "=~", value) {
                            problem(format!(
                                "selector of {} lacks {label}=~\"{value}\"",
                                s.metric()
                            ));
                        }
                    }
                    if names.contains("smartlock_id")
                        && has_smartlock_label(s.metric())
                        && !s.has("smartlock_id", "=~", "$smartlock_id")
                    {
                        problem(format!(
                            "selector of {} lacks smartlock_id=~\"$smartlock_id\"",
                            s.metric()
                        ));
                    }
                }
                // one rate unit everywhere: per minute (CPU seconds per second and ratios aside)
                let unit = panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or_default();
                if !promql.range_windows("rate").is_empty()
                    && unit != "percentunit"
                    && !(["reqpm", "cpm", "opm"].contains(&unit) && expr.ends_with(" * 60"))
                {
                    problem(format!(
                        "a rate must be shown per minute (`* 60`, unit reqpm, cpm or opm), has unit {unit:?}: {expr}"
                    ));
                }
                for function in ["rate", "irate"] {
                    for window in promql.range_windows(function) {
                        if window != "$__rate_interval" {
                            problem(format!(
                                "{function}() over [{window}]: use [$__rate_interval]"
                            ));
                        }
                    }
                }
            }
        }
        for name in names.iter().filter(|n| **n != "datasource") {
            if !used_variables.contains(name) {
                problems.push(format!(
                    "{file}: variable {name} is not used as a matcher by any query"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The color a stat panel shows for `value`: the last threshold step at or below it.
fn threshold_color(panel: &Value, value: f64) -> String {
    let steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .expect("threshold steps");
    steps
        .iter()
        .rfind(|s| s["value"].as_f64().is_none_or(|v| v <= value))
        .and_then(|s| s["color"].as_str())
        .expect("a base step")
        .to_string()
}

#[test]
fn no_scrapeable_target_is_not_shown_green() {
    let (_, health) = dashboards()
        .into_iter()
        .find(|(file, _)| file == "nuki-exporter-health.json")
        .expect("the health dashboard");
    let panel = |title: &str| {
        panels(&health)
            .into_iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"))
            .clone()
    };
    let (up, down) = (&panel("Targets up"), &panel("Targets down"));
    assert_eq!(threshold_color(up, 0.0), "red");
    assert_eq!(threshold_color(up, 1.0), "green");
    assert_eq!(threshold_color(down, 0.0), "green");
    assert_ne!(threshold_color(down, 1.0), "green");
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let queries = runnable_queries(SEEDED_LOCK);
    for (i, (_, _, expr)) in queries.iter().enumerate() {
        writeln!(
            rules,
            "      - record: dashboard:query_{i}\n        expr: {}",
            yaml_quote(expr)
        )
        .unwrap();
    }
    let file = dir.path().join("queries.yml");
    fs::write(&file, rules).expect("write rules");
    let output = run(Command::new(promtool())
        .args(["check", "rules", "--lint=none"])
        .arg(&file));
    if !output.ok {
        let listing: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(i, (f, t, e))| format!("dashboard:query_{i} = {f} / {t}: {e}"))
            .collect();
        panic!(
            "promtool rejects a dashboard query:\n{}{}\n{}",
            output.stdout,
            output.stderr,
            listing.join("\n")
        );
    }
}

/// Three hours of a small fleet on two exporter replicas, every metric the dashboards read.
const SEEDED_FLEET: &str = r#"
      - series: 'up{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '1x180'
      - series: 'up{job="nuki-exporter", instance="exporter-b:10181"}'
        values: '1x170 0x10'
      - series: 'scrape_duration_seconds{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '0.01x180'
      - series: 'nuki_exporter_build_info{job="nuki-exporter", instance="exporter-a:10181", version="0.1.0"}'
        values: '1x180'
      - series: 'nuki_exporter_smartlocks_tracked{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '2x180'
      - series: 'nuki_exporter_last_webhook_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '0+60x180'
      - series: 'nuki_exporter_last_webhook_timestamp_seconds{job="nuki-exporter", instance="exporter-b:10181"}'
        values: '0x180'
      - series: 'nuki_bridge_up{job="nuki-exporter", instance="exporter-a:10181", bridge="hall"}'
        values: '1x170 0x10'
      - series: 'nuki_bridge_server_connected{job="nuki-exporter", instance="exporter-a:10181", bridge="hall"}'
        values: '1x180'
      - series: 'nuki_bridge_callbacks_registered{job="nuki-exporter", instance="exporter-a:10181", bridge="hall"}'
        values: '1x180'
      - series: 'nuki_bridge_info{job="nuki-exporter", instance="exporter-a:10181", bridge="hall", bridge_type="hardware", firmware_version="2.17.0"}'
        values: '1x180'
      - series: 'nuki_bridge_requests_total{job="nuki-exporter", instance="exporter-a:10181", bridge="hall", endpoint="list", code="200"}'
        values: '0+2x180'
      - series: 'nuki_bridge_last_success_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181", bridge="hall"}'
        values: '60+60x170 10260x10'
      - series: 'nuki_bridge_callbacks_received_total{job="nuki-exporter", instance="exporter-a:10181", bridge="hall"}'
        values: '0+1x180'
      - series: 'nuki_exporter_webhooks_received_total{job="nuki-exporter", instance="exporter-a:10181", source="device", kind="DEVICE_STATUS"}'
        values: '0+3x180'
      - series: 'nuki_exporter_webhooks_received_total{job="nuki-exporter", instance="exporter-b:10181", source="api", kind="UnlockAction"}'
        values: '_x120 1+1x60'
      - series: 'nuki_exporter_webhooks_rejected_total{job="nuki-exporter", instance="exporter-a:10181", reason="signature"}'
        values: '0+1x180'
      - series: 'nuki_exporter_label_overflow_total{job="nuki-exporter", instance="exporter-a:10181", label="smartlock_id"}'
        values: '0+1x180'
      - series: 'nuki_exporter_open_connections{job="nuki-exporter", instance="exporter-a:10181", listener="webhook"}'
        values: '3x180'
      - series: 'nuki_exporter_connection_limit_hits_total{job="nuki-exporter", instance="exporter-a:10181", limit="header_read_timeout"}'
        values: '0+1x180'
      - series: 'process_resident_memory_bytes{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '12000000x180'
      - series: 'process_cpu_seconds_total{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '0+0.5x180'
      - series: 'process_open_fds{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '12x180'
      - series: 'process_max_fds{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '1024x180'
      - series: 'process_start_time_seconds{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '0x180'
      - series: 'nuki_smartlock_info{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101", name="Front door", device_type="smartlock_3_4", firmware_version="3.10.7"}'
        values: '1x180'
      - series: 'nuki_smartlock_info{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="101", name="Front door (renamed)", device_type="smartlock_3_4", firmware_version="3.10.7"}'
        values: '1x180'
      - series: 'nuki_smartlock_last_seen_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '0+60x180'
      - series: 'nuki_smartlock_last_seen_timestamp_seconds{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="202"}'
        values: '0+60x180'
      - series: 'nuki_smartlock_battery_charge_percent{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '30-0.1x180'
      - series: 'nuki_smartlock_battery_charge_percent{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="202"}'
        values: '80x180'
      - series: 'nuki_smartlock_battery_critical{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101", battery="lock"}'
        values: '0x100 1x80'
      - series: 'nuki_smartlock_state_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '0+60x180'
      - series: 'nuki_smartlock_state_timestamp_seconds{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="202"}'
        values: '0+60x180'
      - series: 'nuki_smartlock_battery_replaced_timestamp_seconds{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="202"}'
        values: '600x180'
      - series: 'nuki_smartlock_battery_critical{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101", battery="keypad"}'
        values: '0x180'
      - series: 'nuki_smartlock_server_state{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '0x150 4x30'
      - series: 'nuki_smartlock_server_state{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="202"}'
        values: '0x180'
      - series: 'nuki_smartlock_lock_state{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '1x90 3x90'
      - series: 'nuki_smartlock_door_state{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '2x180'
      - series: 'nuki_operations_total{job="nuki-exporter", instance="exporter-a:10181", operation="UnlockAction", smartlock_id="101"}'
        values: '0+2x180'
      - series: 'nuki_operations_total{job="nuki-exporter", instance="exporter-b:10181", operation="AuthCreation", smartlock_id="202"}'
        values: '_x120 1+1x60'
      - series: 'nuki_operation_errors_total{job="nuki-exporter", instance="exporter-a:10181", operation="UnlockAction", error_code="0xFF", error_name="ERROR_UNKNOWN", smartlock_id="101"}'
        values: '0+1x180'
      - series: 'nuki_operation_errors_total{job="nuki-exporter", instance="exporter-b:10181", operation="AuthCreation", error_code="0x13", error_name="P_ERROR_MAX_USER", smartlock_id="202"}'
        values: '_x170 1x10'
      - series: 'nuki_smartlock_activity_log_entries_total{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101", action="unlock", completion_state="success"}'
        values: '0+1x180'
      - series: 'nuki_smartlock_activity_log_entries_total{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101", action="lock", completion_state="motor_blocked"}'
        values: '0+0.2x180'
      - series: 'nuki_smartlock_server_state{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="303"}'
        values: '0x180'
      - series: 'nuki_exporter_api_up{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '1x150 0x30'
      - series: 'nuki_exporter_api_smartlocks{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '3x180'
      - series: 'nuki_exporter_api_last_success_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181"}'
        values: '0+60x150 9000x30'
      - series: 'nuki_exporter_api_requests_total{job="nuki-exporter", instance="exporter-a:10181", endpoint="/smartlock", code="200"}'
        values: '0+1x150 150x30'
      - series: 'nuki_exporter_api_requests_total{job="nuki-exporter", instance="exporter-a:10181", endpoint="/smartlock", code="502"}'
        values: '_x150 1+1x30'
      - series: 'nuki_exporter_api_request_duration_seconds_bucket{job="nuki-exporter", instance="exporter-a:10181", endpoint="/smartlock", le="0.5"}'
        values: '0+1x180'
      - series: 'nuki_exporter_api_request_duration_seconds_bucket{job="nuki-exporter", instance="exporter-a:10181", endpoint="/smartlock", le="+Inf"}'
        values: '0+1x180'
      - series: 'nuki_exporter_api_malformed_responses_total{job="nuki-exporter", instance="exporter-a:10181", endpoint="/smartlock"}'
        values: '0+0.1x180'
      - series: 'nuki_exporter_api_poll_duration_seconds_bucket{job="nuki-exporter", instance="exporter-a:10181", le="1"}'
        values: '0+1x180'
      - series: 'nuki_exporter_api_poll_duration_seconds_bucket{job="nuki-exporter", instance="exporter-a:10181", le="+Inf"}'
        values: '0+1x180'
      - series: 'nuki_webhook_delivery_active{job="nuki-exporter", instance="exporter-a:10181", api_key_id="812"}'
        values: '1x160 0x20'
      - series: 'nuki_webhook_deliveries_total{job="nuki-exporter", instance="exporter-a:10181", api_key_id="812", result="failure"}'
        values: '0+2x180'
      - series: 'nuki_webhook_delivery_responses_total{job="nuki-exporter", instance="exporter-a:10181", api_key_id="812", code="401"}'
        values: '0+2x180'
      - series: 'nuki_smartlock_state_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="101"}'
        values: '0+60x180'
      - series: 'nuki_smartlock_state_timestamp_seconds{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="101"}'
        values: '30+60x180'
      - series: 'nuki_smartlock_state_timestamp_seconds{job="nuki-exporter", instance="exporter-b:10181", smartlock_id="202"}'
        values: '0+60x180'
      - series: 'nuki_smartlock_state_timestamp_seconds{job="nuki-exporter", instance="exporter-a:10181", smartlock_id="303"}'
        values: '0+60x180'
"#;

/// Every dashboard query (and variable) returns data in a Prometheus holding the seeded fleet and
/// the shipped rules (whose records the dashboards read): each becomes an alert `count((query)) > 0`
/// that promtool expects to fire. A zero fallback (`or vector(0)`) is removed first, or the query
/// would return data without any series.
#[test]
fn dashboard_queries_return_data_for_a_seeded_fleet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let queries = runnable_queries(SEEDED_LOCK);
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let shipped: String = rule_files()
        .iter()
        .map(|f| format!("  - {}\n", f.display()))
        .collect();
    let mut tests = format!(
        "rule_files:\n  - rules.yml\n{shipped}evaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:{SEEDED_FLEET}    alert_rule_test:\n"
    );
    for (i, (_, _, expr)) in queries.iter().enumerate() {
        let expr = without_zero_fallback(expr);
        writeln!(
            rules,
            "      - alert: DashboardQuery{i}\n        expr: {}",
            yaml_quote(&format!("count(({expr})) > 0"))
        )
        .unwrap();
        writeln!(
            tests,
            "      - eval_time: 175m\n        alertname: DashboardQuery{i}\n        exp_alerts:\n          - exp_labels: {{}}"
        )
        .unwrap();
    }
    fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
    let test_file = dir.path().join("queries.test.yml");
    fs::write(&test_file, tests).expect("write tests");
    let output = run(Command::new(promtool())
        .args(["test", "rules"])
        .arg(&test_file));
    if !output.ok {
        let text = output.output();
        let mut empty = Vec::new();
        for (i, (file, title, expr)) in queries.iter().enumerate() {
            if text.contains(&format!("alertname: DashboardQuery{i},")) {
                empty.push(format!("{file} / {title}: {expr}"));
            }
        }
        panic!(
            "dashboard queries without data against the seeded fleet:\n{}\n\n{text}",
            empty.join("\n")
        );
    }
}

/// Every metric a dashboard, an alert rule or a recording rule reads is one the exporter exposes
/// (the metrics of a real scrape after every webhook fixture, plus the series Prometheus adds per
/// target) or one a recording rule of alerts/ records from those.
#[test]
fn every_metric_in_dashboards_and_rules_is_exported() {
    let exported = exported_metrics();
    let recorded = recorded();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut note = |metrics: BTreeSet<String>, place: String| {
        for metric in metrics {
            used.entry(metric).or_default().insert(place.clone());
        }
    };
    let selected = |expr: &str, place: &str| -> BTreeSet<String> {
        let promql = Promql::parse(expr).unwrap_or_else(|e| panic!("{place}: {e}"));
        promql
            .selectors()
            .iter()
            .map(|s| s.metric().to_string())
            .collect()
    };
    for (file, d) in dashboards() {
        for (title, expr) in panel_queries(&d) {
            let place = format!("{file} / {title}");
            note(selected(&expr, &place), place);
        }
        for v in variables(&d) {
            if let Some(selector) = variable_query(v).as_deref().and_then(label_values_selector) {
                let place = format!("{file} / variable {}", v["name"]);
                note(selected(&selector, &place), place);
            }
        }
    }
    for rule in recording_rules() {
        let place = format!("record {}", rule.record);
        note(selected(&rule.expr, &place), place);
    }
    for rule in alert_rules() {
        let place = format!("alert {}", rule.alert);
        note(selected(&rule.expr, &place), place);
        for text in rule.annotations.values().filter_map(|v| v.as_str()) {
            let place = format!("alert {} (annotation)", rule.alert);
            note(nuki_metric_mentions(text), place);
        }
    }
    for test in unit_test_files() {
        let place = test.file_name().unwrap().to_string_lossy().to_string();
        note(nuki_metric_mentions(&read(&test)), place);
    }
    let unknown: Vec<String> = used
        .iter()
        .filter(|(metric, _)| {
            metric.is_empty() || !(exported.contains(metric) || recorded.contains(*metric))
        })
        .map(|(metric, places)| format!("{metric:?} used by {places:?}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics the exporter does not expose (exported: {:?}):\n{}",
        exported.names(),
        unknown.join("\n")
    );
    // and the main ones are used at all
    for metric in [
        "nuki_operation_errors_total",
        "nuki_smartlock_info",
        "nuki_smartlock_battery_critical",
        "nuki_exporter_webhooks_rejected_total",
        "nuki_exporter_label_overflow_total",
        "nuki_exporter_open_connections",
        "nuki_exporter_connection_limit_hits_total",
    ] {
        assert!(
            used.contains_key(metric),
            "{metric} is used by no dashboard or rule"
        );
    }
}

#[test]
fn the_promql_helpers_find_every_selector_and_window() {
    let promql = Promql::parse(
        r#"sum by (job, smartlock_id) (
               (x{job="a", b=~"c|d"} unless x{job="a"} offset 15m)
             and on (job) count by (job) (up{job="a"} offset 15m)
             or increase(y[5m])
           )
           * on (smartlock_id) group_left (name) topk by (k) (1, max without (i) (z{l!="m"}))
           / scalar(sum(rate(w[$__rate_interval]))) # a comment naming no_metric
           + ignoring (smartlock_id) max_over_time(v{smartlock_id=~"$smartlock_id"}[1h:$__interval] offset $__range)
           + ignoring (smartlock_id) {__name__="named", job=~"${job}"}"#,
    )
    .unwrap();
    let s = promql.selectors();
    let metrics: Vec<&str> = s.iter().map(|s| s.metric()).collect();
    assert_eq!(metrics, ["x", "x", "up", "y", "z", "w", "v", "named"]);
    assert!(s[0].has("b", "=~", "c|d"));
    assert!(s[4].has("l", "!=", "m"));
    assert!(s[6].has("smartlock_id", "=~", "$smartlock_id"));
    assert!(s[7].has("job", "=~", "$job"));
    assert!(!s[7].has("job", "=", "$job"));
    assert_eq!(promql.range_windows("increase"), ["5m"]);
    assert_eq!(promql.range_windows("rate"), ["$__rate_interval"]);
    assert_eq!(promql.range_windows("max_over_time"), ["1h"]);
    assert_eq!(promql.unless_offsets(), BTreeSet::from(["15m".to_string()]));
    assert_eq!(
        promql.grouping_labels(),
        BTreeSet::from(["job", "smartlock_id", "k"].map(String::from))
    );
    for (expr, keeps_instance) in [
        (r#"sum by (job) (x)"#, false),
        (r#"max by (job, instance) (x)"#, true),
        (r#"sum without (smartlock_id) (x)"#, true),
        (r#"x > 0"#, true),
        (r#"time() - max by (job) (x)"#, false),
        (r#"topk by (job) (1, x)"#, true),
        (
            r#"rate(x[5m]) < on (job, instance) group_left rate(up[5m])"#,
            true,
        ),
        (
            r#"sum by (job) ((x unless x offset 5m) and count_over_time(x[5m]) < on (job, instance) group_left count_over_time(up[5m]))"#,
            false,
        ),
        (
            r#"sum by (job) (x) * on (job) group_left (instance) y"#,
            true,
        ),
        (r#"x / on (job) y"#, false),
        (r#"x / ignoring (instance) y"#, false),
        (r#"sum by (job) (x) or y"#, true),
        (r#"sum by (job) (x) and on (job) y"#, false),
        (r#"absent(up{job="a"})"#, false),
        (r#"smartlock:x:freshest{job="a"} < 20"#, false),
        (r#"deriv(job:x:median{job="a"}[1d])"#, false),
        (r#"instance_smartlock:x:last{job="a"}"#, true),
        (r#"absent(up{instance="a"})"#, true),
        (
            r#"label_replace(sum(x), "instance", "$1", "job", "(.*)")"#,
            true,
        ),
    ] {
        let promql = Promql::parse(expr).unwrap();
        assert_eq!(promql.keeps_label("instance"), keeps_instance, "{expr}");
    }
    assert!(Promql::parse("sum(x{job=\"a\"}").is_err());
    assert_eq!(
        Promql::parse("rate(x[5m]) + irate(y[$__rate_interval])")
            .unwrap()
            .range_windows("rate"),
        ["5m"]
    );
    assert_eq!(
        label_values_selector("label_values(up{job=~\"$job\", a=\"b,c\"}, instance)").as_deref(),
        Some("up{job=~\"$job\", a=\"b,c\"}")
    );
    assert!(
        markdown_anchors("# Title\n## NukiSmartlockOffline\n").contains("nukismartlockoffline")
    );
    let exported = exported_metrics();
    assert!(exported.contains("process_cpu_seconds_total") && exported.contains("up"));
    assert!(!exported.contains("nuki_no_such_metric"));
}

/// The demo fleet's webhooks, round after round, into a real exporter scraped by a real
/// Prometheus with the shipped rules: the Battery care replacement queue, run as the dashboard
/// runs it, lists the demo's fast-draining lock first, ahead of locks that drain a third as fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replacement_queue_lists_the_demo_fleets_fast_draining_lock_first() {
    use stack_support::common::{Prometheus, TestExporter};
    use std::time::Duration;

    const LOCKS: u64 = 8;
    let (_, dashboard) = dashboards()
        .into_iter()
        .find(|(file, _)| file == "nuki-battery-care.json")
        .expect("the battery care dashboard");
    let queue = panel_queries(&dashboard)
        .into_iter()
        .find(|(title, _)| title == "Replacement queue")
        .map(|(_, expr)| substitute_grafana_variables(&expr, ""))
        .expect("the replacement queue's first query");
    let exporter = TestExporter::start().await;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: nuki-exporter\n    static_configs:\n      - targets: ['{}']\n",
        repo().join("alerts/nuki-exporter.rules.yml").display(),
        exporter.metrics_address()
    );
    let prometheus = Prometheus::start(&config, &[]).await;
    let fast = nuki_exporter::cli::demo::FAST_DRAINING_LOCK.to_string();
    for round in 0..4 {
        for webhook in nuki_exporter::cli::demo::round(round, LOCKS) {
            assert_eq!(
                exporter.post(&serde_json::to_vec(&webhook).unwrap()).await,
                204
            );
        }
        let charge = exporter
            .scrape()
            .await
            .value(
                "nuki_smartlock_battery_charge_percent",
                &[("smartlock_id", &fast)],
            )
            .expect("the fast-draining lock's charge");
        // the round is in the per-lock record the forecast reads
        prometheus
            .wait_for(
                &format!(
                    "smartlock:nuki_smartlock_battery_charge_percent:freshest{{smartlock_id=\"{fast}\"}} == {charge}"
                ),
                Duration::from_secs(60),
            )
            .await;
    }
    // Every lock that drains has a forecast: the five that drain 2 points a round and the fast one
    // (the low-voltage lock holds 8 %, the first lock has new batteries, an opener may report none).
    prometheus
        .wait_for(
            "count(smartlock:nuki_smartlock_battery_charge_percent:days_until_empty) >= 5",
            Duration::from_secs(60),
        )
        .await;
    let listed = prometheus.query(&queue).await;
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|sample| sample["metric"]["smartlock_id"].as_str())
        .collect();
    assert!(ids.len() >= 5, "{listed:?}");
    assert_eq!(ids[0], fast, "{listed:?}");
    assert_eq!(
        listed[0]["metric"]["name"], "Apartment 3",
        "the queue names the lock: {listed:?}"
    );
}

/// The expression inside a variable's `query_result(<expr>)`.
fn query_result_expr(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("query_result(")?
        .strip_suffix(')')?;
    Some(inner.trim().to_owned())
}

#[test]
fn the_lock_picker_lists_every_known_lock_by_name() {
    let (_, dashboard) = dashboards()
        .into_iter()
        .find(|(file, _)| file.ends_with("nuki-smartlock.json"))
        .expect("the smart-lock dashboard");
    let picker = variables(&dashboard)
        .into_iter()
        .find(|v| v["name"] == "smartlock_id")
        .expect("the smartlock_id variable");
    // Every lock any source reported info for (webhook, Web API, Bridge, state file), one per
    // lock whatever the replicas, and not only those that sent a webhook.
    assert_eq!(
        variable_query(picker).as_deref(),
        Some(r#"query_result(smartlock:nuki_smartlock_info:freshest{job=~"$job"})"#)
    );
    // Grafana shows the name and keeps the id as the value the panels select by.
    assert_eq!(
        picker["regex"],
        r#"/name="(?<text>[^"]*)".*smartlock_id="(?<value>[^"]+)"/"#
    );
}

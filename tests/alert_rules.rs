//! The alert rules under alerts/: promtool checks and unit tests, the shipped Prometheus
//! configuration, and a lint of the monitoring-mixin conventions (prometheus-conventions.md B1, B3).

mod stack_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use stack_support::*;

const SEVERITIES: &[&str] = &["critical", "warning", "info"];
/// The link of a per-lock alert to that lock's dashboard; the Grafana base URL is the external
/// label grafana_url of deploy/prometheus/prometheus.yml.
const DASHBOARD_URL: &str = "{{ $externalLabels.grafana_url }}/d/nuki-smartlock?var-job={{ $labels.job }}&var-smartlock_id={{ $labels.smartlock_id }}";
/// The always-firing alert, the only one with severity none.
const WATCHDOG: &str = "NukiWatchdog";

/// Alerts on a state whose expression uses a counter window only as a condition (NukiWebhooksStalled:
/// "did Nuki record deliveries in the last hour"), so they resolve with the state, without
/// keep_firing_for.
const WINDOW_ONLY_IN_A_CONDITION: &[&str] = &["NukiWebhooksStalled"];

/// State alerts on a gauge the state file restores: keep_firing_for bridges the failed scrapes of
/// an exporter restart, so the alert neither resolves nor pends again (its promtool test shows it).
const KEPT_ACROSS_RESTARTS: &[&str] = &["NukiSmartlockBatteryCritical"];

#[test]
fn promtool_check_rules_accepts_the_rule_files() {
    let files = rule_files();
    let output = run_ok(
        Command::new(promtool())
            .arg("check")
            .arg("rules")
            .args(&files),
    );
    let expected = alert_rules().len() + recording_rules().len();
    assert!(
        output.contains(&format!("SUCCESS: {expected} rules found")),
        "promtool did not find the {expected} alerting and recording rules:\n{output}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let files = unit_test_files();
    let output = run_ok(
        Command::new(promtool())
            .arg("test")
            .arg("rules")
            .args(&files),
    );
    assert!(!output.contains("FAILED"), "{output}");
}

#[test]
fn promtool_check_config_accepts_the_shipped_prometheus_configuration() {
    let config = repo().join("deploy/prometheus/prometheus.yml");
    run_ok(
        Command::new(promtool())
            .arg("check")
            .arg("config")
            .arg(&config),
    );
}

/// The same check with the rules where docker-compose.yml mounts them (./alerts at
/// /etc/prometheus/rules), so promtool also loads every shipped rule file through the glob.
#[test]
fn prometheus_configuration_loads_every_rule_file_and_targets_the_stack() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_dir = dir.path().join("rules");
    fs::create_dir(&rules_dir).expect("rules dir");
    for file in rule_files() {
        fs::copy(&file, rules_dir.join(file.file_name().unwrap())).expect("copy rule file");
    }
    let text = read(repo().join("deploy/prometheus/prometheus.yml"));
    assert!(
        text.contains("/etc/prometheus/rules/"),
        "prometheus.yml must load the rules from /etc/prometheus/rules/ (the compose mount of alerts/)"
    );
    let local = text.replace(
        "/etc/prometheus/rules/",
        &format!("{}/", rules_dir.display()),
    );
    let config = dir.path().join("prometheus.yml");
    fs::write(&config, local).expect("write config");
    let output = run_ok(
        Command::new(promtool())
            .arg("check")
            .arg("config")
            .arg(&config),
    );
    for file in rule_files() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            output.contains(&name),
            "promtool check config did not load {name}:\n{output}"
        );
    }
    let expected = alert_rules().len() + recording_rules().len();
    assert!(
        output.contains(&format!("SUCCESS: {expected} rules found")),
        "promtool check config did not find the {expected} alerting and recording rules:\n{output}"
    );

    let doc = yaml(repo().join("deploy/prometheus/prometheus.yml"));
    let jobs = doc["scrape_configs"].as_sequence().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("nuki-exporter"))
        .expect("a scrape job named nuki-exporter: the alerts select job=\"nuki-exporter\"");
    let targets: Vec<&str> = job["static_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|c| c["targets"].as_sequence().into_iter().flatten())
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(
        targets,
        ["nuki-exporter:10181"],
        "scrape target of the exporter"
    );
    let am: Vec<&str> = doc["alerting"]["alertmanagers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|a| a["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|c| c["targets"].as_sequence().into_iter().flatten())
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(am, ["alertmanager:9093"], "alerting target");
}

fn is_camel_case(name: &str) -> bool {
    // mixtool's alert-name-camelcase: ^([A-Z]+[a-z0-9]+)+$
    let chars: Vec<char> = name.chars().collect();
    let mut i = 0;
    if chars.is_empty() {
        return false;
    }
    while i < chars.len() {
        let start = i;
        while i < chars.len() && chars[i].is_ascii_uppercase() {
            i += 1;
        }
        if i == start {
            return false;
        }
        let lower = i;
        while i < chars.len() && (chars[i].is_ascii_lowercase() || chars[i].is_ascii_digit()) {
            i += 1;
        }
        if i == lower {
            return false;
        }
    }
    true
}

/// Minutes of a Prometheus duration such as `1h30m`, `90s`, `15m`.
fn minutes(duration: &str) -> f64 {
    humantime::parse_duration(duration)
        .unwrap_or_else(|e| panic!("bad duration {duration}: {e}"))
        .as_secs_f64()
        / 60.0
}

#[test]
fn alert_rules_follow_the_conventions() {
    let runbook = read(repo().join("docs/runbook.md"));
    let anchors = markdown_anchors(&runbook);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for rule in alert_rules() {
        let name = &rule.alert;
        let mut problem = |text: String| problems.push(format!("{name}: {text}"));
        let expr = Promql::parse(&rule.expr);
        let grouping = expr
            .as_ref()
            .map(Promql::grouping_labels)
            .unwrap_or_default();

        if !seen.insert(name.clone()) {
            problem("defined twice; keep one rule per alert".into());
        }
        if !is_camel_case(name) || !name.starts_with("Nuki") {
            problem("name must be CamelCase with the shared prefix Nuki".into());
        }

        // labels
        match rule.label("severity") {
            Some(s) if SEVERITIES.contains(&s) => {}
            // kube-prometheus' convention for an always-firing alert, routed to a dead man's switch
            Some("none") if name == WATCHDOG => {}
            other => problem(format!(
                "severity must be one of {SEVERITIES:?}, is {other:?}"
            )),
        }
        for key in rule.labels.keys() {
            if key.as_str() != Some("severity") {
                problem(format!("unexpected static label {key:?}"));
            }
        }

        // annotations
        match rule.annotation("summary") {
            None => problem("no summary".into()),
            Some(s) => {
                if s.contains("{{") {
                    problem("summary must be static (no template)".into());
                }
                if !s.chars().next().is_some_and(|c| c.is_uppercase()) || !s.ends_with('.') {
                    problem(format!(
                        "summary must start with a capital and end with '.': {s:?}"
                    ));
                }
            }
        }
        match rule.annotation("description") {
            None => problem("no description".into()),
            Some(d) => {
                if !d.contains("{{") || !(d.contains("$labels.") || d.contains("$value")) {
                    problem("description must be templated with $labels or $value".into());
                }
                if grouping.contains("smartlock_id") {
                    if !d.contains("$labels.smartlock_id") {
                        problem(
                            "a per-lock alert must name the lock ($labels.smartlock_id)".into(),
                        );
                    }
                    if !d.contains("nuki_smartlock_info") || !d.contains("\"name\"") {
                        problem(
                            "a per-lock alert must look up the lock's name in nuki_smartlock_info"
                                .into(),
                        );
                    }
                }
            }
        }
        if grouping.contains("smartlock_id")
            && rule.annotation("dashboard_url") != Some(DASHBOARD_URL)
        {
            problem(format!(
                "a per-lock alert links its lock's dashboard: dashboard_url {DASHBOARD_URL}"
            ));
        }
        let expected_url = format!("{RUNBOOK_URL}#{}", name.to_lowercase());
        match rule.annotation("runbook_url") {
            Some(url) if url == expected_url => {}
            other => problem(format!("runbook_url must be {expected_url}, is {other:?}")),
        }
        if !anchors.contains(&name.to_lowercase()) {
            problem(format!(
                "docs/runbook.md has no section `## {name}` (anchor #{})",
                name.to_lowercase()
            ));
        }
        for key in rule.annotations.keys() {
            let key = key.as_str().unwrap_or_default();
            if !["summary", "description", "runbook_url", "dashboard_url"].contains(&key) {
                problem(format!("unexpected annotation {key}"));
            }
        }

        // for:
        match &rule.for_ {
            None => problem("no for:".into()),
            Some(f) if minutes(f) <= 0.0 => problem(format!("for: must be positive, is {f}")),
            Some(_) => {}
        }

        // expression
        let expr = match expr {
            Ok(expr) => expr,
            Err(e) => {
                problem(format!("cannot parse the expression: {e}"));
                continue;
            }
        };
        if expr.keeps_label("instance") {
            problem(
                "the expression must aggregate over replicas: its result keeps instance".into(),
            );
        }
        let selectors = expr.selectors();
        if selectors.is_empty() {
            problem("the expression selects no series".into());
        }
        for s in &selectors {
            let (label, op, value) = ALERT_JOB_MATCHER;
            if !s.has(label, op, value) {
                problem(format!(
                    "selector of {} lacks {label}{op}\"{value}\"",
                    s.metric()
                ));
            }
        }
        // counters: a window must also count series born inside it (first error of a lock)
        let unless_offsets = expr.unless_offsets();
        for window in expr.range_windows("increase") {
            if !unless_offsets.contains(&window) {
                problem(format!(
                    "increase(...[{window}]) misses a series born at 1: add `x unless x offset {window}`"
                ));
            }
        }
        // event windows: a lock that keeps failing stays one incident
        let windows = expr.range_windows("increase");
        let event_window =
            !windows.is_empty() && !WINDOW_ONLY_IN_A_CONDITION.contains(&name.as_str());
        match (&rule.keep_firing_for, event_window) {
            (None, true) => problem(format!(
                "an event window ({windows:?}) needs keep_firing_for, or a lock failing every window fires and resolves every cycle"
            )),
            (Some(k), false) if !KEPT_ACROSS_RESTARTS.contains(&name.as_str()) => {
                problem(format!("keep_firing_for: {k} on a state alert"))
            }
            _ => {}
        }
        if !expr.range_windows("rate").is_empty() {
            problem("use increase() with the first-error pattern instead of rate()".into());
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[derive(Default)]
struct Coverage {
    firing: usize,
    silent: usize,
    two_replicas: bool,
    for_boundary: bool,
    /// Firing, then silent one sample later, both evaluated between samples: the end of the window
    /// where Prometheus 2 (closed range) and 3 (left-open range) agree.
    fall_edge_between_samples: bool,
}

fn as_str(v: &serde_yaml_ng::Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Every alert has promtool unit tests: firing and silent cases, the for: boundary pinned to one
/// evaluation interval, two exporter replicas, and the full labels and annotations asserted.
#[test]
fn every_alert_has_unit_tests() {
    let rules: BTreeMap<String, AlertRule> = alert_rules()
        .into_iter()
        .map(|r| (r.alert.clone(), r))
        .collect();
    let mut coverage: BTreeMap<String, Coverage> = BTreeMap::new();
    let mut problems = Vec::new();

    for file in unit_test_files() {
        let doc = yaml(&file);
        for rf in doc["rule_files"].as_sequence().into_iter().flatten() {
            let path = file.parent().unwrap().join(as_str(rf));
            if !path.is_file() {
                problems.push(format!(
                    "{}: rule file {} does not exist",
                    file.display(),
                    path.display()
                ));
            }
        }
        let interval = minutes(doc["evaluation_interval"].as_str().unwrap_or("1m"));
        for test in doc["tests"].as_sequence().into_iter().flatten() {
            let sample_interval = test["interval"].as_str().map_or(interval, minutes);
            let between_samples = |at: f64| (at / sample_interval).fract().abs() > 1e-9;
            let instances: BTreeSet<String> = test["input_series"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let series = as_str(&s["series"]);
                    let start = series.find("instance=\"")? + "instance=\"".len();
                    let end = series[start..].find('"')? + start;
                    Some(series[start..end].to_string())
                })
                .collect();
            let mut evals: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let alert = as_str(&case["alertname"]).to_string();
                let at = minutes(as_str(&case["eval_time"]));
                let expected = case["exp_alerts"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default();
                evals
                    .entry(alert.clone())
                    .or_default()
                    .push((at, !expected.is_empty()));
                let Some(rule) = rules.get(&alert) else {
                    problems.push(format!(
                        "{}: tests an unknown alert {alert}",
                        file.display()
                    ));
                    continue;
                };
                let entry = coverage.entry(alert.clone()).or_default();
                if expected.is_empty() {
                    entry.silent += 1;
                    continue;
                }
                entry.firing += 1;
                if instances.len() >= 2 {
                    entry.two_replicas = true;
                }
                for exp in &expected {
                    if as_str(&exp["exp_labels"]["severity"])
                        != rule.label("severity").unwrap_or("")
                    {
                        problems.push(format!(
                            "{alert} at {at}m: exp_labels must assert the severity"
                        ));
                    }
                    let ann = &exp["exp_annotations"];
                    if Some(as_str(&ann["summary"])) != rule.annotation("summary")
                        || Some(as_str(&ann["runbook_url"])) != rule.annotation("runbook_url")
                        || as_str(&ann["description"]).is_empty()
                    {
                        problems.push(format!(
                            "{alert} at {at}m: exp_annotations must assert summary, description and runbook_url"
                        ));
                    }
                }
            }
            for (alert, mut list) in evals {
                list.sort_by(|a, b| a.0.total_cmp(&b.0));
                let boundary = list
                    .windows(2)
                    .any(|w| !w[0].1 && w[1].1 && (w[1].0 - w[0].0 - interval).abs() < 1e-9);
                let fall_edge = list.windows(2).any(|w| {
                    w[0].1
                        && !w[1].1
                        && between_samples(w[0].0)
                        && between_samples(w[1].0)
                        && w[1].0 - w[0].0 <= sample_interval + 1e-9
                });
                let entry = coverage.entry(alert).or_default();
                entry.for_boundary |= boundary;
                entry.fall_edge_between_samples |= fall_edge;
            }
        }
    }

    for (alert, rule) in &rules {
        let c = coverage.remove(alert).unwrap_or_default();
        let windowed = Promql::parse(&rule.expr)
            .map(|e| !e.range_windows("increase").is_empty())
            .unwrap_or(false);
        if windowed && !c.fall_edge_between_samples {
            problems.push(format!(
                "{alert}: no test pins the end of its window between samples (firing, then silent one sample later, both off the sample grid; see window-edges.test.yml)"
            ));
        }
        if c.firing == 0 {
            problems.push(format!("{alert}: no unit test expects it to fire"));
        }
        if c.silent == 0 {
            problems.push(format!("{alert}: no unit test expects it to stay silent"));
        }
        if !c.for_boundary {
            problems.push(format!(
                "{alert}: no test pins the for: boundary (silent, then firing one evaluation later)"
            ));
        }
        if !c.two_replicas {
            problems.push(format!(
                "{alert}: no firing test with two exporter replicas (two instance labels)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn runbook_has_one_section_per_alert_and_no_stale_ones() {
    let runbook = read(repo().join("docs/runbook.md"));
    let alerts: BTreeSet<String> = alert_rules().iter().map(|r| r.alert.clone()).collect();
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_string())
        .filter(|h| h.starts_with("Nuki"))
        .collect();
    assert_eq!(
        sections, alerts,
        "docs/runbook.md needs exactly one `## <AlertName>` section per alert"
    );
    for alert in &alerts {
        let start = runbook.find(&format!("## {alert}\n")).unwrap();
        let body = &runbook[start..];
        let body = &body[..body[3..].find("\n## ").map(|e| e + 3).unwrap_or(body.len())];
        for part in ["**What it means.**", "emediation", "**What to check.**"] {
            assert!(
                body.contains(part),
                "runbook section {alert} lacks a part containing {part:?}"
            );
        }
    }
}

/// The alert tables of docs/runbook.md and docs/alerts.md list every alert once, with the
/// severity of its rule, and no alert the rules do not have.
#[test]
fn the_alert_tables_match_the_rule_file() {
    let rules: BTreeMap<String, String> = alert_rules()
        .iter()
        .map(|r| {
            let severity = r.label("severity").unwrap_or_default().to_string();
            (r.alert.clone(), severity)
        })
        .collect();
    for doc in ["docs/runbook.md", "docs/alerts.md"] {
        let table: BTreeMap<String, String> = alert_table(&read(repo().join(doc)))
            .into_iter()
            .map(|(alert, cells)| (alert, cells.first().cloned().unwrap_or_default()))
            .collect();
        assert_eq!(
            table, rules,
            "{doc}: its table of alerts (name, severity) differs from the rule file"
        );
    }
}

/// Runs one unit-test file of alerts/tests/ against a changed copy of the rules; returns promtool's
/// output, and fails if promtool accepts it: the tests must catch the change.
fn promtool_fails_with_changed_rules(test_file: &str, change: impl Fn(String) -> String) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = repo().join("alerts/nuki-exporter.rules.yml");
    let original = read(&rules);
    let changed = change(original.clone());
    assert_ne!(changed, original, "the change must change the rules");
    fs::write(dir.path().join("nuki-exporter.rules.yml"), changed).expect("write rules");
    fs::create_dir(dir.path().join("tests")).expect("tests dir");
    let test = dir.path().join("tests").join(test_file);
    fs::copy(repo().join("alerts/tests").join(test_file), &test).expect("copy test");
    let ran = run(Command::new(promtool()).arg("test").arg("rules").arg(&test));
    let text = ran.output();
    assert!(
        !ran.ok && text.contains("FAILED"),
        "{test_file} passed against the changed rules:\n{text}"
    );
    text
}

/// The new-series guard of Prometheus 2 days, `count_over_time(x[W]) < count_over_time(up[W])`,
/// needs the sample exactly W ago, which Prometheus 3's left-open ranges drop: the alert ends one
/// scrape early. Evaluated between samples, Prometheus 2 behaves the same way, so the window-edge
/// tests must fail for it, for every windowed alert.
#[test]
fn window_edge_tests_catch_a_guard_that_needs_the_closed_range() {
    let output = promtool_fails_with_changed_rules("window-edges.test.yml", |rules| {
        [
            ("20m", "15m"),
            ("35m", "30m"),
            ("1h5m", "1h"),
            ("6h5m", "6h"),
        ]
        .iter()
        .fold(rules, |rules, (guard, window)| {
            let from = format!("count_over_time(up{{job=\"nuki-exporter\"}}[{guard}])");
            assert!(rules.contains(&from), "no guard {from}");
            rules.replace(
                &from,
                &format!("count_over_time(up{{job=\"nuki-exporter\"}}[{window}])"),
            )
        })
    });
    for rule in alert_rules() {
        let windowed = Promql::parse(&rule.expr)
            .map(|e| !e.range_windows("increase").is_empty())
            .unwrap();
        if windowed {
            assert!(
                output.contains(&format!("alertname: {}, time:", rule.alert)),
                "no window-edge test of {} caught the closed-range guard:\n{output}",
                rule.alert
            );
        }
    }
}

/// Without keep_firing_for, a lock that fails every 20 minutes (window 15m) fires and resolves
/// every cycle: the periodic-failure tests must fail.
#[test]
fn periodic_failure_tests_catch_a_rule_without_keep_firing_for() {
    let output = promtool_fails_with_changed_rules("periodic-failures.test.yml", |rules| {
        rules
            .lines()
            .filter(|line| !line.trim_start().starts_with("keep_firing_for:"))
            .map(|line| format!("{line}\n"))
            .collect()
    });
    assert!(output.contains("ALERTS_FOR_STATE"), "{output}");
}

/// Replaces `from` (which must occur) in the rules.
fn replaced(rules: String, from: &str, to: &str) -> String {
    assert!(rules.contains(from), "the rules no longer contain {from}");
    rules.replace(from, to)
}

/// The battery alert of before, the worst view over replicas (max): a stale "critical" on one
/// replica outvotes a newer "fine" on another, and a replica gone for good speaks for its 15
/// minutes only through the freshness records.
#[test]
fn replica_tests_catch_the_battery_alert_that_takes_the_max_over_replicas() {
    let output = promtool_fails_with_changed_rules("replicas.test.yml", |rules| {
        replaced(
            rules,
            "(smartlock:nuki_smartlock_battery_critical:freshest{job=\"nuki-exporter\"})",
            "(nuki_smartlock_battery_critical{job=\"nuki-exporter\"})",
        )
    });
    assert!(
        output.contains("stale vs fresh") && output.contains("dies for longer than 15 minutes"),
        "{output}"
    );
}

/// The offline alert of before, serverState with max over replicas.
#[test]
fn replica_tests_catch_the_offline_alert_that_takes_the_max_over_replicas() {
    let output = promtool_fails_with_changed_rules("replicas.test.yml", |rules| {
        replaced(
            rules,
            "smartlock:nuki_smartlock_server_state:freshest{job=\"nuki-exporter\"}",
            "nuki_smartlock_server_state{job=\"nuki-exporter\"}",
        )
    });
    assert!(output.contains("stale vs fresh"), "{output}");
}

/// The counter guard of before, which only trusted a series' own instance: a new replica's first
/// error, and a restart Prometheus did not see, never alerted. Without the process-start count the
/// replica tests must fail.
#[test]
fn replica_tests_catch_a_counter_guard_without_the_process_start() {
    let output = promtool_fails_with_changed_rules("replicas.test.yml", |rules| {
        let windows = ["900", "1800", "3600", "21600"];
        windows.iter().fold(rules, |rules, seconds| {
            replaced(
                rules,
                &format!(
                    "process_start_time_seconds{{job=\"nuki-exporter\"}} > time() - {seconds}"
                ),
                "process_start_time_seconds{job=\"nuki-exporter\"} > time()",
            )
        })
    });
    assert!(
        output.contains("a first error on a new replica")
            && output.contains("a counter reset Prometheus cannot see"),
        "{output}"
    );
}

//! Helpers shared by the tests of the monitoring stack (alerts, dashboards, Alertmanager, compose).
//! Include with `mod stack_support;`. Every test file uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// The path of `tool`, or a failing test that names the Debian package to install.
pub fn tool(tool: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is not installed: install the Debian package `{debian_package}` \
         (apt-get install --no-install-recommends {debian_package}), or run scripts/test.sh"
    );
}

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

/// Runs a command; on a non-zero exit the test fails with the command line and its output.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    if !output.status.success() {
        panic!(
            "{:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
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

// ------------------------------------------------------------------------------------------------
// Dashboards

pub fn dashboard_files() -> Vec<PathBuf> {
    files(repo().join("dashboards"), ".json")
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

/// The metrics the exporter exposes, read from docs/NAMES.md for now, plus the series Prometheus
/// itself attaches to every target. Entries ending in `*` are prefixes (`process_*`).
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
        SCRAPE_SERIES.contains(&metric)
            || self.names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => metric.starts_with(prefix),
                None => n == metric,
            })
    }
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }
}

pub fn exported_metrics() -> ExportedMetrics {
    let text = read(repo().join("docs/NAMES.md"));
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('|') else {
            continue;
        };
        let cell = rest
            .split('|')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('`');
        let valid = !cell.is_empty()
            && cell.contains('_')
            && cell.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':' || c == '*'
            });
        if valid {
            names.insert(cell.to_string());
        }
    }
    assert!(
        names.len() >= 10,
        "docs/NAMES.md lists only {} metrics: {names:?}",
        names.len()
    );
    ExportedMetrics { names }
}

/// `nuki_*` metric names mentioned anywhere in a text (for the PromQL inside annotation templates).
pub fn nuki_metric_mentions(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("nuki_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
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
// A small PromQL reader: enough to find every series selector, its metric name and its matchers.

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub label: String,
    pub op: String,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    pub fn has(&self, label: &str, op: &str, value: &str) -> bool {
        self.matchers
            .iter()
            .any(|m| m.label == label && m.op == op && m.value == value)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Var(String),
    Str(String),
    Number,
    Punct(String),
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(format!("unterminated string in {expr}"));
                };
                i += 1;
                if d == quote {
                    break;
                }
                if d == '\\' && quote != '`' {
                    if let Some(&e) = chars.get(i) {
                        s.push(e);
                        i += 1;
                    }
                    continue;
                }
                s.push(d);
            }
            out.push(Token::Str(s));
        } else if c == '$' {
            i += 1;
            let braced = chars.get(i) == Some(&'{');
            if braced {
                i += 1;
            }
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if braced {
                if chars.get(i) != Some(&'}') {
                    return Err(format!("unterminated ${{ in {expr}"));
                }
                i += 1;
            }
            out.push(Token::Var(name));
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Number);
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["==", "!=", "=~", "!~", ">=", "<="].contains(&two.as_str()) {
                out.push(Token::Punct(two));
                i += 2;
            } else {
                out.push(Token::Punct(c.to_string()));
                i += 1;
            }
        }
    }
    Ok(out)
}

const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "Inf",
    "NaN",
];

fn skip_group(tokens: &[Token], mut i: usize, open: &str, close: &str) -> Result<usize, String> {
    let mut depth = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Punct(p) if p == open => depth += 1,
            Token::Punct(p) if p == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("unbalanced {open}{close}"))
}

fn matchers(tokens: &[Token], mut i: usize) -> Result<(Vec<Matcher>, usize), String> {
    // tokens[i] is "{"
    i += 1;
    let mut out = Vec::new();
    loop {
        match tokens.get(i) {
            Some(Token::Punct(p)) if p == "}" => return Ok((out, i + 1)),
            Some(Token::Punct(p)) if p == "," => i += 1,
            Some(Token::Ident(label)) => {
                let op = match tokens.get(i + 1) {
                    Some(Token::Punct(op)) if ["=", "!=", "=~", "!~"].contains(&op.as_str()) => op,
                    other => {
                        return Err(format!(
                            "expected a matcher operator after {label}, got {other:?}"
                        ));
                    }
                };
                let value = match tokens.get(i + 2) {
                    Some(Token::Str(v)) => v,
                    other => {
                        return Err(format!(
                            "expected a quoted value for {label}, got {other:?}"
                        ));
                    }
                };
                out.push(Matcher {
                    label: label.clone(),
                    op: op.clone(),
                    value: value.clone(),
                });
                i += 3;
            }
            other => return Err(format!("unexpected {other:?} in a label matcher list")),
        }
    }
}

/// Every series selector of a PromQL expression (Grafana variables allowed).
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let tokens = tokenize(expr)?;
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth: [i32; 3] = [0, 0, 0];
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(name) => {
                let next_is_paren = matches!(tokens.get(i + 1), Some(Token::Punct(p)) if p == "(")
                    // `sum by (x) (...)`: an aggregation with its grouping first
                    || matches!(tokens.get(i + 1), Some(Token::Ident(k)) if k == "by" || k == "without");
                if LABEL_LIST_KEYWORDS.contains(&name.as_str()) && next_is_paren {
                    i = skip_group(&tokens, i + 1, "(", ")")?;
                } else if next_is_paren || KEYWORDS.contains(&name.as_str()) {
                    i += 1; // a function, an aggregation or an operator keyword
                } else {
                    let (list, next) = if matches!(tokens.get(i + 1), Some(Token::Punct(p)) if p == "{")
                    {
                        matchers(&tokens, i + 1)?
                    } else {
                        (Vec::new(), i + 1)
                    };
                    out.push(Selector {
                        metric: name.clone(),
                        matchers: list,
                    });
                    i = next;
                }
            }
            Token::Punct(p) if p == "{" => {
                let (list, next) = matchers(&tokens, i)?;
                let metric = list
                    .iter()
                    .find(|m| m.label == "__name__" && m.op == "=")
                    .map(|m| m.value.clone())
                    .unwrap_or_default();
                out.push(Selector {
                    metric,
                    matchers: list,
                });
                i = next;
            }
            Token::Punct(p) if p == "[" => i = skip_group(&tokens, i, "[", "]")?,
            Token::Punct(p) => {
                match p.as_str() {
                    "(" => depth[0] += 1,
                    ")" => depth[0] -= 1,
                    "}" => depth[1] -= 1,
                    "]" => depth[2] -= 1,
                    _ => {}
                }
                if depth.iter().any(|d| *d < 0) {
                    return Err(format!("unbalanced brackets in {expr}"));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    if depth != [0, 0, 0] {
        return Err(format!("unbalanced brackets in {expr}"));
    }
    Ok(out)
}

/// The range windows (`[5m]`, `[$__rate_interval]`) that follow `function(` calls in an expression,
/// e.g. `range_windows(expr, "rate")`.
pub fn range_windows(expr: &str, function: &str) -> Vec<String> {
    let mut out = Vec::new();
    let pattern = format!("{function}(");
    let mut search = 0;
    while let Some(pos) = expr[search..].find(&pattern) {
        let start = search + pos;
        let preceded = expr[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        search = start + pattern.len();
        if preceded {
            continue; // e.g. "irate(" when looking for "rate("
        }
        // the window of the first range selector inside the call
        let mut depth = 1;
        let mut j = search;
        let bytes = expr.as_bytes();
        while j < bytes.len() && depth > 0 {
            match bytes[j] {
                b'(' => depth += 1,
                b')' => depth -= 1,
                b'[' if depth == 1 => {
                    let end = expr[j..].find(']').map(|e| j + e).unwrap_or(expr.len());
                    out.push(expr[j + 1..end].to_string());
                    break;
                }
                _ => {}
            }
            j += 1;
        }
    }
    out
}

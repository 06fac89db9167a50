//! The status page on the metrics listener: every lock this replica knows, one page per lock.
//!
//! Plain HTML with its style inline and no script, so it reads in any browser, a terminal
//! browser or `curl`. Rendering is pure: lock views and the time in, a page out. Every value
//! that a lock or an upstream chose (a name, a firmware string, an operation) is escaped by
//! `maud`. The page shows what this replica saw; behind a Service, another replica may have
//! seen a newer report, and the freshest truth across replicas is in Prometheus.

use std::cmp::Reverse;
use std::time::{Duration, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, html};

use crate::catalogue;
use crate::lock::ErrorCode;
use crate::lock::{LockStatus, door_state_name, lock_state_name, server_state_name};
use crate::store::lock_store::LockView;

/// The charge below which a battery counts as low: the same 20 % as the
/// `NukiSmartlockBatteryLow` alert and the Nuki app's own warning.
pub const LOW_BATTERY_PERCENT: i64 = 20;

/// How bad a problem is, in the alert rules' severities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

/// A problem the lock's last-known state shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub text: String,
}

impl Problem {
    fn critical(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            severity: Severity::Critical,
            text,
        }
    }

    fn warning(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            severity: Severity::Warning,
            text,
        }
    }
}

/// The problems a lock's last-known state shows, worst first: the per-lock conditions the
/// alert rules page on, read from this replica's state instead of from Prometheus.
pub fn problems(view: &LockView) -> Vec<Problem> {
    let status = &view.status;
    let device_type = view.info.as_ref().and_then(|i| i.device_type.as_deref());
    let mut found = Vec::new();
    if status.lock_state == Some(254) {
        found.push(Problem::critical("Jammed: the motor is blocked"));
    }
    match status.server_state {
        Some(4) => found.push(Problem::critical("Offline: Nuki's server cannot reach it")),
        Some(code @ 1..=3) => found.push(Problem::critical(format!(
            "Nuki's server refuses its registration ({})",
            server_state_name(code)
        ))),
        _ => {}
    }
    for (flag, part) in [
        (status.battery_critical, "Battery"),
        (status.keypad_battery_critical, "Keypad battery"),
        (status.doorsensor_battery_critical, "Door sensor battery"),
    ] {
        if flag == Some(true) {
            found.push(Problem::critical(format!("{part} critical")));
        }
    }
    if let Some(charge) = status.battery_charge_percent
        && charge < LOW_BATTERY_PERCENT
        && status.battery_charging != Some(true)
        && status.battery_critical != Some(true)
    {
        found.push(Problem::warning(format!("Battery low: {charge} %")));
    }
    if status.lock_state == Some(0) && device_type != Some("opener") {
        found.push(Problem::warning("Uncalibrated"));
    }
    found.sort_by_key(|problem| Reverse(problem.severity));
    found
}

/// Locks on one page of the fleet: a browser renders it in well under a second, and a fleet of
/// 10,000 locks is 20 pages, the locks with problems on the first ones.
pub const LOCKS_PER_PAGE: usize = 500;

/// Page `page` (from 1) of every lock, worst first, then by name and id.
pub fn fleet_page(views: Vec<LockView>, page: usize, now: f64) -> String {
    let mut rows: Vec<(LockView, Vec<Problem>)> = views
        .into_iter()
        .map(|view| {
            let problems = problems(&view);
            (view, problems)
        })
        .collect();
    rows.sort_by(|(a, a_problems), (b, b_problems)| {
        let worst = |problems: &[Problem]| Reverse(problems.first().map(|p| p.severity));
        worst(a_problems)
            .cmp(&worst(b_problems))
            .then_with(|| Reverse(a_problems.len()).cmp(&Reverse(b_problems.len())))
            .then_with(|| name(a).cmp(name(b)))
            .then_with(|| a.smartlock_id.cmp(&b.smartlock_id))
    });
    let with_problems = rows.iter().filter(|(_, p)| !p.is_empty()).count();
    let total = rows.len();
    let pages = total.div_ceil(LOCKS_PER_PAGE).max(1);
    let page = page.clamp(1, pages);
    let first = (page - 1) * LOCKS_PER_PAGE;
    let rows = &rows[first..total.min(first + LOCKS_PER_PAGE)];
    let navigation = html! {
        @if pages > 1 {
            p.pages {
                "Locks " (first + 1) "–" (first + rows.len()) " of " (total) ", worst first"
                @if page > 1 { " · " a href=(format!("/status?page={}", page - 1)) { "← previous" } }
                @if page < pages { " · " a href=(format!("/status?page={}", page + 1)) { "next →" } }
            }
        }
    };
    html_page(
        "Smart locks",
        html! {
            h1 { "Smart locks" }
            p.summary {
                (total) " locks known to this replica; "
                strong { (with_problems) } " with problems."
            }
            @if rows.is_empty() {
                p { "No lock has reported yet: no webhook, poll or callback named one since start." }
            } @else {
                (navigation)
                table {
                    thead { tr {
                        th { "Lock" } th { "Battery" } th { "Lock state" } th { "Door" }
                        th { "Server" } th { "Last report" } th { "Problems" }
                    } }
                    tbody {
                        @for (view, problems) in rows {
                            tr.(row_class(problems)) {
                                td {
                                    a href=(format!("/status/{}", view.smartlock_id)) { (name(view)) }
                                    br; small { "id " (view.smartlock_id) }
                                }
                                td { (battery(&view.status)) }
                                td { (lock_state(view)) }
                                td { (door(&view.status)) }
                                td { (server(&view.status)) }
                                td { (last_report(view, now)) }
                                td { (problem_list(problems)) }
                            }
                        }
                    }
                }
                (navigation)
            }
        },
    )
}

/// One lock: its state, where it came from, its problems and its failed operations.
pub fn lock_page(view: &LockView, now: f64) -> String {
    let problems = problems(view);
    let info = view.info.clone().unwrap_or_default();
    let title = name(view);
    html_page(
        title,
        html! {
            p { a href="/status" { "← all locks" } }
            h1 { (title) }
            h2 { "Problems" }
            @if problems.is_empty() { p.ok { "None: its last-known state shows no problem." } }
            @else { (problem_list(&problems)) }
            h2 { "State" }
            table.facts {
                tr { th { "Smart lock id" } td { (view.smartlock_id) } }
                tr { th { "Device type" } td { (info.device_type.as_deref().unwrap_or("unknown")) } }
                tr { th { "Firmware" } td { (info.firmware_version.as_deref().unwrap_or("unknown")) } }
                tr { th { "Battery" } td { (battery(&view.status)) } }
                tr { th { "Keypad battery" } td { (flag(view.status.keypad_battery_critical, "critical", "ok")) } }
                tr { th { "Door sensor battery" } td { (flag(view.status.doorsensor_battery_critical, "critical", "ok")) } }
                tr { th { "Lock state" } td { (lock_state(view)) } }
                tr { th { "Door" } td { (door(&view.status)) } }
                tr { th { "Server state" } td { (server(&view.status)) } }
                tr { th { "Last report" } td { (last_report(view, now)) } }
                tr { th { "Last webhook from the lock" } td { (time_and_age(view.last_seen, now)) } }
                tr { th { "Last battery change seen" } td { (time_and_age(view.battery_replaced_at, now)) } }
            }
            h2 { "Failed operations since this replica started" }
            p { (view.results) " results of Web API operations counted." }
            @if view.failures.is_empty() {
                p.ok { "No failed operation counted." }
            } @else {
                table {
                    thead { tr { th { "Operation" } th { "Error" } th { "Count" } } }
                    tbody {
                        @for (operation, code, count) in &view.failures {
                            tr { td { (operation) } td { (error(*code)) } td.number { (count) } }
                        }
                    }
                }
            }
        },
    )
}

/// The page for an id this replica does not know.
pub fn unknown_lock_page(id: &str) -> String {
    html_page(
        "Unknown lock",
        html! {
            p { a href="/status" { "← all locks" } }
            h1 { "Unknown lock" }
            p {
                "This replica knows no smart lock with id " code { (id) } ". Another replica may "
                "know it: each webhook reaches one replica, and polls name only the locks of "
                "their account or bridge."
            }
        },
    )
}

fn html_page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · nuki-exporter" }
                style { (STYLE) }
            }
            body {
                (body)
                footer {
                    "nuki-exporter " (env!("CARGO_PKG_VERSION")) " · what this replica saw; "
                    "behind a Service, other replicas may hold newer reports · "
                    a href="/metrics" { "metrics" }
                }
            }
        }
    }
    .into_string()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d1d1f}\
table{border-collapse:collapse}th,td{padding:.35rem .6rem;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top}thead th{background:#f2f2f5}tr.critical{background:#fde8e8}\
tr.warning{background:#fff6dc}ul.problems{margin:0;padding-left:1.1rem}li.critical{color:#a40e0e}\
li.warning{color:#8a5a00}.ok{color:#1c7c3c}small,footer{color:#666}footer{margin-top:2rem}\
td.number{text-align:right}p.pages{margin:.8rem 0}.time{white-space:nowrap}table.facts th{background:none;font-weight:600}";

fn name(view: &LockView) -> &str {
    view.info
        .as_ref()
        .and_then(|info| info.name.as_deref())
        .unwrap_or("(name unknown)")
}

fn row_class(problems: &[Problem]) -> &'static str {
    match problems.first().map(|p| p.severity) {
        Some(Severity::Critical) => "critical",
        Some(Severity::Warning) => "warning",
        None => "fine",
    }
}

fn problem_list(problems: &[Problem]) -> Markup {
    html! {
        @if problems.is_empty() { span.ok { "none" } }
        @else {
            ul.problems {
                @for problem in problems {
                    li.(match problem.severity { Severity::Critical => "critical", Severity::Warning => "warning" }) {
                        (problem.text)
                    }
                }
            }
        }
    }
}

fn battery(status: &LockStatus) -> Markup {
    html! {
        @match status.battery_charge_percent {
            Some(charge) => { (charge) " %" }
            None => { "charge unknown" }
        }
        @if status.battery_charging == Some(true) { ", charging" }
        @if status.battery_critical == Some(true) { ", " strong { "critical" } }
    }
}

fn flag(value: Option<bool>, set: &'static str, clear: &'static str) -> &'static str {
    match value {
        Some(true) => set,
        Some(false) => clear,
        None => "not reported",
    }
}

fn lock_state(view: &LockView) -> Markup {
    let device_type = view.info.as_ref().and_then(|i| i.device_type.as_deref());
    coded(view.status.lock_state, |code| {
        lock_state_name(device_type, code)
    })
}

fn door(status: &LockStatus) -> Markup {
    coded(status.door_state, door_state_name)
}

fn server(status: &LockStatus) -> Markup {
    coded(status.server_state, server_state_name)
}

/// A state code in words, with the code beside it for those who read the metrics.
fn coded(code: Option<i64>, name: impl Fn(i64) -> &'static str) -> Markup {
    html! {
        @match code {
            Some(code) => { (name(code)) " " small { "(" (code) ")" } }
            None => { "not reported" }
        }
    }
}

fn error(code: ErrorCode) -> Markup {
    match code {
        ErrorCode::Code(byte) => html! {
            (catalogue::hex_label(byte)) " " (catalogue::name_of(byte))
        },
        ErrorCode::Invalid => html! { "an errorCode that is no hex byte" },
        ErrorCode::Missing => html! { "no errorCode" },
    }
}

fn last_report(view: &LockView, now: f64) -> Markup {
    html! {
        (time_and_age(view.reported_at, now))
        @if let Some(origin) = view.reported_by {
            br; small { "by " (origin.describe()) }
        }
    }
}

/// A Unix time as UTC with its age: "2026-12-04T18:40:12Z (3m 12s ago)".
fn time_and_age(at: Option<f64>, now: f64) -> Markup {
    let Some(time) = at.and_then(|at| Duration::try_from_secs_f64(at).ok()) else {
        return html! { "never" };
    };
    let age = Duration::from_secs((now - time.as_secs_f64()).max(0.0) as u64);
    html! {
        span.time { (humantime::format_rfc3339_seconds(UNIX_EPOCH + time)) }
        " " small.time { "(" (humantime::format_duration(age)) " ago)" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockInfo, Origin};

    fn view(id: u64, name: &str, status: LockStatus) -> LockView {
        LockView {
            smartlock_id: id,
            status,
            info: Some(LockInfo {
                name: Some(name.into()),
                device_type: Some("smartlock_3_4".into()),
                firmware_version: Some("3.10.7".into()),
            }),
            reported_at: Some(1_000.0),
            reported_by: Some(Origin::BridgePoll),
            last_seen: None,
            battery_replaced_at: None,
            results: 0,
            failures: Vec::new(),
        }
    }

    #[test]
    fn problems_follow_the_alerting_conditions_worst_first() {
        let status = LockStatus {
            battery_charge_percent: Some(12),
            lock_state: Some(254),
            server_state: Some(2),
            keypad_battery_critical: Some(true),
            ..LockStatus::default()
        };
        let texts: Vec<_> = problems(&view(1, "Door", status))
            .into_iter()
            .map(|p| (p.severity, p.text))
            .collect();
        assert_eq!(
            texts,
            [
                (Severity::Critical, "Jammed: the motor is blocked".into()),
                (
                    Severity::Critical,
                    "Nuki's server refuses its registration (authorisation UUID invalid)".into()
                ),
                (Severity::Critical, "Keypad battery critical".into()),
                (Severity::Warning, "Battery low: 12 %".into()),
            ]
        );
    }

    #[test]
    fn a_charging_or_critical_battery_is_not_also_low() {
        let charging = LockStatus {
            battery_charge_percent: Some(5),
            battery_charging: Some(true),
            ..LockStatus::default()
        };
        assert_eq!(problems(&view(1, "A", charging)), []);
        let critical = LockStatus {
            battery_charge_percent: Some(5),
            battery_critical: Some(true),
            ..LockStatus::default()
        };
        assert_eq!(
            problems(&view(1, "A", critical)),
            [Problem::critical("Battery critical")]
        );
        let at_threshold = LockStatus {
            battery_charge_percent: Some(LOW_BATTERY_PERCENT),
            ..LockStatus::default()
        };
        assert_eq!(problems(&view(1, "A", at_threshold)), []);
    }

    #[test]
    fn names_chosen_upstream_are_escaped() {
        let page = fleet_page(
            vec![view(7, "<script>alert(1)</script>", LockStatus::default())],
            1,
            2_000.0,
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn the_fleet_lists_locks_with_problems_first() {
        let fine = view(1, "Alpha", LockStatus::default());
        let jammed = view(
            2,
            "Zulu",
            LockStatus {
                lock_state: Some(254),
                ..LockStatus::default()
            },
        );
        let page = fleet_page(vec![fine, jammed], 1, 2_000.0);
        let zulu = page.find("Zulu").unwrap();
        let alpha = page.find("Alpha").unwrap();
        assert!(zulu < alpha, "{page}");
        assert!(page.contains("2 locks known to this replica; <strong>1</strong> with problems."));
    }

    #[test]
    fn a_large_fleet_is_paged_with_the_problems_first() {
        let mut views: Vec<_> = (0..LOCKS_PER_PAGE as u64 * 2 + 1)
            .map(|id| view(id, &format!("Lock {id:05}"), LockStatus::default()))
            .collect();
        views[700].status.battery_critical = Some(true);
        let first = fleet_page(views.clone(), 1, 2_000.0);
        assert!(
            first.contains("Locks 1–500 of 1001, worst first"),
            "{first}"
        );
        assert!(first.contains(r#"<a href="/status?page=2">next →</a>"#));
        assert!(!first.contains("previous"));
        assert!(first.find("Lock 00700").unwrap() < first.find("Lock 00000").unwrap());
        assert_eq!(first.matches("<tr class=").count(), LOCKS_PER_PAGE);

        let last = fleet_page(views.clone(), 3, 2_000.0);
        assert!(last.contains("Locks 1001–1001 of 1001"), "{last}");
        assert!(last.contains(r#"<a href="/status?page=2">← previous</a>"#));
        assert!(!last.contains("next →"));
        // Pages beyond the last show the last; page 0 the first.
        assert_eq!(fleet_page(views.clone(), 9, 2_000.0), last);
        assert_eq!(fleet_page(views, 0, 2_000.0), first);

        let small = fleet_page(vec![view(1, "A", LockStatus::default())], 1, 2_000.0);
        assert!(
            !small.contains("worst first"),
            "one page needs no navigation"
        );
    }

    #[test]
    fn a_time_that_is_no_duration_reads_never() {
        assert_eq!(time_and_age(Some(f64::NAN), 0.0).into_string(), "never");
        assert_eq!(time_and_age(Some(-1.0), 0.0).into_string(), "never");
        assert_eq!(
            time_and_age(Some(1_796_409_600.0), 1_796_409_792.0).into_string(),
            "<span class=\"time\">2026-12-04T18:40:00Z</span> <small class=\"time\">(3m 12s ago)</small>"
        );
    }
}

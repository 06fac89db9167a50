//! The README's quick start without Docker, with the real binaries: `nuki-exporter quickstart`,
//! then Prometheus and Alertmanager started with exactly the command lines it prints, until the
//! quickstart prints the firing alert Alertmanager sent it.

mod stack_support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stack_support::common::{Daemon, Prometheus, exporter_command};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A running `nuki-exporter quickstart`, killed when dropped; its stdout and stderr lines
/// arrive on a channel.
struct Quickstart {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Quickstart {
    fn spawn(args: &[&str]) -> Self {
        let mut child = exporter_command()
            .arg("quickstart")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), sender.clone());
        forward_lines(child.stderr.take().unwrap(), sender);
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a line satisfies `matches`, and returns it.
    fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(line) = self.seen.iter().find(|line| matches(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "quickstart never printed {what}; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    /// The arguments of the printed command line that starts `program`.
    fn command_line(&mut self, program: &str) -> Vec<String> {
        let prefix = format!("{program} ");
        let line = self.wait_for_line(
            &format!("the {program} command"),
            Duration::from_secs(60),
            |line| line.trim_start().starts_with(&prefix),
        );
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(stream: impl Read + Send + 'static, sender: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// A port free now (the kernel's choice); it may be taken again before it is used, which the
/// test's failure would show as a bind error.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A base port with the 13 ports the quickstart uses above it free.
fn free_port_base() -> u16 {
    loop {
        let base = free_port();
        if base > u16::MAX - 12 {
            continue;
        }
        let all_free = (0..=12)
            .map(|offset| TcpListener::bind(("127.0.0.1", base + offset)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if all_free {
            return base;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_reaches_a_firing_alert_in_a_real_prometheus_and_alertmanager() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let (prometheus_port, alertmanager_port) = (free_port(), free_port());
    let mut quickstart = Quickstart::spawn(&[
        "--dir",
        dir.path().to_str().unwrap(),
        "--rules",
        &format!("{REPO}/alerts"),
        "--port-base",
        &base.to_string(),
        "--prometheus-port",
        &prometheus_port.to_string(),
        "--alertmanager-port",
        &alertmanager_port.to_string(),
    ]);

    let alertmanager_args = quickstart.command_line("prometheus-alertmanager");
    let alertmanager_args: Vec<&str> = alertmanager_args.iter().map(String::as_str).collect();
    let alertmanager = Daemon::start(
        "prometheus-alertmanager",
        "prometheus-alertmanager",
        &alertmanager_args,
        &[],
    )
    .await;
    assert_eq!(
        alertmanager.url,
        format!("http://127.0.0.1:{alertmanager_port}")
    );
    let prometheus_args = quickstart.command_line("prometheus");
    let prometheus_args: Vec<&str> = prometheus_args.iter().map(String::as_str).collect();
    let prometheus =
        Prometheus(Daemon::start("prometheus", "prometheus", &prometheus_args, &[]).await);
    assert_eq!(
        prometheus.url(),
        format!("http://127.0.0.1:{prometheus_port}")
    );

    // The exporter is scraped, and polls the simulated Web API and Bridge it was pointed at.
    let wait = Duration::from_secs(90);
    prometheus
        .wait_for(r#"up{job="nuki-exporter"} == 1"#, wait)
        .await;
    prometheus
        .wait_for(r#"nuki_exporter_api_up{job="nuki-exporter"} == 1"#, wait)
        .await;
    prometheus
        .wait_for(
            r#"nuki_bridge_up{job="nuki-exporter", bridge="demo"} == 1"#,
            wait,
        )
        .await;

    // The status page the README points to lists the simulated fleet, its problems first.
    let status = reqwest::get(format!("http://127.0.0.1:{}/status", base + 1))
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let page = status.text().await.unwrap();
    assert!(
        page.contains("locks known to this replica") && page.contains("id 17000001"),
        "{page}"
    );

    // Two locks of the fleet go unreachable: a rule fires and Alertmanager's notification is
    // printed by the quickstart.
    // NukiWatchdog fires from the start (the pipeline works); the wait is for a lock's alert.
    let alert = quickstart.wait_for_line("a firing alert", Duration::from_secs(300), |line| {
        line.starts_with("[alert firing] ") && !line.contains("NukiWatchdog")
    });
    assert!(
        alert.contains("smartlock_id=170000"),
        "the first firing alert names no lock of the simulated fleet: {alert}"
    );
}

#[test]
fn the_quickstart_refuses_a_directory_without_rules_and_says_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let ran = stack_support::run(exporter_command().args([
        "quickstart",
        "--dir",
        empty.path().join("qs").to_str().unwrap(),
        "--rules",
        empty.path().to_str().unwrap(),
    ]));
    assert!(!ran.ok);
    assert!(
        ran.stderr
            .contains("no *.yml rule file there; run the quickstart in the repository's directory"),
        "{}",
        ran.stderr
    );
}

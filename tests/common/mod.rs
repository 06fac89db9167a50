//! Shared by the HTTP and end-to-end tests: a real exporter on 127.0.0.1:0, signed webhooks,
//! fixtures, and exact lookups in a real scrape.
#![allow(dead_code)] // each test crate uses a different part of this module

#[path = "exposition.rs"]
mod exposition;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod bridge_stub;
pub mod browser;
pub mod kube_api_stub;
pub mod nuki_api_stub;
#[path = "process.rs"]
pub mod process;

pub use exposition::parse_sample;
use nuki_exporter::signature::{HEADER, sign};
use nuki_exporter::{Config, Exporter};
pub use process::ChildGuard;

pub const SECRET: &str = "test-secret";

/// A webhook fixture from `tests/fixtures/webhooks/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// Every fixture's name, sorted.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Separate loopback listeners for webhooks and metrics, one secret, quick shutdown.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.webhook.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.2:0".parse().unwrap();
    config.webhook.secrets = vec![SECRET.into()];
    config.server.shutdown_grace_period = std::time::Duration::from_secs(5);
    config
}

pub struct TestExporter {
    exporter: Option<Exporter>,
    pub webhook_url: String,
    pub metrics_base: String,
    pub client: reqwest::Client,
}

impl TestExporter {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let exporter = Exporter::start(&config).await.expect("exporter starts");
        let webhook_url = format!("http://{}{}", exporter.webhook_addr(), config.webhook.path);
        let metrics_base = format!("http://{}", exporter.metrics_addr());
        Self {
            exporter: Some(exporter),
            webhook_url,
            metrics_base,
            client: reqwest::Client::new(),
        }
    }

    /// `host:port` of the webhook listener, for raw TCP clients.
    pub fn webhook_address(&self) -> String {
        host_and_port(&self.webhook_url)
    }

    /// `host:port` of the metrics listener.
    pub fn metrics_address(&self) -> String {
        host_and_port(&self.metrics_base)
    }

    /// Takes the exporter out, e.g. to shut it down while requests are in flight.
    pub fn take(&mut self) -> Exporter {
        self.exporter.take().expect("exporter still running")
    }

    /// POSTs a body signed with [`SECRET`]; returns the status code.
    pub async fn post(&self, body: &[u8]) -> u16 {
        self.post_signed(body, Some(&sign(SECRET.as_bytes(), body)))
            .await
    }

    pub async fn post_signed(&self, body: &[u8], signature: Option<&str>) -> u16 {
        let mut request = self.client.post(&self.webhook_url).body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header(HEADER, signature);
        }
        request
            .send()
            .await
            .expect("webhook request")
            .status()
            .as_u16()
    }

    /// GETs `/metrics` and checks it is a 200 with the Prometheus content type.
    pub async fn scrape(&self) -> Scrape {
        let response = self
            .client
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        Scrape(response.text().await.unwrap())
    }

    /// Scrapes until `ready` holds, for at most `timeout`; returns the scrape that satisfied it.
    pub async fn scrape_until(&self, timeout: Duration, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let scrape = self.scrape().await;
            if ready(&scrape) {
                return scrape;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met within {timeout:?}; last scrape:\n{}",
                scrape.0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        self.take().shutdown().await;
    }
}

fn host_and_port(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A `/metrics` exposition, with exact series lookups independent of label order.
pub struct Scrape(pub String);

/// One scrape of the `/metrics` of a process listening at `metrics` (`host:port`).
pub async fn scrape_address(metrics: &str) -> Scrape {
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape(body)
}

impl Scrape {
    /// The value of the series with exactly these labels, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples(name)
            .into_iter()
            .find(|(labels, _)| *labels == wanted)
            .map(|(_, value)| value)
    }

    /// Every sample of a metric: its labels and value.
    pub fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(series, _, _)| series == name)
            .map(|(_, labels, value)| (labels, value))
            .collect()
    }

    /// The sum over every sample of a metric whose labels include these.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .into_iter()
            .filter(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, value)| value)
            .sum()
    }

    pub fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}

/// The path of an external tool, or a failing test that names the Debian package to install
/// (scripts/test.sh installs every one of them).
pub fn tool(tool: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed: install the Debian package `{debian_package}` \
             (apt-get install --no-install-recommends {debian_package}), or run scripts/test.sh"
        )
    })
}

/// A loopback address that refuses connections: a bound socket that never listens, which keeps
/// the port from being given to anyone else while the guard lives.
pub fn refused_address() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    (socket, address)
}

/// A server binary of the Prometheus project (Debian's packages), run in its own temporary
/// directory on a free loopback port, killed when dropped.
pub struct Daemon {
    /// Declared first: killed before the directory it runs in is removed.
    child: ChildGuard,
    pub url: String,
    name: &'static str,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Writes `files` into a fresh directory, starts `binary` there with `args` (each may use
    /// `{dir}`; they make it listen on port 0), reads the address it bound from its log, and
    /// waits until `/-/ready` answers 200.
    pub async fn start(
        name: &'static str,
        package: &str,
        args: &[&str],
        files: &[(&str, &[u8])],
    ) -> Self {
        let binary = tool(name, package);
        let dir = tempfile::tempdir().unwrap();
        for (file, content) in files {
            std::fs::write(dir.path().join(file), content).unwrap();
        }
        let dir_text = dir.path().to_str().unwrap().to_owned();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = ChildGuard::spawn(
            Command::new(binary)
                .args(args.iter().map(|arg| arg.replace("{dir}", &dir_text)))
                .current_dir(dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let mut daemon = Self {
            child,
            url: String::new(),
            name,
            dir,
        };
        // exporter-toolkit logs the bound address: msg="Listening on" address=127.0.0.1:41893
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let address = loop {
            let log = daemon.log();
            if let Some(rest) = log.split("msg=\"Listening on\" address=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never logged its address:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        daemon.url = format!("http://{address}");
        let client = reqwest::Client::new();
        while std::time::Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/-/ready", daemon.url)).send().await {
                if response.status().is_success() {
                    return daemon;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} never became ready:\n{}", daemon.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// A real Prometheus server (Debian's `prometheus` binary).
pub struct Prometheus(pub Daemon);

impl Prometheus {
    /// Starts Prometheus with this configuration (YAML text) and waits until it is ready.
    /// `files` are written beside the configuration first (rule files, CA certificates, …).
    pub async fn start(config: &str, files: &[(&str, &[u8])]) -> Self {
        let mut files = files.to_vec();
        files.push(("prometheus.yml", config.as_bytes()));
        let args = [
            "--config.file={dir}/prometheus.yml",
            "--storage.tsdb.path={dir}/data",
            "--web.listen-address=127.0.0.1:0",
        ];
        Self(Daemon::start("prometheus", "prometheus", &args, &files).await)
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }

    pub fn log(&self) -> String {
        self.0.log()
    }

    /// The result vector of an instant query.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let response: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(response["status"], "success", "{promql}: {response}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls a query until it returns at least one sample, up to `timeout`.
    pub async fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let result = self.query(promql).await;
            if !result.is_empty() {
                return result;
            }
            if std::time::Instant::now() > deadline {
                let targets = reqwest::get(format!("{}/api/v1/targets", self.url()))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                panic!("{promql} stayed empty; targets: {targets}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A real Alertmanager (Debian's `prometheus-alertmanager` binary), clustering off.
pub struct Alertmanager(pub Daemon);

impl Alertmanager {
    pub async fn start(config: &str, files: &[(&str, &[u8])]) -> Self {
        let mut files = files.to_vec();
        files.push(("alertmanager.yml", config.as_bytes()));
        let args = [
            "--config.file={dir}/alertmanager.yml",
            "--storage.path={dir}/data",
            "--web.listen-address=127.0.0.1:0",
            "--cluster.listen-address=",
        ];
        Self(
            Daemon::start(
                "prometheus-alertmanager",
                "prometheus-alertmanager",
                &args,
                &files,
            )
            .await,
        )
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }
}

/// The `nuki-exporter` binary, without any NUKI_EXPORTER_* variable of the test's environment.
pub fn exporter_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nuki-exporter"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NUKI_EXPORTER_") {
            command.env_remove(key);
        }
    }
    command
}

/// The `nuki-exporter` binary on loopback ports of its choice (JSON log, so that
/// [`Running::address_of`] finds them), accepting webhooks signed with [`SECRET`], keeping its
/// last-known state in `state_file` (written every 100 ms).
pub fn exporter_with_state_file(state_file: &std::path::Path) -> Command {
    let mut command = exporter_command();
    command
        .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
        .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
        .env("NUKI_EXPORTER_WEBHOOK__SECRETS", format!("[{SECRET}]"))
        .env("NUKI_EXPORTER_LOG__FORMAT", "json")
        .env("NUKI_EXPORTER_STATE__FILE", state_file)
        .env("NUKI_EXPORTER_STATE__WRITE_INTERVAL", "100ms");
    command
}

/// What a finished command printed, and whether it exited 0.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// stdout followed by stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to its end (stdin empty, stdout and stderr captured).
pub fn run(command: &mut Command) -> Ran {
    let child = ChildGuard::spawn(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output();
    Ran {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs a command; on a non-zero exit the test fails with the command line and its output.
/// Returns stdout followed by stderr.
pub fn run_ok(command: &mut Command) -> String {
    let ran = run(command);
    assert!(
        ran.ok,
        "{command:?} failed\n--- stdout\n{}\n--- stderr\n{}",
        ran.stdout, ran.stderr
    );
    ran.output()
}

/// How long a running binary may stay silent before [`Running::wait_for`] gives up: a hang,
/// not a slow start on a loaded machine.
pub const LOG_LINE_DEADLINE: Duration = Duration::from_secs(90);

/// A running binary whose stderr lines arrive on a channel; killed when dropped.
pub struct Running {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = ChildGuard::spawn(command.stderr(Stdio::piped()).stdout(Stdio::null()))
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stderr = child.take_stderr().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text` and returns it.
    pub fn wait_for(&mut self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LOG_LINE_DEADLINE)
                .unwrap_or_else(|_| {
                    panic!("no log line with {text:?}; saw:\n{}", self.seen.join("\n"))
                });
            self.seen.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`libc::SIGHUP`, `libc::SIGTERM`, ...).
    pub fn signal(&self, signal: libc::c_int) {
        self.child.signal(signal);
    }

    /// Sends SIGKILL (`kill -9`): no shutdown, no last write; returns every log line.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill();
        self.seen.extend(self.lines.iter());
        self.seen
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the exit (at most `deadline`) without blocking the async runtime; returns
    /// whether it was clean and every log line.
    pub async fn exited_within(mut self, deadline: Duration) -> (bool, Vec<String>) {
        let status = self.child.exited_within(deadline).await;
        self.seen.extend(self.lines.iter());
        (status.success(), self.seen)
    }

    /// Waits for the exit (at most [`process::EXIT_DEADLINE`]), blocking the calling thread;
    /// returns whether it was clean and every log line.
    pub fn wait_exit(mut self) -> (bool, Vec<String>) {
        let status = self.child.wait_within(process::EXIT_DEADLINE);
        self.seen.extend(self.lines.iter());
        (status.success(), self.seen)
    }

    /// Sends SIGTERM; returns whether the exit was clean and every log line.
    pub fn terminate(self) -> (bool, Vec<String>) {
        self.sigterm();
        self.wait_exit()
    }

    /// The process's resident memory (`VmRSS`) and its peak so far (`VmHWM`), in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"));
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap();
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// With `log.format = "json"`: the address of the listener named `listener`.
    pub fn address_of(&mut self, listener: &str) -> String {
        loop {
            let line = self.wait_for("listening");
            let line: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if line["fields"]["listener"] == listener {
                return line["fields"]["address"].as_str().unwrap().to_owned();
            }
        }
    }
}

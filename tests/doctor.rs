//! `nuki-exporter doctor` against the stand-ins of the Nuki Web API and the Nuki Bridge and a
//! running exporter: a healthy path passes, and each broken hop is the one named as failing,
//! with what to do.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use common::bridge_stub::{self, BridgeStub};
use common::nuki_api_stub::{NukiApiStub, Reply, web_api_fixture};
use common::{SECRET, TestExporter, exporter_command, refused_address, run, test_config};
use nuki_exporter::cli::doctor::{self, Check, DoctorOptions, Outcome};

const API_KEY_ID: u32 = 812;

/// Everything a healthy path has: a Web API with every scope, an active key with a clean
/// log, a bridge, and a running exporter with the secret.
struct Stack {
    api: NukiApiStub,
    bridge: BridgeStub,
    exporter: TestExporter,
    dir: tempfile::TempDir,
}

impl Stack {
    async fn healthy() -> Self {
        let api = NukiApiStub::start().await;
        api.route(
            "GET",
            "/smartlock",
            Reply::json(web_api_fixture("smartlock.json")),
        );
        api.route("GET", "/api/decentralWebhook", Reply::json(b"[]".to_vec()));
        api.route(
            "GET",
            &format!("/api/key/{API_KEY_ID}/advanced"),
            Reply::json(web_api_fixture("advanced-active.json")),
        );
        api.route(
            "GET",
            &format!("/api/key/{API_KEY_ID}/webhook/logs"),
            Reply::json(b"[]".to_vec()),
        );
        Self {
            api,
            bridge: BridgeStub::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).await,
            exporter: TestExporter::start_with(test_config()).await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The configuration file of an exporter on this path; `extra` is appended (TOML).
    fn config(&self, secret: &str, bridge_url: &str, extra: &str) -> PathBuf {
        let file = |name: &str, content: &str| {
            let path = self.dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let toml = format!(
            r#"
[webhook]
listen = "{webhook}"
secret_files = ["{secret}"]
[metrics]
listen = "{metrics}"
{extra}
[api]
url = "{api}"
allow_insecure_http = true
token_file = "{token}"
advanced_key_id = {API_KEY_ID}
[[bridges]]
name = "hall"
url = "{bridge_url}"
token_file = "{bridge_token}"
"#,
            webhook = self.exporter.webhook_address(),
            metrics = self.exporter.metrics_address(),
            secret = file("secret", secret).display(),
            api = self.api.url,
            token = file("token", "doctor-test-token").display(),
            bridge_token = file("bridge_token", bridge_stub::TOKEN).display(),
        );
        file("config.toml", &toml)
    }

    async fn doctor(&self, config: &Path) -> Vec<Check> {
        let options = DoctorOptions {
            public_url: Some(self.exporter.webhook_url.clone()),
        };
        doctor::run(Some(config), &options).await
    }
}

/// The one failing check; the test fails, listing every line, unless exactly one failed.
fn the_failure(checks: &[Check]) -> &Check {
    let failed: Vec<&Check> = checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "expected one failing hop:\n{}",
        lines(checks)
    );
    failed[0]
}

/// Asserts that exactly `hop` failed, found `found` and says to do `todo` (substrings).
fn assert_fails_at(checks: &[Check], hop: &str, found: &str, todo: &str) {
    let failure = the_failure(checks);
    assert_eq!(failure.hop, hop, "{failure}");
    assert!(failure.found.contains(found), "{failure}");
    assert!(
        failure.todo.as_deref().unwrap_or_default().contains(todo),
        "{failure}"
    );
}

fn lines(checks: &[Check]) -> String {
    checks.iter().map(|c| format!("{c}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_path_passes_every_hop() {
    let path = Stack::healthy().await;
    let config = path.config(SECRET, &path.bridge.url(), "");
    let checks = path.doctor(&config).await;
    let hops: Vec<_> = checks.iter().map(|c| (c.hop, c.outcome)).collect();
    assert_eq!(
        hops,
        [
            ("configuration", Outcome::Ok),
            ("webhook secret", Outcome::Ok),
            ("web api token", Outcome::Ok),
            ("webhook scope", Outcome::Ok),
            ("webhook delivery", Outcome::Ok),
            ("public url", Outcome::Ok),
            ("bridge", Outcome::Ok),
            ("metrics auth", Outcome::Ok),
            ("webhook listener", Outcome::Ok),
            ("metrics listener", Outcome::Ok),
        ],
        "\n{}",
        lines(&checks)
    );
    assert!(doctor::passed(&checks));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_fails_at_the_public_url() {
    let path = Stack::healthy().await;
    let config = path.config("not-the-exporters-secret", &path.bridge.url(), "");
    let checks = path.doctor(&config).await;
    assert_fails_at(
        &checks,
        "public url",
        "401",
        "other secrets than this configuration",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_scope_is_named() {
    let path = Stack::healthy().await;
    path.api
        .route("GET", "/smartlock", Reply::status(403, b"{}".to_vec()));
    let config = path.config(SECRET, &path.bridge.url(), "");
    let checks = path.doctor(&config).await;
    assert_fails_at(
        &checks,
        "web api token",
        "403",
        "lacks the `smartlock.readOnly` scope",
    );

    // Without webhook.decentral only `webhook register|list` suffer: a warning that names it.
    path.api.route(
        "GET",
        "/smartlock",
        Reply::json(web_api_fixture("smartlock.json")),
    );
    path.api.route(
        "GET",
        "/api/decentralWebhook",
        Reply::status(403, b"{}".to_vec()),
    );
    let checks = path.doctor(&config).await;
    let scope = checks.iter().find(|c| c.hop == "webhook scope").unwrap();
    assert_eq!(scope.outcome, Outcome::Warn, "{}", lines(&checks));
    assert!(
        scope
            .todo
            .as_deref()
            .unwrap()
            .contains("`webhook.decentral`"),
        "{scope}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivated_delivery_fails_with_how_to_reactivate() {
    let path = Stack::healthy().await;
    path.api.route(
        "GET",
        &format!("/api/key/{API_KEY_ID}/advanced"),
        Reply::json(web_api_fixture("advanced-deactivated.json")),
    );
    let config = path.config(SECRET, &path.bridge.url(), "");
    let checks = path.doctor(&config).await;
    assert_fails_at(
        &checks,
        "webhook delivery",
        "DEACTIVATED",
        &format!("POST /api/key/{API_KEY_ID}/advanced/reactivate"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_bridge_is_named() {
    let path = Stack::healthy().await;
    let (_held, refused) = refused_address();
    let config = path.config(SECRET, &format!("http://{refused}"), "");
    let checks = path.doctor(&config).await;
    assert_fails_at(
        &checks,
        "bridge",
        &format!("hall (http://{refused})"),
        "reachable from this host",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn misconfigured_metrics_auth_is_named_and_fails_the_command() {
    let path = Stack::healthy().await;
    let web_config = path.dir.path().join("web-config.yml");
    // A password where the bcrypt hash belongs.
    std::fs::write(
        &web_config,
        "basic_auth_users:\n  prometheus: plain-password\n",
    )
    .unwrap();
    let extra = format!("web_config_file = \"{}\"", web_config.display());
    let config = path.config(SECRET, &path.bridge.url(), &extra);
    let checks = path.doctor(&config).await;
    assert_fails_at(
        &checks,
        "metrics auth",
        "metrics.web_config_file",
        "promtool check web-config",
    );

    // The command prints the same lines and exits 1; no secret or token is printed.
    let ran = run(exporter_command().arg("--config.file").arg(&config).args([
        "doctor",
        "--public-url",
        &path.exporter.webhook_url,
    ]));
    assert!(!ran.ok, "{}", ran.output());
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with("FAIL  metrics auth")),
        "{}",
        ran.stdout
    );
    for secret in [
        SECRET,
        "doctor-test-token",
        bridge_stub::TOKEN,
        "plain-password",
    ] {
        assert!(
            !ran.output().contains(secret),
            "{secret} printed:\n{}",
            ran.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_listener_without_the_configured_auth_fails() {
    // The running exporter has no auth; this configuration asks for a bearer token.
    let path = Stack::healthy().await;
    let token = path.dir.path().join("scrape-token");
    std::fs::write(&token, "scrape-token-value").unwrap();
    let extra = format!("bearer_token_files = [\"{}\"]", token.display());
    let config = path.config(SECRET, &path.bridge.url(), &extra);
    let checks = path.doctor(&config).await;
    assert_fails_at(
        &checks,
        "metrics listener",
        "served without credentials",
        "does not use this configuration's metrics auth",
    );
}

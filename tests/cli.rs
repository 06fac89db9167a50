//! The `nuki-exporter` binary: flags, subcommands, configuration errors, signals and logs.

mod common;

use std::process::Command;

use common::{Ran, Running, SECRET, exporter_command, fixture, run};
use nuki_exporter::source::webhook::signature::{HEADER, sign};

#[test]
fn version_and_help() {
    let Ran { ok, stdout, .. } = run(exporter_command().arg("--version"));
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        format!("nuki-exporter {}", env!("CARGO_PKG_VERSION"))
    );
    let Ran { ok, stdout, .. } = run(exporter_command().arg("--help"));
    assert!(ok);
    for flag in ["--config.file", "--check-config", "codes", "NUKI_EXPORTER_"] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
}

#[test]
fn codes_prints_the_catalogue() {
    let Ran { ok, stdout, .. } = run(exporter_command().arg("codes"));
    assert!(ok);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "code\tname\tmeaning\tremediation");
    assert_eq!(lines.len(), 45);
    let ff = lines.iter().find(|l| l.starts_with("0xFF\t")).unwrap();
    assert_eq!(
        *ff,
        "0xFF\tERROR_UNKNOWN\tDevice is most likely offline or not reachable.\tImplement a retry mechanism. Check if the smart lock is in an optimised network."
    );
    let Ran {
        ok,
        stdout: markdown,
        ..
    } = run(exporter_command().args(["codes", "--markdown"]));
    assert!(ok);
    assert!(markdown.contains("| `0x13` | `P_ERROR_MAX_USER` |"));
}

#[test]
fn check_config_accepts_a_good_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let secret = write("secret", "s3cret\n");
    let good = write(
        "good.toml",
        &format!(
            "[webhook]\nlisten = \"127.0.0.1:9999\"\nsecret_files = [\"{}\"]\n[limits]\nmax_smartlocks = 500\n",
            secret.display()
        ),
    );
    let Ran { ok, stdout, .. } = run(exporter_command()
        .arg("--check-config")
        .arg("--config.file")
        .arg(&good));
    assert!(ok, "{stdout}");
    assert_eq!(stdout.trim(), "configuration OK");

    let cases: Vec<(Command, &str)> = vec![
        (
            {
                let mut c = exporter_command();
                c.arg("--check-config")
                    .arg("--config.file")
                    .arg(write("typo.toml", "[limits]\nmax_smartlock = 5\n"));
                c
            },
            "max_smartlock",
        ),
        (
            {
                let mut c = exporter_command();
                c.args(["--check-config", "--config.file", "/nonexistent/nuki.toml"]);
                c
            },
            "/nonexistent/nuki.toml",
        ),
        (
            {
                let mut c = exporter_command();
                c.arg("--check-config")
                    .env("NUKI_EXPORTER_LIMITS__MAX_BODY_BYTES", "lots");
                c
            },
            "max_body_bytes",
        ),
        (
            {
                let mut c = exporter_command();
                c.arg("--check-config").env(
                    "NUKI_EXPORTER_WEBHOOK__SECRET_FILES",
                    "[/nonexistent/secret]",
                );
                c
            },
            "/nonexistent/secret",
        ),
        (
            {
                let mut c = exporter_command();
                c.arg("--check-config")
                    .env("NUKI_EXPORTER_WEBHOOK__SECRETS", "[\"\"]");
                c
            },
            "webhook.secrets",
        ),
        (
            {
                // One typo away from sending the bearer token in clear text.
                let mut c = exporter_command();
                c.arg("--check-config")
                    .env("NUKI_EXPORTER_API__URL", "http://api.nuki.io");
                c
            },
            "api.allow_insecure_http",
        ),
    ];
    for (mut command, named) in cases {
        let Ran { ok, stderr, .. } = run(&mut command);
        assert!(!ok, "{named}: accepted");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{named}: one line expected:\n{stderr}"
        );
        assert!(stderr.contains(named), "{named} not named in: {stderr}");
    }
}

#[test]
fn cleartext_api_url_is_accepted_only_when_allowed_explicitly() {
    let Ran { ok, stdout, stderr } = run(exporter_command()
        .arg("--check-config")
        .env("NUKI_EXPORTER_API__URL", "http://127.0.0.1:8080")
        .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true"));
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "configuration OK");
}

#[test]
fn shipped_example_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nuki-exporter/config.toml"
    );
    let Ran { ok, stdout, stderr } = run(exporter_command()
        .args(["--check-config", "--config.file", example])
        .env(
            "NUKI_EXPORTER_WEBHOOK__SECRET_FILES",
            format!("[{}]", secret.display()),
        ));
    assert!(ok, "{stdout}{stderr}");
    // Without the override, the example's secret file does not exist here: named, not ignored.
    let Ran { ok, stderr, .. } =
        run(exporter_command().args(["--check-config", "--config.file", example]));
    assert!(!ok);
    assert!(
        stderr.contains("/run/secrets/nuki_webhook_secret"),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_stops_start_up() {
    let Ran { ok, stderr, .. } =
        run(exporter_command().env("NUKI_EXPORTER_WEBHOOK__LISTEN", "not-an-address"));
    assert!(!ok);
    assert!(stderr.contains("webhook.listen"), "{stderr}");
}

#[test]
fn starts_with_the_variables_kubernetes_injects_for_a_service_named_nuki_exporter() {
    let mut command = exporter_command();
    for (key, value) in [
        ("NUKI_EXPORTER_SERVICE_HOST", "10.96.0.12"),
        ("NUKI_EXPORTER_SERVICE_PORT", "10180"),
        ("NUKI_EXPORTER_SERVICE_PORT_WEBHOOK", "10180"),
        ("NUKI_EXPORTER_SERVICE_PORT_METRICS", "10181"),
        ("NUKI_EXPORTER_PORT", "tcp://10.96.0.12:10180"),
        ("NUKI_EXPORTER_PORT_10180_TCP", "tcp://10.96.0.12:10180"),
        ("NUKI_EXPORTER_PORT_10180_TCP_PROTO", "tcp"),
        ("NUKI_EXPORTER_PORT_10180_TCP_PORT", "10180"),
        ("NUKI_EXPORTER_PORT_10180_TCP_ADDR", "10.96.0.12"),
        ("NUKI_EXPORTER_PORT_10181_TCP", "tcp://10.96.0.12:10181"),
        ("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0"),
        ("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.1:0"),
    ] {
        command.env(key, value);
    }
    let mut running = Running::spawn(&mut command);
    let listening = running.wait_for("listening");
    // stderr is a pipe here: no colour escapes in the text log.
    assert!(!listening.contains('\x1b'), "{listening:?}");
    let (clean, lines) = running.terminate();
    assert!(clean, "exit status after SIGTERM:\n{}", lines.join("\n"));
}

#[test]
fn a_log_level_that_is_not_a_level_stops_start_up() {
    let Ran { ok, stderr, .. } = run(exporter_command().env("NUKI_EXPORTER_LOG__LEVEL", "warning"));
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("log.level"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_rotated_secret_and_token_files_and_a_failed_reload_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, token) = (dir.path().join("webhook-secret"), dir.path().join("token"));
    std::fs::write(&secret, "first-secret\n").unwrap();
    std::fs::write(&token, "token-1\n").unwrap();
    let mut running = Running::spawn(
        exporter_command()
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
            .env("NUKI_EXPORTER_LOG__FORMAT", "json")
            .env(
                "NUKI_EXPORTER_WEBHOOK__SECRET_FILES",
                format!("[\"{}\"]", secret.display()),
            )
            .env(
                "NUKI_EXPORTER_METRICS__BEARER_TOKEN_FILES",
                format!("[\"{}\"]", token.display()),
            ),
    );
    let webhook = format!("http://{}/webhook", running.address_of("webhook"));
    let metrics = format!("http://{}/metrics", running.address_of("metrics"));
    let client = reqwest::Client::new();
    let body = fixture("device-status");
    let post = |secret: &str| {
        client
            .post(&webhook)
            .header(HEADER, sign(secret.as_bytes(), &body))
            .body(body.clone())
            .send()
    };
    let scrape = |token: &str| client.get(&metrics).bearer_auth(token).send();
    assert_eq!(post("first-secret").await.unwrap().status(), 204);
    assert_eq!(scrape("token-1").await.unwrap().status(), 200);

    std::fs::write(&secret, "second-secret\n").unwrap();
    std::fs::write(&token, "token-2\n").unwrap();
    running.signal(libc::SIGHUP);
    let reloaded = running.wait_for("reloaded the secret and token files");
    assert!(reloaded.contains(&*secret.to_string_lossy()), "{reloaded}");
    assert!(reloaded.contains(&*token.to_string_lossy()), "{reloaded}");
    assert!(!reloaded.contains("second-secret") && !reloaded.contains("token-2"));
    assert_eq!(post("second-secret").await.unwrap().status(), 204);
    assert_eq!(post("first-secret").await.unwrap().status(), 401);
    assert_eq!(scrape("token-1").await.unwrap().status(), 401);
    let text = scrape("token-2").await.unwrap().text().await.unwrap();
    assert!(
        text.contains("nuki_exporter_config_reloads_total{result=\"success\"} 1"),
        "{text}"
    );

    // An empty secret file would accept forged webhooks: the reload fails, nothing changes.
    std::fs::write(&secret, "").unwrap();
    std::fs::write(&token, "token-3\n").unwrap();
    running.signal(libc::SIGHUP);
    let failed = running.wait_for("reload failed");
    assert!(failed.contains(&*secret.to_string_lossy()), "{failed}");
    assert_eq!(post("second-secret").await.unwrap().status(), 204);
    assert_eq!(scrape("token-3").await.unwrap().status(), 401);
    let text = scrape("token-2").await.unwrap().text().await.unwrap();
    assert!(
        text.contains("nuki_exporter_config_last_reload_successful 0"),
        "{text}"
    );
    assert!(
        text.contains("nuki_exporter_config_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    let (clean, lines) = running.terminate();
    assert!(
        clean,
        "still running after both reloads:\n{}",
        lines.join("\n")
    );
}

/// The built-in defaults, but for the listen addresses: port 0 on loopback instead of the default
/// ports 10180/10181, which another process on the machine may hold (the defaults themselves are
/// checked below).
#[tokio::test]
async fn runs_with_built_in_defaults_and_exits_cleanly_on_sigterm() {
    let defaults = nuki_exporter::Config::default();
    assert_eq!(defaults.webhook.listen.to_string(), "0.0.0.0:10180");
    assert_eq!(defaults.metrics.listen.to_string(), "0.0.0.0:10181");
    let mut running = Running::spawn(
        exporter_command()
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
            .env("NUKI_EXPORTER_LOG__FORMAT", "json"),
    );
    let warning = running.wait_for("no webhook secret configured");
    assert!(
        warning.contains("WARN") && warning.contains("unsigned webhooks are accepted"),
        "{warning}"
    );
    let webhook = running.address_of("webhook");
    let metrics = running.address_of("metrics");
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{metrics}/-/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let hook = client
        .post(format!("http://{webhook}/webhook"))
        .body(fixture("device-status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hook.status().as_u16(),
        204,
        "unsigned webhooks accepted without secrets"
    );
    let metrics = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nuki_smartlock_battery_charge_percent{smartlock_id=\"123456789\"} 90")
    );
    let (clean, lines) = running.terminate();
    assert!(clean, "exit status after SIGTERM:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("SIGTERM received")));
}

#[tokio::test]
async fn no_log_line_at_any_level_holds_a_body_keypad_code_or_email() {
    let mut running = Running::spawn(
        exporter_command()
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_WEBHOOK__SECRETS", format!("[{SECRET}]"))
            .env("NUKI_EXPORTER_LOG__LEVEL", "trace")
            .env("NUKI_EXPORTER_LOG__FORMAT", "json"),
    );
    let address = running.address_of("shared");
    let client = reqwest::Client::new();
    let url = format!("http://{address}/webhook");
    for name in ["device-auths", "account-user"] {
        let body = fixture(name);
        let signed = client
            .post(&url)
            .header(HEADER, sign(SECRET.as_bytes(), &body))
            .body(body.clone());
        assert_eq!(signed.send().await.unwrap().status().as_u16(), 204);
        // Refused ones too: a bad signature and a malformed body.
        let forged = client
            .post(&url)
            .header(HEADER, sign(b"forged", &body))
            .body(body.clone());
        assert_eq!(forged.send().await.unwrap().status().as_u16(), 401);
        let mut broken = body.clone();
        broken.truncate(body.len() - 3);
        let malformed = client
            .post(&url)
            .header(HEADER, sign(SECRET.as_bytes(), &broken))
            .body(broken);
        assert_eq!(malformed.send().await.unwrap().status().as_u16(), 400);
    }
    let (clean, lines) = running.terminate();
    assert!(clean);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("webhook signature refused")),
        "trace logging was on"
    );
    for line in &lines {
        for secret in [
            "982345",
            "alice.host@example.org",
            "Guest Maria",
            "smartlockAuth",
            "accountUser",
        ] {
            assert!(!line.contains(secret), "log line leaks {secret}: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_fleet_fills_every_metric_with_two_unreachable_locks_and_one_low_voltage() {
    let exporter = common::TestExporter::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let url = exporter.webhook_url.clone();
    let demo = tokio::task::spawn_blocking(move || {
        run(exporter_command()
            .args([
                "demo",
                "--target",
                &url,
                "--locks",
                "8",
                "--rounds",
                "3",
                "--interval",
                "10ms",
            ])
            .arg("--secret-file")
            .arg(&secret))
    });
    let Ran { ok, stderr, .. } = demo.await.unwrap();
    assert!(ok, "{stderr}");
    let scrape = exporter.scrape().await;
    let unreachable: Vec<String> = scrape
        .samples("nuki_operation_errors_total")
        .into_iter()
        .filter(|(labels, _)| labels["error_code"] == "0xFF")
        .map(|(labels, _)| labels["smartlock_id"].clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(unreachable, ["17000002", "17000007"]);
    assert_eq!(
        scrape.sum(
            "nuki_operation_errors_total",
            &[("error_code", "0x4C"), ("smartlock_id", "17000003")]
        ),
        2.0
    );
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "signature")]
        ),
        Some(0.0)
    );
    assert_eq!(scrape.samples("nuki_smartlock_info").len(), 8);
    assert_eq!(
        scrape.value(
            "nuki_smartlock_server_state",
            &[("smartlock_id", "17000002")]
        ),
        Some(4.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_smartlock_battery_critical",
            &[("smartlock_id", "17000003"), ("battery", "lock")]
        ),
        Some(1.0)
    );
    for kind in [
        "DEVICE_STATUS",
        "DEVICE_MASTERDATA",
        "DEVICE_CONFIG",
        "DEVICE_LOGS",
        "DEVICE_AUTHS",
        "ACCOUNT_USER",
    ] {
        assert!(
            scrape
                .value(
                    "nuki_exporter_webhooks_received_total",
                    &[("source", "device"), ("kind", kind)]
                )
                .unwrap()
                >= 1.0,
            "{kind}"
        );
    }
    assert!(
        scrape.sum(
            "nuki_smartlock_activity_log_entries_total",
            &[("completion_state", "low_motor_voltage")]
        ) >= 1.0
    );
    exporter.shutdown().await;
}

#[test]
fn demo_names_an_unreachable_target() {
    let (_reserved, address) = common::refused_address();
    let Ran { ok, stderr, .. } = run(exporter_command().args([
        "demo",
        "--target",
        &format!("http://{address}/webhook"),
        "--rounds",
        "1",
    ]));
    assert!(!ok);
    assert!(stderr.contains(&address.to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_exits_0_for_a_ready_exporter_and_1_otherwise() {
    let exporter = common::TestExporter::start().await;
    let ready = format!("{}/-/ready", exporter.metrics_base);
    let Ran { ok, stderr, .. } = tokio::task::spawn_blocking(move || {
        run(exporter_command().args(["healthcheck", "--url", &ready]))
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let missing = format!("{}/nowhere", exporter.metrics_base);
    let Ran { ok, stderr, .. } = tokio::task::spawn_blocking(move || {
        run(exporter_command().args(["healthcheck", "--url", &missing]))
    })
    .await
    .unwrap();
    assert!(!ok && stderr.contains("404"), "{stderr}");
    exporter.shutdown().await;
    let (_reserved, address) = common::refused_address();
    let Ran { ok, stderr, .. } = run(exporter_command().args([
        "healthcheck",
        "--url",
        &format!("http://{address}/-/ready"),
    ]));
    assert!(!ok && stderr.contains("cannot reach"), "{stderr}");
}

/// `nuki-exporter demo --bridge-listen`: the simulated bridge, polled by an exporter configured
/// as for a real one, fills the bridge and lock series and calls back on every round.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_bridge_is_polled_and_calls_back_like_a_bridge() {
    let mut demo = Running::spawn(exporter_command().args([
        "demo",
        "--bridge-listen",
        "127.0.0.1:0",
        "--interval",
        "200ms",
        "--rounds",
        "100",
    ]));
    let listening = demo.wait_for("SIMULATED Nuki Bridge");
    // The log line ends in the bound address (the text log may colour the field name).
    let port: String = listening
        .rsplit_once("127.0.0.1:")
        .map(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    assert!(!port.is_empty(), "no address in {listening:?}");
    let bridge_address = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("bridge_token");
    std::fs::write(&token, "any-token\n").unwrap();
    let relay = common::bridge_stub::CallbackRelay::start().await;
    let mut bridge = nuki_exporter::config::BridgeConfig::new(
        "demo",
        &format!("http://{bridge_address}"),
        token,
    );
    bridge.poll_interval = std::time::Duration::from_millis(200);
    bridge.request_spacing = std::time::Duration::from_millis(50);
    bridge.callback_url = Some(relay.url.clone());
    let mut config = common::test_config();
    config.bridges = vec![bridge];
    let exporter = common::TestExporter::start_with(config).await;
    relay.forward_to(exporter.webhook_address());
    let bridge = [("bridge", "demo")];
    let scrape = exporter
        .scrape_until(std::time::Duration::from_secs(20), |s| {
            s.value("nuki_bridge_up", &bridge) == Some(1.0)
                && s.value("nuki_bridge_callbacks_registered", &bridge) == Some(1.0)
                && s.value("nuki_bridge_callbacks_received_total", &bridge) >= Some(2.0)
        })
        .await;
    assert!(
        listening.contains("a simulation"),
        "the demo says its bridge is simulated: {listening}"
    );
    demo.terminate();
    assert_eq!(
        scrape.value(
            "nuki_bridge_info",
            &[
                ("bridge", "demo"),
                ("bridge_type", "software"),
                (
                    "firmware_version",
                    concat!(env!("CARGO_PKG_VERSION"), "-simulated")
                ),
            ]
        ),
        Some(1.0)
    );
    // Two Smart Locks 3.0, a Smart Lock 2.0 and an Opener, under their Web API ids.
    for id in ["17618910209", "17618910210", "439041027", "190106"] {
        assert!(
            scrape
                .value("nuki_smartlock_lock_state", &[("smartlock_id", id)])
                .is_some(),
            "{id}"
        );
    }
    assert_eq!(
        scrape.value(
            "nuki_smartlock_battery_charge_percent",
            &[("smartlock_id", "190106")]
        ),
        None
    );
    exporter.shutdown().await;
}

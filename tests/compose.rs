//! The container stack: docker-compose.yml (validated by Debian's docker-compose 1.29, without a
//! Docker engine), the Dockerfile, and the files the services mount.

mod stack_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;
use stack_support::*;

fn compose() -> Command {
    // the defaults of docker-compose.yml, not a developer's own .env
    let empty_env = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compose-empty.env");
    std::fs::write(&empty_env, "").expect("write empty env file");
    let mut command = Command::new(docker_compose());
    command
        .current_dir(repo())
        .arg("-f")
        .arg(repo().join("docker-compose.yml"))
        .arg("--env-file")
        .arg(empty_env)
        .env_remove("NUKI_WEBHOOK_SECRET_FILE")
        .env_remove("NUKI_API_TOKEN_FILE")
        .env_remove("PAGERDUTY_ROUTING_KEY_FILE")
        .env_remove("GRAFANA_ADMIN_PASSWORD_FILE")
        .env_remove("NUKI_BRIDGE_TOKEN_FILE");
    command
}

/// docker-compose's resolved configuration (interpolated, paths made absolute).
fn resolved() -> Value {
    let text = run_ok(compose().arg("config"));
    serde_yaml_ng::from_str(&text).expect("docker-compose config prints YAML")
}

fn services(config: &Value) -> Vec<(String, &Value)> {
    config["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v))
        .collect()
}

#[test]
fn docker_compose_config_is_valid() {
    run_ok(compose().args(["config", "-q"]));
    run_ok(compose().args(["--profile", "demo", "config", "-q"]));
}

/// `image:` must name a version: a tag that is not `latest` and contains a digit, or a digest.
fn pinned(image: &str) -> bool {
    if let Some((_, digest)) = image.split_once("@sha256:") {
        return digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
        None => false,
    }
}

#[test]
fn pinned_accepts_versions_and_digests_only() {
    for image in [
        "prom/prometheus:v3.5.0",
        "rust:1.95.0-slim-bookworm",
        "gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f",
    ] {
        assert!(pinned(image), "{image}");
    }
    for image in [
        "prom/prometheus",
        "prom/prometheus:latest",
        "gcr.io/distroless/cc-debian12:nonroot",
        "localhost:5000/app",
        "app@sha256:123",
    ] {
        assert!(!pinned(image), "{image}");
    }
}

#[test]
fn every_image_tag_is_pinned() {
    let config = resolved();
    let mut problems = Vec::new();
    for (name, service) in services(&config) {
        if !service["build"].is_null() {
            continue; // built from this repository
        }
        match service["image"].as_str() {
            Some(image) if pinned(image) => {}
            other => problems.push(format!(
                "service {name}: image {other:?} is not pinned to a version"
            )),
        }
    }
    // The Dockerfile's base images too, with no exemption (distroless has variant tags only, so
    // its image is pinned by digest).
    for line in read(repo().join("Dockerfile")).lines() {
        let Some(rest) = line.trim().strip_prefix("FROM ") else {
            continue;
        };
        let image = rest.split_whitespace().next().unwrap_or_default();
        if !pinned(image) {
            problems.push(format!(
                "Dockerfile: base image {image} is not pinned to a version"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_mounted_path_exists() {
    let config = resolved();
    let mut problems = Vec::new();
    let exists = |p: &Path| p.exists();
    for (name, service) in services(&config) {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = match volume {
                Value::String(s) => s.split(':').next().unwrap_or_default().to_string(),
                other => other["source"].as_str().unwrap_or_default().to_string(),
            };
            if source.starts_with('/') || source.starts_with('.') {
                if !exists(Path::new(&source)) {
                    problems.push(format!(
                        "service {name}: mounted path {source} does not exist"
                    ));
                }
            } else if config["volumes"][source.as_str()].is_null() {
                problems.push(format!(
                    "service {name}: named volume {source} is not declared"
                ));
            }
        }
        if let Some(build) = service["build"].as_mapping() {
            let context =
                PathBuf::from(build.get("context").and_then(|c| c.as_str()).unwrap_or("."));
            let dockerfile = build
                .get("dockerfile")
                .and_then(|d| d.as_str())
                .unwrap_or("Dockerfile");
            if !context.join(dockerfile).is_file() {
                problems.push(format!(
                    "service {name}: {dockerfile} not found in {}",
                    context.display()
                ));
            }
        }
        for secret in service["secrets"].as_sequence().into_iter().flatten() {
            let source = secret["source"]
                .as_str()
                .or(secret.as_str())
                .unwrap_or_default();
            if config["secrets"][source].is_null() {
                problems.push(format!("service {name}: secret {source} is not declared"));
            }
        }
    }
    for (name, secret) in config["secrets"].as_mapping().into_iter().flatten() {
        let file = secret["file"].as_str().unwrap_or_default();
        if !Path::new(file).is_file() {
            problems.push(format!("secret {name:?}: file {file} does not exist"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_stack_has_its_services_health_checks_and_file_secrets() {
    let config = resolved();
    let names: BTreeSet<String> = services(&config).into_iter().map(|(n, _)| n).collect();
    for required in [
        "nuki-exporter",
        "prometheus",
        "alertmanager",
        "grafana",
        "demo",
    ] {
        assert!(
            names.contains(required),
            "docker-compose.yml lacks the service {required}"
        );
    }
    for (name, service) in services(&config) {
        let in_profile = service["profiles"]
            .as_sequence()
            .is_some_and(|p| !p.is_empty());
        // A one-shot service (the preflight check) exits instead of staying healthy.
        let one_shot = service["restart"] == "no";
        if !in_profile && !one_shot {
            assert!(
                service["healthcheck"]["test"]
                    .as_sequence()
                    .is_some_and(|t| !t.is_empty()),
                "service {name} has no health check"
            );
        }
        // secrets belong in files, not in the environment
        for (key, _) in service["environment"].as_mapping().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default().to_uppercase();
            let secretish = ["PASSWORD", "SECRET", "TOKEN", "ROUTING_KEY", "API_KEY"]
                .iter()
                .any(|s| key.contains(s));
            assert!(
                !secretish || key.ends_with("__FILE") || key.ends_with("_FILE"),
                "service {name}: {key} passes a secret through the environment; use a secret file"
            );
        }
    }

    // the exporter reads its webhook secret (and, with api.token_file, its Web API token; with a
    // [[bridges]] table, its bridge token) from compose secrets
    let exporter = &config["services"]["nuki-exporter"];
    let secrets: Vec<&str> = exporter["secrets"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s["source"].as_str())
        .collect();
    assert_eq!(
        secrets,
        ["nuki_webhook_secret", "nuki_api_token", "nuki_bridge_token"]
    );
    let exporter_config = read(repo().join("deploy/nuki-exporter/config.toml"));
    assert!(exporter_config.contains("/run/secrets/nuki_webhook_secret"));

    // Prometheus loads alerts/ where prometheus.yml expects them
    let volumes: Vec<String> = config["services"]["prometheus"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let alerts = format!(
        "{}:/etc/prometheus/rules:ro",
        repo().join("alerts").display()
    );
    assert!(volumes.contains(&alerts), "{volumes:?} lacks {alerts}");

    // Grafana is provisioned with the datasource and the dashboards
    let volumes: Vec<String> = config["services"]["grafana"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let dashboards = format!(
        "{}:/var/lib/grafana/dashboards:ro",
        repo().join("dashboards").display()
    );
    assert!(
        volumes.contains(&dashboards),
        "{volumes:?} lacks {dashboards}"
    );
    let provider = yaml(repo().join("deploy/grafana/provisioning/dashboards/nuki.yml"));
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    assert_eq!(
        provider["providers"][0]["allowUiUpdates"].as_bool(),
        Some(false)
    );
    let datasource = yaml(repo().join("deploy/grafana/provisioning/datasources/prometheus.yml"));
    let ds = &datasource["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
}

#[test]
fn the_demo_profile_runs_the_traffic_generator_against_the_exporter() {
    let config = resolved();
    let demo = &config["services"]["demo"];
    let profiles: Vec<&str> = demo["profiles"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(profiles, ["demo"]);
    let argv: Vec<&str> = demo["entrypoint"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(demo["command"].as_sequence().into_iter().flatten())
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        argv,
        [
            "nuki-exporter",
            "demo",
            "--target",
            "http://nuki-exporter:10180/webhook",
            "--secret-file",
            "/run/secrets/nuki_webhook_secret",
            "--api-listen",
            "0.0.0.0:10190",
            "--bridge-listen",
            "0.0.0.0:8080"
        ]
    );
    assert_eq!(demo["image"], config["services"]["nuki-exporter"]["image"]);
}

/// The base stack keeps state on a volume and polls no Web API; `docker-compose.demo.yml`
/// points the exporter at the demo's simulated API, never at api.nuki.io.
#[test]
fn state_lives_on_a_volume_and_the_demo_override_polls_the_simulated_api() {
    let base = resolved();
    let exporter = &base["services"]["nuki-exporter"];
    let environment = &exporter["environment"];
    assert_eq!(
        environment["NUKI_EXPORTER_STATE__FILE"].as_str(),
        Some("/var/lib/nuki-exporter/state.json")
    );
    assert!(environment["NUKI_EXPORTER_API__TOKEN_FILE"].is_null());
    // docker-compose 1.29 prints short volume syntax: `source:target:mode`.
    let volumes: Vec<&str> = exporter["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        volumes.contains(&"nuki_exporter_state:/var/lib/nuki-exporter:rw"),
        "{volumes:?}"
    );

    let text = run_ok(compose().args([
        "-f",
        "docker-compose.demo.yml",
        "--profile",
        "demo",
        "config",
    ]));
    let demo: Value = serde_yaml_ng::from_str(&text).expect("docker-compose config prints YAML");
    let environment = &demo["services"]["nuki-exporter"]["environment"];
    assert_eq!(
        environment["NUKI_EXPORTER_API__URL"].as_str(),
        Some("http://demo:10190")
    );
    assert_eq!(
        environment["NUKI_EXPORTER_API__TOKEN_FILE"].as_str(),
        Some("/run/secrets/nuki_api_token")
    );
    let secrets: Vec<&str> = demo["services"]["nuki-exporter"]["secrets"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s["source"].as_str().or(s.as_str()))
        .collect();
    assert!(secrets.contains(&"nuki_api_token"), "{secrets:?}");
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image() {
    let text = read(repo().join("Dockerfile"));
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "the Dockerfile must be multi-stage");
    assert!(
        stages[0].contains("rust:"),
        "the first stage builds with the Rust image"
    );
    let runtime = stages.last().unwrap();
    assert!(
        runtime.contains("distroless") || runtime.contains("scratch") || runtime.contains("alpine"),
        "small runtime image expected, got {runtime}"
    );
    let runtime_part = &text[text.rfind(runtime).unwrap()..];
    let user = runtime_part
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    let user = user.split(':').next().unwrap().trim();
    assert!(
        user != "root" && user != "0",
        "the runtime user must not be root"
    );
    assert!(
        text.contains("--bin nuki-exporter"),
        "the image builds the nuki-exporter binary"
    );
    assert!(runtime_part.contains("/usr/local/bin/nuki-exporter"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("nuki-exporter")),
        "ENTRYPOINT runs nuki-exporter"
    );
    let ignore = read(repo().join(".dockerignore"));
    for entry in ["target", ".git", "deploy/secrets"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore must exclude {entry}"
        );
    }
}

/// The host address a published port binds (`127.0.0.1:10180:10180/tcp`; all interfaces when
/// none is named).
fn published_host_ip(port: &Value) -> String {
    match port {
        Value::String(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            if parts.len() == 3 {
                parts[0].to_owned()
            } else {
                "0.0.0.0".to_owned()
            }
        }
        other => other["host_ip"].as_str().unwrap_or("0.0.0.0").to_owned(),
    }
}

#[test]
fn only_the_tls_front_is_published_beyond_this_host() {
    let config = resolved();
    let mut problems = Vec::new();
    for (name, service) in services(&config) {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let host_ip = published_host_ip(port);
            if name != "tls-proxy" && host_ip != "127.0.0.1" {
                problems.push(format!(
                    "service {name} publishes {port:?} on {host_ip}: only tls-proxy faces the network"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    let proxy = &config["services"]["tls-proxy"];
    assert!(
        proxy["volumes"].as_sequence().unwrap().iter().any(|v| v
            .as_str()
            .is_some_and(|v| v.ends_with("/deploy/caddy/Caddyfile:/etc/caddy/Caddyfile:ro"))),
        "tls-proxy mounts deploy/caddy/Caddyfile"
    );
}

fn caddy() -> PathBuf {
    tool("caddy", "caddy")
}

#[test]
fn caddy_accepts_the_tls_front_configuration() {
    let home = tempfile::tempdir().unwrap();
    let report = run_ok(
        Command::new(caddy())
            .args(["validate", "--adapter", "caddyfile", "--config"])
            .arg(repo().join("deploy/caddy/Caddyfile"))
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path()),
    );
    assert!(report.contains("Valid configuration"), "{report}");
}

/// HTTP status of a curl request to the TLS front (its certificate is Caddy's local CA's).
fn curl_status(url: &str, body: Option<(&[u8], &str)>) -> u16 {
    let mut command = Command::new(tool("curl", "curl"));
    command.args([
        "-k",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "60",
    ]);
    if let Some((body, signature)) = body {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        command
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .args(["-H", &format!("X-Nuki-Signature-SHA256: {signature}")]);
        return run(command.arg(url)).stdout.parse().unwrap_or(0);
    }
    run(command.arg(url)).stdout.parse().unwrap_or(0)
}

#[tokio::test]
async fn the_tls_front_passes_signed_webhooks_over_https_and_nothing_else() {
    use stack_support::common::{SECRET, TestExporter, fixture};
    let exporter = TestExporter::start().await;
    let upstream = exporter
        .webhook_url
        .trim_start_matches("http://")
        .trim_end_matches("/webhook")
        .to_owned();
    let home = tempfile::tempdir().unwrap();
    let (mut proxy, base) = start_caddy(home.path(), &upstream).await;
    let body = fixture("device-status");
    let signature = nuki_exporter::source::webhook::signature::sign(SECRET.as_bytes(), &body);
    let webhook = tokio::task::spawn_blocking({
        let (url, body, signature) = (format!("{base}/webhook"), body.clone(), signature.clone());
        move || curl_status(&url, Some((&body, &signature)))
    })
    .await
    .unwrap();
    let metrics = curl_status(&format!("{base}/metrics"), None);
    proxy.kill();
    assert_eq!(webhook, 204, "a signed webhook through the TLS front");
    assert_eq!(
        metrics, 404,
        "/metrics is not reachable through the TLS front"
    );
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.sum("nuki_exporter_webhooks_received_total", &[]),
        1.0
    );
    exporter.shutdown().await;
}

/// Starts Caddy with the shipped Caddyfile on loopback ports and waits (with a deadline) until it
/// serves https with its local certificate. Caddy cannot report a port it picked itself, so a
/// port pair another process holds makes Caddy exit, and the next pair is tried.
async fn start_caddy(home: &Path, upstream: &str) -> (ChildGuard, String) {
    let seed = std::process::id() as u16;
    for attempt in 0..8u16 {
        let https_port = 20_000 + (seed.wrapping_mul(7).wrapping_add(attempt * 2)) % 40_000;
        let http_port = https_port + 1;
        let mut proxy = ChildGuard::spawn(
            Command::new(caddy())
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(repo().join("deploy/caddy/Caddyfile"))
                .env("HOME", home)
                .env("XDG_DATA_HOME", home)
                .env("XDG_CONFIG_HOME", home)
                .env("CADDY_ADMIN", "off")
                .env("CADDY_HTTPS_PORT", https_port.to_string())
                .env("CADDY_HTTP_PORT", http_port.to_string())
                .env("NUKI_EXPORTER_DOMAIN", "localhost")
                .env("NUKI_EXPORTER_WEBHOOK_UPSTREAM", upstream)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
        .expect("caddy starts");
        let base = format!("https://localhost:{https_port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if proxy.try_wait().is_some() {
                break; // a port was taken: the next pair
            }
            if curl_status(&format!("{base}/"), None) == 404 {
                return (proxy, base);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "caddy never served {base}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    panic!("caddy exited on every port pair it was given");
}

/// The preflight service's shell script, as the container runs it (compose's `$$` is `$`).
fn preflight_script() -> String {
    let config = resolved();
    let command = config["services"]["preflight"]["command"]
        .as_sequence()
        .expect("preflight command");
    assert_eq!(command[0], "sh");
    command[2].as_str().unwrap().replace("$$", "$")
}

/// Runs the preflight script as the containers' "nobody" over copies of the mounted files made
/// with `umask` (the mount points themselves are Docker's, readable); returns whether it passed
/// and what it printed.
fn preflight_over_a_checkout_with_umask(umask: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (stack, secrets) = (dir.path().join("stack"), dir.path().join("secrets"));
    let copy = format!(
        "mkdir -p {stack}/deploy {secrets} && umask {umask} && cp -r {repo}/deploy/nuki-exporter {repo}/deploy/prometheus {repo}/deploy/caddy {stack}/deploy/ && cp -r {repo}/alerts {repo}/dashboards {stack}/ && cp {repo}/deploy/secrets/nuki_webhook_secret.example {secrets}/nuki_webhook_secret",
        stack = stack.display(),
        secrets = secrets.display(),
        repo = repo().display()
    );
    run_ok(Command::new("sh").args(["-c", &copy]));
    let output = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tool("busybox", "busybox"))
        .args(["sh", "-c", &preflight_script()])
        .env("STACK", &stack)
        .env("SECRETS", &secrets));
    (output.ok, output.output())
}

#[test]
fn preflight_passes_a_normal_checkout_and_names_what_a_umask_077_checkout_hides() {
    let (passed, report) = preflight_over_a_checkout_with_umask("022");
    assert!(passed, "{report}");
    assert!(
        report.contains("every mounted file is readable"),
        "{report}"
    );
    let (passed, report) = preflight_over_a_checkout_with_umask("077");
    assert!(!passed, "{report}");
    assert!(report.contains("umask 077"), "{report}");
    assert!(report.contains("/stack/deploy/nuki-exporter"), "{report}");
    assert!(report.contains("/secrets/nuki_webhook_secret"), "{report}");
    assert!(report.contains("chmod -R a+rX"), "{report}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's own error type
fn the_demo_override_polls_the_simulated_bridge() {
    let text = run_ok(compose().args([
        "-f",
        "docker-compose.demo.yml",
        "--profile",
        "demo",
        "config",
    ]));
    let config: Value = serde_yaml_ng::from_str(&text).expect("docker-compose config prints YAML");
    let exporter = &config["services"]["nuki-exporter"];
    let bridges = exporter["environment"]["NUKI_EXPORTER_BRIDGES"]
        .as_str()
        .expect("NUKI_EXPORTER_BRIDGES")
        .to_owned();
    let secrets: Vec<&str> = exporter["secrets"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().or_else(|| s["source"].as_str()))
        .collect();
    assert!(secrets.contains(&"nuki_bridge_token"), "{secrets:?}");
    let demo_command: Vec<&str> = config["services"]["demo"]["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        demo_command
            .windows(2)
            .any(|w| w == ["--bridge-listen", "0.0.0.0:8080"]),
        "{demo_command:?}"
    );
    // The exporter reads the variable as the documented [[bridges]] table.
    figment::Jail::expect_with(|jail| {
        jail.set_env("NUKI_EXPORTER_BRIDGES", &bridges);
        let config = nuki_exporter::Config::load(None).expect("the override's bridge loads");
        let bridge = &config.bridges[0];
        assert_eq!(bridge.url, "http://demo:8080");
        assert_eq!(
            bridge.token_file,
            Path::new("/run/secrets/nuki_bridge_token")
        );
        assert_eq!(
            bridge.callback_url.as_deref(),
            Some("http://nuki-exporter:10180/bridge/callback")
        );
        Ok(())
    });
}

//! `nuki-exporter quickstart`: first metrics and a firing alert on this machine, without Docker.
//!
//! One process runs the exporter and the demo's SIMULATED fleet (signed webhooks, a simulated
//! Nuki Web API and a simulated Nuki Bridge), all on loopback. It writes the exporter's
//! configuration and ready-to-use Prometheus and Alertmanager configurations (addresses filled
//! in, the rules of `alerts/`) into one directory, and prints each alert Alertmanager sends it,
//! so that the path webhook → metric → rule → Alertmanager → receiver can be watched end to end.

mod alert_receiver;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::demo;
use crate::{Config, Exporter};

/// Where the quickstart puts things, and what it runs.
#[derive(Clone, Debug)]
pub struct QuickstartOptions {
    /// Directory for the configurations, secrets, state file and the servers' data.
    pub dir: PathBuf,
    /// Directory of the alert rule files (`*.yml`) Prometheus loads.
    pub rules: PathBuf,
    /// First port of the quickstart's own listeners (see [`Addresses`]).
    pub port_base: u16,
    /// Port Prometheus is told to listen on.
    pub prometheus_port: u16,
    /// Port Alertmanager is told to listen on.
    pub alertmanager_port: u16,
}

/// Every loopback address of the quickstart: its own listeners, offsets from one base port
/// (the exporter's defaults 10180 and 10181 and the compose demo's 10190 with the default
/// base), and the two servers the user starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub webhook: SocketAddr,
    pub metrics: SocketAddr,
    pub simulated_api: SocketAddr,
    pub simulated_bridge: SocketAddr,
    pub alert_receiver: SocketAddr,
    pub prometheus: SocketAddr,
    pub alertmanager: SocketAddr,
}

impl Addresses {
    pub fn new(options: &QuickstartOptions) -> Result<Self, String> {
        let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let offset = |by: u16| {
            options.port_base.checked_add(by).map(at).ok_or_else(|| {
                format!(
                    "--port-base {} leaves no room for port +{by}",
                    options.port_base
                )
            })
        };
        Ok(Self {
            webhook: offset(0)?,
            metrics: offset(1)?,
            simulated_api: offset(10)?,
            simulated_bridge: offset(11)?,
            alert_receiver: offset(12)?,
            prometheus: at(options.prometheus_port),
            alertmanager: at(options.alertmanager_port),
        })
    }
}

/// The demo's fleet size and pace.
const LOCKS: u64 = 10;
const ROUND_INTERVAL: Duration = Duration::from_secs(10);
/// The simulated Web API's Advanced API key, whose webhook delivery the exporter watches.
const SIMULATED_API_KEY_ID: u32 = 1;

/// The exporter's configuration file: the simulated Web API and Bridge, the state file, and
/// the webhook secret in a file beside it.
pub fn exporter_toml(addresses: &Addresses, dir: &Path) -> String {
    let file = |name: &str| toml_string(&dir.join(name));
    format!(
        r#"# Written by `nuki-exporter quickstart`: the exporter on this machine's loopback, polling the
# quickstart's SIMULATED Nuki Web API and Nuki Bridge. Run it alone with
#   nuki-exporter --config.file {config}
# See docs/configuration.md for every key.

[webhook]
listen = "{webhook}"
secret_files = [{secret}]

[metrics]
listen = "{metrics}"

[log]
level = "warn"

[api]
url = "http://{api}"
# The simulated Web API on loopback: no token worth protecting crosses a network.
allow_insecure_http = true
token_file = {api_token}
poll_interval = "15s"
advanced_key_id = {key_id}

[state]
file = {state}

[[bridges]]
name = "demo"
url = "http://{bridge}"
token_file = {bridge_token}
poll_interval = "15s"
callback_url = "http://{webhook}/bridge/callback"
"#,
        config = dir.join(EXPORTER_CONFIG).display(),
        webhook = addresses.webhook,
        metrics = addresses.metrics,
        api = addresses.simulated_api,
        bridge = addresses.simulated_bridge,
        secret = file(WEBHOOK_SECRET),
        api_token = file(API_TOKEN),
        bridge_token = file(BRIDGE_TOKEN),
        state = file("state.json"),
        key_id = SIMULATED_API_KEY_ID,
    )
}

/// Prometheus: scrapes the exporter every 5 s as the job the rules expect, loads the rule
/// files, and sends alerts to the quickstart's Alertmanager.
pub fn prometheus_yml(addresses: &Addresses, rules: &Path) -> String {
    format!(
        r#"# Written by `nuki-exporter quickstart`: Prometheus for the exporter on this machine.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{alertmanager}"]
scrape_configs:
  - job_name: nuki-exporter   # the job every alert rule selects
    static_configs:
      - targets: ["{metrics}"]
"#,
        rules = yaml_string(&rules.join("*.yml")),
        alertmanager = addresses.alertmanager,
        metrics = addresses.metrics,
    )
}

/// Alertmanager: every alert to the quickstart, which prints it.
pub fn alertmanager_yml(addresses: &Addresses) -> String {
    format!(
        r#"# Written by `nuki-exporter quickstart`: every alert goes to the quickstart, which prints it.
# deploy/alertmanager/alertmanager.yml is the routing for production (docs/alerting.md).
route:
  receiver: quickstart
  group_by: [alertname, job, smartlock_id]
  group_wait: 5s
  group_interval: 30s
  repeat_interval: 4h
receivers:
  - name: quickstart
    webhook_configs:
      - url: "http://{receiver}{path}"
        send_resolved: true
"#,
        receiver = addresses.alert_receiver,
        path = alert_receiver::PATH,
    )
}

const EXPORTER_CONFIG: &str = "nuki-exporter.toml";
const WEBHOOK_SECRET: &str = "webhook_secret";
const API_TOKEN: &str = "nuki_api_token";
const BRIDGE_TOKEN: &str = "nuki_bridge_token";

/// A path as a TOML basic string (JSON's escaping is valid TOML).
fn toml_string(path: &Path) -> String {
    serde_json::Value::from(path.to_string_lossy()).to_string()
}

/// A path as a YAML double-quoted string (JSON's escaping is valid YAML).
fn yaml_string(path: &Path) -> String {
    toml_string(path)
}

/// Writes every file, starts the exporter, the simulated fleet and the alert receiver, prints
/// what to run next, and serves until `stop` completes or the fleet fails.
pub async fn run(
    options: &QuickstartOptions,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let addresses = Addresses::new(options)?;
    let rules = rule_directory(&options.rules)?;
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| format!("cannot create {}: {e}", options.dir.display()))?;
    let dir =
        std::path::absolute(&options.dir).map_err(|e| format!("{}: {e}", options.dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write(&dir.join(WEBHOOK_SECRET), &secret)?;
    // The simulations accept any token: these only fill the files the configuration names.
    write(&dir.join(API_TOKEN), "quickstart-simulated-api-token")?;
    write(&dir.join(BRIDGE_TOKEN), "quickstart-simulated-bridge-token")?;
    write(&dir.join(EXPORTER_CONFIG), &exporter_toml(&addresses, &dir))?;
    write(
        &dir.join("prometheus.yml"),
        &prometheus_yml(&addresses, &rules),
    )?;
    write(&dir.join("alertmanager.yml"), &alertmanager_yml(&addresses))?;

    let config = Config::load(Some(&dir.join(EXPORTER_CONFIG))).map_err(|e| e.to_string())?;
    crate::runtime::logging::init(&config.log);
    // The simulations first: the exporter's first Web API and Bridge polls run at start-up.
    let simulations = demo::serve_simulations(
        Some(addresses.simulated_api),
        Some(addresses.simulated_bridge),
        LOCKS,
    )
    .await?;
    let exporter = Exporter::start(&config).await.map_err(|e| e.to_string())?;
    alert_receiver::serve(addresses.alert_receiver).await?;
    println!("{}", next_steps(&addresses, &dir));
    let fleet = demo::DemoOptions {
        target: Some(
            format!("http://{}{}", addresses.webhook, config.webhook.path)
                .parse()
                .map_err(|e| format!("webhook URL: {e}"))?,
        ),
        api_listen: None,
        bridge_listen: None,
        secret: Some(secret.into_bytes()),
        locks: LOCKS,
        interval: ROUND_INTERVAL,
        rounds: None,
    };
    let result = tokio::select! {
        result = demo::play(&fleet, &simulations) => result,
        () = stop => Ok(()),
    };
    exporter.shutdown().await;
    result
}

/// The rule directory as an absolute path, if it holds a rule file.
fn rule_directory(rules: &Path) -> Result<PathBuf, String> {
    let absolute =
        std::path::absolute(rules).map_err(|e| format!("--rules {}: {e}", rules.display()))?;
    let has_rules = std::fs::read_dir(&absolute)
        .map(|entries| {
            entries
                .flatten()
                .any(|entry| entry.path().extension().is_some_and(|e| e == "yml"))
        })
        .unwrap_or(false);
    if has_rules {
        Ok(absolute)
    } else {
        Err(format!(
            "--rules {}: no *.yml rule file there; run the quickstart in the repository's directory \
             (it reads alerts/) or name the directory of alerts/nuki-exporter.rules.yml",
            absolute.display()
        ))
    }
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    std::fs::write(path, content).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The first of these program names found on `PATH`.
fn installed(names: &[&'static str]) -> Option<&'static str> {
    let paths = std::env::var_os("PATH")?;
    names
        .iter()
        .copied()
        .find(|name| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// What is running, and the two commands that complete the path to a firing alert.
fn next_steps(addresses: &Addresses, dir: &Path) -> String {
    let d = dir.display();
    let prometheus = installed(&["prometheus"]);
    let alertmanager = installed(&["prometheus-alertmanager", "alertmanager"]);
    let missing = |found: Option<&str>, package: &str| match found {
        Some(_) => String::new(),
        None => format!(
            "  # not installed: apt-get install {package}, or https://prometheus.io/download/\n"
        ),
    };
    format!(
        "nuki-exporter quickstart: the exporter and a SIMULATED fleet of {LOCKS} locks (webhooks, a \
         simulated Nuki Web API and Nuki Bridge) are running.\n\
         \n  metrics    http://{metrics}/metrics\n  webhooks   \
         http://{webhook}/webhook (signed with {d}/{WEBHOOK_SECRET})\n  files      {d}/\
         {{{EXPORTER_CONFIG},prometheus.yml,alertmanager.yml}}\n\
         \nIn two more terminals, start Prometheus and Alertmanager with the configurations \
         written for this machine:\n\n{missing_prometheus}  {prometheus} --config.file={d}/prometheus.yml \
         --storage.tsdb.path={d}/prometheus-data --web.listen-address={prometheus_address}\n\
         {missing_alertmanager}  {alertmanager} --config.file={d}/alertmanager.yml \
         --storage.path={d}/alertmanager-data --web.listen-address={alertmanager_address} \
         --cluster.listen-address=\n\
         \nThen http://{prometheus_address}/alerts shows the rules; two locks of the fleet go \
         unreachable, and within about two minutes Alertmanager sends their alerts here:\n",
        metrics = addresses.metrics,
        webhook = addresses.webhook,
        missing_prometheus = missing(prometheus, "prometheus"),
        missing_alertmanager = missing(alertmanager, "prometheus-alertmanager"),
        prometheus = prometheus.unwrap_or("prometheus"),
        alertmanager = alertmanager.unwrap_or("alertmanager"),
        prometheus_address = addresses.prometheus,
        alertmanager_address = addresses.alertmanager,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(port_base: u16) -> QuickstartOptions {
        QuickstartOptions {
            dir: "qs".into(),
            rules: "alerts".into(),
            port_base,
            prometheus_port: 9090,
            alertmanager_port: 9093,
        }
    }

    #[test]
    fn default_ports_are_the_exporters_and_the_compose_demos() {
        let addresses = Addresses::new(&options(10180)).unwrap();
        assert_eq!(addresses.webhook.to_string(), "127.0.0.1:10180");
        assert_eq!(addresses.metrics.to_string(), "127.0.0.1:10181");
        assert_eq!(addresses.simulated_api.to_string(), "127.0.0.1:10190");
    }

    #[test]
    fn a_port_base_without_room_is_refused_by_name() {
        let error = Addresses::new(&options(65530)).unwrap_err();
        assert!(error.contains("--port-base 65530"), "{error}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn the_exporter_configuration_loads_and_names_its_files() {
        // `Config::load` reads the process environment, which the config tests change inside a
        // Jail: holding the Jail's lock keeps their NUKI_EXPORTER_* variables out of this load.
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory();
            let addresses = Addresses::new(&options(20180)).unwrap();
            let path = dir.join(EXPORTER_CONFIG);
            std::fs::write(&path, exporter_toml(&addresses, dir)).unwrap();
            let config = Config::load(Some(&path)).unwrap();
            assert_eq!(config.webhook.listen, addresses.webhook);
            assert_eq!(config.metrics.listen, addresses.metrics);
            assert_eq!(config.webhook.secret_files, [dir.join(WEBHOOK_SECRET)]);
            assert_eq!(config.api.url, "http://127.0.0.1:20190");
            assert_eq!(config.bridges[0].url, "http://127.0.0.1:20191");
            Ok(())
        });
    }

    #[test]
    fn a_rule_directory_without_rules_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let error = rule_directory(dir.path()).unwrap_err();
        assert!(error.contains("no *.yml rule file"), "{error}");
    }
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nuki_exporter::cli::webhook::{self, WebhookAction};
use nuki_exporter::cli::{config_show, demo, doctor, quickstart};
use nuki_exporter::config::LogConfig;
use nuki_exporter::runtime::{loader, logging, server};
use nuki_exporter::source::web_api::client::NukiApi;
use nuki_exporter::util::client;
use nuki_exporter::{Config, Exporter, catalogue};

/// Prometheus exporter for Nuki smart-lock fleets: receives Nuki Web API webhooks and serves
/// their error codes, battery and lock state as metrics.
///
/// Configuration: built-in defaults, then the TOML file of --config.file, then environment
/// variables NUKI_EXPORTER_<SECTION>__<KEY> (e.g. NUKI_EXPORTER_WEBHOOK__LISTEN=0.0.0.0:8080).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long = "config.file", value_name = "PATH", global = true)]
    config_file: Option<PathBuf>,
    /// Validate the configuration (and read every file it names), then exit 0 or 1.
    #[arg(long = "check-config")]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Nuki error-code catalogue: hex, name, meaning, remediation.
    Codes {
        /// Print a Markdown table instead of tab-separated text.
        #[arg(long)]
        markdown: bool,
    },
    /// Simulate a small fleet: send signed webhooks of every kind to an exporter, with two
    /// locks going unreachable (0xFF) and one reporting low voltage (0x4C); with --api-listen,
    /// also answer as a SIMULATED Nuki Web API (for the demo only) that the exporter can poll.
    Demo {
        /// Webhook URL of the exporter, e.g. http://127.0.0.1:10180/webhook. Required unless
        /// --api-listen or --bridge-listen is given (then only the simulations are served).
        #[arg(
            long,
            value_name = "URL",
            required_unless_present_any = ["api_listen", "bridge_listen"]
        )]
        target: Option<hyper::Uri>,
        /// Serve the fleet as a simulated Nuki Web API on this address (GET /smartlock, an
        /// ACTIVE advanced key, the demo's deliveries as its webhook log).
        #[arg(long = "api-listen", value_name = "ADDRESS")]
        api_listen: Option<std::net::SocketAddr>,
        /// Serve a simulated Nuki Bridge on this address (three locks and an Opener that call
        /// back on every change; any token accepted), for a `[[bridges]]` table to poll.
        #[arg(long = "bridge-listen", value_name = "ADDRESS")]
        bridge_listen: Option<std::net::SocketAddr>,
        /// File holding the webhook secret to sign with; unsigned without it.
        #[arg(long = "secret-file", value_name = "PATH")]
        secret_file: Option<PathBuf>,
        /// Number of simulated locks.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        locks: u64,
        /// Time between rounds of webhooks.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many rounds (default: run until interrupted).
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// First metrics and a firing alert on this machine, without Docker: runs the exporter and
    /// a SIMULATED fleet (webhooks, Web API, Bridge) on loopback, writes ready-to-use
    /// Prometheus and Alertmanager configurations into --dir, and prints the alerts
    /// Alertmanager sends.
    Quickstart {
        /// Directory for the configurations, secrets and the servers' data.
        #[arg(long, value_name = "DIR", default_value = "quickstart")]
        dir: PathBuf,
        /// Directory of the alert rule files Prometheus loads.
        #[arg(long, value_name = "DIR", default_value = "alerts")]
        rules: PathBuf,
        /// First port of the quickstart's listeners: webhooks on it, /metrics on +1, the
        /// simulated Web API on +10, the simulated Bridge on +11, the alert receiver on +12.
        #[arg(long = "port-base", value_name = "PORT", default_value_t = 10180)]
        port_base: u16,
        /// Port Prometheus is to listen on.
        #[arg(long = "prometheus-port", value_name = "PORT", default_value_t = 9090)]
        prometheus_port: u16,
        /// Port Alertmanager is to listen on.
        #[arg(
            long = "alertmanager-port",
            value_name = "PORT",
            default_value_t = 9093
        )]
        alertmanager_port: u16,
    },
    /// Register, list or delete Nuki decentral webhooks through the Nuki Web API (api.url, with
    /// the token of api.token_file).
    Webhook {
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Check the whole path a webhook takes and say which hop fails: the configuration, the
    /// secret, the Web API token and its scopes, Nuki's delivery status and recent log, a
    /// signed test webhook through the public URL, the bridges, the listeners and the metrics
    /// auth. One line per check, with what to do; exits 1 when a check fails.
    Doctor {
        /// The webhook URL registered with Nuki (https://…/webhook): a signed test webhook is
        /// sent through it, as Nuki would.
        #[arg(long = "public-url", value_name = "URL")]
        public_url: Option<String>,
    },
    /// Exit 0 when the exporter at URL answers 200, 1 otherwise: the container health check of
    /// an image that has no shell or curl.
    Healthcheck {
        /// Readiness endpoint to ask.
        #[arg(
            long,
            value_name = "URL",
            default_value = "http://127.0.0.1:10180/-/ready"
        )]
        url: hyper::Uri,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print every key with its value and where it came from (default, file, environment
    /// variable); webhook secrets are redacted, token files shown by path only.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Codes { markdown }) => {
            print!(
                "{}",
                if markdown {
                    catalogue::markdown()
                } else {
                    catalogue::text()
                }
            );
            ExitCode::SUCCESS
        }
        Some(Command::Demo {
            target,
            api_listen,
            secret_file,
            locks,
            interval,
            rounds,
            bridge_listen,
        }) => {
            let secret = match secret_file
                .as_deref()
                .map(nuki_exporter::util::secret_file::read)
                .transpose()
            {
                Ok(secret) => secret,
                Err(error) => return fail(&format!("--secret-file: {error}")),
            };
            let options = demo::DemoOptions {
                target,
                api_listen,
                secret,
                locks,
                interval,
                rounds,
                bridge_listen,
            };
            run_demo(&options)
        }
        Some(Command::Quickstart {
            dir,
            rules,
            port_base,
            prometheus_port,
            alertmanager_port,
        }) => {
            let options = quickstart::QuickstartOptions {
                dir,
                rules,
                port_base,
                prometheus_port,
                alertmanager_port,
            };
            let done = runtime()
                .block_on(async { quickstart::run(&options, server::termination_signal()).await });
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
        Some(Command::Config {
            action: ConfigAction::Show,
        }) => match config_show::entries(cli.config_file.as_deref()) {
            Ok(entries) => {
                for entry in entries {
                    println!("{entry}");
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        },
        Some(Command::Doctor { public_url }) => {
            let options = doctor::DoctorOptions { public_url };
            let checks = runtime().block_on(doctor::run(cli.config_file.as_deref(), &options));
            for check in &checks {
                println!("{check}");
            }
            if doctor::passed(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Webhook { action }) => run_webhook(cli.config_file, action),
        Some(Command::Healthcheck { url }) => match runtime().block_on(client::probe(&url)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        },
        None => run_exporter(cli.config_file, cli.check_config),
    }
}

fn run_exporter(config_file: Option<PathBuf>, check_only: bool) -> ExitCode {
    let config = match Config::load(config_file.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    if check_only {
        return match loader::load(&config) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        };
    }
    logging::init(&config.log);
    runtime().block_on(async {
        let terminated = server::termination_signal();
        match Exporter::start(&config).await {
            Ok(exporter) => {
                exporter.run_until(terminated).await;
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        }
    })
}

fn run_webhook(config_file: Option<PathBuf>, action: WebhookAction) -> ExitCode {
    let config = match Config::load(config_file.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    let Some(token_file) = &config.api.token_file else {
        return fail(
            &"webhook: set api.token_file (in --config.file or NUKI_EXPORTER_API__TOKEN_FILE)",
        );
    };
    logging::init(&config.log);
    let api = match NukiApi::new(&config.api, token_file, None) {
        Ok(api) => api,
        Err(error) => return fail(&error),
    };
    let done = runtime().block_on(webhook::run(&api, action));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn run_demo(options: &demo::DemoOptions) -> ExitCode {
    logging::init(&LogConfig::default());
    let result = runtime().block_on(async {
        tokio::select! {
            result = demo::run(options) => result,
            () = server::termination_signal() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("nuki-exporter: {error}");
    ExitCode::FAILURE
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nuki_exporter::config::LogConfig;
use nuki_exporter::{Config, Exporter, catalogue, client, demo, logging, server};

/// Prometheus exporter for Nuki smart-lock fleets: receives Nuki Web API webhooks and serves
/// their error codes, battery and lock state as metrics.
///
/// Configuration: built-in defaults, then the TOML file of --config.file, then environment
/// variables NUKI_EXPORTER_<SECTION>__<KEY> (e.g. NUKI_EXPORTER_WEBHOOK__LISTEN=0.0.0.0:8080).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long = "config.file", value_name = "PATH")]
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
    /// locks going unreachable (0xFF) and one reporting low voltage (0x4C).
    Demo {
        /// Webhook URL of the exporter, e.g. http://127.0.0.1:10180/webhook.
        #[arg(long, value_name = "URL")]
        target: hyper::Uri,
        /// File holding the webhook secret to sign with; unsigned without it.
        #[arg(long = "secret-file", value_name = "PATH")]
        secret_file: Option<PathBuf>,
        /// Number of simulated locks.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
        locks: u64,
        /// Time between rounds of webhooks.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many rounds (default: run until interrupted).
        #[arg(long)]
        rounds: Option<u64>,
        /// Also run a simulated Nuki Bridge (three locks and an Opener, any token accepted) on
        /// this address, for a `[[bridges]]` table to poll.
        #[arg(long = "bridge-listen", value_name = "ADDRESS")]
        bridge_listen: Option<std::net::SocketAddr>,
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
            secret_file,
            locks,
            interval,
            rounds,
            bridge_listen,
        }) => {
            let secret = match secret_file.map(std::fs::read).transpose() {
                Ok(secret) => secret.map(|s| s.trim_ascii_end().to_vec()),
                Err(error) => return fail(&format!("--secret-file: {error}")),
            };
            let options = demo::DemoOptions {
                target,
                secret,
                locks,
                interval,
                rounds,
                bridge_listen,
            };
            run_demo(&options)
        }
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
        return match server::check(&config) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        };
    }
    logging::init(&config.log);
    runtime().block_on(async {
        match Exporter::start(&config).await {
            Ok(exporter) => {
                exporter.run_until(server::termination_signal()).await;
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        }
    })
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

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nuki_exporter::{Config, Exporter, catalogue, logging, server};

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
    /// Validate the configuration (and read the secret files), then exit 0 or 1.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Codes { markdown }) = cli.command {
        print!(
            "{}",
            if markdown {
                catalogue::markdown()
            } else {
                catalogue::text()
            }
        );
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config_file.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    if cli.check_config {
        return match server::check(&config) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        };
    }
    logging::init(&config.log);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        match Exporter::start(&config).await {
            Ok(exporter) => {
                exporter.run_until(server::termination_signal()).await;
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        }
    })
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("nuki-exporter: {error}");
    ExitCode::FAILURE
}

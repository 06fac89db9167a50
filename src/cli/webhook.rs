//! `nuki-exporter webhook`: register, list and delete the account's decentral webhooks through
//! the Nuki Web API.

use std::path::PathBuf;

use clap::Subcommand;

use crate::source::web_api::client::NukiApi;
use crate::source::web_api::decentral_webhook::{self, DEFAULT_FEATURES, FEATURES, WebhookError};
use crate::util::upstream_text::escape;

#[derive(Subcommand)]
pub enum WebhookAction {
    /// Register a webhook (PUT /api/decentralWebhook) and write the secret Nuki returns to a
    /// file of mode 0600: the exporter's webhook.secret_files.
    Register {
        /// Where Nuki posts to: this exporter's webhook URL, as the internet reaches it.
        #[arg(long, value_name = "https://…")]
        url: String,
        /// A feature to receive; repeat for several (default: DEVICE_STATUS, DEVICE_MASTERDATA,
        /// DEVICE_LOGS, the ones the exporter reads).
        #[arg(long = "feature", value_name = "FEATURE", value_parser = clap::builder::PossibleValuesParser::new(FEATURES))]
        features: Vec<String>,
        /// File to write the webhook secret to (created with mode 0600, once Nuki accepted the
        /// registration). Never a symbolic link's target.
        #[arg(long = "secret-file", value_name = "PATH")]
        secret_file: PathBuf,
        /// Replace --secret-file (or the link at its path) if it exists; without it, an
        /// existing file or link is refused.
        #[arg(long)]
        replace: bool,
    },
    /// List the account's decentral webhooks: id, URL and features.
    List,
    /// Delete the decentral webhook with this id.
    Delete {
        /// The webhook's id, as `webhook list` prints it.
        id: u32,
    },
}

/// Carries out `action` and prints its outcome.
pub async fn run(api: &NukiApi, action: WebhookAction) -> Result<(), WebhookError> {
    match action {
        WebhookAction::Register {
            url,
            features,
            secret_file,
            replace,
        } => {
            let features = if features.is_empty() {
                DEFAULT_FEATURES.map(String::from).to_vec()
            } else {
                features
            };
            let id =
                decentral_webhook::register(api, &url, &features, &secret_file, replace).await?;
            println!(
                "registered webhook {id} for {url} ({}); its secret is in {}",
                features.join(", "),
                secret_file.display()
            );
        }
        WebhookAction::List => {
            // Nuki's text, escaped: it cannot add a line or a column, or steer the terminal.
            for webhook in decentral_webhook::list(api).await? {
                let id = webhook.id.map(|id| id.to_string()).unwrap_or_default();
                println!(
                    "{id}\t{}\t{}",
                    escape(&webhook.webhook_url),
                    escape(&webhook.webhook_features.join(","))
                );
            }
        }
        WebhookAction::Delete { id } => {
            decentral_webhook::delete(api, id).await?;
            println!("deleted webhook {id}");
        }
    }
    Ok(())
}

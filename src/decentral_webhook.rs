//! `nuki-exporter webhook`: registers, lists and deletes decentral webhooks through the Nuki
//! Web API (`/api/decentralWebhook`), so that setting up needs no curl and the secret Nuki
//! returns goes straight into a file only its owner can read.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::Endpoint;
use crate::nuki_api::{ApiError, NukiApi};

/// Every webhook feature Nuki offers.
pub const FEATURES: [&str; 6] = [
    "DEVICE_STATUS",
    "DEVICE_MASTERDATA",
    "DEVICE_CONFIG",
    "DEVICE_LOGS",
    "DEVICE_AUTHS",
    "ACCOUNT_USER",
];

/// The features the exporter reads. The others carry keypad codes and e-mail addresses the
/// exporter never looks at.
pub const DEFAULT_FEATURES: [&str; 3] = ["DEVICE_STATUS", "DEVICE_MASTERDATA", "DEVICE_LOGS"];

/// A decentral webhook as Nuki describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecentralWebhook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub webhook_url: String,
    pub webhook_features: Vec<String>,
}

#[derive(Deserialize)]
struct Registered {
    id: Option<i64>,
    secret: Option<String>,
}

/// Why a webhook command failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Api(ApiError),
    #[error(
        "{0}: the token lacks the `webhook.decentral` scope; registering, listing and deleting decentral webhooks need a token with it (usually an OAuth token of an Advanced API key)"
    )]
    Forbidden(ApiError),
    #[error("--url must be an https:// URL: Nuki delivers webhooks over HTTPS only")]
    NotHttps,
    #[error("--secret-file {path}: {error}")]
    SecretFile { path: String, error: std::io::Error },
    #[error("Nuki's answer has no {0}")]
    Incomplete(&'static str),
    #[error("Nuki's answer is not the documented JSON: {0}")]
    Malformed(serde_json::Error),
}

impl From<ApiError> for WebhookError {
    /// Nuki answers 403 to a token without the scope these endpoints need: say which.
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Status { status, .. } if status == hyper::StatusCode::FORBIDDEN => {
                Self::Forbidden(error)
            }
            error => Self::Api(error),
        }
    }
}

/// Registers a webhook for `url` and `features` and writes its secret to `secret_file` (mode
/// 0600, followed by a newline); returns the webhook's id. The file is opened first, so that a
/// webhook is never registered with a secret that cannot be kept.
pub async fn register(
    api: &NukiApi,
    url: &str,
    features: &[String],
    secret_file: &Path,
) -> Result<i64, WebhookError> {
    if !url.starts_with("https://") {
        return Err(WebhookError::NotHttps);
    }
    let file_error = |error| WebhookError::SecretFile {
        path: secret_file.display().to_string(),
        error,
    };
    let existed = secret_file.exists();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(secret_file)
        .map_err(file_error)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(file_error)?;
    let request = DecentralWebhook {
        id: None,
        webhook_url: url.to_owned(),
        webhook_features: features.to_vec(),
    };
    let body = serde_json::to_vec(&request).expect("a webhook request serialises");
    let answer = api
        .put_json(Endpoint::DecentralWebhooks, "/api/decentralWebhook", body)
        .await;
    let registered = answer.map_err(WebhookError::from).and_then(|body| {
        serde_json::from_slice::<Registered>(&body).map_err(WebhookError::Malformed)
    });
    let registered = match registered {
        Ok(registered) => registered,
        Err(error) => {
            if !existed {
                let _ = std::fs::remove_file(secret_file);
            }
            return Err(error);
        }
    };
    let id = registered.id.ok_or(WebhookError::Incomplete("id"))?;
    let secret = registered
        .secret
        .ok_or(WebhookError::Incomplete("secret"))?;
    file.set_len(0).map_err(file_error)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    Ok(id)
}

/// Every decentral webhook of the account.
pub async fn list(api: &NukiApi) -> Result<Vec<DecentralWebhook>, WebhookError> {
    let body = api
        .get(Endpoint::DecentralWebhooks, "/api/decentralWebhook")
        .await?;
    serde_json::from_slice(&body).map_err(WebhookError::Malformed)
}

pub async fn delete(api: &NukiApi, id: u32) -> Result<(), WebhookError> {
    api.delete(
        Endpoint::DecentralWebhook,
        &format!("/api/decentralWebhook/{id}"),
    )
    .await?;
    Ok(())
}

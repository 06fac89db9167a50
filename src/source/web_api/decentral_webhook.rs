//! `nuki-exporter webhook`: registers, lists and deletes decentral webhooks through the Nuki
//! Web API (`/api/decentralWebhook`), so that setting up needs no curl and the secret Nuki
//! returns goes straight into a file only its owner can read.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::source::web_api::client::{ApiError, NukiApi};
use crate::source::web_api::metrics::Endpoint;

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
    #[error(
        "--secret-file {path} is a symbolic link, which is never followed: give the path of a regular file, or add --replace to put a regular file in the link's place (its target stays as it is)"
    )]
    SymbolicLink { path: String },
    #[error(
        "--secret-file {path} already exists: give another path, or add --replace to replace it once Nuki has accepted the registration"
    )]
    Exists { path: String },
    #[error(
        "webhook {id} is registered, but its secret could not be written to --secret-file {path}: {error}; delete it with `nuki-exporter webhook delete {id}` and register again"
    )]
    Unkept {
        id: i64,
        path: String,
        error: std::io::Error,
    },
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
/// 0600, followed by a newline); returns the webhook's id.
///
/// The secret goes into a new temporary file beside `secret_file`, created 0600 before
/// registering (so that a webhook is never registered with a secret that cannot be kept), and
/// is renamed into place only once Nuki accepted the registration: a refused registration
/// leaves an existing file as it was. A symbolic link is never followed, and an existing file
/// or link is replaced only with `replace`.
pub async fn register(
    api: &NukiApi,
    url: &str,
    features: &[String],
    secret_file: &Path,
    replace: bool,
) -> Result<i64, WebhookError> {
    if !url.starts_with("https://") {
        return Err(WebhookError::NotHttps);
    }
    let path = secret_file.display().to_string();
    let file_error = |error| WebhookError::SecretFile {
        path: path.clone(),
        error,
    };
    match std::fs::symlink_metadata(secret_file) {
        Ok(_) if replace => {}
        Ok(found) if found.file_type().is_symlink() => {
            return Err(WebhookError::SymbolicLink { path });
        }
        Ok(_) => return Err(WebhookError::Exists { path }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(file_error(error)),
    }
    let dir = match secret_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Created with O_EXCL and mode 0600: never a file someone else prepared, never readable.
    let mut staged = tempfile::Builder::new()
        .prefix(".nuki-webhook-secret.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(file_error)?;
    let request = DecentralWebhook {
        id: None,
        webhook_url: url.to_owned(),
        webhook_features: features.to_vec(),
    };
    let body = serde_json::to_vec(&request).expect("a webhook request serialises");
    let answer = api
        .put_json(Endpoint::DecentralWebhooks, "/api/decentralWebhook", body)
        .await?;
    let registered: Registered =
        serde_json::from_slice(&answer).map_err(WebhookError::Malformed)?;
    let id = registered.id.ok_or(WebhookError::Incomplete("id"))?;
    let secret = registered
        .secret
        .ok_or(WebhookError::Incomplete("secret"))?;
    let unkept = |error| WebhookError::Unkept {
        id,
        path: path.clone(),
        error,
    };
    staged
        .write_all(format!("{secret}\n").as_bytes())
        .map_err(unkept)?;
    staged.as_file().sync_all().map_err(unkept)?;
    // rename(2) replaces the directory entry, a link included, and never writes through it.
    if replace {
        staged.persist(secret_file).map_err(|e| unkept(e.error))?;
    } else {
        staged
            .persist_noclobber(secret_file)
            .map_err(|e| unkept(e.error))?;
    }
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(unkept)?;
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

//! Protection of the metrics listener: TLS and basic auth from a Prometheus exporter-toolkit web
//! configuration file (the subset that fits: `tls_server_config.cert_file`/`key_file` and
//! `basic_auth_users` with bcrypt hashes), and bearer tokens from files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, MetricsConfig};

/// The exporter-toolkit web configuration keys nuki-exporter supports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// Whether a request may read the metrics listener's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// Credentials missing or wrong: answer 401 with this `WWW-Authenticate` challenge.
    Denied(&'static str),
}

/// TLS and credentials of the metrics listener.
pub struct MetricsGuard {
    tls: Option<TlsAcceptor>,
    /// user → bcrypt hash.
    users: HashMap<String, String>,
    tokens: Vec<Vec<u8>>,
    /// SHA-256 of `user:password` pairs that bcrypt already accepted: bcrypt is slow on
    /// purpose, and Prometheus sends the same credentials every scrape.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for MetricsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsGuard")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

fn file_error(key: &'static str, path: &Path, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Key {
        key,
        reason: format!("{}: {reason}", path.display()),
    }
}

impl MetricsGuard {
    /// Reads `metrics.web_config_file` and `metrics.bearer_token_files`.
    pub fn load(config: &MetricsConfig) -> Result<Self, ConfigError> {
        const KEY: &str = "metrics.web_config_file";
        let web = match &config.web_config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| file_error(KEY, path, e))?;
                let web: WebConfigFile = serde_yaml_ng::from_str::<Option<WebConfigFile>>(&text)
                    .map_err(|e| file_error(KEY, path, e))?
                    .unwrap_or_default();
                for (user, hash) in &web.basic_auth_users {
                    hash.parse::<bcrypt::HashParts>().map_err(|e| {
                        file_error(
                            KEY,
                            path,
                            format!("basic_auth_users.{user}: not a bcrypt hash ({e})"),
                        )
                    })?;
                }
                web
            }
            None => WebConfigFile::default(),
        };
        let tls = web
            .tls_server_config
            .map(|tls| tls_acceptor(&tls))
            .transpose()?;
        let mut tokens = Vec::new();
        for path in &config.bearer_token_files {
            let token = crate::util::secret_file::read(path)
                .map_err(|e| file_error("metrics.bearer_token_files", path, e))?;
            tokens.push(token);
        }
        Ok(Self {
            tls,
            users: web.basic_auth_users,
            tokens,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// The TLS acceptor when the listener serves HTTPS.
    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Checks the `Authorization` header: a configured bearer token, or basic auth of a
    /// configured user. Everything is granted when neither is configured.
    pub async fn authorize(&self, headers: &HeaderMap) -> Access {
        if self.users.is_empty() && self.tokens.is_empty() {
            return Access::Granted;
        }
        let challenge = if self.users.is_empty() {
            "Bearer"
        } else {
            "Basic realm=\"nuki-exporter\""
        };
        let Some(value) = headers.get(AUTHORIZATION).map(|v| v.as_bytes()) else {
            return Access::Denied(challenge);
        };
        let granted = if let Some(token) = strip_scheme(value, b"bearer ") {
            let token = token.trim_ascii();
            // Every token is compared, so the time taken does not tell which one nearly matched.
            self.tokens.iter().fold(false, |found, known| {
                found | bool::from(known.as_slice().ct_eq(token))
            })
        } else if let Some(encoded) = strip_scheme(value, b"basic ") {
            self.check_basic(encoded.trim_ascii()).await
        } else {
            false
        };
        if granted {
            Access::Granted
        } else {
            Access::Denied(challenge)
        }
    }

    async fn check_basic(&self, encoded: &[u8]) -> bool {
        let Ok(decoded) = STANDARD.decode(encoded) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let Some(hash) = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get(u))
        else {
            return false;
        };
        let fingerprint: [u8; 32] = Sha256::digest(&decoded).into();
        if self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&fingerprint)
        {
            return true;
        }
        let (password, hash) = (password.to_vec(), hash.clone());
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if matches {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(fingerprint);
        }
        matches
    }
}

/// `value` without its case-insensitive auth scheme prefix, if it has that scheme.
fn strip_scheme<'v>(value: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    let prefix = value.get(..scheme.len())?;
    prefix
        .eq_ignore_ascii_case(scheme)
        .then(|| &value[scheme.len()..])
}

fn tls_acceptor(tls: &TlsServerConfig) -> Result<TlsAcceptor, ConfigError> {
    const KEY: &str = "metrics.web_config_file";
    let certificates = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            file_error(
                KEY,
                &tls.cert_file,
                format!("tls_server_config.cert_file: {e}"),
            )
        })?;
    if certificates.is_empty() {
        return Err(file_error(
            KEY,
            &tls.cert_file,
            "tls_server_config.cert_file holds no certificate",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        file_error(
            KEY,
            &tls.key_file,
            format!("tls_server_config.key_file: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(certificates, key)
        })
        .map_err(|e| file_error(KEY, &tls.cert_file, format!("tls_server_config: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn guard(web_config: &str, tokens: &[&str]) -> (MetricsGuard, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = MetricsConfig::default();
        let web = dir.path().join("web.yml");
        std::fs::write(&web, web_config).unwrap();
        config.web_config_file = Some(web);
        for (i, token) in tokens.iter().enumerate() {
            let path = dir.path().join(format!("token{i}"));
            std::fs::write(&path, format!("{token}\n")).unwrap();
            config.bearer_token_files.push(path);
        }
        (MetricsGuard::load(&config).unwrap(), dir)
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        headers(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    #[tokio::test]
    async fn basic_auth_checks_bcrypt_hashes() {
        let hash = bcrypt::hash("scrape-me", 4).unwrap();
        let (guard, _dir) = guard(&format!("basic_auth_users:\n  prometheus: {hash}\n"), &[]);
        assert_eq!(
            guard.authorize(&basic("prometheus", "scrape-me")).await,
            Access::Granted
        );
        assert_eq!(
            guard.authorize(&basic("prometheus", "scrape-me")).await,
            Access::Granted,
            "cached"
        );
        let denied = Access::Denied("Basic realm=\"nuki-exporter\"");
        assert_eq!(guard.authorize(&basic("prometheus", "wrong")).await, denied);
        assert_eq!(
            guard.authorize(&basic("someone", "scrape-me")).await,
            denied
        );
        assert_eq!(guard.authorize(&HeaderMap::new()).await, denied);
        assert_eq!(guard.authorize(&headers("Basic !!!")).await, denied);
    }

    #[tokio::test]
    async fn bearer_tokens_are_compared_exactly() {
        let (guard, _dir) = guard("", &["token-one", "token-two"]);
        assert_eq!(
            guard.authorize(&headers("Bearer token-two")).await,
            Access::Granted
        );
        assert_eq!(
            guard.authorize(&headers("bearer token-one")).await,
            Access::Granted
        );
        assert_eq!(
            guard.authorize(&headers("Bearer token")).await,
            Access::Denied("Bearer")
        );
        assert_eq!(
            guard.authorize(&headers("Bearer token-one-more")).await,
            Access::Denied("Bearer")
        );
        assert_eq!(
            guard.authorize(&basic("token-one", "")).await,
            Access::Denied("Bearer")
        );
    }

    #[tokio::test]
    async fn nothing_configured_grants_everything() {
        let guard = MetricsGuard::load(&MetricsConfig::default()).unwrap();
        assert_eq!(guard.authorize(&HeaderMap::new()).await, Access::Granted);
        assert!(guard.tls().is_none());
    }

    #[test]
    fn unsupported_keys_and_bad_hashes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web.yml");
        let load = |text: &str| {
            std::fs::write(&web, text).unwrap();
            let config = MetricsConfig {
                web_config_file: Some(web.clone()),
                ..MetricsConfig::default()
            };
            MetricsGuard::load(&config).unwrap_err().to_string()
        };
        let unsupported = load("http_server_config:\n  http2: false\n");
        assert!(unsupported.contains("http_server_config"), "{unsupported}");
        let bad_hash = load("basic_auth_users:\n  prometheus: plain-text\n");
        assert!(
            bad_hash.contains("basic_auth_users.prometheus"),
            "{bad_hash}"
        );
        let missing_cert = load(
            "tls_server_config:\n  cert_file: /nonexistent/cert.pem\n  key_file: /nonexistent/key.pem\n",
        );
        assert!(missing_cert.contains("cert_file"), "{missing_cert}");
    }
}

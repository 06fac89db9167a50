//! Reloading on SIGHUP: secret and token files are read again, so that they can be rotated
//! without a restart. A reload installs every part or none: when one file cannot be used, every
//! part keeps what it had, and the failure is logged and counted.
//!
//! A part is a [`FileBacked`] value (the webhook verifier, the metrics listener's credentials;
//! any source with a token file can add its own) registered with the [`Reloader`].
//!
//! The files are read on a thread of their own with a deadline ([`crate::util::off_thread`]): a file
//! on a hung mount fails the reload (and every later one until its read returns) instead of
//! stopping the threads that serve requests.

use std::sync::Arc;

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use crate::config::ConfigError;
use crate::config::file_backed::{Prepared, Reloadable};
use crate::util::off_thread::{FILE_READ_DEADLINE, Reader};
use crate::util::unix_now;

/// The parts a SIGHUP reloads, and the reload metrics.
pub struct Reloader {
    parts: Vec<Arc<dyn Reloadable>>,
    files: Reader,
    reloads: IntCounterVec,
    last_successful: IntGauge,
    last_success_time: Gauge,
}

impl Reloader {
    /// A reloader whose metrics are in `registry`; start-up counts as the first successful load.
    pub fn new(registry: &Registry) -> Self {
        let reloads = IntCounterVec::new(
            Opts::new(
                "nuki_exporter_config_reloads_total",
                "Reloads of the secret and token files on SIGHUP, by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let last_successful = IntGauge::new(
            "nuki_exporter_config_last_reload_successful",
            "1 when the last reload of the secret and token files succeeded (or none was tried), 0 when it failed and the previous ones stay in use.",
        )
        .expect("valid metric definition");
        let last_success_time = Gauge::new(
            "nuki_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of the secret and token files (start-up or reload).",
        )
        .expect("valid metric definition");
        for collector in [
            Box::new(reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_successful.clone()),
            Box::new(last_success_time.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        last_successful.set(1);
        last_success_time.set(unix_now());
        Self {
            parts: Vec::new(),
            files: Reader::new("reload-files"),
            reloads,
            last_successful,
            last_success_time,
        }
    }

    /// Adds a part to every later reload.
    pub fn add(&mut self, part: impl Reloadable + 'static) {
        self.parts.push(Arc::new(part));
    }

    /// Reads every part's files again, within [`FILE_READ_DEADLINE`], and installs them all,
    /// or none when one fails. Returns whether the reload succeeded.
    pub async fn reload(&self) -> bool {
        let parts = self.parts.clone();
        let read = self
            .files
            .run(FILE_READ_DEADLINE, move |progress| {
                parts
                    .iter()
                    .map(|part| {
                        progress.reading(part.describe());
                        part.prepare()
                    })
                    .collect::<Result<Vec<Prepared>, ConfigError>>()
            })
            .await;
        let prepared = match read {
            Ok(prepared) => prepared.map_err(|error| error.to_string()),
            Err(stalled) => Err(stalled.to_string()),
        };
        match prepared {
            Ok(prepared) => {
                let mut changes = Vec::new();
                for mut part in prepared {
                    changes.extend(std::mem::take(&mut part.changes));
                    part.install();
                }
                // The metrics first: whoever reads the log line finds them already moved.
                self.reloads.with_label_values(&["success"]).inc();
                self.last_successful.set(1);
                self.last_success_time.set(unix_now());
                if changes.is_empty() {
                    tracing::info!("reloaded the secret and token files: no content changed");
                } else {
                    tracing::info!(changes = %changes.join("; "), "reloaded the secret and token files");
                }
                true
            }
            Err(error) => {
                self.reloads.with_label_values(&["failure"]).inc();
                self.last_successful.set(0);
                tracing::error!(%error, "reload failed: the previous secrets and tokens stay in use");
                false
            }
        }
    }

    /// Reloads on every SIGHUP until the task is dropped. The handler is installed when this is
    /// called, so a SIGHUP right after start-up reloads instead of killing the process.
    pub fn run_on_sighup(self) -> impl Future<Output = ()> {
        use tokio::signal::unix::{SignalKind, signal};
        let hangups = signal(SignalKind::hangup());
        async move {
            let Ok(mut hangups) = hangups else {
                tracing::warn!("cannot listen for SIGHUP: secrets are read at start-up only");
                return;
            };
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                self.reload().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::config::file_backed::FileBacked;

    fn read_secret(path: &std::path::Path) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
            key: "test",
            reason: e.to_string(),
        })?;
        Ok(text.trim().to_owned())
    }

    fn value(registry: &Registry, name: &str) -> String {
        let text = crate::store::registry_text(registry);
        text.lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn a_reload_installs_every_part_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a1\n").unwrap();
        std::fs::write(&b, "b1\n").unwrap();
        let load = |path: &PathBuf| {
            let file = path.clone();
            FileBacked::load("test.files", vec![path.clone()], move || read_secret(&file)).unwrap()
        };
        let (first, second) = (load(&a), load(&b));
        let registry = Registry::new();
        let mut reloader = Reloader::new(&registry);
        reloader.add(Arc::clone(&first));
        reloader.add(Arc::clone(&second));
        assert_eq!(
            value(&registry, "nuki_exporter_config_last_reload_successful"),
            "1"
        );

        std::fs::write(&a, "a2\n").unwrap();
        std::fs::remove_file(&b).unwrap();
        assert!(!reloader.reload().await);
        assert_eq!(*first.current(), "a1", "a failed reload installs nothing");
        assert_eq!(*second.current(), "b1");
        assert_eq!(
            value(&registry, "nuki_exporter_config_last_reload_successful"),
            "0"
        );
        assert_eq!(
            value(
                &registry,
                "nuki_exporter_config_reloads_total{result=\"failure\"}"
            ),
            "1"
        );

        std::fs::write(&b, "b1\n").unwrap();
        let prepared = Arc::clone(&first).prepare().unwrap();
        assert_eq!(
            prepared.changes,
            [format!("test.files {} changed", a.display())]
        );
        assert!(reloader.reload().await);
        assert_eq!(*first.current(), "a2");
        assert_eq!(*second.current(), "b1");
        assert_eq!(
            value(&registry, "nuki_exporter_config_last_reload_successful"),
            "1"
        );
        assert_eq!(
            value(
                &registry,
                "nuki_exporter_config_reloads_total{result=\"success\"}"
            ),
            "1"
        );
        assert!(
            Arc::clone(&first).prepare().unwrap().changes.is_empty(),
            "installed content is the new reference"
        );
    }
}

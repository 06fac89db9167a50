//! A value built from configured files (the webhook verifier, the metrics listener's
//! credentials), built once at start-up and again on each reload
//! on SIGHUP (by the runtime's reloader, which installs every part or none).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use sha2::{Digest, Sha256};

use super::ConfigError;

/// One part of a reload: reads its files and returns how to install what it read.
pub trait Reloadable: Send + Sync {
    /// Reads the files again, installing nothing yet.
    fn prepare(&self) -> Result<Prepared, ConfigError>;
    /// The configuration key and files, for the error when reading them hangs.
    fn describe(&self) -> String;
}

/// What a part read, ready to be installed.
pub struct Prepared {
    /// What changed, for the log: one entry per file whose content is new.
    pub changes: Vec<String>,
    install: Box<dyn FnOnce() + Send>,
}

impl Prepared {
    /// Installs what was read.
    pub fn install(self) {
        (self.install)()
    }
}

type Build<T> = Box<dyn Fn() -> Result<T, ConfigError> + Send + Sync>;

/// A value built from files (`build` reads them), rebuilt on reload.
pub struct FileBacked<T> {
    key: &'static str,
    /// The files whose content changes are logged by name.
    paths: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    /// SHA-256 of each file in `paths` as last installed (`None`: unreadable).
    fingerprints: Mutex<Vec<Option<[u8; 32]>>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for FileBacked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBacked")
            .field("key", &self.key)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> FileBacked<T> {
    /// Builds the value once, as start-up needs it. `key` names the configuration key of the
    /// files in log lines.
    pub fn load(
        key: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, ConfigError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, ConfigError> {
        let value = build()?;
        Ok(Arc::new(Self {
            key,
            fingerprints: Mutex::new(fingerprints(&paths)),
            paths,
            build: Box::new(build),
            current: RwLock::new(Arc::new(value)),
        }))
    }

    /// The value as last installed.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<T: Send + Sync + 'static> Reloadable for Arc<FileBacked<T>> {
    fn prepare(&self) -> Result<Prepared, ConfigError> {
        let value = (self.build)()?;
        let new = fingerprints(&self.paths);
        let old = self
            .fingerprints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let changes = self
            .paths
            .iter()
            .zip(new.iter().zip(&old))
            .filter(|(_, (new, old))| new != old)
            .map(|(path, _)| format!("{} {} changed", self.key, path.display()))
            .collect();
        let this = Arc::clone(self);
        Ok(Prepared {
            changes,
            install: Box::new(move || {
                *this.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
                *this
                    .fingerprints
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = new;
            }),
        })
    }

    fn describe(&self) -> String {
        let paths: Vec<String> = self
            .paths
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        format!("{} {}", self.key, paths.join(", "))
    }
}

fn fingerprints(paths: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    paths
        .iter()
        .map(|path| std::fs::read(path).ok().map(|c| Sha256::digest(c).into()))
        .collect()
}

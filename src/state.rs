//! The state file (`state.file`): each lock's last-known state, kept across restarts.
//!
//! A source like the others: read at start-up, it turns into the [`LockEvent`]s that restore
//! the gauges before any webhook or poll arrives. Written from [`Metrics::known_locks`]
//! atomically (a temporary file in the same directory, fsync, rename, fsync of the directory),
//! so that a crash leaves either the old file or the new one. Versioned JSON with a format
//! marker: a file of another program or another version is recognised and ignored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::lock::{KnownLock, LockEvent};
use crate::metrics::Metrics;

/// The `format` marker of a state file.
const FORMAT: &str = "nuki-exporter-state";
/// The layout version; a file of another version is ignored.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    version: u32,
    locks: Vec<KnownLock>,
}

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not a nuki-exporter state file: {0}")]
    Foreign(String),
    #[error("state file version {0}, this nuki-exporter reads version {VERSION}")]
    Version(u32),
    #[error("state file is damaged: {0}")]
    Damaged(serde_json::Error),
}

/// A lock restored from the state file: its events, and the time they were last true.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredLock {
    pub smartlock_id: u64,
    pub events: Vec<LockEvent>,
    pub updated_at: Option<f64>,
}

/// Parses a state file.
pub fn parse(bytes: &[u8]) -> Result<Vec<RestoredLock>, StateError> {
    #[derive(Deserialize)]
    struct Marker {
        format: Option<String>,
        version: Option<u32>,
    }
    let marker: Marker =
        serde_json::from_slice(bytes).map_err(|e| classify_unreadable(bytes, e))?;
    if marker.format.as_deref() != Some(FORMAT) {
        return Err(StateError::Foreign(
            "it has no \"format\": \"nuki-exporter-state\" marker".into(),
        ));
    }
    if marker.version != Some(VERSION) {
        return Err(StateError::Version(marker.version.unwrap_or(0)));
    }
    let file: StateFile = serde_json::from_slice(bytes).map_err(StateError::Damaged)?;
    Ok(file
        .locks
        .into_iter()
        .map(|lock| {
            let mut events = vec![LockEvent::Status(lock.status)];
            events.extend(lock.info.map(LockEvent::Info));
            RestoredLock {
                smartlock_id: lock.smartlock_id,
                events,
                updated_at: lock.updated_at,
            }
        })
        .collect())
}

/// A file that is not JSON at all is foreign; JSON cut short is ours, damaged.
fn classify_unreadable(bytes: &[u8], error: serde_json::Error) -> StateError {
    if error.is_eof() || bytes.trim_ascii_start().starts_with(b"{") {
        StateError::Damaged(error)
    } else {
        StateError::Foreign(error.to_string())
    }
}

/// The state file's content for these locks, sorted by id.
pub fn encode(mut locks: Vec<KnownLock>) -> Vec<u8> {
    locks.sort_by_key(|lock| lock.smartlock_id);
    let file = StateFile {
        format: FORMAT.into(),
        version: VERSION,
        locks,
    };
    serde_json::to_vec(&file).expect("a state file serialises")
}

/// Replaces `path` with `bytes` so that a crash at any point leaves the old or the new file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".nuki-exporter-state.")
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

/// Restores the locks of the state file at `path` into `metrics`; returns their ids. A missing
/// file is the first start; an unreadable, damaged or foreign one is reported in one line and
/// ignored.
pub fn restore(path: &Path, metrics: &Metrics) -> Vec<u64> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %path.display(), "no state file yet; it is written once a lock is known");
            return Vec::new();
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read the state file; starting without last-known state");
            return Vec::new();
        }
    };
    match parse(&bytes) {
        Ok(locks) => {
            tracing::info!(file = %path.display(), locks = locks.len(), "last-known state restored");
            locks
                .into_iter()
                .map(|lock| {
                    metrics.observe(
                        lock.smartlock_id,
                        &lock.events,
                        lock.updated_at.unwrap_or_default(),
                    );
                    lock.smartlock_id
                })
                .collect()
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "ignoring the state file; it is replaced at the next write");
            Vec::new()
        }
    }
}

/// Writes the state file every `interval` while the locks' state changed, and once more when
/// stopped. Each write attempt is counted in `nuki_exporter_state_file_writes_total{result}`: a
/// failing file is otherwise only a log line, and the next restart loses the last-known state.
pub struct StateWriter {
    path: PathBuf,
    metrics: Arc<Metrics>,
    interval: Duration,
    succeeded: IntCounter,
    failed: IntCounter,
}

impl StateWriter {
    /// A writer of `path`; registers its counter in the registry of `metrics`, both results at 0.
    pub fn new(path: PathBuf, metrics: Arc<Metrics>, interval: Duration) -> Self {
        let writes = IntCounterVec::new(
            Opts::new(
                "nuki_exporter_state_file_writes_total",
                "Attempts to write the state file (state.file), by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        metrics
            .registry()
            .register(Box::new(writes.clone()))
            .expect("one state writer per registry");
        Self {
            path,
            metrics,
            interval,
            succeeded: writes.with_label_values(&["success"]),
            failed: writes.with_label_values(&["failure"]),
        }
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut written: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            };
            written = self.write_if_changed(written).await;
            if stopping {
                return;
            }
        }
    }

    /// Writes the file when its content would differ from `written`; returns what the file
    /// now holds (as far as this writer knows).
    async fn write_if_changed(&self, written: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let (path, metrics) = (self.path.clone(), Arc::clone(&self.metrics));
        let (succeeded, failed) = (self.succeeded.clone(), self.failed.clone());
        let task = tokio::task::spawn_blocking(move || {
            let known = metrics.known_locks();
            if known.is_empty() && written.is_none() {
                return None;
            }
            let bytes = encode(known);
            if written.as_ref() == Some(&bytes) {
                return written;
            }
            match write_atomically(&path, &bytes) {
                Ok(()) => {
                    succeeded.inc();
                    Some(bytes)
                }
                Err(error) => {
                    failed.inc();
                    tracing::warn!(file = %path.display(), %error, "cannot write the state file");
                    written
                }
            }
        });
        task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockInfo, LockStatus};

    fn lock(id: u64) -> KnownLock {
        KnownLock {
            smartlock_id: id,
            status: LockStatus {
                battery_critical: Some(true),
                battery_charge_percent: Some(9),
                server_state: Some(0),
                ..LockStatus::default()
            },
            info: Some(LockInfo {
                name: Some("Cellar".into()),
                device_type: Some("smartlock_3_4".into()),
                firmware_version: Some("3.10.7".into()),
            }),
            updated_at: Some(1_700_000_000.5),
        }
    }

    #[test]
    fn a_written_file_reads_back_as_the_same_events() {
        let bytes = encode(vec![lock(9), lock(3)]);
        let restored = parse(&bytes).unwrap();
        assert_eq!(
            restored.iter().map(|l| l.smartlock_id).collect::<Vec<_>>(),
            [3, 9]
        );
        let expected = lock(3);
        assert_eq!(
            restored[0],
            RestoredLock {
                smartlock_id: 3,
                events: vec![
                    LockEvent::Status(expected.status),
                    LockEvent::Info(expected.info.unwrap())
                ],
                updated_at: Some(1_700_000_000.5),
            }
        );
    }

    #[test]
    fn truncated_foreign_and_other_version_files_are_told_apart() {
        let bytes = encode(vec![lock(1)]);
        let truncated = parse(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(truncated, StateError::Damaged(_)), "{truncated}");
        for foreign in [
            b"locks: []\n".as_slice(),
            b"[1,2,3]",
            br#"{"format":"something-else","version":1,"locks":[]}"#,
            b"",
        ] {
            let error = parse(foreign).unwrap_err();
            assert!(
                matches!(error, StateError::Foreign(_) | StateError::Damaged(_)),
                "{error}"
            );
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        assert!(matches!(
            parse(br#"{"format":"something-else","version":1,"locks":[]}"#),
            Err(StateError::Foreign(_))
        ));
        assert!(matches!(
            parse(br#"{"format":"nuki-exporter-state","version":2,"locks":[]}"#),
            Err(StateError::Version(2))
        ));
        assert!(matches!(
            parse(
                br#"{"format":"nuki-exporter-state","version":1,"locks":[{"smartlock_id":"x"}]}"#
            ),
            Err(StateError::Damaged(_))
        ));
    }

    /// `(success, failure)` of `nuki_exporter_state_file_writes_total` in `metrics`.
    fn writes(metrics: &Metrics) -> (String, String) {
        let text = crate::metrics::registry_text(metrics.registry());
        let count = |result: &str| {
            let prefix = format!("nuki_exporter_state_file_writes_total{{result=\"{result}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
                .to_owned()
        };
        (count("success"), count("failure"))
    }

    #[tokio::test]
    async fn each_write_attempt_is_counted_by_result_from_zero() {
        let metrics = Arc::new(Metrics::new(
            crate::config::Config::default().metric_limits(),
        ));
        // procfs takes no new file, not even from root, whom a chmod 0555 directory lets write.
        let unwritable = StateWriter::new(
            PathBuf::from("/proc/self/nuki-exporter-state.json"),
            Arc::clone(&metrics),
            Duration::from_secs(60),
        );
        assert_eq!(writes(&metrics), ("0".into(), "0".into()));
        // nothing known and nothing written yet: no attempt
        assert_eq!(unwritable.write_if_changed(None).await, None);
        assert_eq!(writes(&metrics), ("0".into(), "0".into()));

        metrics.observe(7, &[LockEvent::Status(lock(7).status)], 1_700_000_000.0);
        assert_eq!(unwritable.write_if_changed(None).await, None);
        assert_eq!(writes(&metrics), ("0".into(), "1".into()));
        // still failing: every retry counts
        assert_eq!(unwritable.write_if_changed(None).await, None);
        assert_eq!(writes(&metrics), ("0".into(), "2".into()));

        let dir = tempfile::tempdir().unwrap();
        let writable = StateWriter {
            path: dir.path().join("state.json"),
            ..unwritable
        };
        let written = writable.write_if_changed(None).await;
        assert!(written.is_some());
        assert_eq!(writes(&metrics), ("1".into(), "2".into()));
        // unchanged content is not written again, and not counted
        assert_eq!(writable.write_if_changed(written.clone()).await, written);
        assert_eq!(writes(&metrics), ("1".into(), "2".into()));
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}

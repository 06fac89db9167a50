//! The state file (`state.file`): each lock's last-known state, kept across restarts.
//!
//! A source like the others: read at start-up, it turns into the [`LockEvent`]s that restore
//! the gauges before any webhook or poll arrives. Written from [`Metrics::known_locks`]
//! atomically (a temporary file in the same directory, fsync, rename, fsync of the directory),
//! so that a crash leaves either the old file or the new one. Versioned JSON with a format
//! marker: a file of another program or another version is recognised and ignored.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::lock::{KnownLock, LockEvent, Origin};
use crate::store::Metrics;

/// The `format` marker of a state file.
const FORMAT: &str = "nuki-exporter-state";
/// The layout version written; a file of a version not in [`READABLE`] is ignored.
const VERSION: u32 = 2;
/// Versions read: 1 lacks `battery_replaced_at` (2 added it), which reads as not seen.
const READABLE: std::ops::RangeInclusive<u32> = 1..=VERSION;

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
    #[error("state file version {0}, this nuki-exporter reads versions 1 to {VERSION}")]
    Version(u32),
    #[error("state file is damaged: {0}")]
    Damaged(String),
}

/// A lock restored from the state file: its events, and the time they were last true.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredLock {
    pub smartlock_id: u64,
    pub events: Vec<LockEvent>,
    pub updated_at: Option<f64>,
}

/// What a state file held: the locks kept (at most the limit given), and how many it listed.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    pub locks: Vec<RestoredLock>,
    pub listed: usize,
}

/// Bytes one lock takes in a state file at most: three info labels of
/// [`crate::store::lock_store::MAX_INFO_LABEL_LEN`] bytes, each byte escaped in up to six, the status
/// fields and the keys. A file larger than this times the lock limit is no file this exporter
/// wrote for that limit.
pub const MAX_LOCK_BYTES: u64 = 4096;

const NO_MARKER: &str = "it has no \"format\": \"nuki-exporter-state\" marker";

/// Reads a state file as a stream, keeping at most `max_locks` locks (the first ones; the rest
/// are counted and skipped), so that memory follows the limit, not the file.
pub fn parse(mut reader: impl BufRead, max_locks: usize) -> Result<Restored, StateError> {
    let first = loop {
        let buffer = reader
            .fill_buf()
            .map_err(|e| StateError::Damaged(e.to_string()))?;
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(at) => break Some(buffer[at]),
            None if buffer.is_empty() => break None,
            None => {
                let len = buffer.len();
                reader.consume(len);
            }
        }
    };
    if first.is_some_and(|b| b != b'{') {
        return Err(StateError::Foreign("it is not a JSON object".into()));
    }
    let mut verdict = None;
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let read = StateFileSeed {
        max_locks,
        verdict: &mut verdict,
    }
    .deserialize(&mut deserializer)
    .and_then(|contents| deserializer.end().map(|()| contents));
    // A marker that rules the file out stopped the reading: it says why.
    if let Some(refusal) = verdict {
        return Err(refusal);
    }
    let contents = read.map_err(|e| StateError::Damaged(e.to_string()))?;
    if contents.format.as_deref() != Some(FORMAT) {
        return Err(StateError::Foreign(NO_MARKER.into()));
    }
    if !contents
        .version
        .is_some_and(|version| READABLE.contains(&version))
    {
        return Err(StateError::Version(contents.version.unwrap_or(0)));
    }
    if let Some(field) = contents.unknown_field {
        return Err(StateError::Damaged(format!("unknown field {field:?}")));
    }
    let locks = contents
        .locks
        .ok_or_else(|| StateError::Damaged("missing field \"locks\"".into()))?;
    Ok(Restored {
        listed: locks.listed,
        locks: locks
            .kept
            .into_iter()
            .map(|lock| {
                let mut events = vec![LockEvent::Status(lock.status)];
                events.extend(lock.info.map(LockEvent::Info));
                events.extend(
                    lock.battery_replaced_at
                        .map(|at| LockEvent::BatteryReplaced { at }),
                );
                RestoredLock {
                    smartlock_id: lock.smartlock_id,
                    events,
                    updated_at: lock.updated_at,
                }
            })
            .collect(),
    })
}

/// The top-level object of a state file, read in one pass.
struct StateFileSeed<'v> {
    max_locks: usize,
    /// Set when the marker rules the file out, which stops the reading.
    verdict: &'v mut Option<StateError>,
}

#[derive(Default)]
struct Contents {
    format: Option<String>,
    version: Option<u32>,
    locks: Option<KeptLocks>,
    unknown_field: Option<String>,
}

struct KeptLocks {
    kept: Vec<KnownLock>,
    listed: usize,
}

impl<'de> DeserializeSeed<'de> for StateFileSeed<'_> {
    type Value = Contents;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Contents, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StateFileSeed<'_> {
    type Value = Contents;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a nuki-exporter state file")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Contents, A::Error> {
        let mut contents = Contents::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => {
                    let format = map.next_value::<Option<String>>()?;
                    if format.as_deref() != Some(FORMAT) {
                        *self.verdict = Some(StateError::Foreign(NO_MARKER.into()));
                        return Err(A::Error::custom("not a nuki-exporter state file"));
                    }
                    contents.format = format;
                }
                "version" => {
                    let version = map.next_value::<Option<u32>>()?;
                    if !version.is_some_and(|version| READABLE.contains(&version)) {
                        *self.verdict = Some(StateError::Version(version.unwrap_or(0)));
                        return Err(A::Error::custom("another state file version"));
                    }
                    contents.version = version;
                }
                "locks" => {
                    contents.locks = Some(map.next_value_seed(LocksSeed {
                        max_locks: self.max_locks,
                    })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    contents.unknown_field.get_or_insert(key);
                }
            }
        }
        Ok(contents)
    }
}

/// The `locks` array: the first `max_locks` kept, the others only counted.
struct LocksSeed {
    max_locks: usize,
}

impl<'de> DeserializeSeed<'de> for LocksSeed {
    type Value = KeptLocks;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<KeptLocks, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LocksSeed {
    type Value = KeptLocks;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of locks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeptLocks, A::Error> {
        let mut locks = KeptLocks {
            kept: Vec::new(),
            listed: 0,
        };
        loop {
            let more = if locks.kept.len() < self.max_locks {
                seq.next_element::<KnownLock>()?
                    .map(|lock| locks.kept.push(lock))
                    .is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(locks);
            }
            locks.listed += 1;
        }
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

/// Restores the locks of the state file at `path` into `metrics`, at most `max_smartlocks` of
/// them; returns their ids. A missing file is the first start; an unreadable, damaged, foreign
/// or oversized one is reported in one line and ignored.
pub fn restore(path: &Path, metrics: &Metrics, max_smartlocks: usize) -> Vec<u64> {
    let ignore = |reason: &dyn std::fmt::Display| {
        tracing::warn!(file = %path.display(), error = %reason, "ignoring the state file; it is replaced at the next write");
        Vec::new()
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %path.display(), "no state file yet; it is written once a lock is known");
            return Vec::new();
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read the state file; starting without last-known state");
            return Vec::new();
        }
    };
    let cap = u64::try_from(max_smartlocks)
        .unwrap_or(u64::MAX)
        .saturating_add(1)
        .saturating_mul(MAX_LOCK_BYTES);
    let size = file.metadata().map_or(0, |metadata| metadata.len());
    if size > cap {
        return ignore(&format_args!(
            "{size} bytes, more than the {cap} that limits.max_smartlocks ({max_smartlocks}) locks can take"
        ));
    }
    // No further than the cap, should the file grow meanwhile.
    let reader = std::io::BufReader::new(file.take(cap));
    match parse(reader, max_smartlocks) {
        Ok(restored) => {
            if restored.listed > restored.locks.len() {
                tracing::warn!(file = %path.display(), listed = restored.listed, kept = restored.locks.len(), "the state file lists more locks than limits.max_smartlocks; the first ones are kept");
            }
            tracing::info!(file = %path.display(), locks = restored.locks.len(), "last-known state restored");
            restored
                .locks
                .into_iter()
                .map(|lock| {
                    metrics.observe(
                        lock.smartlock_id,
                        Origin::StateFile,
                        &lock.events,
                        lock.updated_at.unwrap_or_default(),
                    );
                    lock.smartlock_id
                })
                .collect()
        }
        Err(error) => ignore(&error),
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
            battery_replaced_at: Some(1_699_000_000.25),
        }
    }

    #[test]
    fn a_written_file_reads_back_as_the_same_events() {
        let bytes = encode(vec![lock(9), lock(3)]);
        let restored = parse(&bytes[..], usize::MAX).unwrap();
        assert_eq!(restored.listed, 2);
        let restored = restored.locks;
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
                    LockEvent::Info(expected.info.unwrap()),
                    LockEvent::BatteryReplaced {
                        at: 1_699_000_000.25
                    },
                ],
                updated_at: Some(1_700_000_000.5),
            }
        );
    }

    /// Times with every bit of an f64 in use come back bit for bit: serde_json's default float
    /// parser may be one unit in the last place off (it reads 1726538529.5917735 for 1726538529.5917737).
    #[test]
    fn times_read_back_bit_for_bit() {
        let at = 1_726_538_529.591_773_7_f64;
        let mut kept = lock(5);
        kept.updated_at = Some(at);
        kept.battery_replaced_at = Some(at);
        let restored = parse(&encode(vec![kept])[..], usize::MAX).unwrap().locks;
        assert_eq!(restored[0].updated_at.map(f64::to_bits), Some(at.to_bits()));
        assert!(
            restored[0]
                .events
                .contains(&LockEvent::BatteryReplaced { at }),
            "{:?}",
            restored[0].events
        );
    }

    #[test]
    fn truncated_foreign_and_other_version_files_are_told_apart() {
        let bytes = encode(vec![lock(1)]);
        let truncated = parse(&bytes[..bytes.len() / 2], 10).unwrap_err();
        assert!(matches!(truncated, StateError::Damaged(_)), "{truncated}");
        for foreign in [
            b"locks: []\n".as_slice(),
            b"[1,2,3]",
            br#"{"format":"something-else","version":1,"locks":[]}"#,
            b"",
        ] {
            let error = parse(foreign, 10).unwrap_err();
            assert!(
                matches!(error, StateError::Foreign(_) | StateError::Damaged(_)),
                "{error}"
            );
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        assert!(matches!(
            parse(
                &br#"{"format":"something-else","version":1,"locks":[]}"#[..],
                10
            ),
            Err(StateError::Foreign(_))
        ));
        assert!(matches!(
            parse(
                &br#"{"format":"nuki-exporter-state","version":3,"locks":[]}"#[..],
                10
            ),
            Err(StateError::Version(3))
        ));
        assert!(matches!(
            parse(
                &br#"{"format":"nuki-exporter-state","version":1,"locks":[{"smartlock_id":"x"}]}"#
                    [..],
                10
            ),
            Err(StateError::Damaged(_))
        ));
    }

    /// `(success, failure)` of `nuki_exporter_state_file_writes_total` in `metrics`.
    fn writes(metrics: &Metrics) -> (String, String) {
        let text = crate::store::registry_text(metrics.registry());
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
        let metrics = Arc::new(Metrics::new(crate::store::lock_store::Limits::from(
            &crate::config::Config::default().limits,
        )));
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

        metrics.observe(
            7,
            Origin::StateFile,
            &[LockEvent::Status(lock(7).status)],
            1_700_000_000.0,
        );
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
    fn a_version_1_file_loads_without_a_battery_change() {
        let file = br#"{"format":"nuki-exporter-state","version":1,"locks":[
            {"smartlock_id":7,"status":{"battery_charge_percent":55},"info":null,"updated_at":12.5}]}"#;
        let restored = parse(&file[..], 10).unwrap().locks;
        assert_eq!(
            restored,
            [RestoredLock {
                smartlock_id: 7,
                events: vec![LockEvent::Status(LockStatus {
                    battery_charge_percent: Some(55),
                    ..LockStatus::default()
                })],
                updated_at: Some(12.5),
            }]
        );
    }

    #[test]
    fn only_the_first_locks_up_to_the_limit_are_kept_and_the_rest_counted() {
        let bytes = encode((1..=1000).map(lock).collect());
        let restored = parse(&bytes[..], 10).unwrap();
        assert_eq!(restored.listed, 1000);
        assert_eq!(
            restored
                .locks
                .iter()
                .map(|l| l.smartlock_id)
                .collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        // Skipped locks are still read: a damaged one past the limit damages the file.
        let mut damaged = bytes.clone();
        let at = damaged.len() - 10;
        damaged.splice(at..at, *b"\"x\":");
        assert!(matches!(
            parse(&damaged[..], 10),
            Err(StateError::Damaged(_))
        ));
        // The marker after the locks is checked too.
        let late_marker =
            br#"{"locks":[{"smartlock_id":1}],"version":1,"format":"nuki-exporter-state"}"#;
        assert_eq!(parse(&late_marker[..], 10).unwrap().locks.len(), 1);
        let late_foreign = br#"{"locks":[{"smartlock_id":1}],"format":"other"}"#;
        assert!(matches!(
            parse(&late_foreign[..], 10),
            Err(StateError::Foreign(_))
        ));
        let unknown = br#"{"format":"nuki-exporter-state","version":1,"locks":[],"extra":1}"#;
        assert!(matches!(
            parse(&unknown[..], 10),
            Err(StateError::Damaged(_))
        ));
    }

    #[test]
    fn a_file_larger_than_the_limit_allows_is_ignored_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let metrics = Metrics::new(crate::store::Limits {
            max_smartlocks: 10,
            ..crate::store::lock_store::Limits::from(&crate::config::Config::default().limits)
        });
        std::fs::write(&path, encode((1..=3).map(lock).collect())).unwrap();
        assert_eq!(restore(&path, &metrics, 2), [1, 2]);
        let mut large = encode(vec![lock(1)]);
        large.resize(usize::try_from(3 * MAX_LOCK_BYTES).unwrap() + 1, b' ');
        std::fs::write(&path, large).unwrap();
        assert!(restore(&path, &metrics, 2).is_empty());
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

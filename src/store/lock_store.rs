//! The per-lock series: a table made for them, written straight into the text exposition.
//!
//! Every lock is one row of numbers and small codes (operations interned to an index, error
//! codes a byte, log actions an enum), instead of a `prometheus` child per series with its own
//! label strings and HELP copy. The rows live in shards, so a scrape holds each shard only while
//! writing that shard's part of one family, and a webhook waits at most that long. Every series
//! is taken from a budget (`limits.max_series` in all, `limits.max_series_per_lock` per lock);
//! a series the budget refuses is counted, and nothing already counted changes.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use prometheus::{IntCounter, IntGauge};
use smallvec::SmallVec;

use crate::catalogue;
use crate::config::LimitsConfig;
use crate::lock::{CompletionState, ErrorCode, LogAction, LogEntry};
use crate::lock::{KnownLock, LockEvent, LockInfo, LockStatus, Origin, battery_replaced};
use crate::util::background::pause_point;

/// `smartlock_id` of counters for ids beyond `limits.max_smartlocks`, and label value of
/// operations beyond `limits.max_operations`.
pub const OVERFLOW: &str = "other";
/// Label value where a webhook names no lock or no operation.
pub const UNNAMED: &str = "unknown";
/// Longest `operation` label value kept; longer ones count as `other`.
pub const MAX_OPERATION_LEN: usize = 64;
/// Longest `nuki_smartlock_info` label value (`name`, `device_type`, `firmware_version`) kept;
/// longer ones are cut at a character boundary.
pub const MAX_INFO_LABEL_LEN: usize = 128;

/// Shards of the lock table: a scrape holds one shard at a time.
const SHARDS: usize = 64;

/// How many locks, operations and series the store may hold (`limits.*`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_smartlocks: usize,
    pub max_operations: usize,
    pub max_series: usize,
    pub max_series_per_lock: usize,
}

impl From<&LimitsConfig> for Limits {
    fn from(limits: &LimitsConfig) -> Self {
        Self {
            max_smartlocks: limits.max_smartlocks,
            max_operations: limits.max_operations,
            max_series: limits.max_series,
            max_series_per_lock: limits.max_series_per_lock,
        }
    }
}

/// The registry counters the store moves when it refuses something.
#[derive(Clone, Debug)]
pub struct Overflow {
    /// An id beyond `limits.max_smartlocks`, counted under `other`.
    pub smartlock_id: IntCounter,
    /// An operation beyond `limits.max_operations`, counted as `other`.
    pub operation: IntCounter,
    /// A series refused by `limits.max_series` or `limits.max_series_per_lock`.
    pub series: IntCounter,
    /// `nuki_exporter_smartlocks_tracked`.
    pub tracked: IntGauge,
}

/// An interned `operation` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation(u16);

impl Operation {
    pub const UNNAMED: Operation = Operation(0);
    pub const OVERFLOW: Operation = Operation(1);

    /// Dense from 0: `unknown`, `other`, then the values in the order they were first seen.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// The counters of one `smartlock_id` label value, and how many series it holds in all.
/// Most locks have one operation and one error code: those live in the row itself.
#[derive(Debug, Default)]
struct Counters {
    series: u32,
    operations: SmallVec<[(Operation, u64); 1]>,
    errors: SmallVec<[(Operation, ErrorCode, u64); 1]>,
    activity: Vec<(Option<LogAction>, Option<CompletionState>, u64)>,
}

/// One tracked lock: small, since counting an API result (the hot path) reads it.
#[derive(Debug, Default)]
struct LockRow {
    /// Unix time of the lock's last webhook: a lock only polled has no last-seen series.
    last_seen: Option<f64>,
    counters: Counters,
    /// State and info, once some source reported them.
    known: Option<Box<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    /// Every state field some source reported, the newest value of each: a gauge each.
    status: LockStatus,
    info: Option<LockInfo>,
    /// Unix time of the last event that reported state or info.
    updated_at: f64,
    /// The way that last event came in (the status page shows it; no series).
    reported_by: Option<Origin>,
    /// Unix time at which the last battery change was seen: a series of its own.
    battery_replaced_at: Option<f64>,
}

impl Known {
    /// Whether the lock has a state or info series, and so its state timestamp series.
    fn is_exposed(&self) -> bool {
        known_series(&self.status, self.info.is_some()) > 0
    }
}

impl LockRow {
    fn status(&self) -> Option<&LockStatus> {
        self.known.as_ref().map(|known| &known.status)
    }

    fn info(&self) -> Option<&LockInfo> {
        self.known.as_ref().and_then(|known| known.info.as_ref())
    }
}

/// What this replica knows of one lock, for the status page.
#[derive(Clone, Debug, PartialEq)]
pub struct LockView {
    pub smartlock_id: u64,
    pub status: LockStatus,
    pub info: Option<LockInfo>,
    /// Unix time of the last report of state or info, and the way it came in.
    pub reported_at: Option<f64>,
    pub reported_by: Option<Origin>,
    /// Unix time of the lock's last webhook.
    pub last_seen: Option<f64>,
    pub battery_replaced_at: Option<f64>,
    /// API results counted since start, all operations together.
    pub results: u64,
    /// Failed operations counted since start: operation, error code, count.
    pub failures: Vec<(String, ErrorCode, u64)>,
}

impl LockView {
    fn of(smartlock_id: u64, row: &LockRow, operations: &[Box<str>]) -> Self {
        let known = row.known.as_deref();
        let name = |operation: Operation| {
            operations
                .get(operation.index())
                .map_or(OVERFLOW, |name| &**name)
                .to_owned()
        };
        Self {
            smartlock_id,
            status: row.status().copied().unwrap_or_default(),
            info: row.info().cloned(),
            reported_at: known.map(|known| known.updated_at),
            reported_by: known.and_then(|known| known.reported_by),
            last_seen: row.last_seen,
            battery_replaced_at: known.and_then(|known| known.battery_replaced_at),
            results: row.counters.operations.iter().map(|(_, n)| n).sum(),
            failures: row
                .counters
                .errors
                .iter()
                .map(|&(operation, code, count)| (name(operation), code, count))
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    locks: HashMap<u64, LockRow>,
}

/// Counters under a shared `smartlock_id`: ids beyond the cap, and webhooks naming no lock.
#[derive(Debug, Default)]
struct SharedRows {
    overflow: Counters,
    unnamed: Counters,
}

/// Where an API result or log entry is counted.
enum Slot<'s> {
    Tracked(&'s mut LockRow),
    Shared(&'s mut Counters),
}

pub struct LockStore {
    limits: Limits,
    overflow: Overflow,
    shards: Box<[Mutex<Shard>]>,
    shared: Mutex<SharedRows>,
    /// Locks tracked, at most `max_smartlocks`.
    locks: AtomicUsize,
    /// Series held, at most `max_series`.
    series: AtomicUsize,
    /// Operation label values by index; the first two are `unknown` and `other`.
    operations: RwLock<Vec<Box<str>>>,
    /// Size of the last exposition: the next buffer starts at it.
    last_size: AtomicUsize,
}

impl std::fmt::Debug for LockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockStore")
            .field("limits", &self.limits)
            .field("locks", &self.locks)
            .field("series", &self.series)
            .finish_non_exhaustive()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LockStore {
    pub fn new(limits: Limits, overflow: Overflow) -> Self {
        Self {
            limits,
            overflow,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shared: Mutex::default(),
            locks: AtomicUsize::new(0),
            series: AtomicUsize::new(0),
            operations: RwLock::new(vec![UNNAMED.into(), OVERFLOW.into()]),
            last_size: AtomicUsize::new(64 * 1024),
        }
    }

    /// How many locks, operations and series the store may hold.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        locked(&self.shards[(id % SHARDS as u64) as usize])
    }

    /// The interned operation and its label value: the value itself while there is room for
    /// it, `other` once `max_operations` distinct values were seen (counted), `unknown` for none.
    pub fn operation<'v>(&self, value: Option<&'v str>) -> (Operation, &'v str) {
        let Some(value) = value else {
            return (Operation::UNNAMED, UNNAMED);
        };
        // A scan: at most `max_operations` (64) short names, no slower than hashing the value.
        let find = |names: &[Box<str>]| names[2..].iter().position(|n| **n == *value);
        let names = self
            .operations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = find(&names) {
            return (Operation(index as u16 + 2), value);
        }
        drop(names);
        let mut names = self
            .operations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = find(&names) {
            return (Operation(index as u16 + 2), value);
        }
        let room = names.len() - 2 < self.limits.max_operations.min(usize::from(u16::MAX) - 2);
        if value.len() <= MAX_OPERATION_LEN && room {
            names.push(value.into());
            return (Operation(names.len() as u16 - 1), value);
        }
        self.overflow.operation.inc();
        (Operation::OVERFLOW, OVERFLOW)
    }

    /// Takes `count` series from the budget for a row holding `held`; counts a refusal.
    fn take(&self, held: &mut u32, count: u32) -> bool {
        if count == 0 {
            return true;
        }
        let per_lock = self.limits.max_series_per_lock;
        let fits = (*held + count) as usize <= per_lock
            && self
                .series
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    (held + count as usize <= self.limits.max_series)
                        .then_some(held + count as usize)
                })
                .is_ok();
        if fits {
            *held += count;
        } else {
            self.overflow.series.inc();
        }
        fits
    }

    /// Counts an API result (an operation, failed with `failure` or not) for a lock.
    pub fn count_result(
        &self,
        id: Option<u64>,
        operation: Operation,
        failure: Option<ErrorCode>,
        now: f64,
    ) {
        self.with_slot(id, |store, slot| {
            let counters = match slot {
                Slot::Tracked(row) => store.seen(row, now),
                Slot::Shared(counters) => counters,
            };
            store.increment(
                counters,
                |c| &mut c.operations,
                |(op, _)| *op == operation,
                || (operation, 0),
                |(_, n)| n,
            );
            if let Some(code) = failure {
                store.increment(
                    counters,
                    |c| &mut c.errors,
                    |(op, c, _)| *op == operation && *c == code,
                    || (operation, code, 0),
                    |(_, _, n)| n,
                );
            }
        });
    }

    /// Counts an activity-log entry for a lock.
    pub fn count_log_entry(&self, id: u64, entry: &LogEntry, now: f64) {
        self.with_slot(Some(id), |store, slot| {
            let counters = match slot {
                Slot::Tracked(row) => store.seen(row, now),
                Slot::Shared(counters) => counters,
            };
            let key = (entry.action, entry.completion_state);
            store.increment(
                counters,
                |c| &mut c.activity,
                |(a, s, _)| (*a, *s) == key,
                || (key.0, key.1, 0),
                |(_, _, n)| n,
            );
        });
    }

    /// Moves the lock's last-seen time (the lock itself sent something); returns its counters.
    fn seen<'r>(&self, row: &'r mut LockRow, now: f64) -> &'r mut Counters {
        if row.last_seen.is_some() || self.take(&mut row.counters.series, 1) {
            row.last_seen = Some(now);
        }
        &mut row.counters
    }

    /// Adds 1 to the series `matches` finds in one of `counters`' lists, creating it at 0 first
    /// if the budget has room.
    fn increment<L: std::ops::DerefMut<Target = [T]> + Extend<T>, T>(
        &self,
        counters: &mut Counters,
        list: impl Fn(&mut Counters) -> &mut L,
        matches: impl Fn(&T) -> bool,
        new: impl FnOnce() -> T,
        value: impl Fn(&mut T) -> &mut u64,
    ) {
        if let Some(entry) = list(counters).iter_mut().find(|entry| matches(entry)) {
            *value(entry) += 1;
            return;
        }
        if self.take(&mut counters.series, 1) {
            let mut entry = new();
            *value(&mut entry) = 1;
            list(counters).extend([entry]);
        }
    }

    /// Runs `f` on the row of `id`, admitting the lock if there is room, or on the shared
    /// counters (`other` beyond `max_smartlocks`, `unknown` without an id).
    fn with_slot(&self, id: Option<u64>, f: impl FnOnce(&Self, Slot<'_>)) {
        let Some(id) = id else {
            return f(self, Slot::Shared(&mut locked(&self.shared).unnamed));
        };
        let mut shard = self.shard(id);
        if let Some(row) = shard.locks.get_mut(&id) {
            return f(self, Slot::Tracked(row));
        }
        if !self.admit_lock() {
            drop(shard);
            return f(self, Slot::Shared(&mut locked(&self.shared).overflow));
        }
        f(self, Slot::Tracked(shard.locks.entry(id).or_default()));
    }

    /// Takes a lock slot; counts an id beyond `max_smartlocks`.
    fn admit_lock(&self) -> bool {
        let admitted = self
            .locks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |locks| {
                (locks < self.limits.max_smartlocks).then_some(locks + 1)
            });
        match admitted {
            Ok(before) => {
                self.overflow.tracked.set(before as i64 + 1);
                true
            }
            Err(_) => {
                self.overflow.smartlock_id.inc();
                false
            }
        }
    }

    /// Records what a source learned about one lock at `now`, having come in by `origin`.
    /// Locks beyond `max_smartlocks` get no gauges; `Removed` drops every series of the lock,
    /// in the time of its own series.
    pub fn observe(&self, id: u64, origin: Origin, events: &[LockEvent], now: f64) {
        if events.contains(&LockEvent::Removed) {
            return self.remove(id);
        }
        self.with_slot(Some(id), |store, slot| {
            let Slot::Tracked(row) = slot else { return };
            for event in events {
                match event {
                    LockEvent::Seen => {
                        store.seen(row, now);
                    }
                    LockEvent::Status(status) => {
                        let known = row.known.get_or_insert_default();
                        let replaced = battery_replaced(&known.status, status);
                        let mut merged = known.status;
                        merged.merge(status);
                        let has_info = known.info.is_some();
                        let added =
                            known_series(&merged, has_info) - known_series(&known.status, has_info);
                        if store.take(&mut row.counters.series, added) {
                            known.status = merged;
                        } else {
                            let update = reported_where_known(&known.status, status);
                            known.status.merge(&update);
                        }
                        known.updated_at = now;
                        known.reported_by = Some(origin);
                        if replaced {
                            store.record_battery_change(row, now);
                        }
                    }
                    LockEvent::Info(info) => {
                        let known = row.known.get_or_insert_default();
                        match &mut known.info {
                            Some(known_info) => known_info.merge(&bounded_info(info)),
                            None if store.take(
                                &mut row.counters.series,
                                known_series(&known.status, true)
                                    - known_series(&known.status, false),
                            ) =>
                            {
                                known.info = Some(bounded_info(info));
                            }
                            None => {}
                        }
                        known.updated_at = now;
                        known.reported_by = Some(origin);
                    }
                    LockEvent::BatteryReplaced { at } => store.record_battery_change(row, *at),
                    LockEvent::Removed => {}
                }
            }
        });
    }

    /// Remembers a battery change at `at`; a lock's first one takes a series from the budget.
    fn record_battery_change(&self, row: &mut LockRow, at: f64) {
        let known = row.known.get_or_insert_default();
        if known.battery_replaced_at.is_some() || self.take(&mut row.counters.series, 1) {
            known.battery_replaced_at = Some(at);
        }
    }

    fn remove(&self, id: u64) {
        let Some(row) = self.shard(id).locks.remove(&id) else {
            return;
        };
        self.series
            .fetch_sub(row.counters.series as usize, Ordering::Relaxed);
        let before = self.locks.fetch_sub(1, Ordering::Relaxed);
        self.overflow.tracked.set(before as i64 - 1);
    }

    /// Every tracked lock that some source reported state or info for.
    pub fn known_locks(&self) -> Vec<KnownLock> {
        let mut known = Vec::new();
        for shard in self.shards.iter() {
            let shard = locked(shard);
            known.extend(shard.locks.iter().filter_map(|(&smartlock_id, row)| {
                row.known.as_ref().map(|known| KnownLock {
                    smartlock_id,
                    status: known.status,
                    info: known.info.clone(),
                    updated_at: Some(known.updated_at),
                    battery_replaced_at: known.battery_replaced_at,
                })
            }));
        }
        known
    }

    /// Every tracked lock as the status page shows it.
    pub fn lock_views(&self) -> Vec<LockView> {
        let operations = self.operation_names();
        let mut views = Vec::new();
        for shard in self.shards.iter() {
            let shard = locked(shard);
            views.extend(
                shard
                    .locks
                    .iter()
                    .map(|(&id, row)| LockView::of(id, row, &operations)),
            );
        }
        views
    }

    /// One tracked lock as the status page shows it.
    pub fn lock_view(&self, id: u64) -> Option<LockView> {
        let operations = self.operation_names();
        let shard = self.shard(id);
        shard
            .locks
            .get(&id)
            .map(|row| LockView::of(id, row, &operations))
    }

    fn operation_names(&self) -> Vec<Box<str>> {
        self.operations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The ids of every lock with series of its own.
    pub fn tracked_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        for shard in self.shards.iter() {
            ids.extend(locked(shard).locks.keys().copied());
        }
        ids
    }

    /// Series held now.
    pub fn series(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    /// The text exposition (format 0.0.4) of every per-lock series, as the `prometheus`
    /// crate's `TextEncoder` writes them, appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(self.last_size.load(Ordering::Relaxed) + 4096);
        let operations = self
            .operations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let op = |operation: Operation| &*operations[usize::from(operation.0)];
        let codes: Vec<String> = (0..=u8::MAX).map(catalogue::hex_label).collect();
        let error_labels = |code: ErrorCode| match code {
            ErrorCode::Code(byte) => (codes[usize::from(byte)].as_str(), catalogue::name_of(byte)),
            ErrorCode::Invalid => ("invalid", "INVALID"),
            ErrorCode::Missing => ("missing", "MISSING"),
        };

        self.counter_family(
            out,
            &ERRORS,
            |c| !c.errors.is_empty(),
            |out, id, counters| {
                for &(operation, code, count) in &counters.errors {
                    let (code, name) = error_labels(code);
                    let labels = [
                        ("error_code", code),
                        ("error_name", name),
                        ("operation", op(operation)),
                        ("smartlock_id", id),
                    ];
                    sample(out, ERRORS.name, &labels, Value::Int(count as i64));
                }
            },
        );
        self.counter_family(
            out,
            &OPERATIONS,
            |c| !c.operations.is_empty(),
            |out, id, counters| {
                for &(operation, count) in &counters.operations {
                    let labels = [("operation", op(operation)), ("smartlock_id", id)];
                    sample(out, OPERATIONS.name, &labels, Value::Int(count as i64));
                }
            },
        );
        self.counter_family(
            out,
            &ACTIVITY,
            |c| !c.activity.is_empty(),
            |out, id, counters| {
                for &(action, state, count) in &counters.activity {
                    let labels = [
                        ("action", action.map_or("missing", LogAction::label)),
                        (
                            "completion_state",
                            state.map_or("missing", CompletionState::label),
                        ),
                        ("smartlock_id", id),
                    ];
                    sample(out, ACTIVITY.name, &labels, Value::Int(count as i64));
                }
            },
        );
        self.status_family(out, &BATTERY_CHARGE, |s| s.battery_charge_percent);
        self.status_family(out, &BATTERY_CHARGING, |s| {
            s.battery_charging.map(i64::from)
        });
        let any_critical = |row: &LockRow| {
            row.status().is_some_and(|status| {
                status.battery_critical.is_some()
                    || status.keypad_battery_critical.is_some()
                    || status.doorsensor_battery_critical.is_some()
            })
        };
        self.gauge_family(out, &BATTERY_CRITICAL, any_critical, |out, id, row| {
            let Some(status) = row.status() else { return };
            let batteries = [
                ("lock", status.battery_critical),
                ("keypad", status.keypad_battery_critical),
                ("doorsensor", status.doorsensor_battery_critical),
            ];
            for (battery, critical) in batteries {
                if let Some(critical) = critical {
                    let labels = [("battery", battery), ("smartlock_id", id)];
                    sample(
                        out,
                        BATTERY_CRITICAL.name,
                        &labels,
                        Value::Int(critical.into()),
                    );
                }
            }
        });
        let replaced_at = |row: &LockRow| row.known.as_ref().and_then(|k| k.battery_replaced_at);
        self.gauge_family(
            out,
            &BATTERY_REPLACED,
            |row| replaced_at(row).is_some(),
            |out, id, row| {
                if let Some(at) = replaced_at(row) {
                    let labels = [("smartlock_id", id)];
                    sample(out, BATTERY_REPLACED.name, &labels, Value::Float(at));
                }
            },
        );
        self.status_family(out, &DOOR_STATE, |s| s.door_state);
        self.gauge_family(
            out,
            &INFO,
            |row| row.info().is_some(),
            |out, id, row| {
                if let Some(info) = row.info() {
                    let labels = [
                        (
                            "device_type",
                            info.device_type.as_deref().unwrap_or(UNNAMED),
                        ),
                        (
                            "firmware_version",
                            info.firmware_version.as_deref().unwrap_or(UNNAMED),
                        ),
                        ("name", info.name.as_deref().unwrap_or_default()),
                        ("smartlock_id", id),
                    ];
                    sample(out, INFO.name, &labels, Value::Int(1));
                }
            },
        );
        self.gauge_family(
            out,
            &LAST_SEEN,
            |row| row.last_seen.is_some(),
            |out, id, row| {
                if let Some(seen) = row.last_seen {
                    sample(
                        out,
                        LAST_SEEN.name,
                        &[("smartlock_id", id)],
                        Value::Float(seen),
                    );
                }
            },
        );
        self.status_family(out, &LOCK_STATE, |s| s.lock_state);
        self.status_family(out, &MODE, |s| s.mode);
        self.status_family(out, &SERVER_STATE, |s| s.server_state);
        self.gauge_family(
            out,
            &STATE_TIMESTAMP,
            |row| row.known.as_deref().is_some_and(Known::is_exposed),
            |out, id, row| {
                if let Some(known) = row.known.as_deref().filter(|known| known.is_exposed()) {
                    let labels = [("smartlock_id", id)];
                    sample(
                        out,
                        STATE_TIMESTAMP.name,
                        &labels,
                        Value::Float(known.updated_at),
                    );
                }
            },
        );
        self.last_size.store(out.len() - start, Ordering::Relaxed);
    }

    /// Writes a counter family: every tracked lock's series, then `other`'s and `unknown`'s.
    fn counter_family(
        &self,
        out: &mut Vec<u8>,
        family: &Family,
        has: impl Fn(&Counters) -> bool,
        mut write: impl FnMut(&mut Vec<u8>, &str, &Counters),
    ) {
        self.family(out, family, |out| {
            self.each_row(
                out,
                |row| has(&row.counters),
                |out, id, row| write(out, id, &row.counters),
            );
            let shared = locked(&self.shared);
            for (id, counters) in [(OVERFLOW, &shared.overflow), (UNNAMED, &shared.unnamed)] {
                if has(counters) {
                    write(out, id, counters);
                }
            }
        });
    }

    /// Writes a gauge family of one state field.
    fn status_family(
        &self,
        out: &mut Vec<u8>,
        family: &Family,
        field: impl Fn(&LockStatus) -> Option<i64>,
    ) {
        self.gauge_family(
            out,
            family,
            |row| row.status().and_then(&field).is_some(),
            |out, id, row| {
                if let Some(value) = row.status().and_then(&field) {
                    sample(out, family.name, &[("smartlock_id", id)], Value::Int(value));
                }
            },
        );
    }

    fn gauge_family(
        &self,
        out: &mut Vec<u8>,
        family: &Family,
        has: impl Fn(&LockRow) -> bool,
        write: impl FnMut(&mut Vec<u8>, &str, &LockRow),
    ) {
        self.family(out, family, |out| self.each_row(out, has, write));
    }

    /// Calls `write` for every tracked lock that `has` series of the family, with its
    /// `smartlock_id` label value, one shard held at a time.
    fn each_row(
        &self,
        out: &mut Vec<u8>,
        has: impl Fn(&LockRow) -> bool,
        mut write: impl FnMut(&mut Vec<u8>, &str, &LockRow),
    ) {
        let mut label = itoa::Buffer::new();
        for shard in self.shards.iter() {
            let shard = locked(shard);
            for (&id, row) in &shard.locks {
                if has(row) {
                    write(out, label.format(id), row);
                }
            }
            drop(shard);
            pause_point();
        }
    }

    /// Writes HELP and TYPE and the family's samples; nothing if it has none, as the
    /// `prometheus` registry leaves out a family without series.
    fn family(&self, out: &mut Vec<u8>, family: &Family, samples: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n",
            name = family.name,
            help = family.help,
            kind = family.kind
        );
        let header = out.len();
        samples(out);
        if out.len() == header {
            out.truncate(start);
        }
    }
}

/// Series of a lock's state gauges: one per reported field.
fn gauge_series(status: &LockStatus) -> u32 {
    let fields = [
        status.battery_charge_percent.is_some(),
        status.battery_critical.is_some(),
        status.keypad_battery_critical.is_some(),
        status.doorsensor_battery_critical.is_some(),
        status.lock_state.is_some(),
        status.door_state.is_some(),
        status.server_state.is_some(),
        status.mode.is_some(),
        status.battery_charging.is_some(),
    ];
    fields.into_iter().map(u32::from).sum()
}

/// Series of a lock's state and info: a gauge per reported field, the info series, and the
/// state timestamp that goes with them.
fn known_series(status: &LockStatus, has_info: bool) -> u32 {
    let exposed = gauge_series(status) + u32::from(has_info);
    exposed + u32::from(exposed > 0)
}

/// The fields of `newer` that `known` already has: new values for existing series only.
fn reported_where_known(known: &LockStatus, newer: &LockStatus) -> LockStatus {
    LockStatus {
        battery_charge_percent: known
            .battery_charge_percent
            .and(newer.battery_charge_percent),
        battery_critical: known.battery_critical.and(newer.battery_critical),
        keypad_battery_critical: known
            .keypad_battery_critical
            .and(newer.keypad_battery_critical),
        doorsensor_battery_critical: known
            .doorsensor_battery_critical
            .and(newer.doorsensor_battery_critical),
        lock_state: known.lock_state.and(newer.lock_state),
        door_state: known.door_state.and(newer.door_state),
        server_state: known.server_state.and(newer.server_state),
        mode: known.mode.and(newer.mode),
        battery_charging: known.battery_charging.and(newer.battery_charging),
    }
}

/// An info label value cut to [`MAX_INFO_LABEL_LEN`] bytes, at a character boundary.
pub fn bounded_label(value: &str) -> &str {
    let mut end = value.len().min(MAX_INFO_LABEL_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// `info` with every label value cut to [`MAX_INFO_LABEL_LEN`] bytes.
fn bounded_info(info: &LockInfo) -> LockInfo {
    let cut = |value: &Option<String>| {
        value
            .as_deref()
            .map(|value| bounded_label(value).to_owned())
    };
    LockInfo {
        name: cut(&info.name),
        device_type: cut(&info.device_type),
        firmware_version: cut(&info.firmware_version),
    }
}

/// A metric family the store writes.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: "counter",
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: "gauge",
    }
}

pub const ERRORS: Family = counter(
    "nuki_operation_errors_total",
    "Failed API webhook entities (detail[] or flat result, by type, errorCode, smartlockId).",
);
pub const OPERATIONS: Family = counter(
    "nuki_operations_total",
    "API webhook entity results, success or not (detail[] or flat result, by type, smartlockId).",
);
pub const ACTIVITY: Family = counter(
    "nuki_smartlock_activity_log_entries_total",
    "Activity-log entries from DEVICE_LOGS smartlockLog, by action and completion state (smartlockLog.state).",
);
pub const BATTERY_CHARGE: Family = gauge(
    "nuki_smartlock_battery_charge_percent",
    "Battery charge in percent, from DEVICE_STATUS state.batteryCharge.",
);
pub const BATTERY_CHARGING: Family = gauge(
    "nuki_smartlock_battery_charging",
    "1 while a Nuki battery pack charges, from state.batteryCharging (Bridge: batteryCharging).",
);
pub const BATTERY_CRITICAL: Family = gauge(
    "nuki_smartlock_battery_critical",
    "1 when a battery is critical, from DEVICE_STATUS state.batteryCritical (lock), state.keypadBatteryCritical (keypad) and state.doorsensorBatteryCritical (doorsensor).",
);
pub const BATTERY_REPLACED: Family = gauge(
    "nuki_smartlock_battery_replaced_timestamp_seconds",
    "Unix time at which this exporter last saw a battery change: the charge jumped up by 20 points or more while no pack charged. Kept in the state file and restored unchanged.",
);
pub const DOOR_STATE: Family = gauge(
    "nuki_smartlock_door_state",
    "Door state from DEVICE_STATUS state.doorState: 0 unavailable, 1 deactivated, 2 closed, 3 opened, 4 unknown, 5 calibrating, 16 uncalibrated, 240 removed, 255 unknown.",
);
pub const INFO: Family = gauge(
    "nuki_smartlock_info",
    "Always 1: a lock's DEVICE_MASTERDATA name, type (device_type) and firmwareVersion (decoded one byte per part).",
);
pub const LAST_SEEN: Family = gauge(
    "nuki_smartlock_last_seen_timestamp_seconds",
    "Unix time of the last webhook naming this smartlockId.",
);
pub const LOCK_STATE: Family = gauge(
    "nuki_smartlock_lock_state",
    "Lock state from DEVICE_STATUS state.state: 0 uncalibrated, 1 locked, 2 unlocking, 3 unlocked, 4 locking, 5 unlatched, 6 unlocked (lock 'n' go), 7 unlatching, 254 motor blocked, 255 undefined (opener codes differ).",
);
pub const MODE: Family = gauge(
    "nuki_smartlock_mode",
    "Operating mode from state.mode (Bridge: mode): 0 uninitialised, 1 pairing, 2 door, 3 continuous (opener), 4 maintenance, 5 off-door charging.",
);
pub const STATE_TIMESTAMP: Family = gauge(
    "nuki_smartlock_state_timestamp_seconds",
    "Unix time at which this lock's state or info was last reported to this exporter, by any source (webhook, Web API poll, Bridge poll or callback); restored unchanged from the state file. Replicas compare it: the newest report wins.",
);
pub const SERVER_STATE: Family = gauge(
    "nuki_smartlock_server_state",
    "Server state from DEVICE_STATUS / DEVICE_MASTERDATA serverState: 0 ok, 1 unregistered, 2 auth UUID invalid, 3 auth invalid, 4 offline.",
);

/// Every family the store writes.
pub const FAMILIES: [&Family; 14] = [
    &ERRORS,
    &OPERATIONS,
    &ACTIVITY,
    &BATTERY_CHARGE,
    &BATTERY_CHARGING,
    &BATTERY_CRITICAL,
    &BATTERY_REPLACED,
    &DOOR_STATE,
    &INFO,
    &LAST_SEEN,
    &LOCK_STATE,
    &MODE,
    &SERVER_STATE,
    &STATE_TIMESTAMP,
];

enum Value {
    Int(i64),
    Float(f64),
}

/// One sample line; label names in alphabetical order, as the `prometheus` crate sorts them.
fn sample(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)], value: Value) {
    out.extend_from_slice(name.as_bytes());
    let mut separator = b'{';
    for (label, value) in labels {
        out.push(separator);
        out.extend_from_slice(label.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(out, value);
        out.push(b'"');
        separator = b',';
    }
    out.extend_from_slice(b"} ");
    match value {
        // The crate writes every value as an f64; integers below 2^53 read the same.
        Value::Int(value) => out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes()),
        Value::Float(value) => {
            let _ = write!(out, "{value}");
        }
    }
    out.push(b'\n');
}

/// Escapes a label value as the text format requires: backslash, double quote, line feed.
fn escape_label_value(out: &mut Vec<u8>, value: &str) {
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'"' => b"\\\"",
            _ => b"\\n",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

    use super::*;

    fn store(limits: Limits) -> (LockStore, Overflow) {
        let counter = |name| IntCounter::new(name, "test").unwrap();
        let overflow = Overflow {
            smartlock_id: counter("smartlock_id"),
            operation: counter("operation"),
            series: counter("series"),
            tracked: IntGauge::new("tracked", "test").unwrap(),
        };
        (LockStore::new(limits, overflow.clone()), overflow)
    }

    fn limits() -> Limits {
        Limits {
            max_smartlocks: 3,
            max_operations: 4,
            max_series: 1_000,
            max_series_per_lock: 100,
        }
    }

    fn exposition(store: &LockStore) -> String {
        let mut out = Vec::new();
        store.encode_into(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Families in order, each with its HELP and TYPE lines first and its samples sorted.
    fn families(text: &str) -> Vec<Vec<&str>> {
        let mut families: Vec<Vec<&str>> = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP ") {
                families.push(Vec::new());
            }
            families.last_mut().expect("HELP first").push(line);
        }
        for family in &mut families {
            family[2..].sort_unstable();
        }
        families
    }

    #[test]
    fn a_lock_view_keeps_the_last_report_its_origin_and_its_failures() {
        let (store, _) = store(limits());
        let (auth, _) = store.operation(Some("AuthCreation"));
        let charge = LockStatus {
            battery_charge_percent: Some(40),
            ..LockStatus::default()
        };
        store.observe(4, Origin::WebApiPoll, &[LockEvent::Status(charge)], 10.0);
        // The lock's own webhook that only names it is no report of state.
        store.observe(4, Origin::Webhook, &[LockEvent::Seen], 20.0);
        store.count_result(Some(4), auth, Some(ErrorCode::Code(0xFF)), 30.0);
        store.count_result(Some(4), auth, None, 31.0);
        let view = store.lock_view(4).unwrap();
        assert_eq!(view.reported_at, Some(10.0));
        assert_eq!(view.reported_by, Some(Origin::WebApiPoll));
        assert_eq!(view.last_seen, Some(31.0));
        assert_eq!(view.status.battery_charge_percent, Some(40));
        assert_eq!(view.results, 2);
        assert_eq!(
            view.failures,
            [("AuthCreation".to_owned(), ErrorCode::Code(0xFF), 1)]
        );

        store.observe(
            4,
            Origin::BridgeCallback,
            &[LockEvent::Status(charge)],
            40.0,
        );
        let view = store.lock_view(4).unwrap();
        assert_eq!(
            (view.reported_at, view.reported_by),
            (Some(40.0), Some(Origin::BridgeCallback))
        );
        assert_eq!(store.lock_views(), [view]);
        assert_eq!(store.lock_view(5), None);
    }

    const NAME: &str = "Front \"door\" \\ back\nsecond line, Küche 🔒";
    const ODD_OPERATION: &str = "Auth\"Creation\\x\ny";

    #[test]
    fn exposition_equals_the_prometheus_text_encoder_for_the_same_series() {
        let (store, _) = store(limits());
        let (auth, _) = store.operation(Some("AuthCreation"));
        let (odd, _) = store.operation(Some(ODD_OPERATION));
        store.count_result(
            Some(42),
            auth,
            Some(ErrorCode::Code(0x13)),
            1_700_000_000.25,
        );
        store.count_result(Some(42), auth, Some(ErrorCode::Code(0x13)), 1_700_000_000.5);
        store.count_result(Some(42), odd, Some(ErrorCode::Invalid), 1_700_000_001.0);
        store.count_result(Some(u64::MAX), auth, None, 1_700_000_002.0);
        store.count_result(None, odd, Some(ErrorCode::Missing), 1.0);
        for id in [7, 8] {
            store.count_result(Some(id), auth, Some(ErrorCode::Code(0xFF)), 5.0);
        }
        let entry = LogEntry {
            action: Some(LogAction::Unlock),
            completion_state: Some(CompletionState::MotorBlocked),
        };
        store.count_log_entry(42, &entry, 6.0);
        let missing = LogEntry {
            action: None,
            completion_state: None,
        };
        store.count_log_entry(42, &missing, 6.0);
        store.count_log_entry(9, &entry, 6.0);
        let status = LockStatus {
            battery_charge_percent: Some(12),
            battery_critical: Some(true),
            keypad_battery_critical: Some(false),
            doorsensor_battery_critical: Some(true),
            lock_state: Some(254),
            door_state: Some(-1),
            server_state: Some(4),
            mode: Some(2),
            battery_charging: Some(false),
        };
        let info = LockInfo {
            name: Some(NAME.into()),
            device_type: Some("smartlock_3_4".into()),
            firmware_version: None,
        };
        store.observe(
            42,
            Origin::Webhook,
            &[LockEvent::Status(status), LockEvent::Info(info)],
            7.0,
        );
        store.observe(
            42,
            Origin::Webhook,
            &[LockEvent::BatteryReplaced { at: 3.25 }],
            7.5,
        );

        let registry = Registry::new();
        let counters = |family: &Family, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(family.name, family.help), labels).unwrap();
            registry.register(Box::new(vec.clone())).unwrap();
            vec
        };
        let errors = counters(
            &ERRORS,
            &["operation", "error_code", "error_name", "smartlock_id"],
        );
        errors
            .with_label_values(&["AuthCreation", "0x13", catalogue::name_of(0x13), "42"])
            .inc_by(2);
        errors
            .with_label_values(&[ODD_OPERATION, "invalid", "INVALID", "42"])
            .inc();
        errors
            .with_label_values(&[ODD_OPERATION, "missing", "MISSING", "unknown"])
            .inc();
        errors
            .with_label_values(&["AuthCreation", "0xFF", catalogue::name_of(0xFF), "7"])
            .inc();
        errors
            .with_label_values(&["AuthCreation", "0xFF", catalogue::name_of(0xFF), "other"])
            .inc();
        let operations = counters(&OPERATIONS, &["operation", "smartlock_id"]);
        operations
            .with_label_values(&["AuthCreation", "42"])
            .inc_by(2);
        operations.with_label_values(&[ODD_OPERATION, "42"]).inc();
        operations
            .with_label_values(&["AuthCreation", "18446744073709551615"])
            .inc();
        operations
            .with_label_values(&[ODD_OPERATION, "unknown"])
            .inc();
        operations.with_label_values(&["AuthCreation", "7"]).inc();
        operations
            .with_label_values(&["AuthCreation", "other"])
            .inc();
        let activity = counters(&ACTIVITY, &["smartlock_id", "action", "completion_state"]);
        activity
            .with_label_values(&["42", "unlock", "motor_blocked"])
            .inc();
        activity
            .with_label_values(&["42", "missing", "missing"])
            .inc();
        activity
            .with_label_values(&["other", "unlock", "motor_blocked"])
            .inc();
        let gauges = |family: &Family, labels: &[&str]| {
            let vec = IntGaugeVec::new(Opts::new(family.name, family.help), labels).unwrap();
            registry.register(Box::new(vec.clone())).unwrap();
            vec
        };
        let lock = ["42"];
        gauges(&BATTERY_CHARGE, &["smartlock_id"])
            .with_label_values(&lock)
            .set(12);
        gauges(&BATTERY_CHARGING, &["smartlock_id"])
            .with_label_values(&lock)
            .set(0);
        let critical = gauges(&BATTERY_CRITICAL, &["smartlock_id", "battery"]);
        critical.with_label_values(&["42", "lock"]).set(1);
        critical.with_label_values(&["42", "keypad"]).set(0);
        critical.with_label_values(&["42", "doorsensor"]).set(1);
        let replaced = GaugeVec::new(
            Opts::new(BATTERY_REPLACED.name, BATTERY_REPLACED.help),
            &["smartlock_id"],
        )
        .unwrap();
        registry.register(Box::new(replaced.clone())).unwrap();
        replaced.with_label_values(&lock).set(3.25);
        gauges(&DOOR_STATE, &["smartlock_id"])
            .with_label_values(&lock)
            .set(-1);
        gauges(
            &INFO,
            &["smartlock_id", "name", "device_type", "firmware_version"],
        )
        .with_label_values(&["42", NAME, "smartlock_3_4", "unknown"])
        .set(1);
        let last_seen =
            GaugeVec::new(Opts::new(LAST_SEEN.name, LAST_SEEN.help), &["smartlock_id"]).unwrap();
        registry.register(Box::new(last_seen.clone())).unwrap();
        for (id, seen) in [
            ("42", 6.0),
            ("18446744073709551615", 1_700_000_002.0),
            ("7", 5.0),
        ] {
            last_seen.with_label_values(&[id]).set(seen);
        }
        gauges(&LOCK_STATE, &["smartlock_id"])
            .with_label_values(&lock)
            .set(254);
        gauges(&MODE, &["smartlock_id"])
            .with_label_values(&lock)
            .set(2);
        gauges(&SERVER_STATE, &["smartlock_id"])
            .with_label_values(&lock)
            .set(4);
        let state_timestamp = GaugeVec::new(
            Opts::new(STATE_TIMESTAMP.name, STATE_TIMESTAMP.help),
            &["smartlock_id"],
        )
        .unwrap();
        registry
            .register(Box::new(state_timestamp.clone()))
            .unwrap();
        state_timestamp.with_label_values(&lock).set(7.0);
        let expected = crate::store::registry_text(&registry);

        let written = exposition(&store);
        assert_eq!(families(&written), families(&expected), "{written}");
        assert_eq!(store.series(), 29);
    }

    #[test]
    fn the_seen_time_keeps_fractions_as_the_crate_writes_them() {
        let (store, _) = store(limits());
        store.observe(
            1,
            Origin::Webhook,
            &[LockEvent::Seen],
            1_700_000_000.123_456_7,
        );
        let text = exposition(&store);
        let expected = format!("{}", 1_700_000_000.123_456_7_f64);
        assert!(
            text.contains(&format!("smartlock_id=\"1\"}} {expected}\n")),
            "{text}"
        );
    }

    #[test]
    fn the_state_timestamp_is_the_time_of_the_last_state_or_info_report() {
        let (store, _) = store(limits());
        let timestamp = |store: &LockStore| {
            let text = exposition(store);
            let prefix = "nuki_smartlock_state_timestamp_seconds{smartlock_id=\"1\"} ";
            text.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .map(str::to_owned)
        };
        // A webhook that only names the lock (an API result) is no state report.
        store.observe(1, Origin::Webhook, &[LockEvent::Seen], 5.0);
        assert_eq!(timestamp(&store), None);
        let status = LockStatus {
            battery_charge_percent: Some(80),
            ..LockStatus::default()
        };
        store.observe(1, Origin::Webhook, &[LockEvent::Status(status)], 10.5);
        assert_eq!(timestamp(&store).as_deref(), Some("10.5"));
        store.observe(
            1,
            Origin::Webhook,
            &[LockEvent::Info(LockInfo::default())],
            20.0,
        );
        assert_eq!(timestamp(&store).as_deref(), Some("20"));
        store.observe(1, Origin::Webhook, &[LockEvent::Seen], 30.0);
        assert_eq!(timestamp(&store).as_deref(), Some("20"));
        // Restored state (the state file replays its events at their own time) is no newer.
        store.observe(
            2,
            Origin::Webhook,
            &[LockEvent::Status(status)],
            1_700_000_000.25,
        );
        assert!(exposition(&store).contains(
            "nuki_smartlock_state_timestamp_seconds{smartlock_id=\"2\"} 1700000000.25\n"
        ));
    }

    #[test]
    fn a_battery_change_is_seen_kept_and_budgeted_once() {
        let (store, overflow) = store(Limits {
            max_series_per_lock: 3,
            ..limits()
        });
        let charge = |percent| {
            [LockEvent::Status(LockStatus {
                battery_charge_percent: Some(percent),
                ..LockStatus::default()
            })]
        };
        let replaced = |store: &LockStore| {
            let text = exposition(store);
            let prefix = "nuki_smartlock_battery_replaced_timestamp_seconds{smartlock_id=\"1\"} ";
            text.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .map(str::to_owned)
        };
        store.observe(1, Origin::Webhook, &charge(14), 10.0);
        store.observe(1, Origin::Webhook, &charge(12), 20.0);
        assert_eq!(replaced(&store), None);
        store.observe(1, Origin::Webhook, &charge(100), 30.5);
        assert_eq!(replaced(&store).as_deref(), Some("30.5"));
        assert_eq!(store.known_locks()[0].battery_replaced_at, Some(30.5));
        // The charge, the state timestamp and the change: the lock's budget of three.
        assert_eq!(store.series(), 3);
        store.observe(1, Origin::Webhook, &charge(40), 40.0);
        store.observe(1, Origin::Webhook, &charge(90), 50.0);
        assert_eq!(replaced(&store).as_deref(), Some("50"));
        assert_eq!(store.series(), 3);
        assert_eq!(overflow.series.get(), 0);
        // Another lock whose budget is full keeps its charge and counts the refused series.
        let full = LockStatus {
            battery_charge_percent: Some(10),
            lock_state: Some(1),
            ..LockStatus::default()
        };
        store.observe(2, Origin::Webhook, &[LockEvent::Status(full)], 1.0);
        store.observe(2, Origin::Webhook, &charge(80), 2.0);
        assert_eq!(overflow.series.get(), 1);
        assert!(
            exposition(&store)
                .contains("nuki_smartlock_battery_charge_percent{smartlock_id=\"2\"} 80\n")
        );
        assert!(
            !exposition(&store)
                .contains("nuki_smartlock_battery_replaced_timestamp_seconds{smartlock_id=\"2\"}")
        );
    }

    #[test]
    fn one_lock_takes_at_most_its_share_and_refusals_are_counted() {
        let (store, overflow) = store(Limits {
            max_series_per_lock: 5,
            ..limits()
        });
        let (op, _) = store.operation(Some("Op"));
        for code in 0..=u8::MAX {
            store.count_result(Some(1), op, Some(ErrorCode::Code(code)), 1.0);
        }
        // last seen, the operation, three error codes.
        assert_eq!(store.series(), 5);
        assert_eq!(overflow.series.get(), 253);
        // Existing series still count.
        store.count_result(Some(1), op, Some(ErrorCode::Code(0)), 1.0);
        let text = exposition(&store);
        assert!(text.contains("nuki_operations_total{operation=\"Op\",smartlock_id=\"1\"} 257\n"));
        let first_error = format!(
            "{{error_code=\"0x00\",error_name=\"{}\",operation=\"Op\",smartlock_id=\"1\"}} 2\n",
            catalogue::name_of(0)
        );
        assert!(text.contains(&first_error), "{text}");
        // Another lock still gets its share.
        store.count_result(Some(2), op, None, 1.0);
        assert_eq!(store.series(), 7);
    }

    #[test]
    fn the_total_budget_holds_and_deletion_gives_it_back() {
        let (store, overflow) = store(Limits {
            max_series: 12,
            max_smartlocks: 100,
            ..limits()
        });
        let full = LockStatus {
            battery_charge_percent: Some(50),
            lock_state: Some(1),
            door_state: Some(2),
            server_state: Some(0),
            ..LockStatus::default()
        };
        store.observe(
            1,
            Origin::Webhook,
            &[LockEvent::Seen, LockEvent::Status(full)],
            1.0,
        );
        store.observe(
            2,
            Origin::Webhook,
            &[LockEvent::Seen, LockEvent::Status(full)],
            1.0,
        );
        // Each: last seen, four state gauges and the state timestamp.
        assert_eq!(store.series(), 12);
        assert_eq!(overflow.series.get(), 0);
        // A third lock is admitted but its series are refused; lock 1 keeps updating.
        store.observe(
            3,
            Origin::Webhook,
            &[LockEvent::Seen, LockEvent::Status(full)],
            2.0,
        );
        let newer = LockStatus {
            battery_charge_percent: Some(40),
            mode: Some(2),
            ..LockStatus::default()
        };
        store.observe(1, Origin::Webhook, &[LockEvent::Status(newer)], 3.0);
        assert_eq!(store.series(), 12);
        assert_eq!(overflow.series.get(), 3);
        let text = exposition(&store);
        assert!(text.contains("nuki_smartlock_battery_charge_percent{smartlock_id=\"1\"} 40\n"));
        assert!(!text.contains("nuki_smartlock_mode{"), "{text}");
        assert!(!text.contains("smartlock_id=\"3\""), "{text}");
        store.observe(2, Origin::Webhook, &[LockEvent::Removed], 4.0);
        assert_eq!(store.series(), 6);
        assert_eq!(overflow.tracked.get(), 2);
        store.observe(3, Origin::Webhook, &[LockEvent::Status(full)], 5.0);
        assert_eq!(store.series(), 11);
        assert!(exposition(&store).contains("nuki_smartlock_lock_state{smartlock_id=\"3\"} 1\n"));
    }

    #[test]
    fn ids_beyond_the_cap_and_operations_beyond_theirs_count_as_other() {
        let (store, overflow) = store(Limits {
            max_smartlocks: 1,
            max_operations: 1,
            ..limits()
        });
        assert_eq!(store.operation(Some("A")).1, "A");
        assert_eq!(store.operation(Some("B")), (Operation::OVERFLOW, OVERFLOW));
        let long = "x".repeat(MAX_OPERATION_LEN + 1);
        assert_eq!(store.operation(Some(&long)).1, OVERFLOW);
        assert_eq!(store.operation(None), (Operation::UNNAMED, UNNAMED));
        assert_eq!(overflow.operation.get(), 2);
        store.count_result(Some(1), Operation::OVERFLOW, None, 1.0);
        store.count_result(Some(2), Operation::OVERFLOW, None, 1.0);
        store.observe(3, Origin::Webhook, &[LockEvent::Seen], 1.0);
        assert_eq!(overflow.smartlock_id.get(), 2);
        assert_eq!(store.tracked_ids(), vec![1]);
        let text = exposition(&store);
        assert!(
            text.contains("nuki_operations_total{operation=\"other\",smartlock_id=\"other\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn info_label_values_are_cut_at_a_character_boundary() {
        let (store, _) = store(limits());
        let name = format!("a{}", "ä".repeat(100_000));
        let info = LockInfo {
            name: Some(name),
            ..LockInfo::default()
        };
        store.observe(1, Origin::Webhook, &[LockEvent::Info(info)], 1.0);
        let kept = store.known_locks()[0].info.clone().unwrap().name.unwrap();
        assert_eq!(kept, format!("a{}", "ä".repeat(63)));
        assert_eq!(kept.len(), 127);
    }

    #[test]
    fn info_without_a_field_keeps_the_one_another_source_reported() {
        let (store, _) = store(limits());
        let web_api = LockInfo {
            name: Some("Front door".into()),
            device_type: Some("smartlock_3_4".into()),
            firmware_version: Some("3.10.7".into()),
        };
        let bridge = LockInfo {
            name: Some("Front".into()),
            device_type: Some("smartlock_3_4".into()),
            firmware_version: None,
        };
        store.observe(5, Origin::Webhook, &[LockEvent::Info(web_api)], 1.0);
        store.observe(5, Origin::Webhook, &[LockEvent::Info(bridge)], 2.0);
        let mut text = Vec::new();
        store.encode_into(&mut text);
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("nuki_smartlock_info{device_type=\"smartlock_3_4\",firmware_version=\"3.10.7\",name=\"Front\",smartlock_id=\"5\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("nuki_smartlock_info{").count(), 1, "{text}");
    }
}

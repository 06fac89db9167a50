//! The typed metrics facade: owns the Prometheus registry and turns parsed webhooks into
//! counter increments and gauge values. Nothing else touches a metric.

mod web_api;

pub use web_api::{Endpoint, WebApiMetrics};

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::background::BackgroundThread;
use crate::catalogue;
use crate::lock::{KnownLock, LockEvent, LockInfo, LockStatus};
use crate::source::webhook::{
    ApiWebhook, DeviceEvent, DeviceWebhook, ErrorCode, LogEntry, Outcome, Webhook,
};

/// The `Content-Type` of `/metrics`: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label value of counters for lock ids beyond `limits.max_smartlocks`, and of operation and
/// kind values beyond `limits.max_operations`.
pub const OVERFLOW: &str = "other";
/// Label value where a webhook names no lock, no operation or no kind.
pub const UNNAMED: &str = "unknown";
/// Longest `operation` / `kind` label value kept; longer ones count as `other`.
const MAX_LABEL_LEN: usize = 64;

/// Why a request was refused: the `reason` label of `nuki_exporter_webhooks_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Signature,
    Malformed,
    TooLarge,
    Method,
    NotFound,
    Timeout,
    Unauthorized,
    /// A bridge callback from an address that is no configured bridge's.
    Forbidden,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        Self::Signature,
        Self::Malformed,
        Self::TooLarge,
        Self::Method,
        Self::NotFound,
        Self::Timeout,
        Self::Unauthorized,
        Self::Forbidden,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::Method => "method",
            Self::NotFound => "not_found",
            Self::Timeout => "timeout",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }
}

/// A connection limit that tripped: the `limit` label of
/// `nuki_exporter_connection_limit_hits_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionLimit {
    /// A new connection waited because the listener had `limits.max_connections` open.
    MaxConnections,
    /// A client was cut off while still sending its request headers (not an idle keep-alive).
    HeaderReadTimeout,
}

impl ConnectionLimit {
    const ALL: [ConnectionLimit; 2] = [Self::MaxConnections, Self::HeaderReadTimeout];

    fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::HeaderReadTimeout => "header_read_timeout",
        }
    }
}

/// Sizes of the label sets the facade bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_smartlocks: usize,
    pub max_operations: usize,
}

pub struct Metrics {
    registry: Registry,
    operation_errors: IntCounterVec,
    operations: IntCounterVec,
    battery_charge: IntGaugeVec,
    battery_critical: IntGaugeVec,
    server_state: IntGaugeVec,
    lock_state: IntGaugeVec,
    door_state: IntGaugeVec,
    mode: IntGaugeVec,
    battery_charging: IntGaugeVec,
    last_seen: GaugeVec,
    info: IntGaugeVec,
    activity: IntCounterVec,
    received: IntCounterVec,
    rejected: IntCounterVec,
    last_webhook: Gauge,
    label_overflow: IntCounterVec,
    smartlocks_tracked: IntGauge,
    connection_limit_hits: IntCounterVec,
    open_connections: IntGaugeVec,
    /// Registered when the Web API is first polled: a webhook-only exporter has none of them.
    web_api: OnceLock<WebApiMetrics>,
    /// `error_code` label of every byte, `0x00` to `0xFF`, formatted once.
    code_labels: Vec<String>,
    locks: Mutex<LockTable>,
    kinds: BoundedSet,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The lock ids that have their own series.
struct LockTable {
    capacity: usize,
    locks: HashMap<u64, TrackedLock>,
}

/// A lock with series of its own, and handles of its hottest series: an API webhook counts
/// through them without hashing label values again.
struct TrackedLock {
    /// The decimal id: the `smartlock_id` label value.
    label: String,
    /// Last-known state: every field some source reported, the newest value of each.
    status: LockStatus,
    info: Option<LockInfo>,
    /// Unix time of the last event that reported state or info.
    updated_at: Option<f64>,
    /// Made on the lock's first webhook: a lock only polled has no last-seen series.
    last_seen: Option<Gauge>,
    /// `nuki_operations_total` by operation.
    operations: Vec<(String, IntCounter)>,
    /// `nuki_operation_errors_total` by operation and error code.
    errors: Vec<(String, ErrorCode, IntCounter)>,
}

/// Where a lock's series go.
enum LockSlot<'t> {
    /// The lock has its own series.
    Tracked(&'t mut TrackedLock),
    /// Counted, but under a shared label value (`other` or `unknown`), and without gauges.
    Shared(&'static str),
}

impl TrackedLock {
    /// Sets `nuki_smartlock_last_seen_timestamp_seconds`: the lock itself sent something.
    fn seen(&mut self, now: f64, vec: &GaugeVec) {
        self.last_seen
            .get_or_insert_with(|| vec.with_label_values(&[&self.label]))
            .set(now);
    }

    fn operation_counter(&mut self, operation: &str, vec: &IntCounterVec) -> &IntCounter {
        let index = match self.operations.iter().position(|(op, _)| op == operation) {
            Some(index) => index,
            None => {
                let counter = vec.with_label_values(&[operation, &self.label]);
                self.operations.push((operation.to_owned(), counter));
                self.operations.len() - 1
            }
        };
        &self.operations[index].1
    }

    fn error_counter(
        &mut self,
        operation: &str,
        code: ErrorCode,
        (code_label, name): (&str, &str),
        vec: &IntCounterVec,
    ) -> &IntCounter {
        let found = self
            .errors
            .iter()
            .position(|(op, c, _)| *c == code && op == operation);
        let index = match found {
            Some(index) => index,
            None => {
                let counter = vec.with_label_values(&[operation, code_label, name, &self.label]);
                self.errors.push((operation.to_owned(), code, counter));
                self.errors.len() - 1
            }
        };
        &self.errors[index].2
    }
}

/// A bounded set of free-form label values (`operation`, `kind`).
struct BoundedSet {
    capacity: usize,
    values: RwLock<HashSet<String>>,
}

impl BoundedSet {
    /// The value itself while there is room for it, `None` once the set is full.
    fn admit<'v>(&self, value: &'v str) -> Option<&'v str> {
        if value.len() > MAX_LABEL_LEN {
            return None;
        }
        if self
            .values
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(value)
        {
            return Some(value);
        }
        let mut values = self.values.write().unwrap_or_else(PoisonError::into_inner);
        if values.contains(value) || values.len() < self.capacity {
            values.insert(value.to_owned());
            Some(value)
        } else {
            None
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric registered once");
    collector
}

impl Metrics {
    pub fn new(limits: Limits) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let lock = &["smartlock_id"];
        let metrics = Self {
            // The prometheus crate copies a metric's HELP into each of its series: the
            // per-lock metrics keep theirs short.
            operation_errors: counter_vec(
                r,
                "nuki_operation_errors_total",
                "Failed API webhook entities (detail[] or flat result, by type, errorCode, smartlockId).",
                &["operation", "error_code", "error_name", "smartlock_id"],
            ),
            operations: counter_vec(
                r,
                "nuki_operations_total",
                "API webhook entity results, success or not (detail[] or flat result, by type, smartlockId).",
                &["operation", "smartlock_id"],
            ),
            battery_charge: gauge_vec(
                r,
                "nuki_smartlock_battery_charge_percent",
                "Battery charge in percent, from DEVICE_STATUS state.batteryCharge.",
                lock,
            ),
            battery_critical: gauge_vec(
                r,
                "nuki_smartlock_battery_critical",
                "1 when a battery is critical, from DEVICE_STATUS state.batteryCritical (lock), state.keypadBatteryCritical (keypad) and state.doorsensorBatteryCritical (doorsensor).",
                &["smartlock_id", "battery"],
            ),
            server_state: gauge_vec(
                r,
                "nuki_smartlock_server_state",
                "Server state from DEVICE_STATUS / DEVICE_MASTERDATA serverState: 0 ok, 1 unregistered, 2 auth UUID invalid, 3 auth invalid, 4 offline.",
                lock,
            ),
            lock_state: gauge_vec(
                r,
                "nuki_smartlock_lock_state",
                "Lock state from DEVICE_STATUS state.state: 0 uncalibrated, 1 locked, 2 unlocking, 3 unlocked, 4 locking, 5 unlatched, 6 unlocked (lock 'n' go), 7 unlatching, 254 motor blocked, 255 undefined (opener codes differ).",
                lock,
            ),
            door_state: gauge_vec(
                r,
                "nuki_smartlock_door_state",
                "Door state from DEVICE_STATUS state.doorState: 0 unavailable, 1 deactivated, 2 closed, 3 opened, 4 unknown, 5 calibrating, 16 uncalibrated, 240 removed, 255 unknown.",
                lock,
            ),
            mode: gauge_vec(
                r,
                "nuki_smartlock_mode",
                "Operating mode from state.mode (Bridge: mode): 0 uninitialised, 1 pairing, 2 door, 3 continuous (opener), 4 maintenance, 5 off-door charging.",
                lock,
            ),
            battery_charging: gauge_vec(
                r,
                "nuki_smartlock_battery_charging",
                "1 while a Nuki battery pack charges, from state.batteryCharging (Bridge: batteryCharging).",
                lock,
            ),
            last_seen: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "nuki_smartlock_last_seen_timestamp_seconds",
                        "Unix time of the last webhook naming this smartlockId.",
                    ),
                    lock,
                )
                .expect("valid metric definition"),
            ),
            info: gauge_vec(
                r,
                "nuki_smartlock_info",
                "Always 1: a lock's DEVICE_MASTERDATA name, type (device_type) and firmwareVersion (decoded one byte per part).",
                &["smartlock_id", "name", "device_type", "firmware_version"],
            ),
            activity: counter_vec(
                r,
                "nuki_smartlock_activity_log_entries_total",
                "Activity-log entries from DEVICE_LOGS smartlockLog, by action and completion state (smartlockLog.state).",
                &["smartlock_id", "action", "completion_state"],
            ),
            received: counter_vec(
                r,
                "nuki_exporter_webhooks_received_total",
                "Accepted webhooks, by source (api: has type/requestId; device: has feature) and kind (the type or feature).",
                &["source", "kind"],
            ),
            rejected: counter_vec(
                r,
                "nuki_exporter_webhooks_rejected_total",
                "Refused requests, by reason: signature, malformed, too_large, method, not_found (webhook listener), timeout (any listener), unauthorized (metrics listener credentials), forbidden (bridge callback from an unknown address).",
                &["reason"],
            ),
            last_webhook: register(
                r,
                Gauge::new(
                    "nuki_exporter_last_webhook_timestamp_seconds",
                    "Unix time of the last accepted webhook.",
                )
                .expect("valid metric definition"),
            ),
            label_overflow: counter_vec(
                r,
                "nuki_exporter_label_overflow_total",
                "Values counted under \"other\" because limits.max_smartlocks (smartlock_id) or limits.max_operations (operation, kind) was reached.",
                &["label"],
            ),
            smartlocks_tracked: register(
                r,
                IntGauge::new(
                    "nuki_exporter_smartlocks_tracked",
                    "Distinct smartlockIds with their own series (at most limits.max_smartlocks).",
                )
                .expect("valid metric definition"),
            ),
            connection_limit_hits: counter_vec(
                r,
                "nuki_exporter_connection_limit_hits_total",
                "Times a connection limit tripped: max_connections (a new connection had to wait for a free slot), header_read_timeout (a client was cut off while still sending request headers; idle keep-alive connections do not count).",
                &["limit"],
            ),
            open_connections: gauge_vec(
                r,
                "nuki_exporter_open_connections",
                "Open HTTP connections, by listener (webhook, metrics, or shared when both are on one port).",
                &["listener"],
            ),
            web_api: OnceLock::new(),
            code_labels: (0..=u8::MAX).map(catalogue::hex_label).collect(),
            locks: Mutex::new(LockTable {
                capacity: limits.max_smartlocks,
                locks: HashMap::new(),
            }),
            kinds: BoundedSet {
                capacity: limits.max_operations,
                values: RwLock::new(HashSet::new()),
            },
            registry,
        };
        let build_info = gauge_vec(
            &metrics.registry,
            "nuki_exporter_build_info",
            "Always 1: the version of nuki-exporter that is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Refusals start at 0 so that increase() sees their first occurrence.
        for reason in RejectReason::ALL {
            metrics.rejected.with_label_values(&[reason.label()]);
        }
        for label in ["smartlock_id", "operation", "kind"] {
            metrics.label_overflow.with_label_values(&[label]);
        }
        for limit in ConnectionLimit::ALL {
            metrics
                .connection_limit_hits
                .with_label_values(&[limit.label()]);
        }
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        metrics
    }

    /// Records an accepted webhook received at `now` (Unix seconds).
    pub fn record(&self, webhook: &Webhook, now: f64) {
        match webhook {
            Webhook::Api(api) => self.record_api(api, now),
            Webhook::Device(device) => self.record_device(device, now),
            Webhook::Unrecognised => self.received.with_label_values(&[UNNAMED, UNNAMED]).inc(),
        }
        self.last_webhook.set(now);
    }

    /// Counts a refused request.
    pub fn reject(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.label()]).inc();
    }

    /// Counts a tripped connection limit.
    pub fn connection_limit_hit(&self, limit: ConnectionLimit) {
        self.connection_limit_hits
            .with_label_values(&[limit.label()])
            .inc();
    }

    /// The gauge of open connections on one listener, for the accept loop to move.
    pub fn open_connections(&self, listener: &str) -> IntGauge {
        self.open_connections.with_label_values(&[listener])
    }

    /// The registry every metric of the exporter is in, for the parts that own metrics of their
    /// own (the relay, the sources).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Nuki Web API source's own metrics, registered on first use.
    pub fn web_api(&self) -> &WebApiMetrics {
        self.web_api
            .get_or_init(|| WebApiMetrics::register(&self.registry))
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(64 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        buffer
    }

    fn record_api(&self, api: &ApiWebhook, now: f64) {
        let operation = self.bounded("operation", api.operation.as_deref());
        self.received.with_label_values(&["api", operation]).inc();
        let mut table = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        for result in &api.results {
            let failure = match result.outcome {
                Outcome::Failure(code) => Some(code),
                Outcome::Success => None,
            };
            match self.admit(&mut table, result.smartlock_id) {
                LockSlot::Tracked(lock) => {
                    lock.operation_counter(operation, &self.operations).inc();
                    if let Some(code) = failure {
                        let labels = self.error_labels(code);
                        lock.error_counter(operation, code, labels, &self.operation_errors)
                            .inc();
                    }
                    lock.seen(now, &self.last_seen);
                }
                LockSlot::Shared(lock) => {
                    self.operations.with_label_values(&[operation, lock]).inc();
                    if let Some(code) = failure {
                        let (code_label, name) = self.error_labels(code);
                        self.operation_errors
                            .with_label_values(&[operation, code_label, name, lock])
                            .inc();
                    }
                }
            }
        }
    }

    /// The `error_code` and `error_name` label values of a code.
    fn error_labels(&self, code: ErrorCode) -> (&str, &'static str) {
        match code {
            ErrorCode::Code(byte) => (
                self.code_labels[usize::from(byte)].as_str(),
                catalogue::name_of(byte),
            ),
            ErrorCode::Invalid => ("invalid", "INVALID"),
            ErrorCode::Missing => ("missing", "MISSING"),
        }
    }

    fn record_device(&self, device: &DeviceWebhook, now: f64) {
        let kind = self.bounded("kind", Some(device.feature.as_str()));
        self.received.with_label_values(&["device", kind]).inc();
        let Some(id) = device.smartlock_id else {
            return;
        };
        match &device.event {
            DeviceEvent::Log(entry) => self.record_log_entry(id, entry, now),
            DeviceEvent::Status(status) => {
                self.observe(id, &[LockEvent::Seen, LockEvent::Status(*status)], now);
            }
            DeviceEvent::Masterdata(data) if data.deleted => {
                self.observe(id, &[LockEvent::Removed], now);
            }
            DeviceEvent::Masterdata(data) => {
                let status = LockStatus {
                    server_state: data.server_state,
                    ..LockStatus::default()
                };
                let events = [
                    LockEvent::Seen,
                    LockEvent::Status(status),
                    LockEvent::Info(data.info()),
                ];
                self.observe(id, &events, now);
            }
            DeviceEvent::Seen => self.observe(id, &[LockEvent::Seen], now),
        }
    }

    /// Records what a source learned about one lock at `now` (Unix seconds). Locks beyond
    /// `limits.max_smartlocks` get no gauges.
    pub fn observe(&self, id: u64, events: &[LockEvent], now: f64) {
        if events.contains(&LockEvent::Removed) {
            self.forget_lock(id);
            return;
        }
        let mut table = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        let LockSlot::Tracked(lock) = self.admit(&mut table, Some(id)) else {
            return;
        };
        for event in events {
            match event {
                LockEvent::Seen => lock.seen(now, &self.last_seen),
                LockEvent::Status(status) => {
                    self.record_status(&lock.label, status);
                    lock.status.merge(status);
                    lock.updated_at = Some(now);
                }
                LockEvent::Info(info) => {
                    self.record_info(lock, info);
                    lock.updated_at = Some(now);
                }
                LockEvent::Removed => {}
            }
        }
    }

    /// Every tracked lock's last-known state and info.
    pub fn known_locks(&self) -> Vec<KnownLock> {
        let table = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .locks
            .iter()
            .filter(|(_, lock)| lock.updated_at.is_some())
            .map(|(&smartlock_id, lock)| KnownLock {
                smartlock_id,
                status: lock.status,
                info: lock.info.clone(),
                updated_at: lock.updated_at,
            })
            .collect()
    }

    /// The ids of every lock with series of its own.
    pub fn tracked_ids(&self) -> Vec<u64> {
        let table = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        table.locks.keys().copied().collect()
    }

    fn record_log_entry(&self, id: u64, entry: &LogEntry, now: f64) {
        let mut table = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        match self.admit(&mut table, Some(id)) {
            LockSlot::Shared(lock) => self.record_log(lock, entry),
            LockSlot::Tracked(lock) => {
                self.record_log(&lock.label, entry);
                lock.seen(now, &self.last_seen);
            }
        }
    }

    fn record_log(&self, lock: &str, entry: &LogEntry) {
        let action = entry.action.map_or("missing", |a| a.label());
        let state = entry.completion_state.map_or("missing", |s| s.label());
        self.activity
            .with_label_values(&[lock, action, state])
            .inc();
    }

    fn record_status(&self, id: &str, status: &LockStatus) {
        let set = |vec: &IntGaugeVec, value: Option<i64>| {
            if let Some(value) = value {
                vec.with_label_values(&[id]).set(value);
            }
        };
        set(&self.battery_charge, status.battery_charge_percent);
        set(&self.lock_state, status.lock_state);
        set(&self.door_state, status.door_state);
        set(&self.server_state, status.server_state);
        set(&self.mode, status.mode);
        set(
            &self.battery_charging,
            status.battery_charging.map(i64::from),
        );
        let batteries = [
            ("lock", status.battery_critical),
            ("keypad", status.keypad_battery_critical),
            ("doorsensor", status.doorsensor_battery_critical),
        ];
        for (battery, critical) in batteries {
            if let Some(critical) = critical {
                self.battery_critical
                    .with_label_values(&[id, battery])
                    .set(i64::from(critical));
            }
        }
    }

    /// Sets the info series, replacing the lock's previous one.
    fn record_info(&self, lock: &mut TrackedLock, info: &LockInfo) {
        if lock.info.as_ref() == Some(info) {
            return;
        }
        let id = lock.label.as_str();
        if let Some(old) = lock.info.take() {
            let _ = self.info.remove_label_values(&info_labels(id, &old));
        }
        self.info.with_label_values(&info_labels(id, info)).set(1);
        lock.info = Some(info.clone());
    }

    /// Where a lock's series go: its own while there is room, `other` beyond the cap.
    fn admit<'t>(&self, table: &'t mut LockTable, id: Option<u64>) -> LockSlot<'t> {
        let Some(id) = id else {
            return LockSlot::Shared(UNNAMED);
        };
        let (tracked, capacity) = (table.locks.len(), table.capacity);
        match table.locks.entry(id) {
            Entry::Occupied(entry) => LockSlot::Tracked(entry.into_mut()),
            Entry::Vacant(_) if tracked >= capacity => {
                self.label_overflow
                    .with_label_values(&["smartlock_id"])
                    .inc();
                LockSlot::Shared(OVERFLOW)
            }
            Entry::Vacant(entry) => {
                self.smartlocks_tracked.set(tracked as i64 + 1);
                let label = itoa::Buffer::new().format(id).to_owned();
                LockSlot::Tracked(entry.insert(TrackedLock {
                    last_seen: None,
                    label,
                    status: LockStatus::default(),
                    info: None,
                    updated_at: None,
                    operations: Vec::new(),
                    errors: Vec::new(),
                }))
            }
        }
    }

    /// The label value for a free-form `operation` or `kind`.
    fn bounded<'v>(&self, label: &str, value: Option<&'v str>) -> &'v str {
        let Some(value) = value else {
            return UNNAMED;
        };
        self.kinds.admit(value).unwrap_or_else(|| {
            self.label_overflow.with_label_values(&[label]).inc();
            OVERFLOW
        })
    }

    /// Removes every series of a lock that Nuki reports deleted, and frees its slot.
    fn forget_lock(&self, id: u64) {
        let mut table = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(lock) = table.locks.remove(&id) else {
            return;
        };
        self.smartlocks_tracked.set(table.locks.len() as i64);
        let id = lock.label;
        remove_lock_series(&self.operation_errors, &id);
        remove_lock_series(&self.operations, &id);
        remove_lock_series(&self.activity, &id);
        remove_lock_series(&self.battery_charge, &id);
        remove_lock_series(&self.battery_critical, &id);
        remove_lock_series(&self.server_state, &id);
        remove_lock_series(&self.lock_state, &id);
        remove_lock_series(&self.door_state, &id);
        remove_lock_series(&self.mode, &id);
        remove_lock_series(&self.battery_charging, &id);
        remove_lock_series(&self.last_seen, &id);
        remove_lock_series(&self.info, &id);
    }
}

/// The label values of a lock's `nuki_smartlock_info` series, in the metric's label order.
fn info_labels<'a>(id: &'a str, info: &'a LockInfo) -> [&'a str; 4] {
    [
        id,
        info.name.as_deref().unwrap_or_default(),
        info.device_type.as_deref().unwrap_or(UNNAMED),
        info.firmware_version.as_deref().unwrap_or(UNNAMED),
    ]
}

/// Encodes `/metrics` on a [`BackgroundThread`] of its own, so that encoding a large exposition
/// never takes CPU time from the threads that answer webhooks. Scrapes queue up and are encoded
/// one at a time.
#[derive(Clone, Debug)]
pub struct EncoderThread {
    thread: BackgroundThread,
    metrics: std::sync::Arc<Metrics>,
}

impl EncoderThread {
    pub fn spawn(metrics: std::sync::Arc<Metrics>) -> std::io::Result<Self> {
        let thread = BackgroundThread::spawn("metrics-encoder")?;
        Ok(Self { thread, metrics })
    }

    /// The text exposition, or `None` if the encoder thread is gone.
    pub async fn encode(&self) -> Option<Vec<u8>> {
        let metrics = std::sync::Arc::clone(&self.metrics);
        self.thread.run(move || metrics.encode()).await
    }
}

/// Removes the series of `vec` whose `smartlock_id` is `id`. The crate has no partial-match
/// delete, so this walks the family; deletions are rare.
fn remove_lock_series<T: MetricVecBuilder>(vec: &MetricVec<T>, id: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("smartlock_id") == Some(&id) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::webhook::parse;

    fn metrics() -> Metrics {
        Metrics::new(Limits {
            max_smartlocks: 100,
            max_operations: 10,
        })
    }

    fn exposition(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode()).unwrap()
    }

    fn record(metrics: &Metrics, body: &str) {
        metrics.record(&parse(body.as_bytes()).unwrap(), 1_700_000_000.0);
    }

    #[test]
    fn failed_entity_counts_an_error_and_an_operation() {
        let m = metrics();
        record(
            &m,
            r#"{"type":"AuthCreation","detail":[{"smartlockId":42,"success":false,"errorCode":"ff"}]}"#,
        );
        let text = exposition(&m);
        assert!(text.contains(r#"nuki_operation_errors_total{error_code="0xFF",error_name="ERROR_UNKNOWN",operation="AuthCreation",smartlock_id="42"} 1"#), "{text}");
        assert!(
            text.contains(r#"nuki_operations_total{operation="AuthCreation",smartlock_id="42"} 1"#)
        );
        assert!(text.contains(
            r#"nuki_exporter_webhooks_received_total{kind="AuthCreation",source="api"} 1"#
        ));
        assert!(text.contains(
            r#"nuki_smartlock_last_seen_timestamp_seconds{smartlock_id="42"} 1700000000"#
        ));
        assert!(text.contains("nuki_exporter_last_webhook_timestamp_seconds 1700000000"));
    }

    #[test]
    fn locks_beyond_the_cap_fold_into_other() {
        let m = Metrics::new(Limits {
            max_smartlocks: 2,
            max_operations: 10,
        });
        for id in 1..=5 {
            record(
                &m,
                &format!(r#"{{"type":"UnlockAction","smartlockId":{id},"success":true}}"#),
            );
        }
        record(
            &m,
            r#"{"type":"UnlockAction","smartlockId":1,"success":true}"#,
        );
        let text = exposition(&m);
        assert!(
            text.contains(r#"nuki_operations_total{operation="UnlockAction",smartlock_id="1"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"nuki_operations_total{operation="UnlockAction",smartlock_id="other"} 3"#
            )
        );
        assert!(text.contains(r#"nuki_exporter_label_overflow_total{label="smartlock_id"} 3"#));
        assert!(text.contains("nuki_exporter_smartlocks_tracked 2"));
        assert!(!text.contains(r#"last_seen_timestamp_seconds{smartlock_id="other"}"#));
    }

    #[test]
    fn operation_values_are_bounded() {
        let m = Metrics::new(Limits {
            max_smartlocks: 10,
            max_operations: 2,
        });
        for op in ["A", "B", "C", "A"] {
            record(
                &m,
                &format!(r#"{{"type":"{op}","smartlockId":1,"success":true}}"#),
            );
        }
        let long = "x".repeat(MAX_LABEL_LEN + 1);
        record(&m, &format!(r#"{{"feature":"{long}"}}"#));
        let text = exposition(&m);
        assert!(
            text.contains(r#"nuki_operations_total{operation="A",smartlock_id="1"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"nuki_operations_total{operation="other",smartlock_id="1"} 1"#));
        assert!(text.contains(r#"nuki_exporter_label_overflow_total{label="operation"} 1"#));
        assert!(text.contains(r#"nuki_exporter_label_overflow_total{label="kind"} 1"#));
    }

    #[test]
    fn masterdata_info_is_replaced_not_duplicated_and_deletion_removes_every_series() {
        let m = metrics();
        record(
            &m,
            r#"{"feature":"DEVICE_MASTERDATA","smartlockId":7,"type":2,"name":"Gate","firmwareVersion":131843,"serverState":0}"#,
        );
        record(
            &m,
            r#"{"feature":"DEVICE_MASTERDATA","smartlockId":7,"type":2,"name":"Main gate","firmwareVersion":131843}"#,
        );
        record(
            &m,
            r#"{"feature":"DEVICE_STATUS","smartlockId":7,"state":{"batteryCritical":true,"batteryCharge":12}}"#,
        );
        record(
            &m,
            r#"{"type":"AuthCreation","detail":[{"smartlockId":7,"success":false,"errorCode":"13"}]}"#,
        );
        record(
            &m,
            r#"{"feature":"DEVICE_LOGS","smartlockLog":{"smartlockId":7,"action":1,"state":1}}"#,
        );
        record(
            &m,
            r#"{"feature":"DEVICE_STATUS","smartlockId":8,"state":{"batteryCritical":false}}"#,
        );
        let text = exposition(&m);
        assert!(text.contains(r#"nuki_smartlock_info{device_type="opener",firmware_version="2.3.3",name="Main gate",smartlock_id="7"} 1"#), "{text}");
        assert!(!text.contains(r#"name="Gate""#));
        record(
            &m,
            r#"{"feature":"DEVICE_MASTERDATA","smartlockId":7,"deleted":true}"#,
        );
        let text = exposition(&m);
        assert!(!text.contains(r#"smartlock_id="7""#), "{text}");
        assert!(
            text.contains(r#"nuki_smartlock_battery_critical{battery="lock",smartlock_id="8"} 0"#)
        );
        assert!(text.contains("nuki_exporter_smartlocks_tracked 1"));
    }

    #[test]
    fn observed_state_is_merged_kept_and_forgotten_on_removal() {
        let m = metrics();
        let battery = LockStatus {
            battery_charge_percent: Some(12),
            battery_critical: Some(true),
            ..LockStatus::default()
        };
        let server = LockStatus {
            server_state: Some(4),
            ..LockStatus::default()
        };
        m.observe(9, &[LockEvent::Status(battery)], 10.0);
        m.observe(9, &[LockEvent::Status(server)], 20.0);
        let text = exposition(&m);
        assert!(text.contains(r#"nuki_smartlock_battery_charge_percent{smartlock_id="9"} 12"#));
        assert!(text.contains(r#"nuki_smartlock_server_state{smartlock_id="9"} 4"#));
        // A poll is no webhook: the lock did not speak.
        assert!(
            !text.contains("nuki_smartlock_last_seen_timestamp_seconds{"),
            "{text}"
        );
        assert!(!text.contains("nuki_smartlock_lock_state{"), "{text}");
        let known = m.known_locks();
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].smartlock_id, 9);
        assert_eq!(known[0].status.battery_charge_percent, Some(12));
        assert_eq!(known[0].status.server_state, Some(4));
        assert_eq!(known[0].updated_at, Some(20.0));
        m.observe(9, &[LockEvent::Removed], 30.0);
        assert!(!exposition(&m).contains(r#"smartlock_id="9""#));
        assert!(m.known_locks().is_empty());
    }

    #[tokio::test]
    async fn encoder_thread_encodes_at_a_lower_priority() {
        let m = std::sync::Arc::new(metrics());
        let encoder = EncoderThread::spawn(m.clone()).unwrap();
        let body = String::from_utf8(encoder.encode().await.unwrap()).unwrap();
        assert!(body.contains("nuki_exporter_build_info{"));
        // /proc/self/task/<tid>/stat: field 19 is the thread's nice value.
        let niceness: Vec<i64> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .map(|task| task.unwrap().path())
            .filter(|task| {
                std::fs::read_to_string(task.join("comm"))
                    .is_ok_and(|c| c.trim() == "metrics-encoder")
            })
            .map(|task| {
                let stat = std::fs::read_to_string(task.join("stat")).unwrap();
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .unwrap()
                    .1
                    .split_whitespace()
                    .collect();
                fields[16].parse().unwrap()
            })
            .collect();
        assert!(
            niceness.contains(&i64::from(crate::background::BACKGROUND_NICENESS)),
            "{niceness:?}"
        );
    }

    #[test]
    fn rejections_start_at_zero_and_count() {
        let m = metrics();
        m.reject(RejectReason::Signature);
        let text = exposition(&m);
        assert!(text.contains(r#"nuki_exporter_webhooks_rejected_total{reason="signature"} 1"#));
        assert!(text.contains(r#"nuki_exporter_webhooks_rejected_total{reason="malformed"} 0"#));
        assert!(text.contains(r#"nuki_exporter_build_info{version=""#));
    }
}

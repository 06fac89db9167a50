//! The store and its exposition: the typed metrics facade owns the Prometheus registry and the
//! per-lock table ([`lock_store`]); every source hands it lock events, counted results and
//! log entries, and it knows no source. Nothing else touches a per-lock series.

pub mod lock_store;
#[cfg(target_os = "linux")]
pub mod process_metrics;
pub mod scrape;

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError, RwLock};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::lock::{ErrorCode, KnownLock, LockEvent, LogEntry, Origin};
pub use crate::store::lock_store::{Limits, OVERFLOW, UNNAMED};
use crate::store::lock_store::{LockStore, LockView, MAX_OPERATION_LEN, Operation, Overflow};

/// The `Content-Type` of `/metrics`: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// A bridge callback from an address that is no configured bridge's, or about a lock that
    /// bridge did not list.
    Forbidden,
    /// A webhook this exporter relayed itself, come back through a relay loop.
    Loop,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        Self::Signature,
        Self::Malformed,
        Self::TooLarge,
        Self::Method,
        Self::NotFound,
        Self::Timeout,
        Self::Unauthorized,
        Self::Forbidden,
        Self::Loop,
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
            Self::Loop => "loop",
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

pub struct Metrics {
    registry: Registry,
    store: LockStore,
    received: IntCounterVec,
    rejected: IntCounterVec,
    last_webhook: Gauge,
    label_overflow: IntCounterVec,
    connection_limit_hits: IntCounterVec,
    open_connections: IntGaugeVec,
    /// Device `feature` values, bounded apart from the API `type` values that the store interns.
    features: BoundedSet,
    /// `received{source="api"}` by operation index: no label hashing per webhook.
    received_api: RwLock<Vec<Option<IntCounter>>>,
    /// Held by each encode from start to end, and by [`Metrics::between_encodes`]: the registry
    /// gathers its collectors one at a time, so without it an encode could read a poll's `up`
    /// but the values that poll set before it as they were before the poll.
    encoding: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A bounded set of free-form label values (the device `feature`).
struct BoundedSet {
    capacity: usize,
    values: RwLock<HashSet<String>>,
}

impl BoundedSet {
    /// The value itself while there is room for it, `None` once the set is full.
    fn admit<'v>(&self, value: &'v str) -> Option<&'v str> {
        if value.len() > MAX_OPERATION_LEN {
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

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

pub(crate) fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric registered once");
    collector
}

/// `label` values of `nuki_exporter_label_overflow_total`.
const OVERFLOW_LABELS: [&str; 4] = ["smartlock_id", "operation", "kind", "series"];

impl Metrics {
    pub fn new(limits: Limits) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let label_overflow = counter_vec(
            r,
            "nuki_exporter_label_overflow_total",
            "Values counted under \"other\" because limits.max_smartlocks (smartlock_id) or limits.max_operations (operation, kind) was reached, and series refused by limits.max_series or limits.max_series_per_lock (series).",
            &["label"],
        );
        let smartlocks_tracked = register(
            r,
            IntGauge::new(
                "nuki_exporter_smartlocks_tracked",
                "Distinct smartlockIds with their own series (at most limits.max_smartlocks).",
            )
            .expect("valid metric definition"),
        );
        // Overflows start at 0 so that increase() sees their first occurrence.
        let overflow = |label| label_overflow.with_label_values(&[label]);
        let store = LockStore::new(
            limits,
            Overflow {
                smartlock_id: overflow("smartlock_id"),
                operation: overflow("operation"),
                series: overflow("series"),
                tracked: smartlocks_tracked,
            },
        );
        let metrics = Self {
            store,
            received: counter_vec(
                r,
                "nuki_exporter_webhooks_received_total",
                "Accepted webhooks, by source (api: has type/requestId; device: has feature) and kind (the type or feature).",
                &["source", "kind"],
            ),
            rejected: counter_vec(
                r,
                "nuki_exporter_webhooks_rejected_total",
                "Refused requests, by reason: signature, malformed, too_large, method, not_found (webhook listener), timeout (any listener: a request too slow, or a response its client did not read in time), unauthorized (metrics listener credentials), forbidden (bridge callback from an address that is no configured bridge's, or about a lock that bridge's last /list did not name); malformed and too_large also count requests the HTTP layer refused on any listener (bad framing, 414, 431, an HTTP/2 preface).",
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
            features: BoundedSet {
                capacity: limits.max_operations,
                values: RwLock::new(HashSet::new()),
            },
            received_api: RwLock::default(),
            encoding: Mutex::new(()),
            label_overflow,
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
        for label in OVERFLOW_LABELS {
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
                crate::store::process_metrics::ProcessMetrics::for_self(),
            ))
            .expect("metric registered once");
        metrics
    }

    /// Counts an accepted webhook that answers a Web API call, by its operation (`type`);
    /// returns the interned operation its per-lock results are counted under.
    pub fn count_api_webhook(&self, operation: Option<&str>) -> Operation {
        let (operation, label) = self.store.operation(operation);
        self.received_api(operation.index(), label).inc();
        operation
    }

    /// Counts an accepted device webhook by its `feature` (bounded like operations).
    pub fn count_device_webhook(&self, feature: &str) {
        let kind = self.features.admit(feature).unwrap_or_else(|| {
            self.label_overflow.with_label_values(&["kind"]).inc();
            OVERFLOW
        });
        self.received.with_label_values(&["device", kind]).inc();
    }

    /// Counts an accepted webhook of no known shape.
    pub fn count_unrecognised_webhook(&self) {
        self.received.with_label_values(&[UNNAMED, UNNAMED]).inc();
    }

    /// Stamps the last accepted webhook at `now` (Unix seconds).
    pub fn webhook_received_at(&self, now: f64) {
        self.last_webhook.set(now);
    }

    /// Counts the result of an operation (failed with `failure` or not) for a lock.
    pub fn count_result(
        &self,
        id: Option<u64>,
        operation: Operation,
        failure: Option<ErrorCode>,
        now: f64,
    ) {
        self.store.count_result(id, operation, failure, now);
    }

    /// Counts an activity-log entry for a lock.
    pub fn count_log_entry(&self, id: u64, entry: &LogEntry, now: f64) {
        self.store.count_log_entry(id, entry, now);
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

    /// Runs `change` while no encode runs: a scrape shows all of it or none of it, and
    /// everything set before it. Blocks for as long as an encode takes: call it from a
    /// background thread, never from an async task.
    pub fn between_encodes<T>(&self, change: impl FnOnce() -> T) -> T {
        let _no_encode = self.encoding.lock().unwrap_or_else(PoisonError::into_inner);
        change()
    }

    /// The text exposition of every metric: the registry's, then the per-lock series.
    pub fn encode(&self) -> Vec<u8> {
        let _whole = self.encoding.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        self.store.encode_into(&mut buffer);
        buffer
    }

    /// The `received{source="api"}` counter of the operation at `index`, labelled `label`.
    fn received_api(&self, index: usize, label: &str) -> IntCounter {
        let cached = self
            .received_api
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(Some(counter)) = cached.get(index) {
            return counter.clone();
        }
        drop(cached);
        let mut cached = self
            .received_api
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cached.len() <= index {
            cached.resize(index + 1, None);
        }
        cached[index]
            .get_or_insert_with(|| self.received.with_label_values(&["api", label]))
            .clone()
    }

    /// Records what a source learned about one lock at `now` (Unix seconds). Locks beyond
    /// `limits.max_smartlocks` get no gauges.
    pub fn observe(&self, id: u64, origin: Origin, events: &[LockEvent], now: f64) {
        self.store.observe(id, origin, events, now);
    }

    /// How many locks, operations and series the configuration allows (`limits.*`).
    pub fn limits(&self) -> Limits {
        self.store.limits()
    }

    /// Every tracked lock's last-known state and info.
    pub fn known_locks(&self) -> Vec<KnownLock> {
        self.store.known_locks()
    }

    /// Every tracked lock as the status page shows it.
    pub fn lock_views(&self) -> Vec<LockView> {
        self.store.lock_views()
    }

    /// One tracked lock as the status page shows it.
    pub fn lock_view(&self, id: u64) -> Option<LockView> {
        self.store.lock_view(id)
    }

    /// The ids of every lock with series of its own.
    pub fn tracked_ids(&self) -> Vec<u64> {
        self.store.tracked_ids()
    }
}

/// The prometheus crate's own text exposition of a registry: what unit tests compare against.
#[cfg(test)]
pub(crate) fn registry_text(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding into memory cannot fail");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockStatus;
    use crate::source::webhook::parse::parse;

    fn metrics() -> Metrics {
        Metrics::new(Limits {
            max_smartlocks: 100,
            max_operations: 10,
            max_series: 10_000,
            max_series_per_lock: 100,
        })
    }

    fn exposition(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode()).unwrap()
    }

    fn record(metrics: &Metrics, body: &str) {
        crate::source::webhook::events::record(
            metrics,
            &parse(body.as_bytes()).unwrap(),
            1_700_000_000.0,
        );
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
            max_series: 10_000,
            max_series_per_lock: 100,
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
            max_series: 10_000,
            max_series_per_lock: 100,
        });
        for op in ["A", "B", "C", "A"] {
            record(
                &m,
                &format!(r#"{{"type":"{op}","smartlockId":1,"success":true}}"#),
            );
        }
        let long = "x".repeat(MAX_OPERATION_LEN + 1);
        record(&m, &format!(r#"{{"feature":"{long}"}}"#));
        // API types and device features have budgets of their own.
        record(&m, r#"{"feature":"DEVICE_STATUS","smartlockId":1}"#);
        let text = exposition(&m);
        assert!(
            text.contains(r#"nuki_operations_total{operation="A",smartlock_id="1"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"nuki_operations_total{operation="other",smartlock_id="1"} 1"#));
        assert!(text.contains(r#"nuki_exporter_label_overflow_total{label="operation"} 1"#));
        assert!(text.contains(r#"nuki_exporter_label_overflow_total{label="kind"} 1"#));
        assert!(text.contains(
            r#"nuki_exporter_webhooks_received_total{kind="DEVICE_STATUS",source="device"} 1"#
        ));
        assert!(text.contains(r#"nuki_exporter_label_overflow_total{label="series"} 0"#));
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
        m.observe(9, Origin::WebApiPoll, &[LockEvent::Status(battery)], 10.0);
        m.observe(9, Origin::WebApiPoll, &[LockEvent::Status(server)], 20.0);
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
        m.observe(9, Origin::WebApiPoll, &[LockEvent::Removed], 30.0);
        assert!(!exposition(&m).contains(r#"smartlock_id="9""#));
        assert!(m.known_locks().is_empty());
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

    /// The registry gathers one collector after another: without the lock, an encode running
    /// while a poll publishes could show the new `up` beside the old lock count, or the reverse.
    #[test]
    fn an_encode_shows_a_change_made_between_encodes_whole_or_not_at_all() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let m = Arc::new(metrics());
        let web_api = crate::source::web_api::metrics::WebApiMetrics::register(m.registry());
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = std::thread::spawn({
            let (m, stop) = (Arc::clone(&m), Arc::clone(&stop));
            move || {
                let mut locks = 0;
                while !stop.load(Ordering::Relaxed) {
                    locks += 1;
                    // `up` is 1 exactly when the lock count is odd.
                    m.between_encodes(|| {
                        web_api.smartlocks_polled(locks, 0, 0, 0.1, 1.0);
                        web_api.set_up(locks % 2 == 1);
                    });
                }
            }
        });
        for _ in 0..300 {
            let text = exposition(&m);
            let value = |name: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                    .and_then(|value| value.parse::<i64>().ok())
                    .unwrap_or_else(|| panic!("{name} in\n{text}"))
            };
            let (locks, up) = (
                value("nuki_exporter_api_smartlocks"),
                value("nuki_exporter_api_up"),
            );
            assert_eq!(up, locks % 2, "{locks} locks with api_up {up}");
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
    }
}

//! The Nuki Bridges' own metrics (`nuki_bridge_*`): is each bridge answering, connected to the
//! Nuki server, holding this exporter's callback. Kept apart from the per-lock series, which a
//! bridge feeds through [`crate::store::Metrics::observe`] like every other source.

use std::collections::BTreeSet;
use std::sync::PoisonError;

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::source::bridge::parse::BridgeInfo;
use crate::store::lock_store::bounded_label;

/// Every `nuki_bridge_*` metric family.
#[derive(Clone)]
pub struct BridgeMetrics {
    up: IntGaugeVec,
    poller_leader: IntGaugeVec,
    server_connected: IntGaugeVec,
    callbacks_registered: IntGaugeVec,
    callbacks_stale: IntGaugeVec,
    info: IntGaugeVec,
    smartlocks: IntGaugeVec,
    requests: IntCounterVec,
    last_success: GaugeVec,
    callbacks_received: IntCounterVec,
}

/// The most devices one bridge's `nuki_bridge_smartlock_info` names: a Nuki Bridge pairs a
/// handful, so this only bounds a bridge (or an impostor at its address) that lists thousands.
pub const MAX_LOCKS_PER_BRIDGE: usize = 32;

impl BridgeMetrics {
    /// Registers the families in the exporter's registry.
    pub fn new(registry: &Registry) -> Self {
        let bridge = &["bridge"];
        Self {
            up: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_up",
                        "1 when the last /list poll of a Nuki Bridge succeeded, 0 when it failed.",
                    ),
                    bridge,
                ),
            ),
            poller_leader: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_poller_leader",
                        "1 on the one replica that polls a Nuki Bridge (it holds the bridge's Lease, or runs without [bridge_lease]), 0 on the others; only the poller exposes nuki_bridge_up, nuki_bridge_server_connected and nuki_bridge_callbacks_registered.",
                    ),
                    bridge,
                ),
            ),
            server_connected: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_server_connected",
                        "1 while a Nuki Bridge is connected to the Nuki server (/info serverConnected); at 0, webhooks and the Web API go stale too.",
                    ),
                    bridge,
                ),
            ),
            callbacks_registered: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_callbacks_registered",
                        "1 when this exporter's callback_url is registered with a Nuki Bridge (/callback/list), 0 when not.",
                    ),
                    bridge,
                ),
            ),
            callbacks_stale: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_callbacks_stale",
                        "Extra copies of this exporter's callback_url a Nuki Bridge held at the last /callback/list and still holds: removed two per poll cycle, /list polling goes on between them.",
                    ),
                    bridge,
                ),
            ),
            info: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_info",
                        "Always 1: a Nuki Bridge's type (hardware, software) and firmware (or app) version, from /info, cut to 128 bytes.",
                    ),
                    &["bridge", "bridge_type", "firmware_version"],
                ),
            ),
            smartlocks: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nuki_bridge_smartlock_info",
                        "Always 1: a smart lock (or Opener) the last successful /list of a Nuki Bridge named, at most 32 per bridge; joins the per-lock series on smartlock_id.",
                    ),
                    &["bridge", "smartlock_id"],
                ),
            ),
            requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "nuki_bridge_requests_total",
                        "Requests to a Nuki Bridge, by endpoint (list, info, callback_list, callback_add, callback_remove) and HTTP status (error: no answer).",
                    ),
                    &["bridge", "endpoint", "code"],
                ),
            ),
            last_success: registered(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "nuki_bridge_last_success_timestamp_seconds",
                        "Unix time of the last /list poll of a Nuki Bridge that succeeded.",
                    ),
                    bridge,
                ),
            ),
            callbacks_received: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "nuki_bridge_callbacks_received_total",
                        "Lock-state callbacks a Nuki Bridge POSTed to /bridge/callback and the exporter recorded.",
                    ),
                    bridge,
                ),
            ),
        }
    }

    /// The handles of one bridge's series; `nuki_bridge_poller_leader` starts at 0, and
    /// [`BridgeSeries::leading`] says when this replica polls.
    pub fn bridge(&self, name: &str) -> BridgeSeries {
        BridgeSeries {
            name: name.to_owned(),
            up: self.up.clone(),
            poller_leader: self.poller_leader.with_label_values(&[name]),
            server_connected: self.server_connected.clone(),
            callbacks_registered: self.callbacks_registered.clone(),
            callbacks_stale: self.callbacks_stale.with_label_values(&[name]),
            info: self.info.clone(),
            info_labels: std::sync::Arc::default(),
            smartlocks: self.smartlocks.clone(),
            named: std::sync::Arc::default(),
            requests: self.requests.clone(),
            last_success: self.last_success.with_label_values(&[name]),
            callbacks_received: self.callbacks_received.with_label_values(&[name]),
        }
    }
}

fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> C {
    let collector = collector.expect("valid metric definition");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric registered once");
    collector
}

/// One bridge's series.
#[derive(Clone)]
pub struct BridgeSeries {
    name: String,
    up: IntGaugeVec,
    poller_leader: IntGauge,
    server_connected: IntGaugeVec,
    callbacks_registered: IntGaugeVec,
    callbacks_stale: IntGauge,
    info: IntGaugeVec,
    /// The `bridge_type` and `firmware_version` of the current info series.
    info_labels: std::sync::Arc<std::sync::Mutex<Option<(String, String)>>>,
    smartlocks: IntGaugeVec,
    /// The devices named in `nuki_bridge_smartlock_info` now.
    named: std::sync::Arc<std::sync::Mutex<BTreeSet<u64>>>,
    requests: IntCounterVec,
    last_success: Gauge,
    callbacks_received: IntCounter,
}

impl std::fmt::Debug for BridgeSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeSeries")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BridgeSeries {
    /// The bridge's name: its `bridge` label value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts a request by endpoint and HTTP status, `None` when no answer came.
    pub fn request(&self, endpoint: &str, status: Option<u16>) {
        let code = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.requests
            .with_label_values(&[&self.name, endpoint, &code])
            .inc();
    }

    /// Records the outcome of a `/list` poll at `now` (Unix seconds).
    pub fn polled(&self, succeeded: bool, now: f64) {
        self.up
            .with_label_values(&[&self.name])
            .set(i64::from(succeeded));
        if succeeded {
            self.last_success.set(now);
        }
    }

    /// Sets whether this replica polls the bridge. A replica that does not has no
    /// `nuki_bridge_up`, `nuki_bridge_server_connected` or `nuki_bridge_callbacks_registered`:
    /// what it knew of the bridge is stale, and rules must not read it as the bridge's state.
    /// A new poller starts with `up` at 0 until its first poll.
    pub fn leading(&self, leading: bool) {
        self.poller_leader.set(i64::from(leading));
        if leading {
            self.up.with_label_values(&[&self.name]).set(0);
        } else {
            for family in [&self.up, &self.server_connected, &self.callbacks_registered] {
                let _ = family.remove_label_values(&[&self.name]);
            }
        }
    }

    /// Sets the info series (replacing the previous one) and the server-link gauge.
    pub fn info(&self, info: &BridgeInfo) {
        match info.server_connected {
            Some(connected) => self
                .server_connected
                .with_label_values(&[&self.name])
                .set(i64::from(connected)),
            None => {
                let _ = self.server_connected.remove_label_values(&[&self.name]);
            }
        }
        let label = |value: &Option<String>| {
            bounded_label(value.as_deref().unwrap_or("unknown")).to_owned()
        };
        let labels = (label(&info.bridge_type), label(&info.firmware_version));
        let mut current = self
            .info_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref() == Some(&labels) {
            return;
        }
        if let Some((bridge_type, firmware)) = current.take() {
            let _ = self
                .info
                .remove_label_values(&[&self.name, &bridge_type, &firmware]);
        }
        self.info
            .with_label_values(&[&self.name, &labels.0, &labels.1])
            .set(1);
        *current = Some(labels);
    }

    /// Names the devices of a successful `/list` (the first [`MAX_LOCKS_PER_BRIDGE`] by id) in
    /// `nuki_bridge_smartlock_info`, dropping those named before that it no longer names.
    pub fn listed(&self, listed: &BTreeSet<u64>) {
        let listed: BTreeSet<u64> = listed.iter().copied().take(MAX_LOCKS_PER_BRIDGE).collect();
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        for gone in named.difference(&listed) {
            let _ = self
                .smartlocks
                .remove_label_values(&[&self.name, &gone.to_string()]);
        }
        for id in &listed {
            self.smartlocks
                .with_label_values(&[&self.name, &id.to_string()])
                .set(1);
        }
        *named = listed;
    }

    /// Sets whether this exporter's callback is registered with the bridge.
    pub fn callback_registered(&self, registered: bool) {
        self.callbacks_registered
            .with_label_values(&[&self.name])
            .set(i64::from(registered));
    }

    /// Sets how many extra copies of this exporter's callback the bridge still holds.
    pub fn stale_callbacks(&self, copies: usize) {
        self.callbacks_stale.set(copies as i64);
    }

    /// Counts a callback the bridge POSTed.
    pub fn callback_received(&self) {
        self.callbacks_received.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::registry_text as exposition;

    #[test]
    fn a_bridge_names_at_most_its_cap_of_locks() {
        let registry = Registry::new();
        let series = BridgeMetrics::new(&registry).bridge("hall");
        let many: BTreeSet<u64> = (1..=1000).collect();
        series.listed(&many);
        series.listed(&many);
        let text = exposition(&registry);
        let named = text
            .lines()
            .filter(|l| l.starts_with("nuki_bridge_smartlock_info{"))
            .count();
        assert_eq!(named, MAX_LOCKS_PER_BRIDGE, "{text}");
        series.listed(&BTreeSet::new());
        assert!(!exposition(&registry).contains("nuki_bridge_smartlock_info{"));
    }

    #[test]
    fn a_new_poller_is_down_until_it_polls_and_info_is_replaced() {
        let registry = Registry::new();
        let series = BridgeMetrics::new(&registry).bridge("hall");
        assert!(!exposition(&registry).contains("nuki_bridge_up{"));
        series.leading(true);
        assert!(exposition(&registry).contains("nuki_bridge_up{bridge=\"hall\"} 0"));
        series.polled(true, 1_700_000_000.0);
        series.info(&BridgeInfo {
            bridge_type: Some("hardware".into()),
            firmware_version: Some("2.17.0".into()),
            server_connected: Some(false),
        });
        series.info(&BridgeInfo {
            bridge_type: Some("hardware".into()),
            firmware_version: Some("2.18.0".into()),
            server_connected: Some(true),
        });
        series.listed(&BTreeSet::from([11, 12]));
        series.listed(&BTreeSet::from([12, 13]));
        series.request("list", Some(503));
        series.request("list", None);
        let text = exposition(&registry);
        assert!(text.contains("nuki_bridge_up{bridge=\"hall\"} 1"), "{text}");
        assert!(
            text.contains("nuki_bridge_last_success_timestamp_seconds{bridge=\"hall\"} 1700000000")
        );
        assert!(text.contains("nuki_bridge_server_connected{bridge=\"hall\"} 1"));
        assert!(text.contains(
            "nuki_bridge_info{bridge=\"hall\",bridge_type=\"hardware\",firmware_version=\"2.18.0\"} 1"
        ));
        assert!(!text.contains("2.17.0"), "{text}");
        assert!(text.contains("nuki_bridge_callbacks_stale{bridge=\"hall\"} 0"));
        assert!(text.contains(
            "nuki_bridge_requests_total{bridge=\"hall\",code=\"503\",endpoint=\"list\"} 1"
        ));
        for id in ["12", "13"] {
            assert!(text.contains(&format!(
                "nuki_bridge_smartlock_info{{bridge=\"hall\",smartlock_id=\"{id}\"}} 1"
            )));
        }
        assert!(!text.contains("smartlock_id=\"11\""), "{text}");
        assert!(text.contains(
            "nuki_bridge_requests_total{bridge=\"hall\",code=\"error\",endpoint=\"list\"} 1"
        ));
    }

    #[test]
    fn a_long_firmware_version_is_cut_to_128_bytes() {
        let registry = Registry::new();
        let series = BridgeMetrics::new(&registry).bridge("hall");
        series.info(&BridgeInfo {
            bridge_type: Some("hardware".into()),
            firmware_version: Some(format!("2.{}", "é".repeat(200))),
            server_connected: None,
        });
        let text = exposition(&registry);
        let firmware = text
            .lines()
            .find(|line| line.starts_with("nuki_bridge_info{"))
            .and_then(|line| line.split("firmware_version=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            firmware,
            format!("2.{}", "é".repeat(63)),
            "{} bytes",
            firmware.len()
        );
    }

    #[test]
    fn a_replica_that_stops_polling_drops_the_poll_state_and_a_new_poller_starts_down() {
        let registry = Registry::new();
        let series = BridgeMetrics::new(&registry).bridge("hall");
        series.leading(true);
        series.polled(true, 1_700_000_000.0);
        series.callback_registered(true);
        series.info(&BridgeInfo {
            bridge_type: Some("hardware".into()),
            firmware_version: Some("2.18.0".into()),
            server_connected: Some(true),
        });
        series.leading(false);
        let text = exposition(&registry);
        assert!(
            text.contains("nuki_bridge_poller_leader{bridge=\"hall\"} 0"),
            "{text}"
        );
        for gone in [
            "nuki_bridge_up{",
            "nuki_bridge_server_connected{",
            "nuki_bridge_callbacks_registered{",
        ] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        series.leading(true);
        let text = exposition(&registry);
        assert!(
            text.contains("nuki_bridge_poller_leader{bridge=\"hall\"} 1"),
            "{text}"
        );
        assert!(text.contains("nuki_bridge_up{bridge=\"hall\"} 0"), "{text}");
    }
}

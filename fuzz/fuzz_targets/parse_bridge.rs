//! Nuki Bridge bodies: arbitrary bytes through every bridge parser. A bridge cannot sign what
//! it sends, so a callback is guarded by its sender's address alone: whatever reaches the
//! webhook listener from that address goes through `parse_callback`, and each reported lock
//! into the metrics, as the server does.
//!
//! As in `parse_payload`, a fresh `Metrics` per input (recorded into and scraped) and one that
//! lives for the whole run with small limits, its label sets checked every 4096 inputs.

#![no_main]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use nuki_exporter::lock::{LockEvent, Origin};
use nuki_exporter::source::bridge::parse::{
    DeviceReport, parse_callback, parse_callbacks, parse_info, parse_list, parse_outcome,
};
use nuki_exporter::store::Metrics;
use serde::de::IgnoredAny;

mod harness;
use harness::{INPUTS, LIMITS, LONG_LIVED, NOW, parse_sample};

fuzz_target!(|data: &[u8]| {
    // JSON syntax at any depth, without decoding: what an accepted body must have.
    let syntax = || serde_json::from_slice::<IgnoredAny>(data).is_ok();
    let first = data.trim_ascii_start().first().copied();
    let mut reports: Vec<DeviceReport> = Vec::new();

    if let Ok(devices) = parse_list(data) {
        assert!(
            first == Some(b'[') && syntax(),
            "accepted a /list that is not a JSON array"
        );
        assert!(devices.len() * 2 <= data.len());
        assert_eq!(parse_list(data).ok(), Some(devices.clone()), "not pure");
        reports.extend(devices);
    }
    if let Ok(report) = parse_callback(data) {
        assert!(
            first == Some(b'{') && syntax(),
            "accepted a callback that is not a JSON object"
        );
        assert!(matches!(
            report.events.as_slice(),
            [LockEvent::Seen, LockEvent::Status(_)]
        ));
        assert_eq!(parse_callback(data).ok(), Some(report.clone()), "not pure");
        reports.push(report);
    }
    for accepted in [
        parse_info(data).is_ok(),
        parse_callbacks(data).is_ok(),
        parse_outcome(data).is_ok(),
    ] {
        if accepted {
            assert!(
                first == Some(b'{') && syntax(),
                "accepted a body that is not a JSON object"
            );
        }
    }
    if reports.is_empty() {
        return;
    }

    let fresh = Metrics::new(LIMITS);
    for report in &reports {
        fresh.observe(
            report.smartlock_id,
            Origin::BridgeCallback,
            &report.events,
            NOW,
        );
        LONG_LIVED.observe(
            report.smartlock_id,
            Origin::BridgeCallback,
            &report.events,
            NOW,
        );
    }
    check_bounds(&String::from_utf8(fresh.encode()).expect("exposition is UTF-8"));
    if INPUTS.fetch_add(1, Ordering::Relaxed).is_multiple_of(4096) {
        check_bounds(&String::from_utf8(LONG_LIVED.encode()).expect("exposition is UTF-8"));
    }
});

/// At most `max_smartlocks` lock ids besides the shared `other`, each a number.
fn check_bounds(text: &str) {
    let mut locks = BTreeSet::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (_, labels, _) =
            parse_sample(line).unwrap_or_else(|| panic!("malformed sample {line:?}"));
        for (name, value) in labels {
            if name == "smartlock_id" && value != "other" {
                assert!(value.parse::<u64>().is_ok(), "smartlock_id {value:?}");
                locks.insert(value);
            }
        }
    }
    assert!(
        locks.len() <= LIMITS.max_smartlocks,
        "{} lock ids",
        locks.len()
    );
}

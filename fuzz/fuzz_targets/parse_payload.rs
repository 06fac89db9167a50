//! Webhook bodies: arbitrary bytes through `webhook::parse`, and every accepted webhook into
//! the metrics, as the server does after the signature check.
//!
//! Two `Metrics`: a fresh one per input (reproducible: a crash depends on this input alone)
//! that is recorded into and scraped, and one that lives for the whole run with small limits,
//! so that `-rss_limit_mb` would catch label sets growing past their caps. Every 4096 inputs
//! the long-lived one is scraped and its label sets checked against the caps.

#![no_main]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use nuki_exporter::source::webhook::events::record;
use nuki_exporter::source::webhook::parse::{self as webhook, ParseError, Webhook};
use nuki_exporter::store::Metrics;
use serde::de::IgnoredAny;

mod harness;
use harness::{INPUTS, LIMITS, LONG_LIVED, NOW, parse_sample};

fuzz_target!(|data: &[u8]| {
    let parsed = webhook::parse(data);
    let utf8 = std::str::from_utf8(data).is_ok();
    // JSON syntax at any depth, without decoding: what the parser checks of unread fields.
    let syntax = || serde_json::from_slice::<IgnoredAny>(data).is_ok();
    let object = data.trim_ascii_start().first() == Some(&b'{');
    let webhook = match parsed {
        Ok(webhook) => {
            assert!(
                utf8 && object && syntax(),
                "accepted a body that is not a JSON object"
            );
            webhook
        }
        Err(ParseError::Utf8(_)) => {
            assert!(!utf8);
            return;
        }
        Err(ParseError::NotAnObject) => {
            assert!(utf8 && !object && syntax());
            return;
        }
        Err(ParseError::Json(error)) => {
            // Valid JSON is refused as malformed only for an object naming a field the parser
            // reads twice, or a value the parser decodes that is a number beyond f64 or a string
            // with a lone surrogate escape (see tests/properties.rs).
            let error = error.to_string();
            let undecodable = ["number out of range", "surrogate", "hex escape"];
            let explained = (object && error.contains("duplicate field"))
                || undecodable.iter().any(|reason| error.contains(reason));
            assert!(explained || !syntax(), "refused valid JSON: {error}");
            return;
        }
    };
    if let Webhook::Api(api) = &webhook {
        // Each result is a JSON object in the body (at least `{}`), or the body itself.
        assert!(api.results.len() * 2 <= data.len());
    }
    assert_eq!(
        webhook::parse(data).ok().as_ref(),
        Some(&webhook),
        "not pure"
    );

    let fresh = Metrics::new(LIMITS);
    record(&fresh, &webhook, NOW);
    let text = String::from_utf8(fresh.encode()).expect("exposition is UTF-8");
    check_bounds(&text);

    record(&LONG_LIVED, &webhook, NOW);
    if INPUTS.fetch_add(1, Ordering::Relaxed).is_multiple_of(4096) {
        let text = String::from_utf8(LONG_LIVED.encode()).expect("exposition is UTF-8");
        check_bounds(&text);
    }
});

/// At most `max_smartlocks` lock ids and `max_operations` operation values besides the shared
/// `other` and `unknown`.
fn check_bounds(text: &str) {
    let mut locks = BTreeSet::new();
    let mut operations = BTreeSet::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (_, labels, _) =
            parse_sample(line).unwrap_or_else(|| panic!("malformed sample {line:?}"));
        for (name, value) in labels {
            if value == "other" || value == "unknown" {
                continue;
            }
            match name.as_str() {
                "smartlock_id" => {
                    assert!(value.parse::<u64>().is_ok(), "smartlock_id {value:?}");
                    locks.insert(value);
                }
                "operation" => {
                    assert!(value.len() <= 64, "operation of {} bytes", value.len());
                    operations.insert(value);
                }
                _ => {}
            }
        }
    }
    assert!(
        locks.len() <= LIMITS.max_smartlocks,
        "{} lock ids",
        locks.len()
    );
    assert!(
        operations.len() <= LIMITS.max_operations,
        "{} operations",
        operations.len()
    );
}

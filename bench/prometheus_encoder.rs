//! The benchmark's reference encoder: the `prometheus` crate's own `Registry::gather` and
//! `TextEncoder` for the same per-lock series `bench/run` fills the exporter with (3 per lock:
//! `nuki_operations_total`, `nuki_operation_errors_total` with one of eight catalogue codes,
//! `nuki_smartlock_last_seen_timestamp_seconds`), timed in-process on the same machine.
//!
//! Usage: `prometheus_encoder SERIES REPEATS`; prints one JSON object: series, bytes, the
//! seconds of each gather + encode, and for comparison the bytes and seconds of each
//! in-process `Metrics::encode` of the exporter filled with the same series by parsed webhooks.

use std::time::Instant;

use nuki_exporter::catalogue;
use nuki_exporter::source::webhook::events::record;
use nuki_exporter::source::webhook::parse as webhook;
use nuki_exporter::store::lock_store::{ERRORS, LAST_SEEN, OPERATIONS};
use nuki_exporter::store::{Limits, Metrics};
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

/// As bench/bench.py: 11-digit ids from here, one of these codes per lock.
const ID_BASE: u64 = 17_000_000_000;
const ERROR_CODES: [u8; 8] = [0xff, 0xfe, 0x40, 0x41, 0xfd, 0xc2, 0x43, 0xa0];

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |name: &str| -> usize {
        args.next()
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("usage: prometheus_encoder SERIES REPEATS (missing {name})"))
    };
    let (series, repeats) = (number("SERIES"), number("REPEATS"));

    let registry = Registry::new();
    let register = |vec: IntCounterVec| {
        registry.register(Box::new(vec.clone())).unwrap();
        vec
    };
    let operations = register(
        IntCounterVec::new(
            Opts::new(OPERATIONS.name, OPERATIONS.help),
            &["operation", "smartlock_id"],
        )
        .unwrap(),
    );
    let errors = register(
        IntCounterVec::new(
            Opts::new(ERRORS.name, ERRORS.help),
            &["operation", "error_code", "error_name", "smartlock_id"],
        )
        .unwrap(),
    );
    let last_seen =
        GaugeVec::new(Opts::new(LAST_SEEN.name, LAST_SEEN.help), &["smartlock_id"]).unwrap();
    registry.register(Box::new(last_seen.clone())).unwrap();
    for lock in 0..series.div_ceil(3) as u64 {
        let id = (ID_BASE + lock).to_string();
        let code = ERROR_CODES[(lock % 8) as usize];
        operations.with_label_values(&["AuthCreation", &id]).inc();
        errors
            .with_label_values(&[
                "AuthCreation",
                &catalogue::hex_label(code),
                catalogue::name_of(code),
                &id,
            ])
            .inc();
        last_seen.with_label_values(&[&id]).set(1_764_000_000.0);
    }

    let locks = series.div_ceil(3) as u64;
    let exporter = Metrics::new(Limits {
        max_smartlocks: locks as usize,
        max_operations: 64,
        max_series: series * 2,
        max_series_per_lock: 1_000,
    });
    for lock in 0..locks {
        let body = format!(
            r#"{{"type":"AuthCreation","detail":[{{"smartlockId":{},"success":false,"errorCode":"{:02x}"}}]}}"#,
            ID_BASE + lock,
            ERROR_CODES[(lock % 8) as usize]
        );
        record(
            &exporter,
            &webhook::parse(body.as_bytes()).unwrap(),
            1_764_000_000.0,
        );
    }

    let time = |encode: &dyn Fn() -> usize| {
        let mut seconds = Vec::with_capacity(repeats);
        let mut bytes = 0;
        for _ in 0..repeats {
            let started = Instant::now();
            bytes = encode();
            seconds.push(started.elapsed().as_secs_f64());
        }
        (seconds, bytes)
    };
    let (seconds, bytes) = time(&|| {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buffer)
            .unwrap();
        buffer.len()
    });
    let (exporter_seconds, exporter_bytes) = time(&|| exporter.encode().len());
    println!(
        "{{\"series\":{},\"bytes\":{bytes},\"seconds\":{seconds:?},\"exporter_bytes\":{exporter_bytes},\"exporter_seconds\":{exporter_seconds:?}}}",
        locks * 3
    );
}

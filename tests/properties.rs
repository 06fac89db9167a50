//! Property tests for the two paths every webhook byte goes through: the signature check and
//! the payload parser, and for what the parser's events do to the metrics.
//!
//! - arbitrary bytes never panic, allocate at most a fixed multiple of their size, and any
//!   accepted body is a JSON object with a consistent result;
//! - arbitrary JSON values never panic, and only non-objects are errors;
//! - generated, valid API and device webhooks round-trip to exactly the events they encode;
//! - a signature is accepted for its own body and secret, in either case, and nothing else;
//! - however many distinct lock ids and operation names arrive, the metrics keep at most the
//!   configured number of label values.
//!
//! 256 cases per property by default (the recording property runs fewer, longer cases); set
//! `PROPTEST_CASES` for more. The cargo-fuzz targets in `fuzz/` cover the same two entry
//! points without a time limit; see `docs/fuzzing.md`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use nuki_exporter::source::webhook::events::record;
use nuki_exporter::source::webhook::parse::{
    self as webhook, CompletionState, DeviceEvent, EntityResult, ErrorCode, Feature, LockStatus,
    LogAction, Outcome, ParseError, Webhook,
};
use nuki_exporter::source::webhook::signature::{SignatureError, Verifier, sign};
use nuki_exporter::store::{Limits, Metrics};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: live heap bytes of the current thread, and their peak.

/// The system allocator, counting the live bytes and their peak per thread, so that a property
/// can bound what one call allocates (proptest runs every case of a test on one thread).
struct CountingAllocator;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counting only touches const
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Counted as old + new while moving: an upper bound of what realloc holds.
            track(new_size as isize);
            track(-(layout.size() as isize));
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result with the peak of heap bytes it held on top of what was
/// live before.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, (peak - base).max(0) as usize)
}

/// What `parse` may hold at its peak for a body of `len` bytes: 32 bytes per body byte.
///
/// Strings are borrowed from the body unless escaped (then at most their own length) and
/// unread values are skipped without being stored, so the cost is the `detail[]` entries: `{},`
/// is 3 body bytes and a 24-byte entry, in a vector that doubles (old and new buffer both
/// counted while it grows): 24 bytes per byte, measured 18.0 on `{"detail":[{},{},…]}`.
/// At the default `limits.max_body_bytes` of 64 KiB that is at most 2 MiB, freed when
/// `parse` returns.
fn parse_budget(len: usize) -> usize {
    32 * len + 64 * 1024
}

// ---------------------------------------------------------------------------------------------
// Inputs.

fn fixtures() -> &'static [Vec<u8>] {
    static FIXTURES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
        common::fixture_names()
            .iter()
            .map(|name| common::fixture(name))
            .collect()
    });
    &FIXTURES
}

/// A fixture with a few bytes inserted, deleted or replaced: mostly near-valid JSON.
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    let edits = vec((any::<Index>(), 0u8..3, any::<u8>()), 0..8);
    (any::<Index>(), edits).prop_map(|(which, edits)| {
        let mut body = which.get(fixtures()).clone();
        for (at, op, byte) in edits {
            let len = body.len();
            match op {
                0 => body.insert(at.index(len + 1), byte),
                1 if len > 0 => {
                    body.remove(at.index(len));
                }
                _ if len > 0 => body[at.index(len)] = byte,
                _ => body.push(byte),
            }
        }
        body
    })
}

/// JSON tokens, webhook keys and edge-case literals strung together: often a JSON object.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\"feature\"",
        "\"type\"",
        "\"requestId\"",
        "\"detail\"",
        "\"smartlockId\"",
        "\"errorCode\"",
        "\"success\"",
        "\"state\"",
        "\"smartlockLog\"",
        "\"smartlockAuth\"",
        "\"deleted\"",
        "\"name\"",
        "\"firmwareVersion\"",
        "\"DEVICE_STATUS\"",
        "\"DEVICE_LOGS\"",
        "\"DEVICE_MASTERDATA\"",
        "\"DEVICE_AUTHS\"",
        "\"ACCOUNT_USER\"",
        "\"ff\"",
        "\"0xFF\"",
        "\"123\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\\"\"",
        "0",
        "-1",
        "255",
        "256",
        "1.5",
        "1e400",
        "-0",
        "18446744073709551615",
        "18446744073709551616",
        "true",
        "false",
        "null",
    ];
    vec(select(TOKENS), 0..64).prop_map(|tokens| tokens.concat().into_bytes())
}

/// The bodies that allocate most per byte: long `detail[]` arrays of small, possibly nested,
/// objects.
fn dense_objects() -> impl Strategy<Value = Vec<u8>> {
    (0usize..2_000, 0usize..130, any::<bool>()).prop_map(|(count, depth, as_detail)| {
        let item = match depth {
            0 => "{}".to_owned(),
            _ => format!("{}0{}", r#"{"":"#.repeat(depth - 1), "}".repeat(depth - 1)),
        };
        let items = vec![item; count].join(",");
        let body = if as_detail {
            format!(r#"{{"type":"X","detail":[{items}]}}"#)
        } else {
            format!("[{items}]")
        };
        body.into_bytes()
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..2048),
        3 => token_soup(),
        3 => mutated_fixture(),
        1 => dense_objects(),
    ]
}

const KEYS: &[&str] = &[
    "feature",
    "type",
    "requestId",
    "detail",
    "smartlockId",
    "errorCode",
    "success",
    "state",
    "serverState",
    "smartlockLog",
    "smartlockAuth",
    "deleted",
    "name",
    "firmwareVersion",
    "batteryCharge",
    "batteryCritical",
    "keypadBatteryCritical",
    "doorsensorBatteryCritical",
    "doorState",
    "action",
];

const STRINGS: &[&str] = &[
    "DEVICE_STATUS",
    "DEVICE_MASTERDATA",
    "DEVICE_CONFIG",
    "DEVICE_LOGS",
    "DEVICE_AUTHS",
    "ACCOUNT_USER",
    "AuthCreation",
    "ff",
    "FF",
    "0xff",
    "0XFF",
    " 4c ",
    "0x",
    "zz",
    "fff",
    "123456789",
    "+7",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "",
    "other",
    "unknown",
];

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-10i64..300).prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        select(STRINGS).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(KEYS).prop_map(String::from),
        1 => any::<String>(),
    ]
    .boxed()
}

fn object(entries: Vec<(String, Value)>) -> Value {
    Value::Object(entries.into_iter().collect())
}

/// Nested JSON of every type, objects keyed mostly by the names the parser looks for.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..8).prop_map(Value::Array),
                vec((json_key(), inner), 0..8).prop_map(object),
            ]
        })
        .boxed()
}

/// Mostly objects (webhook-shaped, with random field types), sometimes any JSON value.
fn json_root() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => vec((json_key(), json_value()), 0..10).prop_map(object),
        1 => json_value(),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// A model of the parser's classification, for the arbitrary-JSON property.

fn id_in(object: Option<&Value>) -> Option<u64> {
    match object?.as_object()?.get("smartlockId")? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

fn check_against_model(root: &Map<String, Value>, webhook: &Webhook) -> Result<(), TestCaseError> {
    let whole = Value::Object(root.clone());
    if let Some(name) = root.get("feature").and_then(Value::as_str) {
        let Webhook::Device(device) = webhook else {
            return Err(TestCaseError::fail(format!(
                "a string feature is a device webhook, got {webhook:?}"
            )));
        };
        prop_assert_eq!(device.feature.as_str(), name);
        let nested = |key: &str| id_in(root.get(key)).or_else(|| id_in(Some(&whole)));
        let (id, event_ok) = match name {
            "DEVICE_STATUS" => (
                id_in(Some(&whole)),
                matches!(device.event, DeviceEvent::Status(_)),
            ),
            "DEVICE_MASTERDATA" => (
                id_in(Some(&whole)),
                matches!(device.event, DeviceEvent::Masterdata(_)),
            ),
            "DEVICE_LOGS" => (
                nested("smartlockLog"),
                matches!(device.event, DeviceEvent::Log(_)),
            ),
            "DEVICE_AUTHS" => (nested("smartlockAuth"), device.event == DeviceEvent::Seen),
            "ACCOUNT_USER" => (None, device.event == DeviceEvent::Seen),
            _ => (id_in(Some(&whole)), device.event == DeviceEvent::Seen),
        };
        prop_assert_eq!(device.smartlock_id, id);
        prop_assert!(event_ok, "{name}: {:?}", device.event);
    } else if root.contains_key("type") || root.contains_key("requestId") {
        let Webhook::Api(api) = webhook else {
            return Err(TestCaseError::fail(format!(
                "type/requestId is an API webhook, got {webhook:?}"
            )));
        };
        prop_assert_eq!(
            api.operation.as_deref(),
            root.get("type").and_then(Value::as_str)
        );
        match root.get("detail") {
            Some(Value::Array(entries)) => prop_assert_eq!(
                api.results.len(),
                entries.iter().filter(|entry| entry.is_object()).count()
            ),
            _ => prop_assert!(api.results.len() <= 1),
        }
    } else {
        prop_assert_eq!(webhook, &Webhook::Unrecognised);
    }
    Ok(())
}

/// A metrics facade shared by the properties that only check `record` does not panic.
fn shared_metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        Metrics::new(Limits {
            max_smartlocks: 1000,
            max_operations: 100,
            max_series: 1_000_000,
            max_series_per_lock: 10_000,
        })
    });
    &METRICS
}

const NOW: f64 = 1_700_000_000.0;

// ---------------------------------------------------------------------------------------------
// (a) Arbitrary bytes and (b) arbitrary JSON.

/// Why `parse` may refuse syntactically valid JSON as malformed rather than as not an object:
/// an object names a field the parser reads twice (the documented case), or a value the parser
/// decodes is a number beyond f64 (`1e400`) or a string with a lone UTF-16 surrogate escape
/// (`"\ud800"`). The last two are refused only where the parser reads (a read field, or the
/// body itself); in unread fields they are skipped like anything else.
fn refused_valid_json(error: &str, object: bool) -> bool {
    let undecodable = ["number out of range", "surrogate", "hex escape"];
    (object && error.contains("duplicate field"))
        || undecodable.iter().any(|reason| error.contains(reason))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_allocate_in_proportion(body in any_body()) {
        let (parsed, peak) = peak_heap(|| webhook::parse(&body));
        prop_assert!(
            peak <= parse_budget(body.len()),
            "{} bytes held {peak} bytes at peak",
            body.len()
        );
        let utf8 = std::str::from_utf8(&body).is_ok();
        // JSON syntax at any depth, without decoding: what the parser checks of unread fields.
        let syntax = serde_json::from_slice::<IgnoredAny>(&body).is_ok();
        let object = body.trim_ascii_start().first() == Some(&b'{');
        match &parsed {
            Ok(webhook) => {
                prop_assert!(utf8 && syntax && object);
                if let Webhook::Api(api) = webhook {
                    // Every result is an object (`{}`, 2 bytes) in the body, or the body itself.
                    prop_assert!(api.results.len() * 2 <= body.len());
                }
                if let Webhook::Device(device) = webhook {
                    prop_assert!(device.feature.as_str().len() <= body.len());
                }
                record(shared_metrics(), webhook, NOW);
            }
            Err(ParseError::Utf8(_)) => prop_assert!(!utf8),
            Err(ParseError::NotAnObject) => prop_assert!(utf8 && syntax && !object),
            Err(ParseError::Json(error)) => {
                prop_assert!(utf8);
                if syntax {
                    prop_assert!(refused_valid_json(&error.to_string(), object), "{error}");
                }
            }
        }
        // Pure: the same bytes give the same answer.
        let again = webhook::parse(&body);
        match (&parsed, &again) {
            (Ok(first), Ok(second)) => prop_assert_eq!(first, second),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{parsed:?} then {again:?}"),
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_only_non_objects_are_errors(value in json_root()) {
        let body = serde_json::to_vec(&value).unwrap();
        let parsed = webhook::parse(&body);
        match serde_json::from_slice::<Value>(&body).unwrap() {
            Value::Object(root) => {
                let webhook = parsed.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                check_against_model(&root, &webhook)?;
                record(shared_metrics(), &webhook, NOW);
            }
            _ => prop_assert!(matches!(parsed, Err(ParseError::NotAnObject)), "{parsed:?}"),
        }
        // Pretty-printed, the same value is the same webhook.
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        match (webhook::parse(&body), webhook::parse(&pretty)) {
            (Ok(compact), Ok(pretty)) => prop_assert_eq!(compact, pretty),
            (Err(_), Err(_)) => {}
            (compact, pretty) => prop_assert!(false, "{compact:?} vs {pretty:?}"),
        }
    }

    #[test]
    fn nesting_of_any_depth_is_skipped_without_recursion(
        depth in prop_oneof![0usize..300, 0usize..50_000],
        array in any::<bool>(),
        position in 0usize..5,
    ) {
        let (open, close) = if array { ("[", "]") } else { (r#"{"a":"#, "}") };
        let deep = format!("{}0{}", open.repeat(depth), close.repeat(depth));
        // Unread, or where the parser reads something else: skipped at any depth.
        let body = match position {
            0 => format!(r#"{{"type":"A","unread":{deep}}}"#),
            1 => format!(r#"{{"feature":{deep}}}"#),
            2 => format!(r#"{{"type":"A","detail":[{deep},{{"smartlockId":{deep}}}]}}"#),
            3 => format!(r#"{{"feature":"DEVICE_STATUS","state":{{"state":{deep}}}}}"#),
            _ => format!(r#"{{"feature":"DEVICE_LOGS","smartlockLog":{deep}}}"#),
        };
        let parsed = webhook::parse(body.as_bytes());
        prop_assert!(parsed.is_ok(), "depth {depth} at {position}: {parsed:?}");
    }

    #[test]
    fn a_field_read_twice_is_refused_and_an_unread_one_is_not(
        key in select(KEYS),
        unread in "[a-z]{1,8}",
        first in json_leaf(),
        second in json_leaf(),
    ) {
        let (first, second) = (first.to_string(), second.to_string());
        // Every key in KEYS is read at the top level except the ones only read inside
        // `state`, `smartlockLog` or `detail[]`.
        let nested_only = [
            "batteryCharge",
            "batteryCritical",
            "keypadBatteryCritical",
            "doorsensorBatteryCritical",
            "doorState",
            "action",
        ];
        let body = format!(r#"{{"{key}":{first},"{key}":{second}}}"#);
        let parsed = webhook::parse(body.as_bytes());
        if nested_only.contains(&key) {
            prop_assert!(parsed.is_ok(), "{body}: {parsed:?}");
        } else {
            let duplicate = match &parsed {
                Err(ParseError::Json(error)) => error.to_string().contains("duplicate field"),
                _ => false,
            };
            prop_assert!(duplicate, "{body}: {parsed:?}");
        }
        let body = format!(r#"{{"type":"A","x{unread}":{first},"x{unread}":{second}}}"#);
        prop_assert!(webhook::parse(body.as_bytes()).is_ok(), "{body}");
    }
}

/// The shapes that cost most per byte, filling the default 64 KiB body limit.
#[test]
fn worst_case_bodies_stay_within_the_allocation_budget() {
    let limit = 64 * 1024;
    let nested = |depth: usize| format!("{}0{}", r#"{"":"#.repeat(depth), "}".repeat(depth));
    let shapes = [
        ("[", "0".to_owned(), "]"),
        ("[", "{}".to_owned(), "]"),
        ("[", nested(126), "]"),
        (r#"{"type":"X","detail":["#, "{}".to_owned(), "]}"),
        (r#"{"type":"X","detail":["#, "0".to_owned(), "]}"),
        (r#"{"type":"X","detail":["#, nested(1), "]}"),
        (
            r#"{"type":"X","detail":["#,
            r#"{"success":false}"#.to_owned(),
            "]}",
        ),
        (r#"{"type":"X","detail":["#, nested(120), "]}"),
        (r#"{"type":"X","name":["#, "[]".to_owned(), "]}"),
    ];
    for (open, item, close) in shapes {
        let count = (limit - open.len() - close.len()) / (item.len() + 1);
        let body = format!("{open}{}{close}", vec![item.as_str(); count].join(","));
        let (_, peak) = peak_heap(|| webhook::parse(body.as_bytes()));
        assert!(
            peak <= parse_budget(body.len()),
            "{open}{item}…: {} bytes held {peak} bytes",
            body.len()
        );
    }
}

/// Found by `fuzz/parse_payload` while the parser was being rewritten to skip unread fields
/// without decoding them: invalid UTF-8 inside a skipped value was accepted.
#[test]
fn invalid_utf8_anywhere_is_refused() {
    for body in [
        &b"[\"requ\xff\xffestId\"    ]"[..],
        b"{\"unread\":\"\xff\"}",
        b"{\"type\":\"A\",\"unread\":[{\"x\":\"\xc3\"}]}",
        b"{\"feature\":\"DEVICE_STATUS\",\"state\":{\"mode\":\"\xed\xa0\x80\"}}",
    ] {
        let parsed = webhook::parse(body);
        assert!(
            matches!(parsed, Err(ParseError::Utf8(_))),
            "{:?}: {parsed:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn every_fixture_parses() {
    assert!(fixtures().len() >= 10);
    for body in fixtures() {
        webhook::parse(body).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Valid webhooks round-trip to exactly their events.

/// How an `errorCode` is spelled, and what it must read as.
#[derive(Clone, Debug)]
enum ErrorField {
    Absent,
    Null,
    Code(u8, Spelling),
    Invalid(Value),
}

#[derive(Clone, Copy, Debug)]
enum Spelling {
    Lower,
    Upper,
    Prefixed,
    PrefixedUpper,
    Short,
    Padded,
    Number,
}

impl ErrorField {
    fn json(&self) -> Option<Value> {
        match self {
            Self::Absent => None,
            Self::Null => Some(Value::Null),
            Self::Code(code, spelling) => Some(match spelling {
                Spelling::Lower => json!(format!("{code:02x}")),
                Spelling::Upper => json!(format!("{code:02X}")),
                Spelling::Prefixed => json!(format!("0x{code:02x}")),
                Spelling::PrefixedUpper => json!(format!("0x{code:02X}")),
                Spelling::Short => json!(format!("{code:x}")),
                Spelling::Padded => json!(format!(" {code:02x}\t")),
                Spelling::Number => json!(code),
            }),
            Self::Invalid(value) => Some(value.clone()),
        }
    }

    fn expected(&self) -> ErrorCode {
        match self {
            Self::Absent | Self::Null => ErrorCode::Missing,
            Self::Code(code, _) => ErrorCode::Code(*code),
            Self::Invalid(_) => ErrorCode::Invalid,
        }
    }
}

fn error_field() -> impl Strategy<Value = ErrorField> {
    let spelling = select(vec![
        Spelling::Lower,
        Spelling::Upper,
        Spelling::Prefixed,
        Spelling::PrefixedUpper,
        Spelling::Short,
        Spelling::Padded,
        Spelling::Number,
    ]);
    let invalid = select(vec![
        json!("zz"),
        json!("fff"),
        json!("0x"),
        json!(""),
        json!("-1"),
        json!("0x1g"),
        json!(256),
        json!(-1),
        json!(1.5),
        json!(true),
        json!([]),
        json!({}),
    ]);
    prop_oneof![
        1 => Just(ErrorField::Absent),
        1 => Just(ErrorField::Null),
        8 => (any::<u8>(), spelling).prop_map(|(code, spelling)| ErrorField::Code(code, spelling)),
        2 => invalid.prop_map(ErrorField::Invalid),
    ]
}

/// A `smartlockId` as Nuki sends it: a JSON number or a string of digits.
fn lock_id_json(id: u64, as_string: bool) -> Value {
    if as_string {
        json!(id.to_string())
    } else {
        json!(id)
    }
}

#[derive(Clone, Debug)]
struct Entity {
    id: Option<(u64, bool)>,
    success: Option<bool>,
    error: ErrorField,
}

impl Entity {
    fn write_into(&self, object: &mut Map<String, Value>) {
        if let Some((id, as_string)) = self.id {
            object.insert("smartlockId".into(), lock_id_json(id, as_string));
        }
        if let Some(success) = self.success {
            object.insert("success".into(), json!(success));
        }
        if let Some(code) = self.error.json() {
            object.insert("errorCode".into(), code);
        }
    }

    /// `success` decides; without it, an entity without an error code succeeded.
    fn succeeded(&self) -> bool {
        self.success
            .unwrap_or(matches!(self.error, ErrorField::Absent | ErrorField::Null))
    }

    fn expected(&self) -> EntityResult {
        EntityResult {
            smartlock_id: self.id.map(|(id, _)| id),
            outcome: if self.succeeded() {
                Outcome::Success
            } else {
                Outcome::Failure(self.error.expected())
            },
        }
    }
}

fn entity() -> impl Strategy<Value = Entity> {
    (
        prop::option::weighted(0.9, (any::<u64>(), any::<bool>())),
        prop::option::weighted(0.8, any::<bool>()),
        error_field(),
    )
        .prop_map(|(id, success, error)| Entity { id, success, error })
}

/// An operation name as a label value: short, so that it is never folded into `other`.
fn operation() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "AuthCreation",
            "AuthUpdate",
            "AuthDeletion",
            "LockAction",
            "UnlockAction",
            "ConfigUpdate",
        ])
        .prop_map(String::from),
        "[A-Za-z][A-Za-z0-9_]{0,40}",
    ]
}

/// Every sample of the exposition: metric name, labels, value.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(metrics: &Metrics) -> Vec<Sample> {
    let text = String::from_utf8(metrics.encode()).expect("exposition is UTF-8");
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, labels, value) =
                common::parse_sample(line).unwrap_or_else(|| panic!("{line}"));
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

fn lock_label(id: Option<u64>) -> String {
    id.map_or_else(|| "unknown".to_owned(), |id| id.to_string())
}

fn code_label(code: ErrorCode) -> String {
    match code {
        ErrorCode::Code(byte) => format!("0x{byte:02X}"),
        ErrorCode::Invalid => "invalid".into(),
        ErrorCode::Missing => "missing".into(),
    }
}

/// Sums of one counter family by the given labels.
fn counts(samples: &[Sample], name: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == name) {
        let key = by
            .iter()
            .map(|label| sample.labels[*label].clone())
            .collect();
        *out.entry(key).or_insert(0.0) += sample.value;
    }
    out
}

/// A documented code from `known` (as a JSON number) or any integer.
/// `smartlockLog.action` codes and their label values (reference/nuki-webhooks.md, DEVICE_LOGS).
const LOG_ACTIONS: [(i64, &str); 19] = [
    (1, "unlock"),
    (2, "lock"),
    (3, "unlatch"),
    (4, "lock_n_go"),
    (5, "lock_n_go_unlatch"),
    (11, "restore"),
    (208, "door_ajar"),
    (209, "door_status_mismatch"),
    (224, "doorbell_recognition"),
    (240, "door_opened"),
    (241, "door_closed"),
    (242, "door_sensor_jammed"),
    (243, "firmware_update"),
    (250, "door_log_enabled"),
    (251, "door_log_disabled"),
    (252, "initialization"),
    (253, "calibration"),
    (254, "log_enabled"),
    (255, "log_disabled"),
];

/// `smartlockLog.state` codes and their label values (reference/nuki-webhooks.md, DEVICE_LOGS).
const COMPLETION_STATES: [(i64, &str); 16] = [
    (0, "success"),
    (1, "motor_blocked"),
    (2, "canceled"),
    (3, "too_recent"),
    (4, "busy"),
    (5, "low_motor_voltage"),
    (6, "clutch_failure"),
    (7, "motor_power_failure"),
    (8, "incomplete"),
    (9, "rejected"),
    (10, "rejected_night_mode"),
    (224, "invalid_code"),
    (225, "invalid_fingerprint"),
    (226, "invalid_nfc_tag"),
    (254, "other_error"),
    (255, "unknown_error"),
];

/// The label of a documented code, `other` for any code the table lacks.
fn documented_label(table: &[(i64, &'static str)], code: i64) -> &'static str {
    table
        .iter()
        .find(|(known, _)| *known == code)
        .map_or("other", |(_, label)| label)
}

fn code_or_any(known: &[i64]) -> impl Strategy<Value = i64> {
    let known = known.to_vec();
    prop_oneof![3 => select(known), 1 => any::<i64>()]
}

fn device(body: &[u8]) -> Result<webhook::DeviceWebhook, TestCaseError> {
    match webhook::parse(body) {
        Ok(Webhook::Device(device)) => Ok(device),
        other => Err(TestCaseError::fail(format!(
            "expected a device webhook, got {other:?}"
        ))),
    }
}

proptest! {
    #[test]
    fn api_webhook_round_trips_to_its_results_and_counters(
        operation in operation(),
        entities in vec(entity(), 1..=20),
        request_id in "[0-9a-f]{24}",
        summary_success in any::<bool>(),
    ) {
        let detail: Vec<Value> = entities
            .iter()
            .enumerate()
            .map(|(n, entity)| {
                let mut object = Map::new();
                object.insert("id".into(), json!(format!("{request_id}{n}")));
                entity.write_into(&mut object);
                Value::Object(object)
            })
            .collect();
        let body = serde_json::to_vec(&json!({
            "detail": detail,
            "type": operation,
            "requestId": request_id,
            "success": summary_success,
        }))
        .unwrap();
        let expected: Vec<EntityResult> = entities.iter().map(Entity::expected).collect();
        let webhook = webhook::parse(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Webhook::Api(api) = &webhook else {
            return Err(TestCaseError::fail(format!("expected an API webhook, got {webhook:?}")));
        };
        prop_assert_eq!(api.operation.as_deref(), Some(operation.as_str()));
        prop_assert_eq!(&api.results, &expected);

        // And into the counters: one operation per entity, one error per failed entity,
        // under the lock's own id (the fleet is below the cap).
        let metrics = Metrics::new(Limits { max_smartlocks: 100, max_operations: 10, max_series: 1_000_000, max_series_per_lock: 10_000 });
        record(&metrics, &webhook, NOW);
        let samples = samples(&metrics);
        let mut operations = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for result in &expected {
            let lock = lock_label(result.smartlock_id);
            *operations.entry(vec![operation.clone(), lock.clone()]).or_insert(0.0) += 1.0;
            if let Outcome::Failure(code) = result.outcome {
                let key = vec![operation.clone(), code_label(code), lock];
                *errors.entry(key).or_insert(0.0) += 1.0;
            }
        }
        prop_assert_eq!(
            counts(&samples, "nuki_operations_total", &["operation", "smartlock_id"]),
            operations
        );
        prop_assert_eq!(
            counts(
                &samples,
                "nuki_operation_errors_total",
                &["operation", "error_code", "smartlock_id"]
            ),
            errors
        );
    }

    #[test]
    fn flat_api_webhook_round_trips(operation in operation(), entity in entity()) {
        let mut root = Map::new();
        root.insert("type".into(), json!(operation));
        root.insert("requestId".into(), json!("68c4242aaaaaaaaaaafede8a"));
        entity.write_into(&mut root);
        let body = serde_json::to_vec(&root).unwrap();
        // The flat form is one result when it names a lock or reports a failure.
        let expected = if entity.id.is_some() || !entity.succeeded() {
            vec![entity.expected()]
        } else {
            vec![]
        };
        prop_assert_eq!(
            webhook::parse(&body).unwrap(),
            Webhook::Api(webhook::ApiWebhook { operation: Some(operation.into()), results: expected })
        );
    }

    #[test]
    fn device_status_round_trips(
        id in any::<u64>(),
        id_as_string in any::<bool>(),
        charge in prop::option::of(prop_oneof![0i64..=100, any::<i64>()]),
        critical in prop::option::of(any::<bool>()),
        keypad_critical in prop::option::of(any::<bool>()),
        doorsensor_critical in prop::option::of(any::<bool>()),
        lock_state in prop::option::of(code_or_any(&[0, 1, 2, 3, 4, 5, 6, 7, 254, 255])),
        door_state in prop::option::of(code_or_any(&[0, 1, 2, 3, 4, 5, 16, 240, 255])),
        server_state in prop::option::of(prop_oneof![0i64..=4, any::<i64>()]),
    ) {
        let mut state = Map::new();
        state.insert("mode".into(), json!(2));
        let fields = [
            ("batteryCharge", charge.map(Value::from)),
            ("batteryCritical", critical.map(Value::from)),
            ("keypadBatteryCritical", keypad_critical.map(Value::from)),
            ("doorsensorBatteryCritical", doorsensor_critical.map(Value::from)),
            ("state", lock_state.map(Value::from)),
            ("doorState", door_state.map(Value::from)),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                state.insert(key.into(), value);
            }
        }
        let mut root = Map::new();
        root.insert("feature".into(), json!("DEVICE_STATUS"));
        root.insert("smartlockId".into(), lock_id_json(id, id_as_string));
        root.insert("state".into(), Value::Object(state));
        if let Some(server_state) = server_state {
            root.insert("serverState".into(), json!(server_state));
        }
        let parsed = device(&serde_json::to_vec(&root).unwrap())?;
        prop_assert_eq!(parsed.feature, Feature::DeviceStatus);
        prop_assert_eq!(parsed.smartlock_id, Some(id));
        prop_assert_eq!(
            parsed.event,
            DeviceEvent::Status(LockStatus {
                battery_charge_percent: charge,
                battery_critical: critical,
                keypad_battery_critical: keypad_critical,
                doorsensor_battery_critical: doorsensor_critical,
                lock_state,
                door_state,
                server_state,
                mode: Some(2),
                battery_charging: None,
            })
        );
    }

    #[test]
    fn device_log_round_trips(
        nested_id in prop::option::of((any::<u64>(), any::<bool>())),
        root_id in prop::option::of((any::<u64>(), any::<bool>())),
        action in prop::option::of(code_or_any(&LOG_ACTIONS.map(|(code, _)| code))),
        state in prop::option::of(code_or_any(&COMPLETION_STATES.map(|(code, _)| code))),
    ) {
        let mut log = Map::new();
        log.insert("id".into(), json!("65f0c0ffee0000000000abcd"));
        log.insert("name".into(), json!("Alice"));
        if let Some((id, as_string)) = nested_id {
            log.insert("smartlockId".into(), lock_id_json(id, as_string));
        }
        if let Some(action) = action {
            log.insert("action".into(), json!(action));
        }
        if let Some(state) = state {
            log.insert("state".into(), json!(state));
        }
        let mut root = Map::new();
        root.insert("feature".into(), json!("DEVICE_LOGS"));
        root.insert("smartlockLog".into(), Value::Object(log));
        if let Some((id, as_string)) = root_id {
            root.insert("smartlockId".into(), lock_id_json(id, as_string));
        }
        let parsed = device(&serde_json::to_vec(&root).unwrap())?;
        prop_assert_eq!(parsed.feature, Feature::DeviceLogs);
        // The entry's own lock first, the top-level one otherwise.
        prop_assert_eq!(parsed.smartlock_id, nested_id.or(root_id).map(|(id, _)| id));
        // The labels come from this file's copy of Nuki's tables, not from the parser's.
        let DeviceEvent::Log(entry) = parsed.event else {
            return Err(TestCaseError::fail(format!("not a log entry: {:?}", parsed.event)));
        };
        prop_assert_eq!(
            entry.action.map(LogAction::label),
            action.map(|code| documented_label(&LOG_ACTIONS, code))
        );
        prop_assert_eq!(
            entry.completion_state.map(CompletionState::label),
            state.map(|code| documented_label(&COMPLETION_STATES, code))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (d) Signatures.

fn mutate_signature_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        select(b"0123456789abcdefABCDEF".to_vec()),
        Just(b' '),
        any::<u8>(),
    ]
}

proptest! {
    #[test]
    fn signature_accepts_its_body_and_secret_and_nothing_else(
        // Longer than the 64-byte HMAC block too, where the key is hashed first.
        secret in vec(any::<u8>(), 1..160),
        body in vec(any::<u8>(), 0..1024),
        body_at in any::<Index>(),
        delta in 1u8..=255,
        body_cut in any::<Index>(),
        sig_at in any::<Index>(),
        sig_byte in mutate_signature_byte(),
        sig_cut in 0usize..64,
        secret_at in any::<Index>(),
        case_mask in any::<u64>(),
    ) {
        let verifier = Verifier::new(&[&secret]);
        let signature = sign(&secret, &body);
        prop_assert_eq!(signature.len(), 64);
        prop_assert!(signature.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));

        // Accepted in lower, upper and mixed case.
        prop_assert_eq!(verifier.verify(Some(signature.as_bytes()), &body), Ok(()));
        let upper = signature.to_ascii_uppercase();
        prop_assert_eq!(verifier.verify(Some(upper.as_bytes()), &body), Ok(()));
        let mixed: Vec<u8> = signature
            .bytes()
            .enumerate()
            .map(|(i, b)| if case_mask >> i & 1 == 1 { b.to_ascii_uppercase() } else { b })
            .collect();
        prop_assert_eq!(verifier.verify(Some(&mixed), &body), Ok(()));

        // Any single-byte change of the body, an extension or a truncation: refused.
        if !body.is_empty() {
            let mut tampered = body.clone();
            tampered[body_at.index(body.len())] ^= delta;
            prop_assert_eq!(
                verifier.verify(Some(signature.as_bytes()), &tampered),
                Err(SignatureError::Mismatch)
            );
            let cut = &body[..body_cut.index(body.len())];
            prop_assert_eq!(
                verifier.verify(Some(signature.as_bytes()), cut),
                Err(SignatureError::Mismatch)
            );
        }
        let mut longer = body.clone();
        longer.push(delta);
        prop_assert_eq!(
            verifier.verify(Some(signature.as_bytes()), &longer),
            Err(SignatureError::Mismatch)
        );

        // Any single-byte change of the signature that is not the same digit in the other
        // case: refused, as malformed when the byte is not a hex digit.
        let at = sig_at.index(signature.len());
        let original = signature.as_bytes()[at];
        if !sig_byte.eq_ignore_ascii_case(&original) {
            let mut changed = signature.clone().into_bytes();
            changed[at] = sig_byte;
            let expected = if sig_byte.is_ascii_hexdigit() {
                SignatureError::Mismatch
            } else {
                SignatureError::Malformed
            };
            prop_assert_eq!(verifier.verify(Some(&changed), &body), Err(expected));
        }

        // A truncated, an extended, an empty and a missing signature: refused.
        prop_assert_eq!(
            verifier.verify(Some(&signature.as_bytes()[..sig_cut]), &body),
            Err(SignatureError::Malformed)
        );
        let extended = format!("{signature}0");
        prop_assert_eq!(
            verifier.verify(Some(extended.as_bytes()), &body),
            Err(SignatureError::Malformed)
        );
        prop_assert_eq!(verifier.verify(None, &body), Err(SignatureError::Missing));

        // Another secret (one byte different) refuses it, and accepts only its own signature;
        // both secrets configured (rotation) accept both. Independent random secrets are not
        // used: HMAC pads keys up to 64 bytes with zeros, so "k" and "k\0" are the same key.
        let mut other = secret.clone();
        other[secret_at.index(secret.len())] ^= delta;
        let foreign = Verifier::new(&[&other]);
        prop_assert_eq!(
            foreign.verify(Some(signature.as_bytes()), &body),
            Err(SignatureError::Mismatch)
        );
        let other_signature = sign(&other, &body);
        prop_assert_ne!(&other_signature, &signature);
        prop_assert_eq!(
            verifier.verify(Some(other_signature.as_bytes()), &body),
            Err(SignatureError::Mismatch)
        );
        let rotating = Verifier::new(&[&other, &secret]);
        prop_assert_eq!(rotating.verify(Some(signature.as_bytes()), &body), Ok(()));
        prop_assert_eq!(rotating.verify(Some(other_signature.as_bytes()), &body), Ok(()));
    }

    #[test]
    fn arbitrary_signature_headers_are_refused(
        secret in vec(any::<u8>(), 1..80),
        header in prop_oneof![
            vec(any::<u8>(), 0..128),
            "[0-9a-fA-F]{64}".prop_map(String::into_bytes),
        ],
        body in vec(any::<u8>(), 0..256),
    ) {
        let verifier = Verifier::new(&[&secret]);
        let result = verifier.verify(Some(&header), &body);
        let genuine = header.trim_ascii().eq_ignore_ascii_case(sign(&secret, &body).as_bytes());
        prop_assert_eq!(result.is_ok(), genuine, "{:?}", result);
    }
}

// ---------------------------------------------------------------------------------------------
// (e) Bounded label sets.

const FLEET_LIMITS: Limits = Limits {
    max_smartlocks: 50,
    max_operations: 8,
    max_series: 1_000_000,
    max_series_per_lock: 10_000,
};

/// Webhooks of a large fleet: thousands of lock ids, many operation and feature names (some
/// longer than a label may be), deletions, and arbitrary JSON objects.
fn fleet_webhook() -> BoxedStrategy<Value> {
    let lock = || prop_oneof![0u64..2_000, any::<u64>()];
    let name = || {
        prop_oneof![
            4 => select(vec![
                "AuthCreation", "AuthUpdate", "AuthDeletion", "LockAction", "UnlockAction",
                "DEVICE_STATUS", "DEVICE_LOGS", "DEVICE_CONFIG", "other", "unknown",
            ])
            .prop_map(String::from),
            4 => "[A-Za-z]{1,6}",
            1 => "[a-z]{60,70}",
            1 => any::<String>(),
        ]
    };
    let api = (
        name(),
        vec((lock(), any::<bool>(), any::<u8>()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(operation, entities, flat)| {
            let detail: Vec<Value> = entities
                .iter()
                .map(|(id, success, code)| {
                    json!({"smartlockId": id, "success": success, "errorCode": format!("{code:x}")})
                })
                .collect();
            match (flat, entities.first()) {
                (true, Some((id, success, code))) => json!({
                    "type": operation, "smartlockId": id, "success": success, "errorCode": code,
                }),
                _ => json!({"type": operation, "requestId": "r", "detail": detail}),
            }
        });
    let status =
        (lock(), any::<i64>(), any::<bool>(), 0i64..8).prop_map(|(id, charge, critical, state)| {
            json!({
                "feature": "DEVICE_STATUS", "smartlockId": id, "serverState": 0,
                "state": {"batteryCharge": charge, "batteryCritical": critical, "state": state,
                          "keypadBatteryCritical": critical, "doorState": state},
            })
        });
    let log = (lock(), any::<i64>(), any::<i64>()).prop_map(|(id, action, state)| {
        json!({
            "feature": "DEVICE_LOGS",
            "smartlockLog": {"smartlockId": id, "action": action, "state": state},
        })
    });
    let masterdata = (
        lock(),
        any::<bool>(),
        any::<String>(),
        any::<i64>(),
        any::<u64>(),
    )
        .prop_map(|(id, deleted, name, kind, firmware)| {
            json!({
                "feature": "DEVICE_MASTERDATA", "smartlockId": id, "deleted": deleted,
                "name": name, "type": kind, "firmwareVersion": firmware,
            })
        });
    let other =
        (name(), lock()).prop_map(|(feature, id)| json!({"feature": feature, "smartlockId": id}));
    prop_oneof![
        4 => api,
        2 => status,
        2 => log,
        2 => masterdata,
        2 => other,
        1 => json_root(),
    ]
    .boxed()
}

/// Fewer, longer cases: each records up to 400 webhooks and scrapes.
fn fleet_config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: (default.cases / 8).max(1),
        ..default
    }
}

fn distinct(samples: &[Sample], label: &str, name: Option<&str>) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| name.is_none_or(|name| s.name == name))
        .filter_map(|s| s.labels.get(label))
        .filter(|value| *value != "other" && *value != "unknown")
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(fleet_config())]

    #[test]
    fn label_values_stay_within_the_limits(webhooks in vec(fleet_webhook(), 1..400)) {
        let metrics = Metrics::new(FLEET_LIMITS);
        for webhook in &webhooks {
            let body = serde_json::to_vec(webhook).unwrap();
            if let Ok(parsed) = webhook::parse(&body) {
                record(&metrics, &parsed, NOW);
            }
        }
        let samples = samples(&metrics);

        let locks = distinct(&samples, "smartlock_id", None);
        prop_assert!(locks.len() <= FLEET_LIMITS.max_smartlocks, "{} lock ids", locks.len());
        prop_assert!(locks.iter().all(|id| id.parse::<u64>().is_ok()), "{locks:?}");
        let tracked = samples
            .iter()
            .find(|s| s.name == "nuki_exporter_smartlocks_tracked")
            .map(|s| s.value);
        prop_assert_eq!(tracked, Some(locks.len() as f64));
        let infos = samples.iter().filter(|s| s.name == "nuki_smartlock_info").count();
        prop_assert!(infos <= FLEET_LIMITS.max_smartlocks, "{infos} info series");

        let operations = distinct(&samples, "operation", None);
        prop_assert!(operations.len() <= FLEET_LIMITS.max_operations, "{operations:?}");
        // API types and device features have budgets of their own.
        let received: Vec<Sample> = samples
            .iter()
            .filter(|s| s.name == "nuki_exporter_webhooks_received_total")
            .cloned()
            .collect();
        for source in ["api", "device"] {
            let of_source: Vec<Sample> = received
                .iter()
                .filter(|s| s.labels.get("source").map(String::as_str) == Some(source))
                .cloned()
                .collect();
            let kinds = distinct(&of_source, "kind", None);
            prop_assert!(kinds.len() <= FLEET_LIMITS.max_operations, "{source}: {kinds:?}");
            prop_assert!(kinds.iter().all(|value| value.len() <= 64));
        }
        prop_assert!(operations.iter().all(|value| value.len() <= 64));
    }
}

#[test]
fn ten_thousand_lock_ids_keep_fifty_series_each() {
    let metrics = Metrics::new(FLEET_LIMITS);
    for id in 0..10_000u64 {
        let body = json!({
            "type": format!("Op{}", id % 20),
            "detail": [{
                "smartlockId": id,
                "success": false,
                "errorCode": format!("{:02x}", id % 256),
            }],
        })
        .to_string();
        record(&metrics, &webhook::parse(body.as_bytes()).unwrap(), NOW);
    }
    let samples = samples(&metrics);
    assert_eq!(distinct(&samples, "smartlock_id", None).len(), 50);
    assert_eq!(distinct(&samples, "operation", None).len(), 8);
    // The first 50 locks have their own series; the other 9,950 results share `other`.
    let by_lock = counts(&samples, "nuki_operations_total", &["smartlock_id"]);
    assert_eq!(by_lock[&vec!["other".to_owned()]], 9_950.0);
}

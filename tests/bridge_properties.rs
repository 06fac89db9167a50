//! Property tests of the Nuki Bridge parser, whose input is guarded by the sender's address
//! alone (a bridge cannot sign): any bytes give a result or an error, never a panic; parsing is
//! pure; what is accepted is JSON of the documented top-level shape; a callback's lock id and
//! state are the ones the body names; a wrongly typed field loses no device.

use proptest::prelude::*;
use serde::Deserialize;
use serde::de::IgnoredAny;

use nuki_exporter::lock::{LockEvent, LockStatus};
use nuki_exporter::source::bridge::parse::{
    DeviceReport, parse_callback, parse_callbacks, parse_info, parse_list, parse_outcome,
    smartlock_id,
};
use serde_json::{Value, json};

#[path = "common/mutated_fixtures.rs"]
mod mutated_fixtures;

fn fixture(name: &str) -> Vec<u8> {
    mutated_fixtures::fixture("bridge", name)
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    mutated_fixtures::any_bytes(
        "bridge",
        vec![
            "list.json",
            "info.json",
            "info-software.json",
            "callback-lock.json",
            "callback-opener.json",
            "callback-list.json",
        ],
    )
}

/// A JSON value of a type no field of the bridge's documented shapes has together with its
/// own (each is wrong for a number, a bool or a string field in turn).
fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::Bool(true)),
        Just(Value::from("x")),
        Just(Value::from(-1.5)),
        Just(json!({"a": [1]})),
        Just(json!([1, 2])),
    ]
}

/// The smartlockId by the rule written out as text: the device type's hex digit, then the
/// `nukiId` in hex (type 0 alone has no prefix).
fn smartlock_id_by_text(nuki_id: u64, device_type: u64) -> Option<u64> {
    if device_type == 0 {
        return Some(nuki_id);
    }
    if device_type > 0xF {
        return None;
    }
    let text = format!("{device_type:x}{nuki_id:x}");
    if text.len() > 16 {
        return None;
    }
    u64::from_str_radix(&text, 16).ok()
}

/// The kind of a body's top-level JSON value.
#[derive(Debug, PartialEq)]
enum TopLevel {
    Object,
    Array,
    Scalar,
}

/// The body's top-level kind, or `None` if the body is not JSON, by the grammar alone.
/// `serde_json::Value` refuses numbers beyond an f64 (`1e2345678`): they are JSON all the
/// same, and the parsers rightly skip them in fields they do not read.
fn top_level(body: &[u8]) -> Option<TopLevel> {
    serde_json::from_slice::<IgnoredAny>(body).ok()?;
    match body.iter().find(|byte| !byte.is_ascii_whitespace())? {
        b'{' => Some(TopLevel::Object),
        b'[' => Some(TopLevel::Array),
        _ => Some(TopLevel::Scalar),
    }
}

/// An object whose `callbacks` is an array, whatever else it holds.
fn has_callbacks_array(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct CallbackList {
        #[serde(rename = "callbacks")]
        _callbacks: Vec<IgnoredAny>,
    }
    serde_json::from_slice::<CallbackList>(body).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_parsers_are_total_pure_and_accept_only_their_shape(body in any_bytes()) {
        let top = top_level(&body);
        let list = parse_list(&body);
        prop_assert_eq!(format!("{list:?}"), format!("{:?}", parse_list(&body)));
        if let Ok(devices) = &list {
            prop_assert_eq!(&top, &Some(TopLevel::Array));
            // Every device is an object (`{}`, 2 bytes) in the body at the least.
            prop_assert!(devices.len() * 2 <= body.len());
        }
        let callback = parse_callback(&body);
        prop_assert_eq!(format!("{callback:?}"), format!("{:?}", parse_callback(&body)));
        if let Ok(report) = &callback {
            prop_assert_eq!(&top, &Some(TopLevel::Object));
            prop_assert!(matches!(report.events.as_slice(), [LockEvent::Seen, LockEvent::Status(_)]));
        }
        let info = parse_info(&body);
        prop_assert_eq!(format!("{info:?}"), format!("{:?}", parse_info(&body)));
        if info.is_ok() {
            prop_assert_eq!(&top, &Some(TopLevel::Object));
        }
        let callbacks = parse_callbacks(&body);
        prop_assert_eq!(format!("{callbacks:?}"), format!("{:?}", parse_callbacks(&body)));
        if callbacks.is_ok() {
            prop_assert_eq!(&top, &Some(TopLevel::Object));
            prop_assert!(has_callbacks_array(&body));
        }
        let outcome = parse_outcome(&body);
        prop_assert_eq!(format!("{outcome:?}"), format!("{:?}", parse_outcome(&body)));
        if outcome.is_ok() {
            prop_assert_eq!(&top, &Some(TopLevel::Object));
        }
    }

    #[test]
    fn the_smartlock_id_is_the_type_digit_before_the_hex_nuki_id(nuki_id in any::<u64>(), device_type in 0..20u64) {
        prop_assert_eq!(smartlock_id(nuki_id, device_type), smartlock_id_by_text(nuki_id, device_type));
    }

    /// A callback names its lock and its state flat in the body; each state field may be
    /// absent, and what is present is what the lock's status says.
    #[test]
    fn a_callback_reports_the_state_its_body_names(
        nuki_id in 1..=0xFFFF_FFFFu64,
        device_type in prop::sample::select(vec![0u64, 2, 3, 4, 5]),
        mode in prop::option::of(0..10i64),
        state in prop::option::of(0..256i64),
        door in prop::option::of(0..256i64),
        charge in prop::option::of(0..=100i64),
        critical in prop::option::of(any::<bool>()),
        charging in prop::option::of(any::<bool>()),
        keypad in prop::option::of(any::<bool>()),
    ) {
        let mut body = json!({"nukiId": nuki_id, "deviceType": device_type, "stateName": "whatever"});
        for (key, value) in [
            ("mode", mode.map(Value::from)),
            ("state", state.map(Value::from)),
            ("doorsensorState", door.map(Value::from)),
            ("batteryChargeState", charge.map(Value::from)),
            ("batteryCritical", critical.map(Value::from)),
            ("batteryCharging", charging.map(Value::from)),
            ("keypadBatteryCritical", keypad.map(Value::from)),
        ] {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        let report = parse_callback(&serde_json::to_vec(&body).unwrap()).unwrap();
        let expected = LockStatus {
            battery_charge_percent: charge,
            battery_critical: critical,
            keypad_battery_critical: keypad,
            lock_state: state,
            door_state: door,
            mode,
            battery_charging: charging,
            doorsensor_battery_critical: None,
            server_state: None,
        };
        prop_assert_eq!(report, DeviceReport {
            smartlock_id: smartlock_id_by_text(nuki_id, device_type).unwrap(),
            events: vec![LockEvent::Seen, LockEvent::Status(expected)],
        });
    }

    /// A value of the wrong type in one device's field reads as absent: every device of the
    /// list is still there, under the same id.
    #[test]
    fn a_wrongly_typed_field_loses_no_device(
        field in prop::sample::select(vec!["name", "firmwareVersion", "lastKnownState", "deviceTypeName"]),
        device in any::<prop::sample::Index>(),
        value in wrong_value(),
    ) {
        let body = fixture("list.json");
        let ids = |devices: &[DeviceReport]| devices.iter().map(|d| d.smartlock_id).collect::<Vec<_>>();
        let before = parse_list(&body).unwrap();
        let mut devices: Vec<Value> = serde_json::from_slice(&body).unwrap();
        let at = device.index(devices.len());
        devices[at][field] = value;
        let after = parse_list(&serde_json::to_vec(&devices).unwrap()).unwrap();
        prop_assert_eq!(ids(&after), ids(&before));
    }

    /// A callback whose state fields are all of the wrong type still names its lock, with no
    /// state at all rather than made-up zeros.
    #[test]
    fn a_callback_with_wrongly_typed_state_reports_nothing_made_up(value in wrong_value()) {
        let mut body: Value = serde_json::from_slice(&fixture("callback-lock.json")).unwrap();
        for key in ["mode", "state", "doorsensorState", "batteryChargeState", "batteryCritical", "batteryCharging", "keypadBatteryCritical"] {
            body[key] = value.clone();
        }
        let report = parse_callback(&serde_json::to_vec(&body).unwrap()).unwrap();
        // None of the values is an integer; `true` is a bool, right for the bool fields only.
        let flag = value.as_bool();
        let expected = LockStatus {
            battery_critical: flag,
            battery_charging: flag,
            keypad_battery_critical: flag,
            ..LockStatus::default()
        };
        prop_assert_eq!(report.events, vec![LockEvent::Seen, LockEvent::Status(expected)]);
    }
}

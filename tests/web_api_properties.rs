//! Property tests of the Web API and state-file parsers: any bytes give a result or an error,
//! never a panic; parsing is pure; what is accepted is JSON of the documented top-level shape;
//! mutated fixtures keep every lock they can still name.

use proptest::prelude::*;

use nuki_exporter::source::state_file as state;
use nuki_exporter::source::web_api::parse::{
    parse_delivery_active, parse_smartlocks, parse_webhook_logs,
};
use serde_json::Value;

#[path = "common/mutated_fixtures.rs"]
mod mutated_fixtures;

fn fixture(name: &str) -> Vec<u8> {
    mutated_fixtures::fixture("web_api", name)
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    mutated_fixtures::any_bytes(
        "web_api",
        vec![
            "smartlock.json",
            "webhook-logs.json",
            "advanced-active.json",
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_parsers_are_total_and_pure(body in any_bytes()) {
        let top = serde_json::from_slice::<Value>(&body).ok();
        let locks = parse_smartlocks(&body, 10_000);
        prop_assert_eq!(format!("{locks:?}"), format!("{:?}", parse_smartlocks(&body, 10_000)));
        if let Ok(locks) = &locks {
            prop_assert!(matches!(top, Some(Value::Array(_))) || top.is_none());
            prop_assert!((locks.locks.len() + locks.beyond_limit + locks.malformed) * 2 <= body.len());
        }
        let logs = parse_webhook_logs(&body, 100);
        prop_assert_eq!(format!("{logs:?}"), format!("{:?}", parse_webhook_logs(&body, 100)));
        let active = parse_delivery_active(&body);
        if active.is_ok() {
            prop_assert!(matches!(top, Some(Value::Object(_))) || top.is_none());
        }
        let restored = state::parse(&body[..], usize::MAX);
        prop_assert_eq!(format!("{restored:?}"), format!("{:?}", state::parse(&body[..], usize::MAX)));
    }

    /// A value of the wrong type in one lock's field reads as absent: the other locks, and
    /// that lock itself while its id is readable, are still listed.
    #[test]
    fn a_wrongly_typed_field_loses_no_lock(field in prop::sample::select(vec!["name", "type", "serverState", "state", "firmwareVersion"]),
                                           value in prop_oneof![Just(Value::Null), Just(Value::Bool(true)), Just(Value::from("x")), Just(Value::from(-1.5)), Just(serde_json::json!({"a": [1]}))]) {
        let mut locks: Vec<Value> = serde_json::from_slice(&fixture("smartlock.json")).unwrap();
        locks[1][field] = value;
        let parsed = parse_smartlocks(&serde_json::to_vec(&locks).unwrap(), 10).unwrap();
        prop_assert_eq!(parsed.locks.len(), 3);
    }
}

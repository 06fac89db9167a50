//! Nuki Web API responses: bytes in, typed values out.
//!
//! `GET /smartlock` becomes the same [`LockEvent`]s a DEVICE_STATUS and a DEVICE_MASTERDATA
//! webhook give; `GET /api/key/{id}/advanced` and `GET /api/key/{id}/webhook/logs` become the
//! delivery health of the key's webhooks. Lenient like the webhook parser: a field of the wrong
//! type reads as absent (and gives no series), unknown fields are ignored, and values beyond the
//! swagger's bounds are kept. Nothing here knows about HTTP or Prometheus.
//!
//! Arrays are read one element at a time, whatever their length: an element that JSON allows
//! but Rust cannot hold (a lone surrogate in a string, `1e400` in a number) fails only itself,
//! and no more elements are kept than the caller allows, so memory follows the configured
//! limits, not the size of the answer.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::lock::{DeviceType, FirmwareVersion};
use crate::lock::{LockEvent, LockInfo};
use crate::source::lenient::{self, Lenient};
use crate::source::nuki_shapes::{LockId, RawState, lock_status};

/// A response that is not the JSON the endpoint documents (an HTML error page, a cut-off body).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("response is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("response is JSON but not {0}")]
    Shape(&'static str),
    #[error("response is not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
}

/// One lock of `GET /smartlock` and what it says about it.
pub type PolledLock = (u64, Vec<LockEvent>);

/// What one `GET /smartlock` answer gave.
#[derive(Debug, Default, PartialEq)]
pub struct PolledLocks {
    /// The locks to record, in the answer's order: at most the limit the caller gave.
    pub locks: Vec<PolledLock>,
    /// Locks with a readable id listed after the limit was reached: not kept.
    pub beyond_limit: usize,
    /// Elements that are no lock with a readable `smartlockId`: not an object, no id, or a
    /// field no Rust value can hold (a lone surrogate, `1e400`).
    pub malformed: usize,
    /// Why the first malformed element was skipped, for one log line: its position and the
    /// parser's message, never its text.
    pub first_malformed: Option<String>,
}

impl PolledLocks {
    fn skip_malformed(&mut self, index: usize, reason: &dyn fmt::Display) {
        self.malformed += 1;
        if self.first_malformed.is_none() {
            self.first_malformed = Some(format!("element {index} of the array: {reason}"));
        }
    }
}

/// One `Smartlock` of `GET /smartlock`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawSmartlock<'a> {
    #[serde(rename = "smartlockId")]
    smartlock_id: Lenient<LockId>,
    #[serde(rename = "type")]
    device_type: Lenient<i64>,
    #[serde(borrow)]
    name: Lenient<Cow<'a, str>>,
    #[serde(rename = "firmwareVersion")]
    firmware_version: Lenient<u64>,
    #[serde(rename = "serverState")]
    server_state: Lenient<i64>,
    #[serde(borrow)]
    state: Lenient<RawState<'a>>,
}

/// `GET /api/key/{id}/advanced`: only the delivery switch is read.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawAdvancedKey<'a> {
    #[serde(rename = "webhookStatus", borrow)]
    webhook_status: Lenient<Cow<'a, str>>,
}

/// One `WebhookLog` of `GET /api/key/{id}/webhook/logs`. Its `request` and `response` (the
/// payload Nuki sent and its signature) are never read.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawWebhookLog<'a> {
    #[serde(borrow)]
    id: Lenient<Cow<'a, str>>,
    succeeded: Lenient<bool>,
    #[serde(rename = "responseStatus")]
    response_status: Lenient<i64>,
}

lenient::lenient_object!(RawSmartlock, RawAdvancedKey, RawWebhookLog);

/// Parses `GET /smartlock`: each lock with an id, and its state, server state and info; at
/// most `max_locks` of them, the others only counted. An element that is no readable lock is
/// skipped and counted; only a body that is not a JSON array fails.
pub fn parse_smartlocks(body: &[u8], max_locks: usize) -> Result<PolledLocks, ParseError> {
    let mut polled = PolledLocks::default();
    each_element(body, |index, element| {
        match lenient::object::<RawSmartlock>(element) {
            Ok(Some(lock)) if lock.smartlock_id.0.is_some() => {
                if polled.locks.len() < max_locks {
                    polled.locks.extend(smartlock_events(lock));
                } else {
                    polled.beyond_limit += 1;
                }
            }
            Ok(_) => polled.skip_malformed(index, &"not a lock object with a smartlockId"),
            Err(error) => polled.skip_malformed(index, &error),
        }
    })?;
    Ok(polled)
}

fn smartlock_events(lock: RawSmartlock<'_>) -> Option<PolledLock> {
    let LockId(id) = lock.smartlock_id.0?;
    let server_state = lock.server_state.0;
    let mut events = vec![LockEvent::Status(lock_status(
        lock.state.0.as_ref(),
        server_state,
    ))];
    let info = LockInfo::new(
        lock.name.0.map(Cow::into_owned),
        lock.device_type.0.map(DeviceType::from_code),
        lock.firmware_version.0.map(FirmwareVersion),
    );
    if info != LockInfo::default() {
        events.push(LockEvent::Info(info));
    }
    Some((id, events))
}

/// Parses `GET /api/key/{id}/advanced`: `Some(true)` when `webhookStatus` is ACTIVE,
/// `Some(false)` when DEACTIVATED, `None` when absent or another value.
pub fn parse_delivery_active(body: &[u8]) -> Result<Option<bool>, ParseError> {
    let text = std::str::from_utf8(body)?;
    let key: RawAdvancedKey =
        lenient::object(text)?.ok_or(ParseError::Shape("an AdvancedApiKey object"))?;
    Ok(match key.webhook_status.0.as_deref() {
        Some("ACTIVE") => Some(true),
        Some("DEACTIVATED") => Some(false),
        _ => None,
    })
}

/// One webhook delivery Nuki recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Nuki's log id: a delivery is counted once.
    pub id: String,
    pub succeeded: bool,
    /// The HTTP status Nuki got from the webhook endpoint; `None` when it got no answer.
    pub response_status: Option<u16>,
}

/// Parses `GET /api/key/{id}/webhook/logs`, newest first as Nuki sends them: the first
/// `max_entries` entries (the page size asked for; a longer page is cut). An entry without
/// `succeeded` counts as succeeded when its `responseStatus` is 2xx; one without a readable
/// `id` is skipped, since it could not be counted once.
pub fn parse_webhook_logs(body: &[u8], max_entries: usize) -> Result<Vec<Delivery>, ParseError> {
    let mut deliveries = Vec::new();
    each_element(body, |_, element| {
        if deliveries.len() < max_entries
            && let Ok(Some(log)) = lenient::object::<RawWebhookLog>(element)
        {
            deliveries.extend(delivery(log));
        }
    })?;
    Ok(deliveries)
}

fn delivery(log: RawWebhookLog<'_>) -> Option<Delivery> {
    let response_status = log
        .response_status
        .0
        .and_then(|status| u16::try_from(status).ok())
        .filter(|status| (100..=599).contains(status));
    let succeeded = log
        .succeeded
        .0
        .unwrap_or(matches!(response_status, Some(200..=299)));
    Some(Delivery {
        id: log.id.0?.into_owned(),
        succeeded,
        response_status,
    })
}

/// Calls `each` with the position and JSON text of every element of a JSON array body, in
/// order. The array is never decoded as a whole: an element is only checked for JSON syntax
/// here, so decoding one can fail without failing the others.
fn each_element<'de>(body: &'de [u8], each: impl FnMut(usize, &'de str)) -> Result<(), ParseError> {
    let text = std::str::from_utf8(body)?;
    if !text.trim_start().starts_with('[') {
        serde_json::from_str::<IgnoredAny>(text)?;
        return Err(ParseError::Shape("an array"));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.deserialize_seq(Elements(each))?;
    deserializer.end()?;
    Ok(())
}

/// Hands each element of a JSON array, undecoded, to a callback.
struct Elements<F>(F);

impl<'de, F: FnMut(usize, &'de str)> Visitor<'de> for Elements<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            (self.0)(index, element.get());
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockStatus;

    macro_rules! fixture {
        ($name:literal) => {
            crate::source::fixture!("web_api", concat!($name))
        };
    }

    /// The locks of a `GET /smartlock` body, with room for all of them.
    fn locks(body: &[u8]) -> Vec<PolledLock> {
        parse_smartlocks(body, 1_000).unwrap().locks
    }

    #[test]
    fn smartlock_list_gives_status_and_info_per_lock() {
        let locks = locks(fixture!("smartlock.json"));
        let ids: Vec<u64> = locks.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [17_891_012, 17_891_013, 17_891_014]);
        let (_, events) = &locks[0];
        assert_eq!(
            events[0],
            LockEvent::Status(LockStatus {
                battery_charge_percent: Some(78),
                battery_critical: Some(false),
                keypad_battery_critical: Some(false),
                doorsensor_battery_critical: Some(false),
                lock_state: Some(1),
                door_state: Some(2),
                server_state: Some(0),
                mode: Some(2),
                battery_charging: Some(false),
            })
        );
        assert_eq!(
            events[1],
            LockEvent::Info(LockInfo {
                name: Some("Front door".into()),
                device_type: Some("smartlock_3_4".into()),
                firmware_version: Some("3.10.7".into()),
            })
        );
    }

    #[test]
    fn absent_optional_fields_stay_absent() {
        // The 2019 shape: no batteryCharge, no keypad or door sensor, serverState 4.
        let locks = locks(fixture!("smartlock.json"));
        let (_, events) = &locks[1];
        let LockEvent::Status(status) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(status.battery_charge_percent, None);
        assert_eq!(status.keypad_battery_critical, None);
        assert_eq!(status.doorsensor_battery_critical, None);
        assert_eq!(status.battery_critical, Some(true));
        assert_eq!(status.server_state, Some(4));
        // An opener without a state object: only its server state.
        let (_, events) = &locks[2];
        assert_eq!(
            events[0],
            LockEvent::Status(LockStatus {
                server_state: Some(0),
                ..LockStatus::default()
            })
        );
    }

    #[test]
    fn wrong_types_read_as_absent_and_ids_may_be_strings() {
        let body = br#"[{"smartlockId":"5","serverState":"ok","state":{"batteryCharge":"full","batteryCritical":true,"state":300}},
            {"name":"no id"}, 7, {"smartlockId":6,"type":9,"name":"Other kind"}]"#;
        let locks = locks(body);
        assert_eq!(locks.len(), 2);
        assert_eq!(
            locks[0],
            (
                5,
                vec![LockEvent::Status(LockStatus {
                    battery_critical: Some(true),
                    lock_state: Some(300),
                    ..LockStatus::default()
                })]
            )
        );
        assert_eq!(
            locks[1].1[1],
            LockEvent::Info(LockInfo {
                name: Some("Other kind".into()),
                device_type: Some("other".into()),
                firmware_version: None,
            })
        );
    }

    #[test]
    fn error_pages_and_other_shapes_are_errors() {
        for body in [
            fixture!("bad-gateway.html"),
            fixture!("truncated.json"),
            br#"{"detailMessage":"Your access token is not authorized"}"#.as_slice(),
            b"\xff\xfe".as_slice(),
        ] {
            assert!(parse_smartlocks(body, 10).is_err());
            assert!(parse_webhook_logs(body, 10).is_err());
        }
        assert!(parse_delivery_active(b"[]").is_err());
        assert!(parse_delivery_active(fixture!("bad-gateway.html")).is_err());
    }

    #[test]
    fn webhook_status_reads_active_and_deactivated_only() {
        assert_eq!(
            parse_delivery_active(fixture!("advanced-active.json")).unwrap(),
            Some(true)
        );
        assert_eq!(
            parse_delivery_active(fixture!("advanced-deactivated.json")).unwrap(),
            Some(false)
        );
        assert_eq!(
            parse_delivery_active(br#"{"webhookStatus":"PAUSED"}"#).unwrap(),
            None
        );
        assert_eq!(parse_delivery_active(b"{}").unwrap(), None);
    }

    #[test]
    fn webhook_logs_give_each_delivery_with_its_status() {
        let logs = parse_webhook_logs(fixture!("webhook-logs.json"), 100).unwrap();
        assert_eq!(
            logs,
            [
                Delivery {
                    id: "65f1c0de0000000000000003".into(),
                    succeeded: false,
                    response_status: Some(401),
                },
                Delivery {
                    id: "65f1c0de0000000000000002".into(),
                    succeeded: false,
                    response_status: None,
                },
                Delivery {
                    id: "65f1c0de0000000000000001".into(),
                    succeeded: true,
                    response_status: Some(204),
                },
            ]
        );
        let inferred = parse_webhook_logs(br#"[{"id":"a","responseStatus":200},{"id":"b","responseStatus":503},{"succeeded":true}]"#, 100).unwrap();
        assert_eq!(
            inferred.iter().map(|d| d.succeeded).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn a_lock_no_rust_value_can_hold_is_skipped_and_the_others_are_kept() {
        // A lone surrogate in a name, a read field beyond f64, a field of the wrong type:
        // JSON allows all three; only the first two make their lock unreadable.
        let body = br#"[{"smartlockId":1,"name":"Front \ud800door","serverState":0},
            {"smartlockId":2,"state":{"batteryCharge":1e400},"serverState":0},
            {"smartlockId":3,"serverState":0}, 7, {"name":"no id"}]"#;
        let polled = parse_smartlocks(body, 10).unwrap();
        let ids: Vec<u64> = polled.locks.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [3]);
        assert_eq!(polled.malformed, 4);
        assert_eq!(polled.beyond_limit, 0);
        let reason = polled.first_malformed.unwrap();
        assert!(reason.starts_with("element 0 of the array: "), "{reason}");
        assert!(reason.contains("hex escape"), "{reason}");
        assert!(
            !reason.contains("Front"),
            "the element's text is never quoted: {reason}"
        );
        // The same in a webhook log: the entry is skipped, the page is read.
        let logs = parse_webhook_logs(
            br#"[{"id":"\udc00","succeeded":true},{"id":"b","responseStatus":1e400},{"id":"c","succeeded":true}]"#,
            100,
        )
        .unwrap();
        assert_eq!(
            logs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
    }

    #[test]
    fn no_more_locks_or_log_entries_are_kept_than_allowed() {
        let body: Vec<u8> = format!(
            "[{}]",
            (1..=25)
                .map(|id| format!(r#"{{"smartlockId":{id},"serverState":0}}"#))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes();
        let polled = parse_smartlocks(&body, 10).unwrap();
        assert_eq!(polled.locks.len(), 10);
        assert_eq!(polled.locks[9].0, 10);
        assert_eq!((polled.beyond_limit, polled.malformed), (15, 0));
        let logs: Vec<u8> = format!(
            "[{}]",
            (1..=150)
                .map(|id| format!(r#"{{"id":"{id}","succeeded":true}}"#))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes();
        assert_eq!(parse_webhook_logs(&logs, 100).unwrap().len(), 100);
    }
}

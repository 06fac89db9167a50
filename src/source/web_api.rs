//! Nuki Web API responses: bytes in, typed values out.
//!
//! `GET /smartlock` becomes the same [`LockEvent`]s a DEVICE_STATUS and a DEVICE_MASTERDATA
//! webhook give; `GET /api/key/{id}/advanced` and `GET /api/key/{id}/webhook/logs` become the
//! delivery health of the key's webhooks. Lenient like the webhook parser: a field of the wrong
//! type reads as absent (and gives no series), unknown fields are ignored, and values beyond the
//! swagger's bounds are kept. Nothing here knows about HTTP or Prometheus.

use std::borrow::Cow;

use serde::Deserialize;

use super::lenient::{self, Lenient, Shape};
use super::webhook::{DeviceType, FirmwareVersion, LockId, Masterdata, RawState, lock_status};
use crate::lock::{LockEvent, LockInfo};

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

/// Parses `GET /smartlock`: each lock with an id, and its state, server state and info. A lock
/// without a readable `smartlockId` is skipped.
pub fn parse_smartlocks(body: &[u8]) -> Result<Vec<PolledLock>, ParseError> {
    let locks: Vec<RawSmartlock> = array(body)?;
    Ok(locks.into_iter().filter_map(smartlock_events).collect())
}

fn smartlock_events(lock: RawSmartlock<'_>) -> Option<PolledLock> {
    let LockId(id) = lock.smartlock_id.0?;
    let server_state = lock.server_state.0;
    let mut events = vec![LockEvent::Status(lock_status(
        lock.state.0.as_ref(),
        server_state,
    ))];
    let masterdata = Masterdata {
        deleted: false,
        name: lock.name.0.map(Cow::into_owned),
        device_type: lock.device_type.0.map(DeviceType::from_code),
        firmware_version: lock.firmware_version.0.map(FirmwareVersion),
        server_state,
    };
    let info = masterdata.info();
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

/// Parses `GET /api/key/{id}/webhook/logs`, newest first as Nuki sends them. An entry without
/// `succeeded` counts as succeeded when its `responseStatus` is 2xx; one without an `id` is
/// skipped, since it could not be counted once.
pub fn parse_webhook_logs(body: &[u8]) -> Result<Vec<Delivery>, ParseError> {
    let logs: Vec<RawWebhookLog> = array(body)?;
    Ok(logs
        .into_iter()
        .filter_map(|log| {
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
        })
        .collect())
}

/// A JSON array of lenient objects; elements that are not objects are skipped.
fn array<'de, T: Shape<'de>>(body: &'de [u8]) -> Result<Vec<T>, ParseError> {
    let text = std::str::from_utf8(body)?;
    let Lenient(items) = serde_json::from_str::<Lenient<Vec<T>>>(text)?;
    items.ok_or(ParseError::Shape("an array"))
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

    #[test]
    fn smartlock_list_gives_status_and_info_per_lock() {
        let locks = parse_smartlocks(fixture!("smartlock.json")).unwrap();
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
        let locks = parse_smartlocks(fixture!("smartlock.json")).unwrap();
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
        let locks = parse_smartlocks(body).unwrap();
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
            assert!(parse_smartlocks(body).is_err());
            assert!(parse_webhook_logs(body).is_err());
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
        let logs = parse_webhook_logs(fixture!("webhook-logs.json")).unwrap();
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
        let inferred = parse_webhook_logs(br#"[{"id":"a","responseStatus":200},{"id":"b","responseStatus":503},{"succeeded":true}]"#).unwrap();
        assert_eq!(
            inferred.iter().map(|d| d.succeeded).collect::<Vec<_>>(),
            [true, false]
        );
    }
}

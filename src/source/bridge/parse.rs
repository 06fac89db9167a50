//! Nuki Bridge HTTP API bodies: bytes in, typed lock events and bridge facts out.
//!
//! `/list` and the callback POSTs become the same [`LockEvent`]s as a webhook, about the lock's
//! Web API `smartlockId` (computed from `nukiId` and `deviceType`, see [`smartlock_id`]), so that
//! one lock seen by webhook, Web API and bridge has one set of series. `/info` and
//! `/callback/list` become [`BridgeInfo`] and [`RegisteredCallback`]s. Pure and lenient like the
//! webhook parser: a field of the wrong type reads as absent, and an absent field is `None`,
//! never 0 (a device listed without `lastKnownState` gets no state at all).

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::Deserialize;

use crate::lock::DeviceType;
use crate::lock::{LockEvent, LockInfo, LockStatus};
use crate::source::lenient::{self, Lenient, lenient_object};

/// A bridge body that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("body is not UTF-8, which JSON must be: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("body is JSON but not {0}")]
    Shape(&'static str),
    #[error("body names no nukiId and deviceType")]
    NoDevice,
}

/// The Web API `smartlockId` of a bridge device: the `nukiId` in hex, prefixed with the device
/// type's hex digit unless it is 0 (Smart Lock 1.0/2.0): an Opener (2) with `nukiId` 0xE69A is
/// smartlock 0x2E69A. The rule is the one `hass_nuki_ng` uses for types 0, 2, 3 and 4, whose ids
/// the Web API accepts; for other types (5, Smart Lock 5) it is extended by analogy. `None`
/// when the result does not fit 64 bits.
pub fn smartlock_id(nuki_id: u64, device_type: u64) -> Option<u64> {
    if device_type == 0 {
        return Some(nuki_id);
    }
    let hex_digits = (u64::BITS - nuki_id.leading_zeros()).div_ceil(4).max(1);
    if device_type > 0xF || hex_digits >= 16 {
        return None;
    }
    Some(device_type << (4 * hex_digits) | nuki_id)
}

/// One device of `/list` or a callback: its id and what the bridge reported of it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceReport {
    pub smartlock_id: u64,
    pub events: Vec<LockEvent>,
}

/// Parses `/list`: every paired device with a usable `nukiId` and `deviceType`, with its info
/// (name, device type, firmware) and, when the bridge knows it, its last-known state.
pub fn parse_list(body: &[u8]) -> Result<Vec<DeviceReport>, ParseError> {
    let devices: Vec<RawDevice> = read(body, "an array")?;
    Ok(devices
        .into_iter()
        .filter_map(|device| {
            let (smartlock_id, device_type) = resolve(&device.nuki_id, &device.device_type)?;
            let info = LockInfo {
                name: device.name.0.map(Cow::into_owned),
                device_type: Some(device_type.label().to_owned()),
                firmware_version: device.firmware_version.0.map(Cow::into_owned),
            };
            let mut events = vec![LockEvent::Info(info)];
            events.extend(device.last_known_state.0.map(RawState::event));
            Some(DeviceReport {
                smartlock_id,
                events,
            })
        })
        .collect())
}

/// Parses a callback POST: one device's new state, flat in the body. The bridge sent it on
/// hearing the lock, so the lock counts as seen.
pub fn parse_callback(body: &[u8]) -> Result<DeviceReport, ParseError> {
    let id: RawDeviceId = read(body, "an object")?;
    let (smartlock_id, _) = id.resolve().ok_or(ParseError::NoDevice)?;
    let state: RawState = read(body, "an object")?;
    Ok(DeviceReport {
        smartlock_id,
        events: vec![LockEvent::Seen, state.event()],
    })
}

/// What `/info` says of the bridge itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeInfo {
    /// `hardware`, `software`, or the number of a type the API document does not list.
    pub bridge_type: Option<String>,
    /// The hardware bridge's firmware, or the software bridge's app version.
    pub firmware_version: Option<String>,
    /// The bridge is connected to the Nuki server: without it, webhooks and the Web API go stale.
    pub server_connected: Option<bool>,
}

/// Parses `/info`.
pub fn parse_info(body: &[u8]) -> Result<BridgeInfo, ParseError> {
    let info: RawInfo = read(body, "an object")?;
    let versions = info.versions.0.unwrap_or_default();
    Ok(BridgeInfo {
        bridge_type: info.bridge_type.0.map(|code| match code {
            1 => "hardware".to_owned(),
            2 => "software".to_owned(),
            other => other.to_string(),
        }),
        firmware_version: versions
            .firmware_version
            .0
            .or(versions.app_version.0)
            .map(Cow::into_owned),
        server_connected: info.server_connected.0,
    })
}

/// One entry of `/callback/list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredCallback {
    pub id: u64,
    pub url: String,
}

/// Parses `/callback/list`: the registered URLs with the ids `/callback/remove` takes.
pub fn parse_callbacks(body: &[u8]) -> Result<Vec<RegisteredCallback>, ParseError> {
    let list: RawCallbacks = read(body, "an object")?;
    let callbacks = list
        .callbacks
        .0
        .ok_or(ParseError::Shape("an object with a callbacks array"))?;
    Ok(callbacks
        .into_iter()
        .filter_map(|entry| {
            Some(RegisteredCallback {
                id: entry.id.0?,
                url: entry.url.0?.into_owned(),
            })
        })
        .collect())
}

/// The answer of `/callback/add` and `/callback/remove`: `Ok`, or the bridge's message
/// (escaped: it goes into a log line).
pub fn parse_outcome(body: &[u8]) -> Result<Result<(), String>, ParseError> {
    let outcome: RawOutcome = read(body, "an object")?;
    Ok(match outcome.success.0 {
        Some(true) => Ok(()),
        _ => Err(outcome.message.0.map_or_else(
            || "no message".to_owned(),
            |message| crate::util::upstream_text::escape(&message).into_owned(),
        )),
    })
}

fn read<'de, T: lenient::Shape<'de>>(
    body: &'de [u8],
    shape: &'static str,
) -> Result<T, ParseError> {
    let text = std::str::from_utf8(body)?;
    lenient::object(text)?.ok_or(ParseError::Shape(shape))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawDeviceId<'a> {
    #[serde(rename = "nukiId")]
    nuki_id: Lenient<u64>,
    #[serde(rename = "deviceType")]
    device_type: Lenient<u64>,
    #[serde(skip)]
    _borrow: PhantomData<&'a ()>,
}

impl RawDeviceId<'_> {
    fn resolve(&self) -> Option<(u64, DeviceType)> {
        resolve(&self.nuki_id, &self.device_type)
    }
}

/// The `smartlockId` and kind of a device named by `nukiId` and `deviceType` (the Bridge numbers
/// device types as the Web API does).
fn resolve(nuki_id: &Lenient<u64>, device_type: &Lenient<u64>) -> Option<(u64, DeviceType)> {
    let (nuki_id, device_type) = (nuki_id.0?, device_type.0?);
    let code = i64::try_from(device_type).ok()?;
    Some((
        smartlock_id(nuki_id, device_type)?,
        DeviceType::from_code(code),
    ))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawDevice<'a> {
    #[serde(rename = "nukiId")]
    nuki_id: Lenient<u64>,
    #[serde(rename = "deviceType")]
    device_type: Lenient<u64>,
    #[serde(borrow)]
    name: Lenient<Cow<'a, str>>,
    #[serde(rename = "firmwareVersion", borrow)]
    firmware_version: Lenient<Cow<'a, str>>,
    #[serde(rename = "lastKnownState", borrow)]
    last_known_state: Lenient<RawState<'a>>,
}

/// `lastKnownState`, or the flat body of a callback.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawState<'a> {
    mode: Lenient<i64>,
    state: Lenient<i64>,
    #[serde(rename = "doorsensorState")]
    doorsensor_state: Lenient<i64>,
    #[serde(rename = "batteryCritical")]
    battery_critical: Lenient<bool>,
    #[serde(rename = "batteryCharging")]
    battery_charging: Lenient<bool>,
    /// Absent for the Opener, which has no battery gauge.
    #[serde(rename = "batteryChargeState")]
    battery_charge_state: Lenient<i64>,
    #[serde(rename = "keypadBatteryCritical")]
    keypad_battery_critical: Lenient<bool>,
    #[serde(skip)]
    _borrow: PhantomData<&'a ()>,
}

impl RawState<'_> {
    fn event(self) -> LockEvent {
        LockEvent::Status(LockStatus {
            battery_charge_percent: self.battery_charge_state.0,
            battery_critical: self.battery_critical.0,
            keypad_battery_critical: self.keypad_battery_critical.0,
            lock_state: self.state.0,
            door_state: self.doorsensor_state.0,
            mode: self.mode.0,
            battery_charging: self.battery_charging.0,
            // The bridge knows neither of these.
            doorsensor_battery_critical: None,
            server_state: None,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawInfo<'a> {
    #[serde(rename = "bridgeType")]
    bridge_type: Lenient<u64>,
    #[serde(borrow)]
    versions: Lenient<RawVersions<'a>>,
    #[serde(rename = "serverConnected")]
    server_connected: Lenient<bool>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawVersions<'a> {
    #[serde(rename = "firmwareVersion", borrow)]
    firmware_version: Lenient<Cow<'a, str>>,
    #[serde(rename = "appVersion", borrow)]
    app_version: Lenient<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawCallbacks<'a> {
    #[serde(borrow)]
    callbacks: Lenient<Vec<RawCallback<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawCallback<'a> {
    id: Lenient<u64>,
    #[serde(borrow)]
    url: Lenient<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawOutcome<'a> {
    success: Lenient<bool>,
    #[serde(borrow)]
    message: Lenient<Cow<'a, str>>,
}

lenient_object!(
    RawDeviceId,
    RawDevice,
    RawState,
    RawInfo,
    RawVersions,
    RawCallbacks,
    RawCallback,
    RawOutcome
);

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            crate::source::fixture!("bridge", concat!($name, ".json"))
        };
    }

    fn status(report: &DeviceReport) -> Option<LockStatus> {
        report.events.iter().find_map(|event| match event {
            LockEvent::Status(status) => Some(*status),
            _ => None,
        })
    }

    fn info(report: &DeviceReport) -> LockInfo {
        report
            .events
            .iter()
            .find_map(|event| match event {
                LockEvent::Info(info) => Some(info.clone()),
                _ => None,
            })
            .expect("an info event")
    }

    #[test]
    fn smartlock_ids_follow_the_web_api_rule() {
        // int("4" + "1a2b3c4d", 16), int("2" + "e69a", 16), as hass_nuki_ng computes them.
        assert_eq!(smartlock_id(439_041_101, 4), Some(17_618_910_285));
        assert_eq!(smartlock_id(59_034, 2), Some(190_106));
        assert_eq!(smartlock_id(439_041_101, 3), Some(13_323_942_989));
        assert_eq!(smartlock_id(439_041_102, 0), Some(439_041_102));
        assert_eq!(smartlock_id(0, 2), Some(0x20));
        assert_eq!(smartlock_id(u64::MAX, 2), None);
        assert_eq!(smartlock_id(1, 16), None);
    }

    #[test]
    fn list_gives_each_device_its_info_and_state() {
        let reports = parse_list(fixture!("list")).unwrap();
        let ids: Vec<u64> = reports.iter().map(|r| r.smartlock_id).collect();
        assert_eq!(ids, [17_618_910_285, 439_041_102, 17_618_910_287, 190_106]);
        assert_eq!(
            info(&reports[0]),
            LockInfo {
                name: Some("Front door".into()),
                device_type: Some("smartlock_3_4".into()),
                firmware_version: Some("3.10.7".into()),
            }
        );
        assert_eq!(
            status(&reports[0]),
            Some(LockStatus {
                battery_charge_percent: Some(85),
                battery_critical: Some(false),
                keypad_battery_critical: Some(false),
                lock_state: Some(1),
                door_state: Some(2),
                mode: Some(2),
                battery_charging: Some(false),
                ..LockStatus::default()
            })
        );
        let back_door = status(&reports[1]).unwrap();
        assert_eq!(back_door.battery_critical, Some(true));
        assert_eq!(back_door.battery_charging, Some(true));
        assert_eq!(back_door.keypad_battery_critical, Some(true));
        assert_eq!(
            info(&reports[1]).device_type.as_deref(),
            Some("smartlock_1_2")
        );
        assert!(!reports.iter().any(|r| r.events.contains(&LockEvent::Seen)));
    }

    #[test]
    fn a_missing_last_known_state_is_unknown_not_zero() {
        let garage = &parse_list(fixture!("list")).unwrap()[2];
        assert_eq!(garage.events.len(), 1, "{garage:?}");
        assert_eq!(info(garage).name.as_deref(), Some("Garage"));
    }

    #[test]
    fn the_opener_has_no_battery_charge() {
        let opener = &parse_list(fixture!("list")).unwrap()[3];
        assert_eq!(info(opener).device_type.as_deref(), Some("opener"));
        let state = status(opener).unwrap();
        assert_eq!(state.battery_charge_percent, None);
        assert_eq!(state.battery_charging, None);
        assert_eq!(state.door_state, None);
        assert_eq!(state.mode, Some(3));
        assert_eq!(state.battery_critical, Some(false));
    }

    #[test]
    fn devices_without_a_usable_id_are_skipped_and_bad_fields_read_as_absent() {
        let body = br#"[{"name":"no id"},{"nukiId":"12","deviceType":0},7,
            {"nukiId":5,"deviceType":0,"name":3,"lastKnownState":{"state":"locked","mode":2}}]"#;
        let reports = parse_list(body).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].smartlock_id, 5);
        assert_eq!(info(&reports[0]).name, None);
        let state = status(&reports[0]).unwrap();
        assert_eq!((state.lock_state, state.mode), (None, Some(2)));
    }

    #[test]
    fn list_must_be_an_array() {
        assert!(matches!(
            parse_list(b"{\"nukiId\":1}"),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(parse_list(b"<html>"), Err(ParseError::Json(_))));
        assert!(matches!(parse_list(b"\xff"), Err(ParseError::Utf8(_))));
    }

    #[test]
    fn a_callback_is_a_seen_lock_with_its_new_state() {
        let report = parse_callback(fixture!("callback-lock")).unwrap();
        assert_eq!(report.smartlock_id, 17_618_910_285);
        assert_eq!(report.events[0], LockEvent::Seen);
        let state = status(&report).unwrap();
        assert_eq!(
            (
                state.lock_state,
                state.door_state,
                state.battery_charge_percent
            ),
            (Some(3), Some(3), Some(84))
        );
        let opener = parse_callback(fixture!("callback-opener")).unwrap();
        assert_eq!(opener.smartlock_id, 190_106);
        assert_eq!(status(&opener).unwrap().battery_charge_percent, None);
        assert!(matches!(
            parse_callback(b"{\"state\":1}"),
            Err(ParseError::NoDevice)
        ));
        assert!(matches!(parse_callback(b"[]"), Err(ParseError::Shape(_))));
    }

    #[test]
    fn info_names_type_firmware_and_server_link() {
        assert_eq!(
            parse_info(fixture!("info")).unwrap(),
            BridgeInfo {
                bridge_type: Some("hardware".into()),
                firmware_version: Some("2.17.0".into()),
                server_connected: Some(true),
            }
        );
        assert_eq!(
            parse_info(fixture!("info-software")).unwrap(),
            BridgeInfo {
                bridge_type: Some("software".into()),
                firmware_version: Some("1.5.2".into()),
                server_connected: Some(false),
            }
        );
        assert_eq!(parse_info(b"{}").unwrap(), BridgeInfo::default());
    }

    #[test]
    fn callback_list_and_outcomes() {
        assert_eq!(
            parse_callbacks(fixture!("callback-list")).unwrap(),
            [
                RegisteredCallback {
                    id: 0,
                    url: "http://192.168.1.50:8000/nuki".into()
                },
                RegisteredCallback {
                    id: 1,
                    url: "http://192.168.1.60:10180/bridge/callback".into()
                },
            ]
        );
        assert!(parse_callbacks(b"{}").is_err());
        assert_eq!(parse_outcome(br#"{"success":true}"#).unwrap(), Ok(()));
        assert_eq!(
            parse_outcome(br#"{"success":false,"message":"too many callbacks registered"}"#)
                .unwrap(),
            Err("too many callbacks registered".into())
        );
        // A message goes into a log line: it cannot start a line of its own.
        assert_eq!(
            parse_outcome(br#"{"success":false,"message":"full\n\u001b[1AINFO forged"}"#).unwrap(),
            Err("full\\n\\u{1b}[1AINFO forged".into())
        );
    }
}

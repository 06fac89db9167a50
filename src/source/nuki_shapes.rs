//! What the webhook and the Web API send alike: a `smartlockId` (a number or a string of
//! digits), and a lock's `state` object with its `serverState` (DEVICE_STATUS and the Web API's
//! `Smartlock` carry the same fields).

use std::marker::PhantomData;

use serde::Deserialize;

use crate::lock::LockStatus;
use crate::source::lenient::{Lenient, Scalar, Shape, lenient_object};

/// `smartlockId`: a JSON integer or a string of digits.
pub struct LockId(pub u64);

impl Shape<'_> for LockId {
    fn from_scalar(value: Scalar<'_>) -> Option<Self> {
        match value {
            Scalar::U64(id) => Some(LockId(id)),
            Scalar::Str(text) => text.parse().ok().map(LockId),
            _ => None,
        }
    }
}

/// DEVICE_STATUS `state`, and the Web API's `Smartlock.state` (the same fields).
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct RawState<'a> {
    #[serde(rename = "batteryCharge")]
    battery_charge: Lenient<i64>,
    #[serde(rename = "batteryCritical")]
    battery_critical: Lenient<bool>,
    #[serde(rename = "keypadBatteryCritical")]
    keypad_battery_critical: Lenient<bool>,
    #[serde(rename = "doorsensorBatteryCritical")]
    doorsensor_battery_critical: Lenient<bool>,
    state: Lenient<i64>,
    #[serde(rename = "doorState")]
    door_state: Lenient<i64>,
    mode: Lenient<i64>,
    #[serde(rename = "batteryCharging")]
    battery_charging: Lenient<bool>,
    #[serde(skip)]
    _borrow: PhantomData<&'a ()>,
}

lenient_object!(RawState);

/// A lock's `state` object and `serverState`, as the webhook and the Web API both send them.
pub fn lock_status(state: Option<&RawState<'_>>, server_state: Option<i64>) -> LockStatus {
    LockStatus {
        battery_charge_percent: state.and_then(|s| s.battery_charge.0),
        battery_critical: state.and_then(|s| s.battery_critical.0),
        keypad_battery_critical: state.and_then(|s| s.keypad_battery_critical.0),
        doorsensor_battery_critical: state.and_then(|s| s.doorsensor_battery_critical.0),
        lock_state: state.and_then(|s| s.state.0),
        door_state: state.and_then(|s| s.door_state.0),
        server_state,
        mode: state.and_then(|s| s.mode.0),
        battery_charging: state.and_then(|s| s.battery_charging.0),
    }
}

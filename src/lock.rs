//! One model of a lock, whatever source reported it.
//!
//! Every source (the webhook parser, the Web API and Bridge pollers, the state file read at
//! start-up) turns what it read into [`LockEvent`]s about a `smartlock_id`; the metrics facade
//! records them without knowing which source spoke. A field a source did not report is `None`
//! and leaves the lock's gauge as it was: an absent field never becomes a made-up 0.

use serde::{Deserialize, Serialize};

pub use crate::source::webhook::{DeviceType, FirmwareVersion};

/// A lock's state as one source reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockStatus {
    pub battery_charge_percent: Option<i64>,
    pub battery_critical: Option<bool>,
    pub keypad_battery_critical: Option<bool>,
    pub doorsensor_battery_critical: Option<bool>,
    pub lock_state: Option<i64>,
    pub door_state: Option<i64>,
    pub server_state: Option<i64>,
    /// Operating mode (`state.mode`, Bridge `mode`): 2 door mode, 3 continuous mode (opener), 4
    /// maintenance.
    pub mode: Option<i64>,
    /// A Nuki battery pack is charging (`state.batteryCharging`, Bridge `batteryCharging`).
    pub battery_charging: Option<bool>,
}

impl LockStatus {
    /// Takes every field `newer` reports; keeps the others.
    pub fn merge(&mut self, newer: &LockStatus) {
        fn take<T: Copy>(field: &mut Option<T>, newer: Option<T>) {
            if newer.is_some() {
                *field = newer;
            }
        }
        take(
            &mut self.battery_charge_percent,
            newer.battery_charge_percent,
        );
        take(&mut self.battery_critical, newer.battery_critical);
        take(
            &mut self.keypad_battery_critical,
            newer.keypad_battery_critical,
        );
        take(
            &mut self.doorsensor_battery_critical,
            newer.doorsensor_battery_critical,
        );
        take(&mut self.lock_state, newer.lock_state);
        take(&mut self.door_state, newer.door_state);
        take(&mut self.server_state, newer.server_state);
        take(&mut self.mode, newer.mode);
        take(&mut self.battery_charging, newer.battery_charging);
    }
}

/// What `nuki_smartlock_info` says of a lock: its name, kind and firmware.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockInfo {
    pub name: Option<String>,
    /// The `device_type` label value (`smartlock_3_4`, `opener`, …).
    pub device_type: Option<String>,
    /// Dotted firmware version (`3.10.7`).
    pub firmware_version: Option<String>,
}

impl LockInfo {
    /// Takes every field `newer` reports; keeps the others (a bridge may omit the firmware
    /// that the Web API reported).
    pub fn merge(&mut self, newer: &LockInfo) {
        for (field, newer) in [
            (&mut self.name, &newer.name),
            (&mut self.device_type, &newer.device_type),
            (&mut self.firmware_version, &newer.firmware_version),
        ] {
            if newer.is_some() {
                field.clone_from(newer);
            }
        }
    }
}

/// One thing a source learned about one lock.
#[derive(Clone, Debug, PartialEq)]
pub enum LockEvent {
    /// The lock itself sent something (a webhook naming it): `last_seen` moves.
    Seen,
    /// State fields the source reported.
    Status(LockStatus),
    /// Name, kind and firmware; the fields reported replace the lock's, absent ones keep theirs.
    Info(LockInfo),
    /// The lock left the account: every series of it goes.
    Removed,
}

/// A lock's last-known state, as the metrics facade holds it: what the state file keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnownLock {
    pub smartlock_id: u64,
    pub status: LockStatus,
    pub info: Option<LockInfo>,
    /// Unix time of the last event that reported state or info.
    pub updated_at: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_takes_reported_fields_and_keeps_the_rest() {
        let mut known = LockStatus {
            battery_charge_percent: Some(80),
            battery_critical: Some(false),
            server_state: Some(0),
            ..LockStatus::default()
        };
        known.merge(&LockStatus {
            battery_critical: Some(true),
            lock_state: Some(1),
            ..LockStatus::default()
        });
        assert_eq!(
            known,
            LockStatus {
                battery_charge_percent: Some(80),
                battery_critical: Some(true),
                server_state: Some(0),
                lock_state: Some(1),
                ..LockStatus::default()
            }
        );
    }

    #[test]
    fn info_merge_takes_reported_fields_and_keeps_the_rest() {
        let mut known = LockInfo {
            name: Some("Front door".into()),
            device_type: Some("smartlock_3_4".into()),
            firmware_version: Some("3.10.7".into()),
        };
        known.merge(&LockInfo {
            name: Some("Back door".into()),
            ..LockInfo::default()
        });
        assert_eq!(
            known,
            LockInfo {
                name: Some("Back door".into()),
                device_type: Some("smartlock_3_4".into()),
                firmware_version: Some("3.10.7".into()),
            }
        );
    }
}

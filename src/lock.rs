//! One model of a lock, whatever source reported it.
//!
//! Every source (the webhook parser, the Web API and Bridge pollers, the state file read at
//! start-up) turns what it read into [`LockEvent`]s about a `smartlock_id`; the metrics facade
//! records them without knowing which source spoke. A field a source did not report is `None`
//! and leaves the lock's gauge as it was: an absent field never becomes a made-up 0.

use serde::{Deserialize, Serialize};

/// Defines a closed set of Nuki codes with a label name each and `Other(code)` for the rest.
macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
            /// A code the table does not list.
            Other(i64),
        }

        impl $name {
            pub fn from_code(code: i64) -> Self {
                match code {
                    $($code => Self::$variant,)+
                    other => Self::Other(other),
                }
            }

            /// Bounded label value: the code's name, `other` for codes the table lacks.
            pub fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                    Self::Other(_) => "other",
                }
            }

            /// Every label value, `other` included.
            pub const LABELS: &'static [&'static str] = &[$($label,)+ "other"];
        }
    };
}

code_enum!(
    /// DEVICE_MASTERDATA `type`: the kind of device.
    DeviceType {
        SmartLock12 = 0 => "smartlock_1_2",
        Box = 1 => "box",
        Opener = 2 => "opener",
        SmartDoor = 3 => "smartdoor",
        SmartLock34 = 4 => "smartlock_3_4",
        SmartLock5 = 5 => "smartlock_5",
    }
);

/// DEVICE_MASTERDATA `firmwareVersion`: an integer that packs one byte per version part
/// (199175 = 0x030A07 = 3.10.7). Nuki does not document the packing; it matches every
/// version seen in the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareVersion(pub u64);

impl std::fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        write!(f, "{}.{}.{}", (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF)
    }
}

/// An `errorCode` as Nuki spelled it, normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A hex byte (`ff`, `FF`, `0xff`, `0xFF`, or a JSON number 0–255).
    Code(u8),
    /// Present, but not a hex byte.
    Invalid,
    /// Absent (or `null`) on a failed entity.
    Missing,
}

/// DEVICE_LOGS: the activity-log entry under `smartlockLog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub action: Option<LogAction>,
    pub completion_state: Option<CompletionState>,
}

code_enum!(
    /// `smartlockLog.action`.
    LogAction {
        Unlock = 1 => "unlock",
        Lock = 2 => "lock",
        Unlatch = 3 => "unlatch",
        LockNGo = 4 => "lock_n_go",
        LockNGoUnlatch = 5 => "lock_n_go_unlatch",
        Restore = 11 => "restore",
        DoorAjar = 208 => "door_ajar",
        DoorStatusMismatch = 209 => "door_status_mismatch",
        DoorbellRecognition = 224 => "doorbell_recognition",
        DoorOpened = 240 => "door_opened",
        DoorClosed = 241 => "door_closed",
        DoorSensorJammed = 242 => "door_sensor_jammed",
        FirmwareUpdate = 243 => "firmware_update",
        DoorLogEnabled = 250 => "door_log_enabled",
        DoorLogDisabled = 251 => "door_log_disabled",
        Initialization = 252 => "initialization",
        Calibration = 253 => "calibration",
        LogEnabled = 254 => "log_enabled",
        LogDisabled = 255 => "log_disabled",
    }
);

code_enum!(
    /// `smartlockLog.state`: how the logged action completed.
    CompletionState {
        Success = 0 => "success",
        MotorBlocked = 1 => "motor_blocked",
        Canceled = 2 => "canceled",
        TooRecent = 3 => "too_recent",
        Busy = 4 => "busy",
        LowMotorVoltage = 5 => "low_motor_voltage",
        ClutchFailure = 6 => "clutch_failure",
        MotorPowerFailure = 7 => "motor_power_failure",
        Incomplete = 8 => "incomplete",
        Rejected = 9 => "rejected",
        RejectedNightMode = 10 => "rejected_night_mode",
        InvalidCode = 224 => "invalid_code",
        InvalidFingerprint = 225 => "invalid_fingerprint",
        InvalidNfcTag = 226 => "invalid_nfc_tag",
        OtherError = 254 => "other_error",
        UnknownError = 255 => "unknown_error",
    }
);

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
    /// The info of a lock from the typed fields Nuki sends (webhook masterdata, Web API).
    pub fn new(
        name: Option<String>,
        device_type: Option<DeviceType>,
        firmware_version: Option<FirmwareVersion>,
    ) -> Self {
        Self {
            name,
            device_type: device_type.map(|t| t.label().to_owned()),
            firmware_version: firmware_version.map(|v| v.to_string()),
        }
    }
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
    /// A battery change seen before, at this Unix time: the state file's memory of it.
    BatteryReplaced { at: f64 },
}

/// Which way a report about a lock came in. The store keeps the last one beside the lock's
/// state for the status page to show; it never changes what is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Webhook,
    WebApiPoll,
    BridgePoll,
    BridgeCallback,
    /// Restored at start-up: the report that set it came before the restart.
    StateFile,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Webhook => "webhook",
            Origin::WebApiPoll => "Web API poll",
            Origin::BridgePoll => "Bridge poll",
            Origin::BridgeCallback => "Bridge callback",
            Origin::StateFile => "state file (reported before the restart)",
        }
    }
}

/// `state.state` in words: smart locks and openers number their states differently.
pub fn lock_state_name(device_type: Option<&str>, code: i64) -> &'static str {
    if device_type == Some("opener") {
        return match code {
            0 => "untrained",
            1 => "online",
            3 => "ring-to-open active",
            5 => "open",
            7 => "opening",
            253 => "boot run",
            255 => "undefined",
            _ => "unknown code",
        };
    }
    match code {
        0 => "uncalibrated",
        1 => "locked",
        2 => "unlocking",
        3 => "unlocked",
        4 => "locking",
        5 => "unlatched",
        6 => "unlocked (lock 'n' go)",
        7 => "unlatching",
        224 => "error: wrong entry code",
        225 => "error: wrong fingerprint",
        254 => "motor blocked",
        255 => "undefined",
        _ => "unknown code",
    }
}

/// `serverState` in words.
pub fn server_state_name(code: i64) -> &'static str {
    match code {
        0 => "ok",
        1 => "unregistered",
        2 => "authorisation UUID invalid",
        3 => "authorisation invalid",
        4 => "offline",
        _ => "unknown code",
    }
}

/// `state.doorState` in words.
pub fn door_state_name(code: i64) -> &'static str {
    match code {
        0 => "unavailable",
        1 => "deactivated",
        2 => "closed",
        3 => "open",
        4 => "unknown",
        5 => "calibrating",
        16 => "uncalibrated",
        240 => "removed",
        255 => "unknown",
        _ => "unknown code",
    }
}

/// How many points the charge must jump up, outside charging, to count as a battery change.
/// Charge steps are a few points and the reading wobbles by one or two under load; fresh
/// batteries arrive 20 points or more above a set that is worth replacing.
pub const BATTERY_REPLACED_MARGIN: i64 = 20;

/// Whether `report`, arriving on a lock whose last-known state is `known`, shows a battery
/// change: the charge jumped up by [`BATTERY_REPLACED_MARGIN`] or more while no pack charged
/// (before or now: a pack that charged rises without being replaced).
pub fn battery_replaced(known: &LockStatus, report: &LockStatus) -> bool {
    let charging = known.battery_charging == Some(true) || report.battery_charging == Some(true);
    match (known.battery_charge_percent, report.battery_charge_percent) {
        // Saturating: a sender may report any i64 as the charge.
        (Some(before), Some(after)) => {
            !charging && after.saturating_sub(before) >= BATTERY_REPLACED_MARGIN
        }
        _ => false,
    }
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
    /// Unix time at which the last battery change was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_replaced_at: Option<f64>,
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
    fn a_jump_of_the_margin_outside_charging_is_a_battery_change() {
        let charge = |percent: i64, charging: Option<bool>| LockStatus {
            battery_charge_percent: Some(percent),
            battery_charging: charging,
            ..LockStatus::default()
        };
        let replaced = |known, report| battery_replaced(&known, &report);
        assert!(replaced(charge(12, None), charge(32, None)));
        assert!(replaced(charge(12, Some(false)), charge(100, Some(false))));
        // A step, the wobble under load, a fall: no change.
        assert!(!replaced(charge(12, None), charge(31, None)));
        assert!(!replaced(charge(40, None), charge(12, None)));
        // A pack that charges, or just charged, rises without being replaced.
        assert!(!replaced(charge(12, Some(true)), charge(60, Some(false))));
        assert!(!replaced(charge(12, Some(false)), charge(60, Some(true))));
        // Nothing to compare: the first report, or one without the charge.
        assert!(!replaced(LockStatus::default(), charge(100, None)));
        assert!(!replaced(charge(12, None), LockStatus::default()));
        // Any i64 a sender reports compares without overflowing.
        assert!(replaced(charge(i64::MIN, None), charge(i64::MAX, None)));
        assert!(!replaced(charge(i64::MAX, None), charge(i64::MIN, None)));
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

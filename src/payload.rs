//! Nuki webhook payloads: bytes in, typed events out.
//!
//! Pure and total: any JSON object parses into a [`Webhook`] (fields of the wrong type read as
//! absent, unknown fields are ignored, unknown kinds are kept by name); only a body that is not a
//! JSON object is an error. Nothing here knows about HTTP or Prometheus.

use serde_json::{Map, Value};

/// A body that is not a JSON object.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("body is JSON but not an object")]
    NotAnObject,
}

/// One accepted webhook.
#[derive(Clone, Debug, PartialEq)]
pub enum Webhook {
    /// The asynchronous answer to a Web API call (`type`, `requestId`, per-lock results).
    Api(ApiWebhook),
    /// A device or account event (`feature`).
    Device(DeviceWebhook),
    /// A JSON object of no known shape: counted, nothing else.
    Unrecognised,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiWebhook {
    /// The webhook's `type` (`AuthCreation`, `UnlockAction`, …); `None` when absent.
    pub operation: Option<String>,
    /// One result per entity: each `detail[]` entry, or the flat single-lock result.
    pub results: Vec<EntityResult>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityResult {
    pub smartlock_id: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(ErrorCode),
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

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceWebhook {
    pub feature: Feature,
    /// The lock the event is about, wherever the feature keeps it.
    pub smartlock_id: Option<u64>,
    pub event: DeviceEvent,
}

/// The `feature` of a device webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feature {
    DeviceStatus,
    DeviceMasterdata,
    DeviceConfig,
    DeviceLogs,
    DeviceAuths,
    AccountUser,
    /// A feature Nuki may add later, kept by name.
    Other(String),
}

impl Feature {
    fn parse(name: &str) -> Self {
        match name {
            "DEVICE_STATUS" => Self::DeviceStatus,
            "DEVICE_MASTERDATA" => Self::DeviceMasterdata,
            "DEVICE_CONFIG" => Self::DeviceConfig,
            "DEVICE_LOGS" => Self::DeviceLogs,
            "DEVICE_AUTHS" => Self::DeviceAuths,
            "ACCOUNT_USER" => Self::AccountUser,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The name as Nuki sends it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::DeviceStatus => "DEVICE_STATUS",
            Self::DeviceMasterdata => "DEVICE_MASTERDATA",
            Self::DeviceConfig => "DEVICE_CONFIG",
            Self::DeviceLogs => "DEVICE_LOGS",
            Self::DeviceAuths => "DEVICE_AUTHS",
            Self::AccountUser => "ACCOUNT_USER",
            Self::Other(name) => name,
        }
    }
}

/// What a device webhook says beyond "this lock sent something".
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceEvent {
    Status(LockStatus),
    Masterdata(Masterdata),
    Log(LogEntry),
    /// DEVICE_CONFIG, DEVICE_AUTHS, ACCOUNT_USER and unknown features: only their arrival counts.
    /// Their bodies carry keypad codes and e-mail addresses, which are never read.
    Seen,
}

/// DEVICE_STATUS: `state.*` and the top-level `serverState`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStatus {
    pub battery_charge_percent: Option<i64>,
    pub battery_critical: Option<bool>,
    pub keypad_battery_critical: Option<bool>,
    pub doorsensor_battery_critical: Option<bool>,
    pub lock_state: Option<i64>,
    pub door_state: Option<i64>,
    pub server_state: Option<i64>,
}

/// DEVICE_MASTERDATA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Masterdata {
    /// The lock was removed from the account.
    pub deleted: bool,
    pub name: Option<String>,
    pub device_type: Option<DeviceType>,
    pub firmware_version: Option<FirmwareVersion>,
    pub server_state: Option<i64>,
}

/// DEVICE_LOGS: the activity-log entry under `smartlockLog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub action: Option<LogAction>,
    pub completion_state: Option<CompletionState>,
}

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

/// Parses a webhook body.
pub fn parse(body: &[u8]) -> Result<Webhook, ParseError> {
    let Value::Object(root) = serde_json::from_slice::<Value>(body)? else {
        return Err(ParseError::NotAnObject);
    };
    Ok(classify(&root))
}

fn classify(root: &Map<String, Value>) -> Webhook {
    if let Some(feature) = root.get("feature").and_then(Value::as_str) {
        return Webhook::Device(device_webhook(Feature::parse(feature), root));
    }
    if root.contains_key("type") || root.contains_key("requestId") {
        return Webhook::Api(api_webhook(root));
    }
    Webhook::Unrecognised
}

fn api_webhook(root: &Map<String, Value>) -> ApiWebhook {
    let operation = root.get("type").and_then(Value::as_str).map(str::to_owned);
    let results = match root.get("detail") {
        Some(Value::Array(entries)) => entries
            .iter()
            .filter_map(Value::as_object)
            .map(entity_result)
            .collect(),
        // The flat single-lock form: one result, when it names a lock or reports a failure.
        _ if root.contains_key("smartlockId") || !succeeded(root) => vec![entity_result(root)],
        _ => Vec::new(),
    };
    ApiWebhook { operation, results }
}

/// `success`, or when absent, whether no `errorCode` was given.
fn succeeded(entity: &Map<String, Value>) -> bool {
    match entity.get("success").and_then(Value::as_bool) {
        Some(success) => success,
        None => matches!(entity.get("errorCode"), None | Some(Value::Null)),
    }
}

fn entity_result(entity: &Map<String, Value>) -> EntityResult {
    let outcome = if succeeded(entity) {
        Outcome::Success
    } else {
        Outcome::Failure(error_code(entity.get("errorCode")))
    };
    EntityResult {
        smartlock_id: smartlock_id(entity),
        outcome,
    }
}

/// Normalises an `errorCode`: hex with or without `0x`, any case, or a JSON number.
pub fn error_code(value: Option<&Value>) -> ErrorCode {
    match value {
        None | Some(Value::Null) => ErrorCode::Missing,
        Some(Value::String(text)) => {
            let text = text.trim();
            let digits = text
                .strip_prefix("0x")
                .or_else(|| text.strip_prefix("0X"))
                .unwrap_or(text);
            let is_hex_byte =
                (1..=2).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit());
            match is_hex_byte.then(|| u8::from_str_radix(digits, 16)) {
                Some(Ok(code)) => ErrorCode::Code(code),
                _ => ErrorCode::Invalid,
            }
        }
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .map_or(ErrorCode::Invalid, ErrorCode::Code),
        Some(_) => ErrorCode::Invalid,
    }
}

fn device_webhook(feature: Feature, root: &Map<String, Value>) -> DeviceWebhook {
    let nested = |key: &str| root.get(key).and_then(Value::as_object);
    let (smartlock_id, event) = match feature {
        Feature::DeviceStatus => (smartlock_id(root), DeviceEvent::Status(lock_status(root))),
        Feature::DeviceMasterdata => (
            smartlock_id(root),
            DeviceEvent::Masterdata(masterdata(root)),
        ),
        Feature::DeviceLogs => {
            let entry = nested("smartlockLog");
            let id = entry.and_then(smartlock_id).or_else(|| smartlock_id(root));
            (id, DeviceEvent::Log(log_entry(entry)))
        }
        Feature::DeviceAuths => {
            let id = nested("smartlockAuth")
                .and_then(smartlock_id)
                .or_else(|| smartlock_id(root));
            (id, DeviceEvent::Seen)
        }
        Feature::AccountUser => (None, DeviceEvent::Seen),
        Feature::DeviceConfig | Feature::Other(_) => (smartlock_id(root), DeviceEvent::Seen),
    };
    DeviceWebhook {
        feature,
        smartlock_id,
        event,
    }
}

fn lock_status(root: &Map<String, Value>) -> LockStatus {
    let state = root.get("state").and_then(Value::as_object);
    let flag = |key: &str| state.and_then(|s| s.get(key)).and_then(Value::as_bool);
    let int = |key: &str| state.and_then(|s| s.get(key)).and_then(Value::as_i64);
    LockStatus {
        battery_charge_percent: int("batteryCharge"),
        battery_critical: flag("batteryCritical"),
        keypad_battery_critical: flag("keypadBatteryCritical"),
        doorsensor_battery_critical: flag("doorsensorBatteryCritical"),
        lock_state: int("state"),
        door_state: int("doorState"),
        server_state: root.get("serverState").and_then(Value::as_i64),
    }
}

fn masterdata(root: &Map<String, Value>) -> Masterdata {
    Masterdata {
        deleted: root
            .get("deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        name: root.get("name").and_then(Value::as_str).map(str::to_owned),
        device_type: root
            .get("type")
            .and_then(Value::as_i64)
            .map(DeviceType::from_code),
        firmware_version: root
            .get("firmwareVersion")
            .and_then(Value::as_u64)
            .map(FirmwareVersion),
        server_state: root.get("serverState").and_then(Value::as_i64),
    }
}

fn log_entry(entry: Option<&Map<String, Value>>) -> LogEntry {
    let int = |key: &str| entry.and_then(|e| e.get(key)).and_then(Value::as_i64);
    LogEntry {
        action: int("action").map(LogAction::from_code),
        completion_state: int("state").map(CompletionState::from_code),
    }
}

/// `smartlockId` as a JSON integer or a string of digits.
fn smartlock_id(object: &Map<String, Value>) -> Option<u64> {
    match object.get("smartlockId")? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../tests/fixtures/webhooks/", $name, ".json")).as_slice()
        };
    }

    fn api(body: &[u8]) -> ApiWebhook {
        match parse(body).unwrap() {
            Webhook::Api(api) => api,
            other => panic!("expected an API webhook, got {other:?}"),
        }
    }

    fn device(body: &[u8]) -> DeviceWebhook {
        match parse(body).unwrap() {
            Webhook::Device(device) => device,
            other => panic!("expected a device webhook, got {other:?}"),
        }
    }

    fn failed(id: u64, code: ErrorCode) -> EntityResult {
        EntityResult {
            smartlock_id: Some(id),
            outcome: Outcome::Failure(code),
        }
    }

    #[test]
    fn seed_example_is_one_failed_entity_with_code_ff() {
        let webhook = api(fixture!("api-auth-creation-failed"));
        assert_eq!(webhook.operation.as_deref(), Some("AuthCreation"));
        assert_eq!(
            webhook.results,
            vec![failed(123456789, ErrorCode::Code(0xFF))]
        );
    }

    #[test]
    fn detail_entries_keep_their_own_outcomes() {
        let webhook = api(fixture!("api-auth-creation-mixed"));
        let success = EntityResult {
            smartlock_id: Some(1001),
            outcome: Outcome::Success,
        };
        assert_eq!(
            webhook.results,
            vec![
                success,
                failed(1002, ErrorCode::Code(0x4C)),
                failed(1003, ErrorCode::Code(0x13)),
                failed(1004, ErrorCode::Code(0x62)),
                failed(1005, ErrorCode::Invalid),
                failed(1006, ErrorCode::Missing),
            ]
        );
    }

    #[test]
    fn flat_success_and_flat_failure() {
        let ok = api(fixture!("api-unlock-action-success"));
        assert_eq!(ok.operation.as_deref(), Some("UnlockAction"));
        assert_eq!(
            ok.results,
            vec![EntityResult {
                smartlock_id: Some(123456789),
                outcome: Outcome::Success
            }]
        );
        let failed_flat = api(fixture!("api-lock-action-failed-flat"));
        assert_eq!(
            failed_flat.results,
            vec![failed(123456789, ErrorCode::Code(0x42))]
        );
    }

    #[test]
    fn every_spelling_of_a_code_is_the_same_byte() {
        for spelling in ["ff", "FF", "0xff", "0xFF", "0XfF", " ff "] {
            assert_eq!(
                error_code(Some(&Value::from(spelling))),
                ErrorCode::Code(0xFF),
                "{spelling}"
            );
        }
        assert_eq!(error_code(Some(&Value::from(255))), ErrorCode::Code(0xFF));
        assert_eq!(error_code(Some(&Value::from("f"))), ErrorCode::Code(0x0F));
        for invalid in ["", "0x", "fff", "zz", "0x1g", "-1"] {
            assert_eq!(
                error_code(Some(&Value::from(invalid))),
                ErrorCode::Invalid,
                "{invalid}"
            );
        }
        assert_eq!(error_code(Some(&Value::from(256))), ErrorCode::Invalid);
        assert_eq!(error_code(Some(&Value::from(true))), ErrorCode::Invalid);
        assert_eq!(error_code(Some(&Value::Null)), ErrorCode::Missing);
        assert_eq!(error_code(None), ErrorCode::Missing);
    }

    #[test]
    fn failed_entity_without_success_field_is_read_from_its_error_code() {
        let webhook = api(
            br#"{"type":"X","detail":[{"smartlockId":"7","errorCode":"4c"},{"smartlockId":8}]}"#,
        );
        assert_eq!(
            webhook.results,
            vec![
                failed(7, ErrorCode::Code(0x4C)),
                EntityResult {
                    smartlock_id: Some(8),
                    outcome: Outcome::Success
                }
            ]
        );
    }

    #[test]
    fn api_summary_without_entities_has_no_results() {
        assert_eq!(
            api(br#"{"type":"AuthCreation","requestId":"r","success":true}"#).results,
            vec![]
        );
        let unnamed = api(br#"{"requestId":"r","success":false,"errorCode":"ff"}"#);
        assert_eq!(unnamed.operation, None);
        assert_eq!(
            unnamed.results,
            vec![EntityResult {
                smartlock_id: None,
                outcome: Outcome::Failure(ErrorCode::Code(0xFF))
            }]
        );
    }

    #[test]
    fn device_status_reads_battery_lock_and_door_state() {
        let webhook = device(fixture!("device-status"));
        assert_eq!(webhook.feature, Feature::DeviceStatus);
        assert_eq!(webhook.smartlock_id, Some(123456789));
        assert_eq!(
            webhook.event,
            DeviceEvent::Status(LockStatus {
                battery_charge_percent: Some(90),
                battery_critical: Some(false),
                keypad_battery_critical: Some(false),
                doorsensor_battery_critical: Some(true),
                lock_state: Some(1),
                door_state: Some(2),
                server_state: Some(0),
            })
        );
    }

    #[test]
    fn masterdata_reads_name_type_firmware_and_deletion() {
        let webhook = device(fixture!("device-masterdata"));
        let DeviceEvent::Masterdata(data) = webhook.event else {
            panic!("expected masterdata")
        };
        assert!(!data.deleted);
        assert_eq!(data.name.as_deref(), Some("Front door"));
        assert_eq!(data.device_type, Some(DeviceType::SmartLock34));
        assert_eq!(data.firmware_version.unwrap().to_string(), "3.10.7");
        let DeviceEvent::Masterdata(deleted) = device(fixture!("device-masterdata-deleted")).event
        else {
            panic!("expected masterdata")
        };
        assert!(deleted.deleted);
    }

    #[test]
    fn activity_log_entry_is_nested_under_smartlock_log() {
        let webhook = device(fixture!("device-logs-motor-blocked"));
        assert_eq!(webhook.smartlock_id, Some(123456789));
        assert_eq!(
            webhook.event,
            DeviceEvent::Log(LogEntry {
                action: Some(LogAction::Unlock),
                completion_state: Some(CompletionState::MotorBlocked)
            })
        );
        let DeviceEvent::Log(entry) = device(fixture!("device-logs-invalid-code")).event else {
            panic!("expected a log entry")
        };
        assert_eq!(entry.completion_state.unwrap().label(), "invalid_code");
    }

    #[test]
    fn auths_config_and_account_user_only_name_their_lock() {
        let auths = device(fixture!("device-auths"));
        assert_eq!(
            (auths.feature.clone(), auths.smartlock_id),
            (Feature::DeviceAuths, Some(123456789))
        );
        assert_eq!(auths.event, DeviceEvent::Seen);
        let config = device(fixture!("device-config"));
        assert_eq!(
            (config.feature, config.smartlock_id),
            (Feature::DeviceConfig, Some(123456789))
        );
        let user = device(fixture!("account-user"));
        assert_eq!(
            (user.feature, user.smartlock_id, user.event),
            (Feature::AccountUser, None, DeviceEvent::Seen)
        );
    }

    #[test]
    fn unknown_feature_and_unknown_shape_are_accepted() {
        let future = device(fixture!("device-unknown-feature"));
        assert_eq!(future.feature.as_str(), "DEVICE_FUTURE_THING");
        assert_eq!(future.smartlock_id, Some(123456789));
        assert_eq!(
            parse(fixture!("unknown-shape")).unwrap(),
            Webhook::Unrecognised
        );
        assert_eq!(parse(b"{}").unwrap(), Webhook::Unrecognised);
    }

    #[test]
    fn wrongly_typed_fields_read_as_absent() {
        let webhook = device(
            br#"{"feature":"DEVICE_STATUS","smartlockId":-3,"state":"broken","serverState":"4"}"#,
        );
        assert_eq!(webhook.smartlock_id, None);
        assert_eq!(webhook.event, DeviceEvent::Status(LockStatus::default()));
    }

    #[test]
    fn only_json_objects_are_accepted() {
        for body in [
            &b"[]"[..],
            b"42",
            b"\"text\"",
            b"null",
            b"",
            b"{",
            b"\xff\xfe",
        ] {
            assert!(parse(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn code_tables_map_unknown_codes_to_other() {
        assert_eq!(LogAction::from_code(99).label(), "other");
        assert_eq!(CompletionState::from_code(0).label(), "success");
        assert_eq!(DeviceType::from_code(5).label(), "smartlock_5");
        assert!(CompletionState::LABELS.contains(&"other"));
    }
}

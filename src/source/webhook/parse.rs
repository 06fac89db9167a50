//! Nuki webhook payloads: bytes in, typed events out.
//!
//! Pure and total: any JSON object parses into a [`Webhook`] (fields of the wrong type read as
//! absent, unknown fields are ignored, unknown kinds are kept by name). Errors: a body that is not
//! a UTF-8 JSON object; an object naming a field the exporter reads twice; and, in a field the
//! exporter reads, a value serde_json cannot represent (a number beyond f64, a lone surrogate
//! escape). Nothing here knows about HTTP or Prometheus.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::mem::take;

use serde::Deserialize;

use crate::source::lenient::{self, Lenient, Present, Scalar, Shape};
use crate::source::nuki_shapes::{LockId, RawState, lock_status};

use crate::lock::LockInfo;
// The parser speaks the lock model's vocabulary; re-exported so a caller needs one path.
pub use crate::lock::{
    CompletionState, DeviceType, ErrorCode, FirmwareVersion, LockStatus, LogAction, LogEntry,
};

/// A body that is not a JSON object.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("body is not UTF-8, which JSON must be: {0}")]
    Utf8(#[from] std::str::Utf8Error),
}

/// One accepted webhook.
#[derive(Clone, Debug, PartialEq)]
pub enum Webhook<'a> {
    /// The asynchronous answer to a Web API call (`type`, `requestId`, per-lock results).
    Api(ApiWebhook<'a>),
    /// A device or account event (`feature`).
    Device(DeviceWebhook),
    /// A JSON object of no known shape: counted, nothing else.
    Unrecognised,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiWebhook<'a> {
    /// The webhook's `type` (`AuthCreation`, `UnlockAction`, …); `None` when absent. Borrowed
    /// from the body: counting it needs no copy.
    pub operation: Option<Cow<'a, str>>,
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

impl Masterdata {
    /// What `nuki_smartlock_info` shows of this lock.
    pub fn info(&self) -> LockInfo {
        LockInfo::new(self.name.clone(), self.device_type, self.firmware_version)
    }
}

/// The fields of a webhook body that the exporter reads; every one may be absent or of another
/// type, which reads as absent.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawWebhook<'a> {
    #[serde(borrow)]
    feature: Lenient<Cow<'a, str>>,
    /// The API webhook's operation, or DEVICE_MASTERDATA's device type.
    #[serde(rename = "type", borrow)]
    kind: Lenient<TypeField<'a>>,
    #[serde(rename = "requestId")]
    request_id: Lenient<Present>,
    #[serde(rename = "smartlockId")]
    smartlock_id: Lenient<LockId>,
    success: Lenient<bool>,
    #[serde(rename = "errorCode")]
    error_code: Lenient<ErrorCode>,
    #[serde(borrow)]
    detail: Lenient<Vec<RawEntity<'a>>>,
    #[serde(borrow)]
    state: Lenient<RawState<'a>>,
    #[serde(rename = "serverState")]
    server_state: Lenient<i64>,
    deleted: Lenient<bool>,
    #[serde(borrow)]
    name: Lenient<Cow<'a, str>>,
    #[serde(rename = "firmwareVersion")]
    firmware_version: Lenient<u64>,
    #[serde(rename = "smartlockLog", borrow)]
    smartlock_log: Lenient<RawLogEntry<'a>>,
    #[serde(rename = "smartlockAuth", borrow)]
    smartlock_auth: Lenient<RawLockRef<'a>>,
}

/// One `detail[]` entry.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawEntity<'a> {
    #[serde(rename = "smartlockId")]
    smartlock_id: Lenient<LockId>,
    success: Lenient<bool>,
    #[serde(rename = "errorCode")]
    error_code: Lenient<ErrorCode>,
    #[serde(skip)]
    _borrow: PhantomData<&'a ()>,
}

/// DEVICE_LOGS `smartlockLog`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawLogEntry<'a> {
    #[serde(rename = "smartlockId")]
    smartlock_id: Lenient<LockId>,
    action: Lenient<i64>,
    state: Lenient<i64>,
    #[serde(skip)]
    _borrow: PhantomData<&'a ()>,
}

/// DEVICE_AUTHS `smartlockAuth`: only its lock is read, never its code or name.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawLockRef<'a> {
    #[serde(rename = "smartlockId")]
    smartlock_id: Lenient<LockId>,
    #[serde(skip)]
    _borrow: PhantomData<&'a ()>,
}

lenient::lenient_object!(RawWebhook, RawEntity, RawLogEntry, RawLockRef);

/// `type`: a name for API webhooks, a device-type code for DEVICE_MASTERDATA.
enum TypeField<'a> {
    Name(Cow<'a, str>),
    Code(i64),
    Other,
}

impl<'de: 'a, 'a> Shape<'de> for TypeField<'a> {
    fn from_scalar(value: Scalar<'de>) -> Option<Self> {
        Some(match value {
            Scalar::Str(name) => Self::Name(name),
            Scalar::U64(code) => i64::try_from(code).map_or(Self::Other, Self::Code),
            Scalar::I64(code) => Self::Code(code),
            _ => Self::Other,
        })
    }
}

/// `errorCode`: hex with or without `0x` in any case, or a JSON number; `null` is missing and
/// any other value invalid.
impl<'de> Shape<'de> for ErrorCode {
    fn from_scalar(value: Scalar<'de>) -> Option<Self> {
        Some(match value {
            Scalar::Str(text) => hex_error_code(&text),
            Scalar::U64(number) => u8::try_from(number).map_or(ErrorCode::Invalid, ErrorCode::Code),
            Scalar::Null => ErrorCode::Missing,
            _ => ErrorCode::Invalid,
        })
    }
}

/// `ff`, `FF`, `0xff` or `0XFF`: one hex byte, with or without `0x`.
fn hex_error_code(text: &str) -> ErrorCode {
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

/// Parses a webhook body.
pub fn parse(body: &[u8]) -> Result<Webhook<'_>, ParseError> {
    // Validated up front: the parser skips the fields it does not read without decoding them.
    let text = std::str::from_utf8(body)?;
    // Kept in place and read from there: moving the ~280-byte struct costs more than reading it.
    let mut root = None;
    lenient::object_into(text, &mut root)?;
    root.as_mut().map(classify).ok_or(ParseError::NotAnObject)
}

fn classify<'a>(root: &mut RawWebhook<'a>) -> Webhook<'a> {
    if let Some(feature) = &root.feature.0 {
        return Webhook::Device(device_webhook(Feature::parse(feature), root));
    }
    if root.kind.0.is_some() || root.request_id.0.is_some() {
        return Webhook::Api(api_webhook(root));
    }
    Webhook::Unrecognised
}

fn api_webhook<'a>(root: &mut RawWebhook<'a>) -> ApiWebhook<'a> {
    let operation = match root.kind.0.take() {
        Some(TypeField::Name(name)) => Some(name),
        _ => None,
    };
    let results = match root.detail.0.take() {
        Some(entries) => entries
            .into_iter()
            .map(|e| entity_result(e.smartlock_id, e.success, e.error_code))
            .collect(),
        // The flat single-lock form: one result, when it names a lock or reports a failure.
        None if root.smartlock_id.0.is_some() || !succeeded(&root.success, &root.error_code) => {
            vec![entity_result(
                take(&mut root.smartlock_id),
                take(&mut root.success),
                take(&mut root.error_code),
            )]
        }
        None => Vec::new(),
    };
    ApiWebhook { operation, results }
}

/// `success`, or when absent, whether no `errorCode` was given.
fn succeeded(success: &Lenient<bool>, error_code: &Lenient<ErrorCode>) -> bool {
    success
        .0
        .unwrap_or(matches!(error_code.0, None | Some(ErrorCode::Missing)))
}

fn entity_result(
    id: Lenient<LockId>,
    success: Lenient<bool>,
    error_code: Lenient<ErrorCode>,
) -> EntityResult {
    let outcome = if succeeded(&success, &error_code) {
        Outcome::Success
    } else {
        Outcome::Failure(error_code.0.unwrap_or(ErrorCode::Missing))
    };
    EntityResult {
        smartlock_id: id.0.map(|LockId(id)| id),
        outcome,
    }
}

fn device_webhook(feature: Feature, root: &mut RawWebhook<'_>) -> DeviceWebhook {
    let own_id = root.smartlock_id.0.as_ref().map(|LockId(id)| *id);
    let (smartlock_id, event) = match feature {
        Feature::DeviceStatus => {
            let status = lock_status(root.state.0.as_ref(), root.server_state.0);
            (own_id, DeviceEvent::Status(status))
        }
        Feature::DeviceMasterdata => (own_id, DeviceEvent::Masterdata(masterdata(root))),
        Feature::DeviceLogs => {
            let entry = root.smartlock_log.0.take().unwrap_or_default();
            let id = entry.smartlock_id.0.map(|LockId(id)| id).or(own_id);
            let entry = LogEntry {
                action: entry.action.0.map(LogAction::from_code),
                completion_state: entry.state.0.map(CompletionState::from_code),
            };
            (id, DeviceEvent::Log(entry))
        }
        Feature::DeviceAuths => {
            let auth = root
                .smartlock_auth
                .0
                .take()
                .and_then(|auth| auth.smartlock_id.0);
            (auth.map(|LockId(id)| id).or(own_id), DeviceEvent::Seen)
        }
        Feature::AccountUser => (None, DeviceEvent::Seen),
        Feature::DeviceConfig | Feature::Other(_) => (own_id, DeviceEvent::Seen),
    };
    DeviceWebhook {
        feature,
        smartlock_id,
        event,
    }
}

fn masterdata(root: &RawWebhook<'_>) -> Masterdata {
    Masterdata {
        deleted: root.deleted.0.unwrap_or(false),
        name: root.name.0.as_ref().map(|name| name.clone().into_owned()),
        device_type: match root.kind.0 {
            Some(TypeField::Code(code)) => Some(DeviceType::from_code(code)),
            _ => None,
        },
        firmware_version: root.firmware_version.0.map(FirmwareVersion),
        server_state: root.server_state.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            crate::source::fixture!("webhooks", concat!($name, ".json"))
        };
    }

    fn api(body: &[u8]) -> ApiWebhook<'_> {
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
        // The errorCode of a failed flat result, given as JSON text (None: no errorCode key).
        let code = |json: Option<&str>| {
            let field = json.map_or(String::new(), |j| format!(r#","errorCode":{j}"#));
            let body = format!(r#"{{"type":"X","smartlockId":1,"success":false{field}}}"#);
            match api(body.as_bytes()).results[..] {
                [
                    EntityResult {
                        outcome: Outcome::Failure(code),
                        ..
                    },
                ] => code,
                ref other => panic!("{other:?}"),
            }
        };
        for spelling in [
            r#""ff""#,
            r#""FF""#,
            r#""0xff""#,
            r#""0xFF""#,
            r#""0XfF""#,
            r#"" ff ""#,
            r#""\u0066f""#,
            "255",
        ] {
            assert_eq!(code(Some(spelling)), ErrorCode::Code(0xFF), "{spelling}");
        }
        assert_eq!(code(Some(r#""f""#)), ErrorCode::Code(0x0F));
        for invalid in [
            r#""""#,
            r#""0x""#,
            r#""fff""#,
            r#""zz""#,
            r#""0x1g""#,
            r#""-1""#,
            "256",
            "-1",
            "1.5",
            "true",
            "[]",
            r#"{"a":1}"#,
        ] {
            assert_eq!(code(Some(invalid)), ErrorCode::Invalid, "{invalid}");
        }
        assert_eq!(code(Some("null")), ErrorCode::Missing);
        assert_eq!(code(None), ErrorCode::Missing);
    }

    #[test]
    fn escaped_strings_and_nested_junk_do_not_break_parsing() {
        let webhook = api(br#"{"type":"AuthCreation","junk":{"detail":[1,{"x":[{}]}]},"detail":[7,"x",{"smartlockId":3,"success":false,"errorCode":"13"},null]}"#);
        assert_eq!(webhook.operation.as_deref(), Some("AuthCreation"));
        assert_eq!(webhook.results, vec![failed(3, ErrorCode::Code(0x13))]);
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
                mode: Some(2),
                battery_charging: Some(false),
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
    fn nesting_of_any_depth_in_unread_fields_is_skipped_without_recursion() {
        let deep = format!(
            r#"{{"type":"A","unread":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(api(deep.as_bytes()).operation.as_deref(), Some("A"));
    }

    #[test]
    fn a_duplicate_key_is_refused_by_name() {
        let error = parse(br#"{"type":"A","type":"B"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("duplicate field `type`"), "{error}");
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
            b"{\"unread\":\"\xff\"}",
        ] {
            assert!(parse(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn code_tables_map_unknown_codes_to_other() {
        assert_eq!(LogAction::from_code(99).label(), "other");
        assert_eq!(CompletionState::from_code(0).label(), "success");
        assert_eq!(DeviceType::from_code(5).label(), "smartlock_5");
        // every label value a series can carry, written out: a code added to the table, or
        // `other` dropped from it, changes the metric's cardinality and must show here
        assert_eq!(
            CompletionState::LABELS,
            [
                "success",
                "motor_blocked",
                "canceled",
                "too_recent",
                "busy",
                "low_motor_voltage",
                "clutch_failure",
                "motor_power_failure",
                "incomplete",
                "rejected",
                "rejected_night_mode",
                "invalid_code",
                "invalid_fingerprint",
                "invalid_nfc_tag",
                "other_error",
                "unknown_error",
                "other",
            ]
        );
        assert_eq!(CompletionState::from_code(227).label(), "other");
    }
}

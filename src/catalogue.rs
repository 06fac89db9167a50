//! The Nuki Web API error-code catalogue: the one table behind the `error_name` label,
//! `nuki-exporter codes` and the README's code reference.
//!
//! Codes and names are those of Nuki's "Error Codes" page. Remediation for 0xFF and 0x13 is
//! Nuki's own; the other meanings come from the Nuki Bluetooth API descriptions as quoted by
//! community libraries, and codes that no source explains are marked [`Source::Unsourced`].

use std::fmt;

/// Where the meaning of a code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nuki's error-code page gives the remediation itself.
    NukiDocs,
    /// Nuki Bluetooth API descriptions, read through community libraries.
    BluetoothApi,
    /// No source explains the code; the meaning is an inference.
    Unsourced,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::NukiDocs => "Nuki docs",
            Source::BluetoothApi => "Nuki BLE API",
            Source::Unsourced => "unsourced",
        })
    }
}

/// One documented error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCodeInfo {
    pub code: u8,
    pub name: &'static str,
    pub meaning: &'static str,
    pub remediation: &'static str,
    pub source: Source,
}

impl ErrorCodeInfo {
    /// The `error_code` label value: `0x` and two uppercase hex digits.
    pub fn hex(&self) -> String {
        hex_label(self.code)
    }
}

/// `error_name` for a well-formed code the catalogue does not know.
pub const UNKNOWN_NAME: &str = "UNKNOWN";

/// The label form of a code byte: `0x` and two uppercase hex digits.
pub fn hex_label(code: u8) -> String {
    format!("0x{code:02X}")
}

/// Looks a code up in the catalogue.
pub fn lookup(code: u8) -> Option<&'static ErrorCodeInfo> {
    CATALOGUE.iter().find(|info| info.code == code)
}

/// The catalogue name of a code, `UNKNOWN` when the catalogue lacks it.
pub fn name_of(code: u8) -> &'static str {
    lookup(code).map_or(UNKNOWN_NAME, |info| info.name)
}

const fn entry(
    code: u8,
    name: &'static str,
    meaning: &'static str,
    remediation: &'static str,
    source: Source,
) -> ErrorCodeInfo {
    ErrorCodeInfo {
        code,
        name,
        meaning,
        remediation,
        source,
    }
}

use Source::{BluetoothApi as Ble, NukiDocs as Docs, Unsourced as Unknown};

const RETRY: &str = "Retry the operation; if it keeps failing, check the lock in the Nuki app.";
const PROTOCOL: &str =
    "Transient protocol error between Nuki's servers and the lock: retry the operation.";
const KEYPAD_LOCKOUT: &str = "The keypad is locked out after repeated wrong codes: wait for the lock-out to end and check the lock's activity log for guessing attempts.";
const MECHANICS: &str = "Check the lock on site: door and cylinder alignment, a jammed bolt, the batteries; recalibrate in the Nuki app.";
const BATTERY: &str = "Replace or recharge the lock's batteries, then retry.";

/// Every code of Nuki's error-code page, in the page's order.
pub static CATALOGUE: &[ErrorCodeInfo] = &[
    entry(
        0xFD,
        "ERROR_BAD_CRC",
        "CRC of the received command is invalid.",
        PROTOCOL,
        Ble,
    ),
    entry(
        0xFE,
        "ERROR_BAD_LENGTH",
        "Payload length does not match what was expected.",
        PROTOCOL,
        Ble,
    ),
    entry(
        0xFF,
        "ERROR_UNKNOWN",
        "Device is most likely offline or not reachable.",
        "Implement a retry mechanism. Check if the smart lock is in an optimised network.",
        Docs,
    ),
    entry(
        0x10,
        "P_ERROR_NOT_PAIRING",
        "Public key requested, but the lock is not in pairing mode.",
        PROTOCOL,
        Ble,
    ),
    entry(
        0x11,
        "P_ERROR_BAD_AUTHENTICATOR",
        "Received authenticator does not match the one the lock computed.",
        PROTOCOL,
        Ble,
    ),
    entry(
        0x12,
        "P_ERROR_BAD_PARAMETER",
        "Pairing parameter out of range.",
        PROTOCOL,
        Ble,
    ),
    entry(
        0x13,
        "P_ERROR_MAX_USER",
        "The limit of 200 device authorisations has been reached.",
        "Delete unused authorisations.",
        Docs,
    ),
    entry(
        0x20,
        "K_ERROR_NOT_AUTHORIZED",
        "Auth id invalid, or the payload could not be decrypted with that auth's shared key.",
        "Re-sync the lock's authorisations (\"Update now\" in Nuki Web) and retry.",
        Ble,
    ),
    entry(
        0x21,
        "K_ERROR_BAD_PIN",
        "Security PIN does not match the stored one.",
        "Check the admin security PIN configured for the lock.",
        Ble,
    ),
    entry(
        0x22,
        "K_ERROR_BAD_NONCE",
        "Nonce does not match the last stored one, or was already used.",
        PROTOCOL,
        Ble,
    ),
    entry(
        0x23,
        "K_ERROR_BAD_PARAMETER",
        "Parameter out of range.",
        "Check the parameters of the API call that failed.",
        Ble,
    ),
    entry(
        0x24,
        "K_ERROR_INVALID_AUTH_ID",
        "The authorisation to delete does not exist on the lock.",
        "Re-sync the lock's authorisations; the auth is already gone.",
        Ble,
    ),
    entry(
        0x25,
        "K_ERROR_DISABLED",
        "The authorisation is disabled.",
        "Enable the authorisation in Nuki Web if it should have access.",
        Ble,
    ),
    entry(
        0x26,
        "K_ERROR_REMOTE_NOT_ALLOWED",
        "Request came through the Bridge, and the authorisation has no remote access.",
        "Allow remote access for the authorisation, or act locally.",
        Ble,
    ),
    entry(
        0x27,
        "K_ERROR_TIME_NOT_ALLOWED",
        "The authorisation has no access at the current time.",
        "Check the authorisation's allowed days and time window.",
        Ble,
    ),
    entry(
        0x28,
        "K_ERROR_TOO_MANY_PIN_ATTEMPTS",
        "Invalid PIN given too often.",
        KEYPAD_LOCKOUT,
        Ble,
    ),
    entry(
        0x29,
        "K_ERROR_TOO_MANY_ENTRIES",
        "No more entries can be stored on the lock.",
        "Delete unused authorisations or keypad codes.",
        Ble,
    ),
    entry(
        0x2A,
        "K_ERROR_CODE_ALREADY_EXISTS",
        "The keypad code to add already exists.",
        "Choose a different keypad code.",
        Ble,
    ),
    entry(
        0x2B,
        "K_ERROR_CODE_INVALID",
        "An entered keypad code is invalid.",
        "Check the keypad code against the format the Nuki keypad accepts.",
        Ble,
    ),
    entry(
        0x2C,
        "K_ERROR_CODE_INVALID_TIMEOUT_1",
        "Invalid keypad code given several times (lock-out stage 1).",
        KEYPAD_LOCKOUT,
        Ble,
    ),
    entry(
        0x2D,
        "K_ERROR_CODE_INVALID_TIMEOUT_2",
        "Invalid keypad code given several times (lock-out stage 2).",
        KEYPAD_LOCKOUT,
        Ble,
    ),
    entry(
        0x2E,
        "K_ERROR_CODE_INVALID_TIMEOUT_3",
        "Invalid keypad code given several times (lock-out stage 3).",
        KEYPAD_LOCKOUT,
        Ble,
    ),
    entry(
        0x40,
        "K_ERROR_AUTO_UNLOCK_TOO_RECENT",
        "Auto-unlock refused because a lock action ran a short time ago.",
        RETRY,
        Ble,
    ),
    entry(
        0x41,
        "K_ERROR_POSITION_UNKNOWN",
        "Unlock came through the Bridge, and the lock is unsure of its position.",
        "Operate the lock once by hand or in the app so it learns its position; recalibrate if it recurs.",
        Ble,
    ),
    entry(
        0x42,
        "K_ERROR_MOTOR_BLOCKED",
        "Motor blocked.",
        MECHANICS,
        Ble,
    ),
    entry(
        0x43,
        "K_ERROR_CLUTCH_FAILURE",
        "Clutch problem during motor movement.",
        MECHANICS,
        Ble,
    ),
    entry(
        0x44,
        "K_ERROR_MOTOR_TIMEOUT",
        "Motor ran for the maximum time without blocking.",
        MECHANICS,
        Ble,
    ),
    entry(
        0x45,
        "K_ERROR_BUSY",
        "Another lock action is already running.",
        RETRY,
        Ble,
    ),
    entry(
        0x46,
        "K_ERROR_CANCELED",
        "User cancelled the movement by pressing the button.",
        "None needed: someone at the door cancelled the action.",
        Ble,
    ),
    entry(
        0x47,
        "K_ERROR_NOT_CALIBRATED",
        "Lock not yet calibrated.",
        "Calibrate the lock in the Nuki app.",
        Ble,
    ),
    entry(
        0x48,
        "K_ERROR_MOTOR_POSITION_LIMIT",
        "During calibration the position store is full.",
        "Recalibrate the lock in the Nuki app.",
        Ble,
    ),
    entry(
        0x49,
        "K_ERROR_MOTOR_LOW_VOLTAGE",
        "Motor blocked because of low voltage.",
        BATTERY,
        Ble,
    ),
    entry(
        0x4A,
        "K_ERROR_MOTOR_POWER_FAILURE",
        "Power drain during motor movement was zero.",
        MECHANICS,
        Ble,
    ),
    entry(
        0x4B,
        "K_ERROR_CLUTCH_POWER_FAILURE",
        "Power drain during clutch movement was zero.",
        MECHANICS,
        Ble,
    ),
    entry(
        0x4C,
        "K_ERROR_VOLTAGE_TOO_LOW",
        "Battery voltage too low for the action.",
        BATTERY,
        Ble,
    ),
    entry(
        0x4D,
        "K_ERROR_FIRMWARE_UPDATE_NEEDED",
        "A firmware update is mandatory before motor actions.",
        "Update the lock's firmware in the Nuki app.",
        Ble,
    ),
    entry(
        0x4E,
        "K_ERROR_REJECTED",
        "Action rejected (inferred: the counterpart of log state \"rejected\").",
        "Check the lock's settings and activity log for why it refused the action.",
        Unknown,
    ),
    entry(
        0x4F,
        "K_ERROR_REJECTED_NIGHTMODE",
        "Action rejected because night mode is active (inferred).",
        "Check the lock's night-mode schedule.",
        Unknown,
    ),
    entry(
        0xE0,
        "K_ERROR_NOT_IN_MAINTENANCE_MODE",
        "The operation needs maintenance mode (inferred).",
        "Put the lock in maintenance mode for this operation.",
        Unknown,
    ),
    entry(
        0xE1,
        "K_ERROR_ALREADY_CONFIGURED",
        "No source explains this code (inferred: the device is already configured).",
        RETRY,
        Unknown,
    ),
    entry(
        0xE2,
        "K_ERROR_TIMEOUT",
        "The operation timed out (inferred).",
        "Retry; check the lock's connectivity if it recurs.",
        Unknown,
    ),
    entry(
        0xE3,
        "K_ERROR_NO_NUKI_ID",
        "No source explains this code (inferred: the device has no Nuki id).",
        "Contact Nuki support with the smart lock id.",
        Unknown,
    ),
    entry(
        0x60,
        "K_ERROR_DS_CALIBRATION_FAILED",
        "Door-sensor calibration failed (inferred).",
        "Recalibrate the door sensor in the Nuki app.",
        Unknown,
    ),
    entry(
        0x61,
        "K_ERROR_DS_TIMEOUT",
        "Door-sensor operation timed out (inferred).",
        "Check the door sensor's battery and placement.",
        Unknown,
    ),
];

/// The catalogue as tab-separated text, one code a line, for `nuki-exporter codes`.
pub fn text() -> String {
    let mut out = String::from("code\tname\tmeaning\tremediation\n");
    for info in CATALOGUE {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            info.hex(),
            info.name,
            info.meaning,
            info.remediation
        ));
    }
    out
}

/// The catalogue as a Markdown table: `docs/error-codes.md` is this output.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Nuki error codes\n\nGenerated by `nuki-exporter codes --markdown` from `src/catalogue.rs`; \
         a test keeps the two equal. `error_code` and `error_name` label values of \
         `nuki_operation_errors_total`. Source: \"Nuki docs\" is Nuki's error-code page, \
         \"Nuki BLE API\" the Bluetooth API descriptions quoted by community libraries, \
         \"unsourced\" an inference where no source explains the code.\n\n\
         | error_code | error_name | meaning | remediation | source |\n|---|---|---|---|---|\n",
    );
    for info in CATALOGUE {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            info.hex(),
            info.name,
            info.meaning,
            info.remediation,
            info.source
        ));
    }
    out.push_str(
        "\nCodes the table lacks are counted with `error_name=\"UNKNOWN\"`; an `errorCode` that is not a \
         hex byte as `error_code=\"invalid\"`, and a failed entity without one as `error_code=\"missing\"`.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nuki's error-code page, as it was when the project started.
    const SEED: &str = include_str!("../tests/fixtures/nuki-error-codes.txt");

    /// (code, rest of line) of every `0x..` row of the seed page. The page runs name and
    /// description together (`0xFFERROR_UNKNOWNDevice is …`), so names are checked as prefixes.
    fn seed_rows() -> Vec<(u8, &'static str)> {
        SEED.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("0x")?;
                let code = u8::from_str_radix(rest.get(..2)?, 16).ok()?;
                Some((code, &rest[2..]))
            })
            .collect()
    }

    /// Whether `row` starts with exactly the token `name`, not a longer name.
    fn starts_with_name(row: &str, name: &str) -> bool {
        let Some(tail) = row.strip_prefix(name) else {
            return false;
        };
        let mut next = tail.chars();
        match (next.next(), next.next()) {
            (None, _) => true,
            (Some(c), following) if c.is_ascii_uppercase() => {
                following.is_some_and(|f| f.is_ascii_lowercase())
            }
            (Some(c), _) => !(c.is_ascii_digit() || c == '_'),
        }
    }

    #[test]
    fn catalogue_matches_the_seed_page_code_for_code() {
        let seed = seed_rows();
        assert_eq!(seed.len(), 44, "the seed page lists 44 codes");
        let seed_codes: Vec<u8> = seed.iter().map(|(code, _)| *code).collect();
        let our_codes: Vec<u8> = CATALOGUE.iter().map(|info| info.code).collect();
        assert_eq!(our_codes, seed_codes);
        for (info, (_, row)) in CATALOGUE.iter().zip(&seed) {
            assert!(
                starts_with_name(row, info.name),
                "0x{:02X}: {} vs seed {row:?}",
                info.code,
                info.name
            );
        }
    }

    #[test]
    fn name_check_rejects_a_longer_or_shorter_name() {
        assert!(starts_with_name("ERROR_UNKNOWNDevice is", "ERROR_UNKNOWN"));
        assert!(!starts_with_name("ERROR_UNKNOWNDevice is", "ERROR_UNKNOW"));
        assert!(!starts_with_name(
            "K_ERROR_CODE_INVALID_TIMEOUT_1",
            "K_ERROR_CODE_INVALID"
        ));
        assert!(starts_with_name("K_ERROR_BUSY", "K_ERROR_BUSY"));
    }

    #[test]
    fn seed_remediations_are_quoted_for_ff_and_13() {
        assert!(SEED.contains("Device is most likely offline or not reachable"));
        assert_eq!(
            lookup(0xFF).unwrap().meaning,
            "Device is most likely offline or not reachable."
        );
        assert!(
            lookup(0xFF)
                .unwrap()
                .remediation
                .contains("Implement a retry mechanism")
        );
        assert!(SEED.contains(
            "The limit of 200 device authorisations has been reached. Delete unused authorisations"
        ));
        assert_eq!(
            lookup(0x13).unwrap().remediation,
            "Delete unused authorisations."
        );
        assert_eq!(lookup(0xFF).unwrap().source, Source::NukiDocs);
    }

    #[test]
    fn every_entry_is_complete_and_unique() {
        for info in CATALOGUE {
            assert!(
                !info.meaning.is_empty() && !info.remediation.is_empty(),
                "{}",
                info.name
            );
            assert_eq!(
                CATALOGUE.iter().filter(|i| i.code == info.code).count(),
                1,
                "{}",
                info.name
            );
        }
    }

    #[test]
    fn docs_code_reference_is_the_generated_table() {
        let committed = include_str!("../docs/error-codes.md");
        assert_eq!(
            committed,
            markdown(),
            "regenerate with: cargo run -- codes --markdown > docs/error-codes.md"
        );
    }

    #[test]
    fn text_listing_has_a_line_per_code() {
        let listing = text();
        assert_eq!(listing.lines().count(), CATALOGUE.len() + 1);
        assert!(listing.contains("0x4C\tK_ERROR_VOLTAGE_TOO_LOW\t"));
    }

    #[test]
    fn unknown_codes_are_named_unknown() {
        assert_eq!(name_of(0x62), UNKNOWN_NAME);
        assert_eq!(name_of(0x4C), "K_ERROR_VOLTAGE_TOO_LOW");
        assert_eq!(hex_label(0x4c), "0x4C");
        assert_eq!(hex_label(0x0f), "0x0F");
    }
}

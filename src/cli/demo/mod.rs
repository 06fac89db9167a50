//! `nuki-exporter demo`: a small simulated fleet that sends signed webhooks of every kind to an
//! exporter, so a new user sees dashboards fill and alerts fire within minutes.
//!
//! The fleet is deterministic: two locks go unreachable (0xFF, then server state 4), one reports
//! battery voltage too low (0x4C), the others lock, unlock and drain their batteries: one three
//! times as fast as the rest, and the first gets new batteries after the first round. With
//! `--bridge-listen` the demo also runs a simulated Nuki Bridge ([`bridge`]).

pub mod bridge;
mod simulated_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{Value, json};

use crate::source::webhook::signature::{HEADER, sign};

/// What the demo sends, and where.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The exporter's webhook URL; no webhooks are sent without it.
    pub target: Option<hyper::Uri>,
    /// Where to serve the simulated Nuki Web API, if at all.
    pub api_listen: Option<SocketAddr>,
    /// Where to serve the simulated Nuki Bridge, if at all.
    pub bridge_listen: Option<SocketAddr>,
    pub secret: Option<Vec<u8>>,
    pub locks: u64,
    pub interval: Duration,
    /// Stop after this many rounds; run until interrupted when `None`.
    pub rounds: Option<u64>,
}

/// First lock id of the simulated fleet.
const FIRST_LOCK: u64 = 17_000_001;
const NAMES: &[&str] = &[
    "Front door",
    "Back door",
    "Garage",
    "Apartment 1",
    "Apartment 2",
    "Apartment 3",
    "Office",
    "Storage",
    "Gym",
    "Roof terrace",
];

const fn lock_id(index: u64) -> u64 {
    FIRST_LOCK + index
}

/// The lock that drains three times as fast as its siblings (a door that rubs): from 64 % down
/// 6 points a round, new batteries every 9 rounds. First in the Battery care replacement queue.
pub const FAST_DRAINING_LOCK: u64 = lock_id(5);

/// Whether a lock of the fleet is one of the two that go unreachable.
fn unreachable(index: u64, locks: u64) -> bool {
    index == 1 || (locks > 4 && index == locks - 2)
}

/// The lock that reports low battery voltage.
fn low_voltage(index: u64) -> bool {
    index == 2
}

/// Whether a device of the fleet is an Opener (device type 2) rather than a smart lock.
fn opener(index: u64) -> bool {
    index % 5 == 4
}

/// A lock's master data: kind, name, firmware.
fn masterdata(index: u64) -> Value {
    json!({
        "type": if opener(index) { 2 } else { 4 },
        "name": NAMES[(index as usize) % NAMES.len()], "firmwareVersion": 199175 + (index % 3),
        "serverState": 0, "adminPinState": 0,
    })
}

/// A lock's `state` object in a round (DEVICE_STATUS and the Web API's `Smartlock.state`).
fn state(number: u64, index: u64) -> Value {
    let battery = if low_voltage(index) {
        8
    } else if lock_id(index) == FAST_DRAINING_LOCK {
        64 - 6 * (number % 9)
    } else if index == 0 && number == 0 {
        // the first lock's batteries are changed after this round
        15
    } else {
        100 - (number * 2 + index * 7) % 60
    };
    let mut state = json!({
        "mode": 2, "state": if number % 2 == 0 { 1 } else { 3 }, "trigger": 0,
        "batteryCritical": low_voltage(index) && number >= 2, "batteryCharge": battery,
        "keypadBatteryCritical": false, "doorsensorBatteryCritical": false,
        "doorState": if number % 2 == 0 { 2 } else { 3 },
    });
    if opener(index) {
        // An Opener has no battery level, door sensor or door state of its own: Nuki reports none.
        if let Some(fields) = state.as_object_mut() {
            for field in ["batteryCharge", "doorState", "doorsensorBatteryCritical"] {
                fields.remove(field);
            }
        }
    }
    state
}

fn server_state(number: u64, index: u64, locks: u64) -> u8 {
    if unreachable(index, locks) && number >= 1 {
        4
    } else {
        0
    }
}

/// Adds every field of `more` to the object `base`.
fn merged(mut base: Value, more: Value) -> Value {
    if let (Some(base), Value::Object(more)) = (base.as_object_mut(), more) {
        base.extend(more);
    }
    base
}

/// `GET /smartlock` of the fleet in a round: what the Web API would list.
pub fn smartlocks(number: u64, locks: u64) -> Vec<Value> {
    (0..locks)
        .map(|index| {
            let lock = json!({
                "smartlockId": lock_id(index), "accountId": 1, "authId": 1, "favorite": false,
                "state": state(number, index),
                "serverState": server_state(number, index, locks),
            });
            merged(masterdata(index), lock)
        })
        .collect()
}

/// Every webhook of one round. Round 0 also sends each lock's master data.
pub fn round(number: u64, locks: u64) -> Vec<Value> {
    let mut webhooks = Vec::new();
    for index in 0..locks {
        let id = lock_id(index);
        if number == 0 {
            webhooks.push(merged(
                json!({"feature": "DEVICE_MASTERDATA", "deleted": false, "smartlockId": id}),
                masterdata(index),
            ));
            webhooks.push(json!({"feature": "DEVICE_CONFIG", "smartlockId": id, "config": {"keypadPaired": true}}));
        }
        let offline = unreachable(index, locks) && number >= 1;
        webhooks.push(json!({
            "feature": "DEVICE_STATUS", "smartlockId": id,
            "state": state(number, index),
            "serverState": server_state(number, index, locks),
        }));
        let (success, error_code) = if offline {
            (false, Some("ff"))
        } else if low_voltage(index) && number >= 1 {
            (false, Some("4c"))
        } else {
            (true, None)
        };
        let mut action = json!({
            "type": if number % 2 == 0 { "LockAction" } else { "UnlockAction" },
            "requestId": format!("demo{number:08x}{index:08x}"), "smartlockId": id, "success": success,
        });
        if let Some(code) = error_code {
            action["errorCode"] = json!(code);
        }
        webhooks.push(action);
        if !offline {
            webhooks.push(json!({
                "feature": "DEVICE_LOGS",
                "smartlockLog": {
                    "id": format!("{number:012x}{index:012x}"), "smartlockId": id, "deviceType": 4,
                    "action": if number % 2 == 0 { 2 } else { 1 }, "trigger": 0,
                    "state": if low_voltage(index) && number >= 1 { 5 } else { 0 },
                    "source": 0, "autoUnlock": false, "name": "Demo user",
                },
            }));
        }
    }
    // A keypad code for a guest on every lock at once: the unreachable locks fail it.
    let detail: Vec<Value> = (0..locks)
        .map(|index| {
            let failed = unreachable(index, locks) && number >= 1;
            let mut entry = json!({"smartlockId": lock_id(index), "success": !failed, "id": format!("{index:024x}")});
            if failed {
                entry["errorCode"] = json!("ff");
            }
            entry
        })
        .collect();
    let any_failed = detail.iter().any(|entry| entry["success"] == json!(false));
    webhooks.push(json!({
        "type": "AuthCreation", "requestId": format!("demo-auth-{number:016x}"),
        "success": !any_failed, "detail": detail,
    }));
    webhooks.push(json!({
        "feature": "DEVICE_AUTHS", "deleted": false,
        "smartlockAuth": {"id": format!("{number:024x}"), "smartlockId": lock_id(0), "authId": number, "code": 123456, "type": 13, "name": "Guest"},
    }));
    webhooks.push(json!({
        "feature": "ACCOUNT_USER", "deleted": false,
        "accountUser": {"accountUserId": 1, "email": "demo@example.org", "name": "Demo"},
    }));
    webhooks
}

/// The simulated Web API account (always kept: its round and webhook log) and, when served,
/// the simulated Bridge.
pub struct Simulations {
    account: Arc<simulated_api::SimulatedAccount>,
    bridge: Option<Arc<bridge::SimulatedBridge>>,
}

/// Binds and serves the simulated Web API and Bridge at the addresses given.
pub async fn serve_simulations(
    api_listen: Option<SocketAddr>,
    bridge_listen: Option<SocketAddr>,
    locks: u64,
) -> Result<Simulations, String> {
    let account = Arc::new(simulated_api::SimulatedAccount::new(locks));
    if let Some(address) = api_listen {
        simulated_api::serve(address, Arc::clone(&account)).await?;
    }
    let bridge = match bridge_listen {
        Some(address) => Some(bridge::serve(address).await?),
        None => None,
    };
    Ok(Simulations { account, bridge })
}

/// Serves the simulations `options` asks for and plays the fleet's rounds.
pub async fn run(options: &DemoOptions) -> Result<(), String> {
    let simulations =
        serve_simulations(options.api_listen, options.bridge_listen, options.locks).await?;
    play(options, &simulations).await
}

/// Plays rounds until `options.rounds` is reached (or forever): sends each round's webhooks to
/// the target, and moves the simulations to the round.
pub async fn play(options: &DemoOptions, simulations: &Simulations) -> Result<(), String> {
    let Simulations {
        account,
        bridge: simulated_bridge,
    } = simulations;
    let client = crate::util::client::new();
    let mut number = 0;
    loop {
        if let Some(bridge) = &simulated_bridge {
            call_back(&client, bridge, number).await;
        }
        account.set_round(number);
        if let Some(target) = &options.target {
            send_round(
                &client,
                target,
                options.secret.as_deref(),
                number,
                options.locks,
                account,
            )
            .await?;
        }
        number += 1;
        if options.rounds.is_some_and(|rounds| number >= rounds) {
            return Ok(());
        }
        tokio::time::sleep(options.interval).await;
    }
}

/// Moves the simulated bridge's devices to round `number` and POSTs their new state to every
/// registered callback, as a bridge does on each change; a callback that fails is only logged.
async fn call_back(
    client: &crate::util::client::PlainClient,
    bridge: &bridge::SimulatedBridge,
    number: u64,
) {
    let bodies = bridge.advance(number);
    for url in bridge.callback_urls() {
        for body in &bodies {
            let request = Request::post(url.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())));
            let Ok(request) = request else {
                tracing::warn!(%url, "registered callback URL is not a valid URL");
                break;
            };
            match client.request(request).await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(%url, status = %response.status(), "bridge callback refused")
                }
                Err(error) => tracing::warn!(%url, %error, "bridge callback failed"),
            }
        }
    }
}

async fn send_round(
    client: &crate::util::client::PlainClient,
    target: &hyper::Uri,
    secret: Option<&[u8]>,
    number: u64,
    locks: u64,
    account: &simulated_api::SimulatedAccount,
) -> Result<(), String> {
    let webhooks = round(number, locks);
    let mut refused = 0;
    for webhook in &webhooks {
        let body = serde_json::to_vec(webhook).expect("JSON values serialise");
        let mut request = Request::post(target.clone()).header("content-type", "application/json");
        if let Some(secret) = secret {
            request = request.header(HEADER, sign(secret, &body));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("cannot reach {target}: {e}"))?;
        account.delivered(Some(response.status().as_u16()));
        if !response.status().is_success() {
            refused += 1;
            tracing::warn!(status = %response.status(), "the exporter refused a demo webhook");
        }
    }
    tracing::info!(
        round = number,
        sent = webhooks.len(),
        refused,
        "demo round sent"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::webhook::parse::{DeviceEvent, ErrorCode, Outcome, Webhook, parse};

    /// The bodies of round `number` (the parsed webhooks borrow from them).
    fn bodies(number: u64, locks: u64) -> Vec<Vec<u8>> {
        round(number, locks)
            .iter()
            .map(|w| serde_json::to_vec(w).unwrap())
            .collect()
    }

    fn parsed(bodies: &[Vec<u8>]) -> Vec<Webhook<'_>> {
        bodies.iter().map(|body| parse(body).unwrap()).collect()
    }

    fn failures(webhooks: &[Webhook], code: u8) -> Vec<u64> {
        let mut ids: Vec<u64> = webhooks
            .iter()
            .filter_map(|w| match w {
                Webhook::Api(api) => Some(api.results.clone()),
                _ => None,
            })
            .flatten()
            .filter(|r| r.outcome == Outcome::Failure(ErrorCode::Code(code)))
            .filter_map(|r| r.smartlock_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    #[test]
    fn the_opener_reports_only_what_an_opener_has() {
        let status_of = |id: u64| {
            round(1, 10)
                .into_iter()
                .find(|w| w["feature"] == "DEVICE_STATUS" && w["smartlockId"] == id)
                .expect("a DEVICE_STATUS webhook")["state"]
                .clone()
        };
        let (opener, lock) = (status_of(lock_id(4)), status_of(lock_id(0)));
        for field in ["batteryCharge", "doorState", "doorsensorBatteryCritical"] {
            assert!(
                opener.get(field).is_none(),
                "the Opener got {field}: {opener}"
            );
            assert!(lock.get(field).is_some(), "the lock lacks {field}: {lock}");
        }
        assert_eq!(masterdata(4)["type"], 2);
        let listed = &smartlocks(1, 10)[4];
        assert!(listed["state"].get("batteryCharge").is_none(), "{listed}");
    }

    #[test]
    fn first_round_has_masterdata_and_no_failures() {
        let bodies = bodies(0, 8);
        let webhooks = parsed(&bodies);
        let masterdata = webhooks
            .iter()
            .filter(|w| matches!(w, Webhook::Device(d) if matches!(d.event, DeviceEvent::Masterdata(_))))
            .count();
        assert_eq!(masterdata, 8);
        assert!(failures(&webhooks, 0xFF).is_empty());
    }

    #[test]
    fn later_rounds_have_two_unreachable_locks_and_one_low_voltage() {
        let bodies = bodies(3, 8);
        let webhooks = parsed(&bodies);
        assert_eq!(failures(&webhooks, 0xFF), vec![lock_id(1), lock_id(6)]);
        assert_eq!(failures(&webhooks, 0x4C), vec![lock_id(2)]);
        assert!(webhooks.iter().all(|w| !matches!(w, Webhook::Unrecognised)));
    }
}

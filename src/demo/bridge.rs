//! A simulated Nuki Bridge for `nuki-exporter demo --bridge-listen`: three locks and an Opener
//! whose state changes every round, served with the Bridge HTTP API's shapes (`/list`,
//! `/info`, the three-slot `/callback/*`), and POSTed to the registered callbacks on each change.
//!
//! A simulation for trying the exporter without a bridge: it accepts any token, in any mode,
//! and reports itself as a software bridge whose version ends in `-simulated`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The bridge holds at most this many callback URLs.
const CALLBACK_SLOTS: usize = 3;
/// `(nukiId, deviceType, name)` of the simulated devices: Smart Locks 3.0 and 2.0, an Opener.
const DEVICES: [(u64, u64, &str); 4] = [
    (0x1A2B_3C01, 4, "Bridge demo: Front door"),
    (0x1A2B_3C02, 4, "Bridge demo: Back door"),
    (0x1A2B_3C03, 0, "Bridge demo: Cellar"),
    (0xE69A, 2, "Bridge demo: Street door"),
];

/// The simulated bridge's state: the round its devices are in and the registered callbacks.
#[derive(Debug, Default)]
pub struct SimulatedBridge {
    round: Mutex<u64>,
    callbacks: Mutex<Vec<(u64, String)>>,
}

impl SimulatedBridge {
    /// Moves the devices to round `number`; returns each device's callback body.
    pub fn advance(&self, number: u64) -> Vec<Value> {
        *self.round.lock().unwrap_or_else(PoisonError::into_inner) = number;
        list(number).iter().map(callback_body).collect()
    }

    /// The registered callback URLs.
    pub fn callback_urls(&self) -> Vec<String> {
        self.callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, url)| url.clone())
            .collect()
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let bridge = Arc::clone(&self);
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let answer = bridge.answer(&request);
                async move { Ok::<_, Infallible>(answer) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    }

    fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let param = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let round = *self.round.lock().unwrap_or_else(PoisonError::into_inner);
        let mut callbacks = self
            .callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (status, body) = match request.uri().path() {
            "/list" => (StatusCode::OK, Value::from(list(round))),
            "/info" => (StatusCode::OK, info(round)),
            "/callback/list" => (
                StatusCode::OK,
                json!({"callbacks": callbacks.iter().map(|(id, url)| json!({"id": id, "url": url})).collect::<Vec<_>>()}),
            ),
            "/callback/add" => match param("url") {
                None => (StatusCode::BAD_REQUEST, json!({"success": false})),
                Some(_) if callbacks.len() >= CALLBACK_SLOTS => (
                    StatusCode::OK,
                    json!({"success": false, "message": "too many callbacks registered"}),
                ),
                Some(url) => {
                    let id = callbacks.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
                    callbacks.push((id, url.to_owned()));
                    (StatusCode::OK, json!({"success": true}))
                }
            },
            "/callback/remove" => {
                let before = callbacks.len();
                let id = param("id").and_then(|id| id.parse::<u64>().ok());
                callbacks.retain(|(known, _)| Some(*known) != id);
                (StatusCode::OK, json!({"success": callbacks.len() < before}))
            }
            _ => (StatusCode::NOT_FOUND, json!({"success": false})),
        };
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response
    }
}

/// Serves a simulated bridge on `address` in the background.
pub async fn serve(address: SocketAddr) -> Result<Arc<SimulatedBridge>, String> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("--bridge-listen {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %bound, "SIMULATED Nuki Bridge (demo only, a simulation: any token is accepted) listening");
    let bridge = Arc::new(SimulatedBridge::default());
    tokio::spawn(Arc::clone(&bridge).accept(listener));
    Ok(bridge)
}

/// `/list` in round `number`: the locks lock and unlock in turn, the doors open and close, the
/// batteries drain; the cellar lock's battery turns critical from round 3 on.
pub fn list(number: u64) -> Vec<Value> {
    DEVICES
        .iter()
        .enumerate()
        .map(|(index, &(nuki_id, device_type, name))| {
            let index = index as u64;
            let odd = (number + index) % 2 == 1;
            let mut state = json!({
                "mode": 2,
                "state": if odd { 3 } else { 1 },
                "stateName": if odd { "unlocked" } else { "locked" },
                "batteryCritical": index == 2 && number >= 3,
                "keypadBatteryCritical": false,
                "timestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            });
            if device_type == 2 {
                state["mode"] = json!(3);
                state["state"] = json!(if odd { 3 } else { 1 });
                state["stateName"] = json!(if odd { "rto active" } else { "online" });
            } else {
                state["batteryCharging"] = json!(false);
                state["batteryChargeState"] = json!(95 - (number * 3 + index * 11) % 70);
                state["doorsensorState"] = json!(if odd { 3 } else { 2 });
            }
            json!({
                "nukiId": nuki_id,
                "deviceType": device_type,
                "name": name,
                "firmwareVersion": "3.10.7",
                "lastKnownState": state,
            })
        })
        .collect()
}

fn info(round: u64) -> Value {
    json!({
        "bridgeType": 2,
        "ids": {"serverId": 4711},
        "versions": {"appVersion": concat!(env!("CARGO_PKG_VERSION"), "-simulated")},
        "uptime": round * 10,
        "serverConnected": true,
        "scanResults": [],
    })
}

/// The callback POST of a `/list` device: its state, flat, with its id and type.
fn callback_body(device: &Value) -> Value {
    let mut body = device["lastKnownState"].clone();
    body["nukiId"] = device["nukiId"].clone();
    body["deviceType"] = device["deviceType"].clone();
    if let Some(state) = body.as_object_mut() {
        state.remove("timestamp");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockEvent;
    use crate::source::bridge::{parse_callback, parse_list};

    #[test]
    fn the_simulated_devices_parse_as_three_locks_and_an_opener() {
        let reports = parse_list(&serde_json::to_vec(&list(3)).unwrap()).unwrap();
        assert_eq!(reports.len(), 4);
        let kinds: Vec<String> = reports
            .iter()
            .filter_map(|r| match &r.events[0] {
                LockEvent::Info(info) => info.device_type.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            ["smartlock_3_4", "smartlock_3_4", "smartlock_1_2", "opener"]
        );
        assert!(reports.iter().all(|r| r.events.len() == 2));
    }

    #[test]
    fn each_round_changes_state_and_gives_callbacks_the_bridge_shape() {
        let bridge = SimulatedBridge::default();
        let first = bridge.advance(0);
        let second = bridge.advance(1);
        assert_ne!(first, second);
        for body in second {
            let report = parse_callback(&serde_json::to_vec(&body).unwrap()).unwrap();
            assert_eq!(report.events[0], LockEvent::Seen);
        }
    }
}

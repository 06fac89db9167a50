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

/// A bridge's callback registrations: at most three URLs, each with the id `/callback/remove`
/// takes.
#[derive(Debug, Default)]
pub struct CallbackSlots {
    slots: Vec<(u64, String)>,
    next_id: u64,
}

impl CallbackSlots {
    /// The registered URLs, oldest first.
    pub fn urls(&self) -> Vec<String> {
        self.slots.iter().map(|(_, url)| url.clone()).collect()
    }

    /// Registers `url`; false when the three slots are taken.
    pub fn add(&mut self, url: &str) -> bool {
        if self.slots.len() >= CALLBACK_SLOTS {
            return false;
        }
        self.slots.push((self.next_id, url.to_owned()));
        self.next_id += 1;
        true
    }

    /// The answer to a `/callback/…` request, as the Bridge HTTP API gives it; `None` for any
    /// other path.
    pub fn answer(&mut self, path: &str, query: Option<&str>) -> Option<(StatusCode, Value)> {
        let param = |name: &str| {
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        Some(match path {
            "/callback/list" => (
                StatusCode::OK,
                json!({"callbacks": self.slots.iter().map(|(id, url)| json!({"id": id, "url": url})).collect::<Vec<_>>()}),
            ),
            "/callback/add" => match param("url") {
                None => (StatusCode::BAD_REQUEST, json!({"success": false})),
                Some(url) if self.add(&url) => (StatusCode::OK, json!({"success": true})),
                Some(_) => (
                    StatusCode::OK,
                    json!({"success": false, "message": "too many callbacks registered"}),
                ),
            },
            "/callback/remove" => {
                let before = self.slots.len();
                let id = param("id").and_then(|id| id.parse::<u64>().ok());
                self.slots.retain(|(known, _)| Some(*known) != id);
                (
                    StatusCode::OK,
                    json!({"success": self.slots.len() < before}),
                )
            }
            _ => return None,
        })
    }
}

/// The simulated bridge's state: the round its devices are in and the registered callbacks.
#[derive(Debug, Default)]
pub struct SimulatedBridge {
    round: Mutex<u64>,
    callbacks: Mutex<CallbackSlots>,
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
            .urls()
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
        let round = *self.round.lock().unwrap_or_else(PoisonError::into_inner);
        let path = request.uri().path();
        let (status, body) = match path {
            "/list" => (StatusCode::OK, Value::from(list(round))),
            "/info" => (StatusCode::OK, info(round)),
            _ => self
                .callbacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .answer(path, request.uri().query())
                .unwrap_or((StatusCode::NOT_FOUND, json!({"success": false}))),
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
    use crate::source::bridge::parse::{parse_callback, parse_list};

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
    fn callback_slots_hold_three_urls_and_remove_by_id() {
        let mut slots = CallbackSlots::default();
        for url in ["http://a/1", "http://b/2", "http://c/3"] {
            let (status, body) = slots
                .answer("/callback/add", Some(&format!("url={url}")))
                .unwrap();
            assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
        }
        let (_, full) = slots
            .answer("/callback/add", Some("url=http%3A%2F%2Fd%2F4"))
            .unwrap();
        assert_eq!(full["success"], false);
        assert_eq!(full["message"], "too many callbacks registered");
        let (_, removed) = slots.answer("/callback/remove", Some("id=1")).unwrap();
        assert_eq!(removed["success"], true);
        let (_, listed) = slots.answer("/callback/list", None).unwrap();
        assert_eq!(
            listed,
            json!({"callbacks": [{"id": 0, "url": "http://a/1"}, {"id": 2, "url": "http://c/3"}]})
        );
        assert_eq!(slots.answer("/list", None), None);
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

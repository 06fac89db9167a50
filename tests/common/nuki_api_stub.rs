//! A stand-in for the Nuki Web API (the real cloud is not reachable from CI): a local HTTP
//! server that answers the documented response shapes from `tests/fixtures/web_api/`, or a
//! generated fleet, and the failures integrators report (401 JSON bodies, 500, HTML 502 pages,
//! slow answers, malformed JSON). Records every request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// A web API fixture from `tests/fixtures/web_api/`.
pub fn web_api_fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/web_api")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// `GET /smartlock` of a generated fleet: ids `first..first + locks`; the locks in `critical`
/// report a critical battery at 5 %.
pub fn fleet(first: u64, locks: u64, critical: &[u64]) -> Vec<u8> {
    let locks: Vec<Value> = (first..first + locks)
        .map(|id| {
            let critical = critical.contains(&id);
            json!({
                "smartlockId": id, "accountId": 4711, "type": 4, "authId": 1,
                "name": format!("Lock {id}"), "favorite": false,
                "state": {
                    "mode": 2, "state": 1, "trigger": 0, "lastAction": 2,
                    "batteryCritical": critical, "batteryCharging": false,
                    "batteryCharge": if critical { 5 } else { 40 + id % 60 },
                    "keypadBatteryCritical": false, "doorState": 2,
                    "ringToOpenTimer": 0, "nightMode": false,
                },
                "firmwareVersion": 199175, "hardwareVersion": 2817, "serverState": 0,
                "adminPinState": 0, "virtualDevice": false,
                "creationDate": "2025-01-01T00:00:00.000Z", "updateDate": "2026-11-30T07:00:00.000Z",
            })
        })
        .collect();
    serde_json::to_vec(&locks).unwrap()
}

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(body: Vec<u8>) -> Self {
        Self::status(200, body)
    }

    /// A JSON answer with this status.
    pub fn status(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// nginx's HTML 502 page, as integrators report it.
    pub fn bad_gateway() -> Self {
        Self {
            content_type: "text/html",
            ..Self::status(502, web_api_fixture("bad-gateway.html"))
        }
    }

    pub fn unauthorized() -> Self {
        Self::status(401, web_api_fixture("unauthorized.json"))
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// A request the stand-in received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct StubState {
    /// Answers by `"METHOD /path?query"` (exact) or `"METHOD /path"` (any query).
    routes: HashMap<String, Reply>,
    /// When set, any other `Authorization` gets a 401.
    accepted_token: Option<String>,
    received: Vec<Received>,
    /// Registered decentral webhooks, for `PUT`/`GET`/`DELETE /api/decentralWebhook`.
    webhooks: Vec<Value>,
}

/// The running stand-in; stops when dropped.
pub struct NukiApiStub {
    pub url: String,
    state: Arc<Mutex<StubState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for NukiApiStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl NukiApiStub {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(StubState::default()));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{address}"),
            state,
            server,
        }
    }

    /// Answers `method path` with `reply` from now on. A `path` with a query matches only that
    /// query, and takes precedence over the same path without one.
    pub fn route(&self, method: &str, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(format!("{method} {path}"), reply);
    }

    /// From now on, only `Bearer token` is accepted; anything else gets Nuki's 401.
    pub fn accept_only(&self, token: &str) {
        self.state.lock().unwrap().accepted_token = Some(format!("Bearer {token}"));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// How many requests went to `path` (query ignored).
    pub fn count(&self, path: &str) -> usize {
        self.received()
            .iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .count()
    }
}

async fn answer(
    state: &Mutex<StubState>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let authorization = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let path = parts.uri.path().to_owned();
    let method = parts.method.as_str().to_owned();
    let reply = {
        let mut state = state.lock().unwrap();
        let exact = state.routes.get(&format!("{method} {target}")).cloned();
        state.received.push(Received {
            method: method.clone(),
            target,
            authorization: authorization.clone(),
            body: body.clone(),
        });
        let refused = state
            .accepted_token
            .as_ref()
            .is_some_and(|token| authorization.as_ref() != Some(token));
        if refused {
            Reply::unauthorized()
        } else if let Some(reply) = exact {
            reply
        } else if let Some(reply) = state.routes.get(&format!("{method} {path}")) {
            reply.clone()
        } else {
            decentral_webhooks(&mut state, &method, &path, &body)
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type);
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    response.body(Full::new(Bytes::from(reply.body))).unwrap()
}

/// `PUT`, `GET` and `DELETE /api/decentralWebhook[/{id}]` as SWAG-G documents them; 404 for
/// every other route.
fn decentral_webhooks(state: &mut StubState, method: &str, path: &str, body: &[u8]) -> Reply {
    match (method, path) {
        ("PUT", "/api/decentralWebhook") => {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return Reply::status(400, br#"{"detailMessage":"invalid body"}"#.to_vec());
            };
            let id = 1000 + state.webhooks.len() as u64;
            let webhook = json!({
                "id": id,
                "secret": format!("stub-secret-{id}"),
                "webhookUrl": request["webhookUrl"],
                "webhookFeatures": request["webhookFeatures"],
            });
            state.webhooks.push(webhook.clone());
            Reply::json(serde_json::to_vec(&webhook).unwrap())
        }
        ("GET", "/api/decentralWebhook") => {
            let listed: Vec<Value> = state
                .webhooks
                .iter()
                .map(|w| {
                    let mut w = w.clone();
                    w.as_object_mut().unwrap().remove("secret");
                    w
                })
                .collect();
            Reply::json(serde_json::to_vec(&listed).unwrap())
        }
        ("DELETE", path) if path.starts_with("/api/decentralWebhook/") => {
            let id: u64 = path.rsplit('/').next().unwrap().parse().unwrap_or(0);
            let before = state.webhooks.len();
            state.webhooks.retain(|w| w["id"] != id);
            if state.webhooks.len() < before {
                Reply::status(204, Vec::new())
            } else {
                Reply::status(404, br#"{"detailMessage":"not found"}"#.to_vec())
            }
        }
        _ => Reply::status(404, br#"{"detailMessage":"not found"}"#.to_vec()),
    }
}

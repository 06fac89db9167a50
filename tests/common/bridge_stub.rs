//! A Nuki Bridge stand-in: a local HTTP server with the Bridge HTTP API's documented shapes
//! (`tests/fixtures/bridge/`) and failures, since no bridge is reachable from CI.
//!
//! Like a real bridge it serves one request at a time (a concurrent one gets 503), checks the
//! token in every mode (plain, hashed with its replay guard, encrypted unless told its firmware
//! is too old), and holds three callback slots (the demo bridge's [`CallbackSlots`]). It
//! records every path asked, the most requests it ever had in flight, and the token mode of each
//! request, and it can POST callbacks to the registered URLs from its own address.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::TestExporter;
use nuki_exporter::Config;
use nuki_exporter::cli::demo::bridge::CallbackSlots;
use nuki_exporter::config::BridgeConfig;

pub const TOKEN: &str = "bridge-token-4711";
/// Time a request keeps the stand-in busy, so that a second concurrent one would overlap it.
const SERVICE_TIME: Duration = Duration::from_millis(20);

/// How a request carried its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUse {
    Plain,
    Hashed,
    Encrypted,
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    /// The status the stand-in answered.
    pub status: u16,
    /// The token mode the request used, accepted or not.
    pub sent: Option<TokenUse>,
    /// The token mode, when the token was accepted.
    pub token: Option<TokenUse>,
}

impl Seen {
    fn new(
        request: &Request<hyper::body::Incoming>,
        status: StatusCode,
        token: Option<TokenUse>,
    ) -> Self {
        let query = request.uri().query().unwrap_or_default();
        let has = |name: &str| form_urlencoded::parse(query.as_bytes()).any(|(key, _)| key == name);
        let sent = if has("token") {
            Some(TokenUse::Plain)
        } else if has("hash") {
            Some(TokenUse::Hashed)
        } else if has("ctoken") {
            Some(TokenUse::Encrypted)
        } else {
            None
        };
        Self {
            at: Instant::now(),
            path: request.uri().path().to_owned(),
            status: status.as_u16(),
            sent,
            token,
        }
    }
}

#[derive(Default)]
struct State {
    devices: Vec<Value>,
    info: Value,
    callbacks: CallbackSlots,
    seen: Vec<Seen>,
    /// (ts, rnr) of every hashed or encrypted token accepted: each works once.
    used_nonces: HashSet<(String, String)>,
    /// Answer 503 to this many of the next requests (another client is talking to it).
    busy: usize,
    /// Answer every request with this status (a broken or rebooting bridge).
    failing: Option<StatusCode>,
    /// Firmware too old for encrypted tokens.
    no_encrypted_tokens: bool,
    /// Callback registrations beyond the three slots (ids from 1000), as a bridge whose
    /// callback list went wrong, or a hostile one, lists them: removable one at a time.
    flood: Vec<(u64, String)>,
}

/// One request in flight, until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct BridgeStub {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/bridge/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

impl BridgeStub {
    /// A bridge with the `list` fixture's three locks and opener, listening on `ip`.
    pub async fn start(ip: IpAddr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            devices: fixture("list").as_array().unwrap().clone(),
            info: fixture("info"),
            ..State::default()
        }));
        let stub = Self {
            address,
            state,
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let (state, in_flight, max) = (
            stub.state.clone(),
            stub.in_flight.clone(),
            stub.max_in_flight.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, in_flight, max) = (state.clone(), in_flight.clone(), max.clone());
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (state, in_flight, max) = (state.clone(), in_flight.clone(), max.clone());
                    async move {
                        let before = in_flight.fetch_add(1, Ordering::SeqCst);
                        // Counted down also when the client hangs up mid-request and hyper
                        // drops this future.
                        let _done = InFlight(in_flight);
                        max.fetch_max(before + 1, Ordering::SeqCst);
                        let response = if before > 0 {
                            record(&state, &request, StatusCode::SERVICE_UNAVAILABLE, None)
                        } else {
                            tokio::time::sleep(SERVICE_TIME).await;
                            answer(&state, &request)
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        stub
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// The paths asked so far.
    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }

    /// The most requests the stand-in ever had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn callbacks(&self) -> Vec<String> {
        self.state().callbacks.urls()
    }

    /// Registers a callback as another client of the bridge would.
    pub fn add_callback(&self, url: &str) {
        assert!(self.state().callbacks.add(url), "the three slots are taken");
    }

    /// Lists `copies` more registrations of `url` beyond the three slots.
    pub fn flood_callbacks(&self, url: &str, copies: u64) {
        self.state().flood = (1000..1000 + copies)
            .map(|id| (id, url.to_owned()))
            .collect();
    }

    /// How many of the flooded registrations are left.
    pub fn flooded(&self) -> usize {
        self.state().flood.len()
    }

    pub fn set_devices(&self, devices: Vec<Value>) {
        self.state().devices = devices;
    }

    pub fn set_busy(&self, requests: usize) {
        self.state().busy = requests;
    }

    pub fn set_failing(&self, status: Option<StatusCode>) {
        self.state().failing = status;
    }

    pub fn refuse_encrypted_tokens(&self) {
        self.state().no_encrypted_tokens = true;
    }

    /// POSTs `body` to every registered callback URL from the stand-in's own address, as the
    /// bridge does on a lock-state change; the status of each.
    pub async fn push(&self, body: &Value) -> Vec<u16> {
        let mut statuses = Vec::new();
        for url in self.callbacks() {
            statuses.push(post_from(self.address.ip(), &url, body).await);
        }
        statuses
    }
}

/// The callback URL of tests that deliver no callbacks: an address of TEST-NET-1 (RFC 5737),
/// never contacted, the same for every exporter (and every restart of one).
pub const UNDELIVERED_CALLBACK_URL: &str = "http://192.0.2.1:10180/bridge/callback";

/// An exporter on `config` polling `stub` as bridge `hall` (callback URL
/// [`UNDELIVERED_CALLBACK_URL`]), after `configure` adjusted the bridge's table.
pub async fn exporter_polling(
    stub: &BridgeStub,
    mut config: Config,
    configure: impl FnOnce(&mut BridgeConfig),
) -> TestExporter {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut bridge = BridgeConfig::new("hall", &stub.url(), token_file);
    bridge.request_spacing = Duration::from_millis(50);
    bridge.callback_url = Some(UNDELIVERED_CALLBACK_URL.into());
    configure(&mut bridge);
    config.bridges.push(bridge);
    // The token is read at start-up: the file can go afterwards.
    TestExporter::start_with(config).await
}

/// A callback URL known before the exporter starts (its webhook listener binds port 0): it
/// takes a bridge's callback POSTs and passes each on to the exporter's `/bridge/callback`
/// from the sender's own address, so that the exporter's address guard sees the bridge.
pub struct CallbackRelay {
    pub url: String,
    exporter: Arc<Mutex<Option<String>>>,
}

impl CallbackRelay {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/bridge/callback", listener.local_addr().unwrap());
        let exporter: Arc<Mutex<Option<String>>> = Arc::default();
        let target = exporter.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let target = target.lock().unwrap().clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let status = match target {
                            Some(address) => {
                                let url = format!("http://{address}/bridge/callback");
                                post_bytes_from(peer.ip(), &url, body).await
                            }
                            None => 503,
                        };
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { url, exporter }
    }

    /// Passes callbacks on to the exporter whose webhook listener is at `address` from now on.
    pub fn forward_to(&self, address: String) {
        *self.exporter.lock().unwrap() = Some(address);
    }
}

/// POSTs JSON to `url` from a socket bound to `source`.
pub async fn post_from(source: IpAddr, url: &str, body: &Value) -> u16 {
    post_bytes_from(source, url, Bytes::from(serde_json::to_vec(body).unwrap())).await
}

async fn post_bytes_from(source: IpAddr, url: &str, body: Bytes) -> u16 {
    let uri: hyper::Uri = url.parse().unwrap();
    let target: SocketAddr = uri.authority().unwrap().as_str().parse().unwrap();
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind((source, 0).into()).unwrap();
    let stream = socket.connect(target).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::post(uri.path())
        .header("host", target.to_string())
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

fn record(
    state: &Mutex<State>,
    request: &Request<hyper::body::Incoming>,
    status: StatusCode,
    token: Option<TokenUse>,
) -> Response<Full<Bytes>> {
    state
        .lock()
        .unwrap()
        .seen
        .push(Seen::new(request, status, token));
    let body = match status {
        StatusCode::UNAUTHORIZED => return plain(status, "HTTP 401 Unauthorized"),
        StatusCode::OK => unreachable!("answers carry their own body"),
        _ => json!({"success": false}),
    };
    json_response(status, &body)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

fn answer(state: &Mutex<State>, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let mut guard = state.lock().unwrap();
    let token = check_token(&mut guard, &param);
    let failure = if let Some(status) = guard.failing {
        Some(status)
    } else if guard.busy > 0 {
        guard.busy -= 1;
        Some(StatusCode::SERVICE_UNAVAILABLE)
    } else if token.is_none() {
        Some(StatusCode::UNAUTHORIZED)
    } else {
        None
    };
    if let Some(status) = failure {
        drop(guard);
        return record(state, request, status, token);
    }
    let path = request.uri().path();
    let (status, body) = match path {
        "/list" => (StatusCode::OK, Value::from(guard.devices.clone())),
        "/info" => (StatusCode::OK, guard.info.clone()),
        // Answered like the real bridge, and recorded: a test asserts it is never asked.
        "/lockState" => (StatusCode::OK, json!({"state": 1, "success": true})),
        "/callback/list" | "/callback/remove" if !guard.flood.is_empty() => {
            flooded_answer(&mut guard, path, param("id"))
        }
        _ => guard
            .callbacks
            .answer(path, request.uri().query())
            .unwrap_or((StatusCode::NOT_FOUND, json!({}))),
    };
    guard.seen.push(Seen::new(request, status, token));
    json_response(status, &body)
}

/// `/callback/list` and `/callback/remove` of a bridge holding flooded registrations.
fn flooded_answer(state: &mut State, path: &str, id: Option<String>) -> (StatusCode, Value) {
    if path == "/callback/remove" {
        let id = id.and_then(|id| id.parse::<u64>().ok());
        let before = state.flood.len();
        state.flood.retain(|(known, _)| Some(*known) != id);
        if state.flood.len() < before {
            return (StatusCode::OK, json!({"success": true}));
        }
        return state
            .callbacks
            .answer(path, Some(&format!("id={}", id.unwrap_or(u64::MAX))))
            .expect("a callback path");
    }
    let (status, mut body) = state.callbacks.answer(path, None).expect("a callback path");
    let listed = body["callbacks"].as_array_mut().expect("a callbacks array");
    listed.extend(
        state
            .flood
            .iter()
            .map(|(id, url)| json!({"id": id, "url": url})),
    );
    (status, body)
}

/// The token mode a request authenticated with, `None` when it did not.
fn check_token(state: &mut State, param: &dyn Fn(&str) -> Option<String>) -> Option<TokenUse> {
    if let Some(token) = param("token") {
        return (token == TOKEN).then_some(TokenUse::Plain);
    }
    let (ts, rnr, mode) =
        if let (Some(ts), Some(rnr), Some(hash)) = (param("ts"), param("rnr"), param("hash")) {
            let expected = hex::encode(Sha256::digest(format!("{ts},{rnr},{TOKEN}")));
            if hash != expected {
                return None;
            }
            (ts, rnr, TokenUse::Hashed)
        } else if let (Some(ctoken), Some(nonce)) = (param("ctoken"), param("nonce")) {
            if state.no_encrypted_tokens {
                return None;
            }
            let key = Sha256::digest(TOKEN.as_bytes());
            let cipher = XSalsa20Poly1305::new_from_slice(&key).unwrap();
            let nonce = hex::decode(nonce).ok().filter(|n| n.len() == 24)?;
            let plain = cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    hex::decode(ctoken).ok()?.as_slice(),
                )
                .ok()?;
            let (ts, rnr) = String::from_utf8(plain)
                .ok()?
                .split_once(',')
                .map(|(t, r)| (t.to_owned(), r.to_owned()))?;
            (ts, rnr, TokenUse::Encrypted)
        } else {
            return None;
        };
    let sent = humantime::parse_rfc3339(&ts).ok()?;
    let skew = SystemTime::now()
        .duration_since(sent)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(60) || rnr.parse::<u16>().is_err() {
        return None;
    }
    // The replay guard: each (ts, rnr) works once.
    state.used_nonces.insert((ts, rnr)).then_some(mode)
}

//! A SIMULATION of the Nuki Web API for the demo profile only: serves the demo fleet as
//! `GET /smartlock`, an ACTIVE Advanced API key, and the demo's own webhook deliveries as the
//! key's webhook log, so that the exporter's polling can be seen working without a Nuki
//! account. Every answer carries `X-Nuki-Simulation: nuki-exporter demo`. Never point a real
//! exporter at it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Nuki keeps the last 300 deliveries of a key.
const KEPT_DELIVERIES: usize = 300;

/// The simulated account: the fleet's current round and the webhook log.
pub struct SimulatedAccount {
    locks: u64,
    round: AtomicU64,
    deliveries: Mutex<VecDeque<Value>>,
    next_delivery: AtomicU64,
}

impl SimulatedAccount {
    pub fn new(locks: u64) -> Self {
        Self {
            locks,
            round: AtomicU64::new(0),
            deliveries: Mutex::new(VecDeque::new()),
            next_delivery: AtomicU64::new(1),
        }
    }

    pub fn set_round(&self, number: u64) {
        self.round.store(number, Ordering::Relaxed);
    }

    /// Logs one webhook the demo sent and the status the exporter answered (`None`: no answer).
    pub fn delivered(&self, status: Option<u16>) {
        let id = self.next_delivery.fetch_add(1, Ordering::Relaxed);
        let entry = json!({
            "id": format!("{id:024x}"), "accountId": 1, "apiKeyId": 1,
            "succeeded": status.is_some_and(|s| (200..300).contains(&s)),
            "responseStatus": status,
        });
        let mut log = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.push_front(entry);
        log.truncate(KEPT_DELIVERIES);
    }

    /// The webhook log, newest first: at most `limit` entries older than log id `older_than`.
    fn webhook_logs(&self, limit: usize, older_than: Option<&str>) -> Vec<Value> {
        let log = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .filter(|entry| older_than.is_none_or(|id| entry["id"].as_str() < Some(id)))
            .take(limit)
            .cloned()
            .collect()
    }

    fn answer(&self, request: &Request<hyper::body::Incoming>) -> (StatusCode, Value) {
        let bearer = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
        if !bearer {
            return (
                StatusCode::UNAUTHORIZED,
                json!({"detailMessage": "Your access token is not authorized", "stackTrace": [], "suppressedExceptions": []}),
            );
        }
        let query = |name: &str| {
            request.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            })
        };
        let segments: Vec<&str> = request.uri().path().split('/').skip(1).collect();
        match segments.as_slice() {
            ["smartlock"] => {
                let round = self.round.load(Ordering::Relaxed);
                (
                    StatusCode::OK,
                    Value::from(super::smartlocks(round, self.locks)),
                )
            }
            ["api", "key", _, "advanced"] => (
                StatusCode::OK,
                json!({"name": "nuki-exporter demo (simulation)", "type": "OTHER", "webhookStatus": "ACTIVE", "status": "ACTIVE"}),
            ),
            ["api", "key", _, "webhook", "logs"] => {
                let limit = query("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
                let logs = self.webhook_logs(usize::min(limit, 100), query("id"));
                (StatusCode::OK, Value::from(logs))
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"detailMessage": "not simulated"}),
            ),
        }
    }
}

/// Binds `address` and serves the simulation in the background.
pub async fn serve(address: SocketAddr, account: Arc<SimulatedAccount>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("--api-listen {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %bound, "SIMULATED Nuki Web API (demo only) listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let account = Arc::clone(&account);
            let service = service_fn(move |request| {
                let (status, body) = account.answer(&request);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("x-nuki-simulation", "nuki-exporter demo")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .expect("valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_newest_first_bounded_and_pages_back() {
        let account = SimulatedAccount::new(1);
        for status in [Some(204), None, Some(401)] {
            account.delivered(status);
        }
        let log = account.webhook_logs(2, None);
        assert_eq!(log.len(), 2);
        assert_eq!(log[0]["responseStatus"], 401);
        assert_eq!(log[0]["succeeded"], false);
        let older = account.webhook_logs(10, log[1]["id"].as_str());
        assert_eq!(older.len(), 1);
        assert_eq!(older[0]["succeeded"], true);
        for _ in 0..KEPT_DELIVERIES {
            account.delivered(Some(204));
        }
        assert_eq!(account.webhook_logs(1000, None).len(), KEPT_DELIVERIES);
    }
}

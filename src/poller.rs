//! Polls the Nuki Web API: `GET /smartlock` for every lock's state (fed to the metrics facade as
//! lock events, like webhooks), and with `api.advanced_key_id` the webhook delivery health.
//!
//! One poll at start-up, then one every `api.poll_interval`; after a failed poll, sooner, with
//! exponential backoff and jitter (never later than the interval unless Nuki asks, by
//! `Retry-After`). Parsing and recording run on a background thread of lower priority, so a
//! large fleet never holds a thread that answers webhooks or scrapes. A failed poll changes no
//! lock series: the last good values stay. A poll's `api_up` is set last, between two scrapes'
//! encodes: a scrape that shows it shows everything that poll read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;

use crate::background::BackgroundThread;
use crate::lock::LockEvent;
use crate::metrics::{Endpoint, Metrics};
use crate::nuki_api::{ApiError, NukiApi};
use crate::source::web_api::{self, ParseError};

/// Webhook log entries asked for per page: Nuki's maximum.
const LOG_PAGE: usize = 100;
/// Nuki keeps the last 300 deliveries: at most three pages are worth reading.
const LOG_PAGES: usize = 3;
/// The first retry after a failed poll (sooner when the interval is shorter).
const FIRST_RETRY: Duration = Duration::from_secs(5);

pub struct Poller {
    api: NukiApi,
    /// Where each answer is parsed and recorded.
    recorder: BackgroundThread,
    metrics: Arc<Metrics>,
    interval: Duration,
    /// The ids the previous poll listed (at first, those the state file restored): a lock
    /// missing from the next list has left the account.
    account: HashSet<u64>,
    delivery: Option<DeliveryWatch>,
}

/// What a successful `GET /smartlock` poll publishes with the poll's `api_up`.
#[derive(Clone, Copy, Debug)]
struct Listed {
    locks: usize,
    seconds: f64,
    at: f64,
}

/// The delivery health of one Advanced API key.
struct DeliveryWatch {
    key: String,
    /// Log ids already counted; `None` until the first read, which only sets the baseline.
    counted: Option<HashSet<String>>,
    active: Option<bool>,
}

impl Poller {
    /// A poller that removes the `restored` locks if the first poll does not list them.
    pub fn new(
        api: NukiApi,
        metrics: Arc<Metrics>,
        interval: Duration,
        advanced_key_id: Option<u32>,
        restored: Vec<u64>,
    ) -> std::io::Result<Self> {
        let delivery = advanced_key_id.map(|id| {
            let key = id.to_string();
            metrics.web_api().watch_key(&key);
            DeliveryWatch {
                key,
                counted: None,
                active: None,
            }
        });
        Ok(Self {
            api,
            recorder: BackgroundThread::spawn("api-poll")?,
            metrics,
            interval,
            account: restored.into_iter().collect(),
            delivery,
        })
    }

    /// Polls until `stop` changes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(FIRST_RETRY.min(self.interval / 2))
            .with_max_delay(self.interval / 2) // jitter adds up to as much again
            .with_jitter()
            .without_max_times();
        let mut retries = None;
        let mut failing = false;
        loop {
            // A poll in flight is abandoned at shutdown rather than waited for.
            let polled = tokio::select! {
                polled = self.poll() => polled,
                _ = stop.changed() => return,
            };
            let delay = match polled {
                Ok(()) => {
                    if failing {
                        tracing::info!("Nuki Web API poll succeeded again");
                    }
                    (failing, retries) = (false, None);
                    self.interval
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "Nuki Web API poll failed; keeping the last good values and retrying with backoff");
                    } else {
                        tracing::debug!(%error, "Nuki Web API poll failed again");
                    }
                    failing = true;
                    let next = retries
                        .get_or_insert_with(|| backoff.build())
                        .next()
                        .unwrap_or(self.interval);
                    next.max(error.retry_after().unwrap_or_default())
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One poll: the lock list, then delivery health; every part is tried, the first error is
    /// returned.
    pub async fn poll(&mut self) -> Result<(), ApiError> {
        let listed = self.poll_smartlocks().await;
        let delivery = match self.delivery.take() {
            Some(mut watch) => {
                let result = self.poll_delivery(&mut watch).await;
                self.delivery = Some(watch);
                result
            }
            None => Ok(()),
        };
        let up = listed.is_ok() && delivery.is_ok();
        self.publish(listed.as_ref().ok().copied(), up).await;
        listed.map(|_| ()).and(delivery)
    }

    /// The poll's last step, on the recording thread and between two encodes: a scrape that
    /// shows this poll's `api_up` shows every lock, request and delivery the poll recorded.
    async fn publish(&self, listed: Option<Listed>, up: bool) {
        let metrics = Arc::clone(&self.metrics);
        self.recorder
            .run(move || {
                metrics.between_encodes(|| {
                    let web_api = metrics.web_api();
                    if let Some(Listed { locks, seconds, at }) = listed {
                        web_api.smartlocks_polled(locks, seconds, at);
                    }
                    web_api.set_up(up);
                })
            })
            .await
            .expect("the recording thread runs as long as the poller");
    }

    async fn poll_smartlocks(&mut self) -> Result<Listed, ApiError> {
        let started = Instant::now();
        let body = self.api.get(Endpoint::Smartlocks, "/smartlock").await?;
        let metrics = Arc::clone(&self.metrics);
        let previous = std::mem::take(&mut self.account);
        let recorded = self.recorder.run(move || {
            let locks = web_api::parse_smartlocks(&body);
            let locks = match locks {
                Ok(locks) => locks,
                Err(error) => return Err((error, previous)),
            };
            let now = unix_now();
            let listed: HashSet<u64> = locks.iter().map(|(id, _)| *id).collect();
            for (id, events) in &locks {
                metrics.observe(*id, events, now);
            }
            for gone in previous.difference(&listed) {
                metrics.observe(*gone, &[LockEvent::Removed], now);
            }
            Ok(listed)
        });
        let recorded = recorded
            .await
            .expect("the recording thread runs as long as the poller");
        match recorded {
            Ok(listed) => {
                let polled = Listed {
                    locks: listed.len(),
                    seconds: started.elapsed().as_secs_f64(),
                    at: unix_now(),
                };
                self.account = listed;
                Ok(polled)
            }
            Err((error, previous)) => {
                self.account = previous;
                Err(self.malformed(Endpoint::Smartlocks, error))
            }
        }
    }

    async fn poll_delivery(&self, watch: &mut DeliveryWatch) -> Result<(), ApiError> {
        let metrics = self.metrics.web_api();
        let key = watch.key.clone();
        let advanced = self
            .api
            .get(Endpoint::AdvancedKey, &format!("/api/key/{key}/advanced"))
            .await
            .and_then(|body| {
                web_api::parse_delivery_active(&body)
                    .map_err(|error| self.malformed(Endpoint::AdvancedKey, error))
            });
        if let Ok(Some(active)) = advanced {
            metrics.set_delivery_active(&key, active);
            if !active && watch.active != Some(false) {
                tracing::warn!(api_key_id = %key, "Nuki has deactivated webhook delivery: fix the webhook endpoint, then reactivate delivery (POST /api/key/{{id}}/advanced/reactivate)");
            }
            watch.active = Some(active);
        }
        let logs = self.read_new_deliveries(watch).await;
        advanced.and(logs).map(|_| ())
    }

    /// Reads the webhook log, newest first, paging back until a page holds an entry already
    /// counted; counts the new entries.
    async fn read_new_deliveries(&self, watch: &mut DeliveryWatch) -> Result<(), ApiError> {
        let key = &watch.key;
        let mut entries = Vec::new();
        let mut older_than: Option<String> = None;
        for _ in 0..LOG_PAGES {
            let mut path = format!("/api/key/{key}/webhook/logs?limit={LOG_PAGE}");
            if let Some(id) = &older_than {
                path.push_str("&id=");
                path.push_str(id);
            }
            let body = self.api.get(Endpoint::WebhookLogs, &path).await?;
            let page = web_api::parse_webhook_logs(&body)
                .map_err(|error| self.malformed(Endpoint::WebhookLogs, error))?;
            let full = page.len() >= LOG_PAGE;
            let reached_counted = match &watch.counted {
                Some(counted) => page.iter().any(|entry| counted.contains(&entry.id)),
                None => true,
            };
            older_than = page.last().map(|entry| entry.id.clone());
            entries.extend(page);
            if !full || reached_counted {
                break;
            }
        }
        let ids: HashSet<String> = entries.iter().map(|entry| entry.id.clone()).collect();
        if let Some(counted) = &watch.counted {
            for entry in entries.iter().filter(|entry| !counted.contains(&entry.id)) {
                self.metrics
                    .web_api()
                    .delivery(key, entry.succeeded, entry.response_status);
            }
        }
        watch.counted = Some(ids);
        Ok(())
    }

    fn malformed(&self, endpoint: Endpoint, source: ParseError) -> ApiError {
        self.metrics.web_api().malformed(endpoint);
        ApiError::Malformed { endpoint, source }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

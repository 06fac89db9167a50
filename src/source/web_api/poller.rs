//! Polls the Nuki Web API: `GET /smartlock` for every lock's state (fed to the metrics facade as
//! lock events, like webhooks), and with `api.advanced_key_id` the webhook delivery health.
//!
//! One poll at start-up, then one every `api.poll_interval`; after a failed poll, sooner, with
//! exponential backoff and jitter (never later than the interval unless Nuki asks, by
//! `Retry-After`). Parsing and recording run on a background thread of lower priority, so a
//! large fleet never holds a thread that answers webhooks or scrapes. A failed poll changes no
//! lock series: the last good values stay. A poll's `api_up` is set last, between two scrapes'
//! encodes: a scrape that shows it shows everything that poll read.
//! A panic while recording fails that poll only (logged, counted in
//! `nuki_exporter_api_recording_panics_total`); the recording thread and the polling go on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;

use crate::lock::{LockEvent, Origin};
use crate::source::roster::Roster;
use crate::source::web_api::client::{ApiError, NukiApi};
use crate::source::web_api::metrics::{Endpoint, WebApiMetrics};
use crate::source::web_api::parse::{self, ParseError, PolledLocks};
use crate::source::web_api::seen_ids::SeenIds;
use crate::store::Metrics;
use crate::util::background::{BackgroundThread, pause_point};
use crate::util::unix_now;

/// Webhook log entries asked for per page: Nuki's maximum.
const LOG_PAGE: usize = 100;
/// Nuki keeps the last 300 deliveries: at most three pages are worth reading.
const LOG_PAGES: usize = 3;
/// Log ids remembered as counted: the log's 300 and as many again of the reads since, so that
/// an entry Nuki still lists is never forgotten and counted again.
const COUNTED_LOG_IDS: usize = 1_000;
/// The first retry after a failed poll (sooner when the interval is shorter).
const FIRST_RETRY: Duration = Duration::from_secs(5);

pub struct WebApiPoller {
    api: NukiApi,
    /// Where each answer is parsed and recorded.
    recorder: BackgroundThread,
    metrics: Arc<Metrics>,
    /// The Web API's own metrics, registered in `metrics`' registry.
    api_metrics: WebApiMetrics,
    interval: Duration,
    /// The locks the previous poll listed (at first, those the state file restored): a lock
    /// missing from the next list has left the account.
    account: Arc<Roster>,
    /// Which kinds of skipped locks the last poll logged: each is logged once while it lasts.
    skipping: Skipping,
    delivery: Option<DeliveryWatch>,
}

/// What a successful `GET /smartlock` poll publishes with the poll's `api_up`.
#[derive(Clone, Copy, Debug)]
struct Listed {
    /// Locks the answer listed, those past `limits.max_smartlocks` included.
    locks: usize,
    malformed: usize,
    over_limit: usize,
    seconds: f64,
    at: f64,
}

#[derive(Default)]
struct Skipping {
    malformed: bool,
    beyond_limit: bool,
}

/// The delivery health of one Advanced API key.
struct DeliveryWatch {
    key: String,
    /// Log ids already counted; `None` until the first read, which only sets the baseline.
    counted: Option<SeenIds>,
    active: Option<bool>,
}

impl WebApiPoller {
    /// A poller that removes the `restored` locks if the first poll does not list them.
    pub fn new(
        api: NukiApi,
        metrics: Arc<Metrics>,
        api_metrics: WebApiMetrics,
        interval: Duration,
        advanced_key_id: Option<u32>,
        restored: Vec<u64>,
    ) -> std::io::Result<Self> {
        let delivery = advanced_key_id.map(|id| {
            let key = id.to_string();
            api_metrics.watch_key(&key);
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
            api_metrics,
            interval,
            account: Arc::new(Roster::with(restored)),
            skipping: Skipping::default(),
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
        let published = self.publish(listed.as_ref().ok().copied(), up).await;
        listed.map(|_| ()).and(delivery).and(published)
    }

    /// Runs `job` on the recording thread. A job that panics fails this poll only: it is
    /// logged and counted, the thread goes on with the next job, and polling goes on.
    async fn record<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.recorder.run(job).await.map_err(|failed| {
            tracing::error!(error = %failed, "recording a Nuki Web API poll failed; this poll counts as failed, polling goes on");
            self.api_metrics.recording_panicked();
            ApiError::Recording(failed)
        })
    }

    /// The poll's last step, on the recording thread and between two encodes: a scrape that
    /// shows this poll's `api_up` shows every lock, request and delivery the poll recorded.
    async fn publish(&self, listed: Option<Listed>, up: bool) -> Result<(), ApiError> {
        let (metrics, web_api) = (Arc::clone(&self.metrics), self.api_metrics.clone());
        self.record(move || {
            metrics.between_encodes(|| {
                if let Some(listed) = listed {
                    web_api.smartlocks_polled(
                        listed.locks,
                        listed.malformed,
                        listed.over_limit,
                        listed.seconds,
                        listed.at,
                    );
                }
                web_api.set_up(up);
            })
        })
        .await
    }

    async fn poll_smartlocks(&mut self) -> Result<Listed, ApiError> {
        let started = Instant::now();
        let body = self.api.get(Endpoint::Smartlocks, "/smartlock").await?;
        let (metrics, account) = (Arc::clone(&self.metrics), Arc::clone(&self.account));
        let max_locks = self.metrics.limits().max_smartlocks;
        let recorded = self.record(move || {
            let mut polled = parse::parse_smartlocks(&body, max_locks)?;
            // The answer is freed before the locks are recorded into the table.
            drop(body);
            let now = unix_now();
            let locks = std::mem::take(&mut polled.locks);
            let listed: HashSet<u64> = locks.iter().map(|(id, _)| *id).collect();
            let recorded = listed.len();
            for (id, events) in &locks {
                metrics.observe(*id, Origin::WebApiPoll, events, now);
                pause_point();
            }
            for gone in account.replace(listed) {
                metrics.observe(gone, Origin::WebApiPoll, &[LockEvent::Removed], now);
            }
            Ok((recorded, polled))
        });
        let (recorded, skipped) = match recorded.await? {
            Ok(recorded) => recorded,
            Err(error) => return Err(self.malformed(Endpoint::Smartlocks, error)),
        };
        self.report_skipped(&skipped);
        Ok(Listed {
            locks: recorded + skipped.beyond_limit,
            malformed: skipped.malformed,
            over_limit: skipped.beyond_limit,
            seconds: started.elapsed().as_secs_f64(),
            at: unix_now(),
        })
    }

    /// Logs the locks an answer held but the poll left out, once while it goes on.
    fn report_skipped(&mut self, skipped: &PolledLocks) {
        if let Some(reason) = &skipped.first_malformed
            && !self.skipping.malformed
        {
            tracing::warn!(locks = skipped.malformed, first = %reason, "GET /smartlock listed locks that cannot be read; they are skipped, the others recorded");
        }
        if skipped.beyond_limit > 0 && !self.skipping.beyond_limit {
            tracing::warn!(
                locks = skipped.beyond_limit,
                max_smartlocks = self.metrics.limits().max_smartlocks,
                "GET /smartlock listed more locks than limits.max_smartlocks; the locks past the limit are not recorded"
            );
        }
        self.skipping = Skipping {
            malformed: skipped.malformed > 0,
            beyond_limit: skipped.beyond_limit > 0,
        };
    }

    async fn poll_delivery(&self, watch: &mut DeliveryWatch) -> Result<(), ApiError> {
        let metrics = &self.api_metrics;
        let key = watch.key.clone();
        let advanced = self
            .api
            .get(Endpoint::AdvancedKey, &format!("/api/key/{key}/advanced"))
            .await
            .and_then(|body| {
                parse::parse_delivery_active(&body)
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
    /// counted; counts each entry not counted before, once (a page may repeat ids, and the
    /// next page may start at the `id` it was asked for).
    async fn read_new_deliveries(&self, watch: &mut DeliveryWatch) -> Result<(), ApiError> {
        let key = &watch.key;
        let mut entries = Vec::new();
        let mut older_than: Option<String> = None;
        for _ in 0..LOG_PAGES {
            let path = log_page_path(key, older_than.as_deref());
            let body = self.api.get(Endpoint::WebhookLogs, &path).await?;
            let page = parse::parse_webhook_logs(&body, LOG_PAGE)
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
        // The first read only sets the baseline: what Nuki delivered before we started.
        let baseline = watch.counted.is_none();
        let counted = watch
            .counted
            .get_or_insert_with(|| SeenIds::new(COUNTED_LOG_IDS));
        // Oldest first: the set forgets ids in the order Nuki logged them.
        for entry in entries.iter().rev() {
            if counted.insert(&entry.id) && !baseline {
                self.api_metrics
                    .delivery(key, entry.succeeded, entry.response_status);
            }
        }
        Ok(())
    }

    fn malformed(&self, endpoint: Endpoint, source: ParseError) -> ApiError {
        self.api_metrics.malformed(endpoint);
        ApiError::Malformed { endpoint, source }
    }
}

/// The URL path of a webhook log page: the newest entries, or those from the entry `from`
/// back (an id Nuki chose, so URL-encoded).
fn log_page_path(key: &str, from: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", itoa::Buffer::new().format(LOG_PAGE));
    if let Some(id) = from {
        query.append_pair("id", id);
    }
    format!("/api/key/{key}/webhook/logs?{}", query.finish())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::Response;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::config::ApiConfig;
    use crate::store::Limits;
    use crate::util::background::JobFailed;

    /// A stand-in Web API that answers every request with the `GET /smartlock` fixture.
    async fn serve_smartlock_fixture() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(|_request| async {
                    let body = crate::source::fixture!("web_api", "smartlock.json");
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body))))
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        format!("http://{address}")
    }

    fn sample(metrics: &Metrics, name: &str) -> Option<f64> {
        let text = String::from_utf8(metrics.encode()).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn a_panicking_recording_fails_that_poll_only_and_the_next_poll_records() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "test-token\n").unwrap();
        let config = ApiConfig {
            url: serve_smartlock_fixture().await,
            allow_insecure_http: true,
            ..ApiConfig::default()
        };
        let metrics = Arc::new(Metrics::new(Limits::from(
            &crate::config::LimitsConfig::default(),
        )));
        let api_metrics = WebApiMetrics::register(metrics.registry());
        let api = NukiApi::new(&config, &token_file, Some(api_metrics.clone())).unwrap();
        let mut poller = WebApiPoller::new(
            api,
            Arc::clone(&metrics),
            api_metrics,
            config.poll_interval,
            None,
            Vec::new(),
        )
        .unwrap();

        let panicked = poller.record(|| -> () { panic!("a recording bug") }).await;
        assert!(
            matches!(&panicked, Err(ApiError::Recording(JobFailed::Panicked(message))) if message == "a recording bug"),
            "{panicked:?}"
        );
        assert_eq!(
            sample(&metrics, "nuki_exporter_api_recording_panics_total"),
            Some(1.0)
        );

        poller
            .poll()
            .await
            .expect("the poll after the panic succeeds");
        assert_eq!(sample(&metrics, "nuki_exporter_api_up"), Some(1.0));
        assert_eq!(sample(&metrics, "nuki_exporter_api_smartlocks"), Some(3.0));
        assert_eq!(
            sample(&metrics, "nuki_exporter_api_recording_panics_total"),
            Some(1.0)
        );
    }
}

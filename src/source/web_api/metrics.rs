//! The Nuki Web API source's own metrics: requests, poll health and webhook delivery health.
//! Registered in the facade's registry; kept apart from the per-lock series, which the polls
//! set through [`crate::store::Metrics::observe`] like every other source.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry,
};

use crate::store::{counter_vec, gauge_vec, register};

/// A Web API endpoint, by route template: the bounded `endpoint` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Smartlocks,
    AdvancedKey,
    WebhookLogs,
    DecentralWebhooks,
    DecentralWebhook,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Self::Smartlocks => "/smartlock",
            Self::AdvancedKey => "/api/key/{id}/advanced",
            Self::WebhookLogs => "/api/key/{id}/webhook/logs",
            Self::DecentralWebhooks => "/api/decentralWebhook",
            Self::DecentralWebhook => "/api/decentralWebhook/{id}",
        }
    }
}

/// Handles of the Web API metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct WebApiMetrics {
    up: IntGauge,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    malformed: IntCounterVec,
    recording_panics: IntCounter,
    last_success: Gauge,
    smartlocks: IntGauge,
    smartlocks_skipped: IntGaugeVec,
    poll_duration: Histogram,
    delivery_active: IntGaugeVec,
    deliveries: IntCounterVec,
    delivery_responses: IntCounterVec,
}

impl WebApiMetrics {
    /// Registers every metric; the poller's malformed-answer counters start at 0.
    pub fn register(r: &Registry) -> Self {
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help)
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
            register(
                r,
                HistogramVec::new(opts, labels).expect("valid metric definition"),
            )
        };
        let metrics = Self {
            up: register(
                r,
                IntGauge::new(
                    "nuki_exporter_api_up",
                    "1 when every request of the last Nuki Web API poll succeeded, 0 otherwise.",
                )
                .expect("valid metric definition"),
            ),
            requests: counter_vec(
                r,
                "nuki_exporter_api_requests_total",
                "Requests to the Nuki Web API, by endpoint (route template) and HTTP status code (error: no answer).",
                &["endpoint", "code"],
            ),
            request_duration: histogram(
                "nuki_exporter_api_request_duration_seconds",
                "Time of a Nuki Web API request, body included, by endpoint.",
                &["endpoint"],
            ),
            malformed: counter_vec(
                r,
                "nuki_exporter_api_malformed_responses_total",
                "Nuki Web API answers whose body was not the documented JSON (HTML error pages, cut-off or other JSON); the last good values are kept.",
                &["endpoint"],
            ),
            recording_panics: register(
                r,
                IntCounter::new(
                    "nuki_exporter_api_recording_panics_total",
                    "Nuki Web API polls whose recording (parsing and storing the answer, on the background thread) panicked; the poll counts as failed and polling goes on.",
                )
                .expect("valid metric definition"),
            ),
            last_success: register(
                r,
                Gauge::new(
                    "nuki_exporter_api_last_success_timestamp_seconds",
                    "Unix time of the last successful GET /smartlock poll.",
                )
                .expect("valid metric definition"),
            ),
            smartlocks: register(
                r,
                IntGauge::new(
                    "nuki_exporter_api_smartlocks",
                    "Smart locks in the Nuki account, as the last successful GET /smartlock listed them (those past limits.max_smartlocks included).",
                )
                .expect("valid metric definition"),
            ),
            smartlocks_skipped: gauge_vec(
                r,
                "nuki_exporter_api_smartlocks_skipped",
                "Entries of the last successful GET /smartlock that were not recorded, by reason: malformed (no lock with a readable smartlockId, or a field no value can hold), over_limit (locks past limits.max_smartlocks).",
                &["reason"],
            ),
            poll_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "nuki_exporter_api_poll_duration_seconds",
                        "Time of one GET /smartlock poll: request, parsing and recording every lock.",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                )
                .expect("valid metric definition"),
            ),
            delivery_active: gauge_vec(
                r,
                "nuki_webhook_delivery_active",
                "Nuki's webhookStatus of the Advanced API key: 1 ACTIVE, 0 DEACTIVATED (Nuki stopped delivering webhooks).",
                &["api_key_id"],
            ),
            deliveries: counter_vec(
                r,
                "nuki_webhook_deliveries_total",
                "Webhook deliveries in Nuki's webhook log of the key, each counted once, by result (success, failure). Every replica reads the same log and counts the same deliveries: take max, not sum, across replicas.",
                &["api_key_id", "result"],
            ),
            delivery_responses: counter_vec(
                r,
                "nuki_webhook_delivery_responses_total",
                "Webhook deliveries in Nuki's webhook log, by the HTTP status Nuki got from the endpoint (none: no answer); 401 means the webhook secret is wrong. Every replica reads the same log and counts the same deliveries: take max, not sum, across replicas.",
                &["api_key_id", "code"],
            ),
        };
        for endpoint in [
            Endpoint::Smartlocks,
            Endpoint::AdvancedKey,
            Endpoint::WebhookLogs,
        ] {
            metrics.malformed.with_label_values(&[endpoint.label()]);
        }
        metrics
    }

    /// Counts one request and its time; `status` is `None` when no answer came.
    pub fn request(&self, endpoint: Endpoint, status: Option<u16>, seconds: f64) {
        let mut buffer = itoa::Buffer::new();
        let code = status.map_or("error", |status| buffer.format(status));
        self.requests
            .with_label_values(&[endpoint.label(), code])
            .inc();
        self.request_duration
            .with_label_values(&[endpoint.label()])
            .observe(seconds);
    }

    /// Counts an answer whose body could not be read.
    pub fn malformed(&self, endpoint: Endpoint) {
        self.malformed.with_label_values(&[endpoint.label()]).inc();
    }

    /// Counts a poll whose recording panicked.
    pub fn recording_panicked(&self) {
        self.recording_panics.inc();
    }

    /// Sets `nuki_exporter_api_up` after a poll.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// A successful `GET /smartlock` poll at `now` that listed `locks` locks in `seconds`, and
    /// left out `malformed` unreadable entries and `over_limit` locks past the limit.
    pub fn smartlocks_polled(
        &self,
        locks: usize,
        malformed: usize,
        over_limit: usize,
        seconds: f64,
        now: f64,
    ) {
        self.smartlocks.set(locks as i64);
        for (reason, skipped) in [("malformed", malformed), ("over_limit", over_limit)] {
            self.smartlocks_skipped
                .with_label_values(&[reason])
                .set(skipped as i64);
        }
        self.poll_duration.observe(seconds);
        self.last_success.set(now);
    }

    /// Makes the delivery series of a key exist at 0, so that `increase()` sees the first one.
    pub fn watch_key(&self, key: &str) {
        for result in ["success", "failure"] {
            self.deliveries.with_label_values(&[key, result]);
        }
    }

    pub fn set_delivery_active(&self, key: &str, active: bool) {
        self.delivery_active
            .with_label_values(&[key])
            .set(i64::from(active));
    }

    /// Counts one delivery Nuki recorded, with the status it got (`None`: no answer).
    pub fn delivery(&self, key: &str, succeeded: bool, status: Option<u16>) {
        let result = if succeeded { "success" } else { "failure" };
        self.deliveries.with_label_values(&[key, result]).inc();
        let mut buffer = itoa::Buffer::new();
        let code = status.map_or("none", |status| buffer.format(status));
        self.delivery_responses
            .with_label_values(&[key, code])
            .inc();
    }
}

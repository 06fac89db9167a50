//! What an accepted webhook tells the store: a Web API answer counts its per-lock results, a
//! device webhook becomes lock events (or an activity-log entry), like every other source's.

use crate::lock::{LockEvent, LockStatus, Origin};
use crate::source::webhook::parse::{ApiWebhook, DeviceEvent, DeviceWebhook, Outcome, Webhook};
use crate::store::Metrics;

/// Records an accepted webhook received at `now` (Unix seconds).
pub fn record(metrics: &Metrics, webhook: &Webhook, now: f64) {
    match webhook {
        Webhook::Api(api) => record_api(metrics, api, now),
        Webhook::Device(device) => record_device(metrics, device, now),
        Webhook::Unrecognised => metrics.count_unrecognised_webhook(),
    }
    metrics.webhook_received_at(now);
}

fn record_api(metrics: &Metrics, api: &ApiWebhook, now: f64) {
    let operation = metrics.count_api_webhook(api.operation.as_deref());
    for result in &api.results {
        let failure = match result.outcome {
            Outcome::Failure(code) => Some(code),
            Outcome::Success => None,
        };
        metrics.count_result(result.smartlock_id, operation, failure, now);
    }
}

fn record_device(metrics: &Metrics, device: &DeviceWebhook, now: f64) {
    metrics.count_device_webhook(device.feature.as_str());
    let Some(id) = device.smartlock_id else {
        return;
    };
    match &device.event {
        DeviceEvent::Log(entry) => metrics.count_log_entry(id, entry, now),
        DeviceEvent::Status(status) => {
            metrics.observe(
                id,
                Origin::Webhook,
                &[LockEvent::Seen, LockEvent::Status(*status)],
                now,
            );
        }
        DeviceEvent::Masterdata(data) if data.deleted => {
            metrics.observe(id, Origin::Webhook, &[LockEvent::Removed], now);
        }
        DeviceEvent::Masterdata(data) => {
            let status = LockStatus {
                server_state: data.server_state,
                ..LockStatus::default()
            };
            let events = [
                LockEvent::Seen,
                LockEvent::Status(status),
                LockEvent::Info(data.info()),
            ];
            metrics.observe(id, Origin::Webhook, &events, now);
        }
        DeviceEvent::Seen => metrics.observe(id, Origin::Webhook, &[LockEvent::Seen], now),
    }
}

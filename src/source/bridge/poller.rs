//! Polls each configured Nuki Bridge and keeps this exporter's callback registered with it.
//!
//! Every `poll_interval`: `/list`, whose devices go to the metrics facade as lock events (a
//! device the bridge listed before and no longer lists is removed). Every `info_interval`:
//! `/info` (type, firmware, server link), and with `callback_url` set, `/callback/list` and
//! `/callback/add` only when the URL is absent: the bridge has three slots, and re-adding on
//! every start has made bridges unresponsive. Polling stays on with callbacks, which get lost.
//!
//! A bridge owns the devices its last `/list` listed (its [`Roster`]): its callbacks may change
//! those and no other lock. The work of one cycle is bounded: extra copies of the callback
//! are removed a few per cycle, so that `/list` is polled every cycle whatever the bridge holds.
//!
//! With several replicas, only the one that holds the bridge's Lease polls
//! ([`crate::source::bridge::lease`]); a callback is taken by whichever replica it reaches.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{BridgeConfig, ConfigError};
use crate::lock::{LockEvent, Origin};
use crate::source::bridge::client::{BridgeClient, BridgeError, Endpoint};
use crate::source::bridge::lease::Leadership;
use crate::source::bridge::metrics::{BridgeMetrics, BridgeSeries};
use crate::source::bridge::parse;
use crate::source::roster::Roster;
use crate::store::Metrics;
use crate::util::unix_now;

/// Extra copies of the callback removed per poll cycle: all that a bridge's three slots can
/// hold, and no more, so that a bridge listing thousands never holds `/list` polling up.
const STALE_REMOVALS_PER_CYCLE: usize = 2;

/// A configured bridge, as its callbacks see it: its series, and the locks it may call back
/// about.
#[derive(Clone, Debug)]
pub struct CallbackSource {
    pub series: BridgeSeries,
    pub roster: Arc<Roster>,
}

/// The bridges allowed to POST callbacks, by the addresses their hosts resolve to: the only
/// guard of `POST /bridge/callback`, since a bridge cannot sign its callbacks.
#[derive(Debug)]
pub struct CallbackSenders {
    /// Whether any bridge is configured: without one, the callback route does not exist.
    configured: bool,
    senders: RwLock<Vec<(IpAddr, CallbackSource)>>,
}

impl CallbackSenders {
    /// The guard of `bridges` configured bridges, none of them resolved yet.
    pub fn new(bridges: usize) -> Self {
        Self {
            configured: bridges > 0,
            senders: RwLock::default(),
        }
    }

    /// Whether `POST /bridge/callback` exists: some bridge is configured.
    pub fn accepts_callbacks(&self) -> bool {
        self.configured
    }

    /// The bridge at `peer`, if it is a configured bridge's address.
    pub fn sender(&self, peer: IpAddr) -> Option<CallbackSource> {
        let peer = peer.to_canonical();
        let senders = self.senders.read().unwrap_or_else(PoisonError::into_inner);
        senders
            .iter()
            .find(|(address, _)| *address == peer)
            .map(|(_, source)| source.clone())
    }

    /// The addresses of one bridge.
    fn addresses_of(&self, series: &BridgeSeries) -> Vec<IpAddr> {
        let senders = self.senders.read().unwrap_or_else(PoisonError::into_inner);
        senders
            .iter()
            .filter(|(_, known)| known.series.name() == series.name())
            .map(|(address, _)| *address)
            .collect()
    }

    /// Replaces the addresses of one bridge.
    fn set(&self, source: &CallbackSource, addresses: &[IpAddr]) {
        let mut senders = self.senders.write().unwrap_or_else(PoisonError::into_inner);
        senders.retain(|(_, known)| known.series.name() != source.series.name());
        senders.extend(addresses.iter().map(|a| (a.to_canonical(), source.clone())));
    }
}

/// One configured bridge, ready to poll.
pub struct BridgePoller {
    client: BridgeClient,
    series: BridgeSeries,
    metrics: Arc<Metrics>,
    senders: Arc<CallbackSenders>,
    /// `host:port` of the bridge's URL, resolved for [`CallbackSenders`].
    authority: String,
    poll_interval: Duration,
    info_interval: Duration,
    callback_url: Option<String>,
    /// The devices of the last successful `/list`: the locks this bridge owns.
    roster: Arc<Roster>,
    /// Ids of extra copies of the callback found by the last `/callback/list`, still to remove.
    stale_callbacks: Vec<u64>,
    /// The last `/list` poll failed: the next failure is logged at debug level only.
    failing: bool,
}

impl BridgePoller {
    /// Reads the bridge's token file and registers its series.
    pub fn new(
        config: &BridgeConfig,
        metrics: Arc<Metrics>,
        bridge_metrics: &BridgeMetrics,
        senders: Arc<CallbackSenders>,
    ) -> Result<Self, ConfigError> {
        let token = config.read_token()?;
        let series = bridge_metrics.bridge(&config.name);
        let url: hyper::Uri = config.url.parse().map_err(|e| ConfigError::Bridge {
            bridge: config.name.clone(),
            reason: format!("url: {e}"),
        })?;
        let host = url.host().unwrap_or_default();
        let authority = format!(
            "{}:{}",
            host.trim_start_matches('[').trim_end_matches(']'),
            url.port_u16().unwrap_or(80)
        );
        Ok(Self {
            client: BridgeClient::new(config, token, series.clone()),
            series,
            metrics,
            senders,
            authority,
            poll_interval: config.poll_interval,
            info_interval: config.info_interval,
            callback_url: config.callback_url.clone(),
            roster: Arc::default(),
            stale_callbacks: Vec::new(),
            failing: false,
        })
    }

    /// Resolves the bridge's host to the addresses its callbacks come from; on failure, keeps
    /// the addresses it had and returns false.
    pub async fn resolve_sender(&self) -> bool {
        match tokio::net::lookup_host(self.authority.as_str()).await {
            Ok(addresses) => {
                let addresses: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
                let source = CallbackSource {
                    series: self.series.clone(),
                    roster: Arc::clone(&self.roster),
                };
                self.senders.set(&source, &addresses);
                true
            }
            Err(error) => {
                tracing::warn!(bridge = %self.series.name(), %error, "cannot resolve the bridge's host: its callbacks are refused until it resolves");
                false
            }
        }
    }

    /// Polls while `leadership` says this replica is the bridge's poller, until `stop` turns
    /// true; a request in flight is abandoned when either ends. While another replica polls,
    /// the bridge is left alone, but its host is still resolved every `info_interval`: its
    /// callbacks may reach any replica.
    pub async fn run(mut self, mut leadership: Leadership, mut stop: watch::Receiver<bool>) {
        // Resolved at start-up; until it resolves (a bridge host not yet in DNS), every cycle.
        let mut resolved = !self.senders.addresses_of(&self.series).is_empty();
        loop {
            let leading = *leadership.borrow_and_update();
            self.series.leading(leading);
            if !leading {
                tokio::select! {
                    changed = leadership.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(self.info_interval) => {
                        self.resolve_sender().await;
                    }
                    _ = stop.changed() => return,
                }
                continue;
            }
            let lost = async {
                if leadership.wait_for(|leading| !*leading).await.is_err() {
                    // Without [bridge_lease] the value never changes: this replica polls for good.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = self.poll(&mut resolved) => {}
                () = lost => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Polls `/list` every `poll_interval`, and `/info` and the callback registration every
    /// `info_interval`, starting with both; never returns.
    async fn poll(&mut self, resolved: &mut bool) {
        let mut next_info = Instant::now();
        // A failed /info is retried from the next poll on, each time twice as late, up to
        // info_interval: a bridge that comes up after the exporter has its /info metrics (and
        // NukiBridgeCloudDisconnected its input) within a poll or two, not after info_interval.
        let info_retries = ExponentialBuilder::new()
            .with_min_delay(self.poll_interval)
            .with_max_delay(self.info_interval.max(self.poll_interval))
            .with_jitter()
            .without_max_times();
        let mut info_backoff = info_retries.build();
        loop {
            self.poll_list().await;
            if Instant::now() >= next_info {
                let info_read = self.poll_info().await;
                if let Some(url) = self.callback_url.clone() {
                    self.keep_registered(&url).await;
                }
                *resolved = false;
                let wait = if info_read {
                    info_backoff = info_retries.build();
                    self.info_interval
                } else {
                    info_backoff.next().unwrap_or(self.info_interval)
                };
                next_info = Instant::now() + wait;
            }
            self.remove_stale_callbacks().await;
            if !*resolved {
                *resolved = self.resolve_sender().await;
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    async fn poll_list(&mut self) {
        let reports = self
            .client
            .get(Endpoint::List, &[])
            .await
            .map_err(|e| e.to_string())
            .and_then(|body| parse::parse_list(&body).map_err(|e| e.to_string()));
        let now = unix_now();
        let reports = match reports {
            Ok(reports) => reports,
            Err(error) => {
                if self.failing {
                    tracing::debug!(bridge = %self.series.name(), %error, "/list poll failed again");
                } else {
                    tracing::warn!(bridge = %self.series.name(), %error, "/list poll failed; keeping the last values");
                }
                self.failing = true;
                self.series.polled(false, now);
                return;
            }
        };
        if std::mem::take(&mut self.failing) {
            tracing::info!(bridge = %self.series.name(), "/list poll succeeded again");
        }
        let listed: BTreeSet<u64> = reports.iter().map(|r| r.smartlock_id).collect();
        for report in &reports {
            self.metrics
                .observe(report.smartlock_id, Origin::BridgePoll, &report.events, now);
        }
        self.series.listed(&listed);
        // A device unpaired from the bridge: its series go, and its callbacks are refused.
        for gone in self.roster.replace(listed.into_iter().collect()) {
            self.metrics
                .observe(gone, Origin::BridgePoll, &[LockEvent::Removed], now);
        }
        self.series.polled(true, now);
    }

    /// Reads `/info` into the bridge's series; whether that worked.
    async fn poll_info(&self) -> bool {
        match self.client.get(Endpoint::Info, &[]).await {
            Ok(body) => match parse::parse_info(&body) {
                Ok(info) => {
                    self.series.info(&info);
                    true
                }
                Err(error) => {
                    tracing::warn!(bridge = %self.series.name(), %error, "/info answer unreadable");
                    false
                }
            },
            Err(error) => {
                tracing::warn!(bridge = %self.series.name(), %error, "/info failed; retrying with backoff");
                false
            }
        }
    }

    /// Registers `url` with the bridge unless it is there already; notes extra copies of it
    /// for [`Self::remove_stale_callbacks`], so that it comes to hold exactly one slot.
    async fn keep_registered(&mut self, url: &str) {
        match self.registration(url).await {
            Ok(registered) => self.series.callback_registered(registered),
            Err(error) => {
                tracing::warn!(bridge = %self.series.name(), %error, "checking the callback registration failed");
            }
        }
    }

    async fn registration(&mut self, url: &str) -> Result<bool, String> {
        let body = self
            .client
            .get(Endpoint::CallbackList, &[])
            .await
            .map_err(|e| e.to_string())?;
        let ours: Vec<u64> = parse::parse_callbacks(&body)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|callback| callback.url == url)
            .map(|callback| callback.id)
            .collect();
        if let Some((_, extra)) = ours.split_first() {
            if !extra.is_empty() {
                tracing::warn!(bridge = %self.series.name(), copies = extra.len(), per_cycle = STALE_REMOVALS_PER_CYCLE, "the bridge holds extra copies of the callback; removing them a few per poll cycle");
            }
            self.stale_callbacks = extra.to_vec();
            self.series.stale_callbacks(extra.len());
            return Ok(true);
        }
        self.stale_callbacks.clear();
        self.series.stale_callbacks(0);
        match self.outcome(Endpoint::CallbackAdd, &[("url", url)]).await? {
            Ok(()) => {
                tracing::info!(bridge = %self.series.name(), "callback registered with the bridge");
                Ok(true)
            }
            Err(refusal) => {
                tracing::warn!(bridge = %self.series.name(), reason = %refusal, "the bridge refused the callback (it holds at most three)");
                Ok(false)
            }
        }
    }

    /// Removes at most [`STALE_REMOVALS_PER_CYCLE`] extra copies of the callback. A copy the
    /// bridge refuses to remove is left for the next `/callback/list` to find again; a request
    /// without an answer ends this cycle's removals.
    async fn remove_stale_callbacks(&mut self) {
        if self.stale_callbacks.is_empty() {
            return;
        }
        for _ in 0..STALE_REMOVALS_PER_CYCLE {
            let Some(id) = self.stale_callbacks.pop() else {
                break;
            };
            let param = id.to_string();
            match self
                .outcome(Endpoint::CallbackRemove, &[("id", &param)])
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(refusal)) => {
                    tracing::debug!(bridge = %self.series.name(), reason = %refusal, "the bridge kept an extra copy of the callback");
                }
                Err(error) => {
                    tracing::debug!(bridge = %self.series.name(), %error, "removing an extra copy of the callback failed");
                    self.stale_callbacks.push(id);
                    break;
                }
            }
        }
        self.series.stale_callbacks(self.stale_callbacks.len());
        if self.stale_callbacks.is_empty() {
            tracing::info!(bridge = %self.series.name(), "the extra copies of the callback are removed");
        }
    }

    /// Calls a callback endpoint: `Err` when no answer came, `Ok(Err)` with the bridge's
    /// message when it refused.
    async fn outcome(
        &self,
        endpoint: Endpoint,
        params: &[(&str, &str)],
    ) -> Result<Result<(), String>, String> {
        match self.client.get(endpoint, params).await {
            Ok(body) => parse::parse_outcome(&body).map_err(|e| e.to_string()),
            // The bridge says "URL invalid or too long" by status alone.
            Err(BridgeError::Status(hyper::StatusCode::BAD_REQUEST)) => {
                Ok(Err("400: callback URL invalid or too long".into()))
            }
            Err(error) => Err(error.to_string()),
        }
    }
}

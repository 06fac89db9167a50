//! Which replica polls a bridge: the holder of the bridge's Kubernetes Lease
//! (coordination.k8s.io/v1), one Lease per bridge, so that each bridge is asked by exactly one
//! process at a time (it serves one request at a time and has three callback slots).
//!
//! The Lease protocol is kubert's `LeaseManager` (the Linkerd maintainers' Kubernetes runtime
//! helpers on kube-rs): every write it makes (claim, renewal, release) carries the
//! `resourceVersion` it last read, so a replica acting on a stale view gets 409 Conflict instead
//! of becoming a second holder. Of the crates built for this, it is the one whose protocol is
//! exclusive: kube-lease-manager (which follows kube's releases more closely; kubert is on
//! kube-client 1.1) takes an expired Lease over by clearing its holder without that
//! precondition, which lets two replicas both hold it when three contend, and
//! kube-leader-election merge-patches the holder without any precondition.
//!
//! One Lease per bridge rather than one for all: bridges spread over the replicas, and a replica
//! whose bridge hangs does not hold up the others.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_client::api::{Api, PostParams};
use kubert::lease::{Claim, ClaimParams, LeaseManager};
use tokio::sync::watch;

use crate::config::{BridgeLeaseConfig, ConfigError};

/// Whether this replica may poll a bridge now; it turns false before the Lease expires.
pub type Leadership = watch::Receiver<bool>;

/// The field manager of this exporter's Lease writes.
const FIELD_MANAGER: &str = "nuki-exporter";

/// The Kubernetes API, for the Leases of every configured bridge.
pub struct LeaseClient {
    api: Api<Lease>,
    config: BridgeLeaseConfig,
}

impl LeaseClient {
    /// Builds the client: `api_url`, `ca_file` and `token_file` when set, the pod's service
    /// account otherwise. Nothing is asked of the API yet.
    pub fn new(config: &BridgeLeaseConfig) -> Result<Self, ConfigError> {
        let key_error = |key, reason: String| ConfigError::Key { key, reason };
        let mut kube = match &config.api_url {
            Some(url) => kube_client::Config::new(
                url.parse()
                    .map_err(|e| key_error("bridge_lease.api_url", format!("{e}")))?,
            ),
            None => kube_client::Config::incluster().map_err(|e| {
                key_error(
                    "bridge_lease.api_url",
                    format!("unset, and this is not a Kubernetes pod: {e}"),
                )
            })?,
        };
        check_files(config)?;
        if let Some(path) = &config.ca_file {
            kube.root_cert = Some(read_pem_certificates(path)?);
        }
        if let Some(path) = &config.token_file {
            // Read once, without the trailing newline a file usually has (kube-client would
            // send it): an explicit token is for a cluster reached from outside; in a pod the
            // service account's token is re-read by kube-client as it rotates.
            kube.auth_info.token = Some(read_token(path)?.into());
            kube.auth_info.token_file = None;
        }
        kube.connect_timeout = Some(config.timeout);
        kube.read_timeout = Some(config.timeout);
        kube.write_timeout = Some(config.timeout);
        let client = kube_client::Client::try_from(kube)
            .map_err(|e| key_error("bridge_lease", e.to_string()))?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config: config.clone(),
        })
    }

    /// The Lease of the bridge called `bridge`.
    pub fn lease(&self, bridge: &str) -> BridgeLease {
        BridgeLease {
            api: self.api.clone(),
            name: self.config.lease_name(bridge),
            bridge: bridge.to_owned(),
            identity: self.config.identity.clone(),
            params: ClaimParams {
                lease_duration: self.config.duration,
                // Renewed once renew_period has passed since the last renewal.
                renew_grace_period: self.config.duration - self.config.renew_period,
            },
            renew_period: self.config.renew_period,
        }
    }
}

/// Reads the files `[bridge_lease]` names, as start-up and `--check-config` do.
pub fn check_files(config: &BridgeLeaseConfig) -> Result<(), ConfigError> {
    if let Some(path) = &config.ca_file {
        read_pem_certificates(path)?;
    }
    if let Some(path) = &config.token_file {
        read_token(path)?;
    }
    Ok(())
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let unreadable = |reason: String| ConfigError::Key {
        key: "bridge_lease.token_file",
        reason: format!("cannot read {}: {reason}", path.display()),
    };
    let token = crate::util::secret_file::read(path).map_err(|e| unreadable(e.to_string()))?;
    String::from_utf8(token).map_err(|_| unreadable("the token is not UTF-8 text".into()))
}

fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let unreadable = |reason: String| ConfigError::Key {
        key: "bridge_lease.ca_file",
        reason: format!("cannot read {}: {reason}", path.display()),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certificates.is_empty() {
        return Err(unreadable("no PEM certificate in the file".into()));
    }
    Ok(certificates)
}

/// The monotonic instant of a wall-clock time, `None` when it has passed.
fn instant_of(time: SystemTime) -> Option<Instant> {
    let left = time.duration_since(SystemTime::now()).ok()?;
    Some(Instant::now() + left)
}

/// Sleeps until `until`; forever when there is none.
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// One bridge's Lease, as seen by this replica.
pub struct BridgeLease {
    api: Api<Lease>,
    name: String,
    bridge: String,
    identity: String,
    params: ClaimParams,
    renew_period: Duration,
}

impl BridgeLease {
    /// Claims and renews the Lease until `stop` turns true, publishing on `leading` whether
    /// this replica may poll. When the API fails, the last claim stands: a holder keeps polling
    /// until `renew_period` before its Lease expires, the others keep waiting. On stop, a held
    /// Lease is vacated so that another replica takes over at once.
    pub async fn run(self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut manager: Option<LeaseManager> = None;
        let mut claim: Option<Arc<Claim>> = None;
        let mut failing = false;
        loop {
            let lead_end = self.lead_end(claim.as_deref());
            self.publish(&leading, lead_end.is_some(), claim.as_deref());
            // Bounded as a whole (each request is bounded by bridge_lease.timeout); the lead
            // ends on time even while an attempt to renew it hangs.
            let attempt = tokio::time::timeout(self.renew_period, self.claim(&mut manager));
            tokio::pin!(attempt);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut attempt => break outcome,
                    () = sleep_until(lead_end), if *leading.borrow() => {
                        self.publish(&leading, false, claim.as_deref());
                    }
                }
            };
            match outcome {
                Ok(Ok(current)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(bridge = %self.bridge, lease = %self.name, "the Kubernetes API answers again");
                    }
                    claim = Some(current);
                }
                Ok(Err(error)) => self.failed(&mut failing, &error),
                Err(_) => self.failed(&mut failing, &"no answer within bridge_lease.renew_period"),
            }
            let lead_end = self.lead_end(claim.as_deref());
            self.publish(&leading, lead_end.is_some(), claim.as_deref());
            // Wake at the end of our lead, or when another's claim expires, to act on time.
            let until = lead_end.or_else(|| {
                claim
                    .as_ref()
                    .filter(|c| c.holder != self.identity)
                    .and_then(|c| instant_of(SystemTime::from(c.expiry)))
            });
            let next = Instant::now() + self.renew_period;
            let wake = until.map_or(next, |until| until.min(next));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => break,
            }
        }
        leading.send_replace(false);
        if let Some(manager) = manager {
            match tokio::time::timeout(self.renew_period, manager.vacate(&self.identity)).await {
                Ok(Ok(true)) => {
                    tracing::info!(bridge = %self.bridge, lease = %self.name, "Lease vacated");
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(bridge = %self.bridge, lease = %self.name, %error, "cannot vacate the Lease: another replica takes over when it expires");
                }
                Err(_) => {
                    tracing::warn!(bridge = %self.bridge, lease = %self.name, "no answer when vacating the Lease: another replica takes over when it expires");
                }
            }
        }
    }

    /// When this replica must stop polling: `renew_period` before its claim expires, so that
    /// its last request is over before another replica may start; `None` when it must not poll.
    fn lead_end(&self, claim: Option<&Claim>) -> Option<Instant> {
        let claim = claim.filter(|c| c.holder == self.identity)?;
        instant_of(SystemTime::from(claim.expiry).checked_sub(self.renew_period)?)
    }

    fn publish(&self, leading: &watch::Sender<bool>, lead: bool, claim: Option<&Claim>) {
        leading.send_if_modified(|was| {
            if *was == lead {
                return false;
            }
            if lead {
                tracing::info!(bridge = %self.bridge, lease = %self.name, "holding the bridge's Lease: polling it");
            } else {
                let holder = claim
                    .map(|c| c.holder.as_str())
                    .filter(|holder| *holder != self.identity)
                    .unwrap_or("nobody");
                tracing::info!(bridge = %self.bridge, lease = %self.name, %holder, "not holding the bridge's Lease: leaving the bridge alone");
            }
            *was = lead;
            true
        });
    }

    fn failed(&self, failing: &mut bool, error: &dyn std::fmt::Display) {
        if std::mem::replace(failing, true) {
            tracing::debug!(bridge = %self.bridge, lease = %self.name, %error, "the Kubernetes API failed again");
        } else {
            tracing::warn!(bridge = %self.bridge, lease = %self.name, %error, "the Kubernetes API failed: a holder polls until its Lease runs out, the others wait");
        }
    }

    /// The current claim, claimed or renewed for this replica when it is free or ours.
    async fn claim(
        &self,
        manager: &mut Option<LeaseManager>,
    ) -> Result<Arc<Claim>, kubert::lease::Error> {
        if manager.is_none() {
            *manager = Some(self.init().await?);
        }
        let manager = manager.as_ref().expect("set above");
        // Another's claim is read anew each time, so that a vacated Lease is taken at once
        // rather than when the claim last seen would have expired.
        if manager
            .claimed()
            .await
            .is_none_or(|claim| claim.holder != self.identity)
        {
            manager.sync().await?;
        }
        manager.ensure_claimed(&self.identity, &self.params).await
    }

    /// Reads the Lease, creating it (unheld) first when it does not exist.
    async fn init(&self) -> Result<LeaseManager, kubert::lease::Error> {
        let init = || async {
            LeaseManager::init(self.api.clone(), &self.name)
                .await
                .map(|manager| manager.with_field_manager(FIELD_MANAGER))
        };
        match init().await {
            Err(kubert::lease::Error::Api(kube_client::Error::Api(status)))
                if status.code == 404 =>
            {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec::default()),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        tracing::info!(bridge = %self.bridge, lease = %self.name, "Lease created");
                    }
                    // Another replica created it first.
                    Err(kube_client::Error::Api(status)) if status.code == 409 => {}
                    Err(error) => return Err(error.into()),
                }
                init().await
            }
            other => other,
        }
    }
}

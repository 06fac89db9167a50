//! Listeners and lifecycle: binds the webhook and metrics listeners (one when their addresses
//! are equal), serves connections, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::{App, Role};
use crate::metrics::{ConnectionLimit, Limits, Metrics};
use crate::nuki_api::{ApiToken, NukiApi};
use crate::poller::Poller;
use crate::request_progress::RequestProgress;
use crate::signature::Verifier;
use crate::state::{self, StateWriter};
use crate::web::MetricsGuard;
use tokio_rustls::TlsAcceptor;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start a background thread: {0}")]
    Encoder(std::io::Error),
    #[error("cannot listen on {address} ({key}): {source}")]
    Bind {
        key: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A running exporter.
pub struct Exporter {
    webhook_addr: SocketAddr,
    metrics_addr: SocketAddr,
    app: Arc<App>,
    /// Each listener's stop signal and accept loop, the webhook listener first.
    acceptors: Vec<(watch::Sender<bool>, JoinHandle<()>)>,
    /// The Web API poller's stop signal and task.
    poller: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    /// The state file writer's: stopped last, it writes once more.
    state_writer: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    shutdown_delay: Duration,
}

impl Exporter {
    /// Reads the secrets, binds the listeners and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let (verifier, guard) = check(config)?;
        if !verifier.is_enabled() {
            tracing::warn!(
                "no webhook secret configured (webhook.secrets, webhook.secret_files): unsigned webhooks are accepted"
            );
        }
        let metrics = Arc::new(Metrics::new(Limits {
            max_smartlocks: config.limits.max_smartlocks,
            max_operations: config.limits.max_operations,
        }));
        // Restored before the listeners open: the first scrape already has the last-known state.
        let restored = match &config.state.file {
            Some(path) => state::restore(path, &metrics),
            None => Vec::new(),
        };
        let poller = match &config.api.token_file {
            Some(token_file) => {
                let api = NukiApi::new(&config.api, token_file, Some(metrics.web_api().clone()))
                    .map_err(crate::config::ConfigError::from)?;
                let poller = Poller::new(
                    api,
                    Arc::clone(&metrics),
                    config.api.poll_interval,
                    config.api.advanced_key_id,
                    restored,
                )
                .map_err(StartError::Encoder)?;
                tracing::info!(url = %config.api.url, interval = %humantime::format_duration(config.api.poll_interval), "polling the Nuki Web API");
                Some(spawn_stoppable(|stop| poller.run(stop)))
            }
            None => None,
        };
        let state_writer = config.state.file.as_ref().map(|path| {
            let writer = StateWriter {
                path: path.clone(),
                metrics: Arc::clone(&metrics),
                interval: config.state.write_interval,
            };
            spawn_stoppable(|stop| writer.run(stop))
        });
        let app = Arc::new(
            App::new(
                metrics,
                verifier,
                config.webhook.path.clone(),
                config.limits.max_body_bytes,
                config.limits.request_timeout,
                guard,
            )
            .map_err(StartError::Encoder)?,
        );

        let bind = |key, address| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind {
                    key,
                    address,
                    source,
                })
        };
        let shared = config.webhook.listen == config.metrics.listen;
        let mut listeners = Vec::new();
        let webhook = bind("webhook.listen", config.webhook.listen).await?;
        let webhook_addr = webhook.local_addr().expect("bound socket has an address");
        listeners.push((
            webhook,
            Role {
                webhook: true,
                metrics: shared,
            },
        ));
        let metrics_addr = if shared {
            webhook_addr
        } else {
            let metrics = bind("metrics.listen", config.metrics.listen).await?;
            let address = metrics.local_addr().expect("bound socket has an address");
            listeners.push((
                metrics,
                Role {
                    webhook: false,
                    metrics: true,
                },
            ));
            address
        };

        let acceptors = listeners
            .into_iter()
            .map(|(listener, role)| {
                tracing::info!(address = %listener.local_addr().expect("bound"), listener = role.name(), "listening");
                let acceptor = Acceptor {
                    tls: app.guard.tls().filter(|_| role.metrics).cloned(),
                    listener,
                    role,
                    app: Arc::clone(&app),
                    slots: Arc::new(Semaphore::new(config.limits.max_connections)),
                    header_read_timeout: config.limits.header_read_timeout,
                    grace_period: config.server.shutdown_grace_period,
                };
                spawn_stoppable(|stopped| acceptor.run(stopped))
            })
            .collect();
        Ok(Self {
            webhook_addr,
            metrics_addr,
            app,
            acceptors,
            poller,
            state_writer,
            shutdown_delay: config.server.shutdown_delay,
        })
    }

    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Readiness turns 503; after `server.shutdown_delay` the webhook listener stops accepting
    /// and its in-flight requests get `server.shutdown_grace_period` to finish; then, after the
    /// same delay, the metrics listener stops, so that a last scrape sees every accepted webhook.
    /// Idle keep-alive connections are closed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.app.set_not_ready();
        stop(self.poller).await;
        for (stop, acceptor) in self.acceptors {
            tokio::time::sleep(self.shutdown_delay).await;
            let _ = stop.send(true);
            let _ = acceptor.await;
        }
        stop(self.state_writer).await;
        tracing::info!("stopped");
    }
}

/// Spawns a task that ends when its stop signal is sent.
fn spawn_stoppable<F: Future<Output = ()> + Send + 'static>(
    task: impl FnOnce(watch::Receiver<bool>) -> F,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    (stop, tokio::spawn(task(stopped)))
}

/// Stops a task of [`spawn_stoppable`] and waits for it to end.
async fn stop(task: Option<(watch::Sender<bool>, JoinHandle<()>)>) {
    if let Some((stop, task)) = task {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

/// Accepts and serves the connections of one listener.
struct Acceptor {
    listener: TcpListener,
    /// Set when the listener serves HTTPS.
    tls: Option<TlsAcceptor>,
    role: Role,
    app: Arc<App>,
    /// One permit per open connection: `limits.max_connections`.
    slots: Arc<Semaphore>,
    header_read_timeout: Duration,
    grace_period: Duration,
}

impl Acceptor {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        // HTTP/1.1 only: Nuki and Prometheus speak it, and its header-read timeout also bounds
        // a connection that never sends a byte.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let metrics = Arc::clone(&self.app.metrics);
        let open_connections = metrics.open_connections(self.role.name());
        loop {
            // Wait for a free slot before accepting: at the limit, clients queue in the kernel.
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics.connection_limit_hit(ConnectionLimit::MaxConnections);
                    tokio::select! {
                        _ = stopped.changed() => break,
                        slot = Arc::clone(&self.slots).acquire_owned() => slot.expect("semaphore never closed"),
                    }
                }
            };
            let stream = tokio::select! {
                biased;
                _ = stopped.changed() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (app, role) = (Arc::clone(&self.app), self.role);
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, std::convert::Infallible>(app.handle(role, request).await) }
            });
            let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), self.tls.clone());
            let (metrics, open_connections) = (Arc::clone(&metrics), open_connections.clone());
            let handshake_timeout = self.header_read_timeout;
            open_connections.inc();
            tokio::spawn(async move {
                // The header-read timeout also ends idle keep-alive connections; only a client cut
                // off while sending (a TLS handshake or a request) tripped the limit.
                let (stream, started) = RequestProgress::new(stream);
                let (served, request_started) = match tls {
                    None => {
                        let served = watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await;
                        (served, started)
                    }
                    Some(tls) => {
                        match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let (stream, request_started) = RequestProgress::new(stream);
                                let served = watcher
                                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                                    .await;
                                (served, request_started)
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                (Ok(()), started)
                            }
                            Err(_) => {
                                if started.get() {
                                    metrics
                                        .connection_limit_hit(ConnectionLimit::HeaderReadTimeout);
                                }
                                (Ok(()), started)
                            }
                        }
                    }
                };
                if let Err(error) = served {
                    if error.is_timeout() && request_started.get() {
                        metrics.connection_limit_hit(ConnectionLimit::HeaderReadTimeout);
                    }
                    tracing::debug!(%error, "connection ended with an error");
                }
                open_connections.dec();
                drop(slot);
            });
        }
        drop(self.listener);
        if tokio::time::timeout(self.grace_period, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace_period = ?self.grace_period, "requests still in flight after the grace period were dropped");
        }
    }
}

/// Reads every file the configuration names (webhook secrets, the web configuration, TLS
/// certificate and key, bearer tokens, the Web API token), as start-up and `--check-config` do.
pub fn check(config: &Config) -> Result<(Verifier, MetricsGuard), crate::config::ConfigError> {
    let secrets = config.read_secrets()?;
    let guard = MetricsGuard::load(&config.metrics)?;
    if let Some(token_file) = &config.api.token_file {
        ApiToken::read(token_file)?;
    }
    Ok((Verifier::new(&secrets), guard))
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: call it before start-up, so that a signal sent as soon as the
/// listeners answer is not taken by the default action (exit 143 without a shutdown).
pub fn termination_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    }
}

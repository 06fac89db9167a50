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
use crate::metrics::{ConnectionLimit, Metrics, RejectReason};
use crate::signature::Verifier;
use crate::web::MetricsGuard;
use crate::write_deadline::{self, DeadlineIo, WriteDeadline};
use tokio_rustls::TlsAcceptor;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the metrics encoder thread: {0}")]
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
        let metrics = Arc::new(Metrics::new(config.metric_limits()));
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
                let (stop, stopped) = watch::channel(false);
                (stop, tokio::spawn(acceptor.run(stopped)))
            })
            .collect();
        Ok(Self {
            webhook_addr,
            metrics_addr,
            app,
            acceptors,
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
        for (stop, acceptor) in self.acceptors {
            tokio::time::sleep(self.shutdown_delay).await;
            let _ = stop.send(true);
            let _ = acceptor.await;
        }
        tracing::info!("stopped");
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
            let deadline = Arc::new(WriteDeadline::default());
            let write_deadline = Arc::clone(&deadline);
            let service = service_fn(move |request| {
                let (app, deadline) = (Arc::clone(&app), Arc::clone(&write_deadline));
                async move {
                    let response = Arc::clone(&app).handle(role, request).await;
                    deadline.arm(app.request_timeout);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), self.tls.clone());
            let (metrics, open_connections) = (Arc::clone(&metrics), open_connections.clone());
            let handshake_timeout = self.header_read_timeout;
            open_connections.inc();
            tokio::spawn(async move {
                let served = match tls {
                    None => {
                        let io = TokioIo::new(DeadlineIo::new(stream, deadline));
                        watcher.watch(builder.serve_connection(io, service)).await
                    }
                    Some(tls) => {
                        match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let io = TokioIo::new(DeadlineIo::new(stream, deadline));
                                watcher.watch(builder.serve_connection(io, service)).await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                metrics.connection_limit_hit(ConnectionLimit::HeaderReadTimeout);
                                Ok(())
                            }
                        }
                    }
                };
                if let Err(error) = served {
                    if error.is_timeout() {
                        metrics.connection_limit_hit(ConnectionLimit::HeaderReadTimeout);
                    }
                    if let Some(reason) = refusal(&error) {
                        metrics.reject(reason);
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

/// Why hyper refused a request before any handler ran (it answered 400, 414 or 431 itself, or
/// closed the connection), or why a response could not be written; `None` for errors that
/// refuse nothing (the client closed an idle connection, the header-read timeout).
fn refusal(error: &hyper::Error) -> Option<RejectReason> {
    if error.is_parse_too_large() {
        Some(RejectReason::TooLarge)
    } else if error.is_parse() || error.is_parse_status() {
        Some(RejectReason::Malformed)
    } else if write_deadline::is_write_timeout(error) {
        Some(RejectReason::Timeout)
    } else {
        None
    }
}

/// Reads every file the configuration names (webhook secrets, the web configuration, TLS
/// certificate and key, bearer tokens), as start-up and `--check-config` do.
pub fn check(config: &Config) -> Result<(Verifier, MetricsGuard), crate::config::ConfigError> {
    let secrets = config.read_secrets()?;
    let guard = MetricsGuard::load(&config.metrics)?;
    Ok((Verifier::new(&secrets), guard))
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}

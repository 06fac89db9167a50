//! Listeners and lifecycle: binds the webhook and metrics listeners (one when their addresses
//! are equal), serves connections, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::connection_deadline::{ConnectionDeadline, DeadlineIo, Ended};
use crate::http::relay::ClientConnection;
use crate::http::request_progress::RequestProgress;
use crate::http::{App, Role};
use crate::runtime::loader::{self, Loaded};
use crate::runtime::reload::Reloader;
use crate::source::bridge::lease::LeaseClient;
use crate::source::bridge::metrics::BridgeMetrics;
use crate::source::bridge::poller::{BridgePoller, CallbackSenders};
use crate::source::state_file::{self, StateWriter};
use crate::source::web_api::client::NukiApi;
use crate::source::web_api::metrics::WebApiMetrics;
use crate::source::web_api::poller::WebApiPoller;
use crate::store::lock_store::Limits;
use crate::store::{ConnectionLimit, Metrics, RejectReason};
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

/// A task and the signal that stops it.
type Stoppable = (watch::Sender<bool>, JoinHandle<()>);

/// A running exporter.
pub struct Exporter {
    webhook_addr: SocketAddr,
    metrics_addr: SocketAddr,
    app: Arc<App>,
    /// Each listener's stop signal and accept loop, the webhook listener first.
    acceptors: Vec<Stoppable>,
    /// Each bridge poller's stop signal and task.
    bridges: Vec<Stoppable>,
    /// With `[bridge_lease]`, each bridge's Lease keeper: stopped after the pollers, it
    /// vacates a held Lease.
    leases: Vec<Stoppable>,
    /// The Web API poller's stop signal and task.
    poller: Option<Stoppable>,
    /// The state file writer's: stopped last, it writes once more.
    state_writer: Option<Stoppable>,
    shutdown_delay: Duration,
}

impl Exporter {
    /// Reads the secrets, binds the listeners and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let Loaded {
            verifier,
            guard,
            relay,
        } = loader::load(config)?;
        refuse_relay_to_self(config).await?;
        if !verifier.current().is_enabled() {
            tracing::warn!(
                "no webhook secret configured (webhook.secrets, webhook.secret_files): unsigned webhooks are accepted"
            );
        }
        let metrics = Arc::new(Metrics::new(Limits::from(&config.limits)));
        let senders = Arc::new(CallbackSenders::new(config.bridges.len()));
        let pollers = bridge_pollers(config, &metrics, &senders)?;
        // Restored before the listeners open: the first scrape already has the last-known state.
        let restored = match &config.state.file {
            Some(path) => state_file::restore(path, &metrics, config.limits.max_smartlocks),
            None => Vec::new(),
        };
        let poller = start_web_api_poller(config, &metrics, restored)?;
        let state_writer = config.state.file.as_ref().map(|path| {
            let writer = StateWriter::new(
                path.clone(),
                Arc::clone(&metrics),
                config.state.write_interval,
            );
            spawn_stoppable(|stop| writer.run(stop))
        });
        let mut reloader = Reloader::new(metrics.registry());
        reloader.add(Arc::clone(&verifier));
        reloader.add(Arc::clone(&guard));
        if let Some(relay) = &relay {
            relay.register(metrics.registry());
            tracing::info!(
                upstream = %config.forward.url.as_deref().unwrap_or_default(),
                "relaying webhooks to the application"
            );
        }
        let app = Arc::new(
            App::new(
                metrics,
                verifier,
                config.webhook.path.clone(),
                config.limits.max_body_bytes,
                config.limits.request_timeout,
                guard,
                senders,
            )
            .map_err(StartError::Encoder)?
            .with_relay(relay),
        );
        let bound = bind_listeners(config).await?;
        // Ends with the runtime; SIGHUP no longer terminates the process from here on, before
        // "listening" is logged.
        tokio::spawn(reloader.run_on_sighup());
        let acceptors = start_acceptors(config, bound.listeners, &app);
        let (bridges, leases) = start_bridges(config, pollers).await?;
        Ok(Self {
            webhook_addr: bound.webhook_addr,
            metrics_addr: bound.metrics_addr,
            app,
            acceptors,
            bridges,
            leases,
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
        for task in self.bridges.into_iter().chain(self.leases) {
            stop(Some(task)).await;
        }
        for (stop, acceptor) in self.acceptors {
            tokio::time::sleep(self.shutdown_delay).await;
            let _ = stop.send(true);
            let _ = acceptor.await;
        }
        stop(self.state_writer).await;
        tracing::info!("stopped");
    }
}

/// Refuses a `forward.url` that points back at one of this exporter's own listeners.
async fn refuse_relay_to_self(config: &Config) -> Result<(), StartError> {
    if let Some(upstream) = config.forward.upstream()? {
        crate::http::relay::refuse_relay_to_self(
            &upstream,
            &[
                ("webhook.listen", config.webhook.listen),
                ("metrics.listen", config.metrics.listen),
            ],
        )
        .await?;
    }
    Ok(())
}

/// One poller per configured bridge, their metrics registered; none polls yet.
fn bridge_pollers(
    config: &Config,
    metrics: &Arc<Metrics>,
    senders: &Arc<CallbackSenders>,
) -> Result<Vec<BridgePoller>, StartError> {
    let bridge_metrics = BridgeMetrics::new(metrics.registry());
    let pollers = config
        .bridges
        .iter()
        .map(|bridge| {
            BridgePoller::new(
                bridge,
                Arc::clone(metrics),
                &bridge_metrics,
                Arc::clone(senders),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pollers)
}

/// With `api.token_file`, the Web API poller, started; it removes the `restored` locks its
/// first poll does not list.
fn start_web_api_poller(
    config: &Config,
    metrics: &Arc<Metrics>,
    restored: Vec<u64>,
) -> Result<Option<Stoppable>, StartError> {
    Ok(match &config.api.token_file {
        Some(token_file) => {
            // Registered only here: an exporter that polls no Web API has none of them.
            let api_metrics = WebApiMetrics::register(metrics.registry());
            let api = NukiApi::new(&config.api, token_file, Some(api_metrics.clone()))
                .map_err(crate::config::ConfigError::from)?;
            let poller = WebApiPoller::new(
                api,
                Arc::clone(metrics),
                api_metrics,
                config.api.poll_interval,
                config.api.advanced_key_id,
                restored,
            )
            .map_err(StartError::Encoder)?;
            tracing::info!(url = %config.api.url, interval = %humantime::format_duration(config.api.poll_interval), "polling the Nuki Web API");
            Some(spawn_stoppable(|stop| poller.run(stop)))
        }
        None => None,
    })
}

/// The bound listeners: the webhook listener first, the metrics listener unless it shares the
/// webhook listener's address.
struct Bound {
    listeners: Vec<(TcpListener, Role)>,
    webhook_addr: SocketAddr,
    metrics_addr: SocketAddr,
}

async fn bind_listeners(config: &Config) -> Result<Bound, StartError> {
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
    Ok(Bound {
        listeners,
        webhook_addr,
        metrics_addr,
    })
}

/// One accept loop per listener, started.
fn start_acceptors(
    config: &Config,
    listeners: Vec<(TcpListener, Role)>,
    app: &Arc<App>,
) -> Vec<Stoppable> {
    listeners
        .into_iter()
        .map(|(listener, role)| {
            tracing::info!(address = %listener.local_addr().expect("bound"), listener = role.name(), "listening");
            let acceptor = Acceptor {
                listener,
                role,
                app: Arc::clone(app),
                slots: Arc::new(Semaphore::new(config.limits.max_connections)),
                header_read_timeout: config.limits.header_read_timeout,
                grace_period: config.server.shutdown_grace_period,
            };
            spawn_stoppable(|stopped| acceptor.run(stopped))
        })
        .collect()
}

/// Each bridge's poller, started once its callback sender is known, and with `[bridge_lease]`
/// each bridge's Lease keeper.
async fn start_bridges(
    config: &Config,
    pollers: Vec<BridgePoller>,
) -> Result<(Vec<Stoppable>, Vec<Stoppable>), StartError> {
    // Without bridges, [bridge_lease] (set by the Kubernetes base for every pod) asks nothing.
    let lease_client = config
        .bridge_lease
        .as_ref()
        .filter(|_| !config.bridges.is_empty())
        .map(LeaseClient::new)
        .transpose()?;
    let (mut bridges, mut leases) = (Vec::new(), Vec::new());
    for (poller, bridge) in pollers.into_iter().zip(&config.bridges) {
        // Before polling starts: the bridge's callbacks are accepted from the first one.
        poller.resolve_sender().await;
        // Without [bridge_lease], this process is every bridge's poller for good.
        let (leading, leadership) = watch::channel(lease_client.is_none());
        if let Some(client) = &lease_client {
            let lease = client.lease(&bridge.name);
            leases.push(spawn_stoppable(|stop| lease.run(leading, stop)));
        }
        bridges.push(spawn_stoppable(|stop| poller.run(leadership, stop)));
    }
    Ok((bridges, leases))
}

/// Spawns a task that ends when its stop signal is sent.
fn spawn_stoppable<F: Future<Output = ()> + Send + 'static>(
    task: impl FnOnce(watch::Receiver<bool>) -> F,
) -> Stoppable {
    let (stop, stopped) = watch::channel(false);
    (stop, tokio::spawn(task(stopped)))
}

/// Stops a task of [`spawn_stoppable`] and waits for it to end.
async fn stop(task: Option<Stoppable>) {
    if let Some((stop, task)) = task {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

/// Accepts and serves the connections of one listener.
struct Acceptor {
    listener: TcpListener,
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
        // HTTP/1.1 only: Nuki and Prometheus speak it. No timers of hyper's: each connection's
        // deadline bounds the wait for a request head (a connection that never sends a byte
        // too), the handler and the response.
        let builder = http1::Builder::new();
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
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (stream, peer) = stream;
            let _ = stream.set_nodelay(true);
            // Read per connection: a reload may bring a new certificate.
            let tls: Option<TlsAcceptor> = if self.role.metrics {
                self.app.guard.current().tls().cloned()
            } else {
                None
            };
            let connection = Connection {
                app: Arc::clone(&self.app),
                role: self.role,
                client: ClientConnection {
                    peer,
                    https: tls.is_some(),
                },
                header_read_timeout: self.header_read_timeout,
            };
            let (builder, watcher) = (builder.clone(), graceful.watcher());
            let (metrics, open_connections) = (Arc::clone(&metrics), open_connections.clone());
            open_connections.inc();
            tokio::spawn(async move {
                // The header-read timeout also ends idle keep-alive connections; only a client cut
                // off while sending (a TLS handshake or a request) tripped the limit.
                let (stream, started) = RequestProgress::new(stream);
                let (ended, request_started) = match tls {
                    None => (connection.serve(stream, &builder, watcher).await, started),
                    Some(tls) => {
                        let handshake_timeout = connection.header_read_timeout;
                        match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let (stream, request_started) = RequestProgress::new(stream);
                                let ended = connection.serve(stream, &builder, watcher).await;
                                (ended, request_started)
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                (Ended::Served(Ok(())), started)
                            }
                            Err(_) => (Ended::HeaderReadTimeout, started),
                        }
                    }
                };
                match ended {
                    Ended::Served(Ok(())) => {}
                    Ended::Served(Err(error)) => {
                        if let Some(reason) = refusal(&error) {
                            metrics.reject(reason);
                        }
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    Ended::HeaderReadTimeout => {
                        if request_started.get() {
                            metrics.connection_limit_hit(ConnectionLimit::HeaderReadTimeout);
                        }
                    }
                    Ended::HandlerTimeout | Ended::WriteTimeout => {
                        tracing::debug!(?ended, "connection cut off at its request timeout");
                        metrics.reject(RejectReason::Timeout);
                    }
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

/// One accepted connection: what serving its requests takes.
struct Connection {
    app: Arc<App>,
    role: Role,
    client: ClientConnection,
    header_read_timeout: Duration,
}

impl Connection {
    /// Serves the requests that arrive on `stream` until the connection ends or one of its
    /// limits passes (`limits.header_read_timeout`, `limits.request_timeout`).
    async fn serve<S>(
        self,
        stream: S,
        builder: &http1::Builder,
        watcher: Watcher,
    ) -> Ended<hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = Arc::new(ConnectionDeadline::new(self.header_read_timeout));
        let io = TokioIo::new(DeadlineIo::new(stream, Arc::clone(&deadline)));
        let Self {
            app, role, client, ..
        } = self;
        let handler_deadline = Arc::clone(&deadline);
        let service = service_fn(move |request: hyper::Request<_>| {
            Arc::clone(&app).handle(role, client, request, Arc::clone(&handler_deadline))
        });
        deadline
            .enforce(watcher.watch(builder.serve_connection(io, service)))
            .await
    }
}

/// Why hyper refused a request before any handler ran (it answered 400, 414 or 431 itself, or
/// closed the connection); `None` for errors that refuse nothing (the client closed an idle
/// connection, or went away while a response was written).
fn refusal(error: &hyper::Error) -> Option<RejectReason> {
    if error.is_parse_too_large() {
        Some(RejectReason::TooLarge)
    } else if error.is_parse() || error.is_parse_status() {
        Some(RejectReason::Malformed)
    } else {
        None
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: a signal that arrives while the exporter starts is not lost (and does
/// not kill the process the default way).
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

//! Building and running the server from a [`Config`]. The accept loop is ours
//! rather than `axum::serve`'s, because the limits that keep one client from
//! starving the others live at the connection: a cap on open connections, a
//! timeout for request headers (hyper enforces it only with a timer, which
//! `axum::serve` does not set) and a timeout for connections that move no byte.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use crate::api::{App, router, side_router};
use crate::config::{Config, LimitsConfig};
use crate::gc::Collector;
use crate::gc::exchange::Exchange;
use crate::gc::schedule::{Hooks, Scheduler};
use crate::net::{self, Activity, Tracked};
use crate::observe::{Health, Metrics, Observer, Prober};
use crate::storage::{FsStorage, Observed, Quota, S3Storage, Storage, UsageBook};
use crate::tls;

/// How long requests in flight may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);
/// Connections the metrics listener holds at once (scrapers and probes), and
/// its timeouts: short, so clients that hold connections without asking
/// anything cannot crowd out the kubelet's probes for long.
const SIDE_CONNECTIONS: usize = 1024;
const SIDE_TIMEOUT_SECS: u64 = 5;

/// What an operator should hear about at start: a registry that strangers can
/// write to, or credentials sent without encryption. Loopback addresses are
/// reachable only from this machine, and are exempt.
pub fn startup_warnings(config: &Config) -> Vec<String> {
    let addr = &config.listen;
    if is_loopback(addr) {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    if config.auth.is_open() && !config.read_only {
        warnings.push(format!("anyone who can reach {addr} can push, overwrite and delete images: configure auth"));
    }
    if config.auth.has_authenticators() && config.tls.is_none() {
        warnings.push(format!(
            "TLS is off on {addr}: credentials travel in clear text; configure tls or listen on loopback"
        ));
    }
    warnings
}

/// Whether a listen address (`ip:port`, `[ip]:port` or `localhost:port`)
/// accepts connections from this machine only.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// The storage as the server uses it. The garbage collector walks `backend`
/// and hands its figures to `usage` ([`UsageBook::replace`]); requests go
/// through `storage`, which enforces the quotas and keeps `usage` current
/// between scans.
pub struct Stores {
    pub backend: Arc<dyn Storage>,
    pub usage: Arc<UsageBook>,
    pub storage: Arc<dyn Storage>,
}

/// The configured backend: the bucket of `storage.s3`, or the directory `storage.root`.
pub async fn open_backend(config: &Config) -> Result<Arc<dyn Storage>, String> {
    if let Some(s3) = &config.storage.s3 {
        let storage = S3Storage::open(s3).await.map_err(|e| e.to_string())?;
        return Ok(Arc::new(storage));
    }
    let fs = FsStorage::open(&config.storage.root)
        .map_err(|e| format!("opening storage at {}: {e}", config.storage.root.display()))?;
    Ok(Arc::new(fs))
}

/// Opens the storage of `config`. The quota layer is always there, since it
/// also keeps the usage: a map lookup and a stat or two per write, nothing on
/// a pull.
pub async fn open_storage(config: &Config) -> Result<Stores, String> {
    let backend = open_backend(config).await?;
    let usage = Arc::new(UsageBook::new());
    let storage: Arc<dyn Storage> = Arc::new(Quota::new(backend.clone(), config.quota.clone(), usage.clone()));
    Ok(Stores { backend, usage, storage })
}

/// The HTTP applications of a server.
pub struct Built {
    /// The API (with the probes, and the metrics when they share its listener).
    pub api: axum::Router,
    /// What `metrics.listen` serves, when set.
    pub side: Option<axum::Router>,
    /// Counts requests, when metrics are on.
    pub observer: Arc<Observer>,
    pub metrics: Arc<Metrics>,
}

/// Opens the storage and builds the HTTP applications for `config`; starts
/// the cleanup of what clients and crashes leave behind, the garbage
/// collector and the storage probe.
pub async fn build(config: Config) -> Result<Built, String> {
    let Stores { backend, usage, storage } = open_storage(&config).await?;
    let metrics = Arc::new(Metrics::new(config.storage.s3.is_none()));
    let operations = config.metrics.enabled.then(|| metrics.storage_operations.clone());
    let storage: Arc<dyn Storage> = Arc::new(Observed::new(storage, operations));
    let age = match config.uploads.purge_after_hours {
        0 => Duration::MAX,
        hours => Duration::from_secs(hours.saturating_mul(3600)),
    };
    tokio::spawn(purge(storage.clone(), age));
    let exchange = config.gc.kubernetes.as_ref().map(|k| Arc::new(Exchange::new(k)));
    let collector =
        Arc::new(Collector::new(backend, config.gc.clone(), config.retention.clone()).with_mirrors(&config.mirrors));
    let requests = exchange.clone().map(|e| e as Arc<dyn crate::gc::schedule::Requests>);
    let mut hooks = Hooks::from_book(usage.clone());
    let counted = metrics.clone();
    hooks.collected = Box::new(move |c| match c {
        Some(c) => counted.record_collection(c),
        None => counted.record_failed_collection(),
    });
    crate::gc::schedule::spawn_idle(Scheduler { collector, requests, hooks })
        .map_err(|e| format!("starting the garbage collector: {e}"))?;
    let health = Arc::new(Health::default());
    let prober = Prober {
        health: health.clone(),
        storage: storage.clone(),
        metrics: metrics.clone(),
        book: usage,
        exchange,
        config: config.health.clone(),
        read_only: config.read_only,
    };
    tokio::spawn(prober.run());
    let recorded = config.metrics.enabled.then(|| metrics.clone());
    let observer = Arc::new(Observer::new(recorded, &config.metrics.path));
    let side = config.metrics.listen.is_some();
    let app = App::new(config, storage, metrics.clone(), health)?;
    Ok(Built { api: router(app.clone()), side: side.then(|| side_router(app)), observer, metrics })
}

/// At start and hourly: abandoned upload sessions (untouched for `age`),
/// temporary files and empty directories.
async fn purge(storage: Arc<dyn Storage>, age: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match storage.purge(age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "cleaning up the storage failed"),
        }
    }
}

/// Serves `config` on an already bound listener until `shutdown` resolves, then
/// lets requests in flight finish (for up to 30 s). With `config.tls` set, an
/// unusable certificate or key is an error before any connection is accepted.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let max_connections = config.limits.max_connections;
    check_open_files(max_connections);
    let storage = config.storage.describe();
    let side_listener = match &config.metrics.listen {
        Some(addr) => {
            let bound = TcpListener::bind(addr).await;
            Some(bound.map_err(|e| format!("listening on {addr} (metrics.listen): {e}"))?)
        }
        None => None,
    };
    let (shared, side) = Shared::new(config).await?;
    let scheme = if shared.tls.is_some() { "https" } else { "http" };
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%listen, scheme, %storage, "berth-registry serving");
    let side = side.zip(side_listener).map(|(side, listener)| {
        let metrics = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%metrics, "serving metrics and probes");
        tokio::spawn(side.accept_all(listener, SIDE_CONNECTIONS, Arc::new(GracefulShutdown::new())))
    });
    let graceful = Arc::new(GracefulShutdown::new());
    tokio::select! {
        _ = shared.clone().accept_all(listener, max_connections as usize, graceful.clone()) => {}
        _ = shutdown => {}
    }
    let graceful = Arc::into_inner(graceful).expect("the accept loop has ended");
    if let Some(side) = side {
        side.abort();
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {} s; stopping anyway", DRAIN.as_secs());
    }
    Ok(())
}

/// Raises the open-file limit, and warns when it still cannot hold every connection.
fn check_open_files(max_connections: u32) {
    let files = net::raise_open_files_limit();
    if u64::from(max_connections) * 2 > files {
        tracing::warn!(files, max_connections, "the open-file limit is below 2 per connection");
    }
}

/// What every connection task needs.
#[derive(Clone)]
struct Shared {
    app: axum::Router,
    /// Records each request (the API listener's, not the metrics listener's).
    observer: Option<Arc<Observer>>,
    /// Client connections open, for the metrics.
    open: Option<Gauge>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Shared {
    /// Loads the certificate (first, so a bad one fails before the storage
    /// opens) and builds the applications: the API's, and the metrics
    /// listener's when it has one (plain HTTP, same timeouts).
    async fn new(config: Config) -> Result<(Shared, Option<Shared>), String> {
        let tls = match &config.tls {
            Some(tls) => Some(tls::acceptor(tls).await.map_err(|e| e.to_string())?),
            None => None,
        };
        let limits = config.limits.clone();
        let built = build(config).await?;
        let api = Shared {
            app: built.api,
            observer: Some(built.observer),
            open: Some(built.metrics.connections.clone()),
            builder: Arc::new(connection_builder(&limits)),
            tls,
            handshake_timeout: Duration::from_secs(limits.header_timeout_secs),
            idle_timeout: Duration::from_secs(limits.idle_timeout_secs),
        };
        let side_limits =
            LimitsConfig { header_timeout_secs: SIDE_TIMEOUT_SECS, idle_timeout_secs: SIDE_TIMEOUT_SECS, ..limits };
        let side = built.side.map(|app| Shared {
            app,
            observer: None,
            open: None,
            builder: Arc::new(connection_builder(&side_limits)),
            tls: None,
            handshake_timeout: Duration::from_secs(SIDE_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(SIDE_TIMEOUT_SECS),
        });
        Ok((api, side))
    }

    /// Accepts connections on `listener` (at most `max` open at once; past
    /// that, new ones are closed) and serves each on a task of its own.
    async fn accept_all(self, listener: TcpListener, max: usize, graceful: Arc<GracefulShutdown>) {
        let slots = Arc::new(Semaphore::new(max));
        loop {
            let Some((stream, peer)) = net::accepted(listener.accept().await).await else {
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "connection limit reached; closing a new connection");
                continue;
            };
            tokio::spawn(self.clone().connection(stream, peer, graceful.watcher(), slot));
        }
    }

    /// Runs one accepted connection, holding its `slot` until it ends. The TLS
    /// handshake happens here rather than in the accept loop, so a client that
    /// handshakes slowly delays no one else.
    async fn connection(self, stream: TcpStream, peer: SocketAddr, watcher: Watcher, slot: OwnedSemaphorePermit) {
        let activity = Arc::new(Activity::new());
        let stream = tracked(stream, &activity);
        let _open = self.open.clone().map(OpenConnection::new);
        match &self.tls {
            None => self.http(stream, peer, watcher, activity).await,
            Some(acceptor) => match handshake(acceptor, stream, self.handshake_timeout).await {
                Ok(stream) => self.http(stream, peer, watcher, activity).await,
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            },
        }
        drop(slot);
    }

    /// Serves HTTP/1.1 and HTTP/2 on `stream` until the client leaves, the
    /// connection goes idle or the server shuts down.
    async fn http<S>(&self, stream: S, peer: SocketAddr, watcher: Watcher, activity: Arc<Activity>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = counted(self.app.clone(), activity.clone(), self.observer.clone(), peer);
        let connection = self.builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = watcher.watch(connection);
        tokio::select! {
            result = connection => if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = activity.idle_for(self.idle_timeout) => tracing::debug!(%peer, "closing an idle connection"),
        }
    }
}

/// The server side of a TLS handshake, given at most `limit`.
async fn handshake<S>(acceptor: &TlsAcceptor, stream: S, limit: Duration) -> std::io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(handshake) => handshake,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// A connection counted in the metrics while it is open.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The app as a hyper service that marks the connection as working while a
/// request is being handled, so the idle timeout does not cut a long finish,
/// and has `observer` record each request.
fn counted(
    app: axum::Router,
    activity: Arc<Activity>,
    observer: Option<Arc<Observer>>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let working = activity.working();
        let mut app = app.clone();
        let observer = observer.clone();
        async move {
            let response = match observer {
                None => tower_service::Service::call(&mut app, request).await,
                Some(observer) => {
                    let (record, request) = observer.begin(request, peer);
                    let span = record.span().clone();
                    let response = tower_service::Service::call(&mut app, request).instrument(span).await;
                    response.map(|r| record.respond(r))
                }
            };
            drop(working);
            response
        }
    })
}

/// The connection's bytes, counted below TLS so the idle timeout sees them.
fn tracked(stream: TcpStream, activity: &Arc<Activity>) -> Tracked<TcpStream> {
    let _ = stream.set_nodelay(true);
    Tracked::new(stream, activity.clone())
}

/// HTTP/1.1 and HTTP/2 (cleartext, or chosen through ALPN under TLS), with a
/// timer so the header timeout applies.
fn connection_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Anonymous, HtpasswdConfig, TlsConfig};

    fn warnings(listen: &str, adjust: impl FnOnce(&mut Config)) -> Vec<String> {
        let mut config = Config { listen: listen.into(), ..Config::default() };
        adjust(&mut config);
        startup_warnings(&config)
    }

    #[test]
    fn an_open_registry_on_a_public_address_is_warned_about() {
        for listen in ["0.0.0.0:5000", "[::]:5000", "10.1.2.3:5000", "registry.example:5000"] {
            let w = warnings(listen, |_| {});
            assert_eq!(w.len(), 1, "{listen}: {w:?}");
            assert!(w[0].contains(&format!("anyone who can reach {listen} can push")), "{w:?}");
        }
        for listen in ["127.0.0.1:5000", "127.1.2.3:5000", "[::1]:5000", "localhost:5000", "LOCALHOST:5000"] {
            assert_eq!(warnings(listen, |_| {}), Vec::<String>::new(), "{listen}");
        }
        assert!(warnings("0.0.0.0:5000", |c| c.read_only = true).is_empty());
        assert!(warnings("0.0.0.0:5000", |c| c.auth.anonymous = Anonymous::Pull).is_empty());
    }

    #[test]
    fn credentials_without_tls_on_a_public_address_are_warned_about() {
        let with_users = |c: &mut Config| {
            c.auth.anonymous = Anonymous::None;
            c.auth.htpasswd = Some(HtpasswdConfig::default());
        };
        let w = warnings("0.0.0.0:5000", with_users);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("credentials travel in clear text"), "{w:?}");
        assert!(warnings("127.0.0.1:5000", with_users).is_empty());
        let tls = TlsConfig { cert_file: "tls.crt".into(), key_file: "tls.key".into() };
        assert!(
            warnings("0.0.0.0:5000", |c| {
                with_users(c);
                c.tls = Some(tls);
            })
            .is_empty()
        );
        let both = warnings("0.0.0.0:5000", |c| c.auth.htpasswd = Some(HtpasswdConfig::default()));
        assert_eq!(both.len(), 2, "open and in clear text: {both:?}");
    }
}

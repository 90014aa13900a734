//! Serving a router with bounds on every connection: [`serve`].
//!
//! `axum::serve` bounds nothing a client controls: a client that sends half a request line and
//! then nothing holds its connection (and a file descriptor) for as long as it likes, and a few
//! thousand of them starve the process of descriptors, so real requests time out. [`serve`]
//! is the same one call with bounds ([`ServeLimits`]):
//!
//! - **header read time**: a connection whose request headers are not complete within
//!   [`ServeLimits::header_read`] (10 s) is closed; the same bound applies to an idle
//!   keep-alive connection waiting for its next request, so it also bounds idle keep-alive
//!   (hyper's `header_read_timeout`, whose timer runs whenever the connection waits for a
//!   request's head);
//! - **body transfer time**: a request body not received within [`ServeLimits::body`] (60 s)
//!   fails (tower-http's `RequestBodyTimeout`); the agent answers such a request with a 500
//!   `err:` and starts nothing;
//! - **open connections**: at most [`ServeLimits::max_connections`] (512) are served at
//!   once; beyond that, new connections wait in the listener's backlog until one closes,
//!   and the connections already accepted keep being answered;
//! - **TLS handshakes** (with [`Serve::tls`]) count against the header read time, on the
//!   connection's own task.
//!
//! Each request carries the peer's address as `axum::extract::ConnectInfo<SocketAddr>`
//! (the agent's basic-auth rate limit is per peer).

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tower::util::BoxCloneService;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutBody};

use crate::error::ConfigError;

/// The bounds [`serve`] puts on each connection. [`Default`] holds the defaults;
/// [`ServeLimits::from_env`] reads overrides from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeLimits {
    /// How long a connection may take to send a request's headers, counted from when it
    /// starts waiting for them (its accept, or the end of the previous response: this also
    /// bounds idle keep-alive). Default 10 s; `JOBAGENT_SERVE_HEADER_TIMEOUT_MS`.
    pub header_read: Duration,
    /// How long a request's body may take to arrive. Default 60 s;
    /// `JOBAGENT_SERVE_BODY_TIMEOUT_MS`.
    pub body: Duration,
    /// The most connections served at once; beyond it, new connections wait in the
    /// listener's backlog. Default 512; `JOBAGENT_SERVE_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// After the shutdown signal, how long open connections get to finish the requests in
    /// flight before they are dropped. Default 10 s.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body: Duration::from_secs(60),
            max_connections: 512,
            drain: Duration::from_secs(10),
        }
    }
}

impl ServeLimits {
    /// The defaults, with `JOBAGENT_SERVE_HEADER_TIMEOUT_MS`, `JOBAGENT_SERVE_BODY_TIMEOUT_MS`
    /// and `JOBAGENT_SERVE_MAX_CONNECTIONS` applied when set (each a positive integer).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let number = |name: &'static str| -> Result<Option<u64>, ConfigError> {
            match get(name).as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(text) => text
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| ConfigError::invalid(name, "expected a positive integer")),
            }
        };
        let mut limits = Self::default();
        if let Some(ms) = number("JOBAGENT_SERVE_HEADER_TIMEOUT_MS")? {
            limits.header_read = Duration::from_millis(ms);
        }
        if let Some(ms) = number("JOBAGENT_SERVE_BODY_TIMEOUT_MS")? {
            limits.body = Duration::from_millis(ms);
        }
        if let Some(n) = number("JOBAGENT_SERVE_MAX_CONNECTIONS")? {
            limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(limits)
    }

    /// Sets [`ServeLimits::header_read`].
    pub fn header_read(mut self, bound: Duration) -> Self {
        self.header_read = bound;
        self
    }

    /// Sets [`ServeLimits::body`].
    pub fn body(mut self, bound: Duration) -> Self {
        self.body = bound;
        self
    }

    /// Sets [`ServeLimits::max_connections`] (at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets [`ServeLimits::drain`].
    pub fn drain(mut self, bound: Duration) -> Self {
        self.drain = bound;
        self
    }
}

/// Serves `app` on `listener` over HTTP/1.1 with [`ServeLimits::default`], until the
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) signal (or for ever). Await it.
///
/// Where `axum::serve(listener, app)` bounds nothing, this closes a connection that does not
/// send its request headers within 10 s (idle keep-alive too), fails a request body not
/// received within 60 s, and serves at most 512 connections at once (more wait in the
/// backlog). See [`ServeLimits`].
///
/// ```no_run
/// # async fn run(agent: jobagent::Agent) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// let app = axum::Router::new().merge(agent.router());
/// jobagent::serve(listener, app)
///     .with_graceful_shutdown(agent.shutdown_on_signal())
///     .await
/// # }
/// ```
pub fn serve(listener: TcpListener, app: Router) -> Serve {
    Serve {
        listener,
        app,
        limits: ServeLimits::default(),
        signal: None,
        tls: None,
    }
}

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server being set up by [`serve`]; await it to run it.
#[must_use = "a server does nothing until awaited"]
pub struct Serve {
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    signal: Option<Signal>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Uses `limits` instead of the defaults.
    pub fn limits(mut self, limits: ServeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Stops accepting when `signal` completes; connections then finish the requests in
    /// flight (at most [`ServeLimits::drain`]) and the server's future ends.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// Serves HTTPS with `config` (its certificate and key; HTTP/1.1 is offered by ALPN when
    /// it names no protocol). The handshake counts against the header read time.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        let config = if config.alpn_protocols.is_empty() {
            let mut own = (*config).clone();
            own.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(own)
        } else {
            config
        };
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            app,
            limits,
            signal,
            tls,
        } = self;
        let mut signal = signal.unwrap_or_else(|| Box::pin(std::future::pending()));
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let mut full_said = false;
        loop {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !full_said {
                        full_said = true;
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            "the server holds its most open connections (JOBAGENT_SERVE_MAX_CONNECTIONS); new ones wait until one closes"
                        );
                    }
                    tokio::select! {
                        _ = &mut signal => break,
                        permit = slots.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before it was taken:
                        // wait a little rather than spin, then go on.
                        tracing::debug!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if slots.available_permits() > limits.max_connections / 2 {
                full_said = false;
            }
            let _ = stream.set_nodelay(true);
            let service = connection_service(&app, peer, limits.body);
            let tls = tls.clone();
            let watcher = graceful.watcher();
            let header_read = limits.header_read;
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    None => serve_connection(stream, service, header_read, watcher).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(header_read, acceptor.accept(stream)).await;
                        match handshake {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, service, header_read, watcher).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake not done within the header read time; connection closed");
                            }
                        }
                    }
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(limits.drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = limits.drain.as_millis() as u64,
                "connections still open when the drain time ended; dropped"
            );
        }
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// What one connection serves: the app, with the request body under its time bound and the
/// peer's address in each request's extensions.
type ConnectionService =
    BoxCloneService<hyper::Request<hyper::body::Incoming>, axum::response::Response, Infallible>;

fn connection_service(app: &Router, peer: SocketAddr, body: Duration) -> ConnectionService {
    let app = app.clone().map_request(
        move |mut request: Request<TimeoutBody<hyper::body::Incoming>>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        },
    );
    BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(RequestBodyTimeoutLayer::new(body))
            .service(app),
    )
}

async fn serve_connection<I>(
    io: I,
    service: ConnectionService,
    header_read: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_from_the_environment() {
        let vars = [
            ("JOBAGENT_SERVE_HEADER_TIMEOUT_MS", "250"),
            ("JOBAGENT_SERVE_MAX_CONNECTIONS", "7"),
        ];
        let limits = ServeLimits::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("valid");
        assert_eq!(limits.header_read, Duration::from_millis(250));
        assert_eq!(limits.max_connections, 7);
        assert_eq!(limits.body, ServeLimits::default().body);
        let bad = ServeLimits::from_lookup(|name| {
            (name == "JOBAGENT_SERVE_BODY_TIMEOUT_MS").then(|| "0".to_owned())
        });
        assert!(bad.is_err());
    }
}

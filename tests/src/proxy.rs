//! A TCP proxy in front of PostgreSQL that a test can cut, black-hole and restore, to stage
//! a store outage in the middle of a job: a cut closes connections (the client sees an
//! error at once), a black hole keeps them open and silent (no RST, no FIN), as a NAT or
//! firewall that dropped its state does. A black hole can end with its links reset
//! ([`Proxy::restore`]) or with them left dead for good while new connections work again
//! ([`Proxy::restore_new`]), as after a network partition: only the client's own deadlines
//! end those.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy on 127.0.0.1 forwarding to a PostgreSQL server (TCP host or Unix socket dir).
pub struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    hole: tokio::sync::watch::Sender<bool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Links left black-holed by [`restore_new`](Self::restore_new).
    dead: Mutex<Vec<JoinHandle<()>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `db`'s server, and `db`'s connection string through it.
    pub async fn in_front_of(db: &crate::pg::TestDb) -> (Self, String) {
        let conn = db.connection_string();
        let value = |key: &str| {
            conn.split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .unwrap_or_default()
        };
        let proxy = Self::start(&value("Host"), value("Port").parse().unwrap_or(5432)).await;
        let mut pairs: Vec<&str> = conn
            .split(';')
            .filter(|pair| {
                let key = pair.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
                key != "Host" && key != "Port"
            })
            .collect();
        let endpoint = format!("Host=127.0.0.1;Port={}", proxy.port());
        pairs.push(&endpoint);
        let via = pairs.join(";");
        (proxy, via)
    }

    /// Starts forwarding to `host:port` (`host` starting with `/` is a Unix socket directory).
    pub async fn start(host: &str, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("proxy cannot bind: {e}"));
        let local = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy has no address: {e}"))
            .port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = host.to_owned();
        let (up2, links2) = (up.clone(), links.clone());
        let (hole, hole_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up2.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut hole = hole_rx.clone();
                let link = tokio::spawn(async move {
                    if *hole.borrow_and_update() {
                        // Accepted, never answered, never closed (the task owns `client`
                        // until it is aborted).
                        std::future::pending::<()>().await;
                    }
                    if target.starts_with('/') {
                        #[cfg(unix)]
                        if let Ok(server) =
                            tokio::net::UnixStream::connect(format!("{target}/.s.PGSQL.{port}"))
                                .await
                        {
                            pipe(client, server, hole).await;
                        }
                    } else if let Ok(server) = TcpStream::connect((target.as_str(), port)).await {
                        pipe(client, server, hole).await;
                    }
                });
                if let Ok(mut l) = links2.lock() {
                    l.push(link);
                }
            }
        });
        Self {
            port: local,
            up,
            hole,
            links,
            dead: Mutex::default(),
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::Release);
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    /// Stops forwarding without closing anything: open connections go silent, new ones are
    /// accepted and never answered. Nothing reaches either side until [`restore`](Self::restore).
    pub fn black_hole(&self) {
        self.hole.send_replace(true);
    }

    /// Forwards again. Connections that were black-holed are closed (as the dropped state of
    /// a real middlebox would surface: the next packet gets a reset), new ones are forwarded.
    pub fn restore(&self) {
        let holed = self.hole.send_replace(false);
        if holed && let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
        self.up.store(true, Ordering::Release);
    }

    /// Forwards new connections again and leaves every link open before now silent for
    /// good: nothing is forwarded on them, nothing resets them (a partition that outlived
    /// the links it broke; a client's keepalive probes are answered by the proxy's own
    /// socket, so only the client's own deadlines end them) until
    /// [`close_dead`](Self::close_dead) or the proxy is dropped.
    pub fn restore_new(&self) {
        let held: Vec<JoinHandle<()>> = match self.links.lock() {
            Ok(mut links) => links.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut dead) = self.dead.lock() {
            dead.extend(held);
        }
        self.hole.send_replace(false);
        self.up.store(true, Ordering::Release);
    }

    /// Closes the links [`restore_new`](Self::restore_new) left dead (a FIN reaches both
    /// sides).
    pub fn close_dead(&self) {
        if let Ok(mut dead) = self.dead.lock() {
            for link in dead.drain(..) {
                link.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
        self.close_dead();
    }
}

async fn pipe<A, B>(mut a: A, mut b: B, mut hole: tokio::sync::watch::Receiver<bool>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let holed = tokio::select! {
        _ = copy_bidirectional(&mut a, &mut b) => false,
        res = hole.wait_for(|holed| *holed) => res.is_ok(),
    };
    if holed {
        // Silent from now on: both sockets stay open until the link is aborted.
        std::future::pending::<()>().await;
    }
}

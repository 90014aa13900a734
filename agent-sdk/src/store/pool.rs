//! One bounded connection pool per store, with TLS as the connection string asks.
//!
//! TLS follows Npgsql's `SSL Mode`: `Disable` never; `Allow`/`Prefer` try TLS and fall back to
//! plain; `Require` insists on TLS but does not check the certificate (nor does `Prefer`, nor
//! `Trust Server Certificate=true`); `VerifyCA` checks the chain against the trusted roots;
//! `VerifyFull` also checks the host name. Trusted roots are the system's, or only those in the
//! `Root Certificate` file when one is named. TLS is rustls with the ring provider, chosen
//! explicitly so no process-wide default provider is needed.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;
use super::pg_connstr::{ConnSpec, SslMode};
use super::tls::{crypto_provider, system_roots};

/// Extra time, beyond the connect timeouts, that opening a connection (the `Search Path`
/// hook) may take before the pool gives up on it.
const SETUP_ALLOWANCE: Duration = Duration::from_secs(5);

/// How long the check of a pooled connection before reuse (an empty query) may take. A
/// connection that does not answer it in time is dropped, not handed out: it may still carry
/// a request whose caller gave up (a black-holed link answers nothing, ever).
const RECYCLE_CHECK: Duration = Duration::from_secs(3);

/// How long sending a statement's cancel (a connection of its own) may take.
const CANCEL_WITHIN: Duration = Duration::from_secs(5);

pub(crate) use super::Load;

/// The bounds of a store's operations, from its connection string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Waiting for a pooled connection: Npgsql's `Timeout` (default 15 s) also bounds the
    /// wait for a free connection. `None` when the string sets `Timeout=0`.
    pub(crate) wait: Option<Duration>,
    /// Opening one connection: each host's `Timeout`, plus [`SETUP_ALLOWANCE`].
    pub(crate) create: Option<Duration>,
    /// One statement: `Command Timeout` (default 30 s). `None` when it is 0.
    pub(crate) command: Option<Duration>,
}

impl Limits {
    pub(crate) fn of(spec: &ConnSpec) -> Self {
        Self {
            wait: spec.config.get_connect_timeout().copied(),
            create: create_timeout(spec),
            command: spec.command_timeout,
        }
    }

    /// The longest a checkout may take: the wait for a free slot, one reuse check, and
    /// opening a new connection. (Should several idle connections fail their check in a row,
    /// the checkout gives up at this bound; each failed one has been dropped, so the next
    /// checkout finds fewer.) `None` when unbounded.
    pub(crate) fn checkout(&self) -> Option<Duration> {
        Some(
            self.wait?
                .saturating_add(RECYCLE_CHECK)
                .saturating_add(self.create?),
        )
    }
}

/// The pool of `spec`, connecting as `connector` does: at most `spec.max_pool` connections,
/// TLS per `spec.ssl`, every wait bounded (see [`Limits`]), each pooled connection checked
/// before reuse, `Search Path` set on each new connection. Connects lazily: building needs
/// no runtime and no server; the first `get()` connects. With [`Load::Deferred`] it reads no
/// file either. The error is safe to show.
pub(crate) fn pool_of(spec: &ConnSpec, connector: &Connector) -> Result<Pool, StoreError> {
    let pg = connector.pg.clone();
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let manager = match connector.tls.clone() {
        Tls::Off => Manager::from_config(pg, NoTls, manager_config),
        Tls::Deferred(tls) => Manager::from_config(pg, tls, manager_config),
        Tls::Rustls(tls) => Manager::from_config(pg, tls, manager_config),
    };
    let limits = Limits::of(spec);
    let recycle = limits
        .command
        .map_or(RECYCLE_CHECK, |c| c.min(RECYCLE_CHECK));
    let mut builder = Pool::builder(manager)
        .max_size(spec.max_pool.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: limits.wait,
            create: limits.create,
            recycle: Some(recycle),
        });
    if let Some(search_path) = &spec.search_path {
        builder = builder.post_create(search_path_hook(search_path.clone()));
    }
    builder
        .build()
        .map_err(|e| StoreError::config(format!("cannot build the connection pool: {e}")))
}

/// The TLS a store's connections use.
#[derive(Clone)]
enum Tls {
    Off,
    Rustls(MakeRustlsConnect),
    Deferred(DeferredTls),
}

/// Opens connections of a store outside its pool, with the pool's settings and TLS: for
/// `LISTEN`, whose notifications a pooled connection's task discards.
#[derive(Clone)]
pub(crate) struct Connector {
    pg: tokio_postgres::Config,
    tls: Tls,
}

impl Connector {
    pub(crate) fn new(spec: &ConnSpec, load: Load) -> Result<Self, StoreError> {
        // No session settings of the agent's own: a pooler (PgBouncer) refuses the `options`
        // startup parameter, and in transaction pooling a session setting would not follow
        // the statements anyway. A string's own `Options` stay the user's (see pg_connstr.rs).
        let mut pg = spec.config.clone();
        pg.ssl_mode(spec.ssl.to_tokio());
        let tls = match (tls_plan(spec), load) {
            (Plan::Off, _) => Tls::Off,
            (Plan::Roots(_), Load::Deferred) => Tls::Deferred(DeferredTls::new(spec)),
            (plan, _) => Tls::Rustls(MakeRustlsConnect::new(tls_config(
                spec.ssl,
                plan,
                spec.root_certificate.as_ref(),
            )?)),
        };
        Ok(Self { pg, tls })
    }

    /// Opens a connection whose notifications go to `notifications`; it closes when the
    /// client is dropped or the receiver is. Not bounded here: callers put a deadline on it.
    pub(crate) async fn connect(
        &self,
        notifications: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
    ) -> Result<tokio_postgres::Client, StoreError> {
        match self.tls.clone() {
            Tls::Off => connect_with(&self.pg, NoTls, notifications).await,
            Tls::Rustls(tls) => connect_with(&self.pg, tls, notifications).await,
            Tls::Deferred(tls) => connect_with(&self.pg, tls, notifications).await,
        }
    }

    /// Asks the server (or the pooler in front of it) to cancel what the connection of
    /// `token` is running, within [`CANCEL_WITHIN`]; `keep` (that connection) is held open
    /// until then, so a pooler still knows the session the cancel names. Best effort: runs
    /// in the background and logs a failure at debug level.
    pub(crate) fn cancel<K: Send + 'static>(&self, token: tokio_postgres::CancelToken, keep: K) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tls = self.tls.clone();
        runtime.spawn(async move {
            let sent = tokio::time::timeout(CANCEL_WITHIN, async {
                match tls {
                    Tls::Off => token.cancel_query(NoTls).await,
                    Tls::Rustls(tls) => token.cancel_query(tls).await,
                    Tls::Deferred(tls) => token.cancel_query(tls).await,
                }
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::error::chain(&e), "could not cancel a statement past its deadline");
                }
                Err(_) => tracing::debug!("cancelling a statement past its deadline got no answer"),
            }
            drop(keep);
        });
    }
}

async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    notifications: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) -> Result<tokio_postgres::Client, StoreError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = pg.connect(tls).await.map_err(StoreError::from)?;
    tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if notifications.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    Ok(client)
}

/// How long creating one connection may take: each host's connect timeout, plus time for the
/// session set-up; unbounded when the string sets `Timeout=0`.
fn create_timeout(spec: &ConnSpec) -> Option<Duration> {
    let per_host = *spec.config.get_connect_timeout()?;
    let hosts = u32::try_from(spec.config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
    Some(
        per_host
            .saturating_mul(hosts)
            .saturating_add(SETUP_ALLOWANCE),
    )
}

/// Sets the session's `search_path` as Npgsql's `Search Path` does, via a bound parameter
/// (an unnamed statement). Session state: behind a pooler in transaction mode it holds only
/// on the server connection that ran it; the agent's own statements name their schema, so
/// they never depend on it.
fn search_path_hook(search_path: String) -> Hook {
    let search_path: Arc<str> = search_path.into();
    Hook::async_fn(move |client, _metrics| {
        let search_path = search_path.clone();
        Box::pin(async move {
            client
                .execute_typed(
                    "SELECT set_config('search_path', $1, false)",
                    &[(&&*search_path, tokio_postgres::types::Type::TEXT)],
                )
                .await
                .map_err(HookError::Backend)?;
            Ok(())
        })
    })
}

/// What TLS needs: nothing, or no certificate check, or trusted roots (a file read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Off,
    NoCheck,
    Roots(Check),
}

fn tls_plan(spec: &ConnSpec) -> Plan {
    match spec.ssl {
        SslMode::Disable => Plan::Off,
        _ if spec.trust_server_certificate => Plan::NoCheck,
        SslMode::Allow | SslMode::Prefer | SslMode::Require => Plan::NoCheck,
        SslMode::VerifyCa => Plan::Roots(Check::Chain),
        SslMode::VerifyFull => Plan::Roots(Check::ChainAndName),
    }
}

type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TLS whose trusted roots are read at the first connection, off the async threads, then
/// kept (a failed read is tried again at the next connection).
#[derive(Clone)]
struct DeferredTls {
    shared: Arc<Deferred>,
}

struct Deferred {
    ssl: SslMode,
    check: Check,
    root: Option<PathBuf>,
    ready: tokio::sync::OnceCell<MakeRustlsConnect>,
}

impl DeferredTls {
    fn new(spec: &ConnSpec) -> Self {
        let check = match tls_plan(spec) {
            Plan::Roots(check) => check,
            Plan::Off | Plan::NoCheck => Check::Nothing,
        };
        Self {
            shared: Arc::new(Deferred {
                ssl: spec.ssl,
                check,
                root: spec.root_certificate.clone(),
                ready: tokio::sync::OnceCell::new(),
            }),
        }
    }
}

impl Deferred {
    async fn connector(self: Arc<Self>) -> Result<MakeRustlsConnect, BoxError> {
        let this = self.clone();
        let made = self
            .ready
            .get_or_try_init(|| async move {
                let loaded = tokio::task::spawn_blocking(move || {
                    tls_config(this.ssl, Plan::Roots(this.check), this.root.as_ref())
                })
                .await
                .map_err(|e| {
                    StoreError::unavailable(format!("loading the TLS roots failed: {e}"))
                })?;
                loaded.map(MakeRustlsConnect::new)
            })
            .await
            .map_err(BoxError::from)?;
        Ok(made.clone())
    }
}

impl MakeTlsConnect<Socket> for DeferredTls {
    type Stream = RustlsStream;
    type TlsConnect = DeferredConnect;
    type Error = Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<DeferredConnect, Infallible> {
        Ok(DeferredConnect {
            shared: self.shared.clone(),
            domain: domain.to_owned(),
        })
    }
}

/// One TLS handshake of a [`DeferredTls`].
struct DeferredConnect {
    shared: Arc<Deferred>,
    domain: String,
}

impl TlsConnect<Socket> for DeferredConnect {
    type Stream = RustlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, BoxError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let mut make = self.shared.connector().await?;
            let connect = match MakeTlsConnect::<Socket>::make_tls_connect(&mut make, &self.domain)
            {
                Ok(c) => c,
                Err(never) => match never {},
            };
            Ok(connect.connect(stream).await?)
        })
    }
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The rustls configuration for `plan` (not [`Plan::Off`]); reads the trusted roots (the
/// `root` file, else the system's) when the plan checks certificates. Blocking.
fn tls_config(
    ssl: SslMode,
    plan: Plan,
    root: Option<&PathBuf>,
) -> Result<ClientConfig, StoreError> {
    let check = match plan {
        Plan::Off | Plan::NoCheck => Check::Nothing,
        Plan::Roots(check) => check,
    };
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::config(format!("TLS setup failed: {e}")))?;
    let chain = match check {
        Check::ChainAndName => {
            return Ok(builder
                .with_root_certificates(trusted_roots(ssl, root)?)
                .with_no_client_auth());
        }
        Check::Nothing => None,
        Check::Chain => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(trusted_roots(ssl, root)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| StoreError::config(format!("TLS setup failed: {e}")))?,
        ),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LaxCheck {
            chain,
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_no_client_auth())
}

/// The roots certificates must lead to: the `Root Certificate` file's, else the system's.
/// Blocking (reads files).
fn trusted_roots(ssl: SslMode, root: Option<&PathBuf>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = root {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| {
                StoreError::config(format!("Root Certificate `{shown}` cannot be read: {e}"))
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                StoreError::config(format!("Root Certificate `{shown}` is not valid PEM: {e}"))
            })?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(StoreError::config(format!(
                "Root Certificate `{shown}` holds no usable CA certificate"
            )));
        }
    } else {
        roots = system_roots();
        if roots.is_empty() {
            return Err(StoreError::config(format!(
                "SSL Mode={ssl:?} needs trusted CA certificates but the system has none; install them (e.g. the ca-certificates package) or set Root Certificate=<path to the server's CA in PEM>"
            )));
        }
    }
    Ok(roots)
}

/// A check laxer than WebPKI's. Without `chain`, any server certificate is accepted (Npgsql's
/// `Require`/`Prefer`, or `Trust Server Certificate=true`): the link is encrypted, the peer
/// not authenticated. With it (`VerifyCA`), the full WebPKI check, except that a certificate
/// issued for another name is accepted: rustls checks the chain (and validity dates) before
/// the name, so a name error means everything else passed. Handshake signatures are checked
/// either way, so the server must hold the key of the certificate it sent.
#[derive(Debug)]
struct LaxCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LaxCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pg_connstr as connstr;

    fn spec(s: &str) -> ConnSpec {
        connstr::parse(s).expect("valid string")
    }

    fn build_pool(spec: &ConnSpec, load: Load) -> Result<Pool, StoreError> {
        pool_of(spec, &Connector::new(spec, load)?)
    }

    #[test]
    fn building_needs_no_server_and_respects_the_bound() {
        let pool = build_pool(
            &spec("Host=nowhere.invalid;Username=u;Maximum Pool Size=3"),
            Load::Now,
        )
        .expect("pool builds without connecting");
        assert_eq!(pool.status().max_size, 3);
        for mode in ["Disable", "Allow", "Prefer", "Require"] {
            let s = spec(&format!("Host=h;Username=u;SSL Mode={mode}"));
            assert!(build_pool(&s, Load::Now).is_ok(), "{mode}");
            assert!(build_pool(&s, Load::Deferred).is_ok(), "{mode}");
        }
        let s = spec("Host=h;Username=u;SSL Mode=VerifyFull;Root Certificate=/nonexistent/ca.pem");
        let e = build_pool(&s, Load::Now).expect_err("missing root file");
        assert!(e.contains("Root Certificate"), "{e}");
        // Deferred: nothing is read while building (the request path), so it builds.
        assert!(build_pool(&s, Load::Deferred).is_ok());
        assert_eq!(
            create_timeout(&spec("Host=a,b;Username=u;Timeout=5")),
            Some(Duration::from_secs(15))
        );
        assert_eq!(create_timeout(&spec("Host=a;Username=u;Timeout=0")), None);
    }

    #[test]
    fn every_wait_has_a_bound_by_default() {
        let pool = build_pool(&spec("Host=h;Username=u"), Load::Now).expect("builds");
        let t = pool.timeouts();
        assert_eq!(t.wait, Some(Duration::from_secs(15)));
        assert_eq!(t.create, Some(Duration::from_secs(20)));
        assert_eq!(t.recycle, Some(RECYCLE_CHECK));
        let limits = Limits::of(&spec("Host=h;Username=u"));
        assert_eq!(limits.command, Some(Duration::from_secs(30)));
        assert_eq!(limits.checkout(), Some(Duration::from_secs(15 + 3 + 20)));
        // A short Command Timeout also shortens the reuse check.
        let pool =
            build_pool(&spec("Host=h;Username=u;Command Timeout=1"), Load::Now).expect("builds");
        assert_eq!(pool.timeouts().recycle, Some(Duration::from_secs(1)));
        // Timeout=0 is Npgsql's "wait forever" for the connection; statements stay bounded.
        let limits = Limits::of(&spec("Host=h;Username=u;Timeout=0"));
        assert_eq!(limits.checkout(), None);
        assert_eq!(limits.command, Some(Duration::from_secs(30)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn deferred_roots_fail_at_connect_without_blocking_and_retry() {
        let s = spec(
            "Host=127.0.0.1;Port=1;Username=u;SSL Mode=VerifyFull;Root Certificate=/nonexistent/ca.pem",
        );
        let tls = DeferredTls::new(&s);
        let e = match tls.shared.clone().connector().await {
            Ok(_) => panic!("a missing file cannot give roots"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("Root Certificate"), "{e}");
        assert!(tls.shared.ready.get().is_none(), "a failure is not kept");
    }
}

#![allow(dead_code)]
//! One bounded connection pool per store, with TLS as the connection string asks.
//!
//! TLS follows Npgsql's `SSL Mode`: `Disable` never; `Allow`/`Prefer` try TLS and fall back to
//! plain; `Require` insists on TLS but does not check the certificate (nor does `Prefer`, nor
//! `Trust Server Certificate=true`); `VerifyCA` checks the chain against the trusted roots;
//! `VerifyFull` also checks the host name. Trusted roots are the system's, or only those in the
//! `Root Certificate` file when one is named. TLS is rustls with the ring provider, chosen
//! explicitly so no process-wide default provider is needed.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::connstr::{ConnSpec, SslMode};

/// Extra time, beyond the connect timeouts, that opening a connection (TLS handshake,
/// authentication, search path) may take before the pool gives up on it.
const SETUP_ALLOWANCE: Duration = Duration::from_secs(10);

/// Builds a pool for `spec`: at most `spec.max_pool` connections, TLS per `spec.ssl`, a cheap
/// recycle check, `Search Path` set on each new connection. Connects lazily: building needs
/// no runtime and no server; the first `get()` connects. The error is safe to show.
pub(crate) fn build_pool(spec: &ConnSpec) -> Result<Pool, String> {
    let mut pg = spec.config.clone();
    pg.ssl_mode(spec.ssl.to_tokio());
    pg.options(session_options(spec.config.get_options()));
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls_config(spec)? {
        None => Manager::from_config(pg, NoTls, manager_config),
        Some(tls) => Manager::from_config(pg, MakeRustlsConnect::new(tls), manager_config),
    };
    let mut builder = Pool::builder(manager)
        .max_size(spec.max_pool.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(create_timeout(spec))
        .recycle_timeout(Some(SETUP_ALLOWANCE));
    if let Some(search_path) = &spec.search_path {
        builder = builder.post_create(search_path_hook(search_path.clone()));
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// The session settings every connection starts with: the connection string's `Options`,
/// then `TimeZone=UTC` (last, so it wins). Hangfire.PostgreSql before schema v19 (1.9.10)
/// keeps `expireat` as `timestamp without time zone` holding naive UTC, and deletes rows
/// whose `expireat < now() at time zone 'UTC'`; a `now() + interval` stored into such a
/// column is converted in the session's time zone, so only a UTC session writes the time
/// Hangfire means. (On `timestamptz` columns the session zone changes nothing.)
fn session_options(given: Option<&str>) -> String {
    match given.map(str::trim).filter(|o| !o.is_empty()) {
        Some(o) => format!("{o} -c TimeZone=UTC"),
        None => "-c TimeZone=UTC".to_owned(),
    }
}

/// How long creating one connection may take: each host's connect timeout, plus time for the
/// handshake; unbounded when the string sets `Timeout=0`.
fn create_timeout(spec: &ConnSpec) -> Option<Duration> {
    let per_host = *spec.config.get_connect_timeout()?;
    let hosts = u32::try_from(spec.config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
    Some(
        per_host
            .saturating_mul(hosts)
            .saturating_add(SETUP_ALLOWANCE),
    )
}

/// Sets the session's `search_path` as Npgsql's `Search Path` does, via a bound parameter.
fn search_path_hook(search_path: String) -> Hook {
    let search_path: Arc<str> = search_path.into();
    Hook::async_fn(move |client, _metrics| {
        let search_path = search_path.clone();
        Box::pin(async move {
            client
                .execute(
                    "SELECT set_config('search_path', $1, false)",
                    &[&&*search_path],
                )
                .await
                .map_err(HookError::Backend)?;
            Ok(())
        })
    })
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The rustls configuration `spec` calls for, or `None` for no TLS.
fn tls_config(spec: &ConnSpec) -> Result<Option<ClientConfig>, String> {
    let check = match spec.ssl {
        SslMode::Disable => return Ok(None),
        _ if spec.trust_server_certificate => Check::Nothing,
        SslMode::Allow | SslMode::Prefer | SslMode::Require => Check::Nothing,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::ChainAndName,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let config = match check {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Check::ChainAndName => builder
            .with_root_certificates(trusted_roots(spec)?)
            .with_no_client_auth(),
        Check::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(trusted_roots(spec)?),
                provider,
            )
            .build()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyCheck { inner }))
                .with_no_client_auth()
        }
    };
    Ok(Some(config))
}

/// The roots certificates must lead to: the `Root Certificate` file's, else the system's.
fn trusted_roots(spec: &ConnSpec) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &spec.root_certificate {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("Root Certificate `{shown}` cannot be read: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("Root Certificate `{shown}` is not valid PEM: {e}"))?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "Root Certificate `{shown}` holds no usable CA certificate"
            ));
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system CA certificate could not be loaded");
        }
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            return Err(format!(
                "SSL Mode={:?} needs trusted CA certificates but the system has none; install them (e.g. the ca-certificates package) or set Root Certificate=<path to the server's CA in PEM>",
                spec.ssl
            ));
        }
    }
    Ok(roots)
}

/// Accepts any server certificate (Npgsql's `Require`/`Prefer`, or `Trust Server
/// Certificate=true`): the link is encrypted, the peer not authenticated. Handshake
/// signatures are still checked, so the server must hold the key of the certificate it sent.
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

/// `VerifyCA`: the full WebPKI check, except that a certificate issued for another name is
/// accepted. rustls checks the chain (and validity dates) before the name, so a name error
/// means everything else passed.
#[derive(Debug)]
struct ChainOnlyCheck {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
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
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::connstr;

    #[test]
    fn sessions_run_in_utc_after_the_given_options() {
        assert_eq!(session_options(None), "-c TimeZone=UTC");
        assert_eq!(session_options(Some("  ")), "-c TimeZone=UTC");
        assert_eq!(
            session_options(Some("-c statement_timeout=5000")),
            "-c statement_timeout=5000 -c TimeZone=UTC"
        );
    }

    #[test]
    fn building_needs_no_server_and_respects_the_bound() {
        let spec = connstr::parse("Host=nowhere.invalid;Username=u;Maximum Pool Size=3")
            .expect("valid string");
        let pool = build_pool(&spec).expect("pool builds without connecting");
        assert_eq!(pool.status().max_size, 3);
        for mode in ["Disable", "Allow", "Prefer", "Require"] {
            let spec = connstr::parse(&format!("Host=h;Username=u;SSL Mode={mode}"))
                .expect("valid string");
            assert!(build_pool(&spec).is_ok(), "{mode}");
        }
        let spec = connstr::parse(
            "Host=h;Username=u;SSL Mode=VerifyFull;Root Certificate=/nonexistent/ca.pem",
        )
        .expect("valid string");
        let e = build_pool(&spec).expect_err("missing root file");
        assert!(e.contains("Root Certificate"), "{e}");
        assert_eq!(
            create_timeout(&connstr::parse("Host=a,b;Username=u;Timeout=5").expect("valid string")),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            create_timeout(&connstr::parse("Host=a;Username=u;Timeout=0").expect("valid string")),
            None
        );
    }
}

//! `jobagent-relay`: deployed beside the scheduling center, the only process that holds the
//! store's credentials. Job agents configured with `JOBAGENT_STORE=relay+http://host:port`
//! and a token write their consoles, results, heartbeats, cluster records and locks through
//! it. Stateless: run as many as you like behind one address. See `docs/relay.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use jobagent::__relay::{RelayConfig, parse_tenants, router};

/// Everything is read from the environment (or the same-named flags).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, env = "JOBAGENT_RELAY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// The store: a connection string or URL, as JOBAGENT_STORE takes it (a secret).
    #[arg(long, env = "JOBAGENT_RELAY_STORE", hide_env_values = true)]
    store: String,
    /// The store's type when the string is not a URL: postgresql, mysql or redis.
    #[arg(long, env = "JOBAGENT_RELAY_STORE_TYPE")]
    store_type: Option<String>,
    /// Schema (PostgreSQL), table prefix (MySQL) or key prefix (Redis); empty: the default.
    #[arg(long, env = "JOBAGENT_RELAY_STORE_SCHEMA", default_value = "")]
    schema: String,
    /// Days until written rows expire.
    #[arg(long, env = "JOBAGENT_RELAY_STORE_EXPIRE_DAYS", default_value_t = 7.0)]
    expire_days: f64,
    /// The services' tokens, comma-separated: `<service>:<secret>`, each optionally followed
    /// by ` lock=<name or prefix*>` grants (secrets).
    #[arg(long, env = "JOBAGENT_RELAY_TOKENS", hide_env_values = true)]
    tokens: Option<String>,
    /// A file of tokens, one `<service>:<secret> [lock=<name or prefix*>]...` a line (`#`
    /// starts a comment); read once at start, beside JOBAGENT_RELAY_TOKENS.
    #[arg(long, env = "JOBAGENT_RELAY_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Take a result only for a job Processing in the center's storage (true unless the
    /// store has no Hangfire job tables, as a test's).
    #[arg(long, env = "JOBAGENT_RELAY_CHECK_JOBS", default_value_t = true, action = clap::ArgAction::Set)]
    check_jobs: bool,
    /// A PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "JOBAGENT_RELAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "JOBAGENT_RELAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The largest request body, in bytes.
    #[arg(long, env = "JOBAGENT_RELAY_MAX_BODY", default_value_t = 8 * 1024 * 1024)]
    max_body: usize,
    /// The most lines in one console batch.
    #[arg(long, env = "JOBAGENT_RELAY_MAX_LINES", default_value_t = 10_000)]
    max_lines: usize,
    /// Requests per second per token.
    #[arg(long, env = "JOBAGENT_RELAY_RATE", default_value_t = 2_000)]
    rate: u32,
    /// How often the count of requests refused for a wrong token is logged, in seconds.
    #[arg(long, env = "JOBAGENT_RELAY_REFUSED_LOG_SECS", default_value_t = 60.0)]
    refused_log_secs: f64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobagent-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobagent-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let mut tenants = match args.tokens.as_deref() {
        Some(tokens) => parse_tenants(tokens, ',', "JOBAGENT_RELAY_TOKENS")?,
        None => Vec::new(),
    };
    if let Some(path) = &args.tokens_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "JOBAGENT_RELAY_TOKENS_FILE: cannot read {}: {e}",
                path.display()
            )
        })?;
        tenants.extend(parse_tenants(
            &text,
            '\n',
            &format!("JOBAGENT_RELAY_TOKENS_FILE {}", path.display()),
        )?);
    }
    let mut config = RelayConfig::new(args.store, tenants);
    config.check_jobs = args.check_jobs;
    config.store_type = match args.store_type.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(
            t.parse()
                .map_err(|e| format!("JOBAGENT_RELAY_STORE_TYPE: {e}"))?,
        ),
    };
    config.prefix = args.schema;
    config.expire_days = args.expire_days;
    config.max_body = args.max_body;
    config.max_lines = args.max_lines;
    config.rate_per_token = args.rate;
    config.refused_log_every = Duration::try_from_secs_f64(args.refused_log_secs)
        .map_err(|e| format!("JOBAGENT_RELAY_REFUSED_LOG_SECS: {e}"))?;
    let (app, store) = router(config).map_err(|e| format!("JOBAGENT_RELAY_STORE: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    // Bounded: header read time (and idle keep-alive), body time, open connections
    // (JOBAGENT_SERVE_*; docs/security.md, "Serving bounds").
    let limits = jobagent::ServeLimits::from_env().map_err(|e| e.to_string())?;
    let server = jobagent::serve(listener, app)
        .limits(limits)
        .with_graceful_shutdown(stop_on_signal());
    let server = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = tls_config(&cert, &key)
                .map_err(|e| format!("JOBAGENT_RELAY_TLS_CERT / _KEY: {e}"))?;
            println!("jobagent-relay listening on https://{addr}");
            tracing::info!(%addr, %store, tls = true, "jobagent-relay serving");
            server.tls(Arc::new(tls))
        }
        _ => {
            println!("jobagent-relay listening on http://{addr}");
            tracing::info!(%addr, %store, tls = false, "jobagent-relay serving");
            server
        }
    };
    server.await.map_err(|e| format!("serving on {addr}: {e}"))
}

/// The TLS configuration of a PEM certificate chain and its private key (ring, as the rest of
/// the workspace).
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(jobagent::__relay::crypto_provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| e.to_string())
}

/// SIGTERM or Ctrl-C: stop accepting, let requests in flight finish (10 s at most, the
/// server's drain time).
async fn stop_on_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("jobagent-relay stopping");
}

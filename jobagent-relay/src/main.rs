//! `jobagent-relay`: deployed beside the scheduling center, the only process that holds the
//! store's credentials. Job agents configured with `JOBAGENT_STORE=relay+http://host:port`
//! and a token write their consoles, results, heartbeats, cluster records and locks through
//! it. Stateless: run as many as you like behind one address. See `docs/relay.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agent_sdk::__relay::{RelayConfig, router};
use clap::Parser;

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
    /// The accepted bearer tokens, comma-separated (secrets).
    #[arg(long, env = "JOBAGENT_RELAY_TOKENS", hide_env_values = true)]
    tokens: String,
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
    let mut config = RelayConfig::new(
        args.store,
        args.tokens
            .split(',')
            .map(|t| t.trim().to_owned())
            .collect(),
    );
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
    let (app, store) = router(config).map_err(|e| format!("JOBAGENT_RELAY_STORE: {e}"))?;
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let handle = axum_server::Handle::new();
    tokio::spawn(stop_on_signal(handle.clone()));
    let app = app.into_make_service();
    match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            // ring, as the rest of the tree; rustls 0.23.48 deprecates ring's provider only for
            // its lack of post-quantum key exchange, and ring has no other constructor.
            #[allow(deprecated)]
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|e| format!("JOBAGENT_RELAY_TLS_CERT / _KEY: {e}"))?;
            println!("jobagent-relay listening on https://{addr}");
            tracing::info!(%addr, %store, tls = true, "jobagent-relay serving");
            axum_server::from_tcp_rustls(listener, tls)
                .map_err(|e| format!("cannot serve on {addr}: {e}"))?
                .handle(handle)
                .serve(app)
                .await
        }
        _ => {
            println!("jobagent-relay listening on http://{addr}");
            tracing::info!(%addr, %store, tls = false, "jobagent-relay serving");
            axum_server::from_tcp(listener)
                .map_err(|e| format!("cannot serve on {addr}: {e}"))?
                .handle(handle)
                .serve(app)
                .await
        }
    }
    .map_err(|e| format!("serving on {addr}: {e}"))
}

/// SIGTERM or Ctrl-C: stop accepting, let requests in flight finish (10 s at most).
async fn stop_on_signal(handle: axum_server::Handle<SocketAddr>) {
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
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
}

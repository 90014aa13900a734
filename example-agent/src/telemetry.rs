//! The service's telemetry, both optional and off by default:
//!
//! - Prometheus metrics (`JOBAGENT_METRICS_LISTEN`): a recorder for the `metrics` facade the
//!   agent library emits through, scraped at `GET /metrics` on a listener of its own.
//! - OTLP traces (`OTEL_EXPORTER_OTLP_ENDPOINT`): the `tracing` spans, job runs included,
//!   exported as OTLP/HTTP JSON to `<endpoint>/v1/traces` by a batch processor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The log filter without `RUST_LOG`: `info`, and the agent's run spans (a `DEBUG` span of
/// target `jobagent::run`), so every log line of a run carries its class, job id and trace id.
pub(crate) const DEFAULT_FILTER: &str = "info,jobagent::run=debug";

/// Histogram buckets (seconds) of `jobagent_run_duration_seconds`: a run lasts from a few
/// milliseconds to hours.
const RUN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 7200.0, 14400.0,
];

/// Histogram buckets (seconds) of `jobagent_store_op_duration_seconds`: a store operation
/// takes from 1 ms to, at worst, 30 s.
const STORE_OP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the Prometheus recorder's upkeep runs (draining histogram buffers).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long shutting down may wait for the last spans to reach the collector.
const TRACES_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The address of the metrics listener: `JOBAGENT_METRICS_LISTEN`; empty or unset, no metrics.
pub(crate) fn metrics_addr() -> Result<Option<SocketAddr>, String> {
    let raw = std::env::var("JOBAGENT_METRICS_LISTEN").unwrap_or_default();
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        format!("invalid JOBAGENT_METRICS_LISTEN: `{raw}` is not an address like 127.0.0.1:9464")
    })
}

/// Installs the Prometheus recorder as the `metrics` facade's global recorder, so it must run
/// before the agent is built, then serves `GET /metrics` on `addr` and runs the recorder's
/// upkeep, both in background tasks. Returns the address bound.
pub(crate) async fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("jobagent_run_duration_seconds".into()),
            RUN_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("jobagent_store_op_duration_seconds".into()),
                STORE_OP_BUCKETS,
            )
        })
        // Any other duration histogram: the wide range of the runs' buckets.
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), RUN_BUCKETS)
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (JOBAGENT_METRICS_LISTEN): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(handle);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server error: {e}");
        }
    });
    Ok(local)
}

/// `GET /metrics`: the Prometheus text exposition of every metric recorded so far.
async fn render_metrics(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

/// The tracing set-up: what [`Telemetry::shutdown`] has to flush.
pub(crate) struct Telemetry {
    /// The tracer provider exporting spans, when OTLP export is on.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: logs on stdout (ANSI colors only on a
    /// terminal; filter `RUST_LOG`, default `info`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the spans exported over OTLP.
    ///
    /// A trace exporter that cannot be built is logged and left out: the service runs without.
    pub(crate) fn init() -> Self {
        let (provider, failure) = if otlp_configured() {
            match tracer_provider() {
                Ok(provider) => (Some(provider), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        let otel_layer = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer().with_tracer(provider.tracer("example-agent"))
        });
        // Colors only on a terminal: logs collected from a pipe or a file stay plain text.
        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
        tracing_subscriber::registry()
            .with(
                EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
            )
            .with(fmt_layer)
            .with(otel_layer)
            .init();
        if let Some(e) = failure {
            tracing::error!("OTLP trace export is off: {e}");
        } else if provider.is_some() {
            tracing::info!("exporting traces over OTLP/HTTP (JSON)");
        }
        Self { provider }
    }

    /// Exports the spans still buffered and stops the exporter, waiting at most a few
    /// seconds: the spans of the last runs reach the collector before the process exits.
    pub(crate) async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // Shutting down blocks on the batch processor's thread: not on a runtime worker.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(TRACES_SHUTDOWN_TIMEOUT)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flushing the last spans failed: {e}"),
            Err(e) => tracing::warn!("flushing the last spans failed: {e}"),
        }
    }
}

/// Whether an OTLP endpoint for traces is configured, by the standard variables.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

/// Builds the OTLP/HTTP JSON exporter (endpoint, headers, timeout from the standard
/// `OTEL_EXPORTER_OTLP_*` variables; `/v1/traces` appended to `OTEL_EXPORTER_OTLP_ENDPOINT`),
/// the tracer provider batching into it, and makes both the global provider and W3C trace
/// context the global propagator.
fn tracer_provider() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()
        .map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "example-agent".to_owned());
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .with_batch_exporter(LoggedExporter::new(exporter))
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// A span exporter that logs the failures of the exporter it wraps: the first of a series as
/// a warning, the recovery as info, so an absent collector costs one log line, not one per
/// batch. A failed export drops its batch; the service goes on.
#[derive(Debug)]
struct LoggedExporter<E> {
    /// The exporter doing the work.
    inner: E,
    /// Whether the last export failed.
    failing: AtomicBool,
}

impl<E> LoggedExporter<E> {
    /// Wraps `inner`.
    fn new(inner: E) -> Self {
        Self {
            inner,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for LoggedExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            match &result {
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("OTLP trace export works again");
                    }
                }
                Err(e) => {
                    if self.failing.swap(true, Ordering::Relaxed) {
                        tracing::debug!(spans, "OTLP trace export failed again: {e}");
                    } else {
                        tracing::warn!(spans, "OTLP trace export failed, spans dropped: {e}");
                    }
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

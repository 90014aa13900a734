//! The span of a run, and the W3C trace it continues.
//!
//! Every run is a `tracing` span named `job_run` (fields `class`, `job_id`, `center`,
//! `replica`, `trace_id`) entered around the run's task, so the job's own events belong to
//! it. It is a `DEBUG` span of target [`SPAN_TARGET`] (`jobagent::run`), as per-request
//! spans are in tower-http: a log formatter formats its fields for every run, which costs a
//! service dispatching thousands of runs a second a fifth of its throughput, so a service
//! turns it on with a filter directive (`RUST_LOG=info,jobagent::run=debug`). When the job's headers (the center passes the headers configured on the job through,
//! `x-job-agent-header`) hold a W3C `traceparent`, the span's `trace_id` is that trace's id
//! and, with the `opentelemetry` feature and a `tracing-opentelemetry` layer installed, the
//! span's OpenTelemetry parent is the remote span it names: exporters link the run into the
//! caller's trace. Without one, a run starts a trace of its own.

use std::collections::BTreeMap;
use std::fmt;

use tracing::Span;

/// The target of the run span, for filter directives.
pub(crate) const SPAN_TARGET: &str = "jobagent::run";

/// A parsed W3C `traceparent` (version 00 layout; later versions are read by the same prefix,
/// as the specification asks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: u128,
    pub(crate) parent_id: u64,
    pub(crate) flags: u8,
}

impl TraceParent {
    /// Parses `version-traceid-parentid-flags`; `None` for anything the specification says to
    /// ignore (wrong lengths, upper-case or non-hex digits, version `ff`, all-zero ids).
    pub(crate) fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) {
            return None;
        }
        // Version 00 has exactly four fields; a later version may append more.
        if !hex(flags, 2) || (version == "00" && rest.is_some()) {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            parent_id: u64::from_str_radix(parent, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// The `traceparent` among a job's headers (header names ignore case).
    pub(crate) fn of(headers: &BTreeMap<String, String>) -> Option<Self> {
        headers
            .iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("traceparent"))
            .and_then(|(_, v)| Self::parse(v))
    }
}

/// A trace id as W3C writes it: 32 lower-case hex digits.
pub(crate) struct TraceId(pub(crate) u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: `{:032x}` of a u128 goes through the padding machinery on every run.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, byte) in self.0.to_be_bytes().iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// The span of one run. Its `trace_id` is the caller's (from `traceparent`) or, without
/// one, the OpenTelemetry trace the span starts (feature `opentelemetry`) or a fresh random
/// id, so every log line of a run carries one id to search by.
pub(crate) fn run_span(
    class: &'static str,
    job_id: &str,
    center: Option<&str>,
    replica: &str,
    headers: &BTreeMap<String, String>,
) -> Span {
    // Fields are recorded as `Display`: a log formatter then writes them as they are, where
    // `&str` values would be escaped character by character (most of a span's cost).
    let parent = TraceParent::of(headers);
    #[cfg(not(feature = "opentelemetry"))]
    {
        if !tracing::enabled!(target: SPAN_TARGET, tracing::Level::DEBUG) {
            return Span::none();
        }
        let trace_id = parent.map_or_else(|| rand::random::<u128>().max(1), |p| p.trace_id);
        tracing::debug_span!(
            target: SPAN_TARGET,
            parent: None,
            "job_run",
            class = %class,
            job_id = %job_id,
            center = %center.unwrap_or(""),
            replica = %replica,
            trace_id = %TraceId(trace_id),
        )
    }
    #[cfg(feature = "opentelemetry")]
    {
        let span = tracing::debug_span!(
            target: SPAN_TARGET,
            parent: None,
            "job_run",
            class = %class,
            job_id = %job_id,
            center = %center.unwrap_or(""),
            replica = %replica,
            trace_id = tracing::field::Empty,
        );
        if span.is_disabled() {
            return span;
        }
        let trace_id = match parent {
            Some(p) => {
                otel::set_parent(&span, p);
                p.trace_id
            }
            None => otel::trace_id(&span).unwrap_or_else(|| rand::random::<u128>().max(1)),
        };
        span.record("trace_id", tracing::field::display(TraceId(trace_id)));
        span
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::TraceParent;

    /// Makes the remote span `p` names the OpenTelemetry parent of `span`.
    pub(super) fn set_parent(span: &tracing::Span, p: TraceParent) {
        let remote = SpanContext::new(
            TraceId::from_bytes(p.trace_id.to_be_bytes()),
            SpanId::from_bytes(p.parent_id.to_be_bytes()),
            TraceFlags::new(p.flags & 1),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(cx);
    }

    /// The trace the span starts, when an OpenTelemetry layer gave it one.
    pub(super) fn trace_id(span: &tracing::Span) -> Option<u128> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid()
            .then(|| u128::from_be_bytes(sc.trace_id().to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_writes_it_and_bad_ones_are_ignored() {
        // The example of https://www.w3.org/TR/trace-context/#examples-of-http-traceparent-headers
        let p = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(
            TraceId(p.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(p.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(p.flags, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may append fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        let headers = BTreeMap::from([(
            "TraceParent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_owned(),
        )]);
        assert_eq!(TraceParent::of(&headers).map(|p| p.flags), Some(0));
    }
}

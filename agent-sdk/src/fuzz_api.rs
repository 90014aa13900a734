//! Not public API: thin entry points into crate-private code for the fuzz targets in `fuzz/`.
//!
//! Nothing here is covered by semver; it exists so that `cargo fuzz` can reach the request
//! decoder, the job-item scan, the Npgsql connection-string parser and the console-line
//! encoder without making them public.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::console::{ConsoleColor, ConsoleLine};
use crate::request::Dispatch;
use crate::store::line::LineEncoder;
#[cfg(feature = "postgres")]
use crate::store::pg_connstr;

/// Not public API: used by the fuzz targets.
///
/// Decodes a center request as the agent's endpoint does: the headers (names and values that
/// HTTP itself would refuse are skipped, as the HTTP server never hands them over; repeated
/// names are kept) and the body. `Err` holds the refusal text (the `err:` body without the
/// prefix).
pub fn decode_request(headers: &[(String, String)], body: &[u8]) -> Result<(), String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    match Dispatch::decode(&map, body) {
        Ok(dispatch) => {
            // `Debug` of a dispatch is logged; it must hold up for any input too.
            let _ = format!("{dispatch:?}");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Not public API: used by the fuzz targets.
///
/// Checks the dispatch path's fast job-item scan against serde_json on `text`. `Err`
/// describes a disagreement: the scan accepted what serde_json refuses, or read another
/// `AgentTimeout`.
pub fn check_item_scan(text: &str) -> Result<(), String> {
    match crate::item::scan_disagreement(text) {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

#[cfg(feature = "postgres")]
/// Not public API: used by the fuzz targets.
///
/// Parses an Npgsql connection string (or a `postgres://` URL) as the agent does for
/// `HangfireDb` and a local store. `Ok` holds what the agent may log about it: the parsed
/// settings' `Debug` output, a newline, `identity: ` and the store identity. `Err` holds the
/// error text and its `Debug`. Neither may ever contain the password.
pub fn parse_connection_string(s: &str) -> Result<String, String> {
    match pg_connstr::parse(s) {
        Ok(spec) => Ok(format!("{spec:?}\nidentity: {}", spec.identity())),
        Err(e) => Err(format!("{e} / {e:?}")),
    }
}

/// Not public API: used by the fuzz targets.
///
/// Encodes one console line as the store writer does, as the first line of a console that
/// started `offset_ms` before the line was written (negative: after). Returns the set
/// member and, for a text stored by reference, the hash field and text.
///
/// Only inputs the agent can produce reach the encoder: `offset_ms` is clamped to ±10,000
/// years (a center `StartTime` is RFC 3339, years 0 to 9999), and a progress value is clamped
/// and rounded as [`ProgressBar::set`](crate::ProgressBar::set) does (NaN is 0, then
/// 0..=100, one decimal). Colors are interned for the `'static` lifetime
/// [`ConsoleColor::custom`] needs; past 65,536 distinct colors (or 8 MiB of them) a new
/// color is written as `#ffffff` instead, so a long fuzzing run cannot exhaust memory.
pub fn encode_console_line(
    text: &str,
    color: Option<&str>,
    progress: Option<(f64, Option<&str>)>,
    offset_ms: i64,
) -> (String, Option<(String, String)>) {
    const MAX_OFFSET_MS: i64 = 10_000 * 366 * 86_400 * 1_000;
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let offset = offset_ms.clamp(-MAX_OFFSET_MS, MAX_OFFSET_MS);
    let shift = Duration::from_millis(offset.unsigned_abs());
    let at = if offset >= 0 {
        start.checked_add(shift)
    } else {
        start.checked_sub(shift)
    }
    .unwrap_or(start);
    let progress = progress.map(|(p, name)| {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
        ((p * 10.0).round() / 10.0, name.map(str::to_owned))
    });
    let line = ConsoleLine {
        at,
        text: text.to_owned(),
        color: color.map(intern_color),
        progress,
    };
    let encoded = LineEncoder::new(start).encode(&line);
    (encoded.value, encoded.reference)
}

/// A `'static` color for `hex`, leaked once per distinct text, within a bound.
fn intern_color(hex: &str) -> ConsoleColor {
    const MAX_COLORS: usize = 65_536;
    const MAX_BYTES: usize = 8 * 1024 * 1024;
    struct Interned {
        set: HashSet<&'static str>,
        bytes: usize,
    }
    static COLORS: OnceLock<Mutex<Interned>> = OnceLock::new();
    let colors = COLORS.get_or_init(|| {
        Mutex::new(Interned {
            set: HashSet::new(),
            bytes: 0,
        })
    });
    let mut colors = crate::sync::lock(colors);
    if let Some(&known) = colors.set.get(hex) {
        return ConsoleColor::custom(known);
    }
    if colors.set.len() >= MAX_COLORS || colors.bytes + hex.len() > MAX_BYTES {
        return ConsoleColor::INFO;
    }
    let leaked: &'static str = Box::leak(hex.to_owned().into_boxed_str());
    colors.bytes += leaked.len();
    colors.set.insert(leaked);
    ConsoleColor::custom(leaked)
}

//! Time formatting shared by `detail`, heartbeats and console offsets.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 UTC text of a system time, e.g. `2026-01-02T03:04:05.123Z`.
pub(crate) fn fmt_utc(at: SystemTime) -> String {
    let dt = OffsetDateTime::from(at);
    let ms = dt
        .replace_nanosecond((dt.nanosecond() / 1_000_000) * 1_000_000)
        .unwrap_or(dt);
    ms.format(&Rfc3339)
        .unwrap_or_else(|_| "(unrepresentable time)".to_owned())
}

/// Parses the center's `StartTime` (RFC 3339, up to 7 fraction digits, `Z` or an offset).
pub(crate) fn parse_utc(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A short human duration: `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1_000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let t = parse_utc("2026-01-02T03:04:05.1234567Z").expect("center format");
        assert_eq!(fmt_utc(t), "2026-01-02T03:04:05.123Z");
        assert!(parse_utc("2026-01-02T03:04:05+08:00").is_some());
        assert!(parse_utc("yesterday").is_none());
        assert_eq!(fmt_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(fmt_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_duration(Duration::from_secs(245)), "4m 05s");
    }
}

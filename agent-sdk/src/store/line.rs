//! Encoding console lines the way Hangfire.Console stores them.
//!
//! A line is a JSON object with keys in the order `t, r, s, c, p, n`; `t` is the offset in
//! seconds from the console's start, rounded to milliseconds and strictly increasing per
//! console (a line that would not be later than the previous one gets the previous `t` plus
//! 0.0001). Long texts go into the console's hash and the line holds a reference.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::console::ConsoleLine;

/// Texts longer than this (in UTF-16 units) are stored by reference.
const MAX_INLINE_UTF16: usize = 220;
/// Lines whose JSON is longer than this (in UTF-16 units) store their text by reference.
const MAX_LINE_UTF16: usize = 256;

/// One encoded line: the set member and its score, and maybe a hash reference to write first.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub(crate) struct EncodedLine {
    pub(crate) value: String,
    pub(crate) score: f64,
    pub(crate) reference: Option<(String, String)>,
    /// For bar `1`: its value as the console hash's `progress` field.
    pub(crate) progress_field: Option<String>,
}

/// The per-console state of the encoding: the start time and the previous offset.
#[derive(Debug)]
pub(crate) struct LineEncoder {
    start: SystemTime,
    /// The previous offset, in units of 0.0001 s.
    last: Option<i64>,
}

impl LineEncoder {
    pub(crate) fn new(start: SystemTime) -> Self {
        Self { start, last: None }
    }

    /// The next offset for a line written at `at`, in units of 0.0001 s.
    fn offset(&mut self, at: SystemTime) -> i64 {
        let secs = match at.duration_since(self.start) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let mut units = (secs * 1000.0).round() as i64 * 10;
        if let Some(last) = self.last
            && units <= last
        {
            units = last + 1;
        }
        self.last = Some(units);
        units
    }

    /// One line encoded whole (the tests and the `console_encoder` fuzz target).
    #[cfg(any(test, feature = "fuzz"))]
    pub(crate) fn encode(&mut self, line: &ConsoleLine) -> EncodedLine {
        let (mut encoded, field) = self.encode_parts(line);
        encoded.reference = field.map(|f| (f, line.text.clone()));
        encoded
    }

    /// Like [`encode`](Self::encode), moving a long text into its reference instead of
    /// copying it (a buffered console holds each text once).
    pub(crate) fn encode_owned(&mut self, line: ConsoleLine) -> EncodedLine {
        let (mut encoded, field) = self.encode_parts(&line);
        encoded.reference = field.map(|f| (f, line.text));
        encoded
    }

    /// The encoded line without its reference text, and the reference's field if it has one.
    fn encode_parts(&mut self, line: &ConsoleLine) -> (EncodedLine, Option<String>) {
        let units = self.offset(line.at);
        let t = format_units(units);
        // A text of more than 3 bytes per allowed unit is long whatever its characters (a
        // UTF-16 unit takes at most 3 bytes of UTF-8): it is not rendered inline first.
        let long = line.progress.is_none()
            && (line.text.len() > 3 * MAX_INLINE_UTF16 || utf16_len(&line.text) > MAX_INLINE_UTF16);
        let mut value = if long {
            String::new()
        } else {
            self.render(&t, false, &line.text, line)
        };
        let mut field = None;
        if line.progress.is_none() && (long || utf16_len(&value) > MAX_LINE_UTF16) {
            let f = new_reference();
            value = self.render(&t, true, &f, line);
            field = Some(f);
        }
        let progress_field = match &line.progress {
            Some((p, _)) if line.text == "1" => Some(format_progress(*p)),
            _ => None,
        };
        let encoded = EncodedLine {
            value,
            score: units as f64 / 10_000.0,
            reference: None,
            progress_field,
        };
        (encoded, field)
    }

    /// A line written in place of `refused`, at its offset (so offsets stay strictly
    /// increasing and the console keeps its order): `text`, inline, in `line`'s colour.
    /// `text` is short (a marker): it is never moved to a reference.
    pub(crate) fn replacement(&self, refused: &EncodedLine, line: &ConsoleLine) -> EncodedLine {
        let units = (refused.score * 10_000.0).round() as i64;
        EncodedLine {
            value: self.render(&format_units(units), false, &line.text, line),
            score: refused.score,
            reference: None,
            progress_field: None,
        }
    }

    fn render(&self, t: &str, is_ref: bool, s: &str, line: &ConsoleLine) -> String {
        let mut out = String::with_capacity(s.len() + 48);
        out.push_str("{\"t\":");
        out.push_str(t);
        if is_ref {
            out.push_str(",\"r\":true");
        }
        out.push_str(",\"s\":");
        push_json_string(&mut out, s);
        if let Some(c) = line.color {
            out.push_str(",\"c\":");
            push_json_string(&mut out, c.as_str());
        }
        if let Some((p, name)) = &line.progress {
            out.push_str(",\"p\":");
            out.push_str(&format_progress(*p));
            if let Some(n) = name {
                out.push_str(",\"n\":");
                push_json_string(&mut out, n);
            }
        }
        out.push('}');
        out
    }
}

/// `12345` units → `1.2345`; `10000` → `1.0`; negative offsets keep their sign.
fn format_units(units: i64) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let out = format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000);
    let trimmed = out.trim_end_matches('0');
    if trimmed.ends_with('.') {
        format!("{trimmed}0")
    } else {
        trimmed.to_owned()
    }
}

/// Progress as the invariant-culture number with one decimal.
fn format_progress(p: f64) -> String {
    format!("{p:.1}")
}

fn push_json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(json) => out.push_str(&json),
        // Serializing a str cannot fail; write an empty string if it ever did.
        Err(_) => out.push_str("\"\""),
    }
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// A fresh 32-hex-digit field name for a hash reference.
fn new_reference() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleColor;
    use std::time::Duration;

    fn line(start: SystemTime, ms: u64, text: &str) -> ConsoleLine {
        ConsoleLine {
            at: start + Duration::from_millis(ms),
            text: text.to_owned(),
            color: Some(ConsoleColor::INFO),
            progress: None,
        }
    }

    #[test]
    fn key_order_offsets_and_monotonic_t() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut enc = LineEncoder::new(start);
        let a = enc.encode(&line(start, 1234, "hello \"you\""));
        assert_eq!(
            a.value,
            r##"{"t":1.234,"s":"hello \"you\"","c":"#ffffff"}"##
        );
        assert_eq!(a.score, 1.234);
        for (ms, text, t) in [
            (1234, "same ms", r#"{"t":1.2341,"#),
            (1000, "clock went back", r#"{"t":1.2342,"#),
            (3000, "later", r#"{"t":3.0,"#),
        ] {
            let l = enc.encode(&line(start, ms, text));
            assert!(l.value.starts_with(t), "{text}: {}", l.value);
        }
    }

    #[test]
    fn long_and_multibyte_texts_become_references() {
        let start = SystemTime::UNIX_EPOCH;
        let long = LineEncoder::new(start).encode(&line(start, 2, &"a".repeat(221)));
        let (field, text) = long.reference.clone().expect("reference");
        assert_eq!(field.len(), 32);
        assert_eq!(text.len(), 221);
        assert_eq!(
            long.value,
            format!(r##"{{"t":0.002,"r":true,"s":"{field}","c":"#ffffff"}}"##)
        );
        // Each at its own offset, as one console would write them.
        for (name, ms, text, by_reference) in [
            ("200 ASCII characters", 1, "a".repeat(200), false),
            // 120 CJK characters are 120 UTF-16 units, and escape-free JSON: short.
            ("120 CJK characters", 3, "字".repeat(120), false),
            // 111 surrogate pairs are 222 UTF-16 units: by reference.
            ("111 emoji", 4, "😀".repeat(111), true),
            // Quotes escape to two characters each: the JSON passes 256 before the text
            // passes 220.
            ("120 quotes", 5, "\"".repeat(120), true),
        ] {
            let l = LineEncoder::new(start).encode(&line(start, ms, &text));
            assert_eq!(l.reference.is_some(), by_reference, "{name}");
        }
    }

    #[test]
    fn an_owned_line_moves_its_long_text_into_the_reference() {
        let start = SystemTime::UNIX_EPOCH;
        for text in ["a".repeat(221), "字".repeat(221), "b".repeat(1 << 20)] {
            let l = line(start, 1, &text);
            let borrowed = LineEncoder::new(start).encode(&l);
            let owned = LineEncoder::new(start).encode_owned(l);
            let (field, kept) = owned.reference.clone().expect("reference");
            assert_eq!(kept, text);
            assert_eq!(
                owned.value,
                format!(r##"{{"t":0.001,"r":true,"s":"{field}","c":"#ffffff"}}"##)
            );
            assert_eq!(borrowed.reference.map(|(_, t)| t), Some(text));
        }
        let short = LineEncoder::new(start).encode_owned(line(start, 1, "short"));
        assert_eq!(short.reference, None);
        assert_eq!(short.value, r##"{"t":0.001,"s":"short","c":"#ffffff"}"##);
    }

    #[test]
    fn progress_lines() {
        let start = SystemTime::UNIX_EPOCH;
        let mut enc = LineEncoder::new(start);
        let p = enc.encode(&ConsoleLine {
            at: start,
            text: "1".into(),
            color: None,
            progress: Some((42.0, Some("import".into()))),
        });
        assert_eq!(p.value, r#"{"t":0.0,"s":"1","p":42.0,"n":"import"}"#);
        assert_eq!(p.progress_field.as_deref(), Some("42.0"));
        let p2 = enc.encode(&ConsoleLine {
            at: start,
            text: "2".into(),
            color: Some(ConsoleColor::custom("#00ff00")),
            progress: Some((7.5, None)),
        });
        assert_eq!(p2.value, r##"{"t":0.0001,"s":"2","c":"#00ff00","p":7.5}"##);
        assert!(p2.progress_field.is_none());
    }

    #[test]
    fn formats_units() {
        for (units, text) in [
            (0, "0.0"),
            (12_340, "1.234"),
            (10_001, "1.0001"),
            (-5_000, "-0.5"),
        ] {
            assert_eq!(format_units(units), text, "{units}");
        }
    }
}

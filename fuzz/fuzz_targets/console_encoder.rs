//! Fuzzes the console-line encoder (what Hangfire.Console reads from the set).
//!
//! Input format (so the seeds in `corpus/console_encoder/` stay readable), lines:
//! 1. the line's offset from the console start in ms (`-1500`; not a number: 0);
//! 2. the color: `=#rrggbb` (anything after `=`), or anything else for none;
//! 3. the progress: a number, or empty for a plain line;
//! 4. the progress bar name: `=name`, or anything else for none;
//! 5. and the rest (newlines included): the text.
//!
//! Properties: encoding never panics; the line is one JSON object whose keys are, in order,
//! a subsequence of `t, r, s, c, p, n` with `t` and `s` always there; `t` is the offset in
//! seconds (ms precision); `r` is `true` exactly when the text went by reference, and then
//! `s` is a fresh 32-hex-digit field and the reference holds the text, otherwise `s` is the
//! text; a plain line is inline only while its text is at most 220 UTF-16 units and its JSON
//! at most 256; `c`, `p` and `n` are there exactly when given and hold what was given.

#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A JSON object's members in the order they appear.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    members.push((k, v));
                }
                Ok(Ordered(members))
            }
        }
        d.deserialize_map(V)
    }
}

struct Input<'a> {
    offset_ms: i64,
    color: Option<&'a str>,
    progress: Option<(f64, Option<&'a str>)>,
    text: &'a str,
}

fn read_input(s: &str) -> Input<'_> {
    let mut parts = s.splitn(5, '\n');
    let offset_ms = parts.next().unwrap_or("").trim().parse().unwrap_or(0);
    let color = parts.next().and_then(|c| c.strip_prefix('='));
    let progress = parts.next().unwrap_or("");
    let name = parts.next().and_then(|n| n.strip_prefix('='));
    let text = parts.next().unwrap_or("");
    let progress = if progress.trim().is_empty() {
        None
    } else {
        Some((progress.trim().parse().unwrap_or(0.0), name))
    };
    Input {
        offset_ms,
        color,
        progress,
        text,
    }
}

fn utf16(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

const ORDER: [&str; 6] = ["t", "r", "s", "c", "p", "n"];

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let input = read_input(&raw);
    let (value, reference) = jobagent::__fuzz::encode_console_line(
        input.text,
        input.color,
        input.progress,
        input.offset_ms,
    );
    let members = match serde_json::from_str::<Ordered>(&value) {
        Ok(Ordered(m)) => m,
        Err(e) => panic!("not a JSON object ({e}): {value}"),
    };
    let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    let mut at = 0;
    for key in &keys {
        match ORDER[at..].iter().position(|k| k == key) {
            Some(i) => at += i + 1,
            None => panic!("keys out of order or repeated: {keys:?} in {value}"),
        }
    }
    let get = |k: &str| members.iter().find(|(key, _)| key == k).map(|(_, v)| v);

    // t: seconds since the console start, to the millisecond.
    let t = get("t")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no numeric t: {value}"));
    let max_ms = 10_000_i64 * 366 * 86_400 * 1_000;
    let expected = input.offset_ms.clamp(-max_ms, max_ms) as f64 / 1000.0;
    assert!(
        (t - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "t {t} for an offset of {} ms: {value}",
        input.offset_ms
    );

    // s and r: the text inline, or a reference to it.
    let s = get("s")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string s: {value}"));
    match get("r") {
        None => {
            assert_eq!(s, input.text, "s does not round-trip: {value}");
            assert!(reference.is_none(), "a reference without r: {value}");
            if input.progress.is_none() {
                assert!(
                    utf16(input.text) <= 220 && utf16(&value) <= 256,
                    "a long line was written inline ({} UTF-16 units of text, {} of JSON)",
                    utf16(input.text),
                    utf16(&value)
                );
            }
        }
        Some(Value::Bool(true)) => {
            assert!(
                s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()),
                "a reference that is not 32 hex digits: {value}"
            );
            match &reference {
                Some((field, text)) => {
                    assert_eq!(field, s, "the reference field differs from s");
                    assert_eq!(text, input.text, "the referenced text differs");
                }
                None => panic!("r without a reference: {value}"),
            }
            assert!(
                input.progress.is_none(),
                "a progress line by reference: {value}"
            );
            // What the line would have been inline.
            let inline = utf16(&value) - utf16(",\"r\":true") - utf16(&json_string(s))
                + utf16(&json_string(input.text));
            assert!(
                utf16(input.text) > 220 || inline > 256,
                "a short line went by reference ({} UTF-16 units of text, {inline} of JSON)",
                utf16(input.text)
            );
        }
        Some(other) => panic!("r is {other}, not true: {value}"),
    }

    // c: the color as given (past the fuzz API's intern bound, `#ffffff`).
    match (input.color, get("c")) {
        (None, None) => {}
        (Some(c), Some(Value::String(got))) => {
            assert!(got == c || got == "#ffffff", "color {got:?} for {c:?}")
        }
        (given, got) => panic!("color {got:?} for {given:?}: {value}"),
    }

    // p and n: the value as a progress bar shows it, and the name.
    match (input.progress, get("p"), get("n")) {
        (None, None, None) => {}
        (Some((p, name)), Some(got), n) => {
            let want = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
            let want = (want * 10.0).round() / 10.0;
            let got = got
                .as_f64()
                .unwrap_or_else(|| panic!("p is not a number: {value}"));
            assert!((got - want).abs() < 1e-9, "p {got} for {p}: {value}");
            assert_eq!(n.and_then(Value::as_str), name, "bar name: {value}");
        }
        (given, p, n) => panic!("progress {given:?} written as p={p:?} n={n:?}: {value}"),
    }
});

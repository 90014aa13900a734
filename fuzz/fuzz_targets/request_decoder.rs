//! Fuzzes the agent's request decoding (headers + body → a dispatch). It must never panic.
//!
//! Input format (so the seeds in `corpus/request_decoder/` stay readable): header lines up
//! to the first empty line, then the body. A line is `name: value`; `name:= value` sends
//! base64 of `value` (as the center encodes `x-job-body`, `x-job-storage`, ...), so the
//! fuzzer can mutate the JSON inside directly. Lines without `:` become a header with an
//! empty value.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;

fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"\n\n") {
            return (&data[..i], &data[i + 2..]);
        }
        if data[i..].starts_with(b"\r\n\r\n") {
            return (&data[..i], &data[i + 4..]);
        }
        i += 1;
    }
    (data, &[])
}

fn headers(head: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let (name, value) = match text.split_once(':') {
            Some((name, rest)) => match rest.strip_prefix('=') {
                Some(raw) => (name, STANDARD.encode(raw.trim_start().as_bytes())),
                None => (name, rest.trim_start().to_owned()),
            },
            None => (text.as_ref(), String::new()),
        };
        out.push((name.trim().to_owned(), value));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = split_input(data);
    let headers = headers(head);
    match jobagent::__fuzz::decode_request(&headers, body) {
        Ok(()) => {}
        Err(message) => assert!(!message.is_empty(), "a refusal must say what is wrong"),
    }
});

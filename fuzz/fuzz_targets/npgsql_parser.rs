//! Fuzzes the Npgsql connection-string parser (and its `postgres://` URL form).
//!
//! Properties, for any input string `s`:
//! - parsing never panics;
//! - the error never echoes a long input whole (values are shown cut to 40 characters);
//! - the password never reaches the output: `s` is parsed again with a password pair put in
//!   front (`Password="<secret>";` + `s`; for a URL, `password=<secret>` appended to its
//!   query) for two different secrets. Whatever `s` holds, the two outputs (the redacted
//!   `Debug`, or the error) must be equal — they may not depend on the password — and may
//!   not contain either secret. Only the store identity, a keyed hash of the password, may
//!   differ.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// Two passwords that need quoting and escaping, with a marker no message holds by itself.
const SECRETS: [&str; 2] = ["Pw-Z9q\"x;y='1' ü🔑", "Pw-K4w\"a;b='2' é🗝"];
const MARKER: &str = "Pw-";

fn parse(s: &str) -> Result<String, String> {
    jobagent::__fuzz::parse_connection_string(s)
}

fn quoted(secret: &str) -> String {
    format!("\"{}\"", secret.replace('"', "\"\""))
}

fn percent(secret: &str) -> String {
    secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn is_url(s: &str) -> bool {
    let s = s.trim_start().to_ascii_lowercase();
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The output without the identity line (the only part that may depend on the password).
fn without_identity(out: &Result<String, String>) -> Result<&str, &str> {
    match out {
        Ok(text) => Ok(text
            .split_once("\nidentity: ")
            .map_or(text.as_str(), |(d, _)| d)),
        Err(e) => Err(e.as_str()),
    }
}

fn check_no_secret(s: &str, out: &Result<String, String>) {
    let text = match out {
        Ok(t) | Err(t) => t,
    };
    for secret in SECRETS {
        assert!(
            !text.contains(MARKER) && !text.contains(secret),
            "the password leaked\ninput: {s:?}\noutput: {text}"
        );
    }
}

fn with_password(s: &str, secret: &str) -> Option<String> {
    if is_url(s) {
        if s.contains('#') {
            return None;
        }
        let sep = if s.contains('?') { '&' } else { '?' };
        Some(format!("{s}{sep}password={}", percent(secret)))
    } else {
        Some(format!("Password={};{s}", quoted(secret)))
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    if s.contains(MARKER) {
        return;
    }
    let out = parse(s);
    if let Err(e) = &out
        && s.trim().chars().count() > 48
    {
        assert!(
            !e.contains(s.trim()),
            "the error echoes the input\ninput: {s:?}\nerror: {e}"
        );
    }
    let (Some(a), Some(b)) = (with_password(s, SECRETS[0]), with_password(s, SECRETS[1])) else {
        return;
    };
    let (out_a, out_b) = (parse(&a), parse(&b));
    check_no_secret(&a, &out_a);
    check_no_secret(&b, &out_b);
    assert_eq!(
        without_identity(&out_a),
        without_identity(&out_b),
        "the output depends on the password\ninput: {s:?}"
    );
    if let Ok(text) = &out_a {
        // A password is set in both: the Debug output says so, redacted.
        if !text.contains("password: None") {
            assert!(text.contains("<redacted>"), "{text}");
        }
    }
});

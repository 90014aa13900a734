//! What the connection-string parsers share: the ADO.NET `key=value;` tokenizer (Npgsql and
//! MySqlConnector strings), key normalisation and lookup in a backend's key table, the
//! closest known key for a "did you mean", the value readers (port, count, true/false,
//! `%XX`), the secret-safe echo, and the typed error, [`ConnStrError`]. Each backend keeps
//! its own key table and semantics: [`super::pg_connstr`] (Npgsql),
//! `super::mysql::connstr` (MySqlConnector), `super::redis_connstr` (StackExchange.Redis,
//! whose comma-separated format uses only the lookup, the echo and the error).
//!
//! ADO.NET rules (`DbConnectionStringBuilder`): pairs are split by `;`; a value may be quoted
//! with `"` or `'` (a doubled quote inside is a literal quote, `;` inside quotes is literal);
//! `==` in a key is a literal `=`; spaces around keys and unquoted values are dropped. A
//! later pair overrides an earlier one and an empty value restores the default (the
//! backends' settings maps do that).
//!
//! No error holds a password or the whole string: values are echoed only through [`shown`]
//! (by the backends, never for a password), and a key the table does not know is named by
//! its position when it may be the tail of an unquoted password.

// Only MySqlConnector's parser uses every part (Npgsql's names no closest key, and
// StackExchange.Redis's uses only the echo, the closest key and the error).
#![cfg_attr(not(feature = "mysql"), allow(dead_code))]

use std::fmt;

use crate::store::StoreError;
use crate::store::url::{self, PercentError};

/// A backend's key table: canonical name (used in errors), normalized spellings, meaning.
pub(crate) type Table<K> = [(&'static str, &'static [&'static str], K)];

/// Why a connection string was refused. Names the key at fault, never a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ConnStrError {
    key: Option<&'static str>,
    message: String,
}

impl ConnStrError {
    /// `connection string key `key`: reason`.
    pub(crate) fn at(key: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            key: Some(key),
            message: format!("connection string key `{key}`: {reason}"),
        }
    }

    /// `connection string: reason`.
    pub(crate) fn general(reason: impl fmt::Display) -> Self {
        Self::other(format!("connection string: {reason}"))
    }

    /// A message worded by the backend (StackExchange.Redis's configuration).
    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self {
            key: None,
            message: message.into(),
        }
    }

    /// The canonical name of the key at fault (`Port`, `SSL Mode`, ...), if one is.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn key(&self) -> Option<&str> {
        self.key
    }
}

impl From<ConnStrError> for StoreError {
    fn from(e: ConnStrError) -> Self {
        StoreError::config(e.message)
    }
}

/// `written` upper-cased, without whitespace and the characters in `dropped` (`_`, and `-`
/// where the driver allows it).
pub(crate) fn normalize(written: &str, dropped: &[char]) -> String {
    written
        .chars()
        .filter(|c| !c.is_whitespace() && !dropped.contains(c))
        .flat_map(char::to_uppercase)
        .collect()
}

/// The entry of `table` one of whose spellings is `normalized`.
pub(crate) fn lookup<K: Copy>(table: &Table<K>, normalized: &str) -> Option<(&'static str, K)> {
    table
        .iter()
        .find(|(_, spellings, _)| spellings.contains(&normalized))
        .map(|(name, _, key)| (*name, *key))
}

/// The name whose spelling is closest to `written` (Jaro-Winkler), if its score exceeds
/// `min`; the first of equal scores.
pub(crate) fn closest<S: AsRef<str>>(
    written: &str,
    candidates: impl IntoIterator<Item = (&'static str, S)>,
    min: f64,
) -> Option<&'static str> {
    let mut best = None;
    let mut best_score = min;
    for (name, spelling) in candidates {
        let score = strsim::jaro_winkler(written, spelling.as_ref());
        if score > best_score {
            best = Some(name);
            best_score = score;
        }
    }
    best
}

/// At most `max` characters of `value`, with `…` when cut, for an error message.
pub(crate) fn echo(value: &str, max: usize) -> String {
    let mut out: String = value.chars().take(max).collect();
    if value.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A value as shown in an error: at most 40 characters. Never used for the password.
pub(crate) fn shown(value: &str) -> String {
    echo(value, 40)
}

/// One `key=value` pair as read: its position (from 1), key (trimmed, `==` read as `=`) and
/// value (unquoted, or trimmed).
pub(crate) struct Pair {
    pub(crate) number: usize,
    pub(crate) key: String,
    pub(crate) value: String,
}

/// Reads `key=value` pairs as ADO.NET's `DbConnectionStringBuilder` does, handing each to
/// `each`. `name` gives a key's canonical name, for errors about its value (an unknown key is
/// named by position only: an unquoted password holding `;` would otherwise leak its tail).
pub(crate) fn pairs(
    s: &str,
    name: impl Fn(&str) -> Option<&'static str>,
    mut each: impl FnMut(Pair) -> Result<(), ConnStrError>,
) -> Result<(), ConnStrError> {
    let mut chars = s.chars().peekable();
    let mut number = 0usize;
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ';').is_some() {}
        if chars.peek().is_none() {
            return Ok(());
        }
        number += 1;
        let mut key = String::new();
        loop {
            match chars.next() {
                None | Some(';') => {
                    return Err(ConnStrError::general(format!(
                        "pair {number} has no `=`; write `key=value` pairs separated by `;` and quote values that hold `;`"
                    )));
                }
                Some('=') if chars.next_if_eq(&'=').is_some() => key.push('='),
                Some('=') => break,
                Some(c) => key.push(c),
            }
        }
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(ConnStrError::general(format!(
                "pair {number} has an empty key"
            )));
        }
        let blame = |reason: &str| match name(&key) {
            Some(known) => ConnStrError::at(known, reason),
            None => ConnStrError::general(format!("pair {number}: {reason}")),
        };
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = match chars.next_if(|c| *c == '"' || *c == '\'') {
            Some(quote) => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(blame("the quoted value has no closing quote")),
                        Some(c) if c == quote && chars.next_if_eq(&quote).is_some() => {
                            value.push(quote);
                        }
                        Some(c) if c == quote => break,
                        Some(c) => value.push(c),
                    }
                }
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                if !matches!(chars.next(), None | Some(';')) {
                    return Err(blame(
                        "text follows the closing quote; double a quote to put it inside the value",
                    ));
                }
                value
            }
            None => {
                let mut value = String::new();
                while let Some(c) = chars.next_if(|c| *c != ';') {
                    value.push(c);
                }
                chars.next_if_eq(&';');
                value.trim_end().to_owned()
            }
        };
        each(Pair { number, key, value })?;
    }
}

/// A port number, 1-65535.
pub(crate) fn port(key: &'static str, value: &str) -> Result<u16, ConnStrError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConnStrError::at(
            key,
            format!("`{}` is not a port number (1-65535)", shown(value.trim())),
        )),
    }
}

/// A whole number within `0..=max`.
pub(crate) fn count(key: &'static str, value: &str, max: u64) -> Result<u64, ConnStrError> {
    let v = value.trim();
    let n: i64 = v
        .parse()
        .map_err(|_| ConnStrError::at(key, format!("`{}` is not a whole number", shown(v))))?;
    match u64::try_from(n) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(ConnStrError::at(
            key,
            format!("{n} is out of range (0 to {max})"),
        )),
    }
}

/// `true`/`yes`/`on`/`1` or `false`/`no`/`off`/`0`, any case.
pub(crate) fn boolean(key: &'static str, value: &str) -> Result<bool, ConnStrError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(ConnStrError::at(
            key,
            format!("`{}` is not true or false", shown(value.trim())),
        )),
    }
}

/// Why a host could not be split from its port.
pub(crate) enum HostPortError<'a> {
    /// `[` without `]`.
    Unclosed,
    /// Text after `]` that is not `:port`.
    After(&'a str),
}

/// `name`, `name:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (two or more `:`, no
/// port), split into the host (trimmed before `:port`) and the port as written (neither
/// checked).
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<&str>), HostPortError<'_>> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (addr, after) = bracketed.split_once(']').ok_or(HostPortError::Unclosed)?;
        return match after {
            "" => Ok((addr, None)),
            _ => (after.strip_prefix(':').map(|port| (addr, Some(port))))
                .ok_or(HostPortError::After(after)),
        };
    }
    match s.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host.trim(), Some(port))),
        _ => Ok((s, None)),
    }
}

/// Decodes a URL part's `%XX` escapes; the result must be UTF-8. Errors name `key`, never
/// the text.
pub(crate) fn percent_decode(s: &str, key: &'static str) -> Result<String, ConnStrError> {
    url::percent_decode(s).map_err(|e| match e {
        PercentError::BadEscape => ConnStrError::at(
            key,
            "malformed %-escape in the URL (use %XX with two hex digits)",
        ),
        PercentError::NotUtf8 => {
            ConnStrError::at(key, "the URL's %-escapes do not decode to UTF-8")
        }
    })
}

/// The table-driven check the three parsers' tests share: each row is a string and what it
/// must give, checked by [`tests::check`], which names the failing row.
#[cfg(test)]
pub(crate) mod tests {
    use std::fmt::Debug;

    use super::*;

    /// The secrets the parsers' tables write: where a row's string holds one, neither the error
    /// (message and `Debug`) nor the spec's `echo` field may show it.
    #[rustfmt::skip]
    const SECRETS: &[&str] =
        &["Sup3rS3cret", "Sup3r-S3cret", "CertS3cret", "S3ntinelPw", "Secr3t", "hunter2"];

    /// What a row's string must give.
    pub(crate) enum Want {
        /// Parsed, with each field as the parser's `field` shows it (`~x`: holding `x`).
        Gives(&'static [(&'static str, &'static str)]),
        /// Refused, the message holding each fragment (`!x`: not holding `x`; `@K`: `K` is
        /// the key at fault, and the message names it).
        Fails(&'static [&'static str]),
    }
    pub(crate) use Want::{Fails, Gives};

    /// How a spec's field is shown, by name (`echo`: all the spec shows of itself, in `Debug`
    /// and its other outputs).
    pub(crate) type Field<T> = fn(&T, &str) -> String;

    /// Checks each row's string as `parse` reads it, naming the failing row. A string holding
    /// `{a|b|...}` is checked with each of `a`, `b`, ... in its place (every combination).
    pub(crate) fn check<T: Debug>(
        rows: &[(&str, Want)],
        parse: fn(&str) -> Result<T, ConnStrError>,
        field: Field<T>,
    ) {
        for (i, (template, want)) in rows.iter().enumerate() {
            for input in spellings(template) {
                let row = format!("row {i} `{input}`");
                let shown = match (parse(&input), want) {
                    (Ok(spec), Gives(fields)) => {
                        for (name, value) in *fields {
                            let got = field(&spec, name);
                            let holds = value
                                .strip_prefix('~')
                                .map_or(got == *value, |part| got.contains(part));
                            assert!(holds, "{row}: field `{name}` is `{got}`, want `{value}`");
                        }
                        field(&spec, "echo")
                    }
                    (Err(e), Fails(fragments)) => {
                        let message = e.to_string();
                        for fragment in *fragments {
                            let holds = if let Some(absent) = fragment.strip_prefix('!') {
                                !message.contains(absent)
                            } else if let Some(key) = fragment.strip_prefix('@') {
                                e.key() == Some(key) && message.contains(key)
                            } else {
                                message.contains(fragment)
                            };
                            assert!(holds, "{row}: `{fragment}` does not hold for: {message}");
                        }
                        format!("{e} {e:?}")
                    }
                    (Ok(spec), Fails(_)) => panic!("{row}: should fail, got {spec:?}"),
                    (Err(e), Gives(_)) => panic!("{row}: should parse: {e}"),
                };
                for secret in SECRETS.iter().filter(|s| input.contains(**s)) {
                    assert!(!shown.contains(secret), "{row}: `{secret}` shows: {shown}");
                }
            }
        }
    }

    /// `s` with each alternative of its first `{a|b|...}` in its place, and so on.
    fn spellings(s: &str) -> Vec<String> {
        let Some((head, rest)) = s.split_once('{') else {
            return vec![s.to_owned()];
        };
        let (choices, tail) = rest.split_once('}').expect("a `{` is closed");
        let tails = spellings(tail);
        let each = |choice| tails.iter().map(move |t| format!("{head}{choice}{t}"));
        choices.split('|').flat_map(each).collect()
    }

    /// Reads every piece of each sample (from one of its first 8 characters): none panics.
    pub(crate) fn never_panics<T>(parse: fn(&str) -> Result<T, ConnStrError>, samples: &[&str]) {
        for sample in samples {
            let chars: Vec<char> = sample.chars().collect();
            for end in 0..=chars.len() {
                for start in 0..end.min(8) {
                    let _ = parse(&chars[start..end].iter().collect::<String>());
                }
            }
        }
    }

    /// Whether each string has the same identity as `a` (`same`), by `identity`.
    pub(crate) fn check_identities(
        identity: impl Fn(&str) -> String,
        a: &str,
        rows: &[(&str, bool)],
    ) {
        for (b, same) in rows {
            assert_eq!(identity(a) == identity(b), *same, "`{a}` and `{b}`");
        }
    }

    fn read(s: &str) -> Result<Vec<(usize, String, String)>, ConnStrError> {
        let mut out = Vec::new();
        let name = |k: &str| (normalize(k, &['_']) == "PASSWORD").then_some("Password");
        pairs(s, name, |p| {
            out.push((p.number, p.key, p.value));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn tokenizes_as_ado_net() {
        let pairs =
            read(r#" a = 1 ;;b="x;""y" ; c='it''s';Odd==Key=v=w; e= ;"#).expect("valid pairs");
        let expected = [
            (1, "a", "1"),
            (2, "b", "x;\"y"),
            (3, "c", "it's"),
            (4, "Odd=Key", "v=w"),
            (5, "e", ""),
        ];
        assert_eq!(pairs.len(), expected.len());
        for (got, (n, k, v)) in pairs.iter().zip(expected) {
            assert_eq!((got.0, got.1.as_str(), got.2.as_str()), (n, k, v));
        }
        for (s, message) in [
            ("a=1;b", "connection string: pair 2 has no `=`"),
            ("=1", "connection string: pair 1 has an empty key"),
            (
                "x='1",
                "connection string: pair 1: the quoted value has no closing quote",
            ),
            (
                "Pass_word='1' 2",
                "connection string key `Password`: text follows",
            ),
        ] {
            let e = read(s).expect_err("refused").to_string();
            assert!(e.starts_with(message), "{s}: {e}");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(normalize(" Ssl-Ca_x ", &['_', '-']), "SSLCAX");
        assert_eq!(normalize("Ssl-Ca", &['_']), "SSL-CA");
        let table: &Table<u8> = &[("Port", &["PORT"], 1), ("Server", &["SERVER", "HOST"], 2)];
        assert_eq!(lookup(table, "HOST"), Some(("Server", 2)));
        assert_eq!(lookup(table, "HOSTS"), None);
        let spellings = table
            .iter()
            .flat_map(|(n, s, _)| s.iter().map(move |s| (*n, *s)));
        assert_eq!(closest("PROT", spellings.clone(), 0.85), Some("Port"));
        assert_eq!(closest("ZZZ", spellings, 0.85), None);
        assert_eq!(echo("abcdef", 3), "abc…");
        assert_eq!(echo("abc", 3), "abc");
        assert_eq!(port("Port", " 80 "), Ok(80));
        assert!(port("Port", "0").is_err());
        assert_eq!(count("N", "5", 5), Ok(5));
        let e = count("N", "-1", 5).expect_err("out of range");
        assert_eq!(
            e.to_string(),
            "connection string key `N`: -1 is out of range (0 to 5)"
        );
        assert_eq!(e.key(), Some("N"));
        assert_eq!(boolean("B", "Yes"), Ok(true));
        assert!(boolean("B", "maybe").is_err());
        assert_eq!(percent_decode("a%20b", "K").as_deref(), Ok("a b"));
        let store: StoreError = percent_decode("%zz", "K").expect_err("bad escape").into();
        assert_eq!(store.kind(), crate::store::StoreErrorKind::Config);
    }
}

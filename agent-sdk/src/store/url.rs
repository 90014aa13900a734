//! What the store URL parsers share (`postgres://`, `mysql://`, `redis://`, and the dev CLI's
//! URLs): the scheme test, the split of what follows `scheme://` into its parts, `%XX`
//! decoding, and the password tag. Each parser keeps its own key rules and its own messages;
//! nothing here holds or returns the text it was given in an error, so no password can leak
//! through it.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

/// What follows `scheme` (written with its `://`, compared case-insensitively) in `s`, if
/// `s` starts with it.
pub(crate) fn after_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let head = s.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| s.get(scheme.len()..))
        .flatten()
}

/// `[user[:password]@]hostspec[/path][?query][#fragment]`, split but not decoded; the
/// fragment is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Parts<'a> {
    /// Present (maybe empty) when there is an `@`.
    pub(crate) user: Option<&'a str>,
    /// Present (maybe empty) when the user information holds a `:`.
    pub(crate) password: Option<&'a str>,
    /// Between the user information and the first `/`: hosts and ports, as written.
    pub(crate) hostspec: &'a str,
    /// After the first `/` (present, maybe empty, when there is a `/`).
    pub(crate) path: Option<&'a str>,
    /// After the first `?` (present, maybe empty, when there is a `?`).
    pub(crate) query: Option<&'a str>,
}

/// Splits what follows `scheme://`. The last `@` ends the user information (a password may
/// hold an unescaped `@`); the first `:` in it ends the user.
pub(crate) fn split(rest: &str) -> Parts<'_> {
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let (userinfo, hostspec) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(u), Some(p)),
            None => (Some(u), None),
        },
    };
    Parts {
        user,
        password,
        hostspec,
        path,
        query,
    }
}

/// Why `%XX` decoding failed. Holds none of the text: it may be a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PercentError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Decodes `%XX` escapes (two hex digits, either case); the result must be UTF-8.
pub(crate) fn percent_decode(s: &str) -> Result<String, PercentError> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                }
                _ => return Err(PercentError::BadEscape),
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PercentError::NotUtf8)
}

/// A keyed 128-bit hash of a password, as hex. The key is random and lives only in this
/// process, so equal passwords give equal tags here and the tag reveals nothing elsewhere:
/// it tells stores apart in an identity without keeping the password.
pub(crate) fn password_tag(password: &[u8]) -> String {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let state = KEY.get_or_init(RandomState::new);
    format!(
        "{:016x}{:016x}",
        state.hash_one((0u8, password)),
        state.hash_one((1u8, password))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_is_case_insensitive_and_whole() {
        assert_eq!(after_scheme("Redis://h", "redis://"), Some("h"));
        assert_eq!(after_scheme("redis:/h", "redis://"), None);
        assert_eq!(after_scheme("rediss://h", "redis://"), None);
        assert_eq!(after_scheme("ré", "redis://"), None);
    }

    #[test]
    fn splits_every_part() {
        let parts = |s| {
            let p = split(s);
            (p.user, p.password, p.hostspec, p.path, p.query)
        };
        #[rustfmt::skip]
        let rows = [
            ("u:p@w@h:1,h2/db/x?a=1&b#frag?", (Some("u"), Some("p@w"), "h:1,h2", Some("db/x"), Some("a=1&b"))),
            ("h", (None, None, "h", None, None)),
            ("@/?", (Some(""), None, "", Some(""), Some(""))),
        ];
        for (s, want) in rows {
            assert_eq!(parts(s), want, "{s}");
        }
    }

    #[test]
    fn decodes_and_refuses_without_text() {
        assert_eq!(percent_decode("a%2Fb%c3%A9").as_deref(), Ok("a/bé"));
        assert_eq!(percent_decode("%"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%2"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%+a"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%ff"), Err(PercentError::NotUtf8));
    }

    #[test]
    fn tags_are_stable_and_distinct() {
        assert_eq!(password_tag(b"s3cret"), password_tag(b"s3cret"));
        assert_ne!(password_tag(b"s3cret"), password_tag(b"s3cre"));
        assert_eq!(password_tag(b"x").len(), 32);
    }
}

//! A fast check of the job item's JSON on the dispatch path.
//!
//! Every `run` carries the center's job item (some 600 bytes of JSON). The runtime needs one
//! field of it (`AgentTimeout`) and must refuse text that is not JSON, but most jobs never
//! look at the rest. This scanner walks the text once, without building anything, and
//! answers only when it is sure: `Some(timeout)` means serde_json accepts the text as the
//! runtime's fields and reads the same timeout; `None` means "ask serde_json", which then
//! gives the exact answer or error. Being conservative keeps it simple: keys with escapes at
//! the top level, a repeated `AgentTimeout`, nesting deeper than serde_json allows, and
//! anything malformed are all `None`.

use serde::Deserialize as _;
use serde_json::Value;

/// serde_json's default nesting limit.
const MAX_DEPTH: usize = 128;

/// `Some(agent_timeout)` when `text` is a well-formed JSON object whose top-level
/// `AgentTimeout` (if any) reads as `agent_timeout`; `None` when unsure.
pub(super) fn runtime_fields(text: &str) -> Option<Option<i64>> {
    let mut s = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    s.ws();
    s.eat(b'{')?;
    let mut timeout: Option<&[u8]> = None;
    s.ws();
    if !s.eat_if(b'}') {
        loop {
            s.ws();
            s.eat(b'"')?;
            let key_start = s.at;
            let escaped = s.string_body()?;
            let key = &s.bytes[key_start..s.at - 1];
            if escaped {
                // An escaped key may spell `AgentTimeout`; serde_json decides.
                return None;
            }
            s.ws();
            s.eat(b':')?;
            s.ws();
            let value_start = s.at;
            s.value(1)?;
            if key != b"AgentTimeout" && key.eq_ignore_ascii_case(b"AgentTimeout") {
                // Another spelling binds as AgentTimeout when the exact one is absent.
                return None;
            }
            if key == b"AgentTimeout" {
                if timeout.is_some() {
                    // serde_json refuses a duplicate field; let it say so.
                    return None;
                }
                timeout = Some(&s.bytes[value_start..s.at]);
            }
            s.ws();
            if s.eat_if(b',') {
                continue;
            }
            s.eat(b'}')?;
            break;
        }
    }
    s.ws();
    if s.at != s.bytes.len() {
        return None;
    }
    match timeout {
        None => Some(None),
        Some(raw) => read_timeout(raw),
    }
}

/// Reads an `AgentTimeout` value as the item does (leniently), through serde_json.
fn read_timeout(raw: &[u8]) -> Option<Option<i64>> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = Value::deserialize(&mut de).ok()?;
    Some(super::lenient_i64_value(value))
}

/// The bytes that end a run of plain string text: quote, backslash, control characters.
const ENDS_TEXT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The first byte at or after `at` that ends a run of plain string text (see [`ENDS_TEXT`]),
/// or `bytes.len()`. Eight bytes at a time (SWAR): the item's strings are most of its bytes,
/// and testing them one by one was half of the scan. The `memchr` crate finds up to three
/// given bytes, not "a quote, a backslash or any byte below 0x20", hence the word trick here.
#[inline]
pub(crate) fn plain_text_end(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` gets its high bit in `below(x, n)` when it is below `n` (n <= 0x80).
    // Bytes above the first such byte may be flagged falsely (the borrow carries up), so
    // only the lowest flag is read, which is exact.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let v = u64::from_le_bytes(*word);
        let flags = below(v, 0x20)
            | below(v ^ (ONES * u64::from(b'"')), 1)
            | below(v ^ (ONES * u64::from(b'\\')), 1);
        if flags != 0 {
            // Little-endian: the lowest flagged bit is the first flagged byte.
            return at + (flags.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while at < bytes.len() && !ENDS_TEXT[usize::from(bytes[at])] {
        at += 1;
    }
    at
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline(always)]
    fn eat(&mut self, b: u8) -> Option<()> {
        if self.peek() == Some(b) {
            self.at += 1;
            Some(())
        } else {
            None
        }
    }

    #[inline(always)]
    fn eat_if(&mut self, b: u8) -> bool {
        self.eat(b).is_some()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// After an opening quote: up to and past the closing quote. Returns whether the string
    /// had escapes.
    #[inline(always)]
    fn string_body(&mut self) -> Option<bool> {
        let bytes = self.bytes;
        let mut at = self.at;
        let mut escaped = false;
        loop {
            at = plain_text_end(bytes, at);
            let b = *bytes.get(at)?;
            at += 1;
            match b {
                b'"' => {
                    self.at = at;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match *bytes.get(at)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 1,
                        b'u' => {
                            let hex = bytes.get(at + 1..at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            at += 5;
                        }
                        _ => return None,
                    }
                }
                // A control character.
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Option<()> {
        self.eat_if(b'-');
        match self.peek()? {
            b'0' => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat_if(b'.') && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes.get(self.at..self.at + word.len()) == Some(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// One value at nesting `depth` (the top-level object is depth 1).
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string_body().map(|_| ())
            }
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object (`keyed`) or array, from its opening bracket.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.ws();
        if self.eat_if(close) {
            return Some(());
        }
        loop {
            self.ws();
            if keyed {
                self.eat(b'"')?;
                self.string_body()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            if self.eat_if(b',') {
                continue;
            }
            return self.eat(close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agrees(text: &str) {
        if let Some(why) = super::super::scan_disagreement(text) {
            panic!("{why}: {text:?}");
        }
    }

    #[test]
    fn reads_the_timeout_of_center_items() {
        let item = r#"{"Url":"http://a/jobagent","Data":"{\"x\":1}","Timeout":20000,"Cron":null,"AgentTimeout":1500,"Mail":[],"DingTalk":{"Token":null,"IsAtAll":false},"Rate":-1.5e-3}"#;
        assert_eq!(runtime_fields(item), Some(Some(1500)));
        assert_eq!(runtime_fields(r#" { } "#), Some(None));
        assert_eq!(runtime_fields(r#"{"AgentTimeout":"250"}"#), Some(Some(250)));
        assert_eq!(runtime_fields(r#"{"AgentTimeout":null}"#), Some(None));
        assert_eq!(
            runtime_fields(r#"{"Headers":{"AgentTimeout":5}}"#),
            Some(None)
        );
    }

    #[test]
    fn leaves_hard_cases_to_serde() {
        for text in [
            r#"{"AgentTimeout":1,"AgentTimeout":2}"#,
            r#"{"Agent\u0054imeout":7}"#,
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{"AgentTimeout":1e999}"#,
        ] {
            assert_eq!(runtime_fields(text), None, "{text:?}");
            agrees(text);
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(runtime_fields(&deep), None);
    }

    /// The word-at-a-time search stops where the byte-by-byte one does, for every byte value
    /// at every offset of a word and in the tail.
    #[test]
    fn plain_text_end_matches_the_table() {
        let bytewise = |bytes: &[u8], mut at: usize| {
            while at < bytes.len() && !ENDS_TEXT[usize::from(bytes[at])] {
                at += 1;
            }
            at
        };
        for len in 0..=19 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[pos] = b;
                    // Also a second stopping byte after the first, to catch a borrow that
                    // flags a byte before it.
                    if pos + 1 < len {
                        text[pos + 1] = b'"';
                    }
                    for start in 0..=pos {
                        assert_eq!(
                            plain_text_end(&text, start),
                            bytewise(&text, start),
                            "{text:?} from {start}"
                        );
                    }
                }
            }
        }
        assert_eq!(plain_text_end(b"", 0), 0);
        assert_eq!(plain_text_end(b"abc", 3), 3);
    }

    /// Every one-byte deletion, and every insertion of a JSON-significant byte, of a center
    /// item: whatever the scanner accepts, serde_json accepts with the same timeout.
    #[test]
    fn agrees_with_serde_on_every_small_mutation() {
        let item = r#"{"Url":"http://a/b","Data":"{\"k\":\"v\\n\"}","Timeout":20000,"AgentTimeout":-12,"Mail":[],"Dt":{"T":null,"A":[true,false,1.5e+3]},"S":"\u00e9"}"#;
        let significant = b"{}[]\",:\\ 0123456789.eE+-tfnu\x01";
        let bytes = item.as_bytes();
        let mut checked = 0;
        for i in 0..=bytes.len() {
            if i < bytes.len() {
                let mut v = bytes.to_vec();
                v.remove(i);
                if let Ok(text) = String::from_utf8(v) {
                    agrees(&text);
                    checked += 1;
                }
            }
            for &b in significant {
                let mut v = bytes.to_vec();
                v.insert(i, b);
                if let Ok(text) = String::from_utf8(v) {
                    agrees(&text);
                    checked += 1;
                }
            }
        }
        assert!(checked > 4_000, "{checked}");
        assert_eq!(runtime_fields(item), Some(Some(-12)));
    }
}

//! Which tables a MySQL store writes: `<prefix>Hash`, `<prefix>Set` and
//! `<prefix>DistributedLock`, as Hangfire.MySqlStorage (`Hangfire.MySql/Install.sql`) and
//! Hangfire.Storage.MySql (`src/Hangfire.Storage.MySql/Install/Install.sql`) name them.
//!
//! The prefix is the storage's `TablesPrefix`, used **as given**: empty is empty (tables
//! `Hash`, `Set`; both storages' default), `hangfire` is `hangfireHash`. Any name the server
//! accepts is accepted (`-`, spaces, non-ASCII) and quoted with backticks, a backtick doubled.
//! When no prefix was given at all (a center sending `TablePrefix: null` or none, the agent's
//! own store without `JOBAGENT_STORE_SCHEMA`), it is **found** from the tables the database
//! holds: the one prefix under which both a `Hash` and a `Set` table with a `Value` column
//! exist; none or several is an error naming what was found, never a guess.

use std::fmt;

use crate::store::StoreError;

/// The longest table name MySQL and MariaDB accept, in characters.
const MAX_TABLE_NAME: usize = 64;
/// The longest suffix appended to the prefix.
const LONGEST_SUFFIX: &str = "DistributedLock";

/// The prefix a store was opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// Used verbatim (empty included).
    Given(String),
    /// None was given: found from the tables present ([`choose`]).
    Find,
}

impl Prefix {
    /// `Given` for `Some`, `Find` for `None`.
    pub(crate) fn of(given: Option<&str>) -> Self {
        given.map_or(Prefix::Find, |p| Prefix::Given(p.to_owned()))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::Given(p) => write!(f, "`{p}`"),
            Prefix::Find => f.write_str("(to be found)"),
        }
    }
}

/// Checks a table prefix: what MySQL and MariaDB accept in a table name (no NUL, no
/// character above U+FFFF, the whole name at most 64 characters).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let most = MAX_TABLE_NAME - LONGEST_SUFFIX.len();
    if prefix.chars().count() > most {
        return Err(StoreError::config(format!(
            "the table prefix is longer than {most} characters (a table name holds at most {MAX_TABLE_NAME})"
        )));
    }
    if prefix.contains('\0') {
        return Err(StoreError::config("the table prefix holds a NUL character"));
    }
    if prefix.chars().any(|c| u32::from(c) > 0xFFFF) {
        return Err(StoreError::config(
            "the table prefix holds a character above U+FFFF, which a MySQL table name cannot",
        ));
    }
    Ok(())
}

/// `name` as a quoted identifier: in backticks, a backtick doubled.
pub(crate) fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// The tables of one prefix: quoted for SQL, and bare for `information_schema`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tables {
    pub(crate) prefix: String,
    pub(crate) hash: String,
    pub(crate) set: String,
    pub(crate) lock: String,
    pub(crate) hash_name: String,
    pub(crate) set_name: String,
}

impl Tables {
    pub(crate) fn new(prefix: &str) -> Self {
        let (hash_name, set_name) = (format!("{prefix}Hash"), format!("{prefix}Set"));
        Self {
            prefix: prefix.to_owned(),
            hash: quote(&hash_name),
            set: quote(&set_name),
            lock: quote(&format!("{prefix}DistributedLock")),
            hash_name,
            set_name,
        }
    }
}

/// A table with a `Value` column, as `information_schema.COLUMNS` lists it: its name and the
/// column's character set.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub(crate) table: String,
    pub(crate) charset: Option<String>,
}

/// What [`choose`] learned: the tables, and the charsets of their `Value` columns.
#[derive(Debug)]
pub(crate) struct Chosen {
    pub(crate) tables: Tables,
    pub(crate) hash_charset: Option<String>,
    pub(crate) set_charset: Option<String>,
}

/// `name` without a `suffix` that ends it, compared case-insensitively (a server with
/// `lower_case_table_names` keeps `hangfirehash`).
fn strip_suffix_ci<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    (name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(suffix)).then(|| &name[..cut])
}

/// The prefixes under which both a `Hash` and a `Set` table exist, in `columns`' order.
pub(crate) fn prefixes(columns: &[Column]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in columns {
        let Some(prefix) = strip_suffix_ci(&c.table, "Hash") else {
            continue;
        };
        let has_set = columns
            .iter()
            .any(|s| strip_suffix_ci(&s.table, "Set") == Some(prefix));
        if has_set && !out.iter().any(|p| p == prefix) {
            out.push(prefix.to_owned());
        }
    }
    out
}

/// The prefixes, for a message: `` `Hangfire` `` or `` `` (none) ``.
fn listed(prefixes: &[String]) -> String {
    prefixes
        .iter()
        .map(|p| {
            if p.is_empty() {
                "`` (no prefix: `Hash`, `Set`)".to_owned()
            } else {
                format!("`{p}`")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tables of `prefix` among `columns`: the exact names first, else names differing only
/// in case (`lower_case_table_names`); found ones keep the server's spelling. `label` names
/// the store in errors.
pub(crate) fn choose(
    prefix: &Prefix,
    columns: &[Column],
    label: &str,
) -> Result<Chosen, StoreError> {
    let found = prefixes(columns);
    let given = match prefix {
        Prefix::Given(p) => p.clone(),
        Prefix::Find => match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(StoreError::config(format!(
                    "the store {label} has no Hangfire tables (no `<prefix>Hash` and `<prefix>Set` with a `Value` column): point the store at the center's database; the agent does not create Hangfire's tables"
                )));
            }
            several => {
                return Err(StoreError::config(format!(
                    "the store {label} holds Hangfire tables under several prefixes ({}) and none was given: give the table prefix (the center's TablePrefix, or JOBAGENT_STORE_SCHEMA; set but empty for none)",
                    listed(several)
                )));
            }
        },
    };
    let column = |table: &str| {
        columns
            .iter()
            .find(|c| c.table == table)
            .or_else(|| columns.iter().find(|c| c.table.eq_ignore_ascii_case(table)))
    };
    let tables = Tables::new(&given);
    let (hash, set) = (column(&tables.hash_name), column(&tables.set_name));
    for (table, present) in [(&tables.hash_name, hash), (&tables.set_name, set)] {
        if present.is_none() {
            let hint = if found.is_empty() {
                String::new()
            } else {
                format!(
                    "; it holds Hangfire tables under {} (give that TablePrefix)",
                    listed(&found)
                )
            };
            return Err(StoreError::config(format!(
                "the store {label} has no Hangfire table `{table}` (with a `Value` column){hint}: point the store at the center's database and table prefix (the center's connection string and TablePrefix); the agent does not create Hangfire's tables"
            )));
        }
    }
    Ok(Chosen {
        hash_charset: hash.and_then(|c| c.charset.clone()),
        set_charset: set.and_then(|c| c.charset.clone()),
        tables: match prefix {
            Prefix::Given(_) => tables,
            // Found: the server's own spelling.
            Prefix::Find => {
                let spelled = hash
                    .and_then(|c| strip_suffix_ci(&c.table, "Hash"))
                    .unwrap_or(&given);
                Tables::new(spelled)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<Column> {
        names
            .iter()
            .map(|n| Column {
                table: (*n).to_owned(),
                charset: Some("utf8mb3".to_owned()),
            })
            .collect()
    }

    #[test]
    fn prefixes_are_checked_as_the_server_would() {
        for ok in [
            "", "Hangfire", "hangfire", "hf_2$", "-", "a b", "a`b", "空间", "x;y",
        ] {
            assert!(check_prefix(ok).is_ok(), "{ok:?}");
        }
        assert!(check_prefix(&"x".repeat(49)).is_ok());
        assert!(check_prefix(&"x".repeat(50)).is_err());
        assert!(check_prefix("a\0b").is_err());
        assert!(check_prefix("😀").is_err());
    }

    #[test]
    fn names_are_quoted() {
        assert_eq!(quote("Hash"), "`Hash`");
        assert_eq!(quote("a`b"), "`a``b`");
        let t = Tables::new("-");
        assert_eq!((t.hash.as_str(), t.set.as_str()), ("`-Hash`", "`-Set`"));
        assert_eq!(t.lock, "`-DistributedLock`");
        let t = Tables::new("");
        assert_eq!(
            (t.hash.as_str(), t.set.as_str(), t.lock.as_str()),
            ("`Hash`", "`Set`", "`DistributedLock`")
        );
        assert_eq!(Tables::new("x`").hash, "`x``Hash`");
    }

    #[test]
    fn a_given_prefix_is_used_as_given() {
        let columns = cols(&["Hash", "Set", "HangfireHash", "HangfireSet"]);
        let empty = choose(&Prefix::Given(String::new()), &columns, "db").expect("empty");
        assert_eq!(empty.tables.hash, "`Hash`");
        let hf = choose(&Prefix::Given("Hangfire".into()), &columns, "db").expect("Hangfire");
        assert_eq!(hf.tables.set, "`HangfireSet`");
        // Only case differs (lower_case_table_names): taken, under the given spelling.
        let lower = cols(&["hangfirehash", "hangfireset"]);
        let t = choose(&Prefix::Given("Hangfire".into()), &lower, "db").expect("case");
        assert_eq!(t.tables.hash, "`HangfireHash`");
        // Absent: says which prefixes exist.
        let e = choose(
            &Prefix::Given("Hangfire".into()),
            &cols(&["Hash", "Set"]),
            "db:3306/d",
        )
        .expect_err("absent");
        assert!(
            e.contains("`HangfireHash`") && e.contains("no prefix"),
            "{e}"
        );
        assert!(e.contains("db:3306/d"), "{e}");
    }

    #[test]
    fn a_missing_prefix_is_found_never_guessed() {
        let found = choose(&Prefix::Find, &cols(&["Hash", "Set", "Job"]), "db").expect("one");
        assert_eq!(found.tables.prefix, "");
        let found = choose(&Prefix::Find, &cols(&["hangfirehash", "hangfireset"]), "db")
            .expect("lower case");
        assert_eq!(found.tables.prefix, "hangfire");
        // A server that keeps names in lower case compares them so too.
        assert_eq!(found.tables.hash, "`hangfireHash`");
        let found =
            choose(&Prefix::Find, &cols(&["-Hash", "-Set", "OtherHash"]), "db").expect("one pair");
        assert_eq!(found.tables.prefix, "-");
        let e = choose(
            &Prefix::Find,
            &cols(&["Hash", "Set", "HangfireHash", "HangfireSet"]),
            "db",
        )
        .expect_err("two");
        assert!(e.contains("several") && e.contains("`Hangfire`"), "{e}");
        let e = choose(&Prefix::Find, &cols(&["Hash", "Job"]), "db").expect_err("none");
        assert!(e.contains("no Hangfire tables"), "{e}");
        assert_eq!(prefixes(&cols(&["Set", "Hash", "aHash"])), [""]);
        assert!(strip_suffix_ci("é", "Hash").is_none());
    }
}

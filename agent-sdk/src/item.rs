//! The center's job item (`x-job-body`): the job as configured at the center.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

mod scan;

pub(crate) use scan::plain_text_end;

/// The job item the center sends with every dispatch, PascalCase as the center writes it.
///
/// Every field is optional; values of an unexpected type are read leniently (a number
/// sent as a string is still a number) or ignored, never a reason to refuse a run.
/// `Debug` hides `BasicPassword` and header values.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct JobItem {
    /// The agent URL the center calls.
    #[serde(deserialize_with = "lenient_string")]
    pub url: Option<String>,
    /// The HTTP method.
    #[serde(deserialize_with = "lenient_string")]
    pub method: Option<String>,
    /// The parameter as configured at the center (also the request body).
    #[serde(deserialize_with = "lenient_string")]
    pub data: Option<String>,
    /// The content type of the parameter.
    #[serde(deserialize_with = "lenient_string")]
    pub content_type: Option<String>,
    /// The center's HTTP timeout in ms.
    #[serde(deserialize_with = "lenient_i64")]
    pub timeout: Option<i64>,
    /// Minutes the center delays a one-off job.
    #[serde(deserialize_with = "lenient_i64")]
    pub delay_from_minutes: Option<i64>,
    /// The recurring job's cron expression.
    #[serde(deserialize_with = "lenient_string")]
    pub cron: Option<String>,
    /// The job's display name.
    #[serde(deserialize_with = "lenient_string")]
    pub job_name: Option<String>,
    /// The recurring job's identifier.
    #[serde(deserialize_with = "lenient_string")]
    pub recurring_job_identifier: Option<String>,
    /// The center's queue.
    #[serde(deserialize_with = "lenient_string")]
    pub queue_name: Option<String>,
    /// The agent class configured at the center.
    #[serde(deserialize_with = "lenient_string")]
    pub agent_class: Option<String>,
    /// Milliseconds after which the run is cancelled and reported as timed out; 0 or absent
    /// means no limit.
    #[serde(deserialize_with = "lenient_i64")]
    pub agent_timeout: Option<i64>,
    /// The basic-auth user the center sends.
    #[serde(deserialize_with = "lenient_string")]
    pub basic_user_name: Option<String>,
    /// The basic-auth password the center sends (hidden in `Debug`).
    #[serde(deserialize_with = "lenient_string")]
    pub basic_password: Option<String>,
    /// Extra headers configured on the job (values hidden in `Debug`).
    #[serde(deserialize_with = "lenient_map")]
    pub headers: BTreeMap<String, String>,
    /// The job's time zone at the center.
    #[serde(deserialize_with = "lenient_string")]
    pub time_zone: Option<String>,
    /// Whether the center retries failed runs.
    #[serde(deserialize_with = "lenient_bool")]
    pub enable_retry: Option<bool>,
    /// How often the center retries.
    #[serde(deserialize_with = "lenient_i64")]
    pub retry_times: Option<i64>,
    /// The item as sent (secrets included: handle with care), parsed only on demand.
    #[serde(skip)]
    raw: Option<Arc<str>>,
}

impl JobItem {
    /// Reads a job item from the JSON the center sends: an object, or `null`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        if is_null_item(text)? {
            return Ok(JobItem::default());
        }
        let object: serde_json::Map<String, Value> = serde_json::from_str(text)?;
        let mut item = JobItem::deserialize(Value::Object(pascal_keys(object)))?;
        item.raw = Some(text.into());
        Ok(item)
    }

    /// A field the typed struct does not name (for instance `DingTalk` or `CallbackEL`),
    /// parsed from the item as sent.
    /// Like Newtonsoft, the exact name first, else one that differs only in ASCII case.
    pub fn field(&self, name: &str) -> Option<Value> {
        let raw = self.raw.as_deref()?;
        let mut object: serde_json::Map<String, Value> = serde_json::from_str(raw).ok()?;
        if let Some(value) = object.remove(name) {
            return Some(value);
        }
        let key = object
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))?
            .clone();
        object.remove(&key)
    }
}

/// The item's property names as the center's Newtonsoft writes them by default.
const ITEM_NAMES: [&str; 18] = [
    "Url",
    "Method",
    "Data",
    "ContentType",
    "Timeout",
    "DelayFromMinutes",
    "Cron",
    "JobName",
    "RecurringJobIdentifier",
    "QueueName",
    "AgentClass",
    "AgentTimeout",
    "BasicUserName",
    "BasicPassword",
    "Headers",
    "TimeZone",
    "EnableRetry",
    "RetryTimes",
];

/// Renames properties that differ from a known name only in ASCII case (a center whose host
/// sets camelCase JSON defaults writes `agentTimeout`) to that name, as Newtonsoft binds them:
/// an exact name wins over such a spelling.
fn pascal_keys(object: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let misspelled = |key: &str| {
        ITEM_NAMES
            .iter()
            .find(|name| **name != key && name.eq_ignore_ascii_case(key))
            .copied()
    };
    if !object.keys().any(|k| misspelled(k).is_some()) {
        return object;
    }
    let exact: Vec<&str> = ITEM_NAMES
        .iter()
        .copied()
        .filter(|name| object.contains_key(*name))
        .collect();
    let mut out = serde_json::Map::with_capacity(object.len());
    for (key, value) in object {
        match misspelled(&key) {
            Some(name) if !exact.contains(&name) && !out.contains_key(name) => {
                out.insert(name.to_owned(), value);
            }
            Some(_) => {}
            None => {
                out.insert(key, value);
            }
        }
    }
    out
}

/// `Ok(true)` for `null` (and only `null`): no item; an error for anything but an object.
fn is_null_item(text: &str) -> Result<bool, serde_json::Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("null") {
        serde_json::from_str::<()>(text)?;
        return Ok(true);
    }
    if !trimmed.starts_with('{') {
        return Err(<serde_json::Error as serde::de::Error>::custom(
            "the job item must be a JSON object",
        ));
    }
    Ok(false)
}

/// The job item of a dispatch: checked when the request arrives, read there only for what
/// the runtime needs (`AgentTimeout`), and turned into a [`JobItem`] when a job first asks.
/// Most jobs never look at the item, so most runs never pay for its strings.
#[derive(Default)]
pub(crate) struct LazyItem {
    /// Shared: the typed item, and runs of the same item (see [`ItemCache`]), keep this text.
    raw: Option<Arc<str>>,
    agent_timeout: Option<i64>,
    /// Boxed: a run carries a pointer until its job asks.
    typed: OnceLock<Box<JobItem>>,
}

impl Clone for LazyItem {
    /// The text and `AgentTimeout`; the typed item is built again on first use.
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            agent_timeout: self.agent_timeout,
            typed: OnceLock::new(),
        }
    }
}

/// The one field the runtime reads from every item; the rest is skipped unparsed.
#[derive(Deserialize)]
struct RuntimeFields {
    #[serde(rename = "AgentTimeout", default, deserialize_with = "lenient_i64")]
    agent_timeout: Option<i64>,
}

impl LazyItem {
    /// Checks the item's JSON (an object or `null`) and reads `AgentTimeout`.
    pub(crate) fn from_json(text: String) -> Result<Self, serde_json::Error> {
        if is_null_item(&text)? {
            return Ok(Self::default());
        }
        let agent_timeout = match scan::runtime_fields(&text) {
            Some(timeout) => timeout,
            None => match serde_json::from_str::<RuntimeFields>(&text)?.agent_timeout {
                Some(timeout) => Some(timeout),
                // `agentTimeout` and other spellings, as Newtonsoft binds them.
                None if text.to_ascii_lowercase().contains("agenttimeout") => {
                    let object: serde_json::Map<String, Value> = serde_json::from_str(&text)?;
                    RuntimeFields::deserialize(Value::Object(pascal_keys(object)))?.agent_timeout
                }
                None => None,
            },
        };
        Ok(Self {
            raw: Some(text.into()),
            agent_timeout,
            typed: OnceLock::new(),
        })
    }

    /// `AgentTimeout` in ms, as sent.
    pub(crate) fn agent_timeout(&self) -> Option<i64> {
        self.agent_timeout
    }

    /// The typed item, built on first use. The text was checked on arrival; should the full
    /// read still fail (a field given twice, say), the item keeps only its text.
    pub(crate) fn get(&self) -> &JobItem {
        self.typed.get_or_init(|| {
            Box::new(match &self.raw {
                None => JobItem::default(),
                Some(raw) => match JobItem::from_json(raw) {
                    Ok(mut item) => {
                        item.raw = Some(raw.clone());
                        item
                    }
                    Err(_) => JobItem {
                        raw: Some(raw.clone()),
                        ..JobItem::default()
                    },
                },
            })
        })
    }
}

/// The job items a worker thread read last, each with the header text it came from.
///
/// A recurring job's item is the same text on every run (the center serializes the job as
/// configured), and it is the largest part of every `run`: decoding its base64, allocating
/// its text and checking its JSON was the largest step of reading a dispatch. A header equal
/// byte for byte to a remembered one gives the same item, so it is shared instead. Per
/// thread, so readers never wait for each other; a few entries, replaced in turn, so that
/// several recurring jobs dispatched to one service all find theirs.
pub(crate) struct ItemCache {
    entries: [Option<(Box<[u8]>, LazyItem)>; ItemCache::ENTRIES],
    next: usize,
}

impl ItemCache {
    const ENTRIES: usize = 8;
    /// Longer headers are read every time: a few entries of this size bound the memory.
    const MAX_HEADER: usize = 16 * 1024;

    const fn new() -> Self {
        Self {
            entries: [const { None }; Self::ENTRIES],
            next: 0,
        }
    }

    /// The item of the header `raw`: remembered, or read by `read` (and remembered when it
    /// is read without error).
    pub(crate) fn item<E>(
        raw: &[u8],
        read: impl FnOnce() -> Result<LazyItem, E>,
    ) -> Result<LazyItem, E> {
        thread_local! {
            static CACHE: std::cell::RefCell<ItemCache> = const {
                std::cell::RefCell::new(ItemCache::new())
            };
        }
        if raw.len() > Self::MAX_HEADER {
            return read();
        }
        let found = CACHE.with(|cache| {
            let cache = cache.borrow();
            cache
                .entries
                .iter()
                .flatten()
                .find(|(header, _)| **header == *raw)
                .map(|(_, item)| item.clone())
        });
        if let Some(item) = found {
            return Ok(item);
        }
        let item = read()?;
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let at = cache.next;
            cache.entries[at] = Some((raw.into(), item.clone()));
            cache.next = (at + 1) % Self::ENTRIES;
        });
        Ok(item)
    }
}

/// Where the fast scan and serde_json disagree on `text`, a description; `None` when they
/// agree (the scan may always defer; what it accepts, serde_json must accept, with the same
/// `AgentTimeout`). For the tests and the `item_scanner` fuzz target.
#[cfg(any(test, feature = "fuzz"))]
pub(crate) fn scan_disagreement(text: &str) -> Option<String> {
    let ours = scan::runtime_fields(text)?;
    match serde_json::from_str::<RuntimeFields>(text) {
        Ok(fields) if fields.agent_timeout == ours => None,
        Ok(fields) => Some(format!(
            "the scan read AgentTimeout {ours:?}, serde_json {:?}",
            fields.agent_timeout
        )),
        Err(e) => Some(format!("the scan accepted what serde_json refuses: {e}")),
    }
}

impl fmt::Debug for LazyItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.get(), f)
    }
}

impl fmt::Debug for JobItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobItem")
            .field("job_name", &self.job_name)
            .field("agent_class", &self.agent_class)
            .field("agent_timeout", &self.agent_timeout)
            .field("url", &self.url)
            .field("method", &self.method)
            .field("cron", &self.cron)
            .field("basic_user_name", &self.basic_user_name)
            .field(
                "basic_password",
                &self.basic_password.as_ref().map(|_| "<redacted>"),
            )
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(lenient_i64_value(Value::deserialize(d)?))
}

fn lenient_i64_value(value: Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remembered header gives the item read the first time; another header, or one whose
    /// first read failed, is read again; and more headers than entries push the oldest out.
    #[test]
    fn the_item_cache_shares_only_equal_headers() {
        let reads = std::cell::Cell::new(0);
        let read = |text: &str| {
            reads.set(reads.get() + 1);
            LazyItem::from_json(text.to_owned())
        };
        let a = br#"header-a"#;
        let first =
            ItemCache::item(a, || read(r#"{"AgentTimeout":1500,"JobName":"a"}"#)).expect("valid");
        let again =
            ItemCache::item(a, || read(r#"{"AgentTimeout":9,"JobName":"other"}"#)).expect("cached");
        assert_eq!(reads.get(), 1);
        assert_eq!(again.agent_timeout(), Some(1500));
        assert_eq!(again.get().job_name.as_deref(), Some("a"));
        assert!(Arc::ptr_eq(
            first.raw.as_ref().expect("text"),
            again.raw.as_ref().expect("text")
        ));
        let b = ItemCache::item(b"header-b", || read(r#"{"JobName":"b"}"#)).expect("valid");
        assert_eq!((reads.get(), b.agent_timeout()), (2, None));
        assert!(ItemCache::item(b"header-c", || read("[1]")).is_err());
        assert!(ItemCache::item(b"header-c", || read("[1]")).is_err());
        assert_eq!(reads.get(), 4, "a failed read is not remembered");
        for n in 0..ItemCache::ENTRIES {
            let header = format!("filler-{n}");
            ItemCache::item(header.as_bytes(), || read("{}")).expect("valid");
        }
        let before = reads.get();
        ItemCache::item(a, || read(r#"{"JobName":"a"}"#)).expect("valid");
        assert_eq!(reads.get(), before + 1, "the oldest entry was replaced");
    }

    // A center whose host sets camelCase Newtonsoft defaults serializes the item with
    // `JsonConvert.SerializeObject` (Server/Hangfire.HttpJob/Server/HttpJob.cs); the .NET
    // agent binds it case-insensitively, exact names first.
    #[test]
    fn reads_a_camel_case_item_as_newtonsoft_binds_it() {
        let text = r#"{"jobName":"t","agentTimeout":1500,"timeout":20000,"headers":{"a":"b"},"dingTalk":{"token":"x"}}"#;
        let lazy = LazyItem::from_json(text.to_owned()).expect("valid");
        assert_eq!(lazy.agent_timeout(), Some(1500));
        let item = lazy.get();
        assert_eq!(item.job_name.as_deref(), Some("t"));
        assert_eq!(item.timeout, Some(20000));
        assert_eq!(item.headers.get("a").map(String::as_str), Some("b"));
        assert!(item.field("DingTalk").is_some());
        // The exact name wins over another spelling, whatever the order.
        let both = r#"{"agentTimeout":1,"AgentTimeout":2}"#;
        assert_eq!(
            LazyItem::from_json(both.to_owned())
                .expect("valid")
                .agent_timeout(),
            Some(2)
        );
        assert_eq!(
            JobItem::from_json(both).expect("valid").agent_timeout,
            Some(2)
        );
        assert_eq!(scan::runtime_fields(r#"{"agentTimeout":5}"#), None);
    }

    #[test]
    fn reads_center_item_leniently() {
        let item = JobItem::from_json(
            r#"{"JobName":"t","AgentTimeout":"1500","Timeout":20000,"Headers":{"a":"b","n":1},
                "BasicPassword":"hunter2","Unknown":[1],"Cron":null,"EnableRetry":"true","DingTalk":{"Token":"x"}}"#,
        )
        .expect("valid json");
        assert_eq!(item.job_name.as_deref(), Some("t"));
        assert_eq!(item.agent_timeout, Some(1500));
        assert_eq!(item.timeout, Some(20000));
        assert_eq!(item.headers.get("n").map(String::as_str), Some("1"));
        assert_eq!(item.enable_retry, Some(true));
        assert!(item.cron.is_none());
        assert!(item.field("DingTalk").is_some());
        let dbg = format!("{item:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn lazy_item_reads_the_timeout_and_builds_the_rest_on_demand() {
        let lazy = LazyItem::from_json(
            r#"{"JobName":"t","AgentTimeout":"250","Extra":{"a":[1]}}"#.to_owned(),
        )
        .expect("valid json");
        assert_eq!(lazy.agent_timeout(), Some(250));
        assert_eq!(lazy.get().job_name.as_deref(), Some("t"));
        assert!(lazy.get().field("Extra").is_some());
        assert!(LazyItem::from_json("[1]".to_owned()).is_err());
        assert!(LazyItem::from_json("{\"JobName\":".to_owned()).is_err());
        let none = LazyItem::from_json("null".to_owned()).expect("null is no item");
        assert_eq!(none.agent_timeout(), None);
        assert!(none.get().job_name.is_none());
        // A field given twice is read leniently later, never a failure.
        let twice =
            LazyItem::from_json(r#"{"JobName":"a","JobName":"b"}"#.to_owned()).expect("syntax ok");
        assert!(twice.get().field("JobName").is_some());
    }

    #[test]
    fn wrong_types_do_not_fail() {
        let item = JobItem::from_json(r#"{"AgentTimeout":[1],"Headers":"x","JobName":{"a":1}}"#)
            .expect("lenient");
        assert_eq!(item.agent_timeout, None);
        assert!(item.headers.is_empty());
        assert!(JobItem::from_json("[1,2]").is_err());
        assert!(JobItem::from_json("null").is_ok());
    }
}

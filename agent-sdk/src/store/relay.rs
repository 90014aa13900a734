//! The relay backend: the agent's store operations sent over HTTP to a `jobagent-relay`,
//! which alone holds the store's credentials (`JOBAGENT_STORE=relay+http://host:port`, with
//! `JOBAGENT_RELAY_TOKEN`).
//!
//! Each operation is one `POST <base>/v1/<op>` with a JSON body and `Authorization: Bearer
//! <token>`; the answer is the operation's JSON result (200) or `{"error": "..."}`. Every
//! operation is idempotent when retried, so a request whose answer was lost is simply sent
//! again: console lines are unique per console (the line's JSON holds its strictly
//! increasing offset; the stores upsert on it), results carry their first-report token (the
//! mark of the first writer wins; a retry with the same token is recognised as ours), hashes
//! are upserts, and cluster operations are keyed by this process's id. The wire shapes of the
//! store operations are here; those of cluster mode in `cluster/relay.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::error::StoreError;
use crate::store::line::EncodedLine;
use crate::store::results::RESULTS;
use crate::store::{ResultWrite, StoreType};

/// The API's path prefix (its version).
pub(crate) const API: &str = "/v1/";
/// How long one request may take, connection included.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);
/// How much of an error answer is kept.
const ERROR_CHARS: usize = 300;

/// `console`: one console batch.
#[cfg_attr(not(feature = "relay-server"), allow(dead_code))]
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ConsoleCall {
    pub(crate) set_key: String,
    pub(crate) hash_key: String,
    pub(crate) lines: Vec<EncodedLine>,
}

/// `set_hash`: fields of one hash.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct SetHashCall {
    pub(crate) key: String,
    pub(crate) pairs: Vec<(String, String)>,
    /// Seconds; `None`: never expires.
    pub(crate) life_secs: Option<u64>,
}

/// `add_to_set`: one set member.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct AddToSetCall {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) score: f64,
}

/// `first_report`: the exactly-once mark of a dispatch's result.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct FirstReportCall {
    pub(crate) id: String,
    pub(crate) token: String,
}

/// `result`: a dispatch's result with its first-report mark, written in one step.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ResultCall {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) field: String,
    pub(crate) value: String,
}

/// `lock_try`: one attempt at the distributed lock.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct LockTryCall {
    pub(crate) resource: String,
    pub(crate) stale_ms: u64,
}

/// `lock_keep`, `lock_release`: a held lock.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct LockCall {
    pub(crate) resource: String,
    pub(crate) owner: String,
}

/// `fence`: the next fencing token of a lock resource.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct FenceCall {
    pub(crate) resource: String,
}

/// `read_set`, `read_hash`, `read_hash_all`: the dashboard's reads (`jobagent-dev`, tests).
#[derive(Debug, Default, Deserialize, Serialize)]
pub(crate) struct ReadCall {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) field: String,
    #[serde(default)]
    pub(crate) from: usize,
    #[serde(default)]
    pub(crate) count: usize,
}

/// The answer to `ping`: the type of the store behind the relay.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct PingAnswer {
    pub(crate) kind: String,
    /// Whether the relay takes `result` (a result in one step); a relay of an earlier
    /// version does not say it, and is sent the result in three calls.
    #[serde(default)]
    pub(crate) result: bool,
}

/// An error answer.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
}

/// A relay: where it is and the token this agent shows it.
pub(crate) struct RelayStore {
    http: reqwest::Client,
    /// `http(s)://host:port[/path]`, no trailing slash.
    base: String,
    token: String,
    label: String,
    host: String,
    /// What the relay said of itself (`ping`), once told.
    remote: tokio::sync::OnceCell<Remote>,
}

/// What a relay says of itself.
#[derive(Clone, Copy)]
struct Remote {
    /// The type of the store behind it.
    kind: StoreType,
    /// Whether it takes `result`.
    result: bool,
}

impl fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayStore")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// TLS towards a `relay+https://` relay: its certificate must lead to one of the system's
/// trusted CAs (a private CA is trusted the usual way, by adding it to the system's store or
/// naming it in `SSL_CERT_FILE`) and name the relay's host. Reads the system's roots once.
fn https_config() -> Result<rustls::ClientConfig, StoreError> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    let roots = ROOTS.get_or_init(|| Arc::new(super::tls::system_roots()));
    if roots.is_empty() {
        return Err(StoreError::config(
            "relay+https needs trusted CA certificates but the system has none: install \
                    them (e.g. the ca-certificates package) or name the relay's CA in \
                    SSL_CERT_FILE",
        ));
    }
    let provider = super::tls::crypto_provider();
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth())
}

impl RelayStore {
    /// The relay at `url` (`relay+http://host:port[/path]` or `relay+https://...`), with the
    /// bearer `token`. No I/O, except reading the system's trusted CAs (once) for `https`.
    pub(crate) fn open(url: &str, token: Option<&str>) -> Result<Self, StoreError> {
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| StoreError::config("a relay is given as relay+http://host:port"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "relay+http" => "http",
            "relay+https" => "https",
            other => {
                return Err(StoreError::config(format!(
                    "`{}` is not a relay scheme: use relay+http:// or relay+https://",
                    other.chars().take(20).collect::<String>()
                )));
            }
        };
        if rest.contains('@') {
            return Err(StoreError::config(
                "a relay URL carries no credentials: give the token in JOBAGENT_RELAY_TOKEN",
            ));
        }
        let rest = rest.trim_end_matches('/');
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || rest.contains(['?', '#', ' ']) {
            return Err(StoreError::config(
                "a relay is given as relay+http://host:port[/path]",
            ));
        }
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                StoreError::config("a relay needs this agent's token: set JOBAGENT_RELAY_TOKEN")
            })?;
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StoreError::config(
                "JOBAGENT_RELAY_TOKEN may hold visible ASCII characters only",
            ));
        }
        let base = format!("{scheme}://{rest}");
        reqwest::Url::parse(&base)
            .map_err(|e| StoreError::config(format!("the relay URL: {e}")))?;
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(host, _)| host)
            .trim_matches(['[', ']'])
            .to_owned();
        let mut http = reqwest::Client::builder()
            .timeout(REQUEST_WITHIN)
            .connect_timeout(CONNECT_WITHIN)
            .redirect(reqwest::redirect::Policy::none());
        if scheme == "https" {
            http = http.use_preconfigured_tls(https_config()?);
        }
        let http = http.build().map_err(|e| {
            StoreError::config(format!(
                "the relay's HTTP client: {}",
                crate::error::chain(&e)
            ))
        })?;
        Ok(Self {
            http,
            label: format!("relay {scheme}://{authority}"),
            base,
            token: token.to_owned(),
            host,
            remote: tokio::sync::OnceCell::new(),
        })
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn hosts(&self) -> Vec<String> {
        vec![self.host.clone()]
    }

    /// Sends `op` with `body`; its answer. The error's kind follows the relay's answer:
    /// 413, 400 and 403 (too large, malformed, outside this agent's scope) are
    /// [`Refused`](crate::store::StoreErrorKind::Refused): sent again unchanged they would be refused again;
    /// 401 is [`Config`](crate::store::StoreErrorKind::Config) (the token); no answer in time is
    /// [`TimedOut`](crate::store::StoreErrorKind::TimedOut); a 5xx, a 429 or a connection that failed is
    /// [`Unavailable`](crate::store::StoreErrorKind::Unavailable).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        op: &str,
        body: &impl Serialize,
    ) -> Result<T, StoreError> {
        let url = format!("{}{API}{op}", self.base);
        let sent = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport(op, &e))?;
        let status = sent.status();
        let bytes = sent.bytes().await.map_err(|e| self.transport(op, &e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::unavailable(format!(
                    "the {} ({op}) answered what this agent cannot read: {e}",
                    self.label
                ))
            });
        }
        let said = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        let said: String = said.chars().take(ERROR_CHARS).collect();
        Err(match status.as_u16() {
            401 => StoreError::config(format!(
                "the {} refused this agent's token (401): check JOBAGENT_RELAY_TOKEN against the relay's JOBAGENT_RELAY_TOKENS",
                self.label
            )),
            code => {
                let message = format!("the {} ({op}) answered {code}: {said}", self.label);
                match code {
                    400 | 403 | 413 => StoreError::refused(message),
                    _ => StoreError::unavailable(message),
                }
            }
        })
    }

    /// A transport error's kind and text (reqwest's own text names the URL, which holds no
    /// secret).
    fn transport(&self, op: &str, e: &reqwest::Error) -> StoreError {
        if e.is_timeout() {
            StoreError::timed_out(format!("the {} ({op})", self.label), REQUEST_WITHIN)
        } else if e.is_connect() {
            StoreError::unavailable(format!(
                "the {} ({op}): cannot connect: {}",
                self.label,
                crate::error::chain(e)
            ))
        } else {
            StoreError::unavailable(format!(
                "the {} ({op}): {}",
                self.label,
                crate::error::chain(e)
            ))
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.remote_kind().await.map(drop)
    }

    /// The type of the store behind the relay (asked once; the lock's timings follow it).
    pub(crate) async fn remote_kind(&self) -> Result<StoreType, StoreError> {
        self.remote().await.map(|r| r.kind)
    }

    /// What the relay says of itself, asked once.
    async fn remote(&self) -> Result<Remote, StoreError> {
        self.remote
            .get_or_try_init(|| async {
                let answer: PingAnswer = self.call("ping", &()).await?;
                match answer.kind.parse::<StoreType>() {
                    Ok(StoreType::Relay) | Err(_) => Err(StoreError::config(format!(
                        "the {} fronts a store of unknown type `{}`",
                        self.label,
                        answer.kind.chars().take(20).collect::<String>()
                    ))),
                    Ok(kind) => Ok(Remote {
                        kind,
                        result: answer.result,
                    }),
                }
            })
            .await
            .copied()
    }

    /// The relay's own check of the store behind it. Whatever the relay says is taken as
    /// "cannot tell": it answers 503 for a refusal and an outage alike.
    pub(crate) async fn check_tables(&self, within: Duration) -> Result<(), super::CheckError> {
        match tokio::time::timeout(within, self.call("check", &())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(super::CheckError::Unknown(e)),
            Err(_) => Err(super::CheckError::no_answer(within)),
        }
    }

    pub(crate) async fn write_console(
        &self,
        set_key: &str,
        hash_key: &str,
        lines: &[EncodedLine],
        _expire: Duration,
    ) -> Result<(), StoreError> {
        let call = ConsoleCallRef {
            set_key,
            hash_key,
            lines,
        };
        self.call("console", &call).await
    }

    pub(crate) async fn set_hash(
        &self,
        key: &str,
        pairs: &[(&str, &str)],
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        let call = SetHashCall {
            key: key.to_owned(),
            pairs: pairs
                .iter()
                .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
                .collect(),
            life_secs: life.map(|l| l.as_secs().max(1)),
        };
        self.call("set_hash", &call).await
    }

    pub(crate) async fn add_to_set(
        &self,
        key: &str,
        value: &str,
        score: f64,
        _expire: Duration,
    ) -> Result<(), StoreError> {
        let call = AddToSetCall {
            key: key.to_owned(),
            value: value.to_owned(),
            score,
        };
        self.call("add_to_set", &call).await
    }

    /// A result with its mark in one call; to a relay of an earlier version (no `result`
    /// operation), in three: the mark, the hash, the set member.
    pub(crate) async fn write_result(
        &self,
        w: &ResultWrite<'_>,
        expire: Duration,
    ) -> Result<bool, StoreError> {
        let mark = FirstReportCall {
            id: w.id.to_owned(),
            token: w.token.to_owned(),
        };
        let Some((field, value)) = w.result else {
            return self.call("first_report", &mark).await;
        };
        if self.remote().await?.result {
            let call = ResultCall {
                id: mark.id,
                token: mark.token,
                field: field.to_owned(),
                value: value.to_owned(),
            };
            return self.call("result", &call).await;
        }
        if !self.call::<bool>("first_report", &mark).await? {
            return Ok(false);
        }
        self.set_hash(&w.key(), &[(field, value)], Some(expire))
            .await?;
        self.add_to_set(RESULTS, w.id, 1.0, expire).await?;
        Ok(true)
    }

    pub(crate) async fn lock_try(
        &self,
        resource: &str,
        stale_after: Duration,
    ) -> Result<Option<String>, StoreError> {
        let call = LockTryCall {
            resource: resource.to_owned(),
            stale_ms: u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
        };
        self.call("lock_try", &call).await
    }

    pub(crate) async fn lock_keep(
        &self,
        resource: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        self.call("lock_keep", &lock_call(resource, owner)).await
    }

    pub(crate) async fn lock_release(&self, resource: &str, owner: &str) -> Result<(), StoreError> {
        self.call("lock_release", &lock_call(resource, owner)).await
    }

    pub(crate) async fn fence(&self, resource: &str) -> Result<u64, StoreError> {
        let call = FenceCall {
            resource: resource.to_owned(),
        };
        self.call("fence", &call).await
    }

    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) async fn read_set(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let call = ReadCall {
            key: key.to_owned(),
            from,
            count,
            ..ReadCall::default()
        };
        self.call("read_set", &call).await
    }

    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) async fn read_hash(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Option<String>, StoreError> {
        let call = ReadCall {
            key: key.to_owned(),
            field: field.to_owned(),
            ..ReadCall::default()
        };
        self.call("read_hash", &call).await
    }

    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) async fn read_hash_all(
        &self,
        key: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let call = ReadCall {
            key: key.to_owned(),
            ..ReadCall::default()
        };
        self.call("read_hash_all", &call).await
    }
}

/// [`ConsoleCall`] without copying the lines.
#[derive(Serialize)]
struct ConsoleCallRef<'a> {
    set_key: &'a str,
    hash_key: &'a str,
    lines: &'a [EncodedLine],
}

fn lock_call(resource: &str, owner: &str) -> LockCall {
    LockCall {
        resource: resource.to_owned(),
        owner: owner.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the relay answers decides what the agent may do with the error: a refusal is not
    /// retried unchanged (the console writer splits the batch), an outage is.
    #[tokio::test]
    async fn answers_map_to_what_the_agent_may_do() {
        use crate::store::StoreErrorKind as K;
        use axum::extract::Path;
        use axum::http::StatusCode;
        // A stand-in relay answering `/v1/<code>` with that status and an error body.
        let app = axum::Router::new().route(
            "/v1/{op}",
            axum::routing::post(|Path(op): Path<String>| async move {
                let code = op
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok());
                let code = code.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (
                    code,
                    axum::Json(serde_json::json!({"error": format!("said {code}")})),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let port = listener.local_addr().expect("an address").port();
        // The test's own server, dropped with the test's runtime.
        tokio::spawn(async move { axum::serve(listener, app).await });
        let relay = RelayStore::open(&format!("relay+http://127.0.0.1:{port}"), Some("t0k"))
            .expect("a relay");
        for (code, kind) in [
            (413, K::Refused),
            (400, K::Refused),
            (403, K::Refused),
            (401, K::Config),
            (429, K::Unavailable),
            (500, K::Unavailable),
            (503, K::Unavailable),
        ] {
            let e = relay
                .call::<()>(&code.to_string(), &())
                .await
                .expect_err("an error answer");
            assert_eq!(e.kind(), kind, "{code}: {e}");
            assert!(!e.to_string().contains("t0k"), "{e}");
        }
        // Nothing listening: an outage.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let port = closed.local_addr().expect("an address").port();
        drop(closed);
        let gone = RelayStore::open(&format!("relay+http://127.0.0.1:{port}"), Some("t0k"))
            .expect("a relay");
        let e = gone.call::<()>("console", &()).await.expect_err("no relay");
        assert_eq!(e.kind(), K::Unavailable, "{e}");
    }

    /// A relay that says it takes `result` gets a result in that one call; one of an
    /// earlier version (its `ping` says nothing of it) in the three calls it knows, the mark
    /// first, and nothing more when the mark is another writer's.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_result_goes_in_one_call_unless_the_relay_is_older() {
        use axum::extract::{Path, State};
        use std::sync::Mutex;
        type Seen = Arc<Mutex<Vec<String>>>;
        async fn stand_in(new: bool, marked: bool) -> (RelayStore, Seen) {
            let seen = Seen::default();
            let app = axum::Router::new()
                .route(
                    "/v1/{op}",
                    axum::routing::post(
                        move |State(seen): State<Seen>, Path(op): Path<String>| async move {
                            let answer = match op.as_str() {
                                "ping" => serde_json::json!({"kind": "postgresql", "result": new}),
                                "first_report" | "result" => serde_json::json!(marked),
                                _ => serde_json::Value::Null,
                            };
                            seen.lock().expect("the list").push(op);
                            axum::Json(answer)
                        },
                    ),
                )
                .with_state(seen.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port");
            let port = listener.local_addr().expect("an address").port();
            tokio::spawn(async move { axum::serve(listener, app).await });
            let relay = RelayStore::open(&format!("relay+http://127.0.0.1:{port}"), Some("t"))
                .expect("a relay");
            (relay, seen)
        }
        let w = ResultWrite {
            mark: "7",
            token: "1:ab",
            id: "7",
            result: Some(("1", "{}")),
        };
        let day = Duration::from_secs(86_400);
        for (new, marked, calls) in [
            (true, true, &["ping", "result"][..]),
            (
                false,
                true,
                &["ping", "first_report", "set_hash", "add_to_set"],
            ),
            (false, false, &["ping", "first_report"]),
        ] {
            let (relay, seen) = stand_in(new, marked).await;
            let taken = relay.write_result(&w, day).await.expect("written");
            assert_eq!(taken, marked);
            assert_eq!(*seen.lock().expect("the list"), calls, "new: {new}");
        }
    }

    #[test]
    fn relay_urls() {
        let r = RelayStore::open("relay+http://relay.internal:7070/", Some("t0k"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.base, "http://relay.internal:7070");
        assert_eq!(r.hosts(), vec!["relay.internal".to_owned()]);
        assert!(!format!("{r:?}").contains("t0k"));
        let e = |url: &str, token: Option<&str>| RelayStore::open(url, token).err();
        assert!(e("relay+http://h:1", None).is_some_and(|e| e.contains("JOBAGENT_RELAY_TOKEN")));
        assert!(e("relay+http://user:pw@h:1", Some("t")).is_some_and(|e| !e.contains("pw")));
        assert!(e("relay+ftp://h:1", Some("t")).is_some());
        assert!(e("relay+http://", Some("t")).is_some());
        assert!(e("relay+https://h:1", Some("bad token")).is_some());
    }
}

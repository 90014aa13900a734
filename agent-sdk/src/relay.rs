//! Not public API: the server side of `jobagent-relay` (feature `relay-server`).
//!
//! The relay holds the one store's credentials and answers agents' store operations over
//! HTTP (`POST /v1/<op>`, see `store/relay.rs` for the wire shapes). It keeps no state of
//! its own: run as many as you like behind one address.
//!
//! **A token is a tenant.** Each token belongs to one service (`billing:<secret>`), and the
//! relay scopes everything the token touches to that service, whatever the request says:
//!
//! - cluster records: instance names, classes and stop ids are stored as `<service>:<name>`
//!   (and given back without it), so one service cannot claim, stop, list or squat another's;
//! - locks: a resource is `jobagent:lock:<service>:<resource>` unless the operator granted the
//!   service that name (or a `prefix*` pattern), for locks shared with .NET services; the
//!   center's own locks (`hangfire:*`, the schema's prefix) and, on Redis, Hangfire's key
//!   names are refused even when granted; the stale period is never shorter than the store's
//!   own (it is raised to it);
//! - results: the first-report mark is per service, and a result (`result`: the mark and the
//!   result in one write; from agents of earlier versions `first_report`, then a
//!   `_agent_result_<id>` write) is taken only for a job that exists in the center's storage
//!   and is Processing (read from Hangfire's own tables or keys);
//! - reads: `_agent_result_<id>` only after this service reported it (before, it reads as
//!   absent); no cluster record (a
//!   console's key names no service: consoles stay readable to every token).
//!
//! Each request is checked in this order, and nothing is written unless all pass:
//!
//! 1. a bearer token (`Authorization: Bearer`, the scheme in any case), compared in constant
//!    time: else 401 (failed attempts are counted and logged once a minute);
//! 2. that token's request rate: else 429;
//! 3. the body's size: else 413;
//! 4. the JSON's shape: else 400;
//! 5. the keys and lock names it names: else 403;
//! 6. a console batch's line count: else 413;
//! 7. for a result, the job's state in the center's storage: else 409.
//!
//! A store that fails answers 503 only when a retry can fix it (no connection, a timeout, a
//! busy store); a permanent refusal (a constraint, a privilege, bad input) is a 4xx saying
//! so, and the database's own text goes to the relay's log, never into the answer.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::cluster::relay::ClusterCall;
use crate::cluster::{ClaimValue, Claimed, ClusterRun, Member, RunRecord};
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
use crate::store::Backend;
use crate::store::relay::{
    API, AddToSetCall, ConsoleCall, ErrorBody, FenceCall, FirstReportCall, LockCall, LockTryCall,
    PingAnswer, ReadCall, ResultCall, SetHashCall,
};
use crate::store::{Opening, ResultWrite, Store, StoreError, StoreErrorKind, StoreType};

/// Keys an agent writes in hashes and sets, by prefix.
const WRITE_SCOPE: &[&str] = &["console:", "_agent_result_", "AgentHeart:"];
/// Keys the dashboard's reads may name (`jobagent-dev` through a relay). Cluster records
/// (`jobagent:*`) are reached through the cluster operations only, in the caller's namespace.
const READ_SCOPE: &[&str] = &["console:", "_agent_result_", "AgentHeart:"];
/// The result hash of a dispatch: `_agent_result_<id>`; its set is `_agent_result_`.
const RESULT_KEY: &str = "_agent_result_";
/// The longest key or lock resource accepted (Hangfire's `Key` columns hold 100).
const MAX_KEY_CHARS: usize = 100;
/// The longest service name.
const MAX_TENANT_CHARS: usize = 32;
/// The longest job id a result may name (Hangfire.Redis's ids are GUIDs).
const MAX_JOB_ID_CHARS: usize = 40;
/// How long one operation may take on the store.
const OP_WITHIN: Duration = Duration::from_secs(30);
/// How long the probe that tells an outage from a refusal may take.
const PROBE_WITHIN: Duration = Duration::from_secs(3);
/// How often failed token attempts are summed up in the log, by default.
const FAILED_TOKENS_EVERY: Duration = Duration::from_secs(60);
/// Hangfire.PostgreSql's `DistributedLockTimeout` default (`PostgreSqlStorageOptions`): a lock
/// row younger than this is live. The relay never lets a caller treat it as stale earlier.
const PG_STALE_FLOOR: Duration = Duration::from_secs(600);
/// Hangfire.MySqlStorage judges staleness by the waiter's own timeout; Hangfire's own
/// schedulers wait a minute (`RecurringJobScheduler`, `DelayedJobScheduler`). The relay never
/// lets a caller treat a row younger than that as stale. (An agent's own held lock is
/// refreshed every 500 ms, so this only delays taking over a crashed holder's row.)
const MYSQL_STALE_FLOOR: Duration = Duration::from_secs(60);
/// Lock resources that are the center's own, refused to every token, granted or not:
/// Hangfire.PostgreSql writes `<schema>:<resource>` (`hangfire:recurring-jobs:lock`,
/// `hangfire:locks:schedulepoller`), and Hangfire's own resource names are below it.
const CENTER_LOCKS: &[&str] = &["hangfire:", "recurring-jobs:", "locks:", "job:", "lock:"];
/// Key names Hangfire.Redis.StackExchange keeps under its prefix (`RedisWriteOnlyTransaction`,
/// `RedisConnection`, `RedisStorage`), and the agent's own: on Redis a lock resource is a
/// key, and a granted one may not be one of these (nor start like them).
const HANGFIRE_REDIS_KEYS: &[&str] = &[
    "job:",
    "jobs",
    "queue:",
    "queues",
    "recurring-job",
    "schedule",
    "processing",
    "succeeded",
    "failed",
    "deleted",
    "awaiting",
    "retries",
    "servers",
    "server:",
    "stats:",
    "state",
    "lock",
    "events:",
    "console:",
    "_agent_result_",
    "agentheart:",
    "activeagent:",
    "jobagent:",
];

/// One service allowed through the relay: its name, its token and its lock grants.
#[derive(Debug)]
#[non_exhaustive]
pub struct Tenant {
    /// The service's name (`billing`): 1 to 32 of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// The whole token the service shows (`billing:<secret>`).
    pub token: crate::Secret,
    /// Lock resources the service may take as named (shared with .NET services): exact names
    /// or `prefix*` patterns.
    pub locks: Vec<String>,
}

/// Parses token entries: `<service>:<secret>` each, optionally followed by whitespace and
/// `lock=<name or prefix*>` grants (repeatable; `lock=a,b` is not: one name per item).
/// Entries are separated by `sep` (`,` in `JOBAGENT_RELAY_TOKENS`, a line in a tokens file,
/// where `#` starts a comment). `source` names where they came from, for errors. A bare
/// secret (the form before services had names) is refused, saying the new form.
pub fn parse_tenants(text: &str, sep: char, source: &str) -> Result<Vec<Tenant>, String> {
    let mut tenants = Vec::new();
    for (n, raw) in text.split(sep).enumerate() {
        let entry = match sep {
            '\n' => raw.split('#').next().unwrap_or_default(),
            _ => raw,
        }
        .trim();
        if entry.is_empty() {
            continue;
        }
        let at = format!("{source}, entry {}", n + 1);
        let mut items = entry.split_whitespace();
        let token = items.next().unwrap_or_default();
        let Some((name, secret)) = token.split_once(':') else {
            return Err(format!(
                "{at} has no service name: since tokens are tenants, write each as `<service>:<secret>` (e.g. `billing:<secret>`), and give the service's agents that whole string as JOBAGENT_RELAY_TOKEN"
            ));
        };
        check_tenant_name(name).map_err(|e| format!("{at}: {e}"))?;
        if secret.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: the secret after `{name}:` is empty or holds characters other than visible ASCII"
            ));
        }
        let mut locks = Vec::new();
        for item in items {
            let Some(grant) = item.strip_prefix("lock=") else {
                return Err(format!(
                    "{at}: `{}` is not a grant; write `lock=<name>` or `lock=<prefix>*`",
                    item.chars().take(40).collect::<String>()
                ));
            };
            check_grant(grant).map_err(|e| format!("{at}: {e}"))?;
            locks.push(grant.to_owned());
        }
        tenants.push(Tenant {
            name: name.to_owned(),
            token: crate::Secret::new(token),
            locks,
        });
    }
    Ok(tenants)
}

fn check_tenant_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_TENANT_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the service name before `:` must be 1 to {MAX_TENANT_CHARS} of A-Z a-z 0-9 _ - ."
        ))
    }
}

fn check_grant(grant: &str) -> Result<(), String> {
    let stem = grant.strip_suffix('*').unwrap_or(grant);
    if stem.is_empty() || stem.contains('*') || grant.chars().count() > MAX_KEY_CHARS {
        return Err(format!(
            "lock grant `{}` must be a name or a non-empty `prefix*`, at most {MAX_KEY_CHARS} characters",
            grant.chars().take(40).collect::<String>()
        ));
    }
    if let Some(p) = CENTER_LOCKS
        .iter()
        .chain(&["jobagent:"])
        .find(|p| starts_with_ci(stem, p) || starts_with_ci(p, stem))
    {
        return Err(format!(
            "lock grant `{}` reaches `{p}*`, the center's or the relay's own locks, which no service may take",
            grant.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

fn starts_with_ci(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.is_char_boundary(prefix.len())
        && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// What a relay serves, and its bounds.
#[derive(Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The store (as `JOBAGENT_STORE` takes it: a connection string or URL).
    pub store: crate::Secret,
    /// Its type, when the string is not a URL (`JOBAGENT_RELAY_STORE_TYPE`).
    pub store_type: Option<StoreType>,
    /// Its schema, table prefix or key prefix; empty: the type's default.
    pub prefix: String,
    /// Days until written rows expire.
    pub expire_days: f64,
    /// The services and their tokens.
    pub tenants: Vec<Tenant>,
    /// Whether a result is taken only for a job Processing in the center's storage (on by
    /// default; off only for a store without Hangfire's job tables, such as a test's).
    pub check_jobs: bool,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// The most lines in one console batch.
    pub max_lines: usize,
    /// Requests per second per token (bursts of as many).
    pub rate_per_token: u32,
    /// How often the count of requests refused for a missing or wrong token is logged.
    pub refused_log_every: Duration,
}

impl RelayConfig {
    /// A relay of `store` for `tenants`, with the default bounds: bodies of 8 MiB, batches
    /// of 10,000 lines, 2,000 requests per second per token, rows kept 7 days, results
    /// checked against the center's jobs.
    pub fn new(store: impl Into<String>, tenants: Vec<Tenant>) -> Self {
        Self {
            store: crate::Secret::new(store),
            store_type: None,
            prefix: String::new(),
            expire_days: 7.0,
            tenants,
            check_jobs: true,
            max_body: 8 * 1024 * 1024,
            max_lines: 10_000,
            rate_per_token: 2_000,
            refused_log_every: FAILED_TOKENS_EVERY,
        }
    }
}

/// A running relay's state.
struct Relay {
    store: Store,
    tenants: Vec<Tenant>,
    limits: Vec<DefaultDirectRateLimiter>,
    check_jobs: bool,
    max_body: usize,
    max_lines: usize,
    rate: u32,
    /// Requests refused for a missing or wrong token since the last summary.
    failed_tokens: Arc<AtomicU64>,
}

/// The relay's router (`POST /v1/{op}`), and a description of its store for the log. Call it
/// inside a Tokio runtime: it starts the task that sums up failed token attempts.
pub fn router(config: RelayConfig) -> Result<(Router, String), String> {
    let kind = config
        .store_type
        .or_else(|| StoreType::of_url(config.store.expose()))
        .unwrap_or(StoreType::PostgreSql);
    if kind == StoreType::Relay {
        return Err("a relay's store is a database, not another relay".to_owned());
    }
    let tenants = config.tenants;
    if tenants.is_empty() {
        return Err(
            "no tokens: set JOBAGENT_RELAY_TOKENS (`<service>:<secret>`, comma-separated) or JOBAGENT_RELAY_TOKENS_FILE"
                .to_owned(),
        );
    }
    for (i, t) in tenants.iter().enumerate() {
        if tenants[..i]
            .iter()
            .any(|u| u.token.expose() == t.token.expose())
        {
            return Err(format!(
                "the token of service `{}` is given twice; give each entry its own secret",
                t.name
            ));
        }
    }
    // None: the type's default (MySQL: found from the tables, as the agent does).
    let prefix = match config.prefix.trim() {
        "" => None,
        given => Some(given),
    };
    let store = Store::open(&Opening {
        kind,
        connection: config.store.expose(),
        prefix,
        expire_days: config.expire_days,
        db: None,
        from_center: false,
        load: crate::store::Load::Now,
        relay_token: None,
    })?;
    let label = format!("{} ({kind})", store.label);
    let rate = config.rate_per_token.max(1);
    let quota = Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN));
    let failed_tokens = Arc::new(AtomicU64::new(0));
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let every = config.refused_log_every.max(Duration::from_millis(100));
        handle.spawn(sum_up_failed_tokens(Arc::downgrade(&failed_tokens), every));
    }
    let relay = Relay {
        limits: tenants.iter().map(|_| RateLimiter::direct(quota)).collect(),
        store,
        tenants,
        check_jobs: config.check_jobs,
        max_body: config.max_body.max(1024),
        max_lines: config.max_lines.max(1),
        rate,
        failed_tokens,
    };
    let router = Router::new()
        .route(&format!("{API}{{op}}"), post(handle))
        .with_state(Arc::new(relay));
    Ok((router, label))
}

/// Logs, once per `period` in which any came, how many requests showed a missing or wrong
/// token (one line, not one per attempt). Ends with the relay.
async fn sum_up_failed_tokens(count: std::sync::Weak<AtomicU64>, period: Duration) {
    let mut every = tokio::time::interval(period);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(count) = count.upgrade() else { return };
        let n = count.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(
                refused = n,
                within_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
                "requests with a missing or wrong relay token were refused (401)"
            );
        }
    }
}

/// A refused or failed request: its status and `{"error": ...}`.
struct Refusal {
    status: StatusCode,
    error: String,
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Refusal {
    Refusal {
        status,
        error: error.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &ErrorBody { error: self.error });
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn ok(value: impl serde::Serialize) -> Response {
    json(StatusCode::OK, &value)
}

/// `value` as a JSON answer (axum's `json` feature is not on in this crate).
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the answer could not be encoded: {e}"),
        )
            .into_response(),
    }
}

async fn handle(
    State(relay): State<Arc<Relay>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(who) = relay.token_of(&headers) else {
        relay.failed_tokens.fetch_add(1, Ordering::Relaxed);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <JOBAGENT_RELAY_TOKEN>)",
        )
        .into_response();
    };
    if relay.limits.get(who).is_some_and(|l| l.check().is_err()) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this token is over its rate of {} requests per second; retry shortly",
                relay.rate
            ),
        )
        .into_response();
    }
    let bytes = match axum::body::to_bytes(body, relay.max_body).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request is larger than {} bytes (JOBAGENT_RELAY_MAX_BODY); nothing was written",
                    relay.max_body
                ),
            )
            .into_response();
        }
    };
    let Some(tenant) = relay.tenants.get(who) else {
        return refuse(StatusCode::UNAUTHORIZED, "unknown token").into_response();
    };
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(OP_WITHIN, relay.serve(tenant, &op, &bytes)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(refusal)) => refusal.into_response(),
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the store did not answer within {} s; retry",
                OP_WITHIN.as_secs()
            ),
        )
        .into_response(),
    };
    tracing::debug!(
        op = %op.chars().take(30).collect::<String>().escape_debug(),
        service = %tenant.name,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "relay request"
    );
    response
}

/// What a store's error means for the caller.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The store is unreachable, timed out or busy: a retry can fix it (503).
    Unavailable,
    /// The store refused the relay's own login: only the relay's operator can fix it (502).
    Login,
    /// The store refused this operation for a privilege (403).
    Privilege,
    /// The store refused this operation's data (a constraint, bad input) (422).
    Refused,
    /// The store refused the relay's account ([`StoreErrorKind::Config`]): its login
    /// ([`Failure::Login`]) when a probe of the store is refused too, else a privilege
    /// ([`Failure::Privilege`]).
    Denied,
}

/// What a store error's kind says for the caller, before a probe tells apart what the kind
/// alone cannot (see [`Relay::failed`]).
fn class_of(kind: StoreErrorKind) -> Failure {
    match kind {
        StoreErrorKind::Unavailable | StoreErrorKind::TimedOut => Failure::Unavailable,
        StoreErrorKind::Refused | StoreErrorKind::Conflict => Failure::Refused,
        StoreErrorKind::Config => Failure::Denied,
    }
}

impl Relay {
    /// The index of the token the request shows, if it is one of ours. The scheme is matched
    /// in any letter case (RFC 9110); every token is compared, in constant time.
    fn token_of(&self, headers: &HeaderMap) -> Option<usize> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
        let (scheme, shown) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let shown = shown.trim().as_bytes();
        let mut found = None;
        for (i, tenant) in self.tenants.iter().enumerate() {
            if bool::from(tenant.token.expose().as_bytes().ct_eq(shown)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    /// A store error as an answer: its kind decides the status ([`class_of`]); the store's own
    /// text goes to the log only. What the kind alone cannot tell is told apart by a probe of
    /// the store: a refusal from an unreachable store is an outage (503), from a reachable one
    /// a refusal (422); a refused account is the relay's login (502) when the probe is refused
    /// too, a privilege (403) when the probe passes.
    async fn failed(&self, op: &str, e: StoreError) -> Refusal {
        let class = class_of(e.kind());
        self.answer_failure(op, class, String::from(e)).await
    }

    /// The answer for a store error of `class` (`e` goes to the log only).
    async fn answer_failure(&self, op: &str, mut class: Failure, e: String) -> Refusal {
        if matches!(class, Failure::Refused | Failure::Denied) {
            let probe = tokio::time::timeout(PROBE_WITHIN, self.store.ping(PROBE_WITHIN)).await;
            class = match (class, probe) {
                (Failure::Refused, Ok(Ok(()))) => Failure::Refused,
                (Failure::Denied, Ok(Ok(()))) => Failure::Privilege,
                (Failure::Denied, Ok(Err(p))) if p.kind() == StoreErrorKind::Config => {
                    Failure::Login
                }
                _ => Failure::Unavailable,
            };
        }
        let reference = format!("{:08x}", rand::random::<u32>());
        tracing::warn!(
            op,
            reference = %reference,
            class = ?class,
            error = %e.escape_debug(),
            "the store failed a relay operation"
        );
        match class {
            Failure::Unavailable => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the store is unavailable or busy; retry (relay log reference {reference})"
                ),
            ),
            Failure::Login => refuse(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the store refused the relay's own login: the relay's operator must fix JOBAGENT_RELAY_STORE (relay log reference {reference})"
                ),
            ),
            Failure::Privilege => refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "the store refused this operation to the relay's account (a privilege); a retry will not help (relay log reference {reference})"
                ),
            ),
            // Told apart above.
            Failure::Refused | Failure::Denied => refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the store refused this operation's data (a constraint or bad input); a retry will not help (relay log reference {reference})"
                ),
            ),
        }
    }

    /// `res` as an answer, or its error classified.
    async fn answer<T: serde::Serialize>(
        &self,
        op: &str,
        res: Result<T, StoreError>,
    ) -> Result<Response, Refusal> {
        match res {
            Ok(value) => Ok(ok(value)),
            Err(e) => Err(self.failed(op, e).await),
        }
    }

    async fn serve(&self, t: &Tenant, op: &str, body: &Bytes) -> Result<Response, Refusal> {
        let s = &self.store;
        match op {
            // Both answer only when the store takes the relay's own login.
            "ping" => {
                let pinged = s.ping(PROBE_WITHIN).await;
                self.answer(op, pinged).await?;
                Ok(ok(PingAnswer {
                    kind: s.kind().name().to_owned(),
                    result: true,
                }))
            }
            "check" => {
                let pinged = s.ping(PROBE_WITHIN).await;
                self.answer(op, pinged).await?;
                let checked = s
                    .check_tables(tokio::time::Instant::now() + crate::store::FIRST_REACH_WITHIN)
                    .await;
                self.answer(op, checked).await
            }
            "console" => {
                let c: ConsoleCall = parse(body)?;
                scope(&c.set_key, &["console:"])?;
                scope(&c.hash_key, &["console:"])?;
                if c.lines.len() > self.max_lines {
                    return Err(refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "a batch of {} lines is more than {} (JOBAGENT_RELAY_MAX_LINES); nothing was written",
                            c.lines.len(),
                            self.max_lines
                        ),
                    ));
                }
                // References go into the console's hash (`hash_key`, checked above).
                for line in &c.lines {
                    if !line.score.is_finite() {
                        return Err(refuse(
                            StatusCode::BAD_REQUEST,
                            "a line's score is not a finite number",
                        ));
                    }
                }
                let res = s.write_console(&c.set_key, &c.hash_key, &c.lines).await;
                self.answer(op, res).await
            }
            "set_hash" => {
                let c: SetHashCall = parse(body)?;
                scope(&c.key, WRITE_SCOPE)?;
                if let Some(id) = c.key.strip_prefix(RESULT_KEY) {
                    self.processing(id).await?;
                }
                let pairs: Vec<(&str, &str)> = c
                    .pairs
                    .iter()
                    .map(|(f, v)| (f.as_str(), v.as_str()))
                    .collect();
                // A row sent without an expiry lives the store's ExpireAtDays, and none longer.
                let life = c
                    .life_secs
                    .map(Duration::from_secs)
                    .map_or(s.expire, |l| l.min(s.expire));
                let res = s.set_hash(&c.key, &pairs, Some(life)).await;
                self.answer(op, res).await
            }
            "add_to_set" => {
                let c: AddToSetCall = parse(body)?;
                scope(&c.key, WRITE_SCOPE)?;
                if !c.score.is_finite() {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "the score is not a finite number",
                    ));
                }
                if c.key == RESULT_KEY {
                    self.processing(&c.value).await?;
                } else if c.key.starts_with(RESULT_KEY) {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        "a result's set is `_agent_result_` itself; nothing was written",
                    ));
                }
                let res = s.add_to_set(&c.key, &c.value, c.score).await;
                self.answer(op, res).await
            }
            "first_report" => {
                let c: FirstReportCall = parse(body)?;
                if !self.processing_or_settled(&c.id).await? {
                    // The job is settled at the center (a retry after the result was read):
                    // nothing to report any more.
                    return Ok(ok(false));
                }
                let mark = ResultWrite {
                    mark: &mark_of(t, &c.id),
                    token: &c.token,
                    id: &c.id,
                    result: None,
                };
                let res = s.write_result(&mark).await;
                self.answer(op, res).await
            }
            "result" => {
                let c: ResultCall = parse(body)?;
                if c.field.is_empty()
                    || c.field.len() > 20
                    || !c.field.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "a result's field is its elapsed milliseconds (digits); nothing was written",
                    ));
                }
                if !self.processing_or_settled(&c.id).await? {
                    // Settled at the center (a retry after the result was read): nothing to
                    // report any more.
                    return Ok(ok(false));
                }
                let write = ResultWrite {
                    mark: &mark_of(t, &c.id),
                    token: &c.token,
                    id: &c.id,
                    result: Some((&c.field, &c.value)),
                };
                let res = s.write_result(&write).await;
                self.answer(op, res).await
            }
            "lock_try" => {
                let c: LockTryCall = parse(body)?;
                let name = self.lock_name(t, &c.resource)?;
                let stale = self.stale_floor(Duration::from_millis(c.stale_ms));
                let res = s.lock_try(&name, stale).await;
                self.answer(op, res).await
            }
            "lock_keep" => {
                let c: LockCall = parse(body)?;
                let name = self.lock_name(t, &c.resource)?;
                let res = s.lock_keep(&name, &c.owner).await;
                self.answer(op, res).await
            }
            "lock_release" => {
                let c: LockCall = parse(body)?;
                let name = self.lock_name(t, &c.resource)?;
                let res = s.lock_release(&name, &c.owner).await;
                self.answer(op, res).await
            }
            "fence" => {
                let c: FenceCall = parse(body)?;
                let name = self.lock_name(t, &c.resource)?;
                let res = s.fence(&name).await;
                self.answer(op, res).await
            }
            "read_set" => {
                let c: ReadCall = parse(body)?;
                scope(&c.key, READ_SCOPE)?;
                if !self.may_read(t, &c.key).await? {
                    return Ok(ok(Vec::<String>::new()));
                }
                let res = s.read_set(&c.key, c.from, c.count.min(100_000)).await;
                self.answer(op, res).await
            }
            "read_hash" => {
                let c: ReadCall = parse(body)?;
                scope(&c.key, READ_SCOPE)?;
                if !self.may_read(t, &c.key).await? {
                    return Ok(ok(None::<String>));
                }
                let res = s.read_hash(&c.key, &c.field).await;
                self.answer(op, res).await
            }
            "read_hash_all" => {
                let c: ReadCall = parse(body)?;
                scope(&c.key, READ_SCOPE)?;
                if !self.may_read(t, &c.key).await? {
                    return Ok(ok(Vec::<(String, String)>::new()));
                }
                let res = s.read_hash_all(&c.key).await;
                self.answer(op, res).await
            }
            "cluster" => {
                let c: ClusterCall = parse(body)?;
                match cluster(s, &t.name, c).await {
                    Ok(value) => Ok(ok(value)),
                    Err(e) => Err(self.failed(op, e).await),
                }
            }
            other => Err(refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "`{}` is not a relay operation",
                    other.chars().take(30).collect::<String>().escape_debug()
                ),
            )),
        }
    }

    /// The stale period a lock try may use: never shorter than the store's own.
    fn stale_floor(&self, asked: Duration) -> Duration {
        match self.store.kind() {
            StoreType::PostgreSql => asked.max(PG_STALE_FLOOR),
            StoreType::MySql => asked.max(MYSQL_STALE_FLOOR),
            // Redis: a lock's key expires by itself; the stale period is not used.
            _ => asked,
        }
    }

    /// The lock resource `resource` of tenant `t` as stored: the center's own locks are
    /// refused; a granted one is used as named (on Redis, never one of Hangfire's keys);
    /// any other lives in the tenant's namespace.
    fn lock_name(&self, t: &Tenant, resource: &str) -> Result<String, Refusal> {
        if resource.is_empty() || resource.chars().count() > MAX_KEY_CHARS {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("a lock resource is 1 to {MAX_KEY_CHARS} characters"),
            ));
        }
        let own = self.store.prefix.trim_matches('"').to_owned() + ":";
        if CENTER_LOCKS.iter().any(|p| starts_with_ci(resource, p))
            || (own.len() > 1 && starts_with_ci(resource, &own))
        {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "lock `{}` is one of the center's own (Hangfire's); no service may take it",
                    echo(resource)
                ),
            ));
        }
        let granted = t.locks.iter().any(|g| match g.strip_suffix('*') {
            Some(stem) => resource.starts_with(stem),
            None => g == resource,
        });
        if !granted || starts_with_ci(resource, "jobagent:") {
            return Ok(fit(format!("jobagent:lock:{}:{resource}", t.name)));
        }
        if self.store.kind() == StoreType::Redis
            && HANGFIRE_REDIS_KEYS
                .iter()
                .any(|k| starts_with_ci(resource, k))
        {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "lock `{}` would be a key in Hangfire's key space on Redis; grant another name",
                    echo(resource)
                ),
            ));
        }
        Ok(resource.to_owned())
    }

    /// Whether tenant `t` may read `key`: a result only when it reported it (another reads
    /// as absent, as before a result is written: `jobagent-dev` asks before its run).
    async fn may_read(&self, t: &Tenant, key: &str) -> Result<bool, Refusal> {
        let Some(id) = key.strip_prefix(RESULT_KEY) else {
            return Ok(true);
        };
        if id.is_empty() {
            // The set of reported ids: the center's, not a service's.
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "the set `_agent_result_` lists every service's results; read a result by its id",
            ));
        }
        // This service's first-report mark of the dispatch, read without writing one.
        let mark = mark_of(t, id);
        let reported = match self.store.backend() {
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.result_marked(&mark).await,
            _ => self
                .store
                .read_hash("jobagent:results", &mark)
                .await
                .map(|v| v.is_some()),
        };
        match reported {
            Ok(reported) => Ok(reported),
            Err(e) => Err(self.failed("read", e).await),
        }
    }

    /// Refuses a result for job `id` unless the center's storage holds it in state
    /// Processing.
    async fn processing(&self, id: &str) -> Result<(), Refusal> {
        if self.processing_or_settled(id).await? {
            Ok(())
        } else {
            Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "job {} is not Processing in the center's storage: its result is not taken; nothing was written",
                    echo(id)
                ),
            ))
        }
    }

    /// Whether job `id` is Processing (true) or in another state (false); refused when the
    /// center's storage has no such job (a result may not be marked in advance).
    async fn processing_or_settled(&self, id: &str) -> Result<bool, Refusal> {
        if id.is_empty()
            || id.chars().count() > MAX_JOB_ID_CHARS
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("`{}` is not a Hangfire job id", echo(id)),
            ));
        }
        if !self.check_jobs {
            return Ok(true);
        }
        let state = match job_state(&self.store, id).await {
            Ok(state) => state,
            Err(e) => return Err(self.failed("job state", e).await),
        };
        match state {
            None => Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "the center's storage has no job {}: a result is taken only for a job that exists and is Processing; nothing was written",
                    echo(id)
                ),
            )),
            Some(state) => Ok(state.eq_ignore_ascii_case("Processing")),
        }
    }
}

/// The state of Hangfire job `id` in the center's storage, `None` when it has none:
///
/// - PostgreSQL: `<schema>.job.statename` (Hangfire.PostgreSql's `Install.v*.sql`);
/// - MySQL: `<prefix>Job.StateName` (Hangfire.MySqlStorage's `Install.sql`);
/// - Redis: field `State` of hash `<prefix>job:<id>` (Hangfire.Redis.StackExchange's
///   `RedisWriteOnlyTransaction.SetJobState`).
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "redis")),
    allow(unused_variables)
)]
async fn job_state(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
    match store.backend() {
        #[cfg(feature = "postgres")]
        Backend::Postgres(pg) => {
            let Ok(n) = id.parse::<i64>() else {
                return Ok(None);
            };
            let conn = pg.conn().await?;
            let row = conn
                .bound(conn.query_typed_opt(
                    &format!("SELECT statename FROM {}.job WHERE id = $1", pg.schema),
                    &[(&n, tokio_postgres::types::Type::INT8)],
                ))
                .await?;
            Ok(row.map(|r| {
                r.try_get::<_, Option<String>>(0)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }))
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql(my) => match id.parse::<i64>() {
            Ok(n) => my.job_state(n).await,
            Err(_) => Ok(None),
        },
        #[cfg(feature = "redis")]
        Backend::Redis(r) => {
            crate::store::driver::Driver::get(r, &format!("job:{id}"), "State").await
        }
        #[allow(unreachable_patterns)]
        _ => Err(StoreError::config("a relay's store is a database")),
    }
}

/// The first-report mark of dispatch `id` for tenant `t`: per service, so no service marks
/// another's dispatch (MySQL's `Field` holds 40 characters: a longer one is hashed).
fn mark_of(t: &Tenant, id: &str) -> String {
    fit_to(format!("{}:{id}", t.name), MAX_JOB_ID_CHARS)
}

/// `text` as a key (at most [`MAX_KEY_CHARS`]; longer: a stable hash of it).
fn fit(text: String) -> String {
    fit_to(text, MAX_KEY_CHARS)
}

fn fit_to(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    format!(
        "~{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).simple()
    )
}

/// A request-given name for an error (bounded, escaped).
fn echo(text: &str) -> String {
    text.chars()
        .take(MAX_KEY_CHARS)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// Runs a cluster call for service `tenant`: instance names, classes and stop ids live in its
/// namespace (`<tenant>:<name>`), and come back without it.
async fn cluster(
    s: &Store,
    tenant: &str,
    call: ClusterCall,
) -> Result<serde_json::Value, StoreError> {
    use ClusterCall as C;
    let ns = format!("{tenant}:");
    let p = |name: &str| format!("{ns}{name}");
    let me_in = |me: Member| Member {
        instance: p(&me.instance),
        server_id: me.server_id,
    };
    let strip = |name: String| match name.strip_prefix(&ns) {
        Some(rest) => rest.to_owned(),
        None => name,
    };
    let claim_out = |c: ClaimValue| ClaimValue {
        instance: strip(c.instance),
        ..c
    };
    let record_out = |r: RunRecord| RunRecord {
        class: strip(r.class),
        ..r
    };
    let value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| StoreError::refused("a cluster answer could not be encoded").with_source(e))
    };
    // Errors name the instance as the caller knows it.
    let said = |e: StoreError| {
        let kind = e.kind();
        StoreError::new(kind, String::from(e).replace(&format!("`{ns}"), "`"))
    };
    match call {
        C::Claim { me, class, job_id } => {
            let claimed = s
                .claim(&me_in(me), &p(&class), &job_id)
                .await
                .map_err(said)?;
            value(serde_json::to_value(match claimed {
                Claimed::Busy(holder) => Claimed::Busy(claim_out(holder)),
                yes => yes,
            }))
        }
        C::RenewClaim { me, class, job_id } => value(serde_json::to_value(
            s.renew_claim(&me_in(me), &p(&class), &job_id).await?,
        )),
        C::ReleaseClaim { me, class, job_id } => value(serde_json::to_value(
            s.release_claim(&me_in(me), &p(&class), &job_id).await?,
        )),
        C::ReleaseLostClaim {
            class,
            job_id,
            server_id,
        } => value(serde_json::to_value(
            s.release_lost_claim(&p(&class), &job_id, &server_id)
                .await?,
        )),
        C::ClaimOf { class } => {
            let claim = s.claim_of(&p(&class)).await?;
            value(serde_json::to_value(
                claim.map(|(c, live)| (claim_out(c), live)),
            ))
        }
        C::RecordRun {
            me,
            job_id,
            mut record,
        } => {
            record.class = p(&record.class);
            value(serde_json::to_value(
                s.record_run(&me_in(me), &job_id, &record)
                    .await
                    .map_err(said)?,
            ))
        }
        C::ForgetRun { me, job_id } => value(serde_json::to_value(
            s.forget_run(&me_in(me), &job_id).await?,
        )),
        C::RemoteRuns { me, class } => {
            let runs = s.remote_runs(&me_in(me), &p(&class)).await?;
            let runs: Vec<ClusterRun> = runs
                .into_iter()
                // Only this tenant's replicas (the class check already keeps to them).
                .filter(|r| r.instance.starts_with(&ns))
                .map(|r| ClusterRun {
                    instance: strip(r.instance),
                    job_id: r.job_id,
                    record: record_out(r.record),
                })
                .collect();
            value(serde_json::to_value(runs))
        }
        C::HoldLease { me } => value(serde_json::to_value(s.hold_lease(&me_in(me)).await?)),
        C::ReleaseLease { me } => value(serde_json::to_value(s.release_lease(&me_in(me)).await?)),
        C::SendCommand { instance, command } => value(serde_json::to_value(
            s.send_command(&p(&instance), &command).await?,
        )),
        C::TakeCommands { me } => value(serde_json::to_value(s.take_commands(&me_in(me)).await?)),
        C::Ack {
            stop_id,
            job_id,
            error,
        } => value(serde_json::to_value(
            s.ack(&p(&stop_id), &job_id, &error).await?,
        )),
        C::Acks { stop_id } => value(serde_json::to_value(s.acks(&p(&stop_id)).await?)),
        C::TakeOrphans { me } => {
            let runs = s.orphans(&me_in(me)).await?;
            let runs: Vec<(String, RunRecord)> = runs
                .into_iter()
                .map(|(id, r)| (id, record_out(r)))
                .collect();
            value(serde_json::to_value(runs))
        }
        C::TakeLost { me, scan } => {
            let runs = s.take_lost_in(&me_in(me), scan, &ns).await?;
            let runs: Vec<(String, String, RunRecord)> = runs
                .into_iter()
                .map(|(instance, id, r)| (strip(instance), id, record_out(r)))
                .collect();
            value(serde_json::to_value(runs))
        }
    }
}

/// The TLS crypto provider the relay serves with: the one the agent's store connections use
/// (the process default when the application installed one, else *ring*).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    crate::store::tls::crypto_provider()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the request is not the operation's JSON: {e}"),
        )
    })
}

/// Refuses a key outside `allowed` (by prefix) or longer than Hangfire's columns hold.
fn scope(key: &str, allowed: &[&str]) -> Result<(), Refusal> {
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("a key is at most {MAX_KEY_CHARS} characters"),
        ));
    }
    if allowed.iter().any(|p| key.starts_with(p)) {
        return Ok(());
    }
    Err(refuse(
        StatusCode::FORBIDDEN,
        format!(
            "key `{}` is outside what an agent writes ({}); nothing was written",
            echo(key),
            allowed.join("*, ") + "*"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_tenants_and_bare_secrets_are_refused() {
        let t = parse_tenants(
            "billing:s3cret lock=report:* lock=nightly, mailer:x",
            ',',
            "T",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "billing");
        assert_eq!(t[0].token.expose(), "billing:s3cret");
        assert_eq!(t[0].locks, vec!["report:*", "nightly"]);
        let e = parse_tenants("just-a-secret", ',', "T")
            .err()
            .unwrap_or_default();
        assert!(e.contains("<service>:<secret>"), "{e}");
        assert!(!e.contains("just-a-secret"), "{e}");
        assert!(parse_tenants("bad name:x", ',', "T").is_err());
        assert!(parse_tenants("a:x lock=hangfire:*", ',', "T").is_err());
        assert!(
            parse_tenants("a:x lock=h*", ',', "T").is_err(),
            "reaches hangfire:"
        );
        assert!(parse_tenants("a:x lock=*", ',', "T").is_err());
        let file = "# services\nbilling:one lock=shared:*\n\nmailer:two # the mailer\n";
        let t = parse_tenants(file, '\n', "F").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].token.expose(), "mailer:two");
    }

    /// A store error's kind decides the answer (the probe then tells a login from a
    /// privilege, an outage from a refusal).
    #[test]
    fn store_error_kinds_are_classified() {
        use crate::store::StoreErrorKind as K;
        assert_eq!(class_of(K::Unavailable), Failure::Unavailable);
        assert_eq!(class_of(K::TimedOut), Failure::Unavailable);
        assert_eq!(class_of(K::Refused), Failure::Refused);
        assert_eq!(class_of(K::Conflict), Failure::Refused);
        assert_eq!(class_of(K::Config), Failure::Denied);
    }
}

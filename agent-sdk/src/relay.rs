//! Not public API: the server side of `jobagent-relay` (feature `relay-server`).
//!
//! The relay holds the one store's credentials and answers agents' store operations over
//! HTTP (`POST /v1/<op>`, see `store/relay.rs` for the wire shapes). It keeps no state of
//! its own: run as many as you like behind one address. Each request is checked in this
//! order, and nothing is written unless all pass:
//!
//! 1. a bearer token from `JOBAGENT_RELAY_TOKENS` (compared in constant time): else 401;
//! 2. that token's request rate: else 429;
//! 3. the body's size: else 413;
//! 4. the JSON's shape: else 400;
//! 5. the keys it writes are ones an agent writes (`console:*`, `_agent_result_*`,
//!    `AgentHeart:*`; cluster records and locks are named by the relay itself): else 403;
//! 6. a console batch's line count: else 413.
//!
//! A store that fails answers 503 with the store's error (no credentials in it), and the
//! agent retries as in any outage.

use std::num::NonZeroU32;
use std::sync::Arc;
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
use crate::store::relay::{
    API, AddToSetCall, ConsoleCall, ErrorBody, FenceCall, FirstReportCall, LockCall, LockTryCall,
    PingAnswer, ReadCall, SetHashCall,
};
use crate::store::{Opening, Store, StoreType, pool};

/// Keys an agent writes in hashes and sets, by prefix.
const WRITE_SCOPE: &[&str] = &["console:", "_agent_result_", "AgentHeart:"];
/// Keys the dashboard's reads may name (`jobagent-dev` through a relay).
const READ_SCOPE: &[&str] = &["console:", "_agent_result_", "AgentHeart:", "jobagent:"];
/// The longest key or lock resource accepted (Hangfire's `Key` columns hold 100).
const MAX_KEY_CHARS: usize = 100;
/// How long one operation may take on the store.
const OP_WITHIN: Duration = Duration::from_secs(30);

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
    /// The accepted bearer tokens.
    pub tokens: Vec<crate::Secret>,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// The most lines in one console batch.
    pub max_lines: usize,
    /// Requests per second per token (bursts of as many).
    pub rate_per_token: u32,
}

impl RelayConfig {
    /// A relay of `store` accepting `tokens`, with the default bounds: bodies of 8 MiB,
    /// batches of 10,000 lines, 2,000 requests per second per token, rows kept 7 days.
    pub fn new(store: impl Into<String>, tokens: Vec<String>) -> Self {
        Self {
            store: crate::Secret::new(store),
            store_type: None,
            prefix: String::new(),
            expire_days: 7.0,
            tokens: tokens.into_iter().map(crate::Secret::new).collect(),
            max_body: 8 * 1024 * 1024,
            max_lines: 10_000,
            rate_per_token: 2_000,
        }
    }
}

/// A running relay's state.
struct Relay {
    store: Store,
    tokens: Vec<crate::Secret>,
    limits: Vec<DefaultDirectRateLimiter>,
    max_body: usize,
    max_lines: usize,
    rate: u32,
}

/// The relay's router (`POST /v1/{op}`), and a description of its store for the log.
pub fn router(config: RelayConfig) -> Result<(Router, String), String> {
    let kind = config
        .store_type
        .or_else(|| StoreType::of_url(config.store.expose()))
        .unwrap_or(StoreType::PostgreSql);
    if kind == StoreType::Relay {
        return Err("a relay's store is a database, not another relay".to_owned());
    }
    let tokens: Vec<crate::Secret> = config
        .tokens
        .into_iter()
        .filter(|t| !t.expose().trim().is_empty())
        .collect();
    if tokens.is_empty() {
        return Err("no tokens: set JOBAGENT_RELAY_TOKENS (comma-separated)".to_owned());
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
        load: pool::Load::Now,
        relay_token: None,
    })?;
    let label = format!("{} ({kind})", store.label);
    let rate = config.rate_per_token.max(1);
    let quota = Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN));
    let relay = Relay {
        limits: tokens.iter().map(|_| RateLimiter::direct(quota)).collect(),
        store,
        tokens,
        max_body: config.max_body.max(1024),
        max_lines: config.max_lines.max(1),
        rate,
    };
    let router = Router::new()
        .route(&format!("{API}{{op}}"), post(handle))
        .with_state(Arc::new(relay));
    Ok((router, label))
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
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(OP_WITHIN, relay.serve(&op, &bytes)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(refusal)) => refusal.into_response(),
        Err(_) => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the store did not answer within {} s", OP_WITHIN.as_secs()),
        )
        .into_response(),
    };
    tracing::debug!(
        op = %op.chars().take(30).collect::<String>(),
        token = who,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "relay request"
    );
    response
}

/// A store error: the store is unavailable; the agent retries.
fn unavailable(e: impl Into<String>) -> Refusal {
    refuse(StatusCode::SERVICE_UNAVAILABLE, e)
}

impl Relay {
    /// The index of the token the request shows, if it is one of ours.
    fn token_of(&self, headers: &HeaderMap) -> Option<usize> {
        let shown = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim()
            .as_bytes();
        let mut found = None;
        for (i, token) in self.tokens.iter().enumerate() {
            if bool::from(token.expose().as_bytes().ct_eq(shown)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    async fn serve(&self, op: &str, body: &Bytes) -> Result<Response, Refusal> {
        let s = &self.store;
        Ok(match op {
            "ping" => ok(PingAnswer {
                kind: s.kind().name().to_owned(),
            }),
            "check" => ok(s
                .check_tables(tokio::time::Instant::now() + crate::store::FIRST_REACH_WITHIN)
                .await
                .map_err(unavailable)?),
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
                ok(s.write_console(&c.set_key, &c.hash_key, &c.lines)
                    .await
                    .map_err(unavailable)?)
            }
            "set_hash" => {
                let c: SetHashCall = parse(body)?;
                scope(&c.key, WRITE_SCOPE)?;
                let pairs: Vec<(&str, &str)> = c
                    .pairs
                    .iter()
                    .map(|(f, v)| (f.as_str(), v.as_str()))
                    .collect();
                let life = c.life_secs.map(Duration::from_secs);
                ok(s.set_hash(&c.key, &pairs, life)
                    .await
                    .map_err(unavailable)?)
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
                ok(s.add_to_set(&c.key, &c.value, c.score)
                    .await
                    .map_err(unavailable)?)
            }
            "first_report" => {
                let c: FirstReportCall = parse(body)?;
                ok(s.first_report(&c.id, &c.token).await.map_err(unavailable)?)
            }
            "lock_try" => {
                let c: LockTryCall = parse(body)?;
                resource(&c.resource)?;
                let stale = Duration::from_millis(c.stale_ms);
                ok(s.lock_try(&c.resource, stale).await.map_err(unavailable)?)
            }
            "lock_keep" => {
                let c: LockCall = parse(body)?;
                resource(&c.resource)?;
                ok(s.lock_keep(&c.resource, &c.owner)
                    .await
                    .map_err(unavailable)?)
            }
            "lock_release" => {
                let c: LockCall = parse(body)?;
                resource(&c.resource)?;
                ok(s.lock_release(&c.resource, &c.owner)
                    .await
                    .map_err(unavailable)?)
            }
            "fence" => {
                let c: FenceCall = parse(body)?;
                resource(&c.resource)?;
                ok(s.fence(&c.resource).await.map_err(unavailable)?)
            }
            "read_set" => {
                let c: ReadCall = parse(body)?;
                scope(&c.key, READ_SCOPE)?;
                ok(s.read_set(&c.key, c.from, c.count.min(100_000))
                    .await
                    .map_err(unavailable)?)
            }
            "read_hash" => {
                let c: ReadCall = parse(body)?;
                scope(&c.key, READ_SCOPE)?;
                ok(s.read_hash(&c.key, &c.field).await.map_err(unavailable)?)
            }
            "read_hash_all" => {
                let c: ReadCall = parse(body)?;
                scope(&c.key, READ_SCOPE)?;
                ok(s.read_hash_all(&c.key).await.map_err(unavailable)?)
            }
            "cluster" => {
                let c: ClusterCall = parse(body)?;
                ok(c.run(s).await.map_err(unavailable)?)
            }
            other => {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    format!(
                        "`{}` is not a relay operation",
                        other.chars().take(30).collect::<String>()
                    ),
                ));
            }
        })
    }
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
            key.chars().take(MAX_KEY_CHARS).collect::<String>(),
            allowed.join("*, ") + "*"
        ),
    ))
}

/// Refuses a lock resource name that is empty or too long.
fn resource(name: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.chars().count() > MAX_KEY_CHARS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("a lock resource is 1 to {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(())
}

//! The `/jobagent` endpoint: authentication, decoding, dispatch, and the response format.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::auth_limit::Gate;
use crate::endpoint::AgentInner;
use crate::error::{DispatchError, escape_controls};
use crate::request::{Action, Dispatch};

/// Builds the router answering at the configured path, with its state applied.
///
/// The .NET agent is mounted with ASP.NET's `app.Map(path)`
/// (`Agent/Hangfire.HttpJob.Agent/JobAgentApplicationBuilderExtensions.cs`): it matches
/// case-insensitively and by path prefix, so `/jobagent`, `/JobAgent`, `/jobagent/` and
/// `/jobagent/x` all reach it, and centers are configured with any of these. Anything the
/// center gets back that is not a 500 or 501 counts as a dispatch that succeeded, so a bare
/// 404 would leave the job hanging in Processing.
///
/// The router therefore has explicit routes for the configured path as written, `path/` and
/// `path/{*rest}` (a host's own routes, being explicit too, still win for their paths and
/// cannot overlap these: axum panics on overlapping routes), plus a **fallback** that serves
/// every other spelling `Map` accepts (other letter case, percent-encoded letters) and answers
/// everything else with a plain, empty 404, as axum's default fallback does.
///
/// Merged into a host router, the agent's fallback becomes the host's fallback (the host's
/// unknown paths get the same plain 404 as before). axum panics when two merged routers both
/// have a fallback, so a host with a fallback of its own sets it *after* merging:
/// `Router::new().merge(agent.router()).fallback(host_fallback)`. That replaces the agent's
/// fallback: the configured path as written (and `path/`, `path/...`) still reaches the agent,
/// other spellings reach the host's fallback. Nested with `Router::nest` at the agent's own
/// path, the fallback serves that path (see [`fallback`]).
pub(crate) fn router<S>(agent: Arc<AgentInner>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let path = agent.runtime.options.path.clone();
    Router::new()
        // The probes answer GET; any other method at these paths is the center's, as `Map`
        // would have it.
        .route(
            &format!("{path}/healthz"),
            get(crate::probes::healthz).fallback(handle),
        )
        .route(
            &format!("{path}/readyz"),
            get(crate::probes::readyz).fallback(handle),
        )
        .route(&path, any(handle))
        .route(&format!("{path}/"), any(handle))
        .route(&format!("{path}/{{*rest}}"), any(handle))
        .fallback(fallback)
        .with_state(agent)
}

/// Serves the spellings of the path that ASP.NET's `Map` accepts and the explicit routes do
/// not; answers anything else with a plain 404.
///
/// The path is matched against the request's path as the host received it too (axum's
/// `OriginalUri`), so `Router::new().nest("/jobagent", agent.router())` serves `/jobagent`
/// rather than `/jobagent/jobagent` (nesting at the agent's own path is the natural mistake).
async fn fallback(State(agent): State<Arc<AgentInner>>, request: Request) -> Response {
    let path = &agent.runtime.options.path;
    let original = request
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.path().to_owned());
    let nested = original
        .as_deref()
        .is_some_and(|o| o != request.uri().path());
    if is_mapped(path, request.uri().path()) || original.is_some_and(|o| is_mapped(path, &o)) {
        return handle(State(agent), request).await;
    }
    if nested && !NESTED_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            path = %path,
            request = %request.uri().path(),
            "job agent: its router is nested under a prefix, so it answers at {path} under that prefix; merge it (`Router::merge(agent.router())`) or nest it at {path} itself, or the center's requests get 404, which the center counts as success"
        );
    }
    StatusCode::NOT_FOUND.into_response()
}

/// Whether the warning about a router nested under a foreign prefix was logged.
static NESTED_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `request_path` lies under `base` as ASP.NET's `Map` decides it
/// (`PathString.StartsWithSegments`, ordinal and ignoring case): the request path, with its
/// percent-escapes decoded except `%2F`, starts with `base` ignoring ASCII case, and what
/// follows is empty or starts with `/`.
fn is_mapped(base: &str, request_path: &str) -> bool {
    let path = percent_decoded(request_path.as_bytes());
    let base = base.as_bytes();
    path.len() >= base.len()
        && path[..base.len()].eq_ignore_ascii_case(base)
        && matches!(path.get(base.len()), None | Some(b'/'))
}

/// Decodes `%XX` escapes, except an escaped `/` (ASP.NET keeps `%2F` in the path, so it never
/// separates segments); a malformed escape is kept as it is.
fn percent_decoded(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let decoded = match (raw[i], raw.get(i + 1), raw.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h)
                .zip(hex(l))
                .map(|(h, l)| (h << 4) | l)
                .filter(|&b| b != b'/'),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// What the agent answers: a status and a text body.
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn ok(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            body: body.into(),
        }
    }
}

impl From<DispatchError> for Answer {
    fn from(err: DispatchError) -> Self {
        Self {
            status: err.status(),
            // Text from the request may be in it: escaped, so it cannot break the body's line.
            body: format!("err:{}", escape_controls(&err.to_string())),
        }
    }
}

async fn handle(State(agent): State<Arc<AgentInner>>, request: Request) -> Response {
    let peer = peer_of(&request);
    let (parts, body) = request.into_parts();
    let answer = match answer(&agent, &parts.headers, body, peer).await {
        Ok(answer) => answer,
        Err(err) => {
            // The action's label is read only for a refusal: not a header lookup per run.
            crate::metrics::refused(action_label(&parts.headers), err.reason());
            // Basic-auth failures are counted and logged by the limit, not one line each.
            if !matches!(
                err,
                DispatchError::Unauthorized | DispatchError::AuthLimited
            ) {
                tracing::warn!(
                    status = err.status().as_u16(),
                    "job agent refused a request: {}",
                    escape_controls(&err.to_string())
                );
            }
            Answer::from(err)
        }
    };
    respond(&agent, answer)
}

/// The caller's address, when the server records it (`jobagent::serve` does, as does
/// axum's `into_make_service_with_connect_info::<SocketAddr>`).
#[cfg(feature = "serve")]
fn peer_of(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(not(feature = "serve"))]
fn peer_of(_request: &Request) -> Option<std::net::IpAddr> {
    None
}

async fn answer(
    agent: &Arc<AgentInner>,
    headers: &HeaderMap,
    body: Body,
    peer: Option<std::net::IpAddr>,
) -> Result<Answer, DispatchError> {
    check_auth(agent, headers, peer)?;
    let limits = &agent.runtime.options.limits;
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(DispatchError::Limit(format!(
            "the request headers ({header_bytes} bytes) are larger than {} bytes (JOBAGENT_MAX_HEADER_BYTES)",
            limits.max_header_bytes
        )));
    }
    let limit = limits.max_body_bytes;
    let body = to_bytes(body, limit).await.map_err(|_| {
        DispatchError::Limit(format!(
            "the request body is larger than {limit} bytes (JOBAGENT_MAX_BODY_BYTES), or was cut off"
        ))
    })?;
    let mut d = Dispatch::decode(headers, &body)?;
    tracing::debug!(action = d.action.as_str(), class = d.class.as_deref().unwrap_or(""), job_id = %d.job_id, "job agent request");
    if d.action == Action::Heartbeat {
        agent.heartbeat(&d)?;
        return Ok(Answer::ok(""));
    }
    let class = d.class.as_deref().unwrap_or_default();
    let reg = agent.runtime.class(class)?;
    let rt = &agent.runtime;
    match d.action {
        Action::Run => {
            // Charged before anything is opened; given back when the run ends.
            d.param_charge = Some(agent.param_budget.charge(d.body.len())?);
            let outlet = agent.outlet(&d)?;
            if let Some(store) = &outlet.store {
                store
                    .check_tables(crate::runtime::answer_deadline(&d))
                    .await
                    .map_err(|e| DispatchError::Storage(e.into()))?;
            }
            rt.run(reg, d, outlet).await.map(Answer::ok)
        }
        Action::Stop => {
            let outlet = agent.outlet(&d)?;
            // Boxed, like detail: the rare actions keep the run path's future small.
            Box::pin(rt.stop(reg, d, outlet)).await.map(Answer::ok)
        }
        Action::Detail => {
            // A store the agent cannot use only narrows detail to this replica.
            let outlet = agent.outlet(&d).unwrap_or_default();
            Box::pin(rt.detail(reg, &outlet)).await.map(Answer::ok)
        }
        Action::Heartbeat => Ok(Answer::ok("")),
    }
}

/// The request's action as a fixed metrics label (`unknown` for anything else).
fn action_label(headers: &HeaderMap) -> &'static str {
    let Some(value) = headers.get(crate::request::H_ACTION) else {
        return "none";
    };
    let value = value.as_bytes().trim_ascii();
    ["run", "stop", "detail", "heartbeat"]
        .into_iter()
        .find(|a| value.eq_ignore_ascii_case(a.as_bytes()))
        .unwrap_or("unknown")
}

/// Checks basic auth before anything is decoded, comparing in constant time; a peer that
/// failed too often is refused without a comparison (see [`crate::auth_limit`]).
fn check_auth(
    agent: &AgentInner,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<(), DispatchError> {
    let Some(expected) = &agent.expected_auth else {
        return Ok(());
    };
    if let Gate::Blocked = agent.auth_limit.gate(peer) {
        return Err(DispatchError::AuthLimited);
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let given = given.strip_prefix(b"Basic ").unwrap_or(b"");
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        agent.auth_limit.failed(peer);
        Err(DispatchError::Unauthorized)
    }
}

/// The `Authorization` value the agent expects, without the scheme.
pub(crate) fn basic_token(user: &str, password: &str) -> String {
    STANDARD.encode(format!("{user}:{password}"))
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The `agentServerId` header the .NET agent answers with (header names are case-insensitive;
/// HTTP/1.1 writes them lower-case).
static AGENT_SERVER_ID: HeaderName = HeaderName::from_static("agentserverid");

fn respond(agent: &AgentInner, answer: Answer) -> Response {
    let mut response = (answer.status, Body::from(answer.body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(AGENT_SERVER_ID.clone(), agent.server_id_header.clone());
    headers.insert(header::SET_COOKIE, agent.server_id_cookie.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    // Agent/Hangfire.HttpJob.Agent/JobAgentApplicationBuilderExtensions.cs mounts the .NET
    // agent with `app.Map(path)`: case-insensitive, by path segment prefix.
    #[test]
    fn maps_paths_as_asp_net_map_does() {
        for path in [
            "/jobagent",
            "/JobAgent",
            "/JOBAGENT/",
            "/jobagent/",
            "/jobagent/x",
            "/JobAgent/x/y",
            "/job%61gent",
            "/job%41GENT/x",
            "/jobagent//",
        ] {
            assert!(is_mapped("/jobagent", path), "{path}");
        }
        for path in [
            "/jobagentx",
            "/jobagen",
            "/",
            "",
            "/x/jobagent",
            "/jobagent%2Fx",
            "/jobagent%2fx",
            "/jobagent%",
            "/jobagent%4",
            "/jobagent%zz",
            "/jobägent",
        ] {
            assert!(!is_mapped("/jobagent", path), "{path}");
        }
        assert!(is_mapped("/Jobs/Agent", "/jobs/agent/run"));
        assert!(!is_mapped("/jobs/agent", "/jobs/agents"));
    }
}

//! The `/jobagent` endpoint: authentication, decoding, dispatch, and the response format.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::agent::AgentInner;
use crate::error::DispatchError;
use crate::request::{Action, Dispatch};

/// Builds the router answering at the configured path, with its state applied.
pub(crate) fn router<S>(agent: Arc<AgentInner>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let path = agent.runtime.options.path.clone();
    Router::new().route(&path, any(handle)).with_state(agent)
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
            body: format!("err:{err}"),
        }
    }
}

async fn handle(State(agent): State<Arc<AgentInner>>, request: Request) -> Response {
    let answer = match answer(&agent, request).await {
        Ok(answer) => answer,
        Err(err) => {
            tracing::warn!(
                status = err.status().as_u16(),
                "job agent refused a request: {err}"
            );
            Answer::from(err)
        }
    };
    respond(&agent, answer)
}

async fn answer(agent: &Arc<AgentInner>, request: Request) -> Result<Answer, DispatchError> {
    let (parts, body) = request.into_parts();
    check_auth(agent, &parts.headers)?;
    let limits = &agent.runtime.options.limits;
    let header_bytes: usize = parts
        .headers
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
    let d = Dispatch::decode(&parts.headers, &body)?;
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
            let outlet = agent.outlet(&d)?;
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

/// Checks basic auth before anything is decoded, comparing in constant time.
fn check_auth(agent: &AgentInner, headers: &HeaderMap) -> Result<(), DispatchError> {
    let Some(expected) = &agent.expected_auth else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let given = given.strip_prefix(b"Basic ").unwrap_or(b"");
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
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

fn respond(agent: &AgentInner, answer: Answer) -> Response {
    let mut response = (answer.status, Body::from(answer.body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("agentServerId", agent.server_id_header.clone());
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
}

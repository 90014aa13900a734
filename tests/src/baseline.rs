//! The dispatch baseline: a bare axum handler that reads the same headers and body as the
//! agent's endpoint and answers text with the same response headers — everything the agent
//! does minus the agent. The `dispatch` benchmark serves it on the same kind of listener as
//! the example service; `dispatch_profile --baseline` calls it in-process.

use std::net::SocketAddr;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// The request headers the center sends for a `run`.
const READ: [&str; 10] = [
    "x-job-agent-action",
    "x-job-agent-class",
    "x-job-id",
    "x-job-body",
    "x-job-url",
    "x-job-server",
    "x-job-storage",
    "x-job-agent-console",
    "x-job-agent-header",
    "authorization",
];

/// The agent's default body limit (`JOBAGENT_MAX_BODY_BYTES`), read the same way.
const BODY_LIMIT: usize = 1024 * 1024;

/// Takes the request as the agent's handler does: axum's `HeaderMap` extractor would clone
/// every header (an allocation per custom header name), work the agent does not do.
async fn bare(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let Ok(body) = to_bytes(body, BODY_LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut seen = 0usize;
    for name in READ {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            seen += v.len();
        }
    }
    let class = headers
        .get("x-job-agent-class")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text = format!(
        "JobClass:{class} run success!{}",
        if std::hint::black_box(seen + body.len()) == usize::MAX {
            "!"
        } else {
            ""
        }
    );
    let mut response = (StatusCode::OK, text).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "agentServerId",
        HeaderValue::from_static("00000000-0000-0000-0000-000000000000"),
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("agentServerId=00000000-0000-0000-0000-000000000000; Path=/"),
    );
    response
}

/// The bare handler at `/jobagent`.
pub fn router() -> Router {
    Router::new().route("/jobagent", any(bare))
}

/// Serves the bare handler at `/jobagent` on `addr` until killed.
pub async fn serve(addr: SocketAddr) -> Result<(), String> {
    let app = router();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("baseline cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("baseline server error: {e}"))
}

//! The outbox: messages queued to be sent now or at a later time, with its HTTP routes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// A queued message.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Message {
    /// Its id.
    pub id: u64,
    /// The recipient (a phone number or an address).
    pub to: String,
    /// The text.
    pub text: String,
    /// When it is due, in seconds since the Unix epoch.
    pub due_at: u64,
    /// When it was sent, if it was.
    pub sent_at: Option<u64>,
}

/// What a client posts to queue a message.
#[derive(Debug, Deserialize)]
pub struct NewMessage {
    /// The recipient.
    pub to: String,
    /// The text.
    pub text: String,
    /// Delay before it is due, in seconds (0 = now).
    #[serde(default)]
    pub delay_secs: u64,
}

/// The shared outbox.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<OutboxInner>,
}

#[derive(Default)]
struct OutboxInner {
    next_id: u64,
    messages: Vec<Message>,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a message; returns it.
    pub fn queue(&self, new: NewMessage) -> Message {
        let mut inner = self.lock();
        inner.next_id += 1;
        let message = Message {
            id: inner.next_id,
            to: new.to,
            text: new.text,
            due_at: now_secs().saturating_add(new.delay_secs),
            sent_at: None,
        };
        inner.messages.push(message.clone());
        message
    }

    /// Every message, oldest first.
    pub fn list(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// The unsent messages due at `now`.
    pub fn due(&self, now: u64) -> Vec<Message> {
        self.lock()
            .messages
            .iter()
            .filter(|m| m.sent_at.is_none() && m.due_at <= now)
            .cloned()
            .collect()
    }

    /// Marks a message sent.
    pub fn mark_sent(&self, id: u64, at: u64) {
        if let Some(m) = self.lock().messages.iter_mut().find(|m| m.id == id) {
            m.sent_at = Some(at);
        }
    }

    /// Removes messages sent before `before`; returns how many.
    pub fn remove_sent_before(&self, before: u64) -> usize {
        let mut inner = self.lock();
        let len = inner.messages.len();
        inner
            .messages
            .retain(|m| m.sent_at.is_none_or(|at| at >= before));
        len - inner.messages.len()
    }
}

/// `POST /api/messages`, `GET /api/messages`, `GET /api/messages/{id}` on `outbox` (the
/// one the jobs were given).
pub fn routes(outbox: Arc<Outbox>) -> Router {
    Router::new()
        .route("/api/messages", post(create).get(list))
        .route("/api/messages/{id}", get(one))
        .route("/health", get(|| async { "ok" }))
        .with_state(outbox)
}

async fn create(
    State(outbox): State<Arc<Outbox>>,
    Json(new): Json<NewMessage>,
) -> Result<(StatusCode, Json<Message>), (StatusCode, String)> {
    if new.to.trim().is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "`to` may not be empty".into(),
        ));
    }
    Ok((StatusCode::CREATED, Json(outbox.queue(new))))
}

async fn list(State(outbox): State<Arc<Outbox>>) -> Json<Vec<Message>> {
    Json(outbox.list())
}

async fn one(
    State(outbox): State<Arc<Outbox>>,
    Path(id): Path<u64>,
) -> Result<Json<Message>, StatusCode> {
    outbox
        .list()
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

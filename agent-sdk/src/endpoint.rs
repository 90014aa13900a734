//! What the router serves from: the agent's shared state (its runtime, stores, heartbeats and
//! identity) and the choices a dispatch needs before the runtime takes it (where its console
//! and result go, heartbeats).

use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::error::DispatchError;
use crate::outcome::Outlet;
use crate::request::{Action, Dispatch, H_AGENT_SERVER};
use crate::runtime::Runtime;
use crate::store::{Heartbeats, Store, Stores};

/// The agent's shared state, behind [`Agent`](crate::Agent) and its router.
///
/// Aligned to a cache line pair: the router's state extractor clones and drops the `Arc`
/// around it on every request, from both worker threads, and the fields every request reads
/// then start on a line of their own, apart from the count.
#[repr(align(128))]
pub(crate) struct AgentInner {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) expected_auth: Option<String>,
    pub(crate) server_id: String,
    pub(crate) server_id_header: HeaderValue,
    pub(crate) server_id_cookie: HeaderValue,
    pub(crate) stores: Stores,
    pub(crate) heartbeats: Arc<Heartbeats>,
    pub(crate) heartbeat_stop: CancellationToken,
    /// The running runs' parameter bytes (`JOBAGENT_MAX_PARAM_BYTES_RUNNING`).
    pub(crate) param_budget: Arc<crate::budget::ParamBudget>,
    /// Failed basic-auth attempts per peer.
    pub(crate) auth_limit: crate::auth_limit::AuthLimit,
    /// The last readiness check of the own store: when, and what it found.
    pub(crate) readiness: Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl AgentInner {
    /// Where this dispatch's console lines and result go; a bad store is refused here, and
    /// so is a run or stop with no store at all unless log-only runs are on.
    pub(crate) fn outlet(&self, d: &Dispatch) -> Result<Outlet, DispatchError> {
        let store = self
            .stores
            .select(d.storage.as_ref())
            .map_err(|e| DispatchError::Storage(e.into()))?;
        if store.is_none()
            && !self.runtime.options.log_only
            && matches!(d.action, Action::Run | Action::Stop)
        {
            return Err(DispatchError::NoStore);
        }
        if let Some(store) = &store {
            self.coordinate(store);
        }
        Ok(Outlet {
            store,
            ..Outlet::default()
        })
    }

    /// Starts the store's coordinator unless it runs: reconciliation of runs a predecessor
    /// left, and (in cluster mode) commands from other replicas and lost replicas' runs. A
    /// coordinator that ended because its store went unused is started again here.
    pub(crate) fn coordinate(&self, store: &Arc<Store>) {
        if store.start_coordinating() {
            crate::coordinator::spawn(
                Arc::downgrade(&self.runtime),
                store.clone(),
                self.heartbeat_stop.clone(),
            );
        }
    }

    /// Starts or renews the heartbeat reporter for the dispatching center server.
    pub(crate) fn heartbeat(&self, d: &Dispatch) -> Result<(), DispatchError> {
        let server_id = d.server_id.as_deref().unwrap_or_default();
        let store = self
            .stores
            .select(d.storage.as_ref())
            .map_err(|e| DispatchError::Storage(e.into()))?;
        match store {
            Some(store) => {
                self.coordinate(&store);
                let field = d
                    .agent_server
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or(DispatchError::MissingHeader(H_AGENT_SERVER))?;
                self.heartbeats.beat(store, server_id, field);
            }
            None => {
                tracing::debug!(
                    center_server = server_id,
                    "heartbeat without a store: nothing to write"
                );
            }
        }
        Ok(())
    }
}

//! `detail`: the human-readable status of a class, across replicas.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{Runtime, Status, lock};
use crate::cluster::ClusterRun;
use crate::error::DispatchError;
use crate::outcome::Outlet;
use crate::registry::JobRegistration;
use crate::timefmt::{fmt_duration, fmt_utc};

impl Runtime {
    /// The human-readable status of a class, across replicas when a store is shared.
    pub(crate) async fn detail(
        &self,
        reg: &'static JobRegistration,
        outlet: &Outlet,
    ) -> Result<String, DispatchError> {
        let mut remote: Vec<ClusterRun> = Vec::new();
        let mut holder = None;
        if let Some(store) = self.shared(outlet) {
            if reg.kind().is_singleton() {
                if let Ok(Some((claim, true))) = store.claim_of(reg.class()).await
                    && claim.server_id != self.member.server_id
                {
                    holder = Some(claim);
                }
            } else if let Ok(runs) = store.remote_runs(&self.member, reg.class()).await {
                remote = runs;
            }
        }
        let slot = lock(&self.state(reg).slot);
        let now = SystemTime::now();
        let mut out = String::new();
        let _ = writeln!(out, "JobClass: {}", reg.class());
        let _ = writeln!(out, "Kind: {}", reg.kind());
        let _ = writeln!(out, "Replica: {}", self.member.instance);
        if reg.kind().is_singleton() {
            let _ = writeln!(out, "BusyPolicy: {}", reg.on_busy().as_str());
            if let (None, Some(claim)) = (slot.runs.first(), &holder) {
                let _ = writeln!(out, "Status: Running");
                let _ = writeln!(out, "RunningOn: {}", claim.instance);
                let _ = writeln!(out, "JobId: {}", claim.job_id);
                return Ok(out);
            }
            let status = match (slot.runs.first(), &slot.last) {
                (Some(run), _) => run.status(),
                (None, Some(_)) => Status::Stopped,
                (None, None) => Status::Default,
            };
            let _ = writeln!(out, "Status: {}", status.as_str());
            if !slot.runs.is_empty() {
                let _ = writeln!(out, "RunningOn: {}", self.member.instance);
            }
            if let Some(last) = &slot.last {
                let _ = writeln!(out, "JobId: {}", last.job_id);
                let _ = writeln!(out, "Param: {}", last.param);
                let _ = writeln!(out, "StartTime: {}", fmt_utc(last.started));
                if let Some(end) = last.ended {
                    let _ = writeln!(out, "LastEndTime: {}", fmt_utc(end));
                }
                let ran = last
                    .ended
                    .unwrap_or(now)
                    .duration_since(last.started)
                    .unwrap_or_default();
                let _ = writeln!(out, "RunningTime: {}", fmt_duration(ran));
            }
        } else {
            if slot.runs.is_empty() && remote.is_empty() {
                return Err(DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                });
            }
            let _ = writeln!(out, "Running instances: {}", slot.runs.len() + remote.len());
            let mut i = 0;
            for run in slot.runs.iter() {
                i += 1;
                let ran = now.duration_since(run.started).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "#{i} Replica: {} JobId: {} Status: {} StartTime: {} RunningTime: {} Param: {}",
                    self.member.instance,
                    run.cx.job_id(),
                    run.status().as_str(),
                    fmt_utc(run.started),
                    fmt_duration(ran),
                    run.cx.param_text()
                );
            }
            for run in &remote {
                i += 1;
                let started = std::time::UNIX_EPOCH + Duration::from_millis(run.record.started);
                let ran = now.duration_since(started).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "#{i} Replica: {} JobId: {} Status: Running StartTime: {} RunningTime: {}",
                    run.instance,
                    run.job_id,
                    fmt_utc(started),
                    fmt_duration(ran)
                );
            }
        }
        Ok(out)
    }
}

//! `detail`: the human-readable status of a class, across replicas.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::Runtime;
use super::run::Status;
use crate::cluster::ClusterRun;
use crate::error::DispatchError;
use crate::outcome::Outlet;
use crate::registry::JobRegistration;
use crate::sync::lock;
use crate::timefmt::{fmt_duration, fmt_utc};

/// Writes one line of the detail text, ended with `\r\n`: the center shows the body as HTML
/// after replacing `\r\n` (and nothing else) with `<br/>` (`Server/HttpJob.cs`
/// `GetAgentJobDetail`, `Server/HttpJobDispatcher.cs`).
macro_rules! detail_line {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
        $out.push_str("\r\n");
    }};
}

/// The job's parameter as the dashboard should show it: the center inserts the detail text
/// into its page as HTML, so markup characters are escaped, and line breaks inside the
/// parameter become spaces (they would otherwise break the `\r\n` line structure).
fn shown(param: &str) -> String {
    let mut out = String::with_capacity(param.len());
    for c in param.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The most bytes of a parameter `detail` shows; a longer one is cut there and marked.
const PARAM_SHOWN: usize = 4 * 1024;
/// The most bytes of one `detail` answer; instances past it are counted, not listed.
const DETAIL_MAX: usize = 256 * 1024;

/// A parameter as [`shown`], cut to [`PARAM_SHOWN`] bytes (at a character boundary) and
/// marked when longer.
fn shown_param(param: &str) -> String {
    if param.len() <= PARAM_SHOWN {
        return shown(param);
    }
    let mut end = PARAM_SHOWN;
    while !param.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (truncated: the first {end} of {} bytes)",
        shown(&param[..end]),
        param.len()
    )
}

impl Runtime {
    /// The human-readable status of a class, across replicas when a store is shared.
    pub(crate) async fn detail(
        &self,
        reg: &'static JobRegistration,
        outlet: &Outlet,
    ) -> Result<String, DispatchError> {
        let mut remote: Vec<ClusterRun> = Vec::new();
        let mut holder = None;
        // The center waits its default 5 s for detail: the store may take three quarters.
        let deadline = super::stop::deadline_for(None);
        let mut unseen = false;
        if let Some(store) = self.shared(outlet) {
            if reg.kind().is_singleton() {
                match super::stop::within(deadline, store.claim_of(reg.class())).await {
                    Ok(Some((claim, true))) if claim.server_id != self.member.server_id => {
                        holder = Some(claim);
                    }
                    Ok(_) => {}
                    Err(_) => unseen = true,
                }
            } else {
                match super::stop::within(deadline, store.remote_runs(&self.member, reg.class()))
                    .await
                {
                    Ok(runs) => remote = runs,
                    Err(_) => unseen = true,
                }
            }
        }
        let slot = lock(&self.state(reg).slot);
        let now = SystemTime::now();
        let mut out = String::new();
        detail_line!(out, "JobClass: {}", reg.class());
        detail_line!(out, "Kind: {}", reg.kind());
        detail_line!(out, "Replica: {}", self.member.instance);
        if unseen {
            detail_line!(
                out,
                "Cluster: the shared store did not answer in time; this shows this replica only"
            );
        }
        if reg.kind().is_singleton() {
            detail_line!(out, "BusyPolicy: {}", reg.on_busy().as_str());
            if let (None, Some(claim)) = (slot.runs.oldest(), &holder) {
                detail_line!(out, "Status: Running");
                detail_line!(out, "RunningOn: {}", claim.instance);
                detail_line!(out, "JobId: {}", shown(&claim.job_id));
                return Ok(out);
            }
            let status = match (slot.runs.oldest(), &slot.last) {
                (Some(run), _) => run.status(),
                (None, Some(_)) => Status::Stopped,
                (None, None) => Status::Default,
            };
            detail_line!(out, "Status: {}", status.as_str());
            if !slot.runs.is_empty() {
                detail_line!(out, "RunningOn: {}", self.member.instance);
            }
            if let Some(last) = &slot.last {
                detail_line!(out, "JobId: {}", shown(last.cx.job_id()));
                detail_line!(out, "Param: {}", shown_param(last.cx.param_text()));
                detail_line!(out, "StartTime: {}", fmt_utc(last.started));
                if let Some(end) = last.ended {
                    detail_line!(out, "LastEndTime: {}", fmt_utc(end));
                }
                let ran = last
                    .ended
                    .unwrap_or(now)
                    .duration_since(last.started)
                    .unwrap_or_default();
                detail_line!(out, "RunningTime: {}", fmt_duration(ran));
            }
        } else {
            if slot.runs.is_empty() && remote.is_empty() {
                return Err(DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                });
            }
            detail_line!(out, "Running instances: {}", slot.runs.len() + remote.len());
            let total = slot.runs.len() + remote.len();
            let mut i = 0;
            for run in slot.runs.in_order() {
                if out.len() > DETAIL_MAX {
                    break;
                }
                i += 1;
                let ran = now.duration_since(run.started).unwrap_or_default();
                detail_line!(
                    out,
                    "#{i} Replica: {} JobId: {} Status: {} StartTime: {} RunningTime: {} Param: {}",
                    self.member.instance,
                    shown(run.cx.job_id()),
                    run.status().as_str(),
                    fmt_utc(run.started),
                    fmt_duration(ran),
                    shown_param(run.cx.param_text())
                );
            }
            for run in &remote {
                if out.len() > DETAIL_MAX {
                    break;
                }
                i += 1;
                let started = std::time::UNIX_EPOCH + Duration::from_millis(run.record.started);
                let ran = now.duration_since(started).unwrap_or_default();
                detail_line!(
                    out,
                    "#{i} Replica: {} JobId: {} Status: Running StartTime: {} RunningTime: {}",
                    run.instance,
                    shown(&run.job_id),
                    fmt_utc(started),
                    fmt_duration(ran)
                );
            }
            if i < total {
                detail_line!(
                    out,
                    "… {} more instance(s) not listed: this answer is bounded to {} KiB",
                    total - i,
                    DETAIL_MAX / 1024
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_parameter_is_cut_and_marked() {
        let long = "é".repeat(PARAM_SHOWN);
        let cut = shown_param(&long);
        assert!(cut.len() < PARAM_SHOWN + 100, "{}", cut.len());
        assert!(cut.ends_with(&format!("of {} bytes)", long.len())), "{cut}");
        assert!(cut.contains("truncated"));
        assert_eq!(shown_param("{\"a\":1}"), "{\"a\":1}");
    }

    #[test]
    fn lines_end_with_crlf_and_values_cannot_break_them() {
        let mut out = String::new();
        detail_line!(out, "Param: {}", shown("{\"a\":\"<b>&\"}\r\n{}\n"));
        detail_line!(out, "Status: {}", "Running");
        assert_eq!(
            out,
            "Param: {\"a\":\"&lt;b&gt;&amp;\"}  {} \r\nStatus: Running\r\n"
        );
    }
}

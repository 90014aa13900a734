//! The stall watchdog.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::run::Run;
use crate::registry::JobRegistration;
use crate::timefmt::fmt_duration;

/// The stall watchdog of one run: when the job has written no console line and moved no
/// progress bar for `after`, writes a warning line (once per silence), counts it and, when
/// the job asks for it (`on_stall = "cancel"`), cancels the run. Ends with `stop`.
pub(super) async fn stall_watch(
    reg: &'static JobRegistration,
    run: Arc<Run>,
    after: Duration,
    stop: CancellationToken,
) {
    let console = run.cx.console().clone();
    console.watch();
    let mut warned = false;
    loop {
        let silent = console.silent_for();
        let wait = if silent >= after {
            if !warned {
                warned = true;
                let cancel = reg.cancels_on_stall();
                let action = if cancel { "cancelled" } else { "warned" };
                crate::metrics::stalled(reg.class(), action);
                tracing::warn!(
                    class = reg.class(),
                    job_id = run.cx.job_id(),
                    silent_ms = silent.as_millis() as u64,
                    "job stalled: no console line or progress change for {}",
                    fmt_duration(silent)
                );
                console.runtime_warning(format!(
                    "no console line or progress change for {}{}",
                    fmt_duration(silent),
                    if cancel {
                        "; cancelling the job (on_stall = \"cancel\")"
                    } else {
                        ""
                    }
                ));
                if cancel {
                    run.stalled.store(true, Ordering::Release);
                    run.cx.cancel();
                    return;
                }
            }
            // Silent still: look again a stall period later.
            after
        } else {
            // The job spoke: a later silence is a new stall.
            warned = false;
            after - silent
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::testkit::{STALLS, limited, result, runtime, start};

    /// `STALLS` waits silently; its watchdog (1 s, `on_stall = "cancel"`) warns and cancels
    /// it one second after its last line. Real time: the watchdog reads the console's
    /// wall-clock activity stamp.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_run_is_warned_and_cancelled_once_its_stall_period_passes() {
        let (rt, outlet, memory) = runtime(&[&STALLS], limited(10, 10));
        let began = std::time::Instant::now();
        start(&rt, &outlet, &STALLS, "q").await.expect("q");
        let stalled = result(&memory, "q").await;
        assert_eq!(
            stalled.e,
            "stalled: no console line or progress change for 1.0s; cancelled (on_stall = \"cancel\")"
        );
        let took = began.elapsed();
        assert!(
            took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(5),
            "{took:?}"
        );
        let lines = memory.lines_of("q");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("no console line or progress change for 1.")
                    && l.ends_with("s; cancelling the job (on_stall = \"cancel\")")),
            "{lines:?}"
        );
    }
}

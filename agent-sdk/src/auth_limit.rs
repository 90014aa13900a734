//! Basic-auth failures: limited per peer address, and logged as counts.
//!
//! Without a limit a caller could try thousands of passwords a second, each logged as a line
//! of its own. Now each peer address has a budget of failures ([`FAILURES_PER_MINUTE`],
//! with a burst of [`FAILURE_BURST`]; governor's GCRA, keyed by address): once it is spent,
//! every request from that address is refused without its credentials being compared, until
//! the budget refills. Failures are logged as one line per [`REPORT_EVERY`] with their
//! counts, not one line each.
//!
//! The peer address comes from the connection (`ConnectInfo<SocketAddr>`, which
//! [`crate::serve()`] sets, as does axum's `into_make_service_with_connect_info`); a host that
//! serves the router without it puts every caller under one shared budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::sync::lock;

/// Failed attempts a peer may make per minute once its burst is spent.
const FAILURES_PER_MINUTE: u32 = 10;
/// Failed attempts a peer may make in a row before the limit applies.
const FAILURE_BURST: u32 = 10;
/// How often the counts are logged (when there were failures).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How many blocked addresses are remembered; beyond it the ones whose block ended go.
const MAX_BLOCKED: usize = 10_000;

/// The per-peer limit of failed basic-auth attempts.
pub(crate) struct AuthLimit {
    failures: DefaultKeyedRateLimiter<Option<IpAddr>>,
    /// Addresses whose budget is spent, and until when.
    blocked: Mutex<HashMap<Option<IpAddr>, Instant>>,
    report: Mutex<Report>,
}

/// The counts since the last log line.
struct Report {
    since: Instant,
    failed: u64,
    refused: u64,
    peers: HashMap<Option<IpAddr>, u64>,
}

/// What the limit says about a request, before its credentials are compared.
pub(crate) enum Gate {
    /// Compare the credentials.
    Check,
    /// The peer spent its budget: refuse without comparing.
    Blocked,
}

impl AuthLimit {
    pub(crate) fn new() -> Self {
        let per_minute = NonZeroU32::new(FAILURES_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(FAILURE_BURST).unwrap_or(NonZeroU32::MIN);
        Self {
            failures: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            blocked: Mutex::new(HashMap::new()),
            report: Mutex::new(Report {
                since: Instant::now(),
                failed: 0,
                refused: 0,
                peers: HashMap::new(),
            }),
        }
    }

    /// Whether a request from `peer` may have its credentials compared.
    pub(crate) fn gate(&self, peer: Option<IpAddr>) -> Gate {
        let mut blocked = lock(&self.blocked);
        match blocked.get(&peer) {
            Some(until) if *until > Instant::now() => {
                drop(blocked);
                self.count(peer, true);
                Gate::Blocked
            }
            Some(_) => {
                blocked.remove(&peer);
                Gate::Check
            }
            None => Gate::Check,
        }
    }

    /// Notes a failed attempt from `peer`; spends its budget, and blocks it when spent.
    pub(crate) fn failed(&self, peer: Option<IpAddr>) {
        if let Err(not_until) = self.failures.check_key(&peer) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut blocked = lock(&self.blocked);
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
                self.failures.retain_recent();
            }
            if blocked.len() < MAX_BLOCKED {
                blocked.insert(peer, Instant::now() + wait);
            }
        }
        self.count(peer, false);
    }

    /// Counts a failure (or a refusal of a blocked peer) and logs the counts once a period.
    fn count(&self, peer: Option<IpAddr>, refused: bool) {
        let mut r = lock(&self.report);
        let first = r.failed == 0 && r.refused == 0;
        if refused {
            r.refused += 1;
        } else {
            r.failed += 1;
        }
        if r.peers.len() < 1_000 || r.peers.contains_key(&peer) {
            *r.peers.entry(peer).or_default() += 1;
        }
        if first {
            tracing::warn!(
                peer = %shown(peer),
                "basic auth failed; failures are limited per address and counted, reported every {} s",
                REPORT_EVERY.as_secs()
            );
            r.since = Instant::now();
            return;
        }
        if r.since.elapsed() >= REPORT_EVERY {
            let mut top: Vec<_> = r.peers.iter().map(|(p, n)| (*n, *p)).collect();
            top.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
            let top: Vec<String> = top
                .iter()
                .take(5)
                .map(|(n, p)| format!("{} ({n})", shown(*p)))
                .collect();
            tracing::warn!(
                failed = r.failed,
                refused_while_limited = r.refused,
                peers = r.peers.len(),
                top = %top.join(", "),
                "basic auth failures in the last {} s",
                r.since.elapsed().as_secs()
            );
            r.since = Instant::now();
            r.failed = 0;
            r.refused = 0;
            r.peers.clear();
        }
    }
}

fn shown(peer: Option<IpAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_blocked_after_its_burst_and_others_are_not() {
        let limit = AuthLimit::new();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..FAILURE_BURST {
            assert!(matches!(limit.gate(a), Gate::Check));
            limit.failed(a);
        }
        limit.failed(a);
        assert!(matches!(limit.gate(a), Gate::Blocked));
        assert!(matches!(limit.gate(b), Gate::Check));
    }
}

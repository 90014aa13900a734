//! The center's store (Hangfire.PostgreSql): where console lines, results and heartbeats go.

mod connstr;
mod pool;
mod procstat;

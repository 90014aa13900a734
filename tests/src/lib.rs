//! Integration-test support for the job agent: a scheduling-center stand-in that builds
//! requests exactly as Hangfire.HttpJob does ([`center`]), the example service started
//! in-process ([`service`]), harnesses for the three stores with the Hangfire tables
//! ([`pg`], [`mysql`], [`redis`], one interface over them in [`stores`]), and the
//! bare axum handler the dispatch benchmark compares against ([`baseline`]).
//!
//! The integration tests live in `tests/tests/`; benchmarks and other test files reuse these
//! modules.

pub mod baseline;
pub mod cargo;
pub mod center;
pub mod fleet;
pub mod hangfire;
pub mod logs;
pub mod mysql;
pub mod pg;
pub mod pgbouncer;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod replica;
pub mod service;
pub mod stores;
pub mod wait;

pub use center::{Center, CenterRequest, ConsoleInfo, Reply, Storage};
pub use pg::TestDb;
pub use service::TestService;

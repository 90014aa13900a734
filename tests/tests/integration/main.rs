//! The integration tests, one module per concern, in one test binary.
//!
//! One binary rather than a file each: the tests wait far more than they compute (stores,
//! replicas, leases, black holes), so running them side by side instead of one file after
//! another is what their time is spent on; and the workspace links one test binary instead of
//! thirty. Run one module with `cargo test -p tests --test integration <module>::`.
//!
//! Two files stay binaries of their own: `secrets.rs` installs its own global log subscriber
//! (it must see every line any thread logs), and `outside_crate.rs` builds a crate, which
//! would take the CPU from tests with deadlines beside it.
//!
//! A job declared here is named after its module path, `integration::<module>::<Type>`.

mod agent_protocol;
mod attack_endpoint;
mod attack_slowloris;
mod busy;
mod center_client;
mod cluster;
mod cluster_expiry;
mod console_refusal;
mod console_trace;
mod deployed_center;
mod dev_cli;
mod faults_blackhole;
mod faults_cluster;
mod faults_console;
mod faults_dispatch;
mod faults_store;
mod lifecycle;
mod operate;
mod pg_harness;
mod real_center;
mod relay;
mod relay_tenants;
mod result_retry;
mod store;
mod store_bookkeeping;
mod store_first_reach;
mod store_generations;
mod store_lock;
mod store_mysql_center;
mod store_pgbouncer;
mod store_redis_center;
mod store_tls;
mod stuck;

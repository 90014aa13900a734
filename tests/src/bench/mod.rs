//! The pieces of the `bench` binary: a raw HTTP/1.1 load client, `wrk` as a second load
//! client, child-process helpers (start, readiness, `/proc` figures), statistics and the
//! table, and the scenarios (`scenarios`, with the cross-replica stop in `cluster` and console throughput on MySQL and
//! Redis in `stores`, through a relay in `relay`). The bare
//! baseline server is `tests::baseline`.

pub(crate) mod cluster;
pub(crate) mod http;
pub(crate) mod proc;
pub(crate) mod relay;
pub(crate) mod scenarios;
pub(crate) mod stats;
pub(crate) mod stopjob;
pub(crate) mod store;
pub(crate) mod stores;
pub(crate) mod wrk;

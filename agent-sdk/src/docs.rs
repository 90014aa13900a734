//! The user guide (`docs/` of the repository), compiled here so its examples are tested.

#[doc = include_str!("../../docs/getting-started.md")]
pub mod getting_started {}
#[doc = include_str!("../../docs/jobs.md")]
pub mod jobs {}
#[doc = include_str!("../../docs/console.md")]
pub mod console {}
#[doc = include_str!("../../docs/configuration.md")]
pub mod configuration {}
#[doc = include_str!("../../docs/center.md")]
pub mod center {}
#[doc = include_str!("../../docs/migrating.md")]
pub mod migrating {}
#[doc = include_str!("../../docs/operations.md")]
pub mod operations {}
#[doc = include_str!("../../docs/protocol.md")]
pub mod protocol {}
#[doc = include_str!("../../docs/security.md")]
pub mod security {}
#[doc = include_str!("../../docs/replicas.md")]
pub mod replicas {}
#[doc = include_str!("../../docs/store-postgresql.md")]
pub mod store_postgresql {}
#[doc = include_str!("../../docs/store-mysql.md")]
pub mod store_mysql {}
#[doc = include_str!("../../docs/store-redis.md")]
pub mod store_redis {}
#[doc = include_str!("../../docs/relay.md")]
pub mod relay {}

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

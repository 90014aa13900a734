//! placeholder
#![allow(dead_code, unused_variables)]
use crate::store::line::EncodedLine;
use std::time::Duration;
const TODO: &str = "not yet";
pub(crate) struct MysqlStore {
    label: String,
}
pub(crate) fn is_absent(e: &str) -> bool {
    e.contains("does not create")
}
impl MysqlStore {
    pub(crate) fn open(
        connection: &str,
        table_prefix: &str,
        from_center: bool,
    ) -> Result<Self, String> {
        Err(TODO.into())
    }
    pub(crate) fn label(&self) -> &str {
        &self.label
    }
    pub(crate) fn identity(&self) -> &str {
        &self.label
    }
    pub(crate) fn hosts(&self) -> Vec<String> {
        Vec::new()
    }
    pub(crate) async fn ping(&self) -> Result<(), String> {
        Err(TODO.into())
    }
    pub(crate) async fn check_tables(&self) -> Result<(), String> {
        Err(TODO.into())
    }
    pub(crate) async fn write_console(
        &self,
        set_key: &str,
        hash_key: &str,
        lines: &[EncodedLine],
        expire: Duration,
    ) -> Result<(), String> {
        Err(TODO.into())
    }
    pub(crate) async fn set_hash(
        &self,
        key: &str,
        pairs: &[(&str, &str)],
        life: Option<Duration>,
    ) -> Result<(), String> {
        Err(TODO.into())
    }
    pub(crate) async fn add_to_set(
        &self,
        key: &str,
        value: &str,
        score: f64,
        expire: Duration,
    ) -> Result<(), String> {
        Err(TODO.into())
    }
    pub(crate) async fn first_report(
        &self,
        id: &str,
        token: &str,
        expire: Duration,
    ) -> Result<bool, String> {
        Err(TODO.into())
    }
    pub(crate) async fn lock_try(
        &self,
        resource: &str,
        stale_after: Duration,
    ) -> Result<Option<String>, String> {
        Err(TODO.into())
    }
    pub(crate) async fn lock_keep(
        &self,
        resource: &str,
        owner: &str,
    ) -> Result<Option<String>, String> {
        Err(TODO.into())
    }
    pub(crate) async fn lock_release(&self, resource: &str, owner: &str) -> Result<(), String> {
        Err(TODO.into())
    }
    pub(crate) async fn fence(&self, resource: &str) -> Result<u64, String> {
        Err(TODO.into())
    }
    pub(crate) async fn read_set(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, String> {
        Err(TODO.into())
    }
    pub(crate) async fn read_hash(&self, key: &str, field: &str) -> Result<Option<String>, String> {
        Err(TODO.into())
    }
}

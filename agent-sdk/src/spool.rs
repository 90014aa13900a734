//! The spool: in-flight records the store could not take yet, kept on this machine's disk.
//!
//! A run is answered 200 before its store has its in-flight record when the store is away
//! after a first success (the outage is buffered: `runtime/drive.rs` retries the record
//! until the store takes it). A process killed in that window used to leave a run that no
//! one ever reported, and the center waits for an agent job's result with no time-out. The
//! record is therefore also written here, one file per run, and removed once the store has it
//! (or the run's result is written). The next process of the same instance on this machine
//! holds the name, reconciles, and reports what it finds here as lost, like the store's own
//! records of a predecessor (`coordinator.rs`); a report of a run that had in fact been
//! reported is absorbed by the store's first-report mark.
//!
//! Layout: `<dir>/<instance, as a file name>/<uuid>.json`, each file one [`Entry`], written
//! to a temporary name, synced, then renamed, so a reader sees a whole entry or none. The
//! directory is this user's own (mode 0700, checked when it already exists): entries are
//! reported as results, so no one else may plant one.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cluster::RunRecord;

/// The entry format; an entry of another version is left alone (and named in the log).
const VERSION: u32 = 1;
/// The largest entry read (a record is a few hundred bytes); a larger file is no entry.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;
/// The most characters of an instance name kept in its directory's name.
const MAX_NAME_CHARS: usize = 64;
/// How long writing or reading the spool may take (a disk that hangs, a network mount that
/// went away): past it the caller goes on without the spool, never wedged by it.
const DISK_WITHIN: Duration = Duration::from_secs(5);

/// One run the store did not have when it was answered.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub(crate) struct Entry {
    pub(crate) v: u32,
    /// The instance the run belongs to (directory names may be shared by several).
    pub(crate) instance: String,
    /// The store it is to be reported in ([`store_key`]).
    pub(crate) store: String,
    pub(crate) job_id: String,
    pub(crate) record: RunRecord,
}

impl Entry {
    pub(crate) fn new(instance: &str, store: String, job_id: &str, record: &RunRecord) -> Self {
        Self {
            v: VERSION,
            instance: instance.to_owned(),
            store,
            job_id: job_id.to_owned(),
            record: record.clone(),
        }
    }
}

/// Where a store's entries are reported: its type, host(s) and database, and its schema,
/// table prefix or key prefix. Stable across processes; never a secret.
pub(crate) fn store_key(store: &crate::store::Store) -> String {
    format!("{} {} {}", store.kind(), store.label, store.prefix)
}

/// The spool of one machine (a directory).
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
}

/// One entry on disk, until [`Kept::forget`].
#[derive(Debug)]
pub(crate) struct Kept(PathBuf);

impl Kept {
    /// Removes the entry: the store has the record, or the run's result is written. Waits
    /// at most [`DISK_WITHIN`] (the removal goes on without the caller).
    pub(crate) async fn forget(self) {
        let path = self.0;
        let remove = tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err((path, e)),
            _ => Ok(()),
        });
        if let Ok(Ok(Err((path, e)))) = tokio::time::timeout(DISK_WITHIN, remove).await {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a spooled run; a next process of this instance reports it again, and the store's first-report mark absorbs that report");
        }
    }
}

impl Spool {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The spool's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `entry` (durably: synced before this returns), within [`DISK_WITHIN`].
    pub(crate) async fn keep(&self, entry: Entry) -> io::Result<Kept> {
        let dir = self.instance_dir(&entry.instance);
        let write = tokio::task::spawn_blocking(move || write_entry(&dir, &entry));
        match tokio::time::timeout(DISK_WITHIN, write).await {
            Ok(written) => written.map_err(io::Error::other)?,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the disk did not take the entry within {DISK_WITHIN:?}"),
            )),
        }
    }

    /// The entries of `instance` for store `store`. A file that is no entry of this version
    /// is renamed `<name>.bad` and named in the log (once), never reported.
    pub(crate) async fn left(&self, instance: &str, store: &str) -> Vec<(Kept, Entry)> {
        let dir = self.instance_dir(instance);
        let (instance, store) = (instance.to_owned(), store.to_owned());
        let read = tokio::task::spawn_blocking(move || read_entries(&dir, &instance, &store));
        match tokio::time::timeout(DISK_WITHIN, read).await {
            Ok(entries) => entries.unwrap_or_default(),
            Err(_) => {
                tracing::warn!(spool = %self.dir.display(), "the spool was not read within {DISK_WITHIN:?}; its runs are left for the next process of this instance");
                Vec::new()
            }
        }
    }

    fn instance_dir(&self, instance: &str) -> PathBuf {
        self.dir.join(file_name_of(instance))
    }
}

/// `instance` as one path component: ASCII letters, digits, `.`, `-` and `_` kept, anything
/// else `_`, at most [`MAX_NAME_CHARS`]; never `.` or `..`. Two names may share a directory:
/// entries name their instance.
fn file_name_of(instance: &str) -> String {
    let name: String = instance
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        format!("_{name}")
    } else {
        name
    }
}

/// Creates `dir` (mode 0700) when absent; refuses one that is a link, or (on Unix) not this
/// user's own or open to others.
fn own_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a link?)",
            dir.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} belongs to uid {} with mode {:o}; the spool must be this user's (uid {me}) alone, mode 0700",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o777
            )));
        }
    }
    Ok(())
}

fn write_entry(dir: &Path, entry: &Entry) -> io::Result<Kept> {
    if let Some(parent) = dir.parent() {
        own_dir(parent)?;
    }
    own_dir(dir)?;
    let name = uuid::Uuid::new_v4().simple().to_string();
    let (tmp, path) = (
        dir.join(format!("{name}.tmp")),
        dir.join(format!("{name}.json")),
    );
    let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(io::Error::other(format!(
            "the record is {} bytes, more than a spool entry may be ({MAX_ENTRY_BYTES}; its job id is {} bytes)",
            bytes.len(),
            entry.job_id.len()
        )));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    let written = file.write_all(&bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself is durable once the directory is synced (where a directory can be
    // opened: Unix).
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Kept(path))
}

fn read_entries(dir: &Path, instance: &str, store: &str) -> Vec<(Kept, Entry)> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    if let Err(e) = dir
        .parent()
        .map_or(Ok(()), own_dir)
        .and_then(|()| own_dir(dir))
    {
        tracing::warn!(error = %e, "the spool is not read: its entries would be reported as results");
        return Vec::new();
    }
    let mut entries = Vec::new();
    for file in listing.flatten() {
        let path = file.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match read_entry(&path) {
            Ok(entry) if entry.instance == instance && entry.store == store => {
                entries.push((Kept(path), entry));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a file in the spool is no entry of this version; renamed `.bad`, not reported");
                let _ = std::fs::rename(&path, path.with_extension("bad"));
            }
        }
    }
    // Oldest first, as they were answered.
    entries.sort_by_key(|(_, e)| e.record.started);
    entries
}

fn read_entry(path: &Path) -> io::Result<Entry> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(io::Error::other("larger than any entry"));
    }
    let entry: Entry = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    if entry.v != VERSION {
        return Err(io::Error::other(format!(
            "entry version {} (this agent writes {VERSION})",
            entry.v
        )));
    }
    Ok(entry)
}

/// Whether an entry started so long ago that the store no longer keeps what would report it
/// (`expire`: the store's `ExpireAtDays`).
pub(crate) fn outlived(entry: &Entry, expire: Duration) -> bool {
    let started = std::time::UNIX_EPOCH + Duration::from_millis(entry.record.started);
    SystemTime::now()
        .duration_since(started)
        .is_ok_and(|age| age > expire)
}

/// The default spool: `<temp dir>/jobagent-spool-<uid>` (Unix; `jobagent-spool` elsewhere).
pub(crate) fn default_dir() -> PathBuf {
    #[cfg(unix)]
    let name = format!("jobagent-spool-{}", rustix::process::geteuid().as_raw());
    #[cfg(not(unix))]
    let name = "jobagent-spool".to_owned();
    std::env::temp_dir().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(started: u64) -> RunRecord {
        RunRecord {
            class: "a::Job".to_owned(),
            server_id: "s1".to_owned(),
            started,
            action: "run".to_owned(),
            run_id: String::new(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "jobagent-spool-test-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_are_kept_per_instance_and_store_until_forgotten() {
        let dir = scratch("keep");
        let spool = Spool::new(dir.clone());
        let a = Entry::new("host:8080", "pg x".to_owned(), "7", &record(2));
        let b = Entry::new("host:8080", "pg x".to_owned(), "6", &record(1));
        let other_store = Entry::new("host:8080", "pg y".to_owned(), "8", &record(3));
        // Shares the directory name `host_8080`, not the instance.
        let other_instance = Entry::new("host_8080", "pg x".to_owned(), "9", &record(4));
        for e in [&a, &b, &other_store, &other_instance] {
            spool.keep(e.clone()).await.expect("keep");
        }
        let left = spool.left("host:8080", "pg x").await;
        let got: Vec<&Entry> = left.iter().map(|(_, e)| e).collect();
        assert_eq!(
            got,
            vec![&b, &a],
            "this instance's, this store's, oldest first"
        );
        for (kept, _) in left {
            kept.forget().await;
        }
        assert!(spool.left("host:8080", "pg x").await.is_empty());
        assert_eq!(spool.left("host:8080", "pg y").await.len(), 1);
        assert_eq!(spool.left("host_8080", "pg x").await.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_that_is_no_entry_is_set_aside_never_reported() {
        let dir = scratch("bad");
        let spool = Spool::new(dir.clone());
        spool
            .keep(Entry::new("i", "k".to_owned(), "1", &record(1)))
            .await
            .expect("keep");
        let instance_dir = dir.join("i");
        std::fs::write(instance_dir.join("junk.json"), b"{\"v\":1,").expect("write");
        let mut newer =
            serde_json::to_value(Entry::new("i", "k".to_owned(), "2", &record(2))).expect("json");
        newer["v"] = 2.into();
        std::fs::write(instance_dir.join("newer.json"), newer.to_string()).expect("write");
        let huge = vec![b' '; MAX_ENTRY_BYTES as usize + 1];
        std::fs::write(instance_dir.join("huge.json"), huge).expect("write");

        let left = spool.left("i", "k").await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.job_id, "1");
        for name in ["junk", "newer", "huge"] {
            assert!(instance_dir.join(format!("{name}.bad")).exists(), "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread")]
    async fn a_directory_open_to_others_is_neither_written_nor_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("open");
        let spool = Spool::new(dir.clone());
        spool
            .keep(Entry::new("i", "k".to_owned(), "1", &record(1)))
            .await
            .expect("keep");
        let mode = std::fs::metadata(dir.join("i"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(dir.join("i"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        assert!(spool.left("i", "k").await.is_empty(), "not read");
        let err = spool
            .keep(Entry::new("i", "k".to_owned(), "2", &record(2)))
            .await
            .expect_err("not written");
        assert!(err.to_string().contains("mode 777"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread")]
    async fn a_spool_that_is_a_link_is_neither_written_nor_read() {
        let target = scratch("target");
        let link = scratch("link");
        // Someone else's planted directory, private as a spool would be: still not used.
        Spool::new(target.clone())
            .keep(Entry::new("i", "k".to_owned(), "1", &record(1)))
            .await
            .expect("keep");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let spool = Spool::new(link.clone());
        let err = spool
            .keep(Entry::new("i", "k".to_owned(), "2", &record(2)))
            .await
            .expect_err("not written through a link");
        assert!(err.to_string().contains("a link"), "{err}");
        assert!(
            spool.left("i", "k").await.is_empty(),
            "not read through a link"
        );
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&target);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_entry_too_large_to_read_back_is_not_written() {
        let dir = scratch("large");
        let spool = Spool::new(dir.clone());
        let huge_id = "7".repeat(MAX_ENTRY_BYTES as usize);
        let err = spool
            .keep(Entry::new("i", "k".to_owned(), &huge_id, &record(1)))
            .await
            .expect_err("too large");
        assert!(
            err.to_string().contains("more than a spool entry may be"),
            "{err}"
        );
        assert!(spool.left("i", "k").await.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A spool file that never answers (a FIFO no one writes to: its open blocks, as a read
    /// on a mount that went away does) does not wedge the reader past its deadline.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread")]
    async fn a_spool_that_hangs_is_given_up_after_its_deadline() {
        let dir = scratch("hang");
        let spool = Spool::new(dir.clone());
        spool
            .keep(Entry::new("i", "k".to_owned(), "1", &record(1)))
            .await
            .expect("keep");
        let fifo = dir.join("i").join("hang.json");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .expect("mkfifo");
        let started = std::time::Instant::now();
        let left = spool.left("i", "k").await;
        let waited = started.elapsed();
        assert!(left.is_empty(), "nothing read while the disk hangs");
        assert!(
            waited >= DISK_WITHIN && waited < DISK_WITHIN + Duration::from_secs(5),
            "{waited:?}"
        );
        // Lets the stuck read end (its open returns, it reads nothing), so the runtime can
        // shut down.
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open the fifo"),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn instance_names_become_one_safe_path_component() {
        assert_eq!(file_name_of("web-1.example:8080"), "web-1.example_8080");
        assert_eq!(file_name_of("../../etc"), ".._.._etc");
        assert_eq!(file_name_of(".."), "_..");
        assert_eq!(file_name_of(""), "_");
        assert_eq!(file_name_of("a/b\\c\0"), "a_b_c_");
        assert_eq!(file_name_of(&"x".repeat(500)).len(), MAX_NAME_CHARS);
    }

    #[test]
    fn an_entry_outlives_its_store_only_past_the_expiry() {
        let now = crate::cluster::now_ms();
        let day = Duration::from_secs(86_400);
        let fresh = Entry::new("i", "k".to_owned(), "1", &record(now - 1000));
        let old = Entry::new("i", "k".to_owned(), "1", &record(now - 2 * 86_400_000));
        assert!(!outlived(&fresh, day));
        assert!(outlived(&old, day));
    }
}

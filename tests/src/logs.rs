//! Captures what the agent logs through `tracing`, to assert on it (a start-up line, the
//! absence of a secret).

use std::sync::{Arc, Mutex, OnceLock};

/// A log buffer; clones share it.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures everything down to `DEBUG` logged on this thread until the guard drops.
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Captures everything down to `DEBUG` logged on any thread of this test binary, from
    /// the first call on (the global subscriber: what runs on a runtime's worker threads is
    /// caught too). Every call returns the same buffer.
    ///
    /// The one global subscriber of a test binary: it also writes to the test's output what
    /// `RUST_LOG` asks for (default `warn`), which is all [`crate::service::init_tracing`]
    /// installs. Tests that share a binary therefore share this buffer: they look for their
    /// own lines (by job id, store name), not at every line.
    pub fn global() -> Logs {
        use tracing_subscriber::filter::{EnvFilter, LevelFilter};
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        use tracing_subscriber::{Layer as _, fmt};

        static GLOBAL: OnceLock<Logs> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let logs = Logs::default();
                let writer = logs.clone();
                let shown =
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
                let _ = tracing_subscriber::registry()
                    .with(fmt::layer().with_test_writer().with_filter(shown))
                    .with(
                        fmt::layer()
                            .with_ansi(false)
                            .with_writer(move || writer.clone())
                            .with_filter(LevelFilter::DEBUG),
                    )
                    .try_init();
                logs
            })
            .clone()
    }

    /// What was captured, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

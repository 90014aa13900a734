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
    /// caught too). Every call returns the same buffer; call it before anything else installs
    /// a subscriber.
    pub fn global() -> Logs {
        static GLOBAL: OnceLock<Logs> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let logs = Logs::default();
                let writer = logs.clone();
                let _ = tracing_subscriber::fmt()
                    .with_ansi(false)
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(move || writer.clone())
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

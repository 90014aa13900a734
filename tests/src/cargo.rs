//! Where this test's cargo puts things, for tests that build other binaries and crates.

use std::path::PathBuf;

/// The target directory this test binary was built into.
pub struct Target {
    /// `<target>`.
    pub dir: PathBuf,
    /// `<target>/<profile>`, where binaries land.
    pub profile_dir: PathBuf,
    /// Whether this test was built with `--release`.
    pub release: bool,
}

/// The target directory of the running binary: a test (`<target>/<profile>/deps/<test>`) or
/// one of this crate's binaries, such as the bench (`<target>/<profile>/<bin>`).
pub fn target() -> Target {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    let parent = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected binary location {}", exe.display()));
    let profile_dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().unwrap_or(parent)
    } else {
        parent
    }
    .to_path_buf();
    let dir = profile_dir
        .parent()
        .unwrap_or_else(|| panic!("unexpected target layout {}", profile_dir.display()))
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    Target {
        dir,
        profile_dir,
        release,
    }
}

/// The cargo running this test (`CARGO`), else the one on `PATH`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no workspace above {}", tests.display()))
}

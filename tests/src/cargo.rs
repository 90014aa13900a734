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

/// The path of the workspace's service binary `name` (`example-agent`, `jobagent-relay` or
/// `jobagent-dev`), built into this test's target directory and profile: the first call in a
/// test process builds all three, the others reuse that build.
///
/// One build for the three, not one per package: `cargo build -p <package>` resolves the
/// features of that package's graph only, so `jobagent` was compiled once more for each of
/// them (three feature sets); built together they share one.
pub fn service_bin(name: &str) -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let profile_dir = BUILT.get_or_init(build_service_bins).clone()?;
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} was not built", path.display()))
    }
}

/// The packages whose binaries the tests start.
const SERVICE_PACKAGES: [&str; 3] = ["example-agent", "jobagent-relay", "jobagent-dev"];

fn build_service_bins() -> Result<PathBuf, String> {
    let target = target();
    let mut cmd = std::process::Command::new(cargo());
    cmd.current_dir(workspace())
        .args(["build", "-q", "--bins", "--target-dir"])
        .arg(&target.dir)
        .stdin(std::process::Stdio::null());
    for package in SERVICE_PACKAGES {
        cmd.args(["-p", package]);
    }
    if target.release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the service binaries: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the service binaries failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.profile_dir)
}

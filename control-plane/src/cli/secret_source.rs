//! Where a secret comes from. A secret argument is never a bare value: a bare value would
//! sit in shell history and in the process list for every local user to read. On the
//! command line a secret is `env:NAME`, `file:PATH`, `stdin` or `value:LITERAL` (the last
//! one is for demos only); in a YAML document it is `{ env: NAME }`, `{ file: PATH }` or
//! `{ value: LITERAL }`. The CLI resolves the source and sends the plaintext to the control
//! plane, which encrypts it before anything is written.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use portcullis_shared::secret::SecretValue;
use serde::Deserialize;

/// The largest secret, token file or JWKS file the CLI reads. Matches what the control
/// plane accepts for one value, so a wrong file (a log, a core dump) is refused early.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Read access to environment variables. Commands receive it as a parameter so tests
/// inject a map instead of mutating the process environment, which is shared by every
/// test thread.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a secret source was refused or could not be read. No variant carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    // The argument itself is not echoed: a user who typed a bare secret would otherwise
    // see it printed back, and so would anyone reading the terminal or a CI log.
    #[error(
        "a secret takes a source: env:NAME, file:PATH, stdin or value:LITERAL (the argument is not shown, in case it is the secret itself)"
    )]
    UnknownSource,
    #[error("{0}: names nothing (write {0}:...)")]
    EmptyReference(&'static str),
    #[error("set exactly one of env, file and value")]
    NotExactlyOne,
    #[error("environment variable {0} is not set")]
    EnvironmentVariableUnset(String),
    #[error("cannot read secret file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")]
    FileTooLarge { path: PathBuf },
    #[error("{0} is not UTF-8 text")]
    NotUtf8(String),
    #[error("cannot read the secret from stdin: {0}")]
    ReadStdin(std::io::Error),
    #[error("stdin can supply only one secret per command")]
    StdinUsedTwice,
    #[error("the secret from {0} is empty")]
    Empty(String),
}

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSecretSource")]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    /// Standard input, read once. Only on the command line: a document read from stdin
    /// (`apply -f -`) would compete for the same stream.
    Stdin,
    /// A literal value. For demos only: it ends up in shell history or in a file in clear.
    Value(SecretValue),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::Stdin => f.write_str("stdin"),
            SecretSource::Value(_) => f.write_str("value:[redacted]"),
        }
    }
}

impl std::str::FromStr for SecretSource {
    type Err = SecretSourceError;

    fn from_str(argument: &str) -> Result<Self, SecretSourceError> {
        if argument == "stdin" {
            return Ok(SecretSource::Stdin);
        }
        let Some((kind, reference)) = argument.split_once(':') else {
            return Err(SecretSourceError::UnknownSource);
        };
        let (kind, source) = match kind {
            "env" => ("env", SecretSource::Env(reference.to_owned())),
            "file" => ("file", SecretSource::File(PathBuf::from(reference))),
            "value" => ("value", SecretSource::Value(SecretValue::new(reference))),
            _ => return Err(SecretSourceError::UnknownSource),
        };
        if reference.is_empty() {
            return Err(SecretSourceError::EmptyReference(kind));
        }
        Ok(source)
    }
}

/// The YAML shape of a secret: a map with exactly one of `env`, `file`, `value`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretSource {
    env: Option<String>,
    file: Option<PathBuf>,
    value: Option<String>,
}

impl TryFrom<RawSecretSource> for SecretSource {
    type Error = SecretSourceError;

    fn try_from(raw: RawSecretSource) -> Result<Self, SecretSourceError> {
        match (raw.env, raw.file, raw.value) {
            (Some(name), None, None) if name.is_empty() => {
                Err(SecretSourceError::EmptyReference("env"))
            }
            (Some(name), None, None) => Ok(SecretSource::Env(name)),
            (None, Some(path), None) if path.as_os_str().is_empty() => {
                Err(SecretSourceError::EmptyReference("file"))
            }
            (None, Some(path), None) => Ok(SecretSource::File(path)),
            (None, None, Some(value)) if value.is_empty() => {
                Err(SecretSourceError::EmptyReference("value"))
            }
            (None, None, Some(value)) => Ok(SecretSource::Value(SecretValue::new(value))),
            _ => Err(SecretSourceError::NotExactlyOne),
        }
    }
}

/// Turns secret sources into values. Holds the environment, the stdin stream (read at
/// most once) and the directory relative file paths start from.
pub struct SecretResolver<'a> {
    environment: &'a dyn Environment,
    stdin: RefCell<Option<Box<dyn Read + 'a>>>,
    base_directory: Option<PathBuf>,
}

impl<'a> SecretResolver<'a> {
    pub fn new(environment: &'a dyn Environment, stdin: Box<dyn Read + 'a>) -> Self {
        Self {
            environment,
            stdin: RefCell::new(Some(stdin)),
            base_directory: None,
        }
    }

    /// Relative `file:` paths start from this directory. A document's secrets are found
    /// next to the document, whatever directory `apply` runs from.
    pub fn with_base_directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.base_directory = Some(directory.into());
        self
    }

    /// Takes standard input for another use (a document read from `-`); a secret that asks
    /// for stdin afterwards is refused instead of reading a half-consumed stream.
    pub fn take_stdin(&self) -> Option<Box<dyn Read + 'a>> {
        self.stdin.borrow_mut().take()
    }

    pub fn resolve(&self, source: &SecretSource) -> Result<SecretValue, SecretSourceError> {
        match source {
            SecretSource::Env(name) => {
                let value = self
                    .environment
                    .var(name)
                    .ok_or_else(|| SecretSourceError::EnvironmentVariableUnset(name.clone()))?;
                non_empty(value, || format!("environment variable {name}"))
            }
            SecretSource::File(path) => {
                let path = match &self.base_directory {
                    Some(base) if path.is_relative() => base.join(path),
                    _ => path.clone(),
                };
                let text = read_text_file(&path)?;
                non_empty(strip_final_newline(text), || {
                    format!("file {}", path.display())
                })
            }
            SecretSource::Stdin => {
                let Some(mut stdin) = self.stdin.borrow_mut().take() else {
                    return Err(SecretSourceError::StdinUsedTwice);
                };
                let mut bytes = Vec::new();
                stdin
                    .by_ref()
                    .take(MAX_SECRET_FILE_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(SecretSourceError::ReadStdin)?;
                if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
                    return Err(SecretSourceError::FileTooLarge {
                        path: PathBuf::from("stdin"),
                    });
                }
                let text = String::from_utf8(bytes)
                    .map_err(|_| SecretSourceError::NotUtf8("stdin".to_owned()))?;
                non_empty(strip_final_newline(text), || "stdin".to_owned())
            }
            SecretSource::Value(value) => Ok(value.clone()),
        }
    }

    /// Resolves an optional source: `None` stays `None`, meaning "keep the stored value".
    pub fn resolve_optional(
        &self,
        source: Option<&SecretSource>,
    ) -> Result<Option<SecretValue>, SecretSourceError> {
        source.map(|source| self.resolve(source)).transpose()
    }
}

fn non_empty(
    value: String,
    origin: impl FnOnce() -> String,
) -> Result<SecretValue, SecretSourceError> {
    if value.is_empty() {
        Err(SecretSourceError::Empty(origin()))
    } else {
        Ok(SecretValue::new(value))
    }
}

/// Files and piped input almost always end with a newline that is not part of the secret
/// (`echo`, editors). Only one final newline goes, so a value that really ends in
/// whitespace is kept as written otherwise.
fn strip_final_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// Reads a small UTF-8 file (a secret, a token, a JWKS), refusing anything larger than
/// [`MAX_SECRET_FILE_BYTES`].
pub fn read_text_file(path: &Path) -> Result<String, SecretSourceError> {
    let read_error = |source| SecretSourceError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretSourceError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| SecretSourceError::NotUtf8(path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn environment() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("DD_KEY".to_owned(), "dd-secret".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ])
    }

    fn no_stdin() -> Box<dyn Read> {
        Box::new(std::io::empty())
    }

    #[test]
    fn command_line_sources_parse() {
        assert_eq!(
            "env:DD_KEY".parse::<SecretSource>().unwrap(),
            SecretSource::Env("DD_KEY".to_owned())
        );
        assert_eq!(
            "file:/run/secrets/key".parse::<SecretSource>().unwrap(),
            SecretSource::File(PathBuf::from("/run/secrets/key"))
        );
        assert_eq!(
            "stdin".parse::<SecretSource>().unwrap(),
            SecretSource::Stdin
        );
        // A literal may itself contain colons.
        assert_eq!(
            "value:a:b".parse::<SecretSource>().unwrap(),
            SecretSource::Value(SecretValue::new("a:b"))
        );
    }

    #[test]
    fn unknown_prefixes_and_bare_values_are_refused_without_echo() {
        for argument in ["hunter2", "vault:path", "ENV:X", "https://x", ""] {
            let error = argument.parse::<SecretSource>().unwrap_err();
            assert!(
                matches!(error, SecretSourceError::UnknownSource),
                "{argument}"
            );
            if !argument.is_empty() {
                assert!(
                    !error.to_string().contains(argument),
                    "{argument} was echoed"
                );
            }
        }
        assert!(matches!(
            "env:".parse::<SecretSource>(),
            Err(SecretSourceError::EmptyReference("env"))
        ));
    }

    #[test]
    fn debug_never_shows_a_literal() {
        let source = "value:hunter2".parse::<SecretSource>().unwrap();
        assert_eq!(format!("{source:?}"), "value:[redacted]");
    }

    #[test]
    fn environment_is_read_from_the_injected_map() {
        let environment = environment();
        let resolver = SecretResolver::new(&environment, no_stdin());
        let value = resolver
            .resolve(&SecretSource::Env("DD_KEY".to_owned()))
            .unwrap();
        assert_eq!(value.expose(), "dd-secret");
        assert!(matches!(
            resolver.resolve(&SecretSource::Env("MISSING".to_owned())),
            Err(SecretSourceError::EnvironmentVariableUnset(name)) if name == "MISSING"
        ));
        assert!(matches!(
            resolver.resolve(&SecretSource::Env("EMPTY".to_owned())),
            Err(SecretSourceError::Empty(_))
        ));
    }

    #[test]
    fn files_resolve_relative_to_the_base_directory_without_final_newline() {
        let directory = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(directory.path().join("key")).unwrap();
        file.write_all(b"s3cret \r\n").unwrap();
        let environment = environment();
        let resolver =
            SecretResolver::new(&environment, no_stdin()).with_base_directory(directory.path());
        let value = resolver
            .resolve(&SecretSource::File(PathBuf::from("key")))
            .unwrap();
        assert_eq!(value.expose(), "s3cret ");
        assert!(matches!(
            resolver.resolve(&SecretSource::File(PathBuf::from("absent"))),
            Err(SecretSourceError::ReadFile { .. })
        ));
    }

    #[test]
    fn oversized_files_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("big");
        std::fs::write(&path, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_text_file(&path),
            Err(SecretSourceError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn literals_resolve_and_stdin_is_read_once() {
        let environment = environment();
        let resolver = SecretResolver::new(&environment, Box::new(&b"from-pipe\n"[..]));
        let literal = resolver
            .resolve(&SecretSource::Value(SecretValue::new("demo")))
            .unwrap();
        assert_eq!(literal.expose(), "demo");
        assert_eq!(
            resolver.resolve(&SecretSource::Stdin).unwrap().expose(),
            "from-pipe"
        );
        assert!(matches!(
            resolver.resolve(&SecretSource::Stdin),
            Err(SecretSourceError::StdinUsedTwice)
        ));
    }

    #[test]
    fn yaml_sources_take_exactly_one_known_key() {
        let source: SecretSource = serde_norway::from_str("env: DD_KEY").unwrap();
        assert_eq!(source, SecretSource::Env("DD_KEY".to_owned()));
        let source: SecretSource = serde_norway::from_str("{ value: demo }").unwrap();
        assert_eq!(source, SecretSource::Value(SecretValue::new("demo")));
        let error = serde_norway::from_str::<SecretSource>("{ vault: x }")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `vault`"), "{error}");
        let error = serde_norway::from_str::<SecretSource>("{ env: A, file: b }")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("exactly one of env, file and value"),
            "{error}"
        );
        // stdin is for the command line only.
        assert!(serde_norway::from_str::<SecretSource>("{ stdin: true }").is_err());
    }
}

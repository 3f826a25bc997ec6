//! Validation errors that name the exact field path, and collect every problem at once.

use std::fmt;

/// One bad field: where it is (`servers[gmail].app_auth.api_key.key_name`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every violation found in one input. Never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    pub violations: Vec<FieldViolation>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, violation) in self.violations.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = Self::default();
        errors.push(field, message);
        errors
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(FieldViolation {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// Merges another set of violations found under `prefix`.
    pub fn extend_prefixed(&mut self, prefix: &str, other: ValidationErrors) {
        for violation in other.violations {
            self.violations.push(FieldViolation {
                field: join_path(prefix, &violation.field),
                message: violation.message,
            });
        }
    }

    /// `Ok(value)` when nothing was found, else every violation.
    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// Joins a parent path and a child field: `join_path("app_auth", "api_key")`.
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

/// Runs a fallible parse and records its error under `field`, returning `None` on failure.
/// Lets a validator keep going after the first bad field.
pub fn collect<T, E: fmt::Display>(
    errors: &mut ValidationErrors,
    field: &str,
    result: Result<T, E>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            errors.push(field, error.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_with_dots_and_brackets() {
        assert_eq!(join_path("", "name"), "name");
        assert_eq!(join_path("server", ""), "server");
        assert_eq!(join_path("server", "app_auth"), "server.app_auth");
        assert_eq!(
            join_path("outbound_headers", "[x-a]"),
            "outbound_headers[x-a]"
        );
    }

    #[test]
    fn display_lists_every_violation() {
        let mut errors = ValidationErrors::default();
        errors.push("name", "must not be empty");
        errors.push("upstream_url", "relative URL without a base");
        assert_eq!(
            errors.to_string(),
            "name: must not be empty; upstream_url: relative URL without a base"
        );
        assert!(errors.into_result(()).is_err());
    }
}

//! Header value templates over caller claims: `team={{groups}} user={{sub}}`.
//! Parsed when the configuration is written, rendered per request.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{ClaimName, check_header_value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed '{{{{' at byte {0}")]
    Unclosed(usize),
    #[error("empty placeholder at byte {0}")]
    EmptyPlaceholder(usize),
    #[error("placeholder {0:?} is not a valid claim name")]
    BadClaim(String),
    #[error("literal text: {0}")]
    Literal(crate::names::NameError),
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 1024 bytes")]
    TooLong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Claim(ClaimName),
}

/// A parsed template. Serialized as its source text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    parts: Vec<TemplatePart>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        if source.len() > 1024 {
            return Err(TemplateError::TooLong);
        }
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(literal(&rest[..start])?);
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + start))?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(TemplateError::EmptyPlaceholder(offset + start));
            }
            let claim =
                ClaimName::parse(name).map_err(|_| TemplateError::BadClaim(name.to_owned()))?;
            parts.push(TemplatePart::Claim(claim));
            let consumed = start + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(literal(rest)?);
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn parts(&self) -> &[TemplatePart] {
        &self.parts
    }

    /// Renders with a claim lookup. A missing claim renders as an error, not as an empty
    /// string, so an upstream never sees a half-filled identity header.
    pub fn render<'a>(
        &self,
        mut claim: impl FnMut(&ClaimName) -> Option<&'a str>,
    ) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => out.push_str(text),
                TemplatePart::Claim(name) => {
                    let value =
                        claim(name).ok_or_else(|| RenderError::MissingClaim(name.to_string()))?;
                    out.push_str(value);
                }
            }
        }
        check_header_value(&out).map_err(|_| RenderError::UnsafeValue)?;
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the caller's token has no claim {0:?}")]
    MissingClaim(String),
    #[error("the rendered value contains bytes that cannot go in a header")]
    UnsafeValue,
}

fn literal(text: &str) -> Result<TemplatePart, TemplateError> {
    check_header_value(text).map_err(TemplateError::Literal)?;
    Ok(TemplatePart::Literal(text.to_owned()))
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(value: String) -> Result<Self, TemplateError> {
        Self::parse(&value)
    }
}

impl From<Template> for String {
    fn from(value: Template) -> String {
        value.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let template = Template::parse("team={{groups}} user={{ sub }}").unwrap();
        let rendered = template
            .render(|name| match name.as_str() {
                "groups" => Some("eng"),
                "sub" => Some("alice"),
                _ => None,
            })
            .unwrap();
        assert_eq!(rendered, "team=eng user=alice");
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(Template::parse("a {{sub"), Err(TemplateError::Unclosed(2)));
        assert_eq!(
            Template::parse("{{ }}"),
            Err(TemplateError::EmptyPlaceholder(0))
        );
        assert!(matches!(
            Template::parse("a\r\n{{sub}}"),
            Err(TemplateError::Literal(_))
        ));
        assert_eq!(Template::parse(""), Err(TemplateError::Empty));
    }

    #[test]
    fn rendering_refuses_missing_claims_and_injected_newlines() {
        let template = Template::parse("{{email}}").unwrap();
        assert_eq!(
            template.render(|_| None),
            Err(RenderError::MissingClaim("email".to_owned()))
        );
        assert_eq!(
            template.render(|_| Some("a@b\r\nx-evil: 1")),
            Err(RenderError::UnsafeValue)
        );
    }
}

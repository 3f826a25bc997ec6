//! `header_template`: header value templates over caller claims
//! (`portcullis_shared::template::Template`), parsed when configuration is written and
//! rendered per request with values a caller controls.
//!
//! Parsing and rendering never panic; a rendered value never holds CR, LF, NUL or another
//! byte a header value cannot carry; it is exactly the literals and claim values in order;
//! a template's text parses back to the same template (directly and through serde).

use std::collections::BTreeMap;

use portcullis_shared::names::ClaimName;
use portcullis_shared::template::{RenderError, Template, TemplatePart};

/// The input is pieces separated by the byte 0xFF (which UTF-8 never uses, so the pieces
/// themselves can hold CR, LF and NUL): the template source, then claim names and values in
/// turn.
pub fn fuzz(data: &[u8]) {
    let mut pieces = data
        .split(|byte| *byte == SEPARATOR)
        .map(|piece| String::from_utf8_lossy(piece).into_owned());
    let source = pieces.next().unwrap_or_default();
    let mut claims = BTreeMap::new();
    while let (Some(name), Some(value)) = (pieces.next(), pieces.next()) {
        claims.insert(name, value);
    }
    check_template(&source, &claims);
}

const SEPARATOR: u8 = 0xFF;

/// The input format of [`fuzz`] for this template source and these claims.
pub fn encode(source: &str, claims: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = source.as_bytes().to_vec();
    for (name, value) in claims {
        bytes.push(SEPARATOR);
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(SEPARATOR);
        bytes.extend_from_slice(value.as_bytes());
    }
    bytes
}

/// Parses `source` and renders it with `claims`.
pub fn check_template(source: &str, claims: &BTreeMap<String, String>) {
    let Ok(template) = Template::parse(source) else {
        return;
    };
    assert_eq!(template.source(), source);
    assert_eq!(Template::parse(template.source()).as_ref(), Ok(&template));
    let json = serde_json::to_string(&template).expect("a template serializes");
    assert_eq!(
        serde_json::from_str::<Template>(&json).expect("and reads back"),
        template
    );
    for part in template.parts() {
        if let TemplatePart::Literal(text) = part {
            assert!(
                text.bytes()
                    .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
                "literal {text:?} cannot go in a header"
            );
        }
    }

    let lookup = |name: &ClaimName| claims.get(name.as_str()).map(String::as_str);
    let mut expected = String::new();
    let mut missing = None;
    for part in template.parts() {
        match part {
            TemplatePart::Literal(text) => expected.push_str(text),
            TemplatePart::Claim(name) => match lookup(name) {
                Some(value) => expected.push_str(value),
                None => {
                    missing.get_or_insert_with(|| name.to_string());
                }
            },
        }
    }
    match template.render(lookup) {
        Ok(rendered) => {
            assert!(missing.is_none(), "rendered without claim {missing:?}");
            assert_eq!(rendered, expected);
            assert!(
                !rendered.contains(['\r', '\n', '\0']),
                "rendered value {rendered:?} breaks the header"
            );
            assert!(
                http::HeaderValue::from_str(&rendered).is_ok(),
                "rendered value {rendered:?} is not a header value"
            );
        }
        Err(RenderError::MissingClaim(name)) => {
            assert_eq!(Some(name), missing, "the first missing claim is named");
        }
        Err(RenderError::UnsafeValue) => {
            assert!(missing.is_none());
            assert!(
                expected
                    .bytes()
                    .any(|b| b != b'\t' && !(0x20..0x7f).contains(&b)),
                "refused a safe value {expected:?}"
            );
        }
    }
}

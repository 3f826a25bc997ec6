//! `header_firewall`: header glob matching (`portcullis_shared::glob`,
//! `names::HeaderPattern`) and the node's header firewalls
//! (`portcullis_data_plane::proxy::firewall`) on arbitrary header maps and patterns.
//!
//! What must hold for the inbound firewall, by rules written here independently of it:
//! the caller's `Authorization`, `Cookie` and `Proxy-Authorization` never pass; neither do
//! hop-by-hop headers (fixed ones and those `Connection` names), `Host`, `Content-Length`,
//! `Expect`, nor anything a restricted pattern matches; every other header passes with all
//! its values in order. The glob matcher agrees with a plain recursive matcher.

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_data_plane::proxy::firewall::{filter_inbound, filter_response};
use portcullis_shared::glob::matches_ignore_ascii_case;
use portcullis_shared::names::HeaderPattern;

/// Never forwarded upstream, whatever the configuration.
pub const ALWAYS_DROPPED: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "host",
    "content-length",
    "expect",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The input is text, one item per line: `!pattern` is a restricted pattern, `name: value`
/// a header (names and values the `http` crate refuses are left out: a request carrying
/// them never reaches the firewall). Every pattern line, valid or not, is also matched
/// against every header name line by the glob matcher.
pub fn fuzz(data: &[u8]) {
    let (headers, pattern_texts, name_texts) = parse_input(data);
    for pattern in pattern_texts.iter().filter(|text| text.len() <= 128) {
        for name in name_texts.iter().filter(|text| text.len() <= 256) {
            check_glob(pattern, name);
        }
    }
    let patterns: Vec<HeaderPattern> = pattern_texts
        .iter()
        .filter_map(|text| HeaderPattern::parse(text).ok())
        .collect();
    check_inbound(&headers, &patterns);
    check_response(&headers);
}

/// At most this many lines are read, so an input cannot make the glob checks quadratic in
/// its size.
const MAX_LINES: usize = 64;

/// Reads the line format of [`fuzz`]: the header map, the pattern texts and the header
/// name texts.
pub fn parse_input(data: &[u8]) -> (HeaderMap, Vec<String>, Vec<String>) {
    let mut headers = HeaderMap::new();
    let mut patterns = Vec::new();
    let mut names = Vec::new();
    for line in data.split(|byte| *byte == b'\n').take(MAX_LINES) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(pattern) = line.strip_prefix(b"!") {
            patterns.push(String::from_utf8_lossy(pattern).into_owned());
            continue;
        }
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.trim_ascii_start();
        names.push(String::from_utf8_lossy(name).into_owned());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    (headers, patterns, names)
}

/// The line format of [`fuzz`] for these headers and patterns.
pub fn encode(headers: &[(String, Vec<u8>)], patterns: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for pattern in patterns {
        bytes.push(b'!');
        bytes.extend_from_slice(pattern.as_bytes());
        bytes.push(b'\n');
    }
    for (name, value) in headers {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.push(b'\n');
    }
    bytes
}

/// A glob matcher written the obvious way (memoised recursion over bytes), to compare with.
pub fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
    let mut memo = vec![None; (pattern.len() + 1) * (name.len() + 1)];
    fn matches(
        pattern: &[u8],
        name: &[u8],
        p: usize,
        n: usize,
        memo: &mut Vec<Option<bool>>,
    ) -> bool {
        let slot = p * (name.len() + 1) + n;
        if let Some(known) = memo[slot] {
            return known;
        }
        let result = match pattern.get(p) {
            None => n == name.len(),
            Some(b'*') => {
                matches(pattern, name, p + 1, n, memo)
                    || (n < name.len() && matches(pattern, name, p, n + 1, memo))
            }
            Some(b'?') => n < name.len() && matches(pattern, name, p + 1, n + 1, memo),
            Some(byte) => {
                n < name.len()
                    && byte.eq_ignore_ascii_case(&name[n])
                    && matches(pattern, name, p + 1, n + 1, memo)
            }
        };
        memo[slot] = Some(result);
        result
    }
    matches(pattern, name, 0, 0, &mut memo)
}

pub fn check_glob(pattern: &str, name: &str) {
    let matched = matches_ignore_ascii_case(pattern, name);
    assert_eq!(
        matched,
        reference_glob(pattern.as_bytes(), name.as_bytes()),
        "pattern {pattern:?} against {name:?}"
    );
    assert_eq!(
        matched,
        matches_ignore_ascii_case(pattern, &name.to_ascii_uppercase()),
        "case matters for {pattern:?} against {name:?}"
    );
    if let Ok(parsed) = HeaderPattern::parse(pattern) {
        assert_eq!(parsed.matches(name), matched, "HeaderPattern {pattern:?}");
        assert_eq!(parsed.as_str(), pattern.to_ascii_lowercase());
    }
}

/// The header names the `Connection` headers list (the tokens of values that are text).
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

pub fn check_inbound(headers: &HeaderMap, patterns: &[HeaderPattern]) {
    let forwarded = filter_inbound(headers, patterns);
    let listed = connection_listed(headers);
    let expected_to_pass = |name: &HeaderName| {
        let name = name.as_str();
        !ALWAYS_DROPPED.contains(&name)
            && !listed.iter().any(|listed| listed == name)
            && !patterns
                .iter()
                .any(|pattern| reference_glob(pattern.as_str().as_bytes(), name.as_bytes()))
    };
    for name in forwarded.keys() {
        assert!(
            !matches!(
                name.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            ),
            "the caller's {name} went upstream"
        );
        assert!(expected_to_pass(name), "{name} went upstream");
    }
    for name in headers.keys() {
        let sent: Vec<_> = headers.get_all(name).iter().collect();
        let passed: Vec<_> = forwarded.get_all(name).iter().collect();
        if expected_to_pass(name) {
            assert_eq!(passed, sent, "{name} lost values on the way");
        } else {
            assert!(passed.is_empty(), "{name} went upstream");
        }
    }
}

/// The response firewall: no hop-by-hop headers, cookies, framing or proxy challenges
/// reach the caller, and `WWW-Authenticate` only when the caller's own credential went up.
pub fn check_response(headers: &HeaderMap) {
    for caller_credential_went_upstream in [false, true] {
        let returned = filter_response(headers, caller_credential_went_upstream);
        let listed = connection_listed(headers);
        for name in returned.keys() {
            let name = name.as_str();
            assert!(
                !matches!(
                    name,
                    "set-cookie"
                        | "content-length"
                        | "proxy-authenticate"
                        | "connection"
                        | "keep-alive"
                        | "proxy-connection"
                        | "te"
                        | "trailer"
                        | "transfer-encoding"
                        | "upgrade"
                ),
                "{name} reached the caller"
            );
            assert!(
                !listed.iter().any(|listed| listed == name),
                "{name} reached the caller"
            );
            if name == "www-authenticate" {
                assert!(
                    caller_credential_went_upstream,
                    "a foreign challenge reached the caller"
                );
            }
        }
    }
}

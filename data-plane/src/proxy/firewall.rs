//! Header firewalls. Inbound: which of the caller's headers may reach the upstream.
//! Outbound (responses): which of the upstream's headers may reach the caller.
//!
//! The inbound firewall runs after agent authentication (which reads the caller's
//! credentials) and before app authentication (which writes the upstream's), so a caller's
//! credential can only travel upstream through an explicit app auth mode.

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName};
use portcullis_shared::names::HeaderPattern;

/// Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, not the
/// message, and must not be forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Headers named in `Connection` are hop-by-hop for this message too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// Why a header stops at the inbound firewall, or `None` when it passes. The reasons are
/// for debug logs; the header values are never logged.
pub fn inbound_verdict(
    name: &HeaderName,
    connection_listed: &[String],
    restricted: &[HeaderPattern],
) -> Option<&'static str> {
    if is_hop_by_hop(name)
        || connection_listed
            .iter()
            .any(|listed| listed == name.as_str())
    {
        Some("hop-by-hop")
    } else if name == AUTHORIZATION || name == COOKIE || name == PROXY_AUTHORIZATION {
        // Never forwarded generically; App Auth Passthrough re-adds Authorization on purpose.
        Some("caller credential")
    } else if name == HOST {
        // Upstreams such as rmcp check Host; the client sets it from the upstream URL.
        Some("set from the upstream URL")
    } else if name == CONTENT_LENGTH || name == EXPECT {
        // The body was buffered; the client frames it again.
        Some("framing")
    } else if restricted
        .iter()
        .any(|pattern| pattern.matches(name.as_str()))
    {
        Some("restricted by the server's configuration")
    } else {
        None
    }
}

/// The caller's headers that may go upstream. `Mcp-Session-Id`, `MCP-Protocol-Version`,
/// `Last-Event-ID`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`, `Accept` and `Content-Type`
/// pass untouched unless an admin restricted them.
pub fn filter_inbound(inbound: &HeaderMap, restricted: &[HeaderPattern]) -> HeaderMap {
    let listed = connection_listed(inbound);
    let mut outbound = HeaderMap::with_capacity(inbound.len());
    for (name, value) in inbound {
        match inbound_verdict(name, &listed, restricted) {
            None => {
                outbound.append(name.clone(), value.clone());
            }
            Some(reason) => tracing::trace!(header = %name, reason, "inbound header dropped"),
        }
    }
    outbound
}

/// The upstream's response headers that may reach the caller.
///
/// Besides hop-by-hop headers this drops `Content-Length` (the body is re-framed while it
/// streams), `Set-Cookie` (cookies never travel upstream, so an upstream session cookie
/// could only leak), and `WWW-Authenticate` unless the caller's own credential went
/// upstream: a challenge about the gateway's credential would send MCP clients into an
/// OAuth flow against the upstream's authorization server.
pub fn filter_response(upstream: &HeaderMap, caller_credential_went_upstream: bool) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut response = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        let dropped = is_hop_by_hop(name)
            || listed.iter().any(|listed| listed == name.as_str())
            || name == CONTENT_LENGTH
            || name == SET_COOKIE
            || name == PROXY_AUTHENTICATE
            || (name == WWW_AUTHENTICATE && !caller_credential_went_upstream);
        if !dropped {
            response.append(name.clone(), value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        map.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn credentials_hop_by_hop_and_framing_headers_never_pass() {
        let inbound = headers(&[
            ("host", "gateway.example.com"),
            ("authorization", "Bearer caller"),
            ("cookie", "session=1"),
            ("proxy-authorization", "Basic eA=="),
            ("connection", "keep-alive, x-connection-scoped"),
            ("keep-alive", "timeout=5"),
            ("x-connection-scoped", "1"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-length", "12"),
            ("expect", "100-continue"),
        ]);
        let outbound = filter_inbound(&inbound, &[]);
        assert!(outbound.is_empty(), "left: {:?}", names(&outbound));
    }

    #[test]
    fn mcp_and_ordinary_headers_pass_untouched() {
        let inbound = headers(&[
            ("mcp-session-id", "abc"),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", "42"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "search"),
            ("mcp-param-region", "eu"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("user-agent", "client/1"),
            ("x-trace", "a"),
            ("x-trace", "b"),
        ]);
        let outbound = filter_inbound(&inbound, &[]);
        assert_eq!(outbound, inbound);
    }

    #[test]
    fn restricted_patterns_are_stripped() {
        let restricted = [
            HeaderPattern::parse("x-internal-*").unwrap(),
            HeaderPattern::parse("x-debug").unwrap(),
        ];
        let inbound = headers(&[
            ("x-internal-user", "root"),
            ("X-Internal-Role", "admin"),
            ("x-debug", "1"),
            ("x-debugger", "kept"),
            ("mcp-session-id", "abc"),
        ]);
        let outbound = filter_inbound(&inbound, &restricted);
        assert_eq!(names(&outbound), ["x-debugger", "mcp-session-id"]);
    }

    #[test]
    fn response_headers_lose_hop_by_hop_cookies_and_foreign_challenges() {
        let upstream = headers(&[
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "abc"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("content-length", "10"),
            ("set-cookie", "upstream-session=1"),
            (
                "www-authenticate",
                "Bearer resource_metadata=\"https://upstream/x\"",
            ),
        ]);
        assert_eq!(
            names(&filter_response(&upstream, false)),
            ["content-type", "mcp-session-id"]
        );
        assert_eq!(
            names(&filter_response(&upstream, true)),
            ["content-type", "mcp-session-id", "www-authenticate"]
        );
    }
}

//! DNS rebinding protection: the node checks `Host` and `Origin` itself, because it drops
//! the inbound `Host` before forwarding (the upstream gets its own host), which defeats the
//! upstream's check.
//!
//! A rebinding attack makes a browser send requests to the node under an attacker's host
//! name, so the Host must be one this node answers to. A page on another site sends its
//! own Origin, so an Origin, when present, must be one the server allows or the node's own.

use std::collections::HashSet;
use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{HOST, ORIGIN};
use http::request::Parts;
use url::Url;

use crate::compiled::CompiledServer;
use crate::proxy::error::ProxyError;

/// Host names this node answers to, and its own origin.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    allowed_hosts: HashSet<String>,
    own_origin: String,
}

/// Lowercase, without IPv6 brackets or a trailing dot, so spellings compare equal.
fn normalize_host(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl HostPolicy {
    /// The public URL's host, the listen address (unless it is a wildcard), and loopback.
    /// Ports are not compared: a reverse proxy may change them, and a rebinding attack is
    /// about the name, not the port.
    pub fn new(public_url: &Url, listen: SocketAddr) -> Self {
        let mut allowed_hosts: HashSet<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Some(host) = public_url.host_str() {
            allowed_hosts.insert(normalize_host(host));
        }
        if !listen.ip().is_unspecified() {
            allowed_hosts.insert(normalize_host(&listen.ip().to_string()));
        }
        Self {
            allowed_hosts,
            own_origin: public_url.origin().ascii_serialization(),
        }
    }

    /// Checks Host (or the HTTP/2 `:authority`) and Origin.
    pub fn check(&self, server: &CompiledServer, request: &Parts) -> Result<(), ProxyError> {
        self.check_host(request)?;
        self.check_origin(server, &request.headers)
    }

    fn check_host(&self, request: &Parts) -> Result<(), ProxyError> {
        let host = match request.uri.authority() {
            Some(authority) => authority.host().to_owned(),
            None => {
                let value = single_header(&request.headers, HOST).ok_or(ProxyError::MissingHost)?;
                let authority: http::uri::Authority = value
                    .parse()
                    .map_err(|_| ProxyError::HostNotAllowed(value.to_owned()))?;
                authority.host().to_owned()
            }
        };
        if self.allowed_hosts.contains(&normalize_host(&host)) {
            Ok(())
        } else {
            Err(ProxyError::HostNotAllowed(host))
        }
    }

    fn check_origin(&self, server: &CompiledServer, headers: &HeaderMap) -> Result<(), ProxyError> {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(value) = values.next() else {
            // Non-browser clients send no Origin; DNS rebinding needs a browser.
            return Ok(());
        };
        let text = value.to_str().unwrap_or_default();
        if values.next().is_some() {
            return Err(ProxyError::OriginNotAllowed(text.to_owned()));
        }
        // "null" (sandboxed frames, file://) does not parse and is refused.
        let origin = Url::parse(text)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .map(|url| url.origin().ascii_serialization())
            .ok_or_else(|| ProxyError::OriginNotAllowed(text.to_owned()))?;
        if origin == self.own_origin || server.allowed_origins.contains(&origin) {
            Ok(())
        } else {
            Err(ProxyError::OriginNotAllowed(origin))
        }
    }
}

/// The value of a header that must appear at most once, as text.
fn single_header(headers: &HeaderMap, name: http::HeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::tests::server_with_origins;

    fn parts(host: Option<&str>, origin: Option<&str>) -> Parts {
        let mut builder = http::Request::builder().method("POST").uri("/mcp/demo");
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        if let Some(origin) = origin {
            builder = builder.header(ORIGIN, origin);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn policy() -> HostPolicy {
        HostPolicy::new(
            &Url::parse("https://Gateway.Example.com:8443/").unwrap(),
            "10.0.0.5:7400".parse().unwrap(),
        )
    }

    #[test]
    fn hosts_the_node_serves_are_accepted() {
        let server = server_with_origins(&[]);
        for host in [
            "gateway.example.com",
            "GATEWAY.example.com:8443",
            "gateway.example.com.",
            "10.0.0.5:7400",
            "localhost:7400",
            "127.0.0.1",
            "[::1]:7400",
        ] {
            assert!(
                policy().check(&server, &parts(Some(host), None)).is_ok(),
                "{host} should be accepted"
            );
        }
    }

    #[test]
    fn foreign_missing_and_malformed_hosts_are_refused() {
        let server = server_with_origins(&[]);
        for host in [
            "attacker.example",
            "gateway.example.com.attacker.example",
            "a b",
        ] {
            assert!(matches!(
                policy().check(&server, &parts(Some(host), None)),
                Err(ProxyError::HostNotAllowed(_))
            ));
        }
        assert!(matches!(
            policy().check(&server, &parts(None, None)),
            Err(ProxyError::MissingHost)
        ));
    }

    #[test]
    fn the_http2_authority_is_checked_like_a_host_header() {
        let server = server_with_origins(&[]);
        let request = http::Request::builder()
            .uri("http://attacker.example/mcp/demo")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(policy().check(&server, &request).is_err());
    }

    #[test]
    fn a_wildcard_listen_address_is_not_a_host_name() {
        let policy = HostPolicy::new(
            &Url::parse("http://127.0.0.1:7400").unwrap(),
            "0.0.0.0:7400".parse().unwrap(),
        );
        let server = server_with_origins(&[]);
        assert!(
            policy
                .check(&server, &parts(Some("0.0.0.0:7400"), None))
                .is_err()
        );
    }

    #[test]
    fn origins_must_be_allowed_by_the_server_or_the_node_itself() {
        let server = server_with_origins(&["https://chat.example.com"]);
        let host = Some("gateway.example.com");
        for origin in [
            "https://chat.example.com",
            "https://CHAT.example.com:443",
            "https://gateway.example.com:8443",
        ] {
            assert!(
                policy().check(&server, &parts(host, Some(origin))).is_ok(),
                "{origin} should be accepted"
            );
        }
        for origin in [
            "https://evil.example",
            "http://chat.example.com",
            "https://gateway.example.com",
            "null",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(
                    policy().check(&server, &parts(host, Some(origin))),
                    Err(ProxyError::OriginNotAllowed(_))
                ),
                "{origin} should be refused"
            );
        }
    }

    #[test]
    fn two_origin_headers_are_refused() {
        let server = server_with_origins(&["https://chat.example.com"]);
        let mut request = parts(Some("localhost"), Some("https://chat.example.com"));
        request
            .headers
            .append(ORIGIN, "https://evil.example".parse().unwrap());
        assert!(policy().check(&server, &request).is_err());
    }
}

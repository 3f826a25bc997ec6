//! Validated names: each type can only hold a value that passed its check, so code past
//! the conversion boundary never re-validates.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use url::Url;

/// Why a name or value was refused. Messages are lowercase and name the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must be a slug: lowercase letters, digits and '-', starting with a letter or digit")]
    NotSlug,
    #[error("not an HTTP header name (RFC 9110 token)")]
    NotHeaderToken,
    #[error("header {0:?} is managed by the gateway and cannot be configured")]
    ReservedHeader(String),
    #[error("not a header pattern: use header-name characters and the wildcards '*' and '?'")]
    NotHeaderPattern,
    #[error("contains a control character (CR, LF, NUL or another byte below 0x20)")]
    ControlCharacter,
    #[error("contains a byte that is not visible ASCII")]
    NotVisibleAscii,
    #[error("not a valid OAuth scope token")]
    NotScope,
    #[error("not a valid claim name")]
    NotClaim,
}

fn is_slug(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn check_length(value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        Err(NameError::Empty)
    } else if value.len() > max {
        Err(NameError::TooLong { max })
    } else {
        Ok(())
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::parse(&value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::parse(value)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// The name of an MCP server: a URL-safe slug of at most 63 characters, served at
    /// `/mcp/{name}`.
    ServerName
);

impl ServerName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 63)?;
        if !is_slug(value) {
            return Err(NameError::NotSlug);
        }
        Ok(Self(value.to_owned()))
    }
}

string_newtype!(
    /// The id of a catalog entry (identity provider, OAuth app, stored credential): a slug.
    CatalogId
);

impl CatalogId {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 63)?;
        if !is_slug(value) {
            return Err(NameError::NotSlug);
        }
        Ok(Self(value.to_owned()))
    }
}

string_newtype!(
    /// A user id as an identity provider gives it (the `sub` claim or a configured one).
    /// Free-form, because providers differ (`00u1ab`, `auth0|42`, an email), but bounded and
    /// free of control characters.
    UserId
);

impl UserId {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 256)?;
        if value.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        Ok(Self(value.to_owned()))
    }
}

/// RFC 9110 `tchar`.
pub fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Headers that the gateway manages itself: configuring them as outbound headers would
/// break the request or the transport.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

string_newtype!(
    /// An HTTP header name, lowercased. Not one the gateway manages itself.
    HeaderName
);

impl HeaderName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 128)?;
        if !value.bytes().all(is_token_byte) {
            return Err(NameError::NotHeaderToken);
        }
        let lower = value.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(NameError::ReservedHeader(lower));
        }
        Ok(Self(lower))
    }
}

string_newtype!(
    /// A glob over header names (`x-internal-*`), lowercased.
    HeaderPattern
);

impl HeaderPattern {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 128)?;
        if !value
            .bytes()
            .all(|b| is_token_byte(b) || b == b'*' || b == b'?')
        {
            return Err(NameError::NotHeaderPattern);
        }
        Ok(Self(value.to_ascii_lowercase()))
    }

    pub fn matches(&self, header_name: &str) -> bool {
        crate::glob::matches_ignore_ascii_case(&self.0, header_name)
    }
}

string_newtype!(
    /// An OAuth scope token (RFC 6749 section 3.3).
    Scope
);

impl Scope {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 256)?;
        if !value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(NameError::NotScope);
        }
        Ok(Self(value.to_owned()))
    }
}

string_newtype!(
    /// The name of a token claim (`sub`, `email`, `groups`, `https://example.com/roles`).
    ClaimName
);

impl ClaimName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_length(value, 256)?;
        if !value.bytes().all(|b| b.is_ascii_graphic()) || value.contains("}}") {
            return Err(NameError::NotClaim);
        }
        Ok(Self(value.to_owned()))
    }
}

/// Checks that a string can be placed in an HTTP header value: visible ASCII, space and tab.
/// CR, LF and NUL would let a value smuggle extra headers.
pub fn check_header_value(value: &str) -> Result<(), NameError> {
    for byte in value.bytes() {
        if byte == b'\t' || (0x20..0x7f).contains(&byte) {
            continue;
        }
        return Err(if byte < 0x20 || byte == 0x7f {
            NameError::ControlCharacter
        } else {
            NameError::NotVisibleAscii
        });
    }
    Ok(())
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must not be empty")]
    Empty,
    #[error("not a valid URL: {0}")]
    Parse(String),
    #[error("scheme must be http or https")]
    Scheme,
    #[error("must use https (plain http is only allowed for loopback hosts)")]
    PlainHttp,
    #[error("must not carry a username or password")]
    UserInfo,
    #[error("must not carry a fragment")]
    Fragment,
}

/// How strict a URL check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPolicy {
    /// An upstream MCP server: http or https, since internal services often speak plain
    /// http inside a cluster.
    Upstream,
    /// An endpoint that receives or returns credentials (token, JWKS, issuer, authorize):
    /// https, except on loopback hosts.
    CredentialEndpoint,
}

pub fn parse_url(value: &str, policy: UrlPolicy) -> Result<Url, UrlError> {
    if value.is_empty() {
        return Err(UrlError::Empty);
    }
    let url = Url::parse(value).map_err(|error| UrlError::Parse(error.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            if policy == UrlPolicy::CredentialEndpoint && !is_loopback_host(&url) {
                return Err(UrlError::PlainHttp);
            }
        }
        _ => return Err(UrlError::Scheme),
    }
    let Some(host) = url.host_str() else {
        return Err(UrlError::Parse("missing host".to_owned()));
    };
    // The WHATWG parser accepts characters in a domain (such as '`', '{', '|') that an HTTP
    // request's authority cannot carry; a node could not send a request to such a host.
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    if authority.parse::<http::uri::Authority>().is_err() {
        return Err(UrlError::Parse(
            "the host cannot be used in an HTTP request".to_owned(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::UserInfo);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    Ok(url)
}

/// True for `localhost`, 127.0.0.0/8 and ::1.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `config_proto` fuzz target: the control plane accepted an upstream URL
    /// whose host a node cannot put in a request, and every node refused the snapshot.
    #[test]
    fn a_url_host_must_fit_an_http_authority() {
        for value in [
            "https://legacy.internal.ex`mple.com/mcp",
            "https://a{b}.example.com",
            "https://a|b.example.com:8443/x",
        ] {
            assert!(parse_url(value, UrlPolicy::Upstream).is_err(), "{value}");
        }
        for value in [
            "https://mcp.example.com:8443/mcp",
            "http://[::1]:8080/mcp",
            "https://xn--n3h.example/mcp",
        ] {
            assert!(parse_url(value, UrlPolicy::Upstream).is_ok(), "{value}");
        }
    }

    #[test]
    fn server_names_are_slugs() {
        assert!(ServerName::parse("gmail").is_ok());
        assert!(ServerName::parse("azure-search-2").is_ok());
        assert_eq!(ServerName::parse(""), Err(NameError::Empty));
        assert_eq!(ServerName::parse("Gmail"), Err(NameError::NotSlug));
        assert_eq!(ServerName::parse("-x"), Err(NameError::NotSlug));
        assert_eq!(ServerName::parse("a/b"), Err(NameError::NotSlug));
        assert_eq!(
            ServerName::parse(&"a".repeat(64)),
            Err(NameError::TooLong { max: 63 })
        );
    }

    #[test]
    fn header_names_are_tokens_and_not_reserved() {
        assert_eq!(
            HeaderName::parse("X-API-Key").unwrap().as_str(),
            "x-api-key"
        );
        assert_eq!(HeaderName::parse("x api"), Err(NameError::NotHeaderToken));
        assert_eq!(
            HeaderName::parse("x-a\r\nx-b"),
            Err(NameError::NotHeaderToken)
        );
        assert!(matches!(
            HeaderName::parse("Host"),
            Err(NameError::ReservedHeader(_))
        ));
    }

    #[test]
    fn header_values_refuse_control_bytes() {
        assert!(check_header_value("Bearer abc.def").is_ok());
        assert_eq!(
            check_header_value("a\r\nx-evil: 1"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(check_header_value("a\0"), Err(NameError::ControlCharacter));
        assert_eq!(check_header_value("café"), Err(NameError::NotVisibleAscii));
    }

    #[test]
    fn credential_endpoints_need_https_except_on_loopback() {
        let policy = UrlPolicy::CredentialEndpoint;
        assert!(parse_url("https://idp.example.com/token", policy).is_ok());
        assert!(parse_url("http://127.0.0.1:8080/token", policy).is_ok());
        assert!(parse_url("http://localhost/token", policy).is_ok());
        assert!(parse_url("http://[::1]:9/token", policy).is_ok());
        assert_eq!(
            parse_url("http://idp.example.com/token", policy),
            Err(UrlError::PlainHttp)
        );
        assert_eq!(
            parse_url("ftp://idp.example.com/", policy),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            parse_url("https://user:pw@idp.example.com/", policy),
            Err(UrlError::UserInfo)
        );
        assert!(parse_url("http://mcp.internal:8080/mcp", UrlPolicy::Upstream).is_ok());
        assert!(matches!(
            parse_url("not a url", UrlPolicy::Upstream),
            Err(UrlError::Parse(_))
        ));
    }

    #[test]
    fn scopes_follow_rfc_6749() {
        assert!(Scope::parse("repo").is_ok());
        assert!(Scope::parse("https://www.googleapis.com/auth/gmail.readonly").is_ok());
        assert_eq!(Scope::parse("a b"), Err(NameError::NotScope));
        assert_eq!(Scope::parse("a\"b"), Err(NameError::NotScope));
    }
}

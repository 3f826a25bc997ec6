//! The HTML the authorization server shows a user: the consent page and error pages.
//!
//! Every page is self-contained (no scripts, no external resources), never cached, and
//! refuses to be framed (`X-Frame-Options: DENY`, `frame-ancestors 'none'`), so another
//! site cannot overlay it and trick a click (clickjacking). Everything that comes from a
//! client or the configuration is HTML-escaped.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderValue, StatusCode};

use crate::oauth::http::no_store;

/// The content security policy of every page: inline styles only, nothing else loads or
/// runs, no framing, no `<base>` tricks. (No `form-action`: browsers apply it to the
/// redirect that follows the consent form, which goes to the identity provider.)
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.4rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem}\
dt{color:#666}dd{margin:0;word-break:break-all}.note{color:#666;font-size:.9rem}\
button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.6rem}";

/// A page: `body` is HTML the caller built and escaped.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    );
    let mut response = (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    no_store(response)
}

/// An error the user sees in the browser (never a redirect: the redirect URI is not
/// trusted, or the flow cannot continue).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Sign-in failed",
        &format!(
            "<h1>Sign-in failed</h1><p>{}</p><p class=\"note\">Start again from the application.</p>",
            escape(message)
        ),
    )
}

/// What the consent page shows and submits.
#[derive(Debug, Clone)]
pub struct Consent<'a> {
    pub client_name: &'a str,
    /// Whether the name is the client's own claim (dynamic registration) or backed by the
    /// https URL it is published at (metadata document).
    pub client_name_verified: bool,
    /// The client id if it is a URL, else a note that the client registered itself.
    pub client_identifier: &'a str,
    pub redirect_uri: &'a str,
    pub server: &'a str,
    pub resource: &'a str,
    pub scopes: &'a [String],
    pub identity_provider: &'a str,
    /// The gateway's consent endpoint (absolute URL).
    pub action: &'a str,
    /// The sealed consent request, posted back.
    pub consent_request: &'a str,
}

pub fn consent_page(consent: &Consent<'_>) -> Response {
    let unverified = if consent.client_name_verified {
        ""
    } else {
        " <span class=\"note\">(name given by the application itself, not verified)</span>"
    };
    let scopes = if consent.scopes.is_empty() {
        "(none)".to_owned()
    } else {
        escape(&consent.scopes.join(" "))
    };
    let body = format!(
        "<h1>Allow {name} to use {server}?</h1>\
         <p>{name}{unverified} asks to act as you on the MCP server <strong>{server}</strong>. \
         You will sign in with {idp} next.</p>\
         <dl><dt>Application</dt><dd>{name}</dd>\
         <dt>Client</dt><dd>{client}</dd>\
         <dt>Returns to</dt><dd>{redirect}</dd>\
         <dt>MCP server</dt><dd>{resource}</dd>\
         <dt>Scopes</dt><dd>{scopes}</dd></dl>\
         <p class=\"note\">Allow only if you started this from an application you trust and \
         the address it returns to is that application's.</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"consent_request\" value=\"{request}\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
         </form>",
        name = escape(consent.client_name),
        server = escape(consent.server),
        idp = escape(consent.identity_provider),
        client = escape(consent.client_identifier),
        redirect = escape(consent.redirect_uri),
        resource = escape(consent.resource),
        action = escape(consent.action),
        request = escape(consent.consent_request),
    );
    page(StatusCode::OK, "Allow access?", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn escaping_covers_markup_and_attributes() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[tokio::test]
    async fn the_consent_page_cannot_be_framed_and_escapes_client_input() {
        let scopes = vec!["mcp:tools".to_owned()];
        let response = consent_page(&Consent {
            client_name: "<img src=x onerror=alert(1)>",
            client_name_verified: false,
            client_identifier: "registered dynamically",
            redirect_uri: "http://127.0.0.1:1/cb?a=\"x\"",
            server: "crm",
            resource: "https://gw/mcp/crm",
            scopes: &scopes,
            identity_provider: "Corp SSO",
            action: "https://gw/oauth/authorize",
            consent_request: "pcq1.abc",
        });
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        assert!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;img src=x"));
        assert!(html.contains("name=\"decision\" value=\"approve\""));
        assert!(html.contains("name=\"consent_request\" value=\"pcq1.abc\""));
        assert!(html.contains("not verified"));
    }
}

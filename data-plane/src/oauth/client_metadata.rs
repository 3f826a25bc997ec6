//! Client ID Metadata Documents: a client whose `client_id` is an https URL with a path
//! publishes its metadata there, and the authorization server fetches it.
//!
//! Fetching a URL a stranger chose is a server-side request forgery risk, so:
//! - https only, a path other than `/`, no query, fragment, credentials or dot segments;
//! - the host must resolve only to public addresses (no loopback, private, link-local,
//!   CGNAT, multicast, documentation or reserved ranges; IPv4-mapped IPv6 counts as IPv4),
//!   checked by the resolver the client connects with, so a DNS answer cannot change between
//!   the check and the connection; IP literals are checked the same way;
//! - redirects are followed only within the same origin (at most [`MAX_REDIRECTS`]);
//! - a fetch is bounded by [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT_BYTES`], and at most
//!   [`MAX_CONCURRENT_FETCHES`] run at once;
//! - the document's `client_id` must equal the URL exactly.
//!
//! `--allow-loopback-client-metadata` lifts the address rule and allows plain http on
//! loopback hosts, for tests only.
//!
//! Documents are cached per URL for their `Cache-Control: max-age`, clamped to
//! [`MIN_CACHE`]..[`MAX_CACHE`] ([`DEFAULT_CACHE`] without one), at most
//! [`MAX_CACHED_DOCUMENTS`] of them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use url::Url;

use crate::jwt::remote::max_age;
use crate::oauth::clients::{Client, ClientAuthMethod, ClientSource, check_metadata};

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
pub const MAX_REDIRECTS: usize = 3;
pub const MAX_CONCURRENT_FETCHES: usize = 16;
pub const MAX_CACHED_DOCUMENTS: usize = 1024;
pub const MIN_CACHE: Duration = Duration::from_secs(60);
pub const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CACHE: Duration = Duration::from_secs(300);
/// A `client_id` URL longer than this is not fetched.
pub const MAX_URL_CHARS: usize = 2048;

/// True for addresses anyone on the internet could reach: the only ones a metadata document
/// is fetched from.
pub fn is_public_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_multicast()
        || address.is_broadcast()
        || address.is_documentation()
        || a == 0
        // Shared address space (CGNAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        // Unique local, fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (first & 0xffc0) == 0xfe80
        // Documentation, 2001:db8::/32.
        || (first == 0x2001 && address.segments()[1] == 0x0db8)
        // IPv4-compatible and other ::/96 forms, NAT64 64:ff9b::/96 (may reach private IPv4).
        || address.segments()[..6].iter().all(|segment| *segment == 0)
        || (first == 0x0064 && address.segments()[1] == 0xff9b))
}

/// A resolver that answers only with public addresses.
struct PublicAddressResolver;

impl Resolve for PublicAddressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| is_public_address(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addresses: Addrs = Box::new(public.into_iter());
            Ok(addresses)
        })
    }
}

struct CachedDocument {
    client: Client,
    expires_at: Instant,
}

/// Fetches and caches metadata documents.
pub struct ClientMetadataDocuments {
    http: reqwest::Client,
    allow_loopback: bool,
    fetches: Semaphore,
    cache: Mutex<HashMap<String, CachedDocument>>,
}

impl ClientMetadataDocuments {
    pub fn new(allow_loopback: bool) -> Result<Self, reqwest::Error> {
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let original = attempt.previous().first().cloned();
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if original.is_some_and(|original| original.origin() != attempt.url().origin()) {
                attempt.error("a redirect to another origin is not followed")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .redirect(redirects)
            .user_agent(concat!("portcullis-node/", env!("CARGO_PKG_VERSION")));
        if !allow_loopback {
            builder = builder.dns_resolver(Arc::new(PublicAddressResolver));
        }
        Ok(Self {
            http: builder.build()?,
            allow_loopback,
            fetches: Semaphore::new(MAX_CONCURRENT_FETCHES),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// True when `client_id` has the shape of a metadata document URL (whether or not the
    /// rest of the rules hold: those are checked, with a reason, by [`Self::client`]).
    pub fn is_document_url(&self, client_id: &str) -> bool {
        client_id.starts_with("https://")
            || (self.allow_loopback && client_id.starts_with("http://"))
    }

    /// Checks the URL rules of the module documentation.
    pub fn check_url(&self, client_id: &str) -> Result<Url, String> {
        if client_id.len() > MAX_URL_CHARS {
            return Err(format!(
                "the client_id URL is longer than {MAX_URL_CHARS} characters"
            ));
        }
        let url = Url::parse(client_id).map_err(|_| "the client_id is not a URL".to_owned())?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_loopback && portcullis_shared::names::is_loopback_host(&url) => {}
            _ => return Err("the client_id URL must use https".to_owned()),
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err("the client_id URL must have a path".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("the client_id URL must not have a query or fragment".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the client_id URL must not carry credentials".to_owned());
        }
        // The URL crate resolves dot segments; a client_id that had any differs from it.
        if url.as_str() != client_id {
            return Err("the client_id URL must be in normalised form (no dot segments, lowercase scheme and host)".to_owned());
        }
        if !self.allow_loopback {
            let literal = match url.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            };
            if literal.is_some_and(|address| !is_public_address(address))
                || url
                    .host_str()
                    .is_some_and(|host| host.eq_ignore_ascii_case("localhost"))
            {
                return Err("the client_id URL must name a public host".to_owned());
            }
        }
        Ok(url)
    }

    fn cached(&self, client_id: &str) -> Option<Client> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(client_id)
            .filter(|entry| Instant::now() < entry.expires_at)
            .map(|entry| entry.client.clone())
    }

    fn remember(&self, client: &Client, lifetime: Duration) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_DOCUMENTS && !cache.contains_key(&client.client_id) {
            let now = Instant::now();
            cache.retain(|_, entry| now < entry.expires_at);
            if cache.len() >= MAX_CACHED_DOCUMENTS {
                let victims: Vec<String> = cache
                    .keys()
                    .take(MAX_CACHED_DOCUMENTS / 8)
                    .cloned()
                    .collect();
                for victim in victims {
                    cache.remove(&victim);
                }
            }
        }
        cache.insert(
            client.client_id.clone(),
            CachedDocument {
                client: client.clone(),
                expires_at: Instant::now() + lifetime,
            },
        );
    }

    /// The client a metadata document URL names: from the cache, or fetched and checked.
    /// The error text is for the user's error page.
    pub async fn client(&self, client_id: &str) -> Result<Client, String> {
        let url = self.check_url(client_id)?;
        if let Some(client) = self.cached(client_id) {
            return Ok(client);
        }
        let (body, lifetime) = {
            let _permit = self
                .fetches
                .try_acquire()
                .map_err(|_| "too many client metadata fetches at once; try again".to_owned())?;
            self.fetch(&url).await.map_err(|error| {
                tracing::info!(client_id, %error, "client metadata document refused");
                error
            })?
        };
        let client = parse_document(client_id, &body)?;
        self.remember(&client, lifetime);
        Ok(client)
    }

    async fn fetch(&self, url: &Url) -> Result<(Vec<u8>, Duration), String> {
        let mut response = self
            .http
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| format!("could not be fetched ({})", without_url(&error)))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        let lifetime = max_age(response.headers())
            .unwrap_or(DEFAULT_CACHE)
            .clamp(MIN_CACHE, MAX_CACHE);
        let mut body = BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| format!("could not be read ({})", without_url(&error)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.to_vec(), lifetime))
    }
}

/// A reqwest error without the URL (the page already names it) and without internals.
fn without_url(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_redirect() {
        "redirected elsewhere"
    } else if error.is_connect() {
        "no connection to a public address"
    } else {
        "request failed"
    }
}

/// Checks a fetched document. Metadata documents are public clients: there is no shared
/// secret to authenticate them with.
pub fn parse_document(client_id: &str, body: &[u8]) -> Result<Client, String> {
    let document: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| "not a JSON object".to_owned())?;
    if document.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err("its client_id does not equal its URL".to_owned());
    }
    let checked =
        check_metadata(&document, ClientAuthMethod::None).map_err(|error| error.description)?;
    if checked.auth_method.is_confidential() {
        return Err(
            "a metadata document client cannot use a client secret (token_endpoint_auth_method must be none)"
                .to_owned(),
        );
    }
    Ok(Client {
        client_id: client_id.to_owned(),
        name: checked.name,
        client_uri: checked.client_uri,
        redirect_uris: checked.redirect_uris,
        auth_method: ClientAuthMethod::None,
        source: ClientSource::MetadataDocument,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "203.0.113.5",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(
                !is_public_address(private.parse().unwrap()),
                "{private} is not public"
            );
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn client_id_urls_must_be_https_with_a_path_on_a_public_host() {
        let documents = ClientMetadataDocuments::new(false).unwrap();
        assert!(
            documents
                .check_url("https://client.example.com/oauth/metadata.json")
                .is_ok()
        );
        for bad in [
            "http://client.example.com/metadata.json",
            "https://client.example.com/",
            "https://client.example.com",
            "https://client.example.com/m.json?x=1",
            "https://client.example.com/m.json#f",
            "https://user@client.example.com/m.json",
            "https://client.example.com/a/../m.json",
            "https://127.0.0.1/m.json",
            "https://[::1]/m.json",
            "https://10.0.0.1/m.json",
            "https://localhost/m.json",
        ] {
            assert!(documents.check_url(bad).is_err(), "{bad}");
        }
        let loopback = ClientMetadataDocuments::new(true).unwrap();
        assert!(loopback.check_url("http://127.0.0.1:9/m.json").is_ok());
        assert!(
            loopback
                .check_url("http://client.example.com/m.json")
                .is_err()
        );
    }

    #[test]
    fn documents_must_name_themselves_and_be_public_clients() {
        let id = "https://client.example.com/m.json";
        let good = json!({
            "client_id": id,
            "client_name": "Example",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
        });
        let client = parse_document(id, good.to_string().as_bytes()).unwrap();
        assert_eq!(client.name.as_deref(), Some("Example"));
        assert_eq!(client.source, ClientSource::MetadataDocument);
        assert_eq!(client.auth_method, ClientAuthMethod::None);

        let mut other_id = good.clone();
        other_id["client_id"] = json!("https://evil.example.com/m.json");
        assert!(parse_document(id, other_id.to_string().as_bytes()).is_err());
        let mut secret = good.clone();
        secret["token_endpoint_auth_method"] = json!("client_secret_basic");
        assert!(parse_document(id, secret.to_string().as_bytes()).is_err());
        let mut no_redirects = good.clone();
        no_redirects["redirect_uris"] = json!([]);
        assert!(parse_document(id, no_redirects.to_string().as_bytes()).is_err());
        assert!(parse_document(id, b"not json").is_err());
    }

    #[tokio::test]
    async fn a_private_host_is_never_fetched() {
        let documents = ClientMetadataDocuments::new(false).unwrap();
        let error = documents
            .client("https://127.0.0.1:1/metadata.json")
            .await
            .unwrap_err();
        assert!(error.contains("public host"), "{error}");
    }
}

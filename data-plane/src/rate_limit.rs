//! Per-client rate limits of the authorization server and account-linking endpoints.
//!
//! Three budgets, each a GCRA (the token bucket's arithmetic with one number per client:
//! the theoretical arrival time), keyed by client address:
//!
//! | budget | routes | over budget |
//! |---|---|---|
//! | `register` (strictest) | `/oauth/register` | 429, OAuth JSON error |
//! | `token` | `/oauth/token`, `/oauth/revoke` | 429, OAuth JSON error |
//! | `browser` | `/oauth/authorize`, `/oauth/callback`, `/connect/...`, `/me/...` | 429, a page (`/me/...`: JSON) |
//!
//! Every 429 carries `Retry-After`. The OAuth error code is `temporarily_unavailable`:
//! RFC 6749 section 4.1.2.1 defines it for "temporary overloading" (and the gateway already
//! answers it while it starts), whereas `slow_down` (RFC 8628 section 3.5) tells a
//! device-flow client to poll more slowly and means nothing to an authorization-code,
//! refresh or registration client. RFC 7591 defines no code for this; the same one is used
//! so every JSON endpoint of the authorization server refuses alike.
//!
//! The client address is the socket's peer. Only when the peer is a configured trusted
//! proxy is `X-Forwarded-For` read, right to left, skipping trusted hops: the first
//! address that is not a trusted proxy is the client. IPv6 clients are keyed by their /64,
//! since one host usually holds the whole prefix.
//!
//! Memory is bounded: each budget tracks at most `max_tracked_clients` addresses. A full
//! table first forgets clients whose budget refilled completely (forgetting them changes
//! nothing), then the eighth whose budget is closest to full. An attacker cycling
//! addresses therefore costs a bounded table and amortised constant work per request; what
//! it can achieve is to make the node forget partly spent budgets of other addresses.
//!
//! Time comes in as an argument ([`Limiter::check`]), so tests drive it by hand.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::oauth::http::OAuthError;
use crate::proxy::NodeState;

/// The budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    Register,
    Token,
    Browser,
}

impl Budget {
    pub const ALL: [Budget; 3] = [Budget::Register, Budget::Token, Budget::Browser];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Token => "token",
            Self::Browser => "browser",
        }
    }
}

/// `count` requests per `per` on average, and up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Rate {
    pub const fn new(count: u32, per: Duration, burst: u32) -> Self {
        Self { count, per, burst }
    }

    /// `<count>/<s|m|h>[,burst=<n>]` (burst defaults to `count`), or `off`.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let usage = || format!("{text:?}: expected <count>/<s|m|h>[,burst=<n>] or off");
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (text, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(usage)?;
        let count: u32 = count.trim().parse().map_err(|_| usage())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(usage()),
        };
        let burst = match burst {
            None => count,
            Some(burst) => burst
                .strip_prefix("burst=")
                .and_then(|n| n.trim().parse::<u32>().ok())
                .ok_or_else(usage)?,
        };
        if count == 0 || burst == 0 {
            return Err(format!(
                "{text:?}: count and burst must be at least 1 (or say off)"
            ));
        }
        Ok(Some(Self { count, per, burst }))
    }

    /// Time for one request's worth of budget to come back (at least 1 ns).
    fn interval_nanos(&self) -> u64 {
        (self.per.as_nanos() / u128::from(self.count)).clamp(1, u128::from(u64::MAX)) as u64
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit},burst={}", self.count, self.burst)
    }
}

pub const DEFAULT_REGISTER_RATE: Rate = Rate::new(60, Duration::from_secs(3600), 20);
pub const DEFAULT_TOKEN_RATE: Rate = Rate::new(600, Duration::from_secs(60), 120);
pub const DEFAULT_BROWSER_RATE: Rate = Rate::new(120, Duration::from_secs(60), 60);
pub const DEFAULT_MAX_TRACKED_CLIENTS: usize = 65_536;

/// The node's rate-limit settings (flags `--rate-limit*`, `--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// `false`: no limits at all (load tests).
    pub enabled: bool,
    /// `None`: that budget is unlimited.
    pub register: Option<Rate>,
    pub token: Option<Rate>,
    pub browser: Option<Rate>,
    /// Per budget.
    pub max_tracked_clients: usize,
    pub trusted_proxies: TrustedProxies,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            register: Some(DEFAULT_REGISTER_RATE),
            token: Some(DEFAULT_TOKEN_RATE),
            browser: Some(DEFAULT_BROWSER_RATE),
            max_tracked_clients: DEFAULT_MAX_TRACKED_CLIENTS,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `192.0.2.7`, `fd00::/8`, `::1`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let address = canonical(address);
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed. Empty by default: forwarded headers
/// are ignored and the socket's peer is the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    /// A comma-separated list of addresses and networks; every bad entry is reported.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        let mut problems = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                problems.push("empty entry".to_owned());
                continue;
            }
            match Network::parse(entry) {
                Ok(network) => networks.push(network),
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(Self(networks))
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(address))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// rightmost `X-Forwarded-For` entry that is not a trusted proxy (the leftmost if all
    /// are). An entry that does not parse ends the walk at the hop that added it.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for entry in entries.iter().rev() {
            let Some(address) = parse_forwarded_address(entry) else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses as IPv4, so a dual-stack socket keys them alike.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What a client is counted as: its IPv4 address, or its IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(address: IpAddr) -> Self {
        match canonical(address) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Self(v4),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// The answer of a limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited {
        /// When one request's worth of budget is back.
        retry_after: Duration,
        /// The first refusal since this client was last allowed (for logging once).
        first: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Theoretical arrival time, in nanoseconds on the caller's clock.
    tat: u64,
    refused: bool,
}

/// One budget: a GCRA per client key in a bounded, sharded table.
#[derive(Debug)]
pub struct Limiter {
    interval: u64,
    /// `interval * burst`: how far ahead of now the arrival time may run.
    tolerance: u64,
    shards: Box<[Mutex<HashMap<ClientKey, Entry>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl Limiter {
    pub fn new(rate: Rate, max_tracked_clients: usize) -> Self {
        let max = max_tracked_clients.max(1);
        let shard_count = (max / 1024).clamp(1, 16);
        let interval = rate.interval_nanos();
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst)),
            shards: (0..shard_count)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard: max / shard_count,
            hasher: RandomState::new(),
        }
    }

    /// Takes one request from `key`'s budget at time `now` (any monotonic clock, as a
    /// duration since its origin), or says how long until there is one.
    pub fn check(&self, key: ClientKey, now: Duration) -> Decision {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let shard = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        let mut table = self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !table.contains_key(&key) && table.len() >= self.per_shard {
            evict(&mut table, now, self.per_shard);
        }
        let entry = table.entry(key).or_insert(Entry {
            tat: now,
            refused: false,
        });
        let next = entry.tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance {
            let first = !entry.refused;
            entry.refused = true;
            Decision::Limited {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
                first,
            }
        } else {
            entry.tat = next;
            entry.refused = false;
            Decision::Allowed
        }
    }

    /// How many client keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |table| table.len()))
            .sum()
    }
}

/// Makes room in a full table: clients whose budget is full again go first (nothing is
/// lost); if that frees nothing, the eighth closest to a full budget goes, so a stream of
/// new keys pays for one scan per `capacity / 8` insertions.
fn evict(table: &mut HashMap<ClientKey, Entry>, now: u64, capacity: usize) {
    table.retain(|_, entry| entry.tat > now);
    if table.len() < capacity {
        return;
    }
    let count = (capacity / 8).max(1);
    let mut arrival_times: Vec<u64> = table.values().map(|entry| entry.tat).collect();
    let (_, threshold, _) = arrival_times.select_nth_unstable(count - 1);
    let threshold = *threshold;
    let mut removed = 0;
    table.retain(|_, entry| {
        if removed < count && entry.tat <= threshold {
            removed += 1;
            false
        } else {
            true
        }
    });
}

/// The node's budgets and how clients are identified.
#[derive(Debug)]
pub struct RateLimits {
    register: Option<Limiter>,
    token: Option<Limiter>,
    browser: Option<Limiter>,
    trusted_proxies: TrustedProxies,
    origin: Instant,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new(&RateLimitSettings::default())
    }
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let limiter = |rate: Option<Rate>| {
            rate.filter(|_| settings.enabled)
                .map(|rate| Limiter::new(rate, settings.max_tracked_clients))
        };
        Self {
            register: limiter(settings.register),
            token: limiter(settings.token),
            browser: limiter(settings.browser),
            trusted_proxies: settings.trusted_proxies.clone(),
            origin: Instant::now(),
        }
    }

    pub fn limiter(&self, budget: Budget) -> Option<&Limiter> {
        match budget {
            Budget::Register => self.register.as_ref(),
            Budget::Token => self.token.as_ref(),
            Budget::Browser => self.browser.as_ref(),
        }
    }

    /// The key of a request's client. Without a peer address (a router driven in process)
    /// every request counts as one unspecified client.
    pub fn client_key(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientKey {
        match peer {
            Some(peer) => ClientKey::of(self.trusted_proxies.client_address(peer, headers)),
            None => ClientKey::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        }
    }
}

/// How a route answers a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// An OAuth JSON error readable from any origin (the endpoint answers CORS).
    OAuthCors,
    /// An OAuth-style JSON error (`/me/...`).
    Json,
    /// An HTML page.
    Page,
}

/// The budget of a route and how it refuses; `None`: not limited. CORS preflights are not
/// counted (a browser client would pay twice per call).
fn classify(method: &Method, path: &str) -> Option<(Budget, Shape)> {
    if method == Method::OPTIONS {
        return None;
    }
    match path {
        "/oauth/register" => Some((Budget::Register, Shape::OAuthCors)),
        "/oauth/token" | "/oauth/revoke" => Some((Budget::Token, Shape::OAuthCors)),
        "/oauth/authorize" | "/oauth/callback" => Some((Budget::Browser, Shape::Page)),
        _ if path.starts_with("/connect/") => Some((Budget::Browser, Shape::Page)),
        _ if path == "/me" || path.starts_with("/me/") => Some((Budget::Browser, Shape::Json)),
        _ => None,
    }
}

fn refusal(shape: Shape, retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let description = format!("too many requests from this address; retry in {seconds} s");
    let mut response = match shape {
        Shape::OAuthCors | Shape::Json => OAuthError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            description,
        )
        .into_response(),
        Shape::Page => crate::oauth::pages::page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            &format!(
                "<h1>Too many requests</h1><p>{}</p>",
                crate::oauth::pages::escape(&format!(
                    "Too many sign-in requests came from your network. Try again in {seconds} seconds."
                ))
            ),
        ),
    };
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    if shape == Shape::OAuthCors {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}

/// The middleware in front of the node's routes.
pub async fn limit(State(node): State<Arc<NodeState>>, request: Request, next: Next) -> Response {
    let Some((budget, shape)) = classify(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let limits = &node.rate_limits;
    let Some(limiter) = limits.limiter(budget) else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let key = limits.client_key(peer, request.headers());
    match limiter.check(key, limits.origin.elapsed()) {
        Decision::Allowed => next.run(request).await,
        Decision::Limited { retry_after, first } => {
            node.metrics.rate_limited(budget.as_str());
            if first {
                tracing::warn!(
                    client = %key,
                    budget = budget.as_str(),
                    path = request.uri().path(),
                    retry_after_ms = retry_after.as_millis() as u64,
                    "rate limited: further refusals of this client are counted, not logged, until it is allowed again"
                );
            }
            refusal(shape, retry_after)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn key(text: &str) -> ClientKey {
        ClientKey::of(text.parse().unwrap())
    }

    fn allowed(limiter: &Limiter, client: ClientKey, now: Duration) -> bool {
        limiter.check(client, now) == Decision::Allowed
    }

    #[test]
    fn a_burst_is_allowed_then_one_request_per_interval() {
        // 1 per second, bursts of 3.
        let limiter = Limiter::new(Rate::new(60, Duration::from_secs(60), 3), 100);
        let client = key("192.0.2.1");
        let start = Duration::from_secs(1000);
        for _ in 0..3 {
            assert!(allowed(&limiter, client, start));
        }
        assert_eq!(
            limiter.check(client, start),
            Decision::Limited {
                retry_after: SECOND,
                first: true
            }
        );
        // Still refused just before the interval is over, and only logged once.
        assert_eq!(
            limiter.check(client, start + SECOND - Duration::from_millis(1)),
            Decision::Limited {
                retry_after: Duration::from_millis(1),
                first: false
            }
        );
        // One request's worth comes back per second, no more.
        assert!(allowed(&limiter, client, start + SECOND));
        assert!(!allowed(&limiter, client, start + SECOND));
        // A long pause refills the whole burst, never more than the burst.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(allowed(&limiter, client, later));
        }
        assert!(!allowed(&limiter, client, later));
    }

    #[test]
    fn refusals_do_not_consume_budget() {
        let limiter = Limiter::new(Rate::new(1, SECOND, 1), 100);
        let client = key("192.0.2.1");
        assert!(allowed(&limiter, client, Duration::ZERO));
        for _ in 0..100 {
            assert!(!allowed(&limiter, client, Duration::from_millis(500)));
        }
        assert!(allowed(&limiter, client, SECOND));
    }

    #[test]
    fn clients_have_budgets_of_their_own() {
        let limiter = Limiter::new(Rate::new(2, Duration::from_secs(3600), 2), 100);
        let now = Duration::from_secs(5);
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        assert!(allowed(&limiter, a, now));
        assert!(allowed(&limiter, a, now));
        assert!(!allowed(&limiter, a, now));
        assert!(allowed(&limiter, b, now));
        assert!(allowed(&limiter, b, now));
        assert!(!allowed(&limiter, b, now));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn the_table_never_tracks_more_than_its_bound() {
        let limiter = Limiter::new(Rate::new(1, Duration::from_secs(3600), 1), 64);
        let now = Duration::from_secs(10);
        for i in 0..10_000u32 {
            let client = ClientKey::of(IpAddr::V4(i.into()));
            // Each new address is allowed once: nothing it does costs more memory.
            assert!(allowed(&limiter, client, now));
            assert!(limiter.tracked() <= 64, "{} tracked", limiter.tracked());
        }
        // Big tables shard, and the bound holds across shards.
        let limiter = Limiter::new(Rate::new(1, Duration::from_secs(3600), 1), 4096);
        for i in 0..50_000u32 {
            limiter.check(ClientKey::of(IpAddr::V4(i.into())), now);
        }
        assert!(limiter.tracked() <= 4096, "{} tracked", limiter.tracked());
    }

    #[test]
    fn eviction_forgets_refilled_clients_before_spent_ones() {
        let limiter = Limiter::new(Rate::new(1, Duration::from_secs(60), 1), 8);
        // Seven clients seen long ago (their budgets are full again by 1000 s)...
        for i in 0..7u32 {
            assert!(allowed(
                &limiter,
                ClientKey::of(IpAddr::V4(i.into())),
                Duration::from_secs(10)
            ));
        }
        // ...and one spent at 1000 s, whose budget is back at 1060 s.
        let spent = key("198.51.100.1");
        assert!(allowed(&limiter, spent, Duration::from_secs(1000)));
        assert_eq!(limiter.tracked(), 8);
        // New clients take the places of the refilled ones; the spent client stays spent.
        for i in 100..107u32 {
            assert!(allowed(
                &limiter,
                ClientKey::of(IpAddr::V4(i.into())),
                Duration::from_secs(1001)
            ));
        }
        assert!(!allowed(&limiter, spent, Duration::from_secs(1002)));
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            Rate::parse("30/m,burst=5").unwrap(),
            Some(Rate::new(30, Duration::from_secs(60), 5))
        );
        assert_eq!(
            Rate::parse(" 10/s ").unwrap(),
            Some(Rate::new(10, SECOND, 10))
        );
        assert_eq!(Rate::parse("OFF").unwrap(), None);
        for bad in [
            "",
            "10",
            "10/d",
            "x/m",
            "0/m",
            "10/m,burst=0",
            "10/m,b=3",
            "-1/s",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DEFAULT_REGISTER_RATE.to_string(), "60/h,burst=20");
        assert_eq!(
            Rate::parse(&DEFAULT_TOKEN_RATE.to_string()).unwrap(),
            Some(DEFAULT_TOKEN_RATE)
        );
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let headers = forwarded(&["198.51.100.7"]);
        // Default: the header is ignored.
        assert_eq!(
            TrustedProxies::default().client_address(peer, &headers),
            peer
        );
        let trusted = TrustedProxies::parse("10.0.0.0/8, 203.0.113.9").unwrap();
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(trusted.client_address(peer, &headers), client);
        // An untrusted peer's header is ignored even if it names trusted hops.
        let stranger: IpAddr = "192.0.2.50".parse().unwrap();
        assert_eq!(trusted.client_address(stranger, &headers), stranger);
        // Right to left, skipping trusted hops; whatever the client prepended is ignored.
        let chain = forwarded(&["1.1.1.1, 198.51.100.7", "10.1.2.3:4711"]);
        assert_eq!(trusted.client_address(peer, &chain), client);
        // No header: the proxy itself.
        assert_eq!(trusted.client_address(peer, &HeaderMap::new()), peer);
        // Garbage stops the walk at the hop that added it.
        let garbage = forwarded(&["198.51.100.7, nonsense, 10.0.0.1"]);
        assert_eq!(
            trusted.client_address(peer, &garbage),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        // IPv6 networks and mapped peers.
        let v6 = TrustedProxies::parse("fd00::/8").unwrap();
        assert_eq!(
            v6.client_address(
                "fd00::1".parse().unwrap(),
                &forwarded(&["[2001:db8::5]:443"])
            ),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        let mapped = TrustedProxies::parse("10.0.0.1").unwrap();
        assert_eq!(
            mapped.client_address("::ffff:10.0.0.1".parse().unwrap(), &headers),
            client
        );
    }

    #[test]
    fn bad_trusted_proxy_entries_are_all_reported() {
        let error = TrustedProxies::parse("10.0.0.0/33, proxy.local,, ::1/129").unwrap_err();
        assert!(error.contains("10.0.0.0/33"), "{error}");
        assert!(error.contains("proxy.local"), "{error}");
        assert!(error.contains("empty entry"), "{error}");
        assert!(error.contains("::1/129"), "{error}");
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            !Network::parse("10.0.0.0/8")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
    }

    #[test]
    fn routes_map_to_budgets_and_shapes() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            classify(&post, "/oauth/register"),
            Some((Budget::Register, Shape::OAuthCors))
        );
        assert_eq!(classify(&Method::OPTIONS, "/oauth/register"), None);
        for path in ["/oauth/token", "/oauth/revoke"] {
            assert_eq!(
                classify(&post, path),
                Some((Budget::Token, Shape::OAuthCors))
            );
        }
        for path in [
            "/oauth/authorize",
            "/oauth/callback",
            "/connect/github",
            "/connect/callback",
        ] {
            assert_eq!(classify(&get, path), Some((Budget::Browser, Shape::Page)));
        }
        assert_eq!(
            classify(&Method::DELETE, "/me/links/github"),
            Some((Budget::Browser, Shape::Json))
        );
        for path in [
            "/mcp/crm",
            "/healthz",
            "/oauth/jwks",
            "/.well-known/openid-configuration",
        ] {
            assert_eq!(classify(&post, path), None, "{path}");
        }
    }

    #[test]
    fn disabled_limits_have_no_limiters() {
        let limits = RateLimits::new(&RateLimitSettings {
            enabled: false,
            ..RateLimitSettings::default()
        });
        assert!(
            Budget::ALL
                .iter()
                .all(|budget| limits.limiter(*budget).is_none())
        );
        let limits = RateLimits::new(&RateLimitSettings {
            token: None,
            ..RateLimitSettings::default()
        });
        assert!(limits.limiter(Budget::Token).is_none());
        assert!(limits.limiter(Budget::Register).is_some());
    }
}

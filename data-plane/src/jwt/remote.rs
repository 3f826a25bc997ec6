//! JWKS documents fetched from URLs: one cache per URL, shared by every server (and every
//! snapshot) that names it, kept current by one refresher task.
//!
//! - [`JwksRegistry`] hands out one [`RemoteJwks`] per URL. It holds them weakly: when no
//!   compiled snapshot uses a URL any more, its cache and refresher go away.
//! - The refresher fetches as soon as the URL is first used (when a snapshot naming it is
//!   compiled), then again after the response's `Cache-Control: max-age`, clamped to
//!   [`JwksPolicy::min_refresh`]..[`JwksPolicy::max_refresh`] ([`JwksPolicy::default_refresh`]
//!   without one). A failed fetch is retried with exponential backoff; the cached keys stay
//!   in use meanwhile, however old.
//! - A token with an unknown `kid` may force a refresh (the issuer may have rotated its
//!   keys): at most one per URL per [`JwksPolicy::forced_refresh_cooldown`]. Requests that
//!   miss while a fetch is running wait for that fetch instead of starting another.
//! - A request waits for a fetch at most [`JwksPolicy::request_wait`]; every fetch is bounded
//!   by [`JwksPolicy::fetch_timeout`] and [`JwksPolicy::max_document_bytes`]. A URL that was
//!   never fetched successfully refuses its tokens (401) and is logged at each failure.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CACHE_CONTROL;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{error, info, warn};
use url::Url;

use crate::jwt::keys::{KeySet, KeySetError};

/// How JWKS URLs are fetched and refreshed.
#[derive(Debug, Clone, Copy)]
pub struct JwksPolicy {
    /// A whole fetch (connect, headers, body) ends after this long.
    pub fetch_timeout: Duration,
    /// Larger documents are refused (real ones are a few kilobytes).
    pub max_document_bytes: usize,
    /// Refresh interval when the response has no `max-age`.
    pub default_refresh: Duration,
    /// Refresh at most this often, whatever `max-age` says (`no-cache` and `no-store` count
    /// as zero).
    pub min_refresh: Duration,
    /// Refresh at least this often, so removed (revoked) keys stop working in bounded time.
    pub max_refresh: Duration,
    /// The first retry after a failed fetch; each further failure doubles it.
    pub retry_initial: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
    /// At most one refresh forced by an unknown `kid` per URL in this interval.
    pub forced_refresh_cooldown: Duration,
    /// The longest a request waits for a fetch (the first one, or one forced by an unknown
    /// `kid`); then it is answered with what is cached.
    pub request_wait: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(5),
            max_document_bytes: 256 * 1024,
            default_refresh: Duration::from_secs(10 * 60),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(60 * 60),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            forced_refresh_cooldown: Duration::from_secs(30),
            request_wait: Duration::from_secs(2),
        }
    }
}

impl JwksPolicy {
    /// When to refresh after a successful fetch.
    pub fn refresh_interval(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.default_refresh)
            .clamp(self.min_refresh, self.max_refresh.max(self.min_refresh))
    }

    /// When to retry after `consecutive_failures` failed fetches (at least one).
    pub fn retry_delay(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(16);
        self.retry_initial
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
    }
}

/// The freshness a JWKS response declares: `max-age` seconds, or zero for `no-cache` and
/// `no-store`. `None` when it says nothing usable.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            if directive.eq_ignore_ascii_case("no-cache")
                || directive.eq_ignore_ascii_case("no-store")
            {
                return Some(Duration::ZERO);
            }
            if let Some((name, seconds)) = directive.split_once('=')
                && name.trim().eq_ignore_ascii_case("max-age")
                && let Ok(seconds) = seconds.trim().trim_matches('"').parse::<u64>()
            {
                max_age = Some(Duration::from_secs(seconds));
            }
        }
    }
    max_age
}

/// A fetched JWKS document.
#[derive(Debug, Clone)]
pub struct FetchedDocument {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    #[error("the server answered {0}")]
    Status(http::StatusCode),
    #[error("the document exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no complete answer within {0:?}")]
    TimedOut(Duration),
    #[error("the document is unusable")]
    Unusable(#[source] KeySetError),
}

pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<FetchedDocument, FetchError>> + Send + 'a>>;

/// Gets a JWKS document. The HTTP implementation is [`HttpJwksFetcher`]; tests substitute
/// their own to drive the refresher on a paused clock.
pub trait JwksFetcher: Send + Sync + 'static {
    fn fetch<'a>(&'a self, url: &'a Url) -> FetchFuture<'a>;
}

/// Redirects followed at most; each must stay on https.
const MAX_REDIRECTS: usize = 3;

/// Fetches over HTTP(S) with reqwest (rustls on aws-lc-rs, platform roots).
pub struct HttpJwksFetcher {
    client: reqwest::Client,
    max_document_bytes: usize,
}

impl HttpJwksFetcher {
    pub fn new(policy: &JwksPolicy) -> Result<Self, reqwest::Error> {
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() != "https" {
                // The configured URL passed validation (https, or http on loopback); a
                // redirect must not downgrade it.
                attempt.error("a redirect to a non-https URL is not followed")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(policy.fetch_timeout)
            .timeout(policy.fetch_timeout)
            .redirect(redirects)
            .user_agent(concat!("portcullis-node/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            max_document_bytes: policy.max_document_bytes,
        })
    }

    async fn get(&self, url: &Url) -> Result<FetchedDocument, FetchError> {
        let mut response = self
            .client
            .get(url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(FetchError::Request)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let limit = self.max_document_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(FetchError::TooLarge { limit });
        }
        let max_age = max_age(response.headers());
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::Request)? {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FetchedDocument {
            body: body.freeze(),
            max_age,
        })
    }
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch<'a>(&'a self, url: &'a Url) -> FetchFuture<'a> {
        Box::pin(self.get(url))
    }
}

/// Coordination between requests and the refresher.
#[derive(Debug)]
struct FetchControl {
    /// A fetch is running or has been asked for.
    in_flight: bool,
    /// When a request last forced a refresh.
    last_forced: Option<Instant>,
}

struct Shared {
    url: Url,
    keys: ArcSwapOption<KeySet>,
    control: Mutex<FetchControl>,
    /// Wakes the refresher for a forced refresh.
    refresh_requested: Notify,
    /// Counts finished fetch attempts, successful or not; requests wait on it.
    attempts: watch::Sender<u64>,
    fetches_started: AtomicU64,
}

impl Shared {
    fn control(&self) -> std::sync::MutexGuard<'_, FetchControl> {
        // Every critical section assigns plain fields: a poisoned lock is still consistent.
        self.control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Installs a fetched key set, unless it holds the same keys as the current one (then
    /// the current generation, and the verified tokens cached under it, stay).
    fn install(&self, parsed: crate::jwt::keys::ParsedKeySet) {
        let current = self.keys.load();
        if let Some(current) = current.as_ref()
            && current.same_keys(&parsed.keys)
        {
            return;
        }
        for skipped in &parsed.skipped {
            warn!(jwks_url = %self.url, key = %skipped, "JWKS key skipped");
        }
        info!(
            jwks_url = %self.url,
            keys = ?parsed.keys.key_ids(),
            first = current.is_none(),
            "JWKS loaded"
        );
        self.keys.store(Some(Arc::new(parsed.keys)));
    }
}

/// The cached keys of one JWKS URL. Dropping the last handle stops its refresher.
pub struct RemoteJwks {
    shared: Arc<Shared>,
    policy: JwksPolicy,
    _stop_refresher: DropGuard,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.shared.url.as_str())
            .field("keys", &self.current().map(|keys| keys.len()))
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    fn start(
        url: Url,
        fetcher: Arc<dyn JwksFetcher>,
        policy: JwksPolicy,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (attempts, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            url,
            keys: ArcSwapOption::empty(),
            // The refresher's first act is a fetch: requests arriving before it runs wait
            // for that fetch instead of forcing a second one.
            control: Mutex::new(FetchControl {
                in_flight: true,
                last_forced: None,
            }),
            refresh_requested: Notify::new(),
            attempts,
            fetches_started: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        runtime.spawn(refresher(shared.clone(), fetcher, policy, stop.clone()));
        Arc::new(Self {
            shared,
            policy,
            _stop_refresher: stop.drop_guard(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.shared.url
    }

    /// The cached keys, if any fetch ever succeeded. Never waits.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.shared.keys.load_full()
    }

    /// How many fetches were started for this URL (for tests and diagnostics).
    pub fn fetches_started(&self) -> u64 {
        self.shared.fetches_started.load(Ordering::Relaxed)
    }

    /// Keys for a request that found none cached: waits (bounded) for the running fetch, or
    /// forces one if the cooldown allows. `None` if there are still no keys.
    pub async fn first_keys(&self) -> Option<Arc<KeySet>> {
        self.refresh_and_wait(None).await
    }

    /// Keys for a request whose `kid` is not in key set `seen_generation`: a newer set if
    /// one arrived or could be fetched within the bounds, else the current one.
    pub async fn keys_after_unknown_kid(&self, seen_generation: u64) -> Option<Arc<KeySet>> {
        self.refresh_and_wait(Some(seen_generation)).await
    }

    async fn refresh_and_wait(&self, seen_generation: Option<u64>) -> Option<Arc<KeySet>> {
        // Subscribe before looking, so a fetch that ends from here on wakes us.
        let mut attempts = self.shared.attempts.subscribe();
        let newer = |keys: &Option<Arc<KeySet>>| match (keys, seen_generation) {
            (Some(keys), Some(seen)) => keys.generation() != seen,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let keys = self.current();
        if newer(&keys) {
            return keys;
        }
        let wait = {
            let mut control = self.shared.control();
            if control.in_flight {
                true
            } else if control
                .last_forced
                .is_some_and(|forced| forced.elapsed() < self.policy.forced_refresh_cooldown)
            {
                false
            } else {
                control.last_forced = Some(Instant::now());
                control.in_flight = true;
                self.shared.refresh_requested.notify_one();
                true
            }
        };
        if wait {
            // Err: no attempt finished within the bound; answer with what is cached.
            let _ = tokio::time::timeout(self.policy.request_wait, attempts.changed()).await;
        }
        self.current()
    }
}

/// Fetches, installs, sleeps until the next refresh (or a forced one), until stopped.
async fn refresher(
    shared: Arc<Shared>,
    fetcher: Arc<dyn JwksFetcher>,
    policy: JwksPolicy,
    stop: CancellationToken,
) {
    let mut consecutive_failures = 0_u32;
    loop {
        shared.control().in_flight = true;
        shared.fetches_started.fetch_add(1, Ordering::Relaxed);
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = tokio::time::timeout(policy.fetch_timeout, fetcher.fetch(&shared.url)) => fetched,
        };
        let result = fetched
            .unwrap_or(Err(FetchError::TimedOut(policy.fetch_timeout)))
            .and_then(|document| {
                KeySet::parse(&document.body)
                    .map(|parsed| (parsed, document.max_age))
                    .map_err(FetchError::Unusable)
            });
        let delay = match result {
            Ok((parsed, max_age)) => {
                if consecutive_failures > 0 {
                    info!(jwks_url = %shared.url, "JWKS fetched again after failures");
                }
                consecutive_failures = 0;
                shared.install(parsed);
                policy.refresh_interval(max_age)
            }
            Err(fetch_error) => {
                consecutive_failures = consecutive_failures.saturating_add(1);
                let retry = policy.retry_delay(consecutive_failures);
                let cause = ErrorChain(&fetch_error);
                let retry_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
                if shared.keys.load().is_some() {
                    warn!(jwks_url = %shared.url, error = %cause, consecutive_failures, retry_ms,
                        "JWKS fetch failed: the cached keys stay in use");
                } else {
                    error!(jwks_url = %shared.url, error = %cause, consecutive_failures, retry_ms,
                        "JWKS fetch failed and no keys were ever fetched: tokens for servers using this URL are refused");
                }
                retry
            }
        };
        shared.control().in_flight = false;
        shared.attempts.send_modify(|count| *count += 1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
            () = shared.refresh_requested.notified() => {}
        }
    }
}

/// An error with its sources, for one log field.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("JWKS URLs can only be used inside the node's async runtime")]
pub struct NoRuntime;

/// One [`RemoteJwks`] per URL, shared by every server and snapshot that names the URL.
pub struct JwksRegistry {
    fetcher: Arc<dyn JwksFetcher>,
    policy: JwksPolicy,
    entries: Mutex<HashMap<Url, Weak<RemoteJwks>>>,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl JwksRegistry {
    /// A registry that fetches over HTTP(S).
    pub fn new(policy: JwksPolicy) -> Result<Self, reqwest::Error> {
        Ok(Self::with_fetcher(
            policy,
            Arc::new(HttpJwksFetcher::new(&policy)?),
        ))
    }

    pub fn with_fetcher(policy: JwksPolicy, fetcher: Arc<dyn JwksFetcher>) -> Self {
        Self {
            fetcher,
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &JwksPolicy {
        &self.policy
    }

    /// The cache for `url`, started (with its first fetch) if no live snapshot uses it yet.
    /// Must run inside a Tokio runtime (a blocking-pool thread counts) when it starts one.
    pub fn get(&self, url: &Url) -> Result<Arc<RemoteJwks>, NoRuntime> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = entries.get(url).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        // Forget URLs no snapshot uses any more, so the map stays as small as the live
        // configuration.
        entries.retain(|_, remote| remote.strong_count() > 0);
        let remote = RemoteJwks::start(url.clone(), self.fetcher.clone(), self.policy, &runtime);
        entries.insert(url.clone(), Arc::downgrade(&remote));
        Ok(remote)
    }

    /// How many URLs are cached (live ones only).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|remote| remote.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::jwt::test_keys::{TestKey, jwks};

    /// A fetcher serving whatever the test sets, after a (virtual) latency, counting calls.
    pub(crate) struct ScriptedFetcher {
        pub document: Mutex<Result<(String, Option<Duration>), u16>>,
        pub latency: Duration,
        pub calls: AtomicU64,
        /// When set, fetches never answer.
        pub hang: std::sync::atomic::AtomicBool,
    }

    impl ScriptedFetcher {
        pub(crate) fn serving(document: serde_json::Value) -> Arc<Self> {
            Arc::new(Self {
                document: Mutex::new(Ok((document.to_string(), None))),
                latency: Duration::from_millis(100),
                calls: AtomicU64::new(0),
                hang: std::sync::atomic::AtomicBool::new(false),
            })
        }

        pub(crate) fn serve(&self, document: serde_json::Value, max_age: Option<Duration>) {
            *self.document.lock().unwrap() = Ok((document.to_string(), max_age));
        }

        pub(crate) fn fail_with(&self, status: u16) {
            *self.document.lock().unwrap() = Err(status);
        }

        pub(crate) fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl JwksFetcher for ScriptedFetcher {
        fn fetch<'a>(&'a self, _url: &'a Url) -> FetchFuture<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.latency).await;
                let document = self.document.lock().unwrap().clone();
                match document {
                    Ok((body, max_age)) => Ok(FetchedDocument {
                        body: Bytes::from(body),
                        max_age,
                    }),
                    Err(status) => Err(FetchError::Status(
                        http::StatusCode::from_u16(status).unwrap(),
                    )),
                }
            })
        }
    }

    pub(crate) fn url() -> Url {
        Url::parse("https://idp.example.com/jwks.json").unwrap()
    }

    /// Waits (virtual time) until `count` fetch attempts have finished.
    async fn attempts_reach(remote: &RemoteJwks, count: u64) {
        let mut attempts = remote.shared.attempts.subscribe();
        tokio::time::timeout(
            Duration::from_secs(24 * 3600),
            attempts.wait_for(|finished| *finished >= count),
        )
        .await
        .expect("the refresher stalled")
        .unwrap();
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let headers = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(CACHE_CONTROL, value.parse().unwrap());
            }
            headers
        };
        assert_eq!(
            max_age(&headers(&["public, max-age=300, must-revalidate"])),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age(&headers(&["Max-Age=\"60\""])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            max_age(&headers(&["max-age=300", "no-store"])),
            Some(Duration::ZERO)
        );
        assert_eq!(max_age(&headers(&["no-cache"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["max-age=soon"])), None);
        assert_eq!(max_age(&headers(&[])), None);
    }

    #[test]
    fn refresh_intervals_are_clamped_and_retries_back_off() {
        let policy = JwksPolicy::default();
        assert_eq!(policy.refresh_interval(None), policy.default_refresh);
        assert_eq!(
            policy.refresh_interval(Some(Duration::ZERO)),
            policy.min_refresh
        );
        assert_eq!(
            policy.refresh_interval(Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(
            policy.refresh_interval(Some(Duration::from_secs(86_400 * 7))),
            policy.max_refresh
        );
        let retries: Vec<u64> = (1..=9).map(|n| policy.retry_delay(n).as_secs()).collect();
        assert_eq!(retries, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_follow_max_age_and_failures_keep_the_cached_keys() {
        let first = TestKey::ed25519("first");
        let fetcher = ScriptedFetcher::serving(jwks(&[&first]));
        fetcher.serve(jwks(&[&first]), Some(Duration::from_secs(120)));
        let registry = JwksRegistry::with_fetcher(JwksPolicy::default(), fetcher.clone());
        let remote = registry.get(&url()).unwrap();
        let started = Instant::now();
        attempts_reach(&remote, 1).await;
        let generation = remote.current().unwrap().generation();
        // The next fetch comes after max-age (plus the fetch's own latency).
        fetcher.fail_with(503);
        attempts_reach(&remote, 2).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(120) + 2 * fetcher.latency
        );
        // The failure changed nothing; the retry comes after the first backoff step.
        assert_eq!(remote.current().unwrap().generation(), generation);
        let second = TestKey::ed25519("second");
        fetcher.serve(jwks(&[&second]), None);
        let failed_at = Instant::now();
        attempts_reach(&remote, 3).await;
        assert_eq!(
            failed_at.elapsed(),
            Duration::from_secs(1) + fetcher.latency
        );
        assert_eq!(remote.current().unwrap().key_ids(), ["second"]);
        assert_eq!(fetcher.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_document_again_keeps_the_generation() {
        let key = TestKey::ed25519("k");
        let fetcher = ScriptedFetcher::serving(jwks(&[&key]));
        let registry = JwksRegistry::with_fetcher(JwksPolicy::default(), fetcher.clone());
        let remote = registry.get(&url()).unwrap();
        attempts_reach(&remote, 1).await;
        let generation = remote.current().unwrap().generation();
        attempts_reach(&remote, 2).await;
        assert_eq!(remote.current().unwrap().generation(), generation);
    }

    #[tokio::test(start_paused = true)]
    async fn a_url_that_never_answers_gives_up_within_the_request_bound() {
        let fetcher = ScriptedFetcher::serving(serde_json::json!({}));
        fetcher.hang.store(true, Ordering::SeqCst);
        let policy = JwksPolicy::default();
        let registry = JwksRegistry::with_fetcher(policy, fetcher.clone());
        let remote = registry.get(&url()).unwrap();
        let started = Instant::now();
        assert!(remote.first_keys().await.is_none());
        assert_eq!(started.elapsed(), policy.request_wait);
        // The fetch itself times out, is retried, and the request path never waits longer
        // than the bound meanwhile.
        attempts_reach(&remote, 1).await;
        assert_eq!(started.elapsed(), policy.fetch_timeout);
        let asked = Instant::now();
        assert!(remote.first_keys().await.is_none());
        assert!(asked.elapsed() <= policy.request_wait);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_refreshes_are_coalesced_and_rate_limited() {
        let old = TestKey::ed25519("old");
        let fetcher = ScriptedFetcher::serving(jwks(&[&old]));
        let policy = JwksPolicy::default();
        let registry = JwksRegistry::with_fetcher(policy, fetcher.clone());
        let remote = registry.get(&url()).unwrap();
        let first = remote.first_keys().await.unwrap();
        assert_eq!(fetcher.calls(), 1);

        // Rotation: ten requests miss at once; one fetch serves them all.
        let new = TestKey::ed25519("new");
        fetcher.serve(jwks(&[&new]), None);
        let misses = (0..10).map(|_| remote.keys_after_unknown_kid(first.generation()));
        let results = futures::future::join_all(misses).await;
        for keys in results {
            assert_eq!(keys.unwrap().key_ids(), ["new"]);
        }
        assert_eq!(fetcher.calls(), 2);

        // Within the cooldown, further misses do not fetch and do not wait.
        let current = remote.current().unwrap();
        let asked = Instant::now();
        for _ in 0..5 {
            let keys = remote.keys_after_unknown_kid(current.generation()).await;
            assert_eq!(keys.unwrap().generation(), current.generation());
        }
        assert_eq!(asked.elapsed(), Duration::ZERO);
        assert_eq!(fetcher.calls(), 2);

        // After the cooldown, one more forced refresh is allowed.
        tokio::time::sleep(policy.forced_refresh_cooldown).await;
        remote.keys_after_unknown_kid(current.generation()).await;
        assert_eq!(fetcher.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn servers_share_one_cache_per_url_until_no_snapshot_uses_it() {
        let key = TestKey::ed25519("k");
        let fetcher = ScriptedFetcher::serving(jwks(&[&key]));
        let registry = JwksRegistry::with_fetcher(JwksPolicy::default(), fetcher.clone());
        let first = registry.get(&url()).unwrap();
        let second = registry.get(&url()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        first.first_keys().await.unwrap();
        assert_eq!(fetcher.calls(), 1);
        drop(first);
        drop(second);
        assert!(registry.is_empty());
        // A later snapshot naming the URL again starts afresh.
        let third = registry.get(&url()).unwrap();
        third.first_keys().await.unwrap();
        assert_eq!(fetcher.calls(), 2);
    }
}

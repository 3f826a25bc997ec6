//! Tokens the node obtains itself from OAuth token endpoints, and the cache that holds them.
//!
//! - [`endpoint`]: one token request (client authentication, bounded response, error codes
//!   without secrets).
//! - [`cache`]: a bounded cache of expiring values with single-flight fetching and refresh
//!   before expiry.
//! - [`client_credentials`]: service tokens (client credentials grant), one per
//!   configuration.
//! - [`exchange`]: RFC 8693 token exchange of a caller's token, cached per user and
//!   configuration.

pub mod cache;
pub mod client_credentials;
pub mod endpoint;
pub mod exchange;

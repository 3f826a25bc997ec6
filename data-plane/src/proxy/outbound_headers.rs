//! Additional outbound headers: extra headers added on top of app authentication (service
//! tokens, the caller's token, token exchange, vault credentials, caller identity, custom
//! values).
//!
//! Not implemented in this node version; a later change fills this step in. It sits after
//! app authentication because shared validation guarantees an outbound header never names
//! the header app authentication writes, and before the upstream call because some sources
//! need the caller's identity established by agent authentication. Until then, servers
//! configured with outbound headers are proxied without them (the snapshot compiler logs a
//! warning for each such server), so the upstream sees fewer credentials, never more.

use http::HeaderMap;

use crate::compiled::CompiledServer;
use crate::proxy::agent_auth::Caller;
use crate::proxy::error::ProxyError;

/// Adds the server's additional outbound headers. Currently adds nothing.
pub fn apply(
    _server: &CompiledServer,
    _caller: &Caller,
    _outbound: &mut HeaderMap,
) -> Result<(), ProxyError> {
    Ok(())
}

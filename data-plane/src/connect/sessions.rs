//! What each MCP session's client declared at `initialize`, as far as the prompt needs it:
//! whether it handles URL-mode elicitation (2025-11-25). The 2026-07-28 revision declares
//! capabilities on every request instead, so nothing is kept for it.
//!
//! A session is keyed by server and `Mcp-Session-Id` and bound to the user who initialized
//! it (MCP: session ids SHOULD be bound to the user): a lookup by another user finds
//! nothing. The store is this node's memory: a session initialized through another node of
//! the fleet is unknown here, and its prompts fall back to the tool result with the link,
//! which every client shows. Bounded: at most [`MAX_SESSIONS`], the oldest go first; a
//! session's DELETE forgets it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::oauth::runtime::VaultUser;

/// At most this many sessions are remembered per node.
pub const MAX_SESSIONS: usize = 20_000;
/// Session ids longer than this are not remembered (MCP session ids are short tokens).
pub const MAX_SESSION_ID_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Declared {
    user: VaultUser,
    url_elicitation: bool,
}

#[derive(Debug, Default)]
struct Sessions {
    entries: HashMap<(String, String), Declared>,
    /// Keys in the order they were remembered, for eviction.
    order: VecDeque<(String, String)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ClientSessions {
    sessions: Mutex<Sessions>,
    max_sessions: usize,
}

impl Default for ClientSessions {
    fn default() -> Self {
        Self::with_capacity(MAX_SESSIONS)
    }
}

impl ClientSessions {
    pub fn with_capacity(max_sessions: usize) -> Self {
        Self {
            sessions: Mutex::new(Sessions::default()),
            max_sessions: max_sessions.max(1),
        }
    }

    /// Remembers what `user`'s client declared when it initialized `session` on `server`.
    pub fn remember(&self, server: &str, session: &str, user: &VaultUser, url_elicitation: bool) {
        if session.is_empty() || session.len() > MAX_SESSION_ID_BYTES {
            return;
        }
        let key = (server.to_owned(), session.to_owned());
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let declared = Declared {
            user: user.clone(),
            url_elicitation,
        };
        if sessions.entries.insert(key.clone(), declared).is_none() {
            sessions.order.push_back(key);
        }
        while sessions.entries.len() > self.max_sessions {
            let Some(oldest) = sessions.order.pop_front() else {
                break;
            };
            sessions.entries.remove(&oldest);
        }
    }

    /// Whether `user`'s client declared URL elicitation for `session`; false for a session
    /// this node does not know or that belongs to someone else.
    pub fn url_elicitation(&self, server: &str, session: &str, user: &VaultUser) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions
            .entries
            .get(&(server.to_owned(), session.to_owned()))
            .is_some_and(|declared| declared.user == *user && declared.url_elicitation)
    }

    /// Forgets a session (its client ended it).
    pub fn forget(&self, server: &str, session: &str) {
        let key = (server.to_owned(), session.to_owned());
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if sessions.entries.remove(&key).is_some() {
            sessions.order.retain(|remembered| remembered != &key);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_bound_to_its_user_and_server() {
        let sessions = ClientSessions::default();
        let alice = VaultUser::new("corp", "alice");
        let bob = VaultUser::new("corp", "bob");
        sessions.remember("github", "s-1", &alice, true);
        assert!(sessions.url_elicitation("github", "s-1", &alice));
        assert!(!sessions.url_elicitation("github", "s-1", &bob));
        assert!(!sessions.url_elicitation("gitlab", "s-1", &alice));
        assert!(!sessions.url_elicitation("github", "s-2", &alice));
        sessions.remember("github", "s-3", &bob, false);
        assert!(!sessions.url_elicitation("github", "s-3", &bob));
        sessions.forget("github", "s-1");
        assert!(!sessions.url_elicitation("github", "s-1", &alice));
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn the_store_is_bounded_and_drops_the_oldest() {
        let sessions = ClientSessions::with_capacity(3);
        let alice = VaultUser::new("corp", "alice");
        for index in 0..5 {
            sessions.remember("s", &format!("id-{index}"), &alice, true);
        }
        assert_eq!(sessions.len(), 3);
        assert!(!sessions.url_elicitation("s", "id-1", &alice));
        assert!(sessions.url_elicitation("s", "id-4", &alice));
        sessions.remember("s", &"x".repeat(MAX_SESSION_ID_BYTES + 1), &alice, true);
        assert_eq!(sessions.len(), 3);
    }
}

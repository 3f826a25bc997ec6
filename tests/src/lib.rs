//! Helpers for end-to-end tests: start real processes on loopback ports.

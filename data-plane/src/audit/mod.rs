//! The node's audit pipeline: every request's record becomes an audit event, which is
//! spooled on local disk and delivered to the control plane.
//!
//! ```text
//! request ends ──record──▶ AuditRecordSink ──event (uuid v7)──▶ Spool (segments on disk)
//!                                                                    │ read in order
//!                                 control plane ◀──Deliver(batch)── Delivery task
//!                                       └──ack──▶ cursor moves, delivered segments deleted
//! ```
//!
//! - [`event`]: a `RequestRecord` as a `portcullis.v1.AuditEvent` (`mcp_request`, or
//!   `auth_failure` for a caller refused by agent authentication), bounded field by field.
//! - [`spool`]: the bounded on-disk queue (segment files, framing, checksums, the
//!   acknowledged cursor, fsync policies, the full policies).
//! - [`delivery`]: the task that streams batches to `AuditIngest.Deliver`, at least once.
//! - [`sink`]: the `RecordSink` that logs, counts and spools; the spool's metrics.
//!
//! Acknowledged to a client means: the client received the complete response. The event is
//! in the spool before that: a refusal's response is sent only once its event is; a
//! proxied response's last frame (or, for a chunked stream, its end) is held until its
//! event is. "In the spool" means written with `write(2)` (survives a crash of the node
//! process) and, under the default `--audit-fsync always`, synced with `fdatasync` (survives
//! a crash of the machine). A call whose client did not get a complete response (the client
//! went away, the upstream stream broke) is spooled too, without waiting.

pub mod delivery;
pub mod event;
pub mod sink;
pub mod spool;

pub use delivery::{Delivery, DeliveryOptions, DeliveryStatus};
pub use sink::{AuditCollector, AuditRecordSink};
pub use spool::{FsyncPolicy, FullPolicy, Spool, SpoolOptions};

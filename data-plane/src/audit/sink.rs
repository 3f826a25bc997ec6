//! The node's record sink: every request's record is logged, counted, and spooled as an
//! audit event.

use std::sync::Arc;

use prost::Message;

use crate::audit::event;
use crate::audit::spool::{FsyncPolicy, FullPolicy, Reservation, Spool, SpoolError};
use crate::metrics::NodeMetrics;
use crate::record::{
    Admission, Durability, RecordSink, RequestRecord, SinkUnavailable, TracingRecordSink,
};

/// Logs, counts and spools each record.
pub struct AuditRecordSink {
    spool: Spool,
    metrics: Arc<NodeMetrics>,
}

impl AuditRecordSink {
    pub fn new(spool: Spool, metrics: Arc<NodeMetrics>) -> Self {
        Self { spool, metrics }
    }

    fn refuse_policy(&self) -> bool {
        self.spool.options().when_full == FullPolicy::Refuse
    }
}

impl RecordSink for AuditRecordSink {
    fn record(&self, record: RequestRecord) {
        drop(self.record_admitted(record, Admission::none()));
    }

    /// Under the refuse policy, room for the request's event or a refusal; under the drop
    /// policy every request is admitted.
    fn admit(&self) -> Result<Admission, SinkUnavailable> {
        match self.spool.reserve() {
            Ok(reservation) => Ok(Admission(Some(reservation))),
            Err(SpoolError::Full) => {
                self.metrics
                    .audit_refused(SinkUnavailable::SpoolFull.reason());
                Err(SinkUnavailable::SpoolFull)
            }
            Err(_) => {
                self.metrics
                    .audit_refused(SinkUnavailable::SpoolFailed.reason());
                Err(SinkUnavailable::SpoolFailed)
            }
        }
    }

    /// Logs and counts the record, then appends its event to the spool (one `write`, on the
    /// calling task). The returned durability waits for the sync under the `always` fsync
    /// policy. Under the drop policy nothing ever fails a response: an event that cannot be
    /// spooled is dropped and counted.
    fn record_admitted(&self, record: RequestRecord, admission: Admission) -> Durability {
        TracingRecordSink::log(&record);
        self.metrics.observe(&record);
        if record.audit_unavailable {
            // Refused because the spool had no room: there is none for this one either.
            return Durability::ready();
        }
        let payload = event::from_record(&record).encode_to_vec();
        let reservation = admission.0.unwrap_or_else(Reservation::none);
        let refuse = self.refuse_policy();
        match self.spool.append(&payload, reservation) {
            Ok(position) => {
                if self.spool.options().fsync != FsyncPolicy::Always {
                    return Durability::ready();
                }
                let spool = self.spool.clone();
                Durability::waiting(async move {
                    match spool.wait_durable(position).await {
                        Ok(()) => Ok(()),
                        Err(_) if refuse => Err(SinkUnavailable::SpoolFailed),
                        // Written, not synced: counted by the spool's failure state.
                        Err(_) => Ok(()),
                    }
                })
            }
            Err(SpoolError::Full) => {
                tracing::warn!(request_id = %record.request_id, "audit spool full: the event is dropped");
                Durability::ready()
            }
            Err(error) => {
                tracing::error!(request_id = %record.request_id, %error, "the audit event could not be spooled");
                if refuse {
                    Durability::failed(SinkUnavailable::SpoolFailed)
                } else {
                    Durability::ready()
                }
            }
        }
    }

    /// Not ready once the spool failed under the refuse policy: every request would be
    /// refused, so the load balancer should send them elsewhere.
    fn ready(&self) -> Result<(), SinkUnavailable> {
        if self.spool.failed() && self.refuse_policy() {
            Err(SinkUnavailable::SpoolFailed)
        } else {
            Ok(())
        }
    }
}

/// Spool metrics, read at scrape time.
#[derive(Debug)]
pub struct AuditCollector {
    pub spool: Spool,
    pub delivery: Arc<crate::audit::delivery::DeliveryStatus>,
}

impl prometheus_client::collector::Collector for AuditCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;

        use crate::metrics::{encode_counter, encode_gauge};
        let (events, bytes) = self.spool.depth();
        let counters = self.spool.counters();
        encode_gauge(
            &mut encoder,
            "portcullis_audit_spool_events",
            "Audit events spooled and not yet acknowledged by the control plane",
            events as f64,
        )?;
        encode_gauge(
            &mut encoder,
            "portcullis_audit_spool_bytes",
            "Bytes of audit events spooled and not yet acknowledged",
            bytes as f64,
        )?;
        encode_gauge(
            &mut encoder,
            "portcullis_audit_spool_max_bytes",
            "The spool's bound (--audit-spool-max-bytes)",
            self.spool.options().max_bytes as f64,
        )?;
        encode_gauge(
            &mut encoder,
            "portcullis_audit_spool_failed",
            "1 when a write or sync of the spool failed (the node must be restarted)",
            if self.spool.failed() { 1.0 } else { 0.0 },
        )?;
        encode_gauge(
            &mut encoder,
            "portcullis_audit_delivery_lag_seconds",
            "Age of the oldest audit event not yet acknowledged by the control plane (0: caught up)",
            self.delivery.lag_seconds(),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_events_delivered",
            "Audit events the control plane stored",
            self.delivery.delivered_events.load(Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_events_redelivered",
            "Audit events the control plane already held (redelivered after a lost reply or a restart)",
            self.delivery.duplicate_events.load(Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_events_rejected",
            "Audit events the control plane refused as invalid (dropped)",
            self.delivery.rejected_events.load(Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_delivery_failures",
            "Failed delivery attempts (the batch stays spooled and is sent again)",
            self.delivery.failed_attempts.load(Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_events_dropped_full",
            "Audit events dropped because the spool was full (drop policy)",
            counters.dropped_full.load(Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_events_dropped_failed",
            "Audit events dropped because the spool had failed",
            counters.dropped_failed.load(Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "portcullis_audit_spool_corrupt_frames",
            "Damaged spool frames found while reading (the rest of their segment is skipped)",
            counters.corrupt_frames.load(Relaxed),
        )
    }
}

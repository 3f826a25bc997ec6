//! Delivery of spooled audit events to the control plane (`AuditIngest.Deliver`).
//!
//! One task reads the spool in order from the acknowledged cursor, sends batches (at most
//! [`DeliveryOptions::max_batch_events`] events and about `max_batch_bytes`), and moves the
//! cursor only after the control plane's reply; a failed batch is sent again, the same
//! events with the same ids, after a bounded backoff with jitter. Delivery is at least
//! once; the control plane stores each event id once, so nothing is doubled.
//!
//! A batch the control plane refuses as invalid (which the node's own bounds should make
//! impossible) is sent again one event at a time, and an event refused on its own is
//! dropped, logged with its id and counted, so one bad event cannot stop the trail.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::audit_ingest_client::AuditIngestClient;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::audit::spool::{ReadBatch, Spool, SpoolReader};
use crate::config::ControlPlaneConfig;
use crate::discovery::{Backoff, BackoffPolicy, control_plane_endpoint, node_bearer};

/// One `Deliver` call may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub control_plane: ControlPlaneConfig,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub backoff: BackoffPolicy,
}

impl DeliveryOptions {
    pub fn new(control_plane: ControlPlaneConfig) -> Self {
        Self {
            control_plane,
            max_batch_events: 1000,
            max_batch_bytes: 1024 * 1024,
            backoff: BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid control plane endpoint: {0}")]
    Endpoint(#[source] tonic::transport::Error),
    #[error("the node token cannot be sent as gRPC metadata")]
    InvalidToken,
}

/// What the delivery task reports, read by `/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryStatus {
    pub delivered_events: AtomicU64,
    pub duplicate_events: AtomicU64,
    pub rejected_events: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// When the oldest event not yet acknowledged happened (µs since the epoch); 0 when
    /// every event read so far is acknowledged.
    pub oldest_undelivered_unix_micros: AtomicI64,
}

impl DeliveryStatus {
    /// Seconds since the oldest unacknowledged event happened; 0 when caught up.
    pub fn lag_seconds(&self) -> f64 {
        let oldest = self.oldest_undelivered_unix_micros.load(Ordering::Acquire);
        if oldest <= 0 {
            return 0.0;
        }
        ((unix_micros() - oldest).max(0)) as f64 / 1e6
    }
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The delivery task.
pub struct Delivery {
    spool: Spool,
    client: AuditIngestClient<Channel>,
    bearer: Option<MetadataValue<Ascii>>,
    options: DeliveryOptions,
    status: Arc<DeliveryStatus>,
}

/// How one batch went.
enum Sent {
    Acknowledged {
        stored: u64,
        duplicates: u64,
    },
    /// The control plane refused the batch as invalid.
    Invalid(tonic::Status),
    Failed(tonic::Status),
}

impl Delivery {
    /// Prepares the task; connects lazily.
    pub fn new(spool: Spool, options: DeliveryOptions) -> Result<Self, DeliveryError> {
        let channel = control_plane_endpoint(&options.control_plane)
            .map_err(DeliveryError::Endpoint)?
            .connect_lazy();
        let bearer = node_bearer(options.control_plane.node_token.as_ref())
            .map_err(|_| DeliveryError::InvalidToken)?;
        Ok(Self {
            spool,
            client: AuditIngestClient::new(channel),
            bearer,
            options,
            status: Arc::new(DeliveryStatus::default()),
        })
    }

    pub fn status(&self) -> Arc<DeliveryStatus> {
        self.status.clone()
    }

    /// Delivers until `shutdown` is cancelled, or until everything readable is delivered
    /// once `drain` is cancelled. The spool keeps whatever is undelivered then.
    pub async fn run(mut self, drain: CancellationToken, shutdown: CancellationToken) {
        let mut reader = self.spool.reader();
        let mut backoff = Backoff::new(self.options.backoff);
        // A batch read but not acknowledged yet; sent again until it is.
        let mut pending: Option<ReadBatch> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let batch = match pending.take() {
                Some(batch) => batch,
                None => match self.read(reader).await {
                    (Ok(batch), returned) => {
                        reader = returned;
                        batch
                    }
                    (Err(error), returned) => {
                        reader = returned;
                        tracing::error!(%error, "reading the audit spool failed");
                        if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            if batch.events.is_empty() {
                if batch.bytes > 0 {
                    // Only damaged bytes were skipped: move the cursor past them.
                    self.acknowledge(&batch).await;
                    continue;
                }
                self.status
                    .oldest_undelivered_unix_micros
                    .store(0, Ordering::Release);
                if drain.is_cancelled() {
                    return;
                }
                let position = reader.position();
                tokio::select! {
                    () = self.spool.wait_readable_after(position) => {}
                    () = drain.cancelled() => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            let events = decode(&batch);
            if let Some(first) = events.first() {
                self.status
                    .oldest_undelivered_unix_micros
                    .store(first.time_unix_micros, Ordering::Release);
            }
            let span = tracing::info_span!("audit_delivery", events = events.len());
            match self.send(events).instrument(span.clone()).await {
                Sent::Acknowledged { stored, duplicates } => {
                    self.count(stored, duplicates);
                    self.acknowledge(&batch).await;
                    backoff = Backoff::new(self.options.backoff);
                }
                Sent::Invalid(status) => {
                    tracing::warn!(parent: &span, message = status.message(), "the control plane refused an audit batch as invalid: sending its events one by one");
                    if self.send_one_by_one(decode(&batch), &shutdown).await {
                        self.acknowledge(&batch).await;
                    } else {
                        pending = Some(batch);
                        if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                            return;
                        }
                    }
                }
                Sent::Failed(status) => {
                    self.status.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(parent: &span, code = ?status.code(), message = status.message(), retry_in_ms = delay.as_millis() as u64, "delivering audit events failed: they stay spooled");
                    pending = Some(batch);
                    if sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn read(
        &self,
        mut reader: SpoolReader,
    ) -> (
        Result<ReadBatch, crate::audit::spool::SpoolError>,
        SpoolReader,
    ) {
        let max_events = self.options.max_batch_events;
        let max_bytes = self.options.max_batch_bytes;
        match tokio::task::spawn_blocking(move || {
            let result = reader.read_batch(max_events, max_bytes);
            (result, reader)
        })
        .await
        {
            Ok(done) => done,
            // The closure does not panic; if it did, the process is in trouble anyway.
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    fn count(&self, stored: u64, duplicates: u64) {
        self.status
            .delivered_events
            .fetch_add(stored, Ordering::Relaxed);
        self.status
            .duplicate_events
            .fetch_add(duplicates, Ordering::Relaxed);
    }

    async fn send(&mut self, events: Vec<proto::AuditEvent>) -> Sent {
        let mut request = tonic::Request::new(proto::AuditBatch { events });
        request.set_timeout(CALL_TIMEOUT);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        match self.client.deliver(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                Sent::Acknowledged {
                    stored: u64::from(reply.stored),
                    duplicates: u64::from(reply.duplicates),
                }
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => Sent::Invalid(status),
            Err(status) => Sent::Failed(status),
        }
    }

    /// Sends each event alone; drops those refused as invalid. Returns whether every
    /// event was acknowledged or dropped (false: a call failed, try again later).
    async fn send_one_by_one(
        &mut self,
        events: Vec<proto::AuditEvent>,
        shutdown: &CancellationToken,
    ) -> bool {
        for event in events {
            if shutdown.is_cancelled() {
                return false;
            }
            let event_id = event.event_id.clone();
            match self.send(vec![event]).await {
                Sent::Acknowledged { stored, duplicates } => self.count(stored, duplicates),
                Sent::Invalid(status) => {
                    self.status.rejected_events.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%event_id, message = status.message(), "the control plane refused an audit event: dropped");
                }
                Sent::Failed(_) => return false,
            }
        }
        true
    }

    async fn acknowledge(&self, batch: &ReadBatch) {
        let spool = self.spool.clone();
        let cursor = batch.end;
        let events = batch.events.len() as u64;
        let bytes = batch.bytes;
        let result =
            tokio::task::spawn_blocking(move || spool.acknowledge(cursor, events, bytes)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                // The control plane holds the events; at worst they are sent again.
                tracing::warn!(%error, "recording the audit delivery cursor failed");
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

/// The events of a batch; a payload that does not decode (it passed its checksum, so only
/// a format change could cause it) is dropped and logged.
fn decode(batch: &ReadBatch) -> Vec<proto::AuditEvent> {
    batch
        .events
        .iter()
        .filter_map(|spooled| match proto::AuditEvent::decode(spooled.payload.as_slice()) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::error!(%error, segment = spooled.end.segment, offset = spooled.end.offset, "an audit spool frame does not decode: dropped");
                None
            }
        })
        .collect()
}

/// Sleeps; true when shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.cancelled() => true,
    }
}

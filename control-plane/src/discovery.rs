//! Snapshot distribution to data-plane nodes, modelled on Envoy's xDS: the node says hello,
//! the control plane pushes the current snapshot and every later one, and the node ACKs or
//! NACKs each push by nonce. Fleet status records what each node applied.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::config_discovery_server::ConfigDiscovery;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::compile::CompiledSnapshot;
use crate::fleet::Fleet;
use crate::runtime::NodeAuth;

/// How long a node has to say hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushes queued for one slow node before the stream waits for it.
const PUSH_QUEUE: usize = 4;

pub struct DiscoveryApi {
    snapshots: watch::Receiver<Arc<CompiledSnapshot>>,
    nodes: Arc<NodeAuth>,
    fleet: Arc<Fleet>,
}

impl DiscoveryApi {
    pub fn new(
        snapshots: watch::Receiver<Arc<CompiledSnapshot>>,
        nodes: Arc<NodeAuth>,
        fleet: Arc<Fleet>,
    ) -> Self {
        Self {
            snapshots,
            nodes,
            fleet,
        }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<proto::SnapshotUpdate, Status>> + Send>>;

fn update(snapshot: &CompiledSnapshot) -> proto::SnapshotUpdate {
    proto::SnapshotUpdate {
        version: snapshot.version,
        nonce: uuid::Uuid::new_v4().to_string(),
        snapshot: Some(snapshot.message.clone()),
    }
}

/// Sends one snapshot to a node, in a `snapshot_push` span; false when the stream is gone.
async fn push_snapshot(
    outbound: &mpsc::Sender<Result<proto::SnapshotUpdate, Status>>,
    push: proto::SnapshotUpdate,
    node_id: &str,
    version: u64,
) -> bool {
    let span = tracing::info_span!("snapshot_push", node = %node_id, version);
    let sent = outbound.send(Ok(push)).instrument(span).await.is_ok();
    if sent {
        crate::observability::snapshot_pushed();
    }
    sent
}

/// Serves one node's stream until either side closes it.
async fn serve_node(
    mut inbound: Streaming<proto::NodeMessage>,
    certified_id: Option<String>,
    outbound: mpsc::Sender<Result<proto::SnapshotUpdate, Status>>,
    mut snapshots: watch::Receiver<Arc<CompiledSnapshot>>,
    fleet: Arc<Fleet>,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(proto::NodeMessage {
            message: Some(proto::node_message::Message::Hello(hello)),
        }))) if !hello.node_id.is_empty() && hello.node_id.len() <= 256 => hello,
        Ok(Ok(_)) => {
            let _ = outbound
                .send(Err(Status::invalid_argument(
                    "the first message must be a hello with a node_id of at most 256 bytes",
                )))
                .await;
            return;
        }
        Ok(Err(status)) => {
            tracing::debug!(%status, "node stream failed before hello");
            return;
        }
        Err(_) => {
            let _ = outbound
                .send(Err(Status::deadline_exceeded("no hello within 10 seconds")))
                .await;
            return;
        }
    };
    if let Some(certified) = &certified_id
        && *certified != hello.node_id
    {
        let _ = outbound
            .send(Err(Status::permission_denied(format!(
                "this client certificate is for node {certified:?}, not {:?}",
                hello.node_id
            ))))
            .await;
        return;
    }
    let node_id = hello.node_id.clone();
    let connection = fleet.connected(
        &node_id,
        &hello.address,
        &hello.software_version,
        hello.last_applied_version,
    );
    tracing::info!(
        node = %node_id,
        address = %hello.address,
        last_applied_version = hello.last_applied_version,
        "node connected"
    );
    // Always push the current snapshot first, so a node that reconnects is sure to hold it.
    let mut pending_nonce = {
        let current = snapshots.borrow_and_update().clone();
        let push = update(&current);
        let nonce = push.nonce.clone();
        if !push_snapshot(&outbound, push, &node_id, current.version).await {
            fleet.disconnected(&node_id, connection);
            return;
        }
        nonce
    };
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = snapshots.borrow_and_update().clone();
                let push = update(&current);
                pending_nonce = push.nonce.clone();
                if !push_snapshot(&outbound, push, &node_id, current.version).await {
                    break;
                }
            }
            message = inbound.message() => {
                match message {
                    Ok(Some(proto::NodeMessage { message: Some(message) })) => match message {
                        proto::node_message::Message::Ack(ack) => {
                            if ack.nonce != pending_nonce {
                                tracing::debug!(node = %node_id, version = ack.version, "ack for an older push");
                            }
                            fleet.acked(&node_id, ack.version);
                            tracing::debug!(node = %node_id, version = ack.version, "node applied snapshot");
                        }
                        proto::node_message::Message::Nack(nack) => {
                            tracing::warn!(node = %node_id, version = nack.version, error = %nack.error, "node rejected snapshot");
                            fleet.nacked(&node_id, nack.version, &nack.error);
                        }
                        proto::node_message::Message::Hello(_) => {
                            tracing::debug!(node = %node_id, "ignoring a second hello");
                        }
                    },
                    Ok(Some(proto::NodeMessage { message: None })) => {}
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %node_id, %status, "node stream ended with an error");
                        break;
                    }
                }
            }
        }
    }
    fleet.disconnected(&node_id, connection);
    tracing::info!(node = %node_id, "node disconnected");
}

#[tonic::async_trait]
impl ConfigDiscovery for DiscoveryApi {
    type StreamSnapshotsStream = UpdateStream;

    async fn stream_snapshots(
        &self,
        request: Request<Streaming<proto::NodeMessage>>,
    ) -> Result<Response<Self::StreamSnapshotsStream>, Status> {
        let principal = self.nodes.authenticate(&request)?;
        // With mTLS the certificate names the node: it may only speak for itself.
        let certified_id = self.nodes.requires_certificate().then_some(principal.name);
        let (outbound, receiver) = mpsc::channel(PUSH_QUEUE);
        tokio::spawn(serve_node(
            request.into_inner(),
            certified_id,
            outbound,
            self.snapshots.clone(),
            self.fleet.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

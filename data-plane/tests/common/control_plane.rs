//! An in-process `ConfigDiscovery` server that behaves like the control plane from a node's
//! point of view: it checks the bearer token, pushes the current snapshot when a node
//! connects and every new one after, and reports hellos and ACK/NACK replies to the test.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub const NODE_TOKEN: &str = "node-token-for-tests";

/// What the control plane saw from nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Hello {
        hello: proto::NodeHello,
        authorization: String,
    },
    Ack(proto::SnapshotAck),
    Nack(proto::SnapshotNack),
}

struct Service {
    current: watch::Receiver<Option<proto::SnapshotUpdate>>,
    seen: mpsc::UnboundedSender<Seen>,
    stopping: CancellationToken,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<proto::SnapshotUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for Service {
    type StreamSnapshotsStream = UpdateStream;

    async fn stream_snapshots(
        &self,
        request: Request<Streaming<proto::NodeMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if authorization != format!("Bearer {NODE_TOKEN}") {
            return Err(Status::unauthenticated("bad node token"));
        }
        let mut incoming = request.into_inner();
        let mut current = self.current.clone();
        let seen = self.seen.clone();
        let stopping = self.stopping.clone();
        let (outgoing, stream) = mpsc::channel(4);
        tokio::spawn(async move {
            // The first message must be the hello.
            match incoming.message().await {
                Ok(Some(proto::NodeMessage {
                    message: Some(proto::node_message::Message::Hello(hello)),
                })) => {
                    let _ = seen.send(Seen::Hello {
                        hello,
                        authorization,
                    });
                }
                _ => return,
            }
            let first = current.borrow_and_update().clone();
            if let Some(update) = first
                && outgoing.send(Ok(update)).await.is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    () = stopping.cancelled() => {
                        let _ = outgoing.send(Err(Status::unavailable("control plane stopping"))).await;
                        return;
                    }
                    changed = current.changed() => {
                        if changed.is_err() { return; }
                        let update = current.borrow_and_update().clone();
                        if let Some(update) = update
                            && outgoing.send(Ok(update)).await.is_err()
                        {
                            return;
                        }
                    }
                    message = incoming.message() => match message {
                        Ok(Some(proto::NodeMessage { message: Some(proto::node_message::Message::Ack(ack)) })) => {
                            let _ = seen.send(Seen::Ack(ack));
                        }
                        Ok(Some(proto::NodeMessage { message: Some(proto::node_message::Message::Nack(nack)) })) => {
                            let _ = seen.send(Seen::Nack(nack));
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

pub struct TestControlPlane {
    pub address: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    current: watch::Sender<Option<proto::SnapshotUpdate>>,
    stopping: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl TestControlPlane {
    /// Starts on `address` (port 0 for any), serving `initial` to nodes that connect.
    pub async fn start(address: SocketAddr, initial: Option<proto::SnapshotUpdate>) -> Self {
        let listener = TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (current, current_rx) = watch::channel(initial);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let stopping = CancellationToken::new();
        let service = Service {
            current: current_rx,
            seen: seen_tx,
            stopping: stopping.clone(),
        };
        let shutdown = stopping.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ConfigDiscoveryServer::new(service))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        Self {
            address,
            seen,
            current,
            stopping,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Makes `update` current and pushes it to every connected node.
    pub fn push(&self, update: proto::SnapshotUpdate) {
        self.current.send_replace(Some(update));
    }

    /// The next thing a node said.
    pub async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(20), self.seen.recv())
            .await
            .expect("the control plane heard nothing from the node")
            .expect("the control plane stopped")
    }

    /// Ends every stream with an error and stops the server, releasing the port.
    pub async fn stop(self) {
        self.stopping.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("the control plane did not stop")
            .unwrap();
    }
}

//! Fleet status: which node runs which snapshot version, as the snapshot streams report it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNode {
    pub node_id: String,
    pub address: String,
    pub software_version: String,
    pub applied_version: u64,
    pub last_seen: OffsetDateTime,
    pub connected: bool,
    pub last_nack: Option<Nack>,
    /// Identifies the current stream, so a stale stream closing late does not mark a
    /// reconnected node as gone.
    connection: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: u64,
    pub error: String,
    pub time: OffsetDateTime,
}

#[derive(Default)]
pub struct Fleet {
    nodes: Mutex<BTreeMap<String, FleetNode>>,
    next_connection: Mutex<u64>,
}

impl Fleet {
    fn with_nodes<T>(&self, f: impl FnOnce(&mut BTreeMap<String, FleetNode>) -> T) -> T {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut nodes)
    }

    /// Records a node's hello; returns the connection id of this stream.
    pub fn connected(
        &self,
        node_id: &str,
        address: &str,
        software_version: &str,
        applied_version: u64,
    ) -> u64 {
        let connection = {
            let mut next = self
                .next_connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *next += 1;
            *next
        };
        self.with_nodes(|nodes| {
            let last_nack = nodes.get(node_id).and_then(|node| node.last_nack.clone());
            nodes.insert(
                node_id.to_owned(),
                FleetNode {
                    node_id: node_id.to_owned(),
                    address: address.to_owned(),
                    software_version: software_version.to_owned(),
                    applied_version,
                    last_seen: OffsetDateTime::now_utc(),
                    connected: true,
                    last_nack,
                    connection,
                },
            );
        });
        connection
    }

    pub fn acked(&self, node_id: &str, version: u64) {
        self.with_nodes(|nodes| {
            if let Some(node) = nodes.get_mut(node_id) {
                node.applied_version = version;
                node.last_seen = OffsetDateTime::now_utc();
            }
        });
    }

    pub fn nacked(&self, node_id: &str, version: u64, error: &str) {
        self.with_nodes(|nodes| {
            if let Some(node) = nodes.get_mut(node_id) {
                let now = OffsetDateTime::now_utc();
                node.last_seen = now;
                node.last_nack = Some(Nack {
                    version,
                    error: error.chars().take(2048).collect(),
                    time: now,
                });
            }
        });
    }

    pub fn disconnected(&self, node_id: &str, connection: u64) {
        self.with_nodes(|nodes| {
            if let Some(node) = nodes.get_mut(node_id)
                && node.connection == connection
            {
                node.connected = false;
                node.last_seen = OffsetDateTime::now_utc();
            }
        });
    }

    pub fn nodes(&self) -> Vec<FleetNode> {
        self.with_nodes(|nodes| nodes.values().cloned().collect())
    }
}

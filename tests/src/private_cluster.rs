//! A private three-node RabbitMQ cluster on this one machine, for the node-loss tests: three
//! [`PrivateBroker`]s with their own names, ports and data directories and one shared Erlang
//! cookie, the second and third joined to the first with `rabbitmqctl join_cluster`. Every node
//! is stopped (and its directory removed) on drop.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::PrivateBroker;

/// A RabbitMQ cluster of this test process only.
pub struct PrivateCluster {
    nodes: Vec<PrivateBroker>,
}

impl PrivateCluster {
    /// Starts `size` nodes and clusters them; waits until every node sees all of them running.
    pub async fn start(size: usize) -> anyhow::Result<PrivateCluster> {
        let cookie: String = (0..32).map(|_| char::from(b'A' + (rand::random::<u8>() % 26))).collect();
        let mut nodes = Vec::with_capacity(size);
        for _ in 0..size {
            nodes.push(PrivateBroker::start_member("", "", Some(&cookie)).await?);
        }
        let first = nodes[0].node().to_string();
        for node in &nodes[1..] {
            node.ctl("rabbitmqctl", &["stop_app"])?;
            node.ctl("rabbitmqctl", &["join_cluster", &first]).with_context(|| format!("joining {} to {first}", node.node()))?;
            node.ctl("rabbitmqctl", &["start_app"])?;
        }
        let cluster = PrivateCluster { nodes };
        cluster.wait_running(size).await?;
        Ok(cluster)
    }

    /// Every node's AMQP URI, in node order, separated by commas (Warren's address list).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(PrivateBroker::url).collect::<Vec<_>>().join(",")
    }

    /// The AMQP URI of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// The Erlang node names, in node order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node().to_string()).collect()
    }

    /// A node that is running, for `rabbitmqctl` queries.
    fn running(&self) -> anyhow::Result<&PrivateBroker> {
        self.nodes.iter().find(|n| n.is_running()).context("no node of the cluster is running")
    }

    /// The node (index) that hosts `queue`: the leader of a quorum queue, the home of a classic one.
    pub fn queue_node(&self, queue: &str) -> anyhow::Result<usize> {
        let listing =
            self.running()?.ctl("rabbitmqctl", &["list_queues", "--quiet", "--no-table-headers", "name", "type", "leader", "pid"])?;
        for line in listing.lines() {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if fields.first() != Some(&queue) {
                continue;
            }
            // A quorum queue names its leader node; a classic queue's pid names its node
            // (`<rabbit@host.1.2.3>`).
            let text = fields[1..].join(" ");
            return self
                .node_names()
                .iter()
                .position(|name| text.contains(name.as_str()))
                .with_context(|| format!("queue {queue}: no node of the cluster in {text:?}"));
        }
        bail!("queue {queue} is not on the cluster:\n{listing}")
    }

    /// Stops node `i` gracefully (its data stays on disk).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again; it rejoins the cluster from its data.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].boot().await?;
        self.wait_running(self.nodes.len()).await
    }

    async fn wait_running(&self, count: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let status = self.running()?.ctl("rabbitmqctl", &["cluster_status", "--formatter", "json"]);
            let running = status
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v.get("running_nodes").and_then(|n| n.as_array()).map(Vec::len))
                .unwrap_or(0);
            if running >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the cluster shows {running} of {count} nodes running after 90 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

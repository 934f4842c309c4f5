//! A Redis Cluster the tests start from the installed `redis-server` and `redis-cli`
//! ([`RedisCluster`]): three masters and three replicas (`cluster-enabled yes`, no
//! persistence) on free loopback ports, each node in its own directory of a temporary
//! directory (its `nodes.conf` there, its log `<port>.log` next to the directories), joined
//! with `redis-cli --cluster create ... --cluster-replicas 1`.
//!
//! Faults for the tests: [`RedisCluster::migrate_slot`] moves a hash slot (with its keys) to
//! another master, [`RedisCluster::migrate_slot_partly`] stops half-way and holds the slot
//! mid-migration (`MIGRATING` on the source, `IMPORTING` on the target) until
//! [`RedisCluster::finish_migration`] ([`RedisCluster::migrate_keys`] moves chosen keys of it
//! meanwhile); [`RedisCluster::kill_master`] SIGKILLs a master and
//! [`RedisCluster::wait_promoted`] waits until a replica serves its slots. Dropping the cluster
//! kills every process it started.
//!
//! For the tests that talk to it: [`RedisCluster::cluster_connection`] (redis-rs' cluster
//! client), [`RedisCluster::key_on`] and [`RedisCluster::queue_on`] (a key, a queue id, whose
//! slot a given master serves), and [`strict`] (a script in Redis 7's strict mode).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use funcscale_worker::protocol::Keys;
use funcscale_worker::protocol::keys::slot;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;

use crate::redis_topology::{Node, connect, free_ports};

/// Number of hash slots.
const SLOTS: u32 = 16384;

/// How long [`RedisCluster::start`] and the migrations wait for the nodes to agree.
const SETTLE: Duration = Duration::from_secs(30);

/// Keys [`RedisCluster::migrate_slot`] moves per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;

/// How many candidates [`RedisCluster::key_on`] tries.
const KEY_ON_TRIES: u32 = 100_000;

/// `src` as a strict script: with the `#!lua` shebang Redis 7 refuses any key outside the
/// slot of the declared keys — declared or not, even when that slot is on the same node — so
/// a script that touches a key of another slot fails the test. Panics unless `src` starts
/// with `#!lua` (the e2e crate's dev-dependency enables protocol feature `strict-scripts`,
/// which puts it first in every script).
pub fn strict(src: &str) -> redis::Script {
    assert!(
        src.starts_with("#!lua\n"),
        "protocol feature strict-scripts"
    );
    redis::Script::new(src)
}

/// How a [`RedisCluster`] is configured.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `cluster-node-timeout` (default 2000 ms): how long a master must be unreachable before
    /// its replica is promoted (a SIGKILLed master was replaced 3.5-4.7 s later with 2000 ms).
    pub node_timeout: Duration,
    /// `cluster-require-full-coverage` (default `true`, Redis' default): with a slot uncovered
    /// (a killed master not yet replaced) every node refuses every key with `CLUSTERDOWN`;
    /// `false`: only the uncovered slots do.
    pub require_full_coverage: bool,
    /// More configuration lines for every node.
    pub config: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            node_timeout: Duration::from_millis(2000),
            require_full_coverage: true,
            config: Vec::new(),
        }
    }
}

/// One line of `CLUSTER NODES`: a node as the node asked sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    /// Flagged `master` (a failed master keeps the flag until a replica replaces it).
    pub master: bool,
    /// Flagged `fail` or `fail?` (unreachable).
    pub failing: bool,
    /// The node asked.
    pub myself: bool,
    /// The id of the master a replica replicates.
    pub master_id: Option<String>,
    /// The slot ranges it serves (inclusive); open migrations (`[slot->-id]`) are left out.
    pub slots: Vec<(u16, u16)>,
}

/// Parse `CLUSTER NODES`.
fn parse_nodes(text: &str) -> anyhow::Result<Vec<NodeView>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            anyhow::ensure!(f.len() >= 8, "short CLUSTER NODES line {line:?}");
            // ip:port@cport[,hostname]
            let port = f[1]
                .split_once(':')
                .and_then(|(_, rest)| rest.split(['@', ',']).next())
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no port in CLUSTER NODES line {line:?}"))?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Ok((a.parse()?, b.parse()?))
                })
                .collect::<anyhow::Result<Vec<(u16, u16)>>>()
                .with_context(|| format!("slots of CLUSTER NODES line {line:?}"))?;
            Ok(NodeView {
                id: f[0].to_string(),
                port,
                master: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                myself: flags.contains(&"myself"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// Slot ranges → owner port, as one node sees them; `None` unless they cover every slot.
fn owners(view: &[NodeView]) -> Option<BTreeMap<u16, (u16, u16)>> {
    let map: BTreeMap<u16, (u16, u16)> = view
        .iter()
        .filter(|n| n.master)
        .flat_map(|n| n.slots.iter().map(|&(a, b)| (a, (b, n.port))))
        .collect();
    let mut next = 0u32;
    for (&a, &(b, _)) in &map {
        if u32::from(a) != next {
            return None;
        }
        next = u32::from(b) + 1;
    }
    (next == SLOTS).then_some(map)
}

/// `MIGRATE` `keys` of `m`'s slot over `source`, a connection to its source, to its target.
async fn migrate(
    source: &mut MultiplexedConnection,
    m: &Migration,
    keys: &[String],
) -> anyhow::Result<()> {
    redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(m.to)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(keys)
        .exec_async(source)
        .await
        .with_context(|| {
            format!(
                "MIGRATE {} keys of slot {} from 127.0.0.1:{} to 127.0.0.1:{}",
                keys.len(),
                m.slot,
                m.from,
                m.to
            )
        })
}

/// The port of the master that serves `slot` in one node's view.
fn slot_owner(view: &[NodeView], slot: u16) -> Option<u16> {
    view.iter()
        .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|n| n.port)
}

/// A node exited while the cluster started.
#[derive(Debug, thiserror::Error)]
#[error("127.0.0.1:{0} exited at start (its port or cluster bus port taken?)")]
struct NodeExited(u16);

/// A hash slot held mid-migration by [`RedisCluster::migrate_slot_partly`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub slot: u16,
    /// The master the slot leaves (`MIGRATING`).
    pub from: u16,
    /// The master it goes to (`IMPORTING`).
    pub to: u16,
    /// Keys moved so far.
    pub moved: usize,
}

/// Three masters and three replicas on loopback, each a `redis-server` child of this process;
/// killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    pub opts: ClusterOptions,
    nodes: Vec<Node>,
    /// The slot ranges of each master [`Self::kill_master`] killed.
    killed: BTreeMap<u16, Vec<(u16, u16)>>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// [`Self::start_with`] the default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Start six nodes, join them with `redis-cli --cluster create --cluster-replicas 1`, and
    /// wait until every node says `cluster_state:ok`, knows the six nodes and sees the same
    /// owner for every slot and every master's replica, and every replica's link to its master
    /// is up. A node that exits at start (a port taken between choosing and binding it) makes
    /// it start again on other ports, up to three times. When it fails, the temporary
    /// directory is kept (its path is in the error).
    pub async fn start_with(opts: ClusterOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            let dir = tempfile::Builder::new()
                .prefix("funcscale-cluster-")
                .tempdir()?;
            let mut cluster = Self {
                opts: opts.clone(),
                nodes: Vec::new(),
                killed: BTreeMap::new(),
                dir,
            };
            match cluster.boot().await {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < 3 && e.is::<NodeExited>() => attempt += 1,
                Err(e) => {
                    cluster.dir.disable_cleanup(true);
                    return Err(e.context(cluster.logs_hint()));
                }
            }
        }
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        // a data port and a cluster bus port per node
        let ports = free_ports(12)?;
        for i in 0..6 {
            let conf = self.conf(ports[i], ports[6 + i])?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn redis-server (is it installed? `make redis`)")?;
            self.nodes.push(Node {
                port: ports[i],
                child: Some(child),
            });
        }
        self.wait_answering().await?;
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(self.nodes().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("run redis-cli --cluster create (is redis-cli installed?)")?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_agreed(SETTLE, true).await?;
        for port in self.nodes() {
            crate::eventually(
                SETTLE,
                &format!("127.0.0.1:{port}: a master, or a replica with its link up"),
                || async move {
                    let mut con = connect(port, None).await.ok()?;
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut con)
                        .await
                        .ok()?;
                    (info.contains("role:master") || info.contains("master_link_status:up"))
                        .then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Wait until every node answers `PING`; [`NodeExited`] when one exits first.
    async fn wait_answering(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        let mut waiting = self.nodes();
        while let Some(&port) = waiting.first() {
            let mut con = connect(port, None).await;
            if let Ok(con) = &mut con
                && redis::cmd("PING").query_async::<String>(con).await.is_ok()
            {
                waiting.remove(0);
                continue;
            }
            if !self.live_nodes().contains(&port) {
                return Err(NodeExited(port).into());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "127.0.0.1:{port} does not answer within {SETTLE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn conf(&self, port: u16, bus_port: u16) -> anyhow::Result<PathBuf> {
        // `cluster-config-file` is relative to `dir`: one directory per node
        let node_dir = self.dir.path().join(port.to_string());
        std::fs::create_dir(&node_dir)?;
        let mut lines = vec![
            format!("port {port}"),
            "bind 127.0.0.1".into(),
            format!("dir {}", node_dir.display()),
            format!("logfile {}", self.log(port).display()),
            "save \"\"".into(),
            "appendonly no".into(),
            // a replica's first sync starts at once (Redis waits 5 s for more replicas)
            "repl-diskless-sync-delay 0".into(),
            "cluster-enabled yes".into(),
            "cluster-config-file nodes.conf".into(),
            format!("cluster-port {bus_port}"),
            format!(
                "cluster-node-timeout {}",
                self.opts.node_timeout.as_millis()
            ),
            format!(
                "cluster-require-full-coverage {}",
                if self.opts.require_full_coverage {
                    "yes"
                } else {
                    "no"
                }
            ),
        ];
        lines.extend(self.opts.config.iter().cloned());
        let path = node_dir.join("redis.conf");
        std::fs::write(&path, lines.join("\n") + "\n")?;
        Ok(path)
    }

    /// The temporary directory: a directory per node (configuration, `nodes.conf`) and each
    /// node's log (`<port>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("{port}.log"))
    }

    fn logs_hint(&self) -> String {
        format!("logs in {}", self.dir.path().display())
    }

    /// Ports of the six nodes as started (killed ones included).
    pub fn nodes(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Ports of the nodes still running.
    pub fn live_nodes(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|n| {
                let alive = n
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
                alive.then_some(n.port)
            })
            .collect()
    }

    /// The URL funcscale takes for this cluster:
    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...` (every node as a seed).
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// `redis://127.0.0.1:<port>` of every node: the seeds of redis-rs' `ClusterClient`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A connection of redis-rs' cluster client to this cluster (every node a seed; it follows
    /// `MOVED` and `ASK`): 2 s connection and response timeouts, redis-rs' other defaults
    /// (16 retries). [`Self::cluster_connection_with`] changes them.
    pub async fn cluster_connection(&self) -> anyhow::Result<ClusterConnection> {
        self.cluster_connection_with(|b| b).await
    }

    /// [`Self::cluster_connection`] with the client `configure` makes of its builder: e.g. a
    /// longer response timeout, or one retry so that a `TRYAGAIN` comes back to the caller.
    pub async fn cluster_connection_with(
        &self,
        configure: impl FnOnce(ClusterClientBuilder) -> ClusterClientBuilder,
    ) -> anyhow::Result<ClusterConnection> {
        let builder = ClusterClientBuilder::new(self.seeds())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2));
        configure(builder)
            .build()
            .context("build redis-rs' cluster client")?
            .get_async_connection()
            .await
            .with_context(|| format!("connect redis-rs' cluster client to {}", self.url()))
    }

    /// A plain connection to node `port` (not following redirections).
    pub async fn connection(&self, port: u16) -> anyhow::Result<MultiplexedConnection> {
        connect(port, None)
            .await
            .with_context(|| format!("connect to the cluster node 127.0.0.1:{port}"))
    }

    /// `CLUSTER NODES` of node `port`, parsed.
    pub async fn view(&self, port: u16) -> anyhow::Result<Vec<NodeView>> {
        let mut con = self.connection(port).await?;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut con)
            .await
            .with_context(|| format!("CLUSTER NODES on 127.0.0.1:{port}"))?;
        parse_nodes(&text)
    }

    /// The view of the first running node that answers.
    async fn any_view(&mut self) -> anyhow::Result<Vec<NodeView>> {
        let mut last = None;
        for port in self.live_nodes() {
            match self.view(port).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node is running")))
    }

    /// Ports of the masters that serve slots and are not failing, as a running node sees them
    /// (sorted).
    pub async fn master_ports(&mut self) -> anyhow::Result<Vec<u16>> {
        let mut masters: Vec<u16> = self
            .any_view()
            .await?
            .iter()
            .filter(|n| n.master && !n.failing && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        Ok(masters)
    }

    /// The master that serves `slot`, as a running node sees it.
    pub async fn master_of_slot(&mut self, slot: u16) -> anyhow::Result<u16> {
        let view = self.any_view().await?;
        slot_owner(&view, slot).with_context(|| format!("no master serves slot {slot}"))
    }

    /// The first of `candidate(0)`, `candidate(1)`, ... whose hash slot master `master`
    /// serves, as a running node sees it (an error after 100,000 candidates).
    pub async fn key_on(
        &mut self,
        master: u16,
        candidate: impl Fn(u32) -> String,
    ) -> anyhow::Result<String> {
        let view = self.any_view().await?;
        for i in 0..KEY_ON_TRIES {
            let key = candidate(i);
            if slot_owner(&view, slot(&key)) == Some(master) {
                return Ok(key);
            }
        }
        anyhow::bail!(
            "none of {KEY_ON_TRIES} candidates ({}, ...) is on 127.0.0.1:{master}",
            candidate(0)
        )
    }

    /// A queue id of namespace `ns` whose hash slot (every key of the queue's is in it)
    /// master `master` serves: the first of `Keys::queue_id(ns, "q0")`, `"q1"`, ...
    pub async fn queue_on(&mut self, ns: &str, master: u16) -> anyhow::Result<String> {
        self.key_on(master, |i| Keys::queue_id(ns, &format!("q{i}")))
            .await
    }

    /// [`Self::queue_on`] every master of [`Self::master_ports`], in that order: queue ids of
    /// namespace `ns` whose slots are on different masters.
    pub async fn queue_on_every_master(&mut self, ns: &str) -> anyhow::Result<Vec<String>> {
        let mut queues = Vec::new();
        for m in self.master_ports().await? {
            queues.push(self.queue_on(ns, m).await?);
        }
        Ok(queues)
    }

    /// The id of node `port` (`CLUSTER MYID`).
    pub async fn node_id(&self, port: u16) -> anyhow::Result<String> {
        let mut con = self.connection(port).await?;
        Ok(redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut con)
            .await?)
    }

    /// Move `slot` and its keys to master `to`: [`Self::migrate_slot_partly`] moving every
    /// key, then [`Self::finish_migration`].
    pub async fn migrate_slot(&mut self, slot: u16, to: u16) -> anyhow::Result<()> {
        let m = self.migrate_slot_partly(slot, to, usize::MAX).await?;
        self.finish_migration(m).await
    }

    /// Start moving `slot` to master `to` and stop half-way: `CLUSTER SETSLOT <slot>
    /// IMPORTING <source>` on `to`, `CLUSTER SETSLOT <slot> MIGRATING <to>` on the source,
    /// then at most `keys` of its keys `MIGRATE`d. The slot stays mid-migration — clients are
    /// sent `ASK` (keys already moved or new) or `TRYAGAIN` (a command on several keys, some
    /// moved) — until [`Self::finish_migration`].
    pub async fn migrate_slot_partly(
        &mut self,
        slot: u16,
        to: u16,
        keys: usize,
    ) -> anyhow::Result<Migration> {
        let from = self.master_of_slot(slot).await?;
        anyhow::ensure!(from != to, "slot {slot} is already on 127.0.0.1:{to}");
        let (from_id, to_id) = (self.node_id(from).await?, self.node_id(to).await?);
        let mut target = self.connection(to).await?;
        let mut source = self.connection(from).await?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .exec_async(&mut target)
            .await
            .with_context(|| format!("SETSLOT {slot} IMPORTING on 127.0.0.1:{to}"))?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .exec_async(&mut source)
            .await
            .with_context(|| format!("SETSLOT {slot} MIGRATING on 127.0.0.1:{from}"))?;
        let mut m = Migration {
            slot,
            from,
            to,
            moved: 0,
        };
        self.move_keys(&mut m, keys).await?;
        Ok(m)
    }

    /// `MIGRATE` at most `max` keys of the migration's slot from its source to its target.
    async fn move_keys(&self, m: &mut Migration, max: usize) -> anyhow::Result<()> {
        let mut source = self.connection(m.from).await?;
        let mut left = max;
        while left > 0 {
            let batch: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(m.slot)
                .arg(left.min(MIGRATE_BATCH))
                .query_async(&mut source)
                .await?;
            if batch.is_empty() {
                break;
            }
            migrate(&mut source, m, &batch).await?;
            m.moved += batch.len();
            left -= batch.len();
        }
        Ok(())
    }

    /// `MIGRATE` these keys of the migration's slot from its source to its target (counted in
    /// [`Migration::moved`]); the slot stays mid-migration.
    pub async fn migrate_keys(&self, m: &mut Migration, keys: &[String]) -> anyhow::Result<()> {
        let mut source = self.connection(m.from).await?;
        migrate(&mut source, m, keys).await?;
        m.moved += keys.len();
        Ok(())
    }

    /// Move the keys left and end the migration: `CLUSTER SETSLOT <slot> NODE <target>` on
    /// the target, the source, then every other master; wait until every node agrees that the
    /// target serves the slot.
    pub async fn finish_migration(&mut self, mut m: Migration) -> anyhow::Result<()> {
        self.move_keys(&mut m, usize::MAX).await?;
        let to_id = self.node_id(m.to).await?;
        let others: Vec<u16> = self
            .master_ports()
            .await?
            .into_iter()
            .filter(|p| *p != m.to && *p != m.from)
            .collect();
        for port in [m.to, m.from].into_iter().chain(others) {
            let mut con = self.connection(port).await?;
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(m.slot)
                .arg("NODE")
                .arg(&to_id)
                .exec_async(&mut con)
                .await
                .with_context(|| format!("SETSLOT {} NODE on 127.0.0.1:{port}", m.slot))?;
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            self.wait_agreed(deadline.saturating_duration_since(Instant::now()), false)
                .await?;
            if self.master_of_slot(m.slot).await? == m.to {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "slot {} not on 127.0.0.1:{} within {SETTLE:?}; {}",
                m.slot,
                m.to,
                self.logs_hint()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL master `port` (it must serve slots, as another running node sees it).
    pub async fn kill_master(&mut self, port: u16) -> anyhow::Result<()> {
        let others: Vec<u16> = self
            .live_nodes()
            .into_iter()
            .filter(|p| *p != port)
            .collect();
        let mut slots = None;
        for p in others {
            if let Ok(view) = self.view(p).await {
                slots = view
                    .into_iter()
                    .find(|n| n.port == port && n.master && !n.slots.is_empty())
                    .map(|n| n.slots);
                break;
            }
        }
        let slots =
            slots.with_context(|| format!("127.0.0.1:{port} is not a master with slots"))?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("not a node of this cluster")?;
        anyhow::ensure!(node.child.is_some(), "127.0.0.1:{port} is down already");
        node.kill();
        self.killed.insert(port, slots);
        Ok(())
    }

    /// Wait until a replica replaced master `old` (killed with [`Self::kill_master`]): every
    /// running node says `cluster_state:ok` and names one running node — a master now, by its
    /// own `ROLE` — for every slot `old` served. Returns its port; fails after `timeout`.
    pub async fn wait_promoted(&mut self, old: u16, timeout: Duration) -> anyhow::Result<u16> {
        let slots = self
            .killed
            .get(&old)
            .cloned()
            .with_context(|| format!("127.0.0.1:{old} was not killed with kill_master"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.promoted(old, &slots).await {
                Ok(p) => return Ok(p),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "no replica took over the slots of 127.0.0.1:{old} within {timeout:?}: \
                     {why}; {}",
                    self.logs_hint()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The running master other than `old` every running node names for all of `slots`, once
    /// the cluster is ok; else an error that says what is not so yet.
    async fn promoted(&mut self, old: u16, slots: &[(u16, u16)]) -> anyhow::Result<u16> {
        let live = self.live_nodes();
        let mut named = None;
        for &port in &live {
            anyhow::ensure!(
                self.state_ok(port).await?,
                "127.0.0.1:{port}: cluster_state is not ok"
            );
            let view = self.view(port).await?;
            for &(a, _) in slots {
                let owner = slot_owner(&view, a)
                    .with_context(|| format!("127.0.0.1:{port} sees no master of slot {a}"))?;
                match named {
                    None => named = Some(owner),
                    Some(n) => anyhow::ensure!(
                        n == owner,
                        "slot {a}: 127.0.0.1:{port} names 127.0.0.1:{owner}, another node \
                         127.0.0.1:{n}"
                    ),
                }
            }
        }
        let p = named.context("no node is running")?;
        anyhow::ensure!(p != old, "the nodes still name 127.0.0.1:{old}");
        anyhow::ensure!(
            live.contains(&p),
            "the nodes name 127.0.0.1:{p}, which is down"
        );
        let mut con = self.connection(p).await?;
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut con).await?;
        let is_master = matches!(&role, redis::Value::Array(v)
            if v.first().and_then(|r| redis::from_redis_value_ref::<String>(r).ok()).as_deref()
                == Some("master"));
        anyhow::ensure!(is_master, "127.0.0.1:{p} is not a master by its ROLE");
        Ok(p)
    }

    /// `cluster_state:ok` in `CLUSTER INFO` of node `port`.
    async fn state_ok(&self, port: u16) -> anyhow::Result<bool> {
        let mut con = self.connection(port).await?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await?;
        Ok(info.lines().any(|l| l.trim() == "cluster_state:ok"))
    }

    /// Wait until every running node says `cluster_state:ok`, knows every node started, and
    /// sees the same owner for every slot (all 16384 covered) and the same replicas of each
    /// master; with `replicas`, also until every master has a replica.
    async fn wait_agreed(&mut self, timeout: Duration, replicas: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.agreed(replicas).await {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the cluster did not settle within {timeout:?}: {why}; {}",
                    self.logs_hint()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `None` when the running nodes agree (see [`Self::wait_agreed`]); else what differs.
    async fn agreed(&mut self, replicas: bool) -> anyhow::Result<Option<String>> {
        type Topology = (BTreeMap<u16, (u16, u16)>, BTreeMap<u16, u16>);
        let mut first: Option<(u16, Topology)> = None;
        for port in self.live_nodes() {
            if !self.state_ok(port).await? {
                return Ok(Some(format!("127.0.0.1:{port}: cluster_state is not ok")));
            }
            let view = self.view(port).await?;
            if view.len() != self.nodes.len() {
                return Ok(Some(format!(
                    "127.0.0.1:{port} knows {} nodes of {}",
                    view.len(),
                    self.nodes.len()
                )));
            }
            let Some(map) = owners(&view) else {
                return Ok(Some(format!(
                    "127.0.0.1:{port} does not see every slot served"
                )));
            };
            let replica_of = replica_masters(&view);
            if replicas
                && let Some(lonely) = map
                    .values()
                    .map(|&(_, m)| m)
                    .find(|m| !replica_of.values().any(|x| x == m))
            {
                return Ok(Some(format!(
                    "127.0.0.1:{port} sees no replica of master 127.0.0.1:{lonely}"
                )));
            }
            match &first {
                None => first = Some((port, (map, replica_of))),
                Some((p, t)) if *t != (map, replica_of) => {
                    return Ok(Some(format!(
                        "127.0.0.1:{p} and 127.0.0.1:{port} see different slot owners or \
                         replicas"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

/// Replica port → master port of the replicas not failing, as one node sees them.
fn replica_masters(view: &[NodeView]) -> BTreeMap<u16, u16> {
    view.iter()
        .filter(|n| !n.master && !n.failing)
        .filter_map(|n| {
            let id = n.master_id.as_deref()?;
            let m = view.iter().find(|m| m.id == id)?;
            Some((n.port, m.port))
        })
        .collect()
}

impl Drop for RedisCluster {
    /// Kill every node; keep the temporary directory (the logs) when a test panics.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("redis cluster: {}", self.logs_hint());
        }
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host.example master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed]
aaaa 127.0.0.1:30003@40003 master,fail - 1426238316232 1426238315000 3 connected 10923-16382 16383
";
        let v = parse_nodes(text).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].port, 30004);
        assert_eq!(v[0].master_id.as_deref(), Some("e7d1"));
        assert!(!v[0].master && v[0].slots.is_empty());
        assert_eq!(v[1].port, 30002);
        assert_eq!(v[1].slots, [(5461, 10922)]);
        assert!(v[2].myself && v[2].master && !v[2].failing);
        assert_eq!(v[2].slots, [(0, 5460)]);
        assert!(v[3].failing);
        assert_eq!(v[3].slots, [(10923, 16382), (16383, 16383)]);
        let map = owners(&v).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[&5461], (10922, 30002));
        assert!(owners(&v[..3]).is_none());
    }
}

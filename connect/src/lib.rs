//! The Redis connection every funcscale program uses — worker, beat, producer CLI, operator,
//! kubectl plugin — whatever the topology of the [`Target`] (see
//! [`funcscale_protocol::connection`]):
//!
//! - **One server**: a [`redis::aio::ConnectionManager`], which reconnects to its address by
//!   itself after an I/O error.
//! - **A Sentinel set's master**: the sentinels are asked for the master (and the master's
//!   `ROLE` is checked) at connect time, and again whenever a command fails the way a failover
//!   makes it fail — the connection drops or is refused, a command times out, or the node
//!   answers `READONLY` because it is a replica now. A watcher also asks a sentinel every
//!   [`Config::check_every`] which node is the master, so a connection that meets no error (an
//!   idle one, or one reading from a demoted master that is still up) switches too. The error
//!   that revealed the failover is still returned: the caller retries as it does for any Redis
//!   error (nothing is re-sent behind its back, so no command runs twice).
//!
//! - **A Redis Cluster**: redis-rs' cluster client ([`redis::cluster_async::ClusterConnection`]),
//!   which sends each command to the master of its key's slot and follows `MOVED`/`ASK`/
//!   `TRYAGAIN` and failovers by itself. A pipeline sent through it must keep to one slot; a
//!   pipeline over many keys goes through [`query_grouped`] (one pipeline per master).
//!
//! A [`Conn`] is cheap to clone; clones share one connection (and, for Sentinel, one watcher,
//! which ends when the last clone is dropped).

mod cluster;

pub use cluster::{Grouped, MAP_TTL, NodeFailure, TRYAGAIN_WAIT, slot_of};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use funcscale_protocol::connection::{SentinelTarget, Target};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How a [`Conn`] connects and how long it waits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Limit on opening one TCP connection (and logging in).
    pub connection_timeout: Duration,
    /// Limit on one command's reply (`None`: wait as long as it takes).
    pub response_timeout: Option<Duration>,
    /// How often the connection manager retries a reconnect before the command fails
    /// (`None`: the library's default).
    pub retries: Option<usize>,
    /// For a Sentinel set: how often a sentinel is asked which node is the master.
    pub check_every: Duration,
    /// Check the login with a `PING` on a plain connection before the manager is made (the
    /// manager retries a refused login for seconds): a refusal is an error at once. `false`:
    /// one connection only, the first command tells.
    pub probe: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connection_timeout: Duration::from_secs(5),
            response_timeout: Some(Duration::from_secs(30)),
            retries: None,
            check_every: Duration::from_secs(1),
            probe: true,
        }
    }
}

impl Config {
    fn manager(&self) -> ConnectionManagerConfig {
        let mut cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(self.response_timeout);
        if let Some(n) = self.retries {
            cfg = cfg.set_number_of_retries(n);
        }
        cfg
    }

    fn plain(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(self.response_timeout)
    }
}

/// A connection to a [`Target`]'s Redis (for a Sentinel set, to its current master). Use it
/// like a [`ConnectionManager`]: it implements [`ConnectionLike`].
#[derive(Clone)]
pub struct Conn(Inner);

#[derive(Clone)]
enum Inner {
    Node(Box<NodeConn>),
    Sentinel(Arc<Shared>),
    Cluster(Arc<cluster::ClusterShared>),
}

#[derive(Clone)]
struct NodeConn {
    manager: ConnectionManager,
    client: Client,
    target: Arc<Target>,
}

/// What the clones of a Sentinel connection share.
struct Shared {
    target: Arc<Target>,
    sentinel: SentinelTarget,
    config: Config,
    /// The sentinels' client: finds the master; its lock makes one failover search at a time.
    finder: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Current>,
    /// Master switches seen since connecting.
    switches: AtomicU64,
    /// A search started after an error is running.
    searching: AtomicBool,
}

#[derive(Clone)]
struct Current {
    manager: ConnectionManager,
    client: Client,
    /// `host:port` of the master.
    addr: String,
    /// Bumped at each switch: a search started before one is not repeated after it.
    generation: u64,
}

/// Pick rustls' crypto provider (ring) for this process, once, before any TLS connection: in a
/// workspace build both of rustls' providers are compiled in (ring for kube, aws-lc-rs for
/// redis), and rustls then refuses to choose — the first `rediss://` connection panicked.
/// [`Conn::connect`] calls it; harmless when a provider is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Conn {
    /// Connect to `target` and (with [`Config::probe`]) check with a `PING` that Redis accepts
    /// the login (a refused one is an error now, not a manager retrying for seconds). For a
    /// Sentinel set, the master the sentinels name, after checking that it is one.
    pub async fn connect(target: &Target, config: &Config) -> RedisResult<Conn> {
        install_crypto_provider();
        let target = Arc::new(target.clone());
        match &*target {
            Target::Node(info) => {
                let client = Client::open(info.clone())?;
                let manager = open(&client, config).await?;
                Ok(Conn(Inner::Node(Box::new(NodeConn {
                    manager,
                    client,
                    target,
                }))))
            }
            Target::Sentinel(s) => {
                let mut finder = sentinel_client(s)?;
                let client =
                    within(config.connection_timeout * 3, finder.async_get_client()).await??;
                let manager = open(&client, config).await?;
                let current = Current {
                    addr: addr_of(&client),
                    manager,
                    client,
                    generation: 0,
                };
                let shared = Arc::new(Shared {
                    sentinel: s.clone(),
                    target,
                    config: config.clone(),
                    finder: tokio::sync::Mutex::new(finder),
                    current: RwLock::new(current),
                    switches: AtomicU64::new(0),
                    searching: AtomicBool::new(false),
                });
                tokio::spawn(watch(Arc::downgrade(&shared)));
                Ok(Conn(Inner::Sentinel(shared)))
            }
            Target::Cluster(c) => {
                let shared = cluster::ClusterShared::connect(target.clone(), c, config).await?;
                Ok(Conn(Inner::Cluster(shared)))
            }
        }
    }

    /// Whether this is a Redis Cluster (a pipeline must keep to one slot, or go through
    /// [`query_grouped`]).
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(_))
    }

    /// [`Conn::connect`] to `url` (credentials in the URL only), with the default [`Config`].
    pub async fn open(url: &str) -> RedisResult<Conn> {
        let target =
            funcscale_protocol::connection::target(url, Default::default()).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "invalid Redis URL",
                    e.to_string(),
                ))
            })?;
        Self::connect(&target, &Config::default()).await
    }

    /// What this connects to.
    pub fn target(&self) -> &Target {
        match &self.0 {
            Inner::Node(n) => &n.target,
            Inner::Sentinel(s) => &s.target,
            Inner::Cluster(c) => &c.target,
        }
    }

    /// `host:port` of the node commands go to now (for Sentinel, the current master); for a
    /// cluster, whose commands go to many nodes, its seed nodes `h1:p1,h2:p2`.
    pub fn node(&self) -> String {
        match &self.0 {
            Inner::Node(n) => addr_of(&n.client),
            Inner::Sentinel(s) => s.current().addr,
            Inner::Cluster(c) => c
                .cluster
                .seeds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The node commands go to and how it was found, for messages: `host:port`,
    /// `host:port (master <name> via sentinels ...)`, or for a cluster
    /// `cluster of N masters h:p,... (cluster via seeds ...)` (the masters of the slot map
    /// [`query_grouped`] last read; `cluster via seeds ...` before it read one).
    pub fn describe(&self) -> String {
        match &self.0 {
            Inner::Node(_) => self.node(),
            Inner::Sentinel(s) => format!("{} ({})", self.node(), s.target.describe()),
            Inner::Cluster(c) => c.describe(),
        }
    }

    /// Bumped at each master switch (always 0 for one server): a [`Conn::dedicated`]
    /// connection opened at another generation points at a node that is no longer the master.
    /// For a cluster: the number of times the slot map [`query_grouped`] reads (every
    /// [`MAP_TTL`], after a `MOVED` or a failed node) gave some slots another master — a
    /// [`Conn::dedicated_for`] connection opened at another generation may serve the slot no
    /// more (redis-rs' own routing follows by itself and is not counted).
    pub fn generation(&self) -> u64 {
        match &self.0 {
            Inner::Node(_) => 0,
            Inner::Sentinel(s) => s.current().generation,
            Inner::Cluster(c) => c.switches.load(Ordering::Relaxed),
        }
    }

    /// Master switches this connection followed (always 0 for one server; for a cluster, the
    /// slot map changes [`Conn::generation`] counts).
    pub fn switches(&self) -> u64 {
        match &self.0 {
            Inner::Node(_) => 0,
            Inner::Sentinel(s) => s.switches.load(Ordering::Relaxed),
            Inner::Cluster(c) => c.switches.load(Ordering::Relaxed),
        }
    }

    /// For a cluster: `host:port` of the master serving `key`'s slot in the slot map last
    /// read — by [`query_grouped`], [`Conn::dedicated_for`], [`Conn::each_master`] or
    /// [`Conn::read_slot_map`] (`None` before one was read, and for other topologies).
    pub fn master_of(&self, key: &[u8]) -> Option<String> {
        match &self.0 {
            Inner::Cluster(c) => c.master_of(key),
            _ => None,
        }
    }

    /// For a cluster: read the slot map (`CLUSTER SLOTS`) when none was read yet, or it is
    /// older than [`MAP_TTL`] or a failure marked it stale, so that [`Conn::master_of`],
    /// [`Conn::cluster_masters`] and [`Conn::describe`] answer from it — a connection that only
    /// sends commands through itself (redis-rs routes them) never reads one otherwise. A no-op
    /// for other topologies.
    pub async fn read_slot_map(&self) -> RedisResult<()> {
        match &self.0 {
            Inner::Cluster(c) => c.read_map().await,
            _ => Ok(()),
        }
    }

    /// For a cluster: `host:port` of the master [`query_grouped`] sends `cmd` to, the master
    /// of its first key's slot in the slot map last read (`None` for a keyless command, before
    /// a map was read, and for other topologies). Names the node in the message of a command's
    /// error.
    pub fn master_of_command(&self, cmd: &redis::Cmd) -> Option<String> {
        match (&self.0, cluster::route(cmd)) {
            (Inner::Cluster(c), cluster::Route::Slot(slot)) => c.master_of_slot(slot),
            _ => None,
        }
    }

    /// For a cluster: the number of masters in the slot map last read (0 before one was read,
    /// and for other topologies).
    pub fn cluster_masters(&self) -> usize {
        match &self.0 {
            Inner::Cluster(c) => c.master_count(),
            _ => 0,
        }
    }

    /// For a cluster: a connection to each of its masters (`host:port` and a plain
    /// connection, from the slot map [`query_grouped`] keeps), e.g. to `SCAN` every node: a
    /// keyless command sent through the `Conn` itself reaches one node only. `None` for one
    /// server or a Sentinel set (the `Conn` reaches all keys).
    pub async fn each_master(&self) -> RedisResult<Option<Vec<(String, MultiplexedConnection)>>> {
        match &self.0 {
            Inner::Cluster(c) => Ok(Some(c.each_master().await?)),
            _ => Ok(None),
        }
    }

    /// A plain connection of its own to the master that serves `key`'s hash slot now (on a
    /// cluster, from the slot map [`query_grouped`] keeps; elsewhere the same as
    /// [`Conn::dedicated`]), e.g. for a blocking `BLMOVE` on that key. Also returns the node,
    /// `host:port (cluster, slots a-b)` on a cluster. It does not follow a slot migration or a
    /// failover: open a new one after an error and when [`Conn::generation`] moved on.
    pub async fn dedicated_for(
        &self,
        key: &[u8],
        config: &AsyncConnectionConfig,
    ) -> RedisResult<(String, MultiplexedConnection)> {
        match &self.0 {
            Inner::Cluster(c) => c.dedicated_for(key, config).await,
            _ => Ok((self.node(), self.dedicated(config).await?)),
        }
    }

    /// A connection of its own to the current node, e.g. for blocking commands (`BLMOVE`) that
    /// must not hold up the shared one. It does not follow a failover: open a new one after an
    /// error (report it with [`Conn::after_error`]) and when [`Conn::generation`] moved on
    /// since it was opened.
    pub async fn dedicated(
        &self,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let client = match &self.0 {
            Inner::Node(n) => n.client.clone(),
            Inner::Sentinel(s) => s.current().client,
            Inner::Cluster(c) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a Redis Cluster has no one node: use Conn::dedicated_for(key)",
                    c.target.describe(),
                )));
            }
        };
        client
            .get_multiplexed_async_connection_with_config(config)
            .await
    }

    /// After an error on a [`Conn::dedicated`] / [`Conn::dedicated_for`] connection: for a
    /// Sentinel set, check the master when `e` is how a failover shows; for a cluster, read
    /// the slot map again before its next use (a `MOVED`, a migration or a failed master);
    /// no-op for one server.
    pub fn after_error(&self, e: &redis::RedisError) {
        match &self.0 {
            Inner::Sentinel(s) => {
                let seen = s.current().generation;
                Shared::after_error(s, e, seen);
            }
            Inner::Cluster(c) => c.mark_stale(),
            Inner::Node(_) => {}
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Shared {
    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After `e` on the connection of generation `seen`: when it is how a failover shows,
    /// search the master again, in the background (the caller gets its error at once; while
    /// the old master is gone, a search can wait for connect timeouts). One search at a time.
    fn after_error(this: &Arc<Self>, e: &redis::RedisError, seen: u64) {
        if !failover_sign(e) || this.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = this.clone();
        tokio::spawn(async move {
            if let Err(err) = s.switch(seen, None).await {
                tracing::debug!(error = %err, master = %s.sentinel.master, "master not found yet");
            }
            s.searching.store(false, Ordering::Release);
        });
    }

    /// Ask the sentinels for the master; when it is not the node of generation `seen` (and no
    /// other search has switched since), connect to it and make it current. `named`: the
    /// address a sentinel just named, when the watcher saw it differ.
    async fn switch(&self, seen: u64, named: Option<&str>) -> RedisResult<bool> {
        let mut finder = self.finder.lock().await;
        let now = self.current();
        if now.generation != seen {
            return Ok(false); // another search switched meanwhile
        }
        if named.is_some_and(|n| n == now.addr) {
            return Ok(false);
        }
        let client = within(
            self.config.connection_timeout * 3,
            finder.async_get_client(),
        )
        .await??;
        let addr = addr_of(&client);
        if addr == now.addr {
            return Ok(false); // still the master: the manager reconnects by itself
        }
        let manager = open(&client, &self.config).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current {
            manager,
            client,
            addr: addr.clone(),
            generation: seen + 1,
        };
        self.switches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            master = %self.sentinel.master,
            from = %now.addr,
            to = %addr,
            "Redis master switched (Sentinel failover): commands go to the new master"
        );
        Ok(true)
    }
}

/// How long the watcher waits for a sentinel (connect, and each answer): short, so that a
/// sentinel that went down with the master (a sidecar) costs little before the next is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Every [`Config::check_every`], ask a sentinel which node is the master; switch when it is
/// not the current one. The sentinels are asked in turn from the one that last answered: one
/// that does not answer is left for the next. Ends when the last [`Conn`] clone is dropped.
async fn watch(shared: Weak<Shared>) {
    let mut sentinel: Option<(usize, MultiplexedConnection)> = None;
    let mut next = 0;
    loop {
        let every = match shared.upgrade() {
            Some(s) => s.config.check_every,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(s) = shared.upgrade() else { return };
        let seen = s.current().generation;
        let named = match ask_master(&s, &mut sentinel, &mut next).await {
            Some(addr) => addr,
            None => continue, // no sentinel answered, or none knows the master right now
        };
        if named != s.current().addr
            && let Err(e) = s.switch(seen, Some(&named)).await
        {
            tracing::debug!(error = %e, master = %s.sentinel.master, "master not reachable yet");
        }
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` (`host:port`) from the cached sentinel connection, else
/// from the sentinels in turn starting at `next`.
async fn ask_master(
    s: &Shared,
    cached: &mut Option<(usize, MultiplexedConnection)>,
    next: &mut usize,
) -> Option<String> {
    let n = s.sentinel.sentinels.len();
    for _ in 0..=n {
        if cached.is_none() {
            let i = *next % n;
            *next = i + 1;
            match within(SENTINEL_TIMEOUT, sentinel_connection(s, i)).await {
                Ok(Ok(c)) => *cached = Some((i, c)),
                Ok(Err(e)) | Err(e) => {
                    tracing::debug!(error = %e, sentinel = %s.sentinel.sentinels[i], "sentinel not reachable");
                    continue;
                }
            }
        }
        let (i, con) = cached.as_mut().expect("set above");
        let reply = within(
            SENTINEL_TIMEOUT,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&s.sentinel.master)
                .query_async::<Option<(String, u16)>>(con),
        )
        .await;
        match reply {
            Ok(Ok(addr)) => {
                *next = *i; // keep asking the one that answers
                return addr.map(|(host, port)| format!("{host}:{port}"));
            }
            Ok(Err(e)) | Err(e) => {
                tracing::debug!(error = %e, sentinel = %s.sentinel.sentinels[*i], "sentinel did not answer");
                *next = *i + 1;
                *cached = None;
            }
        }
    }
    None
}

/// A connection to sentinel `i` with the sentinels' login and short timeouts.
async fn sentinel_connection(s: &Shared, i: usize) -> RedisResult<MultiplexedConnection> {
    use redis::IntoConnectionInfo as _;
    let info = s.sentinel.sentinels[i]
        .clone()
        .into_connection_info()?
        .set_redis_settings(s.sentinel.sentinel_auth.clone());
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    Client::open(info)?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Whether `e` is how a failover shows on the old master's connection: it dropped, was
/// refused, timed out, or the node is a replica now (`READONLY`, or `UNBLOCKED` for a blocked
/// command).
pub fn failover_sign(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
        || e.to_string().contains("READONLY")
        // a blocked client released because the node changed role (master → replica)
        || e.to_string().contains("UNBLOCKED")
}

fn sentinel_client(s: &SentinelTarget) -> RedisResult<SentinelClient> {
    let mut b = SentinelClientBuilder::new(
        s.sentinels.iter().cloned(),
        &s.master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_db(s.node.db());
    if let Some(u) = s.node.username() {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = s.node.password() {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(u) = s.sentinel_auth.username() {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = s.sentinel_auth.password() {
        b = b.set_client_to_sentinel_password(p);
    }
    if let Some(insecure) = s.tls {
        let mode = if insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        };
        b = b
            .set_client_to_redis_tls_mode(mode)
            .set_client_to_sentinel_tls_mode(mode);
    }
    b.build()
}

/// A manager for `client`, after a plain connection's `PING` showed the login works
/// ([`Config::probe`]).
async fn open(client: &Client, config: &Config) -> RedisResult<ConnectionManager> {
    if config.probe {
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&config.plain())
            .await?;
        redis::cmd("PING").query_async::<()>(&mut probe).await?;
    }
    within(
        config.connection_timeout + Duration::from_millis(500),
        client.get_connection_manager_with_config(config.manager()),
    )
    .await?
}

async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> RedisResult<T> {
    tokio::time::timeout(limit, f).await.map_err(|_| {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        ))
    })
}

fn addr_of(client: &Client) -> String {
    funcscale_protocol::connection::node(client.get_connection_info())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Node(n) => n.manager.req_packed_command(cmd),
            Inner::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let Current {
                        mut manager,
                        generation,
                        ..
                    } = s.current();
                    let r = manager.req_packed_command(cmd).await;
                    if let Err(e) = &r {
                        Shared::after_error(&s, e, generation);
                    }
                    r
                })
            }
            Inner::Cluster(c) => {
                let mut conn = c.conn.clone();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Node(n) => n.manager.req_packed_commands(pipeline, offset, count),
            Inner::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let Current {
                        mut manager,
                        generation,
                        ..
                    } = s.current();
                    let r = manager.req_packed_commands(pipeline, offset, count).await;
                    if let Err(e) = &r {
                        Shared::after_error(&s, e, generation);
                    }
                    r
                })
            }
            Inner::Cluster(c) => {
                let mut conn = c.conn.clone();
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        self.target().db()
    }
}

/// Send `pipe` and give back one reply per command, in the pipeline's order. A transaction
/// (`pipe.atomic()`) is refused: every command fails.
///
/// - **One server / Sentinel**: the pipeline is sent as it is; when it fails (the node does not
///   answer...), every command gets that failure, naming the node.
/// - **Cluster**: the commands are split by the slot of each one's first key and grouped per
///   master (the slot map from `CLUSTER SLOTS`, read every [`MAP_TTL`] and after a `MOVED`);
///   the groups are sent concurrently, one pipeline per master on a connection of its own.
///   `SCRIPT ...` commands go into every group that runs a script (`EVAL*`, `FCALL*`), the
///   reply is the first group's; other keyless commands go to one master. A `MOVED` reply
///   makes the map be read again and the command be sent to the new master; `ASK` sends
///   `ASKING` and the command to the node named; `TRYAGAIN` re-sends once after
///   [`TRYAGAIN_WAIT`]. A master that fails (down, refusing, timed out) fails only the
///   commands it was sent, each naming it `host:port (cluster, slots a-b)`. Commands may
///   therefore be sent more than once: use it for reads and idempotent writes.
pub async fn query_grouped(conn: &mut Conn, pipe: &Pipeline) -> Grouped {
    if pipe.is_transaction() {
        let f = NodeFailure {
            node: conn.describe(),
            error: redis::RedisError::from((
                redis::ErrorKind::Client,
                "query_grouped sends no transaction",
                "send a MULTI/EXEC (of keys of one slot) through the Conn itself".to_string(),
            )),
        };
        return Grouped((0..pipe.len()).map(|_| Err(f.clone())).collect());
    }
    match &conn.0 {
        Inner::Cluster(c) => cluster::query_grouped(c, pipe).await,
        _ => {
            let n = pipe.len();
            match conn.req_packed_commands(pipe, 0, n).await {
                Ok(values) => Grouped(values.into_iter().map(Ok).collect()),
                Err(error) => {
                    let f = NodeFailure {
                        node: conn.describe(),
                        error,
                    };
                    Grouped((0..n).map(|_| Err(f.clone())).collect())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use funcscale_protocol::connection::{Credentials, Target, target};

    #[test]
    fn a_tls_sentinel_url_uses_tls_to_the_sentinels_and_the_nodes() {
        let t = target("rediss+sentinel://s1/m#insecure", Credentials::default()).unwrap();
        let Target::Sentinel(s) = &t else {
            panic!("{t:?}")
        };
        assert_eq!((s.tls, s.node.db()), (Some(true), 0));
        assert!(matches!(
            s.sentinels[0],
            redis::ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        let t = target("rediss+sentinel://s1/m", Credentials::default()).unwrap();
        let Target::Sentinel(s) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(s.tls, Some(false));
    }

    #[test]
    fn a_tls_cluster_url_uses_tls_to_every_node() {
        let t = target(
            "rediss+cluster://n1:7000,n2#insecure",
            Credentials::default(),
        )
        .unwrap();
        let Target::Cluster(c) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(c.tls, Some(true));
        assert!(matches!(
            c.seeds[1],
            redis::ConnectionAddr::TcpTls {
                insecure: true,
                port: 6379,
                ..
            }
        ));
        // a node the cluster names (CLUSTER SLOTS gives host and port) gets TLS and the login
        let info = c.info_for(redis::ConnectionAddr::Tcp("10.0.0.9".into(), 7005));
        assert!(matches!(
            info.addr(),
            redis::ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        let t = target("redis+cluster://n1:7000", Credentials::default()).unwrap();
        let Target::Cluster(c) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(c.tls, None);
        let info = c.info_for(redis::ConnectionAddr::Tcp("10.0.0.9".into(), 7005));
        assert!(matches!(info.addr(), redis::ConnectionAddr::Tcp(..)));
    }

    #[test]
    fn failover_signs_are_dropped_refused_timed_out_or_readonly() {
        let io = |k| redis::RedisError::from(std::io::Error::new(k, "x"));
        assert!(super::failover_sign(&io(
            std::io::ErrorKind::ConnectionRefused
        )));
        assert!(super::failover_sign(&io(std::io::ErrorKind::BrokenPipe)));
        assert!(super::failover_sign(&io(std::io::ErrorKind::TimedOut)));
        let server = |text: &str| {
            redis::RedisError::from((redis::ErrorKind::Extension, "server", text.to_string()))
        };
        assert!(super::failover_sign(&server(
            "READONLY You can't write against a read only replica."
        )));
        assert!(!super::failover_sign(&server(
            "NOSCRIPT No matching script"
        )));
        assert!(!super::failover_sign(&server(
            "WRONGTYPE Operation against a key"
        )));
    }
}

//! Redis Cluster: the shared state of a [`crate::Conn`] to a cluster, and
//! [`query_grouped`]'s per-master pipelines.
//!
//! Commands sent through the [`crate::Conn`] itself go through redis-rs'
//! [`ClusterConnection`], which routes each command by its key and follows `MOVED`/`ASK`/
//! `TRYAGAIN` by itself, but sends a pipeline to one node only (the slot of its first key) and
//! refuses one whose keys are in several slots. [`query_grouped`] instead splits a pipeline by
//! the slot of each command's first key and sends **one pipeline per master**, concurrently, on
//! plain connections of its own, with a slot map of its own read from `CLUSTER SLOTS` (every
//! [`MAP_TTL`], and again after a `MOVED` or a node failing).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use funcscale_protocol::connection::{ClusterTarget, Target};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, ConnectionAddr, Pipeline, RedisError, RedisResult, Value};

use crate::{Config, within};

/// How long a slot map is used before `CLUSTER SLOTS` is asked again.
pub const MAP_TTL: Duration = Duration::from_secs(30);
/// The wait before a command that got `TRYAGAIN` (a slot being migrated) is sent again, once.
pub const TRYAGAIN_WAIT: Duration = Duration::from_millis(50);
/// Rounds of re-sending after `MOVED` / `ASK` / `TRYAGAIN` before a command's error is given
/// back.
const ROUNDS: usize = 3;

/// What the clones of a cluster connection share.
pub(crate) struct ClusterShared {
    pub(crate) target: Arc<Target>,
    pub(crate) cluster: ClusterTarget,
    pub(crate) config: Config,
    /// redis-rs' cluster client: the [`ConnectionLike`] of the [`crate::Conn`].
    pub(crate) conn: ClusterConnection,
    map: RwLock<Option<SlotMap>>,
    /// One plain connection per master `host:port` (for [`query_grouped`]).
    masters: tokio::sync::Mutex<HashMap<String, MultiplexedConnection>>,
    /// One refresh of the map at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// A master failed since the map was read: read it again before the next use.
    stale: std::sync::atomic::AtomicBool,
    /// Times the slot map read changed which master serves some slots.
    pub(crate) switches: AtomicU64,
}

/// Which master serves which slots, as `CLUSTER SLOTS` said at `read_at`.
#[derive(Clone, Debug)]
struct SlotMap {
    /// `(first, last, master host:port)`, sorted by `first`.
    ranges: Vec<(u16, u16, String)>,
    read_at: Instant,
}

impl SlotMap {
    fn master_of(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, addr) = self.ranges.get(i.checked_sub(1)?)?;
        (*first..=*last).contains(&slot).then_some(addr.as_str())
    }

    /// `host:port (cluster, slots a-b,c-d)`: names a master in messages.
    fn describe(&self, addr: &str) -> String {
        let slots: Vec<String> = self
            .ranges
            .iter()
            .filter(|(_, _, a)| a == addr)
            .map(|(f, l, _)| {
                if f == l {
                    f.to_string()
                } else {
                    format!("{f}-{l}")
                }
            })
            .collect();
        if slots.is_empty() {
            format!("{addr} (cluster)")
        } else {
            format!("{addr} (cluster, slots {})", slots.join(","))
        }
    }

    fn masters(&self) -> Vec<String> {
        let mut m: Vec<String> = self.ranges.iter().map(|(_, _, a)| a.clone()).collect();
        m.sort();
        m.dedup();
        m
    }

    /// Whether `other` gives any slot another master.
    fn differs(&self, other: &SlotMap) -> bool {
        self.ranges != other.ranges
    }
}

impl ClusterShared {
    pub(crate) async fn connect(
        target: Arc<Target>,
        cluster: &ClusterTarget,
        config: &Config,
    ) -> RedisResult<Arc<Self>> {
        let mut b = redis::cluster::ClusterClient::builder(cluster.seed_infos())
            .connection_timeout(config.connection_timeout);
        if let Some(t) = config.response_timeout {
            b = b.response_timeout(t);
        }
        if let Some(n) = config.retries {
            b = b.retries(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let client = b.build()?;
        let conn = within(config.connection_timeout * 3, client.get_async_connection()).await??;
        let shared = Arc::new(Self {
            target,
            cluster: cluster.clone(),
            config: config.clone(),
            conn,
            map: RwLock::new(None),
            masters: tokio::sync::Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            stale: std::sync::atomic::AtomicBool::new(false),
            switches: AtomicU64::new(0),
        });
        if config.probe {
            let mut c = shared.conn.clone();
            redis::cmd("PING").query_async::<()>(&mut c).await?;
        }
        Ok(shared)
    }

    fn map(&self) -> Option<SlotMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The master of `key`'s slot in the last slot map read.
    pub(crate) fn master_of(&self, key: &[u8]) -> Option<String> {
        self.master_of_slot(slot_of(key))
    }

    /// The master of `slot` in the last slot map read.
    pub(crate) fn master_of_slot(&self, slot: u16) -> Option<String> {
        self.map()?.master_of(slot).map(ToString::to_string)
    }

    /// The number of masters in the last slot map read (0: none read yet).
    pub(crate) fn master_count(&self) -> usize {
        self.map().map_or(0, |m| m.masters().len())
    }

    /// The slot map, read again when older than [`MAP_TTL`] (or when `force`, unless another
    /// caller read it after `seen`).
    async fn current_map(&self, force: Option<Instant>) -> RedisResult<SlotMap> {
        let fresh = |m: &SlotMap| {
            m.read_at.elapsed() < MAP_TTL
                && force.is_none_or(|seen| m.read_at > seen)
                && !self.stale.load(Ordering::Acquire)
        };
        if let Some(m) = self.map().filter(fresh) {
            return Ok(m);
        }
        let _one = self.refreshing.lock().await;
        if let Some(m) = self.map().filter(fresh) {
            return Ok(m); // read while this caller waited
        }
        let old = self.map();
        // the masters known, then the seeds: the first that answers
        let mut candidates: Vec<ConnectionAddr> = old
            .as_ref()
            .map(|m| m.masters().iter().filter_map(|a| parse_addr(a)).collect())
            .unwrap_or_default();
        candidates.extend(self.cluster.seeds.iter().cloned());
        let mut last = None;
        for addr in candidates {
            match self.read_slots(&addr).await {
                Ok(map) => {
                    if let Some(old) = &old
                        && old.differs(&map)
                    {
                        self.switches.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(masters = ?map.masters(), "Redis Cluster slot map changed");
                    }
                    *self.map.write().unwrap_or_else(|e| e.into_inner()) = Some(map.clone());
                    self.stale.store(false, Ordering::Release);
                    return Ok(map);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "no cluster node to ask for the slot map",
            ))
        }))
    }

    /// `CLUSTER SLOTS` of the node at `addr`.
    async fn read_slots(&self, addr: &ConnectionAddr) -> RedisResult<SlotMap> {
        let (host, port) = host_port(addr);
        let mut con = self.plain(addr.clone()).await?;
        let reply: Value = within(
            self.config
                .response_timeout
                .unwrap_or(Duration::from_secs(30)),
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut con),
        )
        .await??;
        let Value::Array(items) = reply else {
            return Err(bad_slots(format!("{reply:?}")));
        };
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let Value::Array(fields) = &item else {
                return Err(bad_slots(format!("{item:?}")));
            };
            let (Some(first), Some(last), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad_slots(format!("{item:?}")));
            };
            let int = |v: &Value| match v {
                Value::Int(i) => u16::try_from(*i).ok(),
                _ => None,
            };
            let (Some(first), Some(last)) = (int(first), int(last)) else {
                return Err(bad_slots(format!("{item:?}")));
            };
            let mhost = match master.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            // an empty or unknown host: the node that answered
            let mhost = if mhost.is_empty() || mhost == "?" {
                host.clone()
            } else {
                mhost
            };
            let Some(mport) = master.get(1).and_then(int) else {
                return Err(bad_slots(format!("{item:?}")));
            };
            ranges.push((first, last, join_host_port(&mhost, mport)));
        }
        if ranges.is_empty() {
            return Err(bad_slots(format!("no slots (asked {host}:{port})")));
        }
        ranges.sort();
        Ok(SlotMap {
            ranges,
            read_at: Instant::now(),
        })
    }

    /// A new plain connection to `addr` with the cluster's login, TLS and timeouts.
    async fn plain(&self, addr: ConnectionAddr) -> RedisResult<MultiplexedConnection> {
        let client = Client::open(self.cluster.info_for(addr))?;
        within(
            self.config.connection_timeout + Duration::from_millis(500),
            client.get_multiplexed_async_connection_with_config(&self.config.plain()),
        )
        .await?
    }

    /// The cached plain connection to master `addr` (opened when there is none).
    async fn master(&self, addr: &str) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.masters.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let a = parse_addr(addr).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster node address that does not parse",
                addr.to_string(),
            ))
        })?;
        let c = self.plain(a).await?;
        self.masters
            .lock()
            .await
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// After master `addr` failed: drop its connection, read the map again before the next
    /// use (it may have failed over).
    async fn forget(&self, addr: &str) {
        self.masters.lock().await.remove(addr);
        self.stale.store(true, Ordering::Release);
    }

    /// A connection to each master of the slot map (read again when old): `(host:port, conn)`.
    pub(crate) async fn each_master(&self) -> RedisResult<Vec<(String, MultiplexedConnection)>> {
        let map = self.current_map(None).await?;
        let mut out = Vec::new();
        for addr in map.masters() {
            let c = self.master(&addr).await?;
            out.push((addr, c));
        }
        Ok(out)
    }

    /// Read the slot map when none is current (see [`Self::current_map`]).
    pub(crate) async fn read_map(&self) -> RedisResult<()> {
        self.current_map(None).await.map(|_| ())
    }

    /// Read the slot map again before its next use.
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// A plain connection of its own to the master serving `key`'s slot now.
    pub(crate) async fn dedicated_for(
        &self,
        key: &[u8],
        config: &redis::AsyncConnectionConfig,
    ) -> RedisResult<(String, MultiplexedConnection)> {
        let map = self.current_map(None).await?;
        let slot = slot_of(key);
        let addr = map
            .master_of(slot)
            .ok_or_else(|| uncovered(slot))?
            .to_string();
        let a = parse_addr(&addr).ok_or_else(|| uncovered(slot))?;
        let client = Client::open(self.cluster.info_for(a))?;
        let c = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        Ok((map.describe(&addr), c))
    }

    /// `describe()` of the connection: the masters of the last map read.
    pub(crate) fn describe(&self) -> String {
        match self.map() {
            Some(m) => format!(
                "cluster of {} masters {} ({})",
                m.masters().len(),
                m.masters().join(","),
                self.target.describe()
            ),
            None => self.target.describe(),
        }
    }
}

fn bad_slots(detail: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected CLUSTER SLOTS reply",
        detail,
    ))
}

fn uncovered(slot: u16) -> RedisError {
    RedisError::from((
        redis::ErrorKind::ClusterConnectionNotFound,
        "no master serves the slot",
        format!("slot {slot}"),
    ))
}

fn host_port(addr: &ConnectionAddr) -> (String, u16) {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => (h.clone(), *p),
        other => (other.to_string(), 0),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn parse_addr(addr: &str) -> Option<ConnectionAddr> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(ConnectionAddr::Tcp(host.to_string(), port.parse().ok()?))
}

/// The hash slot of `key` (CRC16-XMODEM of its hash tag, see [`funcscale_protocol::keys::slot`]),
/// for keys that need not be UTF-8.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &byte in tagged.unwrap_or(key) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Where a command goes on a cluster.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The slot of its first key.
    Slot(u16),
    /// `SCRIPT ...`: into every group that runs a script (`EVAL*`/`FCALL*`); its one reply is
    /// the best of theirs (an answer over a server error over a failed node).
    Script,
    /// No key (`PING`, `INFO`, an `EVALSHA` with no key...): to one master.
    Keyless,
}

/// The route of `cmd`: the slot of its first key (`EVAL`/`EVALSHA`/`FCALL`: the first of its
/// declared keys; `XREAD`: the first stream; `OBJECT`/`XINFO`/`XGROUP`/`MEMORY USAGE`: the
/// argument after the subcommand), else keyless.
pub(crate) fn route(cmd: &Cmd) -> Route {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        })
        .collect();
    let Some(name) = args.first() else {
        return Route::Keyless;
    };
    let name = name.to_ascii_uppercase();
    let key = |i: usize| {
        args.get(i)
            .map_or(Route::Keyless, |k| Route::Slot(slot_of(k)))
    };
    match name.as_slice() {
        b"SCRIPT" => Route::Script,
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let n = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if n == 0 { Route::Keyless } else { key(3) }
        }
        b"XREAD" | b"XREADGROUP" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
            .map_or(Route::Keyless, |i| key(i + 1)),
        b"OBJECT" | b"XINFO" | b"XGROUP" | b"MEMORY" => key(2),
        b"PING" | b"ECHO" | b"INFO" | b"TIME" | b"DBSIZE" | b"CLIENT" | b"CLUSTER" | b"CONFIG"
        | b"COMMAND" | b"ACL" | b"AUTH" | b"HELLO" | b"SELECT" | b"FUNCTION" | b"LASTSAVE"
        | b"SLOWLOG" | b"LATENCY" | b"ROLE" | b"WAIT" | b"RANDOMKEY" | b"SCAN" | b"KEYS"
        | b"READONLY" | b"READWRITE" | b"ASKING" | b"MULTI" | b"EXEC" | b"DISCARD" => {
            Route::Keyless
        }
        _ => key(1),
    }
}

fn runs_script(cmd: &Cmd) -> bool {
    cmd.args_iter().next().is_some_and(|a| match a {
        redis::Arg::Simple(a) => {
            let a = a.to_ascii_uppercase();
            a.starts_with(b"EVAL") || a.starts_with(b"FCALL")
        }
        _ => false,
    })
}

/// A command whose node did not answer (down, refusing, timed out) or whose error stayed after
/// the re-sends: the node it went to, and why.
#[derive(Clone, Debug)]
pub struct NodeFailure {
    /// `host:port`, for a cluster `host:port (cluster, slots a-b)`.
    pub node: String,
    /// What the client got.
    pub error: RedisError,
}

impl std::fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.node, self.error)
    }
}

impl std::error::Error for NodeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl NodeFailure {
    /// As a [`RedisError`] of the same kind whose text names the node.
    pub fn into_redis(self) -> RedisError {
        if self.error.to_string().contains(&self.node) {
            return self.error;
        }
        RedisError::from((
            self.error.kind(),
            "Redis node failed",
            format!("{}: {}", self.node, self.error),
        ))
    }
}

/// The replies of [`query_grouped`], one per command of the pipeline, in its order: the
/// reply (a server error such as `WRONGTYPE` as [`Value::ServerError`], as
/// [`redis::aio::ConnectionLike::req_packed_commands`] gives it), or the failure of the node
/// the command went to.
#[derive(Debug)]
pub struct Grouped(pub Vec<Result<Value, NodeFailure>>);

impl Grouped {
    /// The replies, or the first failure; a server error in a reply is an error too (as for
    /// [`Pipeline::query_async`]).
    pub fn into_values(self) -> RedisResult<Vec<Value>> {
        self.0
            .into_iter()
            .map(|r| match r {
                Ok(Value::ServerError(e)) => Err(RedisError::from(e)),
                Ok(v) => Ok(v),
                Err(f) => Err(f.into_redis()),
            })
            .collect()
    }

    /// The indexes (in the pipeline) of the commands whose node failed, with the failure.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &NodeFailure)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|f| (i, f)))
    }
}

/// One round: commands `(index in the pipeline, ASK target)` per master.
type Plan = BTreeMap<String, Vec<(usize, bool)>>;

pub(crate) async fn query_grouped(shared: &ClusterShared, pipe: &Pipeline) -> Grouped {
    let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
    let n = cmds.len();
    let mut out: Vec<Option<Result<Value, NodeFailure>>> = (0..n).map(|_| None).collect();
    if n == 0 {
        return Grouped(Vec::new());
    }
    let routes: Vec<Route> = cmds.iter().map(|c| route(c)).collect();
    let scripts: Vec<usize> = (0..n).filter(|&i| routes[i] == Route::Script).collect();
    // the commands still to send: (index, ASK target if any)
    let mut todo: Vec<(usize, Option<String>)> = (0..n)
        .filter(|&i| routes[i] != Route::Script)
        .map(|i| (i, None))
        .collect();
    let mut map_seen: Option<Instant> = None;
    for round in 0..=ROUNDS {
        let map = match shared.current_map(map_seen).await {
            Ok(m) => m,
            Err(e) => {
                let f = NodeFailure {
                    node: shared.target.describe(),
                    error: e,
                };
                for slot in out.iter_mut().filter(|o| o.is_none()) {
                    *slot = Some(Err(f.clone()));
                }
                break;
            }
        };
        let mut plan: Plan = BTreeMap::new();
        for (i, ask) in &todo {
            let addr = match (ask, &routes[*i]) {
                (Some(a), _) => a.clone(),
                (None, Route::Slot(s)) => match map.master_of(*s) {
                    Some(a) => a.to_string(),
                    None => {
                        out[*i] = Some(Err(NodeFailure {
                            node: "no master".into(),
                            error: uncovered(*s),
                        }));
                        continue;
                    }
                },
                // keyless: the first master
                (None, _) => match map.masters().into_iter().next() {
                    Some(a) => a,
                    None => continue,
                },
            };
            plan.entry(addr).or_default().push((*i, ask.is_some()));
        }
        if round == 0 && !scripts.is_empty() {
            let evals = plan
                .values()
                .any(|items| items.iter().any(|(i, _)| runs_script(cmds[*i])));
            if !evals {
                // no script runs: the SCRIPT commands go to one master (every master when
                // nothing else is sent: a script loaded on each)
                match plan.values_mut().next() {
                    Some(items) => items.extend(scripts.iter().map(|&s| (s, false))),
                    None => {
                        for m in map.masters() {
                            plan.entry(m)
                                .or_default()
                                .extend(scripts.iter().map(|&s| (s, false)));
                        }
                    }
                }
            }
        }
        let cmds = &cmds;
        let sends = plan.into_iter().map(|(addr, mut items)| {
            // SCRIPT LOAD... copied into a group that runs a script, before its commands
            if items.iter().any(|(i, _)| runs_script(cmds[*i])) {
                items.extend(scripts.iter().map(|&s| (s, false)));
            }
            items.sort();
            items.dedup();
            let node = map.describe(&addr);
            async move {
                let mut p = redis::pipe();
                for (i, ask) in &items {
                    if *ask {
                        p.cmd("ASKING");
                    }
                    p.add_command(cmds[*i].clone());
                }
                let sent = async {
                    let mut con = shared.master(&addr).await?;
                    let limit = shared
                        .config
                        .response_timeout
                        .unwrap_or(Duration::from_secs(30));
                    within(limit, con.req_packed_commands(&p, 0, p.len())).await?
                }
                .await;
                (addr, node, items, sent)
            }
        });
        let results = futures::future::join_all(sends).await;
        let mut next = Vec::new();
        let mut moved = false;
        let mut tryagain = false;
        for (addr, node, items, sent) in results {
            match sent {
                Ok(values) => {
                    // skip the ASKING replies
                    let mut values = values.into_iter();
                    for (i, ask) in items {
                        if ask {
                            values.next();
                        }
                        let v = values.next().unwrap_or(Value::Nil);
                        let redirect = match &v {
                            Value::ServerError(e) if round < ROUNDS => e.kind(),
                            _ => None,
                        };
                        match redirect {
                            Some(redis::ServerErrorKind::Moved) => {
                                moved = true;
                                next.push((i, None));
                            }
                            Some(redis::ServerErrorKind::Ask) => {
                                let to = match &v {
                                    Value::ServerError(e) => RedisError::from(e.clone())
                                        .redirect_node()
                                        .map(|(a, _)| a.to_string()),
                                    _ => None,
                                };
                                match to {
                                    Some(to) => next.push((i, Some(to))),
                                    None => out[i] = Some(Ok(v)),
                                }
                            }
                            Some(redis::ServerErrorKind::TryAgain) if !tryagain_done(round) => {
                                tryagain = true;
                                next.push((i, None));
                            }
                            _ => keep(&mut out[i], &routes[i], Ok(v)),
                        }
                    }
                }
                Err(error) => {
                    shared.forget(&addr).await;
                    tracing::debug!(node = %node, error = %error, "Redis Cluster node failed");
                    let f = NodeFailure { node, error };
                    for (i, _) in items {
                        keep(&mut out[i], &routes[i], Err(f.clone()));
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        if moved {
            map_seen = Some(map.read_at);
        }
        if tryagain {
            tokio::time::sleep(TRYAGAIN_WAIT).await;
        }
        todo = next;
    }
    Grouped(
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(NodeFailure {
                        node: shared.target.describe(),
                        error: RedisError::from((
                            redis::ErrorKind::ClusterConnectionNotFound,
                            "no master to send the command to",
                        )),
                    })
                })
            })
            .collect(),
    )
}

/// Store `reply` as the reply of a command. A `SCRIPT` command is sent to every master that
/// runs a script and has one reply: the best of theirs — an answer over a server error over a
/// failed node — so that one dead master does not make the script look unloaded for the
/// commands of the others (each of which answers, or fails, on its own).
fn keep(
    out: &mut Option<Result<Value, NodeFailure>>,
    route: &Route,
    reply: Result<Value, NodeFailure>,
) {
    fn rank(r: &Result<Value, NodeFailure>) -> u8 {
        match r {
            Ok(Value::ServerError(_)) => 1,
            Ok(_) => 2,
            Err(_) => 0,
        }
    }
    let better = match (route, out.as_ref()) {
        (Route::Script, Some(old)) => rank(&reply) > rank(old),
        _ => true,
    };
    if better {
        *out = Some(reply);
    }
}

/// `TRYAGAIN` is retried once (in the first round).
fn tryagain_done(round: usize) -> bool {
    round > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_route_by_their_first_key() {
        let slot = |k: &str| funcscale_protocol::keys::slot(k);
        assert_eq!(route(redis::cmd("LLEN").arg("a")), Route::Slot(slot("a")));
        assert_eq!(
            route(redis::cmd("EVALSHA").arg("abc").arg(2).arg("{q}x").arg("y")),
            Route::Slot(slot("{q}x"))
        );
        assert_eq!(
            route(redis::cmd("EVALSHA").arg("abc").arg(0).arg("v")),
            Route::Keyless
        );
        assert_eq!(
            route(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")),
            Route::Script
        );
        assert_eq!(route(&redis::cmd("PING")), Route::Keyless);
        assert_eq!(
            route(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("STREAMS")
                    .arg("s")
                    .arg(">")
            ),
            Route::Slot(slot("s"))
        );
        assert_eq!(
            route(redis::cmd("XINFO").arg("GROUPS").arg("s")),
            Route::Slot(slot("s"))
        );
        for k in ["", "a", "{a}b", "x{}y", "{}{a}", "funcscale:{ns.q}:jobs"] {
            assert_eq!(slot_of(k.as_bytes()), slot(k), "{k}");
        }
    }

    #[test]
    fn a_script_command_keeps_the_best_reply_of_its_masters() {
        let failed = || {
            Err(NodeFailure {
                node: "h:1 (cluster)".into(),
                error: RedisError::from((redis::ErrorKind::Io, "broken pipe")),
            })
        };
        let loaded = || Ok(Value::BulkString(b"sha".to_vec()));
        let refused = || Ok(redis::parse_redis_value(b"-NOPERM no\r\n").unwrap());
        // the first master (by address) failed, a later one answered: the answer stays
        let mut out = None;
        for r in [failed(), refused(), loaded(), failed(), refused()] {
            keep(&mut out, &Route::Script, r);
        }
        assert!(matches!(out, Some(Ok(Value::BulkString(_)))), "{out:?}");
        let mut out = None;
        for r in [failed(), refused(), failed()] {
            keep(&mut out, &Route::Script, r);
        }
        assert!(matches!(out, Some(Ok(Value::ServerError(_)))), "{out:?}");
        // any other command has one master: its last reply (a re-send after MOVED) counts
        let mut out = None;
        for r in [loaded(), failed()] {
            keep(&mut out, &Route::Slot(1), r);
        }
        assert!(matches!(out, Some(Err(_))), "{out:?}");
    }

    #[test]
    fn a_map_names_the_master_of_a_slot_and_its_ranges() {
        let map = SlotMap {
            ranges: vec![
                (0, 5460, "h:1".into()),
                (5461, 10922, "h:2".into()),
                (10923, 16383, "h:3".into()),
                (16000, 16000, "h:1".into()),
            ]
            .into_iter()
            .filter(|r| r.0 != 16000)
            .collect(),
            read_at: Instant::now(),
        };
        assert_eq!(map.master_of(0), Some("h:1"));
        assert_eq!(map.master_of(5461), Some("h:2"));
        assert_eq!(map.master_of(16383), Some("h:3"));
        assert_eq!(map.describe("h:2"), "h:2 (cluster, slots 5461-10922)");
        let holes = SlotMap {
            ranges: vec![(0, 10, "h:1".into()), (20, 20, "h:1".into())],
            read_at: Instant::now(),
        };
        assert_eq!(holes.master_of(15), None);
        assert_eq!(holes.master_of(16383), None);
        assert_eq!(holes.describe("h:1"), "h:1 (cluster, slots 0-10,20)");
    }
}

//! Redis topologies the tests start from the installed `redis-server`: a Sentinel set
//! ([`SentinelSet`]: a master, two replicas and three sentinels on free loopback ports in a
//! temporary directory), with optional passwords or ACL users for the data nodes and for the
//! sentinels, and optionally replication through proxies that
//! [`SentinelSet::partition_master`] cuts. [`SentinelSet::kill_master`] SIGKILLs the master;
//! [`SentinelSet::wait_for_new_master`] waits until the sentinels have promoted a replica.
//! Dropping the set kills every process it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::IntoConnectionInfo as _;
use redis::aio::MultiplexedConnection;

use crate::tls::TestCa;

/// Credentials: a password (`requirepass`), or an ACL user with its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// An ACL user (`user <name> on >pw ~* &* +@all`, the `default` user off); `None`: the
    /// `default` user with `requirepass`.
    pub username: Option<String>,
    pub password: String,
}

impl Auth {
    pub fn password(pw: &str) -> Self {
        Self {
            username: None,
            password: pw.to_string(),
        }
    }
    pub fn user(name: &str, pw: &str) -> Self {
        Self {
            username: Some(name.to_string()),
            password: pw.to_string(),
        }
    }
}

/// How a [`SentinelSet`] is configured.
#[derive(Clone, Debug)]
pub struct SentinelOptions {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Credentials of the data nodes (master and replicas; replicas log in to the master with
    /// them, and so do the sentinels).
    pub data_auth: Option<Auth>,
    /// Credentials of the sentinels themselves (they log in to each other with them).
    pub sentinel_auth: Option<Auth>,
    /// More configuration lines for every data node, e.g. `min-replicas-to-write 1`.
    pub data_config: Vec<String>,
    /// `sentinel down-after-milliseconds` (default 2500: with 1000 a freshly promoted master
    /// busy with its replicas' full resync on a loaded machine missed a second of PINGs and was
    /// failed over again, losing the writes it had acknowledged — a flake seen in CI).
    pub down_after: Duration,
    /// `sentinel failover-timeout` (default 5000 ms).
    pub failover_timeout: Duration,
    /// The replicas replicate through a proxy of this process each, which
    /// [`SentinelSet::partition_master`] can cut (default: directly from the master).
    pub replication_proxy: bool,
    /// Every node and sentinel speaks TLS only (`port 0`, `tls-port`), with a CA and a server
    /// certificate the set makes in its directory ([`SentinelSet::ca`]); replication and the
    /// sentinels' own links use TLS too. [`SentinelSet::url`] is then `rediss+sentinel://`.
    pub tls: bool,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        Self {
            master_name: "funcscale".into(),
            data_auth: None,
            sentinel_auth: None,
            data_config: Vec::new(),
            down_after: Duration::from_millis(2500),
            failover_timeout: Duration::from_millis(5000),
            replication_proxy: false,
            tls: false,
        }
    }
}

/// One `redis-server` process of the set (and of a [`crate::redis_cluster::RedisCluster`]).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) port: u16,
    pub(crate) child: Option<Child>,
}

impl Node {
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

/// A master, two replicas and three sentinels (quorum 2) on loopback, each a `redis-server`
/// child of this process; killed on drop.
#[derive(Debug)]
pub struct SentinelSet {
    pub opts: SentinelOptions,
    data: Vec<Node>,
    sentinels: Vec<Node>,
    dir: tempfile::TempDir,
    /// Replication proxies ([`SentinelOptions::replication_proxy`]) and their switch.
    proxies: Vec<tokio::task::JoinHandle<()>>,
    cut: Arc<AtomicBool>,
    /// The CA and the nodes' certificate ([`SentinelOptions::tls`]).
    ca: Option<TestCa>,
}

/// How long [`SentinelSet::start`] waits for the set to settle.
const SETTLE: Duration = Duration::from_secs(60);

/// `n` distinct free loopback ports (all held open while choosing).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A config-file value, quoted (passwords may hold spaces or `#`).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A connection to `127.0.0.1:port` with `auth`.
pub async fn connect(port: u16, auth: Option<&Auth>) -> redis::RedisResult<MultiplexedConnection> {
    connect_with(port, auth, None).await
}

/// A connection to `127.0.0.1:port` with `auth`, over TLS trusting `ca` when given.
pub async fn connect_with(
    port: u16,
    auth: Option<&Auth>,
    ca: Option<&TestCa>,
) -> redis::RedisResult<MultiplexedConnection> {
    // both rustls providers are compiled in: pick one (as funcscale_connect does)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scheme = if ca.is_some() { "rediss" } else { "redis" };
    let info = format!("{scheme}://127.0.0.1:{port}").into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(a) = auth {
        if let Some(u) = &a.username {
            settings = settings.set_username(u);
        }
        settings = settings.set_password(&a.password);
    }
    let info = info.set_redis_settings(settings);
    let client = match ca {
        Some(ca) => {
            let certs = ca.certificates().map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "test CA",
                    e.to_string(),
                ))
            })?;
            redis::Client::build_with_tls(info, certs)?
        }
        None => redis::Client::open(info)?,
    };
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// `SENTINEL <args...>` as a list of field maps (`SENTINEL REPLICAS`, `SENTINEL SENTINELS`).
async fn sentinel_list(
    con: &mut MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<Vec<std::collections::HashMap<String, String>>> {
    redis::cmd("SENTINEL").arg(args).query_async(con).await
}

impl SentinelSet {
    /// Start the set and wait until every sentinel sees the master, both replicas (online,
    /// link up) and the two other sentinels.
    pub async fn start(opts: SentinelOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("funcscale-sentinel-")
            .tempdir()?;
        let ports = free_ports(6)?;
        let mut set = Self {
            opts,
            data: ports[..3]
                .iter()
                .map(|&port| Node { port, child: None })
                .collect(),
            sentinels: ports[3..]
                .iter()
                .map(|&port| Node { port, child: None })
                .collect(),
            dir,
            proxies: Vec::new(),
            cut: Arc::new(AtomicBool::new(false)),
            ca: None,
        };
        if set.opts.tls {
            set.ca = Some(TestCa::create(set.dir.path())?);
        }
        let master = set.data[0].port;
        for i in 0..3 {
            let replica_of = if i == 0 {
                None
            } else if set.opts.replication_proxy {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let port = listener.local_addr()?.port();
                set.proxies
                    .push(tokio::spawn(proxy(listener, master, set.cut.clone())));
                Some(port)
            } else {
                Some(master)
            };
            let conf = set.data_conf(set.data[i].port, replica_of);
            set.data[i].child = Some(set.spawn(&conf, false)?);
        }
        // the replicas in sync before the sentinels start: they find them in the master's
        // first INFO instead of ten seconds later
        set.wait_for_replicas(master, 2, SETTLE).await?;
        for i in 0..3 {
            let conf = set.sentinel_conf(set.sentinels[i].port, master)?;
            set.sentinels[i].child = Some(set.spawn(&conf, true)?);
        }
        set.wait_settled(master, SETTLE).await?;
        Ok(set)
    }

    /// The temporary directory: configuration files and each node's log (`<port>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_conf(&self, port: u16, replica_of: Option<u16>) -> PathBuf {
        let mut lines = self.listen(port);
        lines.extend([
            "bind 127.0.0.1".into(),
            format!("dir {}", self.dir.path().display()),
            format!("dbfilename dump-{port}.rdb"),
            format!("logfile {}", self.log(port).display()),
            "save \"\"".into(),
            "appendonly no".into(),
        ]);
        if let Some(m) = replica_of {
            lines.push(format!("replicaof 127.0.0.1 {m}"));
        }
        match &self.opts.data_auth {
            Some(Auth {
                username: Some(u),
                password,
            }) => {
                lines.push(format!(
                    "user {u} on {} ~* &* +@all",
                    quote(&format!(">{password}"))
                ));
                lines.push("user default off".into());
                lines.push(format!("masteruser {u}"));
                lines.push(format!("masterauth {}", quote(password)));
            }
            Some(Auth {
                username: None,
                password,
            }) => {
                lines.push(format!("requirepass {}", quote(password)));
                lines.push(format!("masterauth {}", quote(password)));
            }
            None => {}
        }
        lines.extend(self.opts.data_config.iter().cloned());
        let path = self.dir.path().join(format!("redis-{port}.conf"));
        std::fs::write(&path, lines.join("\n") + "\n").expect("write redis.conf");
        path
    }

    fn sentinel_conf(&self, port: u16, master: u16) -> anyhow::Result<PathBuf> {
        let name = &self.opts.master_name;
        let mut lines = self.listen(port);
        lines.extend([
            "bind 127.0.0.1".into(),
            format!("dir {}", self.dir.path().display()),
            format!("logfile {}", self.log(port).display()),
            format!("sentinel monitor {name} 127.0.0.1 {master} 2"),
            format!(
                "sentinel down-after-milliseconds {name} {}",
                self.opts.down_after.as_millis()
            ),
            format!(
                "sentinel failover-timeout {name} {}",
                self.opts.failover_timeout.as_millis()
            ),
            format!("sentinel parallel-syncs {name} 1"),
        ]);
        if let Some(a) = &self.opts.data_auth {
            if let Some(u) = &a.username {
                lines.push(format!("sentinel auth-user {name} {u}"));
            }
            lines.push(format!("sentinel auth-pass {name} {}", quote(&a.password)));
        }
        match &self.opts.sentinel_auth {
            Some(Auth {
                username: Some(u),
                password,
            }) => {
                lines.push(format!(
                    "user {u} on {} ~* &* +@all",
                    quote(&format!(">{password}"))
                ));
                lines.push("user default off".into());
                lines.push(format!("sentinel sentinel-user {u}"));
                lines.push(format!("sentinel sentinel-pass {}", quote(password)));
            }
            Some(Auth {
                username: None,
                password,
            }) => {
                lines.push(format!("requirepass {}", quote(password)));
                lines.push(format!("sentinel sentinel-pass {}", quote(password)));
            }
            None => {}
        }
        // sentinel rewrites its configuration file: one per sentinel, writable
        let path = self.dir.path().join(format!("sentinel-{port}.conf"));
        std::fs::write(&path, lines.join("\n") + "\n")?;
        Ok(path)
    }

    /// `port <port>`, or with TLS the lines of [`TestCa::server_config`].
    fn listen(&self, port: u16) -> Vec<String> {
        match &self.ca {
            Some(ca) => ca.server_config(port),
            None => vec![format!("port {port}")],
        }
    }

    /// The CA the nodes' certificate is signed by ([`SentinelOptions::tls`]).
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    fn log(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("{port}.log"))
    }

    fn spawn(&self, conf: &Path, sentinel: bool) -> anyhow::Result<Child> {
        let mut c = Command::new("redis-server");
        c.arg(conf);
        if sentinel {
            c.arg("--sentinel");
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server (is it installed? `make redis`)")
    }

    /// The URL funcscale takes for this set:
    /// `redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/<master name>`
    /// (`rediss+sentinel://` with [`SentinelOptions::tls`])
    /// (credentials apart: [`Self::env`]).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!(
            "{scheme}+sentinel://{}/{}",
            self.sentinel_addrs().join(","),
            self.opts.master_name
        )
    }

    /// [`Self::url`] with database `db`.
    pub fn url_db(&self, db: u32) -> String {
        format!("{}/{db}", self.url())
    }

    /// `127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// Ports of the data nodes (the first was the master at the start).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|n| n.port).collect()
    }

    /// Ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|n| n.port).collect()
    }

    /// The credentials as funcscale's programs take them from the environment:
    /// `FUNCSCALE_REDIS_USERNAME` / `FUNCSCALE_REDIS_PASSWORD` for the data nodes,
    /// `FUNCSCALE_REDIS_SENTINEL_USERNAME` / `FUNCSCALE_REDIS_SENTINEL_PASSWORD` for the
    /// sentinels.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for (auth, prefix) in [
            (&self.opts.data_auth, "FUNCSCALE_REDIS"),
            (&self.opts.sentinel_auth, "FUNCSCALE_REDIS_SENTINEL"),
        ] {
            if let Some(a) = auth {
                if let Some(u) = &a.username {
                    v.push((format!("{prefix}_USERNAME"), u.clone()));
                }
                v.push((format!("{prefix}_PASSWORD"), a.password.clone()));
            }
        }
        v
    }

    /// A connection to data node `port` (with the data nodes' credentials).
    pub async fn data_connection(&self, port: u16) -> anyhow::Result<MultiplexedConnection> {
        connect_with(port, self.opts.data_auth.as_ref(), self.ca.as_ref())
            .await
            .with_context(|| format!("connect to the data node 127.0.0.1:{port}"))
    }

    /// A connection to sentinel `port` (with the sentinels' credentials).
    pub async fn sentinel_connection(&self, port: u16) -> anyhow::Result<MultiplexedConnection> {
        connect_with(port, self.opts.sentinel_auth.as_ref(), self.ca.as_ref())
            .await
            .with_context(|| format!("connect to the sentinel 127.0.0.1:{port}"))
    }

    /// The sentinels still running.
    fn live_sentinels(&mut self) -> Vec<u16> {
        self.sentinels
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

    /// The master's port as sentinel `port` reports it (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    async fn master_by(&self, port: u16) -> Option<u16> {
        let mut con = self.sentinel_connection(port).await.ok()?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.opts.master_name)
            .query_async(&mut con)
            .await
            .ok()?;
        addr.and_then(|(_, p)| p.parse().ok())
    }

    /// The master's port as the first sentinel that answers reports it.
    pub async fn master_port(&mut self) -> anyhow::Result<u16> {
        for s in self.live_sentinels() {
            if let Some(p) = self.master_by(s).await {
                return Ok(p);
            }
        }
        anyhow::bail!("no sentinel names a master for {}", self.opts.master_name)
    }

    /// A connection to the current master (as the sentinels name it).
    pub async fn master_connection(&mut self) -> anyhow::Result<MultiplexedConnection> {
        let p = self.master_port().await?;
        self.data_connection(p).await
    }

    /// How many replicas (up to `replicas`, waiting at most `timeout`) have every write the
    /// master took so far, from any client: a write of its own, then `WAIT` (which counts the
    /// replicas that acknowledged this client's last write; replication is in order). A test
    /// that must not measure the last moment's replication loss waits for 2.
    pub async fn wait_replicated(
        &mut self,
        replicas: u32,
        timeout: Duration,
    ) -> anyhow::Result<u32> {
        let mut con = self.master_connection().await?;
        let _: () = redis::cmd("SET")
            .arg("funcscale-e2e:replication-fence")
            .arg(1)
            .query_async(&mut con)
            .await?;
        Ok(redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut con)
            .await?)
    }

    /// SIGKILL the current master (as the sentinels name it); returns its port.
    pub async fn kill_master(&mut self) -> anyhow::Result<u16> {
        let port = self.master_port().await?;
        let node = self
            .data
            .iter_mut()
            .find(|n| n.port == port)
            .context("the master is not one of the set's nodes")?;
        anyhow::ensure!(node.child.is_some(), "the master 127.0.0.1:{port} is down");
        node.kill();
        Ok(port)
    }

    /// Cut the master off from its replicas (needs [`SentinelOptions::replication_proxy`]): the
    /// replication links stop forwarding in both directions and stay open, as in a network
    /// partition; the master keeps accepting writes that no replica receives, and hears no
    /// replica's acknowledgements (`min-replicas-to-write`, `WAIT`). The sentinels still
    /// reach every node.
    pub fn partition_master(&self) {
        assert!(
            self.opts.replication_proxy,
            "partition_master needs SentinelOptions::replication_proxy"
        );
        self.cut.store(true, Ordering::SeqCst);
    }

    /// SIGKILL the data node on `port`.
    pub fn kill_data_node(&mut self, port: u16) {
        if let Some(n) = self.data.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// Wait until every running sentinel names a master other than `old` and that node
    /// answers `ROLE` as a master; returns its port. Fails after `timeout`.
    pub async fn wait_for_new_master(
        &mut self,
        old: u16,
        timeout: Duration,
    ) -> anyhow::Result<u16> {
        let sentinels = self.live_sentinels();
        let deadline = Instant::now() + timeout;
        loop {
            let mut named = Vec::new();
            for &s in &sentinels {
                named.push(self.master_by(s).await);
            }
            if let Some(Some(p)) = named.first().copied()
                && p != old
                && named.iter().all(|n| *n == Some(p))
                && self.role(p).await.as_deref() == Some("master")
            {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "no replica promoted within {timeout:?}: the sentinels name {named:?} (old \
                     master {old}); logs in {}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ROLE`'s first field of data node `port` (`master` / `slave`), `None` when it does not
    /// answer.
    pub async fn role(&self, port: u16) -> Option<String> {
        let mut con = self.data_connection(port).await.ok()?;
        let v: redis::Value = redis::cmd("ROLE").query_async(&mut con).await.ok()?;
        match v {
            redis::Value::Array(items) => items
                .into_iter()
                .next()
                .and_then(|r| redis::from_redis_value::<String>(r).ok()),
            _ => None,
        }
    }

    /// Wait until master `port` has `n` replicas online (`INFO replication`).
    async fn wait_for_replicas(
        &self,
        port: u16,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        crate::eventually(
            timeout,
            &format!("{n} replicas online at 127.0.0.1:{port}"),
            || async {
                let mut con = self.data_connection(port).await.ok()?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut con)
                    .await
                    .ok()?;
                let online = info
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count();
                (online >= n).then_some(())
            },
        )
        .await
    }

    /// Wait until every sentinel names `master`, flags it `master` only, lists both replicas
    /// (link up) and the two other sentinels.
    async fn wait_settled(&self, master: u16, timeout: Duration) -> anyhow::Result<()> {
        let name = self.opts.master_name.clone();
        let mut last = String::new();
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            for s in self.sentinel_ports() {
                match self.sentinel_view(s, &name).await {
                    Ok((m, flags, replicas, others))
                        if m == master && flags == "master" && replicas == 2 && others == 2 => {}
                    Ok(v) => {
                        last = format!(
                            "sentinel {s}: master, flags, replicas up, other sentinels = {v:?}"
                        );
                        ok = false;
                    }
                    Err(e) => {
                        last = format!("sentinel {s}: {e}");
                        ok = false;
                    }
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the sentinel set did not settle within {timeout:?}: {last}; logs in {}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What sentinel `port` sees: the master's port and flags, the replicas whose link is up,
    /// the other sentinels.
    async fn sentinel_view(
        &self,
        port: u16,
        name: &str,
    ) -> anyhow::Result<(u16, String, usize, usize)> {
        let mut con = self.sentinel_connection(port).await?;
        let m: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .query_async(&mut con)
            .await?;
        let master = m.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
        let flags = m.get("flags").cloned().unwrap_or_default();
        let replicas = sentinel_list(&mut con, &["REPLICAS", name])
            .await?
            .iter()
            .filter(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            })
            .count();
        let others = sentinel_list(&mut con, &["SENTINELS", name]).await?.len();
        Ok((master, flags, replicas, others))
    }
}

/// Forward each connection accepted on `listener` to `127.0.0.1:<target>` until `cut`.
async fn proxy(listener: tokio::net::TcpListener, target: u16, cut: Arc<AtomicBool>) {
    // dropped with this task (the set's drop aborts it): the connections go with it
    let mut links = tokio::task::JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        let cut = cut.clone();
        links.spawn(async move {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            // no Nagle: a WAIT's GETACK and the replica's ACK are small writes, each awaited
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::join!(pipe(ri, wo, cut.clone()), pipe(ro, wi, cut));
        });
    }
}

/// Copy `r` to `w`; once `cut`, hold what was read and read no more (the link stays open).
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for p in &self.proxies {
            p.abort();
        }
        for n in self.sentinels.iter_mut().chain(self.data.iter_mut()) {
            n.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lpush_get(con: &mut MultiplexedConnection, key: &str) -> Vec<String> {
        let _: i64 = redis::cmd("LPUSH")
            .arg(key)
            .arg("x")
            .query_async(con)
            .await
            .unwrap();
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(con)
            .await
            .unwrap()
    }

    /// The set starts settled, a write reaches the replicas, the master killed → a replica
    /// promoted that holds the write and takes new ones; the other replica follows it.
    async fn failover(opts: SentinelOptions) {
        let mut set = SentinelSet::start(opts).await.unwrap();
        let ports = set.data_ports();
        assert_eq!(set.master_port().await.unwrap(), ports[0]);
        let mut con = set.master_connection().await.unwrap();
        assert_eq!(lpush_get(&mut con, "k").await, ["x"]);
        let acked = set
            .wait_replicated(2, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(acked, 2);
        let old = set.kill_master().await.unwrap();
        assert_eq!(old, ports[0]);
        let t = Instant::now();
        let new = set
            .wait_for_new_master(old, Duration::from_secs(20))
            .await
            .unwrap();
        eprintln!("promoted 127.0.0.1:{new} after {:?}", t.elapsed());
        assert!(ports[1..].contains(&new));
        let mut con = set.master_connection().await.unwrap();
        assert_eq!(lpush_get(&mut con, "k").await, ["x", "x"]);
        let other = ports[1..].iter().copied().find(|p| *p != new).unwrap();
        crate::eventually(Duration::from_secs(20), "the other replica follows", || {
            let set = &set;
            async move {
                let mut con = set.data_connection(other).await.ok()?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut con)
                    .await
                    .ok()?;
                (info.contains(&format!("master_port:{new}"))
                    && info.contains("master_link_status:up"))
                .then_some(())
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_replica_is_promoted_when_the_master_is_killed() {
        failover(SentinelOptions::default()).await;
    }

    /// The same with a password on the data nodes and an ACL user on the sentinels: a
    /// connection without them is refused.
    #[tokio::test]
    async fn with_passwords_on_data_nodes_and_sentinels() {
        let opts = SentinelOptions {
            data_auth: Some(Auth::password("data pw#1")),
            sentinel_auth: Some(Auth::user("watcher", "sentinel-pw")),
            ..Default::default()
        };
        let set = SentinelSet::start(opts.clone()).await.unwrap();
        let mut anon = connect(set.data_ports()[0], None).await.unwrap();
        let e = redis::cmd("PING")
            .query_async::<String>(&mut anon)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("NOAUTH"), "{e}");
        let mut anon = connect(set.sentinel_ports()[0], None).await.unwrap();
        assert!(
            redis::cmd("PING")
                .query_async::<String>(&mut anon)
                .await
                .is_err()
        );
        assert_eq!(
            set.env(),
            [
                ("FUNCSCALE_REDIS_PASSWORD".into(), "data pw#1".into()),
                ("FUNCSCALE_REDIS_SENTINEL_USERNAME".into(), "watcher".into()),
                (
                    "FUNCSCALE_REDIS_SENTINEL_PASSWORD".into(),
                    "sentinel-pw".into()
                ),
            ]
        );
        drop(set);
        failover(opts).await;
    }

    /// The same over TLS only (nodes, replication and sentinels): a plain-text connection
    /// gets nothing, the set fails over as without TLS.
    #[tokio::test]
    async fn over_tls() {
        let opts = SentinelOptions {
            tls: true,
            data_auth: Some(Auth::password("tls-pw")),
            ..Default::default()
        };
        let set = SentinelSet::start(opts.clone()).await.unwrap();
        assert!(set.url().starts_with("rediss+sentinel://"), "{}", set.url());
        let plain = tokio::time::timeout(Duration::from_secs(3), async {
            let mut con = connect(set.sentinel_ports()[0], None).await?;
            redis::cmd("PING").query_async::<String>(&mut con).await
        })
        .await;
        assert!(
            !matches!(plain, Ok(Ok(_))),
            "plain text answered: {plain:?}"
        );
        drop(set);
        failover(opts).await;
    }
}

//! How a program reaches a queue's Redis: a URL plus, optionally, a username and a password
//! given apart from it (an environment variable filled from a Kubernetes Secret, a flag). The
//! operator renders these settings into the pods ([`PASSWORD_ENV`], [`USERNAME_ENV`],
//! [`SENTINEL_USERNAME_ENV`], [`SENTINEL_PASSWORD_ENV`]) and the worker, the beat, the CLI, the
//! operator's poller and the kubectl plugin all turn them into a [`Target`] with [`target`], so
//! they cannot disagree about precedence.
//!
//! **Topologies**: `redis://[user[:password]@]host[:port][/db]` (`rediss://` for TLS) is one
//! server. `redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/<master>[/db]`
//! (`rediss+sentinel://` for TLS to the sentinels and the data nodes) is the master named
//! `<master>` of a Sentinel set: the hosts are sentinels (port 26379 when not given), the
//! credentials and the database are the data nodes'. Sentinels that require a password of
//! their own get it (and an ACL username) apart from the URL, never in it.
//! `redis+cluster://[user[:password]@]host[:port][,host[:port]...]` (`rediss+cluster://` for
//! TLS) is a Redis Cluster: the hosts are seed nodes (port 6379 when not given; any reachable
//! one tells the client the rest), the credentials are every node's, and the database is 0
//! (a cluster has no other: a `/N` other than `/0` is refused).
//!
//! **Precedence**: a username or password given apart from the URL replaces the one the URL
//! carries; what is not given apart is taken from the URL (`redis://user:pass@host:port/db`).
//! So a URL with the username only (`redis://app@redis:6379/0`) plus a password from a Secret
//! logs in as the ACL user `app`; a password alone logs in as the `default` user
//! (`requirepass`).
//!
//! No I/O here: [`target`] parses, [`auth_failure`] classifies a [`redis::RedisError`] the
//! programs got back; the `funcscale-connect` crate connects.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

/// Environment variable holding the Redis URL (`--redis-url`).
pub const URL_ENV: &str = "FUNCSCALE_REDIS_URL";
/// Environment variable holding the Redis ACL username (`--redis-username`); replaces the URL's.
pub const USERNAME_ENV: &str = "FUNCSCALE_REDIS_USERNAME";
/// Environment variable holding the Redis password (`--redis-password`); replaces the URL's.
pub const PASSWORD_ENV: &str = "FUNCSCALE_REDIS_PASSWORD";
/// Environment variable holding the ACL username the sentinels of a `redis+sentinel://` URL
/// require (`--redis-sentinel-username`).
pub const SENTINEL_USERNAME_ENV: &str = "FUNCSCALE_REDIS_SENTINEL_USERNAME";
/// Environment variable holding the password the sentinels of a `redis+sentinel://` URL require
/// (`--redis-sentinel-password`).
pub const SENTINEL_PASSWORD_ENV: &str = "FUNCSCALE_REDIS_SENTINEL_PASSWORD";
/// The port of a sentinel whose address in the URL has none.
pub const SENTINEL_PORT: u16 = 26379;
/// The port of a cluster node whose address in the URL has none.
pub const CLUSTER_PORT: u16 = 6379;

/// A URL that does not parse as a Redis URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "not a Redis URL ({kind}): expected redis://[user[:password]@]host[:port][/db], rediss://…, redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/<master>[/db] or redis+cluster://[user[:password]@]host[:port][,host[:port]...]{}",
    source.as_ref().map(|s| format!(" — {s}")).unwrap_or_default()
)]
pub struct InvalidUrl {
    /// What was wrong, without the URL (it may hold a password).
    kind: String,
    /// The client library's error, if it gave one.
    #[source]
    source: Option<redis::RedisError>,
}

impl InvalidUrl {
    fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            source: None,
        }
    }

    fn from_redis(source: redis::RedisError) -> Self {
        Self {
            kind: format!("{:?}", source.kind()),
            source: Some(source),
        }
    }
}

/// Where a program's Redis is: one server, the master of a Sentinel set (found, and found
/// again after a failover, through the sentinels), or a Redis Cluster.
#[derive(Clone, Debug)]
pub enum Target {
    /// One server (`redis://`, `rediss://`, `redis+unix://`).
    Node(ConnectionInfo),
    /// The master of a Sentinel set (`redis+sentinel://`, `rediss+sentinel://`).
    Sentinel(SentinelTarget),
    /// A Redis Cluster (`redis+cluster://`, `rediss+cluster://`).
    Cluster(ClusterTarget),
}

/// A Redis Cluster: the nodes to start from and how to log in to every node.
#[derive(Clone, Debug)]
pub struct ClusterTarget {
    /// The seed nodes, in the URL's order (`TcpTls` for `rediss+cluster://`).
    pub seeds: Vec<ConnectionAddr>,
    /// The nodes' username and password (database always 0).
    pub node: redis::RedisConnectionInfo,
    /// TLS to the nodes: `Some(insecure)`.
    pub tls: Option<bool>,
}

impl ClusterTarget {
    /// The seed nodes as connection settings (address, login), e.g. for a cluster client.
    pub fn seed_infos(&self) -> Vec<ConnectionInfo> {
        self.seeds
            .iter()
            .map(|a| self.info_for(a.clone()))
            .collect()
    }

    /// The settings of a connection to `addr` (a node the cluster named) with this cluster's
    /// login and TLS.
    pub fn info_for(&self, addr: ConnectionAddr) -> ConnectionInfo {
        let addr = match (addr, self.tls) {
            (ConnectionAddr::Tcp(host, port), Some(insecure)) => ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params: None,
            },
            (a, _) => a,
        };
        addr.into_connection_info()
            .expect("an address is connection info")
            .set_redis_settings(self.node.clone())
    }
}

/// A Sentinel set's master: its name, the sentinels to ask, and how to log in to each.
#[derive(Clone, Debug)]
pub struct SentinelTarget {
    /// The master's name (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels, in the URL's order (`TcpTls` for `rediss+sentinel://`).
    pub sentinels: Vec<ConnectionAddr>,
    /// The data nodes' database, username and password.
    pub node: redis::RedisConnectionInfo,
    /// The sentinels' own username and password (both `None`: the sentinels need none).
    pub sentinel_auth: redis::RedisConnectionInfo,
    /// TLS to the data nodes (and the sentinels): `Some(insecure)`.
    pub tls: Option<bool>,
}

/// The credentials given apart from a URL.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    /// The data nodes' ACL username ([`USERNAME_ENV`]).
    pub username: Option<&'a str>,
    /// The data nodes' password ([`PASSWORD_ENV`]).
    pub password: Option<&'a str>,
    /// The sentinels' ACL username ([`SENTINEL_USERNAME_ENV`]).
    pub sentinel_username: Option<&'a str>,
    /// The sentinels' password ([`SENTINEL_PASSWORD_ENV`]).
    pub sentinel_password: Option<&'a str>,
}

impl Target {
    /// `standalone`, `sentinel` or `cluster`: what status and metrics call the topology.
    pub fn topology(&self) -> &'static str {
        match self {
            Target::Node(_) => "standalone",
            Target::Sentinel(_) => "sentinel",
            Target::Cluster(_) => "cluster",
        }
    }

    /// The database number (always 0 for a cluster).
    pub fn db(&self) -> i64 {
        match self {
            Target::Node(info) => info.redis_settings().db(),
            Target::Sentinel(s) => s.node.db(),
            Target::Cluster(_) => 0,
        }
    }

    /// Names the Redis in messages without credentials: `host:port` of a server, or
    /// `master <name> via sentinels h1:p1,h2:p2` (the master's own address changes with a
    /// failover: the connection tells the current one), or `cluster via seeds h1:p1,h2:p2`.
    pub fn describe(&self) -> String {
        match self {
            Target::Node(info) => node(info),
            Target::Cluster(c) => format!(
                "cluster via seeds {}",
                c.seeds
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Target::Sentinel(s) => format!(
                "master {} via sentinels {}",
                s.master,
                s.sentinels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// Which Redis database this is, whatever the URL's spelling and credentials: `host:port/db`
    /// (host lowercased; a socket path as is), for a Sentinel set
    /// `sentinel:<master>@<sentinels, sorted>/db`, for a cluster `cluster:<seeds, sorted>/0`.
    pub fn identity(&self) -> String {
        match self {
            Target::Node(info) => format!("{}/{}", addr_identity(info.addr()), self.db()),
            Target::Cluster(c) => {
                let mut addrs: Vec<String> = c.seeds.iter().map(addr_identity).collect();
                addrs.sort();
                addrs.dedup();
                format!("cluster:{}/0", addrs.join(","))
            }
            Target::Sentinel(s) => {
                let mut addrs: Vec<String> = s.sentinels.iter().map(addr_identity).collect();
                addrs.sort();
                addrs.dedup();
                format!("sentinel:{}@{}/{}", s.master, addrs.join(","), self.db())
            }
        }
    }
}

fn addr_identity(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{}:{p}", h.to_ascii_lowercase())
        }
        other => other.to_string(),
    }
}

/// The [`Target`] of `url` with the credentials given apart (each replaces the URL's when set
/// and not empty, see [`connection_info`]).
pub fn target(url: &str, creds: Credentials<'_>) -> Result<Target, InvalidUrl> {
    let url = url.trim();
    let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
        return cluster_target(false, rest, creds);
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        return cluster_target(true, rest, creds);
    } else {
        return connection_info(url, creds.username, creds.password).map(Target::Node);
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    if rest.contains('?') {
        return Err(InvalidUrl::new(
            "a redis+sentinel:// URL takes no query parameters",
        ));
    }
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut path = path.split('/');
    let master = path.next().unwrap_or_default();
    if master.is_empty() {
        return Err(InvalidUrl::new(
            "no master name: the path of a redis+sentinel:// URL is /<master>[/db]",
        ));
    }
    let db = path.next().filter(|d| !d.is_empty());
    if path.next().is_some() {
        return Err(InvalidUrl::new(
            "the path of a redis+sentinel:// URL is /<master>[/db]",
        ));
    }
    if hosts.is_empty() {
        return Err(InvalidUrl::new("no sentinel address"));
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let suffix = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    let mut sentinels = Vec::new();
    let mut node = None;
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(InvalidUrl::new("an empty sentinel address"));
        }
        if host.ends_with(':') {
            return Err(InvalidUrl::new("a sentinel address with an empty port"));
        }
        if host.matches(':').count() > 1 && !host.starts_with('[') {
            return Err(InvalidUrl::new(
                "an IPv6 sentinel address goes in brackets: [::1]:26379",
            ));
        }
        // a bracketed IPv6 address without a port, or a name without one
        let with_port = if host.ends_with(']') || !host.contains(':') {
            format!("{host}:{SENTINEL_PORT}")
        } else {
            host.to_string()
        };
        // each sentinel parsed as a server URL: the library decodes the credentials, the
        // database and the TLS fragment the same way as for `redis://`
        let one = format!(
            "{scheme}://{}{with_port}/{}{suffix}",
            userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
            db.unwrap_or("0"),
        );
        let info = connection_info(&one, creds.username, creds.password)?;
        sentinels.push(info.addr().clone());
        node.get_or_insert_with(|| info.redis_settings().clone());
    }
    let insecure = sentinels.first().and_then(|a| match a {
        ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
        _ => None,
    });
    let mut sentinel_auth = redis::RedisConnectionInfo::default();
    if let Some(u) = given(creds.sentinel_username) {
        sentinel_auth = sentinel_auth.set_username(u);
    }
    if let Some(p) = given(creds.sentinel_password) {
        sentinel_auth = sentinel_auth.set_password(p);
    }
    Ok(Target::Sentinel(SentinelTarget {
        master: master.to_string(),
        sentinels,
        node: node.unwrap_or_default(),
        sentinel_auth,
        tls: insecure,
    }))
}

/// `redis+cluster://` (`rediss+cluster://` when `tls`) after its scheme: seed nodes, no path
/// but `/` or `/0`, no query.
fn cluster_target(tls: bool, rest: &str, creds: Credentials<'_>) -> Result<Target, InvalidUrl> {
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    if rest.contains('?') {
        return Err(InvalidUrl::new(
            "a redis+cluster:// URL takes no query parameters",
        ));
    }
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() && path != "0" {
        return Err(InvalidUrl::new(
            "a Redis Cluster has database 0 only: the path of a redis+cluster:// URL is empty or /0",
        ));
    }
    if hosts.is_empty() {
        return Err(InvalidUrl::new("no cluster node address"));
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let suffix = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    let mut seeds = Vec::new();
    let mut node = None;
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(InvalidUrl::new("an empty cluster node address"));
        }
        if host.ends_with(':') {
            return Err(InvalidUrl::new("a cluster node address with an empty port"));
        }
        if host.matches(':').count() > 1 && !host.starts_with('[') {
            return Err(InvalidUrl::new(
                "an IPv6 cluster node address goes in brackets: [::1]:6379",
            ));
        }
        let with_port = if host.ends_with(']') || !host.contains(':') {
            format!("{host}:{CLUSTER_PORT}")
        } else {
            host.to_string()
        };
        // each node parsed as a server URL: the library decodes the credentials and the TLS
        // fragment the same way as for `redis://`
        let one = format!(
            "{scheme}://{}{with_port}/0{suffix}",
            userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
        );
        let info = connection_info(&one, creds.username, creds.password)?;
        seeds.push(info.addr().clone());
        node.get_or_insert_with(|| info.redis_settings().clone());
    }
    let insecure = seeds.first().and_then(|a| match a {
        ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
        _ => None,
    });
    Ok(Target::Cluster(ClusterTarget {
        seeds,
        node: node.unwrap_or_default(),
        tls: insecure,
    }))
}

/// The connection to `url`, with `username` / `password` (when given, and not empty)
/// replacing the URL's. A trailing newline is dropped (a Secret written with
/// `echo pw > file; kubectl create secret --from-file` holds one, and a pod's environment
/// variable from it keeps it); empty strings then count as not given (an environment variable
/// set from an optional Secret key may be empty).
pub fn connection_info(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, InvalidUrl> {
    let info = url.into_connection_info().map_err(InvalidUrl::from_redis)?;
    let mut settings = info.redis_settings().clone();
    if let Some(u) = given(username) {
        settings = settings.set_username(u);
    }
    if let Some(p) = given(password) {
        settings = settings.set_password(p);
    }
    Ok(info.set_redis_settings(settings))
}

/// A username or password as given apart from the URL: without a trailing newline, and `None`
/// when that leaves nothing.
pub fn given(value: Option<&str>) -> Option<&str> {
    value
        .map(|v| v.trim_end_matches(['\n', '\r']))
        .filter(|v| !v.is_empty())
}

/// `host:port` (or the socket path) of a connection: names the node in messages without its
/// credentials.
pub fn node(info: &ConnectionInfo) -> String {
    info.addr().to_string()
}

/// Why Redis refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// `NOAUTH`: the server requires a password and none was given.
    Missing,
    /// `WRONGPASS` / `invalid password`: the username or password is wrong (or the ACL user is
    /// disabled).
    Rejected,
    /// `NOPERM`: logged in, but the ACL user may not run a command or touch a key.
    Forbidden,
}

impl AuthFailure {
    /// What happened, for a message that goes on to name the setting to fix.
    pub fn describe(self) -> &'static str {
        match self {
            AuthFailure::Missing => "requires a password and none was given (NOAUTH)",
            AuthFailure::Rejected => "rejected the username/password (WRONGPASS)",
            AuthFailure::Forbidden => {
                "denied a command or key to the ACL user (NOPERM): grant it the queue's keys (~<prefix>:*) and +@all or the commands funcscale uses (on a Redis Cluster also +cluster|slots)"
            }
        }
    }
}

/// Whether `e` is Redis refusing the credentials (or an ACL user's rights); `None` for any
/// other error (unreachable, timeouts, a script error...).
pub fn auth_failure(e: &redis::RedisError) -> Option<AuthFailure> {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some(AuthFailure::Rejected);
    }
    // the code when the library has it, else the text (errors wrapped in a pipeline reply)
    let text = format!("{} {e}", e.code().unwrap_or_default());
    if text.contains("NOAUTH") {
        Some(AuthFailure::Missing)
    } else if text.contains("WRONGPASS") || text.contains("invalid password") {
        Some(AuthFailure::Rejected)
    } else if text.contains("NOPERM") {
        Some(AuthFailure::Forbidden)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(i: &ConnectionInfo) -> (Option<&str>, Option<&str>, i64) {
        let s = i.redis_settings();
        (s.username(), s.password(), s.db())
    }

    #[test]
    fn separate_settings_replace_the_urls_and_the_rest_comes_from_the_url() {
        let i = connection_info("redis://127.0.0.1:6379/2", None, None).unwrap();
        assert_eq!(creds(&i), (None, None, 2));
        assert_eq!(node(&i), "127.0.0.1:6379");

        let i = connection_info("redis://:url-pw@h:1/0", None, Some("env-pw")).unwrap();
        assert_eq!(creds(&i), (None, Some("env-pw"), 0));

        let i = connection_info("redis://app@h:1/0", None, Some("p@ss:w/rd")).unwrap();
        assert_eq!(creds(&i), (Some("app"), Some("p@ss:w/rd"), 0));

        let i = connection_info("redis://app:url-pw@h:1/3", Some("ops"), None).unwrap();
        assert_eq!(creds(&i), (Some("ops"), Some("url-pw"), 3));

        // a Secret file's trailing newline is not part of the password
        let i = connection_info("redis://h:1/0", Some("app\n"), Some("pw\r\n")).unwrap();
        assert_eq!(creds(&i), (Some("app"), Some("pw"), 0));

        // empty values (an env var from an empty Secret key) are not given
        let i = connection_info("redis://app:url-pw@h:1/0", Some(""), Some("")).unwrap();
        assert_eq!(creds(&i), (Some("app"), Some("url-pw"), 0));
    }

    #[test]
    fn a_sentinel_url_names_the_master_the_sentinels_and_the_data_nodes_login() {
        let t = target(
            "redis+sentinel://app:url-pw@s1:26380,S2,[::1]:5000/mymaster/3",
            Credentials {
                password: Some("env-pw\n"),
                sentinel_password: Some("sentinel-pw"),
                ..Credentials::default()
            },
        )
        .unwrap();
        let Target::Sentinel(s) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(s.master, "mymaster");
        assert_eq!(
            s.sentinels
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["s1:26380", "S2:26379", "::1:5000"]
        );
        assert_eq!(
            (s.node.username(), s.node.password(), s.node.db()),
            (Some("app"), Some("env-pw"), 3)
        );
        assert_eq!(
            (s.sentinel_auth.username(), s.sentinel_auth.password()),
            (None, Some("sentinel-pw"))
        );
        assert_eq!(s.tls, None);
        assert_eq!(t.topology(), "sentinel");
        assert_eq!(
            t.identity(),
            "sentinel:mymaster@::1:5000,s1:26380,s2:26379/3"
        );
        assert!(!t.describe().contains("pw"), "{}", t.describe());

        // rediss+sentinel:// needs the client's TLS feature: tested in funcscale-connect

        // a trailing slash is no database given
        let t = target("redis+sentinel://s1/m/", Credentials::default()).unwrap();
        assert_eq!(t.identity(), "sentinel:m@s1:26379/0");

        let t = target("redis://h:1/2", Credentials::default()).unwrap();
        assert_eq!((t.topology(), t.identity()), ("standalone", "h:1/2".into()));

        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel:///m",
            "redis+sentinel://s1,,s2/m",
            "redis+sentinel://s1/m/0/x",
            "redis+sentinel://:secret@s1/m/notadb",
            "redis+sentinel://s1/m/0?protocol=resp3",
            "redis+sentinel://s1:/m",
            "redis+sentinel://::1:26379/m",
        ] {
            let e = target(bad, Credentials::default()).unwrap_err().to_string();
            assert!(e.contains("redis+sentinel://"), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cluster_url_names_the_seed_nodes_and_their_login() {
        let t = target(
            "redis+cluster://app:url-pw@n1:7000,N2,[::1]:7002",
            Credentials {
                password: Some("env-pw\n"),
                ..Credentials::default()
            },
        )
        .unwrap();
        let Target::Cluster(c) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(
            c.seeds.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["n1:7000", "N2:6379", "::1:7002"]
        );
        assert_eq!(
            (c.node.username(), c.node.password(), c.node.db()),
            (Some("app"), Some("env-pw"), 0)
        );
        assert_eq!(c.tls, None);
        assert_eq!((t.topology(), t.db()), ("cluster", 0));
        assert_eq!(t.identity(), "cluster:::1:7002,n1:7000,n2:6379/0");
        assert_eq!(t.describe(), "cluster via seeds n1:7000,N2:6379,::1:7002");
        assert!(!t.describe().contains("pw"), "{}", t.describe());
        let infos = c.seed_infos();
        assert_eq!(infos.len(), 3);
        assert_eq!(infos[0].redis_settings().password(), Some("env-pw"));

        // the seeds' order and spelling do not change which cluster it is
        for same in [
            "redis+cluster://n2:6379,n1:7000,[::1]:7002/",
            "redis+cluster://N1:7000,n2,[::1]:7002/0",
        ] {
            let u = target(same, Credentials::default()).unwrap();
            assert_eq!(u.identity(), t.identity(), "{same}");
        }

        for bad in [
            "redis+cluster://",
            "redis+cluster:///0",
            "redis+cluster://n1,,n2",
            "redis+cluster://n1:7000/1",
            "redis+cluster://n1:7000/0/x",
            "redis+cluster://:secret@n1/notadb",
            "redis+cluster://n1:7000?protocol=resp3",
            "redis+cluster://n1:",
            "redis+cluster://::1:7000",
            "redis+cluster://:secret@n1:notaport",
        ] {
            let e = target(bad, Credentials::default()).unwrap_err().to_string();
            assert!(e.contains("redis+cluster://"), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
        let e = target("redis+cluster://n1/3", Credentials::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("database 0 only"), "{e}");
    }

    #[test]
    fn a_bad_url_is_an_error_that_does_not_repeat_it() {
        let e = connection_info("http://:secret@h:1", None, None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("not a Redis URL"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn auth_errors_are_told_apart_from_others() {
        let server = |code: &str, detail: &str| {
            redis::RedisError::from((
                redis::ErrorKind::Extension,
                "server",
                format!("{code} {detail}"),
            ))
        };
        assert_eq!(
            auth_failure(&server("NOAUTH", "Authentication required.")),
            Some(AuthFailure::Missing)
        );
        assert_eq!(
            auth_failure(&server("WRONGPASS", "invalid username-password pair")),
            Some(AuthFailure::Rejected)
        );
        assert_eq!(
            auth_failure(&server("NOPERM", "this user has no permissions")),
            Some(AuthFailure::Forbidden)
        );
        assert_eq!(
            auth_failure(&redis::RedisError::from((
                redis::ErrorKind::AuthenticationFailed,
                "Password authentication failed"
            ))),
            Some(AuthFailure::Rejected)
        );
        assert_eq!(auth_failure(&server("ERR", "unknown command")), None);
    }
}

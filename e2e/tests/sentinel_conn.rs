//! The connection every funcscale program uses (`funcscale_connect::Conn`) on a real Sentinel
//! set started from `redis-server` (a master, two replicas, three sentinels): it follows a
//! SIGKILLed master to the promoted replica, an idle connection follows a graceful failover
//! (the old master stays up as a replica) without meeting an error, and the ACL users
//! `docs/operations.md` documents for a Sentinel set (data nodes and sentinels) can connect.

use std::time::{Duration, Instant};

use funcscale_connect::{Config, Conn};
use funcscale_e2e::docs::documented_rule;
use funcscale_e2e::redis_topology::{Auth, SentinelOptions, SentinelSet};
use funcscale_protocol::connection::{Credentials, target};

async fn conn(set: &SentinelSet, creds: Credentials<'_>) -> Conn {
    conn_with(set, creds, &Config::default()).await
}

async fn conn_with(set: &SentinelSet, creds: Credentials<'_>, config: &Config) -> Conn {
    let t = target(&set.url(), creds).unwrap();
    Conn::connect(&t, config).await.unwrap()
}

/// `INCR key` until it succeeds (through a failover: errors until the switch), within `limit`.
async fn incr_until_ok(con: &mut Conn, key: &str, limit: Duration) -> (i64, u32) {
    let deadline = Instant::now() + limit;
    let mut errors = 0;
    loop {
        match redis::cmd("INCR").arg(key).query_async::<i64>(con).await {
            Ok(n) => return (n, errors),
            Err(e) => {
                errors += 1;
                assert!(
                    Instant::now() < deadline,
                    "no write succeeded within {limit:?}: last error {e}; node {}",
                    con.describe()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_connection_follows_a_killed_master_to_the_promoted_replica() {
    let mut set = SentinelSet::start(SentinelOptions::default())
        .await
        .unwrap();
    // no watcher in this test: the errors the dead master gives must be enough
    let config = Config {
        check_every: Duration::from_secs(3600),
        ..Config::default()
    };
    let mut con = conn_with(&set, Credentials::default(), &config).await;
    let first = set.master_port().await.unwrap();
    assert_eq!(con.node(), format!("127.0.0.1:{first}"));
    assert_eq!(con.target().topology(), "sentinel");
    let key = "sentinel-conn:killed";
    incr_until_ok(&mut con, key, Duration::from_secs(5)).await;
    // the write reached both replicas before the kill: nothing of it is lost
    set.wait_replicated(2, Duration::from_secs(2))
        .await
        .unwrap();

    let old = set.kill_master().await.unwrap();
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap();
    let (n, _) = incr_until_ok(&mut con, key, Duration::from_secs(20)).await;
    assert_eq!(n, 2, "the promoted replica has the first write");
    assert_eq!(con.node(), format!("127.0.0.1:{new}"));
    assert_eq!(con.switches(), 1);
    // clones share the switch
    let mut clone = con.clone();
    let v: i64 = redis::cmd("GET")
        .arg(key)
        .query_async(&mut clone)
        .await
        .unwrap();
    assert_eq!(v, 2);
}

#[tokio::test]
async fn an_idle_connection_follows_a_graceful_failover_without_an_error() {
    let mut set = SentinelSet::start(SentinelOptions::default())
        .await
        .unwrap();
    let con = conn(&set, Credentials::default()).await;
    let old = set.master_port().await.unwrap();
    // SENTINEL FAILOVER: the old master becomes a replica and stays up; a connection to it
    // would read stale data and get READONLY on writes
    let mut sentinel = set
        .sentinel_connection(set.sentinel_ports()[0])
        .await
        .unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(&set.opts.master_name)
        .query_async(&mut sentinel)
        .await
        .unwrap();
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap();
    // no command was sent: the watcher moved the connection
    let deadline = Instant::now() + Duration::from_secs(10);
    while con.node() != format!("127.0.0.1:{new}") {
        assert!(
            Instant::now() < deadline,
            "the idle connection still points at {} (master now 127.0.0.1:{new})",
            con.node()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // its first write goes to the new master: no READONLY
    let mut con = con;
    let _: () = redis::cmd("SET")
        .arg("sentinel-conn:graceful")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(con.switches(), 1);
}

#[tokio::test]
async fn the_documented_acl_users_connect_through_the_sentinels() {
    const PW: &str = "data-pw";
    const SENTINEL_PW: &str = "sentinel-pw";
    let mut set = SentinelSet::start(SentinelOptions {
        sentinel_auth: Some(Auth::password(SENTINEL_PW)),
        ..SentinelOptions::default()
    })
    .await
    .unwrap();
    // the funcscale users on every data node (ACLs are not replicated), as documented for a
    // Sentinel set: the rule of one server plus what the Sentinel section adds
    let extra = sentinel_additions();
    for port in set.data_ports() {
        let mut admin = set.data_connection(port).await.unwrap();
        for user in ["funcscale-operator", "funcscale-worker"] {
            let mut rule = documented_rule(user, PW, "funcscale");
            rule.extend(extra.iter().cloned());
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&rule)
                .query_async(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("ACL SETUSER {rule:?}: {e}"));
        }
    }
    // the sentinels' user for funcscale, as documented, on every sentinel
    for port in set.sentinel_ports() {
        let mut s = set.sentinel_connection(port).await.unwrap();
        let rule = documented_rule("funcscale-sentinel", SENTINEL_PW, "funcscale");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&rule)
            .query_async(&mut s)
            .await
            .unwrap_or_else(|e| panic!("ACL SETUSER {rule:?} on a sentinel: {e}"));
    }
    let old = set.master_port().await.unwrap();
    for user in ["funcscale-operator", "funcscale-worker"] {
        let mut con = conn(
            &set,
            Credentials {
                username: Some(user),
                password: Some(PW),
                sentinel_username: Some("funcscale-sentinel"),
                sentinel_password: Some(SENTINEL_PW),
            },
        )
        .await;
        assert_eq!(con.node(), format!("127.0.0.1:{old}"), "{user}");
        let _: i64 = redis::cmd("EXISTS")
            .arg("funcscale:q:x")
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
    }
    // a wrong sentinel password is refused by name
    let t = target(
        &set.url(),
        Credentials {
            sentinel_password: Some("wrong"),
            ..Credentials::default()
        },
    )
    .unwrap();
    let err = Conn::connect(&t, &Config::default()).await.unwrap_err();
    assert!(
        funcscale_protocol::connection::auth_failure(&err).is_some()
            || err.to_string().contains("WRONGPASS")
            || err.to_string().contains("auth"),
        "{err}"
    );
}

/// The words `docs/operations.md` says to add to the data nodes' rules for a Sentinel set.
fn sentinel_additions() -> Vec<String> {
    let doc = include_str!("../../docs/operations.md");
    let line = doc
        .lines()
        .find_map(|l| l.trim().strip_prefix("With a Sentinel set, append `"))
        .expect("docs/operations.md says what to append for a Sentinel set");
    let words = line.split('`').next().unwrap();
    words.split_whitespace().map(str::to_string).collect()
}

/// `funcscale-celery`'s client (what its recorder and beat guard write through) on the same
/// URL form: redis-py's `Sentinel.master_for` finds the master, and after a SIGKILL the
/// promoted replica.
#[tokio::test]
async fn the_celery_integration_writes_to_the_master_across_a_failover() {
    let python = funcscale_e2e::scenario::celery_venv()
        .unwrap()
        .join("bin/python");
    const SENTINEL_PW: &str = "s-pw";
    let mut set = SentinelSet::start(SentinelOptions {
        sentinel_auth: Some(Auth::password(SENTINEL_PW)),
        data_auth: Some(Auth::password("d-pw")),
        ..SentinelOptions::default()
    })
    .await
    .unwrap();
    // one INCR through the integration's client; prints the node that answered
    let incr = |set: &SentinelSet| {
        std::process::Command::new(&python)
            .args([
                "-c",
                "import time\n\
                 from funcscale_celery import config\n\
                 c = config.load(need_queues=False).client()\n\
                 for _ in range(100):\n\
                 \x20   try:\n\
                 \x20       print(c.incr('sentinel-conn:celery'), c.connection_pool.get_master_address()[1]); break\n\
                 \x20   except Exception as e:\n\
                 \x20       time.sleep(0.2)\n\
                 else:\n\
                 \x20   raise SystemExit('no write: %s' % e)\n",
            ])
            .env("FUNCSCALE_REDIS_URL", set.url())
            .env("FUNCSCALE_POD_NAMESPACE", "sentinel-conn")
            .envs(set.env())
            .output()
            .unwrap()
    };
    let first = incr(&set);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let old = set.master_port().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        format!("1 {old}")
    );
    set.wait_replicated(2, Duration::from_secs(2))
        .await
        .unwrap();
    set.kill_master().await.unwrap();
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap();
    let second = incr(&set);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        format!("2 {new}")
    );
}

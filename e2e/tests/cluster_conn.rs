//! The connection every funcscale program uses (`funcscale_connect::Conn`) on a real Redis
//! Cluster (three masters, three replicas, `funcscale_e2e::redis_cluster::RedisCluster`), and
//! `funcscale_connect::query_grouped`: a pipeline over keys on every master comes back in order
//! after one pipeline per master; it follows a slot moved to another master (`MOVED`), a slot
//! held mid-migration (`ASK`), and a killed master's replica, failing meanwhile only the
//! commands of the node that is down, naming it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use funcscale_connect::{Config, Conn, query_grouped};
use funcscale_e2e::redis_cluster::{ClusterOptions, RedisCluster};
use funcscale_protocol::connection::{Credentials, Target, target};
use funcscale_protocol::keys::slot;
use redis::Value;

fn config() -> Config {
    Config {
        connection_timeout: Duration::from_secs(1),
        response_timeout: Some(Duration::from_secs(2)),
        ..Config::default()
    }
}

async fn conn(c: &RedisCluster) -> Conn {
    let t = target(&c.url(), Credentials::default()).unwrap();
    assert!(matches!(t, Target::Cluster(_)), "{t:?}");
    Conn::connect(&t, &config()).await.unwrap()
}

/// A key of the test's own prefix whose slot `master` serves.
async fn key_on(c: &mut RedisCluster, master: u16, stem: &str) -> String {
    c.key_on(master, |i| format!("conn3:{stem}:{i}"))
        .await
        .unwrap()
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// `total_reads_processed` (read events of client connections) and `calls=` of command `cmd`
/// (`INFO commandstats`) of the node `con` is connected to.
async fn counters(con: &mut redis::aio::MultiplexedConnection, cmd: &str) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let field = |prefix: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .map(ToString::to_string)
    };
    let reads = field("total_reads_processed:").unwrap().parse().unwrap();
    let calls = field(&format!("cmdstat_{cmd}:"))
        .and_then(|s| {
            s.split(',')
                .find_map(|kv| kv.strip_prefix("calls=").map(|n| n.parse().unwrap()))
        })
        .unwrap_or(0);
    (reads, calls)
}

#[tokio::test]
async fn a_pipeline_over_three_masters_is_one_pipeline_per_master_in_order() {
    let mut c = RedisCluster::start().await.unwrap();
    let mut con = conn(&c).await;
    assert!(con.is_cluster());
    assert_eq!(con.target().topology(), "cluster");
    // commands through the Conn itself are routed by redis-rs' cluster client
    let masters = c.master_ports().await.unwrap();
    let mut keys = Vec::new();
    for (m, &port) in masters.iter().enumerate() {
        for k in 0..4 {
            let key = key_on(&mut c, port, &format!("order:{m}:{k}")).await;
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(format!("v-{m}-{k}"))
                .query_async(&mut con)
                .await
                .unwrap();
            keys.push((port, key, format!("v-{m}-{k}")));
        }
    }
    // interleaved: master 0, 1, 2, 0, 1, 2...; a script loaded once, run on every master
    let script = redis::Script::new("return redis.call('GET', KEYS[1])");
    let mut order: Vec<&(u16, String, String)> = Vec::new();
    for k in 0..4 {
        for m in 0..masters.len() {
            order.push(&keys[m * 4 + k]);
        }
    }
    let mut pipe = redis::pipe();
    pipe.cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1])");
    for (i, (_, key, _)) in order.iter().enumerate() {
        if i % 4 == 3 {
            pipe.cmd("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
        } else {
            pipe.cmd("GET").arg(key);
        }
    }
    pipe.cmd("PING");
    let check = |values: Vec<Value>| {
        assert_eq!(values.len(), order.len() + 2, "{values:?}");
        assert_eq!(text(&values[0]), script.get_hash());
        for (i, (_, _, want)) in order.iter().enumerate() {
            assert_eq!(&text(&values[i + 1]), want, "command {}", i + 1);
        }
        assert_eq!(text(&values[order.len() + 1]), "PONG");
    };
    // the first call opens a connection per master and reads the slot map
    check(query_grouped(&mut con, &pipe).await.into_values().unwrap());
    assert_eq!(con.cluster_masters(), 3);
    assert!(
        con.describe()
            .starts_with("cluster of 3 masters 127.0.0.1:"),
        "{}",
        con.describe()
    );

    // the GETs a master was sent are exactly the ones of its keys; and it read them all at
    // once: one read event more than the same measure without the call (a command per round
    // trip would be 12 more; a replica's REPLCONF ACK once a second may add one: measured again)
    let mut probes = HashMap::new();
    for &m in &masters {
        probes.insert(m, c.connection(m).await.unwrap());
    }
    let mut ok = false;
    for _ in 0..5 {
        let mut idle = HashMap::new();
        let mut before = HashMap::new();
        for &m in &masters {
            let p = probes.get_mut(&m).unwrap();
            let (r0, _) = counters(p, "get").await;
            let (r1, g1) = counters(p, "get").await;
            idle.insert(m, r1 - r0);
            before.insert(m, (r1, g1));
        }
        check(query_grouped(&mut con, &pipe).await.into_values().unwrap());
        let mut all = true;
        for &m in &masters {
            let (reads0, gets0) = before[&m];
            let (reads1, gets1) = counters(probes.get_mut(&m).unwrap(), "get").await;
            // a script's redis.call('GET') counts as a GET too
            let expected_gets = order.iter().filter(|(p, _, _)| *p == m).count() as u64;
            assert_eq!(gets1 - gets0, expected_gets, "GETs on 127.0.0.1:{m}");
            let extra = (reads1 - reads0) - idle[&m];
            if extra != 1 {
                eprintln!("127.0.0.1:{m}: {extra} reads for the call");
                all = false;
            }
        }
        if all {
            ok = true;
            break;
        }
    }
    assert!(ok, "some master needed more than one read for its pipeline");
}

#[tokio::test]
async fn a_moved_slot_and_a_slot_mid_migration_are_followed() {
    let mut c = RedisCluster::start().await.unwrap();
    let mut con = conn(&c).await;
    let masters = c.master_ports().await.unwrap();
    let (a, b) = (masters[0], masters[1]);
    // two keys of one slot on master a, one on master b
    let moving = key_on(&mut c, a, "moving").await;
    let tag = format!("{{{moving}}}");
    let sibling = format!("{tag}:sibling");
    let other = key_on(&mut c, b, "stays").await;
    for (k, v) in [(&moving, "1"), (&sibling, "2"), (&other, "3")] {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(v)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg(&moving).cmd("GET").arg(&other);
    let read = |g: funcscale_connect::Grouped| {
        g.into_values()
            .unwrap()
            .iter()
            .map(text)
            .collect::<Vec<_>>()
    };
    assert_eq!(read(query_grouped(&mut con, &pipe).await), ["1", "3"]);
    let generation = con.generation();

    // the slot moves to b: the map query_grouped holds (30 s) still says a, which answers MOVED
    let s = slot(&moving);
    c.migrate_slot(s, b).await.unwrap();
    assert_eq!(c.master_of_slot(s).await.unwrap(), b);
    assert_eq!(read(query_grouped(&mut con, &pipe).await), ["1", "3"]);
    assert!(con.generation() > generation, "the slot map was read again");

    // back to a, held half-way: one of the slot's two keys on a, the other on b already
    let m = c.migrate_slot_partly(s, a, 1).await.unwrap();
    assert_eq!(m.moved, 1);
    let mut pipe = redis::pipe();
    pipe.cmd("GET")
        .arg(&moving)
        .cmd("GET")
        .arg(&sibling)
        .cmd("GET")
        .arg(&other);
    assert_eq!(read(query_grouped(&mut con, &pipe).await), ["1", "2", "3"]);
    // a command on both keys, half moved: TRYAGAIN (re-sent once after 50 ms), for it alone
    let mut both = redis::pipe();
    both.cmd("MGET")
        .arg(&moving)
        .arg(&sibling)
        .cmd("GET")
        .arg(&other);
    let started = Instant::now();
    let g = query_grouped(&mut con, &both).await;
    assert!(started.elapsed() >= funcscale_connect::TRYAGAIN_WAIT);
    match &g.0[0] {
        Ok(Value::ServerError(e)) => assert_eq!(e.code(), "TRYAGAIN", "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(text(g.0[1].as_ref().unwrap()), "3");
    c.finish_migration(m).await.unwrap();
    let v = query_grouped(&mut con, &both).await.into_values().unwrap();
    assert_eq!(
        v[0],
        Value::Array(vec![
            Value::BulkString(b"1".to_vec()),
            Value::BulkString(b"2".to_vec())
        ])
    );
    assert_eq!(read(query_grouped(&mut con, &pipe).await), ["1", "2", "3"]);
}

#[tokio::test]
async fn a_killed_master_fails_only_its_commands_then_its_replica_answers() {
    let mut c = RedisCluster::start_with(ClusterOptions {
        require_full_coverage: false,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let mut con = conn(&c).await;
    let masters = c.master_ports().await.unwrap();
    let mut pipe = redis::pipe();
    let mut keys = Vec::new();
    for (i, &m) in masters.iter().enumerate() {
        let key = key_on(&mut c, m, &format!("kill:{i}")).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut con)
            .await
            .unwrap();
        pipe.cmd("GET").arg(&key);
        keys.push(key);
    }
    let all = query_grouped(&mut con, &pipe).await.into_values().unwrap();
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), ["0", "1", "2"]);

    let victim = masters[1];
    // the victim's replica has its key before the kill (replication is asynchronous: without
    // this the promoted replica could answer nil)
    // (a replica still in its first full sync acknowledges only once it is done)
    let mut on_victim = c.connection(victim).await.unwrap();
    let mut replicas = 0;
    for _ in 0..6 {
        replicas = redis::cmd("WAIT")
            .arg(1)
            .arg(5_000)
            .query_async(&mut on_victim)
            .await
            .unwrap();
        if replicas >= 1 {
            break;
        }
    }
    assert_eq!(replicas, 1, "the victim's replica acknowledged its write");
    c.kill_master(victim).await.unwrap();
    let g = query_grouped(&mut con, &pipe).await;
    let failed: Vec<usize> = g.failures().map(|(i, _)| i).collect();
    assert_eq!(failed, [1], "{g:?}");
    let f = g.0[1].as_ref().unwrap_err();
    assert!(
        f.node
            .starts_with(&format!("127.0.0.1:{victim} (cluster, slots ")),
        "{}",
        f.node
    );
    assert!(
        f.to_string().contains(&format!("127.0.0.1:{victim}")),
        "{f}"
    );
    assert_eq!(text(g.0[0].as_ref().unwrap()), "0");
    assert_eq!(text(g.0[2].as_ref().unwrap()), "2");
    let err = g.into_values().unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{victim}")), "{err}");

    let promoted = c
        .wait_promoted(victim, Duration::from_secs(20))
        .await
        .unwrap();
    // the next calls read the map again and go to the promoted replica
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = query_grouped(&mut con, &pipe).await;
        if g.failures().next().is_none() {
            let v = g.into_values().unwrap();
            assert_eq!(v.iter().map(text).collect::<Vec<_>>(), ["0", "1", "2"]);
            break;
        }
        assert!(Instant::now() < deadline, "still failing: {g:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(con.switches() >= 1);
    assert!(
        con.describe().contains(&format!("127.0.0.1:{promoted}")),
        "{}",
        con.describe()
    );
    // a connection of its own to the master of a key: the promoted replica
    let (node, mut own) = con
        .dedicated_for(keys[1].as_bytes(), &redis::AsyncConnectionConfig::new())
        .await
        .unwrap();
    assert!(
        node.starts_with(&format!("127.0.0.1:{promoted} (cluster")),
        "{node}"
    );
    let v: String = redis::cmd("GET")
        .arg(&keys[1])
        .query_async(&mut own)
        .await
        .unwrap();
    assert_eq!(v, "1");
}

#[tokio::test]
async fn on_one_server_query_grouped_is_the_pipeline_as_is() {
    let t = target("redis://127.0.0.1:6379/0", Credentials::default()).unwrap();
    let mut con = Conn::connect(&t, &config()).await.unwrap();
    assert!(!con.is_cluster());
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("conn3:single:a")
        .arg("x")
        .cmd("GET")
        .arg("conn3:single:a")
        .cmd("DEL")
        .arg("conn3:single:a");
    let v = query_grouped(&mut con, &pipe).await.into_values().unwrap();
    assert_eq!(v.iter().map(text).collect::<Vec<_>>(), ["OK", "x", "1"]);
    // a transaction is refused, nothing sent
    let mut tx = redis::pipe();
    tx.atomic().cmd("SET").arg("conn3:single:a").arg("y");
    let e = query_grouped(&mut con, &tx)
        .await
        .into_values()
        .unwrap_err();
    assert!(e.to_string().contains("no transaction"), "{e}");
    let exists: bool = redis::cmd("EXISTS")
        .arg("conn3:single:a")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!exists);
    // a node that does not answer: every command fails naming it
    let t = target("redis://127.0.0.1:1/0", Credentials::default()).unwrap();
    let cfg = Config {
        probe: false,
        ..config()
    };
    if let Ok(mut dead) = Conn::connect(&t, &cfg).await {
        let g = query_grouped(&mut dead, &pipe).await;
        assert_eq!(g.failures().count(), 3);
        assert!(g.0[0].as_ref().unwrap_err().node.contains("127.0.0.1:1"));
    }
}

//! Real `funcscale-worker` processes (`run`, `enqueue`, `beat`) on a real Redis Cluster
//! (`funcscale_e2e::redis_cluster::RedisCluster`: three masters, three replicas) through a
//! `redis+cluster://` URL:
//! - two workers consume three queues whose slots are on the three masters while the producer
//!   CLI enqueues; a busy queue's slot is migrated to another master (held half-way, then
//!   finished), then a master is SIGKILLed and its replica promoted; every task's side effect
//!   (a member of a set) is there at the end, duplicates are counted, the queues, in-flight
//!   lists and running sets are empty and the workers exit 0 on SIGTERM;
//! - a SIGKILLed worker's tasks are recovered by the other;
//! - a task moved by a `BLMOVE` whose reply was lost (its connection killed) runs at the
//!   slot's first turn after the queue's 1 s rest, though the queue ahead of it in priority
//!   order stays busy;
//! - the master of a priority worker's first queue dies and no replica takes over: the second
//!   queue's tasks run on at near their usual rate and the warnings name the dead master;
//!   once a replica takes over, the first queue's tasks run again;
//! - a worker (and a beat) without a namespace refuses to start, saying why;
//! - the beat fires a per-second schedule into queues on two masters exactly once per tick;
//! - `#[ignore]`d benchmark (`make bench`): worker throughput on the cluster vs one node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use funcscale_e2e::eventually;
use funcscale_e2e::redis_cluster::{ClusterOptions, RedisCluster};
use funcscale_e2e::scenario::{PrivateRedis, terminate, worker_command, worker_output};
use funcscale_protocol::Keys;
use funcscale_protocol::keys::slot;
use redis::cluster_async::ClusterConnection;
use tokio::process::Child;

const NS: &str = "cw";
/// Tasks per queue and enqueue round in the migration and failover test.
const PER_ROUND: u64 = 350;

/// A cluster connection that rides out a failover (10 s replies, 30 retries).
async fn cluster_client(c: &RedisCluster) -> ClusterConnection {
    c.cluster_connection_with(|b| b.response_timeout(Duration::from_secs(10)).retries(30))
        .await
        .unwrap()
}

/// Queue names of namespace [`NS`] whose ids' slots are on `n` different masters.
async fn queues_on_masters(c: &mut RedisCluster, keys: &Keys, n: usize) -> Vec<String> {
    let mut found: Vec<(u16, String)> = Vec::new();
    for i in 0.. {
        let name = format!("q{i}");
        let node = c
            .master_of_slot(slot(&keys.queue(&Keys::queue_id(NS, &name))))
            .await
            .unwrap();
        if !found.iter().any(|(m, _)| *m == node) {
            found.push((node, name));
        }
        if found.len() == n {
            break;
        }
    }
    found.into_iter().map(|(_, q)| q).collect()
}

fn env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FUNCSCALE_REDIS_URL", url.to_string()),
        ("FUNCSCALE_NAMESPACE", NS.to_string()),
        ("RUST_LOG", "warn,redis=error".to_string()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn start_worker(url: &str, name: &str, queues: &[String], extra: &[&str]) -> Child {
    let qs = queues.join(",");
    let e = env(url);
    let mut args = vec![
        "run",
        "--queues",
        &qs,
        "--name",
        name,
        "--metrics-addr",
        "127.0.0.1:0",
        "--drain-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    worker_command(&refs(&e), &args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn funcscale-worker run")
}

/// `funcscale-worker enqueue` of `count` `record` tasks into `queue`, ids `<id>-<n>`: each
/// adds its id to `set` and appends it to `list` (duplicates show there), after `sleep_ms`.
async fn enqueue(url: &str, queue: &str, id: &str, count: u64, set: &str, list: &str, ms: u64) {
    let args = serde_json::json!([set, ms, list]).to_string();
    let count = count.to_string();
    let e = env(url);
    let out = worker_output(
        &refs(&e),
        &[
            "enqueue", "--queue", queue, "--func", "record", "--args", &args, "--id", id,
            "--count", &count,
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(out.status.success(), "enqueue into {queue} failed");
}

async fn int(con: &mut ClusterConnection, cmd: &str, key: &str) -> i64 {
    redis::cmd(cmd)
        .arg(key)
        .query_async::<Option<i64>>(con)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Keys matching `pattern` on every master (SCAN each).
async fn scan_all(c: &mut RedisCluster, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    for port in c.master_ports().await.unwrap() {
        let mut con = c.connection(port).await.unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .unwrap();
            out.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    out
}

/// Wait until the queues `ids`, their running sets and every in-flight list are empty (the
/// last tasks may still run when their side effect is there); panics after `limit`.
async fn wait_drained(
    c: &mut RedisCluster,
    con: &ClusterConnection,
    ids: &[String],
    limit: Duration,
) {
    let keys = Keys::default();
    let t = Instant::now();
    loop {
        let mut con = con.clone();
        let mut left = Vec::new();
        for id in ids {
            let q = int(&mut con, "LLEN", &keys.queue(id)).await;
            let r = int(&mut con, "ZCARD", &keys.running(id)).await;
            if q + r > 0 {
                left.push(format!("{id}: {q} queued, {r} running"));
            }
        }
        left.extend(scan_all(c, "funcscale:inflight:*").await);
        if left.is_empty() {
            return;
        }
        assert!(t.elapsed() < limit, "not drained after {limit:?}: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM `child`; its exit code (`None`: killed after `grace`).
async fn stop(child: &mut Child, grace: Duration) -> Option<i32> {
    terminate(child, grace).await;
    child.wait().await.ok().and_then(|s| s.code())
}

#[tokio::test]
async fn workers_lose_no_task_through_a_slot_migration_and_a_master_failover() {
    let mut c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 3).await;
    let ids: Vec<String> = queues.iter().map(|q| Keys::queue_id(NS, q)).collect();
    let mut con = cluster_client(&c).await;
    let mut workers = [
        start_worker(&url, "w-a", &queues, &["--processes", "6"]),
        start_worker(&url, "w-b", &queues, &["--processes", "6"]),
    ];
    // round 1: 350 tasks of 10 ms per queue, ids `<q>-<n>`
    let t0 = Instant::now();
    for (q, id) in queues.iter().zip(&ids) {
        enqueue(
            &url,
            q,
            q,
            PER_ROUND,
            &format!("done:{id}"),
            &format!("runs:{id}"),
            10,
        )
        .await;
    }
    // (a) the busiest queue's slot to another master, held half-way for a second
    let busy = &ids[0];
    let busy_slot = slot(&keys.queue(busy));
    let from = c.master_of_slot(busy_slot).await.unwrap();
    let to = c
        .master_ports()
        .await
        .unwrap()
        .into_iter()
        .find(|p| *p != from)
        .unwrap();
    let left = int(&mut con, "LLEN", &keys.queue(busy)).await;
    assert!(left > 0, "the queue is still busy when its slot moves");
    let m = c.migrate_slot_partly(busy_slot, to, 3).await.unwrap();
    eprintln!(
        "{:?}: slot {busy_slot} of {busy} ({left} queued) half-way 127.0.0.1:{from} -> :{to} ({} keys moved)",
        t0.elapsed(),
        m.moved
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.finish_migration(m).await.unwrap();
    assert_eq!(c.master_of_slot(busy_slot).await.unwrap(), to);
    eprintln!("{:?}: migration finished", t0.elapsed());

    // round 2: 350 more per queue, ids `<q>-r2-<n>`; then (b) SIGKILL the master of another
    // queue while they run
    for (q, id) in queues.iter().zip(&ids) {
        let r2 = format!("{q}-r2");
        enqueue(
            &url,
            q,
            &r2,
            PER_ROUND,
            &format!("done:{id}"),
            &format!("runs:{id}"),
            10,
        )
        .await;
    }
    let victim = c.master_of_slot(slot(&keys.queue(&ids[1]))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = int(&mut con, "LLEN", &keys.queue(&ids[1])).await;
    c.kill_master(victim).await.unwrap();
    eprintln!(
        "{:?}: SIGKILLed master 127.0.0.1:{victim} ({} still queued there)",
        t0.elapsed(),
        queued
    );
    let promoted = c
        .wait_promoted(victim, Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!("{:?}: replica 127.0.0.1:{promoted} promoted", t0.elapsed());

    // every side effect, then empty queues, in-flight lists and running sets
    let total = PER_ROUND * 2 * queues.len() as u64;
    let done = eventually(Duration::from_secs(120), "every task to run", || {
        let mut con = con.clone();
        let ids = ids.clone();
        async move {
            let mut n = 0;
            for id in &ids {
                n += int(&mut con, "SCARD", &format!("done:{id}")).await;
            }
            (n as u64 >= total).then_some(n)
        }
    })
    .await;
    let mut missing = 0;
    let mut dups = 0;
    for q in &queues {
        let id = Keys::queue_id(NS, q);
        let members: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(format!("done:{id}"))
            .query_async(&mut con)
            .await
            .unwrap();
        for prefix in [q.clone(), format!("{q}-r2")] {
            missing += (0..PER_ROUND)
                .filter(|n| !members.contains(&format!("{prefix}-{n}")))
                .count();
        }
        let runs = int(&mut con, "LLEN", &format!("runs:{id}")).await as usize;
        dups += runs.saturating_sub(members.len());
    }
    eprintln!(
        "{:?}: {total} tasks: {missing} lost, {dups} run more than once ({done:?})",
        t0.elapsed()
    );
    assert_eq!(missing, 0, "every task's side effect is there");
    wait_drained(&mut c, &con, &ids, Duration::from_secs(30)).await;
    for (w, name) in workers.iter_mut().zip(["w-a", "w-b"]) {
        assert_eq!(
            stop(w, Duration::from_secs(20)).await,
            Some(0),
            "{name} exits 0 on SIGTERM"
        );
    }
}

#[tokio::test]
async fn a_killed_workers_tasks_are_recovered_by_the_other() {
    let mut c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 2).await;
    let ids: Vec<String> = queues.iter().map(|q| Keys::queue_id(NS, q)).collect();
    let con = cluster_client(&c).await;
    let ttl = ["--processes", "3", "--worker-ttl-ms", "2000"];
    let mut a = start_worker(&url, "victim", &queues, &ttl);
    // the victim takes tasks first: 3 slots, 2 s each
    for q in &queues {
        let id = Keys::queue_id(NS, q);
        enqueue(
            &url,
            q,
            q,
            6,
            &format!("done:{id}"),
            &format!("runs:{id}"),
            2_000,
        )
        .await;
    }
    let running = eventually(Duration::from_secs(20), "the victim to run tasks", || {
        let mut con = con.clone();
        let ids = ids.clone();
        let keys = keys.clone();
        async move {
            let mut n = 0;
            for id in &ids {
                n += int(&mut con, "ZCARD", &keys.running(id)).await;
            }
            (n == 3).then_some(n)
        }
    })
    .await
    .unwrap();
    a.start_kill().unwrap();
    let _ = a.wait().await;
    eprintln!("SIGKILLed the victim with {running} tasks in flight");
    let mut b = start_worker(&url, "rescuer", &queues, &ttl);
    let t = Instant::now();
    eventually(Duration::from_secs(60), "all 12 tasks to run", || {
        let mut con = con.clone();
        let ids = ids.clone();
        async move {
            let mut n = 0;
            for id in &ids {
                n += int(&mut con, "SCARD", &format!("done:{id}")).await;
            }
            (n == 12).then_some(())
        }
    })
    .await
    .unwrap();
    eprintln!("all tasks ran {:?} after the kill", t.elapsed());
    wait_drained(&mut c, &con, &ids, Duration::from_secs(30)).await;
    assert_eq!(stop(&mut b, Duration::from_secs(20)).await, Some(0));
}

#[tokio::test]
async fn a_worker_and_a_beat_without_a_namespace_refuse_a_cluster() {
    let c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let e = [("FUNCSCALE_REDIS_URL", url.as_str())];
    let out = worker_output(
        &e,
        &["run", "--queues", "plain", "--metrics-addr", "127.0.0.1:0"],
        Duration::from_secs(30),
    )
    .await;
    let text = funcscale_e2e::scenario::output_text(&out);
    assert!(!out.status.success(), "the worker refuses: {text}");
    assert!(
        text.contains("needs a namespace") && text.contains("--namespace"),
        "the worker says why: {text}"
    );
    let out = worker_output(
        &e,
        &["beat", "--metrics-addr", "127.0.0.1:0"],
        Duration::from_secs(30),
    )
    .await;
    let text = funcscale_e2e::scenario::output_text(&out);
    assert!(!out.status.success(), "the beat refuses: {text}");
    assert!(
        text.contains("needs a namespace") && text.contains("--namespace"),
        "the beat says why: {text}"
    );
}

#[tokio::test]
async fn the_beat_fires_a_per_second_schedule_on_two_masters_once_per_tick() {
    let mut c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 2).await;
    let mut con = cluster_client(&c).await;
    let e = env(&url);
    for q in &queues {
        let out = worker_output(
            &refs(&e),
            &[
                "schedules",
                "add",
                "--queue",
                q,
                "--id",
                "tick",
                "--cron",
                "* * * * * *",
                "--func",
                "noop",
            ],
            Duration::from_secs(30),
        )
        .await;
        assert!(out.status.success());
    }
    let mut beat = worker_command(&refs(&e), &["beat", "--metrics-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stop(&mut beat, Duration::from_secs(10)).await, Some(0));
    let stopped_s = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()) as i64;
    for q in &queues {
        let id = Keys::queue_id(NS, q);
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.queue(&id))
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .unwrap();
        let mut ticks: Vec<i64> = items
            .iter()
            .map(|raw| {
                let env = funcscale_protocol::Envelope::from_json(raw).unwrap();
                env.id.rsplit('@').next().unwrap().parse().unwrap()
            })
            .collect();
        ticks.sort_unstable();
        eprintln!("{id}: {} ticks {ticks:?}", ticks.len());
        assert!(ticks.len() >= 3, "{id}: the beat fired on this master");
        let last = *ticks.last().unwrap();
        assert!(
            (stopped_s - 3..=stopped_s).contains(&last),
            "{id}: the beat fired until it stopped (last tick {last}, stopped at {stopped_s})"
        );
        let distinct: BTreeSet<i64> = ticks.iter().copied().collect();
        assert_eq!(distinct.len(), ticks.len(), "{id}: no tick twice");
        for w in ticks.windows(2) {
            assert_eq!(w[1] - w[0], 1, "{id}: one task per second, none skipped");
        }
    }
}

/// Throughput of 2 worker processes × 8 slots on `url` over `n` `record` tasks (1 ms) in 3
/// queues, enqueued before the workers start: tasks per second from their start until every
/// side effect is there.
async fn throughput(url: &str, queues: &[String], n: u64, tag: &str) -> f64 {
    let per = n / queues.len() as u64;
    for q in queues {
        let id = Keys::queue_id(NS, q);
        enqueue(
            url,
            q,
            q,
            per,
            &format!("done:{id}"),
            &format!("runs:{id}"),
            0,
        )
        .await;
    }
    let t = Instant::now();
    let mut ws = vec![
        start_worker(url, &format!("{tag}-a"), queues, &["--processes", "8"]),
        start_worker(url, &format!("{tag}-b"), queues, &["--processes", "8"]),
    ];
    let target = funcscale_connect::Conn::open(url).await.unwrap();
    loop {
        let mut con = target.clone();
        let mut done = 0;
        for q in queues {
            let id = Keys::queue_id(NS, q);
            done += redis::cmd("SCARD")
                .arg(format!("done:{id}"))
                .query_async::<u64>(&mut con)
                .await
                .unwrap();
        }
        if done >= per * queues.len() as u64 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "{tag}: {done} done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    for w in &mut ws {
        stop(w, Duration::from_secs(20)).await;
    }
    (per * queues.len() as u64) as f64 / secs
}

#[tokio::test]
#[ignore = "benchmark: make bench"]
async fn bench_worker_throughput_cluster_vs_one_node() {
    let n: u64 = std::env::var("FUNCSCALE_CLUSTER_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let mut c = RedisCluster::start().await.unwrap();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 3).await;
    let node = PrivateRedis::start().await.unwrap();
    let single = throughput(&node.url(), &queues, n, "node").await;
    let cluster = throughput(&c.url(), &queues, n, "cluster").await;
    println!(
        "worker throughput, {n} record tasks in 3 queues, 2 processes x 8 slots: \
         one redis-server {single:.0} tasks/s, 3-master cluster {cluster:.0} tasks/s, \
         cluster/one node = {:.2}",
        cluster / single
    );
}

#[tokio::test]
async fn the_cli_and_queue_discovery_work_on_a_cluster() {
    let mut c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 3).await;
    let ids: Vec<String> = queues.iter().map(|q| Keys::queue_id(NS, q)).collect();
    for (q, id) in queues.iter().zip(&ids) {
        enqueue(
            &url,
            q,
            q,
            3,
            &format!("done:{id}"),
            &format!("runs:{id}"),
            0,
        )
        .await;
    }
    // a failing task for the dead letters: no retry
    let e = env(&url);
    let out = worker_output(
        &refs(&e),
        &[
            "enqueue",
            "--queue",
            &queues[0],
            "--func",
            "fail",
            "--id",
            "bad",
            "--max-retries",
            "0",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success());
    let mut w = start_worker(&url, "cli", &queues, &["--processes", "2"]);
    let con = cluster_client(&c).await;
    wait_drained(&mut c, &con, &ids, Duration::from_secs(30)).await;
    assert_eq!(stop(&mut w, Duration::from_secs(20)).await, Some(0));
    let q0 = queues[0].as_str();
    for args in [
        vec!["tasks", "list", "--queue", q0, "--json"],
        vec!["tasks", "show", "q0-1", "--queue", q0],
        vec!["tasks", "counts", "--queue", q0, "--json"],
        vec!["dead-letters", "list", "--queue", q0],
        vec!["outbox", "list"],
        vec!["queue-config", "show", "--queue", q0],
        vec!["schedules", "list", "--queue", q0],
    ] {
        let out = worker_output(&refs(&e), &args, Duration::from_secs(30)).await;
        let text = funcscale_e2e::scenario::output_text(&out);
        assert!(out.status.success(), "{args:?} on a cluster: {text}");
        if args[..2] == ["tasks", "list"] {
            assert_eq!(
                text.matches("\"status\":\"succeeded\"").count(),
                3,
                "{text}"
            );
        }
        if args[..2] == ["tasks", "show"] {
            assert!(text.contains("succeeded"), "{text}");
        }
        if args[..2] == ["dead-letters", "list"] {
            assert!(
                text.contains("bad"),
                "the failed task is a dead letter: {text}"
            );
        }
    }
    // queue discovery SCANs every master: the three queues are on three
    let mut conn = funcscale_connect::Conn::open(&url).await.unwrap();
    let found = funcscale_worker::records::discover_queues(&mut conn, &keys)
        .await
        .unwrap();
    for id in &ids {
        assert!(found.contains(id), "{id} discovered: {found:?}");
    }
}

/// `BLMOVE` calls served by the masters so far (`INFO commandstats`).
async fn blmove_calls(c: &mut RedisCluster) -> u64 {
    let mut n = 0;
    for port in c.master_ports().await.unwrap() {
        let mut con = c.connection(port).await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .unwrap();
        n += info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_blmove:calls="))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

#[tokio::test]
async fn an_idle_pool_waits_on_every_queue_and_starts_pushed_tasks_at_once() {
    let mut c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 3).await;
    let ids: Vec<String> = queues.iter().map(|q| Keys::queue_id(NS, q)).collect();
    let mut con = cluster_client(&c).await;
    // as many slots as queues: each queue gets a waiter, each waits 1 s per BLMOVE
    let mut w = start_worker(&url, "idle", &queues, &["--processes", "3"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = blmove_calls(&mut c).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let per_s = (blmove_calls(&mut c).await - before) as f64 / t.elapsed().as_secs_f64();
    eprintln!("idle: {per_s:.1} BLMOVE/s for 3 slots over 3 queues on 3 masters");
    // (0.2 s blocks, when a queue lacks a waiter, make about 15/s; the bound leaves room for
    // a loaded machine)
    assert!(
        per_s <= 7.0,
        "every queue has a waiter: 1 s blocks, about 3 BLMOVE/s, not {per_s:.1}"
    );
    // tasks pushed to the idle pool start at once, on every master
    let mut worst = 0;
    for round in 0..4 {
        for (q, id) in queues.iter().zip(&ids) {
            let tag = format!("{q}-{round}");
            enqueue(
                &url,
                q,
                &tag,
                1,
                &format!("done:{id}"),
                &format!("runs:{id}"),
                0,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        for (q, id) in queues.iter().zip(&ids) {
            // one task: its id is the tag itself
            let task = keys.task(id, &format!("{q}-{round}"));
            let (enq, started): (Option<u64>, Option<u64>) = redis::pipe()
                .hget(&task, "enqueued_ms")
                .hget(&task, "started_ms")
                .query_async(&mut con)
                .await
                .unwrap();
            let (enq, started) = (enq.expect("a record"), started.expect("it ran"));
            worst = worst.max(started.saturating_sub(enq));
        }
    }
    eprintln!("idle pool: pushed tasks started within {worst} ms");
    // (a queue without a waiter would wait for some slot's 1 s block to end)
    assert!(
        worst < 500,
        "a waiter on each queue takes its task at once ({worst} ms)"
    );
    assert_eq!(stop(&mut w, Duration::from_secs(20)).await, Some(0));
}

/// Ids of the clients of a node blocked in a `BLMOVE` now (`CLIENT LIST`: `flags` has `b`).
async fn blocked_in_blmove(con: &mut redis::aio::MultiplexedConnection) -> Vec<u64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(con)
        .await
        .unwrap();
    list.lines()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            };
            (field("cmd") == Some("blmove") && field("flags")?.contains('b'))
                .then(|| field("id")?.parse().ok())?
        })
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `BLMOVE` whose reply is lost: Redis moved queue B's task into the slot's in-flight list,
/// then the connection died, so the worker never learnt of it (no claim into the running set,
/// and the slot is alive: no reaper). With `--order priority` A, B and A kept busy, each turn
/// takes A's next task before looking at B's lists: the task waited until A was empty. The
/// slot's first turn after B's rest (1 s) looks in B's list first and runs it while A still
/// has most of its tasks.
#[tokio::test]
async fn a_task_whose_blmove_reply_was_lost_runs_while_a_higher_priority_queue_is_busy() {
    let mut c = RedisCluster::start().await.unwrap();
    let url = c.url();
    let keys = Keys::default();
    let queues = queues_on_masters(&mut c, &keys, 2).await;
    let (a, b) = (
        Keys::queue_id(NS, &queues[0]),
        Keys::queue_id(NS, &queues[1]),
    );
    let mut con = cluster_client(&c).await;
    let port_b = c.master_of_slot(slot(&keys.queue(&b))).await.unwrap();
    let mut on_b = c.connection(port_b).await.unwrap();
    // two slots, both idle: one blocks on A, the other on B (the queue with fewer waiters)
    let mut w = start_worker(
        &url,
        "prio",
        &queues,
        &["--processes", "2", "--order", "priority"],
    );
    let (done_b, done_a) = (format!("done:{b}"), format!("done:{a}"));
    let inflight_b = format!("{}:inflight:{b}:*", keys.prefix());
    let mut attempt = 0;
    let (id, killed_at) = loop {
        attempt += 1;
        assert!(attempt <= 10, "no BLMOVE of queue B with its reply lost");
        let client = eventually(Duration::from_secs(20), "one slot blocked on B", || {
            let mut on_b = on_b.clone();
            async move {
                let blocked = blocked_in_blmove(&mut on_b).await;
                (blocked.len() == 1).then(|| blocked[0])
            }
        })
        .await
        .unwrap();
        let id = format!("lost-{attempt}");
        let mut env = funcscale_protocol::Envelope::new(&id, "record", &b, unix_ms());
        env.args = serde_json::json!([done_b, 0]);
        // One write: Redis runs the three in one go. The LPUSH serves the blocked BLMOVE (the
        // task moves into the slot's list, its reply is queued), the KILL frees that client
        // before the reply is written; the LLEN says whether the task moved. (Not in a MULTI:
        // Redis serves blocked clients after the EXEC, when the KILL has freed this one.)
        let (_, killed, left): (i64, i64, i64) = redis::pipe()
            .lpush(keys.queue(&b), env.to_json())
            .cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(client)
            .llen(keys.queue(&b))
            .query_async(&mut on_b)
            .await
            .unwrap();
        let killed_at = Instant::now();
        if killed == 1 && left == 0 {
            break (id, killed_at);
        }
        // the client was between two BLMOVEs: the task is taken the usual way; again
        eprintln!("attempt {attempt}: killed {killed}, {left} left in B");
        eventually(Duration::from_secs(10), "the task to run", || {
            let mut con = con.clone();
            let (done_b, id) = (done_b.clone(), id.clone());
            async move {
                let ran: bool = redis::cmd("SISMEMBER")
                    .arg(&done_b)
                    .arg(&id)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                ran.then_some(())
            }
        })
        .await
        .unwrap();
    };
    // A full of 30 ms tasks at once (in-process: well inside the 1 s B rests for the failed
    // slot)
    let envs: Vec<_> = (0..200)
        .map(|n| {
            let mut e =
                funcscale_protocol::Envelope::new(format!("a-{n}"), "record", &a, unix_ms());
            e.args = serde_json::json!([done_a, 30]);
            e
        })
        .collect();
    let mut producer = funcscale_connect::Conn::open(&url).await.unwrap();
    funcscale_worker::protocol::enqueue(&mut producer, &keys, &a, &envs)
        .await
        .unwrap();
    // the move happened with its reply lost: the task sits in one of B's in-flight lists
    // (not claimed into the running set, not started); a reply that got through would have
    // had it claimed and started within milliseconds
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lists: Vec<String> = redis::cmd("KEYS")
        .arg(&inflight_b)
        .query_async(&mut on_b)
        .await
        .unwrap();
    assert_eq!(
        lists.len(),
        1,
        "the task is in one in-flight list: {lists:?}"
    );
    let running: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.running(&b))
        .arg(0)
        .arg(-1)
        .query_async(&mut on_b)
        .await
        .unwrap();
    let ran: bool = redis::cmd("SISMEMBER")
        .arg(&done_b)
        .arg(&id)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        running.is_empty() && !ran,
        "the worker did not get the reply (running set {running:?}, ran: {ran})"
    );
    eprintln!(
        "attempt {attempt}: {id} moved into {} with its reply lost",
        lists[0]
    );
    // the stranded task runs while A is still busy
    let waiting_a = eventually(Duration::from_secs(20), "B's task to run", || {
        let mut con = con.clone();
        let (done_b, id, a) = (done_b.clone(), id.clone(), keys.queue(&a));
        async move {
            // A's length first: a task of A may end between the two reads, never B's start
            let left = int(&mut con, "LLEN", &a).await;
            let ran: bool = redis::cmd("SISMEMBER")
                .arg(&done_b)
                .arg(&id)
                .query_async(&mut con)
                .await
                .unwrap();
            ran.then_some(left)
        }
    })
    .await
    .unwrap();
    eprintln!(
        "{id} ran {:?} after the kill, {waiting_a} of A's 200 tasks still waiting",
        killed_at.elapsed()
    );
    assert!(
        waiting_a >= 50,
        "B's task ran while A was busy, not after it drained ({waiting_a} of A's tasks waiting)"
    );
    wait_drained(&mut c, &con, &[a, b], Duration::from_secs(30)).await;
    assert_eq!(stop(&mut w, Duration::from_secs(20)).await, Some(0));
}

/// `SCARD` of `set`.
async fn scard(con: &ClusterConnection, set: &str) -> i64 {
    int(&mut con.clone(), "SCARD", set).await
}

/// A master goes down and stays down (its replica may not take over; the cluster does not
/// require full coverage, so the other masters serve on): a worker whose first queue in
/// priority order is on that master keeps running the second queue's tasks. Each turn of a
/// slot used to stop at the failing queue — a fetch that the cluster client retried until its
/// 30 s response timeout, then a 1 s sleep — so the second queue's tasks waited the whole
/// outage. Its warnings name the failing master, not the cluster. Then the replica may take
/// over, and the first queue's tasks run again.
#[tokio::test]
async fn a_dead_master_of_the_first_queue_does_not_stop_the_others() {
    let mut c = RedisCluster::start_with(ClusterOptions {
        require_full_coverage: false,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let url = c.url();
    let keys = Keys::default();
    // A on a master that does not hold the worker registry (`{cw}`: heartbeats), B elsewhere
    let registry = c
        .master_of_slot(slot(&keys.clone().in_namespace(Some(NS.into())).slots()))
        .await
        .unwrap();
    let mut on: Vec<(u16, String)> = Vec::new();
    for q in queues_on_masters(&mut c, &keys, 3).await {
        let port = c
            .master_of_slot(slot(&keys.queue(&Keys::queue_id(NS, &q))))
            .await
            .unwrap();
        on.push((port, q));
    }
    let (port_a, qa) = on.iter().find(|(p, _)| *p != registry).unwrap().clone();
    let (_, qb) = on.iter().find(|(p, _)| *p != port_a).unwrap().clone();
    let (a, b) = (Keys::queue_id(NS, &qa), Keys::queue_id(NS, &qb));
    let con = cluster_client(&c).await;
    let done_b = format!("done:{b}");
    // B: 20 ms tasks, more than the test runs
    enqueue(&url, &qb, &qb, 3000, &done_b, &format!("runs:{b}"), 20).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut e = env(&url);
    e.push(("FUNCSCALE_LOG_FORMAT", "json".into()));
    let queues = format!("{qa},{qb}");
    let mut w = worker_command(
        &refs(&e),
        &[
            "run",
            "--queues",
            &queues,
            "--name",
            "first-down",
            "--processes",
            "2",
            "--order",
            "priority",
            "--metrics-addr",
            "127.0.0.1:0",
            "--drain-timeout",
            "10s",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(log.reopen().unwrap())
    .spawn()
    .expect("spawn funcscale-worker run");
    eventually(Duration::from_secs(20), "B's tasks to run", || {
        let con = con.clone();
        let done_b = done_b.clone();
        async move { (scard(&con, &done_b).await >= 20).then_some(()) }
    })
    .await
    .unwrap();
    let window = Duration::from_secs(4);
    let before = scard(&con, &done_b).await;
    tokio::time::sleep(window).await;
    let normal = scard(&con, &done_b).await - before;

    // A's master down for good: its replica may not take over
    let id_a = c.node_id(port_a).await.unwrap();
    let replica = c
        .view(port_a)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.master_id.as_deref() == Some(id_a.as_str()))
        .expect("A's master has a replica")
        .port;
    let mut on_replica = c.connection(replica).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("cluster-replica-no-failover")
        .arg("yes")
        .query_async(&mut on_replica)
        .await
        .unwrap();
    c.kill_master(port_a).await.unwrap();
    let killed = Instant::now();
    // the first moments: every slot meets the dead master
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut outage = Vec::new();
    // the heartbeats go on (a loop of their own): a retry mover or count flush stuck on A's
    // dead master must not hold them past the TTL, or other workers reap running tasks
    let registry_key = keys.clone().in_namespace(Some(NS.into())).slots();
    let mut beat_ages = Vec::new();
    for _ in 0..3 {
        let before = scard(&con, &done_b).await;
        tokio::time::sleep(window).await;
        outage.push(scard(&con, &done_b).await - before);
        let beats: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&registry_key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut con.clone())
            .await
            .unwrap();
        let newest = beats.iter().map(|(_, t)| *t as u64).max().unwrap_or(0);
        beat_ages.push(unix_ms().saturating_sub(newest));
    }
    assert!(
        beat_ages.iter().all(|&age| age < 6_000),
        "heartbeats go on while A's master is down (every 3 s; TTL 15 s): ages {beat_ages:?} ms"
    );
    eprintln!(
        "B's tasks per {window:?}: {normal} before, {outage:?} from {:?} after A's master \
         (127.0.0.1:{port_a}) died",
        killed.elapsed() - window * 2
    );
    for n in &outage {
        assert!(
            *n * 2 >= normal,
            "B runs at near its normal rate while A's master is down: {n} tasks in {window:?}, \
             {normal} before"
        );
    }
    // the warnings name the dead master, not the cluster
    let text = std::fs::read_to_string(log.path()).unwrap();
    let warned: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "WARN")
        .map(|l| l["fields"].clone())
        .collect();
    let dead = format!("127.0.0.1:{port_a}");
    assert!(
        warned
            .iter()
            .any(|f| f["message"] == "fetch failed" && f["node"] == dead.as_str()),
        "a failed fetch names A's master {dead}: {warned:#?}"
    );
    let named: Vec<&str> = warned.iter().filter_map(|f| f["node"].as_str()).collect();
    assert!(
        named.iter().all(|n| *n == dead),
        "every warning naming a node names A's master {dead}: {named:?}"
    );

    // the replica may take over now: A's tasks run again
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("cluster-replica-no-failover")
        .arg("no")
        .query_async(&mut on_replica)
        .await
        .unwrap();
    let promoted = c
        .wait_promoted(port_a, Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!(
        "{:?} after the kill: 127.0.0.1:{promoted} promoted",
        killed.elapsed()
    );
    enqueue(
        &url,
        &qa,
        "back",
        1,
        &format!("done:{a}"),
        &format!("runs:{a}"),
        0,
    )
    .await;
    eventually(Duration::from_secs(30), "A's task to run", || {
        let con = con.clone();
        let done_a = format!("done:{a}");
        async move { (scard(&con, &done_a).await == 1).then_some(()) }
    })
    .await
    .unwrap();
    eprintln!(
        "A's task ran {:?} after the kill, on 127.0.0.1:{promoted}",
        killed.elapsed()
    );
    assert_eq!(stop(&mut w, Duration::from_secs(20)).await, Some(0));
}

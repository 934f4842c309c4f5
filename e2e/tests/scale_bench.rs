//! The running operator at scale (issue 7): CPU and memory of the real `funcscale-operator`
//! process with 1,000 FuncWorkerPools and 10,000 FuncQueues, against the in-memory API server
//! and the local Redis. An ignored benchmark (`make bench`); figures are printed, nothing is
//! asserted against a threshold. Build the operator in release first:
//!
//! ```sh
//! cargo build --release -p funcscale-operator --bin funcscale-operator
//! cargo nextest run --cargo-profile release -p funcscale-e2e --test scale_bench \
//!     --run-ignored only --no-capture
//! ```
//!
//! Sizes through the environment: `FUNCSCALE_SCALE_POOLS` (1000), `FUNCSCALE_SCALE_QUEUES_PER_POOL`
//! (10), `FUNCSCALE_SCALE_NAMESPACES` (4), `FUNCSCALE_SCALE_SECONDS` (steady-state window, 60),
//! `FUNCSCALE_SCALE_BACKLOG_EVERY` (every n-th pool gets tasks in its first queue, 5).
//!
//! Only the operator child's `/proc/<pid>` is measured as "the operator"; the API server runs
//! inside this test process and is reported on its own line (`/proc/self`).

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use funcscale_e2e::scenario::{REDIS_URL, bin, terminate};
use funcscale_e2e::{ServerConfig, TestCluster};
use funcscale_operator::crd::{FuncQueue, FuncQueueSpec, FuncWorkerPool, FuncWorkerPoolSpec};
use funcscale_worker::protocol::{Envelope, Keys};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `utime + stime` of a process in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the command name (field 2) may contain spaces: count fields after its closing paren
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so field n is f[n - 3]
    let get = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `GET /metrics` of the operator (its server answers `Connection: close`).
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out)).await??;
    Ok(out)
}

/// Sum of the samples of `name` whose labels contain `labels` (e.g. `controller="pool"`).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |a, b| a + b)
}

/// Pools (or queues) whose status has caught up with their generation.
fn reconciled<K: kube::Resource>(items: &[K], observed: impl Fn(&K) -> Option<i64>) -> usize {
    items
        .iter()
        .filter(|o| o.meta().generation.is_some() && observed(o) == o.meta().generation)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn operator_at_scale() {
    let pools_n = env_or("FUNCSCALE_SCALE_POOLS", 1000);
    let per_pool = env_or("FUNCSCALE_SCALE_QUEUES_PER_POOL", 10);
    let namespaces = env_or("FUNCSCALE_SCALE_NAMESPACES", 4).max(1);
    let window = Duration::from_secs(env_or("FUNCSCALE_SCALE_SECONDS", 60) as u64);
    let backlog_every = env_or("FUNCSCALE_SCALE_BACKLOG_EVERY", 5).max(1);
    let queues_n = pools_n * per_pool;
    let operator_bin = bin("funcscale-operator").unwrap();
    let tck = clock_ticks_per_second();
    let me = std::process::id().to_string();

    // 1. API server (a watch history long enough for the initial burst of writes) and Redis
    let cluster = TestCluster::start_with(ServerConfig {
        history: 1_000_000,
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.install_crds().await.unwrap();
    let client = cluster.client.clone();
    let prefix = format!("fs-scale-{}-{}", std::process::id(), now_ms());
    let keys = Keys::new(prefix.clone());
    let ns_of = |pool: usize| format!("scale-{}", pool % namespaces);
    let queue_of = |pool: usize, j: usize| format!("q-{pool}-{j}");

    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let backlog_pools: Vec<usize> = (0..pools_n).step_by(backlog_every).collect();
    const TASKS: usize = 50;
    let mut fill = redis::pipe();
    let t = now_ms();
    for &p in &backlog_pools {
        let q = Keys::queue_id(&ns_of(p), &queue_of(p, 0));
        let envs: Vec<String> = (0..TASKS)
            .map(|i| Envelope::new(format!("{q}-{i}"), "sleep", &q, t).to_json())
            .collect();
        fill.lpush(keys.queue(&q), envs).ignore();
    }
    let () = fill.query_async(&mut con).await.unwrap();

    // 2. the resources, concurrently through the typed API
    let created = Instant::now();
    let queue_spec: FuncQueueSpec =
        serde_json::from_value(json!({"taskTimeMs": 500, "maxRetries": 3})).unwrap();
    let queue_jobs = (0..pools_n).flat_map(|p| (0..per_pool).map(move |j| (p, j)));
    futures::stream::iter(queue_jobs)
        .map(|(p, j)| {
            let api: Api<FuncQueue> = Api::namespaced(client.clone(), &ns_of(p));
            let q = FuncQueue::new(&queue_of(p, j), queue_spec.clone());
            async move { api.create(&PostParams::default(), &q).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .unwrap();
    futures::stream::iter(0..pools_n)
        .map(|p| {
            let api: Api<FuncWorkerPool> = Api::namespaced(client.clone(), &ns_of(p));
            let queues: Vec<String> = (0..per_pool).map(|j| queue_of(p, j)).collect();
            let spec: FuncWorkerPoolSpec = serde_json::from_value(json!({
                "queues": queues, "processesPerPod": 5, "handler": "builtin",
                "autoscaling": {"minReplicas": 0, "maxReplicas": 10}}))
            .unwrap();
            let pool = FuncWorkerPool::new(&format!("pool-{p}"), spec);
            async move { api.create(&PostParams::default(), &pool).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .unwrap();
    let create_time = created.elapsed();
    println!(
        "created {queues_n} FuncQueues and {pools_n} FuncWorkerPools in {namespaces} namespaces \
         in {:.1} s; {} queues have {TASKS} tasks waiting",
        create_time.as_secs_f64(),
        backlog_pools.len()
    );

    // 3. the real operator binary
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log_dir = tempfile::Builder::new()
        .prefix("funcscale-scale-")
        .tempdir()
        .unwrap();
    let log_path = log_dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut operator = tokio::process::Command::new(&operator_bin)
        .args(["run", "--metrics-addr", &metrics_addr.to_string()])
        .args(["--key-prefix", &prefix, "--redis-url", REDIS_URL])
        .args(["--poll-interval", "1s", "--no-leader-election"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("FUNCSCALE_NAMESPACE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = operator.id().unwrap().to_string();

    // 4. time to the first full reconcile: every pool (and queue) status at its generation
    let pools_api: Api<FuncWorkerPool> = Api::all(client.clone());
    let queues_api: Api<FuncQueue> = Api::all(client.clone());
    // statuses must catch up within `deadline`; the scale-up is reported as far as it got
    // when the statuses are done and `scale_grace` has passed (an overloaded operator holds
    // pools whose metrics timed out: that is a figure, not a hang)
    let deadline = Duration::from_secs(1800);
    let scale_grace = Duration::from_secs(env_or("FUNCSCALE_SCALE_GRACE", 120) as u64);
    let (mut pools_done, mut queues_done, mut scaled_done): (
        Option<Duration>,
        Option<Duration>,
        Option<Duration>,
    ) = (None, None, None);
    let mut scaled_last = 0usize;
    let mut peak_during_start = 0u64;
    let (start_cpu0, mut start_cpu_secs) = (cpu_ticks(&pid), 0.0);
    loop {
        let statuses = pools_done.zip(queues_done).map(|(a, b)| a.max(b));
        if scaled_done.is_some() || statuses.is_some_and(|t| started.elapsed() > t + scale_grace) {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "not reconciled after {deadline:?}: pools {pools_done:?}, queues {queues_done:?}; \
             operator log {}",
            log_path.display()
        );
        if let Ok(Some(status)) = operator.try_wait() {
            panic!(
                "the operator exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_during_start = peak_during_start.max(status_kib(&pid, "VmRSS"));
        if pools_done.is_none() || scaled_done.is_none() {
            let pools = pools_api.list(&ListParams::default()).await.unwrap().items;
            let n = reconciled(&pools, |p| p.status.as_ref()?.observed_generation);
            if n == pools_n && pools_done.is_none() {
                pools_done = Some(started.elapsed());
            }
            let scaled = pools
                .iter()
                .filter(|p| p.status.as_ref().is_some_and(|s| s.desired_replicas > 0))
                .count();
            scaled_last = scaled;
            if scaled >= backlog_pools.len() && scaled_done.is_none() {
                scaled_done = Some(started.elapsed());
            }
            eprintln!(
                "[{:>5.1} s] pools reconciled {n}/{pools_n}, scaled up {scaled}/{}",
                started.elapsed().as_secs_f64(),
                backlog_pools.len()
            );
        }
        if queues_done.is_none() {
            let queues = queues_api.list(&ListParams::default()).await.unwrap().items;
            let n = reconciled(&queues, |q| q.status.as_ref()?.observed_generation);
            if n == queues_n {
                queues_done = Some(started.elapsed());
                start_cpu_secs = (cpu_ticks(&pid) - start_cpu0) as f64 / tck;
            }
            eprintln!(
                "[{:>5.1} s] queues reconciled {n}/{queues_n}",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::all(client.clone());
    let deploy_count = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();

    // 5. steady state: let the initial burst settle, then sample for `window`
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = scrape(metrics_addr).await.unwrap();
    let (op0, me0, t0) = (cpu_ticks(&pid), cpu_ticks(&me), Instant::now());
    let (mut rss_sum, mut rss_max, mut samples) = (0u64, 0u64, 0u64);
    let mut me_rss_max = 0u64;
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = status_kib(&pid, "VmRSS");
        rss_sum += r;
        rss_max = rss_max.max(r);
        me_rss_max = me_rss_max.max(status_kib(&me, "VmRSS"));
        samples += 1;
    }
    let (op1, me1, secs) = (cpu_ticks(&pid), cpu_ticks(&me), t0.elapsed().as_secs_f64());
    let after = scrape(metrics_addr).await.unwrap();
    let hwm = status_kib(&pid, "VmHWM");
    let op_cpu = (op1 - op0) as f64 / tck / secs * 100.0;
    let me_cpu = (me1 - me0) as f64 / tck / secs * 100.0;
    let delta =
        |name: &str, labels: &str| metric(&after, name, labels) - metric(&before, name, labels);
    let poll_sum = delta("funcscale_redis_poll_duration_seconds_sum", "");
    let poll_count = delta("funcscale_redis_poll_duration_seconds_count", "");
    let poll_mean_all = metric(&after, "funcscale_redis_poll_duration_seconds_sum", "")
        / metric(&after, "funcscale_redis_poll_duration_seconds_count", "").max(1.0);
    let rec = |c: &str| {
        (
            metric(
                &after,
                "funcscale_reconciliations_total",
                &format!("controller=\"{c}\""),
            ),
            delta(
                "funcscale_reconciliations_total",
                &format!("controller=\"{c}\""),
            ) / secs,
            delta(
                "funcscale_reconcile_duration_seconds_sum",
                &format!("controller=\"{c}\""),
            ) / delta(
                "funcscale_reconcile_duration_seconds_count",
                &format!("controller=\"{c}\""),
            )
            .max(1.0),
        )
    };
    let (pool_total, pool_rate, pool_mean) = rec("pool");
    let (queue_total, queue_rate, queue_mean) = rec("queue");
    let failures = metric(&after, "funcscale_reconcile_failures_total", "");
    let poll_errors = metric(&after, "funcscale_redis_poll_errors_total", "");

    // 6. reaction at steady state: a backlog appears in the first queue of pools that had none,
    // one pool every 200 ms; the time until its Deployment asks for pods (spec.replicas > 0)
    let latency_n = env_or("FUNCSCALE_SCALE_LATENCY_POOLS", 20).min(pools_n);
    let idle: Vec<usize> = (0..pools_n).filter(|p| p % backlog_every != 0).collect();
    let late_pools: Vec<usize> = (0..latency_n)
        .filter_map(|i| idle.get(i * idle.len() / latency_n.max(1)).copied())
        .collect();
    let latencies = reaction_latencies(&client, &mut con, &keys, &late_pools, |p| {
        (ns_of(p), queue_of(p, 0))
    })
    .await;
    let scaled_in_time = latencies.iter().filter(|l| l.is_some()).count();
    let mut lat: Vec<f64> = latencies
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64())
        .collect();
    lat.sort_by(f64::total_cmp);
    let p50 = lat
        .get(lat.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN);
    let lat_max = lat.last().copied().unwrap_or(f64::NAN);
    let within_3s = lat.iter().filter(|&&l| l <= 3.0).count();

    // 7. the table
    let secs_of = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!();
    println!(
        "funcscale-operator at scale ({}, poll 1 s, no leader election)",
        operator_bin.display()
    );
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| FuncQueues | {queues_n} |");
    println!("| FuncWorkerPools ({per_pool} queues each, autoscaled, minReplicas 0) | {pools_n} |");
    println!("| namespaces | {namespaces} |");
    println!(
        "| queues with a backlog ({TASKS} tasks) | {} |",
        backlog_pools.len()
    );
    println!("| Deployments created | {deploy_count} |");
    println!(
        "| start → every pool's status at its generation | {:.1} s |",
        secs_of(pools_done)
    );
    println!(
        "| start → every queue's status at its generation | {:.1} s |",
        secs_of(queues_done)
    );
    match scaled_done {
        Some(d) => println!(
            "| start → every backlogged pool scaled up (desiredReplicas > 0) | {:.1} s |",
            d.as_secs_f64()
        ),
        None => println!(
            "| start → every backlogged pool scaled up (desiredReplicas > 0) | not reached: \
             {scaled_last}/{} after {:.0} s |",
            backlog_pools.len(),
            started.elapsed().as_secs_f64()
        ),
    }
    println!(
        "| operator CPU time until every queue's status was written | {start_cpu_secs:.1} s |"
    );
    println!(
        "| steady CPU, {:.0} s window (% of one core) | {op_cpu:.1} % |",
        secs
    );
    println!(
        "| steady RSS (mean / max over the window) | {:.1} / {:.1} MiB |",
        mib(rss_sum / samples.max(1)),
        mib(rss_max)
    );
    println!(
        "| peak RSS (VmHWM, includes the start) | {:.1} MiB |",
        mib(hwm.max(peak_during_start))
    );
    println!(
        "| Redis poll duration, mean (window / since start) | {:.1} / {:.1} ms ({} polls in the window) |",
        poll_sum / poll_count.max(1.0) * 1000.0,
        poll_mean_all * 1000.0,
        poll_count
    );
    println!(
        "| pool reconciles: total / per s in the window / mean duration | {pool_total} / {pool_rate:.1} / {:.1} ms |",
        pool_mean * 1000.0
    );
    println!(
        "| queue reconciles: total / per s in the window / mean duration | {queue_total} / {queue_rate:.1} / {:.1} ms |",
        queue_mean * 1000.0
    );
    println!("| reconcile failures / Redis poll errors (total) | {failures} / {poll_errors} |");
    println!(
        "| steady state: new backlog → Deployment scaled, p50 / max ({} pools, {within_3s} within 3 s, {scaled_in_time} within {} s) | {:.2} / {:.2} s |",
        late_pools.len(),
        REACTION_DEADLINE.as_secs(),
        p50,
        lat_max
    );
    println!(
        "| (not the operator) in-process API server + this test: CPU / max RSS | {me_cpu:.1} % / {:.1} MiB |",
        mib(me_rss_max)
    );
    println!();
    println!(
        "(creating the {} objects took {:.1} s; operator log: {})",
        queues_n + pools_n,
        create_time.as_secs_f64(),
        log_path.display()
    );

    terminate(&mut operator, Duration::from_secs(10)).await;
    // clean up Redis: the backlog lists, the queue settings and anything else under the prefix
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        if !found.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(&mut con)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // keep the log when asked (FUNCSCALE_SCALE_KEEP_LOG=1)
    if std::env::var("FUNCSCALE_SCALE_KEEP_LOG").is_ok_and(|v| v == "1") {
        let _ = log_dir.keep();
    }
}

/// How long the reaction measurement waits for one pool.
const REACTION_DEADLINE: Duration = Duration::from_secs(30);

/// Push 50 tasks into the queue `queue(pool)` of each pool in turn (200 ms apart) and measure
/// until each pool's Deployment has `spec.replicas > 0`; `None`: not within
/// [`REACTION_DEADLINE`].
async fn reaction_latencies(
    client: &kube::Client,
    con: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    pools: &[usize],
    queue: impl Fn(usize) -> (String, String),
) -> Vec<Option<Duration>> {
    use k8s_openapi::api::apps::v1::Deployment;
    let mut pushed: Vec<(usize, Instant)> = Vec::new();
    let mut result: Vec<Option<Duration>> = vec![None; pools.len()];
    let mut done = vec![false; pools.len()];
    let start = Instant::now();
    let mut next_push = 0usize;
    loop {
        // push the next backlog every 200 ms
        if next_push < pools.len()
            && start.elapsed() >= Duration::from_millis(200) * next_push as u32
        {
            let (ns, q) = queue(pools[next_push]);
            let id = Keys::queue_id(&ns, &q);
            let envs: Vec<String> = (0..50)
                .map(|i| Envelope::new(format!("{id}-late-{i}"), "sleep", &id, now_ms()).to_json())
                .collect();
            let () = redis::cmd("LPUSH")
                .arg(keys.queue(&id))
                .arg(envs)
                .query_async(con)
                .await
                .unwrap();
            pushed.push((next_push, Instant::now()));
            next_push += 1;
        }
        for &(i, at) in &pushed {
            if done[i] {
                continue;
            }
            let (ns, _) = queue(pools[i]);
            let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let replicas = api
                .get_opt(&format!("pool-{}", pools[i]))
                .await
                .ok()
                .flatten()
                .and_then(|d| d.spec?.replicas)
                .unwrap_or(0);
            if replicas > 0 {
                result[i] = Some(at.elapsed());
                done[i] = true;
            } else if at.elapsed() > REACTION_DEADLINE {
                done[i] = true;
            }
        }
        if next_push == pools.len() && done.iter().all(|d| *d) {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Worker runtime against the real Redis: delivery and ack, recovery of a dead worker's
//! tasks, retries with backoff and dead letters, time limits, fairness, handlers, metrics.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{REDIS_URL, Running, Space, wait_until};
use funcscale_worker::handler::{Handler, TaskError};
use funcscale_worker::protocol::{Envelope, QueueConfig, QueueStats};
use funcscale_worker::worker::{Order, Worker, WorkerBuilder, now_ms};
use serde_json::json;
use tokio::sync::oneshot;

fn builder(s: &Space, queues: &[&str], processes: usize) -> WorkerBuilder {
    Worker::builder()
        .redis_url(REDIS_URL)
        .prefix(s.prefix.clone())
        .queues(queues.iter().copied())
        .processes(processes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_and_acknowledges() {
    let s = Space::new("deliver");
    let set = s.own("done");
    let envs: Vec<Envelope> = (0..200)
        .map(|i| s.env(&format!("t{i}"), "record", "q", json!([set])))
        .collect();
    s.enqueue("q", &envs).await;
    assert_eq!(s.stat("q", "enqueued").await, 200);
    let w = Running::start(builder(&s, &["q"], 3).configure(|c| c.name = "dl-w".into())).await;
    wait_until(
        "200 tasks recorded and acknowledged",
        Duration::from_secs(20),
        || async { s.int(&["SCARD", &set]).await == 200 && s.stat("q", "completed").await == 200 },
    )
    .await;
    // Nothing left waiting or in flight, and the stats hash parses.
    assert_eq!(s.int(&["LLEN", &s.keys.queue("q")]).await, 0);
    let mut con = s.con().await;
    let inflight: Vec<String> = redis::cmd("KEYS")
        .arg(s.keys.inflight("*"))
        .query_async(&mut con)
        .await
        .unwrap();
    for k in inflight {
        assert_eq!(s.int(&["LLEN", &k]).await, 0, "{k}");
    }
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(s.keys.stats("q"))
        .query_async(&mut con)
        .await
        .unwrap();
    let stats = QueueStats::from_pairs(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    assert_eq!(stats.completed, 200);
    assert!(stats.ewma_ms.is_some() && stats.percentile_ms(0.5).is_some());
    // Three live slots heartbeat into the registry (layout 2; the old one stays empty), with
    // hashes without a TTL.
    assert_eq!(s.int(&["ZCARD", &s.keys.slots()]).await, 3);
    assert_eq!(s.int(&["EXISTS", &s.keys.workers()]).await, 0);
    let slot = "dl-w.0".to_string();
    assert_eq!(s.int(&["TTL", &s.keys.worker(&slot)]).await, -1);
    w.stop().await;
    assert_eq!(
        s.int(&["ZCARD", &s.keys.slots()]).await,
        0,
        "slots deregister on drain"
    );
    assert_eq!(s.int(&["EXISTS", &s.keys.worker(&slot)]).await, 0);
}

/// The upgrade pass: a slot of an earlier version (registry `Keys::workers`, one in-flight
/// list per slot `Keys::inflight`, written here by hand) that died with tasks in flight is
/// recovered by a worker of this version and forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_tasks_of_a_dead_worker() {
    let s = Space::new("recover");
    let set = s.own("done");
    // A worker slot that died 10 s ago with three tasks in flight.
    let mut con = s.con().await;
    let ghost = "ghost-1.0";
    let _: () = redis::cmd("ZADD")
        .arg(s.keys.workers())
        .arg(now_ms() - 10_000)
        .arg(ghost)
        .query_async(&mut con)
        .await
        .unwrap();
    for i in 0..3 {
        let e = s.env(&format!("lost{i}"), "record", "q", json!([set]));
        let _: () = redis::cmd("LPUSH")
            .arg(s.keys.inflight(ghost))
            .arg(e.to_json())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let w = Running::start(builder(&s, &["q"], 2).configure(|c| c.worker_ttl_ms = 1_000)).await;
    wait_until(
        "the dead worker's tasks ran",
        Duration::from_secs(10),
        || async { s.int(&["SCARD", &set]).await == 3 },
    )
    .await;
    assert_eq!(s.int(&["LLEN", &s.keys.inflight(ghost)]).await, 0);
    wait_until(
        "the dead slot is forgotten",
        Duration::from_secs(5),
        || async { s.int(&["ZSCORE", &s.keys.workers(), ghost]).await == 0 },
    )
    .await;
    w.stop().await;
}

/// The queue's retry settings (what the operator writes from `FuncQueue.spec.maxRetries` and
/// `retryBackoff`) apply to a task a producer enqueues without a count of its own; a task
/// that carries one keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_retry_settings_apply_unless_the_task_sets_its_own() {
    let s = Space::new("qretry");
    s.set_queue_config(
        "q",
        &QueueConfig {
            max_retries: Some(0),
            retry_backoff_base_ms: Some(50),
            retry_backoff_max_ms: Some(100),
            ..Default::default()
        },
    )
    .await;
    // a producer's task: no count of its own (the `enqueue` default)
    let plain = s.env("plain", "fail", "q", json!(["boom"]));
    assert_eq!(plain.max_retries, None);
    let mut own = s.env("own", "fail", "q", json!(["boom"]));
    own.max_retries = Some(2);
    s.enqueue("q", &[plain, own]).await;
    // the worker's own backoff is a minute: only the queue's 50 ms lets "own" die in time
    let w = Running::start(builder(&s, &["q"], 1).configure(|c| c.retry_base_ms = 60_000)).await;
    wait_until("both dead-lettered", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.dead("q")]).await == 2
    })
    .await;
    w.stop().await;
    let attempts: std::collections::BTreeMap<String, u32> = s
        .list(&s.keys.dead("q"))
        .await
        .iter()
        .map(|raw| {
            let e = Envelope::from_json(raw).unwrap();
            (e.id, e.attempt)
        })
        .collect();
    // "plain" ran once (attempt 0) and died: the queue's maxRetries 0; "own" ran three times
    assert_eq!(
        attempts,
        [("own".to_string(), 2), ("plain".to_string(), 0)].into()
    );
    assert_eq!(s.stat("q", "retried").await, 2);
    assert_eq!(s.stat("q", "failed").await, 4);
}

/// The queue's running set (`Keys::running`, what the operator reads as the tasks running
/// now) follows the in-flight lists: a member per busy slot while tasks run (fetched by the
/// script over several queues and by the blocking move on one), none once they finished, and
/// a dead worker's slots leave it when the reaper puts their tasks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_set_follows_the_in_flight_lists() {
    let s = Space::new("running");
    let running = |q: &str| s.keys.running(q);
    // five 1.5 s tasks on two queues, three slots serving both
    let mut envs = Vec::new();
    for i in 0..3 {
        envs.push(s.env(&format!("a{i}"), "sleep", "qa", json!([1_500])));
    }
    s.enqueue("qa", &envs).await;
    let envs: Vec<Envelope> = (0..2)
        .map(|i| s.env(&format!("b{i}"), "sleep", "qb", json!([1_500])))
        .collect();
    s.enqueue("qb", &envs).await;
    let w = Running::start(builder(&s, &["qa", "qb"], 3)).await;
    wait_until("three running", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &running("qa")]).await + s.int(&["ZCARD", &running("qb")]).await == 3
    })
    .await;
    wait_until("all done", Duration::from_secs(10), || async {
        s.stat("qa", "completed").await + s.stat("qb", "completed").await == 5
    })
    .await;
    assert_eq!(s.int(&["ZCARD", &running("qa")]).await, 0);
    assert_eq!(s.int(&["ZCARD", &running("qb")]).await, 0);
    w.stop().await;

    // one queue: the blocking move, then the claim
    let w = Running::start(builder(&s, &["qc"], 2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let envs: Vec<Envelope> = (0..2)
        .map(|i| s.env(&format!("c{i}"), "sleep", "qc", json!([1_500])))
        .collect();
    s.enqueue("qc", &envs).await;
    wait_until("two running", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &running("qc")]).await == 2
    })
    .await;
    // a drain mid-task puts the tasks back and empties the running set
    w.stop().await;
    assert_eq!(s.int(&["ZCARD", &running("qc")]).await, 0);

    // a worker of an earlier version (layout 1, written by hand) that died with a task in
    // flight: the reaper's upgrade pass puts it back, the set follows
    let mut con = s.con().await;
    let ghost = "ghost-2.0";
    let e = s.env("lost", "sleep", "qd", json!([10]));
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(s.keys.workers())
        .arg(now_ms() - 10_000)
        .arg(ghost)
        .cmd("HSET")
        .arg(s.keys.worker(ghost))
        .arg("queues")
        .arg("qd,qe")
        .cmd("LPUSH")
        .arg(s.keys.inflight(ghost))
        .arg(e.to_json())
        .cmd("ZADD")
        .arg(running("qd"))
        .arg(now_ms() - 10_000)
        .arg(s.keys.inflight(ghost))
        // a stale member (its task was lost some other way) goes when the slot is forgotten
        .cmd("ZADD")
        .arg(running("qe"))
        .arg(now_ms() - 10_000)
        .arg(s.keys.inflight(ghost))
        .query_async(&mut con)
        .await
        .unwrap();
    let w = Running::start(builder(&s, &["qd"], 1).configure(|c| c.worker_ttl_ms = 1_000)).await;
    wait_until("the ghost's task ran", Duration::from_secs(10), || async {
        s.stat("qd", "completed").await == 1
    })
    .await;
    wait_until("the ghost is forgotten", Duration::from_secs(5), || async {
        s.int(&["ZSCORE", &s.keys.workers(), ghost]).await == 0
    })
    .await;
    assert_eq!(s.int(&["ZCARD", &running("qd")]).await, 0);
    assert_eq!(s.int(&["ZCARD", &running("qe")]).await, 0);
    w.stop().await;
}

/// The list a task came from is its queue, whatever the envelope's `queue` says (a producer
/// pushing to `status.key` with the FuncQueue's bare name in it): the finish leaves that
/// queue's running set, a retry waits in its delayed set, a drain puts the task back on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_a_task_came_from_is_its_queue() {
    let s = Space::new("fromq");
    let q = "{team.jobs}";
    let set = s.own("done");
    let ok = s.env("ok", "record", "jobs", json!([set]));
    let mut bad = s.env("bad", "fail", "jobs", json!(["boom"]));
    bad.max_retries = Some(1);
    s.enqueue(q, &[ok, bad]).await;
    let w = Running::start(builder(&s, &[q], 2).configure(|c| c.retry_base_ms = 60_000)).await;
    wait_until(
        "one done, one retry waiting",
        Duration::from_secs(10),
        || async { s.stat(q, "completed").await == 1 && s.stat(q, "retried").await == 1 },
    )
    .await;
    assert_eq!(s.int(&["SCARD", &set]).await, 1);
    assert_eq!(s.int(&["ZCARD", &s.keys.running(q)]).await, 0);
    assert_eq!(s.int(&["ZCARD", &s.keys.running("jobs")]).await, 0);
    assert_eq!(s.int(&["ZCARD", &s.keys.delayed("jobs")]).await, 0);
    let mut con = s.con().await;
    let delayed: Vec<String> = redis::cmd("ZRANGE")
        .arg(s.keys.delayed(q))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        delayed.len(),
        1,
        "the retry waits in its queue's delayed set"
    );
    let retry = Envelope::from_json(&delayed[0]).unwrap();
    assert_eq!((retry.id.as_str(), retry.queue.as_str()), ("bad", q));

    // while it runs, its in-flight entry names the queue it came from: a reaper or a cut-short
    // drain puts it back there (requeue.lua reads the entry), not on the bare name's list
    s.enqueue(q, &[s.env("slow", "sleep", "jobs", json!([1_000]))])
        .await;
    wait_until("running", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &s.keys.running(q)]).await == 1
    })
    .await;
    let slots: Vec<String> = redis::cmd("ZRANGE")
        .arg(s.keys.running(q))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let inflight = s.list(&slots[0]).await;
    assert_eq!(inflight.len(), 1, "{inflight:?}");
    assert_eq!(Envelope::from_json(&inflight[0]).unwrap().queue, q);
    w.stop().await;
    assert_eq!(s.stat(q, "completed").await, 2);
    assert_eq!(s.int(&["ZCARD", &s.keys.running(q)]).await, 0);
    assert_eq!(s.int(&["ZCARD", &s.keys.running("jobs")]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_then_dead_letters() {
    let s = Space::new("retry");
    let mut e = s.env("f1", "fail", "q", json!(["boom"]));
    e.max_retries = Some(2);
    s.enqueue("q", &[e]).await;
    let started = Instant::now();
    let w = Running::start(builder(&s, &["q"], 1).configure(|c| c.retry_base_ms = 200)).await;
    wait_until("dead letter", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.dead("q")]).await == 1
    })
    .await;
    // Backoff: >= 100 ms (200 ± 50%) then >= 200 ms (400 ± 50%).
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let mut con = s.con().await;
    let raw: String = redis::cmd("LINDEX")
        .arg(s.keys.dead("q"))
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    let dead = Envelope::from_json(&raw).unwrap();
    assert_eq!(
        (dead.id.as_str(), dead.attempt, dead.error.as_deref()),
        ("f1", 2, Some("boom"))
    );
    assert_eq!(s.stat("q", "failed").await, 3);
    assert_eq!(s.stat("q", "retried").await, 2);
    assert_eq!(s.stat("q", "dead").await, 1);
    assert_eq!(
        s.stat("q", "enqueued").await,
        1,
        "a promoted retry is no arrival: `retried` counts it"
    );
    assert_eq!(s.int(&["ZCARD", &s.keys.delayed("q")]).await, 0);
    // An unknown function is not retried.
    s.enqueue("q", &[s.env("u1", "nope", "q", json!([]))]).await;
    wait_until(
        "unknown function dead-lettered",
        Duration::from_secs(5),
        || async { s.int(&["LLEN", &s.keys.dead("q")]).await == 2 },
    )
    .await;
    assert_eq!(s.stat("q", "retried").await, 2);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_and_hard_time_limits() {
    let s = Space::new("limits");
    let told = s.own("told");
    let told2 = told.clone();
    let w = Running::start(builder(&s, &["q"], 2).handler("patient", move |mut ctx| {
        let told = told2.clone();
        async move {
            // Works until told that the soft limit passed, then wraps up cleanly.
            ctx.soft_limit().await;
            let mut con = ctx.redis();
            let _: i64 = redis::cmd("SADD")
                .arg(&told)
                .arg(&ctx.envelope.id)
                .query_async(&mut con)
                .await?;
            Ok::<_, TaskError>(json!("wrapped up"))
        }
    }))
    .await;
    let mut soft = s.env("soft", "patient", "q", json!([]));
    soft.soft_timeout_s = Some(1);
    let mut hard = s.env("hard", "sleep", "q", json!([60_000]));
    hard.hard_timeout_s = Some(1);
    hard.max_retries = Some(0);
    let started = Instant::now();
    s.enqueue("q", &[soft, hard]).await;
    wait_until(
        "soft limit observed and hard limit enforced",
        Duration::from_secs(8),
        || async {
            s.int(&["SISMEMBER", &told, "soft"]).await == 1
                && s.int(&["LLEN", &s.keys.dead("q")]).await == 1
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut con = s.con().await;
    let raw: String = redis::cmd("LINDEX")
        .arg(s.keys.dead("q"))
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        Envelope::from_json(&raw)
            .unwrap()
            .error
            .unwrap()
            .contains("hard time limit")
    );
    wait_until("soft task completed", Duration::from_secs(5), || async {
        s.stat("q", "completed").await == 1
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_order_does_not_starve_a_queue() {
    let s = Space::new("fair");
    let set = s.own("b");
    let busy: Vec<Envelope> = (0..2_000)
        .map(|i| s.env(&format!("a{i}"), "sleep", "a", json!([1])))
        .collect();
    s.enqueue("a", &busy).await;
    let few: Vec<Envelope> = (0..20)
        .map(|i| s.env(&format!("b{i}"), "record", "b", json!([set])))
        .collect();
    s.enqueue("b", &few).await;
    let w = Running::start(builder(&s, &["a", "b"], 1)).await;
    wait_until("queue b served", Duration::from_secs(20), || async {
        s.int(&["SCARD", &set]).await == 20
    })
    .await;
    let a_done = s.stat("a", "completed").await;
    // Alternating fetches: about 20 of a for 20 of b, far from the 2,000 waiting.
    assert!(a_done <= 60, "a completed {a_done} before b's 20");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_serves_the_first_queue_first() {
    let s = Space::new("prio");
    let set = s.own("low");
    s.enqueue(
        "high",
        &(0..50)
            .map(|i| s.env(&format!("h{i}"), "noop", "high", json!([])))
            .collect::<Vec<_>>(),
    )
    .await;
    s.enqueue("low", &[s.env("l0", "record", "low", json!([set]))])
        .await;
    let w =
        Running::start(builder(&s, &["high", "low"], 1).configure(|c| c.order = Order::Priority))
            .await;
    wait_until("low served", Duration::from_secs(10), || async {
        s.int(&["SCARD", &set]).await == 1
    })
    .await;
    assert_eq!(s.stat("high", "completed").await, 50);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_handler_runs_real_processes() {
    let s = Space::new("exec");
    let dir = std::env::temp_dir().join(&s.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("ids");
    // Any language: a shell handler that reads the envelope on stdin, records the task id,
    // fails for func "bad" and prints a JSON result.
    let script = dir.join("handler.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nbody=$(cat)\ncase \"$body\" in *'\"func\":\"bad\"'*) echo 'bad input' >&2; exit 3;; esac\necho \"$FUNCSCALE_TASK_ID\" >> {}\necho '{{\"ok\": true}}'\n",
            out.display()
        ),
    )
    .unwrap();
    let handler = Handler::parse(&format!("exec:sh {}", script.display())).unwrap();
    let w = Running::start(
        builder(&s, &["q"], 3)
            .handler_kind(handler)
            .configure(|c| c.hard_time_limit = Some(Duration::from_secs(30))),
    )
    .await;
    let mut envs: Vec<Envelope> = (0..20)
        .map(|i| s.env(&format!("x{i}"), "good", "q", json!([i])))
        .collect();
    let mut bad = s.env("bad1", "bad", "q", json!([]));
    bad.max_retries = Some(0);
    envs.push(bad);
    s.enqueue("q", &envs).await;
    wait_until(
        "20 executions and one dead letter",
        Duration::from_secs(20),
        || async {
            s.stat("q", "completed").await == 20 && s.int(&["LLEN", &s.keys.dead("q")]).await == 1
        },
    )
    .await;
    let ids = std::fs::read_to_string(&out).unwrap();
    assert_eq!(ids.lines().count(), 20);
    let mut con = s.con().await;
    let raw: String = redis::cmd("LINDEX")
        .arg(s.keys.dead("q"))
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    let err = Envelope::from_json(&raw).unwrap().error.unwrap();
    assert!(err.contains("bad input") && err.contains('3'), "{err}");
    w.stop().await;

    // Hard limit kills the child.
    let s2 = Space::new("exec-hard");
    let w = Running::start(
        builder(&s2, &["q"], 1).handler_kind(Handler::parse("exec:sleep 30").unwrap()),
    )
    .await;
    let mut slow = s2.env("slow", "slow", "q", json!([]));
    slow.hard_timeout_s = Some(1);
    slow.max_retries = Some(0);
    let started = Instant::now();
    s2.enqueue("q", &[slow]).await;
    wait_until(
        "killed at the hard limit",
        Duration::from_secs(6),
        || async { s2.int(&["LLEN", &s2.keys.dead("q")]).await == 1 },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(4));
    w.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handler_posts_to_a_real_server() {
    use http_body_util::{BodyExt, Full};
    let s = Space::new("http");
    let received = Arc::new(std::sync::Mutex::new(Vec::<Envelope>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = received.clone();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let env =
                                Envelope::from_json(std::str::from_utf8(&body).unwrap()).unwrap();
                            let status = if env.func == "broken" { 500 } else { 200 };
                            rec.lock().unwrap().push(env);
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(bytes::Bytes::from_static(b"{\"done\":1}")))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let handler = Handler::parse(&format!("http://{addr}/run")).unwrap();
    let w = Running::start(builder(&s, &["q"], 4).handler_kind(handler)).await;
    let mut envs: Vec<Envelope> = (0..30)
        .map(|i| s.env(&format!("h{i}"), "hello", "q", json!([i])))
        .collect();
    let mut broken = s.env("b1", "broken", "q", json!([]));
    broken.max_retries = Some(0);
    envs.push(broken);
    s.enqueue("q", &envs).await;
    wait_until(
        "30 posted and acknowledged, one dead",
        Duration::from_secs(15),
        || async {
            s.stat("q", "completed").await == 30 && s.int(&["LLEN", &s.keys.dead("q")]).await == 1
        },
    )
    .await;
    let mut ids: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.func == "hello")
        .map(|e| e.id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30);
    w.stop().await;
    server.abort();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let s = Space::new("metrics");
    let worker = builder(&s, &["q"], 1).build().await.unwrap();
    let (addr, server) = funcscale_worker::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        worker.metrics(),
        worker.health(),
    )
    .await
    .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    s.enqueue("q", &[s.env("m1", "noop", "q", json!([]))]).await;
    wait_until("task done", Duration::from_secs(5), || async {
        s.stat("q", "completed").await == 1
    })
    .await;
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("funcscale_worker_tasks_succeeded_total{func=\"noop\",queue=\"q\"} 1"),
        "{body}"
    );
    assert!(body.contains("funcscale_worker_task_duration_seconds_bucket"));
    assert!(body.contains("funcscale_worker_tasks_inflight"));
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    server.abort();

    // readyz turns false when Redis goes away: a private redis-server we then kill.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut redis_child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut manager = None;
    for _ in 0..100 {
        if let Ok(c) = funcscale_connect::Conn::open(&url).await {
            manager = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = funcscale_worker::metrics::health(manager.expect("private redis-server up"), None);
    let (addr, server) = funcscale_worker::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        funcscale_worker::metrics::Metrics::new(),
        health,
    )
    .await
    .unwrap();
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    redis_child.kill().await.unwrap();
    wait_until(
        "readyz reports Redis down",
        Duration::from_secs(10),
        || async { http_get(addr, "/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(
        http_get(addr, "/healthz").await.0,
        200,
        "liveness does not depend on Redis"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_children_are_replaced_after_max_tasks_and_memory() {
    let s = Space::new("pool");
    let dir = std::env::temp_dir().join(&s.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let script = dir.join("child.py");
    std::fs::write(
        &script,
        format!(
            r#"import json, os, signal, sys, time
told = False
def on_soft(*_):
    global told
    told = True
signal.signal(signal.SIGUSR1, on_soft)
for line in sys.stdin:
    env = json.loads(line)
    f = env["func"]
    if f == "pid":
        with open({log:?}, "a") as out: out.write(f"{{os.getpid()}}\n")
        print(json.dumps({{"ok": True, "result": os.getpid()}}), flush=True)
    elif f == "grow":
        hog = b"x" * (300 * 1024 * 1024)
        time.sleep(30)
    elif f == "soft":
        while not told: time.sleep(0.01)
        with open({log:?}, "a") as out: out.write("told\n")
        print(json.dumps({{"ok": True, "result": "wrapped up"}}), flush=True)
    else:
        print("noise on stdout", flush=True)
        print(json.dumps({{"ok": False, "error": "no such function " + f}}), flush=True)
"#,
            log = log.display().to_string()
        ),
    )
    .unwrap();
    let handler = Handler::parse(&format!("pool:python3 -u {}", script.display())).unwrap();
    let w = Running::start(builder(&s, &["q"], 1).handler_kind(handler).configure(|c| {
        c.max_tasks_per_child = Some(3);
        c.max_memory_per_child_kib = Some(100 * 1024);
    }))
    .await;
    let mut envs: Vec<Envelope> = (0..9)
        .map(|i| s.env(&format!("p{i}"), "pid", "q", json!([])))
        .collect();
    let mut grow = s.env("g", "grow", "q", json!([]));
    grow.max_retries = Some(0);
    let mut soft = s.env("s", "soft", "q", json!([]));
    soft.soft_timeout_s = Some(1);
    let mut other = s.env("o", "other", "q", json!([]));
    other.max_retries = Some(0);
    envs.extend([grow, soft, other]);
    s.enqueue("q", &envs).await;
    wait_until(
        "10 completed and 2 dead",
        Duration::from_secs(30),
        || async {
            s.stat("q", "completed").await == 10 && s.int(&["LLEN", &s.keys.dead("q")]).await == 2
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let mut pids: Vec<&str> = text.lines().filter(|l| *l != "told").collect();
    assert_eq!(pids.len(), 9);
    pids.dedup();
    assert_eq!(pids.len(), 3, "a child per 3 tasks: {text}");
    assert!(text.contains("told"), "the soft limit reached the child");
    let dead: Vec<String> = s.list(&s.keys.dead("q")).await;
    let errors: Vec<String> = dead
        .iter()
        .map(|r| Envelope::from_json(r).unwrap().error.unwrap())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("memory limit")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("no such function other")),
        "{errors:?}"
    );
    w.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prefetch is one task per free process: while its 3 processes are busy, the worker takes
/// nothing more, so the rest stays in the queue where the operator (and other pods) see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_at_most_one_task_per_free_process() {
    let s = Space::new("prefetch");
    let envs: Vec<Envelope> = (0..20)
        .map(|i| s.env(&format!("t{i}"), "sleep", "q", json!([2000])))
        .collect();
    s.enqueue("q", &envs).await;
    let queue = s.keys.queue("q");
    let w = Running::start(builder(&s, &["q"], 3)).await;
    wait_until("3 tasks taken", Duration::from_secs(10), || async {
        s.int(&["LLEN", &queue]).await <= 17
    })
    .await;
    for _ in 0..6 {
        assert_eq!(
            s.int(&["LLEN", &queue]).await,
            17,
            "a busy worker must not take more than one task per process"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    w.stop().await;
}

/// A URL destination that never answers holds one delivery for the POST timeout, but the
/// heartbeats go on meanwhile (else other workers would reap this worker's running tasks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_url_receiver_does_not_stop_the_heartbeats() {
    use funcscale_worker::protocol::{Destination, QueueConfig};
    let s = Space::new("slow-dest");
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let mut con = s.con().await;
    funcscale_worker::protocol::queue_config_set(
        &mut con,
        &s.keys,
        "q",
        &QueueConfig {
            on_success: Some(Destination::Url(format!("http://{addr}/hook"))),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    let w = Running::start(builder(&s, &["q"], 1).configure(|c| {
        c.worker_ttl_ms = 1_000;
        c.name = "w".into();
    }))
    .await;
    s.enqueue("q", &[s.env("t", "noop", "q", json!([]))]).await;
    wait_until("the POST is under way", Duration::from_secs(10), || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    let slot = "w.0".to_string();
    let beat = |con: redis::aio::MultiplexedConnection| {
        let key = s.keys.worker(&slot);
        async move {
            let mut con = con;
            let v: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg("heartbeat_ms")
                .query_async(&mut con)
                .await
                .unwrap();
            v.unwrap()
        }
    };
    let first = beat(con.clone()).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let later = beat(con.clone()).await;
    assert!(
        later >= first + 1_000,
        "heartbeats stalled behind the delivery: {first} then {later}"
    );
    w.stop().await;
    server.abort();
}

/// A scale-down's stop mark (`protocol::stop`): the worker of a marked pod finishes the task it
/// runs, takes no new one and answers `/readyz` with 503 and the reason; when the mark is
/// cleared it takes tasks and is ready again; its slots name the pod (running tasks per pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mark_stops_fetching_and_readiness_until_cleared() {
    use funcscale_worker::protocol::stop;
    use funcscale_worker::worker::PodRef;
    let s = Space::new("stopmark");
    let (ns, pod) = ("team-a", "w-5d8f-abcde");
    let worker = builder(&s, &["q"], 1)
        .configure(|c| {
            c.pod = Some(PodRef {
                namespace: ns.into(),
                name: pod.into(),
            })
        })
        .build()
        .await
        .unwrap();
    let (addr, server) = funcscale_worker::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        worker.metrics(),
        worker.health(),
    )
    .await
    .unwrap();
    let slot = worker.slots()[0].clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    let ran = s.own("ran");
    let runs = s.own("runs");
    // a long task running when the mark comes
    s.enqueue(
        "q",
        &[s.env("long", "record", "q", json!([ran, 1_500, runs]))],
    )
    .await;
    wait_until("the long task runs", Duration::from_secs(5), || async {
        s.int(&["SCARD", &ran]).await == 1
    })
    .await;
    // the operator's reading: the slot runs one task, in pod `pod`
    let mut con = s.con().await;
    let sets: Vec<Vec<String>> = stop::running_slots_pipeline(&s.keys, &["q"])
        .query_async(&mut con)
        .await
        .unwrap();
    let slots = stop::running_slots(&s.keys, &sets);
    assert_eq!(slots, [slot]);
    let pods: Vec<Option<String>> = stop::slot_pods_pipeline(&s.keys, &slots)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stop::count_by_pod(&pods).get(pod), Some(&1));

    let mut pipe = redis::pipe();
    stop::mark(
        &mut pipe,
        &s.keys,
        ns,
        &[pod],
        "scale-down of pool w from 4 to 2 pods",
        20_000,
    );
    let () = pipe.query_async(&mut con).await.unwrap();
    wait_until("readyz turns 503", Duration::from_secs(5), || async {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    let (_, body) = http_get(addr, "/readyz").await;
    assert!(
        body.contains("stopping") && body.contains("from 4 to 2"),
        "{body}"
    );
    // more work arrives: not taken; the running task finishes, once
    s.enqueue("q", &[s.env("later", "record", "q", json!([ran, 0, runs]))])
        .await;
    wait_until("the long task finishes", Duration::from_secs(5), || async {
        s.stat("q", "completed").await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        s.int(&["LLEN", &s.keys.queue("q")]).await,
        1,
        "nothing taken while marked"
    );
    assert_eq!(s.list(&runs).await, ["long"], "the running task ran once");
    assert_eq!(
        http_get(addr, "/healthz").await.0,
        200,
        "alive while marked"
    );

    // cleared (the scale-down was called off): tasks again, ready again
    let mut pipe = redis::pipe();
    stop::clear(&mut pipe, &s.keys, ns, &[pod]);
    let () = pipe.query_async(&mut con).await.unwrap();
    wait_until("the waiting task runs", Duration::from_secs(5), || async {
        s.stat("q", "completed").await == 2
    })
    .await;
    wait_until("readyz turns 200", Duration::from_secs(5), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(s.list(&runs).await, ["long", "later"]);

    // a mark of another pod, or of the same pod name in another namespace, does nothing
    let mut pipe = redis::pipe();
    stop::mark(&mut pipe, &s.keys, "team-b", &[pod], "x", 20_000);
    stop::mark(&mut pipe, &s.keys, ns, &["w-other"], "x", 20_000);
    let () = pipe.query_async(&mut con).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    // and a mark expires by itself (a dead operator never leaves the worker stuck)
    let mut pipe = redis::pipe();
    stop::mark(&mut pipe, &s.keys, ns, &[pod], "short", 1_200);
    let () = pipe.query_async(&mut con).await.unwrap();
    wait_until("readyz turns 503", Duration::from_secs(5), || async {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    wait_until("the mark expires", Duration::from_secs(5), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    server.abort();
}

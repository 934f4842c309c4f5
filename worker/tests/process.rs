//! Real `funcscale-worker` processes: drain on SIGTERM, and a chaos run with SIGKILLs.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{REDIS_URL, Space, wait_until};
use funcscale_worker::protocol::Envelope;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::{Child, Command};

fn spawn_worker(s: &Space, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_funcscale-worker"))
        .env("FUNCSCALE_REDIS_URL", REDIS_URL)
        .env("FUNCSCALE_PREFIX", &s.prefix)
        .env("RUST_LOG", "warn")
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("worker binary starts")
}

fn signal(child: &Child, sig: Signal) {
    let _ = kill(Pid::from_raw(child.id().expect("running") as i32), sig);
}

async fn inflight_total(s: &Space) -> i64 {
    let mut con = s.con().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(s.keys.inflight("*"))
        .query_async(&mut con)
        .await
        .unwrap();
    let mut n = 0;
    for k in keys {
        n += s.int(&["LLEN", &k]).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_tasks_and_takes_no_more() {
    let s = Space::new("drain");
    let envs: Vec<Envelope> = (0..12)
        .map(|i| s.env(&format!("d{i}"), "sleep", "q", json!([1_500])))
        .collect();
    s.enqueue("q", &envs).await;
    let mut child = spawn_worker(
        &s,
        &[
            "--queues",
            "q",
            "--processes",
            "2",
            "--drain-timeout",
            "10s",
        ],
    );
    wait_until("two tasks running", Duration::from_secs(10), || async {
        inflight_total(&s).await == 2
    })
    .await;
    signal(&child, Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert!(status.success(), "{status}");
    // The two running tasks finished; nothing else was taken; nothing is left in flight.
    assert_eq!(s.stat("q", "completed").await, 2);
    assert_eq!(s.int(&["LLEN", &s.keys.queue("q")]).await, 10);
    assert_eq!(inflight_total(&s).await, 0);
    assert_eq!(s.int(&["ZCARD", &s.keys.slots()]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_puts_back_what_cannot_finish_in_time() {
    let s = Space::new("drain-timeout");
    let envs: Vec<Envelope> = (0..3)
        .map(|i| s.env(&format!("l{i}"), "sleep", "q", json!([60_000])))
        .collect();
    s.enqueue("q", &envs).await;
    let mut child = spawn_worker(
        &s,
        &[
            "--queues",
            "q",
            "--processes",
            "3",
            "--drain-timeout",
            "500ms",
        ],
    );
    wait_until("three tasks running", Duration::from_secs(10), || async {
        inflight_total(&s).await == 3
    })
    .await;
    let started = Instant::now();
    signal(&child, Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        s.int(&["LLEN", &s.keys.queue("q")]).await,
        3,
        "all three are back in the queue"
    );
    assert_eq!(inflight_total(&s).await, 0);
    assert_eq!(
        s.stat("q", "completed").await + s.stat("q", "failed").await,
        0
    );
    // Put back at the head, unchanged: the next worker gets the same envelopes.
    let raw: Vec<String> = s.list(&s.keys.queue("q")).await;
    for r in raw {
        assert_eq!(Envelope::from_json(&r).unwrap().attempt, 0);
    }
}

/// A worker process SIGKILLed while two tasks of two queues run: its per-queue in-flight lists
/// (layout 2, in each queue's hash tag) and its registry entry stay behind; another worker,
/// serving only one of the queues, recovers both tasks (the dead slot's hash names the other
/// queue), releases the lists and forgets the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_task_another_worker_recovers_it() {
    let s = Space::new("kill9");
    let set = s.own("done");
    let runs = s.own("runs");
    let (qa, qb) = ("{k9.a}", "{k9.b}");
    s.enqueue(qa, &[s.env("ta", "record", qa, json!([set, 3_000, runs]))])
        .await;
    s.enqueue(qb, &[s.env("tb", "record", qb, json!([set, 3_000, runs]))])
        .await;
    let args = |name: &'static str, queues: &'static str| {
        [
            "--queues",
            queues,
            "--processes",
            "2",
            "--worker-ttl-ms",
            "1000",
            "--name",
            name,
        ]
    };
    let mut victim = spawn_worker(&s, &args("victim", "{k9.a},{k9.b}"));
    let ks = s.keys.clone().in_namespace(Some("k9".into()));
    wait_until("both tasks in flight", Duration::from_secs(10), || async {
        s.int(&["ZCARD", &s.keys.running(qa)]).await == 1
            && s.int(&["ZCARD", &s.keys.running(qb)]).await == 1
    })
    .await;
    // the tasks sit in the victim's per-queue lists
    let lists = [ks.inflight_q(qa, "victim.0"), ks.inflight_q(qa, "victim.1")];
    let mut held = 0;
    for l in &lists {
        held += s.int(&["LLEN", l]).await;
    }
    assert_eq!(held, 1, "one task of {qa} in the victim's lists of {qa}");
    signal(&victim, Signal::SIGKILL);
    let _ = victim.wait().await;
    assert_eq!(inflight_total(&s).await, 2, "killed with both in flight");
    assert_eq!(s.int(&["LLEN", &runs]).await, 2);
    let mut rescuer = spawn_worker(&s, &args("rescuer", "{k9.a}"));
    wait_until(
        "the rescuer recovered both",
        Duration::from_secs(15),
        || async {
            s.int(&["LLEN", &s.keys.queue(qb)]).await == 1 && s.int(&["LLEN", &runs]).await == 3
        },
    )
    .await;
    wait_until(
        "the victim's slots are forgotten",
        Duration::from_secs(5),
        || async { s.int(&["ZCARD", &ks.slots()]).await == 2 },
    )
    .await;
    assert_eq!(s.int(&["ZCARD", &s.keys.running(qb)]).await, 0);
    assert_eq!(s.int(&["EXISTS", &ks.worker("victim.0")]).await, 0);
    signal(&rescuer, Signal::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(10), rescuer.wait()).await;
    assert_eq!(inflight_total(&s).await, 0);
}

/// 10,000 tasks, three worker processes of five slots, one of them SIGKILLed at random every
/// ~600 ms and restarted. Every task's own side effect (its id in a Redis set written by the
/// `record` built-in) must appear: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_loses_no_task() {
    const N: usize = 10_000;
    let s = Space::new("chaos");
    let set = s.own("done");
    let runs = s.own("runs");
    let envs: Vec<Envelope> = (0..N)
        .map(|i| s.env(&format!("c{i}"), "record", "q", json!([set, 2, runs])))
        .collect();
    s.enqueue("q", &envs).await;
    let args = [
        "--queues",
        "q",
        "--processes",
        "5",
        "--worker-ttl-ms",
        "1500",
        "--drain-timeout",
        "5s",
    ];
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(&s, &args)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    loop {
        let done = s.int(&["SCARD", &set]).await as usize;
        if done == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {N} tasks done after 60 s ({kills} kills)"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Keep killing while there is work left, but stop a few seconds before the end so
        // the last recoveries can run.
        if done < N * 9 / 10 {
            let i = fastrand::usize(..workers.len());
            signal(&workers[i], Signal::SIGKILL);
            let _ = workers[i].wait().await;
            kills += 1;
            workers[i] = spawn_worker(&s, &args);
        }
    }
    assert!(
        kills >= 3,
        "the run was too short to kill anything ({kills} kills)"
    );
    for w in &workers {
        signal(w, Signal::SIGTERM);
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.wait()).await;
    }
    assert_eq!(s.int(&["SCARD", &set]).await as usize, N);
    assert_eq!(s.int(&["LLEN", &s.keys.queue("q")]).await, 0);
    let executions = s.int(&["LLEN", &runs]).await;
    eprintln!(
        "chaos: {kills} kills, {executions} executions for {N} tasks ({} re-runs of interrupted tasks)",
        executions - N as i64
    );
    assert!(
        executions > N as i64,
        "some killed tasks must have been recovered and run again"
    );
}

async fn cli(s: &Space, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_funcscale-worker"))
        .env("FUNCSCALE_REDIS_URL", REDIS_URL)
        .env("FUNCSCALE_PREFIX", &s.prefix)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_schedules_commands() {
    let s = Space::new("cli");
    cli(
        &s,
        &[
            "enqueue",
            "--queue",
            "q",
            "--func",
            "f",
            "--args",
            "[1,\"a\"]",
            "--kwargs",
            "{\"k\":2}",
            "--id",
            "job",
            "--count",
            "1000",
        ],
    )
    .await;
    assert_eq!(s.int(&["LLEN", &s.keys.queue("q")]).await, 1_000);
    assert_eq!(s.stat("q", "enqueued").await, 1_000);
    let mut con = s.con().await;
    let oldest: String = redis::cmd("LINDEX")
        .arg(s.keys.queue("q"))
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let e = Envelope::from_json(&oldest).unwrap();
    assert_eq!(
        (e.id.as_str(), e.args.clone(), e.kwargs.clone()),
        ("job-0", json!([1, "a"]), json!({"k": 2}))
    );

    // Tens of thousands of monitors in one command, pipelined.
    let started = Instant::now();
    cli(
        &s,
        &[
            "schedules",
            "add",
            "--queue",
            "m",
            "--id",
            "mon",
            "--cron",
            "*/1 * * * *",
            "--func",
            "check",
            "--count",
            "30000",
        ],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(s.int(&["HLEN", &s.keys.schedules("m")]).await, 30_000);
    assert_eq!(
        s.int(&["GET", &s.keys.schedules_per_period("m")]).await,
        30_000
    );
    cli(
        &s,
        &[
            "schedules",
            "add",
            "--queue",
            "m",
            "--id",
            "slow",
            "--cron",
            "*/5 * * * *",
            "--func",
            "check",
        ],
    )
    .await;
    let m: String = redis::cmd("GET")
        .arg(s.keys.schedules_per_period("m"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(m, "30000.2");
    let listed = cli(&s, &["schedules", "list", "--queue", "m"]).await;
    assert_eq!(listed.lines().count(), 30_001);
    cli(
        &s,
        &[
            "schedules",
            "remove",
            "--queue",
            "m",
            "--id",
            "mon",
            "--count",
            "30000",
        ],
    )
    .await;
    cli(&s, &["schedules", "remove", "--queue", "m", "--id", "slow"]).await;
    assert_eq!(s.int(&["GET", &s.keys.schedules_per_period("m")]).await, 0);
    // the emptied registry stays in the set (a removal there could hide a racing add's
    // registry); the beat skips it
    assert_eq!(s.int(&["HLEN", &s.keys.schedules("m")]).await, 0);
    assert_eq!(
        s.int(&["SISMEMBER", &s.keys.schedule_queues(None), "m"])
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_process_fires_and_releases_its_lease_on_sigterm() {
    let s = Space::new("beat-proc");
    let file = std::env::temp_dir().join(format!("{}.yaml", s.prefix));
    std::fs::write(
        &file,
        "apiVersion: funcscale.dev/v1alpha1\nkind: FuncQueue\nmetadata: {name: q}\nspec:\n  schedules:\n    - {name: s, cron: \"* * * * * *\", function: noop}\n",
    )
    .unwrap();
    let mut beat = Command::new(env!("CARGO_BIN_EXE_funcscale-worker"))
        .env("FUNCSCALE_REDIS_URL", REDIS_URL)
        .env("FUNCSCALE_PREFIX", &s.prefix)
        .env("RUST_LOG", "warn")
        .args([
            "beat",
            "--schedules-file",
            file.to_str().unwrap(),
            "--lease-ttl",
            "3s",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the beat fires", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.queue("q")]).await >= 2
    })
    .await;
    assert_eq!(s.int(&["EXISTS", &s.keys.beat_lease(None)]).await, 1);
    signal(&beat, Signal::SIGTERM);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), beat.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    assert_eq!(
        s.int(&["EXISTS", &s.keys.beat_lease(None)]).await,
        0,
        "released, so a successor starts at once"
    );
    let _ = std::fs::remove_file(file);
}

/// The audit commands end to end through the binary: a task fails for good; `tasks list
/// --status failed`, `tasks show` and `dead-letters list` find it by id, `tasks counts`
/// counts it; `dead-letters requeue` puts it back with the same id and attempt 0, and it
/// succeeds on the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_commands_find_count_and_requeue_a_dead_task() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Space::new("cli-audit");
    let fixed = Arc::new(AtomicBool::new(false));
    let worker = || {
        let fixed = fixed.clone();
        funcscale_worker::worker::Worker::builder()
            .redis_url(REDIS_URL)
            .prefix(s.prefix.clone())
            .queues(["q"])
            .handler("charge", move |_ctx| {
                let fixed = fixed.clone();
                async move {
                    if fixed.load(Ordering::SeqCst) {
                        Ok(json!("charged"))
                    } else {
                        Err(funcscale_worker::handler::TaskError::new("card declined"))
                    }
                }
            })
    };
    let mut e = s.env("trace-7-charge", "charge", "q", json!([]));
    e.max_retries = Some(0);
    s.enqueue("q", &[e, s.env("trace-8-other", "noop", "q", json!([]))])
        .await;
    let w = common::Running::start(worker()).await;
    wait_until("dead-lettered", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.dead("q")]).await == 1 && s.stat("q", "completed").await == 1
    })
    .await;
    w.stop().await;

    let rows = |out: String| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let failed = rows(
        cli(
            &s,
            &[
                "tasks",
                "list",
                "--queue",
                "q",
                "--status",
                "failed",
                "--id-prefix",
                "trace-",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (&failed[0]["id"], &failed[0]["status"], &failed[0]["error"]),
        (
            &json!("trace-7-charge"),
            &json!("dead"),
            &json!("card declined")
        )
    );
    let shown: serde_json::Value =
        serde_json::from_str(&cli(&s, &["tasks", "show", "trace-7-charge", "--queue", "q"]).await)
            .unwrap();
    assert_eq!(shown["func"], "charge");
    let letters = rows(cli(&s, &["dead-letters", "list", "--queue", "q", "--json"]).await);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["id"], "trace-7-charge");
    let counts = rows(
        cli(
            &s,
            &[
                "tasks", "counts", "--queue", "q", "--since", "10m", "--json",
            ],
        )
        .await,
    );
    let sum = |k: &str| counts.iter().map(|b| b[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        [
            sum("submitted"),
            sum("completed"),
            sum("failed"),
            sum("dead")
        ],
        [2, 1, 1, 1],
        "{counts:?}"
    );

    cli(
        &s,
        &[
            "dead-letters",
            "requeue",
            "--queue",
            "q",
            "--id-prefix",
            "trace-7",
        ],
    )
    .await;
    assert_eq!(s.int(&["LLEN", &s.keys.dead("q")]).await, 0);
    fixed.store(true, Ordering::SeqCst);
    let w = common::Running::start(worker()).await;
    wait_until(
        "the requeued task succeeds",
        Duration::from_secs(10),
        || async { s.stat("q", "completed").await == 2 },
    )
    .await;
    w.stop().await;
    let shown: serde_json::Value =
        serde_json::from_str(&cli(&s, &["tasks", "show", "trace-7-charge", "--queue", "q"]).await)
            .unwrap();
    assert_eq!(
        (&shown["status"], &shown["attempt"], &shown["error"]),
        (&json!("succeeded"), &json!(0), &serde_json::Value::Null),
        "{shown}"
    );
}

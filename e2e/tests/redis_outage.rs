//! Redis refusing a finished task's finish, on a private `redis-server`: while the task runs,
//! an administrator takes the scripts away from the worker's user (`ACL SETUSER default
//! -@scripting`: every EVALSHA fails with NOPERM, as a mistaken ACL change would) and gives
//! them back two and a half seconds later. The real `funcscale-worker` binary keeps sending
//! the finish until Redis takes it, and the task is not run a second time (its runs are
//! counted in a list, not a set; before, the slot's next fetch handed the unfinished task back
//! and ran it again). Needs the binaries built (`cargo build --workspace --bins`).

use std::time::Duration;

use funcscale_e2e::scenario::{PrivateRedis, output_text, worker_command, worker_output};
use funcscale_protocol::Keys;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn llen(url: &str, key: &str) -> Option<i64> {
    let c = redis::Client::open(url).ok()?;
    let mut con = c.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("LLEN").arg(key).query_async(&mut con).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_finish_is_refused_for_a_while_runs_once() {
    let srv =
        PrivateRedis::start_with(&["--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all"])
            .await
            .unwrap();
    let admin =
        redis::Client::open(format!("redis://admin:admin-pw@127.0.0.1:{}/0", srv.port)).unwrap();
    let admin = admin.get_multiplexed_async_connection().await.unwrap();
    let url = srv.url();
    let prefix = "outage";
    let keys = Keys::new(prefix);
    let env = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_PREFIX", prefix),
    ];
    // record: SADD done, RPUSH runs (one entry per run), then sleep 1.5 s
    let args = json!(["done", 1500, "runs"]).to_string();
    let out = worker_output(
        &env,
        &[
            "enqueue", "--queue", "jobs", "--func", "record", "--args", &args, "--id", "t",
        ],
        TIMEOUT,
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let mut worker = worker_command(
        &env,
        &[
            "run",
            "--queues",
            "jobs",
            "--processes",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::inherit())
    .spawn()
    .unwrap();
    funcscale_e2e::eventually(TIMEOUT, "the task starts", || {
        let url = url.clone();
        async move { (llen(&url, "runs").await == Some(1)).then_some(()) }
    })
    .await
    .unwrap();
    // while the task sleeps (1.5 s), the worker's user loses the scripts past the task's end:
    // its finish is refused
    let acl = |rule: &'static str| {
        let mut admin = admin.clone();
        async move {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg(rule)
                .query_async(&mut admin)
                .await
                .unwrap();
        }
    };
    acl("-@scripting").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    acl("+@all").await;
    funcscale_e2e::eventually(TIMEOUT, "the task is finished", || {
        let url = url.clone();
        let inflight = keys.running("jobs");
        async move {
            let c = redis::Client::open(url.as_str()).ok()?;
            let mut con = c.get_multiplexed_async_connection().await.ok()?;
            let running: i64 = redis::cmd("ZCARD")
                .arg(&inflight)
                .query_async(&mut con)
                .await
                .ok()?;
            let done: i64 = redis::cmd("HGET")
                .arg(Keys::new("outage").stats("jobs"))
                .arg("completed")
                .query_async::<Option<i64>>(&mut con)
                .await
                .ok()??;
            (running == 0 && done == 1).then_some(())
        }
    })
    .await
    .unwrap();
    // a second run would come within a fetch (< 1 s); give it time to show
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        llen(&url, "runs").await,
        Some(1),
        "the task ran again after the outage"
    );
    assert_eq!(llen(&url, &keys.queue("jobs")).await, Some(0));
    let pid = nix::unistd::Pid::from_raw(worker.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(TIMEOUT, worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker exit {status}");
}

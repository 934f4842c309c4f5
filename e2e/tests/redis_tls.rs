//! Redis over TLS, on real `redis-server` processes that speak TLS only (a Sentinel set whose
//! data nodes, replication and sentinels all use TLS, with a CA of the test's own): the real
//! `funcscale-worker` binary (producer CLI and worker) trusts the CA through `SSL_CERT_FILE`
//! (as docs/operations.md "TLS" says), runs every task (side effects counted) across a SIGKILL
//! of the master, refuses a certificate it cannot verify with a message that says so, and
//! connects without verification when the URL ends in `#insecure`; a plain `rediss://` URL to
//! one node works the same; funcscale-celery's client (redis-py) does both too. Needs the
//! binaries built (`cargo build --workspace --bins`) and `openssl`.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use funcscale_e2e::redis_topology::{Auth, SentinelOptions, SentinelSet};
use funcscale_e2e::scenario::bin;
use serde_json::json;

const PW: &str = "tls-data-pw";
const TIMEOUT: Duration = Duration::from_secs(30);

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("tls-{name}-{}-{:x}", std::process::id(), nanos % 0xfffff)
}

async fn tls_set() -> SentinelSet {
    SentinelSet::start(SentinelOptions {
        tls: true,
        data_auth: Some(Auth::password(PW)),
        ..SentinelOptions::default()
    })
    .await
    .unwrap()
}

/// `funcscale-worker ARGS` with only `env` among the FUNCSCALE_* and SSL_CERT_* variables.
fn worker_cmd(env: &[(&str, &str)], args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("funcscale-worker").unwrap());
    for (k, _) in std::env::vars() {
        if (k.starts_with("FUNCSCALE_") && !k.starts_with("FUNCSCALE_E2E"))
            || k.starts_with("SSL_CERT_")
        {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn worker_out(env: &[(&str, &str)], args: &[&str]) -> Output {
    let out = tokio::time::timeout(TIMEOUT, worker_cmd(env, args).output())
        .await
        .expect("the command finishes")
        .unwrap();
    eprintln!(
        "$ funcscale-worker {}\n{}{}-> {:?}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `enqueue` of `count` `record` tasks (ids `<id>-<n>`) adding to set `done`.
async fn enqueue(env: &[(&str, &str)], done: &str, id: &str, count: u32) -> Output {
    let args = json!([done]).to_string();
    let count = count.to_string();
    worker_out(
        env,
        &[
            "enqueue", "--queue", "jobs", "--func", "record", "--args", &args, "--count", &count,
            "--id", id,
        ],
    )
    .await
}

async fn scard(set: &mut SentinelSet, key: &str) -> Option<u64> {
    let mut con = set.master_connection().await.ok()?;
    redis::cmd("SCARD")
        .arg(key)
        .query_async(&mut con)
        .await
        .ok()
}

/// The producer CLI and a worker on `rediss+sentinel://`, trusting the test CA through
/// `SSL_CERT_FILE` only: 20 tasks run, the master is SIGKILLed, 20 more are enqueued (the CLI
/// retried until the promoted replica takes them) and run on the same worker process: 40
/// side effects, each task once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_cli_over_tls_sentinel_follow_a_failover() {
    let mut set = tls_set().await;
    let url = set.url();
    let ca = set.ca().unwrap().ca.display().to_string();
    let prefix = unique("failover");
    let done = format!("{prefix}-done");
    let env = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_REDIS_PASSWORD", PW),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let out = enqueue(&env, &done, "a", 20).await;
    assert!(out.status.success(), "{}", text(&out));
    let mut worker = worker_cmd(
        &env,
        &[
            "run",
            "--queues",
            "jobs",
            "--processes",
            "4",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let wait_done = |n: u64| {
        let deadline = Instant::now() + TIMEOUT;
        async move { (n, deadline) }
    };
    let (n, deadline) = wait_done(20).await;
    while scard(&mut set, &done).await != Some(n) {
        assert!(Instant::now() < deadline, "{n} tasks did not run over TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    set.wait_replicated(2, Duration::from_secs(2))
        .await
        .unwrap();
    let old = set.kill_master().await.unwrap();
    set.wait_for_new_master(old, TIMEOUT).await.unwrap();
    // a producer retries a failed enqueue (docs: the CLI does not retry by itself)
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = enqueue(&env, &done, "b", 20).await;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no enqueue after the failover: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (n, deadline) = wait_done(40).await;
    while scard(&mut set, &done).await != Some(n) {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker exited after the failover"
        );
        assert!(
            Instant::now() < deadline,
            "the tasks enqueued after the failover did not run"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = nix::unistd::Pid::from_raw(worker.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(TIMEOUT, worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker exit {status}");
    assert_eq!(
        scard(&mut set, &done).await,
        Some(40),
        "every task ran once"
    );
}

/// Without the CA the certificate is refused and the message says why; `#insecure` skips the
/// check; a plain `rediss://` URL to the master works with the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_verified_unless_the_url_says_insecure() {
    let mut set = tls_set().await;
    let url = set.url();
    let ca = set.ca().unwrap().ca.display().to_string();
    let prefix = unique("verify");
    let done = format!("{prefix}-done");
    let base = [
        ("FUNCSCALE_REDIS_PASSWORD", PW),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let with = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&str, String)> = base.iter().map(|(k, v)| (*k, v.to_string())).collect();
        v.extend(extra.iter().cloned());
        v
    };
    let run = |env: Vec<(&'static str, String)>, id: &'static str| {
        let done = done.clone();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            enqueue(&env, &done, id, 1).await
        }
    };

    let untrusted = run(with(&[("FUNCSCALE_REDIS_URL", url.clone())]), "untrusted").await;
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    let msg = text(&untrusted);
    assert!(
        msg.contains("certificate") && msg.contains("UnknownIssuer"),
        "the refusal does not say the certificate is not trusted: {msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");

    let insecure = run(
        with(&[("FUNCSCALE_REDIS_URL", format!("{url}#insecure"))]),
        "insecure",
    )
    .await;
    assert!(insecure.status.success(), "{}", text(&insecure));

    let master = set.master_port().await.unwrap();
    let node = run(
        with(&[
            (
                "FUNCSCALE_REDIS_URL",
                format!("rediss://127.0.0.1:{master}/0"),
            ),
            ("SSL_CERT_FILE", ca.clone()),
        ]),
        "node",
    )
    .await;
    assert!(node.status.success(), "{}", text(&node));
    let node_insecure = run(
        with(&[(
            "FUNCSCALE_REDIS_URL",
            format!("rediss://127.0.0.1:{master}/0#insecure"),
        )]),
        "node-insecure",
    )
    .await;
    assert!(node_insecure.status.success(), "{}", text(&node_insecure));

    let mut con = set.master_connection().await.unwrap();
    let queued: u64 = redis::cmd("LLEN")
        .arg(format!("{prefix}:q:jobs"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        queued, 3,
        "the three accepted enqueues, and only they, reached the master"
    );
}

/// funcscale-celery's client (redis-py `Sentinel.master_for`) on `rediss+sentinel://`: with
/// the CA from `SSL_CERT_FILE`, and with `#insecure` and no CA; refused without either.
#[tokio::test]
async fn the_celery_integration_speaks_tls_to_sentinels_and_master() {
    let out = std::process::Command::new(
        funcscale_e2e::control_plane::repo_root().join("e2e/control-plane/celery-venv.sh"),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python =
        std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python");
    let mut set = tls_set().await;
    let ca = set.ca().unwrap().ca.display().to_string();
    let incr = |url: String, ca: Option<&str>| {
        let mut c = std::process::Command::new(&python);
        let tries = if ca.is_some() || url.ends_with("#insecure") {
            "20"
        } else {
            "1"
        };
        c.args([
            "-c",
            // a few tries (as a task's recorder would meet a set still settling); the last
            // error is printed with the sentinels' own
            "import sys, time, traceback\n\
             from funcscale_celery import config\n\
             c = config.load(need_queues=False).client()\n\
             for i in range(int(sys.argv[1])):\n\
             \x20   try:\n\
             \x20       print(c.incr('tls:celery')); break\n\
             \x20   except Exception as e:\n\
             \x20       err = e; time.sleep(0.5)\n\
             else:\n\
             \x20   for s in c.connection_pool.sentinel_manager.sentinels:\n\
             \x20       try: s.ping()\n\
             \x20       except Exception: traceback.print_exc()\n\
             \x20   raise err\n",
            tries,
        ])
        .env("FUNCSCALE_REDIS_URL", url)
        .env("FUNCSCALE_REDIS_PASSWORD", PW)
        .env("FUNCSCALE_POD_NAMESPACE", "tls")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            c.env("SSL_CERT_FILE", ca);
        }
        c.output().unwrap()
    };
    let trusted = incr(set.url(), Some(&ca));
    assert!(trusted.status.success(), "{}", text(&trusted));
    assert_eq!(String::from_utf8_lossy(&trusted.stdout).trim(), "1");
    let insecure = incr(format!("{}#insecure", set.url()), None);
    assert!(insecure.status.success(), "{}", text(&insecure));
    assert_eq!(String::from_utf8_lossy(&insecure.stdout).trim(), "2");
    let refused = incr(set.url(), None);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        text(&refused)
    );
    let mut con = set.master_connection().await.unwrap();
    let v: u64 = redis::cmd("GET")
        .arg("tls:celery")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(v, 2);
}

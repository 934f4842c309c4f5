//! `funcscale-demo` (`make demo`): the real control plane (`e2e/control-plane/`, found or
//! built once; where it cannot be had, the in-memory API server and the simulated kubelet,
//! said so), the process kubelet, the real operator, one queue with an autoscaled pool and a producer sending waves of tasks; prints
//! once a second the depth, the replicas and why, so the pool is seen breathing with the load.
//! Ends by itself (default 120 s) or on Ctrl-C, stopping every process it started and
//! deleting its Redis keys.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use funcscale_e2e::scenario::{Options, Scenario};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "funcscale live demo: a pool that grows and shrinks with waves of tasks")]
struct Args {
    /// How long the demo runs, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Redis of the demo (its keys use their own prefix and are deleted at the end).
    #[arg(long, env = "FUNCSCALE_REDIS_URL", default_value = funcscale_e2e::scenario::REDIS_URL)]
    redis_url: String,
    /// Where the operator and pod logs go.
    #[arg(long, default_value = "/tmp/funcscale-demo")]
    log_dir: PathBuf,
    /// Milliseconds each task sleeps.
    #[arg(long, default_value_t = 20)]
    task_ms: u64,
}

/// The load: (second, tasks pushed at once) — a burst, a steady stream, quiet, a bigger burst.
fn waves() -> Vec<(u64, u64)> {
    let mut w = vec![(5, 3_000)];
    w.extend((30..50).map(|t| (t, 150)));
    w.push((70, 12_000));
    w
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.log_dir);
    let mut opts = Options::new("demo");
    opts.redis_url = args.redis_url.clone();
    opts.poll_interval = Duration::from_millis(500);
    opts.log_dir = Some(args.log_dir.clone());
    println!(
        "funcscale demo: finding the Kubernetes control plane (etcd, kube-apiserver, \
         controller-manager, scheduler; built once if needed: about 5 minutes, progress below) …"
    );
    match funcscale_e2e::control_plane::ControlPlane::ensure().await {
        Ok(cp) => println!(
            "on the real control plane ({}): real Deployment/ReplicaSet controllers and \
             scheduler, pods run as local processes by the e2e process kubelet",
            cp.dir.display()
        ),
        Err(e) => {
            println!(
                "no real control plane here ({e:#}): running on the in-memory API server with \
                 the simulated kubelet instead"
            );
            opts.in_memory = true;
        }
    }
    println!("starting the namespace, the kubelet and the operator …");
    let s = Scenario::start(opts).await?;
    let r = run(&s, &args).await;
    println!("stopping (operator, pods) …");
    let prefix = s.prefix.clone();
    s.shutdown().await;
    if let Err(e) = cleanup(&args.redis_url, &prefix).await {
        eprintln!("could not delete the demo's Redis keys {prefix}:*: {e}");
    }
    println!("done; logs in {}", args.log_dir.display());
    r
}

async fn run(s: &Scenario, args: &Args) -> anyhow::Result<()> {
    s.apply_queue("jobs", json!({"taskTimeMs": args.task_ms, "maxRetries": 3}))
        .await?;
    s.apply_pool(
        "workers",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
            "autoscaling": {"minReplicas": 0, "maxReplicas": 12, "drainTargetSeconds": 10,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 5, "scaleUpMaxStep": 4}}),
    )
    .await?;
    println!(
        "queue jobs (tasks sleep {} ms), pool workers (5 processes per pod, 0..12 pods, \
         scale-down after 5 s); waves: {} tasks at t=5s, 150/s from t=30s to t=50s, {} tasks at t=70s; \
         Redis prefix {}; Ctrl-C stops",
        args.task_ms, 3_000, 12_000, s.prefix
    );
    let func_args = format!("[{}]", args.task_ms);
    let mut waves = waves().into_iter().peekable();
    let t0 = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut producers = tokio::task::JoinSet::new();
    let mut last_spec = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => { println!("Ctrl-C"); break; }
        }
        let t = t0.elapsed().as_secs();
        if t >= args.seconds {
            break;
        }
        while let Some(&(at, n)) = waves.peek() {
            if at > t {
                break;
            }
            waves.next();
            let bin = s.worker_bin.clone();
            let (url, prefix, ns, fa) = (
                s.opts.redis_url.clone(),
                s.prefix.clone(),
                s.ns.clone(),
                func_args.clone(),
            );
            producers.spawn(async move {
                let _ = tokio::process::Command::new(bin)
                    .args([
                        "enqueue", "--queue", "jobs", "--func", "sleep", "--args", &fa,
                    ])
                    .args(["--count", &n.to_string()])
                    .env("FUNCSCALE_REDIS_URL", url)
                    .env("FUNCSCALE_PREFIX", prefix)
                    // the FuncQueue `jobs` of the demo's namespace
                    .env("FUNCSCALE_NAMESPACE", ns)
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await;
            });
        }
        while producers.try_join_next().is_some() {}
        let pool = s.pools().get_opt("workers").await.ok().flatten();
        let dep = s.deployments().get_opt("workers").await.ok().flatten();
        let (spec, running, ready) = dep
            .map(|d| {
                let st = d.status.unwrap_or_default();
                (
                    d.spec.and_then(|s| s.replicas).unwrap_or(0),
                    st.replicas.unwrap_or(0),
                    st.ready_replicas.unwrap_or(0),
                )
            })
            .unwrap_or_default();
        let status = pool.and_then(|p| p.status).unwrap_or_default();
        let depth: u64 = status.queues.iter().map(|q| q.depth).sum();
        let (rule, msg) = status
            .decision
            .map(|d| (d.rule, d.message))
            .unwrap_or_default();
        let change = if spec != last_spec {
            format!("{last_spec}→{spec}")
        } else {
            format!("{spec}")
        };
        last_spec = spec;
        println!(
            "t={t:>3}s depth={depth:<6} replicas={change:<6} running={running:<2} ready={ready:<2} rule={rule:<11} {msg}"
        );
        let _ = std::io::stdout().flush();
    }
    producers.shutdown().await;
    Ok(())
}

async fn cleanup(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut con = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await?;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
    }
    Ok(())
}

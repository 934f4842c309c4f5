//! Closed-loop scenario harness: the real control plane ([`crate::control_plane`]), a process
//! kubelet per scenario ([`crate::node`]), the real `funcscale-operator` binary (with the
//! chart's RBAC) and real `funcscale-worker` pods, all on this machine; or the cluster
//! `KUBECONFIG` points at (`FUNCSCALE_E2E_CLUSTER=1`), or the in-memory API server with the
//! simulated kubelet (`Options::in_memory`, `FUNCSCALE_E2E_IN_MEMORY=1`). Used by
//! `tests/scenarios.rs` and by the `funcscale-demo` binary.
//!
//! Each [`Scenario`] has its own namespace, node and Redis key prefix, so scenarios run in
//! parallel on one control plane and one Redis.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::control_plane::ControlPlane;
use crate::node::{ImageRule, Kubelet, KubeletConfig};

/// The worker image (any registry, any tag) runs the local `funcscale-worker`.
pub fn worker_image(worker_bin: &Path) -> ImageRule {
    let mut r = ImageRule::new("funcscale-worker");
    r.entrypoint = vec!["funcscale-worker".into()];
    r.programs
        .insert("funcscale-worker".into(), worker_bin.to_path_buf());
    r
}

/// Default Redis of the scenarios.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Whether the scenarios target the cluster `KUBECONFIG` points at (`FUNCSCALE_E2E_CLUSTER=1`,
/// `make e2e-cluster`) instead of the local control plane and the process kubelet.
pub fn real_cluster() -> bool {
    std::env::var("FUNCSCALE_E2E_CLUSTER").is_ok_and(|v| v == "1")
}

/// Find a workspace binary: `FUNCSCALE_E2E_<NAME>_BIN`, else next to the running executable
/// (`target/<profile>/` for binaries, `target/<profile>/deps/` for tests).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!(
        "FUNCSCALE_E2E_{}_BIN",
        name.trim_start_matches("funcscale-").to_uppercase()
    );
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
            dir = d.parent();
        }
    }
    anyhow::bail!(
        "{name} is not built next to {} (run `cargo build --workspace --bins` first, \
         as `make test` does, or set {var})",
        exe.display()
    )
}

/// What a scenario runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace and (with a suffix) Redis key prefix.
    pub name: String,
    pub redis_url: String,
    /// Operator poll interval.
    pub poll_interval: Duration,
    /// Leader election on (with a short lease) or off.
    pub leader_election: bool,
    /// Write operator and pod logs here (default: a temporary directory).
    pub log_dir: Option<PathBuf>,
    /// Run on the in-memory API server and the Deployment-level simulated kubelet instead of
    /// the real control plane (the demo's fallback where no control plane can be had).
    pub in_memory: bool,
    /// The Redis key prefix of another scenario, to share its keys as tenants of one install
    /// share one Redis (default: a prefix of its own).
    pub prefix: Option<String>,
    /// The operator watches every namespace (no `--namespace`; a ClusterRoleBinding, as the
    /// chart's default install), serving only the objects labelled [`SCENARIO_LABEL`]` =
    /// <label>` (`--watch-label-selector`), so that it leaves the other tests' namespaces on
    /// the shared control plane alone.
    pub cluster_wide: bool,
    /// The value of [`SCENARIO_LABEL`] on the objects this scenario applies (default: its
    /// namespace). A tenant served by another scenario's cluster-wide operator takes that
    /// scenario's label (and `operator: false`).
    pub label: Option<String>,
    /// Start an operator (default); `false`: another scenario's operator serves this one.
    pub operator: bool,
    /// More arguments of `funcscale-operator run` (e.g. `--worker-redis-secret`).
    pub operator_args: Vec<String>,
    /// Environment of the operator process (e.g. `FUNCSCALE_REDIS_PASSWORD`); the test's own
    /// `FUNCSCALE_REDIS_*` never reach it.
    pub operator_env: Vec<(String, String)>,
    /// More images the scenario's process kubelet can run (e.g. a Celery application from
    /// a virtualenv, [`celery_image`]); the local funcscale-worker is always one.
    pub images: Vec<crate::node::ImageRule>,
}

/// Label on every FuncQueue and FuncWorkerPool a scenario applies (see
/// [`Options::cluster_wide`]).
pub const SCENARIO_LABEL: &str = "e2e.funcscale.dev/scenario";

impl Options {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            redis_url: REDIS_URL.to_string(),
            poll_interval: Duration::from_millis(300),
            leader_election: false,
            log_dir: None,
            // FUNCSCALE_E2E_IN_MEMORY=1: the in-memory API server (the models, for comparison)
            in_memory: std::env::var("FUNCSCALE_E2E_IN_MEMORY").is_ok_and(|v| v == "1"),
            prefix: None,
            cluster_wide: false,
            label: None,
            operator: true,
            operator_args: Vec::new(),
            operator_env: Vec::new(),
            images: Vec::new(),
        }
    }
}

/// Where a scenario runs.
pub enum Target {
    /// The local control plane, with this scenario's process kubelet.
    ControlPlane(Box<Kubelet>),
    /// The cluster `KUBECONFIG` points at (`FUNCSCALE_E2E_CLUSTER=1`).
    Cluster,
    /// The in-memory API server with the simulated (Deployment-level) kubelet.
    InMemory(Box<(crate::TestCluster, crate::Kubelet)>),
    /// Stopped.
    Gone,
}

/// A running scenario: its namespace on the control plane, the process kubelet that runs
/// its pods, and operator processes (with the chart's RBAC).
pub struct Scenario {
    pub opts: Options,
    pub ns: String,
    pub prefix: String,
    /// The value of [`SCENARIO_LABEL`] on its objects.
    pub label: String,
    pub target: Target,
    /// Admin client (the operator uses its own ServiceAccount: `kubeconfig`).
    pub client: kube::Client,
    /// The operator's kubeconfig.
    pub kubeconfig: PathBuf,
    pub operators: Vec<Child>,
    /// Each operator's `/metrics` + health address.
    pub operator_addrs: Vec<std::net::SocketAddr>,
    pub worker_bin: PathBuf,
    pub operator_bin: PathBuf,
    pub log_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Scenario {
    /// Start (or reuse) the control plane, the CRDs, the namespace with its process kubelet,
    /// and one operator with the chart's permissions.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        let worker_bin = bin("funcscale-worker")?;
        let operator_bin = bin("funcscale-operator")?;
        let mut opts = opts;
        let (tmp, log_dir) = match &opts.log_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let mut t = tempfile::Builder::new()
                    .prefix(&format!("funcscale-{}-", opts.name))
                    .tempdir()?;
                // FUNCSCALE_E2E_KEEP_LOGS=1 keeps the operator and pod logs after the test
                t.disable_cleanup(std::env::var_os("FUNCSCALE_E2E_KEEP_LOGS").is_some());
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(log_dir.join("pods"))?;
        let (target, client, kubeconfig, ns) = if real_cluster() {
            crate::apiserver::install_crypto_provider();
            let kubeconfig = PathBuf::from(
                std::env::var_os("KUBECONFIG")
                    .context("FUNCSCALE_E2E_CLUSTER=1 needs KUBECONFIG")?,
            );
            if let Some(url) = std::env::var_os("FUNCSCALE_E2E_REDIS_URL") {
                opts.redis_url = url.to_string_lossy().into_owned();
            }
            let client = crate::apiserver::client_from_kubeconfig(&kubeconfig).await?;
            crate::apiserver::install_crds(&client).await?;
            let ns = format!("fs-e2e-{}-{}", opts.name, crate::control_plane::run_id());
            (Target::Cluster, client, kubeconfig, ns)
        } else if opts.in_memory {
            let cluster = crate::TestCluster::start().await?;
            cluster.install_crds().await?;
            let (client, kubeconfig) = (cluster.client.clone(), cluster.kubeconfig.clone());
            let ns = opts.name.clone(); // the in-memory API server needs no Namespace object
            let mut kc = crate::KubeletConfig::new(&worker_bin);
            kc.namespace = Some(ns.clone());
            kc.log_dir = Some(log_dir.join("pods"));
            let kubelet = crate::Kubelet::start_with(client.clone(), kc);
            (
                Target::InMemory(Box::new((cluster, kubelet))),
                client,
                kubeconfig,
                ns,
            )
        } else {
            let cp = ControlPlane::ensure().await?;
            let client = cp.admin_client().await?;
            ControlPlane::install_crds(&client).await?;
            let ns = format!("{}-{}", opts.name, crate::control_plane::run_id());
            let node = format!("n-{ns}");
            ControlPlane::create_namespace(&client, &ns, &node).await?;
            let kubeconfig = cp
                .operator_kubeconfig_with(
                    &client,
                    &ns,
                    &log_dir.join("operator.kubeconfig"),
                    opts.cluster_wide,
                )
                .await?;
            let mut kc = KubeletConfig::new(&node, &log_dir);
            kc.api_server = Some(cp.api_server()?);
            kc.images.push(worker_image(&worker_bin));
            kc.images.extend(opts.images.iter().cloned());
            let kubelet = Kubelet::start(client.clone(), kc).await?;
            (
                Target::ControlPlane(Box::new(kubelet)),
                client,
                kubeconfig,
                ns,
            )
        };
        let prefix = opts
            .prefix
            .clone()
            .unwrap_or_else(|| format!("fs-scen-{}-{}", opts.name, crate::control_plane::run_id()));
        let label = opts.label.clone().unwrap_or_else(|| ns.clone());
        let mut s = Self {
            opts,
            ns,
            prefix,
            label,
            target,
            client,
            kubeconfig,
            operators: Vec::new(),
            operator_addrs: Vec::new(),
            worker_bin,
            operator_bin,
            log_dir,
            _tmp: tmp,
        };
        if s.opts.operator {
            s.start_operator("op-0")?;
            s.wait_operator_ready(0).await?;
        }
        Ok(s)
    }

    /// Start one more operator process (identity `id`); returns its index in `operators`.
    pub fn start_operator(&mut self, id: &str) -> anyhow::Result<usize> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("operator-{id}.log")))?;
        let mut cmd = Command::new(&self.operator_bin);
        cmd.args(["run", "--metrics-addr", &port.to_string()]);
        if self.opts.cluster_wide {
            cmd.arg("--watch-label-selector")
                .arg(format!("{SCENARIO_LABEL}={}", self.label));
        } else {
            cmd.args(["--namespace", &self.ns]);
        }
        cmd.args([
            "--key-prefix",
            &self.prefix,
            "--redis-url",
            &self.opts.redis_url,
            "--identity",
            id,
        ])
        .arg("--poll-interval")
        .arg(format!("{}ms", self.opts.poll_interval.as_millis()))
        .args(&self.opts.operator_args);
        if self.opts.leader_election {
            cmd.args([
                "--lease-duration",
                "3s",
                "--leader-election-namespace",
                &self.ns,
            ]);
        } else {
            cmd.arg("--no-leader-election");
        }
        let child = cmd
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("FUNCSCALE_NAMESPACE")
            .env_remove("FUNCSCALE_REDIS_USERNAME")
            .env_remove("FUNCSCALE_REDIS_PASSWORD")
            .envs(self.opts.operator_env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn funcscale-operator")?;
        self.operators.push(child);
        self.operator_addrs.push(port);
        Ok(self.operators.len() - 1)
    }

    /// Wait until operator `i` answers `/readyz` with 200 (API, watches, Redis).
    pub async fn wait_operator_ready(&self, i: usize) -> anyhow::Result<()> {
        let addr = self.operator_addrs[i];
        crate::eventually(
            Duration::from_secs(30),
            "the operator's /readyz to answer 200",
            || async move {
                let body = http_get(addr, "/readyz").await.ok()?;
                // a 1.0 request is answered as HTTP/1.0 (hyper) or 1.1: the status counts
                (body.starts_with("HTTP/1.") && body.get(9..12) == Some("200")).then_some(())
            },
        )
        .await
    }

    pub fn queues(&self) -> Api<FuncQueue> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn pools(&self) -> Api<FuncWorkerPool> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Server-side apply a FuncQueue from its spec (JSON).
    pub async fn apply_queue(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let obj = json!({"apiVersion": "funcscale.dev/v1alpha1", "kind": "FuncQueue",
            "metadata": {"name": name, "namespace": self.ns,
                "labels": {SCENARIO_LABEL: self.label}}, "spec": spec});
        self.queues()
            .patch(
                name,
                &PatchParams::apply("scenario").force(),
                &Patch::Apply(&obj),
            )
            .await?;
        Ok(())
    }

    /// Server-side apply a FuncWorkerPool from its spec (JSON).
    pub async fn apply_pool(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let obj = json!({"apiVersion": "funcscale.dev/v1alpha1", "kind": "FuncWorkerPool",
            "metadata": {"name": name, "namespace": self.ns,
                "labels": {SCENARIO_LABEL: self.label}}, "spec": spec});
        self.pools()
            .patch(
                name,
                &PatchParams::apply("scenario").force(),
                &Patch::Apply(&obj),
            )
            .await?;
        Ok(())
    }

    /// The id in Redis of FuncQueue `q` of this scenario's namespace.
    pub fn queue_id(&self, q: &str) -> String {
        funcscale_worker::protocol::Keys::queue_id(&self.ns, q)
    }

    /// The key layout under this scenario's prefix.
    pub fn keys(&self) -> funcscale_worker::protocol::Keys {
        funcscale_worker::protocol::Keys::new(self.prefix.clone())
    }

    /// The Redis list key of FuncQueue `q` under this scenario's prefix.
    pub fn queue_key(&self, q: &str) -> String {
        self.keys().queue(&self.queue_id(q))
    }

    /// `funcscale-worker <args>` with this scenario's Redis, prefix and namespace (queues
    /// are named as FuncQueues, as a producer of the namespace does); waits for success.
    pub async fn worker_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.worker_cli_at(&self.opts.redis_url, None, args).await
    }

    /// [`Self::worker_cli`] against another Redis (`redis_url`, and a password given apart),
    /// as a producer of another tenant or of a protected Redis runs it.
    pub async fn worker_cli_at(
        &self,
        redis_url: &str,
        password: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let env: Vec<_> = password
            .map(|p| ("FUNCSCALE_REDIS_PASSWORD", p))
            .into_iter()
            .collect();
        self.worker_cli_env(redis_url, &env, args).await
    }

    /// [`Self::worker_cli_at`] with more environment (`FUNCSCALE_REDIS_USERNAME`, ...).
    pub async fn worker_cli_env(
        &self,
        redis_url: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<String> {
        let out = Command::new(&self.worker_bin)
            .args(args)
            .env("FUNCSCALE_REDIS_URL", redis_url)
            .env_remove("FUNCSCALE_REDIS_USERNAME")
            .env_remove("FUNCSCALE_REDIS_PASSWORD")
            .envs(env.iter().copied())
            .env("FUNCSCALE_PREFIX", &self.prefix)
            .env("FUNCSCALE_NAMESPACE", &self.ns)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "funcscale-worker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Push `count` tasks of `func` with `args` (JSON) onto `queue`.
    pub async fn enqueue(
        &self,
        queue: &str,
        func: &str,
        args: &str,
        count: u64,
    ) -> anyhow::Result<()> {
        self.worker_cli(&[
            "enqueue",
            "--queue",
            queue,
            "--func",
            func,
            "--args",
            args,
            "--count",
            &count.to_string(),
        ])
        .await
        .map(|_| ())
    }

    /// The Deployment's `spec.replicas` and `status.readyReplicas`.
    pub async fn replicas(&self, name: &str) -> anyhow::Result<Option<(i32, i32)>> {
        Ok(self.deployments().get_opt(name).await?.map(|d| {
            (
                d.spec.and_then(|s| s.replicas).unwrap_or(0),
                d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
            )
        }))
    }

    /// A pool condition `(status, reason, message)`.
    pub async fn condition(
        &self,
        pool: &str,
        type_: &str,
    ) -> anyhow::Result<Option<(String, String, String)>> {
        let p = self.pools().get_opt(pool).await?;
        Ok(p.and_then(|p| p.status).and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status, c.reason, c.message))
        }))
    }

    /// Stop everything: operators (SIGTERM, then kill), pods gracefully, the namespace.
    pub async fn shutdown(mut self) {
        for op in &mut self.operators {
            terminate(op, Duration::from_secs(5)).await;
        }
        if self.opts.cluster_wide && matches!(self.target, Target::ControlPlane(_)) {
            ControlPlane::delete_cluster_binding(&self.client, &self.ns).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &Default::default()).await;
        let target = std::mem::replace(&mut self.target, Target::Gone);
        if let Target::InMemory(b) = target {
            let (_cluster, kubelet) = *b;
            let _ = tokio::time::timeout(Duration::from_secs(20), kubelet.shutdown()).await;
        } else if let Target::ControlPlane(k) = target {
            // the namespace controller deletes the pods; the kubelet stops them
            let pods: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(self.client.clone(), &self.ns);
            let _ = crate::eventually(Duration::from_secs(20), "pods gone", || async {
                pods.list(&Default::default())
                    .await
                    .is_ok_and(|l| l.items.is_empty())
                    .then_some(())
            })
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(20), k.shutdown()).await;
        }
    }

    /// The process kubelet (`None` against a real cluster).
    pub fn kubelet(&self) -> Option<&Kubelet> {
        match &self.target {
            Target::ControlPlane(k) => Some(k),
            _ => None,
        }
    }

    /// Identities of the pool's running pods: process ids under the process kubelet, pod
    /// uids in a real cluster.
    pub async fn pod_ids(&self, pool: &str) -> Vec<String> {
        if let Target::InMemory(b) = &self.target {
            let mut v: Vec<String> =
                b.1.pods(&self.ns, pool)
                    .iter()
                    .filter_map(|p| p.pid.map(|p| p.to_string()))
                    .collect();
            v.sort();
            return v;
        }
        let mut v: Vec<String> = match self.kubelet() {
            Some(k) => k
                .pods_of(&self.ns, pool)
                .iter()
                .flat_map(|p| p.pids.iter().map(|p| p.to_string()))
                .collect(),
            None => {
                let pods: Api<k8s_openapi::api::core::v1::Pod> =
                    Api::namespaced(self.client.clone(), &self.ns);
                let lp = kube::api::ListParams::default().labels(&format!(
                    "{}={pool}",
                    funcscale_operator::crd_ext::POOL_LABEL
                ));
                pods.list(&lp)
                    .await
                    .map(|l| {
                        l.items
                            .into_iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .filter_map(|p| p.metadata.uid)
                            .collect()
                    })
                    .unwrap_or_default()
            }
        };
        v.sort();
        v
    }

    /// Container restarts of the pool's pods (their `restartCount`s, summed): a worker that
    /// exited, and was started again by the kubelet, counts.
    pub async fn restarts(&self, pool: &str) -> anyhow::Result<i32> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &self.ns);
        let lp = kube::api::ListParams::default().labels(&format!(
            "{}={pool}",
            funcscale_operator::crd_ext::POOL_LABEL
        ));
        Ok(pods
            .list(&lp)
            .await?
            .items
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum())
    }

    /// Kill one pod of `pool` hard: SIGKILL its process (the container crashes, and the
    /// kubelet restarts it), or delete the pod with no grace (real cluster).
    pub async fn kill_pod(&self, pool: &str) -> anyhow::Result<()> {
        if let Target::InMemory(b) = &self.target {
            let pid =
                b.1.pods(&self.ns, pool)
                    .first()
                    .and_then(|p| p.pid)
                    .context("no running pod")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            return Ok(());
        }
        match self.kubelet() {
            Some(k) => {
                let pid = k
                    .pods_of(&self.ns, pool)
                    .first()
                    .and_then(|p| p.pids.first().copied())
                    .context("no running pod")?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
            }
            None => {
                let pods: Api<k8s_openapi::api::core::v1::Pod> =
                    Api::namespaced(self.client.clone(), &self.ns);
                let lp = kube::api::ListParams::default().labels(&format!(
                    "{}={pool}",
                    funcscale_operator::crd_ext::POOL_LABEL
                ));
                let pod = pods
                    .list(&lp)
                    .await?
                    .items
                    .into_iter()
                    .next()
                    .context("no pod")?;
                let dp = kube::api::DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let _ = pods
                    .delete(&pod.metadata.name.unwrap_or_default(), &dp)
                    .await?;
            }
        }
        Ok(())
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

/// A plain `GET path` on `addr`; the whole response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// SIGTERM `child`, wait up to `grace`, then SIGKILL.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Records a Deployment's `spec.replicas` over time (every 100 ms) in the background.
pub struct ReplicaHistory {
    pub samples: std::sync::Arc<std::sync::Mutex<Vec<(Duration, i32)>>>,
    /// The most `status.readyReplicas` seen.
    pub max_ready: std::sync::Arc<std::sync::atomic::AtomicI32>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaHistory {
    pub fn start(api: Api<Deployment>, name: &str) -> Self {
        let samples: std::sync::Arc<std::sync::Mutex<Vec<(Duration, i32)>>> = Default::default();
        let max_ready: std::sync::Arc<std::sync::atomic::AtomicI32> = Default::default();
        let s = samples.clone();
        let m = max_ready.clone();
        let name = name.to_string();
        let t0 = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(Some(d)) = api.get_opt(&name).await {
                    let ready = d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    m.fetch_max(ready, std::sync::atomic::Ordering::SeqCst);
                    let r = d.spec.and_then(|s| s.replicas).unwrap_or(0);
                    let mut v = s.lock().unwrap();
                    if v.last().map(|(_, x)| *x) != Some(r) {
                        v.push((t0.elapsed(), r));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            samples,
            max_ready,
            task,
        }
    }
    /// The distinct values in order, e.g. `[1, 5, 9, 0]`.
    pub fn values(&self) -> Vec<i32> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| *r)
            .collect()
    }
    pub fn max(&self) -> i32 {
        self.values().into_iter().max().unwrap_or(0)
    }
    /// Stop sampling (the values so far stay).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ReplicaHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The e2e virtualenv with Celery and `funcscale-celery` (made by
/// `e2e/control-plane/celery-venv.sh` the first time): its directory (`bin/python`).
pub fn celery_venv() -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new(
        crate::control_plane::repo_root().join("e2e/control-plane/celery-venv.sh"),
    )
    .output()?;
    anyhow::ensure!(
        out.status.success(),
        "celery-venv.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `funcscale-worker ARGS` (the built binary, [`bin`]) with `env` and none of this process's
/// FUNCSCALE_* (but FUNCSCALE_E2E_*) and SSL_CERT_* variables: what a test gives is all it
/// gets (the URL holds no password unless the test puts it there). Killed when dropped.
pub fn worker_command(env: &[(&str, &str)], args: &[&str]) -> tokio::process::Command {
    let mut c =
        tokio::process::Command::new(bin("funcscale-worker").expect("funcscale-worker built"));
    for (k, _) in std::env::vars() {
        if (k.starts_with("FUNCSCALE_") && !k.starts_with("FUNCSCALE_E2E"))
            || k.starts_with("SSL_CERT_")
        {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// Run a [`worker_command`] to its end (at most `limit`), its output echoed to stderr.
pub async fn worker_output(
    env: &[(&str, &str)],
    args: &[&str],
    limit: Duration,
) -> std::process::Output {
    let out = tokio::time::timeout(limit, worker_command(env, args).output())
        .await
        .expect("the command finishes")
        .expect("funcscale-worker runs");
    eprintln!(
        "$ funcscale-worker {}\n{}-> {:?}",
        args.join(" "),
        output_text(&out),
        out.status.code()
    );
    out
}

/// A finished command's stdout and stderr, as text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A Celery application image (repository `repository`): Celery and `funcscale-celery` from
/// the e2e virtualenv (`e2e/control-plane/celery-venv.sh`), the module `module` with this
/// source in its working directory (on `PYTHONPATH`), and `env` as the image's ENV. Returns
/// the rule and the virtualenv's directory (its `bin/python` runs producers).
pub fn celery_image(
    repository: &str,
    dir: &Path,
    module: &str,
    source: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(crate::node::ImageRule, PathBuf)> {
    let venv = celery_venv()?;
    let app = dir.join(format!("{module}-app"));
    std::fs::create_dir_all(&app)?;
    std::fs::write(app.join(format!("{module}.py")), source)?;
    let mut r = crate::node::ImageRule::new(repository);
    r.path.push(venv.join("bin"));
    r.env.insert("PYTHONPATH".into(), app.display().to_string());
    r.env.insert("HOME".into(), app.display().to_string());
    for (k, v) in env {
        r.env.insert(k.to_string(), v.to_string());
    }
    r.workdir = Some(app);
    Ok((r, venv))
}

/// The side effects of `exec:echo "$FUNCSCALE_FUNC $FUNCSCALE_TASK_ID" >> <path>` handlers so
/// far: function name → distinct task ids, and the number of executions (lines).
pub fn side_effects(
    path: &Path,
) -> (
    std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    usize,
) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_func: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut executions = 0;
    for line in text.lines() {
        if let Some((func, id)) = line.split_once(' ') {
            by_func
                .entry(func.to_string())
                .or_default()
                .insert(id.to_string());
            executions += 1;
        }
    }
    (by_func, executions)
}

/// A producer of `n` tasks `t-000`, `t-001`, … of function `job` into queue `jobs` of
/// scenario `s`: one `funcscale-worker enqueue` each (with `env` and the scenario's prefix and
/// namespace), a failed push re-sent every 200 ms until acknowledged (at most 60 s), `pause`
/// between tasks. [`Producer::finish`] waits for it.
pub fn spawn_producer(
    s: &Scenario,
    url: &str,
    env: Vec<(String, String)>,
    n: usize,
    pause: Duration,
) -> Producer {
    use std::sync::atomic::Ordering;
    let produced = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let failed_pushes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, f, st) = (produced.clone(), failed_pushes.clone(), stop.clone());
    let (url, ns, prefix) = (url.to_string(), s.ns.clone(), s.prefix.clone());
    let worker_bin = s.worker_bin.clone();
    let task = tokio::spawn(async move {
        for i in 0..n {
            let id = format!("t-{i:03}");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let out = tokio::process::Command::new(&worker_bin)
                    .args(["enqueue", "--queue", "jobs", "--func", "job", "--id", &id])
                    .env("FUNCSCALE_REDIS_URL", &url)
                    .env_remove("FUNCSCALE_REDIS_USERNAME")
                    .env_remove("FUNCSCALE_REDIS_PASSWORD")
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .env("FUNCSCALE_PREFIX", &prefix)
                    .env("FUNCSCALE_NAMESPACE", &ns)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(Duration::from_secs(20), out).await {
                    Ok(Ok(o)) if o.status.success() => break,
                    other => {
                        f.fetch_add(1, Ordering::SeqCst);
                        let why = match other {
                            Ok(Ok(o)) => String::from_utf8_lossy(&o.stderr).into_owned(),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "timed out".into(),
                        };
                        eprintln!("push {id} failed (re-sent): {}", why.trim());
                        assert!(
                            std::time::Instant::now() < deadline,
                            "push {id} never acknowledged"
                        );
                        if st.load(Ordering::SeqCst) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            p.lock().unwrap().push(id);
            tokio::time::sleep(pause).await;
        }
    });
    Producer {
        task,
        produced,
        failed_pushes,
        stop,
    }
}

/// The producer [`spawn_producer`] started.
pub struct Producer {
    task: tokio::task::JoinHandle<()>,
    /// Task ids acknowledged so far, in order.
    produced: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    failed_pushes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Ends the re-sending (for a test giving up).
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Producer {
    /// How many tasks were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.produced.lock().unwrap().len()
    }

    /// Wait until `n` tasks were acknowledged; fail after `timeout`.
    pub async fn wait_acknowledged(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        crate::eventually(timeout, &format!("{n} tasks pushed"), || async move {
            (self.acknowledged() >= n).then_some(())
        })
        .await
    }

    /// How many pushes failed and were re-sent.
    pub fn failed_pushes(&self) -> u64 {
        self.failed_pushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait (at most `timeout`) until the producer is done; the ids it pushed. On a timeout
    /// the re-sending stops and the error says so.
    pub async fn finish(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::collections::BTreeSet<String>> {
        match tokio::time::timeout(timeout, &mut self.task).await {
            Err(_) => {
                self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
                anyhow::bail!("the producer did not finish");
            }
            Ok(r) => r.context("the producer failed")?,
        }
        Ok(self.produced.lock().unwrap().iter().cloned().collect())
    }
}

/// The (status, reason) changes [`sample_metrics_available`] saw.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// Record every change of pool `pool`'s `MetricsAvailable` condition (status, reason), sampled
/// every 100 ms, printing each; abort the task to stop.
pub fn sample_metrics_available(s: &Scenario, pool: &str) -> (tokio::task::JoinHandle<()>, Seen) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let (pools, v, pool) = (s.pools(), seen.clone(), pool.to_string());
    let task = tokio::spawn(async move {
        loop {
            if let Ok(p) = pools.get(&pool).await
                && let Some(c) = p.status.and_then(|st| {
                    st.conditions
                        .into_iter()
                        .find(|c| c.type_ == "MetricsAvailable")
                })
            {
                let mut v = v.lock().unwrap();
                if v.last() != Some(&(c.status.clone(), c.reason.clone())) {
                    eprintln!("MetricsAvailable={} {}: {}", c.status, c.reason, c.message);
                    v.push((c.status, c.reason));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (task, seen)
}

/// The last 15 lines of the operator's log, of every pod's, and of the `*.log` files in
/// `redis_dir` (a Sentinel set's or a Redis Cluster's directory), for a failure message.
pub fn log_tails(s: &Scenario, redis_dir: &Path) -> String {
    let mut out = String::new();
    let mut files = vec![s.log_dir().join("operator-op-0.log")];
    if let Ok(d) = std::fs::read_dir(s.log_dir().join("pods")) {
        files.extend(d.flatten().map(|e| e.path()));
    }
    let mut dirs = vec![redis_dir.to_path_buf()];
    // a cluster keeps each node's log in a directory of its own
    if let Ok(d) = std::fs::read_dir(redis_dir) {
        dirs.extend(d.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in dirs {
        if let Ok(d) = std::fs::read_dir(dir) {
            files.extend(
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log")),
            );
        }
    }
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            let lines: Vec<&str> = t.lines().collect();
            out.push_str(&format!(
                "\n-- {}:\n{}",
                f.display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
    }
    out
}

/// The workload and the checks of the control-plane failover scenarios (tests/sentinel.rs: a
/// Sentinel set's master SIGKILLed; tests/cluster_scenario.rs: a Redis Cluster's queue slot
/// migrated, then its master SIGKILLed). [`Failover::start`] applies queue `jobs` (schedule
/// `tick` every 2 s, 5 retries), Worker pool `w` (autoscaled from [`Failover::MIN_PODS`] to
/// [`Failover::MAX_PODS`] pods of 2 processes, no scale-down stabilization; its handler
/// sleeps [`Failover::JOB_SECONDS`] for a `job`, then appends `<func> <task id>` to a file
/// outside Redis, [`side_effects`]) and Beat pool `beat`, and waits until they run. The test
/// starts a [`Producer`] of tasks of function `job` ([`spawn_producer`]), waits until the
/// pool grew to its most pods with a backlog waiting ([`Failover::wait_loaded`]) and brings on
/// its fault, calling [`Failover::at_kill`] just before the kill and [`Failover::promoted`]
/// once a replica took over; [`Failover::check`] then asserts that the pool held its size
/// while the operator could not read the queue and that no acknowledged task was lost.
pub struct Failover<'a> {
    s: &'a Scenario,
    /// The Redis topology's directory (its logs, for a failure message).
    redis_dir: PathBuf,
    /// Holds the side-effects file.
    _side: tempfile::TempDir,
    done: PathBuf,
    /// Pool `w`'s size from the start (for the summary line).
    history: ReplicaHistory,
    beat_pids: Vec<String>,
    kill: Option<AtKill>,
    ticks_at_promotion: Option<usize>,
}

/// What [`Failover::at_kill`] recorded.
struct AtKill {
    /// Pool `w`'s size.
    size: i32,
    /// The queue's `status.depth`.
    depth: Option<u64>,
    /// Pool `w`'s size from now on: from the kill until the operator reads the queue again.
    window: ReplicaHistory,
    /// Pool `w`'s worker processes.
    worker_pids: Vec<String>,
    sampler: tokio::task::JoinHandle<()>,
    seen: Seen,
    /// The queue's `status.lastPollTime`.
    poll: Option<k8s_openapi::jiff::Timestamp>,
    at: std::time::Instant,
}

impl<'a> Failover<'a> {
    /// Pool `w`'s `minReplicas`.
    pub const MIN_PODS: i32 = 1;
    /// Pool `w`'s `maxReplicas`: the load of [`Self::wait_loaded`] keeps it there.
    pub const MAX_PODS: i32 = 4;
    /// How long a `job` task runs (its handler sleeps), and the queue's `taskTimeMs` hint.
    pub const JOB_SECONDS: u64 = 4;
    /// Tasks waiting (`status.depth` of the queue) before the kill: with 4 s tasks and a
    /// 5 s drain target, 12 waiting want 12 × 4 / 5 = 9.6 processes, more than 4 pods of 2
    /// hold (and 8 still want 6.4, more than 3 pods hold), so the operator still wants
    /// [`Self::MAX_PODS`] when it reads the queue again, even if a few were taken meanwhile.
    pub const BACKLOG: u64 = 12;

    /// Apply queue `jobs` (its `redis` field is `redis_spec`), pool `w` and pool `beat` in
    /// scenario `s`; wait (60 s) until a worker and the beat are ready and a tick ran; then
    /// record pool `w`'s size from now on ([`ReplicaHistory`]) and the beat process.
    /// `redis_dir` is the Redis topology's directory, whose logs [`Self::logs`] adds.
    pub async fn start(s: &'a Scenario, redis_spec: serde_json::Value, redis_dir: &Path) -> Self {
        // the side effects: a file outside /tmp (a pod's /tmp is its own emptyDir; the
        // checkout, and so CARGO_TARGET_TMPDIR, may itself be under /tmp, as CI's fresh clone
        // is)
        let side = tempfile::tempdir_in("/var/tmp").unwrap();
        let done = side.path().join("done");
        // a job takes JOB_SECONDS (a tick none): enough load to grow the pool past its minimum
        let handler = format!(
            "exec:case \"$FUNCSCALE_FUNC\" in job) sleep {};; esac; \
             echo \"$FUNCSCALE_FUNC $FUNCSCALE_TASK_ID\" >> {}",
            Self::JOB_SECONDS,
            done.display()
        );
        s.apply_queue(
            "jobs",
            json!({"taskTimeMs": Self::JOB_SECONDS * 1000, "maxRetries": 5, "redis": redis_spec,
                "schedules": [{"name": "tick", "cron": "*/2 * * * * *", "function": "tick", "args": []}]}),
        )
        .await
        .unwrap();
        // no scale-down stabilization: a pool whose operator read an outage as an idle queue
        // would shrink at once, and the check would see it
        s.apply_pool(
            "w",
            json!({"queues": ["jobs"], "processesPerPod": 2, "handler": handler,
                "autoscaling": {"minReplicas": Self::MIN_PODS, "maxReplicas": Self::MAX_PODS,
                    "drainTargetSeconds": 5, "activationDepth": 0, "periodMs": 60000,
                    "scaleDownStabilizationSeconds": 0, "scaleUpMaxStep": 2}}),
        )
        .await
        .unwrap();
        s.apply_pool("beat", json!({"role": "Beat", "queues": [], "replicas": 1}))
            .await
            .unwrap();
        let min = Self::MIN_PODS;
        crate::eventually(
            Duration::from_secs(60),
            "the pool's minimum of ready workers, a ready beat, ticks running",
            || async {
                (s.replicas("w").await.ok().flatten() == Some((min, min))
                    && s.replicas("beat").await.ok().flatten() == Some((1, 1))
                    && ticks(&done) >= 1)
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log_tails(s, redis_dir)));
        Self {
            s,
            redis_dir: redis_dir.to_path_buf(),
            _side: side,
            history: ReplicaHistory::start(s.deployments(), "w"),
            beat_pids: s.pod_ids("beat").await,
            done,
            kill: None,
            ticks_at_promotion: None,
        }
    }

    /// The tails of the scenario's logs and the Redis topology's ([`log_tails`]).
    pub fn logs(&self) -> String {
        log_tails(self.s, &self.redis_dir)
    }

    /// Wait (90 s) until the producer's load grew pool `w` to [`Self::MAX_PODS`] ready pods
    /// and at least [`Self::BACKLOG`] tasks wait: the pool is above its minimum, and the
    /// operator still wants every pod when it reads the queue again after the failover.
    pub async fn wait_loaded(&self) {
        let max = Self::MAX_PODS;
        crate::eventually(
            Duration::from_secs(90),
            &format!("{max} ready workers and {} tasks waiting", Self::BACKLOG),
            || async {
                let depth = self.s.queues().get("jobs").await.ok()?.status?.depth?;
                (self.s.replicas("w").await.ok().flatten() == Some((max, max))
                    && depth >= Self::BACKLOG)
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Just before the kill: pool `w`'s size and worker processes, the queue's depth and last
    /// poll; from now on, pool `w`'s size ([`ReplicaHistory`]) and every change of its
    /// `MetricsAvailable` ([`sample_metrics_available`]).
    pub async fn at_kill(&mut self) {
        let size = self.s.replicas("w").await.unwrap().unwrap().0;
        let window = ReplicaHistory::start(self.s.deployments(), "w");
        let (sampler, seen) = sample_metrics_available(self.s, "w");
        let poll = last_poll(self.s, "jobs").await;
        let depth = self
            .s
            .queues()
            .get("jobs")
            .await
            .ok()
            .and_then(|q| q.status?.depth);
        let worker_pids = self.s.pod_ids("w").await;
        self.kill = Some(AtKill {
            size,
            depth,
            window,
            worker_pids,
            sampler,
            seen,
            poll,
            at: std::time::Instant::now(),
        });
    }

    /// Master `old` (killed after [`Self::at_kill`]) was replaced by `new`: the ticks so far
    /// are counted (the beat must fire after this), and a line says when and how far the
    /// producer got.
    pub fn promoted(&mut self, old: u16, new: u16, producer: &Producer) {
        let killed = self.kill.as_ref().expect("Failover::at_kill first").at;
        self.ticks_at_promotion = Some(ticks(&self.done));
        eprintln!(
            "master 127.0.0.1:{old} killed; 127.0.0.1:{new} promoted after {:?}; {} tasks \
             pushed by then",
            killed.elapsed(),
            producer.acknowledged()
        );
    }

    /// After [`Self::promoted`]: pool `w` goes `MetricsAvailable=False` with reason
    /// `RedisUnavailable` (never false for another reason), then `True` again with the queue
    /// polled anew (60 s); every replica count its Deployment had from the kill until then is
    /// at least its size at the kill, and its worker processes are those from the kill (they
    /// reconnected). Then the producer finishes (120 s) and every task it pushed runs (90 s;
    /// each id once among the distinct ids), the beat fires twice more (30 s), no worker
    /// container restarted and the beat process is the one from the start. `label` starts
    /// the summary line.
    pub async fn check(self, mut producer: Producer, n: usize, label: &str) {
        let kill = self.kill.as_ref().expect("Failover::at_kill first");
        let ticks_at_promotion = self.ticks_at_promotion.expect("Failover::promoted first");

        // the switch shows in the pool's condition (the operator's polls fail meanwhile,
        // naming the node), then the operator reads the queue from the new master: its status
        // moves on and the condition says True again
        let switched = |seen: &[(String, String)]| {
            seen.iter()
                .position(|(st, reason)| st == "False" && reason == "RedisUnavailable")
                .is_some_and(|i| seen[i..].iter().any(|(st, _)| st == "True"))
        };
        crate::eventually(
            Duration::from_secs(60),
            "MetricsAvailable=False (RedisUnavailable), then True with the queue polled anew",
            || async {
                let polled = last_poll(self.s, "jobs").await?;
                let fresh = kill.poll.is_none_or(|p| polled > p);
                let ok = self
                    .s
                    .condition("w", "MetricsAvailable")
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.0 == "True");
                (fresh && ok && switched(&kill.seen.lock().unwrap())).then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| {
            let seen = kill.seen.lock().unwrap().clone();
            panic!("{e}: MetricsAvailable seen {seen:?}\n{}", self.logs())
        });
        kill.sampler.abort();
        let held = kill.window.values();
        kill.window.stop();
        let pids_recovered = self.s.pod_ids("w").await;
        let seen = kill.seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .all(|(st, reason)| st == "True" || reason == "RedisUnavailable"),
            "MetricsAvailable through the switch: {seen:?}"
        );
        // the operator held the pool's size while it could not read the queue
        assert!(
            held.iter().all(|r| *r >= kill.size),
            "the pool shrank during the failover: {} replicas at the kill, then {held:?} until \
             MetricsAvailable was True again (MetricsAvailable {seen:?}); from the start {:?}",
            kill.size,
            self.history.values()
        );
        // the workers reconnected rather than crashed: the same processes served throughout
        assert_eq!(
            kill.worker_pids,
            pids_recovered,
            "worker processes were replaced: they exited instead of reconnecting\n{}",
            self.logs()
        );

        // every acknowledged task runs (at least once)
        let produced = producer
            .finish(Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        assert_eq!(produced.len(), n);
        let ran = crate::eventually(
            Duration::from_secs(90),
            "every acknowledged task ran",
            || async {
                let ran = side_effects(&self.done).0.remove("job").unwrap_or_default();
                produced.is_subset(&ran).then_some(ran)
            },
        )
        .await
        .unwrap_or_else(|e| {
            let ran = side_effects(&self.done).0.remove("job").unwrap_or_default();
            let missing: Vec<_> = produced.difference(&ran).collect();
            panic!("{e}: missing {missing:?}\n{}", self.logs())
        });
        assert_eq!(ran.len(), n, "distinct task ids that ran");

        // the beat reconnected: its schedule fires after the failover
        crate::eventually(
            Duration::from_secs(30),
            "the beat fires after the failover",
            || async { (ticks(&self.done) >= ticks_at_promotion + 2).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));

        let restarts = self.s.restarts("w").await.unwrap();
        let beat_after = self.s.pod_ids("beat").await;
        let (_, executions) = side_effects(&self.done);
        eprintln!(
            "{label}: {n} tasks acknowledged, {} failed pushes re-sent, {executions} executions \
             in all, pool sizes {:?} ({} at the kill with {:?} tasks waiting, {held:?} until \
             MetricsAvailable was True again), MetricsAvailable through the switch {seen:?}, worker processes at the kill \
             {:?} after it {pids_recovered:?}",
            producer.failed_pushes(),
            self.history.values(),
            kill.size,
            kill.depth,
            kill.worker_pids
        );
        assert_eq!(
            restarts,
            0,
            "worker containers restarted after the failover\n{}",
            self.logs()
        );
        assert_eq!(
            self.beat_pids,
            beat_after,
            "the beat process was replaced: it exited instead of reconnecting\n{}",
            self.logs()
        );
    }
}

/// How many times the schedule `tick` fired so far, by the side effects in `done`.
fn ticks(done: &Path) -> usize {
    side_effects(done).0.get("tick").map_or(0, |t| t.len())
}

/// Queue `queue`'s `status.lastPollTime`, parsed.
async fn last_poll(s: &Scenario, queue: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let st = s.queues().get(queue).await.ok()?.status?;
    st.last_poll_time?.parse().ok()
}

/// A private `redis-server` on a free port (for outage scenarios: never stop the shared one;
/// for password and ACL tests: `--requirepass`, `--user` lines).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    config: Vec<String>,
}

impl PrivateRedis {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }
    /// Started with extra configuration arguments, e.g. `["--requirepass", "pw"]`.
    pub async fn start_with(config: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut r = Self {
            port,
            child: None,
            config: config.iter().map(|s| s.to_string()).collect(),
        };
        r.restart().await?;
        Ok(r)
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
    /// (Re)start it on the same port and wait until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn redis-server")?;
        self.child = Some(child);
        let url = self.url();
        crate::eventually(
            Duration::from_secs(10),
            "private redis-server to answer",
            || {
                let url = url.clone();
                async move {
                    let c = redis::Client::open(url).ok()?;
                    let mut con = c.get_multiplexed_async_connection().await.ok()?;
                    // it answers: PONG, or NOAUTH when it wants a password
                    match redis::cmd("PING").query_async::<String>(&mut con).await {
                        Ok(_) => Some(()),
                        Err(e) if e.kind() != redis::ErrorKind::Io => Some(()),
                        Err(_) => None,
                    }
                }
            },
        )
        .await?;
        Ok(())
    }
    /// SIGKILL it (an outage) and wait until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

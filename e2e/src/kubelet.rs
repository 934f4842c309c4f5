//! A simulated kubelet: every Deployment in the API becomes `spec.replicas` real local processes
//! running what its pod template says, and the Deployment's status reports them.
//!
//! - The first container's `command` + `args` are run (with `$(VAR)` expansion); a command whose
//!   program is named `funcscale-worker` (or an empty command: the image's entrypoint) runs the
//!   local worker binary instead. Anything else (`sleep`, `sh`) runs as is, found on `PATH`.
//! - Environment: the kubelet's own, then the container's `env` (values, `secretKeyRef`,
//!   `configMapKeyRef`, `fieldRef`) and `envFrom`, then `HOSTNAME` = the pod name.
//! - Pods share one host, so a `--metrics-addr` argument (or `FUNCSCALE_METRICS_ADDR`) is replaced
//!   by a free `127.0.0.1` port per pod; worker pods without one get `FUNCSCALE_METRICS_ADDR`.
//! - Ready: the readiness probe's `httpGet` path answered 2xx on that port (worker pods without a
//!   probe: `/readyz`); pods with neither are ready once started.
//! - Scale-down and rollouts send SIGTERM, wait `terminationGracePeriodSeconds` (default 30),
//!   then SIGKILL; newest pods go first. Pods that exit are restarted (with a crash back-off).
//!   `Recreate` Deployments start new pods only after the old ones are gone.
//! - Status written back: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `observedGeneration` and an `Available` condition.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::node::env::{container_env, expand};
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// Name of the worker binary in pod templates; mapped to the local build.
pub const WORKER_BIN_NAME: &str = "funcscale-worker";

/// How the kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Local `funcscale-worker` (e.g. `target/debug/funcscale-worker`).
    pub worker_bin: PathBuf,
    /// Only Deployments in this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Only Deployments matching this label selector (`None`: all).
    pub label_selector: Option<String>,
    /// Write each pod's stdout and stderr to `<dir>/<pod>.log` (`None`: inherit the kubelet's).
    pub log_dir: Option<PathBuf>,
    /// How often processes and Deployments are reconciled.
    pub tick: Duration,
}

impl KubeletConfig {
    pub fn new(worker_bin: impl Into<PathBuf>) -> Self {
        Self {
            worker_bin: worker_bin.into(),
            namespace: None,
            label_selector: None,
            log_dir: None,
            tick: Duration::from_millis(200),
        }
    }
}

/// What the kubelet runs for one Deployment, as seen by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub pid: Option<u32>,
    pub ready: bool,
    /// Pod template the process runs (false while an old one is being replaced).
    pub updated: bool,
    pub metrics_addr: Option<SocketAddr>,
}

type Snapshot = Arc<Mutex<HashMap<String, (Vec<PodInfo>, u32)>>>;

/// A running simulated kubelet. Dropping it kills its processes (SIGKILL);
/// [`Kubelet::shutdown`] stops them gracefully.
pub struct Kubelet {
    snapshot: Snapshot,
    stop: signal::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Kubelet {
    /// Run every Deployment visible to `client` with `worker_bin` as the worker binary.
    pub fn start(client: Client, worker_bin: impl Into<PathBuf>) -> Self {
        Self::start_with(client, KubeletConfig::new(worker_bin))
    }

    pub fn start_with(client: Client, config: KubeletConfig) -> Self {
        let snapshot: Snapshot = Arc::default();
        let (stop, stopped) = signal::channel(false);
        let task = tokio::spawn(run(client, config, snapshot.clone(), stopped));
        Self {
            snapshot,
            stop,
            task: Some(task),
        }
    }

    /// The pods of Deployment `namespace/name` right now.
    pub fn pods(&self, namespace: &str, name: &str) -> Vec<PodInfo> {
        self.snapshot
            .lock()
            .expect("snapshot lock")
            .get(&format!("{namespace}/{name}"))
            .map(|(pods, _)| pods.clone())
            .unwrap_or_default()
    }

    /// How many times pods of `namespace/name` exited and were replaced.
    pub fn restarts(&self, namespace: &str, name: &str) -> u32 {
        self.snapshot
            .lock()
            .expect("snapshot lock")
            .get(&format!("{namespace}/{name}"))
            .map(|(_, r)| *r)
            .unwrap_or(0)
    }

    /// Stop every pod gracefully (SIGTERM, grace period, SIGKILL) and stop.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Children are spawned with kill_on_drop: aborting the task kills them.
            task.abort();
        }
    }
}

struct Pod {
    name: String,
    template_hash: u64,
    child: Child,
    started: Instant,
    metrics_addr: Option<SocketAddr>,
    probe_path: Option<String>,
    ready: bool,
    /// `terminationGracePeriodSeconds` of the template it runs.
    grace: Duration,
}

#[derive(Default)]
struct Pods {
    pods: Vec<Pod>,
    terminating: Vec<JoinHandle<()>>,
    seq: u64,
    restarts: u32,
    backoff: Duration,
    not_before: Option<Instant>,
    /// The last status written (to write only changes).
    written: Option<serde_json::Value>,
}

async fn run(
    client: Client,
    config: KubeletConfig,
    snapshot: Snapshot,
    mut stopped: signal::Receiver<bool>,
) {
    let api: Api<Deployment> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut wc = watcher::Config::default();
    if let Some(sel) = &config.label_selector {
        wc = wc.labels(sel);
    }
    let (reader, writer) = reflector::store();
    let reflect = reflector(writer, watcher(api, wc))
        .default_backoff()
        .touched_objects()
        .for_each(|ev| {
            if let Err(err) = ev {
                tracing::debug!(%err, "kubelet watch error");
            }
            futures::future::ready(())
        });
    let reflect = tokio::spawn(reflect);
    let mut state: HashMap<String, Pods> = HashMap::new();
    let mut tick = tokio::time::interval(config.tick);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        let deployments = reader.state();
        let keys: Vec<String> = deployments.iter().map(|d| key(d)).collect();
        for (k, pods) in state.iter_mut() {
            if !keys.contains(k) {
                for pod in pods.pods.drain(..) {
                    tracing::info!(pod = %pod.name, "deployment gone: stopping pod");
                    let grace = pod.grace;
                    pods.terminating.push(terminate(pod, grace));
                }
            }
        }
        state.retain(|k, p| keys.contains(k) || !p.terminating.iter().all(|t| t.is_finished()));
        for d in deployments {
            let pods = state.entry(key(&d)).or_default();
            if let Err(err) = reconcile(&client, &config, &d, pods, &snapshot).await {
                tracing::warn!(deployment = %key(&d), %err, "kubelet reconcile failed");
            }
        }
        let mut snap = snapshot.lock().expect("snapshot lock");
        snap.retain(|k, _| state.contains_key(k));
        for (k, p) in &state {
            snap.insert(k.clone(), (pod_infos(p), p.restarts));
        }
    }
    reflect.abort();
    let mut all = Vec::new();
    for (_, mut p) in state {
        all.extend(p.pods.drain(..).map(|pod| {
            let grace = pod.grace;
            terminate(pod, grace)
        }));
        all.append(&mut p.terminating);
    }
    for t in all {
        let _ = t.await;
    }
    snapshot.lock().expect("snapshot lock").clear();
}

fn pod_infos(p: &Pods) -> Vec<PodInfo> {
    p.pods
        .iter()
        .map(|pod| PodInfo {
            name: pod.name.clone(),
            pid: pod.child.id(),
            ready: pod.ready,
            updated: true,
            metrics_addr: pod.metrics_addr,
        })
        .collect()
}

fn key(d: &Deployment) -> String {
    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

fn template_hash(d: &Deployment) -> u64 {
    let template = d
        .spec
        .as_ref()
        .map(|s| serde_json::to_string(&s.template).unwrap_or_default());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    template.hash(&mut h);
    h.finish()
}

fn grace_period(d: &Deployment) -> Duration {
    let secs = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

async fn reconcile(
    client: &Client,
    config: &KubeletConfig,
    d: &Deployment,
    pods: &mut Pods,
    snapshot: &Snapshot,
) -> anyhow::Result<()> {
    let name = d.name_any();
    let ns = d.namespace().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let hash = template_hash(d);
    let grace = grace_period(d);
    let now = Instant::now();

    // Reap pods that exited; they are replaced below (after a back-off if they crashed fast).
    let mut alive = Vec::with_capacity(pods.pods.len());
    for mut pod in pods.pods.drain(..) {
        match pod.child.try_wait() {
            Ok(None) => alive.push(pod),
            Ok(Some(status)) => {
                tracing::info!(pod = %pod.name, %status, "pod process exited");
                pods.restarts += 1;
                if now.duration_since(pod.started) < Duration::from_secs(5) {
                    pods.backoff = (pods.backoff * 2)
                        .clamp(Duration::from_millis(250), Duration::from_secs(10));
                    pods.not_before = Some(now + pods.backoff);
                } else {
                    pods.backoff = Duration::ZERO;
                }
            }
            Err(err) => {
                tracing::warn!(pod = %pod.name, %err, "cannot check pod process");
                alive.push(pod);
            }
        }
    }
    pods.pods = alive;
    pods.terminating.retain(|t| !t.is_finished());

    // Old template: replace.
    let (current, old): (Vec<Pod>, Vec<Pod>) =
        pods.pods.drain(..).partition(|p| p.template_hash == hash);
    for pod in old {
        tracing::info!(pod = %pod.name, "pod template changed: stopping old pod");
        pods.terminating.push(terminate(pod, grace));
    }
    pods.pods = current;

    // Scale down: newest first.
    while pods.pods.len() > replicas {
        let newest = pods
            .pods
            .iter()
            .enumerate()
            .max_by_key(|(_, p)| p.started)
            .map(|(i, _)| i)
            .unwrap_or(0);
        let pod = pods.pods.remove(newest);
        tracing::info!(pod = %pod.name, "scale down: stopping pod");
        pods.terminating.push(terminate(pod, grace));
    }

    // Scale up.
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let may_start =
        pods.not_before.is_none_or(|t| now >= t) && (!recreate || pods.terminating.is_empty());
    if may_start {
        while pods.pods.len() < replicas {
            pods.seq += 1;
            let pod_name = format!("{name}-{:08x}-{}", hash as u32, pods.seq);
            match start_pod(client, config, d, &pod_name, hash).await {
                Ok(pod) => {
                    tracing::info!(pod = %pod.name, pid = ?pod.child.id(), "pod started");
                    pods.pods.push(pod);
                }
                Err(err) => {
                    tracing::warn!(pod = %pod_name, %err, "cannot start pod");
                    pods.restarts += 1;
                    pods.backoff = (pods.backoff * 2)
                        .clamp(Duration::from_millis(250), Duration::from_secs(10));
                    pods.not_before = Some(now + pods.backoff);
                    break;
                }
            }
        }
    }

    // Readiness.
    for pod in pods.pods.iter_mut().filter(|p| !p.ready) {
        pod.ready = match (&pod.probe_path, pod.metrics_addr) {
            (Some(path), Some(addr)) => http_ok(addr, path).await,
            _ => true,
        };
    }

    // What tests see, before the status that announces it.
    snapshot
        .lock()
        .expect("snapshot lock")
        .insert(key(d), (pod_infos(pods), pods.restarts));

    // Status.
    let ready = pods.pods.iter().filter(|p| p.ready).count() as i32;
    let count = pods.pods.len() as i32;
    let available = ready >= replicas as i32;
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": count,
        "updatedReplicas": count,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": (replicas as i32 - ready).max(0),
        "conditions": [{
            "type": "Available",
            "status": if available { "True" } else { "False" },
            "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
            "message": format!("{ready} of {replicas} pods ready (funcscale-e2e kubelet)"),
        }],
    });
    let current_status = d.status.as_ref().map(|s| {
        json!({
            "observedGeneration": s.observed_generation,
            "replicas": s.replicas.unwrap_or(0),
            "updatedReplicas": s.updated_replicas.unwrap_or(0),
            "readyReplicas": s.ready_replicas.unwrap_or(0),
            "availableReplicas": s.available_replicas.unwrap_or(0),
        })
    });
    let wanted_summary = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": count,
        "updatedReplicas": count,
        "readyReplicas": ready,
        "availableReplicas": ready,
    });
    if current_status.as_ref() != Some(&wanted_summary) || pods.written.as_ref() != Some(&status) {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        pods.written = Some(status);
    }
    Ok(())
}

fn free_local_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Program and arguments for a container, with the worker binary mapped to the local build.
fn program(
    c: &Container,
    worker_bin: &Path,
    env: &BTreeMap<String, String>,
) -> (PathBuf, Vec<String>, bool) {
    let command: Vec<String> = c.command.iter().flatten().map(|s| expand(s, env)).collect();
    let args: Vec<String> = c.args.iter().flatten().map(|s| expand(s, env)).collect();
    let mut argv = command.clone();
    argv.extend(args);
    match command.first() {
        None => (worker_bin.to_path_buf(), argv, true),
        Some(prog)
            if Path::new(prog).file_name().and_then(|n| n.to_str()) == Some(WORKER_BIN_NAME) =>
        {
            (worker_bin.to_path_buf(), argv[1..].to_vec(), true)
        }
        Some(prog) => (PathBuf::from(prog), argv[1..].to_vec(), false),
    }
}

/// Give the pod its own metrics port: rewrite `--metrics-addr` or `FUNCSCALE_METRICS_ADDR`.
fn assign_metrics_addr(
    args: &mut [String],
    env: &mut BTreeMap<String, String>,
    is_worker: bool,
) -> std::io::Result<Option<SocketAddr>> {
    let has_arg = args
        .iter()
        .any(|a| a == "--metrics-addr" || a.starts_with("--metrics-addr="));
    let set_env = env.contains_key("FUNCSCALE_METRICS_ADDR") || (is_worker && !has_arg);
    if !has_arg && !set_env {
        return Ok(None);
    }
    let addr = free_local_addr()?;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--metrics-addr" && i + 1 < args.len() {
            args[i + 1] = addr.to_string();
            i += 1;
        } else if args[i].starts_with("--metrics-addr=") {
            args[i] = format!("--metrics-addr={addr}");
        }
        i += 1;
    }
    if set_env {
        env.insert("FUNCSCALE_METRICS_ADDR".into(), addr.to_string());
    }
    Ok(Some(addr))
}

async fn start_pod(
    client: &Client,
    config: &KubeletConfig,
    d: &Deployment,
    pod_name: &str,
    hash: u64,
) -> anyhow::Result<Pod> {
    let ns = d.namespace().unwrap_or_default();
    let container = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("pod template has no container"))?;
    // the pod as the shared env code sees it: name, namespace, the template's labels
    let pod = k8s_openapi::api::core::v1::Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod_name.to_string()),
            namespace: Some(ns.clone()),
            labels: d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("funcscale-e2e-node".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = container_env(client, &ns, &pod, &container).await?;
    env.insert("HOSTNAME".into(), pod_name.to_string());
    let (prog, mut args, is_worker) = program(&container, &config.worker_bin, &env);
    mount_configmaps(client, &ns, d, pod_name, &container, &mut args).await?;
    let metrics_addr = assign_metrics_addr(&mut args, &mut env, is_worker)?;
    let probe_path = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|h| h.path.clone().unwrap_or_else(|| "/".into()))
        .or_else(|| is_worker.then(|| "/readyz".to_string()));
    let mut cmd = Command::new(&prog);
    cmd.args(&args)
        .envs(&env)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = &config.log_dir {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join(format!("{pod_name}.log")))?;
        cmd.stdout(log.try_clone()?).stderr(log);
    }
    if let Some(wd) = container
        .working_dir
        .as_deref()
        .filter(|w| Path::new(w).is_dir())
    {
        cmd.current_dir(wd);
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("spawn {}: {e}", prog.display()))?;
    Ok(Pod {
        name: pod_name.to_string(),
        template_hash: hash,
        child,
        started: Instant::now(),
        metrics_addr,
        probe_path,
        ready: false,
        grace: grace_period(d),
    })
}

/// ConfigMap volumes: write the ConfigMap's data into a local directory per pod and rewrite
/// arguments under the mount path to it (pods share one host: no real mounts).
async fn mount_configmaps(
    client: &Client,
    ns: &str,
    d: &Deployment,
    pod_name: &str,
    container: &Container,
    args: &mut [String],
) -> anyhow::Result<()> {
    let volumes = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for m in container.volume_mounts.iter().flatten() {
        let Some(cm) = volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.config_map.as_ref())
        else {
            continue;
        };
        let dir = std::env::temp_dir()
            .join(format!("funcscale-kubelet-{}", std::process::id()))
            .join(ns)
            .join(pod_name)
            .join(&m.name);
        std::fs::create_dir_all(&dir)?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        if let Some(obj) = api.get_opt(&cm.name).await? {
            for (k, v) in obj.data.unwrap_or_default() {
                std::fs::write(dir.join(&k), v)?;
            }
        }
        let mount = m.mount_path.trim_end_matches('/');
        for a in args.iter_mut() {
            if let Some(rest) = a.strip_prefix(mount)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                *a = format!("{}{rest}", dir.display());
            }
        }
    }
    Ok(())
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
fn terminate(mut pod: Pod, grace: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(pid) = pod.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, pod.child.wait()).await {
            Ok(status) => tracing::info!(pod = %pod.name, ?status, "pod stopped"),
            Err(_) => {
                tracing::info!(pod = %pod.name, "grace period over: SIGKILL");
                let _ = pod.child.kill().await;
            }
        }
    })
}

/// GET `path` on `addr`: did it answer 2xx?
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await?;
        Ok::<_, std::io::Error>(n >= 10 && buf.starts_with(b"HTTP/1.") && buf[9] == b'2')
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_worker_binary_only() {
        let env = BTreeMap::new();
        let bin = Path::new("/build/funcscale-worker");
        let c = Container {
            command: Some(vec!["/usr/local/bin/funcscale-worker".into()]),
            args: Some(vec![
                "run".into(),
                "--metrics-addr".into(),
                "0.0.0.0:9090".into(),
            ]),
            ..Default::default()
        };
        let (prog, mut args, worker) = program(&c, bin, &env);
        assert_eq!((prog.as_path(), worker), (bin, true));
        let mut env = BTreeMap::new();
        let addr = assign_metrics_addr(&mut args, &mut env, worker)
            .unwrap()
            .unwrap();
        assert_eq!(
            args,
            vec!["run".to_string(), "--metrics-addr".into(), addr.to_string()]
        );
        assert!(!env.contains_key("FUNCSCALE_METRICS_ADDR"));

        let sleep = Container {
            command: Some(vec!["sleep".into(), "1000".into()]),
            ..Default::default()
        };
        let (prog, args, worker) = program(&sleep, bin, &BTreeMap::new());
        assert_eq!(
            (prog, args, worker),
            (PathBuf::from("sleep"), vec!["1000".to_string()], false)
        );
    }
}

//! One pod's containers as local processes: start, restart, probe, stop, status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::env::{container_env, expand};
use super::launch::Launch;
use super::probe::{Handler, Probes};
use super::types::{KubeletConfig, PodInfo, now};

#[derive(Debug, Clone)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: Time,
    },
    Terminated {
        code: i32,
        reason: String,
        started: Time,
        finished: Time,
    },
}

impl State {
    fn json(&self) -> serde_json::Value {
        match self {
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Running { started } => json!({"running": {"startedAt": started}}),
            State::Terminated {
                code,
                reason,
                started,
                finished,
            } => json!({"terminated": {"exitCode": code, "reason": reason,
                "startedAt": started, "finishedAt": finished}}),
        }
    }
}

struct ContainerRt {
    spec: Container,
    child: Option<Child>,
    pid: Option<u32>,
    state: State,
    last: Option<State>,
    restarts: u32,
    /// Start attempts that failed before a process ran (image, config errors).
    failed_starts: u32,
    backoff: Duration,
    not_before: Option<Instant>,
    running_since: Option<Instant>,
    probes: Option<Probes>,
    launch: Option<Launch>,
    /// No more starts (restartPolicy Never / OnFailure after success).
    done: bool,
    /// Its liveness probe failed: not ready; SIGTERMed, SIGKILLed (its group) at `kill_at`.
    unhealthy: bool,
    kill_at: Option<Instant>,
}

impl Drop for ContainerRt {
    fn drop(&mut self) {
        // the whole container goes, not only its main process (kill_on_drop)
        if let Some(pid) = self.pid {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL, true);
        }
    }
}

impl ContainerRt {
    fn ready(&self) -> bool {
        self.child.is_some() && !self.unhealthy && self.probes.as_ref().is_none_or(|p| p.ready())
    }
}

/// One pod's processes.
pub(super) struct PodRuntime {
    config: Arc<KubeletConfig>,
    namespace: String,
    name: String,
    uid: String,
    owner: Option<String>,
    restart_policy: String,
    dir: PathBuf,
    /// containerPort → local port.
    ports: BTreeMap<i32, u16>,
    /// port name → containerPort.
    port_names: BTreeMap<String, i32>,
    containers: Vec<ContainerRt>,
    start_time: Time,
    ready_since: Option<(bool, Time)>,
    stopping: Option<JoinHandle<()>>,
    /// Process groups of containers being stopped (killed at once if the pod vanishes).
    stopping_groups: Vec<u32>,
    written: Option<serde_json::Value>,
}

/// Point an address with container port `port` (`0.0.0.0:9090`, `[::]:9090`, `:9090`, ...)
/// at `127.0.0.1:<local>`; anything else stays.
pub(super) fn rewrite_port(s: &str, port: i32, local: u16) -> String {
    let suffix = format!(":{port}");
    let Some(host) = s.strip_suffix(&suffix) else {
        return s.to_string();
    };
    let host_part = host.rsplit(['/', '=']).next().unwrap_or(host);
    let keep = &host[..host.len() - host_part.len()];
    match host_part {
        "" | "0.0.0.0" | "127.0.0.1" | "localhost" | "[::]" | "[::1]" | "::" => {
            format!("{keep}127.0.0.1:{local}")
        }
        _ => s.to_string(),
    }
}

impl PodRuntime {
    pub async fn new(_client: &Client, config: Arc<KubeletConfig>, pod: &Pod) -> Self {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ports = BTreeMap::new();
        let mut port_names = BTreeMap::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0")
                    && let Ok(a) = l.local_addr()
                {
                    ports.insert(p.container_port, a.port());
                }
                if let Some(n) = &p.name {
                    port_names.insert(n.clone(), p.container_port);
                }
            }
        }
        let dir = config.work_dir.join(&namespace).join(format!(
            "{name}-{}",
            &pod.uid().unwrap_or_default()[..8.min(pod.uid().unwrap_or_default().len())]
        ));
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.name.clone());
        Self {
            namespace,
            name,
            uid: pod.uid().unwrap_or_default(),
            owner,
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            dir,
            ports,
            port_names,
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerRt {
                    spec: c.clone(),
                    child: None,
                    pid: None,
                    state: State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    },
                    last: None,
                    restarts: 0,
                    failed_starts: 0,
                    backoff: Duration::ZERO,
                    not_before: None,
                    running_since: None,
                    probes: None,
                    launch: None,
                    done: false,
                    unhealthy: false,
                    kill_at: None,
                })
                .collect(),
            start_time: now(),
            ready_since: None,
            stopping: None,
            stopping_groups: Vec::new(),
            written: None,
            config,
        }
    }

    pub fn info(&self) -> PodInfo {
        PodInfo {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            pids: self.containers.iter().filter_map(|c| c.pid).collect(),
            ready: self.ready(),
            restarts: self.containers.iter().map(|c| c.restarts).sum(),
            terminating: self.stopping.is_some(),
        }
    }

    fn ready(&self) -> bool {
        self.stopping.is_none() && self.containers.iter().all(ContainerRt::ready)
    }

    /// Bring the processes in line with the pod object; write its status when it changed.
    pub async fn sync(&mut self, client: &Client, pod: &Pod) {
        if pod.metadata.deletion_timestamp.is_some() {
            if self.stopping.is_none() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or(pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30)
                    .max(0) as u64;
                tracing::info!(pod = %self.name, grace, "pod deleted: stopping its containers");
                let stop = self.stop_containers(Duration::from_secs(grace));
                let client = client.clone();
                let pod = pod.clone();
                self.stopping = Some(tokio::spawn(async move {
                    stop.await;
                    delete_now(&client, &pod).await;
                }));
            }
            return;
        }
        let grace = Duration::from_secs(
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        for i in 0..self.containers.len() {
            self.sync_container(client, pod, i, grace).await;
        }
        self.write_status(client).await;
    }

    async fn sync_container(&mut self, client: &Client, pod: &Pod, i: usize, grace: Duration) {
        let now_i = Instant::now();
        let policy = self.restart_policy.clone();
        let (base, max) = (self.config.backoff_base, self.config.backoff_max);
        let c = &mut self.containers[i];
        // exited?
        if let Some(child) = c.child.as_mut() {
            let liveness_failed = c.probes.as_ref().is_some_and(|p| p.liveness_failed());
            match child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let code = status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                    let started = match &c.state {
                        State::Running { started } => started.clone(),
                        _ => now(),
                    };
                    tracing::info!(pod = %self.name, container = %c.spec.name, code, "container exited");
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    c.state = State::Terminated {
                        code,
                        reason: reason.into(),
                        started,
                        finished: now(),
                    };
                    c.child = None;
                    // what it started and left behind goes with it, as with a container
                    if let Some(pid) = c.pid.take() {
                        signal_group(pid, nix::sys::signal::Signal::SIGKILL, true);
                    }
                    c.probes = None;
                    c.unhealthy = false;
                    c.kill_at = None;
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                    if restart {
                        let ran = c.running_since.map(|t| now_i - t).unwrap_or_default();
                        c.backoff = if ran > Duration::from_secs(600) || c.backoff.is_zero() {
                            base
                        } else {
                            (c.backoff * 2).min(max)
                        };
                        c.not_before = Some(now_i + c.backoff);
                        c.last = Some(c.state.clone());
                        c.state = State::Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: format!(
                                "back-off {:?} restarting failed container {}",
                                c.backoff, c.spec.name
                            ),
                        };
                        c.restarts += 1;
                    } else {
                        c.done = true;
                    }
                    c.running_since = None;
                }
                Ok(None) if liveness_failed && !c.unhealthy => {
                    tracing::info!(pod = %self.name, container = %c.spec.name, "liveness probe failed: restarting the container");
                    c.unhealthy = true;
                    c.kill_at = Some(now_i + grace);
                    if let Some(pid) = c.pid {
                        signal_group(pid, nix::sys::signal::Signal::SIGTERM, false);
                    }
                }
                Ok(None) if c.kill_at.is_some_and(|t| now_i >= t) => {
                    c.kill_at = None;
                    if let Some(pid) = c.pid {
                        signal_group(pid, nix::sys::signal::Signal::SIGKILL, true);
                    }
                }
                _ => {}
            }
        }
        let c = &mut self.containers[i];
        if c.child.is_some() || c.done || c.not_before.is_some_and(|t| now_i < t) {
            return;
        }
        // start (or restart)
        match self.prepare(client, pod, i).await {
            Ok(launch) => self.spawn(i, launch),
            Err((reason, message)) => {
                let c = &mut self.containers[i];
                c.failed_starts += 1;
                let reason = if reason == "ErrImagePull" && c.failed_starts > 1 {
                    "ImagePullBackOff".to_string()
                } else {
                    reason
                };
                if c.failed_starts == 1 {
                    tracing::warn!(pod = %self.name, container = %c.spec.name, %reason, %message, "container cannot start");
                }
                c.backoff = if c.backoff.is_zero() {
                    base
                } else {
                    (c.backoff * 2).min(max)
                };
                c.not_before = Some(now_i + c.backoff);
                c.state = State::Waiting { reason, message };
            }
        }
    }

    fn spawn(&mut self, i: usize, launch: Launch) {
        let log_path = self.config.log_dir.join(format!(
            "{}_{}_{}.log",
            self.namespace, self.name, self.containers[i].spec.name
        ));
        let spawned = (|| -> std::io::Result<Child> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            let (program, args) = launch.argv();
            Command::new(program)
                .args(args)
                .env_clear()
                .envs(&launch.env)
                .current_dir(&launch.cwd)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
        })();
        let c = &mut self.containers[i];
        match spawned {
            Ok(child) => {
                c.pid = child.id();
                tracing::info!(pod = %self.name, container = %c.spec.name, pid = ?c.pid, program = %launch.program.display(), "container started");
                c.child = Some(child);
                c.state = State::Running { started: now() };
                c.running_since = Some(Instant::now());
                c.failed_starts = 0;
                c.probes = Some(Probes::start(
                    c.spec.startup_probe.as_ref().map(|p| {
                        (
                            p.clone(),
                            probe_handler(p, &launch, &self.ports, &self.port_names),
                        )
                    }),
                    c.spec.readiness_probe.as_ref().map(|p| {
                        (
                            p.clone(),
                            probe_handler(p, &launch, &self.ports, &self.port_names),
                        )
                    }),
                    c.spec.liveness_probe.as_ref().map(|p| {
                        (
                            p.clone(),
                            probe_handler(p, &launch, &self.ports, &self.port_names),
                        )
                    }),
                ));
                c.launch = Some(launch);
            }
            Err(err) => {
                c.failed_starts += 1;
                c.backoff = if c.backoff.is_zero() {
                    self.config.backoff_base
                } else {
                    (c.backoff * 2).min(self.config.backoff_max)
                };
                c.not_before = Some(Instant::now() + c.backoff);
                c.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message: format!("starting {}: {err}", launch.program.display()),
                };
            }
        }
    }

    /// Resolve image, command, environment and volumes of container `i`.
    async fn prepare(
        &self,
        client: &Client,
        pod: &Pod,
        i: usize,
    ) -> Result<Launch, (String, String)> {
        let c = &self.containers[i].spec;
        let image = c.image.clone().unwrap_or_default();
        let rule = self
            .config
            .images
            .iter()
            .find(|r| r.matches(&image))
            .cloned()
            .ok_or_else(|| {
                (
                    "ErrImagePull".to_string(),
                    format!("image {image:?} is not mapped to a local program on this node"),
                )
            })?;
        let config_err =
            |e: anyhow::Error| ("CreateContainerConfigError".to_string(), format!("{e:#}"));
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let base_path = std::env::var("PATH").unwrap_or_default();
        let mut path: Vec<String> = rule.path.iter().map(|p| p.display().to_string()).collect();
        path.push(base_path);
        env.insert("PATH".into(), path.join(":"));
        env.extend(rule.env.clone());
        env.insert("HOSTNAME".into(), self.name.clone());
        if let Some((host, port)) = &self.config.api_server {
            env.insert("KUBERNETES_SERVICE_HOST".into(), host.clone());
            env.insert("KUBERNETES_SERVICE_PORT".into(), port.to_string());
            env.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string());
            env.insert("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}"));
        }
        let container_env = container_env(client, &self.namespace, pod, c)
            .await
            .map_err(config_err)?;
        env.extend(container_env);
        // argv
        let expand_all = |v: &Option<Vec<String>>| -> Option<Vec<String>> {
            v.as_ref()
                .map(|v| v.iter().map(|s| expand(s, &env)).collect())
        };
        let mut argv: Vec<String> = match (expand_all(&c.command), expand_all(&c.args)) {
            (Some(cmd), args) => cmd.into_iter().chain(args.unwrap_or_default()).collect(),
            (None, Some(args)) => rule.entrypoint.iter().cloned().chain(args).collect(),
            (None, None) => rule
                .entrypoint
                .iter()
                .chain(rule.cmd.iter())
                .cloned()
                .collect(),
        };
        if argv.is_empty() {
            return Err((
                "CreateContainerError".into(),
                format!(
                    "no command: container {:?} has none and image {image:?} no entrypoint",
                    c.name
                ),
            ));
        }
        // volumes: local directories, paths under a mount point rewritten
        std::fs::create_dir_all(&self.dir).map_err(|e| config_err(e.into()))?;
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mut binds: Vec<(PathBuf, String, bool)> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
                continue;
            };
            let dir = self.dir.join("volumes").join(&m.name);
            std::fs::create_dir_all(&dir).map_err(|e| config_err(e.into()))?;
            if let Some(cm) = &v.config_map {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &self.namespace);
                match api
                    .get_opt(&cm.name)
                    .await
                    .map_err(|e| config_err(e.into()))?
                {
                    Some(obj) => {
                        for (k, v) in obj.data.unwrap_or_default() {
                            std::fs::write(dir.join(&k), v).map_err(|e| config_err(e.into()))?;
                        }
                    }
                    None if cm.optional == Some(true) => {}
                    None => {
                        return Err(config_err(anyhow::anyhow!(
                            "configmap {:?} not found",
                            cm.name
                        )));
                    }
                }
            }
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
                match api.get_opt(&name).await.map_err(|e| config_err(e.into()))? {
                    Some(obj) => {
                        for (k, v) in obj.data.unwrap_or_default() {
                            std::fs::write(dir.join(&k), &v.0).map_err(|e| config_err(e.into()))?;
                        }
                    }
                    None if s.optional == Some(true) => {}
                    None => return Err(config_err(anyhow::anyhow!("secret {name:?} not found"))),
                }
            }
            let ro = m.read_only == Some(true) || v.config_map.is_some() || v.secret.is_some();
            binds.push((dir.clone(), m.mount_path.clone(), ro));
            mounts.push((m.mount_path.trim_end_matches('/').to_string(), dir));
        }
        let isolated = self.config.mount_namespaces;
        if isolated {
            mounts.clear(); // the paths are real inside the container's mount namespace
        } else {
            binds.clear();
        }
        let remap = |s: &str| -> String {
            let mut s = s.to_string();
            for (mount, dir) in &mounts {
                if mount.is_empty() {
                    continue;
                }
                if let Some(rest) = s.strip_prefix(mount.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    s = format!("{}{rest}", dir.display());
                } else if let Some(pos) = s.find(&format!("={mount}")) {
                    // --flag=/mount/path
                    let (head, tail) = s.split_at(pos + 1);
                    if let Some(rest) = tail.strip_prefix(mount.as_str())
                        && (rest.is_empty() || rest.starts_with('/'))
                    {
                        s = format!("{head}{}{rest}", dir.display());
                    }
                }
            }
            for (p, l) in &self.ports {
                s = rewrite_port(&s, *p, *l);
                if let Some((flag, value)) = s.split_once('=') {
                    let v = rewrite_port(value, *p, *l);
                    if v != value {
                        s = format!("{flag}={v}");
                    }
                }
            }
            s
        };
        for a in argv.iter_mut() {
            *a = remap(a);
        }
        for v in env.values_mut() {
            *v = remap(v);
        }
        if !isolated {
            let tmp = mounts
                .iter()
                .find(|(m, _)| m == "/tmp")
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| self.dir.join("tmp"));
            std::fs::create_dir_all(&tmp).map_err(|e| config_err(e.into()))?;
            env.insert("TMPDIR".into(), tmp.display().to_string());
        }
        let cwd = c
            .working_dir
            .as_deref()
            .map(PathBuf::from)
            .filter(|w| w.is_dir())
            .or_else(|| rule.workdir.clone())
            .unwrap_or_else(|| self.dir.clone());
        let program = rule.program(&argv[0]);
        // The "image" (the local files the rule maps: the program's directory, the image's
        // PATH, WORKDIR and path-like ENV) must stay visible in the container: where a volume
        // is mounted over one of them (an emptyDir at /tmp over a build under /tmp), it is
        // bind-mounted again at its own path after the volumes.
        let mut image: Vec<PathBuf> = Vec::new();
        image.extend(program.parent().map(Path::to_path_buf));
        image.extend(rule.path.iter().cloned());
        image.extend(rule.workdir.iter().cloned());
        for v in rule.env.values() {
            image.extend(v.split(':').map(PathBuf::from).filter(|p| p.is_absolute()));
        }
        binds.sort_by_key(|(_, target, _)| Path::new(target).components().count());
        let covered: Vec<PathBuf> = binds.iter().map(|(_, t, _)| PathBuf::from(t)).collect();
        image.sort();
        image.dedup();
        for p in image {
            if p.is_dir() && covered.iter().any(|t| p.starts_with(t)) {
                binds.push((p.clone(), p.display().to_string(), false));
            }
        }
        Ok(Launch {
            program,
            args: argv[1..].to_vec(),
            env,
            cwd,
            rule,
            mounts: binds,
        })
    }

    /// preStop hooks, SIGTERM, SIGKILL after `grace`: a future that owns the processes.
    fn stop_containers(
        &mut self,
        grace: Duration,
    ) -> impl std::future::Future<Output = ()> + use<> {
        let mut work = Vec::new();
        for c in &mut self.containers {
            c.probes = None;
            if let Some(child) = c.child.take() {
                let hook = c
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.pre_stop.as_ref())
                    .and_then(|h| {
                        c.launch.as_ref().and_then(|launch| {
                            if let Some(e) = &h.exec {
                                Some(Handler::Exec(
                                    Box::new(launch.clone()),
                                    e.command.clone().unwrap_or_default(),
                                ))
                            } else {
                                h.http_get.as_ref().map(|g| Handler::Http {
                                    port: self_local_port(&self.ports, &self.port_names, &g.port)
                                        .unwrap_or(0),
                                    path: g.path.clone().unwrap_or_else(|| "/".into()),
                                })
                            }
                        })
                    });
                work.push((c.spec.name.clone(), child, hook));
            }
            if let Some(pid) = c.pid.take() {
                self.stopping_groups.push(pid);
            }
            c.done = true;
        }
        let pod = self.name.clone();
        async move {
            let deadline = tokio::time::Instant::now() + grace;
            let stops = work.into_iter().map(|(name, mut child, hook)| {
                let pod = pod.clone();
                async move {
                    if let Some(h) = hook {
                        let _ = tokio::time::timeout_at(deadline, h.run(grace)).await;
                    }
                    let Some(pid) = child.id() else { return };
                    signal_group(pid, nix::sys::signal::Signal::SIGTERM, false);
                    match tokio::time::timeout_at(deadline, child.wait()).await {
                        Ok(status) => {
                            tracing::info!(%pod, container = %name, ?status, "container stopped")
                        }
                        Err(_) => {
                            tracing::info!(%pod, container = %name, "grace period over: SIGKILL")
                        }
                    }
                    // the whole container goes: its children too
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL, true);
                    let _ = child.wait().await;
                }
            });
            futures::future::join_all(stops).await;
        }
    }

    /// The pod object is gone: kill everything now.
    pub fn kill_now(&mut self) {
        if let Some(s) = self.stopping.take() {
            s.abort();
        }
        for pid in self.stopping_groups.drain(..) {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL, true);
        }
        for c in &mut self.containers {
            c.probes = None;
            if let Some(pid) = c.pid.take() {
                signal_group(pid, nix::sys::signal::Signal::SIGKILL, true);
            }
            c.child = None;
        }
    }

    /// Stop gracefully (the kubelet is shutting down).
    pub async fn stop(mut self) {
        if let Some(s) = self.stopping.take() {
            let _ = s.await;
            return;
        }
        let grace = Duration::from_secs(5);
        self.stop_containers(grace).await;
    }

    async fn write_status(&mut self, client: &Client) {
        let ready = self.ready();
        let t = match &self.ready_since {
            Some((r, t)) if *r == ready => t.clone(),
            _ => {
                let t = now();
                self.ready_since = Some((ready, t.clone()));
                t
            }
        };
        let any_running = self.containers.iter().any(|c| c.child.is_some());
        let all_done = self.containers.iter().all(|c| c.done && c.child.is_none());
        let phase = if all_done {
            let ok = self
                .containers
                .iter()
                .all(|c| matches!(c.state, State::Terminated { code: 0, .. }));
            if ok { "Succeeded" } else { "Failed" }
        } else if any_running
            && self
                .containers
                .iter()
                .all(|c| c.child.is_some() || c.restarts > 0 || c.done)
        {
            // every container has started once (a real kubelet: Pending until then)
            "Running"
        } else {
            "Pending"
        };
        let statuses: Vec<serde_json::Value> = self
            .containers
            .iter()
            .map(|c| {
                let ready = c.ready();
                let mut s = json!({
                    "name": c.spec.name,
                    "image": c.spec.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "ready": ready,
                    "started": c.child.is_some() && c.probes.as_ref().is_none_or(|p| p.started()),
                    "restartCount": c.restarts,
                    "state": c.state.json(),
                    "lastState": c.last.as_ref().map(State::json).unwrap_or_else(|| json!({})),
                });
                if let Some(pid) = c.pid {
                    s["containerID"] = json!(format!("process://{pid}"));
                }
                s
            })
            .collect();
        let rs = if ready { "True" } else { "False" };
        let status = json!({
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": self.start_time},
                {"type": "Ready", "status": rs, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": rs, "lastTransitionTime": t},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": self.start_time},
            ],
            "containerStatuses": statuses,
        });
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        match api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"uid": self.uid}, "status": status})),
            )
            .await
        {
            Ok(_) => self.written = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(err) => tracing::warn!(pod = %self.name, %err, "cannot write pod status"),
        }
    }
}

fn self_local_port(
    ports: &BTreeMap<i32, u16>,
    names: &BTreeMap<String, i32>,
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let p = match port {
        IntOrString::Int(p) => *p,
        IntOrString::String(n) => match names.get(n) {
            Some(p) => *p,
            None => n.parse().ok()?,
        },
    };
    Some(ports.get(&p).copied().unwrap_or(p as u16))
}

fn probe_handler(
    p: &k8s_openapi::api::core::v1::Probe,
    launch: &Launch,
    ports: &BTreeMap<i32, u16>,
    names: &BTreeMap<String, i32>,
) -> Option<Handler> {
    let unresolved = |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| {
        Handler::Fail(format!(
            "port {port:?} is not a declared container port name or a number"
        ))
    };
    if let Some(g) = &p.http_get {
        return Some(match self_local_port(ports, names, &g.port) {
            Some(port) => Handler::Http {
                port,
                path: g.path.clone().unwrap_or_else(|| "/".into()),
            },
            None => unresolved(&g.port),
        });
    }
    if let Some(t) = &p.tcp_socket {
        return Some(match self_local_port(ports, names, &t.port) {
            Some(port) => Handler::Tcp { port },
            None => unresolved(&t.port),
        });
    }
    if let Some(e) = &p.exec {
        return Some(Handler::Exec(
            Box::new(launch.clone()),
            e.command.clone().unwrap_or_default(),
        ));
    }
    Some(Handler::Fail(
        "a probe without httpGet, tcpSocket or exec is not supported here".into(),
    ))
}

/// Signal a container: its main process, or (`group`) its whole process group (the main
/// process leads it; a group id is not reused while any member lives, unlike a reaped pid).
fn signal_group(pid: u32, sig: nix::sys::signal::Signal, group: bool) {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    if group {
        let _ = nix::sys::signal::killpg(p, sig);
    } else {
        let _ = nix::sys::signal::kill(p, sig);
    }
}

/// Delete the pod object with grace 0, as a kubelet does once its containers stopped.
pub(super) async fn delete_now(client: &Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(err) => tracing::warn!(pod = %pod.name_any(), %err, "cannot delete pod"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_addresses_of_the_port() {
        assert_eq!(rewrite_port("0.0.0.0:9090", 9090, 40001), "127.0.0.1:40001");
        assert_eq!(rewrite_port(":9090", 9090, 40001), "127.0.0.1:40001");
        assert_eq!(rewrite_port("[::]:9090", 9090, 40001), "127.0.0.1:40001");
        assert_eq!(
            rewrite_port("http://0.0.0.0:9090", 9090, 40001),
            "http://127.0.0.1:40001"
        );
        assert_eq!(rewrite_port("0.0.0.0:19090", 9090, 40001), "0.0.0.0:19090");
        assert_eq!(
            rewrite_port("redis.svc:9090", 9090, 40001),
            "redis.svc:9090"
        );
        assert_eq!(rewrite_port("9090", 9090, 40001), "9090");
    }
}

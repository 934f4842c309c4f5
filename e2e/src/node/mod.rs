//! A kubelet that runs pods as local processes, for a real control plane
//! (`e2e/control-plane/`): it registers a Node, keeps its Lease and Ready condition fresh so the
//! node controller keeps it schedulable, and runs every pod the real scheduler binds to it.
//! It knows nothing about funcscale: the real Deployment and ReplicaSet controllers decide
//! which pods exist, this only runs them.
//!
//! What it does, as a kubelet does it:
//! - **Images** map to local programs ([`ImageRule`]): a rule gives the image's entrypoint and
//!   the programs its commands name (`funcscale-worker` → the local build, `celery` → a
//!   virtualenv's). An image no rule maps fails as a missing image would: the container waits
//!   in `ErrImagePull` / `ImagePullBackOff` and the pod never becomes Ready.
//! - **Processes**: each container is one process (its own process group), started with
//!   `command` + `args` (`$(VAR)` expanded), the environment from `env` (values, `secretKeyRef`,
//!   `configMapKeyRef`, `fieldRef`) and `envFrom`, `HOSTNAME` = the pod name,
//!   `KUBERNETES_SERVICE_HOST` / `_PORT` = the API server. Volumes (`emptyDir`, `configMap`,
//!   `secret`: the ServiceAccount token too) are local directories, bind-mounted at their
//!   `mountPath` in a mount namespace of the container's own (as root); without that,
//!   arguments and env values under a mount path are pointed at the directory and `TMPDIR`
//!   at a private directory per pod.
//! - **Ports**: pods share this host, so each declared `containerPort` gets a free local port;
//!   the process learns it from its environment and arguments, where an address with that
//!   port (`0.0.0.0:9090`, `:9090`) is rewritten to `127.0.0.1:<local port>`. Probes use the
//!   local port.
//! - **Probes**: `startupProbe`, `readinessProbe`, `livenessProbe` with `httpGet`, `tcpSocket`
//!   or `exec`, honouring `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//!   `successThreshold` and `failureThreshold`; a probe of an undeclared port name fails. A
//!   container without a readiness probe is ready once started; a liveness failure makes it
//!   not ready and restarts it (SIGTERM, SIGKILL of its group after the grace period).
//! - **Restarts**: `restartPolicy` `Always` / `OnFailure` / `Never`, with a crash back-off that
//!   doubles from [`KubeletConfig::backoff_base`] to [`KubeletConfig::backoff_max`]
//!   (CrashLoopBackOff); `restartCount` counts them.
//! - **Status**: phase, `PodScheduled` / `Initialized` / `ContainersReady` / `Ready`
//!   conditions, container statuses (state, ready, started, restart count, `containerID`
//!   `process://<pid>`), `podIP` / `hostIP` 127.0.0.1, `startTime`.
//! - **Deletion**: when a pod gets a `deletionTimestamp`, each container's `preStop` hook runs
//!   (`exec` or `httpGet`), then SIGTERM, then SIGKILL of the whole process group after the
//!   pod's `deletionGracePeriodSeconds`; then the pod object is deleted with grace 0, as a
//!   kubelet does. A pod removed at once (`--grace-period=0 --force`) loses its processes
//!   at once.

pub(crate) mod env;
mod launch;
mod probe;
mod process;
mod types;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

pub use launch::ImageRule;
use process::{PodRuntime, delete_now};
use types::now;
pub use types::{KubeletConfig, NODE_LABEL, PodInfo, mount_namespaces_available};

type Snapshot = Arc<Mutex<Vec<PodInfo>>>;

/// A running kubelet. [`Kubelet::shutdown`] stops its pods gracefully and removes its Node;
/// dropping it kills the processes at once.
pub struct Kubelet {
    pub node_name: String,
    snapshot: Snapshot,
    stop: signal::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Kubelet {
    /// Register the Node (waiting until the API has it) and start running its pods.
    pub async fn start(client: Client, config: KubeletConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.log_dir)?;
        std::fs::create_dir_all(&config.work_dir)?;
        register_node(&client, &config).await?;
        let snapshot: Snapshot = Arc::default();
        let (stop, stopped) = signal::channel(false);
        let node_name = config.node_name.clone();
        let task = tokio::spawn(run(client, config, snapshot.clone(), stopped));
        Ok(Self {
            node_name,
            snapshot,
            stop,
            task: Some(task),
        })
    }

    /// Every pod it runs now.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.snapshot.lock().expect("snapshot").clone()
    }

    /// The live (not terminating) pods of Deployment `namespace/name`, by their ReplicaSet's
    /// name (`<deployment>-<template hash>`).
    pub fn pods_of(&self, namespace: &str, deployment: &str) -> Vec<PodInfo> {
        self.pods()
            .into_iter()
            .filter(|p| {
                p.namespace == namespace
                    && !p.terminating
                    && p.owner
                        .as_deref()
                        .and_then(|o| o.rsplit_once('-'))
                        .is_some_and(|(d, _)| d == deployment)
            })
            .collect()
    }

    /// Stop every pod (SIGTERM, grace, SIGKILL), remove the Node and stop.
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
            // processes are spawned with kill_on_drop: aborting the task kills them
            task.abort();
        }
    }
}

fn node_status(config: &KubeletConfig) -> serde_json::Value {
    let (cpu, mem, pods) = config.capacity;
    let res =
        json!({"cpu": cpu.to_string(), "memory": format!("{mem}Gi"), "pods": pods.to_string()});
    let t = now();
    json!({
        "capacity": res,
        "allocatable": res,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": config.node_name}],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "funcscale-e2e process kubelet is posting ready status",
             "lastHeartbeatTime": t, "lastTransitionTime": t},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "", "lastHeartbeatTime": t, "lastTransitionTime": t},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "message": "", "lastHeartbeatTime": t, "lastTransitionTime": t},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "message": "", "lastHeartbeatTime": t, "lastTransitionTime": t},
        ],
        "nodeInfo": {"kubeletVersion": "v1.20.2-funcscale-e2e", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "process://",
            "osImage": "local processes", "kernelVersion": "", "machineID": "", "systemUUID": "",
            "bootID": ""},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
    })
}

async fn register_node(client: &Client, config: &KubeletConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = config.labels.clone();
    labels.insert(NODE_LABEL.into(), config.node_name.clone());
    labels.insert("kubernetes.io/hostname".into(), config.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": config.node_name, "labels": labels},
        "spec": {"taints": config.taints},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(config)})),
        )
        .await?;
    renew_lease(client, &config.node_name).await?;
    Ok(())
}

async fn renew_lease(client: &Client, node: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                 "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())}});
    leases
        .patch(
            node,
            &PatchParams::apply("funcscale-e2e-kubelet").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// Node Lease every 10 s and the Ready condition every 30 s, as a kubelet does.
async fn heartbeat(client: Client, config: KubeletConfig) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut n = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(err) = renew_lease(&client, &config.node_name).await {
            tracing::warn!(%err, "node lease renewal failed");
        }
        n += 1;
        if n.is_multiple_of(3)
            && let Err(err) = nodes
                .patch_status(
                    &config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": node_status(&config)})),
                )
                .await
        {
            tracing::warn!(%err, "node status update failed");
        }
    }
}

async fn run(
    client: Client,
    config: KubeletConfig,
    snapshot: Snapshot,
    mut stopped: signal::Receiver<bool>,
) {
    let heartbeat = tokio::spawn(heartbeat(client.clone(), config.clone()));
    let api: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    let (reader, writer) = reflector::store();
    let reflect = tokio::spawn(
        reflector(writer, watcher(api, wc))
            .default_backoff()
            .touched_objects()
            .for_each(|ev| {
                if let Err(err) = ev {
                    tracing::debug!(%err, "kubelet watch error");
                }
                futures::future::ready(())
            }),
    );
    let config = Arc::new(config);
    let mut pods: HashMap<String, PodRuntime> = HashMap::new();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        let objects = reader.state();
        let mut seen = std::collections::HashSet::new();
        for pod in objects {
            let Some(uid) = pod.uid() else { continue };
            seen.insert(uid.clone());
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if !pods.contains_key(&uid) {
                if matches!(phase, Some("Succeeded") | Some("Failed")) {
                    continue;
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    // never started here: nothing to stop
                    delete_now(&client, &pod).await;
                    continue;
                }
                let rt = PodRuntime::new(&client, config.clone(), &pod).await;
                pods.insert(uid.clone(), rt);
            }
            let rt = pods.get_mut(&uid).expect("inserted above");
            rt.sync(&client, &pod).await;
        }
        // Gone from the API (force-deleted, or deleted after termination): nothing may run.
        pods.retain(|uid, rt| {
            if seen.contains(uid) {
                return true;
            }
            rt.kill_now();
            false
        });
        *snapshot.lock().expect("snapshot") = pods.values().map(PodRuntime::info).collect();
    }
    heartbeat.abort();
    reflect.abort();
    let stops: Vec<_> = pods.into_values().map(PodRuntime::stop).collect();
    futures::future::join_all(stops).await;
    snapshot.lock().expect("snapshot").clear();
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes
        .delete(&config.node_name, &DeleteParams::default())
        .await;
}

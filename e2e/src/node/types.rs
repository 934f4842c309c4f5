//! The kubelet's configuration and what tests see of its pods.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::launch::ImageRule;

/// The label every node of this kubelet carries, with the node's name as value; a namespace
/// whose `scheduler.alpha.kubernetes.io/node-selector` annotation names it (the
/// `PodNodeSelector` admission plugin) has all its pods scheduled here.
pub const NODE_LABEL: &str = "funcscale.dev/e2e-node";

/// How the kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The Node's name (and the value of its [`NODE_LABEL`]).
    pub node_name: String,
    /// Image → local program.
    pub images: Vec<ImageRule>,
    /// Each container's stdout and stderr go to `<log_dir>/<namespace>_<pod>_<container>.log`.
    pub log_dir: PathBuf,
    /// Per-pod directories (TMPDIR, volumes) live under here.
    pub work_dir: PathBuf,
    /// Node capacity advertised to the scheduler (cpu cores, memory in GiB, pods).
    pub capacity: (u32, u32, u32),
    /// Crash back-off: first delay and cap (a real kubelet: 10 s and 5 min).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often processes are checked and statuses written.
    pub tick: Duration,
    /// Run each container in its own mount namespace with its volumes bind-mounted at their
    /// `mountPath` (needs root: `unshare -m`). Without, paths under a mount path in arguments
    /// and env values are rewritten to the volume's local directory, and `TMPDIR` points at
    /// the pod's own directory.
    pub mount_namespaces: bool,
    /// The API server as pods reach it (`KUBERNETES_SERVICE_HOST` / `_PORT`).
    pub api_server: Option<(String, u16)>,
    /// More Node labels (e.g. what a dedicated node pool carries).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Node taints (`{key, value, effect}`).
    pub taints: Vec<serde_json::Value>,
}

/// Whether this process may create mount namespaces and bind-mount (root, `unshare` there).
pub fn mount_namespaces_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl KubeletConfig {
    pub fn new(node_name: &str, dir: &std::path::Path) -> Self {
        Self {
            node_name: node_name.to_string(),
            images: Vec::new(),
            log_dir: dir.join("pods"),
            work_dir: dir.join("pod-data"),
            capacity: (256, 1024, 1000),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            tick: Duration::from_millis(100),
            mount_namespaces: mount_namespaces_available(),
            api_server: None,
            labels: Default::default(),
            taints: Vec::new(),
        }
    }
}

/// One pod as the kubelet runs it, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The ReplicaSet that owns the pod, if any.
    pub owner: Option<String>,
    /// Main process id of each running container, in container order.
    pub pids: Vec<u32>,
    pub ready: bool,
    /// Container restarts so far (all containers).
    pub restarts: u32,
    /// The pod is being deleted (its containers are stopping).
    pub terminating: bool,
}

pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

//! The real control plane of the e2e suite (`e2e/control-plane/control-plane.sh`): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler as local processes, started once
//! and shared by every test; each test gets its own namespace whose pods the
//! `PodNodeSelector` admission plugin pins to that test's own process kubelet ([`crate::node`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiResource, Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::node::NODE_LABEL;

/// This test process's run id, `<pid>-<4 hex digits>`: namespaces and Redis key prefixes
/// carry it, so a reused pid never meets an earlier run's namespace (still terminating) or
/// Redis keys (the shared Redis keeps them).
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}-{:04x}", std::process::id(), (nanos >> 8) & 0xffff)
    })
}

/// The repository root (where `crds/`, `operator/` and `e2e/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the workspace")
        .to_path_buf()
}

/// A running control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub dir: PathBuf,
}

/// The name of the operator's ServiceAccount and of the chart's ClusterRole.
pub const OPERATOR_SA: &str = "funcscale-operator";

impl ControlPlane {
    /// Start it if it is not running (`control-plane.sh up`: finds or builds the binaries,
    /// reuses a running one; safe to call from many tests at once).
    pub async fn ensure() -> anyhow::Result<Self> {
        let script = repo_root().join("e2e/control-plane/control-plane.sh");
        let out = tokio::process::Command::new(&script)
            .arg("up")
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} up failed (see its output above)",
            script.display()
        );
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Self {
            dir: PathBuf::from(dir),
        })
    }

    /// Host and port of the API server, as pods reach it.
    pub fn api_server(&self) -> anyhow::Result<(String, u16)> {
        let server = client_server(&self.admin_kubeconfig())?;
        let hostport = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .context("server URL without a port")?;
        Ok((host.to_string(), port.parse()?))
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub async fn admin_client(&self) -> anyhow::Result<Client> {
        crate::apiserver::client_from_kubeconfig(&self.admin_kubeconfig()).await
    }

    /// A namespace for one test, its pods pinned to node `node` (`PodNodeSelector`).
    pub async fn create_namespace(client: &Client, ns: &str, node: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(client.clone());
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
            "annotations": {"scheduler.alpha.kubernetes.io/node-selector": format!("{NODE_LABEL}={node}")}}});
        api.patch(
            ns,
            &PatchParams::apply("funcscale-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await?;
        // 1.20's ServiceAccount admission refuses pods ("No API token found for service
        // account default") until the token controller has written the namespace's default
        // token: on a loaded machine that takes seconds
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        crate::eventually(
            Duration::from_secs(60),
            "the namespace's default ServiceAccount token",
            || {
                let sas = sas.clone();
                async move {
                    let sa = sas.get_opt("default").await.ok()??;
                    sa.secrets.filter(|s| !s.is_empty()).map(|_| ())
                }
            },
        )
        .await?;
        Ok(())
    }

    pub async fn delete_namespace(client: &Client, ns: &str) {
        let api: Api<Namespace> = Api::all(client.clone());
        let _ = api.delete(ns, &DeleteParams::background()).await;
    }

    /// Install the CRDs exactly as shipped in `crds/`, except that a server without CEL
    /// (before 1.25) gets them without `x-kubernetes-validations`; wait until Established.
    pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
        let version = client.apiserver_version().await?;
        let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(99);
        let text = std::fs::read_to_string(repo_root().join("crds/funcscale-crds.yaml"))?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            if minor < 25 {
                strip_key(&mut v, "x-kubernetes-validations");
            }
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            crds.patch(
                &name,
                &PatchParams::apply("funcscale-e2e").force(),
                &Patch::Apply(&v),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            let established = kube::runtime::wait::await_condition(
                crds.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            );
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .with_context(|| format!("CRD {name} not Established in 30 s"))??;
        }
        Ok(())
    }

    /// The operator's identity in namespace `ns`, with exactly the chart's permissions in
    /// namespaced mode (`operator/rbac.yaml`, which `make chart-check` keeps equal to the
    /// chart): its ServiceAccount, the ClusterRole's rules as a Role in `ns` (as the chart's
    /// one-namespace mode renders them) bound by a RoleBinding, and the leader-election Role.
    /// A Role of its own per scenario: a cluster-wide ClusterRole would be shared by every
    /// scenario on the control plane, and one applied from another checkout (other rules)
    /// would change this scenario's rights mid-run. Returns a kubeconfig with the
    /// ServiceAccount's token.
    pub async fn operator_kubeconfig(
        &self,
        client: &Client,
        ns: &str,
        out: &Path,
    ) -> anyhow::Result<PathBuf> {
        self.operator_kubeconfig_with(client, ns, out, false).await
    }

    /// Like [`ControlPlane::operator_kubeconfig`]; `cluster_wide`: the ClusterRole bound
    /// with a ClusterRoleBinding ([`cluster_binding_name`]) as the chart does by default,
    /// for an operator that watches every namespace (delete it with
    /// [`ControlPlane::delete_cluster_binding`]).
    pub async fn operator_kubeconfig_with(
        &self,
        client: &Client,
        ns: &str,
        out: &Path,
        cluster_wide: bool,
    ) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(repo_root().join("operator/rbac.yaml"))?;
        let discovery = Discovery::new(client.clone()).run().await?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            if kind == "ClusterRoleBinding" {
                continue; // namespaced mode: the RoleBinding below instead
            }
            if kind == "ClusterRole" && !cluster_wide {
                // the operator's rules, in this namespace only (the CRD rule is cluster-scoped
                // and does not apply there, as in the chart's one-namespace mode)
                v["kind"] = json!("Role");
                v["metadata"]["namespace"] = json!(ns);
            }
            if v["metadata"].get("namespace").is_some() {
                v["metadata"]["namespace"] = json!(ns);
            }
            for s in v
                .get_mut("subjects")
                .and_then(|s| s.as_array_mut())
                .into_iter()
                .flatten()
            {
                s["namespace"] = json!(ns);
            }
            apply_dynamic(client, &discovery, &v).await?;
        }
        let binding = if cluster_wide {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": cluster_binding_name(ns)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_SA},
                "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": ns}]})
        } else {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": OPERATOR_SA, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_SA},
                "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": ns}]})
        };
        apply_dynamic(client, &discovery, &binding).await?;
        // the token controller writes the ServiceAccount's token Secret
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let token = crate::eventually(
            Duration::from_secs(30),
            "the operator ServiceAccount's token",
            || {
                let (sas, secrets) = (sas.clone(), secrets.clone());
                async move {
                    let sa = sas.get_opt(OPERATOR_SA).await.ok()??;
                    let name = sa.secrets?.first()?.name.clone()?;
                    let s = secrets.get_opt(&name).await.ok()??;
                    let t = s.data?.get("token")?.0.clone();
                    String::from_utf8(t).ok()
                }
            },
        )
        .await?;
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: {OPERATOR_SA}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {OPERATOR_SA}, namespace: {ns}}}\n\
             current-context: e2e\n",
            server = client_server(&self.admin_kubeconfig())?,
            ca = self.dir.join("pki/ca.crt").display(),
        );
        std::fs::write(out, kc)?;
        Ok(out.to_path_buf())
    }
}

/// The ClusterRoleBinding of a cluster-wide operator whose ServiceAccount lives in `ns`.
pub fn cluster_binding_name(ns: &str) -> String {
    format!("{OPERATOR_SA}-{ns}")
}

impl ControlPlane {
    /// Delete the ClusterRoleBinding of [`ControlPlane::operator_kubeconfig_with`] (a
    /// cluster-scoped object does not go with the namespace).
    pub async fn delete_cluster_binding(client: &Client, ns: &str) {
        let api: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
        let _ = api
            .delete(&cluster_binding_name(ns), &DeleteParams::default())
            .await;
    }
}

fn client_server(kubeconfig: &Path) -> anyhow::Result<String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    kc.clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("kubeconfig has no server")
}

/// Server-side apply any object (its kind found by discovery).
pub async fn apply_dynamic(
    client: &Client,
    discovery: &Discovery,
    v: &serde_json::Value,
) -> anyhow::Result<DynamicObject> {
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, caps): (ApiResource, _) = discovery
        .resolve_gvk(&gvk)
        .with_context(|| format!("{api_version} {kind} is not served"))?;
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match (caps.scope, v["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    let obj = api
        .patch(
            name,
            &PatchParams::apply("funcscale-e2e").force(),
            &Patch::Apply(v),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
    Ok(obj)
}

fn strip_key(v: &mut serde_json::Value, key: &str) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove(key);
            for (_, x) in m.iter_mut() {
                strip_key(x, key);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip_key(x, key)),
        _ => {}
    }
}

/// Names of objects, for messages.
pub fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.name_any()).collect()
}

/// One test's slice of the control plane: a namespace whose pods run on the test's own
/// process kubelet, a work directory (kubelet logs, pod data) and an admin client.
pub struct TestNamespace {
    pub control_plane: ControlPlane,
    pub client: Client,
    pub ns: String,
    pub kubelet: Option<crate::node::Kubelet>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNamespace {
    /// Namespace `<name>-<pid>` (a DNS label), its node `n-<namespace>`, and a kubelet mapping
    /// `images` (configure more with `configure`).
    pub async fn start(
        name: &str,
        configure: impl FnOnce(&mut crate::node::KubeletConfig),
    ) -> anyhow::Result<Self> {
        let control_plane = ControlPlane::ensure().await?;
        let client = control_plane.admin_client().await?;
        let ns = format!("{name}-{}", run_id());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("funcscale-{name}-"))
            .tempdir()?;
        let dir = tmp.path().to_path_buf();
        let node = format!("n-{ns}");
        ControlPlane::create_namespace(&client, &ns, &node).await?;
        let mut config = crate::node::KubeletConfig::new(&node, &dir);
        config.api_server = Some(control_plane.api_server()?);
        configure(&mut config);
        let kubelet = crate::node::Kubelet::start(client.clone(), config).await?;
        Ok(Self {
            control_plane,
            client,
            ns,
            kubelet: Some(kubelet),
            dir,
            _tmp: Some(tmp),
        })
    }

    /// Keep the work directory (logs) after the test, e.g. when it failed.
    pub fn keep_dir(&mut self) {
        if let Some(t) = self._tmp.take() {
            let _ = t.keep();
        }
    }

    pub fn kubelet(&self) -> &crate::node::Kubelet {
        self.kubelet.as_ref().expect("kubelet runs until stop")
    }

    /// Stop the kubelet (its pods gracefully) and delete the namespace.
    pub async fn stop(mut self) {
        ControlPlane::delete_namespace(&self.client, &self.ns).await;
        if let Some(k) = self.kubelet.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), k.shutdown()).await;
        }
    }
}

//! [`TestCluster`]: the API server on a local port, a kubeconfig that points at it, and a client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::server::{ApiServer, ServerConfig};
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool};

/// Write a kubeconfig whose only context reaches `http://<addr>` without credentials.
pub fn write_kubeconfig(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let doc = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: funcscale-e2e
  cluster:
    server: http://{addr}
users:
- name: funcscale-e2e
  user: {{}}
contexts:
- name: funcscale-e2e
  context:
    cluster: funcscale-e2e
    user: funcscale-e2e
    namespace: default
current-context: funcscale-e2e
"
    );
    std::fs::write(path, doc)
}

/// A running test API server.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let cluster = funcscale_e2e::TestCluster::start().await?;
/// cluster.install_crds().await?;
/// // KUBECONFIG=<cluster.kubeconfig> funcscale-operator run
/// # Ok(()) }
/// ```
pub struct TestCluster {
    /// Where the server listens (`127.0.0.1:<free port>`).
    pub addr: SocketAddr,
    /// A kubeconfig file for it (inside a temporary directory removed on drop).
    pub kubeconfig: PathBuf,
    /// A kube client built from that kubeconfig: the same path the operator binary takes.
    pub client: Client,
    /// The server itself, for test controls (cutting watches, compacting history).
    pub server: ApiServer,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> anyhow::Result<Self> {
        let server = ApiServer::new(config).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serving = server.clone();
        let task = tokio::spawn(async move {
            if let Err(err) = serving.serve(listener).await {
                tracing::error!(%err, "test API server stopped");
            }
        });
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, addr)?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        Ok(Self {
            addr,
            kubeconfig,
            client,
            server,
            task,
            _dir: dir,
        })
    }

    /// `(addr, kubeconfig path, client)`.
    pub fn parts(&self) -> (SocketAddr, &Path, Client) {
        (self.addr, &self.kubeconfig, self.client.clone())
    }

    /// Apply the funcscale CRDs (generated from the operator's types) and wait until they are
    /// Established.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        install_crds(&self.client).await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Select rustls's ring provider for this process. Needed because kube-fake-client's
/// dependencies enable a second provider (aws-lc-rs), and rustls refuses to guess between two.
/// Any binary built together with this crate (e.g. `cargo build --workspace`) needs the same.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client from a kubeconfig file, as `KUBECONFIG=<path>` would give.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    install_crypto_provider();
    let kc = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Server-side apply the funcscale CRDs and wait for Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [FuncQueue::crd(), FuncWorkerPool::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("funcscale-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(10), established).await??;
    }
    Ok(())
}

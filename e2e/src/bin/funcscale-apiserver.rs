//! `funcscale-apiserver`: the in-memory Kubernetes API on a local port, with a kubeconfig for it,
//! optionally with the simulated kubelet running Deployments as local processes.
//!
//! ```text
//! funcscale-apiserver --kubeconfig /tmp/e2e.kubeconfig --install-crds \
//!     --kubelet-worker-bin target/debug/funcscale-worker &
//! KUBECONFIG=/tmp/e2e.kubeconfig funcscale-operator run
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use funcscale_e2e::apiserver::{client_from_kubeconfig, install_crds, write_kubeconfig};
use funcscale_e2e::{ApiServer, Kubelet, KubeletConfig, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "In-memory Kubernetes API server (and kubelet) for funcscale e2e tests"
)]
struct Args {
    /// Address to listen on (port 0: a free port).
    #[arg(
        long,
        env = "FUNCSCALE_APISERVER_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    listen: SocketAddr,
    /// Where to write the kubeconfig that reaches this server.
    #[arg(long, default_value = "funcscale-e2e.kubeconfig")]
    kubeconfig: PathBuf,
    /// Apply the funcscale CRDs at start (they are Established at once).
    #[arg(long)]
    install_crds: bool,
    /// Also run the simulated kubelet, with this local funcscale-worker binary.
    #[arg(long, env = "FUNCSCALE_WORKER_BIN")]
    kubelet_worker_bin: Option<PathBuf>,
    /// Directory for the kubelet's per-pod logs (default: this process's stdout/stderr).
    #[arg(long)]
    kubelet_log_dir: Option<PathBuf>,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5)]
    bookmark_interval_secs: u64,
    /// Watch events kept for resuming watches; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = ApiServer::new(ServerConfig {
        bookmark_interval: Duration::from_secs(args.bookmark_interval_secs.max(1)),
        history: args.history,
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let serving = server.clone();
    let serve = tokio::spawn(async move { serving.serve(listener).await });
    write_kubeconfig(&args.kubeconfig, addr)?;
    let client = client_from_kubeconfig(&args.kubeconfig).await?;
    if args.install_crds {
        install_crds(&client).await?;
    }
    let kubelet = args.kubelet_worker_bin.map(|bin| {
        let mut config = KubeletConfig::new(bin);
        config.log_dir = args.kubelet_log_dir.clone();
        Kubelet::start_with(client.clone(), config)
    });
    println!(
        "funcscale-apiserver listening on http://{addr}; KUBECONFIG={}",
        args.kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        res = serve => { res??; }
    }
    if let Some(kubelet) = kubelet {
        kubelet.shutdown().await;
    }
    Ok(())
}

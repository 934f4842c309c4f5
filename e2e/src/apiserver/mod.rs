//! A Kubernetes API endpoint for tests: kube-fake-client's in-memory store behind a plain-HTTP
//! front that real clients (kube, the operator binary, kubectl) reach through a kubeconfig.

mod cluster;
pub mod resources;
mod scale;
mod server;
pub mod watch;

pub use cluster::{
    TestCluster, client_from_kubeconfig, install_crds, install_crypto_provider, write_kubeconfig,
};
pub use server::{ApiServer, ServerConfig};

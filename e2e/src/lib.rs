//! Closed-loop tests for funcscale: a local Kubernetes API endpoint ([`apiserver`]), a simulated
//! kubelet that turns Deployments into local processes ([`kubelet`]), and waiting helpers
//! ([`wait`]).

pub mod apiserver;
pub mod control_plane;
pub mod kubelet;
pub mod node;
pub mod scenario;
pub mod wait;

pub use apiserver::{ApiServer, ServerConfig, TestCluster};
pub use kubelet::{Kubelet, KubeletConfig};
pub use wait::{eventually, wait_for};

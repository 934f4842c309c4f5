//! Closed-loop tests for funcscale: the real control plane run as local processes
//! ([`control_plane`]), a kubelet that runs its pods as local processes ([`node`]), the
//! scenario harness ([`scenario`]), waiting helpers ([`wait`]) — and the in-memory API server
//! ([`apiserver`]) with its Deployment-level simulated kubelet ([`kubelet`]), kept for the
//! demo's fallback and fast API-only tests. Redis topologies started from the installed
//! `redis-server`: a Sentinel set ([`redis_topology`]) and a Redis Cluster ([`redis_cluster`]).

pub mod apiserver;
pub mod control_plane;
pub mod docs;
pub mod kubelet;
pub mod node;
pub mod redis_cluster;
pub mod redis_topology;
pub mod scenario;
pub mod tls;
pub mod wait;

pub use apiserver::{ApiServer, ServerConfig, TestCluster};
pub use kubelet::{Kubelet, KubeletConfig};
pub use wait::{eventually, wait_for};

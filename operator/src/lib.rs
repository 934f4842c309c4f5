//! funcscale operator: CRD types, the scaling policy, the capacity planner and the controllers.
//! The queue protocol it reads is the `funcscale_protocol` crate; the kubectl plugin is the
//! `kubectl-funcscale` crate.

pub mod capacity;
pub mod cli;
pub mod cli_run;
pub mod conditions;
pub mod connection;
pub mod context;
pub mod crd;
pub mod crd_ext;
pub mod error;
pub mod events;
pub mod key_index;
pub mod leader;
pub mod metric_names;
pub mod policy;
pub mod poll_loop;
pub mod pool;
pub mod pool_index;
pub mod queue;
pub mod queue_config;
pub mod redis_metrics;
pub mod telemetry;
pub mod triggers;
pub mod watches;

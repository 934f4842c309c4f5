//! `kubectl funcscale`: pools, queues, tasks and dead letters in one place. Put this binary on
//! the PATH and kubectl runs it for `kubectl funcscale ...`. Everything is in
//! this crate's library (`kubectl_funcscale`).
//!
//! ```sh
//! kubectl funcscale status [-n NS | -A] [--json]
//! kubectl funcscale tasks list --queue q8 --status dead --id-prefix trace-123
//! kubectl funcscale tasks counts --queue q8 --since 3h
//! kubectl funcscale dead-letters requeue --queue q8 --id-prefix trace-123
//! ```

fn main() -> std::process::ExitCode {
    kubectl_funcscale::main()
}

//! `kubectl funcscale`: queues, tasks and dead letters in one place. A kubectl plugin (any
//! executable named `kubectl-funcscale` on the PATH); reads Redis through `--redis-url` /
//! `FUNCSCALE_REDIS_URL`.
//!
//! ```sh
//! kubectl funcscale status [--queue q8] [--json]
//! kubectl funcscale tasks list --queue q8 --status dead --id-prefix trace-123
//! kubectl funcscale tasks counts --queue q8 --since 3h
//! kubectl funcscale dead-letters requeue --queue q8 --id-prefix trace-123
//! ```

use clap::{Parser, Subcommand};
use funcscale_worker::cli::{
    DeadLettersAction, RedisArgs, TasksAction, dead_letters_command, init_tracing, tasks_command,
};
use funcscale_worker::protocol::Keys;
use funcscale_worker::records;
use funcscale_worker::worker::{connection_manager, now_ms};

/// funcscale queues, tasks and dead letters.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-funcscale",
    bin_name = "kubectl funcscale",
    version,
    about
)]
struct Cli {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per queue: waiting, delayed, running, dead letters, totals, last minute, task time.
    Status {
        /// Queues (default: every queue with stats under the prefix).
        #[arg(long = "queue")]
        queues: Vec<String>,
        /// One JSON object per queue.
        #[arg(long)]
        json: bool,
    },
    /// Task records and per-minute counts.
    Tasks {
        #[command(subcommand)]
        action: TasksAction,
    },
    /// Dead letters: list, requeue, purge.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLettersAction,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let keys = Keys::new(cli.redis.prefix.clone());
    let client = redis::Client::open(cli.redis.redis_url.as_str())?;
    let mut con = connection_manager(&client).await?;
    match cli.command {
        Command::Status { queues, json } => {
            let queues = if queues.is_empty() {
                records::discover_queues(&mut con, &keys).await?
            } else {
                queues
            };
            let workers: u64 = redis::cmd("ZCOUNT")
                .arg(keys.workers())
                .arg(now_ms().saturating_sub(funcscale_worker::protocol::WORKER_TTL_MS))
                .arg("+inf")
                .query_async(&mut con)
                .await?;
            if !json {
                println!(
                    "{:<24} {:>8} {:>8} {:>8} {:>6} {:>10} {:>8} {:>9} {:>9} {:>8}",
                    "QUEUE",
                    "WAITING",
                    "DELAYED",
                    "RUNNING",
                    "DEAD",
                    "COMPLETED",
                    "FAILED",
                    "IN/MIN",
                    "OUT/MIN",
                    "TASK-MS"
                );
            }
            for q in &queues {
                let o = records::queue_overview(&mut con, &keys, q, now_ms()).await?;
                if json {
                    println!("{}", serde_json::to_string(&o)?);
                } else {
                    println!(
                        "{:<24} {:>8} {:>8} {:>8} {:>6} {:>10} {:>8} {:>9} {:>9} {:>8}",
                        o.queue,
                        o.depth,
                        o.delayed,
                        o.executing,
                        o.dead_letters,
                        o.completed,
                        o.failed,
                        o.submitted_last_minute,
                        o.completed_last_minute,
                        o.task_ms.map(|t| format!("{t:.0}")).unwrap_or("-".into())
                    );
                }
            }
            eprintln!(
                "{} queue(s); {workers} live worker process(es)",
                queues.len()
            );
            Ok(())
        }
        Command::Tasks { action } => tasks_command(&mut con, &keys, action).await,
        Command::DeadLetters { action } => dead_letters_command(&mut con, &keys, action).await,
    }
}

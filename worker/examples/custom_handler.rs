//! Register Rust functions in-process and run one pod's worth of workers.
//!
//! ```sh
//! cargo run -p funcscale-worker --example custom_handler &
//! funcscale-worker enqueue --queue emails --func send_email --args '["ada@example.com"]'
//! funcscale-worker enqueue --queue emails --func report --args '[3]' --soft-timeout 1
//! ```

use std::time::Duration;

use funcscale_worker::handler::TaskError;
use funcscale_worker::worker::Worker;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    funcscale_worker::cli::init_tracing();
    let worker = Worker::builder()
        .redis_url(
            std::env::var("FUNCSCALE_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        )
        .queues(["emails"])
        .processes(5)
        // A function returns a JSON result, or an error (retried with backoff, then dead-lettered).
        .handler("send_email", |ctx| async move {
            let to = ctx
                .envelope
                .args
                .get(0)
                .and_then(|v| v.as_str())
                .ok_or_else(|| TaskError::permanent("args[0]: address"))?;
            Ok(json!({ "sent_to": to }))
        })
        // A long function watches its soft time limit and stops cleanly when it passes.
        .handler("report", |mut ctx| async move {
            let pages = ctx
                .envelope
                .args
                .get(0)
                .and_then(|v| v.as_u64())
                .unwrap_or(1);
            for page in 0..pages {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = ctx.soft_limit() => return Ok(json!({ "partial": page })),
                }
            }
            Ok(json!({ "pages": pages }))
        })
        .build()
        .await?;
    let (addr, _server) =
        funcscale_worker::metrics::serve("127.0.0.1:0".parse()?, worker.metrics(), worker.health())
            .await?;
    tracing::info!(%addr, "metrics");
    worker.run(funcscale_worker::cli::shutdown_signal()).await
}

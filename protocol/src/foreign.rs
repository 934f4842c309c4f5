//! Foreign queue systems whose queues a `FuncQueue` can adopt: where Celery (kombu's Redis
//! transport), RQ and Sidekiq keep their waiting jobs, and how to read the oldest one's age.
//! These keys have no funcscale prefix: the other system owns them.

/// Separator kombu's Redis transport (Celery) puts between a queue name and its priority.
pub const CELERY_PRIORITY_SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`: priority 0 lives in the list named after the queue.
pub const CELERY_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The Redis lists of a Celery queue on the Redis broker: `<queue>` and one list per
/// non-zero priority step, `<queue>\x06\x16<step>` (kombu `Channel._q_for_pri`).
pub fn celery_queue_keys(queue: &str) -> Vec<String> {
    CELERY_PRIORITY_STEPS
        .iter()
        .map(|p| {
            if *p == 0 {
                queue.to_string()
            } else {
                format!("{queue}{CELERY_PRIORITY_SEP}{p}")
            }
        })
        .collect()
}

/// The list of an RQ queue: `rq:queue:<name>` (job ids; RQ pushes right, pops left).
pub fn rq_queue_key(name: &str) -> String {
    format!("rq:queue:{name}")
}

/// The list of a Sidekiq queue: `queue:<name>` (job JSON; Sidekiq pushes left, pops right).
pub fn sidekiq_queue_key(name: &str) -> String {
    format!("queue:{name}")
}

/// Prefix of an RQ job hash: `rq:job:<id>` holds the job, with its `enqueued_at`.
pub const RQ_JOB_PREFIX: &str = "rq:job:";

/// The hash of RQ job `id`.
pub fn rq_job_key(id: &str) -> String {
    format!("{RQ_JOB_PREFIX}{id}")
}

/// The command reading the `enqueued_at` (UTC, RFC 3339) of the oldest job of the RQ queue
/// `list` (its head: RQ pushes right, pops left): a dependent read, so a script
/// (`lua/rq_oldest.lua`), one command of a pipeline. Nil when the queue is empty.
pub fn rq_oldest_cmd(list: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(crate::scripts::RQ_OLDEST)
        .arg(1)
        .arg(list)
        .arg(RQ_JOB_PREFIX);
    cmd
}

/// Sidekiq's `enqueued_at` of a job (JSON) in unix ms: float seconds (Sidekiq < 8) or integer
/// ms (Sidekiq 8); `created_at` when there is no `enqueued_at`.
pub fn sidekiq_enqueued_ms(job: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(job).ok()?;
    let at = v
        .get("enqueued_at")
        .or_else(|| v.get("created_at"))?
        .as_f64()?;
    Some(if at > 1e11 {
        at as u64
    } else {
        (at * 1000.0) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_queue_keys() {
        assert_eq!(
            celery_queue_keys("celery"),
            [
                "celery",
                "celery\x06\x163",
                "celery\x06\x166",
                "celery\x06\x169"
            ]
        );
        assert_eq!(rq_queue_key("default"), "rq:queue:default");
        assert_eq!(rq_job_key("j1"), "rq:job:j1");
        assert_eq!(sidekiq_queue_key("default"), "queue:default");
    }

    #[test]
    fn sidekiq_times() {
        assert_eq!(
            sidekiq_enqueued_ms(r#"{"enqueued_at":1700000000.5}"#),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            sidekiq_enqueued_ms(r#"{"enqueued_at":1700000000500}"#),
            Some(1_700_000_000_500)
        );
        assert_eq!(sidekiq_enqueued_ms("nope"), None);
    }
}

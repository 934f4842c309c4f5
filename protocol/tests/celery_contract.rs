//! The reading side of funcscale-celery's contract test (`funcscale-celery/tests`): the key
//! names this crate spells, and what the operator's parsers make of the keys the Celery
//! integration wrote, printed as one JSON line for the Python test to compare.
//!
//! Ignored: the Python test runs it with the environment naming what to read
//! (`cargo test -p funcscale-protocol --test celery_contract -- --ignored --nocapture`).

use std::collections::BTreeMap;

use funcscale_protocol::{CountBucket, Keys, QueueStats, stop};

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set (run by funcscale-celery's tests)"))
}

#[test]
#[ignore = "run by funcscale-celery's pytest contract test"]
fn celery_contract_read() {
    let prefix = var("FSC_PREFIX");
    let ns = var("FSC_NAMESPACE");
    let queue = var("FSC_QUEUE");
    let slot = var("FSC_SLOT");
    let minute: u64 = var("FSC_MINUTE").parse().expect("FSC_MINUTE: unix minutes");
    // the worker slots' keys are scoped by the namespace the queue ids name (none for a bare
    // id), as `Worker::build` and the operator's scale-down scope them
    let slot_ns = std::env::var("FSC_SLOT_NAMESPACE").unwrap_or_else(|_| ns.clone());
    let keys = Keys::new(prefix).in_namespace(Some(slot_ns));
    let mut out = serde_json::json!({
        "keys": {
            "stats": keys.stats(&queue),
            "counts": keys.counts(&queue, minute),
            "running": keys.running(&queue),
            "inflight": keys.inflight(&slot),
            "workers": keys.workers(),
            "worker": keys.worker(&slot),
            "beat_lease": keys.beat_lease(Some(&ns)),
            "beat_fence": keys.beat_fence(Some(&ns)),
            "celery_beat_sent": keys.celery_beat_sent(Some(&ns)),
            "queue_id": Keys::queue_id(&ns, "jobs"),
        },
    });
    let Ok(url) = std::env::var("FSC_REDIS_URL") else {
        println!("CONTRACT {out}");
        return;
    };
    let mut con = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("Redis");
    // the stats hash as the operator's poller parses it (`HGETALL`, QueueStats::from_pairs)
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.stats(&queue))
        .query(&mut con)
        .expect("HGETALL stats");
    let s = QueueStats::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    out["stats"] = serde_json::json!({
        "enqueued": s.enqueued,
        "completed": s.completed,
        "failed": s.failed,
        "retried": s.retried,
        "dead": s.dead,
        "ewma_ms": s.ewma_ms,
        "p50_ms": s.percentile_ms(0.5),
    });
    // the minute's count bucket as `tasks counts` parses it
    let row: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(keys.counts(&queue, minute))
        .query(&mut con)
        .expect("HGETALL counts");
    out["counts"] = serde_json::to_value(CountBucket::from_pairs(minute, row)).expect("json");
    // the running set as the poller reads it (`ZCARD`), and running tasks per pod as the
    // scale-down reads them (stop::running_slots_pipeline, slot_pods_pipeline, count_by_pod)
    let running: u64 = redis::cmd("ZCARD")
        .arg(keys.running(&queue))
        .query(&mut con)
        .expect("ZCARD");
    let replies: Vec<Vec<String>> = stop::running_slots_pipeline(&keys, &[queue.as_str()])
        .query(&mut con)
        .expect("running sets");
    let slots = stop::running_slots(&keys, &replies);
    let pods: Vec<Option<String>> = if slots.is_empty() {
        Vec::new()
    } else {
        stop::slot_pods_pipeline(&keys, &slots)
            .query(&mut con)
            .expect("slot pods")
    };
    let by_pod: BTreeMap<String, u64> = stop::count_by_pod(&pods);
    out["running"] = serde_json::json!(running);
    out["running_slots"] = serde_json::json!(slots);
    out["running_by_pod"] = serde_json::json!(by_pod);
    println!("CONTRACT {out}");
}

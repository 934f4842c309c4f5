//! The outbox of URL destinations: parked deliveries are listed, requeued (and then delivered
//! to a real local HTTP receiver with the same delivery id) or purged, through the library and
//! the `funcscale-worker outbox` command, against the real Redis.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{REDIS_URL, Receiver, Running, Space, wait_until};
use funcscale_worker::metrics::Metrics;
use funcscale_worker::outbox;
use funcscale_worker::protocol::{self, Destination, OUTBOX_MAX_ATTEMPTS, OutboxItem, QueueConfig};
use funcscale_worker::records::Selector;
use funcscale_worker::worker::{Worker, WorkerBuilder, now_ms};
use serde_json::json;

fn builder(s: &Space, queues: &[&str]) -> WorkerBuilder {
    Worker::builder()
        .redis_url(REDIS_URL)
        .prefix(s.prefix.clone())
        .queues(queues.iter().copied())
        .processes(2)
        .configure(|c| c.drain_timeout = Duration::from_millis(100))
}

/// Run `funcscale-worker --prefix <prefix> <args>` with stdin closed.
fn cli(s: &Space, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_funcscale-worker"))
        .args(["--redis-url", REDIS_URL, "--prefix", &s.prefix])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn item(id: &str, url: &str, attempt: u32) -> OutboxItem {
    OutboxItem {
        id: id.into(),
        url: url.into(),
        attempt,
        body: json!({"event": "success", "task": {"id": id.split(':').next().unwrap()}, "result": 1}),
        error: Some("HTTP 503 Service Unavailable".into()),
    }
}

/// Park items the way the delivery loop does (LPUSH of the JSON).
async fn park(s: &Space, items: &[OutboxItem]) {
    let mut con = s.con().await;
    for i in items {
        let _: () = redis::cmd("LPUSH")
            .arg(s.keys.outbox_dead())
            .arg(serde_json::to_string(i).unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

async fn outbox_items(s: &Space) -> Vec<OutboxItem> {
    let mut con = s.con().await;
    let raws: Vec<String> = redis::cmd("ZRANGE")
        .arg(s.keys.outbox())
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    raws.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_deliveries_are_listed_requeued_by_prefix_and_delivered_with_their_id() {
    let s = Space::new("outbox-replay");
    let rx = Receiver::start(true, 0).await;
    let mut con = s.con().await;
    protocol::queue_config_set(
        &mut con,
        &s.keys,
        "q",
        &QueueConfig {
            on_success: Some(Destination::Url(rx.url.clone())),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    s.enqueue(
        "q",
        &[
            s.env("a-1", "noop", "q", json!([])),
            s.env("a-2", "noop", "q", json!([])),
            s.env("b-1", "noop", "q", json!([])),
        ],
    )
    .await;
    // The receiver is down: every delivery fails once and waits for its backoff.
    let w = Running::start(builder(&s, &["q"])).await;
    wait_until(
        "three failed deliveries",
        Duration::from_secs(15),
        || async {
            let items = outbox_items(&s).await;
            items.len() == 3 && items.iter().all(|i| i.attempt >= 1)
        },
    )
    .await;
    w.stop().await;
    // Skip the ~19 min of backoff: one attempt left, due now. The worker parks them itself.
    let mut con = s.con().await;
    for i in outbox_items(&s).await {
        let raw = serde_json::to_string(&i).unwrap();
        let last = OutboxItem {
            attempt: OUTBOX_MAX_ATTEMPTS - 1,
            ..i
        };
        let _: () = redis::pipe()
            .atomic()
            .zrem(s.keys.outbox(), &raw)
            .zadd(
                s.keys.outbox(),
                serde_json::to_string(&last).unwrap(),
                now_ms(),
            )
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let metrics = Metrics::new();
    let w = Running::start(builder(&s, &["q"])).await;
    wait_until("all three parked", Duration::from_secs(15), || async {
        s.int(&["LLEN", &s.keys.outbox_dead()]).await == 3
            && s.int(&["ZCARD", &s.keys.outbox()]).await == 0
    })
    .await;
    outbox::refresh_gauges(&mut con, &s.keys, &metrics)
        .await
        .unwrap();
    assert_eq!(
        (metrics.outbox_pending.get(), metrics.outbox_parked.get()),
        (0, 3)
    );
    assert!(rx.received_ids().is_empty());

    // list --dead shows them with their attempts and last error; the pending list is empty.
    let out = stdout(&cli(&s, &["outbox", "list", "--dead", "--json"]));
    let mut listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    listed.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    let ids: Vec<&str> = listed.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-1:success", "a-2:success", "b-1:success"]);
    for v in &listed {
        assert_eq!(v["attempt"], OUTBOX_MAX_ATTEMPTS, "{v}");
        assert_eq!(v["url"], rx.url.as_str());
        assert!(
            v["error"].as_str().unwrap().contains("503"),
            "the last error is kept: {v}"
        );
    }
    let text = stdout(&cli(&s, &["outbox", "list", "--dead"]));
    assert!(
        text.contains("b-1:success") && text.contains("503"),
        "{text}"
    );
    assert_eq!(
        stdout(&cli(&s, &["outbox", "list", "--json"]))
            .lines()
            .count(),
        0
    );

    // The receiver is back; replay only the a-* deliveries.
    rx.failing.store(false, Ordering::SeqCst);
    let out = stdout(&cli(&s, &["outbox", "requeue", "--id-prefix", "a-"]));
    assert!(out.contains("requeued 2"), "{out}");
    wait_until("a-1 and a-2 delivered", Duration::from_secs(10), || async {
        rx.received_ids() == ["a-1:success", "a-2:success"]
    })
    .await;
    wait_until("outbox empty", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &s.keys.outbox()]).await == 0
    })
    .await;
    for (id, body) in rx.received.lock().unwrap().iter() {
        assert_eq!(
            body["task"]["id"].as_str().unwrap(),
            id.strip_suffix(":success").unwrap()
        );
        assert_eq!(body["event"], "success");
    }
    let left = outbox::parked(&mut con, &s.keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id(), Some("b-1:success"));
    outbox::refresh_gauges(&mut con, &s.keys, &metrics)
        .await
        .unwrap();
    assert_eq!(
        (metrics.outbox_pending.get(), metrics.outbox_parked.get()),
        (0, 1)
    );
    let calls = rx.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        calls,
        "the parked b-1 is not retried"
    );
    assert_eq!(rx.received_ids(), ["a-1:success", "a-2:success"]);
    w.stop().await;
}

#[tokio::test]
async fn requeue_moves_each_parked_item_once_with_its_attempts_reset() {
    let s = Space::new("outbox-requeue");
    let url = "http://127.0.0.1:9/hook";
    park(
        &s,
        &[
            item("t-1:success", url, OUTBOX_MAX_ATTEMPTS),
            item("t-2:failure", url, OUTBOX_MAX_ATTEMPTS),
            item("u-1:success", url, OUTBOX_MAX_ATTEMPTS),
        ],
    )
    .await;
    let mut con = s.con().await;
    let _: () = redis::cmd("LPUSH")
        .arg(s.keys.outbox_dead())
        .arg("not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let sel = Selector::Ids(vec!["t-2:failure".into(), "u-1:success".into()]);
    let before = now_ms();
    assert_eq!(
        outbox::requeue_parked(&mut con, &s.keys, &sel)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        outbox::requeue_parked(&mut con, &s.keys, &sel)
            .await
            .unwrap(),
        0,
        "already moved: nothing is duplicated"
    );
    let pending = outbox::pending(&mut con, &s.keys, &Selector::All)
        .await
        .unwrap();
    let mut ids: Vec<&str> = pending.iter().filter_map(|l| l.id()).collect();
    ids.sort();
    assert_eq!(ids, ["t-2:failure", "u-1:success"]);
    for l in &pending {
        let i = l.item.as_ref().unwrap();
        assert_eq!(i.attempt, 0);
        assert_eq!(i.error, None);
        assert_eq!(i.url, url);
        assert_eq!(i.body["task"]["id"], i.id.split(':').next().unwrap());
        let due = l.due_ms.unwrap();
        assert!(due >= before && due <= now_ms(), "due now: {due}");
    }
    // Listed, then purged by someone else before the move: not resurrected.
    let seen = outbox::parked(&mut con, &s.keys, &Selector::Prefix("t-1".into()))
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    let again = seen.clone();
    assert_eq!(
        outbox::purge_parked(&mut con, &s.keys, &Selector::Prefix("t-1".into()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        outbox::requeue_listed(&mut con, &s.keys, &again)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.int(&["ZCARD", &s.keys.outbox()]).await, 2);
    park(&s, &[item("t-1:success", url, OUTBOX_MAX_ATTEMPTS)]).await;
    // Two requeues of the same listing (two operators at once): the item moves once.
    let seen = outbox::parked(&mut con, &s.keys, &Selector::Prefix("t-1".into()))
        .await
        .unwrap();
    assert_eq!(
        outbox::requeue_listed(&mut con, &s.keys, &seen)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        outbox::requeue_listed(&mut con, &s.keys, &seen)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.int(&["ZCARD", &s.keys.outbox()]).await, 3);
    // The malformed entry stays parked; --all does not move it.
    assert_eq!(
        outbox::requeue_parked(&mut con, &s.keys, &Selector::All)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.int(&["ZCARD", &s.keys.outbox()]).await, 3);
    let left = outbox::parked(&mut con, &s.keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].raw, "not json");
    let metrics = Metrics::new();
    outbox::refresh_gauges(&mut con, &s.keys, &metrics)
        .await
        .unwrap();
    let mut buf = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &metrics.registry.gather(),
        &mut buf,
    )
    .unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.contains("\nfuncscale_worker_outbox_pending 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\nfuncscale_worker_outbox_parked 1\n"),
        "{text}"
    );
    // The pending list from the CLI, soonest due first.
    let out = stdout(&cli(&s, &["outbox", "list"]));
    assert_eq!(out.lines().count(), 4, "header and three items: {out}");
    assert!(out.contains("t-1:success"), "{out}");
}

#[tokio::test]
async fn purge_refuses_without_a_terminal_and_without_a_selection() {
    let s = Space::new("outbox-purge");
    let url = "http://127.0.0.1:9/hook";
    park(
        &s,
        &[
            item("p-1:success", url, OUTBOX_MAX_ATTEMPTS),
            item("p-2:success", url, OUTBOX_MAX_ATTEMPTS),
            item("q-1:failure", url, OUTBOX_MAX_ATTEMPTS),
        ],
    )
    .await;
    let out = cli(&s, &["outbox", "purge", "--all"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin is not a terminal; pass --yes"), "{err}");
    assert_eq!(s.int(&["LLEN", &s.keys.outbox_dead()]).await, 3);
    for action in ["purge", "requeue"] {
        let out = cli(
            &s,
            &["outbox", action, "--yes"][..if action == "purge" { 3 } else { 2 }],
        );
        assert_eq!(out.status.code(), Some(2), "{action}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--id-prefix") && err.contains("--all"),
            "{err}"
        );
    }
    assert_eq!(s.int(&["LLEN", &s.keys.outbox_dead()]).await, 3);
    let out = stdout(&cli(
        &s,
        &[
            "outbox",
            "purge",
            "--id",
            "p-2:success",
            "--id",
            "q-1:failure",
            "--yes",
        ],
    ));
    assert!(out.contains("purged 2"), "{out}");
    let mut con = s.con().await;
    let left = outbox::parked(&mut con, &s.keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id(), Some("p-1:success"));
    assert_eq!(
        outbox::purge_parked(&mut con, &s.keys, &Selector::Prefix("p-".into()))
            .await
            .unwrap(),
        1
    );
    park(&s, &[item("r-1:success", url, OUTBOX_MAX_ATTEMPTS)]).await;
    assert_eq!(
        outbox::purge_parked(&mut con, &s.keys, &Selector::All)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.int(&["LLEN", &s.keys.outbox_dead()]).await, 0);
}

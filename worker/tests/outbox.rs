//! The outboxes of destinations: parked deliveries are listed, requeued (and then delivered
//! to a real local HTTP receiver with the same delivery id) or purged, through the library and
//! the `funcscale-worker outbox` command, against the real Redis; over the per-queue outboxes
//! and the namespace's outbox of earlier versions.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{REDIS_URL, Receiver, Running, Space, wait_until};
use funcscale_worker::metrics::Metrics;
use funcscale_worker::outbox;
use funcscale_worker::protocol::{
    self, Destination, Keys, OUTBOX_MAX_ATTEMPTS, OutboxEntry, OutboxItem, QueueConfig,
};
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

/// Park items the way the delivery loop does (LPUSH of the JSON), in the dead list of
/// queue `q`'s outbox.
async fn park(s: &Space, items: &[OutboxItem]) {
    park_in(s, &s.keys.queue_outbox_dead("q"), items).await
}

/// Park items in the dead list `dead` (e.g. the one of earlier versions, `Keys::outbox_dead`).
async fn park_in(s: &Space, dead: &str, items: &[OutboxItem]) {
    let mut con = s.con().await;
    for i in items {
        let _: () = redis::cmd("LPUSH")
            .arg(dead)
            .arg(serde_json::to_string(i).unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

/// Pending deliveries in queue q's outbox and the namespace's of earlier versions.
async fn pending_count(s: &Space) -> i64 {
    s.int(&["ZCARD", &s.keys.queue_outbox("q")]).await + s.int(&["ZCARD", &s.keys.outbox()]).await
}

async fn outbox_items(s: &Space) -> Vec<OutboxItem> {
    let mut con = s.con().await;
    let raws: Vec<String> = redis::cmd("ZRANGE")
        .arg(s.keys.queue_outbox("q"))
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
    let mut fcon = funcscale_connect::Conn::open(REDIS_URL).await.unwrap();
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
            .zrem(s.keys.queue_outbox("q"), &raw)
            .zadd(
                s.keys.queue_outbox("q"),
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
        s.int(&["LLEN", &s.keys.queue_outbox_dead("q")]).await == 3
            && s.int(&["ZCARD", &s.keys.queue_outbox("q")]).await == 0
    })
    .await;
    outbox::refresh_gauges(&mut con, &s.keys, &["q".to_string()], false, &metrics)
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
        s.int(&["ZCARD", &s.keys.queue_outbox("q")]).await == 0
    })
    .await;
    for (id, body) in rx.received.lock().unwrap().iter() {
        assert_eq!(
            body["task"]["id"].as_str().unwrap(),
            id.strip_suffix(":success").unwrap()
        );
        assert_eq!(body["event"], "success");
    }
    let left = outbox::parked(&mut fcon, &s.keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id(), Some("b-1:success"));
    outbox::refresh_gauges(&mut con, &s.keys, &["q".to_string()], false, &metrics)
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
    // t-*: parked by an earlier version in the namespace's outbox; u-1 in queue q's
    park_in(
        &s,
        &s.keys.outbox_dead(),
        &[
            item("t-1:success", url, OUTBOX_MAX_ATTEMPTS),
            item("t-2:failure", url, OUTBOX_MAX_ATTEMPTS),
        ],
    )
    .await;
    park(&s, &[item("u-1:success", url, OUTBOX_MAX_ATTEMPTS)]).await;
    let mut con = s.con().await;
    let mut fcon = funcscale_connect::Conn::open(REDIS_URL).await.unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(s.keys.queue_outbox_dead("q"))
        .arg("not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let sel = Selector::Ids(vec!["t-2:failure".into(), "u-1:success".into()]);
    let before = now_ms();
    assert_eq!(
        outbox::requeue_parked(&mut fcon, &s.keys, &sel)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        outbox::requeue_parked(&mut fcon, &s.keys, &sel)
            .await
            .unwrap(),
        0,
        "already moved: nothing is duplicated"
    );
    let pending = outbox::pending(&mut fcon, &s.keys, &Selector::All)
        .await
        .unwrap();
    let mut ids: Vec<&str> = pending.iter().filter_map(|l| l.id()).collect();
    ids.sort();
    assert_eq!(ids, ["t-2:failure", "u-1:success"]);
    for l in &pending {
        // back into the outbox it was parked from
        let old = l.id().unwrap().starts_with("t-");
        assert_eq!(
            l.outbox.pending,
            if old {
                s.keys.outbox()
            } else {
                s.keys.queue_outbox("q")
            }
        );
        let Some(OutboxEntry::Url(i)) = l.item.as_ref() else {
            panic!("a URL item: {l:?}")
        };
        assert_eq!(i.attempt, 0);
        assert_eq!(i.error, None);
        assert_eq!(i.url, url);
        assert_eq!(i.body["task"]["id"], i.id.split(':').next().unwrap());
        let due = l.due_ms.unwrap();
        assert!(due >= before && due <= now_ms(), "due now: {due}");
    }
    // Listed, then purged by someone else before the move: not resurrected.
    let seen = outbox::parked(&mut fcon, &s.keys, &Selector::Prefix("t-1".into()))
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    let again = seen.clone();
    assert_eq!(
        outbox::purge_parked(&mut fcon, &s.keys, &Selector::Prefix("t-1".into()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(outbox::requeue_listed(&mut con, &again).await.unwrap(), 0);
    assert_eq!(pending_count(&s).await, 2);
    park(&s, &[item("t-1:success", url, OUTBOX_MAX_ATTEMPTS)]).await;
    // Two requeues of the same listing (two operators at once): the item moves once.
    let seen = outbox::parked(&mut fcon, &s.keys, &Selector::Prefix("t-1".into()))
        .await
        .unwrap();
    assert_eq!(outbox::requeue_listed(&mut con, &seen).await.unwrap(), 1);
    assert_eq!(outbox::requeue_listed(&mut con, &seen).await.unwrap(), 0);
    assert_eq!(pending_count(&s).await, 3);
    // The malformed entry stays parked; --all does not move it.
    assert_eq!(
        outbox::requeue_parked(&mut fcon, &s.keys, &Selector::All)
            .await
            .unwrap(),
        0
    );
    assert_eq!(pending_count(&s).await, 3);
    let left = outbox::parked(&mut fcon, &s.keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].raw, "not json");
    let metrics = Metrics::new();
    outbox::refresh_gauges(&mut con, &s.keys, &["q".to_string()], false, &metrics)
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
    assert_eq!(s.int(&["LLEN", &s.keys.queue_outbox_dead("q")]).await, 3);
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
    assert_eq!(s.int(&["LLEN", &s.keys.queue_outbox_dead("q")]).await, 3);
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
    let mut fcon = funcscale_connect::Conn::open(REDIS_URL).await.unwrap();
    let left = outbox::parked(&mut fcon, &s.keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id(), Some("p-1:success"));
    assert_eq!(
        outbox::purge_parked(&mut fcon, &s.keys, &Selector::Prefix("p-".into()))
            .await
            .unwrap(),
        1
    );
    park(&s, &[item("r-1:success", url, OUTBOX_MAX_ATTEMPTS)]).await;
    park_in(
        &s,
        &s.keys.outbox_dead(),
        &[item("r-2:success", url, OUTBOX_MAX_ATTEMPTS)],
    )
    .await;
    assert_eq!(
        outbox::purge_parked(&mut fcon, &s.keys, &Selector::All)
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.int(&["LLEN", &s.keys.queue_outbox_dead("q")]).await, 0);
    assert_eq!(s.int(&["LLEN", &s.keys.outbox_dead()]).await, 0);
}

/// Runs of `func` on the worker: each pushes the task's id to the list `got`.
fn recorder(b: WorkerBuilder, func: &str, got: String) -> WorkerBuilder {
    b.handler(func, move |ctx| {
        let got = got.clone();
        async move {
            let mut con = redis::Client::open(REDIS_URL)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let _: () = redis::cmd("RPUSH")
                .arg(&got)
                .arg(&ctx.envelope.id)
                .query_async(&mut con)
                .await
                .unwrap();
            Ok(json!(null))
        }
    })
}

/// A chain q1 → q2 (namespaced queue ids): the finish stages the destination task in q1's
/// outbox, claimed for the worker, which forwards it at once (well before the claim lease
/// would let the outbox loop take it). A forward whose settle was lost (the item still in
/// q1's outbox, due again) is delivered again without a second enqueue: the destination task
/// runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_chain_enqueues_once_even_when_the_settle_is_lost() {
    let s = Space::new("outbox-chain");
    let keys = s.keys.clone().in_namespace(Some("ns".into()));
    let (q1, q2) = (Keys::queue_id("ns", "q1"), Keys::queue_id("ns", "q2"));
    let mut con = s.con().await;
    protocol::queue_config_set(
        &mut con,
        &keys,
        &q1,
        &QueueConfig {
            on_success: Some(Destination::parse(&format!("queue:{q2}/collect")).unwrap()),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    let in_ns = |b: WorkerBuilder| {
        let keys = keys.clone();
        b.configure(move |c| c.keys = keys)
    };
    // only q1 is served: the forwarded task waits in q2's list
    let w = Running::start(in_ns(builder(&s, &[&q1]))).await;
    s.enqueue(&q1, &[s.env("c-1", "noop", &q1, json!([7]))])
        .await;
    wait_until(
        "forwarded at once (not after the 30 s claim lease)",
        Duration::from_secs(5),
        || async { s.int(&["LLEN", &keys.queue(&q2)]).await == 1 },
    )
    .await;
    wait_until("settled", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &keys.queue_outbox(&q1)]).await == 0
    })
    .await;
    let raw = s.list(&keys.queue(&q2)).await.remove(0);
    let e = protocol::Envelope::from_json(&raw).unwrap();
    assert_eq!(
        (e.id.as_str(), e.func.as_str(), e.queue.as_str()),
        ("c-1:success", "collect", q2.as_str())
    );
    assert_eq!(e.kwargs["task"]["id"], "c-1");
    assert_eq!(s.int(&["HGET", &keys.stats(&q2), "enqueued"]).await, 1);
    assert_eq!(
        s.int(&["EXISTS", &keys.fwd_marker(&q2, "c-1:success")])
            .await,
        1
    );

    // The settle was lost: the item is back in q1's outbox, due now (its lease over).
    let item = protocol::ForwardItem {
        id: e.id.clone(),
        queue: q2.clone(),
        func: e.func.clone(),
        env: raw.clone(),
        attempt: 0,
        error: None,
    };
    let _: () = redis::cmd("ZADD")
        .arg(keys.queue_outbox(&q1))
        .arg(now_ms())
        .arg(serde_json::to_string(&item).unwrap())
        .query_async(&mut con)
        .await
        .unwrap();
    wait_until(
        "re-delivered and settled",
        Duration::from_secs(5),
        || async { s.int(&["ZCARD", &keys.queue_outbox(&q1)]).await == 0 },
    )
    .await;
    w.stop().await;
    assert_eq!(
        s.list(&keys.queue(&q2)).await,
        [raw],
        "enqueued once: the forward marker made the second delivery a no-op"
    );
    assert_eq!(s.int(&["HGET", &keys.stats(&q2), "enqueued"]).await, 1);

    // The destination task runs once.
    let got = s.own("got");
    let w = Running::start(recorder(in_ns(builder(&s, &[&q2])), "collect", got.clone())).await;
    wait_until("the chained task ran", Duration::from_secs(5), || async {
        s.int(&["LLEN", &got]).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.stop().await;
    assert_eq!(s.list(&got).await, ["c-1:success"]);
    // its record: queued by the forward, then succeeded
    let rec: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.task(&q2, "c-1:success"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        rec.contains(&("status".into(), "succeeded".into())),
        "{rec:?}"
    );
}

/// The forward marker tells a re-sent staging from a new one of the same delivery id: the same
/// envelope twice enqueues once; another envelope under that id (a dead letter requeued and
/// failing again, another source queue's task with the same id) is enqueued too.
#[tokio::test]
async fn a_new_staging_of_a_delivery_id_is_not_taken_for_a_resend() {
    let s = Space::new("outbox-restage");
    let keys = s.keys.clone().in_namespace(Some("ns".into()));
    let q2 = Keys::queue_id("ns", "dst");
    let redis = funcscale_connect::Conn::open(REDIS_URL).await.unwrap();
    let item = |staged_ms: u64| {
        let mut e = protocol::Envelope::new("t-1:failure", "on_failure", &q2, staged_ms);
        e.kwargs = json!({"event": "failure"});
        protocol::ForwardItem {
            id: e.id.clone(),
            queue: q2.clone(),
            func: e.func.clone(),
            env: e.to_json(),
            attempt: 0,
            error: None,
        }
    };
    let first = item(1_000);
    assert!(outbox::forward(&redis, &keys, &first).await.unwrap());
    assert!(
        !outbox::forward(&redis, &keys, &first).await.unwrap(),
        "a re-sent staging enqueued twice"
    );
    assert!(
        outbox::forward(&redis, &keys, &item(2_000)).await.unwrap(),
        "a new staging of the same delivery id was dropped"
    );
    assert_eq!(s.int(&["LLEN", &keys.queue(&q2)]).await, 2);
    assert_eq!(s.int(&["HGET", &keys.stats(&q2), "enqueued"]).await, 2);
}

/// A forward the destination's Redis keeps refusing (its list holds another type) backs off
/// with its attempts and error kept, and after [`OUTBOX_MAX_ATTEMPTS`] is parked (was: left
/// claimed, taken again every lease forever, never parked); `outbox requeue` resets it and,
/// the destination fixed, it is enqueued once.
#[tokio::test]
async fn a_forward_the_destination_refuses_backs_off_then_is_parked() {
    let s = Space::new("outbox-fwdfail");
    let keys = s.keys.clone().in_namespace(Some("ns".into()));
    let (q1, q2) = (Keys::queue_id("ns", "src"), Keys::queue_id("ns", "dst"));
    let redis = funcscale_connect::Conn::open(REDIS_URL).await.unwrap();
    let http = funcscale_worker::handler::http_client();
    let mut con = s.con().await;
    let _: () = redis::cmd("SET")
        .arg(keys.queue(&q2))
        .arg("not a list")
        .query_async(&mut con)
        .await
        .unwrap();
    let env = protocol::Envelope::new("t-9:success", "on_success", &q2, now_ms());
    let staged = |attempt| protocol::ForwardItem {
        id: env.id.clone(),
        queue: q2.clone(),
        func: env.func.clone(),
        env: env.to_json(),
        attempt,
        error: None,
    };
    let ob = outbox::Outbox::of_queue(&keys, &q1);
    let zadd = |item: protocol::ForwardItem, due: u64| {
        redis::cmd("ZADD")
            .arg(&ob.pending)
            .arg(due)
            .arg(serde_json::to_string(&item).unwrap())
            .to_owned()
    };
    let _: () = zadd(staged(0), now_ms())
        .query_async(&mut con)
        .await
        .unwrap();
    let before = now_ms();
    assert_eq!(
        outbox::deliver_due(&redis, &keys, &ob, &http, 10)
            .await
            .unwrap(),
        0
    );
    let back: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&ob.pending)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(back.len(), 1, "{back:?}");
    let e: OutboxEntry = serde_json::from_str(&back[0].0).unwrap();
    assert!(matches!(e, OutboxEntry::Queue(_)), "{e:?}");
    assert_eq!(e.attempt(), 1, "{e:?}");
    assert!(e.error().unwrap().contains("WRONGTYPE"), "{e:?}");
    let due = back[0].1 as u64;
    assert!(
        (before + 1_000..before + 1_000 + 5_000).contains(&due),
        "backs off 1 s, not the 30 s claim lease: due {due} at {before}"
    );

    // the last attempt parks it
    let _: () = redis::cmd("DEL")
        .arg(&ob.pending)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = zadd(staged(OUTBOX_MAX_ATTEMPTS - 1), now_ms())
        .query_async(&mut con)
        .await
        .unwrap();
    outbox::deliver_due(&redis, &keys, &ob, &http, 10)
        .await
        .unwrap();
    assert_eq!(s.int(&["ZCARD", &ob.pending]).await, 0);
    let parked = outbox::parked(&mut redis.clone(), &keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let p = parked[0].item.as_ref().unwrap();
    assert_eq!(p.attempt(), OUTBOX_MAX_ATTEMPTS);
    assert!(p.error().unwrap().contains("WRONGTYPE"), "{p:?}");

    // fixed and requeued: attempt reset, enqueued once
    let _: () = redis::cmd("DEL")
        .arg(keys.queue(&q2))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        outbox::requeue_parked(&mut redis.clone(), &keys, &Selector::All)
            .await
            .unwrap(),
        1
    );
    let pending = outbox::pending(&mut redis.clone(), &keys, &Selector::All)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].item.as_ref().unwrap().attempt(), 0);
    assert_eq!(
        outbox::deliver_due(&redis, &keys, &ob, &http, 10)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.int(&["LLEN", &keys.queue(&q2)]).await, 1);
    assert_eq!(s.int(&["ZCARD", &ob.pending]).await, 0);
}

/// Upgrade: deliveries an earlier version staged in the namespace's outbox (and the shared
/// one) are still delivered by the workers of the new layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_left_in_the_outbox_of_earlier_versions_are_delivered() {
    let s = Space::new("outbox-legacy");
    let keys = s.keys.clone().in_namespace(Some("ns".into()));
    let rx = Receiver::start(false, 0).await;
    let mut con = s.con().await;
    for (key, id) in [
        (keys.outbox(), "old-1:success"),
        (s.keys.outbox(), "old-2:failure"),
    ] {
        let i = OutboxItem {
            error: None,
            ..item(id, &rx.url, 0)
        };
        let _: () = redis::cmd("ZADD")
            .arg(key)
            .arg(now_ms())
            .arg(serde_json::to_string(&i).unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let q = Keys::queue_id("ns", "q");
    let w = Running::start(builder(&s, &[&q]).configure({
        let keys = keys.clone();
        move |c| c.keys = keys
    }))
    .await;
    wait_until("both delivered", Duration::from_secs(10), || async {
        let mut ids = rx.received_ids();
        ids.sort();
        ids == ["old-1:success", "old-2:failure"]
    })
    .await;
    wait_until(
        "the old outboxes drained",
        Duration::from_secs(5),
        || async {
            s.int(&["ZCARD", &keys.outbox()]).await == 0
                && s.int(&["ZCARD", &s.keys.outbox()]).await == 0
        },
    )
    .await;
    w.stop().await;
}

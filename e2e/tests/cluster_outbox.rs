//! Destinations on a real Redis Cluster (docs/design/redis-cluster-plan.md §2.2, step 7): a
//! finish with a `queue:` destination whose queue lives on another master, and one with a URL
//! destination, stage their deliveries in the finishing queue's own outbox (`Keys::queue_outbox`,
//! its hash slot); `forward.lua` enqueues the destination task in the destination's slot, once
//! even when it runs again after a lost settle; `outbox_settle.lua` settles in the source's
//! slot. Every script runs in strict mode (`#!lua`): a key of another slot, declared or not,
//! fails the test (no CROSSSLOT, no "non local key"), even when two slots share a node.

use funcscale_e2e::redis_cluster::{RedisCluster, strict};
use funcscale_protocol::keys::slot;
use funcscale_protocol::{Envelope, ForwardItem, Keys, OutboxEntry, scripts};
use redis::AsyncCommands;

#[tokio::test]
async fn destinations_stage_in_the_queues_slot_and_forward_once_into_another_masters_queue() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    assert_eq!(masters.len(), 3);
    let ns = "co";
    let keys = Keys::new("co1").in_namespace(Some(ns.into()));
    let src = c.queue_on(ns, masters[0]).await.unwrap();
    let dst = c.queue_on(ns, masters[1]).await.unwrap();
    let mut con = c.cluster_connection().await.unwrap();
    let url = "http://127.0.0.1:9/hook";
    let _: () = con
        .hset_multiple(
            keys.queue_config(&src),
            &[
                ("on_success", format!("queue:{dst}/collect")),
                ("on_failure", url.to_string()),
            ],
        )
        .await
        .unwrap();

    let enqueue = strict(scripts::ENQUEUE);
    let fetch = strict(scripts::FETCH);
    let finish = strict(scripts::FINISH);
    let forward = strict(scripts::FORWARD);
    let settle = strict(scripts::OUTBOX_SETTLE);
    let claim = strict(scripts::OUTBOX_CLAIM);
    let slot_id = "w-1-ab.0";
    let inflight = keys.inflight_q(&src, slot_id);

    let mut inv = enqueue.key(keys.queue(&src));
    inv.key(keys.stats(&src))
        .arg(keys.prefix())
        .arg(&src)
        .arg(500u64);
    for id in ["ok", "ko"] {
        let e = Envelope::new(id, "noop", &src, 500);
        inv.arg(e.to_json()).arg(&e.id).arg(&e.func).arg("");
    }
    let n: i64 = inv.invoke_async(&mut con).await.unwrap();
    assert_eq!(n, 2);

    // finish each: `ok` acknowledged (queue destination), `ko` dead-lettered (URL destination)
    let mut staged = None;
    for (mode, target) in [("ack", keys.stats(&src)), ("dead", keys.dead(&src))] {
        let got: Option<(String, usize)> = fetch
            .key(keys.queue(&src))
            .key(&inflight)
            .key(keys.running(&src))
            .arg(1_000u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        let (raw, _) = got.expect("a task");
        let e = Envelope::from_json(&raw).unwrap();
        let mut inv = finish.key(&inflight);
        inv.key(&target)
            .key(keys.stats(&src))
            .arg(&raw)
            .arg(mode)
            .arg(if mode == "dead" {
                raw.clone()
            } else {
                String::new()
            })
            .arg(0)
            .arg(keys.prefix())
            .arg(&src)
            .arg(&e.id)
            .arg(&e.func)
            .arg(1_000_000u64)
            .arg("1")
            .arg(0)
            .arg(slot_id)
            .arg(5)
            .arg(999_995u64)
            .arg(if mode == "ack" {
                "{\"n\":1}"
            } else {
                "\"boom\""
            })
            .arg(if mode == "ack" { "" } else { "boom" })
            .arg("0")
            .arg("0");
        let reply: redis::Value = inv.invoke_async(&mut con).await.unwrap();
        match (mode, reply) {
            ("ack", redis::Value::Array(v)) => {
                let item: String = redis::from_redis_value(v[1].clone()).unwrap();
                staged = Some(item);
            }
            ("dead", redis::Value::Int(1)) => {}
            (m, r) => panic!("{m}: unexpected finish reply {r:?}"),
        }
    }
    // both deliveries wait in the source queue's outbox (its slot), nothing in the namespace's
    let entries: Vec<(String, f64)> = con
        .zrange_withscores(keys.queue_outbox(&src), 0, -1)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let staged = staged.expect("the finish returned the staged queue item");
    let mut url_item = None;
    for (raw, score) in &entries {
        match serde_json::from_str::<OutboxEntry>(raw).unwrap() {
            OutboxEntry::Queue(i) => {
                assert_eq!(raw, &staged);
                assert_eq!(
                    *score as u64,
                    1_000_000 + funcscale_protocol::OUTBOX_LEASE_MS,
                    "staged claimed for the finishing worker"
                );
                assert_eq!(
                    (i.id.as_str(), i.queue.as_str()),
                    ("ok:success", dst.as_str())
                );
            }
            OutboxEntry::Url(i) => {
                assert_eq!((i.id.as_str(), i.url.as_str()), ("ko:failure", url));
                assert_eq!(i.body["error"], "boom");
                assert_eq!(*score as u64, 1_000_000, "due now");
                url_item = Some(raw.clone());
            }
        }
    }
    assert_eq!(con.exists::<_, i64>(keys.outbox()).await.unwrap(), 0);

    // forward into the other master's queue; its settle is lost, so it runs again: one task
    let item: ForwardItem = serde_json::from_str(&staged).unwrap();
    assert_ne!(
        c.master_of_slot(slot(&keys.queue(&item.queue)))
            .await
            .unwrap(),
        c.master_of_slot(slot(&keys.queue_outbox(&src)))
            .await
            .unwrap()
    );
    for want in [1, 0] {
        let n: i64 = forward
            .key(keys.queue(&item.queue))
            .key(keys.stats(&item.queue))
            .key(keys.fwd_marker(&item.queue, &item.id))
            .arg(keys.prefix())
            .arg(&item.queue)
            .arg(&item.id)
            .arg(&item.func)
            .arg(&item.env)
            .arg(1_000_010u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, want);
    }
    let waiting: Vec<String> = con.lrange(keys.queue(&dst), 0, -1).await.unwrap();
    assert_eq!(waiting, std::slice::from_ref(&item.env));
    let e = Envelope::from_json(&waiting[0]).unwrap();
    assert_eq!(
        (e.id.as_str(), e.func.as_str(), e.queue.as_str()),
        ("ok:success", "collect", dst.as_str())
    );
    assert_eq!(e.kwargs["result"], serde_json::json!({"n": 1}));
    let enq: i64 = con.hget(keys.stats(&dst), "enqueued").await.unwrap();
    assert_eq!(enq, 1);
    let status: Option<String> = con
        .hget(keys.task(&dst, "ok:success"), "status")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("queued"));

    // settle in the source's slot (twice: the second finds nothing)
    for want in [1, 0] {
        let n: i64 = settle
            .key(keys.queue_outbox(&src))
            .key(keys.queue_outbox_dead(&src))
            .arg(&staged)
            .arg("")
            .arg(0)
            .arg("0")
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, want);
    }
    // the URL delivery is claimed from the same outbox
    let claimed: Vec<String> = claim
        .key(keys.queue_outbox(&src))
        .arg(2_000_000u64)
        .arg(10)
        .arg(30_000)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(claimed, [url_item.expect("the URL item")]);
}

/// A local HTTP receiver answering 200 to every request: the delivery ids it got.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let ids = got.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let ids = ids.clone();
            tokio::spawn(async move {
                // headers, then the body of `content-length` bytes
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let header = |name: &str| {
                        text[..end].lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    ids.lock()
                        .unwrap()
                        .push(header("x-funcscale-delivery-id").unwrap_or_default());
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (url, got)
}

/// The worker's own delivery code (`funcscale_worker::outbox`) over funcscale's cluster
/// connection (`Conn::Cluster`): a queue item staged in a queue's outbox is forwarded into a
/// queue on another master and settled, a URL item is POSTed; a re-delivery after a lost
/// settle enqueues nothing; the gauges read every outbox a worker delivers (its queues' and
/// the namespace's of earlier versions: three slots) without CROSSSLOT.
#[tokio::test]
async fn the_workers_delivery_code_runs_on_a_cluster_connection() {
    use funcscale_worker::outbox::{self, Outbox};
    funcscale_connect::install_crypto_provider();
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let ns = "cw";
    let keys = Keys::new("cw1").in_namespace(Some(ns.into()));
    let src = c.queue_on(ns, masters[0]).await.unwrap();
    let dst = c.queue_on(ns, masters[2]).await.unwrap();
    let conn = funcscale_connect::Conn::open(&c.url()).await.unwrap();
    assert!(conn.is_cluster());
    let (url, got) = receiver().await;
    let env = Envelope::new("t-1:success", "collect", &dst, 1_000);
    let fwd = serde_json::to_string(&ForwardItem {
        id: env.id.clone(),
        queue: dst.clone(),
        func: env.func.clone(),
        env: env.to_json(),
        attempt: 0,
        error: None,
    })
    .unwrap();
    let post = serde_json::to_string(&funcscale_protocol::OutboxItem {
        id: "t-2:failure".into(),
        url: url.clone(),
        attempt: 0,
        body: serde_json::json!({"event": "failure"}),
        error: None,
    })
    .unwrap();
    let mut con = conn.clone();
    let ob = Outbox::of_queue(&keys, &src);
    let _: () = con.zadd(&ob.pending, &fwd, 0).await.unwrap();
    let _: () = con.zadd(&ob.pending, &post, 0).await.unwrap();
    let http = funcscale_worker::handler::http_client();

    let n = outbox::deliver_due(&conn, &keys, &ob, &http, 50)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(*got.lock().unwrap(), ["t-2:failure"]);
    let waiting: Vec<String> = con.lrange(keys.queue(&dst), 0, -1).await.unwrap();
    assert_eq!(waiting, [env.to_json()]);
    assert_eq!(con.zcard::<_, i64>(&ob.pending).await.unwrap(), 0);

    // the settle was lost: the item is due again; delivered (settled), not enqueued again
    let _: () = con.zadd(&ob.pending, &fwd, 0).await.unwrap();
    let n = outbox::deliver_due(&conn, &keys, &ob, &http, 50)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(con.llen::<_, i64>(keys.queue(&dst)).await.unwrap(), 1);
    assert_eq!(con.zcard::<_, i64>(&ob.pending).await.unwrap(), 0);
    // as the finishing worker delivers what it staged: forwarded once, settled
    let _: () = con
        .zadd(&ob.pending, &fwd, 9_999_999_999_999u64)
        .await
        .unwrap();
    outbox::deliver_staged(&conn, &keys, &src, &fwd)
        .await
        .unwrap();
    assert_eq!(con.llen::<_, i64>(keys.queue(&dst)).await.unwrap(), 1);
    assert_eq!(con.zcard::<_, i64>(&ob.pending).await.unwrap(), 0);

    // gauges over the outboxes of a worker of both queues (and the old ones)
    let _: () = con
        .lpush(Outbox::of_queue(&keys, &dst).dead, "not json")
        .await
        .unwrap();
    let _: () = con.zadd(keys.outbox(), &post, 0).await.unwrap();
    let all = Outbox::of_worker(&keys, &[src.clone(), dst.clone()], conn.is_cluster());
    // the two queues' and the namespace's of earlier versions (the shared one's keys are in
    // two slots, and it cannot exist on a cluster)
    assert_eq!(all.len(), 3);
    let (pending, parked) = outbox::sizes(&mut con, &all).await.unwrap();
    assert_eq!((pending, parked), (1, 1));
    // the namespace's outbox of earlier versions is drained too
    let n = outbox::deliver_due(&conn, &keys, &Outbox::legacy(&keys), &http, 50)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(got.lock().unwrap().len(), 2);
}

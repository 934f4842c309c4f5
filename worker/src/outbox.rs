//! Delivery of results and errors to destinations. The finish script stages a delivery in
//! the outbox of the finished task's queue (`Keys::queue_outbox`, a zset scored by due time,
//! in the queue's hash slot) atomically with the ack: an [`OutboxItem`] for a URL, a
//! [`ForwardItem`] (the prepared envelope) for a destination queue. The workers of the queue
//! deliver its outbox: they claim due items (pushing their score out by a lease, so a crashed
//! deliverer's items come back), POST a URL item and remove it on a 2xx (failures back off
//! exponentially; after [`OUTBOX_MAX_ATTEMPTS`] the item goes to `Keys::queue_outbox_dead`),
//! and forward a queue item with `forward.lua` in the destination's slot, then settle it in
//! the queue's outbox. A queue item is staged already claimed by the finishing worker, which
//! forwards it at once ([`deliver_staged`]): a chain of queues costs two round trips per hop.
//! URL delivery is at-least-once (receivers deduplicate on the `x-funcscale-delivery-id`
//! header); a queue delivery enqueues exactly once (the forward marker, `Keys::fwd_marker`,
//! makes a re-sent forward after a lost settle a no-op). Earlier versions staged URL items in
//! the namespace's outbox (`Keys::outbox`): workers keep draining it ([`Outbox::legacy`]).
//!
//! Parked items stay in a dead list until an operator acts: [`pending`] and [`parked`] list
//! them over every outbox of the scope ([`outboxes`]), [`requeue_parked`] moves them back into
//! their outbox (due now, attempt 0, same delivery id) and [`purge_parked`] deletes them
//! (`funcscale-worker outbox list|requeue|purge`). [`refresh_gauges`] sets
//! `funcscale_worker_outbox_pending` and `funcscale_worker_outbox_parked`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::clock::now_ms;
use crate::handler::HttpClient;
use crate::metrics::Metrics;
use crate::protocol::{
    ForwardItem, Keys, OUTBOX_LEASE_MS, OUTBOX_MAX_ATTEMPTS, OutboxEntry, OutboxItem, scripts,
};
use crate::records::{Selector, paged, range};

/// How long a claimed delivery stays invisible to other deliverers.
pub const CLAIM_LEASE_MS: u64 = OUTBOX_LEASE_MS;
/// Timeout of one POST.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One outbox: the zset of pending deliveries and the list of parked ones (both in one hash
/// slot).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Outbox {
    /// Pending deliveries (zset by due time, ms).
    pub pending: String,
    /// Parked deliveries (list).
    pub dead: String,
}

impl Outbox {
    /// The outbox of `queue`'s tasks ([`Keys::queue_outbox`]).
    pub fn of_queue(keys: &Keys, queue: &str) -> Self {
        Self {
            pending: keys.queue_outbox(queue),
            dead: keys.queue_outbox_dead(queue),
        }
    }

    /// The outbox of the scope's namespace that earlier versions wrote ([`Keys::outbox`]).
    pub fn legacy(keys: &Keys) -> Self {
        Self {
            pending: keys.outbox(),
            dead: keys.outbox_dead(),
        }
    }

    /// The outboxes a worker of `queues` delivers: its queues', then the earlier versions' of
    /// its namespace and, off a Redis Cluster (`cluster` false), the shared one, drained until
    /// empty. The shared one's two keys hash to two slots (no scripts may move items between
    /// them on a cluster), and it cannot exist there: earlier versions wrote it only for queue
    /// ids naming no namespace, which a cluster refuses.
    pub fn of_worker(keys: &Keys, queues: &[String], cluster: bool) -> Vec<Self> {
        let mut out: Vec<Self> = queues.iter().map(|q| Self::of_queue(keys, q)).collect();
        out.sort();
        out.dedup();
        if keys.namespace().is_some() {
            out.push(Self::legacy(keys));
            if !cluster {
                out.push(Self::legacy(&keys.unscoped()));
            }
        } else if !cluster {
            out.push(Self::legacy(keys));
        }
        out
    }
}

/// Every outbox of the scope that holds something: the per-queue outboxes of the scope's
/// namespace's queues (found by `SCAN`; without a namespace, those of queue ids that name
/// none, e.g. `legacyKeys` queues) and the earlier versions' outbox of the scope (always
/// listed). On a Redis Cluster every master is scanned.
pub async fn outboxes(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
) -> redis::RedisResult<Vec<Outbox>> {
    let queues = match con.each_master().await? {
        Some(masters) => {
            let mut all = std::collections::BTreeSet::new();
            for (_, mut m) in masters {
                all.extend(outbox_queues(&mut m, keys).await?);
            }
            all
        }
        None => outbox_queues(con, keys).await?,
    };
    let mut out: Vec<Outbox> = queues.iter().map(|q| Outbox::of_queue(keys, q)).collect();
    out.push(Outbox::legacy(keys));
    Ok(out)
}

/// The queues with an outbox on one node (`SCAN`), for [`outboxes`].
async fn outbox_queues<C>(
    con: &mut C,
    keys: &Keys,
) -> redis::RedisResult<std::collections::BTreeSet<String>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let head = format!("{}:outbox:", keys.prefix());
    let legacy = Outbox::legacy(keys);
    let mut queues = std::collections::BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{head}*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(con)
            .await?;
        for k in batch {
            if k == legacy.pending || k == legacy.dead {
                continue;
            }
            let Some(rest) = k.strip_prefix(head.as_str()) else {
                continue;
            };
            let rest = rest.strip_suffix(":dead").unwrap_or(rest);
            // `outbox:q:<id>`: an id naming no namespace (listed without a namespace);
            // `outbox:{<ns>.<name>}`: a queue of namespace `ns`
            let q = match (rest.strip_prefix("q:"), keys.namespace()) {
                (Some(id), None) => Some(id),
                (None, Some(ns)) => Some(rest).filter(|q| Keys::queue_id_namespace(q) == Some(ns)),
                _ => None,
            };
            if let Some(q) = q {
                queues.insert(q.to_string());
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(queues)
}

/// Backoff after `attempt` failed deliveries: 1 s × 2^(attempt-1), capped at 5 min.
pub fn backoff_ms(attempt: u32) -> u64 {
    (1_000u64 << attempt.saturating_sub(1).min(20)).min(300_000)
}

/// POST one delivery; `Err` carries the reason.
async fn post(http: &HttpClient, item: &OutboxItem) -> Result<(), String> {
    let req = hyper::Request::post(&item.url)
        .header("content-type", "application/json")
        .header("x-funcscale-delivery-id", &item.id)
        .body(Full::new(Bytes::from(item.body.to_string())))
        .map_err(|e| format!("bad request: {e}"))?;
    let call = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, call)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Enqueue `item` into its destination queue (`forward.lua`, in that queue's slot) unless it
/// was already (its forward marker exists). Returns whether this call enqueued it.
pub async fn forward(
    con: &funcscale_connect::Conn,
    keys: &Keys,
    item: &ForwardItem,
) -> redis::RedisResult<bool> {
    let mut con = con.clone();
    let n: i64 = redis::Script::new(scripts::FORWARD)
        .key(keys.queue(&item.queue))
        .key(keys.stats(&item.queue))
        .key(keys.fwd_marker(&item.queue, &item.id))
        .arg(keys.prefix())
        .arg(&item.queue)
        .arg(&item.id)
        .arg(&item.func)
        .arg(&item.env)
        .arg(now_ms())
        .invoke_async(&mut con)
        .await?;
    Ok(n == 1)
}

/// Remove a delivered entry `raw` from `outbox` (`outbox_settle.lua`; nothing when it is
/// gone already).
async fn settle_delivered(
    con: &funcscale_connect::Conn,
    outbox: &Outbox,
    raw: &str,
) -> redis::RedisResult<()> {
    let mut con = con.clone();
    let _: i64 = redis::Script::new(scripts::OUTBOX_SETTLE)
        .key(&outbox.pending)
        .key(&outbox.dead)
        .arg(raw)
        .arg("")
        .arg(0)
        .arg("0")
        .invoke_async(&mut con)
        .await?;
    Ok(())
}

/// Deliver a queue item that the finish script staged (claimed for this worker) in the outbox
/// of `queue`: forward it, then settle it. An error leaves it staged: any worker of the queue
/// delivers it when the claim lease ends (the forward marker keeps that from enqueueing twice).
pub async fn deliver_staged(
    con: &funcscale_connect::Conn,
    keys: &Keys,
    queue: &str,
    raw: &str,
) -> redis::RedisResult<()> {
    let Ok(item) = serde_json::from_str::<ForwardItem>(raw) else {
        // not ours to judge here: the outbox loop parks what does not parse
        return Ok(());
    };
    forward(con, keys, &item).await?;
    settle_delivered(con, &Outbox::of_queue(keys, queue), raw).await
}

/// Claim up to `limit` due deliveries of `outbox` and attempt them (concurrently). Returns
/// how many were delivered.
pub async fn deliver_due(
    con: &funcscale_connect::Conn,
    keys: &Keys,
    outbox: &Outbox,
    http: &HttpClient,
    limit: usize,
) -> redis::RedisResult<usize> {
    let mut c = con.clone();
    let claimed: Vec<String> = redis::Script::new(scripts::OUTBOX_CLAIM)
        .key(&outbox.pending)
        .arg(now_ms())
        .arg(limit)
        .arg(CLAIM_LEASE_MS)
        .invoke_async(&mut c)
        .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let results = futures::future::join_all(claimed.iter().map(|raw| async move {
        match serde_json::from_str::<OutboxEntry>(raw) {
            Ok(OutboxEntry::Url(item)) => {
                let r = post(http, &item).await;
                (Some(item), Some(r))
            }
            // a Redis error leaves the item claimed: retried when the lease ends
            Ok(OutboxEntry::Queue(item)) => match forward(con, keys, &item).await {
                Ok(_) => (None, Some(Ok(()))),
                Err(e) => {
                    tracing::warn!(id = %item.id, queue = %item.queue, error = %e, "delivery to a destination queue failed");
                    (None, None)
                }
            },
            Err(e) => (None, Some(Err(format!("malformed outbox item: {e}")))),
        }
    }))
    .await;
    let settle = redis::Script::new(scripts::OUTBOX_SETTLE);
    let mut pipe = redis::pipe();
    pipe.load_script(&settle).ignore();
    let mut delivered = 0;
    for (raw, (item, r)) in claimed.iter().zip(results) {
        let Some(r) = r else { continue };
        let mut inv = settle.key(&outbox.pending);
        inv.key(&outbox.dead).arg(raw);
        match (item, r) {
            (_, Ok(())) => {
                delivered += 1;
                inv.arg("").arg(0).arg("0");
            }
            (Some(mut item), Err(e)) => {
                item.attempt += 1;
                tracing::warn!(id = %item.id, url = %item.url, attempt = item.attempt, error = %e, "delivery to a destination failed");
                item.error = Some(e);
                let dead = item.attempt >= OUTBOX_MAX_ATTEMPTS;
                let next = serde_json::to_string(&item).expect("an outbox item serializes");
                inv.arg(next)
                    .arg(now_ms() + backoff_ms(item.attempt))
                    .arg(if dead { "1" } else { "0" });
            }
            (None, Err(_)) => {
                inv.arg(raw).arg(0).arg("1");
            }
        }
        pipe.invoke_script(&inv);
    }
    let _: () = pipe.query_async(&mut c).await?;
    Ok(delivered)
}

/// One outbox entry as listed: its raw text, the parsed entry (`None` when malformed), the
/// outbox it is in and, for a pending delivery, when it is due (unix ms; a claimed one is due
/// when its lease ends).
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// The stored JSON.
    pub raw: String,
    /// The parsed entry.
    pub item: Option<OutboxEntry>,
    /// Due time (pending deliveries only).
    pub due_ms: Option<u64>,
    /// The outbox holding it.
    pub outbox: Outbox,
}

impl Listed {
    /// The delivery id, if the item parses.
    pub fn id(&self) -> Option<&str> {
        self.item.as_ref().map(|i| i.id())
    }

    fn selected(&self, sel: &Selector) -> bool {
        match self.id() {
            Some(id) => sel.matches(id),
            None => matches!(sel, Selector::All),
        }
    }
}

/// Pending deliveries of every outbox of the scope ([`outboxes`]) matching `sel`, soonest
/// due first.
pub async fn pending(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
    sel: &Selector,
) -> redis::RedisResult<Vec<Listed>> {
    let mut out = Vec::new();
    for ob in outboxes(con, keys).await? {
        let key = ob.pending.clone();
        let page = |a, b| {
            let mut c = range("ZRANGE", &key, a, b);
            c.arg("WITHSCORES");
            c
        };
        paged(con, page, |(raw, score): (String, f64)| {
            let l = Listed {
                item: serde_json::from_str(&raw).ok(),
                raw,
                due_ms: Some(score as u64),
                outbox: ob.clone(),
            };
            if l.selected(sel) {
                out.push(l);
            }
        })
        .await?;
    }
    out.sort_by_key(|l| l.due_ms);
    Ok(out)
}

/// Parked deliveries (failed [`OUTBOX_MAX_ATTEMPTS`] times, or malformed) of every outbox of
/// the scope matching `sel`, newest first within each outbox.
pub async fn parked(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
    sel: &Selector,
) -> redis::RedisResult<Vec<Listed>> {
    let mut out = Vec::new();
    for ob in outboxes(con, keys).await? {
        let key = ob.dead.clone();
        paged(
            con,
            |a, b| range("LRANGE", &key, a, b),
            |raw: String| {
                let l = Listed {
                    item: serde_json::from_str(&raw).ok(),
                    raw,
                    due_ms: None,
                    outbox: ob.clone(),
                };
                if l.selected(sel) {
                    out.push(l);
                }
            },
        )
        .await?;
    }
    Ok(out)
}

/// Move the parked deliveries matching `sel` back into their outbox, due now, with the attempt
/// count and the last error cleared and the same delivery id (receivers still deduplicate).
/// Malformed items stay parked. Returns how many moved.
pub async fn requeue_parked(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
    sel: &Selector,
) -> redis::RedisResult<u64> {
    let items = parked(con, keys, sel).await?;
    requeue_listed(con, &items).await
}

/// Move these listed parked deliveries (from [`parked`]) back into their outbox as
/// [`requeue_parked`] does. An item no longer parked (purged, or moved by someone else since
/// it was listed) is skipped, never added. Returns how many moved.
pub async fn requeue_listed<C>(con: &mut C, items: &[Listed]) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let now = now_ms();
    let script = redis::Script::new(scripts::OUTBOX_REQUEUE_PARKED);
    let mut by_outbox: std::collections::BTreeMap<&Outbox, Vec<(&str, String)>> =
        Default::default();
    for l in items {
        let fresh = match &l.item {
            None => continue,
            Some(OutboxEntry::Url(item)) => OutboxEntry::Url(OutboxItem {
                attempt: 0,
                error: None,
                ..item.clone()
            }),
            Some(e @ OutboxEntry::Queue(_)) => e.clone(),
        };
        by_outbox.entry(&l.outbox).or_default().push((
            &l.raw,
            serde_json::to_string(&fresh).expect("an outbox item serializes"),
        ));
    }
    let mut moved = 0;
    for (ob, all) in by_outbox {
        for chunk in all.chunks(500) {
            let mut inv = script.key(&ob.dead);
            inv.key(&ob.pending).arg(now);
            for (raw, fresh) in chunk {
                inv.arg(*raw).arg(fresh);
            }
            let n: u64 = inv.invoke_async(con).await?;
            moved += n;
        }
    }
    Ok(moved)
}

/// Delete the parked deliveries matching `sel`. Returns how many were deleted.
pub async fn purge_parked(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
    sel: &Selector,
) -> redis::RedisResult<u64> {
    if matches!(sel, Selector::All) {
        let mut n = 0;
        for ob in outboxes(con, keys).await? {
            let (len, _): (u64, ()) = redis::pipe()
                .atomic()
                .llen(&ob.dead)
                .del(&ob.dead)
                .query_async(con)
                .await?;
            n += len;
        }
        return Ok(n);
    }
    let items = parked(con, keys, sel).await?;
    let mut n = 0;
    // one pipeline per dead list (one hash slot each)
    let mut by_list: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for l in &items {
        by_list.entry(&l.outbox.dead).or_default().push(&l.raw);
    }
    for (dead, raws) in by_list {
        for chunk in raws.chunks(1_000) {
            let mut pipe = redis::pipe();
            for raw in chunk {
                pipe.lrem(dead, 1, *raw);
            }
            let removed: Vec<u64> = pipe.query_async(con).await?;
            n += removed.iter().sum::<u64>();
        }
    }
    Ok(n)
}

/// How many deliveries are pending and parked in `outboxes` (one pipeline per outbox: one
/// hash slot each).
pub async fn sizes<C>(con: &mut C, outboxes: &[Outbox]) -> redis::RedisResult<(u64, u64)>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (mut pending, mut parked) = (0, 0);
    for ob in outboxes {
        let (p, d): (u64, u64) = redis::pipe()
            .zcard(&ob.pending)
            .llen(&ob.dead)
            .query_async(con)
            .await?;
        pending += p;
        parked += d;
    }
    Ok((pending, parked))
}

/// Set `funcscale_worker_outbox_pending` and `funcscale_worker_outbox_parked` from the
/// outboxes a worker of `queues` delivers ([`Outbox::of_worker`]).
pub async fn refresh_gauges<C>(
    con: &mut C,
    keys: &Keys,
    queues: &[String],
    cluster: bool,
    metrics: &Metrics,
) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (pending, parked) = sizes(con, &Outbox::of_worker(keys, queues, cluster)).await?;
    metrics.outbox_pending.set(pending as i64);
    metrics.outbox_parked.set(parked as i64);
    Ok(())
}

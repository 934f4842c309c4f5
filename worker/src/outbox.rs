//! Delivery of results and errors to destinations. The finish script stages a delivery in
//! the outbox of the finished task's queue (`Keys::queue_outbox`, a zset scored by due time,
//! in the queue's hash slot) atomically with the ack: an [`OutboxItem`] for a URL, a
//! [`ForwardItem`] (the prepared envelope) for a destination queue. The workers of the queue
//! deliver its outbox: they claim due items (pushing their score out by a lease, so a crashed
//! deliverer's items come back), POST a URL item and remove it on a 2xx, forward a queue item
//! with `forward.lua` in the destination's slot, then settle it in the queue's outbox.
//! Failures of either back off exponentially; after [`OUTBOX_MAX_ATTEMPTS`] the item goes to
//! `Keys::queue_outbox_dead`. A queue item is staged already claimed by the finishing worker, which
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
        out.extend(Self::earlier_of_worker(keys, cluster));
        out
    }

    /// The earlier versions' outboxes a worker drains (the tail of [`Outbox::of_worker`]).
    pub fn earlier_of_worker(keys: &Keys, cluster: bool) -> Vec<Self> {
        let mut out = Vec::new();
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

/// How often a worker looks at an outbox with something to deliver (ms).
pub const LOOK_MS: u64 = 200;
/// The longest a worker goes without looking at one of its queues' outboxes while looks find
/// nothing due (ms): a delivery backing off, or one a crashed worker left claimed, waits at
/// most this much longer.
pub const IDLE_LOOK_MS: u64 = 2_000;
/// The same for the outboxes of earlier versions, which only drain (ms).
pub const EARLIER_IDLE_LOOK_MS: u64 = 30_000;

/// When a worker looks at each outbox it delivers ([`Outbox::of_worker`]): every [`LOOK_MS`]
/// while looks find deliveries, the interval doubling up to [`IDLE_LOOK_MS`] (its queues'
/// outboxes) or [`EARLIER_IDLE_LOOK_MS`] (earlier versions') while they find none. A task of
/// one of its queues finishing here ([`Cadence::nudge`]) brings that queue's outbox back to
/// [`LOOK_MS`] (the finish may have staged a delivery): a URL delivery is made within about
/// `LOOK_MS` of its task's end, and an idle pool of P pods and N queues costs about P × N / 2
/// claims a second, not P × (N + 2) × 5.
#[derive(Clone, Debug)]
pub struct Cadence {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    outbox: Outbox,
    /// The queue whose outbox it is (`None`: an earlier version's).
    queue: Option<String>,
    max_ms: u64,
    interval_ms: u64,
    next_ms: u64,
}

impl Cadence {
    /// The outboxes a worker of `queues` delivers, every one due at `now_ms`.
    pub fn new(keys: &Keys, queues: &[String], cluster: bool, now_ms: u64) -> Self {
        let mut own: Vec<(Outbox, String)> = queues
            .iter()
            .map(|q| (Outbox::of_queue(keys, q), q.clone()))
            .collect();
        own.sort();
        own.dedup_by(|a, b| a.0 == b.0);
        let entry = |outbox, queue, max_ms| Entry {
            outbox,
            queue,
            max_ms,
            interval_ms: LOOK_MS,
            next_ms: now_ms,
        };
        let mut entries: Vec<Entry> = own
            .into_iter()
            .map(|(o, q)| entry(o, Some(q), IDLE_LOOK_MS))
            .collect();
        entries.extend(
            Outbox::earlier_of_worker(keys, cluster)
                .into_iter()
                .map(|o| entry(o, None, EARLIER_IDLE_LOOK_MS)),
        );
        Self { entries }
    }

    /// The outboxes to look at now (indexes for [`Cadence::outbox`] and [`Cadence::looked`]).
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].next_ms <= now_ms)
            .collect()
    }

    /// Outbox `i`.
    pub fn outbox(&self, i: usize) -> &Outbox {
        &self.entries[i].outbox
    }

    /// Outbox `i` was looked at `now_ms`: `found` whether it had deliveries to make.
    pub fn looked(&mut self, i: usize, found: bool, now_ms: u64) {
        let e = &mut self.entries[i];
        e.interval_ms = if found {
            LOOK_MS
        } else {
            (e.interval_ms * 2).min(e.max_ms)
        };
        e.next_ms = now_ms + e.interval_ms;
    }

    /// A task of `queue` finished here: look at its outbox again soon (at once if due, else
    /// within [`LOOK_MS`]) and keep looking every [`LOOK_MS`] until a look finds nothing.
    pub fn nudge(&mut self, queue: &str, now_ms: u64) {
        for e in &mut self.entries {
            if e.queue.as_deref() == Some(queue) {
                e.interval_ms = LOOK_MS;
                e.next_ms = e.next_ms.min(now_ms + LOOK_MS);
            }
        }
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
    // each claimed item's outcome: delivered (`Ok`), failed (`Err`: the item as it goes back,
    // with its attempt counted and its error), or malformed (parked as it is)
    let results = futures::future::join_all(claimed.iter().map(|raw| async move {
        match serde_json::from_str::<OutboxEntry>(raw) {
            Ok(OutboxEntry::Url(mut item)) => match post(http, &item).await {
                Ok(()) => Some(Ok(())),
                Err(e) => {
                    item.attempt += 1;
                    tracing::warn!(id = %item.id, url = %item.url, attempt = item.attempt, error = %e, "delivery to a destination failed");
                    item.error = Some(e);
                    Some(Err(OutboxEntry::Url(item)))
                }
            },
            // Retried with the same backoff and parked as a URL delivery: a forward the
            // destination's Redis keeps refusing (its list holds another type, its slot is
            // down) must not be claimed again every lease forever. A forward that did enqueue
            // but whose reply was lost is a no-op when re-sent (the forward marker).
            Ok(OutboxEntry::Queue(mut item)) => match forward(con, keys, &item).await {
                Ok(_) => Some(Ok(())),
                Err(e) => {
                    item.attempt += 1;
                    tracing::warn!(id = %item.id, queue = %item.queue, attempt = item.attempt, error = %e, "delivery to a destination queue failed");
                    item.error = Some(e.to_string());
                    Some(Err(OutboxEntry::Queue(item)))
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "malformed outbox item parked");
                None
            }
        }
    }))
    .await;
    let settle = redis::Script::new(scripts::OUTBOX_SETTLE);
    let mut pipe = redis::pipe();
    pipe.load_script(&settle).ignore();
    let mut delivered = 0;
    for (raw, r) in claimed.iter().zip(results) {
        let mut inv = settle.key(&outbox.pending);
        inv.key(&outbox.dead).arg(raw);
        match r {
            Some(Ok(())) => {
                delivered += 1;
                inv.arg("").arg(0).arg("0");
            }
            Some(Err(item)) => {
                let attempt = item.attempt();
                let dead = attempt >= OUTBOX_MAX_ATTEMPTS;
                let next = serde_json::to_string(&item).expect("an outbox item serializes");
                inv.arg(next)
                    .arg(now_ms() + backoff_ms(attempt))
                    .arg(if dead { "1" } else { "0" });
            }
            None => {
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
            Some(OutboxEntry::Queue(item)) => OutboxEntry::Queue(ForwardItem {
                attempt: 0,
                error: None,
                ..item.clone()
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_outboxes_are_looked_at_less_often_and_a_finish_brings_them_back() {
        let keys = Keys::new("fs").in_namespace(Some("ns".into()));
        let queues = vec![Keys::queue_id("ns", "a"), Keys::queue_id("ns", "b")];
        let mut c = Cadence::new(&keys, &queues, false, 0);
        // two queues' outboxes, the namespace's and the shared one of earlier versions
        assert_eq!(c.due(0), vec![0, 1, 2, 3]);
        assert_eq!(c.outbox(0), &Outbox::of_queue(&keys, &queues[0]));
        assert_eq!(c.outbox(3), &Outbox::legacy(&keys.unscoped()));
        // nothing found: 400, 800, 1,600 then 2,000 ms (own), up to 30 s (earlier versions)
        let mut now = 0;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            for i in c.due(now) {
                c.looked(i, false, now);
            }
            let next = (0..4).map(|i| c.entries[i].next_ms).collect::<Vec<_>>();
            gaps.push(next[0] - now);
            now = *next.iter().min().unwrap();
        }
        assert_eq!(&gaps[..4], &[400, 800, 1_600, 2_000], "{gaps:?}");
        assert_eq!(c.entries[0].interval_ms, IDLE_LOOK_MS);
        assert_eq!(c.entries[2].interval_ms, 12_800);
        for _ in 0..60 {
            for i in c.due(now) {
                c.looked(i, false, now);
            }
            now = c.entries.iter().map(|e| e.next_ms).min().unwrap();
        }
        assert_eq!(c.entries[3].interval_ms, EARLIER_IDLE_LOOK_MS);
        for i in c.due(now) {
            c.looked(i, false, now);
        }
        // a task of `b` finished: b's outbox within LOOK_MS, a's and the earlier ones not
        let t = now + 1;
        c.nudge(&queues[1], t);
        assert_eq!(c.due(t + LOOK_MS), vec![1]);
        // deliveries found: every LOOK_MS while there are
        c.looked(1, true, t + LOOK_MS);
        assert_eq!(c.entries[1].next_ms, t + 2 * LOOK_MS);
        // on a cluster, no shared outbox of earlier versions
        assert_eq!(Cadence::new(&keys, &queues, true, 0).due(0).len(), 3);
    }
}

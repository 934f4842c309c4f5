//! Delivery of results and errors to URL destinations: the finish script puts an
//! [`OutboxItem`] in `Keys::outbox` (a zset scored by due time) atomically with the ack; any
//! worker's delivery loop claims due items (pushing their score out by a lease, so a crashed
//! deliverer's items come back), POSTs them, and removes them on a 2xx. Failures back off
//! exponentially; after [`OUTBOX_MAX_ATTEMPTS`] the item goes to `Keys::outbox_dead`.
//! Delivery is at-least-once: receivers deduplicate on the `x-funcscale-delivery-id` header.
//!
//! Parked items stay in `Keys::outbox_dead` until an operator acts: [`pending`] and [`parked`]
//! list them, [`requeue_parked`] moves them back into the outbox (due now, attempt 0, same
//! delivery id) and [`purge_parked`] deletes them (`funcscale-worker outbox list|requeue|purge`).
//! [`refresh_gauges`] sets `funcscale_worker_outbox_pending` and `funcscale_worker_outbox_parked`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::clock::now_ms;
use crate::handler::HttpClient;
use crate::metrics::Metrics;
use crate::protocol::{Keys, OUTBOX_MAX_ATTEMPTS, OutboxItem, scripts};
use crate::records::{Selector, paged, range};

/// How long a claimed delivery stays invisible to other deliverers.
pub const CLAIM_LEASE_MS: u64 = 30_000;
/// Timeout of one POST.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Claim up to `limit` due deliveries and attempt them (concurrently). Returns how many
/// were delivered.
pub async fn deliver_due(
    con: &funcscale_connect::Conn,
    keys: &Keys,
    http: &HttpClient,
    limit: usize,
) -> redis::RedisResult<usize> {
    let mut con = con.clone();
    let claimed: Vec<String> = redis::Script::new(scripts::OUTBOX_CLAIM)
        .key(keys.outbox())
        .arg(now_ms())
        .arg(limit)
        .arg(CLAIM_LEASE_MS)
        .invoke_async(&mut con)
        .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let results = futures::future::join_all(claimed.iter().map(|raw| async move {
        match serde_json::from_str::<OutboxItem>(raw) {
            Ok(item) => {
                let r = post(http, &item).await;
                (Some(item), r)
            }
            Err(e) => (None, Err(format!("malformed outbox item: {e}"))),
        }
    }))
    .await;
    let settle = redis::Script::new(scripts::OUTBOX_SETTLE);
    let mut pipe = redis::pipe();
    pipe.load_script(&settle).ignore();
    let mut delivered = 0;
    for (raw, (item, r)) in claimed.iter().zip(results) {
        let mut inv = settle.key(keys.outbox());
        inv.key(keys.outbox_dead()).arg(raw);
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
    let _: () = pipe.query_async(&mut con).await?;
    Ok(delivered)
}

/// One outbox entry as listed: its raw text, the parsed item (`None` when malformed) and, for
/// a pending delivery, when it is due (unix ms; a claimed one is due when its lease ends).
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// The stored JSON.
    pub raw: String,
    /// The parsed item.
    pub item: Option<OutboxItem>,
    /// Due time (pending deliveries only).
    pub due_ms: Option<u64>,
}

impl Listed {
    /// The delivery id, if the item parses.
    pub fn id(&self) -> Option<&str> {
        self.item.as_ref().map(|i| i.id.as_str())
    }

    fn selected(&self, sel: &Selector) -> bool {
        match self.id() {
            Some(id) => sel.matches(id),
            None => matches!(sel, Selector::All),
        }
    }
}

/// Pending deliveries matching `sel`, soonest due first.
pub async fn pending<C>(con: &mut C, keys: &Keys, sel: &Selector) -> redis::RedisResult<Vec<Listed>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut out = Vec::new();
    let key = keys.outbox();
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
        };
        if l.selected(sel) {
            out.push(l);
        }
    })
    .await?;
    Ok(out)
}

/// Parked deliveries (failed [`OUTBOX_MAX_ATTEMPTS`] times) matching `sel`, newest first.
pub async fn parked<C>(con: &mut C, keys: &Keys, sel: &Selector) -> redis::RedisResult<Vec<Listed>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut out = Vec::new();
    let key = keys.outbox_dead();
    paged(
        con,
        |a, b| range("LRANGE", &key, a, b),
        |raw: String| {
            let l = Listed {
                item: serde_json::from_str(&raw).ok(),
                raw,
                due_ms: None,
            };
            if l.selected(sel) {
                out.push(l);
            }
        },
    )
    .await?;
    Ok(out)
}

/// Move the parked deliveries matching `sel` back into the outbox, due now, with the attempt
/// count and the last error cleared and the same delivery id (receivers still deduplicate).
/// Malformed items stay parked. Returns how many moved.
pub async fn requeue_parked<C>(con: &mut C, keys: &Keys, sel: &Selector) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let items = parked(con, keys, sel).await?;
    requeue_listed(con, keys, &items).await
}

/// Move these listed parked deliveries (from [`parked`]) back into the outbox as
/// [`requeue_parked`] does. An item no longer parked (purged, or moved by someone else since
/// it was listed) is skipped, never added. Returns how many moved.
pub async fn requeue_listed<C>(
    con: &mut C,
    keys: &Keys,
    items: &[Listed],
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let now = now_ms();
    let script = redis::Script::new(scripts::OUTBOX_REQUEUE_PARKED);
    let mut moved = 0;
    for chunk in items.chunks(500) {
        let mut inv = script.key(keys.outbox_dead());
        inv.key(keys.outbox()).arg(now);
        let mut any = false;
        for l in chunk {
            let Some(item) = &l.item else { continue };
            let fresh = OutboxItem {
                attempt: 0,
                error: None,
                ..item.clone()
            };
            inv.arg(&l.raw)
                .arg(serde_json::to_string(&fresh).expect("an outbox item serializes"));
            any = true;
        }
        if any {
            let n: u64 = inv.invoke_async(con).await?;
            moved += n;
        }
    }
    Ok(moved)
}

/// Delete the parked deliveries matching `sel`. Returns how many were deleted.
pub async fn purge_parked<C>(con: &mut C, keys: &Keys, sel: &Selector) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    if matches!(sel, Selector::All) {
        let (n, _): (u64, ()) = redis::pipe()
            .atomic()
            .llen(keys.outbox_dead())
            .del(keys.outbox_dead())
            .query_async(con)
            .await?;
        return Ok(n);
    }
    let items = parked(con, keys, sel).await?;
    let mut n = 0;
    for chunk in items.chunks(1_000) {
        let mut pipe = redis::pipe();
        for l in chunk {
            pipe.lrem(keys.outbox_dead(), 1, &l.raw);
        }
        let removed: Vec<u64> = pipe.query_async(con).await?;
        n += removed.iter().sum::<u64>();
    }
    Ok(n)
}

/// How many deliveries are pending (in the outbox) and parked (in the dead list).
pub async fn sizes<C>(con: &mut C, keys: &Keys) -> redis::RedisResult<(u64, u64)>
where
    C: redis::aio::ConnectionLike + Send,
{
    redis::pipe()
        .zcard(keys.outbox())
        .llen(keys.outbox_dead())
        .query_async(con)
        .await
}

/// Set `funcscale_worker_outbox_pending` and `funcscale_worker_outbox_parked` from Redis.
pub async fn refresh_gauges<C>(
    con: &mut C,
    keys: &Keys,
    metrics: &Metrics,
) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (pending, parked) = sizes(con, keys).await?;
    metrics.outbox_pending.set(pending as i64);
    metrics.outbox_parked.set(parked as i64);
    Ok(())
}

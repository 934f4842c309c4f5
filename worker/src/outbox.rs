//! Delivery of results and errors to URL destinations: the finish script puts an
//! [`OutboxItem`] in `Keys::outbox` (a zset scored by due time) atomically with the ack; any
//! worker's delivery loop claims due items (pushing their score out by a lease, so a crashed
//! deliverer's items come back), POSTs them, and removes them on a 2xx. Failures back off
//! exponentially; after [`OUTBOX_MAX_ATTEMPTS`] the item goes to `Keys::outbox_dead`.
//! Delivery is at-least-once: receivers deduplicate on the `x-funcscale-delivery-id` header.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::handler::HttpClient;
use crate::protocol::{Keys, OUTBOX_MAX_ATTEMPTS, OutboxItem};
use crate::worker::now_ms;

/// How long a claimed delivery stays invisible to other deliverers.
pub const CLAIM_LEASE_MS: u64 = 30_000;
/// Timeout of one POST.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// KEYS[1] = outbox; ARGV = now ms, limit, lease ms. Returns the claimed members.
const CLAIM_LUA: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), m) end
return due
"#;

/// KEYS[1] = outbox, KEYS[2] = outbox dead list; ARGV = old member, new member ('' = delivered),
/// due ms, dead (`1`|`0`). Only acts when the old member is still there.
const SETTLE_LUA: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  if ARGV[4] == '1' then redis.call('LPUSH', KEYS[2], ARGV[2]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
end
return 1
"#;

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
    con: &redis::aio::ConnectionManager,
    keys: &Keys,
    http: &HttpClient,
    limit: usize,
) -> redis::RedisResult<usize> {
    let mut con = con.clone();
    let claimed: Vec<String> = redis::Script::new(CLAIM_LUA)
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
    let settle = redis::Script::new(SETTLE_LUA);
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

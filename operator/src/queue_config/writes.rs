//! What the operator last wrote to each queue's Redis, and one connection per endpoint: the
//! memory that lets the queue reconcile skip unchanged writes and back off after failures.
//! Held (behind one `Arc`) by both controllers' contexts: the pool controller's scale-downs
//! use its connections.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use funcscale_protocol::QueueConfig;

use crate::context::Backoff;
use crate::redis_metrics::{PollerConfig, QueueId, RedisEndpoint, RedisError};

/// What the operator last wrote for one queue, and its failures.
#[derive(Clone, Debug, Default)]
pub(crate) struct Written {
    /// Endpoint, settings and time (unix ms) of the last successful write.
    pub(crate) last: Option<(RedisEndpoint, QueueConfig, u64)>,
    /// No write before this time (unix ms): backing off after a failure.
    pub(crate) retry_at_ms: u64,
}

/// Per-queue memory of the writes, their backoff, and one Redis connection per endpoint.
#[derive(Default)]
pub struct QueueConfigs {
    pub(crate) written: Mutex<HashMap<QueueId, Written>>,
    /// Failed writes back off per queue.
    pub(crate) backoff: Backoff<QueueId>,
    /// One cell per endpoint, held across its connect: thousands of queue reconciles starting
    /// at once share one connect per endpoint, not each open their own (a connect storm times
    /// them all out), and a slow endpoint (a Sentinel set whose sentinels do not answer) holds
    /// up only its own queues.
    conns: Mutex<HashMap<RedisEndpoint, Arc<tokio::sync::OnceCell<funcscale_connect::Conn>>>>,
}

impl QueueConfigs {
    /// Forget queues that are gone (not `live`) and connections that no remembered queue
    /// uses.
    /// Called by the poll loop (once per poll, not per write: that was O(queues²) on the
    /// first pass over 10,000 queues).
    pub async fn prune(&self, live: impl Fn(&QueueId) -> bool) {
        let used: HashSet<RedisEndpoint> = {
            let mut written = self.written.lock().expect("queue config lock");
            written.retain(|k, _| live(k));
            written
                .values()
                .filter_map(|w| w.last.as_ref().map(|(e, _, _)| e.clone()))
                .collect()
        };
        self.conns
            .lock()
            .expect("queue config connections lock")
            .retain(|e, _| used.contains(e));
    }

    /// The endpoint's connection, opened once. A `ConnectionManager` reconnects by itself
    /// after an I/O error, so a failed write never drops it (dropping it made every timeout
    /// start a new connect, a storm under load).
    pub(crate) async fn connection(
        &self,
        endpoint: &RedisEndpoint,
    ) -> Result<funcscale_connect::Conn, RedisError> {
        let cell = self
            .conns
            .lock()
            .expect("queue config connections lock")
            .entry(endpoint.clone())
            .or_default()
            .clone();
        // a failed connect leaves the cell empty: the next write tries again
        let config = PollerConfig::default();
        cell.get_or_try_init(|| crate::redis_metrics::connect(endpoint, &config))
            .await
            .cloned()
    }
}

/// Whether the settings must be written now: never written (or forgotten after an operator
/// restart), another endpoint or other settings than last time, or the last write is older
/// than `refresh` (Redis may have been flushed). Not while backing off after a failure.
pub(crate) fn due(
    w: Option<&Written>,
    endpoint: &RedisEndpoint,
    config: &QueueConfig,
    now_ms: u64,
    refresh: Duration,
) -> bool {
    let Some(w) = w else { return true };
    if now_ms < w.retry_at_ms {
        return false;
    }
    match &w.last {
        None => true,
        Some((e, c, at)) => {
            e != endpoint || c != config || now_ms.saturating_sub(*at) >= refresh.as_millis() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_again_only_on_change_refresh_or_after_backoff() {
        let e = RedisEndpoint::new("redis://a:6379/0");
        let c = QueueConfig {
            record_max_count: Some(5),
            ..Default::default()
        };
        let refresh = Duration::from_secs(300);
        assert!(due(None, &e, &c, 0, refresh), "never written");
        let w = Written {
            last: Some((e.clone(), c.clone(), 1_000)),
            retry_at_ms: 0,
        };
        assert!(!due(Some(&w), &e, &c, 2_000, refresh), "unchanged");
        assert!(due(Some(&w), &e, &c, 301_000, refresh), "refresh interval");
        assert!(due(
            Some(&w),
            &RedisEndpoint::new("redis://b:6379/0"),
            &c,
            2_000,
            refresh
        ));
        assert!(due(Some(&w), &e, &QueueConfig::default(), 2_000, refresh));
        let failing = Written {
            last: None,
            retry_at_ms: 5_000,
        };
        assert!(!due(Some(&failing), &e, &c, 4_999, refresh), "backing off");
        assert!(due(Some(&failing), &e, &c, 5_000, refresh));
    }
}

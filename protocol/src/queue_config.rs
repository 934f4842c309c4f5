//! Per-queue settings (`Keys::queue_config`): record retention, destinations and retries.
//! The operator writes them from the `FuncQueue`; the record scripts read them on every write,
//! the workers read the retry settings when a task fails.

use serde::{Deserialize, Serialize};

use crate::Keys;

/// Where a queue sends a task's result (on success) or its error (on failure, once dead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// Enqueue a task `func` into `queue` (inside the ack script: atomic with the ack).
    Queue {
        /// Destination queue.
        queue: String,
        /// Function of the new task (default `on_success` / `on_failure`).
        func: Option<String>,
    },
    /// POST to a URL through the outbox (retried with backoff; parked in `Keys::outbox_dead`
    /// after [`OUTBOX_MAX_ATTEMPTS`](crate::OUTBOX_MAX_ATTEMPTS) failures, until `outbox requeue`).
    Url(String),
}

impl Destination {
    /// Parse `queue:NAME`, `queue:NAME/FUNC` or `http(s)://…`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("queue:") {
            let (queue, func) = match rest.split_once('/') {
                Some((q, f)) => (q, Some(f.to_string()).filter(|f| !f.is_empty())),
                None => (rest, None),
            };
            if queue.is_empty() {
                return Err(format!("destination {s:?}: empty queue name"));
            }
            Ok(Self::Queue {
                queue: queue.into(),
                func,
            })
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Self::Url(s.into()))
        } else {
            Err(format!(
                "destination {s:?}: expected queue:NAME[/FUNC] or http(s)://URL"
            ))
        }
    }

    /// The destination with its queue (a name as the user wrote it) mapped to the queue's id
    /// in Redis by `id` (e.g. [`Keys::queue_id`] of the namespace); a URL as it is.
    pub fn resolve_queue(self, id: impl FnOnce(&str) -> String) -> Self {
        match self {
            Self::Queue { queue, func } => Self::Queue {
                queue: id(&queue),
                func,
            },
            url => url,
        }
    }

    /// The stored text (what [`Destination::parse`] reads).
    pub fn to_text(&self) -> String {
        match self {
            Self::Queue { queue, func: None } => format!("queue:{queue}"),
            Self::Queue {
                queue,
                func: Some(f),
            } => format!("queue:{queue}/{f}"),
            Self::Url(u) => u.clone(),
        }
    }
}

/// Per-queue settings (`Keys::queue_config`), read by the scripts on every write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Records older than this (ms since their last update) are deleted.
    pub record_max_age_ms: Option<u64>,
    /// At most this many records are kept for the queue (oldest go first).
    pub record_max_count: Option<u64>,
    /// Destination of results.
    pub on_success: Option<Destination>,
    /// Destination of dead tasks (with the error).
    pub on_failure: Option<Destination>,
    /// Retries of a task whose envelope sets none.
    pub max_retries: Option<u32>,
    /// First retry delay (ms); doubles per retry. Unset: the worker's `--retry-base`.
    pub retry_backoff_base_ms: Option<u64>,
    /// Longest retry delay (ms). Unset: the worker's `--retry-max`.
    pub retry_backoff_max_ms: Option<u64>,
}

/// Fields of [`QueueConfig`] as stored, every one (what a writer that replaces the whole
/// settings clears first).
pub const QUEUE_CONFIG_FIELDS: [&str; 7] = [
    "record_max_age_ms",
    "record_max_count",
    "on_success",
    "on_failure",
    "max_retries",
    "retry_backoff_base_ms",
    "retry_backoff_max_ms",
];

impl QueueConfig {
    /// Field/value pairs as stored.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(a) = self.record_max_age_ms {
            v.push(("record_max_age_ms", a.to_string()));
        }
        if let Some(c) = self.record_max_count {
            v.push(("record_max_count", c.to_string()));
        }
        if let Some(d) = &self.on_success {
            v.push(("on_success", d.to_text()));
        }
        if let Some(d) = &self.on_failure {
            v.push(("on_failure", d.to_text()));
        }
        if let Some(n) = self.max_retries {
            v.push(("max_retries", n.to_string()));
        }
        if let Some(ms) = self.retry_backoff_base_ms {
            v.push(("retry_backoff_base_ms", ms.to_string()));
        }
        if let Some(ms) = self.retry_backoff_max_ms {
            v.push(("retry_backoff_max_ms", ms.to_string()));
        }
        v
    }

    /// Parse `HGETALL` pairs (unknown or bad fields are ignored).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = Self::default();
        for (k, v) in pairs {
            match k {
                "record_max_age_ms" => c.record_max_age_ms = v.parse().ok(),
                "record_max_count" => c.record_max_count = v.parse().ok(),
                "on_success" => c.on_success = Destination::parse(v).ok(),
                "on_failure" => c.on_failure = Destination::parse(v).ok(),
                "max_retries" => c.max_retries = v.parse().ok(),
                "retry_backoff_base_ms" => c.retry_backoff_base_ms = v.parse().ok(),
                "retry_backoff_max_ms" => c.retry_backoff_max_ms = v.parse().ok(),
                _ => {}
            }
        }
        c
    }

    /// The commands that write (merge) these settings of `queue`; `clear` names fields to
    /// delete first.
    pub fn set_pipeline(&self, keys: &Keys, queue: &str, clear: &[&str]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        if !clear.is_empty() {
            pipe.hdel(keys.queue_config(queue), clear).ignore();
        }
        let pairs = self.to_pairs();
        if !pairs.is_empty() {
            // HSET with many pairs, not HMSET: the operator's ACL rule grants `+hset`
            pipe.cmd("HSET")
                .arg(keys.queue_config(queue))
                .arg(&pairs)
                .ignore();
        }
        pipe
    }

    /// The command that reads the settings of `queue` (parse its reply with
    /// [`QueueConfig::from_pairs`]).
    pub fn get_cmd(keys: &Keys, queue: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys.queue_config(queue));
        cmd
    }
}

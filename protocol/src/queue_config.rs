//! Per-queue settings (`Keys::queue_config`): record retention and destinations. The
//! operator writes them from the `FuncQueue`; the record scripts read them on every write.

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
    /// after [`OUTBOX_MAX_ATTEMPTS`] failures, until `outbox requeue`).
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
}

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
            pipe.hset_multiple(keys.queue_config(queue), &pairs)
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

//! Deliveries to destinations, staged by the finish script in the finished task's queue's
//! outbox (`Keys::queue_outbox`, `Keys::queue_outbox_dead`): URL deliveries ([`OutboxItem`])
//! and tasks for a destination queue ([`ForwardItem`]). Earlier versions staged URL
//! deliveries in the namespace's outbox (`Keys::outbox`), which workers still drain.

use serde::{Deserialize, Serialize};

/// How long a claimed delivery stays invisible to other deliverers (ms); a delivery to a queue
/// is staged claimed this long by the worker whose finish staged it (it forwards it at once).
pub const OUTBOX_LEASE_MS: u64 = 30_000;

/// Failed attempts of a delivery (a POST to a URL, or a forward the destination queue's Redis
/// refused) before it is parked in its outbox's dead list (`Keys::queue_outbox_dead`).
pub const OUTBOX_MAX_ATTEMPTS: u32 = 12;

/// One delivery to a URL destination, as stored in the outbox zset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OutboxItem {
    /// Delivery id (`<task id>:success` or `<task id>:failure`).
    pub id: String,
    /// Target URL.
    pub url: String,
    /// Failed deliveries so far.
    pub attempt: u32,
    /// The JSON body to POST: `{"event", "task", "result" | "error"}`.
    pub body: serde_json::Value,
    /// Last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One delivery to a destination queue, as stored in a queue's outbox: the envelope the
/// finish script prepared, enqueued by `forward.lua` in the destination's hash slot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ForwardItem {
    /// Delivery id (`<task id>:success` or `<task id>:failure`): the new task's id.
    pub id: String,
    /// The destination queue (a queue id).
    pub queue: String,
    /// The function the new task calls.
    pub func: String,
    /// The new task's envelope (JSON text, enqueued as is).
    pub env: String,
    /// Failed forwards so far (the destination's Redis refused or did not answer); the
    /// finish script stages it without (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Last forward error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An entry of an outbox: a URL delivery or a delivery to a queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum OutboxEntry {
    /// POST to a URL.
    Url(OutboxItem),
    /// Enqueue into a destination queue.
    Queue(ForwardItem),
}

impl OutboxEntry {
    /// Failed attempts so far.
    pub fn attempt(&self) -> u32 {
        match self {
            OutboxEntry::Url(i) => i.attempt,
            OutboxEntry::Queue(i) => i.attempt,
        }
    }

    /// The last attempt's error.
    pub fn error(&self) -> Option<&str> {
        match self {
            OutboxEntry::Url(i) => i.error.as_deref(),
            OutboxEntry::Queue(i) => i.error.as_deref(),
        }
    }

    /// The delivery id.
    pub fn id(&self) -> &str {
        match self {
            OutboxEntry::Url(i) => &i.id,
            OutboxEntry::Queue(i) => &i.id,
        }
    }

    /// Where it goes: the URL, or `queue:<queue>/<func>`.
    pub fn target(&self) -> String {
        match self {
            OutboxEntry::Url(i) => i.url.clone(),
            OutboxEntry::Queue(i) => format!("queue:{}/{}", i.queue, i.func),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_what_the_finish_script_stages() {
        let url =
            r#"{"id":"t:success","url":"http:\/\/h\/x","attempt":0,"body":{"event":"success"}}"#;
        let e: OutboxEntry = serde_json::from_str(url).unwrap();
        assert!(matches!(&e, OutboxEntry::Url(i) if i.url == "http://h/x"));
        let fwd = r#"{"id":"t:failure","queue":"{a.r}","func":"on_failure","env":"{\"v\":1,\"id\":\"t:failure\"}"}"#;
        let e: OutboxEntry = serde_json::from_str(fwd).unwrap();
        assert_eq!(e.target(), "queue:{a.r}/on_failure");
        assert!(matches!(&e, OutboxEntry::Queue(i) if i.env == r#"{"v":1,"id":"t:failure"}"#));
        assert!(serde_json::from_str::<OutboxEntry>(r#"{"id":"x"}"#).is_err());
        // a forward that failed keeps its count and error, and is still a queue item
        let failed = r#"{"id":"t:failure","queue":"{a.r}","func":"f","env":"{}","attempt":3,"error":"WRONGTYPE"}"#;
        let e: OutboxEntry = serde_json::from_str(failed).unwrap();
        assert!(matches!(&e, OutboxEntry::Queue(_)));
        assert_eq!((e.attempt(), e.error()), (3, Some("WRONGTYPE")));
        let OutboxEntry::Queue(mut i) = e else {
            unreachable!()
        };
        i.attempt = 0;
        i.error = None;
        assert_eq!(
            serde_json::to_string(&i).unwrap(),
            r#"{"id":"t:failure","queue":"{a.r}","func":"f","env":"{}"}"#,
            "a fresh item is written as the finish script stages it"
        );
    }
}

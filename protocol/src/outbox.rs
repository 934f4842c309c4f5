//! Deliveries to URL destinations (`Keys::outbox`, `Keys::outbox_dead`).

use serde::{Deserialize, Serialize};

/// Attempts of a delivery to a URL destination before it goes to `Keys::outbox_dead`.
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

//! The wall clock, in the unit the protocol stores (unix ms).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! The status of a task record: part of the record hash (`status`) and of the key layout (the
//! per-status index `Keys::tasks_status`), so both [`crate::keys`] and [`crate::records`] use it.

use serde::{Deserialize, Serialize};

/// Status of a task record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting in the queue.
    Queued,
    /// Running (recorded once the attempt has run for the worker's `RECORD_START_AFTER`; a shorter
    /// attempt goes from queued or retrying straight to its outcome).
    Started,
    /// Finished successfully.
    Succeeded,
    /// Failed; a retry is scheduled.
    Retrying,
    /// Failed for good; in the dead-letter list.
    Dead,
}

impl TaskStatus {
    /// All statuses.
    pub const ALL: [TaskStatus; 5] = [
        Self::Queued,
        Self::Started,
        Self::Succeeded,
        Self::Retrying,
        Self::Dead,
    ];

    /// The name stored in Redis.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.name()), Some(s));
        }
        assert_eq!(TaskStatus::parse("running"), None);
    }
}

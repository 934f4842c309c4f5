//! The task envelope: a task as it travels through Redis (JSON).

use serde::{Deserialize, Serialize};

/// Version of the task envelope format written by this build.
pub const ENVELOPE_VERSION: u32 = 1;

/// A task as it travels through Redis (JSON). Unknown fields are kept by newer readers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Envelope format version ([`ENVELOPE_VERSION`]).
    #[serde(rename = "v")]
    pub version: u32,
    /// Task id; producers may choose a meaningful one (e.g. an upstream trace id).
    pub id: String,
    /// Function name.
    pub func: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: serde_json::Value,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: serde_json::Value,
    /// Queue the task was sent to.
    pub queue: String,
    /// When it was first enqueued (unix ms).
    pub enqueued_at_ms: u64,
    /// Attempt number, starting at 0.
    #[serde(default)]
    pub attempt: u32,
    /// Retries allowed after the first attempt. Unset: the queue's setting
    /// ([`crate::QueueConfig::max_retries`]), else [`DEFAULT_MAX_RETRIES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Soft time limit in seconds (the handler is told), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_s: Option<u32>,
    /// Hard time limit in seconds (the execution is killed), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_timeout_s: Option<u32>,
    /// Trace id to correlate logs across systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Error of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Retries of a task when neither the task nor its queue says how many.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

impl Envelope {
    /// A new first-attempt envelope.
    pub fn new(
        id: impl Into<String>,
        func: impl Into<String>,
        queue: impl Into<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            id: id.into(),
            func: func.into(),
            args: serde_json::Value::Array(vec![]),
            kwargs: serde_json::Value::Object(Default::default()),
            queue: queue.into(),
            enqueued_at_ms: now_ms,
            attempt: 0,
            max_retries: None,
            soft_timeout_s: None,
            hard_timeout_s: None,
            trace_id: None,
            error: None,
        }
    }

    /// JSON text of the envelope.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope serializes to JSON")
    }

    /// Parse an envelope; an envelope from a newer major format is refused.
    pub fn from_json(s: &str) -> Result<Self, EnvelopeError> {
        let env: Self = serde_json::from_str(s).map_err(EnvelopeError::Malformed)?;
        if env.version > ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(env.version));
        }
        Ok(env)
    }
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or fields missing.
    #[error("malformed task envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Written by a newer funcscale.
    #[error("task envelope version {0} is newer than this worker understands")]
    UnsupportedVersion(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_retries_is_unset_unless_the_task_says() {
        let e = Envelope::new("id1", "f", "q", 5);
        assert!(!e.to_json().contains("max_retries"));
        // an envelope of an earlier version carries its count, and keeps it
        let old = r#"{"v":1,"id":"x","func":"f","queue":"q","enqueued_at_ms":1,"attempt":0,"max_retries":7}"#;
        assert_eq!(Envelope::from_json(old).unwrap().max_retries, Some(7));
    }

    #[test]
    fn envelope_round_trips_and_refuses_newer_versions() {
        let e = Envelope::new("id1", "f", "q", 5);
        assert_eq!(Envelope::from_json(&e.to_json()).unwrap(), e);
        let mut newer = e.clone();
        newer.version = ENVELOPE_VERSION + 1;
        assert!(matches!(
            Envelope::from_json(&newer.to_json()),
            Err(EnvelopeError::UnsupportedVersion(v)) if v == ENVELOPE_VERSION + 1
        ));
        assert!(matches!(
            Envelope::from_json("{"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn a_malformed_envelope_keeps_the_json_error_as_its_source() {
        let err = Envelope::from_json(r#"{"v":1,"id":"x"}"#).unwrap_err();
        let source = std::error::Error::source(&err).expect("the JSON error is the source");
        let json = source
            .downcast_ref::<serde_json::Error>()
            .expect("a serde_json::Error");
        assert!(json.to_string().contains("missing field"), "{json}");
        // the message still says what went wrong
        assert!(
            err.to_string()
                .starts_with("malformed task envelope: missing field"),
            "{err}"
        );
    }
}

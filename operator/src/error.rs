//! The operator's error type. `category()` is the only thing that goes into metric labels
//! and Event reasons: a small fixed set, never an object name or a Debug string.

/// Everything a reconcile or the metrics reader can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object's spec cannot be acted on (waits for a change).
    #[error("invalid spec: {field}: {reason}")]
    InvalidSpec {
        /// JSON path of the field, e.g. `spec.queues[1]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The API server refused an object the operator applies (400 Bad Request, 422 Invalid):
    /// what was rendered is wrong, so retrying cannot help; waits for a change.
    #[error("{kind} {name} rejected by the API server: {message}")]
    Rejected {
        /// Kind of the object: `Deployment`, `ConfigMap`.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The API server's message.
        message: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Redis could not be read or written.
    #[error("Redis: {0}")]
    Redis(#[from] crate::redis_metrics::RedisError),
    /// (De)serialization of an object failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// An object lacks a field every stored object has (name, namespace).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// Leader election lost or could not be held.
    #[error("leader election: {what}: {source}")]
    Leadership {
        /// What failed.
        what: &'static str,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Fixed, low-cardinality category for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::Rejected { .. } => "rejected",
            Error::Redis(_) => "redis",
            Error::Serialization(_) => "serialization",
            Error::MissingObjectKey(_) => "internal",
            Error::Leadership { .. } => "leadership",
        }
    }

    /// The error of applying the `kind` object `name`: [`Error::Rejected`] when the API
    /// server refuses the object itself (400, 422), else the API error as it is (conflicts,
    /// 5xx and network failures are transient and back off).
    pub fn applying(kind: &'static str, name: &str, e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => Error::Rejected {
                kind,
                name: name.to_string(),
                message: s.message.clone(),
                source: Box::new(e),
            },
            _ => Error::Kube(e),
        }
    }

    /// Shorthand for [`Error::InvalidSpec`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_fixed_strings() {
        let conflict = Error::Kube(kube::Error::Api(
            kube::core::Status::failure("conflict", "Conflict")
                .with_code(409)
                .boxed(),
        ));
        assert_eq!(conflict.category(), "conflict");
        assert_eq!(
            Error::invalid("spec.queues[0]", "no such queue").category(),
            "invalid_spec"
        );
        let timeout = crate::redis_metrics::RedisError::ResponseTimeout(Default::default());
        assert_eq!(Error::Redis(timeout).category(), "redis");
        let lost = Error::Leadership {
            what: "cannot release lease",
            source: Box::new(kube::Error::Api(
                kube::core::Status::failure("gone", "NotFound").boxed(),
            )),
        };
        assert!(
            std::error::Error::source(&lost).is_some(),
            "the API error stays attached"
        );
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("m", "Invalid")
                    .with_code(code)
                    .boxed(),
            )
        };
        for code in [400, 422] {
            assert_eq!(
                Error::applying("Deployment", "d", api(code)).category(),
                "rejected"
            );
        }
        for (code, category) in [(409, "conflict"), (500, "api"), (503, "api")] {
            assert_eq!(
                Error::applying("Deployment", "d", api(code)).category(),
                category
            );
        }
    }
}

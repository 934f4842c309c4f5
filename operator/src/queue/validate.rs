//! *Validate*: what the schema cannot check (or an API server without CEL rules does not) of
//! a queue's spec — cron expressions, schedules on a queue the beat cannot feed, Celery and
//! Stream options. Pure: the spec in, the first problem out (an `InvalidSpec` error naming
//! the field).

use kube::ResourceExt;

use crate::crd::FuncQueue;
use crate::error::Error;

/// The first problem of `q`'s spec, if any.
pub fn validate(q: &FuncQueue) -> Option<Error> {
    // a cron the schema cannot check (field values, ranges) is refused here, naming it
    let bad_cron = q.spec.schedules.iter().enumerate().find_map(|(i, s)| {
        funcscale_protocol::cron::Cron::parse(&s.cron)
            .err()
            .map(|e| {
                Error::invalid(
                    format!("spec.schedules[{i}].cron"),
                    format!(
                        "schedule {}: {:?} is not a valid cron expression: {e}",
                        s.name, s.cron
                    ),
                )
            })
    });
    // a foreign queue's tasks are the foreign system's messages: the beat's funcscale
    // envelopes would wait there unread (Celery cannot parse them)
    let foreign_schedules = (q.spec.format != crate::crd::QueueFormat::Funcscale
        && !q.spec.schedules.is_empty())
    .then(|| {
        Error::invalid(
            "spec.schedules",
            format!(
                "a {:?} queue holds {:?} messages: funcscale's beat would push funcscale tasks no {:?} worker reads; keep these schedules in the system's own scheduler (for Celery: celery beat, as a Beat pool with spec.celery or its own command), or give the schedules to a funcscale queue",
                q.spec.format, q.spec.format, q.spec.format
            ),
        )
    });
    bad_cron
        .or(foreign_schedules)
        .or_else(|| celery_transport_error(&q.spec))
        .or_else(|| celery_name_error(&q.name_any(), &q.spec))
        .or_else(|| stream_spec_error(&q.spec))
}

/// A queue its Redis cannot hold: on a Redis Cluster (`redis+cluster://`), a Celery queue
/// (Celery cannot run there) and a funcscale queue with `legacyKeys` (its keys have no
/// `{<namespace>.<name>}` hash tag, so one queue's keys would be spread over slots its
/// scripts cannot reach together).
pub fn cluster_error(
    q: &FuncQueue,
    endpoint: &crate::redis_metrics::RedisEndpoint,
) -> Option<Error> {
    if endpoint.topology() != "cluster" {
        return None;
    }
    match q.spec.format {
        crate::crd::QueueFormat::Celery => Some(Error::invalid(
            "spec.format",
            CELERY_ON_CLUSTER.replace("{node}", &endpoint.node()),
        )),
        crate::crd::QueueFormat::Funcscale if q.spec.legacy_keys => Some(Error::invalid(
            "spec.legacyKeys",
            "Redis Cluster needs the queue id hash tag: a legacyKeys queue's keys are not in one hash slot; remove legacyKeys (its keys become funcscale:q:{<namespace>.<name>}...) or use a single Redis server or a Sentinel set",
        )),
        _ => None,
    }
}

/// Why a Celery queue is refused on a Redis Cluster (`{node}`: the cluster, for the message).
pub const CELERY_ON_CLUSTER: &str = "a Celery queue cannot be on a Redis Cluster ({node}): Celery's Redis transport (kombu) talks to one Redis server, so its workers and producers would not follow the cluster's slots, and it takes tasks with one BRPOP over lists in different slots; give this queue a single Redis server or a Sentinel set (spec.redis)";

/// What the schema cannot check of `spec.celery`: it belongs to a Celery queue, and its
/// priority steps are ascending and distinct, as kombu needs them.
pub fn celery_transport_error(spec: &crate::crd::FuncQueueSpec) -> Option<Error> {
    let t = spec.celery.as_ref()?;
    if spec.format != crate::crd::QueueFormat::Celery {
        return Some(Error::invalid(
            "spec.celery",
            format!(
                "Celery transport options are for a queue of format Celery, this one is {:?}: set format: Celery or remove celery",
                spec.format
            ),
        ));
    }
    funcscale_protocol::foreign::check_priority_steps(&t.priority_steps)
        .err()
        .map(|why| Error::invalid("spec.celery.prioritySteps", why))
}

/// A Celery queue's id in funcscale's keys is its bare name, and `funcscale-celery` reads a
/// dotted id as `<namespace>.<name>` (`FUNCSCALE_CELERY_QUEUES`): a name with a dot would make
/// its pods' integration refuse to start (or report under keys nobody reads).
pub fn celery_name_error(name: &str, spec: &crate::crd::FuncQueueSpec) -> Option<Error> {
    (spec.format == crate::crd::QueueFormat::Celery && name.contains('.')).then(|| {
        Error::invalid(
            "metadata.name",
            format!(
                "a Celery queue's name must not contain '.' ({name:?}): funcscale-celery would read it as <namespace>.<name>; name the FuncQueue without dots and set spec.key to the Celery queue's name"
            ),
        )
    })
}

#[cfg(test)]
mod celery_tests {
    use super::*;
    use crate::crd::{CeleryTransport, FuncQueueSpec, QueueFormat};

    #[test]
    fn a_dotted_celery_queue_name_is_refused() {
        let celery = FuncQueueSpec {
            format: QueueFormat::Celery,
            ..Default::default()
        };
        let e = celery_name_error("orders.v2", &celery).unwrap().to_string();
        assert!(
            e.contains("metadata.name: a Celery queue") && e.contains("spec.key"),
            "{e}"
        );
        assert!(celery_name_error("orders-v2", &celery).is_none());
        // funcscale's own ids are namespaced and braced: a dot is fine there
        assert!(celery_name_error("orders.v2", &FuncQueueSpec::default()).is_none());
    }

    #[test]
    fn celery_transport_options_are_checked() {
        let mut spec = FuncQueueSpec {
            format: QueueFormat::Celery,
            celery: Some(CeleryTransport::default()),
            ..Default::default()
        };
        assert!(celery_transport_error(&spec).is_none());
        spec.celery.as_mut().unwrap().priority_steps = vec![0, 9, 3];
        let e = celery_transport_error(&spec).unwrap().to_string();
        assert!(
            e.contains("spec.celery.prioritySteps") && e.contains("9 is followed by 3"),
            "{e}"
        );
        spec.celery.as_mut().unwrap().priority_steps = vec![];
        assert!(celery_transport_error(&spec).is_some());
        spec.celery = Some(CeleryTransport::default());
        spec.format = QueueFormat::Rq;
        let e = celery_transport_error(&spec).unwrap().to_string();
        assert!(
            e.contains("spec.celery") && e.contains("format Celery"),
            "{e}"
        );
    }
}

/// What the schema cannot check (or an API server without CEL rules does not) of a Stream
/// queue: it names its consumer group, only a Stream queue has one, and it has no schedules
/// (the beat's funcscale envelopes would be entries no consumer of the stream understands).
pub fn stream_spec_error(spec: &crate::crd::FuncQueueSpec) -> Option<Error> {
    use crate::crd::QueueFormat;
    match (&spec.stream, spec.format) {
        (None, QueueFormat::Stream) => Some(Error::invalid(
            "spec.stream.group",
            "a Stream queue needs the consumer group whose lag sizes its pools: set stream.group to the group your consumers read with XREADGROUP",
        )),
        (Some(_), QueueFormat::Stream) if !spec.schedules.is_empty() => Some(Error::invalid(
            "spec.schedules",
            "a Stream queue holds your producers' entries: funcscale's beat would push funcscale tasks into a list no consumer of the stream reads; keep these schedules in the system's own scheduler, or give the schedules to a funcscale queue",
        )),
        (Some(_), QueueFormat::Stream) => None,
        (Some(_), format) => Some(Error::invalid(
            "spec.stream",
            format!(
                "a consumer group is for a queue of format Stream, this one is {format:?}: set format: Stream or remove stream"
            ),
        )),
        (None, _) => None,
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::crd::{FuncQueueSpec, QueueFormat, Schedule, StreamGroupRef};

    #[test]
    fn a_stream_queue_names_its_group_and_has_no_schedules() {
        let mut spec = FuncQueueSpec {
            format: QueueFormat::Stream,
            ..Default::default()
        };
        let e = stream_spec_error(&spec).unwrap().to_string();
        assert!(e.contains("spec.stream.group"), "{e}");
        spec.stream = Some(StreamGroupRef {
            group: "workers".into(),
        });
        assert!(stream_spec_error(&spec).is_none());
        spec.schedules = vec![Schedule {
            name: "tick".into(),
            cron: "* * * * *".into(),
            function: "f".into(),
            args: vec![],
        }];
        let e = stream_spec_error(&spec).unwrap().to_string();
        assert!(e.contains("spec.schedules"), "{e}");
        spec.schedules.clear();
        spec.format = QueueFormat::Rq;
        let e = stream_spec_error(&spec).unwrap().to_string();
        assert!(
            e.contains("spec.stream") && e.contains("format Stream"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod validate_tests {
    use super::*;
    use crate::crd::{FuncQueueSpec, QueueFormat, Schedule};

    #[test]
    fn the_first_problem_of_the_spec_names_its_field() {
        let schedule = |cron: &str| Schedule {
            name: "tick".into(),
            cron: cron.into(),
            function: "f".into(),
            args: vec![],
        };
        let mut q = FuncQueue::new(
            "q",
            FuncQueueSpec {
                schedules: vec![schedule("* * * * *")],
                ..Default::default()
            },
        );
        assert!(validate(&q).is_none());
        q.spec.schedules.push(schedule("61 * * * *"));
        let e = validate(&q).unwrap().to_string();
        assert!(
            e.starts_with("invalid spec: spec.schedules[1].cron: schedule tick"),
            "{e}"
        );
        // a bad cron is named before the schedules a foreign queue cannot take
        q.spec.format = QueueFormat::Rq;
        let e = validate(&q).unwrap().to_string();
        assert!(e.starts_with("invalid spec: spec.schedules[1].cron"), "{e}");
        q.spec.schedules.pop();
        let e = validate(&q).unwrap().to_string();
        assert!(
            e.starts_with("invalid spec: spec.schedules: a Rq queue"),
            "{e}"
        );
        q.spec.schedules.clear();
        assert!(validate(&q).is_none());
        q.spec.format = QueueFormat::Stream;
        let e = validate(&q).unwrap().to_string();
        assert!(e.starts_with("invalid spec: spec.stream.group"), "{e}");
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::crd::{FuncQueueSpec, QueueFormat};
    use crate::redis_metrics::RedisEndpoint;

    #[test]
    fn a_celery_queue_is_refused_on_a_cluster_only() {
        let celery = FuncQueue::new(
            "emails",
            FuncQueueSpec {
                format: QueueFormat::Celery,
                ..Default::default()
            },
        );
        let cluster = RedisEndpoint::new("redis+cluster://n1:7000,n2:7001");
        let e = cluster_error(&celery, &cluster).unwrap();
        assert_eq!(e.category(), "invalid_spec");
        let e = e.to_string();
        assert!(
            e.contains("spec.format: a Celery queue cannot be on a Redis Cluster (")
                && e.contains("n1:7000")
                && e.contains("a single Redis server or a Sentinel set (spec.redis)"),
            "{e}"
        );
        for fine in ["redis://h:6379/0", "redis+sentinel://s1:26379/mymaster/0"] {
            assert!(
                cluster_error(&celery, &RedisEndpoint::new(fine)).is_none(),
                "{fine}"
            );
        }
        // the other adopted formats are read by single-key commands: fine on a cluster
        for format in [QueueFormat::Rq, QueueFormat::Sidekiq, QueueFormat::Stream] {
            let q = FuncQueue::new(
                "q",
                FuncQueueSpec {
                    format,
                    ..Default::default()
                },
            );
            assert!(cluster_error(&q, &cluster).is_none(), "{format:?}");
        }
    }

    #[test]
    fn a_legacy_keys_queue_is_refused_on_a_cluster_only() {
        let q = |legacy_keys, format| {
            FuncQueue::new(
                "q",
                FuncQueueSpec {
                    legacy_keys,
                    format,
                    ..Default::default()
                },
            )
        };
        let cluster = RedisEndpoint::new("redis+cluster://n1:7000,n2:7001");
        let e = cluster_error(&q(true, QueueFormat::Funcscale), &cluster)
            .unwrap()
            .to_string();
        assert!(
            e.contains("spec.legacyKeys")
                && e.contains("Redis Cluster needs the queue id hash tag"),
            "{e}"
        );
        assert!(cluster_error(&q(false, QueueFormat::Funcscale), &cluster).is_none());
        // adopted lists are read by single-key commands: fine on a cluster
        assert!(cluster_error(&q(true, QueueFormat::Rq), &cluster).is_none());
        let one = RedisEndpoint::new("redis://h:6379/0");
        assert!(cluster_error(&q(true, QueueFormat::Funcscale), &one).is_none());
    }
}

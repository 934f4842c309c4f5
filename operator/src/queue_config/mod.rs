//! The settings a FuncQueue gives its workers through Redis: record retention, the
//! `onSuccess` / `onFailure` destinations and the retries (`maxRetries`, `retryBackoff`) —
//! the hash `Keys::queue_config` of the queue's id, read by the workers' scripts on every
//! write and by the workers when a task fails.
//!
//! The FuncQueue reconcile calls [`reconcile_config`]: it validates the destinations
//! (*validate*: the destination FuncQueue exists and the workers can reach it — same Redis,
//! default key, funcscale format), builds the hash (*build*, pure: [`desired_config`]),
//! writes it when it differs from what was last written to that endpoint or when
//! `Config::queue_config_refresh` has passed (*apply*), and sets the `DestinationsReady`
//! and `ConfigApplied` conditions (*status*). A Redis failure is a condition and a backoff,
//! never a failed reconcile.

use std::collections::HashSet;
use std::time::Duration;

use funcscale_protocol::queue_config::QUEUE_CONFIG_FIELDS;
use funcscale_protocol::{Destination, Keys, QueueConfig};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::conditions::{self, new};
use crate::context::Shared;
use crate::crd::{FuncQueue, FuncQueueSpec, FuncQueueStatus, QueueFormat, TaskDestination};
use crate::redis_metrics::{PollerConfig, QueueId, RedisEndpoint, RedisError};

pub mod writes;

use writes::{QueueConfigs, Written, due};

/// Condition type: whether `onSuccess` / `onFailure` can be delivered.
pub const DESTINATIONS_READY: &str = "DestinationsReady";
/// Condition type: whether the settings are written to the queue's Redis.
pub const CONFIG_APPLIED: &str = "ConfigApplied";

/// The worker's form of a destination, or why it cannot be one (for specs the API server
/// did not validate, e.g. with an older CRD installed).
pub fn to_destination(d: &TaskDestination) -> Result<Destination, String> {
    match (&d.queue, &d.url) {
        (Some(q), None) => {
            if q.is_empty() || q.contains('/') {
                return Err(format!("{q:?} is not a FuncQueue name"));
            }
            Ok(Destination::Queue {
                queue: q.clone(),
                func: d.function.clone().filter(|f| !f.is_empty()),
            })
        }
        (None, Some(_)) if d.function.is_some() => Err(
            "function goes with queue: a url destination receives the task as the JSON body of a POST"
                .into(),
        ),
        (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            Ok(Destination::Url(u.clone()))
        }
        (None, Some(u)) => Err(format!("url {u:?} is not an http:// or https:// URL")),
        (Some(_), Some(_)) => Err("set either queue or url, not both".into()),
        (None, None) => Err("set queue or url".into()),
    }
}

/// The settings of `spec`, with the destinations that passed validation (`routable`:
/// `(onSuccess, onFailure)`). Pure.
pub fn desired_config(
    spec: &FuncQueueSpec,
    routable: (Option<Destination>, Option<Destination>),
) -> QueueConfig {
    let records = spec.records.clone().unwrap_or_default();
    let backoff = spec.retry_backoff.clone().unwrap_or_default();
    QueueConfig {
        record_max_age_ms: records.max_age_seconds.map(|s| s.saturating_mul(1000)),
        record_max_count: records.max_count,
        on_success: routable.0,
        on_failure: routable.1,
        max_retries: Some(spec.max_retries),
        retry_backoff_base_ms: backoff.base_ms,
        retry_backoff_max_ms: backoff.max_ms,
    }
}

/// The fields of the hash `config` does not set: they are deleted, so a setting removed
/// from the spec is removed from Redis too.
pub fn cleared_fields(config: &QueueConfig) -> Vec<&'static str> {
    let set: HashSet<&str> = config.to_pairs().into_iter().map(|(k, _)| k).collect();
    QUEUE_CONFIG_FIELDS
        .into_iter()
        .filter(|k| !set.contains(k))
        .collect()
}

/// Why a destination cannot be used.
struct Problem {
    reason: &'static str,
    message: String,
}

/// One destination of `q` checked: the worker's form when it can be delivered, its queue
/// the destination FuncQueue's id in Redis.
async fn check_destination(
    q: &FuncQueue,
    ns: &str,
    endpoint: &RedisEndpoint,
    d: &TaskDestination,
    ctx: &Shared,
) -> Result<Destination, Problem> {
    let dest = to_destination(d).map_err(|m| Problem {
        reason: "InvalidDestination",
        message: m,
    })?;
    let Destination::Queue { queue: dq, .. } = &dest else {
        return Ok(dest);
    };
    let Some(target) = ctx.queues.get(&ObjectRef::new(dq).within(ns)) else {
        return Err(Problem {
            reason: "QueueNotFound",
            message: format!("FuncQueue {dq} not found in namespace {ns}"),
        });
    };
    let keys: &Keys = &ctx.config.keys;
    if target.spec.format != QueueFormat::Funcscale {
        return Err(Problem {
            reason: "ForeignFormat",
            message: format!(
                "FuncQueue {dq} has format {:?}: workers enqueue funcscale tasks, only into a queue of format Funcscale",
                target.spec.format
            ),
        });
    }
    let target_id = crate::crd_ext::queue_id(&target, ns);
    if let Some(key) = target.spec.key.as_deref()
        && key != keys.queue(&target_id)
    {
        return Err(Problem {
            reason: "CustomKey",
            message: format!(
                "FuncQueue {dq} uses the custom key {key:?}: workers can only enqueue into a queue's default key ({}) in the same Redis",
                keys.queue(&target_id)
            ),
        });
    }
    if target.spec.redis != q.spec.redis {
        match ctx.endpoint(&target, ns).await {
            Ok(e) if &e == endpoint => {}
            Ok(e) => {
                return Err(Problem {
                    reason: "DifferentRedis",
                    message: format!(
                        "FuncQueue {dq} is in another Redis ({}) than this queue ({}): workers can only enqueue into a queue in the same Redis",
                        e.redacted(),
                        endpoint.redacted()
                    ),
                });
            }
            Err(err) => {
                return Err(Problem {
                    reason: "DifferentRedis",
                    message: format!(
                        "cannot tell whether FuncQueue {dq} is in the same Redis as this queue: {err}"
                    ),
                });
            }
        }
    }
    Ok(dest.resolve_queue(|_| target_id))
}

fn describe(kind: &str, d: &Destination) -> String {
    match d {
        Destination::Queue { queue, func } => format!(
            "{kind} → queue {queue} (function {})",
            func.clone()
                .unwrap_or_else(|| format!("on_{}", kind.trim_start_matches("on").to_lowercase()))
        ),
        Destination::Url(u) => format!("{kind} → POST {u}"),
    }
}

/// Validate the destinations of `q`, write its settings to `endpoint` when due, and set the
/// `DestinationsReady` and `ConfigApplied` conditions in `st`. Returns the delay before the
/// next attempt when the write failed (the caller requeues no later than that).
pub async fn reconcile_config(
    q: &FuncQueue,
    ns: &str,
    endpoint: &RedisEndpoint,
    st: &mut FuncQueueStatus,
    now: &str,
    ctx: &Shared,
    configs: &QueueConfigs,
) -> Option<Duration> {
    let name = q.name_any();
    let g = q.metadata.generation;

    // validate: each destination the workers can deliver to, or why not
    let mut routable: [Option<Destination>; 2] = [None, None];
    let mut described = vec![];
    let mut problems = vec![];
    for (i, (kind, d)) in [
        ("onSuccess", &q.spec.on_success),
        ("onFailure", &q.spec.on_failure),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(d) = d else { continue };
        match check_destination(q, ns, endpoint, d, ctx).await {
            Ok(dest) => {
                // named as the user wrote it; routed to the destination's id in Redis
                let shown = to_destination(d).unwrap_or_else(|_| dest.clone());
                described.push(describe(kind, &shown));
                routable[i] = Some(dest);
            }
            Err(p) => problems.push((kind, p)),
        }
    }
    if q.spec.on_success.is_none() && q.spec.on_failure.is_none() {
        conditions::remove(&mut st.conditions, DESTINATIONS_READY);
    } else if problems.is_empty() {
        conditions::set(
            &mut st.conditions,
            new(DESTINATIONS_READY, true, "Valid", described.join("; "), g),
            now,
        );
    } else {
        let mut msg: Vec<String> = problems
            .iter()
            .map(|(kind, p)| format!("{kind}: {} (not routed until fixed)", p.message))
            .collect();
        msg.extend(described);
        let reason = problems[0].1.reason;
        let msg = msg.join("; ");
        let was_false = q
            .status
            .as_ref()
            .and_then(|s| conditions::get(&s.conditions, DESTINATIONS_READY))
            .is_some_and(|c| c.status == "False");
        if !was_false {
            crate::events::warn(&ctx.recorder, q, reason, msg.clone()).await;
        }
        conditions::set(
            &mut st.conditions,
            new(DESTINATIONS_READY, false, reason, msg, g),
            now,
        );
    }

    // build + apply
    let [on_success, on_failure] = routable;
    let config = desired_config(&q.spec, (on_success, on_failure));
    let key = QueueId::new(ns, &name);
    let queue = crate::crd_ext::queue_id(q, ns);
    let now_ms = ctx.now_ms();
    let refresh = ctx.config.queue_config_refresh;
    let state = configs
        .written
        .lock()
        .expect("queue config lock")
        .get(&key)
        .cloned();
    if !due(state.as_ref(), endpoint, &config, now_ms, refresh) {
        return state
            .filter(|w| w.retry_at_ms > now_ms)
            .map(|w| Duration::from_millis(w.retry_at_ms - now_ms));
    }
    match write(ctx, configs, endpoint, &queue, &config).await {
        Ok(()) => {
            configs.backoff.succeeded(&key);
            configs.written.lock().expect("queue config lock").insert(
                key.clone(),
                Written {
                    last: Some((endpoint.clone(), config, now_ms)),
                    retry_at_ms: 0,
                },
            );
            conditions::set(
                &mut st.conditions,
                new(
                    CONFIG_APPLIED,
                    true,
                    "Applied",
                    format!(
                        "retention, destinations and retries written to {} (hash {})",
                        endpoint.redacted(),
                        ctx.config.keys.queue_config(&queue)
                    ),
                    g,
                ),
                now,
            );
            None
        }
        Err(e) => {
            let delay = configs.backoff.failed(&key);
            let mut written = configs.written.lock().expect("queue config lock");
            let w = written.entry(key.clone()).or_default();
            w.retry_at_ms = now_ms.saturating_add(delay.as_millis() as u64);
            drop(written);
            tracing::warn!(queue = %key, redis = %endpoint, error = %e, retry_in = ?delay, "cannot write the queue's settings to Redis");
            conditions::set(
                &mut st.conditions,
                new(
                    CONFIG_APPLIED,
                    false,
                    e.reason().as_str(),
                    format!("cannot write retention and destinations: {e}"),
                    g,
                ),
                now,
            );
            Some(delay)
        }
    }
}

/// Write the settings of `queue` as the workers read them: the fields `config` sets, and the
/// ones it does not set deleted ([`cleared_fields`]).
pub async fn write_config<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    config: &QueueConfig,
) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    config
        .set_pipeline(keys, queue, &cleared_fields(config))
        .query_async(con)
        .await
}

async fn write(
    ctx: &Shared,
    configs: &QueueConfigs,
    endpoint: &RedisEndpoint,
    queue: &str,
    config: &QueueConfig,
) -> Result<(), WriteError> {
    let mut con = configs.connection(endpoint).await?;
    let timeout = PollerConfig::default().response_timeout;
    tokio::time::timeout(
        timeout,
        write_config(&mut con, &ctx.config.keys, queue, config),
    )
    .await
    .map_err(|_| WriteError::Timeout {
        endpoint: endpoint.clone(),
        timeout,
    })?
    .map_err(|source| {
        // a refused login names the node and the settings to fix, as the poller's does
        match RedisError::classify(endpoint, source, RedisError::Command) {
            RedisError::Command(source) => WriteError::Command {
                endpoint: endpoint.clone(),
                source,
            },
            refused => WriteError::Connect(refused),
        }
    })
}

/// Why the settings could not be written (the message goes to the `ConfigApplied`
/// condition; the Redis error stays attached as the source).
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Connect(#[from] RedisError),
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        endpoint: RedisEndpoint,
        timeout: Duration,
    },
    #[error("{endpoint}: {source}")]
    Command {
        endpoint: RedisEndpoint,
        #[source]
        source: redis::RedisError,
    },
}

impl WriteError {
    /// The condition reason: `RedisAuthFailed` when Redis refused the login.
    fn reason(&self) -> crate::redis_metrics::UnavailableReason {
        match self {
            WriteError::Connect(e) => e.reason(),
            _ => Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RecordRetention;

    fn dest(queue: Option<&str>, function: Option<&str>, url: Option<&str>) -> TaskDestination {
        TaskDestination {
            queue: queue.map(Into::into),
            function: function.map(Into::into),
            url: url.map(Into::into),
        }
    }

    #[test]
    fn destinations_convert_or_say_why_not() {
        assert_eq!(
            to_destination(&dest(Some("results"), Some("store"), None)).unwrap(),
            Destination::Queue {
                queue: "results".into(),
                func: Some("store".into())
            }
        );
        assert_eq!(
            to_destination(&dest(None, None, Some("https://h.example/x"))).unwrap(),
            Destination::Url("https://h.example/x".into())
        );
        assert!(to_destination(&dest(Some("a"), None, Some("https://h"))).is_err());
        assert!(to_destination(&dest(None, None, None)).is_err());
        assert!(to_destination(&dest(None, None, Some("ftp://h"))).is_err());
        assert!(to_destination(&dest(None, Some("f"), Some("https://h"))).is_err());
    }

    #[test]
    fn config_from_spec_and_the_fields_to_clear() {
        let spec = FuncQueueSpec {
            records: Some(RecordRetention {
                max_age_seconds: Some(3600),
                max_count: None,
            }),
            ..Default::default()
        };
        let c = desired_config(&spec, (None, Some(Destination::Url("https://h".into()))));
        assert_eq!(c.record_max_age_ms, Some(3_600_000));
        assert_eq!(c.record_max_count, None);
        assert_eq!(
            cleared_fields(&c),
            vec![
                "record_max_count",
                "on_success",
                "retry_backoff_base_ms",
                "retry_backoff_max_ms"
            ],
            "every field the spec does not set is cleared"
        );
        assert_eq!(c.max_retries, Some(spec.max_retries));
        assert_eq!(cleared_fields(&QueueConfig::default()).len(), 7);
    }
}

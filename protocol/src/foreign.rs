//! Foreign queue systems whose queues a `FuncQueue` can adopt: where Celery (kombu's Redis
//! transport), RQ and Sidekiq keep their waiting jobs, and how to read the oldest one's age;
//! and how a Redis Stream consumer group's backlog is read.
//! These keys have no funcscale prefix: the other system owns them.

/// Separator kombu's Redis transport (Celery) puts between a queue name and its priority
/// (kombu `Channel.sep`, transport option `sep`).
pub const CELERY_PRIORITY_SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`: priority 0 lives in the list named after the queue.
pub const CELERY_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// kombu's default `unacked_key`: the hash of messages delivered but not acknowledged
/// (delivery tag -> JSON `[message, exchange, routing_key]`).
pub const CELERY_UNACKED_KEY: &str = "unacked";
/// The message header in which `funcscale-celery` records when a task was published (unix ms):
/// the oldest waiting task's age of a Celery queue.
pub const CELERY_ENQUEUED_HEADER: &str = "funcscale_enqueued_ms";

/// Where kombu's Redis transport keeps a Celery queue: its transport options
/// `priority_steps`, `sep` and `global_keyprefix`, `unacked_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CeleryLayout<'a> {
    /// `priority_steps` (ascending).
    pub priority_steps: &'a [u8],
    /// `sep`.
    pub sep: &'a str,
    /// `global_keyprefix`.
    pub global_keyprefix: &'a str,
    /// `unacked_key`.
    pub unacked_key: &'a str,
}

impl Default for CeleryLayout<'static> {
    fn default() -> Self {
        Self {
            priority_steps: &CELERY_PRIORITY_STEPS,
            sep: CELERY_PRIORITY_SEP,
            global_keyprefix: "",
            unacked_key: CELERY_UNACKED_KEY,
        }
    }
}

impl CeleryLayout<'_> {
    /// The Redis lists of Celery queue `queue`, highest priority (lowest step) first: kombu
    /// `Channel._q_for_pri` for each step, `<queue>` for step 0 and `<queue><sep><step>`
    /// otherwise, each behind `global_keyprefix` (kombu prefixes `LPUSH`, `LLEN`, `BRPOP`).
    pub fn queue_keys(&self, queue: &str) -> Vec<String> {
        let prefix = self.global_keyprefix;
        let mut out: Vec<String> = self
            .priority_steps
            .iter()
            .map(|p| {
                if *p == 0 {
                    format!("{prefix}{queue}")
                } else {
                    format!("{prefix}{queue}{}{p}", self.sep)
                }
            })
            .collect();
        out.dedup();
        out
    }

    /// The hash of delivered, unacknowledged messages (kombu prefixes `HSET`/`HDEL` too).
    pub fn unacked_key(&self) -> String {
        format!("{}{}", self.global_keyprefix, self.unacked_key)
    }
}

/// Why a Celery layout is refused: the first problem, naming the option.
pub fn check_priority_steps(steps: &[u8]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("priority steps must not be empty (kombu's default is [0, 3, 6, 9])".into());
    }
    if let Some(w) = steps.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!(
            "priority steps must be ascending and distinct, as kombu's priority_steps are: {} is followed by {}",
            w[0], w[1]
        ));
    }
    Ok(())
}

/// The Redis lists of a Celery queue with kombu's default transport options.
pub fn celery_queue_keys(queue: &str) -> Vec<String> {
    CeleryLayout::default().queue_keys(queue)
}

/// The command counting, for each of the Celery queues `queues`, its messages delivered to a
/// worker and not acknowledged, in the transport's `unacked` hash `unacked_key`
/// (`lua/celery_unacked.lua`: one command of a pipeline, one count per queue, in order).
pub fn celery_unacked_cmd<'a>(
    unacked_key: &str,
    queues: impl IntoIterator<Item = &'a str>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(crate::scripts::CELERY_UNACKED)
        .arg(1)
        .arg(unacked_key);
    for q in queues {
        cmd.arg(q);
    }
    cmd
}

/// When a Celery message (kombu's JSON: `body`, `headers`, `properties`, ...) was published,
/// from its [`CELERY_ENQUEUED_HEADER`] header (unix ms, a number or a numeric string); `None`
/// when the producer did not set it.
pub fn celery_enqueued_ms(message: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(message).ok()?;
    let h = v.get("headers")?.get(CELERY_ENQUEUED_HEADER)?;
    let ms = match h {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (ms.is_finite() && ms > 0.0).then_some(ms as u64)
}

/// The list of an RQ queue: `rq:queue:<name>` (job ids; RQ pushes right, pops left).
pub fn rq_queue_key(name: &str) -> String {
    format!("rq:queue:{name}")
}

/// The list of a Sidekiq queue: `queue:<name>` (job JSON; Sidekiq pushes left, pops right).
pub fn sidekiq_queue_key(name: &str) -> String {
    format!("queue:{name}")
}

/// Prefix of an RQ job hash: `rq:job:<id>` holds the job, with its `enqueued_at`.
pub const RQ_JOB_PREFIX: &str = "rq:job:";

/// The hash of RQ job `id`.
pub fn rq_job_key(id: &str) -> String {
    format!("{RQ_JOB_PREFIX}{id}")
}

/// The command reading the `enqueued_at` (UTC, RFC 3339) of the oldest job of the RQ queue
/// `list` (its head: RQ pushes right, pops left): a dependent read, so a script
/// (`lua/rq_oldest.lua`), one command of a pipeline. Nil when the queue is empty.
pub fn rq_oldest_cmd(list: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(crate::scripts::RQ_OLDEST)
        .arg(1)
        .arg(list)
        .arg(RQ_JOB_PREFIX);
    cmd
}

/// Sidekiq's `enqueued_at` of a job (JSON) in unix ms: float seconds (Sidekiq < 8) or integer
/// ms (Sidekiq 8); `created_at` when there is no `enqueued_at`.
pub fn sidekiq_enqueued_ms(job: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(job).ok()?;
    let at = v
        .get("enqueued_at")
        .or_else(|| v.get("created_at"))?
        .as_f64()?;
    Some(if at > 1e11 {
        at as u64
    } else {
        (at * 1000.0) as u64
    })
}

/// The most stream entries one `XRANGE` of [`stream_group_cmd`] counts when Redis cannot give
/// a consumer group's lag (after `XDEL`/`XTRIM` of undelivered entries, or Redis < 7).
pub const STREAM_COUNT_CAP: u64 = 10_000;

/// The command reading the consumer group `group` of the Redis Stream `stream`
/// (`lua/stream_group.lua`, one command of a pipeline): its lag, pending entries and first
/// undelivered entry; parse the reply with [`parse_stream_group`].
pub fn stream_group_cmd(stream: &str, group: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(crate::scripts::STREAM_GROUP)
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(STREAM_COUNT_CAP);
    cmd
}

/// The SHA1 of the stream script, for [`stream_group_sha_cmd`].
pub fn stream_group_sha() -> String {
    redis::Script::new(crate::scripts::STREAM_GROUP)
        .get_hash()
        .to_string()
}

/// `SCRIPT LOAD` of the stream script (its reply is [`stream_group_sha`]): put once at the
/// head of a pipeline, so that the pipeline's [`stream_group_sha_cmd`]s, one per stream, do
/// not each carry the script's text (and never meet `NOSCRIPT`, even right after a restart or
/// a failover of Redis).
pub fn stream_group_load_cmd() -> redis::Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(crate::scripts::STREAM_GROUP);
    cmd
}

/// [`stream_group_cmd`] by the script's SHA1 (`EVALSHA`), after [`stream_group_load_cmd`].
pub fn stream_group_sha_cmd(sha: &str, stream: &str, group: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(STREAM_COUNT_CAP);
    cmd
}

/// A Redis Stream consumer group as [`stream_group_cmd`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamGroup {
    /// The group exists.
    Found {
        /// Entries not yet delivered to the group (its lag).
        lag: u64,
        /// Whether `lag` is exact; false when Redis could not give it and there were more
        /// than [`STREAM_COUNT_CAP`] entries on both sides of `last-delivered-id` to count:
        /// `lag` is then [`STREAM_COUNT_CAP`], a lower bound.
        exact: bool,
        /// Entries delivered to a consumer of the group and not acknowledged (`pending`).
        pending: u64,
        /// The first undelivered entry's id, if any.
        first_undelivered: Option<String>,
    },
    /// No key of that name.
    NoStream,
    /// The stream has no group of that name.
    NoGroup,
    /// The key holds another type (named).
    WrongType(String),
}

/// The reply of [`stream_group_cmd`].
pub fn parse_stream_group(v: &redis::Value) -> Result<StreamGroup, String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    let Value::Array(items) = v else {
        return Err(format!("unexpected stream reading {v:?}"));
    };
    let bad = || format!("unexpected stream reading {items:?}");
    match items.first().and_then(text).as_deref() {
        Some("ok") if items.len() == 5 => Ok(StreamGroup::Found {
            lag: int(&items[1]).ok_or_else(bad)?,
            pending: int(&items[2]).ok_or_else(bad)?,
            first_undelivered: text(&items[3]),
            exact: int(&items[4]) == Some(1),
        }),
        Some("nostream") => Ok(StreamGroup::NoStream),
        Some("nogroup") => Ok(StreamGroup::NoGroup),
        Some("wrongtype") => Ok(StreamGroup::WrongType(
            items.get(1).and_then(text).unwrap_or_default(),
        )),
        _ => Err(bad()),
    }
}

/// The time part (unix ms) of a stream entry id `<ms>-<seq>`, when it is one: ids that
/// `XADD *` generates are; an explicit id whose first part is before 2001 or not a number is
/// not taken for a time.
pub fn stream_id_ms(id: &str) -> Option<u64> {
    let ms: u64 = id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()?;
    (ms >= 1_000_000_000_000).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_queue_keys() {
        assert_eq!(
            celery_queue_keys("celery"),
            [
                "celery",
                "celery\x06\x163",
                "celery\x06\x166",
                "celery\x06\x169"
            ]
        );
        let custom = CeleryLayout {
            priority_steps: &[0, 1, 2, 5],
            sep: ":",
            global_keyprefix: "app1:",
            unacked_key: "unacked",
        };
        assert_eq!(
            custom.queue_keys("hi"),
            ["app1:hi", "app1:hi:1", "app1:hi:2", "app1:hi:5"]
        );
        assert_eq!(custom.unacked_key(), "app1:unacked");
        // steps without 0: kombu never uses the bare list
        let no_zero = CeleryLayout {
            priority_steps: &[1, 9],
            ..CeleryLayout::default()
        };
        assert_eq!(no_zero.queue_keys("q"), ["q\x06\x161", "q\x06\x169"]);
        assert_eq!(rq_queue_key("default"), "rq:queue:default");
        assert_eq!(rq_job_key("j1"), "rq:job:j1");
        assert_eq!(sidekiq_queue_key("default"), "queue:default");
    }

    #[test]
    fn celery_steps_and_header() {
        assert!(check_priority_steps(&[0, 3, 6, 9]).is_ok());
        assert!(check_priority_steps(&[]).is_err());
        let e = check_priority_steps(&[0, 6, 3]).unwrap_err();
        assert!(e.contains("6 is followed by 3"), "{e}");
        assert!(check_priority_steps(&[0, 0]).is_err());
        assert_eq!(
            celery_enqueued_ms(r#"{"body":"x","headers":{"funcscale_enqueued_ms":1700000000500}}"#),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            celery_enqueued_ms(r#"{"headers":{"funcscale_enqueued_ms":"1700000000500.7"}}"#),
            Some(1_700_000_000_500)
        );
        assert_eq!(celery_enqueued_ms(r#"{"headers":{"id":"x"}}"#), None);
        assert_eq!(celery_enqueued_ms("not json"), None);
    }

    #[test]
    fn stream_ids_and_replies() {
        use redis::Value;
        assert_eq!(stream_id_ms("1700000000500-3"), Some(1_700_000_000_500));
        assert_eq!(stream_id_ms("1700000000500"), Some(1_700_000_000_500));
        assert_eq!(stream_id_ms("5-0"), None);
        assert_eq!(stream_id_ms("x-1"), None);
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            parse_stream_group(&Value::Array(vec![
                b("ok"),
                Value::Int(7),
                Value::Int(2),
                b("1700000000500-0"),
                Value::Int(1)
            ])),
            Ok(StreamGroup::Found {
                lag: 7,
                exact: true,
                pending: 2,
                first_undelivered: Some("1700000000500-0".into())
            })
        );
        assert_eq!(
            parse_stream_group(&Value::Array(vec![b("wrongtype"), b("list")])),
            Ok(StreamGroup::WrongType("list".into()))
        );
        assert!(parse_stream_group(&Value::Int(3)).is_err());
        assert!(parse_stream_group(&Value::Array(vec![b("ok"), Value::Int(1)])).is_err());
    }

    #[test]
    fn sidekiq_times() {
        assert_eq!(
            sidekiq_enqueued_ms(r#"{"enqueued_at":1700000000.5}"#),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            sidekiq_enqueued_ms(r#"{"enqueued_at":1700000000500}"#),
            Some(1_700_000_000_500)
        );
        assert_eq!(sidekiq_enqueued_ms("nope"), None);
    }
}

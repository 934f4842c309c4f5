//! `kubectl funcscale status`: pools and queues from the cluster (their `.status`, written by
//! the operator), plus live figures per queue from that queue's Redis. Gathering does the I/O;
//! the views and the table are plain data.

use std::time::Duration;

use funcscale_protocol::Keys;
use funcscale_worker::records::{self, QueueOverview};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::resolve::{Route, UrlFlag, route};
use crate::{Failure, connect, own_endpoint};
use funcscale_operator::connection;
use funcscale_operator::crd::{
    Condition, FuncQueue, FuncQueueSpec, FuncWorkerPool, PoolRole, QueueFormat,
};
use funcscale_operator::error::Error;
use funcscale_operator::redis_metrics::{RedisEndpoint, queue_lists};
use funcscale_protocol::foreign;

/// Everything `status` shows.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The namespace, or `None` with `--all-namespaces`.
    pub namespace: Option<String>,
    /// Worker pools, by namespace and name.
    pub pools: Vec<PoolView>,
    /// Queues, by namespace and name.
    pub queues: Vec<QueueView>,
}

/// One FuncWorkerPool.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    pub namespace: String,
    pub name: String,
    pub role: String,
    pub queues: Vec<String>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub desired_replicas: i32,
    /// The sizing rule (`status.decision.rule`).
    pub rule: Option<String>,
    /// Why the pool has this size (`status.decision.message`).
    pub why: Option<String>,
    /// The `Ready` condition.
    pub ready: Option<ConditionView>,
}

/// A condition, shortened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl From<&Condition> for ConditionView {
    fn from(c: &Condition) -> Self {
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        }
    }
}

/// One FuncQueue: the operator's figures and the live ones.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    pub namespace: String,
    pub name: String,
    /// The Redis list producers push to (`.status.key`).
    pub key: Option<String>,
    /// `spec.format`: a Celery, RQ or Sidekiq queue keeps no funcscale retries, running set
    /// or dead letters (shown as "—", not 0).
    pub format: QueueFormat,
    /// From `.status` (the operator's last poll).
    pub depth: Option<u64>,
    pub oldest_task_age_seconds: Option<f64>,
    pub arrivals_per_minute: Option<f64>,
    pub completions_per_minute: Option<f64>,
    pub task_time_ms: Option<f64>,
    /// Running tasks as the operator read them (`.status.running`; for a Celery queue its
    /// workers' unacknowledged tasks).
    pub running: Option<u64>,
    pub consumers: Vec<String>,
    /// Conditions whose status is `False`.
    pub problems: Vec<ConditionView>,
    /// Read now from the queue's Redis.
    pub redis: RedisView,
}

/// Live figures of a queue and where they were read.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisView {
    /// The endpoint, password redacted.
    pub endpoint: Option<String>,
    /// Where the connection came from.
    pub source: String,
    /// Waiting, delayed, running, dead letters, totals.
    pub live: Option<QueueOverview>,
    /// Why there are no live figures.
    pub error: Option<String>,
    /// The topology read (`standalone`, `sentinel`, `cluster`).
    pub topology: Option<String>,
    /// `host:port` of the node read (for Sentinel: the master).
    pub node: Option<String>,
}

/// Read pools and queues (`namespace` `None`: all namespaces), then each queue's Redis.
pub async fn gather(
    client: Client,
    namespace: Option<&str>,
    flag: &UrlFlag,
    keys: &Keys,
) -> Result<Status, Failure> {
    let (pools_api, queues_api): (Api<FuncWorkerPool>, Api<FuncQueue>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let where_ = namespace.map_or("all namespaces".to_string(), |ns| format!("namespace {ns}"));
    let pools = pools_api
        .list(&ListParams::default())
        .await
        .map_err(|e| list_error("FuncWorkerPools", &where_, e))?;
    let queues = queues_api
        .list(&ListParams::default())
        .await
        .map_err(|e| list_error("FuncQueues", &where_, e))?;

    let mut status = Status {
        namespace: namespace.map(str::to_string),
        pools: pools.items.iter().map(pool_view).collect(),
        queues: Vec::new(),
    };
    status
        .pools
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    // resolve every queue's connection, then read each endpoint once
    let mut by_endpoint: Vec<(RedisEndpoint, Vec<usize>)> = Vec::new();
    let mut add = |ep: RedisEndpoint, i: usize| match by_endpoint.iter_mut().find(|(e, _)| *e == ep)
    {
        Some((_, idx)) => idx.push(i),
        None => by_endpoint.push((ep, vec![i])),
    };
    let mut items: Vec<&FuncQueue> = queues.items.iter().collect();
    items.sort_by_key(|q| (q.namespace().unwrap_or_default(), q.name_any()));
    for q in &items {
        let ns = q.namespace().unwrap_or_default();
        let name = q.name_any();
        let mut view = queue_view(q);
        match route(flag, Some(q), &name, &ns) {
            Err(_) if connection::source(&q.spec) == connection::Source::Default => {
                view.redis.error = Some(
                    "no spec.redis (the operator's default Redis): pass --redis-url or set \
                     FUNCSCALE_REDIS_URL"
                        .into(),
                )
            }
            Err(msg) => view.redis.error = Some(msg),
            Ok(Route::Url { url, why }) => {
                view.redis.source = why;
                let ep = flag.endpoint(url);
                view.redis.endpoint = Some(ep.redacted());
                add(ep, status.queues.len());
            }
            Ok(Route::Queue(source)) => {
                view.redis.source = source.to_string();
                match own_endpoint(client.clone(), q, &ns).await {
                    Ok(ep) => {
                        view.redis.endpoint = Some(ep.redacted());
                        add(ep, status.queues.len());
                    }
                    Err(e) => view.redis.error = Some(e),
                }
            }
        }
        status.queues.push(view);
    }

    let now = funcscale_worker::worker::now_ms();
    for (ep, idx) in by_endpoint {
        let mut con = match connect(&ep, Duration::from_secs(3)).await {
            Ok(con) => con,
            Err(e) => {
                for i in idx {
                    status.queues[i].redis.error = Some(format!("cannot reach {ep}: {e}"));
                }
                continue;
            }
        };
        // on a cluster, the slot map that names each queue's master below (the reads go
        // through redis-rs' routing, which reads none of ours); when it cannot be read the
        // note names the seeds, and the read below says what fails
        let _ = con.read_slot_map().await;
        for i in idx {
            let q = items[i];
            let id = funcscale_operator::crd_ext::queue_id(q, &q.namespace().unwrap_or_default());
            status.queues[i].redis.topology = Some(con.target().topology().to_string());
            let read = live(&mut con, keys, &id, &q.spec, now);
            match read.await {
                Ok(o) => status.queues[i].redis.live = Some(o),
                Err(e) => status.queues[i].redis.error = Some(format!("reading {ep}: {e}")),
            }
            // on a cluster, the master serving the queue's slot when the connection's slot map
            // knows it (else, as for the other topologies, the node commands go to)
            let master = con.master_of(keys.queue(&id).as_bytes());
            status.queues[i].redis.node = Some(master.unwrap_or_else(|| con.node()));
        }
    }
    Ok(status)
}

/// The queue's overview; the depth read from the queue's own lists when `spec.key` or
/// `spec.format` put it elsewhere than funcscale's default list.
async fn live<C>(
    con: &mut C,
    keys: &Keys,
    name: &str,
    spec: &FuncQueueSpec,
    now: u64,
) -> redis::RedisResult<QueueOverview>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut o = records::queue_overview(con, keys, name, now).await?;
    let (lists, _) = queue_lists(spec, name, keys);
    if let (QueueFormat::Stream, Some(stream)) = (spec.format, &spec.stream) {
        // waiting: the consumer group's lag; running: its pending entries
        let v: redis::Value = foreign::stream_group_cmd(&lists[0], &stream.group)
            .query_async(con)
            .await?;
        let unexpected = |detail: String| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "reading the stream",
                detail,
            ))
        };
        (o.depth, o.executing) = match foreign::parse_stream_group(&v).map_err(unexpected)? {
            foreign::StreamGroup::Found { lag, pending, .. } => (lag, pending),
            // the operator's Ready condition says which is missing
            foreign::StreamGroup::NoStream | foreign::StreamGroup::NoGroup => (0, 0),
            foreign::StreamGroup::WrongType(t) => {
                return Err(unexpected(format!(
                    "key {:?} is a {t}, not a stream",
                    lists[0]
                )));
            }
        };
    } else if lists != [keys.queue(name)] {
        // one LLEN each: a Celery queue's priority lists are in different hash slots, which
        // a Redis Cluster connection cannot pipeline together (a few lists, a few round trips)
        o.depth = 0;
        for l in &lists {
            let n: u64 = redis::cmd("LLEN").arg(l).query_async(con).await?;
            o.depth += n;
        }
    }
    Ok(o)
}

fn list_error(what: &str, where_: &str, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Failure::Failed(anyhow::anyhow!(
            "listing {what} in {where_}: the API does not serve them: are the funcscale CRDs \
             installed? ({e})"
        )),
        _ => Failure::Failed(anyhow::anyhow!("listing {what} in {where_}: {e}")),
    }
}

/// A resolution error as a note: `field: reason` for a spec problem.
pub(super) fn resolve_error(e: &Error) -> String {
    match e {
        Error::InvalidSpec { field, reason } => format!("{field}: {reason}"),
        other => format!("resolving spec.redis: {other}"),
    }
}

fn pool_view(p: &FuncWorkerPool) -> PoolView {
    let st = p.status.clone().unwrap_or_default();
    PoolView {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        role: match p.spec.role {
            PoolRole::Worker => "Worker",
            PoolRole::Beat => "Beat",
        }
        .into(),
        queues: p.spec.queues.clone(),
        replicas: st.replicas,
        ready_replicas: st.ready_replicas,
        desired_replicas: st.desired_replicas,
        rule: st.decision.as_ref().map(|d| d.rule.clone()),
        why: st.decision.as_ref().map(|d| d.message.clone()),
        ready: st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(ConditionView::from),
    }
}

fn queue_view(q: &FuncQueue) -> QueueView {
    let st = q.status.clone().unwrap_or_default();
    QueueView {
        namespace: q.namespace().unwrap_or_default(),
        name: q.name_any(),
        key: st.key.clone(),
        format: q.spec.format,
        depth: st.depth,
        oldest_task_age_seconds: st.oldest_task_age_seconds,
        arrivals_per_minute: st.arrival_rate.map(|r| r * 60.0),
        completions_per_minute: st.completion_rate.map(|r| r * 60.0),
        task_time_ms: st.task_time_ms,
        running: st.running,
        consumers: st.consumers.clone(),
        problems: st
            .conditions
            .iter()
            .filter(|c| c.status == "False")
            .map(ConditionView::from)
            .collect(),
        redis: RedisView::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v.fract() == 0.0 || v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    })
}

fn age(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| {
        let s = s.max(0.0) as u64;
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m{}s", s / 60, s % 60),
            _ => format!("{}h{}m", s / 3600, (s / 60) % 60),
        }
    })
}

/// Columns padded to the widest cell, two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human-readable report.
pub fn render(s: &Status) -> String {
    let all = s.namespace.is_none();
    let mut out = String::new();
    if !s.pools.is_empty() {
        let mut rows = vec![];
        let mut head = vec![
            "POOL", "ROLE", "QUEUES", "REPLICAS", "READY", "DESIRED", "STATE", "RULE", "WHY",
        ];
        if all {
            head.insert(0, "NAMESPACE");
        }
        rows.push(head.into_iter().map(String::from).collect());
        for p in &s.pools {
            let state = match &p.ready {
                Some(c) if c.status == "True" => "Ready".to_string(),
                Some(c) => format!("NotReady({})", c.reason),
                None => "-".to_string(),
            };
            let mut row = vec![
                p.name.clone(),
                p.role.clone(),
                if p.queues.is_empty() {
                    "-".into()
                } else {
                    p.queues.join(",")
                },
                p.replicas.to_string(),
                p.ready_replicas.to_string(),
                p.desired_replicas.to_string(),
                state,
                opt(p.rule.as_deref()),
                opt(p.why.as_deref()),
            ];
            if all {
                row.insert(0, p.namespace.clone());
            }
            rows.push(row);
        }
        out.push_str(&table(&rows));
    }
    if !s.queues.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let mut rows = vec![];
        let mut head = vec![
            "QUEUE", "DEPTH", "OLDEST", "IN/MIN", "OUT/MIN", "TASK-MS", "POOLS", "WAITING",
            "DELAYED", "RUNNING", "DEAD", "NOTES",
        ];
        if all {
            head.insert(0, "NAMESPACE");
        }
        rows.push(head.into_iter().map(String::from).collect());
        for q in &s.queues {
            let live = q.redis.live.as_ref();
            let own = q.format == QueueFormat::Funcscale;
            let mut notes: Vec<String> = q
                .problems
                .iter()
                .map(|c| format!("{}=False({})", c.type_, c.reason))
                .collect();
            if let Some(e) = &q.redis.error {
                notes.push(format!("redis: {e}"));
            }
            // one server is the default: only another topology is worth a note
            if let (Some(t), Some(node)) = (&q.redis.topology, &q.redis.node)
                && t != "standalone"
            {
                notes.push(format!("{t}: master {node}"));
            }
            let stream = q.format == QueueFormat::Stream;
            let mut row = vec![
                q.name.clone(),
                opt(q.depth),
                age(q.oldest_task_age_seconds),
                num(q.arrivals_per_minute),
                num(q.completions_per_minute),
                num(q.task_time_ms),
                if q.consumers.is_empty() {
                    "-".into()
                } else {
                    q.consumers.join(",")
                },
                opt(live.map(|o| o.depth)),
                // funcscale's own books: none for a foreign queue; a Stream's running
                // are its group's pending entries
                opt(live.filter(|_| own).map(|o| o.delayed)),
                // (a Celery queue's: the operator's reading of its unacked tasks)
                if own || stream {
                    opt(live.map(|o| o.executing))
                } else {
                    opt(q.running)
                },
                opt(live.filter(|_| own).map(|o| o.dead_letters)),
                notes.join("; "),
            ];
            if all {
                row.insert(0, q.namespace.clone());
            }
            rows.push(row);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_why_live_figures_and_notes() {
        let s = Status {
            namespace: Some("prod".into()),
            pools: vec![PoolView {
                namespace: "prod".into(),
                name: "worker-8".into(),
                role: "Worker".into(),
                queues: vec!["q8".into()],
                replicas: 2,
                ready_replicas: 1,
                desired_replicas: 17,
                rule: Some("CronLoad".into()),
                why: Some("formula: 10000 monitors × 500 ms / (5 × 60000 ms) = 17".into()),
                ready: Some(ConditionView {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: "Scaling".into(),
                    message: String::new(),
                }),
            }],
            queues: vec![
                QueueView {
                    namespace: "prod".into(),
                    name: "q8".into(),
                    depth: Some(40),
                    oldest_task_age_seconds: Some(75.0),
                    arrivals_per_minute: Some(12.5),
                    task_time_ms: Some(500.0),
                    consumers: vec!["worker-8".into()],
                    redis: RedisView {
                        live: Some(QueueOverview {
                            depth: 41,
                            dead_letters: 3,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                QueueView {
                    namespace: "prod".into(),
                    name: "q9".into(),
                    problems: vec![ConditionView {
                        type_: "Served".into(),
                        status: "False".into(),
                        reason: "NoPool".into(),
                        message: String::new(),
                    }],
                    redis: RedisView {
                        error: Some("cannot reach redis://r:6379/0: refused".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ],
        };
        let out = render(&s);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert!(lines[0].starts_with("POOL "), "{out}");
        let pool: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &pool[..8],
            [
                "worker-8",
                "Worker",
                "q8",
                "2",
                "1",
                "17",
                "NotReady(Scaling)",
                "CronLoad"
            ]
        );
        assert!(lines[1].ends_with("formula: 10000 monitors × 500 ms / (5 × 60000 ms) = 17"));
        assert_eq!(lines[2], "");
        assert!(lines[3].starts_with("QUEUE "), "{out}");
        let q8: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            q8,
            [
                "q8", "40", "1m15s", "12.5", "-", "500", "worker-8", "41", "0", "0", "3"
            ]
        );
        assert!(
            lines[5]
                .ends_with("Served=False(NoPool); redis: cannot reach redis://r:6379/0: refused"),
            "{out}"
        );
        // the columns line up: DEAD in the header starts where q8's dead letters are
        assert_eq!(lines[3].find("DEAD"), lines[4].rfind('3'), "{out}");

        // a queue on a Sentinel set names the master it was read from; one server says nothing
        let mut on_sentinel = s.clone();
        on_sentinel.queues[0].redis.topology = Some("sentinel".into());
        on_sentinel.queues[0].redis.node = Some("10.0.0.7:6379".into());
        on_sentinel.queues[1].redis.topology = Some("standalone".into());
        on_sentinel.queues[1].redis.node = Some("10.0.0.8:6379".into());
        let out = render(&on_sentinel);
        assert!(out.contains("sentinel: master 10.0.0.7:6379"), "{out}");
        assert!(!out.contains("10.0.0.8"), "{out}");

        // a Celery queue keeps no funcscale retries, running set or dead letters: "-", not 0
        let celery = Status {
            namespace: Some("shop".into()),
            pools: vec![],
            queues: vec![QueueView {
                namespace: "shop".into(),
                name: "celery".into(),
                format: QueueFormat::Celery,
                depth: Some(7),
                running: Some(2),
                redis: RedisView {
                    live: Some(QueueOverview {
                        depth: 7,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }],
        };
        let out = render(&celery);
        let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["celery", "7", "-", "-", "-", "-", "-", "7", "-", "2", "-"],
            "{out}"
        );
    }

    /// A Stream queue, read live from the real Redis: waiting is the group's lag, running its
    /// pending entries, and retries and dead letters (which a stream does not have) are "-".
    #[tokio::test]
    async fn a_stream_queue_shows_its_lag_and_pending_entries() {
        use redis::AsyncCommands;
        let key = format!("t-plugin-stream-{}", std::process::id());
        let mut con = redis::Client::open("redis://127.0.0.1:6379/0")
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for i in 0..5 {
            let _: String = con.xadd(&key, "*", &[("n", i)]).await.unwrap();
        }
        let _: () = con.xgroup_create(&key, "g", "0").await.unwrap();
        let _: redis::streams::StreamReadReply = con
            .xread_options(
                &[&key],
                &[">"],
                &redis::streams::StreamReadOptions::default()
                    .group("g", "c1")
                    .count(2),
            )
            .await
            .unwrap();
        let spec = FuncQueueSpec {
            format: QueueFormat::Stream,
            key: Some(key.clone()),
            stream: Some(funcscale_operator::crd::StreamGroupRef { group: "g".into() }),
            ..Default::default()
        };
        let keys = Keys::new(format!("t-plugin-{}", std::process::id()));
        let o = live(&mut con, &keys, "events", &spec, 0).await.unwrap();
        assert_eq!((o.depth, o.executing), (3, 2));
        let s = Status {
            namespace: Some("prod".into()),
            queues: vec![QueueView {
                name: "events".into(),
                format: QueueFormat::Stream,
                depth: Some(3),
                redis: RedisView {
                    live: Some(o),
                    ..Default::default()
                },
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = render(&s);
        let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["events", "3", "-", "-", "-", "-", "-", "3", "-", "2", "-"]
        );
        // a key of another type: an error naming it, not a number
        let list = format!("{key}-list");
        let _: () = con.rpush(&list, "x").await.unwrap();
        let spec = FuncQueueSpec {
            key: Some(list.clone()),
            ..spec
        };
        let e = live(&mut con, &keys, "events", &spec, 0)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a stream") && e.contains(&list), "{e}");
        let _: () = con.del(&[&key, &list]).await.unwrap();
    }
}

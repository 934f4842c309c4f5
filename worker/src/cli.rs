//! Command-line interface of `funcscale-worker` (parsed in `main.rs`, executed here).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::beat::{Beat, BeatConfig, Missed};
use crate::handler::Handler;
use crate::protocol::{self, Envelope, Keys, ScheduleEntry};
use crate::worker::{Order, RedisAuth, Worker, WorkerConfig, default_worker_name, now_ms};
use funcscale_protocol::cron::Cron;

/// funcscale worker, beat and producer tools.
#[derive(Parser, Debug)]
#[command(name = "funcscale-worker", version, about)]
pub struct Cli {
    /// Redis connection.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Redis connection arguments shared by every subcommand. `Debug` hides the URL and the
/// password.
#[derive(Args, Clone)]
pub struct RedisArgs {
    /// Redis URL: redis://[user[:password]@]host[:port][/db], rediss:// for TLS, or a Sentinel
    /// set's master: redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/<master>[/db]
    /// (followed across failovers).
    #[arg(
        long,
        env = "FUNCSCALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,
    /// Username and password given apart from the URL.
    #[command(flatten)]
    pub auth: RedisAuth,
    /// Key prefix (no `{` or whitespace).
    #[arg(long, env = "FUNCSCALE_PREFIX", default_value = protocol::DEFAULT_PREFIX, global = true, value_parser = protocol::keys::parse_prefix)]
    pub prefix: String,
    /// Kubernetes namespace of the FuncQueues that `--queue` / `--queues` name: each name
    /// becomes the queue's id in Redis, `{<namespace>.<name>}` (what `status.key` of the
    /// FuncQueue shows as `<prefix>:q:{<namespace>.<name>}`). Without it, queue names are
    /// used as they are: pass the id (`{a.jobs}`) or, for a queue with `legacyKeys`, its
    /// name. The beat fires only this namespace's schedules, under its own lease.
    #[arg(long, short = 'n', env = "FUNCSCALE_NAMESPACE", global = true)]
    pub namespace: Option<String>,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &"***")
            .field("auth", &self.auth)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisArgs {
    /// The id in Redis of queue `name`: [`Keys::queue_id`] with `--namespace`; else (or when
    /// `name` already is an id) `name` itself.
    pub fn queue_id(&self, name: &str) -> String {
        match &self.namespace {
            Some(ns) if !name.starts_with('{') => Keys::queue_id(ns, name),
            _ => name.to_string(),
        }
    }

    /// A connection to `--redis-url` (reconnecting; for Sentinel, following the master), checked
    /// to log in.
    pub async fn connect(&self) -> anyhow::Result<funcscale_connect::Conn> {
        self.auth.connect(&self.redis_url).await
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one pod's worth of workers.
    Run(RunArgs),
    /// Enqueue tasks.
    Enqueue(EnqueueArgs),
    /// Manage the dynamic schedules registry.
    Schedules {
        /// Action.
        #[command(subcommand)]
        action: SchedulesAction,
    },
    /// Run the cron trigger.
    Beat(BeatArgs),
    /// Query task records and per-minute counts.
    Tasks {
        /// Action.
        #[command(subcommand)]
        action: TasksAction,
    },
    /// List, requeue or purge dead letters.
    DeadLetters {
        /// Action.
        #[command(subcommand)]
        action: DeadLettersAction,
    },
    /// List, replay or purge deliveries to destinations (pending, or parked after their last
    /// attempt failed), over the outboxes of the namespace's queues and the namespace's
    /// outbox of earlier versions.
    Outbox {
        /// Action.
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Per-queue settings in Redis: record retention and destinations.
    QueueConfig {
        /// Action.
        #[command(subcommand)]
        action: QueueConfigAction,
    },
}

/// `tasks` actions.
#[derive(Subcommand, Debug)]
pub enum TasksAction {
    /// Records of a queue, newest first.
    List {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// Only this status (`failed`: retrying or dead).
        #[arg(long, value_enum)]
        status: Option<crate::records::StatusFilter>,
        /// Updated within this long ago (e.g. 1h), or at/after a unix time in ms.
        #[arg(long)]
        since: Option<String>,
        /// Updated before this long ago (e.g. 10m), or at/before a unix time in ms.
        #[arg(long)]
        until: Option<String>,
        /// Id starts with.
        #[arg(long)]
        id_prefix: Option<String>,
        /// Function.
        #[arg(long)]
        func: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One record (JSON).
    Show {
        /// Task id.
        id: String,
        /// Queue of the task (required here; `kubectl funcscale tasks show` searches the
        /// namespace's queues without it): records are kept per queue, so two tenants' tasks
        /// of the same id are two records.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Per-minute counts: submitted, started, completed, failed, retried, dead, executing.
    Counts {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// How far back.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        since: Duration,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

impl TasksAction {
    /// The queue the action names (`tasks show` names none).
    pub fn queue_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::List { queue, .. } | Self::Counts { queue, .. } => Some(queue),
            Self::Show { queue, .. } => queue.as_mut(),
        }
    }
}

impl DeadLettersAction {
    /// Which dead letters the action works on.
    pub fn select_mut(&mut self) -> &mut DeadSelect {
        match self {
            Self::List { select, .. } | Self::Requeue { select } | Self::Purge { select, .. } => {
                select
            }
        }
    }
}

/// Which dead letters (`--id` repeated, `--id-prefix`, or `--all`).
#[derive(Args, Debug, Clone)]
pub struct DeadSelect {
    /// Queue.
    #[arg(long)]
    pub queue: String,
    /// Exact task ids.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Ids starting with this.
    #[arg(long, conflicts_with = "ids")]
    pub id_prefix: Option<String>,
    /// Every dead letter of the queue.
    #[arg(long, conflicts_with_all = ["ids", "id_prefix"])]
    pub all: bool,
}

impl DeadSelect {
    /// The selector; `list` defaults to all, the others insist on a choice.
    pub fn selector(&self, default_all: bool) -> anyhow::Result<crate::records::Selector> {
        use crate::records::Selector;
        Ok(if let Some(p) = &self.id_prefix {
            Selector::Prefix(p.clone())
        } else if !self.ids.is_empty() {
            Selector::Ids(self.ids.clone())
        } else if self.all || default_all {
            Selector::All
        } else {
            anyhow::bail!("choose the dead letters: --id ID (repeatable), --id-prefix P or --all")
        })
    }
}

/// `dead-letters` actions.
#[derive(Subcommand, Debug)]
pub enum DeadLettersAction {
    /// List dead letters (newest first).
    List {
        /// Which.
        #[command(flatten)]
        select: DeadSelect,
        /// One JSON envelope per line.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into their queue: same id, attempt count reset.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "id_prefix", "all"])))]
    Requeue {
        /// Which.
        #[command(flatten)]
        select: DeadSelect,
    },
    /// Delete dead letters (asks for confirmation on a terminal).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "id_prefix", "all"])))]
    Purge {
        /// Which.
        #[command(flatten)]
        select: DeadSelect,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Which parked deliveries (`--id` repeated, `--id-prefix`, or `--all`: exactly one).
#[derive(Args, Debug, Clone, Default)]
#[group(required = true, multiple = false)]
pub struct OutboxSelect {
    /// Exact delivery ids (`<task id>:success` or `<task id>:failure`).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Delivery ids starting with this.
    #[arg(long, value_name = "P")]
    pub id_prefix: Option<String>,
    /// Every parked delivery.
    #[arg(long)]
    pub all: bool,
}

impl OutboxSelect {
    /// The selector (clap insists on a choice; this checks it again for callers that build
    /// the struct themselves).
    pub fn selector(&self) -> anyhow::Result<crate::records::Selector> {
        use crate::records::Selector;
        Ok(if let Some(p) = &self.id_prefix {
            Selector::Prefix(p.clone())
        } else if !self.ids.is_empty() {
            Selector::Ids(self.ids.clone())
        } else if self.all {
            Selector::All
        } else {
            anyhow::bail!(
                "choose the parked deliveries: --id ID (repeatable), --id-prefix P or --all"
            )
        })
    }
}

/// `outbox` actions.
#[derive(Subcommand, Debug)]
pub enum OutboxAction {
    /// Pending deliveries, soonest due first; with `--dead`, the parked ones, newest first.
    List {
        /// The parked deliveries (failed 12 times, about 19 minutes of retries) instead of the pending ones.
        #[arg(long)]
        dead: bool,
        /// Only delivery ids starting with this.
        #[arg(long)]
        id_prefix: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Move parked deliveries back into their outbox: due now, attempt count reset, same
    /// delivery id (receivers still deduplicate).
    Requeue {
        /// Which.
        #[command(flatten)]
        select: OutboxSelect,
    },
    /// Delete parked deliveries (asks for confirmation on a terminal).
    Purge {
        /// Which.
        #[command(flatten)]
        select: OutboxSelect,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// `queue-config` actions.
#[derive(Subcommand, Debug)]
pub enum QueueConfigAction {
    /// Set (merge) settings of a queue.
    Set {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// Delete records older than this (since their last update).
        #[arg(long, value_parser = parse_duration)]
        record_max_age: Option<Duration>,
        /// Keep at most this many records for the queue.
        #[arg(long)]
        record_max_count: Option<u64>,
        /// Destination of results: `queue:NAME[/FUNC]` or `http(s)://URL`.
        #[arg(long, value_parser = protocol::Destination::parse)]
        on_success: Option<protocol::Destination>,
        /// Destination of dead tasks with their error: `queue:NAME[/FUNC]` or `http(s)://URL`.
        #[arg(long, value_parser = protocol::Destination::parse)]
        on_failure: Option<protocol::Destination>,
        /// Remove these settings first (record_max_age_ms, record_max_count, on_success, on_failure).
        #[arg(long, value_delimiter = ',')]
        clear: Vec<String>,
    },
    /// Show the settings of a queue.
    Show {
        /// Queue.
        #[arg(long)]
        queue: String,
    },
}

/// `--since` / `--until`: a duration ago, or an absolute unix time in ms.
pub fn parse_time(s: &str, now: u64) -> anyhow::Result<u64> {
    if s.len() >= 12
        && let Ok(ms) = s.parse::<u64>()
    {
        return Ok(ms);
    }
    let d = parse_duration(s).map_err(anyhow::Error::msg)?;
    Ok(now.saturating_sub(d.as_millis() as u64))
}

fn fmt_ms(ms: Option<u64>) -> String {
    ms.map(|m| {
        let s = m / 1000;
        let (h, mi, se) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
        format!("{h:02}:{mi:02}:{se:02}.{:03}", m % 1000)
    })
    .unwrap_or_else(|| "-".into())
}

/// Execute a `tasks` action (shared with the kubectl plugin).
pub async fn tasks_command<C>(con: &mut C, keys: &Keys, action: TasksAction) -> anyhow::Result<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    use crate::records;
    let now = now_ms();
    match action {
        TasksAction::List {
            queue,
            status,
            since,
            until,
            id_prefix,
            func,
            limit,
            json,
        } => {
            let q = records::TaskQuery {
                queue,
                status,
                since_ms: since.as_deref().map(|s| parse_time(s, now)).transpose()?,
                until_ms: until.as_deref().map(|s| parse_time(s, now)).transpose()?,
                id_prefix,
                func,
                limit,
            };
            let list = records::list_tasks(con, keys, &q).await?;
            if json {
                for r in &list {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<40} {:<10} {:<16} {:>3} {:>12} {:>9}  ERROR",
                    "ID", "STATUS", "FUNC", "ATT", "UPDATED(UTC)", "MS"
                );
                for r in &list {
                    println!(
                        "{:<40} {:<10} {:<16} {:>3} {:>12} {:>9}  {}",
                        r.id,
                        r.status,
                        r.func,
                        r.attempt.unwrap_or(0),
                        fmt_ms(Some(r.updated_ms)),
                        r.duration_ms.map(|d| d.to_string()).unwrap_or("-".into()),
                        r.error
                            .as_deref()
                            .unwrap_or("")
                            .chars()
                            .take(80)
                            .collect::<String>()
                    );
                }
            }
            eprintln!("{} task(s)", list.len());
        }
        TasksAction::Show { id, queue } => {
            let queue = queue
                .context("tasks show: --queue is required (task records are kept per queue)")?;
            match records::show_task(con, keys, &queue, &id).await? {
                Some(r) => println!("{}", serde_json::to_string_pretty(&r)?),
                None => anyhow::bail!(
                    "no record of task {id:?} in queue {queue} (never seen, or past retention)"
                ),
            }
        }
        TasksAction::Counts { queue, since, json } => {
            let since_ms = now.saturating_sub(since.as_millis() as u64);
            let buckets = records::counts(con, keys, &queue, since_ms, now).await?;
            if !json {
                println!(
                    "{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "MINUTE",
                    "SUBMITTED",
                    "STARTED",
                    "COMPLETED",
                    "FAILED",
                    "RETRIED",
                    "DEAD",
                    "EXECUTING"
                );
            }
            for b in &buckets {
                if json {
                    println!("{}", serde_json::to_string(b)?);
                } else {
                    println!(
                        "{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        &fmt_ms(Some(b.minute_ms))[..5],
                        b.submitted,
                        b.started,
                        b.completed,
                        b.failed,
                        b.retried,
                        b.dead,
                        b.executing.map(|e| e.to_string()).unwrap_or("-".into())
                    );
                }
            }
            let exec = records::executing(con, keys, &queue).await?;
            eprintln!("executing now: {exec}");
        }
    }
    Ok(())
}

/// Execute a `dead-letters` action (shared with the kubectl plugin). `purge` without `--yes`
/// asks on stdin, and refuses when stdin is not a terminal.
pub async fn dead_letters_command<C>(
    con: &mut C,
    keys: &Keys,
    action: DeadLettersAction,
) -> anyhow::Result<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    use crate::records;
    use std::io::IsTerminal as _;
    match action {
        DeadLettersAction::List { select, json } => {
            let sel = select.selector(true)?;
            let list = records::dead_letters(con, keys, &select.queue, &sel).await?;
            for (raw, env) in &list {
                match (json, env) {
                    (true, _) | (false, None) => println!("{raw}"),
                    (false, Some(e)) => println!(
                        "{:<40} {:<16} attempt {:>2}  {}",
                        e.id,
                        e.func,
                        e.attempt,
                        e.error.as_deref().unwrap_or("")
                    ),
                }
            }
            eprintln!("{} dead letter(s) in {}", list.len(), select.queue);
        }
        DeadLettersAction::Requeue { select } => {
            let sel = select.selector(false)?;
            let n = records::requeue_dead(con, keys, &select.queue, &sel).await?;
            println!("requeued {n} dead letter(s) into {}", select.queue);
        }
        DeadLettersAction::Purge { select, yes } => {
            let sel = select.selector(false)?;
            if !yes {
                let stdin = std::io::stdin();
                anyhow::ensure!(
                    stdin.is_terminal(),
                    "refusing to purge without confirmation: stdin is not a terminal; pass --yes"
                );
                let n = records::dead_letters(con, keys, &select.queue, &sel)
                    .await?
                    .len();
                eprint!("purge {n} dead letter(s) of {}? [y/N] ", select.queue);
                let mut line = String::new();
                stdin.read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    anyhow::bail!("not confirmed; nothing purged");
                }
            }
            let n = records::purge_dead(con, keys, &select.queue, &sel).await?;
            println!("purged {n} dead letter(s) of {}", select.queue);
        }
    }
    Ok(())
}

/// An outbox entry as one JSON object: the item's fields (`url`, `attempt`, `body`, `error`
/// of a URL delivery; `queue`, `func`, `env`, and `attempt`, `error` once a forward failed, of
/// a delivery to a queue), `due_ms` for a pending
/// one, `outbox` (the key holding it); a malformed entry as `{"malformed": true, "raw": …}`.
fn outbox_json(l: &crate::outbox::Listed) -> serde_json::Value {
    match &l.item {
        Some(item) => {
            let mut v = serde_json::to_value(item).expect("an outbox item serializes");
            if let Some(due) = l.due_ms {
                v["due_ms"] = due.into();
            }
            v["outbox"] = l.outbox.pending.clone().into();
            v
        }
        None => serde_json::json!({"malformed": true, "raw": l.raw, "outbox": l.outbox.pending}),
    }
}

/// Execute an `outbox` action (shared with the kubectl plugin). `purge` without `--yes` asks
/// on stdin, and refuses when stdin is not a terminal.
pub async fn outbox_command(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
    action: OutboxAction,
) -> anyhow::Result<()> {
    use crate::outbox;
    use crate::records::Selector;
    use std::io::IsTerminal as _;
    match action {
        OutboxAction::List {
            dead,
            id_prefix,
            json,
        } => {
            let sel = id_prefix.map_or(Selector::All, Selector::Prefix);
            let list = if dead {
                outbox::parked(con, keys, &sel).await?
            } else {
                outbox::pending(con, keys, &sel).await?
            };
            if !json {
                println!(
                    "{:<44} {:>3} {:>12}  {:<40}  ERROR",
                    "ID",
                    "ATT",
                    if dead { "" } else { "DUE(UTC)" },
                    "DESTINATION"
                );
            }
            for l in &list {
                match (&l.item, json) {
                    (_, true) => println!("{}", outbox_json(l)),
                    (None, false) => println!("(malformed) {}", l.raw),
                    (Some(i), false) => {
                        let (attempt, error) = (i.attempt(), i.error().unwrap_or(""));
                        println!(
                            "{:<44} {:>3} {:>12}  {:<40}  {}",
                            i.id(),
                            attempt,
                            if dead {
                                String::new()
                            } else {
                                fmt_ms(l.due_ms)
                            },
                            i.target(),
                            error.chars().take(80).collect::<String>()
                        )
                    }
                }
            }
            eprintln!(
                "{} {} deliver(ies)",
                list.len(),
                if dead { "parked" } else { "pending" }
            );
        }
        OutboxAction::Requeue { select } => {
            let sel = select.selector()?;
            let n = outbox::requeue_parked(con, keys, &sel).await?;
            println!("requeued {n} parked deliver(ies) into their outbox");
        }
        OutboxAction::Purge { select, yes } => {
            let sel = select.selector()?;
            if !yes {
                let stdin = std::io::stdin();
                anyhow::ensure!(
                    stdin.is_terminal(),
                    "refusing to purge without confirmation: stdin is not a terminal; pass --yes"
                );
                let n = outbox::parked(con, keys, &sel).await?.len();
                eprint!("purge {n} parked deliver(ies)? [y/N] ");
                let mut line = String::new();
                stdin.read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    anyhow::bail!("not confirmed; nothing purged");
                }
            }
            let n = outbox::purge_parked(con, keys, &sel).await?;
            println!("purged {n} parked deliver(ies)");
        }
    }
    Ok(())
}

/// Parse `500ms`, `30s`, `2m`, `1h` or a plain number of seconds (may be fractional): the
/// protocol's one parser, which the operator's flags use too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    funcscale_protocol::duration::parse(s).map_err(|e| e.to_string())
}

/// `run` arguments.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Queues to consume, comma-separated.
    #[arg(long, env = "FUNCSCALE_QUEUES", value_delimiter = ',', required = true)]
    pub queues: Vec<String>,
    /// Concurrent executions (the pod's processes).
    #[arg(long, env = "FUNCSCALE_PROCESSES", default_value_t = 5)]
    pub processes: usize,
    /// Order between queues.
    #[arg(long, value_enum, default_value_t = Order::Fair)]
    pub order: Order,
    /// `builtin`, `exec:<command>` (a child per task), `pool:<command>` (a long-lived child
    /// per process, JSON lines) or `http:<url>`.
    #[arg(long, env = "FUNCSCALE_HANDLER", default_value = "builtin", value_parser = Handler::parse)]
    pub handler: Handler,
    /// Time given to running tasks on SIGTERM before they are put back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Default soft time limit per task (a task's own limit wins).
    #[arg(long, value_parser = parse_duration)]
    pub soft_time_limit: Option<Duration>,
    /// Default hard time limit per task (a task's own limit wins).
    #[arg(long, value_parser = parse_duration)]
    pub hard_time_limit: Option<Duration>,
    /// Resident memory limit of an `exec`/`pool` child in MiB; the child is killed and the attempt fails.
    #[arg(long)]
    pub max_memory_per_child_mb: Option<u64>,
    /// Tasks after which a `pool` child is replaced.
    #[arg(long)]
    pub max_tasks_per_child: Option<u64>,
    /// First retry delay (doubles per attempt, ±50% jitter).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Heartbeat age after which a worker's in-flight tasks are recovered.
    #[arg(long, default_value_t = protocol::WORKER_TTL_MS)]
    pub worker_ttl_ms: u64,
    /// Worker name (default: host-pid-random).
    #[arg(long, env = "FUNCSCALE_WORKER_NAME")]
    pub name: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FUNCSCALE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Write task records (`on`) or not (`off`; outcome counts and destinations go on).
    #[arg(long, env = "FUNCSCALE_RECORDS", default_value = "on", value_parser = ["on", "off"])]
    pub records: String,
    /// Name of the pod the worker runs in (the operator sets it from the downward API). With
    /// `--pod-namespace`, the worker names its pod in Redis (so the operator can count each
    /// pod's running tasks) and obeys the pod's stop mark: while a scale-down marks the pod, it
    /// takes no new task and `/readyz` answers 503.
    #[arg(long, env = "FUNCSCALE_POD_NAME", requires = "pod_namespace")]
    pub pod_name: Option<String>,
    /// Namespace of the pod the worker runs in (see `--pod-name`).
    #[arg(long, env = "FUNCSCALE_POD_NAMESPACE", requires = "pod_name")]
    pub pod_namespace: Option<String>,
}

/// `enqueue` arguments.
#[derive(Args, Debug)]
pub struct EnqueueArgs {
    /// Queue.
    #[arg(long)]
    pub queue: String,
    /// Function name.
    #[arg(long)]
    pub func: String,
    /// Positional arguments (JSON array).
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments (JSON object).
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Task id (with --count, ids are `<id>-<n>`); default: random.
    #[arg(long)]
    pub id: Option<String>,
    /// Number of tasks.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Retries after the first attempt. Default: the queue's `maxRetries` (3 when the queue
    /// sets none).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Soft time limit in seconds.
    #[arg(long)]
    pub soft_timeout: Option<u32>,
    /// Hard time limit in seconds.
    #[arg(long)]
    pub hard_timeout: Option<u32>,
    /// Trace id.
    #[arg(long)]
    pub trace_id: Option<String>,
}

/// `schedules` actions.
#[derive(Subcommand, Debug)]
pub enum SchedulesAction {
    /// Add or replace schedules.
    Add {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// Schedule id (with --count, ids are `<id>-<n>`).
        #[arg(long)]
        id: String,
        /// Cron expression (5 fields, or 6 with seconds first).
        #[arg(long)]
        cron: String,
        /// Function name.
        #[arg(long)]
        func: String,
        /// Positional arguments (JSON array).
        #[arg(long, default_value = "[]")]
        args: String,
        /// Register this many schedules at once (load tests).
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Remove schedules.
    Remove {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// Schedule ids.
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        /// Treat the id as a prefix and remove `<id>-0 .. <id>-<count-1>`.
        #[arg(long)]
        count: Option<u64>,
    },
    /// List schedules (one JSON object per line) and the executions per minute.
    List {
        /// Queue.
        #[arg(long)]
        queue: String,
    },
}

/// `beat` arguments.
#[derive(Args, Debug)]
pub struct BeatArgs {
    /// Multi-document YAML of FuncQueue manifests; re-read when it changes.
    #[arg(long, env = "FUNCSCALE_SCHEDULES_FILE")]
    pub schedules_file: Option<PathBuf>,
    /// Do not read the dynamic schedules registry.
    #[arg(long)]
    pub no_registry: bool,
    /// Lease time to live.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// What to do with ticks missed while no beat ran.
    #[arg(long, value_enum, default_value_t = Missed::Skip)]
    pub missed: Missed,
    /// How often the file and the registry are re-read.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Lease holder name (default: host-pid-random).
    #[arg(long)]
    pub holder: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FUNCSCALE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

fn json_arg(s: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(s).with_context(|| format!("{what} must be JSON"))
}

/// The queue names a command line carries (`--queue`, `--queues`).
fn queue_names(command: &mut Command) -> Vec<&mut String> {
    match command {
        Command::Run(a) => a.queues.iter_mut().collect(),
        Command::Enqueue(a) => vec![&mut a.queue],
        Command::Schedules { action } => match action {
            SchedulesAction::Add { queue, .. }
            | SchedulesAction::Remove { queue, .. }
            | SchedulesAction::List { queue } => vec![queue],
        },
        Command::Tasks { action } => action.queue_mut().into_iter().collect(),
        Command::DeadLetters { action } => vec![&mut action.select_mut().queue],
        Command::QueueConfig { action } => match action {
            QueueConfigAction::Set { queue, .. } | QueueConfigAction::Show { queue } => {
                vec![queue]
            }
        },
        Command::Beat(_) | Command::Outbox { .. } => vec![],
    }
}

/// Execute a parsed command line.
pub async fn execute(mut cli: Cli) -> anyhow::Result<()> {
    // the namespace's worker registry and outbox (`run` without one: its queues' namespace)
    let keys = Keys::new(cli.redis.prefix.clone()).in_namespace(cli.redis.namespace.clone());
    let redis = cli.redis.clone();
    for q in queue_names(&mut cli.command) {
        *q = redis.queue_id(q);
    }
    match cli.command {
        Command::Run(a) => {
            let config = WorkerConfig {
                redis_url: cli.redis.redis_url.clone(),
                redis_auth: cli.redis.auth.clone(),
                keys,
                queues: a.queues,
                processes: a.processes.max(1),
                order: a.order,
                name: a.name.unwrap_or_else(default_worker_name),
                drain_timeout: a.drain_timeout,
                worker_ttl_ms: a.worker_ttl_ms,
                retry_base_ms: a.retry_base.as_millis() as u64,
                retry_max_ms: a.retry_max.as_millis() as u64,
                soft_time_limit: a.soft_time_limit,
                hard_time_limit: a.hard_time_limit,
                max_memory_per_child_kib: a.max_memory_per_child_mb.map(|m| m * 1024),
                max_tasks_per_child: a.max_tasks_per_child,
                records: a.records == "on",
                pod: a
                    .pod_name
                    .zip(a.pod_namespace)
                    .map(|(name, namespace)| crate::worker::PodRef { namespace, name }),
            };
            let worker = Worker::builder()
                .config(config)
                .handler_kind(a.handler)
                .build()
                .await?;
            let (addr, server) =
                crate::metrics::serve(a.metrics_addr, worker.metrics(), worker.health())
                    .await
                    .with_context(|| format!("binding {}", a.metrics_addr))?;
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            let r = worker.run(shutdown_signal()).await;
            server.abort();
            r
        }
        Command::Enqueue(a) => {
            let args = json_arg(&a.args, "--args")?;
            let kwargs = json_arg(&a.kwargs, "--kwargs")?;
            let mut con = cli.redis.connect().await?;
            let now = now_ms();
            let mut batch = Vec::new();
            let mut total = 0u64;
            let mut len = 0;
            for n in 0..a.count {
                let id = match (&a.id, a.count) {
                    (Some(id), 1) => id.clone(),
                    (Some(id), _) => format!("{id}-{n}"),
                    (None, _) => uuid::Uuid::new_v4().to_string(),
                };
                let mut env = Envelope::new(id, &a.func, &a.queue, now);
                env.args = args.clone();
                env.kwargs = kwargs.clone();
                env.max_retries = a.max_retries;
                env.soft_timeout_s = a.soft_timeout;
                env.hard_timeout_s = a.hard_timeout;
                env.trace_id = a.trace_id.clone();
                batch.push(env);
                if batch.len() == 50_000 {
                    len = protocol::enqueue(&mut con, &keys, &a.queue, &batch).await?;
                    total += batch.len() as u64;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                len = protocol::enqueue(&mut con, &keys, &a.queue, &batch).await?;
                total += batch.len() as u64;
            }
            println!(
                "enqueued {total} task(s) into {}; queue length {len}",
                a.queue
            );
            Ok(())
        }
        Command::Schedules { action } => {
            let mut con = cli.redis.connect().await?;
            match action {
                SchedulesAction::Add {
                    queue,
                    id,
                    cron,
                    func,
                    args,
                    count,
                } => {
                    let per_minute = Cron::parse(&cron)?.per_minute();
                    let entry = ScheduleEntry {
                        cron,
                        func,
                        args: json_arg(&args, "--args")?,
                    };
                    let entries: Vec<_> = (0..count)
                        .map(|n| {
                            let id = if count == 1 {
                                id.clone()
                            } else {
                                format!("{id}-{n}")
                            };
                            (id, entry.clone(), per_minute)
                        })
                        .collect();
                    let len = protocol::schedules_add(&mut con, &keys, &queue, &entries).await?;
                    let m: String = redis::cmd("GET")
                        .arg(keys.schedules_per_period(&queue))
                        .query_async(&mut con)
                        .await?;
                    println!(
                        "added {count} schedule(s) to {queue}; registry size {len}; executions per minute {m}"
                    );
                }
                SchedulesAction::Remove { queue, ids, count } => {
                    let ids: Vec<String> = match count {
                        Some(c) => ids
                            .iter()
                            .flat_map(|id| (0..c).map(move |n| format!("{id}-{n}")))
                            .collect(),
                        None => ids,
                    };
                    let n = protocol::schedules_remove(&mut con, &keys, &queue, &ids).await?;
                    println!("removed {n} schedule(s) from {queue}");
                }
                SchedulesAction::List { queue } => {
                    let list = protocol::schedules_list(&mut con, &keys, &queue).await?;
                    for (id, e) in &list {
                        println!(
                            "{}",
                            serde_json::json!({"id": id, "cron": e.cron, "func": e.func, "args": e.args})
                        );
                    }
                    let m: Option<String> = redis::cmd("GET")
                        .arg(keys.schedules_per_period(&queue))
                        .query_async(&mut con)
                        .await?;
                    eprintln!(
                        "{} schedule(s); executions per minute {}",
                        list.len(),
                        m.unwrap_or_else(|| "0".into())
                    );
                }
            }
            Ok(())
        }
        Command::Tasks { action } => {
            let mut con = cli.redis.connect().await?;
            tasks_command(&mut con, &keys, action).await
        }
        Command::DeadLetters { action } => {
            let mut con = cli.redis.connect().await?;
            dead_letters_command(&mut con, &keys, action).await
        }
        Command::Outbox { action } => {
            let mut con = cli.redis.connect().await?;
            outbox_command(&mut con, &keys, action).await
        }
        Command::QueueConfig { action } => {
            let mut con = cli.redis.connect().await?;
            let queue = match action {
                QueueConfigAction::Set {
                    queue,
                    record_max_age,
                    record_max_count,
                    on_success,
                    on_failure,
                    clear,
                } => {
                    let config = protocol::QueueConfig {
                        record_max_age_ms: record_max_age.map(|d| d.as_millis() as u64),
                        record_max_count,
                        on_success: on_success.map(|d| d.resolve_queue(|q| redis.queue_id(q))),
                        on_failure: on_failure.map(|d| d.resolve_queue(|q| redis.queue_id(q))),
                        ..Default::default()
                    };
                    let clear: Vec<&str> = clear.iter().map(String::as_str).collect();
                    protocol::queue_config_set(&mut con, &keys, &queue, &config, &clear).await?;
                    queue
                }
                QueueConfigAction::Show { queue } => queue,
            };
            let c = protocol::queue_config_get(&mut con, &keys, &queue).await?;
            println!(
                "{}",
                serde_json::json!({
                    "queue": queue,
                    "record_max_age_ms": c.record_max_age_ms.unwrap_or(protocol::RECORD_MAX_AGE_MS),
                    "record_max_count": c.record_max_count.unwrap_or(protocol::RECORD_MAX_COUNT),
                    "on_success": c.on_success.map(|d| d.to_text()),
                    "on_failure": c.on_failure.map(|d| d.to_text()),
                    "max_retries": c.max_retries,
                    "retry_backoff_base_ms": c.retry_backoff_base_ms,
                    "retry_backoff_max_ms": c.retry_backoff_max_ms,
                })
            );
            Ok(())
        }
        Command::Beat(a) => {
            let config = BeatConfig {
                redis_url: cli.redis.redis_url.clone(),
                redis_auth: cli.redis.auth.clone(),
                keys,
                namespace: cli.redis.namespace.clone(),
                schedules_file: a.schedules_file,
                registry: !a.no_registry,
                holder: a.holder.unwrap_or_else(default_worker_name),
                lease_ttl: a.lease_ttl,
                missed: a.missed,
                reload_interval: a.reload_interval,
            };
            let beat = Beat::new(config).await?;
            let (addr, server) =
                crate::metrics::serve(a.metrics_addr, beat.metrics(), beat.health())
                    .await
                    .with_context(|| format!("binding {}", a.metrics_addr))?;
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            let r = beat.run(shutdown_signal()).await;
            server.abort();
            r
        }
    }
}

/// Install the log subscriber: `RUST_LOG` filter (default `info`), JSON when
/// `FUNCSCALE_LOG_FORMAT=json`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FUNCSCALE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1_500));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "fw",
            "run",
            "--queues",
            "a,b",
            "--processes",
            "3",
            "--handler",
            "exec:cat",
            "--order",
            "priority",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.queues, ["a", "b"]);
        assert!(matches!(r.handler, Handler::Exec(ref c) if c == "cat"));
    }

    #[test]
    fn dead_letters_requeue_and_purge_insist_on_a_selection_before_connecting() {
        for action in ["requeue", "purge"] {
            let e =
                Cli::try_parse_from(["fw", "dead-letters", action, "--queue", "q"]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{action}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("--id") && msg.contains("--id-prefix") && msg.contains("--all"),
                "{msg}"
            );
        }
        // list defaults to every dead letter
        assert!(Cli::try_parse_from(["fw", "dead-letters", "list", "--queue", "q"]).is_ok());
    }

    #[test]
    fn outbox_requeue_and_purge_insist_on_exactly_one_selection() {
        for action in ["requeue", "purge"] {
            let e = Cli::try_parse_from(["fw", "outbox", action]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(
                msg.contains("--id") && msg.contains("--id-prefix") && msg.contains("--all"),
                "{msg}"
            );
            let e = Cli::try_parse_from(["fw", "outbox", action, "--all", "--id-prefix", "t"])
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        let cli = Cli::try_parse_from([
            "fw",
            "outbox",
            "requeue",
            "--id",
            "a:success",
            "--id",
            "b:failure",
        ])
        .unwrap();
        let Command::Outbox {
            action: OutboxAction::Requeue { select },
        } = cli.command
        else {
            panic!()
        };
        assert!(matches!(
            select.selector().unwrap(),
            crate::records::Selector::Ids(ref ids) if ids == &["a:success", "b:failure"]
        ));
        assert!(OutboxSelect::default().selector().is_err());
        let cli = Cli::try_parse_from(["fw", "outbox", "list", "--dead", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Outbox {
                action: OutboxAction::List {
                    dead: true,
                    json: true,
                    id_prefix: None
                }
            }
        ));
    }
}

//! The beat: enqueues cron-triggered tasks, exactly one firing per tick across beats.
//!
//! - Schedules come from a multi-document YAML file of `FuncQueue` manifests (re-read when it
//!   changes) and from the dynamic registry in Redis (re-read periodically).
//! - A beat belongs to one namespace (`--namespace`; the operator sets it): it fires only the
//!   schedules of that namespace's queues, under that namespace's lease, so each tenant on a
//!   shared Redis has its own beat. Without a namespace it fires every queue's schedules under
//!   the one lease of earlier versions.
//! - A beat fires only while it holds the lease (`Keys::beat_lease`, value
//!   `<holder> <token>`, token from `Keys::beat_fence`). It renews every TTL/3 and stops
//!   firing as soon as the last successful renewal is older than TTL/2, so it has stopped
//!   well before the lease can expire and another beat take it.
//! - Firing touches one slot per call (Redis Cluster): the due ticks are grouped by queue; for
//!   each queue (a bounded number concurrently) the beat renews the lease (`lease_renew`, the
//!   namespace's slot) and then sends one pipeline of `beat_fire` calls (the queue's slot;
//!   5,000 ticks per pipeline, renewing again before the next). A lost lease stops the firing.
//! - `beat_fire` checks the fencing token against field `_fence` of the queue's
//!   `Keys::beat_last` (refused when older: a newer holder already fired this queue, so a
//!   beat paused between its renewal and its pipeline is stopped there; else the token is
//!   stored) and fires only ticks newer than the schedule's last fired one, recording the
//!   tick and enqueueing in the same script: a tick is enqueued at most once, whichever beat
//!   sends it, even across a failover.
//! - After acquiring the lease a beat re-evaluates the last `TTL + 2 s` (ticks a crashed
//!   holder may have missed; already fired ones are refused by the script). Older missed
//!   ticks are skipped, or with `--missed catch-up-once` the latest missed tick of each
//!   schedule is fired once.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use redis::AsyncCommands;
use serde::Deserialize;

use crate::protocol::{self, Envelope, Keys, scripts};
use crate::worker::{RedisAuth, now_ms};
use funcscale_protocol::cron::Cron;

/// What to do with ticks missed while no beat was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Missed {
    /// Drop them.
    #[default]
    Skip,
    /// Fire the latest missed tick of each schedule once.
    CatchUpOnce,
}

/// Settings of a beat.
#[derive(Clone, Debug)]
pub struct BeatConfig {
    /// Redis URL.
    pub redis_url: String,
    /// Username and password given apart from the URL (they replace the URL's).
    pub redis_auth: RedisAuth,
    /// Key prefix.
    pub keys: Keys,
    /// Namespace whose schedules this beat fires (and whose lease it holds); `None`: every
    /// queue's, under the shared lease of earlier versions.
    pub namespace: Option<String>,
    /// YAML file of FuncQueue manifests.
    pub schedules_file: Option<PathBuf>,
    /// Read the dynamic registry in Redis.
    pub registry: bool,
    /// Lease holder name.
    pub holder: String,
    /// Lease time to live.
    pub lease_ttl: Duration,
    /// Missed-tick policy.
    pub missed: Missed,
    /// How often the file and the registry are re-read.
    pub reload_interval: Duration,
}

impl Default for BeatConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_auth: RedisAuth::default(),
            keys: Keys::default(),
            namespace: None,
            schedules_file: None,
            registry: true,
            holder: crate::worker::default_worker_name(),
            lease_ttl: Duration::from_secs(10),
            missed: Missed::Skip,
            reload_interval: Duration::from_secs(10),
        }
    }
}

/// One schedule the beat fires.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Queue to enqueue into (its id, [`Keys::queue_id`], or a legacy bare name).
    pub queue: String,
    /// Field in `Keys::beat_last(queue)`: `file:<name>` or `reg:<id>`.
    pub field: String,
    /// Cron expression text.
    pub cron: String,
    /// Function.
    pub func: String,
    /// Positional arguments.
    pub args: serde_json::Value,
    /// Retries allowed; `None`: the queue's setting.
    pub max_retries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    kind: Option<String>,
    metadata: Option<Meta>,
    #[serde(default)]
    spec: Option<QueueSpec>,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueSpec {
    #[serde(default)]
    schedules: Vec<FileSchedule>,
    max_retries: Option<u32>,
    #[serde(default)]
    legacy_keys: bool,
}

#[derive(Deserialize)]
struct FileSchedule {
    name: String,
    cron: String,
    function: String,
    #[serde(default)]
    args: Vec<serde_json::Value>,
}

/// Parse a multi-document YAML of FuncQueue manifests (other kinds are ignored). A queue's
/// id is [`Keys::queue_id`] of its namespace (`metadata.namespace`, else `namespace`) and
/// name, or its bare name with `legacyKeys` or when no namespace is known. With a
/// `namespace`, manifests of other namespaces are refused.
pub fn parse_schedules_yaml(text: &str, namespace: Option<&str>) -> anyhow::Result<Vec<Schedule>> {
    Ok(parse_queues_yaml(text, namespace)?.1)
}

/// [`parse_schedules_yaml`], plus the ids of every queue in the file (scheduled or not).
fn parse_queues_yaml(
    text: &str,
    namespace: Option<&str>,
) -> anyhow::Result<(Vec<String>, Vec<Schedule>)> {
    let mut ids = Vec::new();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).context("YAML")?;
        if value.is_null() {
            continue;
        }
        let m: Manifest = serde_yaml::from_value(value).context("FuncQueue manifest")?;
        if m.kind.as_deref() != Some("FuncQueue") {
            continue;
        }
        let (Some(meta), Some(spec)) = (m.metadata, m.spec) else {
            continue;
        };
        let ns = meta.namespace.as_deref().or(namespace);
        if let (Some(mine), Some(theirs)) = (namespace, meta.namespace.as_deref())
            && mine != theirs
        {
            anyhow::bail!(
                "FuncQueue {theirs}/{}: this beat fires the schedules of namespace {mine} only",
                meta.name
            );
        }
        let id = match ns {
            Some(ns) if !spec.legacy_keys => Keys::queue_id(ns, &meta.name),
            _ => meta.name.clone(),
        };
        ids.push(id.clone());
        for s in spec.schedules {
            // one bad cron costs its own schedule, not the file: the operator flags its
            // FuncQueue (Ready=False, InvalidSpec naming the schedule)
            if let Err(e) = Cron::parse(&s.cron) {
                tracing::error!(queue = %meta.name, schedule = %s.name, cron = %s.cron, error = %e, "schedule skipped: invalid cron");
                continue;
            }
            out.push(Schedule {
                queue: id.clone(),
                field: format!("file:{}", s.name),
                cron: s.cron,
                func: s.function,
                args: serde_json::Value::Array(s.args),
                max_retries: spec.max_retries,
            });
        }
    }
    Ok((ids, out))
}

/// Schedules grouped by cron expression (tens of thousands of entries usually share a few).
#[derive(Default)]
struct Table {
    groups: Vec<(Cron, Vec<Arc<Schedule>>)>,
    len: usize,
}

impl Table {
    fn new(schedules: Vec<Schedule>) -> Self {
        let mut by_cron: HashMap<String, (Cron, Vec<Arc<Schedule>>)> = HashMap::new();
        let len = schedules.len();
        for s in schedules {
            let entry = match by_cron.get_mut(&s.cron) {
                Some(e) => e,
                None => match Cron::parse(&s.cron) {
                    Ok(c) => by_cron.entry(s.cron.clone()).or_insert((c, Vec::new())),
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %s.queue, schedule = %s.field, "skipping a schedule");
                        continue;
                    }
                },
            };
            entry.1.push(Arc::new(s));
        }
        Self {
            groups: by_cron.into_values().collect(),
            len,
        }
    }

    /// Schedules firing in `(from, to]`, with their ticks.
    fn due(&self, from: i64, to: i64) -> Vec<(Arc<Schedule>, i64)> {
        let mut out = Vec::new();
        for t in (from + 1)..=to {
            for (cron, list) in &self.groups {
                if (cron.has_seconds() || t % 60 == 0) && cron.matches(t) {
                    out.extend(list.iter().map(|s| (s.clone(), t)));
                }
            }
        }
        out
    }
}

/// The lease as held.
struct Held {
    value: String,
    token: u64,
    renewed: Instant,
}

/// Metrics of the beat.
#[derive(Clone)]
pub struct BeatMetrics {
    /// The registry served on `/metrics`.
    pub registry: prometheus::Registry,
    /// Ticks enqueued.
    pub fired: prometheus::IntCounter,
    /// 1 while this beat holds the lease and may fire.
    pub leader: prometheus::IntGauge,
}

impl BeatMetrics {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let fired = prometheus::IntCounter::new(
            "funcscale_beat_ticks_fired_total",
            "Schedule ticks enqueued",
        )
        .expect("valid metric");
        let leader =
            prometheus::IntGauge::new("funcscale_beat_leader", "1 while this beat holds the lease")
                .expect("valid metric");
        registry
            .register(Box::new(fired.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(leader.clone()))
            .expect("unique metric");
        Self {
            registry,
            fired,
            leader,
        }
    }
}

impl From<BeatMetrics> for prometheus::Registry {
    fn from(m: BeatMetrics) -> Self {
        m.registry
    }
}

/// The cron trigger.
pub struct Beat {
    config: BeatConfig,
    redis: funcscale_connect::Conn,
    metrics: BeatMetrics,
    file: Table,
    file_text: Option<String>,
    /// Ids of the queues in the file (a namespaced beat fires the registry of these legacy
    /// queues too).
    file_queues: Vec<String>,
    registry: Table,
    fired: u64,
    /// The highest queue fence this beat was refused by: its next lease takes at least that
    /// token, so a counter that lags the fences (its node failed over) catches up in one step.
    fence_seen: std::sync::atomic::AtomicU64,
}

impl Beat {
    /// Connect and build a beat.
    pub async fn new(config: BeatConfig) -> anyhow::Result<Self> {
        let mut redis = config.redis_auth.connect(&config.redis_url).await?;
        // the lease, the fence counter and the schedules' queue set are keys of the
        // namespace's hash tag `{ns}`; without one they are untagged, in several hash slots
        if redis.is_cluster() && config.namespace.is_none() {
            anyhow::bail!(
                "{}: the beat on a Redis Cluster needs a namespace: set --namespace / \
                 FUNCSCALE_NAMESPACE (its lease and fence keys need the {{<namespace>}} hash tag)",
                redis.describe()
            );
        }
        let ns = config.namespace.as_deref();
        let lease = [config.keys.beat_lease(ns), config.keys.beat_fence(ns)];
        RedisAuth::check_keys(&mut redis, &lease).await?;
        Ok(Self {
            config,
            redis,
            metrics: BeatMetrics::new(),
            file: Table::default(),
            file_text: None,
            file_queues: Vec::new(),
            registry: Table::default(),
            fired: 0,
            fence_seen: Default::default(),
        })
    }

    /// The beat's metrics.
    pub fn metrics(&self) -> BeatMetrics {
        self.metrics.clone()
    }

    /// Health for `/readyz` (Redis reachable).
    pub fn health(&self) -> crate::metrics::Health {
        crate::metrics::health(self.redis.clone(), None)
    }

    fn reload_file(&mut self) {
        let Some(path) = &self.config.schedules_file else {
            return;
        };
        match std::fs::read_to_string(path) {
            Ok(text) if Some(&text) != self.file_text.as_ref() => {
                match parse_queues_yaml(&text, self.config.namespace.as_deref()) {
                    Ok((ids, list)) => {
                        tracing::info!(path = %path.display(), schedules = list.len(), "schedules file loaded");
                        self.file = Table::new(list);
                        self.file_queues = ids;
                        self.file_text = Some(text);
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "schedules file rejected; keeping the previous one")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot read the schedules file")
            }
        }
    }

    async fn reload_registry(&mut self) -> redis::RedisResult<()> {
        if !self.config.registry {
            return Ok(());
        }
        let keys = &self.config.keys;
        let mut con = self.redis.clone();
        // the namespace's own set, and the shared one of earlier versions and of queues
        // whose id names no namespace (`legacyKeys` queues: those of the schedules file)
        let mut queues: Vec<String> = con.smembers(keys.schedule_queues(None)).await?;
        if let Some(ns) = self.config.namespace.as_deref() {
            let own: Vec<String> = con.smembers(keys.schedule_queues(Some(ns))).await?;
            queues.extend(own);
            queues.sort();
            queues.dedup();
        }
        let mut list = Vec::new();
        for q in queues.into_iter().filter(|q| self.fires_registry_of(q)) {
            // a removal leaves the queue in the set (see `funcscale_protocol::schedules`): its
            // emptied registry lists nothing
            for (id, e) in protocol::schedules_list(&mut con, keys, &q).await? {
                list.push(Schedule {
                    queue: q.clone(),
                    field: format!("reg:{id}"),
                    cron: e.cron,
                    func: e.func,
                    args: e.args,
                    max_retries: None,
                });
            }
        }
        if list.len() != self.registry.len {
            tracing::info!(schedules = list.len(), "registry loaded");
        }
        self.registry = Table::new(list);
        Ok(())
    }

    /// Whether this beat fires the registry of queue `id`: every queue without a namespace;
    /// else the queues of its namespace, and the legacy queues its file names.
    fn fires_registry_of(&self, id: &str) -> bool {
        match (&self.config.namespace, Keys::queue_id_namespace(id)) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => self.file_queues.iter().any(|q| q == id),
        }
    }

    fn lease_ttl_ms(&self) -> u64 {
        self.config.lease_ttl.as_millis() as u64
    }

    async fn try_acquire(&self) -> redis::RedisResult<Option<Held>> {
        let keys = &self.config.keys;
        let mut con = self.redis.clone();
        let before = Instant::now();
        let token: Option<u64> = redis::Script::new(scripts::LEASE_ACQUIRE)
            .key(keys.beat_lease(self.config.namespace.as_deref()))
            .key(keys.beat_fence(self.config.namespace.as_deref()))
            .arg(&self.config.holder)
            .arg(self.lease_ttl_ms())
            .arg(self.fence_seen.load(std::sync::atomic::Ordering::Relaxed))
            .invoke_async(&mut con)
            .await?;
        Ok(token.map(|token| Held {
            value: format!("{} {token}", self.config.holder),
            token,
            renewed: before,
        }))
    }

    /// Whether the lease is still safe to fire under: renewed within TTL/2.
    fn may_fire(&self, held: &Held) -> bool {
        held.renewed.elapsed() < self.config.lease_ttl / 2
    }

    /// Run until `shutdown` resolves; releases the lease on the way out.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let ttl = self.config.lease_ttl;
        let mut held: Option<Held> = None;
        let mut cursor: i64 = 0;
        let mut last_reload: Option<Instant> = None;
        let mut last_renew = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            if last_reload.is_none_or(|t| t.elapsed() >= self.config.reload_interval) {
                self.reload_file();
                if let Err(e) = self.reload_registry().await {
                    tracing::warn!(error = %e, "reading the schedules registry failed");
                }
                last_reload = Some(Instant::now());
            }
            let now_s = (now_ms() / 1000) as i64;
            self.metrics
                .leader
                .set(i64::from(held.as_ref().is_some_and(|h| self.may_fire(h))));
            match &mut held {
                None => match self.try_acquire().await {
                    Ok(Some(h)) => {
                        tracing::info!(holder = %self.config.holder, token = h.token, "beat lease acquired");
                        let grace = ttl.as_secs() as i64 + 2;
                        cursor = now_s - grace;
                        let mut kept = true;
                        if self.config.missed == Missed::CatchUpOnce {
                            match self.catch_up(&h, now_s - grace).await {
                                Ok(k) => kept = k,
                                Err(e) => {
                                    tracing::warn!(error = %e, "catching up missed ticks failed")
                                }
                            }
                        }
                        if kept {
                            last_renew = h.renewed;
                            held = Some(h);
                        } else {
                            // refused while catching up: as when firing (below)
                            tracing::warn!(token = h.token, "beat lease lost while catching up");
                            let _ = self.release(&h.value).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "acquiring the beat lease failed"),
                },
                Some(h) => {
                    if last_renew.elapsed() >= ttl / 3 {
                        let before = Instant::now();
                        let renewed = self.renew(&h.value).await;
                        last_renew = before;
                        match renewed {
                            Ok(true) => h.renewed = before,
                            Ok(false) => {
                                tracing::warn!(token = h.token, "beat lease lost");
                                held = None;
                                continue;
                            }
                            Err(e) => tracing::warn!(error = %e, "renewing the beat lease failed"),
                        }
                    }
                    let Some(h) = held.as_ref() else { continue };
                    if !self.may_fire(h) {
                        // Renewal overdue: another beat may take over; do not fire.
                        continue;
                    }
                    if now_s > cursor {
                        // Never look further back than the failover window (bounded work after a stall;
                        // older ticks count as missed).
                        let from = cursor.max(now_s - (ttl.as_secs() as i64 + 2));
                        match self.fire(h, from, now_s).await {
                            Ok(true) => cursor = now_s,
                            Ok(false) => {
                                tracing::warn!(token = h.token, "beat lease lost while firing");
                                // A queue's fence refused the token while the lease may still
                                // be ours: the token counter lags that queue's fence (a token
                                // of the counter's master lost in a failover). Give the lease
                                // up (a no-op when another holder has it): the next acquire
                                // takes a new, higher token.
                                let _ = self.release(&h.value).await;
                                held = None;
                            }
                            Err(e) => tracing::warn!(error = %e, "firing failed; will retry"),
                        }
                    }
                }
            }
        }
        if let Some(h) = held {
            let _ = self.release(&h.value).await;
            tracing::info!(fired = self.fired, "beat lease released");
        }
        self.metrics.leader.set(0);
        Ok(())
    }

    /// Fire the latest missed tick (before `before`) of every schedule that has fired before.
    /// Ok(false) when the lease turned out not to be ours (as [`Self::fire`]).
    async fn catch_up(&mut self, held: &Held, before: i64) -> anyhow::Result<bool> {
        let mut con = self.redis.clone();
        let mut lasts: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut due = Vec::new();
        for table in [&self.file, &self.registry] {
            for (cron, list) in &table.groups {
                for s in list {
                    if !lasts.contains_key(&s.queue) {
                        let m: HashMap<String, i64> =
                            con.hgetall(self.config.keys.beat_last(&s.queue)).await?;
                        lasts.insert(s.queue.clone(), m);
                    }
                    let Some(last) = lasts.get(&s.queue).and_then(|m| m.get(&s.field)).copied()
                    else {
                        continue;
                    };
                    if let Some(t) = cron.latest_in(last, before, 7 * 86_400) {
                        due.push((s.clone(), t));
                    }
                }
            }
        }
        if due.is_empty() {
            return Ok(true);
        }
        tracing::info!(count = due.len(), "catching up missed ticks once");
        Ok(self.enqueue_due(held, due).await?)
    }

    /// Fire everything due in `(from, to]`. Ok(false) when the lease turned out not to be ours.
    async fn fire(&mut self, held: &Held, from: i64, to: i64) -> redis::RedisResult<bool> {
        let mut due = self.file.due(from, to);
        due.extend(self.registry.due(from, to));
        if due.is_empty() {
            return Ok(true);
        }
        self.enqueue_due(held, due).await
    }

    async fn enqueue_due(
        &mut self,
        held: &Held,
        due: Vec<(Arc<Schedule>, i64)>,
    ) -> redis::RedisResult<bool> {
        let mut by_queue: HashMap<String, Vec<(Arc<Schedule>, i64)>> = HashMap::new();
        for d in due {
            by_queue.entry(d.0.queue.clone()).or_default().push(d);
        }
        let script = protocol::beat_fire_script();
        let now = now_ms();
        let lost = std::sync::atomic::AtomicBool::new(false);
        let this = &*self;
        // one queue's ticks touch its slot only (one pipeline per queue on Redis Cluster);
        // queues are sent concurrently, a bounded number at a time
        let firings: Vec<_> = by_queue
            .iter()
            .map(|(queue, list)| this.fire_queue(held, &script, queue, list, now, &lost))
            .collect();
        let outcomes: Vec<QueueFired> = futures::stream::iter(firings)
            .buffer_unordered(QUEUES_IN_FLIGHT)
            .collect()
            .await;
        let n: u64 = outcomes.iter().map(|o| o.enqueued).sum();
        self.fired += n;
        self.metrics.fired.inc_by(n);
        if n > 0 {
            tracing::debug!(enqueued = n, "ticks fired");
        }
        if lost.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        match outcomes.into_iter().find_map(|o| o.error) {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Fire the due ticks of one queue: for each pipeline (SCRIPT LOAD and up to
    /// [`CHUNKS_PER_PIPELINE`] `beat_fire` calls of [`TICKS_PER_CALL`] ticks, all in the
    /// queue's slot), first renew the lease (`lease_renew`, the namespace's slot): a lost lease
    /// stops this and every other queue of the firing. A `beat_fire` refused by the queue's
    /// fence (a negative reply, minus the newer holder's token) stops it too.
    async fn fire_queue(
        &self,
        held: &Held,
        script: &redis::Script,
        queue: &str,
        list: &[(Arc<Schedule>, i64)],
        now: u64,
        lost: &std::sync::atomic::AtomicBool,
    ) -> QueueFired {
        use std::sync::atomic::Ordering;
        let keys = &self.config.keys;
        let mut out = QueueFired::default();
        let mut con = self.redis.clone();
        for calls in list.chunks(TICKS_PER_CALL * CHUNKS_PER_PIPELINE) {
            if lost.load(Ordering::Relaxed) {
                break;
            }
            match self.renew(&held.value).await {
                Ok(true) => {}
                Ok(false) => {
                    lost.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
            let mut pipe = redis::pipe();
            pipe.load_script(script).ignore();
            for chunk in calls.chunks(TICKS_PER_CALL) {
                let envs: Vec<Envelope> = chunk
                    .iter()
                    .map(|(s, tick)| {
                        let mut env = Envelope::new(
                            format!("{}/{}@{tick}", s.queue, s.field),
                            &s.func,
                            &s.queue,
                            now,
                        );
                        env.args = s.args.clone();
                        env.max_retries = s.max_retries;
                        env
                    })
                    .collect();
                let ticks = chunk
                    .iter()
                    .zip(&envs)
                    .map(|((s, tick), env)| (s.field.as_str(), *tick, env));
                pipe.invoke_script(&protocol::beat_fire_invocation(
                    script, keys, held.token, queue, now, ticks,
                ));
            }
            match pipe.query_async::<Vec<i64>>(&mut con).await {
                Ok(replies) => {
                    out.enqueued += replies.iter().filter(|r| **r > 0).sum::<i64>() as u64;
                    if let Some(fence) = replies.iter().find(|r| **r < 0) {
                        // the stored token: the next acquire takes at least it
                        let fence = fence.unsigned_abs();
                        self.fence_seen.fetch_max(fence, Ordering::Relaxed);
                        tracing::warn!(
                            queue,
                            token = held.token,
                            fence,
                            "a newer beat fired this queue: this beat lost the lease"
                        );
                        lost.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        out
    }

    /// Give up the lease if `value` still holds it.
    async fn release(&self, value: &str) -> redis::RedisResult<i64> {
        redis::Script::new(scripts::LEASE_RELEASE)
            .key(
                self.config
                    .keys
                    .beat_lease(self.config.namespace.as_deref()),
            )
            .arg(value)
            .invoke_async(&mut self.redis.clone())
            .await
    }

    /// Extend the lease while `value` holds it: Ok(false) when it is lost.
    async fn renew(&self, value: &str) -> redis::RedisResult<bool> {
        let renewed: i64 = redis::Script::new(scripts::LEASE_RENEW)
            .key(
                self.config
                    .keys
                    .beat_lease(self.config.namespace.as_deref()),
            )
            .arg(value)
            .arg(self.lease_ttl_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(renewed == 1)
    }
}

/// Ticks per `beat_fire` call.
const TICKS_PER_CALL: usize = 500;

/// `beat_fire` calls per pipeline (5,000 ticks): each reply comes well within the response
/// timeout however large a queue's tick, and the lease is renewed before each pipeline.
const CHUNKS_PER_PIPELINE: usize = 10;

/// Queues whose ticks are sent at once.
const QUEUES_IN_FLIGHT: usize = 16;

/// What firing one queue did.
#[derive(Default)]
struct QueueFired {
    enqueued: u64,
    error: Option<redis::RedisError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_funcqueue_yaml() {
        let text = r#"
apiVersion: funcscale.dev/v1alpha1
kind: FuncQueue
metadata: {name: q8}
spec:
  maxRetries: 1
  schedules:
    - {name: a, cron: "*/1 * * * *", function: f, args: [1, "x"]}
    - {name: b, cron: "*/10 * * * * *", function: g}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
---
"#;
        let s = parse_schedules_yaml(text, None).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].queue, "q8");
        let namespaced = parse_schedules_yaml(text, Some("a")).unwrap();
        assert_eq!(namespaced[0].queue, Keys::queue_id("a", "q8"));
        let legacy = text.replace("maxRetries: 1", "maxRetries: 1\n  legacyKeys: true");
        assert_eq!(
            parse_schedules_yaml(&legacy, Some("a")).unwrap()[0].queue,
            "q8"
        );
        let other = text.replace("{name: q8}", "{name: q8, namespace: b}");
        assert!(parse_schedules_yaml(&other, Some("a")).is_err());
        assert_eq!(s[0].field, "file:a");
        assert_eq!(s[0].args, serde_json::json!([1, "x"]));
        assert_eq!(s[0].max_retries, Some(1));
        // a bad cron skips its schedule only: the file's other schedules still fire
        let one_bad = parse_schedules_yaml("kind: FuncQueue\nmetadata: {name: q}\nspec: {schedules: [{name: a, cron: bad, function: f}, {name: b, cron: '*/5 * * * *', function: g}]}", None).unwrap();
        assert_eq!(one_bad.len(), 1);
        assert_eq!(one_bad[0].field, "file:b");
        let t = Table::new(s);
        // 60 s from an hour boundary: a fires once (at 60), b six times.
        assert_eq!(t.due(3_600, 3_660).len(), 7);
    }
}

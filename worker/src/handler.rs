//! Task handlers: in-process Rust functions (including the built-ins), `exec` (one child
//! process per task, envelope JSON on stdin, result on stdout), `pool` (one long-lived child
//! per slot speaking JSON lines, replaced after a number of tasks or above a memory limit)
//! and `http` (POST the envelope).
//!
//! Every handler runs under the same limits: a soft time limit (the handler is told: a flag on
//! [`TaskContext`] for Rust handlers, `SIGTERM` for `exec` children, a header for `http`), a
//! hard time limit (the execution is dropped or killed), a memory limit for `exec` children,
//! and cancellation when a drain runs out of time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::protocol::Envelope;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// Human-readable error, stored in the dead letter.
    pub message: String,
    /// False when retrying cannot help (unknown function, malformed arguments).
    pub retryable: bool,
}

impl TaskError {
    /// A retryable failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that goes straight to the dead-letter list.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl<E: std::fmt::Display> From<E> for TaskError {
    fn from(e: E) -> Self {
        Self::new(e.to_string())
    }
}

/// What a handler returns.
pub type TaskResult = Result<Value, TaskError>;

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = TaskResult> + Send>>;

/// An in-process handler.
pub type HandlerFn = Arc<dyn Fn(TaskContext) -> HandlerFuture + Send + Sync>;

/// What an in-process handler gets: the task and a way to learn that its soft time limit passed.
#[derive(Clone)]
pub struct TaskContext {
    /// The task.
    pub envelope: Envelope,
    soft: watch::Receiver<bool>,
    redis: funcscale_connect::Conn,
}

impl TaskContext {
    /// Whether the soft time limit has passed (the handler should wrap up).
    pub fn soft_limit_reached(&self) -> bool {
        *self.soft.borrow()
    }

    /// Resolves when the soft time limit passes (never, without a limit).
    pub async fn soft_limit(&mut self) {
        while !*self.soft.borrow_and_update() {
            if self.soft.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// A connection to the worker's Redis (multiplexed; cheap to clone).
    pub fn redis(&self) -> funcscale_connect::Conn {
        self.redis.clone()
    }

    /// Positional argument `i` of the task, if any.
    pub fn arg(&self, i: usize) -> Option<&Value> {
        self.envelope.args.get(i)
    }
}

/// Limits of one execution.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Soft time limit.
    pub soft: Option<Duration>,
    /// Hard time limit.
    pub hard: Option<Duration>,
    /// Resident memory limit of an `exec` child, in KiB.
    pub max_rss_kib: Option<u64>,
    /// Tasks after which a `pool` child is replaced.
    pub max_tasks_per_child: Option<u64>,
}

/// How one execution ended.
#[derive(Debug)]
pub enum Outcome {
    /// Finished successfully with a result.
    Done(Value),
    /// Failed (including time and memory limits).
    Failed(TaskError),
    /// Stopped because the worker is shutting down: put the task back.
    Cancelled,
}

/// The handler of a worker.
#[derive(Clone)]
pub enum Handler {
    /// In-process functions by name (the built-ins plus any registered).
    Functions(HashMap<String, HandlerFn>),
    /// A command run once per task (through `sh -c`).
    Exec(String),
    /// A URL the envelope is POSTed to.
    Http(String),
    /// Long-lived children (through `sh -c`), one per slot, speaking JSON lines.
    Pool(Arc<Pool>),
}

impl Handler {
    /// Parse `builtin`, `exec:<command>` or `http:<url>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "builtin" {
            Ok(Self::Functions(builtins()))
        } else if let Some(cmd) = s.strip_prefix("exec:") {
            Ok(Self::Exec(cmd.to_string()))
        } else if let Some(cmd) = s.strip_prefix("pool:") {
            Ok(Self::Pool(Arc::new(Pool::new(cmd))))
        } else if let Some(url) = s.strip_prefix("http:") {
            let url = if url.starts_with("//") {
                format!("http:{url}")
            } else {
                url.to_string()
            };
            url.parse::<hyper::Uri>()
                .map_err(|e| format!("bad URL {url:?}: {e}"))?;
            Ok(Self::Http(url))
        } else {
            Err(format!(
                "unknown handler {s:?}; expected builtin, exec:<command>, pool:<command> or http:<url>"
            ))
        }
    }

    /// Run one task under `limits`; `cancel` turning true stops it (drain timeout).
    /// Whether `func` has a handler (always true for `exec`, `pool` and `http`).
    pub fn knows(&self, func: &str) -> bool {
        match self {
            Self::Functions(m) => m.contains_key(func),
            _ => true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &self,
        slot: usize,
        envelope: &Envelope,
        limits: Limits,
        redis: funcscale_connect::Conn,
        http: &HttpClient,
        cancel: watch::Receiver<bool>,
    ) -> Outcome {
        match self {
            Self::Functions(map) => match map.get(&envelope.func) {
                Some(f) => run_function(f.clone(), envelope.clone(), limits, redis, cancel).await,
                None => Outcome::Failed(TaskError::permanent(format!(
                    "unknown function {:?}",
                    envelope.func
                ))),
            },
            Self::Exec(cmd) => run_exec(cmd, envelope, limits, cancel).await,
            Self::Pool(pool) => pool.run(slot, envelope, limits, cancel).await,
            Self::Http(url) => run_http(http, url, envelope, limits, cancel).await,
        }
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Functions(m) => {
                let mut names: Vec<&String> = m.keys().collect();
                names.sort();
                f.debug_tuple("Functions").field(&names).finish()
            }
            Self::Exec(c) => f.debug_tuple("Exec").field(c).finish(),
            Self::Http(u) => f.debug_tuple("Http").field(u).finish(),
            Self::Pool(p) => f.debug_tuple("Pool").field(&p.cmd).finish(),
        }
    }
}

/// Wrap an async closure as a [`HandlerFn`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// The built-in functions, for tests and benchmarks:
/// - `noop`: returns `null`;
/// - `sleep` (args: `[ms]`): sleeps, returning early with an error at the soft limit;
/// - `fail` (args: `[message]`): always fails;
/// - `record` (args: `[set_key, ms?, list_key?]`): adds the task id to a Redis set (and
///   appends it to a list, counting re-executions), then sleeps `ms` — a side effect tests
///   count independently of the worker's own bookkeeping;
/// - `flaky` (args: `[set_key, failures]`): fails its first `failures` attempts (by the
///   envelope's `attempt`), then adds the task id to a Redis set — a retry that is seen
///   to run.
pub fn builtins() -> HashMap<String, HandlerFn> {
    let mut m: HashMap<String, HandlerFn> = HashMap::new();
    m.insert("noop".into(), handler_fn(|_ctx| async { Ok(Value::Null) }));
    m.insert(
        "sleep".into(),
        handler_fn(|mut ctx| async move {
            let ms = ctx.arg(0).and_then(Value::as_u64).unwrap_or(0);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(Value::from(ms)),
                _ = ctx.soft_limit() => Err(TaskError::new("soft time limit exceeded")),
            }
        }),
    );
    m.insert(
        "fail".into(),
        handler_fn(|ctx| async move {
            let msg = ctx
                .arg(0)
                .and_then(Value::as_str)
                .unwrap_or("failed on purpose");
            Err(TaskError::new(msg))
        }),
    );
    m.insert(
        "record".into(),
        handler_fn(|ctx| async move {
            let key = ctx
                .arg(0)
                .and_then(Value::as_str)
                .ok_or_else(|| TaskError::permanent("record: args[0] must be a key"))?;
            let mut con = ctx.redis();
            let _: i64 = redis::cmd("SADD")
                .arg(key)
                .arg(&ctx.envelope.id)
                .query_async(&mut con)
                .await?;
            if let Some(list) = ctx.envelope.args.get(2).and_then(Value::as_str) {
                let _: i64 = redis::cmd("RPUSH")
                    .arg(list)
                    .arg(&ctx.envelope.id)
                    .query_async(&mut con)
                    .await?;
            }
            if let Some(ms) = ctx.envelope.args.get(1).and_then(Value::as_u64) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(Value::Null)
        }),
    );
    m.insert(
        "flaky".into(),
        handler_fn(|ctx| async move {
            let key = ctx
                .arg(0)
                .and_then(Value::as_str)
                .ok_or_else(|| TaskError::permanent("flaky: args[0] must be a key"))?;
            let failures = ctx.arg(1).and_then(Value::as_u64).unwrap_or(1);
            let attempt = u64::from(ctx.envelope.attempt);
            if attempt < failures {
                return Err(TaskError::new(format!(
                    "flaky: attempt {attempt} fails (the first {failures} do)"
                )));
            }
            let mut con = ctx.redis();
            let _: i64 = redis::cmd("SADD")
                .arg(key)
                .arg(&ctx.envelope.id)
                .query_async(&mut con)
                .await?;
            Ok(Value::Null)
        }),
    );
    m
}

async fn run_function(
    f: HandlerFn,
    envelope: Envelope,
    limits: Limits,
    redis: funcscale_connect::Conn,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let (soft_tx, soft_rx) = watch::channel(false);
    let ctx = TaskContext {
        envelope,
        soft: soft_rx,
        redis,
    };
    // Spawned so that a hard limit or a cancellation can drop it wherever it is.
    let mut task = tokio::spawn(f(ctx));
    let soft = sleep_opt(limits.soft);
    let hard = sleep_opt(limits.hard);
    tokio::pin!(soft, hard);
    let mut soft_fired = false;
    loop {
        tokio::select! {
            r = &mut task => return match r {
                Ok(Ok(v)) => Outcome::Done(v),
                Ok(Err(e)) => Outcome::Failed(e),
                Err(e) => Outcome::Failed(TaskError::new(format!("handler panicked: {e}"))),
            },
            _ = &mut soft, if !soft_fired => { soft_fired = true; let _ = soft_tx.send(true); }
            _ = &mut hard => { task.abort(); return Outcome::Failed(TaskError::new("hard time limit exceeded")); }
            _ = wait_true(&mut cancel) => { task.abort(); return Outcome::Cancelled; }
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Resident set size in KiB of a process group (the `sh -c` leader and everything it started;
/// Linux `/proc`).
fn rss_kib(pgid: u32) -> Option<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state ppid pgrp ...
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|p| p.parse::<u32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if let Some(kib) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += kib;
            found = true;
        }
    }
    found.then_some(total)
}

const OUTPUT_LIMIT: usize = 1 << 20;

async fn run_exec(
    cmd: &str,
    envelope: &Envelope,
    limits: Limits,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("FUNCSCALE_TASK_ID", &envelope.id)
        .env("FUNCSCALE_FUNC", &envelope.func)
        .env("FUNCSCALE_QUEUE", &envelope.queue)
        .env("FUNCSCALE_ATTEMPT", envelope.attempt.to_string())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(soft) = limits.soft {
        command.env("FUNCSCALE_SOFT_TIMEOUT_MS", soft.as_millis().to_string());
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(TaskError::new(format!("cannot start {cmd:?}: {e}"))),
    };
    let pid = child.id().unwrap_or(0);
    let input = envelope.to_json();
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let io = async move {
        let write = async {
            if let Some(mut s) = stdin.take() {
                let _ = s.write_all(input.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.take() {
                let _ = s.take(OUTPUT_LIMIT as u64).read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = stderr.take() {
                let _ = s.take(OUTPUT_LIMIT as u64).read_to_end(&mut buf).await;
            }
            buf
        };
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        (out, err)
    };
    let run = async {
        let (out, err) = io.await;
        (child.wait().await, out, err)
    };
    tokio::pin!(run);
    let soft = sleep_opt(limits.soft);
    let hard = sleep_opt(limits.hard);
    tokio::pin!(soft, hard);
    let mut soft_fired = false;
    let mut mem_check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            (status, out, err) = &mut run => {
                signal_group(pid, nix::sys::signal::Signal::SIGKILL); // leftovers of the group
                return match status {
                    Ok(s) if s.success() => {
                        let text = String::from_utf8_lossy(&out);
                        let text = text.trim();
                        Outcome::Done(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
                    }
                    Ok(s) => {
                        let err = String::from_utf8_lossy(&err);
                        let tail: String = err.chars().rev().take(2_000).collect::<Vec<_>>().into_iter().rev().collect();
                        Outcome::Failed(TaskError::new(format!("command exited with {s}: {}", tail.trim())))
                    }
                    Err(e) => Outcome::Failed(TaskError::new(format!("waiting for the command: {e}"))),
                };
            }
            _ = &mut soft, if !soft_fired => {
                soft_fired = true;
                signal_group(pid, nix::sys::signal::Signal::SIGTERM);
            }
            _ = &mut hard => {
                signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                return Outcome::Failed(TaskError::new("hard time limit exceeded (killed)"));
            }
            _ = mem_check.tick(), if limits.max_rss_kib.is_some() => {
                if let (Some(max), Some(rss)) = (limits.max_rss_kib, rss_kib(pid)) && rss > max {
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    return Outcome::Failed(TaskError::new(format!("memory limit exceeded ({rss} KiB > {max} KiB, killed)")));
                }
            }
            _ = wait_true(&mut cancel) => {
                signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                return Outcome::Cancelled;
            }
        }
    }
}

/// The HTTP client used by `http` handlers.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A new HTTP client.
pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Default timeout of an `http` call without a hard time limit.
pub const HTTP_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

async fn run_http(
    client: &HttpClient,
    url: &str,
    envelope: &Envelope,
    limits: Limits,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let mut req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("x-funcscale-task-id", &envelope.id)
        .header("x-funcscale-func", &envelope.func);
    if let Some(soft) = limits.soft {
        req = req.header("x-funcscale-soft-timeout-ms", soft.as_millis().to_string());
    }
    let req = match req.body(Full::new(Bytes::from(envelope.to_json()))) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(TaskError::permanent(format!("bad request: {e}"))),
    };
    let timeout = limits.hard.unwrap_or(HTTP_DEFAULT_TIMEOUT);
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| TaskError::new(format!("POST {url}: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| TaskError::new(format!("reading the response: {e}")))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).to_string();
        if status.is_success() {
            Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        } else {
            let snippet: String = text.chars().take(2_000).collect();
            Err(TaskError::new(format!(
                "POST {url}: HTTP {status}: {snippet}"
            )))
        }
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, call) => match r {
            Ok(Ok(v)) => Outcome::Done(v),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Failed(TaskError::new(format!("POST {url}: timed out after {timeout:?}"))),
        },
        _ = wait_true(&mut cancel) => Outcome::Cancelled,
    }
}

/// Long-lived handler children, one per slot.
///
/// Protocol: the worker writes one envelope per line on the child's stdin; the child answers
/// each with one JSON line on stdout: `{"ok": true, "result": ...}` or
/// `{"ok": false, "error": "..."}` (other stdout lines are ignored, so stray prints are
/// harmless). At the soft time limit the child gets `SIGUSR1`; at the hard limit, above the
/// memory limit, or when the worker drains out of time it is killed and replaced. After
/// `max_tasks_per_child` tasks it is replaced (stdin closed, then killed).
pub struct Pool {
    cmd: String,
    children: std::sync::Mutex<HashMap<usize, PoolChild>>,
}

struct PoolChild {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pid: u32,
    tasks: u64,
}

impl PoolChild {
    fn kill(mut self) {
        signal_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.start_kill();
        tokio::spawn(async move {
            let _ = self.child.wait().await;
        });
    }
}

impl Pool {
    /// A pool running `cmd` (through `sh -c`).
    pub fn new(cmd: &str) -> Self {
        Self {
            cmd: cmd.to_string(),
            children: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn spawn(&self, slot: usize) -> std::io::Result<PoolChild> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .env("FUNCSCALE_SLOT", slot.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        Ok(PoolChild {
            child,
            stdin,
            stdout: tokio::io::BufReader::new(stdout).lines(),
            pid,
            tasks: 0,
        })
    }

    async fn run(
        &self,
        slot: usize,
        envelope: &Envelope,
        limits: Limits,
        mut cancel: watch::Receiver<bool>,
    ) -> Outcome {
        let existing = self.children.lock().expect("pool lock").remove(&slot);
        let mut pc = match existing {
            Some(c) => c,
            None => match self.spawn(slot) {
                Ok(c) => c,
                Err(e) => {
                    return Outcome::Failed(TaskError::new(format!(
                        "cannot start {:?}: {e}",
                        self.cmd
                    )));
                }
            },
        };
        let mut line = envelope.to_json();
        line.push('\n');
        let exchange = async {
            pc.stdin.write_all(line.as_bytes()).await?;
            pc.stdin.flush().await?;
            loop {
                match pc.stdout.next_line().await? {
                    None => return Err(std::io::Error::other("handler child exited")),
                    Some(l) => {
                        if let Ok(v) = serde_json::from_str::<Value>(&l)
                            && let Some(ok) = v.get("ok").and_then(Value::as_bool)
                        {
                            return Ok((ok, v));
                        }
                    }
                }
            }
        };
        let soft = sleep_opt(limits.soft);
        let hard = sleep_opt(limits.hard);
        tokio::pin!(soft, hard);
        let mut soft_fired = false;
        let mut mem_check = tokio::time::interval(Duration::from_millis(100));
        let pid = pc.pid;
        let outcome = {
            tokio::pin!(exchange);
            loop {
                tokio::select! {
                    r = &mut exchange => break match r {
                        Ok((true, v)) => Ok(Outcome::Done(v.get("result").cloned().unwrap_or(Value::Null))),
                        Ok((false, v)) => Ok(Outcome::Failed(TaskError::new(
                            v.get("error").map(|e| e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string())).unwrap_or_else(|| "failed".into()),
                        ))),
                        Err(e) => Err(Outcome::Failed(TaskError::new(e.to_string()))),
                    },
                    _ = &mut soft, if !soft_fired => {
                        soft_fired = true;
                        signal_group(pid, nix::sys::signal::Signal::SIGUSR1);
                    }
                    _ = &mut hard => break Err(Outcome::Failed(TaskError::new("hard time limit exceeded (child killed)"))),
                    _ = mem_check.tick(), if limits.max_rss_kib.is_some() => {
                        if let (Some(max), Some(rss)) = (limits.max_rss_kib, rss_kib(pid)) && rss > max {
                            break Err(Outcome::Failed(TaskError::new(format!("memory limit exceeded ({rss} KiB > {max} KiB, child killed)"))));
                        }
                    }
                    _ = wait_true(&mut cancel) => break Err(Outcome::Cancelled),
                }
            }
        };
        match outcome {
            Ok(o) => {
                pc.tasks += 1;
                let worn = limits.max_tasks_per_child.is_some_and(|m| pc.tasks >= m);
                let fat = matches!((limits.max_rss_kib, rss_kib(pid)), (Some(max), Some(rss)) if rss > max);
                if worn || fat {
                    tracing::debug!(slot, tasks = pc.tasks, "replacing handler child");
                    pc.kill();
                } else {
                    self.children.lock().expect("pool lock").insert(slot, pc);
                }
                o
            }
            Err(o) => {
                pc.kill();
                o
            }
        }
    }
}

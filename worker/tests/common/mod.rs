//! Helpers shared by the integration tests: a unique key prefix per test on the real Redis,
//! condition polling with a deadline, cleanup, a running worker, and a local HTTP receiver.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use funcscale_worker::protocol::{self, Envelope, Keys};
use funcscale_worker::worker::now_ms;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A unique prefix and its keys; deletes every key under the prefix when dropped.
pub struct Space {
    pub prefix: String,
    pub keys: Keys,
}

impl Space {
    pub fn new(name: &str) -> Self {
        let prefix = format!("test-{name}-{}", uuid::Uuid::new_v4().simple());
        Self {
            keys: Keys::new(prefix.clone()),
            prefix,
        }
    }

    /// A connection whose replies may take long (a 20,000-entry script on a loaded machine):
    /// redis-rs' default response timeout is for interactive use.
    pub async fn con(&self) -> redis::aio::MultiplexedConnection {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap()
    }

    pub async fn enqueue(&self, queue: &str, envs: &[Envelope]) {
        let mut con = self.con().await;
        protocol::enqueue(&mut con, &self.keys, queue, envs)
            .await
            .unwrap();
    }

    pub fn env(&self, id: &str, func: &str, queue: &str, args: serde_json::Value) -> Envelope {
        let mut e = Envelope::new(id, func, queue, now_ms());
        e.args = args;
        e
    }

    pub async fn int(&self, cmd: &[&str]) -> i64 {
        let mut con = self.con().await;
        let mut c = redis::cmd(cmd[0]);
        for a in &cmd[1..] {
            c.arg(*a);
        }
        let v: Option<i64> = c.query_async(&mut con).await.unwrap();
        v.unwrap_or(0)
    }

    /// Every element of a list (a queue, a dead-letter list), head first.
    pub async fn list(&self, key: &str) -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con().await)
            .await
            .unwrap()
    }

    pub async fn stat(&self, queue: &str, field: &str) -> i64 {
        self.int(&["HGET", &self.keys.stats(queue), field]).await
    }

    /// A key of the test's own (for side effects) under the prefix.
    /// Keep at most `max_count` task records of `queue` (retention by count).
    pub async fn keep_records(&self, queue: &str, max_count: u64) {
        self.set_queue_config(
            queue,
            &protocol::QueueConfig {
                record_max_count: Some(max_count),
                ..Default::default()
            },
        )
        .await;
    }

    /// Merge `config` into the settings of `queue` (as the operator writes them).
    pub async fn set_queue_config(&self, queue: &str, config: &protocol::QueueConfig) {
        protocol::queue_config_set(&mut self.con().await, &self.keys, queue, config, &[])
            .await
            .unwrap();
    }

    pub fn own(&self, name: &str) -> String {
        format!("{}:test:{name}", self.prefix)
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(REDIS_URL) else {
            return;
        };
        let Ok(mut con) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut con)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut con);
        }
    }
}

/// Poll `f` every 20 ms until it returns true or `timeout` passes (then panic with `what`).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running in-process worker; `stop` drains it.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(b: funcscale_worker::worker::WorkerBuilder) -> Self {
        let worker = b.build().await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("worker stops")
            .unwrap()
            .unwrap();
    }
}

/// A local HTTP receiver of URL destinations: answers 503 while `failing` is set and to its
/// first `fail_first` calls, and records (delivery id, body) of every delivery it accepts.
pub struct Receiver {
    pub url: String,
    pub failing: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
    pub received: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(failing: bool, fail_first: usize) -> Self {
        use http_body_util::{BodyExt, Full};
        let failing = Arc::new(AtomicBool::new(failing));
        let calls = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (f, c, r) = (failing.clone(), calls.clone(), received.clone());
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (f, c, r) = (f.clone(), c.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (f, c, r) = (f.clone(), c.clone(), r.clone());
                            async move {
                                let id = req.headers()["x-funcscale-delivery-id"]
                                    .to_str()
                                    .unwrap()
                                    .to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let call = c.fetch_add(1, Ordering::SeqCst);
                                let status = if f.load(Ordering::SeqCst) || call < fail_first {
                                    503
                                } else {
                                    r.lock()
                                        .unwrap()
                                        .push((id, serde_json::from_slice(&body).unwrap()));
                                    200
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(bytes::Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            url,
            failing,
            calls,
            received,
            server,
        }
    }

    pub fn received_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

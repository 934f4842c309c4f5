//! The one HTTP server of the operator and the worker (and beat):
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | 200, the Prometheus text exposition of a registry |
//! | `/healthz`, `/livez` | 200 `ok` while the process serves |
//! | `/readyz`, `/ready` | 200 `ok` when [`Health::ready`], else 503 `not ready: <why>` |
//! | anything else | 404 |
//!
//! hyper's HTTP/1 server, every response with `Connection: close` (a probe or a scrape is one
//! request; clients may read to the end of the stream).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use prometheus::{Registry, TextEncoder};
use tokio::net::TcpListener;

/// A readiness check run on every `/readyz` request (a Redis `PING`, a watch channel): `Ok`,
/// or why not.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What `/readyz` reports. Two kinds of inputs:
/// - conditions the program sets as they change ([`Health::set`]: the operator's API and
///   watches, a worker's drain);
/// - probes asked on each request ([`Health::with_probe`]: a worker's Redis).
///
/// Ready when every condition is and then every probe answers `Ok`, in the order they were
/// added. Not ready: the reason of the condition set not ready most recently, else the first
/// failing probe's. Cloning shares the state.
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// (name, why not ready — `None` when ready, when it was set)
    conditions: Mutex<Vec<(&'static str, Option<String>, u64)>>,
    changes: AtomicU64,
    probes: Mutex<Vec<Probe>>,
}

impl Health {
    /// Ready, with no condition and no probe.
    pub fn new() -> Self {
        Self::default()
    }

    /// Not ready until each of `conditions` is set ready; `why` says so meanwhile.
    pub fn starting(conditions: &[&'static str], why: &str) -> Self {
        let h = Self::new();
        for c in conditions {
            h.set(c, false, why);
        }
        h
    }

    /// Set `condition` (added when new) ready, or not ready because of `why`.
    pub fn set(&self, condition: &'static str, ok: bool, why: &str) {
        let at = self.0.changes.fetch_add(1, Ordering::SeqCst);
        let why = (!ok).then(|| why.to_string());
        let mut cs = self.0.conditions.lock().expect("health lock");
        match cs.iter_mut().find(|(name, _, _)| *name == condition) {
            Some(c) => *c = (condition, why, at),
            None => cs.push((condition, why, at)),
        }
    }

    /// Add a probe asked on every readiness check, after the conditions and earlier probes.
    pub fn with_probe<F, Fut>(self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: Probe = Arc::new(move || Box::pin(probe()));
        self.0.probes.lock().expect("health lock").push(probe);
        self
    }

    /// Ready, or why not.
    pub async fn ready(&self) -> Result<(), String> {
        let not_ready = self
            .0
            .conditions
            .lock()
            .expect("health lock")
            .iter()
            .filter_map(|(_, why, at)| why.as_ref().map(|w| (*at, w.clone())))
            .max_by_key(|(at, _)| *at);
        if let Some((_, why)) = not_ready {
            return Err(why);
        }
        let probes = self.0.probes.lock().expect("health lock").clone();
        for p in probes {
            p().await?;
        }
        Ok(())
    }
}

/// Bind `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Bind `addr` and serve in a task of its own until the task is aborted; returns the bound
/// address (useful with port 0) and the task.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Registry,
    health: Health,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(serve(
        listener,
        metrics,
        health,
        std::future::pending::<()>(),
    ));
    Ok((local, task))
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Registry,
    health: Health,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (metrics, health) = (metrics.clone(), health.clone());
                    async move {
                        let (status, ctype, body) =
                            respond(req.uri().path(), &metrics, &health).await;
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .header("connection", "close")
                            .body(Full::new(Bytes::from(body)))
                            .expect("valid response");
                        Ok::<_, Infallible>(resp)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(5))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, svc);
            let _ = conn.await;
        });
    }
}

/// Status, content type and body of `path`.
async fn respond(path: &str, metrics: &Registry, health: &Health) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", encode(metrics)),
        "/healthz" | "/livez" => (200, TEXT, "ok\n".into()),
        "/readyz" | "/ready" => match health.ready().await {
            Ok(()) => (200, TEXT, "ok\n".into()),
            Err(why) => (503, TEXT, format!("not ready: {why}\n")),
        },
        _ => (404, TEXT, "not found\n".into()),
    }
}

/// The text exposition of everything in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut buf = String::new();
    if let Err(e) = TextEncoder::new().encode_utf8(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    buf
}

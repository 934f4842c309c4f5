//! Probes and hooks: `httpGet`, `tcpSocket`, `exec`, with the kubelet's timing rules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::launch::Launch;

/// What a probe or hook does.
pub(super) enum Handler {
    /// GET `path` on 127.0.0.1:`port`: 2xx or 3xx is success.
    Http { port: u16, path: String },
    /// A TCP connection to 127.0.0.1:`port` succeeds.
    Tcp { port: u16 },
    /// A command in the container's environment exits 0.
    Exec(Box<Launch>, Vec<String>),
    /// A probe this kubelet cannot run (an unknown port name, no handler): always fails,
    /// as a kubelet's probe of a missing port does.
    Fail(String),
}

impl Handler {
    pub async fn run(&self, timeout: Duration) -> bool {
        let work = async {
            match self {
                Handler::Http { port, path } => {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await?;
                    s.write_all(
                        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.20\r\n\r\n")
                            .as_bytes(),
                    )
                    .await?;
                    let mut buf = [0u8; 16];
                    let n = s.read(&mut buf).await?;
                    Ok::<_, std::io::Error>(
                        n >= 10 && buf.starts_with(b"HTTP/1.") && matches!(buf[9], b'2' | b'3'),
                    )
                }
                Handler::Tcp { port } => {
                    tokio::net::TcpStream::connect(("127.0.0.1", *port)).await?;
                    Ok(true)
                }
                Handler::Exec(launch, argv) => match launch.exec(argv) {
                    Some(mut cmd) => Ok(cmd.status().await?.success()),
                    None => Ok(false),
                },
                Handler::Fail(why) => {
                    tracing::debug!(%why, "probe fails");
                    Ok(false)
                }
            }
        };
        matches!(tokio::time::timeout(timeout, work).await, Ok(Ok(true)))
    }
}

#[derive(Default)]
struct ProbeState {
    started: AtomicBool,
    ready: AtomicBool,
    liveness_failed: AtomicBool,
}

/// A container's probes, running while it runs (dropping this stops them).
pub(super) struct Probes {
    state: Arc<ProbeState>,
    task: JoinHandle<()>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Spec = Option<(Probe, Option<Handler>)>;

struct Timing {
    initial: Duration,
    period: Duration,
    timeout: Duration,
    success: u32,
    failure: u32,
}

fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Timing {
        initial: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

impl Probes {
    pub fn start(startup: Spec, readiness: Spec, liveness: Spec) -> Self {
        let state = Arc::new(ProbeState::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            if let Some((p, h)) = startup {
                let t = timing(&p);
                tokio::time::sleep_until(t0 + t.initial).await;
                let mut failures = 0;
                loop {
                    if h.as_ref().is_none() || h.as_ref().unwrap().run(t.timeout).await {
                        break;
                    }
                    failures += 1;
                    if failures >= t.failure {
                        s.liveness_failed.store(true, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(t.period).await;
                }
            }
            s.started.store(true, Ordering::SeqCst);
            let ready = {
                let s = s.clone();
                async move {
                    let Some((p, h)) = readiness else {
                        s.ready.store(true, Ordering::SeqCst);
                        return;
                    };
                    let t = timing(&p);
                    tokio::time::sleep_until(t0 + t.initial).await;
                    let (mut ok, mut bad) = (0u32, 0u32);
                    loop {
                        let pass = match &h {
                            Some(h) => h.run(t.timeout).await,
                            None => true,
                        };
                        if pass {
                            ok += 1;
                            bad = 0;
                            if ok >= t.success {
                                s.ready.store(true, Ordering::SeqCst);
                            }
                        } else {
                            bad += 1;
                            ok = 0;
                            if bad >= t.failure {
                                s.ready.store(false, Ordering::SeqCst);
                            }
                        }
                        tokio::time::sleep(t.period).await;
                    }
                }
            };
            let live = {
                let s = s.clone();
                async move {
                    let Some((p, Some(h))) = liveness else {
                        return;
                    };
                    let t = timing(&p);
                    tokio::time::sleep_until(t0 + t.initial).await;
                    let mut bad = 0u32;
                    loop {
                        if h.run(t.timeout).await {
                            bad = 0;
                        } else {
                            bad += 1;
                            if bad >= t.failure {
                                s.liveness_failed.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                        tokio::time::sleep(t.period).await;
                    }
                }
            };
            futures::join!(ready, live);
        });
        Self { state, task }
    }

    pub fn ready(&self) -> bool {
        self.state.ready.load(Ordering::SeqCst)
    }
    pub fn started(&self) -> bool {
        self.state.started.load(Ordering::SeqCst)
    }
    pub fn liveness_failed(&self) -> bool {
        self.state.liveness_failed.load(Ordering::SeqCst)
    }
}

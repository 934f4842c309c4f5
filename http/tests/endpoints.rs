//! The endpoints over TCP, as a probe or a scraper sees them.

use std::net::SocketAddr;

use funcscale_http::Health;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request, read to the end of the stream (the server closes after each response).
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_health_and_readiness_with_conditions() {
    let listener = funcscale_http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = prometheus::Registry::new();
    let leader = prometheus::IntGauge::new("funcscale_leader", "leader").unwrap();
    registry.register(Box::new(leader.clone())).unwrap();
    leader.set(1);
    let health = Health::starting(&["api", "watches"], "starting");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(funcscale_http::serve(
        listener,
        registry,
        health.clone(),
        async {
            let _ = rx.await;
        },
    ));
    for path in ["/healthz", "/livez"] {
        let r = get(addr, path).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    }
    let r = get(addr, "/readyz").await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("not ready: starting"),
        "{r}"
    );
    health.set("api", true, "");
    assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 503"));
    health.set("watches", true, "");
    let r = get(addr, "/readyz").await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    health.set("watches", false, "watch of FuncQueues failed");
    let r = get(addr, "/readyz").await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("FuncQueues"),
        "{r}"
    );
    // the reason is the condition set not ready last, and not a stale one once it is ready
    health.set("api", false, "Kubernetes API: refused");
    let r = get(addr, "/readyz").await;
    assert!(r.contains("not ready: Kubernetes API: refused"), "{r}");
    health.set("api", true, "");
    let r = get(addr, "/readyz").await;
    assert!(r.contains("FuncQueues") && !r.contains("refused"), "{r}");
    health.set("watches", true, "");
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    let m = get(addr, "/metrics").await;
    assert!(
        m.contains("funcscale_leader 1") && m.contains("text/plain; version=0.0.4"),
        "{m}"
    );
    assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    tx.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn probes_are_asked_after_the_conditions_in_order() {
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let d = down.clone();
    let health = Health::new()
        .with_probe(move || {
            let down = d.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if down {
                    Err("redis: timed out".to_string())
                } else {
                    Ok(())
                }
            }
        })
        .with_probe(|| async { Ok(()) });
    let (addr, task) = funcscale_http::spawn(
        "127.0.0.1:0".parse().unwrap(),
        prometheus::Registry::new(),
        health.clone(),
    )
    .await
    .unwrap();
    let r = get(addr, "/readyz").await;
    assert!(r.contains("not ready: redis: timed out"), "{r}");
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    health.set("draining", false, "draining");
    let r = get(addr, "/readyz").await;
    assert!(r.contains("not ready: draining"), "{r}");
    assert_eq!(health.ready().await, Err("draining".to_string()));
    task.abort();
}

//! The simulated kubelet: Deployments become local processes, with stand-in programs from the
//! system (`sleep`, `sh`, `python3`) until the worker binary is available.

use std::path::Path;
use std::time::{Duration, Instant};

use funcscale_e2e::{Kubelet, TestCluster, eventually, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

fn deployment(name: &str, replicas: i32, grace: i64, container: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]}
            }
        }
    }))
    .unwrap()
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still say "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Status says `replicas` pods, all ready, for the current generation.
fn settled(replicas: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| {
        d.is_some_and(|d| {
            let s = d.status.clone().unwrap_or_default();
            s.observed_generation == d.metadata.generation
                && s.replicas.unwrap_or(0) == replicas
                && s.ready_replicas.unwrap_or(0) == replicas
                && s.available_replicas.unwrap_or(0) == replicas
                && s.updated_replicas.unwrap_or(0) == replicas
        })
    }
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) {
    api.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_scales_and_restarts_pods() {
    let cluster = TestCluster::start().await.unwrap();
    let kubelet = Kubelet::start(cluster.client.clone(), "/nonexistent/funcscale-worker");
    let deploys: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let container = json!({"name": "main", "image": "busybox", "command": ["sleep", "1000"]});
    deploys
        .create(
            &PostParams::default(),
            &deployment("sleepers", 2, 5, container),
        )
        .await
        .unwrap();
    wait_for(&deploys, "sleepers", T, settled(2)).await.unwrap();
    let pods = kubelet.pods("default", "sleepers");
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p.ready && alive(p.pid.unwrap())));

    // scale down through the scale subresource: one process gets SIGTERM and goes
    scale(&deploys, "sleepers", 1).await;
    wait_for(&deploys, "sleepers", T, settled(1)).await.unwrap();
    let left = kubelet.pods("default", "sleepers");
    assert_eq!(left.len(), 1);
    let gone: Vec<u32> = pods
        .iter()
        .filter_map(|p| p.pid)
        .filter(|pid| Some(*pid) != left[0].pid)
        .collect();
    eventually(T, "scaled-down process exits", || async {
        gone.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await
    .unwrap();

    // a pod that dies is replaced
    let victim = left[0].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(T, "pod restarted", || async {
        let pods = kubelet.pods("default", "sleepers");
        (kubelet.restarts("default", "sleepers") >= 1
            && pods.len() == 1
            && pods[0].pid != Some(victim)
            && pods[0].ready)
            .then_some(())
    })
    .await
    .unwrap();
    wait_for(&deploys, "sleepers", T, settled(1)).await.unwrap();

    // scale up again, then to zero
    scale(&deploys, "sleepers", 3).await;
    wait_for(&deploys, "sleepers", T, settled(3)).await.unwrap();
    let pids: Vec<u32> = kubelet
        .pods("default", "sleepers")
        .iter()
        .filter_map(|p| p.pid)
        .collect();
    scale(&deploys, "sleepers", 0).await;
    wait_for(&deploys, "sleepers", T, settled(0)).await.unwrap();
    eventually(T, "all processes exit", || async {
        pids.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await
    .unwrap();
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_grace_period() {
    let cluster = TestCluster::start().await.unwrap();
    let kubelet = Kubelet::start(cluster.client.clone(), "/nonexistent/funcscale-worker");
    let deploys: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    // ignores SIGTERM (the disposition survives exec)
    let container = json!({"name": "main", "image": "busybox",
        "command": ["sh", "-c", "trap '' TERM; exec sleep 1000"]});
    deploys
        .create(
            &PostParams::default(),
            &deployment("stubborn", 1, 1, container),
        )
        .await
        .unwrap();
    wait_for(&deploys, "stubborn", T, settled(1)).await.unwrap();
    let pid = kubelet.pods("default", "stubborn")[0].pid.unwrap();
    let asked = Instant::now();
    scale(&deploys, "stubborn", 0).await;
    eventually(T, "SIGKILL after the grace period", || async {
        (!alive(pid)).then_some(())
    })
    .await
    .unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "the pod ignored SIGTERM, so it must have lived through the 1 s grace period"
    );
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_binary_env_and_readiness() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readyz"), "ok").unwrap();
    let out = dir.path().join("env.txt");
    Api::<Secret>::default_namespaced(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "redis"},
                "stringData": {}, "data": {"url": "cmVkaXM6Ly8xMjcuMC4wLjE6NjM3OS8z"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<ConfigMap>::default_namespaced(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "settings"},
                "data": {"MODE": "fast"}}))
            .unwrap(),
        )
        .await
        .unwrap();

    // "funcscale-worker" in the template runs the local worker binary: here /bin/sh standing in,
    // serving /readyz on the metrics port the kubelet assigned
    let script = format!(
        "echo \"$FUNCSCALE_REDIS_URL $MODE $POD_NAME $POD_NAMESPACE $HOSTNAME $(ARGS)\" > {out}; \
         exec python3 -m http.server --bind 127.0.0.1 --directory {dir} ${{FUNCSCALE_METRICS_ADDR##*:}}",
        out = out.display(),
        dir = dir.path().display(),
    );
    let container = json!({
        "name": "worker", "image": "ghcr.io/funcscale/funcscale-worker:dev",
        "command": ["/usr/local/bin/funcscale-worker", "-c", script],
        "env": [
            {"name": "FUNCSCALE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "ARGS", "value": "expanded"},
        ],
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9090}},
    });
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    deploys
        .create(&PostParams::default(), &deployment("w", 1, 5, container))
        .await
        .unwrap();
    let kubelet = Kubelet::start(client.clone(), Path::new("/bin/sh"));
    wait_for(&deploys, "w", T, settled(1)).await.unwrap();
    let pod = kubelet.pods("default", "w").remove(0);
    assert!(pod.metrics_addr.is_some());
    let env = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        env.trim(),
        format!(
            "redis://127.0.0.1:6379/3 fast {0} default {0} expanded",
            pod.name
        )
    );
    assert_eq!(deploys.get("w").await.unwrap().name_any(), "w");
    kubelet.shutdown().await;
}

/// With a real `funcscale-worker` (`FUNCSCALE_E2E_WORKER_BIN=target/debug/funcscale-worker`,
/// Redis on 127.0.0.1:6379): pods run the image entrypoint mapped to the local binary, each on
/// its own metrics port, ready through `/readyz`, and drain on scale-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_worker_pods() {
    let Some(bin) = std::env::var_os("FUNCSCALE_E2E_WORKER_BIN") else {
        eprintln!("skipped: set FUNCSCALE_E2E_WORKER_BIN to a funcscale-worker binary");
        return;
    };
    let cluster = TestCluster::start().await.unwrap();
    let kubelet = Kubelet::start(cluster.client.clone(), bin);
    let prefix = format!("e2e-kubelet-{}", std::process::id());
    let container = json!({
        "name": "worker", "image": "ghcr.io/funcscale/funcscale-worker:dev",
        "args": ["run", "--queues", "q1,q2", "--processes", "2", "--drain-timeout", "2s",
                 "--metrics-addr", "0.0.0.0:9090"],
        "env": [
            {"name": "FUNCSCALE_REDIS_URL", "value": "redis://127.0.0.1:6379/0"},
            {"name": "FUNCSCALE_PREFIX", "value": prefix},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9090}},
    });
    let deploys: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    deploys
        .create(
            &PostParams::default(),
            &deployment("workers", 3, 10, container),
        )
        .await
        .unwrap();
    wait_for(&deploys, "workers", T, settled(3)).await.unwrap();
    let pods = kubelet.pods("default", "workers");
    let mut addrs: Vec<_> = pods.iter().map(|p| p.metrics_addr.unwrap()).collect();
    addrs.dedup();
    assert_eq!(addrs.len(), 3, "each pod has its own metrics port");
    let pids: Vec<u32> = pods.iter().filter_map(|p| p.pid).collect();
    scale(&deploys, "workers", 0).await;
    wait_for(&deploys, "workers", T, settled(0)).await.unwrap();
    eventually(T, "workers drained and exited", || async {
        pids.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(kubelet.restarts("default", "workers"), 0);
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_rollout_stops_old_pod_before_starting_new() {
    let cluster = TestCluster::start().await.unwrap();
    let kubelet = Kubelet::start(cluster.client.clone(), "/nonexistent/funcscale-worker");
    let deploys: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    // the old pod ignores SIGTERM, so it lingers for the whole 1 s grace period
    let container = json!({"name": "beat", "image": "busybox",
        "command": ["sh", "-c", "trap '' TERM; exec sleep 1000"]});
    let mut d = deployment("beat", 1, 1, container);
    d.spec.as_mut().unwrap().strategy =
        serde_json::from_value(json!({"type": "Recreate"})).unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    wait_for(&deploys, "beat", T, settled(1)).await.unwrap();
    let old = kubelet.pods("default", "beat")[0].pid.unwrap();

    // a template change rolls the pod
    deploys
        .patch(
            "beat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"labels": {"rev": "2"}}}}})),
        )
        .await
        .unwrap();
    let new = eventually(T, "new pod", || async {
        kubelet
            .pods("default", "beat")
            .first()
            .and_then(|p| p.pid)
            .filter(|pid| *pid != old)
    })
    .await
    .unwrap();
    assert!(
        !alive(old),
        "Recreate: the old pod was gone before the new one started"
    );
    assert!(alive(new));
    wait_for(&deploys, "beat", T, settled(1)).await.unwrap();
    kubelet.shutdown().await;
}

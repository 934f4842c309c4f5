//! The process kubelet on the real control plane: real Deployment and ReplicaSet controllers
//! decide which pods exist, the real scheduler binds them, the kubelet runs them as processes.

use std::time::Duration;

use funcscale_e2e::control_plane::TestNamespace;
use funcscale_e2e::eventually;
use funcscale_e2e::node::ImageRule;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// A "python" image: the machine's python3.
fn python_image(config: &mut funcscale_e2e::node::KubeletConfig) {
    let mut r = ImageRule::new("e2e/python");
    r.programs
        .insert("python3".into(), which("python3").expect("python3 on PATH"));
    r.path.push("/usr/bin".into());
    config.images.push(r);
}

fn which(p: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(p))
            .find(|f| f.is_file())
    })
}

const SERVER: &str = "import os, signal, sys, http.server as h\n\
signal.signal(signal.SIGTERM, lambda *a: (sys.exit(0)))\n\
host, port = os.environ['ADDR'].rsplit(':', 1)\n\
h.HTTPServer((host, int(port)), h.SimpleHTTPRequestHandler).serve_forever()\n";

fn web(ns: &str, replicas: i32) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
              "name": "web", "image": "registry.local/e2e/python:3.11",
              "command": ["python3", "-c", SERVER],
              "env": [{"name": "ADDR", "value": "0.0.0.0:8000"}],
              "ports": [{"name": "http", "containerPort": 8000}],
              "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}]}}}})
}

async fn ready_replicas(api: &Api<Deployment>, name: &str) -> i32 {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_run_as_processes_probed_and_stopped_like_pods() -> anyhow::Result<()> {
    let t = TestNamespace::start("node-web", python_image).await?;
    let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &t.ns);
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.ns);
    deployments
        .patch(
            "web",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&web(&t.ns, 2)),
        )
        .await?;
    eventually(Duration::from_secs(60), "2 ready replicas", || async {
        (ready_replicas(&deployments, "web").await == 2).then_some(())
    })
    .await?;
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(list.items.len(), 2);
    for p in &list.items {
        let s = p.status.clone().unwrap();
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.unwrap()[0];
        assert!(cs.ready);
        let pid: i32 = cs
            .container_id
            .as_deref()
            .unwrap()
            .strip_prefix("process://")
            .unwrap()
            .parse()?;
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
    }
    // scale down: the ReplicaSet controller deletes one pod; the kubelet SIGTERMs it, then
    // removes the pod object
    let before = t.kubelet().pods_of(&t.ns, "web");
    deployments
        .patch(
            "web",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&web(&t.ns, 1)),
        )
        .await?;
    eventually(Duration::from_secs(30), "one pod left", || async {
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .is_ok_and(|l| l.items.len() == 1)
            .then_some(())
    })
    .await?;
    let after = t.kubelet().pods_of(&t.ns, "web");
    assert_eq!(after.len(), 1);
    let gone: Vec<_> = before
        .iter()
        .filter(|p| !after.iter().any(|a| a.name == p.name))
        .collect();
    assert_eq!(gone.len(), 1);
    for pid in &gone[0].pids {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), None).is_err(),
            "the removed pod's process is gone"
        );
    }
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_image_fails_to_pull_and_a_failing_liveness_probe_restarts() -> anyhow::Result<()>
{
    let t = TestNamespace::start("node-fail", python_image).await?;
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.ns);
    let pod = |name: &str, image: &str, live_port: i32| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": t.ns},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": image,
              "command": ["python3", "-c", "import time; time.sleep(3600)"],
              "livenessProbe": {"tcpSocket": {"port": live_port}, "periodSeconds": 1, "failureThreshold": 2}}]}})
    };
    let free = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port() as i32;
    pods.patch(
        "missing",
        &PatchParams::apply("test"),
        &Patch::Apply(&pod("missing", "nope/none:1", free)),
    )
    .await?;
    pods.patch(
        "dead",
        &PatchParams::apply("test"),
        &Patch::Apply(&pod("dead", "e2e/python", free)),
    )
    .await?;
    let waiting = eventually(
        Duration::from_secs(30),
        "missing image reported",
        || async {
            let p = pods.get_opt("missing").await.ok()??;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            cs.state?.waiting?.reason
        },
    )
    .await?;
    assert!(
        waiting == "ErrImagePull" || waiting == "ImagePullBackOff",
        "{waiting}"
    );
    eventually(Duration::from_secs(30), "liveness restart", || async {
        let p = pods.get_opt("dead").await.ok()??;
        let cs = p.status?.container_statuses?.into_iter().next()?;
        (cs.restart_count >= 1).then_some(())
    })
    .await?;
    t.stop().await;
    Ok(())
}

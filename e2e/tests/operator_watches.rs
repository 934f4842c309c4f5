//! The operator binary's watches against the in-memory API server: the filters that keep it
//! from re-reconciling what did not change must not drop what it has to react to. Each step
//! would otherwise wait for the periodic resync (60 s; every wait here is 15 s):
//!
//! - a status-only change of a pool's Deployment (a pod became ready) reaches the pool's status;
//! - a Deployment scaled by hand is scaled back, a deleted one is created again;
//! - a queue's spec change (its Redis) reaches the Deployments of the pools serving it, through
//!   the queue → pools index, though the queue's readings did not change;
//! - a pool that comes or goes reaches the `consumers` and `Served` status of its queues.

use std::process::Stdio;
use std::time::Duration;

use funcscale_e2e::scenario::{REDIS_URL, bin, terminate};
use funcscale_e2e::{TestCluster, eventually};
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);
const NS: &str = "watches";

fn redis_url_env(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == "FUNCSCALE_REDIS_URL")?
        .value
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_filters_must_let_through() {
    let cluster = TestCluster::start().await.unwrap();
    cluster.install_crds().await.unwrap();
    let client = cluster.client.clone();
    let queues: Api<FuncQueue> = Api::namespaced(client.clone(), NS);
    let pools: Api<FuncWorkerPool> = Api::namespaced(client.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let prefix = format!("fs-watches-{}", std::process::id());

    let q: FuncQueue = serde_json::from_value(json!({
        "apiVersion": "funcscale.dev/v1alpha1", "kind": "FuncQueue",
        "metadata": {"name": "q"},
        "spec": {"taskTimeMs": 500, "redis": {"url": REDIS_URL}}
    }))
    .unwrap();
    queues.create(&PostParams::default(), &q).await.unwrap();
    let pool = |name: &str| -> FuncWorkerPool {
        serde_json::from_value(json!({
            "apiVersion": "funcscale.dev/v1alpha1", "kind": "FuncWorkerPool",
            "metadata": {"name": name},
            "spec": {"queues": ["q"], "replicas": 2, "handler": "builtin"}
        }))
        .unwrap()
    };
    pools
        .create(&PostParams::default(), &pool("w"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut operator = tokio::process::Command::new(bin("funcscale-operator").unwrap())
        .args(["run", "--metrics-addr", &metrics_addr.to_string()])
        .args(["--key-prefix", &prefix, "--redis-url", REDIS_URL])
        .args(["--poll-interval", "300ms", "--no-leader-election"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("FUNCSCALE_NAMESPACE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    let d = eventually(WAIT, "Deployment w with 2 replicas", || async {
        let d = deployments.get_opt("w").await.ok()??;
        (replicas(&d) == Some(2)).then_some(d)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert_eq!(redis_url_env(&d).as_deref(), Some(REDIS_URL));
    eventually(WAIT, "queue q served by w", || async {
        let q = queues.get("q").await.ok()?;
        (q.status?.consumers == ["w"]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // 1. status only: two pods became ready
    deployments
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 2}})),
        )
        .await
        .unwrap();
    eventually(
        WAIT,
        "pool w's status to report 2 ready replicas",
        || async {
            let p = pools.get("w").await.ok()?;
            (p.status?.ready_replicas == 2).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // 2. scaled by hand: scaled back
    deployments
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "Deployment w scaled back to 2", || async {
        let d = deployments.get("w").await.ok()?;
        (replicas(&d) == Some(2) && d.metadata.generation > Some(2)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // 3. deleted: created again
    let uid = deployments.get("w").await.unwrap().metadata.uid;
    deployments
        .delete("w", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "Deployment w created again", || async {
        let d = deployments.get_opt("w").await.ok()??;
        (d.metadata.uid != uid && replicas(&d) == Some(2)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // 4. the queue's Redis changes (the same server under another name: its readings stay the
    // same, so no poll triggers the pool; only the queue's spec change can)
    let other_url = "redis://localhost:6379/0";
    queues
        .patch(
            "q",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"redis": {"url": other_url}}})),
        )
        .await
        .unwrap();
    eventually(
        WAIT,
        "Deployment w to use the queue's new Redis URL",
        || async {
            let d = deployments.get("w").await.ok()?;
            (redis_url_env(&d).as_deref() == Some(other_url)).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // 5. a second pool on q: the queue's consumers follow; both pools go: not served
    pools
        .create(&PostParams::default(), &pool("w2"))
        .await
        .unwrap();
    eventually(WAIT, "queue q served by w and w2", || async {
        let q = queues.get("q").await.ok()?;
        (q.status?.consumers == ["w", "w2"]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    for name in ["w", "w2"] {
        pools.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(WAIT, "queue q not served", || async {
        let q = queues.get("q").await.ok()?;
        let st = q.status?;
        let served = st.conditions.iter().find(|c| c.type_ == "Served")?;
        (st.consumers.is_empty() && served.status == "False").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    terminate(&mut operator, Duration::from_secs(10)).await;
}

//! The real `funcscale-operator` binary against the test API server through a kubeconfig.
//! Runs when `FUNCSCALE_E2E_OPERATOR_BIN` names the binary (Redis on 127.0.0.1:6379).

use std::process::Stdio;
use std::time::Duration;

use funcscale_e2e::{TestCluster, wait_for};
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn replicas(n: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_binary_reconciles_through_kubeconfig() {
    let Some(bin) = std::env::var_os("FUNCSCALE_E2E_OPERATOR_BIN") else {
        eprintln!("skipped: set FUNCSCALE_E2E_OPERATOR_BIN to a funcscale-operator binary");
        return;
    };
    let cluster = TestCluster::start().await.unwrap();
    cluster.install_crds().await.unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _operator = tokio::process::Command::new(bin)
        .args(["run", "--metrics-addr", &metrics.to_string()])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let client = cluster.client.clone();
    let queues: Api<FuncQueue> = Api::default_namespaced(client.clone());
    let pools: Api<FuncWorkerPool> = Api::default_namespaced(client.clone());
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let queue = format!("e2e-op-{}", std::process::id());
    queues
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": queue}, "spec": {}})).unwrap(),
        )
        .await
        .unwrap();
    pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "w1"},
                "spec": {"queues": [queue], "replicas": 2}}))
            .unwrap(),
        )
        .await
        .unwrap();

    let d = wait_for(&deploys, "w1", T, replicas(2))
        .await
        .unwrap()
        .unwrap();
    let pool = pools.get("w1").await.unwrap();
    assert!(
        d.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|r| Some(&r.uid) == pool.metadata.uid.as_ref()),
        "the Deployment is owned by its pool"
    );

    // `kubectl scale fwp w1 --replicas=3`
    pools
        .patch_scale(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    wait_for(&deploys, "w1", T, replicas(3)).await.unwrap();

    pools.delete("w1", &DeleteParams::default()).await.unwrap();
    wait_for(&deploys, "w1", T, |d: Option<&Deployment>| d.is_none())
        .await
        .unwrap();
}

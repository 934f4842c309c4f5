//! The operator binary's watches on the real control plane (the in-memory API server with
//! `FUNCSCALE_E2E_IN_MEMORY=1`, as every scenario): the filters that keep it
//! from re-reconciling what did not change must not drop what it has to react to. Each step
//! would otherwise wait for the periodic resync (60 s; every wait here is 15 s):
//!
//! - a status-only change of a pool's Deployment (its pods became ready) reaches the pool's
//!   status;
//! - a Deployment scaled by hand is scaled back, a deleted one is created again;
//! - a queue's spec change (its Redis) reaches the Deployments of the pools serving it, through
//!   the queue → pools index, though the queue's readings did not change;
//! - a pool that comes or goes reaches the `consumers` and `Served` status of its queues.

use std::time::Duration;

use funcscale_e2e::eventually;
use funcscale_e2e::scenario::{Options, REDIS_URL, Scenario};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

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
    let s = Scenario::start(Options::new("watches")).await.unwrap();
    let (queues, pools, deployments) = (s.queues(), s.pools(), s.deployments());
    let logs =
        || std::fs::read_to_string(s.log_dir().join("operator-op-0.log")).unwrap_or_default();
    s.apply_queue("q", json!({"taskTimeMs": 500, "redis": {"url": REDIS_URL}}))
        .await
        .unwrap();
    let pool = json!({"queues": ["q"], "replicas": 2, "handler": "builtin"});
    s.apply_pool("w", pool.clone()).await.unwrap();

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

    // 1. status only: the pods became ready (the Deployment's generation did not change)
    eventually(
        Duration::from_secs(60),
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
    s.apply_queue("q", json!({"taskTimeMs": 500, "redis": {"url": other_url}}))
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
    s.apply_pool("w2", pool).await.unwrap();
    eventually(WAIT, "queue q served by w and w2", || async {
        let q = queues.get("q").await.ok()?;
        (q.status?.consumers == ["w", "w2"]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    for name in ["w", "w2"] {
        pools.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let unserved = eventually(WAIT, "queue q not served", || async {
        let q = queues.get("q").await.ok()?;
        let st = q.status?;
        let served = st.conditions.iter().find(|c| c.type_ == "Served")?;
        (st.consumers.is_empty() && served.status == "False").then_some(())
    })
    .await;
    if let Err(e) = unserved {
        let st = queues.get("q").await.map(|q| q.status);
        panic!("{e}\n{st:#?}\n{}", logs());
    }

    s.shutdown().await;
}

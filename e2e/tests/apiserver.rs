//! The test API server against kube's own client, watcher, reflector and Controller, over HTTP
//! through a kubeconfig.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use funcscale_e2e::{ServerConfig, TestCluster, eventually, wait_for};
use funcscale_operator::crd::FuncWorkerPool;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"}
    }))
    .unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"]}]}
            }
        }
    }))
    .unwrap()
}

fn pool(name: &str) -> FuncWorkerPool {
    serde_json::from_value(json!({
        "apiVersion": "funcscale.dev/v1alpha1", "kind": "FuncWorkerPool",
        "metadata": {"name": name},
        "spec": {"queues": ["q1"], "replicas": 2}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_selectors_and_discovery() {
    let cluster = TestCluster::start().await.unwrap();
    let (_, kubeconfig, client) = cluster.parts();
    assert!(kubeconfig.exists());
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");

    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let created = cms
        .create(&PostParams::default(), &cm("a", &[("app", "x")]))
        .await
        .unwrap();
    assert!(created.uid().is_some());
    cms.create(&PostParams::default(), &cm("b", &[("app", "y")]))
        .await
        .unwrap();
    let err = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );

    let list = cms
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= created.resource_version().unwrap().parse().unwrap());
    let all = cms
        .list(&ListParams::default().labels("app in (x,y)"))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);

    // replace with a stale resourceVersion conflicts; with the current one it works
    let mut a = cms.get("a").await.unwrap();
    a.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
    let replaced = cms.replace("a", &PostParams::default(), &a).await.unwrap();
    let err = cms
        .replace("a", &PostParams::default(), &a)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    assert_ne!(replaced.resource_version(), a.resource_version());

    // merge patch and JSON patch
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"m": "1"}})),
    )
    .await
    .unwrap();
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/j", "value": "2"}])).unwrap();
    let patched = cms
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    let data = patched.data.unwrap();
    assert_eq!(
        (data["k"].as_str(), data["m"].as_str(), data["j"].as_str()),
        ("v2", "1", "2")
    );

    // cluster-wide list and Leases
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "op"}, "spec": {"holderIdentity": "me"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        Api::<Lease>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("a").await.unwrap().is_none());

    // discovery: custom resources appear once their CRD exists
    let pools: Api<FuncWorkerPool> = Api::default_namespaced(client.clone());
    let err = pools.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    cluster.install_crds().await.unwrap();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.plural == "funcworkerpools")
        .expect("funcworkerpools discovered");
    assert_eq!(ar.group, "funcscale.dev");
    assert!(caps.subresources.iter().any(|(sr, _)| sr.plural == "scale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_managers_and_noop() {
    let cluster = TestCluster::start().await.unwrap();
    let deploys: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let ssa = PatchParams::apply("funcscale-operator").force();

    // create-on-apply
    let d = deploys
        .patch("web", &ssa, &Patch::Apply(deployment("web", 2)))
        .await
        .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let managers: Vec<String> = d
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["funcscale-operator".to_string()]);

    // the same apply again writes nothing (no new resourceVersion, no watch event)
    let again = deploys
        .patch("web", &ssa, &Patch::Apply(deployment("web", 2)))
        .await
        .unwrap();
    assert_eq!(again.resource_version(), d.resource_version());
    assert_eq!(again.metadata.generation, d.metadata.generation);

    // another manager touching an owned field conflicts unless it forces
    let other = PatchParams::apply("someone-else");
    let err = deploys
        .patch("web", &other, &Patch::Apply(deployment("web", 5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    let forced = deploys
        .patch(
            "web",
            &other.clone().force(),
            &Patch::Apply(deployment("web", 5)),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.unwrap().replicas, Some(5));

    // status is a subresource: a status patch keeps spec, a spec apply keeps status
    deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 5}})),
        )
        .await
        .unwrap();
    let after = deploys
        .patch("web", &ssa, &Patch::Apply(deployment("web", 3)))
        .await
        .unwrap();
    assert_eq!(after.status.unwrap().replicas, Some(5));
    assert_eq!(after.spec.unwrap().replicas, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_status_and_scale() {
    let cluster = TestCluster::start().await.unwrap();
    cluster.install_crds().await.unwrap();
    let pools: Api<FuncWorkerPool> = Api::default_namespaced(cluster.client.clone());
    pools
        .patch(
            "w1",
            &PatchParams::apply("test").force(),
            &Patch::Apply(pool("w1")),
        )
        .await
        .unwrap();
    pools
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1, "selector": "funcscale.dev/pool=w1"}})),
        )
        .await
        .unwrap();

    let scale = pools.get_scale("w1").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    let st = scale.status.unwrap();
    assert_eq!(
        (st.replicas, st.selector.as_deref()),
        (1, Some("funcscale.dev/pool=w1"))
    );

    pools
        .patch_scale(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let p = pools.get("w1").await.unwrap();
    assert_eq!(p.spec.replicas, Some(4));
    assert_eq!(p.status.as_ref().unwrap().replicas, 1);

    let mut scale = pools.get_scale("w1").await.unwrap();
    scale.spec.as_mut().unwrap().replicas = Some(6);
    pools
        .replace_scale("w1", &PostParams::default(), &scale)
        .await
        .unwrap();
    // stale resourceVersion on the Scale conflicts
    let err = pools
        .replace_scale("w1", &PostParams::default(), &scale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    assert_eq!(pools.get("w1").await.unwrap().spec.replicas, Some(6));

    // Deployments have a scale subresource too; the selector comes from spec.selector
    let deploys: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    deploys
        .create(&PostParams::default(), &deployment("d", 1))
        .await
        .unwrap();
    deploys
        .patch_scale(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let s = deploys.get_scale("d").await.unwrap();
    assert_eq!(s.spec.unwrap().replicas, Some(3));
    assert_eq!(s.status.unwrap().selector.as_deref(), Some("app=d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collects_owned_children() {
    let cluster = TestCluster::start().await.unwrap();
    cluster.install_crds().await.unwrap();
    let client = cluster.client.clone();
    let pools: Api<FuncWorkerPool> = Api::default_namespaced(client.clone());
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let p = pools
        .create(&PostParams::default(), &pool("w1"))
        .await
        .unwrap();
    let other = pools
        .create(&PostParams::default(), &pool("w2"))
        .await
        .unwrap();
    let owner = p.controller_owner_ref(&()).unwrap();

    let mut d = deployment("w1", 1);
    d.metadata.owner_references = Some(vec![owner.clone()]);
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let mut c = cm("w1", &[]);
    c.metadata.owner_references = Some(vec![owner.clone()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let mut shared = cm("shared", &[]);
    shared.metadata.owner_references = Some(vec![owner.clone(), other.owner_ref(&()).unwrap()]);
    cms.create(&PostParams::default(), &shared).await.unwrap();
    cms.create(&PostParams::default(), &cm("unrelated", &[]))
        .await
        .unwrap();

    pools.delete("w1", &DeleteParams::default()).await.unwrap();
    assert!(deploys.get_opt("w1").await.unwrap().is_none());
    assert!(cms.get_opt("w1").await.unwrap().is_none());
    assert!(cms.get_opt("unrelated").await.unwrap().is_some());
    let shared = cms.get("shared").await.unwrap();
    assert_eq!(
        shared.owner_references().len(),
        1,
        "only the deleted owner's reference goes"
    );

    // a child created for an owner that is already gone is collected at once
    let mut late = cm("late", &[]);
    late.metadata.owner_references = Some(vec![owner.clone()]);
    cms.create(&PostParams::default(), &late).await.unwrap();
    assert!(cms.get_opt("late").await.unwrap().is_none());

    // Orphan keeps the children
    let mut c = cm("orphan", &[]);
    c.metadata.owner_references = Some(vec![other.owner_ref(&()).unwrap()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    pools.delete("w2", &DeleteParams::orphan()).await.unwrap();
    assert!(cms.get_opt("orphan").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_events_bookmarks_and_gone() {
    let cluster = TestCluster::start_with(ServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    cms.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let mut stream = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("w", &[]))
        .await
        .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    let mut last_rv = 0u64;
    let mut bookmark = false;
    while !(seen.len() == 3 && bookmark) {
        let ev = tokio::time::timeout(T, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (kind, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(b) => {
                bookmark = b.metadata.resource_version.parse::<u64>().unwrap() >= last_rv;
                continue;
            }
            WatchEvent::Error(e) => panic!("unexpected {e:?}"),
        };
        assert_eq!(obj.name_any(), "w");
        let rv: u64 = obj.resource_version().unwrap().parse().unwrap();
        assert!(rv > last_rv, "resourceVersions increase");
        last_rv = rv;
        seen.push(kind);
    }
    assert_eq!(seen, vec!["ADDED", "MODIFIED", "DELETED"]);

    // a resourceVersion older than the retained history answers 410 Gone
    cluster.server.compact_watch_history();
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(T, old.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_and_reflector_survive_stream_restarts() {
    let cluster = TestCluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let (reader, writer) = reflector::store::<ConfigMap>();
    let inits = Arc::new(AtomicUsize::new(0));
    let counted = inits.clone();
    let stream = watcher(cms.clone(), watcher::Config::default().labels("app=r"))
        .default_backoff()
        .inspect(move |ev| {
            if matches!(ev, Ok(watcher::Event::Init)) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
    let task = tokio::spawn(reflector(writer, stream).for_each(|_| async {}));
    let names = |r: &reflector::Store<ConfigMap>| {
        let mut n: Vec<String> = r.state().iter().map(|c| c.name_any()).collect();
        n.sort();
        n
    };

    cms.create(&PostParams::default(), &cm("one", &[("app", "r")]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("other", &[("app", "no")]))
        .await
        .unwrap();
    eventually(T, "reflector has one", || async {
        (names(&reader) == ["one"]).then_some(())
    })
    .await
    .unwrap();

    // stream cut: the watcher resumes from its resourceVersion, no re-list
    cluster.server.disconnect_watches();
    cms.create(&PostParams::default(), &cm("two", &[("app", "r")]))
        .await
        .unwrap();
    eventually(T, "reflector has two", || async {
        (names(&reader) == ["one", "two"]).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(inits.load(Ordering::SeqCst), 1);

    // watches down while things change, and the history is gone when they come back:
    // 410, the watcher re-lists, and sees the deletion it missed
    cluster.server.pause_watches();
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    cms.create(&PostParams::default(), &cm("three", &[("app", "r")]))
        .await
        .unwrap();
    cluster.server.compact_watch_history();
    assert_eq!(names(&reader), ["one", "two"], "nothing seen while paused");
    cluster.server.resume_watches();
    eventually(T, "reflector re-listed", || async {
        (names(&reader) == ["three", "two"]).then_some(())
    })
    .await
    .unwrap();
    eventually(T, "a second initial list", || async {
        (inits.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await
    .unwrap();

    // and it keeps watching after the re-list
    cms.patch(
        "two",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .unwrap();
    eventually(T, "modification seen", || async {
        reader
            .state()
            .iter()
            .any(|c| c.name_any() == "two" && c.data.as_ref().unwrap()["k"] == "changed")
            .then_some(())
    })
    .await
    .unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles_and_owns_children() {
    let cluster = TestCluster::start().await.unwrap();
    cluster.install_crds().await.unwrap();
    let client = cluster.client.clone();
    let pools: Api<FuncWorkerPool> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    struct Ctx {
        client: kube::Client,
        runs: AtomicUsize,
    }
    async fn reconcile(p: Arc<FuncWorkerPool>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        ctx.runs.fetch_add(1, Ordering::SeqCst);
        let ns = p.namespace().unwrap();
        let mut child = cm(&p.name_any(), &[("funcscale.dev/pool", &p.name_any())]);
        child.metadata.owner_references = Some(vec![p.controller_owner_ref(&()).unwrap()]);
        child.data = Some(BTreeMap::from([("queues".into(), p.spec.queues.join(","))]));
        let ssa = PatchParams::apply("test-controller").force();
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .patch(&p.name_any(), &ssa, &Patch::Apply(&child))
            .await?;
        Api::<FuncWorkerPool>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"observedGeneration": p.metadata.generation}})),
            )
            .await?;
        Ok(Action::await_change())
    }
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        runs: AtomicUsize::new(0),
    });
    let controller = Controller::new(pools.clone(), watcher::Config::default())
        .owns(cms.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    pools
        .create(&PostParams::default(), &pool("w1"))
        .await
        .unwrap();
    wait_for(&cms, "w1", T, |c: Option<&ConfigMap>| c.is_some())
        .await
        .unwrap();
    wait_for(&pools, "w1", T, |p: Option<&FuncWorkerPool>| {
        p.and_then(|p| p.status.as_ref()?.observed_generation) == Some(1)
    })
    .await
    .unwrap();

    // drift on the owned child triggers a reconcile that repairs it
    cms.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"queues": "tampered"}})),
    )
    .await
    .unwrap();
    wait_for(&cms, "w1", T, |c: Option<&ConfigMap>| {
        c.and_then(|c| c.data.as_ref()?.get("queues").cloned()) == Some("q1".into())
    })
    .await
    .unwrap();

    // a spec change reconciles with the new generation
    pools
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"queues": ["q1", "q2"]}})),
        )
        .await
        .unwrap();
    wait_for(&cms, "w1", T, |c: Option<&ConfigMap>| {
        c.and_then(|c| c.data.as_ref()?.get("queues").cloned()) == Some("q1,q2".into())
    })
    .await
    .unwrap();

    // deleting the pool collects the child
    pools.delete("w1", &DeleteParams::default()).await.unwrap();
    wait_for(&cms, "w1", T, |c: Option<&ConfigMap>| c.is_none())
        .await
        .unwrap();
    assert!(ctx.runs.load(Ordering::SeqCst) >= 3);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_watch_sees_objects_enter_and_leave() {
    let cluster = TestCluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let (reader, writer) = reflector::store::<ConfigMap>();
    // streaming list: initial state through the watch, ended by an initial-events-end bookmark
    let stream = watcher(
        cms.clone(),
        watcher::Config::default()
            .labels("tier=web")
            .streaming_lists(),
    );
    let task = tokio::spawn(reflector(writer, stream).for_each(|_| async {}));
    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("y", &[("tier", "web")]))
        .await
        .unwrap();
    eventually(T, "initial state", || async {
        (reader.state().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let label = |v: Option<&str>| json!({"metadata": {"labels": {"tier": v}}});
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(label(Some("web"))),
    )
    .await
    .unwrap();
    eventually(T, "x enters the selection", || async {
        (reader.state().len() == 2).then_some(())
    })
    .await
    .unwrap();
    cms.patch("x", &PatchParams::default(), &Patch::Merge(label(None)))
        .await
        .unwrap();
    eventually(T, "x leaves the selection", || async {
        (reader.state().len() == 1).then_some(())
    })
    .await
    .unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_recorder_publishes() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let cluster = TestCluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let obj = cms
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(cluster.client.clone(), Reporter::from("funcscale-e2e"));
    let ev = Event {
        type_: EventType::Normal,
        reason: "Scaled".into(),
        note: Some("0 → 2".into()),
        action: "Scale".into(),
        secondary: None,
    };
    recorder.publish(&ev, &obj.object_ref(&())).await.unwrap();
    recorder.publish(&ev, &obj.object_ref(&())).await.unwrap();
    let events: Api<K8sEvent> = Api::default_namespaced(cluster.client.clone());
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items.len(),
        1,
        "the repeat is a series on the same Event"
    );
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
}

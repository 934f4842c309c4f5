//! Reconcilers against an in-memory Kubernetes API (`kube-fake-client`): each test pins the
//! API calls a reconcile makes and what ends up in the objects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use funcscale_operator::context::{Config, Shared};
use funcscale_operator::crd::*;
use funcscale_operator::redis_metrics::{QueueId, QueueMetrics, Reading};
use funcscale_operator::{pool, queue};
use funcscale_worker::protocol::Keys;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kube_fake_client::{ClientBuilder, interceptor};

const NS: &str = "team";
const T0: u64 = 1_800_000_000_000;

type Ops = Arc<Mutex<Vec<String>>>;
/// An error the API answers every apply of a kind with: (kind, HTTP code, message).
type Refusal = Arc<Mutex<Option<(String, u16, String)>>>;

fn kind_of(v: &serde_json::Value) -> String {
    v.get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("?")
        .to_string()
}

struct Env {
    client: Client,
    shared: Arc<Shared>,
    queue_ctx: Arc<queue::Context>,
    pool_ctx: Arc<pool::Context>,
    ops: Ops,
    /// `reason: note` of every Event created.
    events: Ops,
    clock: Arc<AtomicU64>,
    /// Set to make the API answer applies of that kind with an error.
    refuse: Refusal,
    queues_w: Writer<FuncQueue>,
    pools_w: Writer<FuncWorkerPool>,
}

impl Env {
    async fn new(conflict_on_patch: bool) -> Self {
        Self::with_config(conflict_on_patch, Config::default()).await
    }

    async fn with_config(conflict_on_patch: bool, config: Config) -> Self {
        let ops: Ops = Arc::default();
        let events: Ops = Arc::default();
        let (o1, o2, o3, o4) = (ops.clone(), ops.clone(), ops.clone(), ops.clone());
        let e1 = events.clone();
        let refuse: Refusal = Arc::default();
        let r1 = refuse.clone();
        let funcs = interceptor::Funcs::new()
            .create(move |c| {
                let kind = kind_of(c.object);
                if kind == "Event" {
                    let text = |k: &str| c.object.get(k).and_then(|v| v.as_str()).unwrap_or("");
                    e1.lock()
                        .unwrap()
                        .push(format!("{}: {}", text("reason"), text("note")));
                }
                o1.lock().unwrap().push(format!("create {kind}"));
                Ok(None)
            })
            .patch(move |c| {
                if conflict_on_patch {
                    return Err(kube_fake_client::Error::Conflict(
                        "the object has been modified".into(),
                    ));
                }
                if let Some((kind, code, msg)) = r1.lock().unwrap().clone()
                    && kind == kind_of(c.patch)
                {
                    return Err(match code {
                        422 => kube_fake_client::Error::InvalidRequest(msg),
                        _ => kube_fake_client::Error::Internal(msg),
                    });
                }
                o2.lock().unwrap().push(format!(
                    "patch {:?} {} {}",
                    c.patch_type,
                    kind_of(c.patch),
                    c.name
                ));
                Ok(None)
            })
            .patch_status(move |c| {
                o3.lock().unwrap().push(format!("patch-status {}", c.name));
                Ok(None)
            })
            .replace(move |c| {
                o4.lock().unwrap().push(format!("replace {}", c.name));
                Ok(None)
            });
        let client = ClientBuilder::new()
            .with_resource::<FuncQueue>()
            .with_resource::<FuncWorkerPool>()
            .with_status_subresource::<Deployment>()
            .with_interceptor_funcs(funcs)
            .build()
            .await
            .unwrap();
        let (queues, queues_w) = reflector::store();
        let (pools, pools_w) = reflector::store();
        let clock = Arc::new(AtomicU64::new(T0));
        let c2 = clock.clone();
        let shared = Arc::new(Shared::new(
            client.clone(),
            config,
            funcscale_operator::telemetry::Metrics::new(),
            queues,
            Arc::new(move || c2.load(Ordering::SeqCst)),
        ));
        let queue_configs = Arc::default();
        let queue_ctx = Arc::new(queue::Context::new(
            shared.clone(),
            Arc::clone(&queue_configs),
        ));
        let pool_ctx = Arc::new(pool::Context::new(shared.clone(), pools, queue_configs));
        Self {
            client,
            shared,
            queue_ctx,
            pool_ctx,
            ops,
            events,
            clock,
            refuse,
            queues_w,
            pools_w,
        }
    }

    /// A pool watch event, to the store and the index (as the operator's pool stream does).
    fn pool_event(&mut self, e: watcher::Event<FuncWorkerPool>) {
        self.pools_w.apply_watcher_event(&e);
        self.shared.index.apply(&e);
    }

    /// A queue watch event, to the store and the key index (as the operator's queue stream
    /// does).
    fn queue_event(&mut self, e: watcher::Event<FuncQueue>) {
        self.queues_w.apply_watcher_event(&e);
        self.shared.key_index.apply(&e);
    }

    fn take_ops(&self) -> Vec<String> {
        std::mem::take(&mut *self.ops.lock().unwrap())
    }

    async fn add_queue(&mut self, name: &str, spec: FuncQueueSpec) -> FuncQueue {
        self.add_queue_in(NS, name, spec).await
    }

    async fn add_queue_in(&mut self, ns: &str, name: &str, spec: FuncQueueSpec) -> FuncQueue {
        let api: Api<FuncQueue> = Api::namespaced(self.client.clone(), ns);
        let q = api
            .create(&PostParams::default(), &FuncQueue::new(name, spec))
            .await
            .unwrap();
        self.queue_event(watcher::Event::Apply(q.clone()));
        self.take_ops();
        q
    }

    async fn add_pool(&mut self, name: &str, spec: FuncWorkerPoolSpec) -> FuncWorkerPool {
        self.add_pool_in(NS, name, spec).await
    }

    async fn add_pool_in(
        &mut self,
        ns: &str,
        name: &str,
        spec: FuncWorkerPoolSpec,
    ) -> FuncWorkerPool {
        let api: Api<FuncWorkerPool> = Api::namespaced(self.client.clone(), ns);
        let p = api
            .create(&PostParams::default(), &FuncWorkerPool::new(name, spec))
            .await
            .unwrap();
        self.pool_event(watcher::Event::Apply(p.clone()));
        self.take_ops();
        p
    }

    async fn pool(&self, name: &str) -> FuncWorkerPool {
        Api::<FuncWorkerPool>::namespaced(self.client.clone(), NS)
            .get(name)
            .await
            .unwrap()
    }

    async fn deployment(&self, name: &str) -> Option<Deployment> {
        Api::<Deployment>::namespaced(self.client.clone(), NS)
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn reconcile_pool(&self, name: &str) -> Result<Action, funcscale_operator::error::Error> {
        let p = Arc::new(self.pool(name).await);
        pool::reconcile(p, self.pool_ctx.clone()).await
    }

    fn set_metrics(&self, queue: &str, depth: u64, task_ms: f64) {
        self.shared.cache.set(
            QueueId::new(NS, queue),
            Reading::Ok(QueueMetrics {
                depth,
                task_time_ms: task_ms,
                task_time_measured: true,
                polled_at_ms: self.clock.load(Ordering::SeqCst),
                ..Default::default()
            }),
        );
    }

    fn advance(&self, d: Duration) {
        self.clock.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

fn autoscaled(queues: &[&str], min: i32, max: i32) -> FuncWorkerPoolSpec {
    FuncWorkerPoolSpec {
        queues: queues.iter().map(|s| s.to_string()).collect(),
        processes_per_pod: 5,
        autoscaling: Some(Autoscaling {
            min_replicas: min,
            max_replicas: max,
            drain_target_seconds: 60,
            period_ms: 60_000,
            scale_down_stabilization_seconds: 300,
            scale_up_max_step: 100,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

fn condition<'a>(p: &'a FuncWorkerPool, t: &str) -> &'a Condition {
    p.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

fn queue_spec() -> FuncQueueSpec {
    FuncQueueSpec {
        task_time_ms: 500,
        max_retries: 3,
        ..Default::default()
    }
}

#[tokio::test]
async fn create_builds_the_deployment_with_ssa_and_writes_status() {
    let mut env = Env::new(false).await;
    env.add_queue("q8", queue_spec()).await;
    let mut spec = autoscaled(&["q8"], 1, 50);
    spec.limits = Some(ProcessLimits {
        hard_time_limit_seconds: Some(600),
        ..Default::default()
    });
    spec.resources = Some(Resources {
        requests: [("cpu".to_string(), "2.5".to_string())].into(),
        ..Default::default()
    });
    spec.pod_template = Some(
        serde_json::json!({"spec": {"nodeSelector": {"pool": "workers"},
        "containers": [{"name": "worker", "env": [{"name": "EXTRA", "value": "1"}]}]}}),
    );
    let p = env.add_pool("worker-8", spec).await;
    env.set_metrics("q8", 4200, 480.0);

    let action = env.reconcile_pool("worker-8").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(
        env.take_ops(),
        vec![
            "patch ApplyPatch Deployment worker-8",
            "patch-status worker-8"
        ]
    );

    let d = env.deployment("worker-8").await.expect("deployment");
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("FuncWorkerPool", p.uid().unwrap().as_str(), Some(true))
    );
    let status = env.pool("worker-8").await.status.unwrap();
    // 4200 tasks × 480 ms within 60 s on 5 processes per pod: 7 pods
    assert_eq!(replicas(&d), Some(7));
    assert_eq!(status.desired_replicas, 7);
    assert_eq!(status.decision.as_ref().unwrap().depth, Some(4200));
    assert_eq!(
        status.queues,
        vec![QueueDepth {
            name: "q8".into(),
            depth: 4200
        }]
    );
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/name=funcscale-worker,funcscale.dev/pool=worker-8")
    );
    assert_eq!(status.observed_generation, p.metadata.generation);

    let spec = d.spec.unwrap();
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(630));
    assert_eq!(pod.node_selector.unwrap()["pool"], "workers");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(funcscale_operator::context::default_worker_image().as_str())
    );
    let cmd = c.command.clone().unwrap().join(" ");
    assert!(
        cmd.starts_with("funcscale-worker run --queues {team.q8} --processes 5"),
        "{cmd}"
    );
    assert!(
        cmd.contains("--hard-time-limit 600") && cmd.contains("--drain-timeout 600"),
        "{cmd}"
    );
    let env_names: Vec<_> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        env_names.contains(&"FUNCSCALE_REDIS_URL") && env_names.contains(&"EXTRA"),
        "{env_names:?}"
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "2.5"
    );
    assert_eq!(
        spec.strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    assert_eq!(
        condition(&env.pool("worker-8").await, "MetricsAvailable").status,
        "True"
    );

    // nothing changed: the second reconcile neither applies nor writes status
    env.reconcile_pool("worker-8").await.unwrap();
    assert_eq!(env.take_ops(), Vec::<String>::new());

    // someone scales the autoscaled Deployment by hand: the operator's number is restored
    Api::<Deployment>::namespaced(env.client.clone(), NS)
        .patch(
            "worker-8",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    env.take_ops();
    env.reconcile_pool("worker-8").await.unwrap();
    assert_eq!(env.take_ops()[0], "patch ApplyPatch Deployment worker-8");
    assert_eq!(
        replicas(&env.deployment("worker-8").await.unwrap()),
        Some(7)
    );
}

#[tokio::test]
async fn scales_up_at_once_and_down_only_after_the_window() {
    let mut env = Env::new(false).await;
    env.add_queue("q1", queue_spec()).await;
    env.add_pool("w", autoscaled(&["q1"], 1, 50)).await;
    env.set_metrics("q1", 0, 500.0);
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(1));
    env.take_ops();

    // backlog: 6000 × 500 ms / (5 × 60 s) = 10 pods
    env.advance(Duration::from_secs(1));
    env.set_metrics("q1", 6000, 500.0);
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(10));
    let ops = env.take_ops();
    assert!(ops.contains(&"create Event".to_string()), "{ops:?}");
    // the Event says what changed and why, with the numbers
    let events = std::mem::take(&mut *env.events.lock().unwrap());
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].starts_with("Scaled: scaled 1 → 10: backlog 6000")
            && events[0].contains("T 500 ms"),
        "{events:?}"
    );
    let p = env.pool("w").await;
    assert_eq!(condition(&p, "Scaling").reason, "ScalingUp");

    // drained: stays at 10 within the 300 s window
    env.advance(Duration::from_secs(60));
    env.set_metrics("q1", 0, 500.0);
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(10));
    assert_eq!(
        env.pool("w").await.status.unwrap().decision.unwrap().rule,
        "Stabilized"
    );

    // after the window: down to min
    env.advance(Duration::from_secs(301));
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(1));
    // a second "Scaled" event within minutes is a series update of the first (kube's Recorder)
    let ops = env.take_ops();
    assert!(ops.iter().any(|o| o.contains("Event")), "{ops:?}");
}

#[tokio::test]
async fn redis_unavailable_holds_the_size() {
    let mut env = Env::new(false).await;
    env.add_queue("q1", queue_spec()).await;
    env.add_pool("w", autoscaled(&["q1"], 0, 50)).await;
    env.set_metrics("q1", 6000, 500.0);
    env.reconcile_pool("w").await.unwrap();
    let before = replicas(&env.deployment("w").await.unwrap());
    assert!(before.unwrap() > 0);
    env.advance(Duration::from_secs(1000));
    env.shared.cache.set(
        QueueId::new(NS, "q1"),
        Reading::Unavailable {
            error: "cannot connect to redis://x:6379: refused".into(),
            reason: Default::default(),
            since_ms: T0,
        },
    );
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), before);
    let p = env.pool("w").await;
    let c = condition(&p, "MetricsAvailable");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RedisUnavailable")
    );
    assert!(c.message.contains("refused"), "{}", c.message);
    assert_eq!(p.status.unwrap().decision.unwrap().rule, "Held");
}

#[tokio::test]
async fn beat_is_one_replica_recreate_and_restored_after_kubectl_scale() {
    let mut env = Env::new(false).await;
    let mut qs = queue_spec();
    qs.schedules = vec![Schedule {
        name: "tick".into(),
        cron: "*/10 * * * * *".into(),
        function: "f".into(),
        args: vec![],
    }];
    env.add_queue("q1", qs).await;
    env.add_pool(
        "beat",
        FuncWorkerPoolSpec {
            role: PoolRole::Beat,
            processes_per_pod: 1,
            ..Default::default()
        },
    )
    .await;
    env.reconcile_pool("beat").await.unwrap();
    assert_eq!(
        env.take_ops(),
        vec![
            "patch ApplyPatch ConfigMap beat-schedules",
            "patch ApplyPatch Deployment beat",
            "patch-status beat"
        ]
    );
    let d = env.deployment("beat").await.unwrap();
    assert_eq!(replicas(&d), Some(1));
    let spec = d.spec.unwrap();
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        c.command.as_ref().unwrap().join(" "),
        "funcscale-worker beat --namespace team --schedules-file /etc/funcscale/schedules.yaml"
    );
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.client.clone(), NS)
        .get("beat-schedules")
        .await
        .unwrap();
    let yaml = &cm.data.unwrap()["schedules.yaml"];
    assert!(
        yaml.contains("kind: FuncQueue") && yaml.contains("*/10 * * * * *"),
        "{yaml}"
    );

    // someone runs `kubectl scale deployment beat --replicas=3`
    Api::<Deployment>::namespaced(env.client.clone(), NS)
        .patch(
            "beat",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    env.take_ops();
    env.reconcile_pool("beat").await.unwrap();
    assert_eq!(replicas(&env.deployment("beat").await.unwrap()), Some(1));
    let ops = env.take_ops();
    assert!(
        ops.contains(&"patch ApplyPatch Deployment beat".to_string())
            && ops.contains(&"create Event".to_string()),
        "{ops:?}"
    );
}

#[tokio::test]
async fn second_beat_for_the_same_namespace_and_redis_is_refused() {
    let mut env = Env::new(false).await;
    env.add_queue("q1", queue_spec()).await;
    let beat = || FuncWorkerPoolSpec {
        role: PoolRole::Beat,
        processes_per_pod: 1,
        ..Default::default()
    };
    // the oldest Beat runs in another tenant's namespace on the same Redis: it fires only
    // that namespace's schedules and keeps neither of this namespace's from running
    env.add_queue_in("other", "q1", queue_spec()).await;
    env.add_pool_in("other", "beat-other", beat()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second resolution
    env.add_pool("beat-a", beat()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second resolution
    env.add_pool("beat-b", beat()).await;

    env.reconcile_pool("beat-b").await.unwrap();
    assert_eq!(replicas(&env.deployment("beat-b").await.unwrap()), Some(0));
    let b = env.pool("beat-b").await;
    let c = condition(&b, "Conflict");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "BeatAlreadyRunning")
    );
    assert!(c.message.contains("team/beat-a"), "{}", c.message);
    assert_eq!(condition(&b, "Ready").status, "False");

    env.reconcile_pool("beat-a").await.unwrap();
    assert_eq!(replicas(&env.deployment("beat-a").await.unwrap()), Some(1));
    assert_eq!(
        condition(&env.pool("beat-a").await, "Conflict").status,
        "False"
    );
}

#[tokio::test]
async fn invalid_spec_sets_a_condition_and_waits_for_a_change() {
    let mut env = Env::new(false).await;
    env.add_pool("w", autoscaled(&["missing"], 1, 5)).await;
    let action = env.reconcile_pool("w").await.unwrap();
    assert_eq!(action, Action::await_change());
    let ops = env.take_ops();
    assert!(
        !ops.iter().any(|o| o.contains("Deployment")),
        "no Deployment for an invalid pool: {ops:?}"
    );
    assert!(ops.contains(&"patch-status w".to_string()));
    let p = env.pool("w").await;
    let c = condition(&p, "SpecValid");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        c.message
            .starts_with("spec.queues[0]: FuncQueue missing does not exist"),
        "{}",
        c.message
    );
    assert!(env.deployment("w").await.is_none());

    // a queue whose password Secret is missing
    let mut qs = queue_spec();
    qs.redis = Some(RedisConnection {
        url: Some("redis://redis:6379/0".into()),
        password_secret_ref: Some(SecretKeyRef {
            name: "redis-auth".into(),
            key: "password".into(),
        }),
        ..Default::default()
    });
    env.add_queue("q2", qs).await;
    env.add_pool("w2", autoscaled(&["q2"], 1, 5)).await;
    // a Secret is not watched: it looks again at the resync, for one created later
    assert_eq!(
        env.reconcile_pool("w2").await.unwrap(),
        Action::requeue(env.shared.config.resync)
    );
    let p = env.pool("w2").await;
    assert!(
        condition(&p, "SpecValid")
            .message
            .contains("Secret redis-auth not found"),
        "{:?}",
        p.status
    );

    // once the Secret exists, the pool is built and its pods read the password from it
    let mut s = Secret::default();
    s.metadata.name = Some("redis-auth".into());
    s.string_data = Some([("password".to_string(), "pw".to_string())].into());
    s.data = Some(
        [(
            "password".to_string(),
            k8s_openapi::ByteString(b"pw".to_vec()),
        )]
        .into(),
    );
    Api::<Secret>::namespaced(env.client.clone(), NS)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
    env.set_metrics("q2", 0, 500.0);
    env.reconcile_pool("w2").await.unwrap();
    let d = env.deployment("w2").await.unwrap();
    let envs = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let pw = envs
        .iter()
        .find(|e| e.name == "FUNCSCALE_REDIS_PASSWORD")
        .expect("password env");
    assert_eq!(
        pw.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "redis-auth"
    );
    assert_eq!(condition(&env.pool("w2").await, "SpecValid").status, "True");
}

#[tokio::test]
async fn a_pod_template_container_that_matches_none_and_has_no_image_is_refused_up_front() {
    let mut env = Env::new(false).await;
    // the Celery example's mistake: a Beat pool's container is `beat`, not `worker`
    env.add_pool(
        "celery-beat",
        FuncWorkerPoolSpec {
            role: PoolRole::Beat,
            image: Some("registry.example.com/shop/app:1.4.2".into()),
            command: vec!["celery".into(), "beat".into()],
            pod_template: Some(serde_json::json!({"spec": {"containers": [
                {"name": "worker", "env": [{"name": "CELERY_BROKER_URL", "value": "redis://r"}]}
            ]}})),
            ..Default::default()
        },
    )
    .await;
    let action = env.reconcile_pool("celery-beat").await.unwrap();
    assert_eq!(action, Action::await_change());
    let ops = env.take_ops();
    assert!(
        !ops.iter()
            .any(|o| o.contains("Deployment") || o.contains("ConfigMap")),
        "nothing is sent to the API: {ops:?}"
    );
    let p = env.pool("celery-beat").await;
    let want = "spec.podTemplate.spec.containers[0]: container \"worker\" matches no container \
                of this pool (its container is \"beat\") and has no image";
    for t in ["SpecValid", "Ready"] {
        let c = condition(&p, t);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "InvalidSpec", want),
            "{t}"
        );
    }
    assert_eq!(
        env.events.lock().unwrap().clone(),
        vec![format!("InvalidSpec: {want}")]
    );
    assert!(env.deployment("celery-beat").await.is_none());
}

#[tokio::test]
async fn an_object_the_api_rejects_is_a_condition_an_event_and_a_metric() {
    let mut env = Env::new(false).await;
    env.add_queue("q1", queue_spec()).await;
    env.add_pool("w", autoscaled(&["q1"], 1, 5)).await;
    env.set_metrics("q1", 0, 500.0);
    // what a real kube-apiserver answers for a container without an image
    let msg = "Deployment.apps \"w\" is invalid: spec.template.spec.containers[1].image: \
               Required value";
    *env.refuse.lock().unwrap() = Some(("Deployment".into(), 422, msg.into()));
    let rejected = |env: &Env, kind: &str| {
        series(
            env,
            "funcscale_apply_rejected_total",
            &format!("kind=\"{kind}\""),
        )
    };

    // 422: the rendered object is wrong; retrying the same cannot help: wait for a change
    let action = env.reconcile_pool("w").await.unwrap();
    assert_eq!(action, Action::await_change());
    let p = env.pool("w").await;
    let ready = condition(&p, "Ready");
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        ("False", "DeploymentRejected", msg)
    );
    assert_eq!(ready.observed_generation, p.metadata.generation);
    assert!(
        p.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .all(|c| c.type_ != "Scaling"),
        "nothing was scaled: {:?}",
        p.status
    );
    assert_eq!(
        env.events.lock().unwrap().clone(),
        vec![format!("DeploymentRejected: {msg}")]
    );
    assert_eq!(rejected(&env, "Deployment"), Some(1.0));

    // again (another trigger): counted, but the same Event is not repeated
    assert_eq!(
        env.reconcile_pool("w").await.unwrap(),
        Action::await_change()
    );
    assert_eq!(env.events.lock().unwrap().len(), 1);
    assert_eq!(rejected(&env, "Deployment"), Some(2.0));

    // 5xx is transient: an error that backs off, no rejection
    *env.refuse.lock().unwrap() = Some(("Deployment".into(), 500, "etcd timeout".into()));
    let err = env.reconcile_pool("w").await.unwrap_err();
    assert_eq!(err.category(), "api", "{err}");
    assert_eq!(rejected(&env, "Deployment"), Some(2.0));

    // accepted: the condition says so
    *env.refuse.lock().unwrap() = None;
    env.reconcile_pool("w").await.unwrap();
    let ready = condition(&env.pool("w").await, "Ready").clone();
    assert_eq!(ready.reason, "WaitingForReplicas", "{ready:?}");

    // a Beat pool's schedules ConfigMap
    env.add_pool(
        "beat",
        FuncWorkerPoolSpec {
            role: PoolRole::Beat,
            ..Default::default()
        },
    )
    .await;
    let cm_msg =
        "ConfigMap \"beat-schedules\" is invalid: []: Too long: must have at most 1048576 bytes";
    *env.refuse.lock().unwrap() = Some(("ConfigMap".into(), 422, cm_msg.into()));
    assert_eq!(
        env.reconcile_pool("beat").await.unwrap(),
        Action::await_change()
    );
    let ready = condition(&env.pool("beat").await, "Ready").clone();
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        ("False", "ConfigMapRejected", cm_msg)
    );
    assert!(
        env.deployment("beat").await.is_none(),
        "the Deployment is not applied"
    );
    assert_eq!(rejected(&env, "ConfigMap"), Some(1.0));
    assert_eq!(
        env.events.lock().unwrap().last().cloned(),
        Some(format!("ConfigMapRejected: {cm_msg}"))
    );
}

#[tokio::test]
async fn fixed_replicas_are_used_exactly_and_unmanaged_replicas_are_left_alone() {
    let mut env = Env::new(false).await;
    env.add_queue("q1", queue_spec()).await;
    env.add_pool(
        "fixed",
        FuncWorkerPoolSpec {
            queues: vec!["q1".into()],
            processes_per_pod: 5,
            replicas: Some(3),
            ..Default::default()
        },
    )
    .await;
    env.reconcile_pool("fixed").await.unwrap();
    assert_eq!(replicas(&env.deployment("fixed").await.unwrap()), Some(3));
    assert_eq!(
        env.pool("fixed")
            .await
            .status
            .unwrap()
            .decision
            .unwrap()
            .rule,
        "Fixed"
    );

    // neither replicas nor autoscaling: the SSA body carries no replicas, an HPA on the
    // Deployment (here: a merge patch) keeps its number
    env.add_pool(
        "free",
        FuncWorkerPoolSpec {
            queues: vec!["q1".into()],
            processes_per_pod: 5,
            ..Default::default()
        },
    )
    .await;
    env.reconcile_pool("free").await.unwrap();
    Api::<Deployment>::namespaced(env.client.clone(), NS)
        .patch(
            "free",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    env.reconcile_pool("free").await.unwrap();
    assert_eq!(replicas(&env.deployment("free").await.unwrap()), Some(7));
}

#[tokio::test]
async fn api_conflicts_back_off_per_object() {
    let mut env = Env::new(true).await;
    env.add_queue("q1", queue_spec()).await;
    env.add_pool("w", autoscaled(&["q1"], 1, 5)).await;
    env.set_metrics("q1", 0, 500.0);
    let p = Arc::new(env.pool("w").await);
    let err = pool::reconcile(p.clone(), env.pool_ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.category(), "conflict", "{err}");
    assert_eq!(
        pool::error_policy(p.clone(), &err, env.pool_ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        pool::error_policy(p.clone(), &err, env.pool_ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        pool::error_policy(p.clone(), &err, env.pool_ctx.clone()),
        Action::requeue(Duration::from_secs(4))
    );
    let m = env.shared.metrics.encode();
    assert!(
        m.contains(
            r#"funcscale_reconcile_failures_total{category="conflict",controller="pool"} 3"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn queue_status_reports_metrics_consumers_and_unserved_queues() {
    let mut env = Env::new(false).await;
    let q = env.add_queue("lonely", queue_spec()).await;
    env.shared.cache.set(
        QueueId::new(NS, "lonely"),
        Reading::Ok(QueueMetrics {
            depth: 12,
            oldest_age_seconds: Some(3.25),
            arrival_rate: 2.0,
            task_time_ms: 480.0,
            task_time_measured: true,
            scheduled_per_period: 17,
            scheduled_per_minute: 17.0,
            polled_at_ms: T0,
            ..Default::default()
        }),
    );
    queue::reconcile(Arc::new(q), env.queue_ctx.clone())
        .await
        .unwrap();
    assert!(
        env.shared
            .registry
            .get(&QueueId::new(NS, "lonely"))
            .is_some(),
        "registered for polling"
    );
    let q = Api::<FuncQueue>::namespaced(env.client.clone(), NS)
        .get("lonely")
        .await
        .unwrap();
    let st = q.status.clone().unwrap();
    assert_eq!(
        (
            st.depth,
            st.scheduled_per_period,
            st.task_time_source.as_deref()
        ),
        (Some(12), Some(17), Some("Measured"))
    );
    let served = st.conditions.iter().find(|c| c.type_ == "Served").unwrap();
    assert_eq!(
        (served.status.as_str(), served.reason.as_str()),
        ("False", "NoPool")
    );

    env.add_pool("w", autoscaled(&["lonely"], 1, 5)).await;
    queue::reconcile(Arc::new(q), env.queue_ctx.clone())
        .await
        .unwrap();
    let st = Api::<FuncQueue>::namespaced(env.client.clone(), NS)
        .get("lonely")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.consumers, vec!["w".to_string()]);
    assert_eq!(
        st.conditions
            .iter()
            .find(|c| c.type_ == "Served")
            .unwrap()
            .status,
        "True"
    );
}

#[tokio::test]
async fn a_queue_change_maps_to_every_pool_serving_it() {
    let mut env = Env::new(false).await;
    env.add_pool("a", autoscaled(&["q1", "q2"], 1, 5)).await;
    env.add_pool("b", autoscaled(&["q2"], 1, 5)).await;
    env.add_pool("c", autoscaled(&["q3"], 1, 5)).await;
    let mut names: Vec<String> = env
        .shared
        .index
        .pools_for_queue(NS, "q2")
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "b"]);
    assert!(env.shared.index.pools_for_queue("other", "q2").is_empty());
}

#[tokio::test]
async fn lease_leader_election() {
    use funcscale_operator::leader::LeaseLock;
    let env = Env::new(false).await;
    let a = LeaseLock::new(
        env.client.clone(),
        "ops",
        "leader",
        "a",
        Duration::from_secs(15),
    );
    let b = LeaseLock::new(
        env.client.clone(),
        "ops",
        "leader",
        "b",
        Duration::from_secs(15),
    );
    assert!(a.try_acquire_or_renew(T0).await.unwrap());
    assert!(
        !b.try_acquire_or_renew(T0 + 1000).await.unwrap(),
        "held by a"
    );
    assert!(a.try_acquire_or_renew(T0 + 5000).await.unwrap(), "a renews");
    assert!(
        !b.try_acquire_or_renew(T0 + 19_000).await.unwrap(),
        "a renewed at +5 s: valid until +20 s"
    );
    // a dies: b takes over once the lease has expired
    assert!(b.try_acquire_or_renew(T0 + 20_001).await.unwrap());
    assert_eq!(b.holder().await.unwrap().as_deref(), Some("b"));
    assert!(!a.try_acquire_or_renew(T0 + 21_000).await.unwrap());
    // graceful stop: b releases, a takes over at once
    b.release().await.unwrap();
    assert!(a.try_acquire_or_renew(T0 + 22_000).await.unwrap());
}

/// Real Redis → poll → trigger → reconcile → Deployment: one poll after the producers
/// pushed, the pool has its new size.
#[tokio::test]
async fn a_depth_change_reaches_the_deployment_within_one_poll() {
    use funcscale_operator::poll_loop;
    use funcscale_operator::redis_metrics::{Poller, PollerConfig};
    use funcscale_worker::protocol::Envelope;
    use redis::AsyncCommands;

    let prefix = format!("e2e-{}-{}", std::process::id(), T0);
    let keys = Keys::new(&prefix);
    let config = Config {
        keys: keys.clone(),
        ..Config::default()
    };
    let mut env = Env::with_config(false, config).await;
    let q = env.add_queue("q1", queue_spec()).await;
    env.add_pool("w", autoscaled(&["q1"], 1, 50)).await;
    queue::reconcile(Arc::new(q), env.queue_ctx.clone())
        .await
        .unwrap(); // registers q1 for polling
    let mut poller = Poller::new(
        env.shared.registry.clone(),
        env.shared.cache.clone(),
        PollerConfig::default(),
    );
    let (_, pools) = poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    assert_eq!(
        pools.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["w"]
    );
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(1));

    // producers push 6000 tasks of 500 ms (the hint): 6000 × 0.5 s / (5 × 60 s) = 10 pods
    let mut con = redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // the queue's id in Redis: namespace and name
    let q1 = Keys::queue_id(NS, "q1");
    let mut pipe = redis::pipe();
    for i in 0..6000 {
        pipe.lpush(
            keys.queue(&q1),
            Envelope::new(format!("t{i}"), "f", &q1, T0).to_json(),
        )
        .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    let started = std::time::Instant::now();
    let (report, pools) = poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    assert!(report.errors.is_empty(), "{report:?}");
    for p in pools {
        env.reconcile_pool(&p.name).await.unwrap();
    }
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(10));
    println!(
        "depth change → Deployment replicas in {:?} after the poll started",
        started.elapsed()
    );
    let _: () = con.del(keys.queue(&q1)).await.unwrap();
}

/// A deleted queue or pool leaves no metric series behind (it would report its last value
/// forever and keep alerts firing).
#[tokio::test]
async fn deleted_objects_leave_no_metric_series() {
    use funcscale_operator::poll_loop;
    use funcscale_operator::redis_metrics::{Poller, PollerConfig};
    use funcscale_worker::protocol::Keys;

    let prefix = format!("series-{}-{}", std::process::id(), T0);
    let config = Config {
        keys: Keys::new(&prefix),
        ..Config::default()
    };
    let mut env = Env::with_config(false, config).await;
    let q = env.add_queue("gone-q", queue_spec()).await;
    let p = env.add_pool("gone-w", autoscaled(&["gone-q"], 1, 5)).await;
    let b = env
        .add_pool(
            "gone-b",
            FuncWorkerPoolSpec {
                role: PoolRole::Beat,
                processes_per_pod: 1,
                ..Default::default()
            },
        )
        .await;
    let mut poller = Poller::new(
        env.shared.registry.clone(),
        env.shared.cache.clone(),
        PollerConfig::default(),
    );
    queue::reconcile(Arc::new(q.clone()), env.queue_ctx.clone())
        .await
        .unwrap();
    poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    queue::reconcile(Arc::new(q.clone()), env.queue_ctx.clone())
        .await
        .unwrap();
    env.reconcile_pool("gone-w").await.unwrap();
    env.reconcile_pool("gone-b").await.unwrap();
    let text = env.shared.metrics.encode();
    for series in [
        "funcscale_queue_depth{name=\"gone-q\"",
        "funcscale_queue_oldest_task_age_seconds{name=\"gone-q\"",
        "funcscale_queue_metrics_available{name=\"gone-q\"",
        "funcscale_queue_redis_info{name=\"gone-q\"",
        "funcscale_pool_desired_replicas{name=\"gone-w\"",
        "funcscale_beat_ready_replicas{name=\"gone-b\"",
    ] {
        let metric = series.split('{').next().unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with(metric) && l.contains("gone-")),
            "{series} missing before the delete:\n{text}"
        );
    }

    env.queue_event(watcher::Event::Delete(q));
    env.pool_event(watcher::Event::Delete(p));
    env.pool_event(watcher::Event::Delete(b));
    poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    let text = env.shared.metrics.encode();
    assert!(
        !text
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("\"gone-")),
        "series of deleted objects remain:\n{text}"
    );
}

/// The value of the operator's series `metric` for `labels` (`namespace="team",queue="q"`), if
/// it is exported.
fn series(env: &Env, metric: &str, labels: &str) -> Option<f64> {
    let text = env.shared.metrics.encode();
    let prefix = format!("{metric}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// The queue gauges the alerts read follow the last Redis reading: oldest age 0 when nothing
/// waits (the alert resolves), no age series when the format records no enqueue time, and
/// metrics-available mirrors the MetricsAvailable condition.
#[tokio::test]
async fn queue_gauges_follow_the_reading() {
    let prefix = format!("qgauges-{}-{}", std::process::id(), T0);
    let config = Config {
        keys: funcscale_worker::protocol::Keys::new(&prefix),
        ..Config::default()
    };
    let mut env = Env::with_config(false, config).await;
    let q = Arc::new(env.add_queue("q", queue_spec()).await);
    let labels = "namespace=\"team\",queue=\"q\"";
    let age = "funcscale_queue_oldest_task_age_seconds";
    let available = "funcscale_queue_metrics_available";
    let reading = |depth, oldest| {
        Reading::Ok(QueueMetrics {
            depth,
            oldest_age_seconds: oldest,
            ..Default::default()
        })
    };

    queue::reconcile(q.clone(), env.queue_ctx.clone())
        .await
        .unwrap();
    assert_eq!(series(&env, available, labels), Some(0.0), "not polled yet");

    env.shared
        .cache
        .set(QueueId::new(NS, "q"), reading(7, Some(420.5)));
    queue::reconcile(q.clone(), env.queue_ctx.clone())
        .await
        .unwrap();
    assert_eq!(series(&env, age, labels), Some(420.5));
    assert_eq!(series(&env, available, labels), Some(1.0));
    assert_eq!(series(&env, "funcscale_queue_depth", labels), Some(7.0));

    env.shared
        .cache
        .set(QueueId::new(NS, "q"), reading(0, None));
    queue::reconcile(q.clone(), env.queue_ctx.clone())
        .await
        .unwrap();
    assert_eq!(series(&env, age, labels), Some(0.0), "empty queue");

    env.shared
        .cache
        .set(QueueId::new(NS, "q"), reading(3, None));
    queue::reconcile(q.clone(), env.queue_ctx.clone())
        .await
        .unwrap();
    assert_eq!(series(&env, age, labels), None, "age unknown: no series");

    env.shared.cache.set(
        QueueId::new(NS, "q"),
        Reading::Unavailable {
            error: "connection refused".into(),
            reason: Default::default(),
            since_ms: T0,
        },
    );
    queue::reconcile(q.clone(), env.queue_ctx.clone())
        .await
        .unwrap();
    assert_eq!(series(&env, available, labels), Some(0.0), "Redis down");

    // which Redis topology and node the queue is read from: one series, moved when the
    // queue's slot moves to another master
    let info = "funcscale_queue_redis_info";
    let on =
        |node: &str| format!("namespace=\"team\",node=\"{node}\",queue=\"q\",topology=\"cluster\"");
    for node in ["10.0.0.1:7000", "10.0.0.2:7001"] {
        env.shared.cache.set(
            QueueId::new(NS, "q"),
            Reading::Ok(QueueMetrics {
                depth: 1,
                topology: "cluster",
                node: node.into(),
                ..Default::default()
            }),
        );
        queue::reconcile(q.clone(), env.queue_ctx.clone())
            .await
            .unwrap();
        assert_eq!(series(&env, info, &on(node)), Some(1.0), "{node}");
    }
    assert_eq!(series(&env, info, &on("10.0.0.1:7000")), None, "moved");
}

/// `funcscale_beat_ready_replicas` (FuncscaleBeatNotRunning) is the Beat Deployment's ready
/// replicas; worker pools export none.
#[tokio::test]
async fn beat_ready_replicas_follow_the_deployment() {
    let mut env = Env::new(false).await;
    env.add_queue("q1", queue_spec()).await;
    env.add_pool(
        "beat",
        FuncWorkerPoolSpec {
            role: PoolRole::Beat,
            processes_per_pod: 1,
            ..Default::default()
        },
    )
    .await;
    env.add_pool("w", autoscaled(&["q1"], 1, 5)).await;
    env.set_metrics("q1", 0, 100.0);
    env.reconcile_pool("beat").await.unwrap();
    env.reconcile_pool("w").await.unwrap();
    let beat = "funcscale_beat_ready_replicas";
    assert_eq!(
        series(&env, beat, "namespace=\"team\",pool=\"beat\""),
        Some(0.0)
    );
    assert_eq!(series(&env, beat, "namespace=\"team\",pool=\"w\""), None);

    Api::<Deployment>::namespaced(env.client.clone(), NS)
        .patch_status(
            "beat",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"replicas": 1, "readyReplicas": 1}})),
        )
        .await
        .unwrap();
    env.reconcile_pool("beat").await.unwrap();
    assert_eq!(
        series(&env, beat, "namespace=\"team\",pool=\"beat\""),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Queue settings for the workers (retention, onSuccess / onFailure) written to Redis
// ---------------------------------------------------------------------------------------------

/// An env whose key prefix is this test's own, so tests share the real Redis in parallel.
async fn env_with_prefix(test: &str) -> (Env, funcscale_worker::protocol::Keys) {
    let keys = funcscale_worker::protocol::Keys::new(format!("qcfg-{}-{test}", std::process::id()));
    let config = Config {
        keys: keys.clone(),
        ..Config::default()
    };
    (Env::with_config(false, config).await, keys)
}

async fn redis_con() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn stored_config(
    keys: &funcscale_worker::protocol::Keys,
    queue: &str,
) -> funcscale_worker::protocol::QueueConfig {
    let id = funcscale_worker::protocol::Keys::queue_id(NS, queue);
    funcscale_worker::protocol::queue_config_get(&mut redis_con().await, keys, &id)
        .await
        .unwrap()
}

impl Env {
    /// Replace the queue's spec (as `kubectl apply` would) and let the store see it.
    async fn set_queue_spec(&mut self, name: &str, spec: FuncQueueSpec) -> FuncQueue {
        let api: Api<FuncQueue> = Api::namespaced(self.client.clone(), NS);
        let mut q = api.get(name).await.unwrap();
        q.spec = spec;
        let q = api.replace(name, &PostParams::default(), &q).await.unwrap();
        self.queue_event(watcher::Event::Apply(q.clone()));
        self.take_ops();
        q
    }

    async fn reconcile_queue(&self, name: &str) -> Action {
        let q = Api::<FuncQueue>::namespaced(self.client.clone(), NS)
            .get(name)
            .await
            .unwrap();
        queue::reconcile(Arc::new(q), self.queue_ctx.clone())
            .await
            .unwrap()
    }

    async fn queue_status(&self, name: &str) -> funcscale_operator::crd::FuncQueueStatus {
        Api::<FuncQueue>::namespaced(self.client.clone(), NS)
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn queue_condition(&self, name: &str, t: &str) -> Option<Condition> {
        self.queue_status(name)
            .await
            .conditions
            .into_iter()
            .find(|c| c.type_ == t)
    }
}

fn to_queue(queue: &str, function: Option<&str>) -> Option<TaskDestination> {
    Some(TaskDestination {
        queue: Some(queue.into()),
        function: function.map(Into::into),
        url: None,
    })
}

fn to_url(url: &str) -> Option<TaskDestination> {
    Some(TaskDestination {
        url: Some(url.into()),
        ..Default::default()
    })
}

#[tokio::test]
async fn queue_settings_are_written_cleared_and_rewritten_only_on_change_or_refresh() {
    use funcscale_worker::protocol::{Destination, QueueConfig};
    use redis::AsyncCommands;

    let (mut env, keys) = env_with_prefix("write").await;
    env.add_queue("results", queue_spec()).await;
    let spec = FuncQueueSpec {
        on_success: to_queue("results", Some("store")),
        on_failure: to_url("https://hooks.example.com/failed"),
        records: Some(RecordRetention {
            max_age_seconds: Some(3600),
            max_count: Some(10),
        }),
        ..queue_spec()
    };
    env.add_queue("orders", spec.clone()).await;

    env.reconcile_queue("orders").await;
    assert_eq!(
        stored_config(&keys, "orders").await,
        QueueConfig {
            record_max_age_ms: Some(3_600_000),
            record_max_count: Some(10),
            on_success: Some(Destination::Queue {
                queue: funcscale_worker::protocol::Keys::queue_id(NS, "results"),
                func: Some("store".into())
            }),
            on_failure: Some(Destination::Url("https://hooks.example.com/failed".into())),
            max_retries: Some(spec.max_retries),
            ..Default::default()
        }
    );
    let ready = env
        .queue_condition("orders", "DestinationsReady")
        .await
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Valid")
    );
    assert!(
        ready
            .message
            .contains("onSuccess → queue results (function store)")
            && ready
                .message
                .contains("onFailure → POST https://hooks.example.com/failed"),
        "{}",
        ready.message
    );
    let applied = env
        .queue_condition("orders", "ConfigApplied")
        .await
        .unwrap();
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("True", "Applied")
    );

    // removing fields from the YAML removes them from Redis
    env.set_queue_spec(
        "orders",
        FuncQueueSpec {
            on_success: None,
            records: Some(RecordRetention {
                max_age_seconds: Some(3600),
                max_count: None,
            }),
            ..spec.clone()
        },
    )
    .await;
    env.reconcile_queue("orders").await;
    let stored = stored_config(&keys, "orders").await;
    assert_eq!(
        (stored.on_success, stored.record_max_count),
        (None, None),
        "cleared"
    );
    assert_eq!(stored.record_max_age_ms, Some(3_600_000));
    assert!(stored.on_failure.is_some());

    // unchanged spec: no write on the status refreshes, even when Redis differs ...
    let mut con = redis_con().await;
    let _: () = con
        .hset(
            keys.queue_config(&Keys::queue_id(NS, "orders")),
            "record_max_age_ms",
            1,
        )
        .await
        .unwrap();
    env.advance(Duration::from_secs(10));
    env.reconcile_queue("orders").await;
    assert_eq!(
        stored_config(&keys, "orders").await.record_max_age_ms,
        Some(1),
        "not rewritten before the refresh interval"
    );
    // ... until the refresh interval has passed (Redis flushed, edited by hand)
    env.advance(env.shared.config.queue_config_refresh);
    env.reconcile_queue("orders").await;
    assert_eq!(
        stored_config(&keys, "orders").await.record_max_age_ms,
        Some(3_600_000),
        "rewritten after the refresh interval"
    );
    // a queue without any setting clears them all
    env.set_queue_spec("orders", queue_spec()).await;
    env.reconcile_queue("orders").await;
    assert_eq!(
        stored_config(&keys, "orders").await,
        QueueConfig {
            max_retries: Some(3),
            ..QueueConfig::default()
        },
        "only the retries (maxRetries defaults to 3) are left"
    );
    assert!(
        env.queue_condition("orders", "DestinationsReady")
            .await
            .is_none(),
        "no destinations, no condition"
    );
    let _: () = con
        .del(keys.queue_config(&Keys::queue_id(NS, "orders")))
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_destinations_are_a_false_condition_and_the_rest_is_still_written() {
    use funcscale_worker::protocol::Destination;
    use redis::AsyncCommands;

    let (mut env, keys) = env_with_prefix("unreachable").await;
    env.add_queue(
        "adopted",
        FuncQueueSpec {
            key: Some("legacy:jobs".into()),
            ..queue_spec()
        },
    )
    .await;
    env.add_queue(
        "elsewhere",
        FuncQueueSpec {
            redis: Some(RedisConnection {
                url: Some("redis://127.0.0.1:6379/3".into()),
                ..Default::default()
            }),
            ..queue_spec()
        },
    )
    .await;
    let spec = FuncQueueSpec {
        on_success: to_queue("missing", None),
        on_failure: to_queue("adopted", None),
        records: Some(RecordRetention {
            max_age_seconds: None,
            max_count: Some(5),
        }),
        ..queue_spec()
    };
    env.add_queue("src", spec.clone()).await;

    env.reconcile_queue("src").await;
    let c = env
        .queue_condition("src", "DestinationsReady")
        .await
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "QueueNotFound")
    );
    assert!(
        c.message.contains("FuncQueue missing not found")
            && c.message.contains("custom key \"legacy:jobs\""),
        "{}",
        c.message
    );
    assert!(
        env.take_ops().contains(&"create Event".to_string()),
        "an Event when the condition turns False"
    );
    let stored = stored_config(&keys, "src").await;
    assert_eq!(
        (
            stored.on_success,
            stored.on_failure,
            stored.record_max_count
        ),
        (None, None, Some(5)),
        "unreachable destinations are not written, retention is"
    );

    // the missing queue appears: only the custom key is left
    env.add_queue("missing", queue_spec()).await;
    env.reconcile_queue("src").await;
    let c = env
        .queue_condition("src", "DestinationsReady")
        .await
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "CustomKey")
    );
    assert!(
        !env.take_ops().contains(&"create Event".to_string()),
        "no second Event while it stays False"
    );
    assert_eq!(
        stored_config(&keys, "src").await.on_success,
        Some(Destination::Queue {
            queue: Keys::queue_id(NS, "missing"),
            func: None
        })
    );

    // another Redis cannot be reached either
    env.set_queue_spec(
        "src",
        FuncQueueSpec {
            on_failure: to_queue("elsewhere", None),
            ..spec
        },
    )
    .await;
    env.reconcile_queue("src").await;
    let c = env
        .queue_condition("src", "DestinationsReady")
        .await
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "DifferentRedis")
    );
    assert_eq!(stored_config(&keys, "src").await.on_failure, None);
    let _: () = redis_con()
        .await
        .del(keys.queue_config(&Keys::queue_id(NS, "src")))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redis_failure_writing_the_settings_is_a_condition_and_a_backoff() {
    let (mut env, _keys) = env_with_prefix("down").await;
    env.add_queue(
        "offline",
        FuncQueueSpec {
            redis: Some(RedisConnection {
                url: Some("redis://127.0.0.1:1/0".into()),
                ..Default::default()
            }),
            records: Some(RecordRetention {
                max_age_seconds: Some(600),
                max_count: None,
            }),
            ..queue_spec()
        },
    )
    .await;
    let action = env.reconcile_queue("offline").await;
    assert_eq!(action, Action::requeue(Duration::from_secs(1)), "backoff");
    let c = env
        .queue_condition("offline", "ConfigApplied")
        .await
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RedisUnavailable")
    );
    // within the backoff: no new attempt, the next reconcile comes when it ends
    env.advance(Duration::from_millis(400));
    let action = env.reconcile_queue("offline").await;
    assert_eq!(action, Action::requeue(Duration::from_millis(600)));
    // after it: a new attempt, a longer backoff
    env.advance(Duration::from_millis(600));
    let action = env.reconcile_queue("offline").await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
}

/// Closed loop with the real worker runtime: what the reconcile writes is what a worker
/// routes by. A task that succeeds in `orders` is followed by a task in `results`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_routes_results_by_the_settings_the_reconcile_wrote() {
    use funcscale_worker::protocol::{self, Envelope};
    use funcscale_worker::worker::Worker;

    let (mut env, keys) = env_with_prefix("loop").await;
    env.add_queue("results", queue_spec()).await;
    env.add_queue(
        "orders",
        FuncQueueSpec {
            on_success: to_queue("results", None),
            ..queue_spec()
        },
    )
    .await;
    env.reconcile_queue("orders").await;

    let worker = Worker::builder()
        .redis_url("redis://127.0.0.1:6379/0")
        .prefix(keys.prefix())
        .queues([Keys::queue_id(NS, "orders")])
        .processes(1)
        .build()
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let mut con = redis_con().await;
    protocol::enqueue(
        &mut con,
        &keys,
        &Keys::queue_id(NS, "orders"),
        &[Envelope::new(
            "ord-1",
            "noop",
            Keys::queue_id(NS, "orders"),
            T0,
        )],
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let routed: Envelope = loop {
        let raw: Option<String> = redis::cmd("LINDEX")
            .arg(keys.queue(&Keys::queue_id(NS, "results")))
            .arg(0)
            .query_async(&mut con)
            .await
            .unwrap();
        if let Some(raw) = raw {
            break Envelope::from_json(&raw).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no task reached results"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(
        (routed.func.as_str(), routed.queue.as_str()),
        ("on_success", Keys::queue_id(NS, "results").as_str())
    );
    assert_eq!(routed.kwargs["event"], "success");
    assert_eq!(routed.kwargs["task"]["id"], "ord-1");

    let leftovers: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", keys.prefix()))
        .query_async(&mut con)
        .await
        .unwrap();
    if !leftovers.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&leftovers)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

/// Secrets behind queue connections are read through a cache: within a minute the copy read
/// before is used (no GET on every 10 s refresh of every queue), a changed Secret (a rotated
/// password) applies once it is a minute old, and a Secret missing at one look and created
/// after it is seen at the next.
#[tokio::test]
async fn secrets_of_connections_are_read_at_most_once_a_minute() {
    use funcscale_operator::connection::{SECRET_CACHE_TTL_MS, check_secret, resolve};
    use funcscale_operator::redis_metrics::RedisEndpoint;
    let env = Env::new(false).await;
    let r = SecretKeyRef {
        name: "redis-auth".into(),
        key: "password".into(),
    };
    let mut spec = queue_spec();
    spec.redis = Some(RedisConnection {
        url: Some("redis://redis:6379/0".into()),
        password_secret_ref: Some(r.clone()),
        ..Default::default()
    });
    let default = RedisEndpoint::new("redis://default:6379");
    let url = |env: &Env| {
        let spec = spec.clone();
        let default = default.clone();
        let (client, ctx) = (env.client.clone(), env.shared.clone());
        async move {
            resolve(client, &spec, NS, &default, &ctx.secrets, ctx.now_ms())
                .await
                .map(|e| {
                    let info = e.redis_settings().unwrap();
                    let pw = info.password().unwrap_or_default();
                    format!("{} {pw}", e.url())
                })
                .map_err(|e| e.to_string())
        }
    };
    let missing = url(&env).await.unwrap_err();
    assert!(missing.contains("Secret redis-auth not found"), "{missing}");
    let secrets = Api::<Secret>::namespaced(env.client.clone(), NS);
    let secret = |pw: &str| {
        let mut s = Secret::default();
        s.metadata.name = Some("redis-auth".into());
        s.data = Some([("password".to_string(), k8s_openapi::ByteString(pw.into()))].into());
        s
    };
    secrets
        .create(&PostParams::default(), &secret("one"))
        .await
        .unwrap();
    // not kept while missing: seen at once
    assert_eq!(url(&env).await.unwrap(), "redis://redis:6379/0 one");
    secrets
        .replace("redis-auth", &PostParams::default(), &secret("two"))
        .await
        .unwrap();
    env.advance(Duration::from_millis(SECRET_CACHE_TTL_MS / 2));
    assert_eq!(
        url(&env).await.unwrap(),
        "redis://redis:6379/0 one",
        "read less than a minute ago: no GET"
    );
    env.advance(Duration::from_millis(SECRET_CACHE_TTL_MS / 2 + 1));
    assert_eq!(
        url(&env).await.unwrap(),
        "redis://redis:6379/0 two",
        "the rotated password, once the copy is a minute old"
    );
    secrets
        .delete("redis-auth", &Default::default())
        .await
        .unwrap();
    let ctx = env.shared.clone();
    assert_eq!(
        check_secret(&env.client, &ctx.secrets, ctx.now_ms(), NS, &r)
            .await
            .unwrap(),
        None,
        "the pool check uses the same copy"
    );
    env.advance(Duration::from_millis(SECRET_CACHE_TTL_MS + 1));
    let gone = url(&env).await.unwrap_err();
    assert!(gone.contains("Secret redis-auth not found"), "{gone}");
    secrets
        .create(&PostParams::default(), &secret("three"))
        .await
        .unwrap();
    assert_eq!(url(&env).await.unwrap(), "redis://redis:6379/0 three");
}

/// Adopted queues with an explicit `spec.key` in two namespaces on one Redis: the same list
/// named twice — or another namespace's own (namespaced) list named explicitly — refuses the
/// younger (`Ready=False`, reason `KeyConflict`, naming both objects and the list); nothing
/// of it is written, and a pool naming it is invalid. A key of its own is fine.
#[tokio::test]
async fn explicit_keys_naming_one_list_from_two_namespaces_are_refused() {
    let (mut env, keys) = env_with_prefix("explicit").await;
    let with_key = |key: &str| FuncQueueSpec {
        key: Some(key.to_string()),
        ..queue_spec()
    };
    let shared = format!("{}:legacy:jobs", keys.prefix());
    env.add_queue_in("other", "orders", with_key(&shared)).await;
    env.add_queue_in("other", "mine", queue_spec()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second resolution
    env.add_queue("payments", with_key(&shared)).await;
    // their own list, by the key that namespace's FuncQueue `mine` derives
    let theirs = keys.queue(&funcscale_worker::protocol::Keys::queue_id("other", "mine"));
    env.add_queue("peek", with_key(&theirs)).await;
    env.add_queue("own", with_key(&format!("{}:legacy:own", keys.prefix())))
        .await;
    for (name, other, list) in [
        ("payments", "other/orders", &shared),
        ("peek", "other/mine", &theirs),
    ] {
        env.reconcile_queue(name).await;
        let c = env.queue_condition(name, "Ready").await.unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "KeyConflict"),
            "{name}: {}",
            c.message
        );
        assert!(
            c.message.contains(&format!("team/{name}"))
                && c.message.contains(other)
                && c.message.contains(&format!("the list {list}")),
            "{}",
            c.message
        );
        let mut con = redis_con().await;
        assert_eq!(
            funcscale_worker::protocol::queue_config_get(
                &mut con,
                &keys,
                &funcscale_worker::protocol::Keys::queue_id("team", name)
            )
            .await
            .unwrap(),
            funcscale_worker::protocol::QueueConfig::default(),
            "nothing of the refused queue {name} is written"
        );
    }
    // the older ones keep their keys; a key of its own is no conflict
    for (ns, name) in [("other", "orders"), ("other", "mine")] {
        let q = Api::<FuncQueue>::namespaced(env.client.clone(), ns)
            .get(name)
            .await
            .unwrap();
        queue::reconcile(Arc::new(q), env.queue_ctx.clone())
            .await
            .unwrap();
        let st = Api::<FuncQueue>::namespaced(env.client.clone(), ns)
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        assert!(
            ready.is_none_or(|c| c.reason != "KeyConflict"),
            "{ns}/{name}: {ready:?}"
        );
    }
    env.reconcile_queue("own").await;
    let c = env.queue_condition("own", "Ready").await;
    assert!(
        c.as_ref().is_none_or(|c| c.reason != "KeyConflict"),
        "{c:?}"
    );
    // a pool naming the refused queue is invalid, naming the conflict
    env.add_pool(
        "w",
        FuncWorkerPoolSpec {
            command: vec!["my-worker".into()],
            ..autoscaled(&["payments"], 1, 5)
        },
    )
    .await;
    assert_eq!(
        env.reconcile_pool("w").await.unwrap(),
        Action::await_change()
    );
    let c = condition(&env.pool("w").await, "SpecValid").clone();
    assert!(
        c.message
            .starts_with("spec.queues[0]: FuncQueue payments is refused")
            && c.message.contains("KeyConflict")
            && c.message.contains("other/orders"),
        "{}",
        c.message
    );
}

/// Two namespaces that reach one Redis through Secrets of their own (different names, one
/// holding the URL with a password, the other a user in it; and the operator default spelled
/// as a URL) name one list: the younger is refused as if they had named the Redis alike. A
/// Secret naming another Redis (another database) is no conflict.
#[tokio::test]
async fn one_redis_through_different_secrets_is_one_redis() {
    let (mut env, keys) = env_with_prefix("samesecret").await;
    let shared = format!("{}:legacy:orders", keys.prefix());
    for (ns, secret, url) in [
        ("other", "redis-a", "redis://:pw-a@LocalHost:6379/0"),
        (NS, "redis-b", "redis://app:pw-b@localhost:6379"),
        (NS, "redis-c", "redis://localhost:6379/3"),
    ] {
        let mut s = Secret::default();
        s.metadata.name = Some(secret.into());
        s.data = Some([("url".to_string(), k8s_openapi::ByteString(url.into()))].into());
        Api::<Secret>::namespaced(env.client.clone(), ns)
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
    let via = |secret: &str| FuncQueueSpec {
        key: Some(shared.clone()),
        redis: Some(RedisConnection {
            url_secret_ref: Some(SecretKeyRef {
                name: secret.into(),
                key: "url".into(),
            }),
            ..Default::default()
        }),
        ..queue_spec()
    };
    env.add_queue_in("other", "orders", via("redis-a")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second resolution
    env.add_queue("payments", via("redis-b")).await;
    env.add_queue("elsewhere", via("redis-c")).await;
    env.reconcile_queue("payments").await;
    let c = env.queue_condition("payments", "Ready").await.unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "KeyConflict"),
        "{}",
        c.message
    );
    assert!(
        c.message.contains("other/orders") && c.message.contains(&shared),
        "{}",
        c.message
    );
    env.reconcile_queue("elsewhere").await;
    let c = env.queue_condition("elsewhere", "Ready").await;
    assert!(
        c.as_ref().is_none_or(|c| c.reason != "KeyConflict"),
        "another database: {c:?}"
    );
}

/// Each queue's keys are its namespace's (`status.key`, `status.queueId` say where producers
/// push); two `legacyKeys` queues of one name in two namespaces would share every key: the
/// younger is refused with a condition naming both, and nothing of it is written.
#[tokio::test]
async fn queues_show_their_namespaced_key_and_legacy_twins_are_refused() {
    let (mut env, keys) = env_with_prefix("tenant").await;
    env.add_queue("fresh", queue_spec()).await;
    env.reconcile_queue("fresh").await;
    let st = env.queue_status("fresh").await;
    assert_eq!(st.queue_id.as_deref(), Some("{team.fresh}"));
    assert_eq!(
        st.key,
        Some(format!("{}:q:{{team.fresh}}", keys.prefix())),
        "the list producers push to"
    );

    let legacy = FuncQueueSpec {
        legacy_keys: true,
        ..queue_spec()
    };
    // the upgrade path: a queue made before namespaced keys keeps them with legacyKeys
    env.add_queue("old", legacy.clone()).await;
    env.reconcile_queue("old").await;
    let st = env.queue_status("old").await;
    assert_eq!(
        (st.queue_id.as_deref(), st.key),
        (Some("old"), Some(format!("{}:q:old", keys.prefix())))
    );
    let mut con = redis_con().await;
    assert_eq!(
        funcscale_worker::protocol::queue_config_get(&mut con, &keys, "old")
            .await
            .unwrap()
            .max_retries,
        Some(3),
        "its settings are written under the legacy key"
    );
    env.add_queue_in("other", "jobs", legacy.clone()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second resolution
    env.add_queue("jobs", legacy).await;
    env.reconcile_queue("jobs").await;
    let c = env.queue_condition("jobs", "Ready").await.unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "KeyConflict")
    );
    assert!(
        c.message.contains("team/jobs")
            && c.message.contains("other/jobs")
            && c.message.contains(&format!("{}:q:jobs", keys.prefix())),
        "{}",
        c.message
    );
    assert!(env.take_ops().contains(&"create Event".to_string()));
    assert_eq!(
        funcscale_worker::protocol::queue_config_get(&mut con, &keys, "jobs")
            .await
            .unwrap(),
        funcscale_worker::protocol::QueueConfig::default(),
        "nothing of the refused queue is written to the shared legacy keys"
    );

    // nor is it served: a Worker pool naming it is invalid, as for a missing queue, and gets
    // no `--queues jobs` (its pods would run other/jobs's tasks)
    env.add_pool("w", autoscaled(&["jobs"], 1, 5)).await;
    assert_eq!(
        env.reconcile_pool("w").await.unwrap(),
        Action::await_change()
    );
    let c = condition(&env.pool("w").await, "SpecValid").clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        c.message
            .starts_with("spec.queues[0]: FuncQueue jobs is refused")
            && c.message.contains("KeyConflict")
            && c.message.contains("other/jobs"),
        "{}",
        c.message
    );
    assert!(env.deployment("w").await.is_none());
    // the older queue's pool is served as before
    env.add_pool_in("other", "w", autoscaled(&["jobs"], 1, 5))
        .await;
    let other = pool::reconcile(
        Arc::new(
            Api::<FuncWorkerPool>::namespaced(env.client.clone(), "other")
                .get("w")
                .await
                .unwrap(),
        ),
        env.pool_ctx.clone(),
    )
    .await;
    assert!(other.is_ok(), "{other:?}");
    let d = Api::<Deployment>::namespaced(env.client.clone(), "other")
        .get("w")
        .await
        .unwrap();
    let cmd = d.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap()
        .join(" ");
    assert!(cmd.contains("--queues jobs"), "{cmd}");
    // and the namespace's Beat leaves its schedules out, keeping the other legacy queue's
    env.add_pool(
        "beat",
        FuncWorkerPoolSpec {
            role: PoolRole::Beat,
            processes_per_pod: 1,
            ..Default::default()
        },
    )
    .await;
    env.reconcile_pool("beat").await.unwrap();
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.client.clone(), NS)
        .get("beat-schedules")
        .await
        .unwrap();
    let yaml = &cm.data.unwrap()["schedules.yaml"];
    assert!(
        yaml.contains("name: old") && !yaml.contains("name: jobs"),
        "{yaml}"
    );
    // deleting the older queue frees the younger: the key index names it (the queue stream
    // wakes it), and the pool index its pools
    let older = Api::<FuncQueue>::namespaced(env.client.clone(), "other")
        .get("jobs")
        .await
        .unwrap();
    let freed = env.shared.key_index.apply(&watcher::Event::Delete(older));
    assert_eq!(
        freed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!("{NS}/jobs")]
    );
    let woken = env.shared.index.pools_for_queue(NS, "jobs");
    assert!(
        woken.iter().any(|r| r.name == "w") && woken.iter().any(|r| r.name == "beat"),
        "{woken:?}"
    );

    let _: () =
        redis::AsyncCommands::del(&mut con, keys.queue_config(&Keys::queue_id(NS, "fresh")))
            .await
            .unwrap();
}

/// Two pools serving one queue share its load (by capacity: processes per pod × maxReplicas),
/// so together they want what one pool would, up to one pod of rounding per extra pool —
/// not each the whole (two pools on 3,000 tasks of 500 ms wanted 5 pods each).
#[tokio::test]
async fn pools_sharing_a_queue_split_its_load() {
    async fn wanted(pools: &[(&str, i32)], depth: u64, task_ms: f64) -> Vec<i32> {
        let mut env = Env::new(false).await;
        env.add_queue("shared", queue_spec()).await;
        for (name, max) in pools {
            env.add_pool(name, autoscaled(&["shared"], 0, *max)).await;
        }
        env.set_metrics("shared", depth, task_ms);
        let mut out = Vec::new();
        for (name, _) in pools {
            env.reconcile_pool(name).await.unwrap();
            out.push(replicas(&env.deployment(name).await.unwrap()).unwrap());
        }
        out
    }
    // 3,000 × 500 ms within 60 s on pods of 5: 5 pods for one pool
    assert_eq!(wanted(&[("one", 20)], 3_000, 500.0).await, vec![5]);
    let two = wanted(&[("a", 20), ("b", 20)], 3_000, 500.0).await;
    assert_eq!(two, vec![3, 3], "12.5 processes each, rounded up");
    // even splits add up exactly: 6,000 × 500 ms = 50 processes = 10 pods
    assert_eq!(wanted(&[("one", 20)], 6_000, 500.0).await, vec![10]);
    assert_eq!(
        wanted(&[("a", 20), ("b", 20)], 6_000, 500.0).await,
        vec![5, 5]
    );
    // by capacity: a pool that can grow twice as far carries twice the share
    assert_eq!(
        wanted(&[("big", 20), ("small", 10)], 6_000, 500.0).await,
        vec![7, 4],
        "33.3 and 16.7 processes"
    );
}

// ---------------------------------------------------------------------------------------------
// Idle pods go first on scale-down (`pool::scale_down`): the real Redis for the running tasks
// and the stop marks, the in-memory API for the pods.

impl Env {
    /// A pod of pool `pool`, Ready or not, created at `created_s` (unix s).
    async fn add_pod(&self, pool: &str, name: &str, ready: bool, created_s: i64) {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), NS);
        let labels = funcscale_operator::crd_ext::selector_labels(pool);
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": NS, "labels": labels,
                "creationTimestamp": rfc3339(created_s)},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap();
        api.create(&PostParams::default(), &pod).await.unwrap();
    }

    async fn set_ready(&self, name: &str, ready: bool) {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), NS);
        let status = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    async fn deletion_cost(&self, name: &str) -> Option<String> {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), NS);
        api.get(name)
            .await
            .unwrap()
            .metadata
            .annotations
            .and_then(|a| a.get(pool::scale_down::DELETION_COST).cloned())
    }

    async fn set_replicas(&mut self, name: &str, n: i32) {
        let api: Api<FuncWorkerPool> = Api::namespaced(self.client.clone(), NS);
        let mut p = api.get(name).await.unwrap();
        p.spec.replicas = Some(n);
        let p = api.replace(name, &PostParams::default(), &p).await.unwrap();
        self.pools_w.apply_watcher_event(&watcher::Event::Apply(p));
        self.take_ops();
    }
}

fn rfc3339(s: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(s)
        .unwrap()
        .to_string()
}

async fn marked(keys: &Keys, pod: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(keys.stop(NS, pod))
        .query_async(&mut redis_con().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_scale_down_marks_the_idle_pods_and_lowers_replicas_once_they_are_not_ready() {
    let (mut env, keys) = env_with_prefix("scaledown").await;
    env.add_queue("q1", queue_spec()).await;
    env.reconcile_queue("q1").await;
    let spec = FuncWorkerPoolSpec {
        queues: vec!["q1".into()],
        processes_per_pod: 1,
        replicas: Some(3),
        ..Default::default()
    };
    env.add_pool("w", spec).await;
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(3));
    // three ready pods; the youngest runs a task (its slot in the running set, its hash naming it)
    env.add_pod("w", "w-old", true, 1_000).await;
    env.add_pod("w", "w-mid", true, 2_000).await;
    env.add_pod("w", "w-busy", true, 3_000).await;
    let mut con = redis_con().await;
    let slot = "w-busy-7-ab12.0";
    // the worker's registry and in-flight lists: under its queues' namespace
    let scoped = keys.clone().in_namespace(Some(NS.into()));
    let qid = Keys::queue_id(NS, "q1");
    let () = redis::pipe()
        .zadd(keys.running(&qid), scoped.inflight(slot), 1)
        .ignore()
        .hset(scoped.worker(slot), "pod", "w-busy")
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    env.take_ops();
    std::mem::take(&mut *env.events.lock().unwrap());

    // 3 → 1: the two idle pods are marked and get the deletion cost; replicas held at 3
    env.set_replicas("w", 1).await;
    let action = env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(3));
    assert!(
        action == Action::requeue(Duration::from_secs(1)),
        "{action:?}"
    );
    for pod in ["w-old", "w-mid"] {
        let why = marked(&keys, pod).await;
        assert!(
            why.as_deref().is_some_and(|w| w.contains("from 3 to 1")),
            "{pod}: {why:?}"
        );
        assert_eq!(env.deletion_cost(pod).await.as_deref(), Some("-1000"));
    }
    assert_eq!(marked(&keys, "w-busy").await, None);
    assert_eq!(env.deletion_cost("w-busy").await, None);
    let events = std::mem::take(&mut *env.events.lock().unwrap());
    assert!(
        events.iter().any(|e| e.starts_with("ScaleDownPodsChosen")
            && e.contains("w-mid (0 running), w-old (0 running)")),
        "{events:?}"
    );
    let status = env.pool("w").await.status.unwrap();
    assert!(
        status
            .decision
            .as_ref()
            .unwrap()
            .message
            .contains("waiting up to"),
        "{status:?}"
    );

    // one of them not ready yet: still held; both: lowered
    env.set_ready("w-old", false).await;
    env.advance(Duration::from_secs(1));
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(3));
    env.set_ready("w-mid", false).await;
    env.advance(Duration::from_secs(1));
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(1));
    let _ = redis::pipe()
        .del(keys.stop(NS, "w-old"))
        .del(keys.stop(NS, "w-mid"))
        .query_async::<()>(&mut con)
        .await;
}

#[tokio::test]
async fn a_scale_down_called_off_clears_the_marks_and_one_that_waits_too_long_goes_on() {
    let (mut env, keys) = env_with_prefix("scaledown-off").await;
    env.add_queue("q1", queue_spec()).await;
    env.reconcile_queue("q1").await;
    let spec = FuncWorkerPoolSpec {
        queues: vec!["q1".into()],
        processes_per_pod: 1,
        replicas: Some(2),
        ..Default::default()
    };
    env.add_pool("w", spec).await;
    env.reconcile_pool("w").await.unwrap();
    env.add_pod("w", "w-a", true, 1_000).await;
    env.add_pod("w", "w-b", true, 2_000).await;

    // 2 → 1: the youngest idle pod is marked
    env.set_replicas("w", 1).await;
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(2));
    assert!(marked(&keys, "w-b").await.is_some());
    assert_eq!(marked(&keys, "w-a").await, None);

    // called off (back to 2 before the pod stopped): mark and cost gone, workers take tasks
    env.set_replicas("w", 2).await;
    env.advance(Duration::from_secs(1));
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(2));
    assert_eq!(marked(&keys, "w-b").await, None);
    assert_eq!(env.deletion_cost("w-b").await, None);

    // again, and the pod never turns not ready: lowered after the bounded wait
    env.set_replicas("w", 1).await;
    env.advance(Duration::from_secs(1));
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(2));
    env.advance(pool::scale_down::NOT_READY_WAIT);
    env.reconcile_pool("w").await.unwrap();
    assert_eq!(replicas(&env.deployment("w").await.unwrap()), Some(1));
    let _ = redis::cmd("DEL")
        .arg(keys.stop(NS, "w-b"))
        .query_async::<()>(&mut redis_con().await)
        .await;
}

/// a cron the schema lets through (five fields, impossible values) makes its FuncQueue
/// Ready=False with reason InvalidSpec naming the schedule, not a silently missing M
#[tokio::test]
async fn an_invalid_cron_is_an_invalid_spec_naming_the_schedule() {
    let mut env = Env::new(false).await;
    let mut spec = queue_spec();
    spec.schedules = vec![
        Schedule {
            name: "fine".into(),
            cron: "*/5 * * * *".into(),
            function: "f".into(),
            args: vec![],
        },
        Schedule {
            name: "nightly".into(),
            cron: "61 25 * * *".into(),
            function: "f".into(),
            args: vec![],
        },
    ];
    env.add_queue("crons", spec).await;
    env.reconcile_queue("crons").await;
    let st = env.queue_status("crons").await;
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec"),
        "{c:?}"
    );
    assert!(
        c.message
            .starts_with("spec.schedules[1].cron: schedule nightly"),
        "{}",
        c.message
    );
}

/// Schedules on a Celery queue would make the beat push funcscale tasks into Celery's list,
/// where no Celery worker can read them: the queue is refused (`InvalidSpec` naming
/// `spec.schedules`), and a Beat pool of the namespace fires none of them.
#[tokio::test]
async fn schedules_on_a_foreign_queue_are_an_invalid_spec() {
    let mut env = Env::new(false).await;
    let mut spec = queue_spec();
    spec.format = QueueFormat::Celery;
    spec.key = Some("celery".into());
    spec.schedules = vec![Schedule {
        name: "nightly".into(),
        cron: "0 3 * * *".into(),
        function: "shop.tasks.report".into(),
        args: vec![],
    }];
    env.add_queue("celery", spec).await;
    env.reconcile_queue("celery").await;
    let st = env.queue_status("celery").await;
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec"),
        "{c:?}"
    );
    assert!(
        c.message.starts_with("spec.schedules: a Celery queue")
            && c.message.contains("celery beat"),
        "{}",
        c.message
    );
    let q = Api::<FuncQueue>::namespaced(env.client.clone(), NS)
        .get("celery")
        .await
        .unwrap();
    assert!(!funcscale_operator::crd_ext::beat_fires(&q));
}

/// Celery transport options kombu cannot have (priority steps out of order) are an
/// InvalidSpec naming the field; a pool with its own command and a limit it cannot apply is
/// refused, not run without the limit; a `spec.celery` pool gets the celery command.
#[tokio::test]
async fn celery_specs_are_checked_and_rendered_by_the_reconcile() {
    let mut env = Env::new(false).await;
    let mut spec = queue_spec();
    spec.format = QueueFormat::Celery;
    spec.key = Some("high_priority".into());
    spec.celery = Some(funcscale_operator::crd::CeleryTransport {
        priority_steps: vec![0, 6, 3],
        ..Default::default()
    });
    env.add_queue("bad-steps", spec.clone()).await;
    env.reconcile_queue("bad-steps").await;
    let st = env.queue_status("bad-steps").await;
    let c = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        c.message
            .starts_with("spec.celery.prioritySteps: priority steps must be ascending"),
        "{}",
        c.message
    );

    spec.celery = None;
    env.add_queue("high", spec).await;
    let mut pool = autoscaled(&["high"], 1, 5);
    pool.command = vec!["celery".into(), "-A".into(), "shop".into(), "worker".into()];
    pool.limits = Some(funcscale_operator::crd::ProcessLimits {
        hard_time_limit_seconds: Some(300),
        ..Default::default()
    });
    env.add_pool("own", pool.clone()).await;
    assert_eq!(
        env.reconcile_pool("own").await.unwrap(),
        Action::await_change()
    );
    let c = condition(&env.pool("own").await, "SpecValid").clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        c.message
            .starts_with("spec.limits.hardTimeLimitSeconds: funcscale cannot apply limits"),
        "{}",
        c.message
    );
    assert!(env.deployment("own").await.is_none());

    pool.command = vec![];
    pool.celery = Some(funcscale_operator::crd::CeleryApp {
        app: "shop".into(),
        ..Default::default()
    });
    env.add_pool("rendered", pool).await;
    env.set_metrics("high", 0, 500.0);
    env.reconcile_pool("rendered").await.unwrap();
    assert_eq!(
        condition(&env.pool("rendered").await, "SpecValid").status,
        "True"
    );
    let spec = env
        .deployment("rendered")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let cmd = spec.containers[0].command.clone().unwrap();
    assert_eq!(
        cmd[..7],
        [
            "celery",
            "-A",
            "shop",
            "worker",
            "-Q",
            "high_priority",
            "-c"
        ]
    );
    assert!(
        cmd.windows(2).any(|w| w == ["--time-limit", "300"]),
        "{cmd:?}"
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(330));
    assert_eq!(spec.share_process_namespace, Some(true));
}

/// A Stream queue on the real Redis: its status shows the consumer group's lag as depth and
/// its pending entries as running, and a pool running the user's consumer is sized from them,
/// from zero and back to zero.
#[tokio::test]
async fn a_stream_queue_reports_lag_and_pending_and_sizes_its_pool() {
    use funcscale_operator::poll_loop;
    use funcscale_operator::redis_metrics::{Poller, PollerConfig};
    use redis::AsyncCommands;

    let (mut env, keys) = env_with_prefix("stream").await;
    let stream = format!("{}:events", keys.prefix());
    let mut con = redis_con().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut spec = queue_spec();
    spec.format = QueueFormat::Stream;
    spec.key = Some(stream.clone());
    spec.stream = Some(StreamGroupRef { group: "g".into() });
    // without its group (an API server without CEL rules lets it through): InvalidSpec
    let mut no_group = spec.clone();
    no_group.stream = None;
    env.add_queue("no-group", no_group).await;
    env.reconcile_queue("no-group").await;
    let c = env.queue_condition("no-group", "Ready").await.unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        c.message.starts_with("spec.stream.group: "),
        "{}",
        c.message
    );
    env.add_queue("events", spec).await;
    let mut pool = autoscaled(&["events"], 0, 50);
    pool.image = Some("registry.example.com/consumer:1".into());
    pool.command = vec!["consumer".into(), "--group".into(), "g".into()];
    env.add_pool("consumer", pool).await;
    env.reconcile_queue("events").await; // registers the queue for polling
    let mut poller = Poller::new(
        env.shared.registry.clone(),
        env.shared.cache.clone(),
        PollerConfig::default(),
    );
    let (report, _) = poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    assert!(report.errors.is_empty(), "{report:?}");
    env.reconcile_queue("events").await;
    env.reconcile_pool("consumer").await.unwrap();
    let st = env.queue_status("events").await;
    assert_eq!((st.depth, st.running), (Some(0), Some(0)));
    assert_eq!(st.key.as_deref(), Some(stream.as_str()));
    assert_eq!(
        replicas(&env.deployment("consumer").await.unwrap()),
        Some(0)
    );

    // 2410 entries added, 10 of them delivered to a consumer and not acknowledged
    let mut pipe = redis::pipe();
    for i in 0..2410 {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(i)
            .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    let delivered: redis::streams::StreamReadReply = con
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("g", "c1")
                .count(10),
        )
        .await
        .unwrap();
    env.advance(Duration::from_secs(1));
    let (report, _) = poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    assert!(report.errors.is_empty(), "{report:?}");
    env.reconcile_queue("events").await;
    let st = env.queue_status("events").await;
    assert_eq!((st.depth, st.running), (Some(2400), Some(10)));
    assert!(st.oldest_task_age_seconds.is_some(), "{st:?}");
    // by hand: 2400 waiting × 500 ms / 60 s drain target = 20 busy processes (more than the
    // 10 running) / 5 per pod = 4 pods
    env.reconcile_pool("consumer").await.unwrap();
    assert_eq!(
        replicas(&env.deployment("consumer").await.unwrap()),
        Some(4)
    );

    // every entry delivered and acknowledged: no lag, nothing pending, back to zero after the
    // stabilization window
    let rest: redis::streams::StreamReadReply = con
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("g", "c1")
                .count(5000),
        )
        .await
        .unwrap();
    let ids: Vec<String> = delivered
        .keys
        .into_iter()
        .chain(rest.keys)
        .flat_map(|k| k.ids.into_iter().map(|e| e.id))
        .collect();
    assert_eq!(ids.len(), 2410);
    let _: i64 = con.xack(&stream, "g", &ids).await.unwrap();
    env.advance(Duration::from_secs(301));
    let (report, _) = poll_loop::tick(&env.queue_ctx, &env.pool_ctx, &mut poller).await;
    assert!(report.errors.is_empty(), "{report:?}");
    env.reconcile_queue("events").await;
    let st = env.queue_status("events").await;
    assert_eq!((st.depth, st.running), (Some(0), Some(0)));
    env.reconcile_pool("consumer").await.unwrap();
    let st = env.pool("consumer").await.status.unwrap();
    assert_eq!(st.desired_replicas, 0, "{:?}", st.decision);
    let _: () = con.del(&stream).await.unwrap();
}

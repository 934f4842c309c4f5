//! Build: the pool's desired Deployment (and a Beat pool's schedules ConfigMap) from plain
//! data. No client, no clock, no Redis.
//!
//! Drain contract with the worker: Kubernetes sends SIGTERM, the worker stops taking tasks,
//! finishes (or requeues) what it runs and exits. `terminationGracePeriodSeconds` is the hard
//! time limit plus a margin, so no running task is killed by a scale-down; the worker is told
//! the same budget (`--drain-timeout`). No preStop hook is needed: workers take no traffic.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::validate::Valid;
use crate::context::Config;
use crate::crd::{FuncQueue, FuncWorkerPool, PoolRole, QueueOrder, RedisConnection};
use crate::crd_ext::{labels, schedules_configmap_name, selector_labels};
use crate::error::{Error, Result};
use funcscale_protocol::connection;

/// Port of the worker's `/healthz`, `/readyz` and `/metrics`.
pub const WORKER_HEALTH_PORT: i32 = 9090;
/// The name of that port: what the chart's PodMonitor scrapes (`/metrics`) and the probes use.
pub const WORKER_PORT_NAME: &str = "metrics";
/// Where a Beat pod finds its schedules.
pub const SCHEDULES_DIR: &str = "/etc/funcscale";
/// Seconds added to the hard time limit for the termination grace period.
pub const GRACE_MARGIN_SECONDS: i64 = 30;
/// Grace when the pool sets no time limit.
pub const DEFAULT_DRAIN_SECONDS: i64 = 60;

/// The objects a pool needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The Beat pool's schedules (applied first).
    pub configmap: Option<ConfigMap>,
    /// The Deployment.
    pub deployment: Deployment,
}

/// Build everything for `pool`. `replicas`: `None` leaves the field to whoever owns it.
pub fn build(
    pool: &FuncWorkerPool,
    ns: &str,
    valid: &Valid,
    replicas: Option<i32>,
    config: &Config,
) -> Result<Desired> {
    let configmap = (pool.spec.role == PoolRole::Beat)
        .then(|| schedules_configmap(pool, ns, &valid.queues))
        .transpose()?;
    let hash = configmap
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("schedules.yaml"))
        .map(|s| format!("{:016x}", fnv1a(s.as_bytes())));
    let deployment = deployment(pool, ns, valid, replicas, config, hash)?;
    Ok(Desired {
        configmap,
        deployment,
    })
}

/// A hash of the desired objects, to tell whether anything needs applying.
pub fn fingerprint(d: &Desired) -> Result<u64> {
    let mut bytes = serde_json::to_vec(&d.deployment)?;
    if let Some(cm) = &d.configmap {
        bytes.extend(serde_json::to_vec(cm)?);
    }
    Ok(fnv1a(&bytes))
}

fn owner(
    pool: &FuncWorkerPool,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pool.controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))
}

/// The Beat pool's ConfigMap: the namespace's scheduled FuncQueues as a multi-document YAML
/// stream of manifests (what `funcscale-worker beat --schedules-file` reads).
pub fn schedules_configmap(
    pool: &FuncWorkerPool,
    ns: &str,
    queues: &[std::sync::Arc<FuncQueue>],
) -> Result<ConfigMap> {
    let mut yaml = String::new();
    for q in queues {
        let doc = serde_json::json!({
            "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
            "kind": "FuncQueue",
            "metadata": { "name": q.name_any(), "namespace": ns },
            "spec": q.spec,
        });
        yaml.push_str("---\n");
        yaml.push_str(
            &serde_yaml::to_string(&doc)
                .map_err(|e| Error::invalid("spec.schedules", e.to_string()))?,
        );
    }
    let name = pool.name_any();
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(schedules_configmap_name(&name)),
            namespace: Some(ns.to_string()),
            labels: Some(labels(pool, &name)),
            owner_references: Some(vec![owner(pool)?]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("schedules.yaml".to_string(), yaml)])),
        ..Default::default()
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Redis environment of the pods: `FUNCSCALE_REDIS_URL` (value, or from the Secret), and
/// `FUNCSCALE_REDIS_PASSWORD` / `FUNCSCALE_REDIS_USERNAME` when the password / ACL username is
/// a separate Secret key (the worker lets them replace the URL's:
/// [`funcscale_protocol::connection`]), `FUNCSCALE_REDIS_SENTINEL_PASSWORD` /
/// `FUNCSCALE_REDIS_SENTINEL_USERNAME` for the sentinels of a `redis+sentinel://` URL.
pub fn redis_env(conn: Option<&RedisConnection>, config: &Config) -> Result<Vec<EnvVar>> {
    let mut out = match conn {
        Some(RedisConnection {
            url_secret_ref: Some(s),
            ..
        }) => vec![env_secret(connection::URL_ENV, &s.name, &s.key)],
        Some(RedisConnection {
            url: Some(url),
            password_secret_ref,
            username_secret_ref,
            ..
        }) => {
            let mut v = vec![env(connection::URL_ENV, url.clone())];
            if let Some(p) = password_secret_ref {
                v.push(env_secret(connection::PASSWORD_ENV, &p.name, &p.key));
            }
            if let Some(u) = username_secret_ref {
                v.push(env_secret(connection::USERNAME_ENV, &u.name, &u.key));
            }
            v
        }
        _ if config.default_redis.has_sentinel_password()
            && config.worker_redis_sentinel_secret.is_none() =>
        {
            return Err(Error::invalid(
                "spec.queues",
                "the queues use the operator's default Redis, whose sentinels take a password \
                 (--redis-sentinel-password): it is never written into a pod spec; start the \
                 operator with --worker-redis-sentinel-secret NAME/KEY (a Secret in the pool's \
                 namespace) or give the queues spec.redis with the redis+sentinel:// url (or \
                 urlSecretRef) and sentinelPasswordSecretRef",
            ));
        }
        _ => match &config.worker_redis_secret {
            Some(s) => vec![env_secret("FUNCSCALE_REDIS_URL", &s.name, &s.key)],
            None if config.default_redis.has_password() => {
                return Err(Error::invalid(
                    "spec.queues",
                    "the queues use the operator's default Redis, which takes a password (in its URL or \
                     from --redis-password): it is never written into a pod spec; start the operator with --worker-redis-secret NAME/KEY (a Secret \
                     in the pool's namespace) or give the queues spec.redis",
                ));
            }
            // a password-less URL goes into the pod spec as it is (the operator's own
            // `--redis-username` stays the operator's: the pods get theirs from the URL or
            // from `--worker-redis-secret`)
            None => vec![env("FUNCSCALE_REDIS_URL", config.default_redis.url())],
        }
        .into_iter()
        // the default Redis's sentinels' login, from the Secret in the pool's namespace
        .chain(
            config
                .worker_redis_sentinel_secret
                .iter()
                .filter(|_| config.default_redis.topology() == "sentinel")
                .flat_map(|(s, username_key)| {
                    std::iter::once(env_secret(
                        connection::SENTINEL_PASSWORD_ENV,
                        &s.name,
                        &s.key,
                    ))
                    .chain(username_key.iter().map(|k| {
                        env_secret(connection::SENTINEL_USERNAME_ENV, &s.name, k)
                    }))
                }),
        )
        .collect(),
    };
    // the sentinels' own login goes with the queue's URL (in `url` or `urlSecretRef`)
    if let Some(c) = conn.filter(|c| c.url.is_some() || c.url_secret_ref.is_some()) {
        if let Some(p) = &c.sentinel_password_secret_ref {
            out.push(env_secret(
                connection::SENTINEL_PASSWORD_ENV,
                &p.name,
                &p.key,
            ));
        }
        if let Some(u) = &c.sentinel_username_secret_ref {
            out.push(env_secret(
                connection::SENTINEL_USERNAME_ENV,
                &u.name,
                &u.key,
            ));
        }
    }
    out.push(env("FUNCSCALE_PREFIX", config.keys.prefix()));
    Ok(out)
}

/// Seconds a pod gets to drain: the hard time limit (else soft, else 60 s).
pub fn drain_seconds(pool: &FuncWorkerPool) -> i64 {
    let l = pool.spec.limits.as_ref();
    l.and_then(|l| l.hard_time_limit_seconds.or(l.soft_time_limit_seconds))
        .map(i64::from)
        .unwrap_or(DEFAULT_DRAIN_SECONDS)
}

/// Where a Celery beat pod keeps its schedule file (the writable `/tmp` volume).
pub const CELERY_BEAT_SCHEDULE_FILE: &str = "/tmp/celerybeat-schedule";

/// The Celery queue a FuncQueue of format Celery is: its `spec.key`, else its name (the list
/// of priority 0 without kombu's `global_keyprefix`).
pub fn celery_queue_name(q: &FuncQueue) -> String {
    q.spec.key.clone().unwrap_or_else(|| q.name_any())
}

/// `FUNCSCALE_CELERY_QUEUES` of a `spec.celery` pool: a JSON object from each Celery queue
/// name to the queue's id in funcscale's keys (what the operator reads its stats under), for
/// the `funcscale-celery` integration.
pub fn celery_queues_env(ns: &str, valid: &Valid) -> String {
    let map: BTreeMap<String, String> = valid
        .celery_queues
        .iter()
        .map(|q| (celery_queue_name(q), crate::crd_ext::queue_id(q, ns)))
        .collect();
    serde_json::to_string(&map).expect("a map of strings serializes")
}

/// The command of a `spec.celery` pool. Worker: `celery -A <app> worker -Q <queues> -c
/// <processesPerPod> -P <pool> -n <pod>@%h --loglevel <level>` with the limits as Celery's
/// flags (`--time-limit`, `--soft-time-limit`, `--max-tasks-per-child`,
/// `--max-memory-per-child` in KiB); Beat: `celery -A <app> beat -s <file> --loglevel
/// <level> [-S <scheduler>]`; then `extraArgs`. `$(FUNCSCALE_POD_NAME)` is expanded by the
/// kubelet from the pod's environment.
pub fn celery_command(
    pool: &FuncWorkerPool,
    c: &crate::crd::CeleryApp,
    valid: &Valid,
) -> Vec<String> {
    let mut out: Vec<String> = vec!["celery".into(), "-A".into(), c.app.clone()];
    match pool.spec.role {
        PoolRole::Worker => {
            let queues: Vec<String> = valid
                .celery_queues
                .iter()
                .map(|q| celery_queue_name(q))
                .collect();
            out.extend([
                "worker".into(),
                "-Q".into(),
                queues.join(","),
                "-c".into(),
                pool.spec.processes_per_pod.to_string(),
                "-P".into(),
                c.pool.as_str().into(),
                "-n".into(),
                "$(FUNCSCALE_POD_NAME)@%h".into(),
                "--loglevel".into(),
                c.log_level.as_str().into(),
            ]);
            if let Some(l) = &pool.spec.limits {
                let flags = [
                    ("--time-limit", l.hard_time_limit_seconds.map(u64::from)),
                    (
                        "--soft-time-limit",
                        l.soft_time_limit_seconds.map(u64::from),
                    ),
                    ("--max-tasks-per-child", l.max_tasks_per_child),
                    // Celery counts resident memory in KiB
                    (
                        "--max-memory-per-child",
                        l.max_memory_per_child_mb.map(|mb| mb.saturating_mul(1024)),
                    ),
                ];
                for (flag, v) in flags {
                    if let Some(v) = v {
                        out.extend([flag.to_string(), v.to_string()]);
                    }
                }
            }
        }
        PoolRole::Beat => {
            out.extend([
                "beat".into(),
                "-s".into(),
                CELERY_BEAT_SCHEDULE_FILE.into(),
                "--loglevel".into(),
                c.log_level.as_str().into(),
            ]);
            if let Some(s) = &c.scheduler {
                out.extend(["-S".into(), s.clone()]);
            }
        }
    }
    out.extend(c.extra_args.iter().cloned());
    out
}

/// The container command: the worker takes the ids in Redis of its queues (`valid.queues`,
/// in `spec.queues` order); the beat fires the schedules of namespace `ns`. A pool's own
/// `command` as given; a `spec.celery` pool's [`celery_command`].
pub fn command(pool: &FuncWorkerPool, ns: &str, valid: &Valid) -> Vec<String> {
    if !pool.spec.command.is_empty() {
        return pool.spec.command.clone();
    }
    if let Some(c) = &pool.spec.celery {
        return celery_command(pool, c, valid);
    }
    let mut c: Vec<String> = match pool.spec.role {
        PoolRole::Beat => vec![
            "funcscale-worker".into(),
            "beat".into(),
            "--namespace".into(),
            ns.into(),
            "--schedules-file".into(),
            format!("{SCHEDULES_DIR}/schedules.yaml"),
        ],
        PoolRole::Worker => {
            let order = match pool.spec.queue_order {
                QueueOrder::Fair => "fair",
                QueueOrder::Priority => "priority",
            };
            vec![
                "funcscale-worker".into(),
                "run".into(),
                "--queues".into(),
                valid
                    .queues
                    .iter()
                    .map(|q| crate::crd_ext::queue_id(q, ns))
                    .collect::<Vec<_>>()
                    .join(","),
                "--processes".into(),
                pool.spec.processes_per_pod.to_string(),
                "--order".into(),
                order.into(),
            ]
        }
    };
    if pool.spec.role == PoolRole::Worker {
        if let Some(h) = &pool.spec.handler {
            c.extend(["--handler".into(), h.clone()]);
        }
        if let Some(l) = &pool.spec.limits {
            let flags = [
                ("--max-tasks-per-child", l.max_tasks_per_child),
                ("--max-memory-per-child-mb", l.max_memory_per_child_mb),
                (
                    "--soft-time-limit",
                    l.soft_time_limit_seconds.map(u64::from),
                ),
                (
                    "--hard-time-limit",
                    l.hard_time_limit_seconds.map(u64::from),
                ),
            ];
            for (flag, v) in flags {
                if let Some(v) = v {
                    c.extend([flag.to_string(), v.to_string()]);
                }
            }
        }
        c.extend(["--drain-timeout".into(), drain_seconds(pool).to_string()]);
    }
    c
}

/// Readiness of a funcscale worker: probed every 2 s, not ready after 2 failures, so a pod
/// whose stop mark a scale-down set (`/readyz` 503) is not ready within about 4 s and the
/// ReplicaSet removes it before the ready ones (see `pool::scale_down`).
const WORKER_READINESS: (i32, i32) = (2, 2);

fn probe(path: &str, (period, failures): (i32, i32)) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(WORKER_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn deployment(
    pool: &FuncWorkerPool,
    ns: &str,
    valid: &Valid,
    replicas: Option<i32>,
    config: &Config,
    schedules_hash: Option<String>,
) -> Result<Deployment> {
    let name = pool.name_any();
    let labels = labels(pool, &name);
    let beat = pool.spec.role == PoolRole::Beat;
    // a program that is not funcscale-worker: its own command, or Celery
    let own_command = !pool.spec.command.is_empty() || pool.spec.celery.is_some();
    let mut env = vec![
        env("FUNCSCALE_POOL", name.clone()),
        // the address the declared `metrics` port serves: explicit, so that what the pod
        // declares and what the process binds cannot drift apart
        env(
            "FUNCSCALE_METRICS_ADDR",
            format!("0.0.0.0:{WORKER_HEALTH_PORT}"),
        ),
        // the pod's identity: the worker names its pod in Redis (running tasks per pod) and
        // obeys the pod's stop mark (`pool::scale_down`)
        field_env("FUNCSCALE_POD_NAME", "metadata.name"),
        field_env("FUNCSCALE_POD_NAMESPACE", "metadata.namespace"),
    ];
    env.extend(redis_env(valid.redis.as_ref(), config)?);
    if pool.spec.celery.is_some() {
        env.push(self::env(
            "FUNCSCALE_CELERY_QUEUES",
            celery_queues_env(ns, valid),
        ));
    }
    let resources = pool.spec.resources.as_ref().map(|r| {
        let q = |m: &BTreeMap<String, String>| {
            (!m.is_empty()).then(|| {
                m.iter()
                    .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                    .collect()
            })
        };
        ResourceRequirements {
            requests: q(&r.requests),
            limits: q(&r.limits),
            ..Default::default()
        }
    });
    let container = Container {
        name: if beat { "beat".into() } else { "worker".into() },
        image: Some(
            pool.spec
                .image
                .clone()
                .unwrap_or_else(|| config.worker_image.clone()),
        ),
        command: Some(command(pool, ns, valid)),
        env: Some(env),
        // Celery serves nothing on :9090 (a PodMonitor would scrape a closed port)
        ports: pool.spec.celery.is_none().then(|| {
            vec![ContainerPort {
                name: Some(WORKER_PORT_NAME.into()),
                container_port: WORKER_HEALTH_PORT,
                ..Default::default()
            }]
        }),
        // funcscale-worker (run and beat) serves /readyz and /healthz on :9090; a pool's own
        // command (Celery, ...) serves nothing there, and a kubelet would never find it Ready
        // and restart it: it gets the probes its podTemplate sets, and no others
        readiness_probe: (!own_command)
            .then(|| probe("/readyz", if beat { (5, 3) } else { WORKER_READINESS })),
        liveness_probe: (!own_command).then(|| probe("/healthz", (10, 3))),
        resources,
        volume_mounts: Some({
            let mut v = vec![VolumeMount {
                name: TMP_VOLUME.into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            }];
            if beat {
                v.push(VolumeMount {
                    name: "schedules".into(),
                    mount_path: SCHEDULES_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            v
        }),
        security_context: Some(restricted_container()),
        ..Default::default()
    };
    let mut annotations = BTreeMap::new();
    if let Some(h) = schedules_hash {
        annotations.insert("funcscale.dev/schedules-hash".to_string(), h);
    }
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            termination_grace_period_seconds: Some(drain_seconds(pool) + GRACE_MARGIN_SECONDS),
            // funcscale-worker's image starts it under an init (tini) that reaps orphaned
            // grandchildren; a command of its own (Celery, ...) replaces the image's
            // entrypoint, init included: the pod's pause process (PID 1 of a shared process
            // namespace) reaps them instead
            share_process_namespace: own_command.then_some(true),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            volumes: Some({
                // the root filesystem is read-only: handlers (exec:, pool:) get a writable /tmp
                let mut v = vec![Volume {
                    name: TMP_VOLUME.into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                }];
                if beat {
                    v.push(Volume {
                        name: "schedules".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: schedules_configmap_name(&name),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
                v
            }),
            ..Default::default()
        }),
    };
    let template = merge_pod_template(template, pool.spec.pod_template.as_ref())?;
    let strategy = if beat {
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::String("25%".into())),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    };
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![owner(pool)?]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            strategy: Some(strategy),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

/// An environment variable from the downward API.
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The writable scratch volume of worker and beat pods (mounted at `/tmp`).
const TMP_VOLUME: &str = "tmp";

/// The container side of the `restricted` Pod Security Standard, plus a read-only root
/// filesystem. The worker image runs as UID 65532; an image that needs root (some foreign
/// workers) can lift it through `spec.podTemplate` (objects merge key by key).
fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Merge the pool's partial `podTemplate` over the generated template: objects merge key by
/// key, lists of named items (containers, env, volumes, ...) merge by `name`, other lists
/// and scalars are replaced. The selector labels cannot be overridden.
pub fn merge_pod_template(
    base: PodTemplateSpec,
    overlay: Option<&serde_json::Value>,
) -> Result<PodTemplateSpec> {
    let Some(overlay) = overlay else {
        return Ok(base);
    };
    let selector = base
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut v = serde_json::to_value(&base)?;
    check_added_containers(&v, overlay)?;
    merge(&mut v, overlay);
    let mut out: PodTemplateSpec =
        serde_json::from_value(v).map_err(|e| Error::invalid("spec.podTemplate", e.to_string()))?;
    let meta = out.metadata.get_or_insert_with(Default::default);
    let l = meta.labels.get_or_insert_with(Default::default);
    for (k, v) in selector {
        if k == "app.kubernetes.io/name" || k == crate::crd_ext::POOL_LABEL {
            l.insert(k, v);
        }
    }
    Ok(out)
}

/// A container of the overlay whose name matches no generated container is added to the
/// pod; without an image the API server rejects the whole Deployment (422). The usual cause is
/// a misnamed patch (`worker` on a Beat pool, whose container is `beat`): refuse it here,
/// naming the field, instead of sending an object the API cannot accept.
fn check_added_containers(base: &serde_json::Value, overlay: &serde_json::Value) -> Result<()> {
    for list in ["containers", "initContainers"] {
        let names: Vec<&str> = base["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let Some(items) = overlay["spec"][list].as_array() else {
            continue;
        };
        for (i, c) in items.iter().enumerate() {
            let Some(name) = c["name"].as_str() else {
                continue;
            };
            let has_image = c["image"].as_str().is_some_and(|s| !s.is_empty());
            if names.contains(&name) || has_image {
                continue;
            }
            let theirs = match names.as_slice() {
                [] => "it has none".to_string(),
                [one] => format!("its container is {one:?}"),
                many => format!("its containers are {}", quoted(many)),
            };
            return Err(Error::invalid(
                format!("spec.podTemplate.spec.{list}[{i}]"),
                format!(
                    "container {name:?} matches no container of this pool ({theirs}) and has no image"
                ),
            ));
        }
    }
    Ok(())
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Container fields that hold a probe, and a probe's handler fields (exactly one is set).
const PROBES: [&str; 3] = ["readinessProbe", "livenessProbe", "startupProbe"];
const PROBE_HANDLERS: [&str; 4] = ["httpGet", "tcpSocket", "exec", "grpc"];

fn merge(base: &mut serde_json::Value, overlay: &serde_json::Value) {
    use serde_json::Value;
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, ov) in o {
                match b.get_mut(k) {
                    Some(bv) if PROBES.contains(&k.as_str()) => {
                        // a probe has one handler: the overlay's replaces the generated one
                        // (both would be refused by the API), its other fields merge
                        if let (Value::Object(bp), Some(op)) = (&mut *bv, ov.as_object())
                            && PROBE_HANDLERS.iter().any(|h| op.contains_key(*h))
                        {
                            bp.retain(|key, _| !PROBE_HANDLERS.contains(&key.as_str()));
                        }
                        merge(bv, ov)
                    }
                    Some(bv) => merge(bv, ov),
                    None => {
                        b.insert(k.clone(), ov.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if named(b) && named(o) => {
            for item in o {
                let name = item.get("name").cloned();
                match b.iter_mut().find(|x| x.get("name") == name.as_ref()) {
                    Some(existing) => merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn named(items: &[serde_json::Value]) -> bool {
    items
        .iter()
        .all(|i| i.get("name").is_some_and(|n| n.is_string()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{FuncQueueSpec, FuncWorkerPoolSpec};
    use std::sync::Arc;

    fn pool() -> FuncWorkerPool {
        let mut p = FuncWorkerPool::new(
            "w",
            FuncWorkerPoolSpec {
                queues: vec!["q".into()],
                processes_per_pod: 5,
                ..Default::default()
            },
        );
        p.metadata.uid = Some("u".into());
        p
    }

    fn valid() -> Valid {
        Valid {
            queues: vec![],
            redis: None,
            redis_identity: "default".into(),
            beat_conflict: None,
            celery_queues: vec![],
        }
    }

    /// The rendered container (command + env values) as the worker's own clap CLI sees it.
    fn parse_with_worker_cli(d: &Deployment) -> Result<funcscale_worker::cli::Cli, clap::Error> {
        use clap::Parser as _;
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let cmd = c.command.clone().unwrap();
        // env vars the worker's CLI reads: only those the pod sets count, so a misnamed one
        // (FUNCSCALE_KEY_PREFIX) leaves the default and fails the prefix check below
        let env: Vec<(String, String)> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        // clap reads env through std::env; emulate by passing the values as flags instead
        let mut argv = cmd.clone();
        for (k, v) in env {
            match k.as_str() {
                "FUNCSCALE_PREFIX" => argv.extend(["--prefix".into(), v]),
                "FUNCSCALE_REDIS_URL" => argv.extend(["--redis-url".into(), v]),
                _ => {}
            }
        }
        funcscale_worker::cli::Cli::try_parse_from(argv)
    }

    #[test]
    fn worker_command_and_env_parse_with_the_worker_cli() {
        let mut p = pool();
        p.spec.queues = vec!["a".into(), "b".into()];
        let mut v = valid();
        let legacy = FuncQueueSpec {
            legacy_keys: true,
            ..Default::default()
        };
        v.queues = vec![
            Arc::new(FuncQueue::new("a", FuncQueueSpec::default())),
            Arc::new(FuncQueue::new("b", legacy)),
        ];
        p.spec.queue_order = crate::crd::QueueOrder::Priority;
        p.spec.handler = Some("builtin".into());
        p.spec.limits = Some(crate::crd::ProcessLimits {
            max_tasks_per_child: Some(100),
            max_memory_per_child_mb: Some(512),
            soft_time_limit_seconds: Some(50),
            hard_time_limit_seconds: Some(60),
        });
        let config = Config {
            keys: funcscale_worker::protocol::Keys::new("scen-prefix"),
            ..Config::default()
        };
        let d = build(&p, "ns", &v, Some(1), &config).unwrap().deployment;
        let cli = parse_with_worker_cli(&d).unwrap_or_else(|e| panic!("worker rejects: {e}"));
        assert_eq!(
            cli.redis.prefix, "scen-prefix",
            "FUNCSCALE_PREFIX must be set"
        );
        match cli.command {
            funcscale_worker::cli::Command::Run(r) => {
                // the ids in Redis: namespaced, or the name for a legacyKeys queue
                assert_eq!(r.queues, vec!["{ns.a}".to_string(), "b".to_string()]);
                assert_eq!(r.processes, 5);
                assert_eq!(format!("{:?}", r.order), "Priority");
                assert_eq!(r.hard_time_limit, Some(std::time::Duration::from_secs(60)));
                assert_eq!(r.soft_time_limit, Some(std::time::Duration::from_secs(50)));
                assert_eq!(r.max_tasks_per_child, Some(100));
                assert_eq!(r.max_memory_per_child_mb, Some(512));
                assert_eq!(r.drain_timeout, std::time::Duration::from_secs(60));
            }
            other => panic!("expected run, got {other:?}"),
        }
    }

    /// What the `restricted` Pod Security Standard (v1.30+) checks, on worker and beat pods.
    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        for role in [PoolRole::Worker, PoolRole::Beat] {
            let mut p = pool();
            p.spec.role = role;
            p.spec.replicas = Some(1);
            let d = build(&p, "ns", &valid(), Some(1), &Config::default())
                .unwrap()
                .deployment;
            let spec = d.spec.unwrap().template.spec.unwrap();
            let psc = spec.security_context.clone().unwrap_or_default();
            assert_eq!(psc.run_as_non_root, Some(true), "{role:?}");
            assert_eq!(
                psc.seccomp_profile.map(|s| s.type_).as_deref(),
                Some("RuntimeDefault")
            );
            assert!(spec.host_network.is_none() && spec.host_pid.is_none());
            for c in &spec.containers {
                let sc = c.security_context.clone().unwrap();
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{role:?}");
                assert_eq!(
                    sc.capabilities.and_then(|c| c.drop),
                    Some(vec!["ALL".to_string()])
                );
                assert_eq!(sc.privileged, None);
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                // a read-only root needs a writable /tmp for exec:/pool: handlers
                let tmp = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| m.mount_path == "/tmp")
                    .unwrap_or_else(|| panic!("{role:?}: no /tmp mount"));
                assert!(
                    spec.volumes
                        .iter()
                        .flatten()
                        .any(|v| v.name == tmp.name && v.empty_dir.is_some())
                );
            }
            for v in spec.volumes.iter().flatten() {
                assert!(v.host_path.is_none(), "restricted forbids hostPath");
            }
        }
        // a pool that must run as root lifts it through its pod template
        let mut p = pool();
        p.spec.pod_template = Some(serde_json::json!({
            "spec": {"securityContext": {"runAsNonRoot": false}}
        }));
        let d = build(&p, "ns", &valid(), Some(1), &Config::default())
            .unwrap()
            .deployment;
        let psc = d
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .security_context
            .unwrap();
        assert_eq!(psc.run_as_non_root, Some(false));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault"),
            "the rest of the context stays"
        );
    }

    #[test]
    fn beat_command_and_env_parse_with_the_worker_cli() {
        let mut p = pool();
        p.spec.role = PoolRole::Beat;
        p.spec.replicas = Some(1);
        let config = Config {
            keys: funcscale_worker::protocol::Keys::new("scen-beat"),
            ..Config::default()
        };
        let d = build(&p, "ns", &valid(), Some(1), &config)
            .unwrap()
            .deployment;
        let cli = parse_with_worker_cli(&d).unwrap_or_else(|e| panic!("worker rejects: {e}"));
        assert_eq!(cli.redis.prefix, "scen-beat");
        assert_eq!(cli.redis.namespace.as_deref(), Some("ns"));
        match cli.command {
            funcscale_worker::cli::Command::Beat(b) => assert_eq!(
                b.schedules_file.as_deref(),
                Some(std::path::Path::new("/etc/funcscale/schedules.yaml"))
            ),
            other => panic!("expected beat, got {other:?}"),
        }
    }

    #[test]
    fn pod_template_merges_by_name_and_keeps_the_selector() {
        let mut p = pool();
        p.spec.pod_template = Some(serde_json::json!({
            "metadata": {"labels": {"team": "a", "funcscale.dev/pool": "hijack"}},
            "spec": {
                "serviceAccountName": "jobs",
                "containers": [
                    {"name": "worker", "env": [{"name": "FUNCSCALE_PREFIX", "value": "x"}]},
                    {"name": "sidecar", "image": "busybox"}
                ]
            }
        }));
        let d = build(&p, "ns", &valid(), Some(2), &Config::default())
            .unwrap()
            .deployment;
        let t = d.spec.unwrap().template;
        let labels = t.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["funcscale.dev/pool"], "w");
        let spec = t.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("jobs"));
        assert_eq!(spec.containers.len(), 2);
        let env = spec.containers[0].env.clone().unwrap();
        assert_eq!(
            env.iter()
                .find(|e| e.name == "FUNCSCALE_PREFIX")
                .unwrap()
                .value
                .as_deref(),
            Some("x")
        );
        assert!(env.iter().any(|e| e.name == "FUNCSCALE_REDIS_URL"));
    }

    #[test]
    fn a_patched_container_that_matches_none_and_has_no_image_is_refused() {
        let mut p = pool();
        p.spec.role = PoolRole::Beat;
        p.spec.replicas = Some(1);
        p.spec.pod_template = Some(serde_json::json!({"spec": {"containers": [
            {"name": "worker", "env": [{"name": "X", "value": "1"}]}
        ]}}));
        let e = build(&p, "ns", &valid(), Some(1), &Config::default()).unwrap_err();
        assert_eq!(e.category(), "invalid_spec");
        assert_eq!(
            e.to_string(),
            "invalid spec: spec.podTemplate.spec.containers[0]: container \"worker\" matches no \
             container of this pool (its container is \"beat\") and has no image"
        );
        // an init container is always added: it needs an image too
        p.spec.pod_template = Some(serde_json::json!({"spec": {"initContainers": [
            {"name": "setup"}
        ]}}));
        let e = build(&p, "ns", &valid(), Some(1), &Config::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.podTemplate.spec.initContainers[0]: container \"setup\""),
            "{e}"
        );
        // named right, the patch merges; a sidecar with its own image is added
        p.spec.pod_template = Some(serde_json::json!({"spec": {"containers": [
            {"name": "beat", "env": [{"name": "X", "value": "1"}]},
            {"name": "sidecar", "image": "busybox"}
        ]}}));
        let d = build(&p, "ns", &valid(), Some(1), &Config::default()).unwrap();
        let cs = d.deployment.spec.unwrap().template.spec.unwrap().containers;
        assert_eq!(cs.len(), 2);
        assert!(cs.iter().all(|c| c.image.is_some()));
    }

    fn container(p: &FuncWorkerPool) -> Container {
        build(p, "ns", &valid(), Some(1), &Config::default())
            .unwrap()
            .deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers
            .remove(0)
    }

    fn celery_queue(name: &str, key: Option<&str>) -> Arc<FuncQueue> {
        Arc::new(FuncQueue::new(
            name,
            FuncQueueSpec {
                format: crate::crd::QueueFormat::Celery,
                key: key.map(str::to_string),
                ..Default::default()
            },
        ))
    }

    fn pod_spec(p: &FuncWorkerPool, v: &Valid) -> PodSpec {
        build(p, "shop", v, Some(1), &Config::default())
            .unwrap()
            .deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn a_celery_worker_gets_its_queues_concurrency_and_limits_as_celery_flags() {
        let mut p = pool();
        p.spec.queues = vec!["high".into(), "default".into()];
        p.spec.processes_per_pod = 8;
        p.spec.celery = Some(crate::crd::CeleryApp {
            app: "shop.celery:app".into(),
            log_level: crate::crd::CeleryLogLevel::Warning,
            extra_args: vec!["--prefetch-multiplier".into(), "1".into()],
            ..Default::default()
        });
        p.spec.limits = Some(crate::crd::ProcessLimits {
            max_tasks_per_child: Some(100),
            max_memory_per_child_mb: Some(512),
            soft_time_limit_seconds: Some(240),
            hard_time_limit_seconds: Some(300),
        });
        let mut v = valid();
        v.celery_queues = vec![
            celery_queue("high", Some("high_priority")),
            celery_queue("default", None),
        ];
        let spec = pod_spec(&p, &v);
        let c = &spec.containers[0];
        assert_eq!(
            c.command.clone().unwrap(),
            [
                "celery",
                "-A",
                "shop.celery:app",
                "worker",
                "-Q",
                "high_priority,default",
                "-c",
                "8",
                "-P",
                "prefork",
                "-n",
                "$(FUNCSCALE_POD_NAME)@%h",
                "--loglevel",
                "WARNING",
                "--time-limit",
                "300",
                "--soft-time-limit",
                "240",
                "--max-tasks-per-child",
                "100",
                // 512 MiB in Celery's KiB
                "--max-memory-per-child",
                "524288",
                "--prefetch-multiplier",
                "1",
            ]
        );
        // warm shutdown on SIGTERM waits for running tasks: grace above the hard limit
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(300 + GRACE_MARGIN_SECONDS)
        );
        // the pod name the command expands, and the integration's queue map
        let env = c.env.clone().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).cloned();
        assert!(get("FUNCSCALE_POD_NAME").is_some_and(|e| e.value_from.is_some()));
        assert!(get("FUNCSCALE_POD_NAMESPACE").is_some());
        assert!(get("FUNCSCALE_REDIS_URL").is_some() && get("FUNCSCALE_PREFIX").is_some());
        let map: serde_json::Value =
            serde_json::from_str(&get("FUNCSCALE_CELERY_QUEUES").unwrap().value.unwrap()).unwrap();
        // adopted queues keep their ids by name (the keys the operator reads stats under)
        assert_eq!(
            map,
            serde_json::json!({"high_priority": "high", "default": "default"})
        );
        // nothing serves :9090 in a Celery pod: no port, no probe a real pod cannot pass
        assert_eq!(c.ports, None);
        assert_eq!((&c.readiness_probe, &c.liveness_probe), (&None, &None));
        // the command replaces the image's init: the pause process reaps orphans
        assert_eq!(spec.share_process_namespace, Some(true));
        // without limits: no limit flags, the default grace
        p.spec.limits = None;
        p.spec.celery.as_mut().unwrap().pool = crate::crd::CeleryPoolKind::Threads;
        let spec = pod_spec(&p, &v);
        let cmd = spec.containers[0].command.clone().unwrap();
        assert!(cmd.windows(2).any(|w| w == ["-P", "threads"]), "{cmd:?}");
        assert!(
            !cmd.iter()
                .any(|a| a.contains("limit") || a.contains("child"))
        );
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(DEFAULT_DRAIN_SECONDS + GRACE_MARGIN_SECONDS)
        );
    }

    #[test]
    fn a_celery_beat_runs_celery_beat_with_its_schedule_in_tmp() {
        let mut p = pool();
        p.spec.role = PoolRole::Beat;
        p.spec.queues = vec![];
        p.spec.celery = Some(crate::crd::CeleryApp {
            app: "shop".into(),
            scheduler: Some("funcscale_celery.GuardedScheduler".into()),
            ..Default::default()
        });
        let spec = pod_spec(&p, &valid());
        let c = &spec.containers[0];
        assert_eq!(c.name, "beat");
        assert_eq!(
            c.command.clone().unwrap(),
            [
                "celery",
                "-A",
                "shop",
                "beat",
                "-s",
                "/tmp/celerybeat-schedule",
                "--loglevel",
                "INFO",
                "-S",
                "funcscale_celery.GuardedScheduler"
            ]
        );
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/tmp" && m.read_only != Some(true))
        );
        assert_eq!(c.readiness_probe, None);
        assert_eq!(spec.share_process_namespace, Some(true));
        // funcscale's own worker keeps its image's init
        let spec = pod_spec(&pool(), &valid());
        assert_eq!(spec.share_process_namespace, None);
    }

    #[test]
    fn a_pool_with_its_own_command_gets_only_the_probes_it_sets() {
        for role in [PoolRole::Worker, PoolRole::Beat] {
            let mut p = pool();
            p.spec.role = role;
            // funcscale's own worker and beat serve the probes on :9090
            let c = container(&p);
            assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());

            // Celery serves nothing there: no probes unless asked for
            p.spec.command = vec!["celery".into(), "worker".into()];
            let c = container(&p);
            assert_eq!(
                (c.readiness_probe, c.liveness_probe, c.startup_probe),
                (None, None, None),
                "{role:?}"
            );

            // asked for in the pod template: kept as given
            let probe = serde_json::json!({
                "exec": {"command": ["celery", "inspect", "ping"]},
                "periodSeconds": 30
            });
            p.spec.pod_template = Some(serde_json::json!({"spec": {"containers": [
                {"name": c.name, "readinessProbe": probe, "startupProbe": probe}
            ]}}));
            let c = container(&p);
            let want: Probe = serde_json::from_value(probe).unwrap();
            assert_eq!(c.readiness_probe.as_ref(), Some(&want), "{role:?}");
            assert_eq!(c.startup_probe.as_ref(), Some(&want), "{role:?}");
            assert_eq!(c.liveness_probe, None, "{role:?}");
        }
    }

    #[test]
    fn a_pod_template_probe_handler_replaces_the_generated_one() {
        let mut p = pool();
        p.spec.pod_template = Some(serde_json::json!({"spec": {"containers": [{
            "name": "worker",
            "livenessProbe": {"tcpSocket": {"port": 9090}, "periodSeconds": 30},
            "readinessProbe": {"timeoutSeconds": 5}
        }]}}));
        let c = container(&p);
        let live = c.liveness_probe.unwrap();
        assert!(live.http_get.is_none(), "one handler only: {live:?}");
        assert!(live.tcp_socket.is_some());
        assert_eq!(
            (live.period_seconds, live.failure_threshold),
            (Some(30), Some(3))
        );
        // no handler in the overlay: the generated one stays, the timing merges
        let ready = c.readiness_probe.unwrap();
        assert!(ready.http_get.is_some());
        assert_eq!(
            (ready.period_seconds, ready.timeout_seconds),
            (Some(WORKER_READINESS.0), Some(5))
        );
    }

    #[test]
    fn invalid_pod_template_is_a_spec_error() {
        let mut p = pool();
        p.spec.pod_template = Some(serde_json::json!({"spec": {"containers": "nope"}}));
        let e = build(&p, "ns", &valid(), Some(1), &Config::default()).unwrap_err();
        assert_eq!(e.category(), "invalid_spec");
    }

    #[test]
    fn unmanaged_replicas_are_absent_from_the_apply_body() {
        let d = build(&pool(), "ns", &valid(), None, &Config::default())
            .unwrap()
            .deployment;
        let v = serde_json::to_value(&d).unwrap();
        assert!(v["spec"].get("replicas").is_none(), "{v}");
    }

    #[test]
    fn url_secret_and_password_secret_env() {
        use crate::crd::{RedisConnection, SecretKeyRef};
        let c = Config::default();
        let r = |n: &str| SecretKeyRef {
            name: n.into(),
            key: "k".into(),
        };
        let e = redis_env(
            Some(&RedisConnection {
                url_secret_ref: Some(r("s")),
                ..Default::default()
            }),
            &c,
        )
        .unwrap();
        assert_eq!(
            e[0].value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "s"
        );
        let e = redis_env(
            Some(&RedisConnection {
                url: Some("rediss://u@h:6380/1".into()),
                password_secret_ref: Some(r("p")),
                ..Default::default()
            }),
            &c,
        )
        .unwrap();
        assert_eq!(e[0].value.as_deref(), Some("rediss://u@h:6380/1"));
        assert_eq!(e[1].name, "FUNCSCALE_REDIS_PASSWORD");
        let e = redis_env(
            Some(&RedisConnection {
                url: Some("redis://h:6379/1".into()),
                password_secret_ref: Some(r("p")),
                username_secret_ref: Some(r("u")),
                ..Default::default()
            }),
            &c,
        )
        .unwrap();
        let from = |i: usize| {
            e[i].value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name
                .clone()
        };
        assert_eq!(
            (e[1].name.as_str(), from(1).as_str()),
            ("FUNCSCALE_REDIS_PASSWORD", "p")
        );
        assert_eq!(
            (e[2].name.as_str(), from(2).as_str()),
            ("FUNCSCALE_REDIS_USERNAME", "u")
        );

        // the default URL with a password never lands in a pod spec
        let mut c = Config {
            default_redis: crate::redis_metrics::RedisEndpoint::new("redis://:pw@r:6379/0"),
            ..Config::default()
        };
        assert_eq!(redis_env(None, &c).unwrap_err().category(), "invalid_spec");
        c.worker_redis_secret = Some(r("redis-url"));
        let e = redis_env(None, &c).unwrap();
        assert_eq!(
            e[0].value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "redis-url"
        );
        assert!(e[0].value.is_none());

        // a password given apart (`--redis-password`) keeps the URL out of the pod spec too
        let c = Config {
            default_redis: crate::redis_metrics::RedisEndpoint::with_credentials(
                "redis://r:6379/0",
                Some("op"),
                Some("pw"),
            ),
            ..Config::default()
        };
        assert_eq!(redis_env(None, &c).unwrap_err().category(), "invalid_spec");
        // the operator's username alone stays the operator's: the pods get the URL only
        let c = Config {
            default_redis: crate::redis_metrics::RedisEndpoint::with_credentials(
                "redis://r:6379/0",
                Some("op"),
                None,
            ),
            ..Config::default()
        };
        let e = redis_env(None, &c).unwrap();
        assert!(
            e.iter().all(|e| e.name != "FUNCSCALE_REDIS_USERNAME"),
            "{e:?}"
        );

        // a default Sentinel set whose sentinels take a password: refused without
        // --worker-redis-sentinel-secret, else the pods read it (and the username) from it
        let url = "redis+sentinel://s0:26379,s1:26379/mymaster/0";
        let mut c = Config {
            default_redis: crate::redis_metrics::RedisEndpoint::new(url)
                .with_sentinel_credentials(Some("sen"), Some("spw")),
            ..Config::default()
        };
        let err = redis_env(None, &c).unwrap_err();
        assert_eq!(err.category(), "invalid_spec");
        assert!(
            err.to_string().contains("--worker-redis-sentinel-secret"),
            "{err}"
        );
        c.worker_redis_sentinel_secret = Some((r("sentinels"), Some("user".into())));
        let e = redis_env(None, &c).unwrap();
        let secret = |name: &str| {
            e.iter()
                .find(|v| v.name == name)
                .and_then(|v| v.value_from.as_ref()?.secret_key_ref.clone())
                .map(|s| (s.name, s.key))
        };
        assert_eq!(e[0].value.as_deref(), Some(url), "no password in the URL");
        assert_eq!(
            secret("FUNCSCALE_REDIS_SENTINEL_PASSWORD"),
            Some(("sentinels".into(), "k".into()))
        );
        assert_eq!(
            secret("FUNCSCALE_REDIS_SENTINEL_USERNAME"),
            Some(("sentinels".into(), "user".into()))
        );
        assert!(e.iter().all(|v| v.value.as_deref() != Some("spw")), "{e:?}");
    }
}

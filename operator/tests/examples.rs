//! Every pool of every shipped example renders a Deployment a real API server accepts, and
//! runs on a real kubelet: the operator's own validate and build steps take it, every
//! container has a name and an image, and a pool that runs its own command gets only the
//! probes it asks for (the worker's :9090 endpoints are not there). What the API server's
//! schema and CEL rules say about the CRs themselves is `crd_schema.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use funcscale_operator::context::Config;
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool, PoolRole};
use funcscale_operator::pool::{build, dereference::Dereferenced, validate};
use k8s_openapi::api::core::v1::Container;
use kube::ResourceExt;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("manifests/examples")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read YAML");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (!v.is_null()).then(|| serde_json::to_value(v).expect("YAML to JSON"))
        })
        .collect()
}

/// The container the pool's podTemplate patches with `name`, if any.
fn patched<'a>(pool: &'a FuncWorkerPool, name: &str) -> Option<&'a Value> {
    pool.spec.pod_template.as_ref()?["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// The containers of each example pool's Deployment, as the operator renders them.
fn rendered() -> Vec<(String, FuncWorkerPool, Result<Vec<Container>, String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("manifests/examples")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let docs = docs(&f);
        let of_kind = |kind: &'static str| {
            docs.iter()
                .filter(move |d| d["kind"] == kind && d["apiVersion"] == "funcscale.dev/v1alpha1")
                .cloned()
        };
        let queues: Vec<Arc<FuncQueue>> = of_kind("FuncQueue")
            .map(|d| Arc::new(serde_json::from_value(d).expect("FuncQueue")))
            .collect();
        for d in of_kind("FuncWorkerPool") {
            let mut pool: FuncWorkerPool = serde_json::from_value(d).expect("FuncWorkerPool");
            pool.metadata.uid = Some("example".into());
            let ns = pool.namespace().unwrap_or_else(|| "default".into());
            let deref = Dereferenced {
                queues: pool
                    .spec
                    .queues
                    .iter()
                    .map(|q| {
                        let found = queues.iter().find(|x| x.name_any() == *q).cloned();
                        (q.clone(), found)
                    })
                    .collect(),
                namespace_queues: if pool.spec.role == PoolRole::Beat {
                    queues.clone()
                } else {
                    vec![]
                },
                ..Default::default()
            };
            let config = Config::default();
            let containers = validate::validate(&pool, &ns, &deref, &config.keys)
                .and_then(|valid| build::build(&pool, &ns, &valid, Some(1), &config))
                .map(|d| d.deployment.spec.unwrap().template.spec.unwrap().containers)
                .map_err(|e| e.to_string());
            let file = f.file_name().unwrap().to_string_lossy().into_owned();
            out.push((file, pool, containers));
        }
    }
    assert!(out.len() >= 5, "only {} example pools found", out.len());
    out
}

#[test]
fn every_example_pool_renders_containers_the_api_server_accepts() {
    for (file, pool, containers) in rendered() {
        let name = pool.name_any();
        let containers =
            containers.unwrap_or_else(|e| panic!("{file}: pool {name} is refused: {e}"));
        for (i, c) in containers.iter().enumerate() {
            assert!(
                !c.name.is_empty() && c.image.as_deref().is_some_and(|i| !i.is_empty()),
                "{file}: pool {name}: spec.template.spec.containers[{i}] ({:?}) has no image: \
                 a podTemplate container that matches none of the pool's",
                c.name
            );
        }
    }
}

#[test]
fn example_pools_with_their_own_command_get_only_the_probes_they_ask_for() {
    let mut own = 0;
    for (file, pool, containers) in rendered() {
        if pool.spec.command.is_empty() && pool.spec.celery.is_none() {
            continue;
        }
        own += 1;
        let name = pool.name_any();
        let containers =
            containers.unwrap_or_else(|e| panic!("{file}: pool {name} is refused: {e}"));
        let c = &containers[0];
        let asked = |field: &str| patched(&pool, &c.name).is_some_and(|p| p.get(field).is_some());
        for (field, probe) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            assert_eq!(
                probe.is_some(),
                asked(field),
                "{file}: pool {name} runs {:?}: {field} must be there exactly when its \
                 podTemplate sets one, got {probe:?}",
                c.command
            );
        }
    }
    assert!(
        own >= 5,
        "the Celery examples have five pools running Celery, found {own}"
    );
}

/// Every `spec.celery` example pool runs `celery -A <app>`, a worker on the Celery names of
/// its queues with its processesPerPod as the concurrency.
#[test]
fn example_celery_pools_run_celery_on_their_queues() {
    let mut n = 0;
    for (file, pool, containers) in rendered() {
        let Some(celery) = &pool.spec.celery else {
            continue;
        };
        n += 1;
        let name = pool.name_any();
        let containers =
            containers.unwrap_or_else(|e| panic!("{file}: pool {name} is refused: {e}"));
        let cmd = containers[0].command.clone().unwrap();
        assert_eq!(
            cmd[..3],
            ["celery", "-A", celery.app.as_str()],
            "{file}: {name}"
        );
        if pool.spec.role == PoolRole::Worker {
            let at = |flag: &str| {
                cmd.iter()
                    .position(|a| a == flag)
                    .map(|i| cmd[i + 1].clone())
                    .unwrap_or_else(|| panic!("{file}: {name}: no {flag} in {cmd:?}"))
            };
            assert_eq!(at("-c"), pool.spec.processes_per_pod.to_string());
            assert_eq!(
                at("-Q").split(',').count(),
                pool.spec.queues.len(),
                "{file}: {name}: one Celery queue per FuncQueue"
            );
        }
    }
    assert!(n >= 5, "only {n} Celery example pools");
}

/// The chart's PodMonitor scrapes worker pods by a port name: every example pool that runs
/// funcscale's worker declares a container port of that name (it was `health` while the
/// PodMonitor and the docs said `metrics`: worker metrics were never scraped).
#[test]
fn worker_pods_declare_the_port_the_pod_monitor_scrapes() {
    let template = std::fs::read_to_string(
        examples_dir()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("charts/funcscale/templates/podmonitor.yaml"),
    )
    .expect("podmonitor template");
    let port = template
        .lines()
        .find_map(|l| l.trim().strip_prefix("- port: "))
        .expect("podMetricsEndpoints port")
        .trim()
        .to_string();
    let mut checked = 0;
    for (file, pool, containers) in rendered() {
        let Ok(containers) = containers else { continue };
        if !pool.spec.command.is_empty() || pool.spec.celery.is_some() {
            continue; // its own program, or Celery: it serves what it serves
        }
        let c = &containers[0];
        let names: Vec<String> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.clone())
            .collect();
        assert!(
            names.contains(&port),
            "{file}: pool {} declares ports {names:?}, the PodMonitor scrapes {port:?}",
            pool.name_any()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} worker pools checked");
}

//! Every shipped manifest on the real API server: the Helm chart rendered with its defaults
//! (its operator runs as a pod, with the chart's ServiceAccount, RBAC, args and probes, under
//! the process kubelet) and with its HA + monitoring values, and every file under
//! `manifests/examples/`. Every object must be accepted, and every pool the examples declare
//! must reach `Ready` with its pods Running (Celery pools run real Celery from a virtualenv).
//!
//! What this 1.20 server cannot serve is adapted or skipped, and said so: the
//! monitoring.coreos.com kinds are skipped (no Prometheus operator here); `policy/v1`
//! PodDisruptionBudgets and `autoscaling/v2` HorizontalPodAutoscalers are sent as
//! `policy/v1beta1` / `autoscaling/v2beta2` (same fields) when the server has only those.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use funcscale_e2e::control_plane::{ControlPlane, apply_dynamic, repo_root};
use funcscale_e2e::eventually;
use funcscale_e2e::node::{ImageRule, Kubelet, KubeletConfig};
use funcscale_e2e::scenario::{bin, worker_image};
use funcscale_operator::crd::FuncWorkerPool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::discovery::Discovery;
use kube::{Client, ResourceExt};
use serde_json::json;

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A Celery application image (`registry.example.com/<repository>`): Celery from the e2e
/// virtualenv, with a module `module` whose broker is `CELERY_BROKER_URL`.
fn celery_image(dir: &Path, repository: &str, module: &str) -> anyhow::Result<ImageRule> {
    let source = format!(
        "import os\nfrom celery import Celery\n\
         app = Celery('{module}', broker=os.environ['CELERY_BROKER_URL'])\n\
         @app.task\ndef ping():\n    return 'pong'\n"
    );
    Ok(funcscale_e2e::scenario::celery_image(repository, dir, module, &source, &[])?.0)
}

fn operator_image() -> anyhow::Result<ImageRule> {
    let mut r = ImageRule::new("funcscale-operator");
    let operator = bin("funcscale-operator")?;
    r.entrypoint = vec![operator.display().to_string()];
    r.programs.insert("funcscale-operator".into(), operator);
    Ok(r)
}

fn helm() -> anyhow::Result<PathBuf> {
    let helm = repo_root().join("target/tools/helm/helm");
    if !helm.is_file() {
        let st = std::process::Command::new(repo_root().join("charts/ci-check.sh"))
            .arg("tools")
            .status()?;
        anyhow::ensure!(st.success(), "charts/ci-check.sh tools failed");
    }
    Ok(helm)
}

/// `helm template` with these arguments; the documents as JSON values.
fn render(args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = std::process::Command::new(helm()?)
        .arg("template")
        .args(args)
        .current_dir(repo_root())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    docs(&String::from_utf8_lossy(&out.stdout))
}

fn docs(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut v = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let x: serde_json::Value = serde::Deserialize::deserialize(d)?;
        if !x.is_null() {
            v.push(x);
        }
    }
    Ok(v)
}

/// Apply every object; returns what was skipped (kinds this server cannot serve).
async fn apply_all(
    client: &Client,
    discovery: &Discovery,
    objects: Vec<serde_json::Value>,
    ns: &str,
    what: &str,
    failures: &mut Vec<String>,
) -> Vec<String> {
    let served = |api_version: &str, kind: &str| {
        let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
        discovery
            .resolve_gvk(&kube::api::GroupVersionKind::gvk(g, v, kind))
            .is_some()
    };
    let mut skipped = Vec::new();
    for mut o in objects {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut api_version = o["apiVersion"].as_str().unwrap_or_default().to_string();
        if !served(&api_version, &kind) {
            let older = match api_version.as_str() {
                "policy/v1" => Some("policy/v1beta1"),
                "autoscaling/v2" => Some("autoscaling/v2beta2"),
                _ => None,
            };
            match older.filter(|o| served(o, &kind)) {
                Some(older) => {
                    skipped.push(format!("{what}: {kind} {name} sent as {older}"));
                    api_version = older.to_string();
                    o["apiVersion"] = json!(older);
                }
                None => {
                    skipped.push(format!("{what}: {kind} {name} ({api_version}) not served"));
                    continue;
                }
            }
        }
        let namespaced = !matches!(
            kind.as_str(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
        );
        if namespaced && o["metadata"].get("namespace").is_none() {
            o["metadata"]["namespace"] = json!(ns);
        }
        if kind == "Namespace" {
            // the test's namespace is made by the harness (pods pinned to its kubelet)
            if name == ns {
                continue;
            }
        }
        if let Err(e) = apply_dynamic(client, discovery, &o).await {
            failures.push(format!("{what}: {api_version} {kind} {name}: {e:#}"));
        }
    }
    skipped
}

async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch(
        name,
        &PatchParams::apply("funcscale-e2e"),
        &Patch::Apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        ),
    )
    .await?;
    Ok(())
}

async fn redis_secret(client: &Client, ns: &str, name: &str, key: &str) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("funcscale-e2e").force(),
        &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns}, "stringData": {key: REDIS_URL}})),
    )
    .await?;
    Ok(())
}

/// For an example whose FuncQueues name a Sentinel set (`redis+sentinel://` url with
/// `passwordSecretRef` / `sentinelPasswordSecretRef`): start a real set with those passwords,
/// point the queues at its sentinels (same master name and database), and create the Secrets
/// the refs name. `None` when the example has no such queue.
async fn sentinel_for(
    client: &Client,
    ns: &str,
    objects: &mut [serde_json::Value],
) -> anyhow::Result<Option<funcscale_e2e::redis_topology::SentinelSet>> {
    use funcscale_e2e::redis_topology::{Auth, SentinelOptions, SentinelSet};
    let Some(redis) = objects
        .iter()
        .filter(|o| o["kind"] == "FuncQueue")
        .map(|o| o["spec"]["redis"].clone())
        .find(|r| {
            r["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("redis+sentinel://"))
        })
    else {
        return Ok(None);
    };
    let url = redis["url"].as_str().unwrap_or_default();
    let path: Vec<&str> = url
        .rsplit_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, p)| p.split('/').collect())
        .unwrap_or_default();
    let (master, db) = (path[0].to_string(), path.get(1).copied().unwrap_or("0"));
    const DATA_PW: &str = "example-data-pw";
    const SENTINEL_PW: &str = "example-sentinel-pw";
    let set = SentinelSet::start(SentinelOptions {
        master_name: master,
        data_auth: Some(Auth::password(DATA_PW)),
        sentinel_auth: Some(Auth::password(SENTINEL_PW)),
        ..SentinelOptions::default()
    })
    .await?;
    let ours = format!("{}/{db}", set.url());
    for o in objects.iter_mut().filter(|o| o["kind"] == "FuncQueue") {
        if o["spec"]["redis"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("redis+sentinel://"))
        {
            o["spec"]["redis"]["url"] = json!(ours);
        }
    }
    let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (field, value) in [
        ("passwordSecretRef", DATA_PW),
        ("sentinelPasswordSecretRef", SENTINEL_PW),
    ] {
        if let (Some(name), Some(key)) =
            (redis[field]["name"].as_str(), redis[field]["key"].as_str())
        {
            secrets
                .entry(name.to_string())
                .or_default()
                .insert(key.to_string(), value.to_string());
        }
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, data) in secrets {
        api.patch(
            &name,
            &PatchParams::apply("funcscale-e2e").force(),
            &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": ns}, "stringData": data})),
        )
        .await?;
    }
    Ok(Some(set))
}

/// What the example's pods ask of a node: their `nodeSelector` labels. (Their tolerations
/// are not made taints: the chart's operator runs on the same node.)
fn node_labels(objects: &[serde_json::Value]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for o in objects {
        let spec = &o["spec"]["podTemplate"]["spec"];
        for (k, v) in spec["nodeSelector"].as_object().into_iter().flatten() {
            labels.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    labels
}

/// Install the chart (defaults) into `ns`, watching `ns` only, with Redis key prefix `prefix`.
async fn install_chart(
    client: &Client,
    discovery: &Discovery,
    release: &str,
    ns: &str,
    prefix: &str,
    failures: &mut Vec<String>,
) -> anyhow::Result<Vec<String>> {
    redis_secret(client, ns, "funcscale-redis", "url").await?;
    let chart = render(&[
        release,
        "charts/funcscale",
        "--namespace",
        ns,
        "--set",
        &format!("watchNamespaces={{{ns}}}"),
        "--set",
        &format!("extraArgs={{--key-prefix={prefix}}}"),
        "--set",
        "pollInterval=1s",
    ])?;
    Ok(apply_all(client, discovery, chart, ns, "chart (defaults)", failures).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_and_every_example_run_on_the_real_api_server() -> anyhow::Result<()> {
    let worker = bin("funcscale-worker")?;
    // not under /tmp: pods get an emptyDir at /tmp
    let scratch = tempfile::tempdir_in(repo_root().join("target"))?;
    let images = vec![
        worker_image(&worker),
        {
            let mut renderer = worker_image(&worker);
            renderer.repository = "reports/renderer".into();
            renderer
        },
        celery_image(scratch.path(), "shop/app", "shop")?,
        celery_image(scratch.path(), "func/func", "func")?,
        operator_image()?,
    ];
    let cp = ControlPlane::ensure().await?;
    let client = cp.admin_client().await?;
    ControlPlane::install_crds(&client).await?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let pid = funcscale_e2e::control_plane::run_id();
    let mut failures = Vec::new();
    let mut notes = Vec::new();

    // 1. the chart with its HA + monitoring values: accepted (no kubelet runs its pods: its
    //    extraArgs name a flag that does not exist yet)
    let ha_ns = format!("manifests-ha-{pid}");
    ControlPlane::create_namespace(&client, &ha_ns, "none").await?;
    ensure_namespace(&client, "monitoring").await?;
    let ha = render(&[
        &format!("fs{pid}-ha"),
        "charts/funcscale",
        "--namespace",
        &ha_ns,
        "-f",
        "charts/funcscale/ci/ha-monitoring-values.yaml",
        "--set",
        &format!("watchNamespaces={{{ha_ns}}}"),
    ])?;
    notes.extend(
        apply_all(
            &client,
            &discovery,
            ha,
            &ha_ns,
            "chart (HA + monitoring values)",
            &mut failures,
        )
        .await,
    );

    // 2. every example in a namespace of its own, as its comment says to apply it, with the
    //    chart's operator (defaults) watching that namespace and a process kubelet whose node
    //    has what the example's pods ask for
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("manifests/examples"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    let logs = tempfile::Builder::new()
        .prefix("funcscale-manifests-")
        .tempdir()?;
    let mut kubelets = Vec::new();
    let mut spaces = Vec::new();
    let mut sentinel_sets = Vec::new();
    for (i, f) in examples.iter().enumerate() {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let mut objects = docs(&std::fs::read_to_string(f)?)?;
        let ns = format!("ex-{stem}-{pid}");
        let node = format!("n-{ns}");
        let mut kc = KubeletConfig::new(&node, &logs.path().join(&stem));
        kc.images = images.clone();
        kc.api_server = Some(cp.api_server()?);
        kc.labels = node_labels(&objects);
        ControlPlane::create_namespace(&client, &ns, &node).await?;
        kubelets.push(Kubelet::start(client.clone(), kc).await?);
        let release = format!("fs{pid}-{i}");
        notes.extend(
            install_chart(
                &client,
                &discovery,
                &release,
                &ns,
                &format!("fs-ex-{stem}-{pid}"),
                &mut failures,
            )
            .await?,
        );
        let what = format!("manifests/examples/{stem}.yaml");
        // a queue on a Sentinel set: a real one (master, two replicas, three sentinels, each
        // with the password the example's Secret names), its sentinels in place of the
        // example's hosts, and that Secret created as the example's comment says
        if let Some(set) = sentinel_for(&client, &ns, &mut objects).await? {
            sentinel_sets.push(set);
        }
        notes.extend(apply_all(&client, &discovery, objects, &ns, &what, &mut failures).await);
        // the examples' broker Secrets name hosts of their own: point them at this Redis, as
        // a user creates theirs out of band
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for s in secrets.list(&Default::default()).await? {
            for (key, v) in s.data.clone().unwrap_or_default() {
                let v = String::from_utf8_lossy(&v.0).to_string();
                if v.starts_with("redis://") || v.starts_with("rediss://") {
                    redis_secret(&client, &ns, &s.name_any(), &key).await?;
                }
            }
        }
        spaces.push((ns, release));
    }
    assert!(
        failures.is_empty(),
        "rejected by the API server:\n{}",
        failures.join("\n")
    );
    for n in &notes {
        eprintln!("note: {n}");
    }

    // 3. every chart operator becomes Ready, and every pool with it
    let ready = |d: &Deployment| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        st.ready_replicas.unwrap_or(0) >= want
            && st.updated_replicas.unwrap_or(0) >= want
            && st.observed_generation >= d.metadata.generation
    };
    let waiting = || async {
        let mut waiting = Vec::new();
        let mut pools_seen = 0;
        for (ns, release) in &spaces {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let pools: Api<FuncWorkerPool> = Api::namespaced(client.clone(), ns);
            let (Ok(ds), Ok(ps)) = (
                deployments.list(&Default::default()).await,
                pools.list(&Default::default()).await,
            ) else {
                waiting.push(format!("{ns}: cannot list"));
                continue;
            };
            if !ds
                .items
                .iter()
                .any(|d| d.name_any() == format!("{release}-funcscale") && ready(d))
            {
                waiting.push(format!("{ns}: the chart's operator {release} is not Ready"));
            }
            for p in &ps.items {
                pools_seen += 1;
                let cond_ready = p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                let dep = ds.items.iter().find(|d| d.name_any() == p.name_any());
                if !(cond_ready && dep.is_some_and(ready)) {
                    let conds: Vec<String> = p
                        .status
                        .as_ref()
                        .map(|s| {
                            s.conditions
                                .iter()
                                .filter(|c| c.status != "True" || c.type_ == "Conflict")
                                .map(|c| {
                                    format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    waiting.push(format!(
                        "{ns}: pool {} not Ready: {}",
                        p.name_any(),
                        conds.join("; ")
                    ));
                }
            }
        }
        (waiting, pools_seen)
    };
    let r = eventually(
        Duration::from_secs(120),
        "every operator and pool Ready",
        || async {
            let (w, n) = waiting().await;
            w.is_empty().then_some(n)
        },
    )
    .await;
    let n = match r {
        Ok(n) => n,
        Err(e) => {
            let (w, _) = waiting().await;
            let _ = logs.keep();
            panic!(
                "{e}:\n{}\n(pod logs kept under /tmp/funcscale-manifests-*)",
                w.join("\n")
            );
        }
    };
    assert!(n >= 20, "only {n} pools in the examples");
    eprintln!(
        "{} examples, {n} pools Ready, each namespace with the chart's operator",
        spaces.len()
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (ns, _) in &spaces {
        let _ = namespaces.delete(ns, &Default::default()).await;
    }
    let _ = namespaces.delete(&ha_ns, &Default::default()).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
    let _ = eventually(Duration::from_secs(30), "example pods gone", || async {
        let l = pods.list(&Default::default()).await.ok()?;
        (!l.items.iter().any(|p| {
            spaces
                .iter()
                .any(|(ns, _)| p.namespace().as_deref() == Some(ns))
        }))
        .then_some(())
    })
    .await;
    for k in kubelets {
        let _ = tokio::time::timeout(Duration::from_secs(20), k.shutdown()).await;
    }
    Ok(())
}

//! Every metric the alerts, the Grafana dashboard and the docs name is one the operator or the
//! workers really export: the names come from the registered collectors
//! (`telemetry::Metrics::names`, `funcscale_worker::metrics::Metrics::names`), so an alert on a
//! metric nobody exports (it could never fire) fails here, and a new metric is known as soon
//! as it is registered.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files that name metrics, relative to the workspace root. Directories: their files with
/// one of the given extensions.
const SOURCES: &[(&str, &[&str])] = &[
    ("charts/funcscale/templates", &["yaml", "tpl", "txt"]),
    ("charts/funcscale/dashboards", &["json"]),
    ("charts/funcscale/values.yaml", &[]),
    ("charts/funcscale/README.md", &[]),
    ("manifests/monitoring.yaml", &[]),
    ("docs", &["md"]),
    ("README.md", &[]),
];

/// `funcscale_` names that are not metrics: the Celery message header the `funcscale-celery`
/// integration sets at publish (`funcscale_protocol::foreign::CELERY_ENQUEUED_HEADER`), and
/// that Python package's module.
const NOT_METRICS: &[&str] = &[
    funcscale_protocol::foreign::CELERY_ENQUEUED_HEADER,
    "funcscale_celery",
    // funcscale-celery's beat guard: a Celery setting and a message header (docs/celery.md)
    "funcscale_beat_lease_ttl_ms",
    "funcscale_beat_tick_ms",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (path, exts) in SOURCES {
        let p = root().join(path);
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
                let f = e.unwrap().path();
                if f.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| exts.contains(&x))
                {
                    out.push(f);
                }
            }
        } else {
            assert!(p.is_file(), "{} is gone: update SOURCES", p.display());
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every `funcscale_[a-z0-9_]+` token of `text` with its line number. A token glued to a
/// preceding identifier character (`x_funcscale_y`) is not a metric name.
fn metric_names(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        let mut offset = 0;
        while let Some(i) = rest.find("funcscale_") {
            let at = offset + i;
            let before = line[..at].chars().next_back();
            let name: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push((n + 1, name.clone()));
            }
            offset = at + name.len();
            rest = &line[offset..];
        }
    }
    out
}

/// Names the operator and the workers register (histograms with their `_bucket`, `_sum` and
/// `_count` series).
fn exported() -> BTreeSet<String> {
    funcscale_operator::telemetry::Metrics::new()
        .names()
        .into_iter()
        .chain(funcscale_worker::metrics::Metrics::new().names())
        .collect()
}

/// The names in `text` that are not exported, as `line: name`.
fn unknown(text: &str, known: &BTreeSet<String>) -> Vec<String> {
    metric_names(text)
        .into_iter()
        .filter(|(_, name)| !known.contains(name) && !NOT_METRICS.contains(&name.as_str()))
        .map(|(line, name)| format!("{line}: {name}"))
        .collect()
}

#[test]
fn alerts_dashboards_and_docs_name_only_exported_metrics() {
    let known = exported();
    let mut problems = Vec::new();
    let mut seen = 0;
    for f in files() {
        let text = std::fs::read_to_string(&f).unwrap();
        seen += metric_names(&text).len();
        for u in unknown(&text, &known) {
            problems.push(format!("{}:{u}", f.strip_prefix(root()).unwrap().display()));
        }
    }
    assert!(
        problems.is_empty(),
        "metrics named but exported by neither the operator nor the workers (an alert on them \
         never fires):\n  {}\nexported: {known:?}",
        problems.join("\n  ")
    );
    // the alerts and the dashboard were really read
    assert!(seen > 40, "only {seen} metric names found");
}

#[test]
fn the_rule_file_and_the_dashboard_are_read() {
    let text = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    let rules = metric_names(&text("charts/funcscale/templates/prometheusrule.yaml"));
    assert!(
        rules
            .iter()
            .any(|(_, n)| n == "funcscale_queue_oldest_task_age_seconds"),
        "{rules:?}"
    );
    let dash = metric_names(&text("charts/funcscale/dashboards/funcscale.json"));
    assert!(
        dash.iter()
            .any(|(_, n)| n == "funcscale_worker_task_duration_seconds_bucket"),
        "{dash:?}"
    );
}

/// The check rejects what the review found: names nobody exports, and the worker's own
/// per-queue gauge under the operator's name.
#[test]
fn names_nobody_exports_are_rejected() {
    let known = exported();
    for bad in [
        "max by (namespace) (funcscale_beat_running) == 0",
        "rate(funcscale_worker_tasks_total{outcome=\"dead\"}[5m])",
        "rate(funcscale_reconcile_errors_total[5m])",
        "funcscale_worker_in_flight",
        "funcscale_metrics_available == 0",
        "histogram_quantile(0.9, rate(funcscale_leader_bucket[5m]))",
    ] {
        assert_eq!(unknown(bad, &known).len(), 1, "{bad} accepted");
    }
    for good in [
        "rate(funcscale_worker_tasks_failed_total[5m])",
        "histogram_quantile(0.9, rate(funcscale_reconcile_duration_seconds_bucket[5m]))",
        "funcscale_redis_poll_duration_seconds_count",
        "max by (namespace, pool) (funcscale_beat_ready_replicas) == 0",
        "funcscale_queue_metrics_available",
        "RUST_LOG=x_funcscale_y",
    ] {
        assert_eq!(unknown(good, &known), Vec::<String>::new(), "{good}");
    }
}

/// The operator and the workers never export the same name: a query on one would silently add
/// the other's series (the workers' per-queue depth did, under `funcscale_queue_depth`).
#[test]
fn operator_and_worker_names_are_disjoint() {
    let op: BTreeSet<String> = funcscale_operator::telemetry::Metrics::new()
        .names()
        .into_iter()
        .collect();
    let worker: BTreeSet<String> = funcscale_worker::metrics::Metrics::new()
        .names()
        .into_iter()
        .collect();
    assert!(op.len() >= 12 && worker.len() >= 11, "{op:?} {worker:?}");
    assert!(
        op.contains("funcscale_reconcile_duration_seconds_bucket"),
        "{op:?}"
    );
    assert_eq!(op.intersection(&worker).count(), 0, "{op:?} {worker:?}");
}

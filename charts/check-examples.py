#!/usr/bin/env python3
"""Asserts that manifests/examples/ still cover the seed topologies (run by charts/ci-check.sh).

Schema validity of the funcscale objects is the crd_schema test's job; this checks the shapes.
"""

import sys

import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kinds(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def check(cond, msg):
    if not cond:
        sys.exit(f"FAIL: {msg}")


def main(root="manifests/examples"):
    # standalone: queues #0-#9, worker-0 on 0,4,7,8,9, one pool per other queue, one beat
    docs = load(f"{root}/standalone.yaml")
    queues, pools = kinds(docs, "FuncQueue"), kinds(docs, "FuncWorkerPool")
    check(set(queues) == {f"queue-{n}" for n in range(10)}, "standalone: queues queue-0..queue-9")
    check(pools["worker-0"]["spec"]["queues"] == ["queue-0", "queue-4", "queue-7", "queue-8", "queue-9"],
          "standalone: worker-0 serves queue-0,4,7,8,9")
    for n in (1, 2, 3, 5, 6):
        check(pools[f"worker-{n}"]["spec"]["queues"] == [f"queue-{n}"], f"standalone: worker-{n} serves queue-{n}")
    beats = [p for p in pools.values() if p["spec"].get("role") == "Beat"]
    check(len(beats) == 1, "standalone: exactly one Beat pool")
    served = {q for p in pools.values() for q in p["spec"].get("queues", [])}
    check(served == set(queues), "standalone: every queue is served")

    # attached/heavy: 16 queues, one autoscaled pool per queue, 2.5 CPU / 4Gi pods
    docs = load(f"{root}/attached-heavy.yaml")
    queues, pools = kinds(docs, "FuncQueue"), kinds(docs, "FuncWorkerPool")
    check(len(queues) == 16, "attached-heavy: 16 queues")
    workers = [p for p in pools.values() if p["spec"].get("role", "Worker") == "Worker"]
    check(len(workers) == 16 and all(len(p["spec"]["queues"]) == 1 for p in workers),
          "attached-heavy: one pool per queue")
    check({p["spec"]["queues"][0] for p in workers} == set(queues), "attached-heavy: every queue has its pool")
    for p in workers:
        check("autoscaling" in p["spec"], f"attached-heavy: {p['metadata']['name']} is autoscaled")
        check(p["spec"]["resources"]["requests"] == {"cpu": "2.5", "memory": "4Gi"},
              f"attached-heavy: {p['metadata']['name']} requests cpu 2.5, memory 4Gi")

    # Celery adoption: Celery-format queue on key `celery`, a worker and a beat pool running the
    # app through spec.celery (funcscale renders the celery command)
    docs = load(f"{root}/celery-adoption.yaml")
    queues, pools = kinds(docs, "FuncQueue"), kinds(docs, "FuncWorkerPool")
    check(any(q["spec"].get("format") == "Celery" and q["spec"].get("key") == "celery" for q in queues.values()),
          "celery-adoption: a FuncQueue with format Celery and key celery")
    check(any(p["spec"].get("celery") and p["spec"].get("queues") for p in pools.values()),
          "celery-adoption: a worker pool running the Celery app through spec.celery")
    check(any(p["spec"].get("celery") and p["spec"].get("role") == "Beat" for p in pools.values()),
          "celery-adoption: a Beat pool running celery beat through spec.celery")
    check(not any(p["spec"].get("command") for p in pools.values()),
          "celery-adoption: no pool with its own command (spec.celery renders it)")

    # Celery priority queues: high_priority / celery / low_priority, a worker pool each
    docs = load(f"{root}/celery-priority-queues.yaml")
    queues, pools = kinds(docs, "FuncQueue"), kinds(docs, "FuncWorkerPool")
    keys = {q["spec"].get("key") for q in queues.values() if q["spec"].get("format") == "Celery"}
    check(keys == {"high_priority", "celery", "low_priority"},
          "celery-priority-queues: Celery queues high_priority, celery, low_priority")
    served = [p["spec"]["queues"] for p in pools.values() if p["spec"].get("celery")]
    check(sorted(len(q) for q in served) == [1, 1, 1] and {q[0] for q in served} == set(queues),
          "celery-priority-queues: one spec.celery worker pool per queue")

    # HPA: autoscaling/v2 HPA on a FuncWorkerPool with replicas and no autoscaling
    docs = load(f"{root}/hpa.yaml")
    pools = kinds(docs, "FuncWorkerPool")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    check(len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2", "hpa: one autoscaling/v2 HPA")
    ref = hpas[0]["spec"]["scaleTargetRef"]
    check(ref["apiVersion"] == "funcscale.dev/v1alpha1" and ref["kind"] == "FuncWorkerPool", "hpa: targets a FuncWorkerPool")
    target = pools.get(ref["name"])
    check(target is not None and "replicas" in target["spec"] and "autoscaling" not in target["spec"],
          "hpa: the target pool has replicas and no autoscaling")
    print("  examples cover the seed topologies (standalone, attached/heavy, Celery adoption, Celery priority queues, HPA)")


if __name__ == "__main__":
    main(*sys.argv[1:])

#!/usr/bin/env python3
"""Checks the monitoring objects of a rendered chart (run by charts/ci-check.sh):

- ServiceMonitor, PodMonitor and PrometheusRule against the prometheus-operator API models
  (cloudcoil-models-prometheus-operator), unknown fields rejected — kubernetes-validate skips them;
- every PromQL expression (alerts and dashboard panels) parses (promql-parser).

That every metric named is one the operator or the workers really export is checked by
operator/tests/monitoring.rs, against the names the binaries register (no list kept here).

    helm template ... | charts/check-monitoring.py
"""

import json
import sys

import promql_parser
import yaml
from cloudcoil.models.prometheus_operator import v1

MODELS = {"ServiceMonitor": v1.ServiceMonitor, "PodMonitor": v1.PodMonitor, "PrometheusRule": v1.PrometheusRule}
# Grafana template variables, replaced by something PromQL parses
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$queue": ".*", "$pool": ".*"}


def fail(msg):
    sys.exit(f"FAIL (monitoring): {msg}")


def unknown_fields(given, parsed, path=""):
    """Fields of `given` that the model dropped: unknown to the API."""
    out = []
    if isinstance(given, dict):
        for k, v in given.items():
            if not isinstance(parsed, dict) or k not in parsed:
                out.append(f"{path}.{k}")
            else:
                out += unknown_fields(v, parsed[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(parsed, list):
        for i, (a, b) in enumerate(zip(given, parsed)):
            out += unknown_fields(a, b, f"{path}[{i}]")
    return out


def check_expr(expr, where):
    try:
        promql_parser.parse(expr)
    except ValueError as e:
        fail(f"{where}: PromQL does not parse ({e}): {expr}")


def main():
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    seen = {"objects": 0, "exprs": 0}
    for d in docs:
        kind = d["kind"]
        if kind in MODELS:
            try:
                m = MODELS[kind].model_validate(d)
            except Exception as e:  # pydantic.ValidationError
                fail(f"{kind} {d['metadata']['name']}: {e}")
            extra = unknown_fields(d, m.model_dump(by_alias=True, exclude_unset=True, mode="json"))
            if extra:
                fail(f"{kind} {d['metadata']['name']}: unknown fields {extra}")
            seen["objects"] += 1
        if kind == "PrometheusRule":
            for g in d["spec"]["groups"]:
                for r in g["rules"]:
                    check_expr(r["expr"], f"rule {r.get('alert') or r.get('record')}")
                    seen["exprs"] += 1
                    if "alert" in r and not r.get("annotations", {}).get("runbook_url"):
                        fail(f"alert {r['alert']} has no runbook_url")
        if kind == "ConfigMap" and any(k.endswith(".json") for k in d.get("data", {})):
            for key, text in d["data"].items():
                dash = json.loads(text)
                for p in dash["panels"]:
                    for t in p.get("targets", []):
                        expr = t["expr"]
                        for var, val in GRAFANA_VARS.items():
                            expr = expr.replace(var, val)
                        check_expr(expr, f"dashboard panel {p['title']!r}")
                        seen["exprs"] += 1
                for v in dash["templating"]["list"]:
                    q = v.get("query")
                    if isinstance(q, dict) and q["query"].startswith("label_values("):
                        inner = q["query"][len("label_values("):].rsplit(",", 1)[0]
                        for var, val in GRAFANA_VARS.items():
                            inner = inner.replace(var, val)
                        check_expr(inner, f"dashboard variable {v['name']}")
    print(f"  monitoring ok: {seen['objects']} prometheus-operator objects valid, {seen['exprs']} PromQL expressions parse")


if __name__ == "__main__":
    main()

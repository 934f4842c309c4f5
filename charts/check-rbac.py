#!/usr/bin/env python3
"""The operator's rules in the rendered chart equal operator/rbac.yaml (least privilege, one truth).

Usage: check-rbac.py operator/rbac.yaml RENDERED.yaml [RENDERED.yaml ...]

For each rendered chart (one per values set), the union of the rules granted to the operator's
ServiceAccount through (Cluster)Roles other than the aggregated edit/view roles must equal the
union of the ClusterRole and Role rules in operator/rbac.yaml, rule by rule (api group,
resource, resource name, verb).
"""
import sys

import yaml


def grants(docs, skip=("-edit", "-view")):
    out = set()
    for d in docs:
        if not d or d.get("kind") not in ("ClusterRole", "Role"):
            continue
        if d["metadata"]["name"].endswith(skip):
            continue
        for r in d.get("rules", []):
            names = r.get("resourceNames") or ["*"]
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    for n in names:
                        for v in r["verbs"]:
                            out.add((g, res, n, v))
    return out


def main():
    want = grants(yaml.safe_load_all(open(sys.argv[1])))
    ok = True
    for path in sys.argv[2:]:
        got = grants(yaml.safe_load_all(open(path)))
        for label, diff in (("granted by the chart but not in", got - want),
                            ("in but not granted by the chart", want - got)):
            for g, res, n, v in sorted(diff):
                ok = False
                print(f"  {path}: {v} {g or 'core'}/{res}"
                      f"{'' if n == '*' else ' ' + n} is {label} {sys.argv[1]}")
    if not ok:
        sys.exit(1)
    print(f"  operator RBAC: the chart grants exactly the rules of {sys.argv[1]} ({len(want)} grants)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Policy checks on a rendered chart (run by charts/ci-check.sh on every `helm template`):

- pods meet the restricted Pod Security Standard (non-root, read-only root filesystem, no
  privilege escalation, all capabilities dropped, seccomp RuntimeDefault);
- RBAC has no wildcards and never lets the operator write secrets or a FuncQueue/Pool spec;
- the operator Deployment passes the flags of the operator's interface.

    helm template ... | charts/check-render.py [--watch NAMESPACE]
"""

import sys

import yaml


def fail(msg):
    sys.exit(f"FAIL (rendered chart): {msg}")


def main():
    watch = sys.argv[sys.argv.index("--watch") + 1] if "--watch" in sys.argv else None
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        fail(f"expected one Deployment, got {len(deployments)}")
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail("pod securityContext must set runAsNonRoot and seccompProfile RuntimeDefault")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{c['name']}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            fail(f"{c['name']}: capabilities must drop ALL and add none")
        if sc.get("privileged"):
            fail(f"{c['name']}: must not be privileged")
    args = pod["containers"][0]["args"]
    for flag in ("run", "--metrics-addr=", "--poll-interval=", "--log-format=", "--worker-image=",
                 "--leader-election-namespace="):
        if not any(a == flag or a.startswith(flag) and flag.endswith("=") for a in args):
            fail(f"operator args lack {flag}: {args}")
    ns_flags = [a for a in args if a.startswith("--namespace=")]
    if watch and ns_flags != [f"--namespace={watch}"]:
        fail(f"one-namespace mode must pass --namespace={watch}: {args}")
    if not watch and ns_flags:
        fail(f"cluster-wide mode must not pass --namespace: {args}")
    env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
    if "FUNCSCALE_REDIS_URL" not in env:
        fail("FUNCSCALE_REDIS_URL is not set")

    for d in docs:
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        for r in d.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                if "*" in r.get(key, []):
                    fail(f"{d['kind']} {d['metadata']['name']}: wildcard in {key}")
            if "secrets" in r.get("resources", []) and set(r["verbs"]) - {"get", "list", "watch"}:
                if "funcscale-edit" not in d["metadata"]["name"]:
                    fail(f"{d['kind']} {d['metadata']['name']}: the operator may only read secrets")
            if d["metadata"]["name"].endswith("-edit") or d["metadata"]["name"].endswith("-view"):
                continue
            if {"funcqueues", "funcworkerpools"} & set(r.get("resources", [])) and set(r["verbs"]) - {"get", "list", "watch"}:
                fail(f"{d['kind']} {d['metadata']['name']}: the operator must not write a spec")
    cluster_rules = [r for d in docs if d["kind"] == "ClusterRole" and not d["metadata"]["name"].endswith(("-edit", "-view"))
                     for r in d["rules"]]
    if watch and any("deployments" in r["resources"] or "secrets" in r["resources"] for r in cluster_rules):
        fail("one-namespace mode must not grant cluster-wide rights on deployments or secrets")
    print(f"  policy ok: restricted pod security, no RBAC wildcards, operator flags"
          f" ({'namespace ' + watch if watch else 'cluster-wide'})")


if __name__ == "__main__":
    main()

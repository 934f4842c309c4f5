//! The resources the test API server serves, and the discovery documents that describe them.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource (writes to the main resource keep status, and vice versa).
    pub status: bool,
    /// Has a `scale` subresource.
    pub scale: bool,
    /// Served only while a CustomResourceDefinition `<plural>.<group>` exists.
    pub custom: bool,
    pub short_names: &'static [&'static str],
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Path of the collection (namespace `None`: all namespaces or cluster-scoped).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}", self.prefix(), self.plural)
            }
            _ => format!("{}/{}", self.prefix(), self.plural),
        }
    }

    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }

    /// Name of the CRD that defines this resource.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        status: false,
        scale: false,
        custom: false,
        short_names: &[],
    }
}

/// Everything this server serves. Anything else answers 404, as a cluster without it would.
pub const RESOURCES: &[ResourceInfo] = &[
    res("", "v1", "namespaces", "namespace", "Namespace", false),
    res("", "v1", "configmaps", "configmap", "ConfigMap", true),
    res("", "v1", "secrets", "secret", "Secret", true),
    res("", "v1", "events", "event", "Event", true),
    res("", "v1", "pods", "pod", "Pod", true),
    res("", "v1", "services", "service", "Service", true),
    res(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
    ),
    ResourceInfo {
        status: true,
        scale: true,
        short_names: &["deploy"],
        ..res(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            true,
        )
    },
    res(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
    ),
    res("events.k8s.io", "v1", "events", "event", "Event", true),
    ResourceInfo {
        status: true,
        short_names: &["crd", "crds"],
        ..res(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
        )
    },
    ResourceInfo {
        status: true,
        custom: true,
        short_names: &["fq"],
        ..res(
            "funcscale.dev",
            "v1alpha1",
            "funcqueues",
            "funcqueue",
            "FuncQueue",
            true,
        )
    },
    ResourceInfo {
        status: true,
        scale: true,
        custom: true,
        short_names: &["fwp"],
        ..res(
            "funcscale.dev",
            "v1alpha1",
            "funcworkerpools",
            "funcworkerpool",
            "FuncWorkerPool",
            true,
        )
    },
];

pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-funcscale-e2e",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "none (funcscale-e2e test API server)",
        "compiler": "rustc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`.
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]
    })
}

/// `GET /apis`; `served` says whether a resource is currently served (custom ones need their CRD).
pub fn group_list(served: impl Fn(&ResourceInfo) -> bool) -> Value {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| !r.group.is_empty() && served(r))
    {
        if !groups.contains(&(r.group, r.version)) {
            groups.push((r.group, r.version));
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`; `None` when nothing is served there.
pub fn resource_list(
    group: &str,
    version: &str,
    served: impl Fn(&ResourceInfo) -> bool,
) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version && served(r))
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.scale {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources
    }))
}

/// A parsed resource URL: `/api/v1/namespaces/ns/configmaps/name/status` and friends.
#[derive(Debug, Clone)]
pub struct ResourcePath {
    pub resource: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl ResourcePath {
    /// `Err(())` when the path is a resource path of something not served.
    pub fn parse(path: &str) -> Option<Result<Self, String>> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => return None,
        };
        let (namespace, plural, tail) = match rest {
            ["namespaces", ns, plural, tail @ ..] => (Some(ns.to_string()), *plural, tail),
            ["namespaces", tail @ ..] => (None, "namespaces", tail),
            [plural, tail @ ..] => (None, *plural, tail),
            [] => return None,
        };
        let Some(resource) = lookup(group, version, plural) else {
            return Some(Err(format!(
                "the server could not find the requested resource ({group}/{version} {plural})"
            )));
        };
        if tail.len() > 2 {
            return Some(Err(format!("unsupported path {path}")));
        }
        if namespace.is_some() && !resource.namespaced {
            return Some(Err(format!("{plural} is not namespaced")));
        }
        Some(Ok(ResourcePath {
            resource,
            namespace,
            name: tail.first().map(|s| s.to_string()),
            subresource: tail.get(1).map(|s| s.to_string()),
        }))
    }
}

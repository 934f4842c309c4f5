//! A container's environment as a kubelet builds it: `env` (values, `secretKeyRef`,
//! `configMapKeyRef`, `fieldRef`), `envFrom`, and `$(VAR)` expansion. Shared by the process
//! kubelet and the simulated (Deployment-level) one.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};

fn bytes(b: &ByteString) -> String {
    String::from_utf8_lossy(&b.0).into_owned()
}

/// `$(VAR)` expansion as the kubelet does it (`$$` escapes, unknown references stay).
pub(crate) fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(v) = env.get(&body[..end])
        {
            out.push_str(v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

async fn env_value(
    client: &Client,
    ns: &str,
    pod: &Pod,
    var: &EnvVar,
) -> anyhow::Result<Option<String>> {
    if let Some(v) = &var.value {
        return Ok(Some(v.clone()));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(f) = &from.field_ref {
        return Ok(Some(match f.field_path.as_str() {
            "metadata.name" => pod.name_any(),
            "metadata.namespace" => ns.to_string(),
            "metadata.uid" => pod.uid().unwrap_or_default(),
            "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
            "spec.nodeName" => pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            "spec.serviceAccountName" => pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            other => {
                if let Some(k) = other
                    .strip_prefix("metadata.labels['")
                    .and_then(|r| r.strip_suffix("']"))
                {
                    pod.labels().get(k).cloned().unwrap_or_default()
                } else if let Some(k) = other
                    .strip_prefix("metadata.annotations['")
                    .and_then(|r| r.strip_suffix("']"))
                {
                    pod.annotations().get(k).cloned().unwrap_or_default()
                } else {
                    anyhow::bail!("env {}: fieldRef {other} is not supported", var.name)
                }
            }
        }));
    }
    if let Some(s) = &from.secret_key_ref {
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(&s.name)
            .await?;
        let v = secret.and_then(|sec| sec.data.as_ref().and_then(|d| d.get(&s.key).map(bytes)));
        return match (v, s.optional.unwrap_or(false)) {
            (Some(v), _) => Ok(Some(v)),
            (None, true) => Ok(None),
            (None, false) => anyhow::bail!(
                "env {}: secret {:?} has no key {:?} (or does not exist)",
                var.name,
                s.name,
                s.key
            ),
        };
    }
    if let Some(c) = &from.config_map_key_ref {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(&c.name)
            .await?;
        let v = cm.and_then(|cm| cm.data.and_then(|d| d.get(&c.key).cloned()));
        return match (v, c.optional.unwrap_or(false)) {
            (Some(v), _) => Ok(Some(v)),
            (None, true) => Ok(None),
            (None, false) => anyhow::bail!(
                "env {}: configmap {:?} has no key {:?} (or does not exist)",
                var.name,
                c.name,
                c.key
            ),
        };
    }
    anyhow::bail!("env {}: resourceFieldRef is not supported", var.name)
}

pub(crate) async fn container_env(
    client: &Client,
    ns: &str,
    pod: &Pod,
    c: &Container,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await?
            {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        env.insert(format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => anyhow::bail!("envFrom: configmap {:?} not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            match Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await?
            {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        env.insert(format!("{prefix}{k}"), bytes(&v));
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => anyhow::bail!("envFrom: secret {:?} not found", r.name),
            }
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(v) = env_value(client, ns, pod, var).await? {
            let v = expand(&v, &env);
            env.insert(var.name.clone(), v);
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_vars() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
    }
}

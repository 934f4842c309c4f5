//! The `scale` subresource (`autoscaling/v1` `Scale`), for Deployments and for custom resources
//! whose CRD declares `subresources.scale` (`specReplicasPath`, `statusReplicasPath`,
//! `labelSelectorPath`).

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::resources::{ResourceInfo, ResourcePath, lookup};
use super::server::{ApiServer, Reply, error_reply};
use super::watch::EventType;

/// Where a resource keeps what its Scale shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// `None` for Deployments: the selector is rendered from `spec.selector`.
    pub label_selector: Option<String>,
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .collect()
}

fn get_path<'a>(obj: &'a Value, path: &str) -> &'a Value {
    segments(path).into_iter().fold(obj, |v, seg| &v[seg])
}

/// A merge patch that sets `path` to `value`.
fn patch_for(path: &str, value: Value) -> Value {
    segments(path)
        .into_iter()
        .rev()
        .fold(value, |inner, seg| json!({ seg: inner }))
}

/// `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist) as a selector string.
pub fn selector_string(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(exprs) = selector["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|vs| vs.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

impl ApiServer {
    async fn scale_paths(&self, res: &ResourceInfo) -> Option<ScalePaths> {
        if !res.custom {
            return Some(ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            });
        }
        let crds = lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")?;
        let crd = self.get(crds, None, &res.crd_name()).await?;
        let version = crd["spec"]["versions"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == res.version)?;
        let scale = &version["subresources"]["scale"];
        Some(ScalePaths {
            spec_replicas: scale["specReplicasPath"].as_str()?.to_string(),
            status_replicas: scale["statusReplicasPath"].as_str()?.to_string(),
            label_selector: Some(
                scale["labelSelectorPath"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        })
    }

    fn scale_of(obj: &Value, paths: &ScalePaths) -> Value {
        let meta = &obj["metadata"];
        let selector = match &paths.label_selector {
            None => selector_string(&obj["spec"]["selector"]),
            Some(p) if p.is_empty() => String::new(),
            Some(p) => get_path(obj, p).as_str().unwrap_or_default().to_string(),
        };
        let mut status =
            json!({"replicas": get_path(obj, &paths.status_replicas).as_i64().unwrap_or(0)});
        if !selector.is_empty() {
            status["selector"] = json!(selector);
        }
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": get_path(obj, &paths.spec_replicas).as_i64().unwrap_or(0)},
            "status": status,
        })
    }

    /// GET, PUT or PATCH `.../NAME/scale`.
    pub(crate) async fn scale(
        &self,
        rp: &ResourcePath,
        method: &Method,
        content_type: &str,
        body: &Bytes,
    ) -> Reply {
        let res = rp.resource;
        let ns = rp.namespace.as_deref();
        let Some(name) = rp.name.as_deref() else {
            return error_reply(StatusCode::NOT_FOUND, "NotFound", "scale needs a name");
        };
        let Some(paths) = self.scale_paths(res).await else {
            return error_reply(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} has no scale subresource", res.plural),
            );
        };
        let _guard = if *method == Method::GET {
            None
        } else {
            Some(self.write_lock().await)
        };
        let Some(current) = self.get(res, ns, name).await else {
            return error_reply(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{}.{} \"{name}\" not found", res.plural, res.group),
            );
        };
        let scale = Self::scale_of(&current, &paths);
        let wanted: Value = match *method {
            Method::GET => {
                return Reply {
                    status: StatusCode::OK,
                    body: scale,
                };
            }
            Method::PUT => match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return error_reply(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
                }
            },
            Method::PATCH => {
                let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "invalid patch body",
                    );
                };
                let mut patched = scale.clone();
                if content_type.starts_with("application/json-patch+json") {
                    let applied = serde_json::from_value::<json_patch::Patch>(patch)
                        .map_err(|e| e.to_string())
                        .and_then(|p| {
                            json_patch::patch(&mut patched, &p).map_err(|e| e.to_string())
                        });
                    if let Err(e) = applied {
                        return error_reply(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e);
                    }
                } else {
                    json_patch::merge(&mut patched, &patch);
                }
                patched
            }
            _ => {
                return error_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "scale supports get, update and patch",
                );
            }
        };
        if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && Some(rv) != current["metadata"]["resourceVersion"].as_str()
        {
            return error_reply(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    res.plural, res.group
                ),
            );
        }
        let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
            return error_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "spec.replicas: must be a non-negative integer",
            );
        };
        if scale["spec"]["replicas"].as_i64() == Some(replicas)
            && !get_path(&current, &paths.spec_replicas).is_null()
        {
            return Reply {
                status: StatusCode::OK,
                body: scale,
            };
        }
        let patch = patch_for(&paths.spec_replicas, json!(replicas));
        let updated = self
            .forward(
                Method::PATCH,
                &res.object_path(ns, name),
                Some("application/merge-patch+json"),
                patch.to_string().into(),
            )
            .await;
        if !updated.ok() {
            return updated;
        }
        self.record(
            res,
            EventType::Modified,
            updated.body.clone(),
            Some(current),
        );
        Reply {
            status: StatusCode::OK,
            body: Self::scale_of(&updated.body, &paths),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_selectors() {
        let obj = json!({"spec": {"replicas": 3}, "status": {"selector": "a=b"}});
        assert_eq!(get_path(&obj, ".spec.replicas"), &json!(3));
        assert_eq!(
            patch_for(".spec.replicas", json!(5)),
            json!({"spec": {"replicas": 5}})
        );
        let sel = json!({"matchLabels": {"app": "w"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(selector_string(&sel), "app=w,tier in (a,b)");
    }
}

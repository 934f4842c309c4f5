//! The CRDs as the API server would enforce them: every example in the repository is valid
//! against the generated schemas (OpenAPI part and CEL rules, after defaulting), and each bad
//! example under `tests/invalid/` is rejected with its rule's message.

use std::path::{Path, PathBuf};

use funcscale_operator::crd::{FuncQueue, FuncWorkerPool, crds_yaml};
use kube::CustomResourceExt;
use kube::core::cel::{Validator, apply_defaults};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `openAPIV3Schema` of a CRD.
fn openapi_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("schema to JSON")
}

/// OpenAPI v3 (structural, as Kubernetes reads it) to JSON Schema: `nullable` becomes a null
/// type, and objects without `x-kubernetes-preserve-unknown-fields` reject unknown fields, as
/// `kubectl apply` does with strict field validation. `metadata` is the API server's business.
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, val) in m {
                if k.starts_with("x-kubernetes-") || k == "nullable" || k == "format" {
                    continue;
                }
                let converted = match (k.as_str(), val) {
                    // property names are not keywords: convert each property's schema
                    ("properties", Value::Object(props)) => Value::Object(
                        props
                            .iter()
                            .map(|(n, s)| (n.clone(), to_json_schema(s)))
                            .collect(),
                    ),
                    _ => to_json_schema(val),
                };
                out.insert(k.clone(), converted);
            }
            if m.get("nullable") == Some(&json!(true))
                && let Some(Value::String(t)) = m.get("type")
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if m.get("type") == Some(&json!("object")) && m.contains_key("properties") && !preserve
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            out.into()
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

struct Kind {
    openapi: Value,
    json_schema: jsonschema::Validator,
}

fn kinds() -> Vec<(&'static str, Kind)> {
    [
        ("FuncQueue", FuncQueue::crd()),
        ("FuncWorkerPool", FuncWorkerPool::crd()),
    ]
    .into_iter()
    .map(|(name, crd)| {
        let openapi = openapi_schema(&crd);
        let mut js = to_json_schema(&openapi);
        // the API server fills metadata; examples need only a name
        js["properties"]["metadata"] = json!({"type": "object"});
        js["properties"]["apiVersion"] = json!({"const": "funcscale.dev/v1alpha1"});
        js["properties"]["kind"] = json!({"const": name});
        let json_schema = jsonschema::validator_for(&js).expect("valid JSON schema");
        (
            name,
            Kind {
                openapi,
                json_schema,
            },
        )
    })
    .collect()
}

/// All errors the API server would report for `obj`, as `path: message` lines.
fn validate(kinds: &[(&str, Kind)], obj: &Value) -> Vec<String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let Some((_, k)) = kinds.iter().find(|(n, _)| *n == kind) else {
        return vec![format!("unknown kind {kind:?}")];
    };
    let defaulted = apply_defaults(&k.openapi, obj);
    let mut errors: Vec<String> = k
        .json_schema
        .iter_errors(&defaulted)
        .map(|e| format!("{}: {}", e.instance_path, e))
        .collect();
    if errors.is_empty()
        && let Err(cel) = Validator::new().validate(&k.openapi, &defaulted, None)
    {
        errors.extend(cel.iter().map(|e| e.to_string()));
    }
    errors
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read YAML");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (!v.is_null()).then(|| serde_json::to_value(v).expect("YAML to JSON"))
        })
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            if !matches!(
                name,
                "target" | ".git" | "node_modules" | "invalid" | "templates"
            ) {
                yaml_files(&p, out);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_example_in_the_repository_is_valid() {
    let kinds = kinds();
    let mut files = vec![];
    yaml_files(&repo_root(), &mut files);
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        if !text.contains("funcscale.dev/v1alpha1") || text.contains("{{") {
            continue;
        }
        for doc in yaml_docs(&f) {
            if doc["apiVersion"] != json!("funcscale.dev/v1alpha1") {
                continue;
            }
            let errors = validate(&kinds, &doc);
            assert!(
                errors.is_empty(),
                "{} ({} {}): {errors:#?}",
                f.display(),
                doc["kind"],
                doc["metadata"]["name"]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "found only {checked} funcscale resources in the repository's examples"
    );
}

#[test]
fn every_bad_example_is_rejected_with_its_rules_message() {
    let kinds = kinds();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/invalid")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "one bad example per validation rule");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", f.display()));
        let docs = yaml_docs(&f);
        assert_eq!(docs.len(), 1, "{}", f.display());
        let errors = validate(&kinds, &docs[0]);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "{}: expected an error containing {expect:?}, got {errors:#?}",
            f.display()
        );
    }
}

#[test]
fn defaults_fill_a_minimal_pool() {
    let kinds = kinds();
    let pool = json!({"apiVersion": "funcscale.dev/v1alpha1", "kind": "FuncWorkerPool", "metadata": {"name": "w"},
                      "spec": {"queues": ["a"], "autoscaling": {"maxReplicas": 4}}});
    let defaulted = apply_defaults(&kinds[1].1.openapi, &pool);
    assert_eq!(defaulted["spec"]["processesPerPod"], 5);
    assert_eq!(defaulted["spec"]["role"], "Worker");
    assert_eq!(defaulted["spec"]["autoscaling"]["minReplicas"], 1);
    assert_eq!(
        defaulted["spec"]["autoscaling"]["scaleDownStabilizationSeconds"],
        60
    );
    assert!(validate(&kinds, &pool).is_empty());
    // and the typed spec reads the same defaults
    let typed: FuncWorkerPool = serde_json::from_value(pool).expect("typed");
    assert_eq!(typed.spec.processes_per_pod, 5);
}

#[test]
fn committed_crds_are_fresh() {
    let committed = std::fs::read_to_string(repo_root().join("crds/funcscale-crds.yaml"))
        .expect("crds/funcscale-crds.yaml");
    assert!(
        committed == crds_yaml(),
        "crds/ is stale: run `make crds` and commit the result"
    );
}

#[test]
fn crds_carry_subresources_columns_names_and_rules() {
    let pool = serde_json::to_value(FuncWorkerPool::crd()).expect("json");
    let v = &pool["spec"]["versions"][0];
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    assert!(v["subresources"]["status"].is_object());
    assert_eq!(pool["spec"]["names"]["shortNames"], json!(["fwp"]));
    assert_eq!(pool["spec"]["names"]["categories"], json!(["funcscale"]));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for c in ["Role", "Queues", "Desired", "Ready", "Age"] {
        assert!(columns.contains(&c), "{c} missing from {columns:?}");
    }
    let rules = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
        .as_array()
        .expect("rules");
    assert!(rules.len() >= 5);

    let queue = serde_json::to_value(FuncQueue::crd()).expect("json");
    assert_eq!(queue["spec"]["names"]["shortNames"], json!(["fq"]));
    assert_eq!(queue["spec"]["names"]["categories"], json!(["funcscale"]));
    assert!(queue["spec"]["versions"][0]["subresources"]["status"].is_object());
}

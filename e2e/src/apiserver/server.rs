//! The HTTP front: routes Kubernetes API requests to kube-fake-client's in-memory store, and adds
//! what the store does not have: watch (with bookmarks and `410 Gone`), owner-reference garbage
//! collection, the scale subresource, CRD establishment and discovery.
//!
//! Every write goes through [`ApiServer::write`] under one lock, so the event log's order is the
//! resourceVersion order and a list's resourceVersion is exactly the log position it reflects.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, watch};

use super::resources::{self, RESOURCES, ResourceInfo, ResourcePath};
use super::watch::{Event, EventLog, EventType, Since, WatchFilter};
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool};

/// Response body: a whole JSON document, or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Tunables of the test API server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How often an idle watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How many write events the watch history keeps; older resourceVersions answer `410 Gone`.
    pub history: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(5),
            history: 10_000,
        }
    }
}

/// The in-memory Kubernetes API server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// kube-fake-client's store (storage, managed fields, SSA, status, conflicts).
    store: kube::Client,
    /// Held for reading by lists/watch starts, for writing by every mutation + its event.
    writes: RwLock<()>,
    log: Mutex<EventLog>,
    changed: watch::Sender<u64>,
    disconnect: watch::Sender<u64>,
    /// While set, watch requests answer 503 (an API server that is down for watches).
    watches_paused: AtomicBool,
    config: ServerConfig,
}

/// A reply from the store: status code and JSON body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    fn into_response(self) -> Response<Body> {
        json_response(self.status, &self.body)
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, JSON)
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("static response parts are valid")
}

pub(crate) fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16()
    })
}

pub(crate) fn error_reply(code: StatusCode, reason: &str, message: &str) -> Reply {
    Reply {
        status: code,
        body: status_body(code, reason, message),
    }
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_else(|_| s.to_string())
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Copy of `obj` without the fields the server owns, for "did this write change anything".
fn comparable(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "managedFields",
            "generation",
            "uid",
            "creationTimestamp",
        ] {
            meta.remove(f);
        }
    }
    v
}

fn now() -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap_or(Value::Null)
}

/// kube-fake-client learns "this kind has a status subresource" from a `Default` instance of the
/// type; the CR types have no `Default`, so this stands in for them (only apiVersion/kind count).
struct StatusMarker<K>(ObjectMeta, PhantomData<K>);

impl<K> Default for StatusMarker<K> {
    fn default() -> Self {
        Self(ObjectMeta::default(), PhantomData)
    }
}

impl<K: Resource<DynamicType = ()>> serde::Serialize for StatusMarker<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({"apiVersion": K::api_version(&()), "kind": K::kind(&())}).serialize(s)
    }
}

impl<K: Resource<DynamicType = ()>> Resource for StatusMarker<K> {
    type DynamicType = ();
    type Scope = K::Scope;
    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0
    }
}

impl ApiServer {
    pub async fn new(config: ServerConfig) -> anyhow::Result<Self> {
        let store = kube_fake_client::ClientBuilder::new()
            .with_resource::<FuncQueue>()
            .with_resource::<FuncWorkerPool>()
            .with_status_subresource::<Deployment>()
            .with_status_subresource::<CustomResourceDefinition>()
            .with_status_subresource::<StatusMarker<FuncQueue>>()
            .with_status_subresource::<StatusMarker<FuncWorkerPool>>()
            .with_return_managed_fields()
            .build()
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                writes: RwLock::new(()),
                log: Mutex::new(EventLog::new(config.history)),
                changed: watch::channel(0).0,
                disconnect: watch::channel(0).0,
                watches_paused: AtomicBool::new(false),
                config,
            }),
        })
    }

    /// Accept connections until the listener fails (or the task is dropped).
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%err, "connection ended");
                }
            });
        }
    }

    /// Forget the watch history: a watch resuming from an older resourceVersion gets `410 Gone`
    /// and must re-list.
    pub fn compact_watch_history(&self) {
        self.inner.log.lock().expect("log lock").compact();
    }

    /// End every open watch stream, as an API server restart or a load balancer would.
    pub fn disconnect_watches(&self) {
        self.inner.disconnect.send_modify(|n| *n += 1);
    }

    /// Serialises writes (and their events) with everything else that writes.
    pub(crate) async fn write_lock(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.inner.writes.write().await
    }

    /// End every open watch stream and refuse new ones (503) until [`Self::resume_watches`]:
    /// writes made meanwhile reach watchers only when they resume (or re-list).
    pub fn pause_watches(&self) {
        self.inner.watches_paused.store(true, Ordering::SeqCst);
        self.disconnect_watches();
    }

    pub fn resume_watches(&self) {
        self.inner.watches_paused.store(false, Ordering::SeqCst);
    }

    /// The highest resourceVersion written so far.
    pub fn latest_resource_version(&self) -> u64 {
        self.inner.log.lock().expect("log lock").latest()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(err) => {
                return error_reply(StatusCode::BAD_REQUEST, "BadRequest", &err.to_string())
                    .into_response();
            }
        };
        let path = parts.uri.path().to_string();
        let query = parse_query(parts.uri.query());
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(JSON)
            .to_string();
        tracing::debug!(method = %parts.method, %path, "request");
        if parts.method == Method::GET
            && let Some(doc) = self.discovery(&path, &parts.headers).await
        {
            return doc;
        }
        let rp = match ResourcePath::parse(&path) {
            None => {
                return error_reply(StatusCode::NOT_FOUND, "NotFound", "404 page not found")
                    .into_response();
            }
            Some(Err(msg)) => {
                return error_reply(StatusCode::NOT_FOUND, "NotFound", &msg).into_response();
            }
            Some(Ok(rp)) => rp,
        };
        if !self.served(rp.resource).await {
            let msg = format!(
                "the server could not find the requested resource ({} {})",
                rp.resource.api_version(),
                rp.resource.plural
            );
            return error_reply(StatusCode::NOT_FOUND, "NotFound", &msg).into_response();
        }
        match rp.subresource.as_deref() {
            None => {}
            Some("status") if rp.resource.status => {}
            Some("scale") if rp.resource.scale => {
                return self
                    .scale(&rp, &parts.method, &content_type, &body)
                    .await
                    .into_response();
            }
            Some(other) => {
                let msg = format!("{} has no subresource {other}", rp.resource.plural);
                return error_reply(StatusCode::NOT_FOUND, "NotFound", &msg).into_response();
            }
        }
        match (&parts.method, &rp.name) {
            (&Method::GET, None) => {
                let filter = WatchFilter::new(rp.resource, rp.namespace.clone(), &query);
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                    self.watch(filter, &query).await
                } else {
                    self.list(filter).await
                }
            }
            (&Method::GET, Some(name)) => {
                let path = rp.resource.object_path(rp.namespace.as_deref(), name);
                self.forward(Method::GET, &path, None, Bytes::new())
                    .await
                    .into_response()
            }
            _ if query.contains_key("dryRun") => error_reply(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "dryRun is not supported by the funcscale-e2e API server",
            )
            .into_response(),
            _ => {
                let _guard = self.inner.writes.write().await;
                self.write(
                    &rp,
                    &parts.method,
                    parts.uri.query(),
                    &query,
                    &content_type,
                    body,
                )
                .await
                .into_response()
            }
        }
    }

    /// Custom resources are served only while their CRD exists.
    async fn served(&self, res: &ResourceInfo) -> bool {
        if !res.custom {
            return true;
        }
        let crds = crd_resource();
        let path = crds.object_path(None, &res.crd_name());
        self.forward(Method::GET, &path, None, Bytes::new())
            .await
            .ok()
    }

    async fn discovery(&self, path: &str, headers: &http::HeaderMap) -> Option<Response<Body>> {
        let path = path.trim_end_matches('/');
        let mut custom_served = Vec::new();
        for r in RESOURCES.iter().filter(|r| r.custom) {
            if self.served(r).await {
                custom_served.push(r.plural);
            }
        }
        let served = |r: &ResourceInfo| !r.custom || custom_served.contains(&r.plural);
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let doc = match parts.as_slice() {
            ["version"] => resources::version(),
            ["api"] => {
                let host = headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("127.0.0.1");
                resources::core_versions(host)
            }
            ["apis"] => resources::group_list(served),
            ["api", v] => resources::resource_list("", v, served)?,
            ["apis", g, v] => resources::resource_list(g, v, served)?,
            ["apis", g] => {
                let list = resources::group_list(served);
                list["groups"]
                    .as_array()?
                    .iter()
                    .find(|grp| grp["name"] == *g)
                    .map(|grp| {
                        let mut grp = grp.clone();
                        grp["kind"] = json!("APIGroup");
                        grp["apiVersion"] = json!("v1");
                        grp
                    })?
            }
            ["healthz" | "livez" | "readyz"] => {
                return Some(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Full::new(Bytes::from_static(b"ok")).boxed_unsync())
                        .expect("static response"),
                );
            }
            _ => return None,
        };
        Some(json_response(StatusCode::OK, &doc))
    }

    /// Send a request to the in-memory store.
    pub(crate) async fn forward(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = match req.body(kube::client::Body::from(body)) {
            Ok(r) => r,
            Err(err) => {
                return error_reply(StatusCode::BAD_REQUEST, "BadRequest", &err.to_string());
            }
        };
        let resp = match self.inner.store.send(req).await {
            Ok(r) => r,
            Err(err) => {
                return error_reply(StatusCode::BAD_REQUEST, "BadRequest", &err.to_string());
            }
        };
        let status = resp.status();
        let bytes = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(err) => {
                return error_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &err.to_string(),
                );
            }
        };
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| status_body(status, "Unknown", &String::from_utf8_lossy(&bytes)));
        Reply { status, body }
    }

    pub(crate) async fn get(
        &self,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let reply = self
            .forward(
                Method::GET,
                &res.object_path(namespace, name),
                None,
                Bytes::new(),
            )
            .await;
        reply.ok().then_some(reply.body)
    }

    /// Current objects matching `filter` (no resourceVersion bookkeeping).
    async fn items(&self, filter: &WatchFilter) -> Vec<Value> {
        let path = filter.resource.collection_path(filter.namespace.as_deref());
        let reply = self.forward(Method::GET, &path, None, Bytes::new()).await;
        let mut items: Vec<Value> = reply.body["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| filter.matches(filter.resource, o))
            .collect();
        items.sort_by_key(|o| {
            (
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        });
        items
    }

    async fn list(&self, filter: WatchFilter) -> Response<Body> {
        let _guard = self.inner.writes.read().await;
        let items = self.items(&filter).await;
        let rv = self.latest_resource_version();
        let res = filter.resource;
        json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            }),
        )
    }

    /// Append a write to the watch history and wake the watchers.
    pub(crate) fn record(
        &self,
        resource: &'static ResourceInfo,
        kind: EventType,
        object: Value,
        previous: Option<Value>,
    ) {
        let rv = rv_of(&object);
        let latest = {
            let mut log = self.inner.log.lock().expect("log lock");
            log.push(Event {
                rv,
                resource,
                kind,
                object,
                previous,
            });
            log.latest()
        };
        self.inner.changed.send_replace(latest);
    }

    /// One mutation (caller holds the write lock).
    async fn write(
        &self,
        rp: &ResourcePath,
        method: &Method,
        raw_query: Option<&str>,
        query: &HashMap<String, String>,
        content_type: &str,
        body: Bytes,
    ) -> Reply {
        let res = rp.resource;
        let ns = rp.namespace.as_deref();
        let is_status = rp.subresource.as_deref() == Some("status");
        match (method, rp.name.as_deref()) {
            (&Method::POST, None) => {
                let mut obj: Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(err) => {
                        return error_reply(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            &err.to_string(),
                        );
                    }
                };
                if obj["metadata"]["name"].as_str().is_none_or(str::is_empty)
                    && let Some(prefix) = obj["metadata"]["generateName"].as_str()
                {
                    let suffix = format!("{:05x}", rand_u32() & 0xfffff);
                    obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
                }
                let path = res.collection_path(ns);
                let reply = self
                    .forward(Method::POST, &path, Some(JSON), obj.to_string().into())
                    .await;
                if reply.ok() {
                    self.record(res, EventType::Added, reply.body.clone(), None);
                    return self.after_write(res, reply).await;
                }
                reply
            }
            (&Method::PUT, Some(name)) => {
                let path = res.object_path(ns, name);
                let Some(current) = self.get(res, ns, name).await else {
                    return self.forward(Method::PUT, &path, Some(JSON), body).await;
                };
                if let Ok(candidate) = serde_json::from_slice::<Value>(&body) {
                    let rv = candidate["metadata"]["resourceVersion"].as_str();
                    let rv_ok =
                        rv.is_none_or(|rv| rv.is_empty() || rv_of(&current).to_string() == rv);
                    if rv_ok && unchanged(res, is_status, &current, &candidate) {
                        return Reply {
                            status: StatusCode::OK,
                            body: current,
                        };
                    }
                }
                let path = if is_status {
                    format!("{path}/status")
                } else {
                    path
                };
                let reply = self.forward(Method::PUT, &path, Some(JSON), body).await;
                if reply.ok() {
                    self.record(res, EventType::Modified, reply.body.clone(), Some(current));
                    return self.after_write(res, reply).await;
                }
                reply
            }
            (&Method::PATCH, Some(name)) => {
                let path = res.object_path(ns, name);
                let current = self.get(res, ns, name).await;
                if let Some(current) = &current
                    && let Ok(patch) = serde_json::from_slice::<Value>(&body)
                {
                    let mut candidate = current.clone();
                    let applied = if content_type.starts_with(JSON_PATCH) {
                        serde_json::from_value::<json_patch::Patch>(patch.clone())
                            .ok()
                            .and_then(|p| json_patch::patch(&mut candidate, &p).ok())
                            .is_some()
                    } else {
                        json_patch::merge(&mut candidate, &patch);
                        true
                    };
                    let manager_known = !content_type.starts_with(APPLY_PATCH)
                        || has_apply_entry(
                            current,
                            query.get("fieldManager").map(String::as_str).unwrap_or(""),
                            if is_status { "status" } else { "" },
                        );
                    if applied && manager_known && unchanged(res, is_status, current, &candidate) {
                        return Reply {
                            status: StatusCode::OK,
                            body: current.clone(),
                        };
                    }
                }
                let mut uri = if is_status {
                    format!("{path}/status")
                } else {
                    path
                };
                if let Some(q) = raw_query {
                    uri = format!("{uri}?{q}");
                }
                let reply = self
                    .forward(Method::PATCH, &uri, Some(content_type), body)
                    .await;
                if reply.ok() {
                    let kind = if current.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    self.record(res, kind, reply.body.clone(), current);
                    return self.after_write(res, reply).await;
                }
                reply
            }
            (&Method::DELETE, Some(name)) => {
                let orphan = orphan_requested(query, &body);
                self.delete_cascading(res, ns, name, orphan).await
            }
            (&Method::DELETE, None) => {
                let orphan = orphan_requested(query, &body);
                let filter = WatchFilter::new(res, rp.namespace.clone(), query);
                let items = self.items(&filter).await;
                let mut deleted = 0;
                for obj in &items {
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                    let obj_ns = obj["metadata"]["namespace"].as_str();
                    if self.delete_cascading(res, obj_ns, name, orphan).await.ok() {
                        deleted += 1;
                    }
                }
                Reply {
                    status: StatusCode::OK,
                    body: json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success",
                        "details": {"kind": res.plural, "group": res.group, "deleted": deleted}
                    }),
                }
            }
            _ => error_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} is not supported here"),
            ),
        }
    }

    /// What the API server's own controllers do right after a write: CRDs become Established.
    async fn after_write(&self, res: &'static ResourceInfo, reply: Reply) -> Reply {
        if self.owners_gone(&reply.body).await {
            // The garbage collector's rule: a dependent whose owners are all gone goes too
            // (e.g. a child applied by a controller working from a stale cache of its owner).
            let name = reply.body["metadata"]["name"].as_str().unwrap_or_default();
            let ns = reply.body["metadata"]["namespace"].as_str();
            self.delete_cascading(res, ns, name, false).await;
            return reply;
        }
        if res != crd_resource() {
            return reply;
        }
        let conditions = reply.body["status"]["conditions"].as_array();
        if conditions.is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        }) {
            return reply;
        }
        let name = reply.body["metadata"]["name"].as_str().unwrap_or_default();
        let stored: Vec<Value> = reply.body["spec"]["versions"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["storage"] == true)
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        let patch = json!({"status": {
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
            "acceptedNames": reply.body["spec"]["names"].clone(),
            "storedVersions": stored,
        }});
        let path = format!("{}/status", res.object_path(None, name));
        let established = self
            .forward(
                Method::PATCH,
                &path,
                Some(MERGE_PATCH),
                patch.to_string().into(),
            )
            .await;
        if established.ok() {
            self.record(
                res,
                EventType::Modified,
                established.body.clone(),
                Some(reply.body.clone()),
            );
            // The create's answer stays what the client sent; watchers see the Established update.
        }
        reply
    }

    /// Does `obj` have owner references, none of which names an existing object (by uid)?
    async fn owners_gone(&self, obj: &Value) -> bool {
        let Some(refs) = obj["metadata"]["ownerReferences"]
            .as_array()
            .filter(|r| !r.is_empty())
        else {
            return false;
        };
        let ns = obj["metadata"]["namespace"].as_str();
        for r in refs {
            let owner_res = RESOURCES
                .iter()
                .find(|res| r["apiVersion"] == res.api_version().as_str() && r["kind"] == res.kind);
            let Some(owner_res) = owner_res else {
                return false; // an owner of a kind not served here: assume it exists
            };
            let owner_ns = if owner_res.namespaced { ns } else { None };
            let name = r["name"].as_str().unwrap_or_default();
            if let Some(owner) = self.get(owner_res, owner_ns, name).await
                && owner["metadata"]["uid"] == r["uid"]
            {
                return false;
            }
        }
        true
    }

    /// Delete one object: its resourceVersion is bumped first so that the DELETED event has a
    /// resourceVersion of its own, as in Kubernetes.
    async fn delete_one(&self, res: &'static ResourceInfo, ns: Option<&str>, name: &str) -> Reply {
        let path = res.object_path(ns, name);
        let bumped = self
            .forward(
                Method::PATCH,
                &format!("{path}/status"),
                Some(MERGE_PATCH),
                Bytes::from_static(b"{}"),
            )
            .await;
        if !bumped.ok() {
            return bumped;
        }
        let deleted = self
            .forward(
                Method::DELETE,
                &format!("{path}?propagationPolicy=Orphan"),
                None,
                Bytes::new(),
            )
            .await;
        if deleted.ok() {
            self.record(res, EventType::Deleted, bumped.body.clone(), None);
            return Reply {
                status: StatusCode::OK,
                body: bumped.body,
            };
        }
        deleted
    }

    /// Delete an object and, unless orphaning, garbage-collect its dependents (objects whose
    /// `metadata.ownerReferences[].uid` names it), transitively. Synchronous, so a test sees
    /// the children gone as soon as the delete returns.
    async fn delete_cascading(
        &self,
        res: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        orphan: bool,
    ) -> Reply {
        let reply = self.delete_one(res, ns, name).await;
        if !reply.ok() || orphan {
            return reply;
        }
        let mut pending = vec![(
            reply.body["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ns.map(str::to_string),
        )];
        while let Some((uid, owner_ns)) = pending.pop() {
            if uid.is_empty() {
                continue;
            }
            for dep_res in RESOURCES {
                // Namespaced owners own only objects in their namespace; cluster-scoped ones any.
                if owner_ns.is_some() && !dep_res.namespaced {
                    continue;
                }
                let filter = WatchFilter::new(dep_res, owner_ns.clone(), &HashMap::new());
                for dep in self.items(&filter).await {
                    let refs = dep["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !refs.iter().any(|r| r["uid"] == uid.as_str()) {
                        continue;
                    }
                    let dep_name = dep["metadata"]["name"].as_str().unwrap_or_default();
                    let dep_ns = dep["metadata"]["namespace"].as_str();
                    if refs.len() > 1 {
                        // Other owners remain: only drop the reference to the deleted owner.
                        let rest: Vec<Value> = refs
                            .into_iter()
                            .filter(|r| r["uid"] != uid.as_str())
                            .collect();
                        let patch = json!({"metadata": {"ownerReferences": rest}});
                        let r = self
                            .forward(
                                Method::PATCH,
                                &dep_res.object_path(dep_ns, dep_name),
                                Some(MERGE_PATCH),
                                patch.to_string().into(),
                            )
                            .await;
                        if r.ok() {
                            self.record(dep_res, EventType::Modified, r.body, Some(dep.clone()));
                        }
                        continue;
                    }
                    let r = self.delete_one(dep_res, dep_ns, dep_name).await;
                    if r.ok() {
                        pending.push((
                            r.body["metadata"]["uid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            dep_ns.map(str::to_string),
                        ));
                    }
                }
            }
        }
        reply
    }

    async fn watch(&self, filter: WatchFilter, query: &HashMap<String, String>) -> Response<Body> {
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        // subscribed before the pause check: a pause right after the check is seen as a change
        let mut changed = self.inner.changed.subscribe();
        let mut disconnect = self.inner.disconnect.subscribe();
        if self.inner.watches_paused.load(Ordering::SeqCst) {
            return error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "watches are paused by the test",
            )
            .into_response();
        }
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        // Streaming lists (`sendInitialEvents=true`): the current state, then a bookmark that
        // marks the end of it, whatever the resourceVersion.
        let send_initial = query.get("sendInitialEvents").map(String::as_str) == Some("true");
        let requested = query
            .get("resourceVersion")
            .filter(|s| !s.is_empty() && *s != "0" && !send_initial);
        let (initial, mut cursor) = match requested {
            Some(rv) => match rv.parse::<u64>() {
                Ok(rv) => (Vec::new(), rv),
                Err(_) => {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid resourceVersion {rv}"),
                    )
                    .into_response();
                }
            },
            None => {
                // "Any"/unset: the current state as synthetic ADDED events, then changes.
                let _guard = self.inner.writes.read().await;
                let items = self.items(&filter).await;
                (items, self.latest_resource_version())
            }
        };
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let this = self.clone();
        let bookmark_every = self.inner.config.bookmark_interval;
        tokio::spawn(async move {
            let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
            // as below: an initial list read after a pause or disconnect is not sent
            if disconnect.has_changed().unwrap_or(true) {
                return;
            }
            for obj in initial {
                if tx
                    .send(line(json!({"type": "ADDED", "object": obj})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if send_initial {
                let res = filter.resource;
                let end = json!({"type": "BOOKMARK", "object": {
                    "kind": res.kind, "apiVersion": res.api_version(),
                    "metadata": {
                        "resourceVersion": cursor.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    }
                }});
                if tx.send(line(end)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut bookmark = tokio::time::interval_at(
                tokio::time::Instant::now() + bookmark_every,
                bookmark_every,
            );
            loop {
                let since = this
                    .inner
                    .log
                    .lock()
                    .expect("log lock")
                    .since(cursor, &filter);
                // A disconnect (or pause) made before these events were read ends the stream
                // first: its writes come after it (the test's order, seen through the log's
                // lock), and a paused watcher must not see them.
                if disconnect.has_changed().unwrap_or(true) {
                    return;
                }
                match since {
                    Since::Expired => {
                        let msg = format!("too old resource version: {cursor}");
                        let status = status_body(StatusCode::GONE, "Expired", &msg);
                        let _ = tx
                            .send(line(json!({"type": "ERROR", "object": status})))
                            .await;
                        return;
                    }
                    Since::Events(events, at) => {
                        for e in events {
                            tracing::debug!(kind = e.kind.as_str(), rv = e.rv, "watch event");
                            if tx
                                .send(Ok(Frame::data(Bytes::from(e.to_line()))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        cursor = at;
                    }
                }
                tokio::select! {
                    biased;
                    _ = disconnect.changed() => return,
                    r = changed.changed() => if r.is_err() { return },
                    _ = &mut deadline => return,
                    _ = bookmark.tick(), if bookmarks => {
                        let res = filter.resource;
                        let bm = json!({"type": "BOOKMARK", "object": {
                            "kind": res.kind, "apiVersion": res.api_version(),
                            "metadata": {"resourceVersion": cursor.to_string()}
                        }});
                        if tx.send(line(bm)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, JSON)
            .body(StreamBody::new(rx).boxed_unsync())
            .expect("static response parts are valid")
    }
}

/// Would writing `candidate` over `current` change nothing that Kubernetes would persist?
fn unchanged(res: &ResourceInfo, is_status: bool, current: &Value, candidate: &Value) -> bool {
    if is_status {
        return current.get("status") == candidate.get("status");
    }
    let mut candidate = candidate.clone();
    if res.status
        && let Some(obj) = candidate.as_object_mut()
    {
        // The main resource never writes status when there is a status subresource.
        match current.get("status") {
            Some(s) => obj.insert("status".into(), s.clone()),
            None => obj.remove("status"),
        };
    }
    let (mut a, mut b) = (comparable(current), comparable(&candidate));
    for v in [&mut a, &mut b] {
        if let Some(obj) = v.as_object_mut() {
            obj.remove("apiVersion");
            obj.remove("kind");
        }
    }
    a == b
}

fn has_apply_entry(obj: &Value, manager: &str, subresource: &str) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|entries| {
            entries.iter().any(|e| {
                e["manager"] == manager
                    && e["operation"] == "Apply"
                    && e["subresource"].as_str().unwrap_or("") == subresource
            })
        })
}

fn orphan_requested(query: &HashMap<String, String>, body: &[u8]) -> bool {
    if let Some(p) = query.get("propagationPolicy") {
        return p == "Orphan";
    }
    if let Some(o) = query.get("orphanDependents") {
        return o == "true";
    }
    let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    opts["propagationPolicy"] == "Orphan" || opts["orphanDependents"] == true
}

fn crd_resource() -> &'static ResourceInfo {
    resources::lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("CRDs are served")
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

//! `funcscale-operator run`: wiring only — flags, HTTP endpoints, API connection, leader
//! election, the Redis poll loop and the two controllers, graceful stop on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, Resource};
use tokio::sync::watch;

use crate::context::{Config, Shared, default_worker_image, system_clock};
use crate::crd::{FuncQueue, FuncWorkerPool};
use crate::leader::LeaseLock;
use crate::redis_metrics::RedisEndpoint;
use crate::telemetry::{LogFormat, Metrics, READY_API, READY_WATCHES};
use crate::{pool, queue, telemetry, triggers, watches};

/// Arguments of `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Redis of queues that do not name their own (`spec.redis`): `redis://`, `rediss://`, a
    /// Sentinel set's master `redis+sentinel://host:26379,host2/<master>[/db]`, or a Redis
    /// Cluster `redis+cluster://host:6379,host2:6379` (seed nodes; database 0).
    #[arg(
        long,
        env = "FUNCSCALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub redis_url: String,
    /// ACL username for `--redis-url`: replaces the URL's (prefer the environment variable to
    /// the flag, which shows in the process list).
    #[arg(long, env = funcscale_protocol::connection::USERNAME_ENV, hide_env_values = true)]
    pub redis_username: Option<String>,
    /// Password for `--redis-url`: replaces the URL's (prefer the environment variable to the
    /// flag, which shows in the process list). The pools on the default Redis then need
    /// `--worker-redis-secret`: a password is never written into a pod spec.
    #[arg(long, env = funcscale_protocol::connection::PASSWORD_ENV, hide_env_values = true)]
    pub redis_password: Option<String>,
    /// ACL username the sentinels of a `redis+sentinel://` `--redis-url` require.
    #[arg(long, env = funcscale_protocol::connection::SENTINEL_USERNAME_ENV, hide_env_values = true)]
    pub redis_sentinel_username: Option<String>,
    /// Password the sentinels of a `redis+sentinel://` `--redis-url` require (prefer the
    /// environment variable). Pools on the default Redis then need
    /// `--worker-redis-sentinel-secret` (or queues with `spec.redis`): a password is never
    /// written into a pod spec.
    #[arg(long, env = funcscale_protocol::connection::SENTINEL_PASSWORD_ENV, hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
    /// Secret `NAME/KEY` in each pool's namespace with the default Redis URL for the worker
    /// pods (needed when `--redis-url` carries a password: it is never put in a pod spec).
    #[arg(long, env = "FUNCSCALE_WORKER_REDIS_SECRET", value_parser = parse_secret_ref)]
    pub worker_redis_secret: Option<crate::crd::SecretKeyRef>,
    /// Secret `NAME/KEY` in each pool's namespace with the password the sentinels of a
    /// `redis+sentinel://` `--redis-url` require, for the worker pods of queues without
    /// `spec.redis` (they get it as `FUNCSCALE_REDIS_SENTINEL_PASSWORD` from the Secret).
    #[arg(long, env = "FUNCSCALE_WORKER_REDIS_SENTINEL_SECRET", value_parser = parse_secret_ref)]
    pub worker_redis_sentinel_secret: Option<crate::crd::SecretKeyRef>,
    /// Key of the same Secret with the sentinels' ACL username, when they require one
    /// (`FUNCSCALE_REDIS_SENTINEL_USERNAME` of the pods).
    #[arg(
        long,
        env = "FUNCSCALE_WORKER_REDIS_SENTINEL_USERNAME_KEY",
        requires = "worker_redis_sentinel_secret"
    )]
    pub worker_redis_sentinel_username_key: Option<String>,
    /// Worker image for pools that set none.
    #[arg(long, env = "FUNCSCALE_WORKER_IMAGE", default_value_t = default_worker_image())]
    pub worker_image: String,
    /// How often Redis is polled, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Most reconciles each controller (pools, queues) runs at once. Each reconcile in flight
    /// holds an API server connection with its buffers: unbounded, a burst of 10,000 queue
    /// reconciles opened thousands of connections that stayed in the client's pool (most of
    /// the operator's memory at 10,000 queues).
    #[arg(long, env = "FUNCSCALE_RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub reconcile_concurrency: u16,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace (a Role instead of a ClusterRole suffices).
    #[arg(long, env = "FUNCSCALE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Serve only the FuncQueues and FuncWorkerPools that match this label selector (e.g.
    /// `team=payments`), so that several operators can split one cluster (as Flux's
    /// `--watch-label-selector`). A pool's queues need the labels too. Default: all of them.
    #[arg(long, env = "FUNCSCALE_WATCH_LABEL_SELECTOR")]
    pub watch_label_selector: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Redis key prefix shared with the workers (no `{` or whitespace).
    #[arg(long, default_value = funcscale_protocol::DEFAULT_PREFIX, value_parser = funcscale_protocol::keys::parse_prefix)]
    pub key_prefix: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "funcscale-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: `--namespace`, else `POD_NAMESPACE`, else `default`).
    #[arg(
        long = "leader-election-namespace",
        alias = "lease-namespace",
        env = "POD_NAMESPACE"
    )]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: `POD_NAME`, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration: how long a dead leader blocks a standby.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Run without leader election (a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
}

/// `NAME/KEY`.
pub fn parse_secret_ref(s: &str) -> Result<crate::crd::SecretKeyRef, String> {
    match s.split_once('/') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(crate::crd::SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }),
        _ => Err(format!("expected NAME/KEY, got {s}")),
    }
}

/// A positive duration flag (`500ms`, `2s`, `1m`, `1h`, or plain seconds): the protocol's
/// one parser, which the worker's flags use too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    funcscale_protocol::duration::parse_positive(s).map_err(|e| e.to_string())
}

/// Run on a fresh Tokio runtime (for a synchronous `main`).
pub fn block_on(args: RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// A clonable "stop now" signal.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
    fn stopped(&self) -> bool {
        *self.0.borrow()
    }
    /// Sleep; true when stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.clone().wait() => true,
            _ = tokio::time::sleep(d) => self.stopped(),
        }
    }
}

fn spawn_signal_handler(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
}

/// Run the operator until SIGTERM (Ok) or lost leadership (Err).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    install_crypto_provider();
    let metrics = Metrics::new();
    let health = telemetry::health();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    spawn_signal_handler(stop_tx.clone());

    let listener = funcscale_http::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, "serving /metrics /healthz /readyz");
    let http_task = tokio::spawn(funcscale_http::serve(
        listener,
        metrics.registry.clone(),
        health.clone(),
        stop.clone().wait(),
    ));

    // 1. the API server, and our CRDs established
    let mut delay = Duration::from_secs(1);
    let client = loop {
        match connect(args.namespace.as_deref()).await {
            Ok(c) => break c,
            Err(e) => {
                let why = explain(&e);
                tracing::error!(error = %why, retry_in = ?delay, "Kubernetes API not usable yet; /readyz reports not ready");
                health.set(READY_API, false, &format!("Kubernetes API: {why}"));
                if stop.sleep(delay).await {
                    return finish(http_task).await;
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    health.set(READY_API, true, "");
    tracing::info!("Kubernetes API reachable, CRDs established");

    // 2. leadership
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "funcscale-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let lease_ns = args
        .lease_namespace
        .clone()
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let lock = (!args.no_leader_election).then(|| {
        LeaseLock::new(
            client.clone(),
            &lease_ns,
            &args.lease_name,
            &identity,
            args.lease_duration,
        )
    });
    let (lost_tx, mut lost_rx) = watch::channel(false);
    if let Some(lock) = &lock {
        // a standby is "ready": it has nothing to watch until it leads
        health.set(READY_WATCHES, true, "");
        let clock = system_clock();
        let mut said = false;
        loop {
            match lock.try_acquire_or_renew(clock()).await {
                Ok(true) => break,
                Ok(false) => {
                    if !said {
                        let holder = lock.holder().await.ok().flatten().unwrap_or_default();
                        tracing::info!(lease = %format!("{lease_ns}/{}", args.lease_name), holder, "standby: another replica leads");
                        said = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            if stop.sleep(lock.duration() / 3).await {
                return finish(http_task).await;
            }
        }
        tracing::info!(identity, "leading");
        metrics.leader.set(1);
        health.set(READY_WATCHES, false, "starting watches");
        tokio::spawn(renew(lock.clone(), stop.clone(), lost_tx, metrics.clone()));
    } else {
        metrics.leader.set(1);
    }

    // 3. controllers, poller. One watch per kind. What no controller reads is stripped before
    // it reaches a store (crate::watches); a controller's own stream passes spec changes only
    // (its status is its output), and what one object's change means for others is sent as a
    // trigger through the queue → pools index (crate::triggers).
    let mut wc = watcher::Config::default().any_semantic();
    if let Some(selector) = &args.watch_label_selector {
        wc = wc.labels(selector);
    }
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=funcscale-operator");
    let ns = args.namespace.as_deref();
    let pools_api: Api<FuncWorkerPool> = api(&client, ns);
    let queues_api: Api<FuncQueue> = api(&client, ns);
    // Each controller's own reflector, so that `/readyz` learns that the first list is in
    // from the stream itself: a store's `wait_until_ready` wakes only its last waiter, and
    // the controller waits on it too (a second waiter was never woken on a real API server,
    // and the operator never became Ready).
    let (pools_listed, queues_listed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (pool_store, pool_writer) = reflector::store();
    let (queue_store, queue_writer) = reflector::store();
    let config = Config {
        worker_image: args.worker_image.clone(),
        default_redis: RedisEndpoint::with_credentials(
            &args.redis_url,
            args.redis_username.as_deref(),
            args.redis_password.as_deref(),
        )
        .with_sentinel_credentials(
            args.redis_sentinel_username.as_deref(),
            args.redis_sentinel_password.as_deref(),
        ),
        worker_redis_secret: args.worker_redis_secret.clone(),
        worker_redis_sentinel_secret: args
            .worker_redis_sentinel_secret
            .clone()
            .map(|s| (s, args.worker_redis_sentinel_username_key.clone())),
        keys: funcscale_protocol::Keys::new(args.key_prefix.clone()),
        ..Config::default()
    };
    let shared = Arc::new(Shared::new(
        client.clone(),
        config,
        metrics.clone(),
        queue_store.clone(),
        system_clock(),
    ));
    let queue_configs = Arc::default();
    let queue_ctx = Arc::new(queue::Context::new(
        shared.clone(),
        Arc::clone(&queue_configs),
    ));
    let pool_ctx = Arc::new(pool::Context::new(
        shared,
        pool_store.clone(),
        queue_configs,
    ));
    // the poll loop's triggers (a full channel only delays them until the resync) and the
    // controllers' for each other (spec changes: few, never dropped)
    let (poll_pools_tx, poll_pools_rx) = mpsc::channel::<ObjectRef<FuncWorkerPool>>(4096);
    let (poll_queues_tx, poll_queues_rx) = mpsc::channel::<ObjectRef<FuncQueue>>(16384);
    let (pool_tx, pool_rx) = mpsc::unbounded();
    let (queue_tx, queue_rx) = mpsc::unbounded();
    let send = triggers::Senders {
        pools: pool_tx,
        queues: queue_tx,
    };
    let pool_events = listed_stream(
        pool_writer,
        watcher(pools_api, wc.clone())
            .default_backoff()
            .modify(|p: &mut FuncWorkerPool| watches::strip_meta(&mut p.metadata)),
        pools_listed.clone(),
    );
    let queue_events = listed_stream(
        queue_writer,
        watcher(queues_api, wc)
            .default_backoff()
            .modify(|q: &mut FuncQueue| watches::strip_meta(&mut q.metadata)),
        queues_listed.clone(),
    );
    let deployments = watches::touched(watches::changes(
        watcher(api::<Deployment>(&client, ns), owned.clone())
            .default_backoff()
            .modify(watches::strip_deployment),
        watches::deployment_key,
    ));
    let pools = Controller::for_stream(
        triggers::pool_stream(pool_events, queue_ctx.shared.index.clone(), send.clone()),
        pool_store.clone(),
    )
    .with_config(controller::Config::default().concurrency(args.reconcile_concurrency))
    .owns_stream(deployments)
    // a Beat pool's schedules: any change of the few ConfigMaps is re-applied
    .owns(api::<ConfigMap>(&client, ns), owned)
    .reconcile_on(poll_pools_rx)
    .reconcile_on(pool_rx)
    .graceful_shutdown_on(stop.clone().wait())
    .run(pool::reconcile, pool::error_policy, pool_ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "pool controller");
        }
    });
    let queues = Controller::for_stream(
        triggers::queue_stream(
            queue_events,
            queue_ctx.shared.index.clone(),
            queue_ctx.shared.key_index.clone(),
            send,
        ),
        queue_store.clone(),
    )
    .with_config(controller::Config::default().concurrency(args.reconcile_concurrency))
    .reconcile_on(poll_queues_rx)
    .reconcile_on(queue_rx)
    .graceful_shutdown_on(stop.clone().wait())
    .run(queue::reconcile, queue::error_policy, queue_ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "queue controller");
        }
    });
    {
        let health = health.clone();
        tokio::spawn(async move {
            while !(pools_listed.load(Ordering::SeqCst) && queues_listed.load(Ordering::SeqCst)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            health.set(READY_WATCHES, true, "");
            tracing::info!("watches ready");
        });
    }
    let poll = tokio::spawn(crate::poll_loop::run(
        queue_ctx.clone(),
        pool_ctx.clone(),
        args.poll_interval,
        crate::poll_loop::Triggers {
            pools: poll_pools_tx,
            queues: poll_queues_tx,
        },
        stop.clone().wait(),
    ));

    let lost = async move {
        // the renew task drops its sender when it stops on SIGTERM: that is not a loss
        if lost_rx.wait_for(|l| *l).await.is_err() {
            futures::future::pending::<()>().await;
        }
    };
    let mut lost_leadership = false;
    tokio::select! {
        _ = futures::future::join(pools, queues) => {}
        _ = lost => {
            lost_leadership = true;
            let _ = stop_tx.send(true);
        }
    }
    let _ = poll.await;
    if let Some(lock) = &lock
        && !lost_leadership
    {
        match lock.release().await {
            Ok(()) => tracing::info!("lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "lease not released; a standby takes over when it expires")
            }
        }
    }
    metrics.leader.set(0);
    let r = finish(http_task).await;
    if lost_leadership {
        anyhow::bail!("lost the leader lease; exiting so a fresh start becomes a standby");
    }
    r
}

/// Both rustls providers (ring via kube, aws-lc-rs via redis) are compiled in, so rustls
/// cannot choose one by itself: pick ring once per process, before any TLS connection.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The error and its root cause, without the repetition of kube's nested messages.
fn explain(e: &anyhow::Error) -> String {
    let root = e.root_cause().to_string();
    let top = e.to_string();
    if top == root {
        top
    } else {
        format!("{top}: {root}")
    }
}

async fn finish(http_task: tokio::task::JoinHandle<()>) -> anyhow::Result<()> {
    let _ = http_task.await;
    tracing::info!("stopped");
    Ok(())
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Build a client and check both CRDs are established (falls back to listing the resources
/// when reading CRDs is not allowed, as in a namespaced install).
async fn connect(ns: Option<&str>) -> anyhow::Result<Client> {
    let client = Client::try_default().await.context(
        "cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG)",
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [FuncQueue::crd_name(), FuncWorkerPool::crd_name()] {
        match crds.get_opt(name).await {
            Ok(Some(crd)) => {
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                anyhow::ensure!(established, "CRD {name} is not established yet");
            }
            Ok(None) => anyhow::bail!("CRD {name} is not installed (kubectl apply -f crds/)"),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                // namespaced install: no right to read CRDs; a list proves the resource is served
                let lp = ListParams::default().limit(1);
                api::<FuncQueue>(&client, ns)
                    .list_metadata(&lp)
                    .await
                    .context("FuncQueues not served")?;
                api::<FuncWorkerPool>(&client, ns)
                    .list_metadata(&lp)
                    .await
                    .context("FuncWorkerPools not served")?;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read CRD {name}"))),
        }
    }
    Ok(client)
}

/// Renew the lease every `duration / 3`; signal `lost` when it could not be renewed for a
/// whole lease duration (another replica may lead by then).
async fn renew(lock: LeaseLock, stop: Stop, lost: watch::Sender<bool>, metrics: Metrics) {
    let clock = system_clock();
    let mut last_ok = tokio::time::Instant::now();
    loop {
        if stop.sleep(lock.duration() / 3).await {
            return;
        }
        match lock.try_acquire_or_renew(clock()).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("the lease was taken by another replica");
                metrics.leader.set(0);
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the lease");
                if last_ok.elapsed() >= lock.duration() {
                    metrics.leader.set(0);
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

/// A reflector's events, with `listed` set once the first list is in.
fn listed_stream<K>(
    writer: reflector::store::Writer<K>,
    watch: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    listed: Arc<AtomicBool>,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    reflector(writer, watch).inspect(move |e| {
        if let Ok(watcher::Event::InitDone) = e {
            listed.store(true, Ordering::SeqCst);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_are_positive() {
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
    }
}

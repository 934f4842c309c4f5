//! `kubectl funcscale`: pools, queues, tasks and dead letters in one place. A kubectl plugin
//! (the binary `kubectl-funcscale` on the PATH) that reads the cluster through the kubeconfig
//! and each queue's Redis through the queue's own connection (`spec.redis`).
//!
//! The binary only calls [`main`]; parsing, resolution ([`resolve`]) and the status report
//! ([`status`]) live here. The Redis side of `tasks` and `dead-letters` is the worker's
//! (`funcscale_worker::cli`), shared with `funcscale-worker`.

pub mod resolve;
pub mod status;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use funcscale_protocol::{self as protocol, Keys};
use funcscale_worker::cli::{
    DeadLettersAction, OutboxAction, TasksAction, dead_letters_command, outbox_command,
    tasks_command,
};
use kube::Client;
use kube::api::Api;

use funcscale_operator::crd::FuncQueue;
use funcscale_operator::redis_metrics::RedisEndpoint;
use resolve::{KubeArgs, Route, UrlFlag, route};

/// funcscale pools, queues, tasks and dead letters, read from the cluster (kubeconfig) and
/// from each queue's Redis.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-funcscale",
    bin_name = "kubectl funcscale",
    version,
    after_help = "Redis: each queue is read through its FuncQueue's spec.redis (Secrets read \
                  through the API). --redis-url on the command line overrides that for every \
                  queue (e.g. through kubectl port-forward); --redis-url / FUNCSCALE_REDIS_URL \
                  is also used for queues without spec.redis and for --queue names that have no \
                  FuncQueue. --redis-username / --redis-password (FUNCSCALE_REDIS_USERNAME / \
                  FUNCSCALE_REDIS_PASSWORD) go with that URL and replace its own; a queue read \
                  through its spec.redis uses the Secrets it names."
)]
pub struct Cli {
    /// Cluster access.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Redis access.
    #[command(flatten)]
    pub redis: RedisFlags,
    /// Say on stderr which Redis each queue is read through.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// What to show.
    #[command(subcommand)]
    pub command: Command,
}

/// Redis flags.
#[derive(Args, Debug, Clone)]
pub struct RedisFlags {
    /// Redis URL: on the command line, used for every queue instead of its spec.redis; from the
    /// environment, only for queues without spec.redis.
    #[arg(
        long,
        env = "FUNCSCALE_REDIS_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,
    /// Username and password for --redis-url / FUNCSCALE_REDIS_URL (not for queues read
    /// through their own spec.redis).
    #[command(flatten)]
    pub auth: funcscale_worker::worker::RedisAuth,
    /// Key prefix shared with the workers and the operator (no `{` or whitespace).
    #[arg(long, env = "FUNCSCALE_PREFIX", default_value = protocol::DEFAULT_PREFIX, global = true, value_parser = protocol::keys::parse_prefix)]
    pub prefix: String,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pools (replicas, desired, the rule and why) and queues (depth, age, rates, task time,
    /// pools, failing conditions) from the cluster, with live waiting / delayed / running /
    /// dead-letter counts from each queue's Redis.
    Status {
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// One JSON document ({namespace, pools, queues}).
        #[arg(long)]
        json: bool,
    },
    /// Task records and per-minute counts of a queue.
    Tasks {
        /// Action.
        #[command(subcommand)]
        action: TasksAction,
    },
    /// Dead letters of a queue: list, requeue, purge.
    DeadLetters {
        /// Action.
        #[command(subcommand)]
        action: DeadLettersAction,
    },
    /// Deliveries to destinations (URLs, other queues) in the outboxes of the namespace's
    /// queues, in the Redis of a queue: pending, or parked after 12 failed attempts (list,
    /// requeue, purge).
    Outbox {
        /// A FuncQueue whose Redis holds the outboxes (or `--redis-url`).
        #[arg(long, global = true)]
        queue: Option<String>,
        /// Action.
        #[command(subcommand)]
        action: OutboxAction,
    },
}

/// Why a command failed; the exit code follows (2: usage, 1: anything else).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A flag, a name or the kubeconfig is wrong: the user can fix the command line.
    #[error("{0}")]
    Usage(String),
    /// The cluster or Redis could not be read.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl Failure {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Failed(_) => 1,
        }
    }
}

/// Parse the arguments; also reports whether `--redis-url` was given on the command line
/// (rather than by `FUNCSCALE_REDIS_URL`).
pub fn parse<I, T>(args: I) -> Result<(Cli, UrlFlag), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let explicit = matches.value_source("redis_url") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches)?;
    let flag = UrlFlag {
        url: cli.redis.redis_url.clone(),
        explicit,
        auth: cli.redis.auth.clone(),
    };
    Ok((cli, flag))
}

/// The whole plugin: parse, run, print the error, exit code.
pub fn main() -> ExitCode {
    let (cli, flag) = match parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    init_tracing();
    funcscale_operator::cli_run::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl funcscale: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, flag)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl funcscale: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr, `RUST_LOG` (default: warnings only, a CLI's output is its tables).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run a parsed command.
pub async fn run(cli: Cli, flag: UrlFlag) -> Result<(), Failure> {
    let keys = Keys::new(cli.redis.prefix.clone());
    match cli.command {
        Command::Status {
            all_namespaces,
            json,
        } => {
            let (client, ns) = kube_client(&cli.kube).await?;
            let namespace = (!all_namespaces).then_some(ns.as_str());
            let report = status::gather(client, namespace, &flag, &keys).await?;
            if cli.verbose {
                for q in &report.queues {
                    eprintln!(
                        "queue {}/{}: {} ({})",
                        q.namespace,
                        q.name,
                        q.redis.endpoint.as_deref().unwrap_or("no endpoint"),
                        q.redis.source
                    );
                }
            }
            if json {
                let doc =
                    serde_json::to_string_pretty(&report).map_err(|e| Failure::Failed(e.into()))?;
                println!("{doc}");
            } else if report.pools.is_empty() && report.queues.is_empty() {
                eprintln!(
                    "No FuncWorkerPools or FuncQueues found in {}.",
                    namespace.map_or("any namespace".into(), |n| format!("namespace {n}"))
                );
            } else {
                print!("{}", status::render(&report));
            }
            Ok(())
        }
        Command::Tasks {
            action: TasksAction::Show { id, queue: None },
        } if !flag.explicit => show_task(&cli.kube, &flag, &keys, id, cli.verbose).await,
        Command::Tasks { mut action } => {
            let queue = action.queue_mut().map(|q| q.clone());
            let mut con = queue_connection(&cli.kube, &flag, queue.as_deref(), cli.verbose).await?;
            if let Some(q) = action.queue_mut() {
                *q = queue_id(&cli.kube, q).await;
            }
            tasks_command(&mut con, &keys, action)
                .await
                .map_err(Failure::Failed)
        }
        Command::DeadLetters { action } => {
            let select = match &action {
                DeadLettersAction::List { select, .. } => select,
                DeadLettersAction::Requeue { select } | DeadLettersAction::Purge { select, .. } => {
                    // which dead letters: a usage error before anything is read
                    select
                        .selector(false)
                        .map_err(|e| Failure::Usage(e.to_string()))?;
                    select
                }
            };
            if let DeadLettersAction::Purge { yes: false, .. } = &action
                && !std::io::IsTerminal::is_terminal(&std::io::stdin())
            {
                return Err(Failure::Usage(
                    "refusing to purge without confirmation: stdin is not a terminal; pass --yes"
                        .into(),
                ));
            }
            let queue = select.queue.clone();
            let mut con = queue_connection(&cli.kube, &flag, Some(&queue), cli.verbose).await?;
            let mut action = action;
            action.select_mut().queue = queue_id(&cli.kube, &queue).await;
            dead_letters_command(&mut con, &keys, action)
                .await
                .map_err(Failure::Failed)
        }
        Command::Outbox { queue, action } => {
            if let OutboxAction::Purge { yes: false, .. } = &action
                && !std::io::IsTerminal::is_terminal(&std::io::stdin())
            {
                return Err(Failure::Usage(
                    "refusing to purge without confirmation: stdin is not a terminal; pass --yes"
                        .into(),
                ));
            }
            if queue.is_none() && !flag.explicit {
                return Err(Failure::Usage(
                    "the outbox is in a Redis: name a FuncQueue that uses it (--queue) or pass --redis-url".into(),
                ));
            }
            let mut con = queue_connection(&cli.kube, &flag, queue.as_deref(), cli.verbose).await?;
            // the outbox of the namespace: the FuncQueue's, else the context's
            let ns = match &queue {
                Some(q) => {
                    Keys::queue_id_namespace(&queue_id(&cli.kube, q).await).map(String::from)
                }
                None => None,
            };
            let ns = match ns {
                Some(ns) => Some(ns),
                None => resolve::kube_config(&cli.kube)
                    .await
                    .ok()
                    .map(|c| c.default_namespace),
            };
            let keys = keys.clone().in_namespace(ns);
            outbox_command(&mut con, &keys, action)
                .await
                .map_err(Failure::Failed)
        }
    }
}

/// `tasks show ID` names no queue: look for the record of every FuncQueue of the namespace
/// (records are kept per queue) in the Redis of each (each connection once), and in
/// `FUNCSCALE_REDIS_URL`'s; show every one found (the same id in two queues: two records).
async fn show_task(
    kube: &KubeArgs,
    flag: &UrlFlag,
    keys: &Keys,
    id: String,
    verbose: bool,
) -> Result<(), Failure> {
    let (client, ns) = kube_client(kube).await?;
    let queues = Api::<FuncQueue>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .map_err(|e| {
            Failure::Failed(anyhow::anyhow!(
                "listing FuncQueues in namespace {ns}: {e}; pass --redis-url to read Redis directly"
            ))
        })?;
    let mut endpoints: Vec<(RedisEndpoint, String)> = Vec::new();
    let mut problems = Vec::new();
    let mine: Vec<String> = queues
        .items
        .iter()
        .map(|q| funcscale_operator::crd_ext::queue_id(q, &ns))
        .collect();
    for q in &queues.items {
        let name = q.metadata.name.clone().unwrap_or_default();
        let found = match route(flag, Some(q), &name, &ns) {
            Ok(Route::Url { url, why }) => Ok((flag.endpoint(url), why)),
            Ok(Route::Queue(source)) => own_endpoint(client.clone(), q, &ns)
                .await
                .map(|ep| (ep, format!("FuncQueue {ns}/{name} {source}")))
                .map_err(|e| format!("FuncQueue {name}: {e}")),
            Err(_) => continue, // no spec.redis and no URL: nothing of its own to search
        };
        match found {
            Ok((ep, why)) if !endpoints.iter().any(|(e, _)| e == &ep) => endpoints.push((ep, why)),
            Ok(_) => {}
            Err(p) => problems.push(p),
        }
    }
    if let Some(url) = &flag.url {
        let ep = flag.endpoint(url);
        if !endpoints.iter().any(|(e, _)| e == &ep) {
            endpoints.push((ep, "FUNCSCALE_REDIS_URL".into()));
        }
    }
    if endpoints.is_empty() {
        return Err(Failure::Usage(format!(
            "tasks show: no FuncQueue in namespace {ns} has a Redis to search{}; pass --redis-url",
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            }
        )));
    }
    for (ep, why) in &endpoints {
        if verbose {
            eprintln!("looking for task {id:?} in Redis at {ep} ({why})");
        }
        let mut con = match connect(ep, Duration::from_secs(5)).await {
            Ok(con) => con,
            Err(e) => {
                problems.push(format!("cannot reach Redis at {ep} ({why}): {e}"));
                continue;
            }
        };
        // only the records of this namespace's queues: another tenant's are not looked at
        let mut found = false;
        for queue in &mine {
            match funcscale_worker::records::show_task(&mut con, keys, queue, &id).await {
                Ok(Some(_)) => {
                    let show = TasksAction::Show {
                        id: id.clone(),
                        queue: Some(queue.clone()),
                    };
                    tasks_command(&mut con, keys, show)
                        .await
                        .map_err(Failure::Failed)?;
                    found = true;
                }
                Ok(None) => {}
                Err(e) => {
                    problems.push(format!("reading Redis at {ep} ({why}): {e}"));
                    break;
                }
            }
        }
        if found {
            return Ok(());
        }
    }
    Err(Failure::Failed(anyhow::anyhow!(
        "no record of task {id:?} in the Redis of the FuncQueues of namespace {ns} ({} \
         connection(s) searched: never seen, or past retention){}",
        endpoints.len(),
        if problems.is_empty() {
            String::new()
        } else {
            format!("; {}", problems.join("; "))
        }
    )))
}

/// The endpoint of a queue routed to its own `spec.redis` ([`Route::Queue`]): Secrets read
/// through the API; the error is `field: reason`.
pub(crate) async fn own_endpoint(
    client: Client,
    q: &FuncQueue,
    ns: &str,
) -> Result<RedisEndpoint, String> {
    // `route` sends a queue without spec.redis to a URL, so the default is never used here
    let no_default = RedisEndpoint::new("");
    // one read per Secret for the whole (short) run: queues sharing a Secret share the GET
    static SECRETS: std::sync::LazyLock<funcscale_operator::connection::SecretCache> =
        std::sync::LazyLock::new(Default::default);
    funcscale_operator::connection::resolve(client, &q.spec, ns, &no_default, &SECRETS, 0)
        .await
        .map_err(|e| status::resolve_error(&e))
}

/// A client from the kubeconfig, and the namespace to use.
async fn kube_client(args: &KubeArgs) -> Result<(Client, String), Failure> {
    let config = resolve::kube_config(args).await?;
    let ns = config.default_namespace.clone();
    let client = Client::try_from(config)
        .map_err(|e| Failure::Failed(anyhow::anyhow!("building the Kubernetes client: {e}")))?;
    Ok((client, ns))
}

/// The id in Redis of FuncQueue `name` of the namespace (its keys are namespaced unless it
/// sets `legacyKeys`); an id (`{ns.name}`) as it is; the name itself when no cluster answers
/// (with `--redis-url`: pass the id).
async fn queue_id(kube: &KubeArgs, name: &str) -> String {
    if name.starts_with('{') {
        return name.to_string();
    }
    let Ok((client, ns)) = kube_client(kube).await else {
        return name.to_string();
    };
    match Api::<FuncQueue>::namespaced(client, &ns)
        .get_opt(name)
        .await
    {
        Ok(Some(q)) => funcscale_operator::crd_ext::queue_id(&q, &ns),
        _ => Keys::queue_id(&ns, name),
    }
}

/// The Redis connection for `queue` (see [`route`]); `None` (`tasks show`) needs a URL.
async fn queue_connection(
    kube: &KubeArgs,
    flag: &UrlFlag,
    queue: Option<&str>,
    verbose: bool,
) -> Result<funcscale_connect::Conn, Failure> {
    let (endpoint, why) = match queue {
        // an explicit URL needs no cluster
        _ if flag.explicit && flag.url.is_some() => (
            flag.endpoint(flag.url.as_deref().unwrap_or_default()),
            "--redis-url".to_string(),
        ),
        None => {
            return Err(Failure::Usage(
                "tasks show without a queue: pass --redis-url".into(),
            ));
        }
        Some(name) => {
            let (client, ns) = kube_client(kube).await?;
            let api: Api<FuncQueue> = Api::namespaced(client.clone(), &ns);
            let q = api.get_opt(name).await.map_err(|e| {
                let hint = match &e {
                    kube::Error::Api(s) if s.code == 404 => " (are the funcscale CRDs installed?)",
                    _ => "",
                };
                Failure::Failed(anyhow::anyhow!(
                    "reading FuncQueue {name} in namespace {ns}{hint}: {e}; pass --redis-url to \
                     read Redis directly"
                ))
            })?;
            match route(flag, q.as_ref(), name, &ns).map_err(Failure::Usage)? {
                Route::Url { url, why } => {
                    if q.is_none() {
                        // reading a queue the cluster does not know: say so even without -v
                        eprintln!(
                            "note: no FuncQueue {name} in namespace {ns}; reading {}",
                            RedisEndpoint::new(url)
                        );
                    }
                    (flag.endpoint(url), why)
                }
                Route::Queue(source) => {
                    let why = format!("FuncQueue {ns}/{name} {source}");
                    let q = q.as_ref().ok_or_else(|| {
                        Failure::Failed(anyhow::anyhow!(
                            "internal: FuncQueue {name} routed to its spec.redis but not read"
                        ))
                    })?;
                    let ep = own_endpoint(client, q, &ns).await.map_err(|e| {
                        Failure::Failed(anyhow::anyhow!(
                            "FuncQueue {name} in namespace {ns}: {e}; pass --redis-url to read \
                             Redis directly"
                        ))
                    })?;
                    (ep, why)
                }
            }
        }
    };
    if verbose {
        eprintln!("reading Redis at {endpoint} ({why})");
    }
    connect(&endpoint, Duration::from_secs(5))
        .await
        .map_err(|e| match e {
            ConnectError::Url(_) if why == "--redis-url" => {
                Failure::Usage(format!("--redis-url: {e}"))
            }
            e => Failure::Failed(anyhow::anyhow!(
                "cannot reach Redis at {endpoint} ({why}): {e}"
            )),
        })
}

/// Why a Redis connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("{0}")]
    Url(#[source] funcscale_protocol::connection::InvalidUrl),
    /// Redis refused the credentials (or the ACL user's rights).
    #[error(
        "Redis at {node} {}: check --redis-password / FUNCSCALE_REDIS_PASSWORD and \
         --redis-username / FUNCSCALE_REDIS_USERNAME (or the user in --redis-url), or, for a \
         queue read through its spec.redis, the Secrets it names",
        why.describe()
    )]
    Auth {
        /// `host:port`.
        node: String,
        /// What Redis said.
        why: funcscale_protocol::connection::AuthFailure,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// Nothing answered in time, or it refused.
    #[error("{0}")]
    Connect(#[source] redis::RedisError),
}

/// A connection with bounded connect and response times (a CLI must not hang on an
/// unreachable Redis), checked with a `PING` to log in: a refused password is
/// [`ConnectError::Auth`]. For a Sentinel set, its current master.
pub async fn connect(
    endpoint: &RedisEndpoint,
    timeout: Duration,
) -> Result<funcscale_connect::Conn, ConnectError> {
    let target = endpoint.target().map_err(ConnectError::Url)?;
    let config = funcscale_connect::Config {
        connection_timeout: timeout,
        response_timeout: Some(Duration::from_secs(30)),
        retries: Some(1),
        ..funcscale_connect::Config::default()
    };
    funcscale_connect::Conn::connect(&target, &config)
        .await
        .map_err(|e| match funcscale_protocol::connection::auth_failure(&e) {
            Some(why) => ConnectError::Auth {
                node: endpoint.node(),
                why,
                source: e,
            },
            None => ConnectError::Connect(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_redis_url_is_explicit_and_flags_parse_like_kubectl() {
        let (_, flag) = parse([
            "kubectl-funcscale",
            "--redis-url",
            "redis://x:1/0",
            "tasks",
            "list",
            "--queue",
            "q",
        ])
        .unwrap();
        assert_eq!(
            flag,
            UrlFlag {
                url: Some("redis://x:1/0".into()),
                explicit: true,
                ..Default::default()
            }
        );
        let (cli, _) = parse(["kubectl-funcscale", "status", "-A", "--json", "-v"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status {
                all_namespaces: true,
                json: true
            }
        ));
        // -A and -n together make no sense
        let err = parse(["kubectl-funcscale", "status", "-A", "-n", "prod"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}

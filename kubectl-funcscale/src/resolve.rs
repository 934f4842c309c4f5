//! The plugin's two resolutions, as pure as they can be: which kubeconfig context and namespace,
//! and which Redis a command reads for a queue.

use std::path::PathBuf;

use clap::Args;
use kube::Config;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Failure;
use funcscale_operator::connection::{self, Source};
use funcscale_operator::crd::FuncQueue;
use funcscale_operator::redis_metrics::RedisEndpoint;
use funcscale_worker::worker::RedisAuth;

/// The kubectl flags every subcommand takes.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Namespace [default: the kubeconfig context's namespace, else `default`].
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Path to the kubeconfig file [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: the current context].
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// Read the kubeconfig (`--kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`) and build the
/// client configuration for `--context` and `-n`.
pub async fn kube_config(args: &KubeArgs) -> Result<Config, Failure> {
    let kc = match &args.kubeconfig {
        Some(p) => Kubeconfig::read_from(p)
            .map_err(|e| Failure::Usage(format!("--kubeconfig {}: {e}", p.display())))?,
        None => Kubeconfig::read().map_err(|e| {
            Failure::Usage(format!(
                "cannot read a kubeconfig ({e}): set KUBECONFIG or pass --kubeconfig"
            ))
        })?,
    };
    config_from(kc, args).await
}

/// The client configuration from a loaded kubeconfig: `--context` (else the current context),
/// and the namespace from `-n`, else the context's, else `default` (as kubectl does).
pub async fn config_from(kc: Kubeconfig, args: &KubeArgs) -> Result<Config, Failure> {
    if let Some(c) = &args.context
        && !kc.contexts.iter().any(|n| &n.name == c)
    {
        let known: Vec<&str> = kc.contexts.iter().map(|n| n.name.as_str()).collect();
        return Err(Failure::Usage(format!(
            "--context {c}: no such context in the kubeconfig (it has: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    if let Some(ns) = &args.namespace {
        validate_namespace(ns)?;
    }
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| Failure::Usage(format!("kubeconfig: {e}")))?;
    if let Some(ns) = &args.namespace {
        config.default_namespace = ns.clone();
    }
    Ok(config)
}

/// A namespace name is a DNS-1123 label.
fn validate_namespace(ns: &str) -> Result<(), Failure> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "-n/--namespace {ns:?}: not a namespace name (lowercase letters, digits and '-', at most 63)"
        )))
    }
}

/// The Redis URL the user gave, and how, with the username and password given apart from it.
/// `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UrlFlag {
    /// `--redis-url` or `FUNCSCALE_REDIS_URL`.
    pub url: Option<String>,
    /// Given on the command line (not from the environment): then it is used for every queue.
    pub explicit: bool,
    /// `--redis-username` / `--redis-password` (or their environment variables): replace the
    /// URL's.
    pub auth: RedisAuth,
}

impl std::fmt::Debug for UrlFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlFlag")
            .field(
                "url",
                &self.url.as_ref().map(|u| RedisEndpoint::new(u.clone())),
            )
            .field("explicit", &self.explicit)
            .field("auth", &self.auth)
            .finish()
    }
}

impl UrlFlag {
    /// The endpoint of `url` (one of this flag's routes) with the username and password given
    /// apart from it. They go only with the URL given by flag or environment, never with a
    /// FuncQueue's own spec.redis.
    pub fn endpoint(&self, url: &str) -> RedisEndpoint {
        RedisEndpoint::with_credentials(
            url,
            self.auth.username.as_deref(),
            self.auth.password.as_deref(),
        )
        .with_sentinel_credentials(
            self.auth.sentinel_username.as_deref(),
            self.auth.sentinel_password.as_deref(),
        )
    }

    fn origin(&self) -> &'static str {
        if self.explicit {
            "--redis-url"
        } else {
            "FUNCSCALE_REDIS_URL"
        }
    }
}

/// How a command reaches one queue's Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// This URL; `why` says where it came from.
    Url {
        /// The URL (may hold a password: never print it, print a `RedisEndpoint`).
        url: &'a str,
        /// Where it came from, for `--verbose` and errors.
        why: String,
    },
    /// The FuncQueue's own `spec.redis` (Secrets read through the API).
    Queue(Source<'a>),
}

/// Which Redis to read for queue `name` of namespace `ns`:
/// 1. `--redis-url` on the command line, for every queue (e.g. through `kubectl port-forward`);
/// 2. the FuncQueue's `spec.redis` (url, urlSecretRef, passwordSecretRef);
/// 3. `--redis-url` / `FUNCSCALE_REDIS_URL` for a FuncQueue without `spec.redis`, or when there
///    is no FuncQueue of that name.
///
/// `Err` is the message when there is nothing to read.
pub fn route<'a>(
    flag: &'a UrlFlag,
    queue: Option<&'a FuncQueue>,
    name: &str,
    ns: &str,
) -> Result<Route<'a>, String> {
    if flag.explicit
        && let Some(url) = &flag.url
    {
        return Ok(Route::Url {
            url,
            why: "--redis-url".into(),
        });
    }
    match (queue.map(|q| connection::source(&q.spec)), &flag.url) {
        (Some(Source::Default), Some(url)) => Ok(Route::Url {
            url,
            why: format!(
                "{}: FuncQueue {name} in namespace {ns} has no spec.redis",
                flag.origin()
            ),
        }),
        (Some(Source::Default), None) => Err(format!(
            "FuncQueue {name} in namespace {ns} has no spec.redis (it uses the operator's default \
             Redis); pass --redis-url or set FUNCSCALE_REDIS_URL"
        )),
        (Some(source), _) => Ok(Route::Queue(source)),
        (None, Some(url)) => Ok(Route::Url {
            url,
            why: format!("{}: no FuncQueue {name} in namespace {ns}", flag.origin()),
        }),
        (None, None) => Err(format!(
            "FuncQueue {name} not found in namespace {ns}; pass --redis-url to read Redis directly"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use funcscale_operator::crd::{FuncQueueSpec, RedisConnection, SecretKeyRef};

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: http://127.0.0.1:1
users:
- name: u
  user: {}
contexts:
- name: team-a
  context: {cluster: c, user: u, namespace: team-a}
- name: bare
  context: {cluster: c, user: u}
current-context: team-a
";

    async fn ns(args: KubeArgs) -> Result<String, Failure> {
        let kc = Kubeconfig::from_yaml(KUBECONFIG).unwrap();
        config_from(kc, &args).await.map(|c| c.default_namespace)
    }

    #[tokio::test]
    async fn namespace_is_the_flag_else_the_contexts_else_default() {
        assert_eq!(ns(KubeArgs::default()).await.unwrap(), "team-a");
        let bare = KubeArgs {
            context: Some("bare".into()),
            ..Default::default()
        };
        assert_eq!(ns(bare.clone()).await.unwrap(), "default");
        let flag = KubeArgs {
            namespace: Some("prod".into()),
            ..bare
        };
        assert_eq!(ns(flag).await.unwrap(), "prod");
    }

    #[tokio::test]
    async fn unknown_context_and_bad_namespace_are_usage_errors_naming_the_flag() {
        let err = ns(KubeArgs {
            context: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            "--context nope: no such context in the kubeconfig (it has: team-a, bare)"
        );
        let err = ns(KubeArgs {
            namespace: Some("Prod_1".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().starts_with("-n/--namespace \"Prod_1\""),
            "{err}"
        );
    }

    fn queue(redis: Option<RedisConnection>) -> FuncQueue {
        FuncQueue::new(
            "q8",
            FuncQueueSpec {
                redis,
                ..Default::default()
            },
        )
    }

    #[test]
    fn explicit_url_wins_then_the_queue_then_the_environment() {
        let secret = RedisConnection {
            url_secret_ref: Some(SecretKeyRef {
                name: "redis".into(),
                key: "url".into(),
            }),
            ..Default::default()
        };
        let with_secret = queue(Some(secret));
        let plain = queue(None);
        let cli = UrlFlag {
            url: Some("redis://localhost:16379/0".into()),
            explicit: true,
            ..Default::default()
        };
        let env = UrlFlag {
            explicit: false,
            ..cli.clone()
        };
        let none = UrlFlag::default();

        // the command line overrides the queue's connection
        assert_eq!(
            route(&cli, Some(&with_secret), "q8", "prod").unwrap(),
            Route::Url {
                url: "redis://localhost:16379/0",
                why: "--redis-url".into()
            }
        );
        // the environment does not
        assert!(matches!(
            route(&env, Some(&with_secret), "q8", "prod").unwrap(),
            Route::Queue(Source::UrlSecret(r)) if r.name == "redis"
        ));
        assert!(matches!(
            route(&none, Some(&with_secret), "q8", "prod").unwrap(),
            Route::Queue(Source::UrlSecret(_))
        ));
        // a queue without spec.redis uses the environment's URL, else there is nothing to read
        assert_eq!(
            route(&env, Some(&plain), "q8", "prod").unwrap(),
            Route::Url {
                url: "redis://localhost:16379/0",
                why: "FUNCSCALE_REDIS_URL: FuncQueue q8 in namespace prod has no spec.redis".into()
            }
        );
        assert!(
            route(&none, Some(&plain), "q8", "prod")
                .unwrap_err()
                .contains("has no spec.redis")
        );
        // no FuncQueue: the URL if there is one, else the error that says what to pass
        assert_eq!(
            route(&env, None, "q8", "prod").unwrap(),
            Route::Url {
                url: "redis://localhost:16379/0",
                why: "FUNCSCALE_REDIS_URL: no FuncQueue q8 in namespace prod".into()
            }
        );
        assert_eq!(
            route(&none, None, "q8", "prod").unwrap_err(),
            "FuncQueue q8 not found in namespace prod; pass --redis-url to read Redis directly"
        );
    }
}

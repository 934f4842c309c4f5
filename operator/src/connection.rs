//! Where a FuncQueue's Redis is: `spec.redis` resolved to a URL, reading the referenced Secrets
//! through the API (through a [`SecretCache`]). Needs a client, not the operator's `Context`,
//! so the queue controller and `kubectl funcscale` resolve a connection the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use crate::crd::{FuncQueueSpec, SecretKeyRef};
use crate::error::{Error, Result};
use crate::redis_metrics::RedisEndpoint;

/// Which part of `spec.redis` gives a queue its connection (the dereference step, pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// No `spec.redis` (or no URL in it): the default connection.
    Default,
    /// `spec.redis.url`, used as is.
    Url(&'a str),
    /// `spec.redis.urlSecretRef`: the whole URL from a Secret (wins over everything else).
    UrlSecret(&'a SecretKeyRef),
    /// `spec.redis.url` plus the username from `spec.redis.usernameSecretRef` and/or the
    /// password from `spec.redis.passwordSecretRef` (each replaces the URL's).
    UrlWithSecrets {
        /// `spec.redis.url`.
        url: &'a str,
        /// `spec.redis.usernameSecretRef`.
        username: Option<&'a SecretKeyRef>,
        /// `spec.redis.passwordSecretRef`.
        password: Option<&'a SecretKeyRef>,
    },
}

/// Where the queue's connection comes from, without reading anything.
pub fn source(spec: &FuncQueueSpec) -> Source<'_> {
    let Some(conn) = &spec.redis else {
        return Source::Default;
    };
    if let Some(r) = &conn.url_secret_ref {
        return Source::UrlSecret(r);
    }
    match (
        &conn.url,
        &conn.username_secret_ref,
        &conn.password_secret_ref,
    ) {
        (Some(url), None, None) => Source::Url(url),
        (Some(url), username, password) => Source::UrlWithSecrets {
            url,
            username: username.as_ref(),
            password: password.as_ref(),
        },
        (None, _, _) => Source::Default,
    }
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("the default connection (no spec.redis)"),
            Source::Url(_) => f.write_str("spec.redis.url"),
            Source::UrlSecret(r) => write!(
                f,
                "spec.redis.urlSecretRef (Secret {}, key {})",
                r.name, r.key
            ),
            Source::UrlWithSecrets {
                username, password, ..
            } => {
                f.write_str("spec.redis.url")?;
                for (field, r) in [
                    ("usernameSecretRef", username),
                    ("passwordSecretRef", password),
                ] {
                    if let Some(r) = r {
                        write!(
                            f,
                            " with spec.redis.{field} (Secret {}, key {})",
                            r.name, r.key
                        )?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// How long a Secret read through a [`SecretCache`] is used before it is read again: a
/// changed Secret (a rotated Redis password) applies within this.
pub const SECRET_CACHE_TTL_MS: u64 = 60_000;

/// A Secret's keys (`data`, and `stringData` where `data` has no such key) and their bytes.
pub type SecretData = Arc<BTreeMap<String, Vec<u8>>>;

/// Secrets read through the API, each reused for [`SECRET_CACHE_TTL_MS`]. The queue controller
/// refreshes every queue every few seconds and every pool reconcile checks its queues'
/// Secrets: without this, thousands of queues would mean thousands of Secret GETs a minute.
/// A Secret that does not exist is not kept (one created later is seen at the next look).
#[derive(Default)]
pub struct SecretCache(Mutex<HashMap<(String, String), (u64, SecretData)>>);

impl SecretCache {
    /// Secret `name` of namespace `ns` (`None`: it does not exist), read through the API when
    /// the copy held is older than the TTL at `now_ms`.
    pub async fn get(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<Option<SecretData>> {
        let key = (ns.to_string(), name.to_string());
        let fresh = |at: u64| now_ms.saturating_sub(at) < SECRET_CACHE_TTL_MS;
        if let Some((at, data)) = self.lock().get(&key)
            && fresh(*at)
        {
            return Ok(Some(data.clone()));
        }
        let read = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|s| {
                let mut keys: BTreeMap<String, Vec<u8>> = s
                    .string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                keys.extend(
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                Arc::new(keys)
            });
        let mut entries = self.lock();
        // what is stale goes as new reads come in (Secrets no queue references any more)
        entries.retain(|_, (at, _)| fresh(*at));
        match &read {
            Some(data) => entries.insert(key, (now_ms, data.clone())),
            None => entries.remove(&key),
        };
        Ok(read)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (u64, SecretData)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Resolve the Redis endpoint of a queue in namespace `ns`, reading Secrets when referenced
/// (through `secrets`, as of `now_ms`); `default` when the queue names no connection. A
/// missing Secret or key is [`Error::InvalidSpec`] naming the field.
pub async fn resolve(
    client: Client,
    spec: &FuncQueueSpec,
    ns: &str,
    default: &RedisEndpoint,
    secrets: &SecretCache,
    now_ms: u64,
) -> Result<RedisEndpoint> {
    let value = |r, field| secret_value(&client, secrets, now_ms, ns, r, field);
    let endpoint = match source(spec) {
        Source::Default => Ok::<_, Error>(default.clone()),
        Source::Url(url) => Ok(RedisEndpoint::new(url)),
        Source::UrlSecret(r) => Ok(RedisEndpoint::new(
            value(r, "spec.redis.urlSecretRef").await?.trim(),
        )),
        Source::UrlWithSecrets {
            url,
            username,
            password,
        } => {
            let username = match username {
                Some(r) => Some(value(r, "spec.redis.usernameSecretRef").await?),
                None => None,
            };
            let password = match password {
                Some(r) => Some(value(r, "spec.redis.passwordSecretRef").await?),
                None => None,
            };
            // a trailing newline (`echo pw > file`) is dropped where the connection is made
            Ok(RedisEndpoint::with_credentials(
                url,
                username.as_deref(),
                password.as_deref(),
            ))
        }
    }?;
    // the sentinels' own login, for a redis+sentinel:// URL
    let Some(conn) = spec
        .redis
        .as_ref()
        .filter(|_| !matches!(source(spec), Source::Default))
    else {
        return Ok(endpoint);
    };
    let sentinel_username = match &conn.sentinel_username_secret_ref {
        Some(r) => Some(value(r, "spec.redis.sentinelUsernameSecretRef").await?),
        None => None,
    };
    let sentinel_password = match &conn.sentinel_password_secret_ref {
        Some(r) => Some(value(r, "spec.redis.sentinelPasswordSecretRef").await?),
        None => None,
    };
    if sentinel_username.is_none() && sentinel_password.is_none() {
        return Ok(endpoint);
    }
    Ok(endpoint
        .with_sentinel_credentials(sentinel_username.as_deref(), sentinel_password.as_deref()))
}

/// Why `r` cannot be read (`None`: it can): the Secret or its key is missing.
pub async fn check_secret(
    client: &Client,
    secrets: &SecretCache,
    now_ms: u64,
    ns: &str,
    r: &SecretKeyRef,
) -> Result<Option<String>> {
    Ok(match secrets.get(client, ns, &r.name, now_ms).await? {
        None => Some(format!("Secret {} not found", r.name)),
        Some(d) if !d.contains_key(&r.key) => {
            Some(format!("Secret {} has no key {}", r.name, r.key))
        }
        Some(_) => None,
    })
}

async fn secret_value(
    client: &Client,
    secrets: &SecretCache,
    now_ms: u64,
    ns: &str,
    r: &SecretKeyRef,
    field: &str,
) -> Result<String> {
    let data = secrets
        .get(client, ns, &r.name, now_ms)
        .await?
        .ok_or_else(|| Error::invalid(field, format!("Secret {} not found", r.name)))?;
    let v = data
        .get(&r.key)
        .ok_or_else(|| Error::invalid(field, format!("Secret {} has no key {}", r.name, r.key)))?;
    String::from_utf8(v.clone()).map_err(|_| {
        Error::invalid(
            field,
            format!("Secret {} key {} is not UTF-8", r.name, r.key),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RedisConnection;

    fn key(name: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: "url".into(),
        }
    }

    fn spec(redis: Option<RedisConnection>) -> FuncQueueSpec {
        FuncQueueSpec {
            redis,
            ..Default::default()
        }
    }

    #[test]
    fn the_url_secret_wins_then_url_with_password_then_url_then_default() {
        assert_eq!(source(&spec(None)), Source::Default);
        assert_eq!(
            source(&spec(Some(RedisConnection::default()))),
            Source::Default
        );
        let url = RedisConnection {
            url: Some("redis://r:6379/1".into()),
            ..Default::default()
        };
        assert_eq!(
            source(&spec(Some(url.clone()))),
            Source::Url("redis://r:6379/1")
        );
        let pw = RedisConnection {
            password_secret_ref: Some(key("pw")),
            ..url.clone()
        };
        let k = key("pw");
        assert_eq!(
            source(&spec(Some(pw.clone()))),
            Source::UrlWithSecrets {
                url: "redis://r:6379/1",
                username: None,
                password: Some(&k)
            }
        );
        let user = RedisConnection {
            username_secret_ref: Some(key("user")),
            ..pw
        };
        let u = key("user");
        assert_eq!(
            source(&spec(Some(user))),
            Source::UrlWithSecrets {
                url: "redis://r:6379/1",
                username: Some(&u),
                password: Some(&k)
            }
        );
        let s = RedisConnection {
            url_secret_ref: Some(key("whole")),
            ..url
        };
        let k = key("whole");
        assert_eq!(source(&spec(Some(s))), Source::UrlSecret(&k));
        assert_eq!(
            Source::UrlSecret(&k).to_string(),
            "spec.redis.urlSecretRef (Secret whole, key url)"
        );
    }

    #[tokio::test]
    async fn resolve_reads_secrets_and_names_the_field_when_one_is_missing() {
        use k8s_openapi::ByteString;
        use kube::api::PostParams;
        let client = kube_fake_client::ClientBuilder::new()
            .build()
            .await
            .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "prod");
        let mut secret = Secret::default();
        secret.metadata.name = Some("redis".into());
        secret.data = Some(
            [
                (
                    "url".to_string(),
                    ByteString(b"redis://:s3cret@r:6379/2\n".to_vec()),
                ),
                ("password".to_string(), ByteString(b"p@ss\n".to_vec())),
                ("user".to_string(), ByteString(b"ops\n".to_vec())),
            ]
            .into(),
        );
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let default = RedisEndpoint::new("redis://default:6379/0");
        let cache = SecretCache::default();

        let whole = spec(Some(RedisConnection {
            url_secret_ref: Some(key("redis")),
            ..Default::default()
        }));
        let ep = resolve(client.clone(), &whole, "prod", &default, &cache, 0)
            .await
            .unwrap();
        assert_eq!(ep.url(), "redis://:s3cret@r:6379/2");
        let settings = |ep: &RedisEndpoint| {
            let s = ep.redis_settings().unwrap();
            (
                s.username().map(str::to_string),
                s.password().map(str::to_string),
            )
        };

        let with_pw = spec(Some(RedisConnection {
            url: Some("redis://app@r:6379/1".into()),
            password_secret_ref: Some(SecretKeyRef {
                name: "redis".into(),
                key: "password".into(),
            }),
            ..Default::default()
        }));
        let ep = resolve(client.clone(), &with_pw, "prod", &default, &cache, 0)
            .await
            .unwrap();
        assert_eq!(settings(&ep), (Some("app".into()), Some("p@ss".into())));

        // the username from a Secret replaces the URL's
        let with_user = spec(Some(RedisConnection {
            username_secret_ref: Some(SecretKeyRef {
                name: "redis".into(),
                key: "user".into(),
            }),
            ..with_pw.redis.clone().unwrap()
        }));
        let ep = resolve(client.clone(), &with_user, "prod", &default, &cache, 0)
            .await
            .unwrap();
        assert_eq!(settings(&ep), (Some("ops".into()), Some("p@ss".into())));

        assert_eq!(
            resolve(client.clone(), &spec(None), "prod", &default, &cache, 0)
                .await
                .unwrap(),
            default
        );

        // the same reference from another namespace: the Secret is not there
        let err = resolve(client.clone(), &whole, "other", &default, &cache, 0)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid spec: spec.redis.urlSecretRef: Secret redis not found"
        );
        let wrong_key = spec(Some(RedisConnection {
            url_secret_ref: Some(SecretKeyRef {
                name: "redis".into(),
                key: "nope".into(),
            }),
            ..Default::default()
        }));
        let err = resolve(client, &wrong_key, "prod", &default, &cache, 0)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid spec: spec.redis.urlSecretRef: Secret redis has no key nope"
        );
    }
}

//! Where a FuncQueue's Redis is: `spec.redis` resolved to a URL, reading the referenced Secrets
//! through the API. Needs a client, not the operator's `Context`, so the queue controller and
//! `kubectl funcscale` resolve a connection the same way.

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
    /// `spec.redis.url` plus the password from `spec.redis.passwordSecretRef`.
    UrlWithPassword(&'a str, &'a SecretKeyRef),
}

/// Where the queue's connection comes from, without reading anything.
pub fn source(spec: &FuncQueueSpec) -> Source<'_> {
    let Some(conn) = &spec.redis else {
        return Source::Default;
    };
    if let Some(r) = &conn.url_secret_ref {
        return Source::UrlSecret(r);
    }
    match (&conn.url, &conn.password_secret_ref) {
        (Some(url), Some(r)) => Source::UrlWithPassword(url, r),
        (Some(url), None) => Source::Url(url),
        (None, _) => Source::Default,
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
            Source::UrlWithPassword(_, r) => write!(
                f,
                "spec.redis.url with spec.redis.passwordSecretRef (Secret {}, key {})",
                r.name, r.key
            ),
        }
    }
}

/// Resolve the Redis endpoint of a queue in namespace `ns`, reading Secrets when referenced;
/// `default` when the queue names no connection. A missing Secret or key is
/// [`Error::InvalidSpec`] naming the field.
pub async fn resolve(
    client: Client,
    spec: &FuncQueueSpec,
    ns: &str,
    default: &RedisEndpoint,
) -> Result<RedisEndpoint> {
    let secrets = || Api::<Secret>::namespaced(client.clone(), ns);
    match source(spec) {
        Source::Default => Ok(default.clone()),
        Source::Url(url) => Ok(RedisEndpoint::new(url)),
        Source::UrlSecret(r) => Ok(RedisEndpoint::new(
            secret_value(&secrets(), r, "spec.redis.urlSecretRef")
                .await?
                .trim(),
        )),
        Source::UrlWithPassword(url, r) => {
            let pw = secret_value(&secrets(), r, "spec.redis.passwordSecretRef").await?;
            Ok(RedisEndpoint::with_password(
                url,
                pw.trim_end_matches(['\n', '\r']),
            ))
        }
    }
}

async fn secret_value(api: &Api<Secret>, r: &SecretKeyRef, field: &str) -> Result<String> {
    let s = api
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::invalid(field, format!("Secret {} not found", r.name)))?;
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(&r.key)) {
        return String::from_utf8(v.0.clone()).map_err(|_| {
            Error::invalid(
                field,
                format!("Secret {} key {} is not UTF-8", r.name, r.key),
            )
        });
    }
    s.string_data
        .as_ref()
        .and_then(|d| d.get(&r.key).cloned())
        .ok_or_else(|| Error::invalid(field, format!("Secret {} has no key {}", r.name, r.key)))
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
            source(&spec(Some(pw))),
            Source::UrlWithPassword("redis://r:6379/1", &k)
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
            ]
            .into(),
        );
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let default = RedisEndpoint::new("redis://default:6379/0");

        let whole = spec(Some(RedisConnection {
            url_secret_ref: Some(key("redis")),
            ..Default::default()
        }));
        let ep = resolve(client.clone(), &whole, "prod", &default)
            .await
            .unwrap();
        assert_eq!(ep.url(), "redis://:s3cret@r:6379/2");

        let with_pw = spec(Some(RedisConnection {
            url: Some("redis://app@r:6379/1".into()),
            password_secret_ref: Some(SecretKeyRef {
                name: "redis".into(),
                key: "password".into(),
            }),
            ..Default::default()
        }));
        let ep = resolve(client.clone(), &with_pw, "prod", &default)
            .await
            .unwrap();
        assert_eq!(ep.url(), "redis://app:p%40ss@r:6379/1");

        assert_eq!(
            resolve(client.clone(), &spec(None), "prod", &default)
                .await
                .unwrap(),
            default
        );

        // the same reference from another namespace: the Secret is not there
        let err = resolve(client.clone(), &whole, "other", &default)
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
        let err = resolve(client, &wrong_key, "prod", &default)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid spec: spec.redis.urlSecretRef: Secret redis has no key nope"
        );
    }
}

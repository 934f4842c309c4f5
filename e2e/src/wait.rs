//! Waiting on conditions with a deadline: what e2e tests do instead of sleeping.

use std::future::Future;
use std::time::Duration;

use kube::Api;
use kube::runtime::wait::{Condition, await_condition};
use serde::de::DeserializeOwned;

/// How often [`eventually`] polls.
pub const POLL: Duration = Duration::from_millis(50);

/// Poll `check` until it returns `Some`, or fail after `timeout` naming `what` was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Watch the object `name` until `cond` holds (the condition sees `None` while the object does
/// not exist), or fail after `timeout`. Returns the object as it was when the condition held.
///
/// `cond` is any [`Condition`], e.g. `|d: Option<&Deployment>| d.is_some()` or the ones in
/// [`kube::runtime::wait::conditions`].
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    cond: impl Condition<K>,
) -> anyhow::Result<Option<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(res) => Ok(res?),
        Err(_) => anyhow::bail!(
            "timed out after {timeout:?} waiting for a condition on {} {name}",
            K::kind(&Default::default())
        ),
    }
}

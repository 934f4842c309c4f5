//! How a program reaches a queue's Redis: a URL plus, optionally, a username and a password
//! given apart from it (an environment variable filled from a Kubernetes Secret, a flag). The
//! operator renders these settings into the pods ([`PASSWORD_ENV`], [`USERNAME_ENV`]) and the
//! worker, the beat, the CLI, the operator's poller and the kubectl plugin all turn them into
//! a connection with [`connection_info`], so they cannot disagree about precedence.
//!
//! **Precedence**: a username or password given apart from the URL replaces the one the URL
//! carries; what is not given apart is taken from the URL (`redis://user:pass@host:port/db`).
//! So a URL with the username only (`redis://app@redis:6379/0`) plus a password from a Secret
//! logs in as the ACL user `app`; a password alone logs in as the `default` user
//! (`requirepass`).
//!
//! No I/O here: [`connection_info`] parses, [`auth_failure`] classifies a
//! [`redis::RedisError`] the programs got back.

use redis::{ConnectionInfo, IntoConnectionInfo};

/// Environment variable holding the Redis URL (`--redis-url`).
pub const URL_ENV: &str = "FUNCSCALE_REDIS_URL";
/// Environment variable holding the Redis ACL username (`--redis-username`); replaces the URL's.
pub const USERNAME_ENV: &str = "FUNCSCALE_REDIS_USERNAME";
/// Environment variable holding the Redis password (`--redis-password`); replaces the URL's.
pub const PASSWORD_ENV: &str = "FUNCSCALE_REDIS_PASSWORD";

/// A URL that does not parse as a Redis URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "not a Redis URL ({kind}): expected redis://[user[:password]@]host[:port][/db] or rediss://… — {source}"
)]
pub struct InvalidUrl {
    /// What was wrong, without the URL (it may hold a password).
    kind: String,
    /// The client library's error.
    #[source]
    source: redis::RedisError,
}

/// The connection to `url`, with `username` / `password` (when given, and not empty)
/// replacing the URL's. A trailing newline is dropped (a Secret written with
/// `echo pw > file; kubectl create secret --from-file` holds one, and a pod's environment
/// variable from it keeps it); empty strings then count as not given (an environment variable
/// set from an optional Secret key may be empty).
pub fn connection_info(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, InvalidUrl> {
    let info = url.into_connection_info().map_err(|source| InvalidUrl {
        kind: format!("{:?}", source.kind()),
        source,
    })?;
    let mut settings = info.redis_settings().clone();
    if let Some(u) = given(username) {
        settings = settings.set_username(u);
    }
    if let Some(p) = given(password) {
        settings = settings.set_password(p);
    }
    Ok(info.set_redis_settings(settings))
}

/// A username or password as given apart from the URL: without a trailing newline, and `None`
/// when that leaves nothing.
pub fn given(value: Option<&str>) -> Option<&str> {
    value
        .map(|v| v.trim_end_matches(['\n', '\r']))
        .filter(|v| !v.is_empty())
}

/// `host:port` (or the socket path) of a connection: names the node in messages without its
/// credentials.
pub fn node(info: &ConnectionInfo) -> String {
    info.addr().to_string()
}

/// Why Redis refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// `NOAUTH`: the server requires a password and none was given.
    Missing,
    /// `WRONGPASS` / `invalid password`: the username or password is wrong (or the ACL user is
    /// disabled).
    Rejected,
    /// `NOPERM`: logged in, but the ACL user may not run a command or touch a key.
    Forbidden,
}

impl AuthFailure {
    /// What happened, for a message that goes on to name the setting to fix.
    pub fn describe(self) -> &'static str {
        match self {
            AuthFailure::Missing => "requires a password and none was given (NOAUTH)",
            AuthFailure::Rejected => "rejected the username/password (WRONGPASS)",
            AuthFailure::Forbidden => {
                "denied a command or key to the ACL user (NOPERM): grant it the queue's keys (~<prefix>:*) and +@all or the commands funcscale uses"
            }
        }
    }
}

/// Whether `e` is Redis refusing the credentials (or an ACL user's rights); `None` for any
/// other error (unreachable, timeouts, a script error...).
pub fn auth_failure(e: &redis::RedisError) -> Option<AuthFailure> {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some(AuthFailure::Rejected);
    }
    // the code when the library has it, else the text (errors wrapped in a pipeline reply)
    let text = format!("{} {e}", e.code().unwrap_or_default());
    if text.contains("NOAUTH") {
        Some(AuthFailure::Missing)
    } else if text.contains("WRONGPASS") || text.contains("invalid password") {
        Some(AuthFailure::Rejected)
    } else if text.contains("NOPERM") {
        Some(AuthFailure::Forbidden)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(i: &ConnectionInfo) -> (Option<&str>, Option<&str>, i64) {
        let s = i.redis_settings();
        (s.username(), s.password(), s.db())
    }

    #[test]
    fn separate_settings_replace_the_urls_and_the_rest_comes_from_the_url() {
        let i = connection_info("redis://127.0.0.1:6379/2", None, None).unwrap();
        assert_eq!(creds(&i), (None, None, 2));
        assert_eq!(node(&i), "127.0.0.1:6379");

        let i = connection_info("redis://:url-pw@h:1/0", None, Some("env-pw")).unwrap();
        assert_eq!(creds(&i), (None, Some("env-pw"), 0));

        let i = connection_info("redis://app@h:1/0", None, Some("p@ss:w/rd")).unwrap();
        assert_eq!(creds(&i), (Some("app"), Some("p@ss:w/rd"), 0));

        let i = connection_info("redis://app:url-pw@h:1/3", Some("ops"), None).unwrap();
        assert_eq!(creds(&i), (Some("ops"), Some("url-pw"), 3));

        // a Secret file's trailing newline is not part of the password
        let i = connection_info("redis://h:1/0", Some("app\n"), Some("pw\r\n")).unwrap();
        assert_eq!(creds(&i), (Some("app"), Some("pw"), 0));

        // empty values (an env var from an empty Secret key) are not given
        let i = connection_info("redis://app:url-pw@h:1/0", Some(""), Some("")).unwrap();
        assert_eq!(creds(&i), (Some("app"), Some("url-pw"), 0));
    }

    #[test]
    fn a_bad_url_is_an_error_that_does_not_repeat_it() {
        let e = connection_info("http://:secret@h:1", None, None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("not a Redis URL"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn auth_errors_are_told_apart_from_others() {
        let server = |code: &str, detail: &str| {
            redis::RedisError::from((
                redis::ErrorKind::Extension,
                "server",
                format!("{code} {detail}"),
            ))
        };
        assert_eq!(
            auth_failure(&server("NOAUTH", "Authentication required.")),
            Some(AuthFailure::Missing)
        );
        assert_eq!(
            auth_failure(&server("WRONGPASS", "invalid username-password pair")),
            Some(AuthFailure::Rejected)
        );
        assert_eq!(
            auth_failure(&server("NOPERM", "this user has no permissions")),
            Some(AuthFailure::Forbidden)
        );
        assert_eq!(
            auth_failure(&redis::RedisError::from((
                redis::ErrorKind::AuthenticationFailed,
                "Password authentication failed"
            ))),
            Some(AuthFailure::Rejected)
        );
        assert_eq!(auth_failure(&server("ERR", "unknown command")), None);
    }
}

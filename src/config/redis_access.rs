//! How tickerd proves who it is to Redis and which server it trusts: ACL
//! credentials, TLS files and Sentinel (README "Production Redis").
//!
//! Credentials are taken out of every URL here, once, so the URLs kept in
//! [`super::RedisConfig`] can be logged and shown as they are; the password
//! lives only in a [`Secret`], whose `Debug` never prints it.

use std::path::{Path, PathBuf};

use super::file::RedisSection;
use super::{ConfigError, invalid};

/// A password. Printing it (`{:?}`) shows `<redacted>`; only the code that
/// hands it to the redis crate calls [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[redis] tls_*`: used for every `rediss://` connection (server, cluster
/// nodes, sentinels). Without `ca_file` the system roots are trusted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Skips certificate verification: for tests only, warned in the log.
    pub insecure: bool,
}

impl TlsFiles {
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some() || self.insecure
    }
}

/// `[redis] sentinels` + `sentinel_master`: the master is asked of the
/// sentinels instead of taken from `url` (whose scheme, user, password and
/// database still apply to it).
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelSettings {
    /// Credential-free `redis://host:port` / `rediss://host:port` URLs.
    pub sentinels: Vec<String>,
    pub master: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisAccess {
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsFiles,
    pub sentinel: Option<SentinelSettings>,
}

/// A Redis URL split into its credential-free form and the credentials it carried.
#[derive(Debug)]
pub(crate) struct SplitUrl {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: bool,
}

/// The URL with any password replaced by `***`, for error messages about a
/// URL that did not even parse.
pub(crate) fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Checks a Redis URL and takes its user and password out of it.
pub(crate) fn split_url(key: &str, url: &str) -> Result<SplitUrl, ConfigError> {
    let bad = || {
        invalid(
            key,
            format!(
                "{:?}: expected redis://[user[:password]@]host:port/db or rediss://...",
                mask_url(url)
            ),
        )
    };
    let mut parsed = redis::parse_redis_url(url)
        .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
        .ok_or_else(bad)?;
    // The redis crate decodes percent-escapes; its reading is the one used
    // when connecting, so take the credentials from it.
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|_| bad())?;
    let settings = info.redis_settings();
    let username = settings.username().filter(|u| !u.is_empty()).map(str::to_owned);
    let password = settings.password().filter(|p| !p.is_empty()).map(Secret::new);
    let tls = parsed.scheme() == "rediss";
    if parsed.has_host() {
        parsed.set_password(None).map_err(|_| bad())?;
        parsed.set_username("").map_err(|_| bad())?;
    }
    Ok(SplitUrl {
        url: parsed.to_string(),
        username,
        password,
        tls,
    })
}

fn path(key: &str, v: &Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    match v.as_deref() {
        None => Ok(None),
        Some("") => Err(invalid(key, "must not be empty; leave the key out instead")),
        Some(p) => Ok(Some(PathBuf::from(p))),
    }
}

/// Resolves credentials, TLS and Sentinel. `url_user`/`url_password` come
/// from the server URL; `[redis] username`/`password` override them, and
/// `REDIS_PASSWORD` overrides both passwords. `any_tls_url` says whether
/// some configured URL is `rediss://`.
pub(crate) fn resolve(
    r: &RedisSection,
    env_get: &dyn Fn(&str) -> Option<String>,
    url_user: Option<String>,
    url_password: Option<Secret>,
    any_tls_url: bool,
) -> Result<RedisAccess, ConfigError> {
    if r.username.as_deref() == Some("") {
        return Err(invalid(
            "redis.username",
            "must not be empty; leave the key out instead",
        ));
    }
    let username = r.username.clone().or(url_user);
    let password = env_get("REDIS_PASSWORD")
        .map(Secret::new)
        .or_else(|| r.password.clone().filter(|p| !p.is_empty()).map(Secret::new))
        .or(url_password);

    let tls = TlsFiles {
        ca_file: path("redis.tls_ca_file", &r.tls_ca_file)?,
        cert_file: path("redis.tls_cert_file", &r.tls_cert_file)?,
        key_file: path("redis.tls_key_file", &r.tls_key_file)?,
        insecure: r.tls_insecure.unwrap_or(false),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => {
            return Err(invalid(
                "redis.tls_key_file",
                "missing: tls_cert_file is set, and mutual TLS needs both the certificate and its key",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "redis.tls_cert_file",
                "missing: tls_key_file is set, and mutual TLS needs both the certificate and its key",
            ));
        }
        _ => {}
    }

    let sentinel = match (&r.sentinels, &r.sentinel_master) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "redis.sentinel_master",
                "missing: redis.sentinels is set; name the master the sentinels monitor (e.g. \"mymaster\")",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "redis.sentinels",
                "missing: redis.sentinel_master is set; list the sentinels, e.g. [\"redis://10.0.0.1:26379\"]",
            ));
        }
        (Some(list), Some(master)) => {
            if list.is_empty() {
                return Err(invalid("redis.sentinels", "list at least one sentinel URL"));
            }
            if master.is_empty() || master.contains(char::is_whitespace) {
                return Err(invalid(
                    "redis.sentinel_master",
                    format!("{master:?}: expected the master name without spaces"),
                ));
            }
            let mut sentinels = Vec::new();
            let (mut user, mut pass) = (None, None);
            for (i, s) in list.iter().enumerate() {
                let split = split_url(&format!("redis.sentinels[{i}]"), s)?;
                if split.url.starts_with("redis+unix") || split.url.starts_with("unix") {
                    return Err(invalid(
                        format!("redis.sentinels[{i}]"),
                        "sentinels are reached over TCP",
                    ));
                }
                user = user.or(split.username);
                pass = pass.or(split.password);
                sentinels.push(split.url);
            }
            Some(SentinelSettings {
                sentinels,
                master: master.clone(),
                username: r.sentinel_username.clone().filter(|u| !u.is_empty()).or(user),
                password: r
                    .sentinel_password
                    .clone()
                    .filter(|p| !p.is_empty())
                    .map(Secret::new)
                    .or(pass),
            })
        }
    };
    if sentinel.is_none() && (r.sentinel_username.is_some() || r.sentinel_password.is_some()) {
        return Err(invalid(
            "redis.sentinel_username",
            "sentinel credentials are set but redis.sentinels is not",
        ));
    }
    let sentinel_tls = sentinel
        .as_ref()
        .is_some_and(|s| s.sentinels.iter().any(|u| u.starts_with("rediss://")));
    if tls.is_set() && !any_tls_url && !sentinel_tls {
        let key = if tls.ca_file.is_some() {
            "redis.tls_ca_file"
        } else if tls.cert_file.is_some() {
            "redis.tls_cert_file"
        } else {
            "redis.tls_insecure"
        };
        return Err(invalid(
            key,
            "is set, but no Redis URL uses TLS: write rediss:// instead of redis:// in REDIS_URL / redis.url / redis.nodes",
        ));
    }
    Ok(RedisAccess {
        username,
        password,
        tls,
        sentinel,
    })
}

/// Checks that each TLS file can be read and holds PEM, naming the key
/// otherwise (run when the config is loaded, so a typo stops the start
/// instead of showing up as "redis unreachable").
pub(crate) fn check_tls_files(tls: &TlsFiles) -> Result<(), ConfigError> {
    let check = |key: &str, p: &Option<PathBuf>, what: &str| -> Result<(), ConfigError> {
        let Some(p) = p else { return Ok(()) };
        let text = read_pem(p).map_err(|m| invalid(key, m))?;
        if !text.contains(what) {
            return Err(invalid(
                key,
                format!("{}: no PEM block containing {what:?} found", p.display()),
            ));
        }
        Ok(())
    };
    check("redis.tls_ca_file", &tls.ca_file, "CERTIFICATE")?;
    check("redis.tls_cert_file", &tls.cert_file, "CERTIFICATE")?;
    check("redis.tls_key_file", &tls.key_file, "PRIVATE KEY")?;
    Ok(())
}

/// Reads a PEM file; the error names the path and says what went wrong.
pub fn read_pem(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read it: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let s = split_url("k", "rediss://tickerd:s%40cret@h:6380/2").unwrap();
        assert_eq!(s.url, "rediss://h:6380/2");
        assert_eq!(s.username.as_deref(), Some("tickerd"));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("s@cret"));
        assert!(s.tls);
        let s = split_url("k", "redis://:pw@h:1/0").unwrap();
        assert_eq!(s.url, "redis://h:1/0");
        assert_eq!(s.username, None);
        let s = split_url("k", "redis://h:1").unwrap();
        assert_eq!((s.url.as_str(), s.password.is_none()), ("redis://h:1", true));
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let e = split_url("redis.url", "http://u:hunter2@h/").unwrap_err().to_string();
        assert!(e.contains("redis.url") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
        let a = RedisAccess {
            password: Some(Secret::new("hunter2")),
            ..RedisAccess::default()
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}

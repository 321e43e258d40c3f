//! Where the daemon's Redis connections go and how they prove themselves:
//! the configured URL(s), ACL credentials, TLS (rustls) and Sentinel,
//! turned into a redis crate `Client` or `ClusterClient` (README "Production Redis").
//!
//! Connection details are built as `ConnectionInfo` values, never as URL
//! strings with a password in them, so nothing that is logged or shown can
//! carry the password. Certificates are read from their files on every
//! resolution, so a renewed certificate is used at the next reconnect.

use std::sync::Once;

use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates, TlsMode,
};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, TlsFiles, read_pem};

/// How the daemon finds its Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// A client for the server(s) to use now. Built once per reconnect and
/// kept behind an `Arc`, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Endpoint {
    Single(Client),
    Cluster(ClusterClient),
}

/// The outcome of one resolution: the client and, for one server, its
/// `host:port` (the master in use, under Sentinel).
#[derive(Clone)]
pub(crate) struct Resolved {
    pub endpoint: Endpoint,
    pub address: Option<String>,
}

pub(crate) struct RedisTarget {
    cfg: RedisConfig,
    /// One client per configured sentinel, built on first use and kept (it
    /// caches its connection to that sentinel). One per sentinel, not one
    /// for all: the crate asks a list of sentinels in order, so one that
    /// hangs (stopped, or its host dropping packets) would hold up every
    /// lookup behind it; asked apart, the others still answer.
    sentinels: Vec<Mutex<Option<SentinelClient>>>,
}

/// rustls picks the process-wide provider; the daemon uses ring everywhere
/// (one crypto provider), so install it before any TLS connection.
fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl RedisTarget {
    pub fn new(cfg: &RedisConfig) -> Self {
        ensure_crypto_provider();
        if cfg.access.tls.insecure {
            tracing::warn!(
                "redis.tls_insecure = true: the Redis server's certificate is NOT verified, so anyone on the path can impersonate it; use this for tests only and set redis.tls_ca_file instead"
            );
        }
        let sentinels = cfg.access.sentinel.as_ref().map_or(0, |s| s.sentinels.len());
        Self {
            cfg: cfg.clone(),
            sentinels: (0..sentinels).map(|_| Mutex::new(None)).collect(),
        }
    }

    pub fn mode(&self) -> RedisMode {
        if self.cfg.access.sentinel.is_some() {
            RedisMode::Sentinel
        } else if self.cfg.cluster {
            RedisMode::Cluster
        } else {
            RedisMode::Standalone
        }
    }

    /// Where the daemon connects, for log lines and status answers: URLs
    /// without passwords (they were taken out when the config was read),
    /// with the ACL user when there is one.
    pub fn describe(&self) -> String {
        let user = |url: &str| match (&self.cfg.access.username, url.find("://")) {
            (Some(u), Some(i)) => format!("{}://{u}@{}", &url[..i], &url[i + 3..]),
            _ => url.to_owned(),
        };
        match (&self.cfg.access.sentinel, self.mode()) {
            (Some(s), _) => format!("sentinel master {:?} via {}", s.master, s.sentinels.join(",")),
            (None, RedisMode::Cluster) if !self.cfg.nodes.is_empty() => {
                self.cfg.nodes.iter().map(|n| user(n)).collect::<Vec<_>>().join(",")
            }
            _ => user(&self.cfg.url),
        }
    }

    /// Works out where to connect now: the configured server or cluster,
    /// or the master the sentinels name (checked with `ROLE`).
    pub async fn resolve(&self) -> RedisResult<Resolved> {
        let certs = certificates(&self.cfg.access.tls)?;
        if let Some(s) = &self.cfg.access.sentinel {
            let found = self.ask_sentinels(s, certs).await?;
            let address = address_of(&found);
            let settings = found.redis_settings().clone().set_skip_set_lib_name();
            let master = Client::open(found.set_redis_settings(settings))?;
            return Ok(Resolved {
                endpoint: Endpoint::Single(master),
                address,
            });
        }
        if self.cfg.cluster {
            let seeds = if self.cfg.nodes.is_empty() {
                vec![self.cfg.url.clone()]
            } else {
                self.cfg.nodes.clone()
            };
            let infos = seeds
                .iter()
                .map(|u| self.node_info(u))
                .collect::<RedisResult<Vec<_>>>()?;
            let mut builder = ClusterClient::builder(infos)
                .connection_timeout(self.cfg.connect_timeout)
                .response_timeout(self.cfg.op_timeout)
                .retries(1);
            if let Some(c) = certs {
                builder = builder.certs(c);
            }
            return Ok(Resolved {
                endpoint: Endpoint::Cluster(builder.build()?),
                address: None,
            });
        }
        let info = self.node_info(&self.cfg.url)?;
        let address = address_of(&info);
        Ok(Resolved {
            endpoint: Endpoint::Single(client_for(info, certs)?),
            address,
        })
    }

    /// A plain client for one server, for the L1's pub/sub subscription:
    /// the (resolved) server, or a cluster's first seed node.
    pub async fn pubsub_client(&self) -> RedisResult<Client> {
        match self.resolve().await?.endpoint {
            Endpoint::Single(c) => Ok(c),
            Endpoint::Cluster(_) => {
                let first = self.cfg.nodes.first().unwrap_or(&self.cfg.url);
                client_for(self.node_info(first)?, certificates(&self.cfg.access.tls)?)
            }
        }
    }

    /// One server's connection info from a credential-free URL plus the
    /// configured user, password and TLS choices.
    fn node_info(&self, url: &str) -> RedisResult<ConnectionInfo> {
        let info = url.into_connection_info()?;
        let access = &self.cfg.access;
        // No `CLIENT SETINFO` on connect: the README's ACL rule stays the
        // same for Redis 7.0 (which lacks it) and 7.2+.
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(u) = &access.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &access.password {
            settings = settings.set_password(p.expose());
        }
        let addr = match info.addr().clone() {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: insecure || access.tls.insecure,
                tls_params,
            },
            other => other,
        };
        Ok(info.set_addr(addr).set_redis_settings(settings))
    }

    /// The master the sentinels name, confirmed by its own `ROLE`: every
    /// sentinel is asked at once and the first confirmed answer wins (during
    /// a failover some still name the dead master, which fails its `ROLE`
    /// check). Each lookup is bounded by `connect_timeout + op_timeout`,
    /// waiting for its sentinel's lock included, so no caller (the
    /// reconnect, the L1 listener) waits on a sentinel without end; a
    /// sentinel that timed out is connected afresh next time.
    async fn ask_sentinels(
        &self,
        s: &crate::config::SentinelSettings,
        certs: Option<TlsCertificates>,
    ) -> RedisResult<ConnectionInfo> {
        if self.sentinels.is_empty() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "redis.sentinels lists no sentinel",
            )));
        }
        let bound = self.cfg.connect_timeout + self.cfg.op_timeout;
        let lookups = s.sentinels.iter().zip(&self.sentinels).map(|(url, slot)| {
            let certs = certs.clone();
            Box::pin(async move {
                let looked = tokio::time::timeout(bound, async {
                    let mut guard = slot.lock().await;
                    if guard.is_none() {
                        *guard = Some(self.sentinel_client(url, s, certs)?);
                    }
                    let Some(client) = guard.as_mut() else {
                        return Err(RedisError::from((ErrorKind::Client, "sentinel client missing")));
                    };
                    let found = client.async_get_client().await;
                    if found.is_err() {
                        // A fresh connection next time, whatever state this one is in.
                        *guard = None;
                    }
                    Ok(found?.get_connection_info().clone())
                })
                .await;
                match looked {
                    Ok(r) => {
                        r.map_err(|e| RedisError::from((e.kind(), "sentinel lookup failed", format!("{url}: {e}"))))
                    }
                    // The dropped lookup may have held a half-used
                    // connection: it is rebuilt on the next lookup.
                    Err(_) => {
                        if let Ok(mut g) = slot.try_lock() {
                            *g = None;
                        }
                        Err(RedisError::from((
                            ErrorKind::Io,
                            "sentinel did not answer in time",
                            format!("{url}: no master named within {bound:?} (connect_timeout + op_timeout)"),
                        )))
                    }
                }
            })
        });
        futures::future::select_ok(lookups).await.map(|(found, _)| found)
    }

    /// A client for one sentinel (its URL may carry TLS), which names the
    /// master and builds the master's connection details from `url`.
    fn sentinel_client(
        &self,
        sentinel_url: &str,
        s: &crate::config::SentinelSettings,
        certs: Option<TlsCertificates>,
    ) -> RedisResult<SentinelClient> {
        let addrs = vec![sentinel_url.into_connection_info()?.addr().clone()];
        let sentinels_tls = addrs.iter().all(|a| matches!(a, ConnectionAddr::TcpTls { .. }));
        let insecure = self.cfg.access.tls.insecure;
        let mut b = SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master)?;
        if sentinels_tls {
            b = b.set_client_to_sentinel_tls_mode(if insecure { TlsMode::Insecure } else { TlsMode::Secure });
            if let Some(c) = &certs {
                b = b.set_client_to_sentinel_certificates(c.clone());
            }
        }
        if let Some(u) = &s.username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &s.password {
            b = b.set_client_to_sentinel_password(p.expose());
        }
        // `url` describes the master apart from its address: TLS, database, user.
        let data = self.node_info(&self.cfg.url)?;
        if let ConnectionAddr::TcpTls { insecure, .. } = data.addr() {
            b = b.set_client_to_redis_tls_mode(if *insecure { TlsMode::Insecure } else { TlsMode::Secure });
            if let Some(c) = certs {
                b = b.set_client_to_redis_certificates(c);
            }
        }
        let settings = data.redis_settings();
        b = b.set_client_to_redis_db(settings.db());
        if let Some(u) = settings.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = settings.password() {
            b = b.set_client_to_redis_password(p);
        }
        b.build()
    }
}

fn address_of(info: &ConnectionInfo) -> Option<String> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => Some(format!("{host}:{port}")),
        ConnectionAddr::Unix(path) => Some(path.display().to_string()),
        _ => None,
    }
}

fn client_for(info: ConnectionInfo, certs: Option<TlsCertificates>) -> RedisResult<Client> {
    match certs {
        Some(c) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => Client::build_with_tls(info, c),
        _ => Client::open(info),
    }
}

/// The CA and client certificate from `[redis] tls_*`, or `None` for the
/// system roots and no client certificate.
fn certificates(tls: &TlsFiles) -> RedisResult<Option<TlsCertificates>> {
    let read = |key: &str, p: &std::path::Path| {
        read_pem(p)
            .map(String::into_bytes)
            .map_err(|m| RedisError::from((ErrorKind::InvalidClientConfig, "TLS file", format!("{key}: {m}"))))
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read("redis.tls_ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some(ClientTlsConfig {
            client_cert: read("redis.tls_cert_file", c)?,
            client_key: read("redis.tls_key_file", k)?,
        }),
        _ => None,
    };
    Ok((root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates { client_tls, root_cert }))
}

/// The error's text, with what to check when TLS refused the server or the
/// server refused the credentials: the 3 a.m. reader gets the reason and
/// the setting to look at.
pub(crate) fn explain(e: &RedisError) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("tls") {
        Some(
            "TLS handshake refused: check that redis.tls_ca_file holds the CA that signed the server's certificate, that the URL's host is named in that certificate, and, with --tls-auth-clients, redis.tls_cert_file/tls_key_file",
        )
    } else if e.kind() == ErrorKind::AuthenticationFailed
        || lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("noperm")
    {
        Some(
            "Redis refused the credentials or the command: check the ACL user (redis.username / REDIS_URL user), REDIS_PASSWORD and the ACL rule in the README's Production Redis section",
        )
    } else {
        None
    };
    match hint {
        Some(h) => format!("{text} ({h})"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Flags};
    use std::collections::HashMap;

    fn cfg(file: &str, env: &[(&str, &str)]) -> RedisConfig {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::resolve(&Flags::default(), &env, None, Some(file))
            .unwrap()
            .redis
    }

    #[test]
    fn credentials_reach_the_connection_but_not_the_description() {
        let c = cfg(
            "[redis]\nurl = \"rediss://tickerd@h:6380/3\"\ntls_insecure = true\n",
            &[("REDIS_PASSWORD", "hunter2")],
        );
        let t = RedisTarget::new(&c);
        let info = t.node_info(&c.url).unwrap();
        assert_eq!(info.redis_settings().username(), Some("tickerd"));
        assert_eq!(info.redis_settings().password(), Some("hunter2"));
        assert_eq!(info.redis_settings().db(), 3);
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. }));
        assert_eq!(t.describe(), "rediss://tickerd@h:6380/3");
        assert!(!format!("{info:?}").contains("hunter2"));
        assert_eq!(t.mode(), RedisMode::Standalone);
    }

    #[test]
    fn sentinel_description_names_master_and_sentinels() {
        let c = cfg(
            "[redis]\nsentinels = [\"redis://:spw@s1:26379\", \"redis://s2:26379\"]\nsentinel_master = \"mymaster\"\n",
            &[],
        );
        let t = RedisTarget::new(&c);
        assert_eq!(t.mode(), RedisMode::Sentinel);
        let d = t.describe();
        assert_eq!(d, "sentinel master \"mymaster\" via redis://s1:26379,redis://s2:26379");
        assert_eq!(
            c.access.sentinel.unwrap().password.map(|p| p.expose().to_owned()),
            Some("spw".into())
        );
    }

    #[test]
    fn tls_errors_say_what_to_check() {
        let e = RedisError::from(std::io::Error::other("invalid peer certificate: UnknownIssuer"));
        assert!(explain(&e).contains("redis.tls_ca_file"), "{}", explain(&e));
        let e = RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(explain(&e).contains("REDIS_PASSWORD"), "{}", explain(&e));
    }
}

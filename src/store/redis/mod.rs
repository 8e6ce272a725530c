//! The Redis backend: credentials in a Redis shared by several authority
//! processes, so that a token minted through one replica resolves,
//! renews and is revoked through any other.
//!
//! Every call is one Redis function of `library.lua` (loaded at start with
//! FUNCTION LOAD REPLACE; persisted and replicated with the data), so each
//! check and its change are atomic on the Redis side and Resolve is one
//! round trip. Time is Redis's own `TIME` unless a test clock is given.
//! All calls share one multiplexed, pipelined connection that reconnects
//! by itself ([`ConnectionManager`]): any failure to reach Redis, or a
//! reply we cannot read, is [`Rejection::Unavailable`], never a verdict on
//! a token.
//!
//! This release runs against a standalone Redis (or a primary with
//! replicas and `--redis-min-replicas`); the functions other than Resolve
//! are flagged `no-cluster`, so a Redis Cluster refuses them rather than
//! run them on part of the data.

mod calls;
mod keys;
mod reply;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, RedisError, Value};

use super::types::{Rejection, StoreConfig};
use crate::clock::{Clock, Millis};

/// The server-side half, loaded at start.
const LIBRARY: &str = include_str!("library.lua");

/// Write connections with `--redis-min-replicas` (each blocks in `WAIT`
/// for its write only).
const WRITERS: usize = 4;

/// How many listed credentials one background prune checks at most: one
/// short function call, so Redis is never busy with it for long.
pub(super) const PRUNE_BATCH: u32 = 512;

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URL; may carry a user and password.
    pub url: String,
    /// A password read from a file, overriding the URL's.
    pub password: Option<String>,
    /// Writes wait for this many replicas to acknowledge them (`WAIT`);
    /// fewer within [`RedisOptions::timeout`] is [`Rejection::Unavailable`].
    pub min_replicas: u32,
    /// How long one command may take before the call fails as unavailable.
    pub timeout: Duration,
    /// The CA certificates (PEM) a `rediss://` server must chain to,
    /// instead of the system's roots (a private CA).
    pub tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisOptions {
    /// Names the server, never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("server", &redacted_url(&self.url))
            .field("min_replicas", &self.min_replicas)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The Redis key of the credential whose token has `digest` (for tests of
/// the layout).
#[doc(hidden)]
pub fn credential_key(digest: &crate::token::TokenDigest) -> String {
    keys::credential(digest)
}

/// The URL without its user information or query (which may carry a
/// password), for logs.
pub fn redacted_url(url: &str) -> String {
    // A query may carry `pass=` (redis+unix URLs): none of it is logged.
    let url = url.split('?').next().unwrap_or_default();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Why the Redis backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisOpenError {
    /// The URL does not parse.
    #[error("--redis-url is not a Redis URL: {0}")]
    Url(String),
    /// Redis did not answer.
    #[error("cannot reach Redis at {server}: {reason}")]
    Unreachable {
        /// The server, without credentials.
        server: String,
        /// What failed.
        reason: String,
    },
    /// Redis may evict keys: an evicted generation or tombstone would
    /// revive revoked tokens.
    #[error(
        "Redis at {server} has maxmemory-policy {policy}: an evicted RevokeAll generation or \
         tombstone would revive revoked tokens; set `maxmemory-policy noeviction`"
    )]
    Evicting {
        /// The server, without credentials.
        server: String,
        /// Its policy.
        policy: String,
    },
    /// A Redis Cluster node: this release's functions need one Redis (or a
    /// primary and its replicas).
    #[error(
        "Redis at {server} is a Redis Cluster node: this release runs on a standalone Redis \
         (or a primary with replicas, see --redis-min-replicas); Cluster support is not there yet"
    )]
    Cluster {
        /// The server, without credentials.
        server: String,
    },
    /// The functions could not be loaded.
    #[error("cannot load the credential functions into Redis at {server}: {reason}")]
    Library {
        /// The server, without credentials.
        server: String,
        /// What Redis said.
        reason: String,
    },
}

/// Where the functions take the time from.
#[derive(Clone)]
enum TimeSource {
    /// Redis's own `TIME`: replicas with skewed clocks agree.
    Redis,
    /// A clock of ours (tests drive lifetimes with a fake clock).
    Local(Arc<dyn Clock>),
}

/// The cheap-to-clone handle to the Redis backend.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

/// What every handle shares.
struct Shared {
    connection: ConnectionManager,
    /// With `--redis-min-replicas`, the connections writes go on, each
    /// write and its `WAIT` as one pipeline: a `WAIT` blocks its connection
    /// in Redis, so never the one Resolve uses, and never split from its
    /// write by a reconnection (a `WAIT` on a fresh connection would
    /// acknowledge nothing).
    writers: Vec<ConnectionManager>,
    next_writer: std::sync::atomic::AtomicUsize,
    options: RedisOptions,
    config: StoreConfig,
    time: TimeSource,
    /// For what the service measures beside the store (Mint rates).
    local_clock: Arc<dyn Clock>,
    /// Whether the latest command reached Redis, for the health reporter.
    reachable: AtomicBool,
    /// The latest probe found a `maxmemory-policy` other than `noeviction`
    /// (checked at start, but an operator can change it at any time):
    /// every call is refused until it is set back, since an evicted
    /// generation or tombstone would let a revoked token resolve.
    evicting: AtomicBool,
}

/// What [`RedisStore::probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Redis answers and may not evict keys.
    Up,
    /// Redis did not answer (or refused the probe).
    Unreachable,
    /// Redis answers but its `maxmemory-policy` lets it evict keys; calls
    /// fail UNAVAILABLE until it is `noeviction` again.
    Evicting {
        /// The policy found.
        policy: String,
    },
}

impl RedisStore {
    /// Connects, refuses a Redis that may evict keys, and loads the
    /// functions. `test_clock` replaces Redis's `TIME` (tests only);
    /// `local_clock` is what [`RedisStore::now`] reads.
    pub async fn connect(
        options: RedisOptions,
        config: StoreConfig,
        local_clock: Arc<dyn Clock>,
        test_clock: Option<Arc<dyn Clock>>,
    ) -> Result<RedisStore, RedisOpenError> {
        let server = redacted_url(&options.url);
        let mut info = redis::IntoConnectionInfo::into_connection_info(options.url.as_str())
            .map_err(|e| RedisOpenError::Url(format!("{:?}", e.kind())))?;
        if let Some(password) = &options.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &options.tls_ca {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| RedisOpenError::Url(e.to_string()))?;
        let unreachable = |e: RedisError| RedisOpenError::Unreachable {
            server: server.clone(),
            reason: e.to_string(),
        };
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.timeout))
            .set_connection_timeout(Some(options.timeout))
            .set_number_of_retries(1);
        let mut connection = ConnectionManager::new_with_config(client.clone(), manager.clone())
            .await
            .map_err(unreachable)?;
        let mut writers = Vec::new();
        if options.min_replicas > 0 {
            for _ in 0..WRITERS {
                writers.push(
                    ConnectionManager::new_with_config(client.clone(), manager.clone())
                        .await
                        .map_err(unreachable)?,
                );
            }
        }
        let policy: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut connection)
            .await
            .map_err(unreachable)?;
        let policy = policy.get(1).cloned().unwrap_or_default();
        if policy != "noeviction" {
            return Err(RedisOpenError::Evicting { server, policy });
        }
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut connection)
            .await
            .map_err(unreachable)?;
        if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
            return Err(RedisOpenError::Cluster { server });
        }
        load_library(&mut connection)
            .await
            .map_err(|e| RedisOpenError::Library {
                server: server.clone(),
                reason: e.to_string(),
            })?;
        Ok(RedisStore {
            shared: Arc::new(Shared {
                connection,
                writers,
                next_writer: std::sync::atomic::AtomicUsize::new(0),
                options,
                config,
                time: test_clock.map_or(TimeSource::Redis, TimeSource::Local),
                local_clock,
                reachable: AtomicBool::new(true),
                evicting: AtomicBool::new(false),
            }),
        })
    }

    /// The local clock's reading (see [`super::Backend::now`]).
    pub fn now(&self) -> Millis {
        self.shared.local_clock.now()
    }

    /// Whether the latest command reached Redis.
    pub fn reachable(&self) -> bool {
        self.shared.reachable.load(Ordering::Acquire)
    }

    /// The health reporter's probe, one round trip: whether Redis answers,
    /// and whether its `maxmemory-policy` is still `noeviction` (calls are
    /// refused while it is not; see [`Probe::Evicting`]).
    pub async fn probe(&self) -> Probe {
        let mut connection = self.shared.connection.clone();
        let reply = redis::pipe()
            .cmd("PING")
            .cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<(String, Vec<String>)>(&mut connection)
            .await;
        self.shared
            .reachable
            .store(reply.is_ok(), Ordering::Release);
        let Ok((_, policy)) = reply else {
            return Probe::Unreachable;
        };
        let policy = policy.get(1).cloned().unwrap_or_default();
        let evicting = policy != "noeviction";
        self.shared.evicting.store(evicting, Ordering::Release);
        if evicting {
            Probe::Evicting { policy }
        } else {
            Probe::Up
        }
    }

    /// Refuses every call while the latest probe found Redis free to evict.
    fn refuse_while_evicting(&self) -> Result<(), Rejection> {
        if self.shared.evicting.load(Ordering::Acquire) {
            return Err(Rejection::Unavailable {
                what: "Redis may evict keys: its maxmemory-policy is no longer noeviction",
            });
        }
        Ok(())
    }

    /// Sends one command; a function Redis no longer has (flushed, or a
    /// fresh server after a failover without persistence) is loaded again
    /// and the command retried once: the only second command allowed.
    async fn call(&self, command: Cmd) -> Result<Value, Rejection> {
        self.refuse_while_evicting()?;
        let mut connection = self.shared.connection.clone();
        let first = command.query_async::<Value>(&mut connection).await;
        let result = match first {
            Err(e) if is_missing_function(&e) => {
                load_library(&mut connection)
                    .await
                    .map_err(|e| self.fault(&e))?;
                command.query_async::<Value>(&mut connection).await
            }
            other => other,
        };
        match result {
            Ok(value) => {
                self.shared.reachable.store(true, Ordering::Release);
                Ok(value)
            }
            Err(e) => Err(self.fault(&e)),
        }
    }

    /// Sends a write: as [`RedisStore::call`], and with
    /// `--redis-min-replicas` pipelined with its `WAIT` on a connection of
    /// its own; fewer replicas within `--redis-timeout` is unavailable (the
    /// change may have happened: revocations are safe to repeat).
    pub(super) async fn call_write(&self, command: Cmd) -> Result<Value, Rejection> {
        let wanted = self.shared.options.min_replicas;
        let writers = &self.shared.writers;
        if wanted == 0 || writers.is_empty() {
            return self.call(command).await;
        }
        self.refuse_while_evicting()?;
        let at = self.shared.next_writer.fetch_add(1, Ordering::Relaxed) % writers.len();
        let mut connection = writers[at].clone();
        let mut pipeline = redis::pipe();
        pipeline
            .add_command(command.clone())
            .cmd("WAIT")
            .arg(wanted)
            .arg(self.shared.options.timeout.as_millis() as u64);
        let mut sent = pipeline.query_async::<(Value, i64)>(&mut connection).await;
        if matches!(&sent, Err(e) if is_missing_function(e)) {
            load_library(&mut connection)
                .await
                .map_err(|e| self.fault(&e))?;
            sent = pipeline.query_async::<(Value, i64)>(&mut connection).await;
        }
        let (reply, acknowledged) = sent.map_err(|e| self.fault(&e))?;
        self.shared.reachable.store(true, Ordering::Release);
        if acknowledged < i64::from(wanted) {
            tracing::warn!(
                acknowledged,
                wanted,
                "a write reached fewer Redis replicas than --redis-min-replicas"
            );
            return Err(Rejection::Unavailable {
                what: "too few Redis replicas acknowledged the write",
            });
        }
        Ok(reply)
    }

    /// A failure of ours: logged without any argument (no key, no id),
    /// answered as unavailable.
    fn fault(&self, error: &RedisError) -> Rejection {
        if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
            self.shared.reachable.store(false, Ordering::Release);
        }
        tracing::warn!(kind = ?error.kind(), code = error.code(), "a Redis command failed");
        Rejection::Unavailable {
            what: "the Redis store did not answer",
        }
    }

    /// The time argument of every function: '' for Redis's own `TIME`.
    pub(super) fn time_arg(&self) -> String {
        match &self.shared.time {
            TimeSource::Redis => String::new(),
            TimeSource::Local(clock) => clock.now().to_string(),
        }
    }

    /// The tombstone retention in ms (at least 1), for the TTLs.
    pub(super) fn retention(&self) -> u64 {
        self.shared
            .config
            .tombstone_retention
            .as_millis()
            .clamp(1, u128::from(u64::MAX)) as u64
    }
}

/// `FCALL name numkeys keys...`, to which the arguments are appended.
pub(super) fn fcall(name: &str, keys: &[String]) -> Cmd {
    let mut command = redis::cmd("FCALL");
    command.arg(name).arg(keys.len());
    for key in keys {
        command.arg(key);
    }
    command
}

/// Loads (or replaces) the function library.
async fn load_library(connection: &mut ConnectionManager) -> Result<(), RedisError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async::<Value>(connection)
        .await
        .map(|_| ())
}

/// Whether Redis no longer has our functions (flushed, or a fresh server).
fn is_missing_function(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        && error.to_string().contains("Function not found")
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    /// Catches: a password from the URL's user part or its query reaching
    /// a log line.
    #[test]
    fn redacted_urls_hold_no_password() {
        for url in [
            "redis://:hunter2@127.0.0.1:6379/0",
            "rediss://user:hunter2@redis.example:6380",
            "redis+unix:///run/redis.sock?pass=hunter2&user=u",
        ] {
            let shown = redacted_url(url);
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}

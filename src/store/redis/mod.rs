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

mod keys;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, RedisError, Value};

use super::types::{
    Budget, CredentialRevocation, CredentialView, DeadCredential, Deadlines, DeathReason, Minted,
    NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget, StoreConfig,
    ThreadRevocation, ThreadTouch, Touched,
};
use crate::clock::{Clock, Millis};
use crate::token::{CredentialId, TokenDigest};

/// The server-side half, loaded at start.
const LIBRARY: &str = include_str!("library.lua");

/// How many listed credentials one background prune checks at most: one
/// short function call, so Redis is never busy with it for long.
const PRUNE_BATCH: u32 = 512;

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

/// The URL without its user information, for logs.
pub fn redacted_url(url: &str) -> String {
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
    options: RedisOptions,
    config: StoreConfig,
    time: TimeSource,
    /// For what the service measures beside the store (Mint rates).
    local_clock: Arc<dyn Clock>,
    /// Whether the latest command reached Redis, for the health reporter.
    reachable: AtomicBool,
}

/// A Resolve answer copied out of the reply, which the view borrows.
struct LiveReply {
    credential_id: CredentialId,
    thread_id: String,
    instance_id: String,
    kind: String,
    owner: String,
    created_at: Millis,
    deadlines: Deadlines,
    scopes: Vec<Box<str>>,
    labels: Vec<(Box<str>, Box<str>)>,
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
        let mut connection = ConnectionManager::new_with_config(client, manager)
            .await
            .map_err(unreachable)?;
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
                options,
                config,
                time: test_clock.map_or(TimeSource::Redis, TimeSource::Local),
                local_clock,
                reachable: AtomicBool::new(true),
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

    /// One PING: whether Redis answers now (the health reporter's probe).
    pub async fn ping(&self) -> bool {
        let mut connection = self.shared.connection.clone();
        let ok = redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok();
        self.shared.reachable.store(ok, Ordering::Release);
        ok
    }

    /// Unlists up to a batch of dead credentials (the backend's sweeper);
    /// returns how many it looked at.
    pub async fn prune(&self) -> Result<u64, Rejection> {
        let reply = self
            .call(
                fcall("ca_prune", &[])
                    .arg(self.time_arg())
                    .arg(PRUNE_BATCH)
                    .to_owned(),
            )
            .await?;
        Ok(integer(&reply).unwrap_or(0).max(0) as u64)
    }

    /// See [`super::Store::resolve_with`]: one function call.
    pub async fn resolve_with<T>(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
        answer: impl FnOnce(CredentialView<'_>) -> T,
    ) -> Result<T, Rejection> {
        let reply = self
            .call(
                fcall(
                    "ca_resolve",
                    &[
                        keys::credential(digest),
                        keys::generations(keys::bucket(digest)),
                    ],
                )
                .arg(self.time_arg())
                .arg(required_scope.unwrap_or(""))
                .arg(self.retention())
                .to_owned(),
            )
            .await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "L" => {
                let live = live_reply(parts)?;
                Ok(answer(CredentialView {
                    credential_id: live.credential_id,
                    thread_id: &live.thread_id,
                    provider_instance_id: &live.instance_id,
                    provider_kind: (!live.kind.is_empty()).then_some(live.kind.as_str()),
                    minted_by: &live.owner,
                    created_at: live.created_at,
                    deadlines: live.deadlines,
                    scopes: &live.scopes,
                    labels: &live.labels,
                }))
            }
            "S" => Err(Rejection::ScopeMissing {
                credential_id: id_at(parts, 1)?,
                thread_id: Arc::from(text(parts, 2)?),
                scope: required_scope.unwrap_or("").into(),
            }),
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::mint`]: one function call checks the instance's
    /// owner, the thread's limit, the caller's quota and the budgets, then
    /// replaces and writes in one atomic step.
    pub async fn mint(
        &self,
        digest: TokenDigest,
        new: NewCredential<'_>,
    ) -> Result<Minted, Rejection> {
        let config = &self.shared.config;
        let credential_id = CredentialId::generate_routed(keys::bucket(&digest));
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let clamp = |asked: Option<Duration>, limit: Duration| {
            asked.map_or(millis(limit), |d| millis(d.min(limit)).max(1))
        };
        let scopes = new.scopes.join("\n");
        let labels: String = new
            .labels
            .iter()
            .map(|(k, v)| format!("{k}\t{v}\n"))
            .collect();
        let bytes = new.thread_id.len()
            + new.provider_instance_id.len()
            + new.provider_kind.map_or(0, str::len)
            + new.scopes.iter().map(|s| s.len()).sum::<usize>()
            + new
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let owner_hash = keys::name_digest(new.minted_by);
        let instance_hash = keys::name_digest(new.provider_instance_id);
        let command = fcall(
            "ca_mint",
            &[
                keys::credential(&digest),
                keys::credential_id(&credential_id),
                keys::generations(keys::bucket(&digest)),
                keys::thread(new.thread_id),
                keys::thread_tomb(new.thread_id),
                keys::instance_claims(new.provider_instance_id),
            ],
        )
        .arg(self.time_arg())
        .arg(credential_id.to_string())
        .arg(new.thread_id)
        .arg(new.provider_instance_id)
        .arg(new.provider_kind.unwrap_or(""))
        .arg(new.minted_by)
        .arg(reach_arg(new.reach))
        .arg(clamp(new.idle_timeout, config.idle_timeout))
        .arg(clamp(new.max_lifetime, config.max_lifetime))
        .arg(
            config
                .absolute_lifetime
                .map_or(String::new(), |d| millis(d).to_string()),
        )
        .arg(scopes)
        .arg(labels)
        .arg(bytes)
        .arg(if new.replace_previous { "1" } else { "0" })
        .arg(config.max_credentials_per_thread)
        .arg(new.owner_quota.map_or(String::new(), |q| q.to_string()))
        .arg(config.max_credentials)
        .arg(config.max_credential_bytes)
        .arg(self.retention())
        .arg(owner_hash)
        .arg(instance_hash)
        .arg(if matches!(new.reach, Reach::All) {
            "0"
        } else {
            "1"
        })
        .to_owned();
        let reply = self.call(command).await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "OK" => {
                self.replicated().await?;
                Ok(Minted {
                    credential_id,
                    deadlines: Deadlines {
                        expires_at: number(parts, 2)?,
                        idle_expires_at: number(parts, 3)?,
                    },
                    replaced: number(parts, 4)?,
                })
            }
            "T" => Err(Rejection::ThreadLimit {
                thread_id: Arc::from(new.thread_id),
                limit: number(parts, 1)?,
            }),
            "Q" => Err(Rejection::OwnerQuota {
                owner: Arc::from(new.minted_by),
                limit: number(parts, 1)?,
            }),
            "B" => Err(Rejection::StoreBudget {
                budget: if text(parts, 1)? == "bytes" {
                    Budget::Bytes
                } else {
                    Budget::Credentials
                },
                limit: number(parts, 2)?,
            }),
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::touch_credential`].
    pub async fn touch_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<Touched, Rejection> {
        let reply = self
            .call(
                fcall("ca_touch_credential", &[keys::credential_id(credential_id)])
                    .arg(self.time_arg())
                    .arg(reach_arg(reach))
                    .arg(self.retention())
                    .to_owned(),
            )
            .await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "L" => Ok(Touched {
                credential_id: id_at(parts, 1)?,
                deadlines: Deadlines {
                    expires_at: number(parts, 2)?,
                    idle_expires_at: number(parts, 3)?,
                },
            }),
            _ => Err(refusal(parts, Some(*credential_id))?),
        }
    }

    /// See [`super::Store::touch_thread`].
    pub async fn touch_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadTouch, Rejection> {
        let reply = self.thread_call(thread_id, reach, "touch").await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "L" => {
                let total = number(parts, 1)?;
                let listed = parts.get(2).map(array).transpose()?.unwrap_or(&[]);
                let touched = listed
                    .chunks_exact(3)
                    .map(|one| {
                        Ok(Touched {
                            credential_id: id_at(one, 0)?,
                            deadlines: Deadlines {
                                expires_at: number(one, 1)?,
                                idle_expires_at: number(one, 2)?,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, Rejection>>()?;
                Ok(ThreadTouch { touched, total })
            }
            "D" => {
                let mut dead = dead_reply(parts)?;
                if dead.thread_id.is_empty() {
                    dead.thread_id = Arc::from(thread_id);
                }
                Err(Rejection::Dead(dead))
            }
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::revoke_thread`]: in force on every replica once
    /// this returns.
    pub async fn revoke_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadRevocation, Rejection> {
        let reply = self.thread_call(thread_id, reach, "revoke").await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "R" => {
                self.replicated().await?;
                Ok(ThreadRevocation {
                    revoked: number(parts, 1)?,
                    not_owned: number(parts, 2)?,
                })
            }
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::revoke_credential`].
    pub async fn revoke_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<CredentialRevocation, Rejection> {
        let reply = self
            .call(
                fcall(
                    "ca_revoke_credential",
                    &[keys::credential_id(credential_id)],
                )
                .arg(self.time_arg())
                .arg(reach_arg(reach))
                .arg(self.retention())
                .to_owned(),
            )
            .await?;
        let parts = array(&reply)?;
        let revocation = match tag(parts)? {
            "1" => CredentialRevocation {
                revoked: 1,
                thread_id: Some(Arc::from(text(parts, 1)?)),
                provider_instance_id: Some(Arc::from(text(parts, 2)?)),
            },
            "0" => CredentialRevocation {
                revoked: 0,
                thread_id: Some(Arc::from(text(parts, 1)?)),
                provider_instance_id: None,
            },
            "U" => CredentialRevocation::default(),
            _ => return Err(refusal(parts, Some(*credential_id))?),
        };
        self.replicated().await?;
        Ok(revocation)
    }

    /// See [`super::Store::revoke_all`]: writes every bucket's copy of the
    /// generations in one function call, whatever the number of
    /// credentials. Answers how many listed credentials the scope held (an
    /// upper bound of the live ones it ended).
    pub async fn revoke_all(&self, target: RevokeAllTarget<'_>) -> Result<u64, Rejection> {
        let (kind, owner, instance) = match target {
            RevokeAllTarget::Everything => ("a", String::new(), String::new()),
            RevokeAllTarget::MintedBy(owner) => ("o", keys::name_digest(owner), String::new()),
            RevokeAllTarget::Instance(instance) => {
                ("i", String::new(), keys::name_digest(instance))
            }
            RevokeAllTarget::MintedByForInstance {
                minted_by,
                provider_instance_id,
            } => (
                "p",
                keys::name_digest(minted_by),
                keys::name_digest(provider_instance_id),
            ),
        };
        let mut all_keys = vec![keys::MASTER_GENERATIONS.to_owned()];
        all_keys.extend((0..keys::BUCKETS).map(keys::generations));
        let reply = self
            .call(
                fcall("ca_revoke_all", &all_keys)
                    .arg(self.time_arg())
                    .arg(kind)
                    .arg(owner)
                    .arg(instance)
                    .to_owned(),
            )
            .await?;
        let parts = array(&reply)?;
        let count = integer(parts.first().ok_or_else(unreadable)?).ok_or_else(unreadable)?;
        self.replicated().await?;
        Ok(count.max(0) as u64)
    }

    /// Touch or RevokeThread: one function over the thread's credentials.
    async fn thread_call(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
        mode: &str,
    ) -> Result<Value, Rejection> {
        self.call(
            fcall(
                "ca_thread",
                &[keys::thread(thread_id), keys::thread_tomb(thread_id)],
            )
            .arg(self.time_arg())
            .arg(reach_arg(reach))
            .arg(self.retention())
            .arg(self.shared.config.touch_reply_limit)
            .arg(mode)
            .to_owned(),
        )
        .await
    }

    /// Sends one command; a function Redis no longer has (flushed, or a
    /// fresh server after a failover without persistence) is loaded again
    /// and the command retried once: the only second command allowed.
    async fn call(&self, command: Cmd) -> Result<Value, Rejection> {
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

    /// After a write: waits for `--redis-min-replicas` to have it.
    async fn replicated(&self) -> Result<(), Rejection> {
        let wanted = self.shared.options.min_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let mut connection = self.shared.connection.clone();
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(wanted)
            .arg(self.shared.options.timeout.as_millis() as u64)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.fault(&e))?;
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
        Ok(())
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

    fn time_arg(&self) -> String {
        match &self.shared.time {
            TimeSource::Redis => String::new(),
            TimeSource::Local(clock) => clock.now().to_string(),
        }
    }

    fn retention(&self) -> u64 {
        self.shared
            .config
            .tombstone_retention
            .as_millis()
            .clamp(1, u128::from(u64::MAX)) as u64
    }
}

/// `FCALL name numkeys keys...`, to which the arguments are appended.
fn fcall(name: &str, keys: &[String]) -> Cmd {
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

fn is_missing_function(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        && error.to_string().contains("Function not found")
}

/// The caller a reach is limited to, or '' for every caller.
fn reach_arg<'a>(reach: Reach<'a>) -> &'a str {
    match reach {
        Reach::All => "",
        Reach::MintedBy(owner) => owner,
    }
}

/// A reply we cannot read is our fault, never the token's.
fn unreadable() -> Rejection {
    tracing::error!("the Redis store answered something this version cannot read");
    Rejection::Unavailable {
        what: "the Redis store answered unexpectedly",
    }
}

fn array(value: &Value) -> Result<&[Value], Rejection> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(unreadable()),
    }
}

fn tag(parts: &[Value]) -> Result<&str, Rejection> {
    text(parts, 0)
}

fn text(parts: &[Value], at: usize) -> Result<&str, Rejection> {
    match parts.get(at) {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).map_err(|_| unreadable()),
        Some(Value::SimpleString(text)) => Ok(text),
        _ => Err(unreadable()),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn number(parts: &[Value], at: usize) -> Result<u64, Rejection> {
    parts
        .get(at)
        .and_then(integer)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(unreadable)
}

fn id_at(parts: &[Value], at: usize) -> Result<CredentialId, Rejection> {
    CredentialId::parse(text(parts, at)?).ok_or_else(unreadable)
}

fn live_reply(parts: &[Value]) -> Result<LiveReply, Rejection> {
    let scopes = text(parts, 9)?
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(Box::from)
        .collect();
    let labels = text(parts, 10)?
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (k, v) = line.split_once('\t').ok_or_else(unreadable)?;
            Ok((Box::from(k), Box::from(v)))
        })
        .collect::<Result<_, Rejection>>()?;
    Ok(LiveReply {
        credential_id: id_at(parts, 1)?,
        thread_id: text(parts, 2)?.to_owned(),
        instance_id: text(parts, 3)?.to_owned(),
        kind: text(parts, 4)?.to_owned(),
        owner: text(parts, 5)?.to_owned(),
        created_at: number(parts, 6)?,
        deadlines: Deadlines {
            expires_at: number(parts, 7)?,
            idle_expires_at: number(parts, 8)?,
        },
        scopes,
        labels,
    })
}

fn reason(name: &str) -> Result<DeathReason, Rejection> {
    Ok(match name {
        "idle" => DeathReason::IdleTimeout,
        "expired" => DeathReason::Expired,
        "credential" => DeathReason::Revoked(RevocationCause::Credential),
        "thread" => DeathReason::Revoked(RevocationCause::Thread),
        "replaced" => DeathReason::Revoked(RevocationCause::Replaced),
        "all" => DeathReason::Revoked(RevocationCause::All),
        "caller" => DeathReason::Revoked(RevocationCause::Caller),
        "provider_instance" => DeathReason::Revoked(RevocationCause::ProviderInstance),
        _ => return Err(unreadable()),
    })
}

fn dead_reply(parts: &[Value]) -> Result<DeadCredential, Rejection> {
    Ok(DeadCredential {
        reason: reason(text(parts, 1)?)?,
        credential_id: id_at(parts, 2)?,
        thread_id: Arc::from(text(parts, 3)?),
        minted_by: Arc::from(text(parts, 4)?),
    })
}

/// The refusals every function shares: unknown, dead, not owned.
fn refusal(parts: &[Value], named: Option<CredentialId>) -> Result<Rejection, Rejection> {
    match tag(parts)? {
        "U" => Ok(Rejection::Unknown),
        "D" => Ok(Rejection::Dead(dead_reply(parts)?)),
        "N" => Ok(Rejection::NotOwned {
            credential_id: named,
        }),
        "E" => {
            tracing::error!("a Redis function refused its input");
            Ok(Rejection::Unavailable {
                what: "the Redis store refused the change",
            })
        }
        _ => Err(unreadable()),
    }
}

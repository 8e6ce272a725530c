//! The command line: every flag has a matching environment variable, and
//! durations are written the human way (`30m`, `30d`). Also the exposure
//! rules that refuse a configuration that would let keys or tokens cross a
//! network in clear, or let anyone in, by accident.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::{AuditConfig, AuditFailureMode, AuditSink};
use crate::auth::cli::CallersArgs;
use crate::guard::GuardConfig;
use crate::server::Storage;
use crate::store::journal::TruncateAt;
use crate::store::redis::RedisOptions;
use crate::store::{DurableOptions, StoreConfig};
use crate::transport::http2::Http2Config;
use crate::transport::{ListenAddr, TlsFiles, TransportConfig};

/// `--handshake-timeout` when neither it nor its old name is given.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// h2's send buffer per stream: one frame. A response waiting for a
/// client's window stays in its own body, not copied into h2 as well.
const SEND_BUFFER_BYTES: usize = 16 * 1024;

/// Streams a client reset before the server accepted them, at once, before
/// a GOAWAY: h2's default, the rapid-reset (CVE-2023-44487) guard.
const PENDING_ACCEPT_RESETS: usize = 20;

/// Streams the server reset for a client's errors (refused over the stream
/// limit, malformed) on one connection before a GOAWAY ENHANCE_YOUR_CALM:
/// a quarter of h2's 1024, still far above what a sane client causes.
const LOCAL_ERROR_RESETS: usize = 256;

/// Health/Check calls in flight; their own pool, so health answers while
/// the calls' pool is full.
const HEALTH_CHECKS_IN_FLIGHT: usize = 256;

/// Health/Watch streams open; their own pool, so watchers cannot starve
/// Health/Check.
const HEALTH_WATCHES_OPEN: usize = 256;

/// The credential authority: mints, resolves and revokes the bearer
/// credentials of AI coding-agent sessions.
#[derive(Debug, Parser)]
#[command(name = "credential-authority", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (on the durable embedded store by default).
    Serve(Box<ServeArgs>),
    /// Manage the callers file: who may call, with which roles and keys.
    Callers(CallersArgs),
    /// Restore a backup of a data directory into an empty one, revoking
    /// every credential it holds (a backup knows nothing of revocations
    /// made after it was taken).
    Restore(RestoreArgs),
}

/// `credential-authority restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backup: a copy of a data directory's files.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into; must be empty or missing.
    /// Default: `store` in the state directory.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The state directory whose `store` is the default data directory.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The server's settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to listen: `HOST:PORT` (port 0 picks a free port; the chosen
    /// address is logged) or `unix:/ABSOLUTE/PATH` for a Unix socket, which
    /// is bound inside a directory only this user can enter. Repeat the flag
    /// (or separate with commas) to listen on several.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_LISTEN",
        default_value = "127.0.0.1:50051",
        value_delimiter = ','
    )]
    pub listen: Vec<ListenAddr>,

    /// The callers file (TOML: names, roles, key digests). Re-read on
    /// SIGHUP. Default: `callers.toml` in the state directory, created on
    /// first start with an admin key beside it.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_CALLERS")]
    pub callers: Option<PathBuf>,

    /// The state directory (mode 0700): the default callers file and the
    /// first start's admin key. Default `$XDG_STATE_HOME/credential-authority`,
    /// else `~/.local/state/credential-authority`.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Let every call in as an admin, without keys. For experiments only:
    /// refused unless every listener is loopback or a Unix socket, and
    /// warned about at every start.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_INSECURE_NO_CALLER_AUTH")]
    pub insecure_no_caller_auth: bool,

    /// Serve a non-loopback TCP listener without TLS (for a mesh sidecar that
    /// terminates TLS in front of it). Refused otherwise, so keys never cross
    /// a network in clear by accident.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,

    /// PEM certificate chain for TLS on the TCP listeners (ALPN h2).
    /// Re-read on SIGHUP.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates for client certificates (mutual TLS). A client
    /// may still connect without one and use a key; a certificate it shows
    /// must chain to these, and names a caller only through a URI or DNS SAN
    /// that the callers file lists.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// How long a new connection may take from accept to its first HTTP/2
    /// SETTINGS frame: the TLS handshake, the client preface and SETTINGS
    /// under one deadline. Default 10s. `--tls-handshake-timeout` (and
    /// CREDENTIAL_AUTHORITY_TLS_HANDSHAKE_TIMEOUT) still work.
    #[arg(long, alias = "tls-handshake-timeout", env = "CREDENTIAL_AUTHORITY_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,

    /// The old environment variable of `--handshake-timeout`, kept working.
    #[arg(long = "legacy-tls-handshake-timeout", hide = true, env = "CREDENTIAL_AUTHORITY_TLS_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    pub legacy_tls_handshake_timeout: Option<Duration>,

    /// How many connections may be open at once, over all listeners,
    /// TLS handshakes included; more are closed at accept.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// HTTP/2 streams one connection may have open; more are refused with
    /// REFUSED_STREAM.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_MAX_CONCURRENT_STREAMS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// HTTP/2 stream flow-control window: what a client may send on one
    /// stream before the server reads it.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_STREAM_WINDOW_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub stream_window_bytes: u32,

    /// HTTP/2 connection flow-control window: what a client may send on
    /// all its streams together before the server reads it.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_CONNECTION_WINDOW_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub connection_window_bytes: u32,

    /// The largest gRPC message, request or response; a larger request
    /// fails RESOURCE_EXHAUSTED REQUEST_TOO_LARGE (part=message).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_MAX_MESSAGE_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_bytes: u32,

    /// The largest request metadata (header list, counted as HTTP/2 does:
    /// name + value + 32 per entry); larger fails RESOURCE_EXHAUSTED
    /// REQUEST_TOO_LARGE (part=metadata). HTTP/2 itself refuses twice this.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_MAX_HEADER_LIST_BYTES", default_value_t = 8_192, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub max_header_list_bytes: u32,

    /// How often a connection is PINGed to find a dead peer.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a keepalive PING may go unanswered before the connection
    /// is closed.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// How long a connection may have no call in flight before the server
    /// closes it with a GOAWAY (clients reconnect transparently).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_IDLE_CONNECTION_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_connection_timeout: Duration,

    /// The server's deadline for every call (Health/Watch apart); a
    /// client's sooner grpc-timeout wins. Past it the call fails
    /// DEADLINE_EXCEEDED REQUEST_DEADLINE_EXCEEDED.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Calls in flight over all connections (health apart); when full, new
    /// calls fail at once with UNAVAILABLE SERVICE_UNAVAILABLE and
    /// RetryInfo.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_MAX_IN_FLIGHT", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Only these user ids may connect to the Unix socket (checked with
    /// SO_PEERCRED, in addition to keys). Comma-separated.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_UNIX_ALLOWED_UIDS",
        value_delimiter = ','
    )]
    pub unix_allowed_uids: Option<Vec<u32>>,

    /// Turn server reflection off (it describes the contract to generic
    /// clients such as grpcurl; it is open to anyone, like health).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_DISABLE_REFLECTION")]
    pub disable_reflection: bool,

    /// Where the audit trail goes: a file path (reopened on SIGHUP, for log
    /// rotation), or `-` for standard output.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_AUDIT_LOG", default_value = "-")]
    pub audit_log: AuditSink,

    /// What a failed audit write does: `closed` fails the call with
    /// UNAVAILABLE (a revocation stays in force), `open` lets it go on and
    /// counts the lost line.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_AUDIT_FAILURE", value_enum, default_value_t = AuditFailureMode::Closed)]
    pub audit_failure: AuditFailureMode,

    /// Audit lines per second for denied calls from one peer (address or
    /// uid); more are counted and reported as `suppressed`.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_AUDIT_DENIALS_PER_SECOND",
        default_value_t = 10
    )]
    pub audit_denials_per_second: u32,

    /// Burst of denial lines one peer may write before the rate applies.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_AUDIT_DENIAL_BURST",
        default_value_t = 50
    )]
    pub audit_denial_burst: u32,

    /// Audit lines per second for denied calls from all peers together: the
    /// backstop that bounds the trail however many addresses a flood comes
    /// from. Lines beyond it are counted as `suppressed_total`.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_AUDIT_DENIALS_TOTAL_PER_SECOND",
        default_value_t = 100
    )]
    pub audit_denials_total_per_second: u32,

    /// Burst of denial lines all peers together may write.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_AUDIT_DENIAL_TOTAL_BURST",
        default_value_t = 500
    )]
    pub audit_denial_total_burst: u32,

    /// How long a credential may go unused before it dies; also the upper
    /// bound of Mint's per-credential override.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How far each use pushes a credential's expiry ahead, and so how long an
    /// unused credential lives at most; also the upper bound of Mint's
    /// per-credential override.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_MAX_LIFETIME", default_value = "30d", value_parser = parse_duration)]
    pub max_lifetime: Duration,

    /// A hard limit from mint time that renewal never passes. Off unless set.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_ABSOLUTE_LIFETIME", value_parser = parse_duration)]
    pub absolute_lifetime: Option<Duration>,

    /// How long a dead credential is remembered, so Resolve can say why it
    /// died instead of TOKEN_UNKNOWN.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_TOMBSTONE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub tombstone_retention: Duration,

    /// How many dead credentials are remembered at most (0 disables
    /// tombstones); the oldest are forgotten first.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_TOMBSTONE_CAPACITY",
        default_value_t = 1_000_000
    )]
    pub tombstone_capacity: usize,

    /// How many live credentials one thread may hold; a Mint beyond it fails
    /// THREAD_CREDENTIAL_LIMIT unless its `replace_previous` frees the room.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_MAX_CREDENTIALS_PER_THREAD",
        default_value_t = 1_000
    )]
    pub max_credentials_per_thread: u64,

    /// How many live credentials the authority holds at most; a Mint beyond
    /// it fails CREDENTIAL_LIMIT.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_MAX_CREDENTIALS",
        default_value_t = 10_000_000
    )]
    pub max_credentials: u64,

    /// How many bytes the ids, scopes and labels of all live credentials may
    /// take together; a Mint beyond it fails CREDENTIAL_LIMIT.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_MAX_CREDENTIAL_BYTES",
        default_value_t = 4 << 30
    )]
    pub max_credential_bytes: u64,

    /// How many renewed credentials Touch by thread lists at most (it renews
    /// them all and reports how many in `total`).
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_TOUCH_REPLY_LIMIT",
        default_value_t = 1_000
    )]
    pub touch_reply_limit: usize,

    /// Where credentials live: `embedded` (in memory, made durable by a
    /// journal in --data-dir: a restart keeps every credential) or `memory`
    /// (nothing survives a restart; for experiments).
    #[arg(long = "store", env = "CREDENTIAL_AUTHORITY_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store_kind: StoreKind,

    /// The embedded store's data directory (journal and snapshots), locked
    /// by one process at a time. Default: `store` in the state directory.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The Redis server of `--store redis`: `redis://[user:password@]host:port[/db]`,
    /// or `rediss://` for TLS. Never logged with its password.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// A file holding the Redis password (one line), instead of a password in
    /// the URL, where it would show in the process list.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// CA certificates (PEM) the `rediss://` server must chain to, instead
    /// of the system's roots.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,

    /// Every Mint and revocation waits (WAIT) for this many Redis replicas
    /// to have it; fewer within --redis-timeout fails UNAVAILABLE.
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_REDIS_MIN_REPLICAS",
        default_value_t = 0
    )]
    pub redis_min_replicas: u32,

    /// How long one Redis command may take before the call fails
    /// UNAVAILABLE (with RetryInfo).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How often the latest uses of credentials are written: after a crash
    /// a credential's deadlines are at most this much earlier than they
    /// were (a clean stop loses nothing).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_RENEWAL_CHECKPOINT", default_value = "1s", value_parser = parse_duration)]
    pub renewal_checkpoint: Duration,

    /// Under load, how long a journal write may wait for more Mints and
    /// revocations to share its fdatasync, while they keep arriving (0s:
    /// never, at most 1s). Only after a batch of 16 or more: a lone
    /// caller's write, or a handful's, never waits.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_JOURNAL_COMMIT_DELAY", default_value = "2ms", value_parser = parse_delay)]
    pub journal_commit_delay: Duration,

    /// Start after cutting a damaged journal at FILE:OFFSET, as the refusal
    /// to start names it: what follows is lost.
    #[arg(
        long = "truncate-journal-at",
        env = "CREDENTIAL_AUTHORITY_TRUNCATE_JOURNAL_AT"
    )]
    pub truncate_journal_at: Option<TruncateAt>,

    /// How long in-flight calls may run after SIGTERM or SIGINT before the
    /// server exits anyway.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log line format. The level is set with RUST_LOG (default `info`).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where credentials live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// In memory, with a journal on disk: survives restarts and crashes.
    Embedded,
    /// In memory only: every credential is lost at a restart.
    Memory,
    /// In a Redis shared by several authority processes (--redis-url).
    Redis,
}

/// A configuration the server refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    /// A non-loopback TCP listener without TLS.
    #[error(
        "refusing to listen on {0} without TLS: caller keys and tokens would cross the \
         network in clear; give --tls-cert and --tls-key, or --allow-plaintext if a \
         sidecar terminates TLS in front of this server"
    )]
    Plaintext(ListenAddr),
    /// `--insecure-no-caller-auth` with a listener others can reach.
    #[error(
        "refusing --insecure-no-caller-auth on {0}: without caller keys anyone who \
         reaches the listener is an admin; use it on loopback or a Unix socket only"
    )]
    InsecureExposed(ListenAddr),
    /// `--insecure-no-caller-auth` with a callers file.
    #[error("--insecure-no-caller-auth and --callers contradict each other; choose one")]
    InsecureWithCallers,
}

impl ServeArgs {
    /// The store's part of the settings.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
            absolute_lifetime: self.absolute_lifetime,
            tombstone_retention: self.tombstone_retention,
            tombstone_capacity: self.tombstone_capacity,
            max_credentials_per_thread: self.max_credentials_per_thread,
            max_credentials: self.max_credentials,
            max_credential_bytes: self.max_credential_bytes,
            touch_reply_limit: self.touch_reply_limit,
        }
    }

    /// Where the store keeps its data: `state_dir` is the state directory
    /// in force, whose `store` subdirectory is the default data directory.
    pub fn storage(&self, state_dir: &std::path::Path) -> Result<Storage, std::io::Error> {
        Ok(match self.store_kind {
            StoreKind::Memory => Storage::Memory,
            StoreKind::Redis => Storage::Redis(RedisOptions {
                url: self.redis_url.clone(),
                password: self
                    .redis_password_file
                    .as_ref()
                    .map(|path| {
                        std::fs::read_to_string(path).map(|text| text.trim_end().to_owned())
                    })
                    .transpose()?,
                min_replicas: self.redis_min_replicas,
                timeout: self.redis_timeout,
                tls_ca: self.redis_tls_ca.as_ref().map(std::fs::read).transpose()?,
            }),
            StoreKind::Embedded => {
                let dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| state_dir.join("store"));
                let mut options = DurableOptions::new(dir);
                options.renewal_checkpoint = self.renewal_checkpoint;
                options.journal = options.journal.commit_delay(self.journal_commit_delay);
                Storage::Durable(options.truncate_at(self.truncate_journal_at.clone()))
            }
        })
    }

    /// The listeners' part of the settings.
    pub fn transport_config(&self) -> TransportConfig {
        TransportConfig {
            listen: self.listen.clone(),
            tls: self.tls_cert.clone().zip(self.tls_key.clone()).map(
                |(cert_chain, private_key)| TlsFiles {
                    cert_chain,
                    private_key,
                    client_ca: self.tls_client_ca.clone(),
                },
            ),
            handshake_timeout: self.handshake_timeout(),
            max_connections: self.max_connections as usize,
            unix_allowed_uids: self.unix_allowed_uids.clone(),
        }
    }

    /// `--handshake-timeout`, or its old environment variable, or 10s.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
            .or(self.legacy_tls_handshake_timeout)
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// The HTTP/2 part of the settings. h2's own header list limit is twice
    /// the application's, so that the band between them gets a gRPC status
    /// and only a header block past it gets h2's 431.
    pub fn http2_config(&self) -> Http2Config {
        Http2Config {
            max_concurrent_streams: self.max_concurrent_streams,
            stream_window_bytes: self.stream_window_bytes,
            connection_window_bytes: self.connection_window_bytes,
            max_header_list_bytes: self.max_header_list_bytes.saturating_mul(2),
            max_send_buf_bytes: SEND_BUFFER_BYTES,
            max_pending_accept_reset_streams: PENDING_ACCEPT_RESETS,
            max_local_error_reset_streams: LOCAL_ERROR_RESETS,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            idle_timeout: self.idle_connection_timeout,
            idle_drain: self.shutdown_grace,
        }
    }

    /// The per-call limits.
    pub fn guard_config(&self) -> GuardConfig {
        GuardConfig {
            max_header_list_bytes: self.max_header_list_bytes as usize,
            max_message_bytes: self.max_message_bytes as usize,
            request_timeout: self.request_timeout,
            max_in_flight: self.max_in_flight as usize,
            max_health_checks: HEALTH_CHECKS_IN_FLIGHT,
            max_health_watches: HEALTH_WATCHES_OPEN,
        }
    }

    /// The audit trail's part of the settings.
    pub fn audit_config(&self) -> AuditConfig {
        AuditConfig {
            sink: self.audit_log.clone(),
            failure: self.audit_failure,
            denials_per_second: self.audit_denials_per_second,
            denial_burst: self.audit_denial_burst,
            total_denials_per_second: self.audit_denials_total_per_second,
            total_denial_burst: self.audit_denial_total_burst,
        }
    }

    /// Refuses listeners that would expose keys in clear, or an
    /// unauthenticated server, beyond this host.
    pub fn check_exposure(&self) -> Result<(), ExposureError> {
        let tls = self.tls_cert.is_some();
        for addr in &self.listen {
            if self.insecure_no_caller_auth && !addr.is_local() {
                return Err(ExposureError::InsecureExposed(addr.clone()));
            }
            if matches!(addr, ListenAddr::Tcp(_))
                && !addr.is_local()
                && !tls
                && !self.allow_plaintext
            {
                return Err(ExposureError::Plaintext(addr.clone()));
            }
        }
        if self.insecure_no_caller_auth && self.callers.is_some() {
            return Err(ExposureError::InsecureWithCallers);
        }
        Ok(())
    }
}

/// A positive duration of at least 1 ms, in humantime's syntax.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write durations like 90s, 30m, 12h or 30d)"))?;
    if duration < Duration::from_millis(1) {
        return Err("must be at least 1ms".to_owned());
    }
    Ok(duration)
}

/// A short delay: a duration as [`parse_duration`] reads it, `0s` for
/// none, at most one second (a write never waits longer for company).
fn parse_delay(text: &str) -> Result<Duration, String> {
    let delay = match humantime::parse_duration(text) {
        Ok(Duration::ZERO) => Duration::ZERO,
        _ => parse_duration(text)?,
    };
    if delay > Duration::from_secs(1) {
        return Err("must be at most 1s".to_owned());
    }
    Ok(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a commit delay that cannot be turned off (`0s` refused) or
    /// that takes any length (a huge one overflowed the writer's deadline).
    #[test]
    fn the_commit_delay_is_zero_or_short() {
        assert_eq!(parse_delay("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_delay("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_delay("2s").is_err());
        assert!(parse_delay("300000000000years").is_err());
        assert!(
            parse_delay("500us").is_err(),
            "below 1ms, as every duration flag"
        );
    }

    #[test]
    fn defaults_match_the_reference_registry() {
        let cli = Cli::try_parse_from(["credential-authority", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.listen.len(), 1);
        assert_eq!(args.listen[0].to_string(), "127.0.0.1:50051");
        assert!(!args.insecure_no_caller_auth && !args.allow_plaintext);
        assert_eq!(args.audit_failure, AuditFailureMode::Closed);
        assert!(args.check_exposure().is_ok());
        assert_eq!(args.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(args.max_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(args.absolute_lifetime, None);
        assert_eq!(args.tombstone_retention, Duration::from_secs(86_400));
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.handshake_timeout(), Duration::from_secs(10));
        let wire = args.http2_config();
        assert_eq!(wire.max_concurrent_streams, 64);
        assert_eq!(wire.stream_window_bytes, 65_536);
        assert_eq!(wire.connection_window_bytes, 65_536);
        assert_eq!(wire.max_header_list_bytes, 16_384);
        assert_eq!(wire.idle_timeout, Duration::from_secs(300));
        let guard = args.guard_config();
        assert_eq!(guard.max_header_list_bytes, 8_192);
        assert_eq!(guard.max_message_bytes, 65_536);
        assert_eq!(guard.max_in_flight, 4_096);
        assert_eq!(guard.request_timeout, Duration::from_secs(10));
        assert_eq!(args.transport_config().max_connections, 1024);
    }

    /// Catches: the old flag name dropped, so existing deployments fail to
    /// start or silently lose their timeout.
    #[test]
    fn the_old_handshake_flag_still_works() {
        let old = serve(&["--tls-handshake-timeout", "3s"]);
        assert_eq!(old.handshake_timeout(), Duration::from_secs(3));
        let new = serve(&["--handshake-timeout", "4s"]);
        assert_eq!(
            new.transport_config().handshake_timeout,
            Duration::from_secs(4)
        );
    }

    #[test]
    fn durations_are_human_and_positive() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    fn serve(flags: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(
            ["credential-authority", "serve"]
                .iter()
                .chain(flags)
                .copied(),
        )
        .unwrap();
        match cli.command {
            Command::Serve(args) => *args,
            Command::Callers(_) | Command::Restore(_) => unreachable!(),
        }
    }

    #[test]
    fn exposure_beyond_loopback_needs_tls_and_keys() {
        let public = serve(&["--listen", "0.0.0.0:50051"]);
        assert!(matches!(
            public.check_exposure(),
            Err(ExposureError::Plaintext(_))
        ));
        assert!(serve(&["--listen", "0.0.0.0:1", "--allow-plaintext"])
            .check_exposure()
            .is_ok());
        assert!(serve(&[
            "--listen",
            "0.0.0.0:1",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .check_exposure()
        .is_ok());
        assert!(serve(&["--listen", "[::1]:1,unix:/run/x/sock"])
            .check_exposure()
            .is_ok());
        assert!(matches!(
            serve(&[
                "--listen",
                "0.0.0.0:1",
                "--allow-plaintext",
                "--insecure-no-caller-auth"
            ])
            .check_exposure(),
            Err(ExposureError::InsecureExposed(_))
        ));
        assert!(serve(&[
            "--insecure-no-caller-auth",
            "--listen",
            "127.0.0.1:0,unix:/r/s"
        ])
        .check_exposure()
        .is_ok());
        assert!(matches!(
            serve(&["--insecure-no-caller-auth", "--callers", "c.toml"]).check_exposure(),
            Err(ExposureError::InsecureWithCallers)
        ));
        // A TLS key without its certificate is refused by the parser.
        assert!(Cli::try_parse_from(["credential-authority", "serve", "--tls-key", "k"]).is_err());
    }
}

//! The command line: every flag has a matching environment variable, and
//! durations are written the human way (`30m`, `30d`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::StoreConfig;

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
    /// Run the gRPC server on the embedded in-memory store.
    Serve(ServeArgs),
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
    /// Address to listen on (port 0 picks a free port; the chosen address is
    /// logged).
    #[arg(
        long,
        env = "CREDENTIAL_AUTHORITY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

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

    /// How long in-flight calls may run after SIGTERM or SIGINT before the
    /// server exits anyway.
    #[arg(long, env = "CREDENTIAL_AUTHORITY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log line format. The level is set with RUST_LOG (default `info`).
    #[arg(long, env = "CREDENTIAL_AUTHORITY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_registry() {
        let cli = Cli::try_parse_from(["credential-authority", "serve"]).unwrap();
        let Command::Serve(args) = cli.command;
        assert_eq!(args.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(args.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(args.max_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(args.absolute_lifetime, None);
        assert_eq!(args.tombstone_retention, Duration::from_secs(86_400));
        assert_eq!(args.log_format, LogFormat::Text);
    }

    #[test]
    fn durations_are_human_and_positive() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5m").is_err());
    }
}

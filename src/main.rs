//! The `credential-authority` binary: parses the command line, sets up
//! logging, binds the listener and hands over to [`server::run`].

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use credential_authority::clock::SystemClock;
use credential_authority::config::{Cli, Command};
use credential_authority::{server, telemetry};

/// See [`credential_authority::allocator`].
#[global_allocator]
static GLOBAL: credential_authority::allocator::Allocator =
    credential_authority::allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        command: Command::Serve(args),
    } = Cli::parse();
    let _log_flush = telemetry::init(args.log_format);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        idle_timeout = %humantime::format_duration(args.idle_timeout),
        max_lifetime = %humantime::format_duration(args.max_lifetime),
        absolute_lifetime = %args.absolute_lifetime.map_or("off".into(), |d| humantime::format_duration(d).to_string()),
        "listening"
    );
    let settings = server::ServerSettings {
        store: args.store_config(),
        shutdown_grace: args.shutdown_grace,
    };
    server::run(
        listener,
        settings,
        Arc::new(SystemClock::new()),
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("cannot install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("cannot install SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}

//! The `credential-authority` binary: parses the command line, sets up
//! logging, binds the listeners and hands over to [`server::run`]; or runs
//! a `callers` command.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use credential_authority::clock::SystemClock;
use credential_authority::config::{Cli, Command, RestoreArgs, ServeArgs, StoreKind};
use credential_authority::server::{Callers, ServerSettings};
use credential_authority::transport::Transport;
use credential_authority::{auth, server, state_dir, store, telemetry};
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::{wrappers::SignalStream, Stream, StreamExt as _};

/// See [`credential_authority::allocator`].
#[global_allocator]
static GLOBAL: credential_authority::allocator::Allocator =
    credential_authority::allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Callers(args) => Ok(auth::cli::run(&args, &mut std::io::stdout().lock())?),
        Command::Restore(args) => restore(&args),
    }
}

/// `credential-authority restore`.
fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let data_dir = match (&args.data_dir, &args.state_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(state)) => state.join("store"),
        (None, None) => state_dir::default_state_dir()?.join("store"),
    };
    let restored = store::restore_backup(
        &args.from,
        store::StoreConfig::default(),
        Arc::new(SystemClock::new()),
        store::DurableOptions::new(&data_dir),
    )?;
    println!(
        "restored {} files into {}; revoked the {} credentials that were live in the backup \
         (agents get TOKEN_REVOKED, cause all, and mint again)",
        restored.files,
        data_dir.display(),
        restored.revoked
    );
    Ok(())
}

/// `credential-authority serve`.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _log_flush = telemetry::init(args.log_format);
    args.check_exposure()?;
    let callers = if args.insecure_no_caller_auth {
        Callers::Insecure
    } else {
        Callers::File(callers_file(&args)?)
    };
    let transport = Transport::bind(args.transport_config())
        .await
        .context("cannot listen")?;
    tracing::info!(
        idle_timeout = %humantime::format_duration(args.idle_timeout),
        max_lifetime = %humantime::format_duration(args.max_lifetime),
        absolute_lifetime = %args.absolute_lifetime.map_or("off".into(), |d| humantime::format_duration(d).to_string()),
        "lifetimes"
    );
    let (wire, guard) = (args.http2_config(), args.guard_config());
    tracing::info!(
        max_connections = args.max_connections,
        handshake_timeout = %humantime::format_duration(args.handshake_timeout()),
        max_concurrent_streams = wire.max_concurrent_streams,
        max_in_flight = guard.max_in_flight,
        max_message_bytes = guard.max_message_bytes,
        max_header_list_bytes = guard.max_header_list_bytes,
        request_timeout = %humantime::format_duration(guard.request_timeout),
        idle_connection_timeout = %humantime::format_duration(wire.idle_timeout),
        "wire limits"
    );
    for bound in transport.bound() {
        tracing::info!(
            addr = %bound.addr,
            tls = bound.tls,
            client_certificates = bound.client_certificates,
            "listening"
        );
    }
    let state_dir = match (&args.data_dir, &args.state_dir) {
        (None, None) if args.store_kind == StoreKind::Embedded => state_dir::default_state_dir()?,
        (_, Some(dir)) => dir.clone(),
        // Not needed: the data directory is given, or nothing is stored.
        _ => PathBuf::new(),
    };
    let settings = ServerSettings {
        store: args.store_config(),
        storage: args.storage(&state_dir).with_context(|| {
            let files: Vec<String> = [&args.redis_password_file, &args.redis_tls_ca]
                .into_iter()
                .flatten()
                .map(|path| path.display().to_string())
                .collect();
            format!("cannot read {}", files.join(" or "))
        })?,
        shutdown_grace: args.shutdown_grace,
        callers,
        audit: args.audit_config(),
        reflection: !args.disable_reflection,
        http2: args.http2_config(),
        guard: args.guard_config(),
    };
    server::run(
        transport,
        settings,
        Arc::new(SystemClock::new()),
        shutdown_signal(),
        reload_signals()?,
    )
    .await?;
    Ok(())
}

/// The callers file: `--callers`, or the state directory's, created with an
/// admin key on first start.
fn callers_file(args: &ServeArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.callers {
        return Ok(path.clone());
    }
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => state_dir::default_state_dir()?,
    };
    let bootstrap = state_dir::bootstrap(&dir)?;
    if let Some(key) = &bootstrap.admin_key_path {
        // The path only: the key itself is never logged.
        tracing::info!(
            path = %key.display(),
            "first start: wrote an admin caller key; read it with `export CA_KEY=$(cat {})`",
            key.display()
        );
    }
    Ok(bootstrap.callers_path)
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("cannot install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("cannot install SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}

/// One item per SIGHUP.
fn reload_signals() -> anyhow::Result<impl Stream<Item = ()> + Send + Unpin + 'static> {
    let hangups = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    Ok(SignalStream::new(hangups).map(|()| tracing::info!(signal = "SIGHUP", "reloading")))
}

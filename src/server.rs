//! Server wiring, shared alike by `main` and the tests: the authority, health
//! and reflection services on the bound listeners, with reload on SIGHUP and
//! graceful shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt as _};
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;

use crate::audit::{AuditConfig, AuditError, AuditLog};
use crate::auth::file::CallersFileError;
use crate::auth::{file, Authenticator, CallerSet};
use crate::clock::Clock;
use crate::guard::{GuardConfig, GuardLayer};
use crate::pb;
use crate::pb::credential_authority_server::CredentialAuthorityServer;
use crate::request_id::RequestIdLayer;
use crate::service::AuthorityService;
use crate::store::journal::{HealthCallback, HealthEvent};
use crate::store::redis::{redacted_url, Probe, RedisOpenError, RedisOptions, RedisStore};
use crate::store::{Backend, DurableOptions, OpenError, Store, StoreConfig};
use crate::transport::http2::{self, Http2Config};
use crate::transport::{PeerInfo, TlsReloader, Transport};

/// The fully qualified name of the authority service, as health reports it.
pub const SERVICE_NAME: &str = "credential_authority.v1.CredentialAuthority";

/// Who may call.
#[derive(Debug, Clone)]
pub enum Callers {
    /// The callers of this file, re-read on every reload.
    File(PathBuf),
    /// Everyone, as an admin (`--insecure-no-caller-auth`).
    Insecure,
}

/// The health entry that says whether the store can write: NOT_SERVING
/// while the data directory fails (Mint and revocations then answer
/// UNAVAILABLE), while Resolve, and so the service's own entry, keep
/// serving from memory.
pub const STORE_WRITES_HEALTH: &str = "credential_authority.v1.CredentialAuthority/store-writes";

/// Where the store keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Memory only (`--store memory`).
    Memory,
    /// The durable embedded store in a data directory.
    Durable(DurableOptions),
    /// A Redis shared with other authority processes.
    Redis(RedisOptions),
}

/// What the server needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The store's limits.
    pub store: StoreConfig,
    /// Where the store keeps its data.
    pub storage: Storage,
    /// How long in-flight calls may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Who may call.
    pub callers: Callers,
    /// Where the audit trail goes and what a failed write does.
    pub audit: AuditConfig,
    /// Whether server reflection is served.
    pub reflection: bool,
    /// The HTTP/2 settings of every connection.
    pub http2: Http2Config,
    /// The per-call limits: metadata size, calls in flight, deadline.
    pub guard: GuardConfig,
}

/// Why the server stopped abnormally, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The reflection service could not be built from the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The callers file could not be loaded at start.
    #[error("{0}")]
    Callers(#[from] CallersFileError),
    /// The audit trail could not be opened.
    #[error("{0}")]
    Audit(#[from] AuditError),
    /// The store's data directory could not be opened.
    #[error("{0}")]
    Store(#[from] OpenError),
    /// The Redis store could not be reached or refused to serve.
    #[error("{0}")]
    Redis(#[from] RedisOpenError),
}

/// Serves on `transport` until `shutdown` completes, then drains: health
/// goes NOT_SERVING, every connection gets a GOAWAY, new calls are refused
/// with UNAVAILABLE, and in-flight calls get `shutdown_grace` to finish. Each item of `reloads` (SIGHUP in
/// `main`) re-reads the callers file, the TLS certificate and key, and
/// reopens the audit file; what fails to load is logged and the previous
/// version stays in force. Returns `Ok` after a clean or graceful stop.
pub async fn run(
    transport: Transport,
    settings: ServerSettings,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
    reloads: impl Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<(), ServerError> {
    let auth = match &settings.callers {
        Callers::File(path) => {
            let callers = CallerSet::from_file(&file::load(path)?);
            let (names, keys) = callers.counts();
            tracing::info!(path = %path.display(), callers = names, keys, "caller authentication on");
            Authenticator::new(callers)
        }
        Callers::Insecure => {
            tracing::warn!(
                "--insecure-no-caller-auth: every call is let in as an admin, without a key; \
                 for experiments on loopback only"
            );
            Authenticator::insecure()
        }
    };
    let audit = AuditLog::open(settings.audit.clone(), clock.clone())?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let (backend, _background) = match &settings.storage {
        Storage::Redis(options) => open_redis(&settings, options, clock, &health).await?,
        _ => {
            let store = open_store(&settings, clock, &health)?;
            let background = Background::Embedded {
                _sweeper: store.spawn_sweeper(),
                _checkpointer: store.spawn_checkpointer(),
            };
            (Backend::from(store), background)
        }
    };
    let draining = Arc::new(AtomicBool::new(false));
    let authority = AuthorityService::new(
        backend.clone(),
        settings.store.clone(),
        draining.clone(),
        auth.clone(),
        audit.clone(),
    );

    health
        .set_serving::<CredentialAuthorityServer<AuthorityService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    if backend.embedded().is_some_and(Store::is_durable) {
        health
            .set_service_status(STORE_WRITES_HEALTH, ServingStatus::Serving)
            .await;
    }

    let reloading = tokio::spawn(reload_on(
        reloads,
        Reloadable {
            callers: settings.callers.clone(),
            auth,
            tls: transport.tls_reloader(),
            audit,
        },
    ));
    let incoming = transport.into_incoming();
    // Held until the server has drained, so the Unix socket files go on a
    // clean stop and not before.
    let _sockets = incoming.socket_cleanup();

    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let max_message = settings.guard.max_message_bytes;
    let mut routes = Routes::builder();
    routes.add_service(health_service.max_decoding_message_size(max_message));
    if settings.reflection {
        // Only requests are limited: reflection answers with our own
        // descriptors, which may be larger than any request should be.
        routes
            .add_service(
                reflection_builder()
                    .build_v1()?
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                reflection_builder()
                    .build_v1alpha()?
                    .max_decoding_message_size(max_message),
            );
    }
    routes.add_service(authority_server(authority, max_message));
    let routes = routes.routes().prepare();
    let guard = GuardLayer::new(settings.guard.clone());
    // One stack per connection, over the shared routes and pools.
    let stack = move |_: &PeerInfo| call_stack(&guard, routes.clone());
    let serving = http2::serve(incoming, settings.http2.clone(), stack, async {
        let _ = stopped.await;
    });
    tokio::pin!(serving);

    tokio::select! {
        () = &mut serving => {
            // Only if every accept task ended, which they do not on their own.
            reloading.abort();
            return Ok(());
        }
        () = shutdown => {}
    }

    tracing::info!(grace = %humantime::format_duration(settings.shutdown_grace), "shutting down");
    reloading.abort();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<CredentialAuthorityServer<AuthorityService>>()
        .await;
    draining.store(true, Ordering::Release);
    let _ = stop_accepting.send(());
    if tokio::time::timeout(settings.shutdown_grace, serving)
        .await
        .is_err()
    {
        tracing::warn!("grace period over with calls still in flight; exiting anyway");
    }
    if let Some(store) = backend.embedded().filter(|store| store.is_durable()) {
        // The latest uses and the time, so a restart finds every deadline
        // exactly as it was.
        match store.close().await {
            Ok(()) => tracing::info!("store closed"),
            Err(error) => tracing::error!(%error, "the store's last checkpoint was not written"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The background tasks of the store in use, stopped when dropped.
enum Background {
    /// The sweeper and the renewal checkpointer.
    Embedded {
        _sweeper: crate::store::SweeperGuard,
        _checkpointer: crate::store::CheckpointerGuard,
    },
    /// The pruner and the health probe.
    Redis(tokio::task::JoinHandle<()>),
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Background::Redis(task) = self {
            task.abort();
        }
    }
}

/// How often the Redis store is probed, and pruned, in the background.
const REDIS_PROBE: Duration = Duration::from_millis(500);

/// Connects to Redis, and starts the task that prunes dead credentials and
/// turns health NOT_SERVING while Redis does not answer or may evict keys
/// (calls then fail UNAVAILABLE with RetryInfo; the process keeps running
/// and recovers by itself).
async fn open_redis(
    settings: &ServerSettings,
    options: &RedisOptions,
    clock: Arc<dyn Clock>,
    health: &HealthReporter,
) -> Result<(Backend, Background), ServerError> {
    let store = RedisStore::connect(options.clone(), settings.store.clone(), clock, None).await?;
    tracing::info!(
        server = %redacted_url(&options.url),
        min_replicas = options.min_replicas,
        "credentials are kept in Redis"
    );
    let probe = store.clone();
    let reporter = health.clone();
    let task = tokio::spawn(async move {
        let mut last = Probe::Up;
        let mut ticks = tokio::time::interval(REDIS_PROBE);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let found = probe.probe().await;
            if found == Probe::Up {
                let _ = probe.prune().await;
            }
            if found != last {
                let status = match &found {
                    Probe::Up => {
                        tracing::info!("Redis answers again and may not evict keys");
                        ServingStatus::Serving
                    }
                    Probe::Unreachable => {
                        tracing::error!(
                            "Redis does not answer: calls fail UNAVAILABLE with RetryInfo until it does"
                        );
                        ServingStatus::NotServing
                    }
                    Probe::Evicting { policy } => {
                        tracing::error!(
                            policy = %policy,
                            "Redis now has a maxmemory-policy that may evict keys (an evicted RevokeAll generation or tombstone would revive revoked tokens): calls fail UNAVAILABLE with RetryInfo until it is set back to noeviction"
                        );
                        ServingStatus::NotServing
                    }
                };
                last = found;
                reporter.set_service_status("", status).await;
                reporter.set_service_status(SERVICE_NAME, status).await;
            }
        }
    });
    Ok((Backend::from(store), Background::Redis(task)))
}

/// Opens the store `settings` ask for, logging what recovery found; a
/// durable store reports its journal's health to `health`.
fn open_store(
    settings: &ServerSettings,
    clock: Arc<dyn Clock>,
    health: &HealthReporter,
) -> Result<Store, ServerError> {
    let options = match &settings.storage {
        Storage::Memory => {
            tracing::warn!("--store memory: every credential is lost when the server stops");
            return Ok(Store::new(settings.store.clone(), clock));
        }
        Storage::Durable(options) => options.clone(),
        Storage::Redis(_) => unreachable!("opened by open_redis"),
    };
    let runtime = tokio::runtime::Handle::current();
    let reporter = health.clone();
    // On the journal's writer thread: log once per change, hand the
    // health update to the runtime, never block.
    let on_health: HealthCallback = Arc::new(move |event| {
        let status = match event {
            HealthEvent::Failing { error } => {
                tracing::error!(
                    %error,
                    "the store cannot write: Mint and revocations answer UNAVAILABLE until the \
                     disk recovers; Resolve goes on from memory"
                );
                ServingStatus::NotServing
            }
            HealthEvent::Recovered { failed_batches } => {
                tracing::info!(failed_batches, "the store writes again");
                ServingStatus::Serving
            }
        };
        let reporter = reporter.clone();
        runtime.spawn(async move {
            reporter
                .set_service_status(STORE_WRITES_HEALTH, status)
                .await;
        });
    });
    let dir = options.dir.clone();
    let (store, recovery) =
        Store::open(settings.store.clone(), clock, options.on_health(on_health))?;
    if let Some(torn) = &recovery.torn_tail {
        tracing::warn!(
            file = %torn.file.display(),
            offset = torn.offset,
            bytes_dropped = torn.bytes_dropped,
            "dropped a torn final write of the journal (a crash interrupted it; it was never \
             reported durable)"
        );
    }
    if let Some(cut) = &recovery.truncation {
        tracing::warn!(
            file = %cut.file.display(),
            offset = cut.offset,
            bytes_dropped = cut.bytes_dropped,
            segments_removed = cut.segments_removed,
            "truncated the journal as --truncate-journal-at asked"
        );
    }
    if !recovery.clock_behind.is_zero() {
        tracing::warn!(
            behind = %humantime::format_duration(recovery.clock_behind),
            "the wall clock is behind the newest time the store used; running from that time"
        );
    }
    tracing::info!(
        data_dir = %dir.display(),
        records = recovery.records,
        credentials = recovery.credentials,
        from_snapshot = recovery.from_snapshot,
        downtime = %humantime::format_duration(recovery.downtime),
        elapsed_ms = recovery.elapsed.as_millis() as u64,
        "store recovered"
    );
    Ok(store)
}

/// The authority as the routes hold it: requests and responses limited to
/// `max_message` bytes. Public, with [`call_stack`], so the in-process fuzz
/// target (`fuzzing::rpc_bodies`) runs what the server runs.
pub fn authority_server(
    authority: AuthorityService,
    max_message: usize,
) -> CredentialAuthorityServer<AuthorityService> {
    CredentialAuthorityServer::new(authority)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

/// What every call passes through before its route: the request id, then
/// the guard's limits and rewrites.
pub fn call_stack<S>(
    guard: &GuardLayer,
    routes: S,
) -> crate::request_id::RequestIdService<crate::guard::Guard<S>> {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(guard.clone())
        .service(routes)
}

/// What a reload refreshes.
struct Reloadable {
    callers: Callers,
    auth: Authenticator,
    tls: Option<TlsReloader>,
    audit: AuditLog,
}

/// Reloads on every item of `reloads`, each part on its own: a broken
/// callers file does not stop a certificate rotation.
async fn reload_on(mut reloads: impl Stream<Item = ()> + Unpin, parts: Reloadable) {
    while reloads.next().await.is_some() {
        if let Callers::File(path) = &parts.callers {
            match file::load(path) {
                Ok(loaded) => {
                    let callers = CallerSet::from_file(&loaded);
                    let (names, keys) = callers.counts();
                    parts.auth.replace(callers);
                    tracing::info!(path = %path.display(), callers = names, keys, "callers reloaded");
                }
                Err(error) => tracing::error!(
                    %error,
                    "callers file refused; the previous callers stay in force"
                ),
            }
        }
        if let Some(tls) = &parts.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(error) => tracing::error!(
                    %error,
                    "TLS certificate refused; the previous one stays in force"
                ),
            }
        }
        match parts.audit.reopen() {
            Ok(()) => tracing::info!("audit trail reopened"),
            Err(error) => tracing::error!(
                %error,
                "audit trail could not be reopened; writing to the previous file"
            ),
        }
    }
}

/// Reflection over the contract, the error-detail types (so grpcurl can print
/// ErrorInfo), health and reflection itself.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
}

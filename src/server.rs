//! Server wiring, shared alike by `main` and the tests: the authority, health
//! and reflection services on one listener, with graceful shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::clock::Clock;
use crate::pb;
use crate::pb::credential_authority_server::CredentialAuthorityServer;
use crate::request_id::RequestIdLayer;
use crate::service::AuthorityService;
use crate::store::{Store, StoreConfig};

/// The fully qualified name of the authority service, as health reports it.
pub const SERVICE_NAME: &str = "credential_authority.v1.CredentialAuthority";

/// What the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The store's limits.
    pub store: StoreConfig,
    /// How long in-flight calls may run after shutdown begins.
    pub shutdown_grace: Duration,
}

/// Why the server stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves on `listener` until `shutdown` completes, then drains: health goes
/// NOT_SERVING, new calls are refused with UNAVAILABLE, and in-flight calls
/// get `shutdown_grace` to finish. Returns `Ok` after a clean or graceful stop.
pub async fn run(
    listener: TcpListener,
    settings: ServerSettings,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = Store::new(settings.store.clone(), clock);
    let _sweeper = store.spawn_sweeper();
    let draining = Arc::new(AtomicBool::new(false));
    let authority = AuthorityService::new(store, settings.store.clone(), draining.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CredentialAuthorityServer<AuthorityService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;

    let reflection_v1 = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = Server::builder()
        .layer(RequestIdLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CredentialAuthorityServer::new(authority))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        });
    tokio::pin!(serving);

    tokio::select! {
        result = &mut serving => return result.map_err(Into::into),
        () = shutdown => {}
    }

    tracing::info!(grace = %humantime::format_duration(settings.shutdown_grace), "shutting down");
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<CredentialAuthorityServer<AuthorityService>>()
        .await;
    draining.store(true, Ordering::Release);
    let _ = stop_accepting.send(());
    match tokio::time::timeout(settings.shutdown_grace, serving).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("grace period over with calls still in flight; exiting anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reflection over the contract, the error-detail types (so grpcurl can print
/// ErrorInfo), health and reflection itself.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
}

//! The gRPC service: validates each request, calls the store, and turns the
//! outcome into a response or a typed failure, with one log line per call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::clock::Millis;
use crate::error::Failure;
use crate::pb;
use crate::request_id::RequestId;
use crate::store::{NewCredential, Store, StoreConfig};
use crate::token::{self, CredentialId, Token};
use crate::validate::{FieldViolation, Violations};

/// How long a caller turned away during shutdown should wait before retrying.
const RETRY_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// The `CredentialAuthority` service.
#[derive(Clone)]
pub struct AuthorityService {
    store: Store,
    limits: StoreConfig,
    draining: Arc<AtomicBool>,
}

impl AuthorityService {
    /// A service over `store`, which enforces `limits`. Once `draining` is set
    /// (shutdown began), new calls fail with UNAVAILABLE and RetryInfo.
    pub fn new(store: Store, limits: StoreConfig, draining: Arc<AtomicBool>) -> Self {
        AuthorityService {
            store,
            limits,
            draining,
        }
    }

    /// Starts a call: its request id and start time, or UNAVAILABLE when the
    /// server is shutting down.
    fn begin<T>(&self, method: &'static str, request: &Request<T>) -> Call {
        // A clone of the id shares its bytes: no allocation per call.
        let request_id = request.extensions().get::<RequestId>().cloned();
        Call {
            method,
            request_id,
            started: Instant::now(),
            draining: self.draining.load(Ordering::Acquire),
        }
    }
}

/// One call in progress, for its log line.
struct Call {
    method: &'static str,
    /// Always set by [`crate::request_id::RequestIdLayer`] in the server.
    request_id: Option<RequestId>,
    started: Instant,
    draining: bool,
}

impl Call {
    fn request_id(&self) -> &str {
        self.request_id.as_ref().map_or("-", RequestId::as_str)
    }

    /// Fails the call early if the server is shutting down.
    fn admit(&self) -> Result<(), Failure> {
        if self.draining {
            Err(Failure::Unavailable {
                message: "the server is shutting down",
                retry_after: RETRY_AFTER_SHUTDOWN,
            })
        } else {
            Ok(())
        }
    }

    /// Writes the call's log line and turns the outcome into the gRPC answer.
    fn finish<T>(
        self,
        outcome: Result<T, Failure>,
        credential_id: Option<CredentialId>,
    ) -> Result<Response<T>, Status> {
        let latency_us = self.started.elapsed().as_micros() as u64;
        let credential_id = credential_id.or(match &outcome {
            Err(failure) => failure.credential_id(),
            Ok(_) => None,
        });
        let credential = tracing::field::display(LoggedId(credential_id));
        match outcome {
            Ok(response) => {
                tracing::info!(
                    method = %self.method,
                    request_id = %self.request_id(),
                    credential_id = credential,
                    outcome = %"OK",
                    latency_us,
                    "rpc"
                );
                Ok(Response::new(response))
            }
            Err(failure) => {
                tracing::info!(
                    method = %self.method,
                    request_id = %self.request_id(),
                    credential_id = credential,
                    outcome = %failure.reason(),
                    code = ?failure.code(),
                    latency_us,
                    "rpc"
                );
                Err(failure.into_status(self.request_id()))
            }
        }
    }
}

/// A credential id in a log line, `-` when there is none; formatted in
/// place, without a String per call.
struct LoggedId(Option<CredentialId>);

impl std::fmt::Display for LoggedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(id) => id.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A store instant as a protobuf timestamp.
fn timestamp(at: Millis) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: (at / 1000) as i64,
        nanos: ((at % 1000) * 1_000_000) as i32,
    })
}

#[tonic::async_trait]
impl pb::credential_authority_server::CredentialAuthority for AuthorityService {
    async fn mint(
        &self,
        request: Request<pb::MintRequest>,
    ) -> Result<Response<pb::MintResponse>, Status> {
        let call = self.begin("Mint", &request);
        let request = request.into_inner();
        let mut minted_id = None;
        let outcome = call.admit().and_then(|()| {
            let mut violations = Violations::default();
            let thread_id = violations.id("thread_id", &request.thread_id, true);
            let provider_instance_id =
                violations.id("provider_instance_id", &request.provider_instance_id, true);
            let provider_kind = violations.id("provider_kind", &request.provider_kind, false);
            let idle_timeout = violations.duration(
                "idle_timeout",
                request.idle_timeout.as_ref(),
                self.limits.idle_timeout,
            );
            let max_lifetime = violations.duration(
                "max_lifetime",
                request.max_lifetime.as_ref(),
                self.limits.max_lifetime,
            );
            let scopes = violations.scopes(&request.scopes);
            let labels = violations.labels(&request.labels);
            violations.into_result(())?;
            let new = NewCredential {
                thread_id: thread_id.unwrap_or_default(),
                provider_instance_id: provider_instance_id.unwrap_or_default(),
                provider_kind,
                idle_timeout,
                max_lifetime,
                replace_previous: request.replace_previous,
                scopes,
                labels,
            };
            let token = Token::generate();
            let minted = self.store.mint(token.digest(), new);
            minted_id = Some(minted.credential_id);
            Ok(pb::MintResponse {
                token: token.into_string(),
                credential_id: minted.credential_id.to_string(),
                expires_at: timestamp(minted.deadlines.expires_at),
                idle_expires_at: timestamp(minted.deadlines.idle_expires_at),
                replaced: minted.replaced,
            })
        });
        call.finish(outcome, minted_id)
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let call = self.begin("Resolve", &request);
        let request = request.get_ref();
        let mut resolved_id = None;
        let outcome = call.admit().and_then(|()| {
            let mut violations = Violations::default();
            if request.token.is_empty() {
                violations.add("token", "token is required");
            }
            let required_scope =
                violations.required_scope("required_scope", &request.required_scope);
            violations.into_result(())?;
            let digest = token::parse(&request.token)?;
            let response = self.store.resolve_with(&digest, required_scope, |view| {
                resolved_id = Some(view.credential_id);
                pb::ResolveResponse {
                    credential_id: view.credential_id.to_string(),
                    thread_id: view.thread_id.to_owned(),
                    provider_instance_id: view.provider_instance_id.to_owned(),
                    provider_kind: view.provider_kind.unwrap_or_default().to_owned(),
                    expires_at: timestamp(view.deadlines.expires_at),
                    idle_expires_at: timestamp(view.deadlines.idle_expires_at),
                    created_at: timestamp(view.created_at),
                    scopes: view.scopes.iter().map(|s| s.to_string()).collect(),
                    labels: view
                        .labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }
            })?;
            Ok(response)
        });
        call.finish(outcome, resolved_id)
    }

    async fn revoke_thread(
        &self,
        request: Request<pb::RevokeThreadRequest>,
    ) -> Result<Response<pb::RevokeThreadResponse>, Status> {
        let call = self.begin("RevokeThread", &request);
        let outcome = call.admit().and_then(|()| {
            let mut violations = Violations::default();
            let thread_id = violations.id("thread_id", &request.get_ref().thread_id, true);
            violations.into_result(())?;
            let revoked = self.store.revoke_thread(thread_id.unwrap_or_default());
            Ok(pb::RevokeThreadResponse { revoked })
        });
        call.finish(outcome, None)
    }

    async fn revoke_all(
        &self,
        request: Request<pb::RevokeAllRequest>,
    ) -> Result<Response<pb::RevokeAllResponse>, Status> {
        let call = self.begin("RevokeAll", &request);
        let outcome = call.admit().and_then(|()| {
            let mut violations = Violations::default();
            let instance = violations.id(
                "provider_instance_id",
                &request.get_ref().provider_instance_id,
                false,
            );
            violations.into_result(())?;
            let revoked = self.store.revoke_all(instance);
            Ok(pb::RevokeAllResponse { revoked })
        });
        call.finish(outcome, None)
    }

    async fn revoke_credential(
        &self,
        request: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        let call = self.begin("RevokeCredential", &request);
        let mut target = None;
        let outcome = call.admit().and_then(|()| {
            let mut violations = Violations::default();
            let credential_id =
                violations.credential_id("credential_id", &request.get_ref().credential_id);
            violations.into_result(())?;
            target = credential_id;
            let revoked = self
                .store
                .revoke_credential(&credential_id.expect("validated"));
            Ok(pb::RevokeCredentialResponse { revoked })
        });
        call.finish(outcome, target)
    }

    async fn touch(
        &self,
        request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        use pb::touch_request::Target;
        let call = self.begin("Touch", &request);
        let mut target_id = None;
        let outcome = call.admit().and_then(|()| {
            let mut violations = Violations::default();
            let touched = match &request.get_ref().target {
                Some(Target::CredentialId(id)) => {
                    let id = violations.credential_id("credential_id", id);
                    violations.into_result(())?;
                    target_id = id;
                    let id = id.expect("validated");
                    vec![self
                        .store
                        .touch_credential(&id)
                        .map_err(Failure::for_owner)?]
                }
                Some(Target::ThreadId(thread_id)) => {
                    let thread_id = violations.id("thread_id", thread_id, true);
                    violations.into_result(())?;
                    self.store
                        .touch_thread(thread_id.unwrap_or_default())
                        .map_err(Failure::for_owner)?
                }
                None => {
                    return Err(Failure::InvalidArgument(vec![FieldViolation {
                        field: "target".into(),
                        description: "target is required: set credential_id or thread_id".into(),
                    }]));
                }
            };
            Ok(pb::TouchResponse {
                credentials: touched
                    .into_iter()
                    .map(|t| pb::TouchedCredential {
                        credential_id: t.credential_id.to_string(),
                        expires_at: timestamp(t.deadlines.expires_at),
                        idle_expires_at: timestamp(t.deadlines.idle_expires_at),
                    })
                    .collect(),
            })
        });
        call.finish(outcome, target_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::pb::credential_authority_server::CredentialAuthority as _;
    use tonic_types::StatusExt as _;

    #[tokio::test]
    async fn calls_during_shutdown_are_refused_as_retryable() {
        let store = Store::new(StoreConfig::default(), Arc::new(FakeClock::new(0)));
        let draining = Arc::new(AtomicBool::new(false));
        let service =
            AuthorityService::new(store.clone(), StoreConfig::default(), draining.clone());
        let request = || {
            Request::new(pb::MintRequest {
                thread_id: "t".into(),
                provider_instance_id: "i".into(),
                ..Default::default()
            })
        };
        assert!(service.mint(request()).await.is_ok());
        draining.store(true, Ordering::Release);
        let status = service.mint(request()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(RETRY_AFTER_SHUTDOWN)
        );
        assert_eq!(details.error_info().unwrap().reason, "SERVICE_UNAVAILABLE");
        assert_eq!(store.record_count(), 1, "the refused call stored nothing");
    }
}

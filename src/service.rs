//! The gRPC service: authenticates the caller, checks its role, validates
//! each request, calls the store, audits what changed, and turns the
//! outcome into a response or a typed failure, with one log line per call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::audit::{AuditEvent, AuditLog, PeerKey};
use crate::auth::{AuthFailure, Authenticator, Principal, Role};
use crate::clock::Millis;
use crate::error::{Failure, Forbidden, Limit};
use crate::pb;
use crate::request_id::RequestId;
use crate::store::{
    Backend, NewCredential, Reach, RevocationCause, RevokeAllTarget, StoreConfig, ThreadTouch,
};
use crate::telemetry::RpcLine;
use crate::token::{self, CredentialId, Token};
use crate::transport::{Peer, PeerInfo};
use crate::validate::{FieldViolation, Violations};

/// How long a caller turned away during shutdown should wait before retrying.
const RETRY_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// How long a caller whose state change could not be audited (fail-closed
/// audit trail) should wait before retrying.
const RETRY_AFTER_AUDIT_FAILURE: Duration = Duration::from_secs(1);

/// The metadata key that carries the caller's key.
const AUTHORIZATION: &str = "authorization";

/// The `CredentialAuthority` service.
#[derive(Clone)]
pub struct AuthorityService {
    store: Backend,
    limits: StoreConfig,
    draining: Arc<AtomicBool>,
    auth: Authenticator,
    audit: AuditLog,
}

impl AuthorityService {
    /// A service over `store`, which enforces `limits`, letting in the
    /// callers `auth` knows and writing the audit trail to `audit`. Once
    /// `draining` is set (shutdown began), new calls fail with UNAVAILABLE
    /// and RetryInfo.
    pub fn new(
        store: Backend,
        limits: StoreConfig,
        draining: Arc<AtomicBool>,
        auth: Authenticator,
        audit: AuditLog,
    ) -> Self {
        AuthorityService {
            store,
            limits,
            draining,
            auth,
            audit,
        }
    }

    /// Starts a call that needs `role`: its request id, start time, peer and
    /// caller (authenticated here, authorised by [`AuthorityService::admit`]).
    fn begin<T>(&self, method: &'static str, role: Role, request: &Request<T>) -> Call {
        // A clone of the id shares its bytes: no allocation per call.
        let request_id = request.extensions().get::<RequestId>().cloned();
        let peer = request.extensions().get::<PeerInfo>();
        let client_sans = peer.map_or(&[][..], |peer| &peer.client_sans[..]);
        let authorization = request
            .metadata()
            .get(AUTHORIZATION)
            .map(|value| value.as_bytes());
        Call {
            method,
            role,
            request_id,
            started: Instant::now(),
            draining: self.draining.load(Ordering::Acquire),
            caller: self.auth.authenticate(authorization, client_sans),
            peer: peer.map(|peer| peer.peer.clone()),
        }
    }

    /// Lets the call in, or says why not: the server is draining, the
    /// caller is not authenticated, or its roles lack the call's.
    fn admit<'c>(&self, call: &'c Call) -> Result<&'c Principal, Failure> {
        if call.draining {
            return Err(Failure::Unavailable {
                message: "the server is shutting down",
                retry_after: RETRY_AFTER_SHUTDOWN,
            });
        }
        let caller = call
            .caller
            .as_deref()
            .map_err(|&why| Failure::CallerUnauthenticated(why))?;
        if !caller.roles.allow(call.role) {
            return Err(Failure::CallerForbidden(Forbidden::MissingRole {
                caller: caller.name.clone(),
                rpc: call.method,
                role: call.role,
            }));
        }
        Ok(caller)
    }

    /// Writes the audit line of a state change, after the change and before
    /// the reply. With a fail-closed trail a failed write fails the call as
    /// retryable: the change (a revocation) stays in force.
    fn audit(&self, call: &Call, event: AuditEvent<'_>) -> Result<(), Failure> {
        let (caller, key_id) = call.identity();
        let event = AuditEvent {
            request_id: call.request_id(),
            rpc: call.method,
            outcome: "ok",
            caller,
            key_id,
            ..event
        };
        self.audit.record(&event).map_err(|_| Failure::Unavailable {
            message: "the audit trail could not be written, so the call did not complete \
                          (a revocation it made stays in force)",
            retry_after: RETRY_AFTER_AUDIT_FAILURE,
        })
    }

    /// Writes the call's log line (and a denial's audit line) and turns the
    /// outcome into the gRPC answer.
    fn finish<T>(
        &self,
        call: Call,
        outcome: Result<T, Failure>,
        credential_id: Option<CredentialId>,
    ) -> Result<Response<T>, Status> {
        let latency_us = call.started.elapsed().as_micros() as u64;
        let credential_id = credential_id.or(match &outcome {
            Err(failure) => failure.credential_id(),
            Ok(_) => None,
        });
        let (caller, key_id) = call.identity();
        let line = RpcLine {
            method: call.method,
            request_id: call.request_id(),
            caller: caller.unwrap_or("-"),
            key_id: key_id.unwrap_or("-"),
            credential_id,
            outcome: "OK",
            code: None,
            latency_us,
        };
        match outcome {
            Ok(response) => {
                line.write();
                Ok(Response::new(response))
            }
            Err(failure) => {
                RpcLine {
                    outcome: failure.reason(),
                    code: Some(failure.code()),
                    ..line
                }
                .write();
                if failure.is_caller_denial() {
                    self.audit_denial(&call, &failure, credential_id);
                }
                Err(failure.into_status(call.request_id()))
            }
        }
    }

    /// The audit line of a refused caller, rate-limited per peer by the
    /// audit trail. A denial never waits on the trail: its write failing
    /// changes no answer.
    fn audit_denial(&self, call: &Call, failure: &Failure, credential_id: Option<CredentialId>) {
        let (caller, key_id) = call.identity();
        let (peer_key, peer) = match &call.peer {
            Some(Peer::Tcp(addr)) => (limited_as(addr.ip()), addr.ip().to_string()),
            Some(Peer::Unix { uid, .. }) => (PeerKey::Uid(*uid), format!("uid:{uid}")),
            None => (PeerKey::Unknown, "-".to_owned()),
        };
        let credential_id = credential_id.map(|id| id.to_string());
        let detail = failure.denial_detail();
        let _ = self.audit.denied(
            &peer_key,
            &AuditEvent {
                request_id: call.request_id(),
                rpc: call.method,
                outcome: failure.reason(),
                caller,
                key_id,
                credential_id: credential_id.as_deref(),
                peer: Some(&peer),
                detail: detail.as_deref(),
                ..AuditEvent::default()
            },
        );
    }
}

/// One call in progress, for its log line.
struct Call {
    method: &'static str,
    /// The role the call needs.
    role: Role,
    /// Always set by [`crate::request_id::RequestIdLayer`] in the server.
    request_id: Option<RequestId>,
    started: Instant,
    draining: bool,
    /// Who is calling, or why that is unknown.
    caller: Result<Arc<Principal>, AuthFailure>,
    /// Where the call came from (none outside a server, in unit tests).
    peer: Option<Peer>,
}

impl Call {
    fn request_id(&self) -> &str {
        self.request_id.as_ref().map_or("-", RequestId::as_str)
    }

    /// The caller's name and key id, when it is authenticated, for log and
    /// audit lines.
    fn identity(&self) -> (Option<&str>, Option<&str>) {
        match &self.caller {
            Ok(caller) => (Some(&*caller.name), caller.key_id.as_deref()),
            Err(_) => (None, None),
        }
    }
}

/// The peer a denial counts against in the audit trail's rate limit: the
/// whole loopback range as one (a local process may send from any of
/// 127.0.0.0/8), and an IPv6 client by its /64 (one host holds a whole
/// /64), so that rotating source addresses earns no fresh burst.
fn limited_as(ip: IpAddr) -> PeerKey {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        ip if ip.is_loopback() => PeerKey::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            PeerKey::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
        }
        v4 => PeerKey::Ip(v4),
    }
}

/// Which credentials a caller's calls reach: every credential for an admin,
/// its own otherwise.
fn reach(caller: &Principal) -> Reach<'_> {
    if caller.roles.is_admin() {
        Reach::All
    } else {
        Reach::MintedBy(&caller.name)
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
        let call = self.begin("Mint", Role::Mint, &request);
        let request = request.into_inner();
        let mut minted_id = None;
        let outcome: Result<_, Failure> = async {
            let caller = self.admit(&call)?;
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
            // After validation, so a malformed request spends no allowance;
            // before the store, so a refused Mint costs it nothing.
            if !caller.quota.try_mint(self.store.now()) {
                let rate = caller.quota.mint_rate;
                return Err(Failure::Limit(Limit::CallerRate {
                    caller: caller.name.clone(),
                    per_second: rate.per_second,
                    burst: rate.burst,
                }));
            }
            let new = NewCredential {
                thread_id: thread_id.unwrap_or_default(),
                provider_instance_id: provider_instance_id.unwrap_or_default(),
                provider_kind,
                idle_timeout,
                max_lifetime,
                replace_previous: request.replace_previous,
                scopes,
                labels,
                minted_by: &caller.name,
                reach: reach(caller),
                owner_quota: Some(caller.quota.max_live_credentials),
            };
            let token = Token::generate();
            let minted = self.store.mint(token.digest(), new.clone()).await?;
            minted_id = Some(minted.credential_id);
            let credential_id = minted.credential_id.to_string();
            let audited = self.audit(
                &call,
                AuditEvent {
                    credential_id: Some(&credential_id),
                    thread_id: Some(new.thread_id),
                    provider_instance_id: Some(new.provider_instance_id),
                    replaced: Some(minted.replaced),
                    ..AuditEvent::default()
                },
            );
            if let Err(failure) = audited {
                // Fail closed: the token is never handed out, so its record
                // goes too. What the replacement revoked stays revoked.
                let _ = self
                    .store
                    .revoke_credential(&minted.credential_id, Reach::All)
                    .await;
                return Err(failure);
            }
            Ok(pb::MintResponse {
                token: token.into_string(),
                credential_id,
                expires_at: timestamp(minted.deadlines.expires_at),
                idle_expires_at: timestamp(minted.deadlines.idle_expires_at),
                replaced: minted.replaced,
            })
        }
        .await;
        self.finish(call, outcome, minted_id)
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let call = self.begin("Resolve", Role::Resolve, &request);
        let request = request.get_ref();
        let mut resolved_id = None;
        let outcome: Result<_, Failure> = async {
            let _caller = self.admit(&call)?;
            let mut violations = Violations::default();
            if request.token.is_empty() {
                violations.add("token", "token is required");
            }
            let required_scope =
                violations.required_scope("required_scope", &request.required_scope);
            violations.into_result(())?;
            let digest = token::parse(&request.token)?;
            let response = self
                .store
                .resolve_with(&digest, required_scope, |view| {
                    resolved_id = Some(view.credential_id);
                    pb::ResolveResponse {
                        credential_id: view.credential_id.text().as_str().to_owned(),
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
                        minted_by: view.minted_by.to_owned(),
                    }
                })
                .await?;
            Ok(response)
        }
        .await;
        self.finish(call, outcome, resolved_id)
    }

    async fn revoke_thread(
        &self,
        request: Request<pb::RevokeThreadRequest>,
    ) -> Result<Response<pb::RevokeThreadResponse>, Status> {
        let call = self.begin("RevokeThread", Role::Mint, &request);
        let outcome: Result<_, Failure> = async {
            let caller = self.admit(&call)?;
            let mut violations = Violations::default();
            let thread_id = violations.id("thread_id", &request.get_ref().thread_id, true);
            violations.into_result(())?;
            let thread_id = thread_id.unwrap_or_default();
            let done = self.store.revoke_thread(thread_id, reach(caller)).await?;
            self.audit(
                &call,
                AuditEvent {
                    thread_id: Some(thread_id),
                    cause: Some(RevocationCause::Thread.as_str()),
                    revoked: Some(done.revoked),
                    not_owned: Some(done.not_owned),
                    ..AuditEvent::default()
                },
            )?;
            Ok(pb::RevokeThreadResponse {
                revoked: done.revoked,
                not_owned: done.not_owned,
            })
        }
        .await;
        self.finish(call, outcome, None)
    }

    async fn revoke_all(
        &self,
        request: Request<pb::RevokeAllRequest>,
    ) -> Result<Response<pb::RevokeAllResponse>, Status> {
        let call = self.begin("RevokeAll", Role::Mint, &request);
        let outcome: Result<_, Failure> = async {
            let caller = self.admit(&call)?;
            let mut violations = Violations::default();
            let instance = violations.id(
                "provider_instance_id",
                &request.get_ref().provider_instance_id,
                false,
            );
            violations.into_result(())?;
            let target = match (reach(caller), instance) {
                (Reach::All, None) => RevokeAllTarget::Everything,
                (Reach::All, Some(instance)) => RevokeAllTarget::Instance(instance),
                (Reach::MintedBy(name), None) => RevokeAllTarget::MintedBy(name),
                (Reach::MintedBy(name), Some(instance)) => RevokeAllTarget::MintedByForInstance {
                    minted_by: name,
                    provider_instance_id: instance,
                },
            };
            let cause = match target {
                RevokeAllTarget::Everything => RevocationCause::All,
                RevokeAllTarget::MintedBy(_) => RevocationCause::Caller,
                RevokeAllTarget::Instance(_) | RevokeAllTarget::MintedByForInstance { .. } => {
                    RevocationCause::ProviderInstance
                }
            };
            let revoked = self.store.revoke_all(target).await?;
            self.audit(
                &call,
                AuditEvent {
                    provider_instance_id: instance,
                    cause: Some(cause.as_str()),
                    revoked: Some(revoked),
                    ..AuditEvent::default()
                },
            )?;
            Ok(pb::RevokeAllResponse { revoked })
        }
        .await;
        self.finish(call, outcome, None)
    }

    async fn revoke_credential(
        &self,
        request: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        let call = self.begin("RevokeCredential", Role::Mint, &request);
        let mut target = None;
        let outcome: Result<_, Failure> = async {
            let caller = self.admit(&call)?;
            let mut violations = Violations::default();
            let credential_id =
                violations.credential_id("credential_id", &request.get_ref().credential_id);
            violations.into_result(())?;
            let credential_id = credential_id.expect("validated");
            target = Some(credential_id);
            let done = self
                .store
                .revoke_credential(&credential_id, reach(caller))
                .await?;
            self.audit(
                &call,
                AuditEvent {
                    credential_id: Some(&credential_id.to_string()),
                    thread_id: done.thread_id.as_deref(),
                    provider_instance_id: done.provider_instance_id.as_deref(),
                    cause: Some(RevocationCause::Credential.as_str()),
                    revoked: Some(done.revoked),
                    ..AuditEvent::default()
                },
            )?;
            Ok(pb::RevokeCredentialResponse {
                revoked: done.revoked,
            })
        }
        .await;
        self.finish(call, outcome, target)
    }

    async fn touch(
        &self,
        request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        use pb::touch_request::Target;
        let call = self.begin("Touch", Role::Mint, &request);
        let mut target_id = None;
        let outcome: Result<_, Failure> = async {
            let caller = self.admit(&call)?;
            let mut violations = Violations::default();
            let touched = match &request.get_ref().target {
                Some(Target::CredentialId(id)) => {
                    let id = violations.credential_id("credential_id", id);
                    violations.into_result(())?;
                    target_id = id;
                    let id = id.expect("validated");
                    let one = self
                        .store
                        .touch_credential(&id, reach(caller))
                        .await
                        .map_err(Failure::for_owner)?;
                    ThreadTouch {
                        touched: vec![one],
                        total: 1,
                    }
                }
                Some(Target::ThreadId(thread_id)) => {
                    let thread_id = violations.id("thread_id", thread_id, true);
                    violations.into_result(())?;
                    // Every live credential is renewed; the reply lists at
                    // most the store's touch_reply_limit and says how many.
                    self.store
                        .touch_thread(thread_id.unwrap_or_default(), reach(caller))
                        .await
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
                total: touched.total,
                credentials: touched
                    .touched
                    .into_iter()
                    .map(|t| pb::TouchedCredential {
                        credential_id: t.credential_id.to_string(),
                        expires_at: timestamp(t.deadlines.expires_at),
                        idle_expires_at: timestamp(t.deadlines.idle_expires_at),
                    })
                    .collect(),
            })
        }
        .await;
        self.finish(call, outcome, target_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::pb::credential_authority_server::CredentialAuthority as _;
    use crate::store::Store;
    use tonic_types::StatusExt as _;

    /// A service on a fake clock whose audit trail goes to a file in `dir`.
    fn service_with(
        auth: Authenticator,
        dir: &std::path::Path,
    ) -> (AuthorityService, Store, Arc<AtomicBool>) {
        let clock = Arc::new(FakeClock::new(1_800_000_000_000));
        let store = Store::new(StoreConfig::default(), clock.clone());
        let draining = Arc::new(AtomicBool::new(false));
        let audit = AuditLog::open(
            crate::audit::AuditConfig {
                sink: crate::audit::AuditSink::File(dir.join("audit.jsonl")),
                failure: crate::audit::AuditFailureMode::Closed,
                denials_per_second: 10,
                denial_burst: 10,
                total_denials_per_second: 100,
                total_denial_burst: 500,
            },
            clock,
        )
        .unwrap();
        let service = AuthorityService::new(
            store.clone().into(),
            StoreConfig::default(),
            draining.clone(),
            auth,
            audit,
        );
        (service, store, draining)
    }

    /// Catches: a denial limiter keyed by the exact source address, which a
    /// local process defeats by sending from 127.0.0.2, 127.0.0.3, ... and a
    /// remote one by rotating through its IPv6 /64.
    #[test]
    fn denials_are_limited_per_host_not_per_source_address() {
        let loopback = limited_as("127.0.0.1".parse().unwrap());
        for other in ["127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.5"] {
            assert_eq!(limited_as(other.parse().unwrap()), loopback, "{other}");
        }
        assert_eq!(
            limited_as("2001:db8:1:2::1".parse().unwrap()),
            limited_as("2001:db8:1:2:ffff:aaaa:1:2".parse().unwrap())
        );
        assert_ne!(
            limited_as("2001:db8:1:2::1".parse().unwrap()),
            limited_as("2001:db8:1:3::1".parse().unwrap())
        );
        assert_ne!(
            limited_as("192.0.2.1".parse().unwrap()),
            limited_as("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            limited_as("::ffff:192.0.2.1".parse().unwrap()),
            limited_as("192.0.2.1".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn calls_during_shutdown_are_refused_as_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let (service, store, draining) = service_with(Authenticator::insecure(), dir.path());
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

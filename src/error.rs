//! Typed failures and their gRPC form.
//!
//! Every failure becomes a status with a `google.rpc.ErrorInfo` detail
//! (domain [`DOMAIN`]) whose reason is stable, whose metadata carries the
//! `request_id` (and `credential_id` / `thread_id` where known, never the
//! token), and a message that says whether retrying can help. Only
//! [`Failure::Unavailable`] is retryable, and only it carries `RetryInfo`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::auth::{AuthFailure, Role};
use crate::store::{Budget, DeadCredential, DeathReason, Rejection};
use crate::token::{CredentialId, MalformedToken};
use crate::validate::FieldViolation;

/// The `ErrorInfo.domain` of every failure.
pub const DOMAIN: &str = "credential-authority";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The presented token is not in this service's format.
    #[error("malformed token: {0}")]
    Malformed(MalformedToken),
    /// A well-formed presented token the service does not know.
    #[error("unknown token")]
    Unknown,
    /// A presented token whose credential is dead.
    #[error("dead credential {}", .0.credential_id)]
    Dead(DeadCredential),
    /// A live credential without the scope the call required. Not terminal.
    #[error("credential {credential_id} lacks a required scope")]
    ScopeMissing {
        /// The credential's handle.
        credential_id: CredentialId,
        /// Its thread.
        thread_id: Arc<str>,
        /// The scope that was required.
        scope: Box<str>,
    },
    /// The owner named a credential or thread the service does not know.
    #[error("unknown target")]
    TargetUnknown,
    /// The owner named a credential that is dead.
    #[error("dead target {}", .0.credential_id)]
    TargetDead(DeadCredential),
    /// The request has bad fields.
    #[error("invalid request ({} bad fields)", .0.len())]
    InvalidArgument(Vec<FieldViolation>),
    /// The caller is not authenticated: its own key or certificate is
    /// wrong. Says nothing about any agent's token.
    #[error("caller not authenticated: {0}")]
    CallerUnauthenticated(AuthFailure),
    /// The caller is authenticated but may not do this.
    #[error("caller forbidden")]
    CallerForbidden(Forbidden),
    /// A limit is full: the thread's, the store's or the caller's. Not
    /// transient: it says what frees room.
    #[error("limit reached: {0:?}")]
    Limit(Limit),
    /// The request message or metadata is larger than the server accepts.
    #[error("request {part} larger than {limit} bytes")]
    TooLarge {
        /// `message` or `metadata`.
        part: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },
    /// No such service or method here.
    #[error("unknown method {rpc}")]
    UnknownMethod {
        /// The path asked for, e.g. `/credential_authority.v1.X/Y`.
        rpc: String,
    },
    /// The call ran past the per-request deadline.
    #[error("deadline of {deadline:?} exceeded")]
    DeadlineExceeded {
        /// The deadline that applied: the server's or the client's.
        deadline: Duration,
    },
    /// A transient condition; the same call may succeed after `retry_after`.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What is going on, for humans.
        message: &'static str,
        /// How long to wait before retrying.
        retry_after: Duration,
    },
}

/// Why an authenticated caller may not make a call.
#[derive(Debug, Clone)]
pub enum Forbidden {
    /// Its roles lack the one the call needs.
    MissingRole {
        /// The caller's name.
        caller: Arc<str>,
        /// The RPC it called.
        rpc: &'static str,
        /// The role that RPC needs.
        role: Role,
    },
    /// The call names credentials another caller minted; nothing changed.
    NotOwned {
        /// The credential named, when the call named one.
        credential_id: Option<CredentialId>,
    },
}

/// Which limit refused a Mint.
#[derive(Debug, Clone)]
pub enum Limit {
    /// The thread holds its limit of live credentials.
    Thread {
        /// The thread.
        thread_id: Arc<str>,
        /// The limit.
        limit: u64,
    },
    /// The store holds its budget of live credentials or bytes.
    Store {
        /// Which budget.
        budget: Budget,
        /// Its size.
        limit: u64,
    },
    /// The caller holds its quota of live credentials.
    CallerLive {
        /// The caller.
        caller: Arc<str>,
        /// Its quota.
        limit: u64,
    },
    /// The caller mints faster than its quota allows.
    CallerRate {
        /// The caller.
        caller: Arc<str>,
        /// Mints per second.
        per_second: u32,
        /// Mints at once.
        burst: u32,
    },
}

/// The stable reason for a death.
fn death_reason(reason: DeathReason) -> &'static str {
    match reason {
        DeathReason::Expired => "TOKEN_EXPIRED",
        DeathReason::IdleTimeout => "TOKEN_IDLE_TIMEOUT",
        DeathReason::Revoked(_) => "TOKEN_REVOKED",
    }
}

impl Failure {
    /// Turns a store rejection of a call by the credential's owner (Touch)
    /// into a failure about the named target rather than the caller.
    pub fn for_owner(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Unknown => Failure::TargetUnknown,
            Rejection::Dead(dead) => Failure::TargetDead(dead),
            other => other.into(),
        }
    }

    /// Whether this failure refused the caller itself (not authenticated, or
    /// not allowed): such calls are audited as denials.
    pub fn is_caller_denial(&self) -> bool {
        matches!(
            self,
            Failure::CallerUnauthenticated(_) | Failure::CallerForbidden(_)
        )
    }

    /// What a denial's audit line says about it (never a secret).
    pub fn denial_detail(&self) -> Option<String> {
        match self {
            Failure::CallerUnauthenticated(why) => Some(why.to_string()),
            Failure::CallerForbidden(Forbidden::MissingRole { role, .. }) => {
                Some(format!("missing role {}", role.as_str()))
            }
            Failure::CallerForbidden(Forbidden::NotOwned { .. }) => {
                Some("credentials minted by another caller".to_owned())
            }
            _ => None,
        }
    }

    /// The stable `ErrorInfo.reason` (see `ErrorReason` in the proto).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "TOKEN_MALFORMED",
            Failure::Unknown | Failure::TargetUnknown => "TOKEN_UNKNOWN",
            Failure::Dead(dead) | Failure::TargetDead(dead) => death_reason(dead.reason),
            Failure::ScopeMissing { .. } => "TOKEN_SCOPE_MISSING",
            Failure::InvalidArgument(_) => "INVALID_REQUEST",
            Failure::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            Failure::Limit(Limit::Thread { .. }) => "THREAD_CREDENTIAL_LIMIT",
            Failure::Limit(Limit::Store { .. }) => "CREDENTIAL_LIMIT",
            Failure::Limit(Limit::CallerLive { .. }) => "CALLER_QUOTA_EXCEEDED",
            Failure::Limit(Limit::CallerRate { .. }) => "CALLER_MINT_RATE_EXCEEDED",
            Failure::TooLarge { .. } => "REQUEST_TOO_LARGE",
            Failure::DeadlineExceeded { .. } => "REQUEST_DEADLINE_EXCEEDED",
            Failure::UnknownMethod { .. } => "METHOD_UNKNOWN",
            Failure::CallerUnauthenticated(_) => "CALLER_UNAUTHENTICATED",
            Failure::CallerForbidden(_) => "CALLER_FORBIDDEN",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Failure::Malformed(_)
            | Failure::Unknown
            | Failure::Dead(_)
            | Failure::CallerUnauthenticated(_) => Code::Unauthenticated,
            Failure::ScopeMissing { .. } | Failure::CallerForbidden(_) => Code::PermissionDenied,
            Failure::TargetUnknown => Code::NotFound,
            Failure::TargetDead(_) => Code::FailedPrecondition,
            Failure::InvalidArgument(_) => Code::InvalidArgument,
            Failure::Unavailable { .. } => Code::Unavailable,
            Failure::Limit(_) | Failure::TooLarge { .. } => Code::ResourceExhausted,
            Failure::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Failure::UnknownMethod { .. } => Code::Unimplemented,
        }
    }

    /// The credential a failure is about, when known (for the log line).
    pub fn credential_id(&self) -> Option<CredentialId> {
        match self {
            Failure::Dead(dead) | Failure::TargetDead(dead) => Some(dead.credential_id),
            Failure::ScopeMissing { credential_id, .. } => Some(*credential_id),
            Failure::CallerForbidden(Forbidden::NotOwned { credential_id }) => *credential_id,
            _ => None,
        }
    }

    /// The full status, with its details, for the call `request_id`.
    pub fn into_status(self, request_id: &str) -> Status {
        const NEVER_AGAIN: &str =
            "the same token will never work again: do not retry, mint a new credential";
        let mut metadata = HashMap::from([("request_id".to_owned(), request_id.to_owned())]);
        let reason = self.reason();
        let code = self.code();
        let mut details = ErrorDetails::new();
        let message = match self {
            Failure::Malformed(
                why @ (MalformedToken::BearerPrefix | MalformedToken::CallerKey),
            ) => {
                format!(
                    "{why}; this request cannot succeed as sent: fix it, do not retry it unchanged"
                )
            }
            Failure::Malformed(why) => {
                format!("{why}: it was not minted by this service; {NEVER_AGAIN}")
            }
            Failure::CallerUnauthenticated(why) => format!(
                "{why}; this is about the caller's own key, not an agent's token: fix the \
                 caller's configuration and do not log any agent out for it; retrying \
                 unchanged cannot succeed"
            ),
            Failure::CallerForbidden(Forbidden::MissingRole { caller, rpc, role }) => {
                metadata.insert("caller".to_owned(), caller.to_string());
                metadata.insert("required_role".to_owned(), role.as_str().to_owned());
                format!(
                    "caller {caller} may not call {rpc}: that needs the role `{}` (or `admin`); \
                     give the caller that role in the callers file or use another caller's \
                     key; no agent's token is affected",
                    role.as_str()
                )
            }
            Failure::CallerForbidden(Forbidden::NotOwned { credential_id }) => {
                let what = match credential_id {
                    Some(id) => {
                        metadata.insert("credential_id".to_owned(), id.to_string());
                        format!("credential {id} was minted by another caller")
                    }
                    None => {
                        "the credentials this call names were minted by another caller".to_owned()
                    }
                };
                format!(
                    "{what}: a caller acts only on the credentials it minted (an admin on \
                     all); nothing was changed and no agent's token is affected"
                )
            }
            Failure::Unknown => format!(
                "token is not known to this service (never minted here, or dead for longer \
                 than the tombstone retention); {NEVER_AGAIN}"
            ),
            Failure::TargetUnknown => format!(
                "no such credential or thread (never minted here, or dead for longer than \
                 the tombstone retention); {NEVER_AGAIN}"
            ),
            Failure::Dead(dead) | Failure::TargetDead(dead) => {
                metadata.insert("credential_id".to_owned(), dead.credential_id.to_string());
                metadata.insert("thread_id".to_owned(), dead.thread_id.to_string());
                let what = match dead.reason {
                    DeathReason::Expired => "expired (it reached its expires_at)".to_owned(),
                    DeathReason::IdleTimeout => {
                        "expired after going unused for its idle timeout".to_owned()
                    }
                    DeathReason::Revoked(cause) => {
                        metadata.insert("revocation_cause".to_owned(), cause.as_str().to_owned());
                        format!("was revoked (cause: {})", cause.as_str())
                    }
                };
                format!("credential {} {what}; {NEVER_AGAIN}", dead.credential_id)
            }
            Failure::ScopeMissing {
                credential_id,
                thread_id,
                scope,
            } => {
                metadata.insert("credential_id".to_owned(), credential_id.to_string());
                metadata.insert("thread_id".to_owned(), thread_id.to_string());
                metadata.insert("scope".to_owned(), scope.to_string());
                format!(
                    "credential {credential_id} does not hold the scope {scope:?} this call \
                     requires; the token is still valid for its own scopes, so this is not a \
                     logout: retrying this call with the same token cannot succeed"
                )
            }
            Failure::InvalidArgument(violations) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_ref()).collect();
                metadata.insert("fields".to_owned(), fields.join(","));
                let summary = violations
                    .iter()
                    .map(|v| v.description.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                for violation in &violations {
                    details.add_bad_request_violation(
                        violation.field.clone(),
                        violation.description.clone(),
                    );
                }
                format!(
                    "invalid request: {summary}; fix the request, retrying it unchanged cannot succeed"
                )
            }
            Failure::Limit(limit) => limit_message(limit, &mut metadata),
            Failure::TooLarge { part, limit } => {
                metadata.insert("part".to_owned(), part.to_owned());
                metadata.insert("limit".to_owned(), limit.to_string());
                format!(
                    "the request {part} is larger than the {limit} bytes this server accepts; nothing was done: send a smaller request, retrying it unchanged cannot succeed"
                )
            }
            Failure::UnknownMethod { rpc } => {
                let message = format!(
                    "this server has no method {rpc}; check that the client's proto matches \
                     this server's version; retrying cannot succeed"
                );
                metadata.insert("rpc".to_owned(), rpc);
                message
            }
            Failure::DeadlineExceeded { deadline } => {
                metadata.insert("deadline_ms".to_owned(), deadline.as_millis().to_string());
                format!(
                    "the call did not finish within its deadline of {}; this says nothing about any token. Resolve and the revocations are safe to repeat; a repeated Mint may leave an extra credential that dies by its idle timeout",
                    humantime::format_duration(deadline)
                )
            }
            Failure::Unavailable {
                message,
                retry_after,
            } => {
                details.set_retry_info(Some(retry_after));
                format!(
                    "{message}; this is transient: retry after {} (another replica may answer now)",
                    humantime::format_duration(retry_after)
                )
            }
        };
        details.set_error_info(reason, DOMAIN, metadata);
        let message = format!("{message} [request_id {request_id}]");
        Status::with_error_details(code, message, details)
    }
}

/// The message and metadata of a full limit: what it is and what frees room.
fn limit_message(limit: Limit, metadata: &mut HashMap<String, String>) -> String {
    const NOT_TRANSIENT: &str = "this is a limit, not a transient fault: retrying at once cannot succeed; no credential was minted";
    match limit {
        Limit::Thread { thread_id, limit } => {
            metadata.insert("thread_id".to_owned(), thread_id.to_string());
            metadata.insert("limit".to_owned(), limit.to_string());
            format!(
                "thread {thread_id} already holds its limit of {limit} live credentials; room frees when one of them is revoked or dies, or mint with replace_previous; {NOT_TRANSIENT}"
            )
        }
        Limit::Store { budget, limit } => {
            metadata.insert("budget".to_owned(), budget.as_str().to_owned());
            metadata.insert("limit".to_owned(), limit.to_string());
            let what = match budget {
                Budget::Credentials => format!("{limit} live credentials"),
                Budget::Bytes => format!("{limit} bytes of credential ids, scopes and labels"),
            };
            format!(
                "the authority holds its budget of {what}; room frees as credentials are revoked or die, and an operator can raise the budget; {NOT_TRANSIENT}"
            )
        }
        Limit::CallerLive { caller, limit } => {
            metadata.insert("caller".to_owned(), caller.to_string());
            metadata.insert("limit".to_owned(), limit.to_string());
            format!(
                "caller {caller} already holds its quota of {limit} live credentials (the callers file's max_live_credentials); room frees as its credentials are revoked or die; {NOT_TRANSIENT}"
            )
        }
        Limit::CallerRate {
            caller,
            per_second,
            burst,
        } => {
            metadata.insert("caller".to_owned(), caller.to_string());
            metadata.insert("per_second".to_owned(), per_second.to_string());
            metadata.insert("burst".to_owned(), burst.to_string());
            format!(
                "caller {caller} mints faster than its quota of {per_second} per second (burst {burst}, the callers file's mint_rate); room frees at that rate, so a Mint sent later may succeed; no credential was minted"
            )
        }
    }
}

impl From<MalformedToken> for Failure {
    fn from(why: MalformedToken) -> Self {
        Failure::Malformed(why)
    }
}

/// How long a client waits before retrying a write the store could not
/// make durable: long enough for an operator's fix or a disk's recovery to
/// be seen, short enough that an agent's session does not notice.
pub const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<Rejection> for Failure {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Unknown => Failure::Unknown,
            Rejection::Dead(dead) => Failure::Dead(dead),
            Rejection::ScopeMissing {
                credential_id,
                thread_id,
                scope,
            } => Failure::ScopeMissing {
                credential_id,
                thread_id,
                scope,
            },
            Rejection::NotOwned { credential_id } => {
                Failure::CallerForbidden(Forbidden::NotOwned { credential_id })
            }
            Rejection::ThreadLimit { thread_id, limit } => {
                Failure::Limit(Limit::Thread { thread_id, limit })
            }
            Rejection::StoreBudget { budget, limit } => {
                Failure::Limit(Limit::Store { budget, limit })
            }
            Rejection::OwnerQuota { owner, limit } => Failure::Limit(Limit::CallerLive {
                caller: owner,
                limit,
            }),
            Rejection::Unavailable { what } => Failure::Unavailable {
                message: what,
                retry_after: STORE_RETRY_AFTER,
            },
        }
    }
}

impl From<Vec<FieldViolation>> for Failure {
    fn from(violations: Vec<FieldViolation>) -> Self {
        Failure::InvalidArgument(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        let status = Failure::Unavailable {
            message: "shutting down",
            retry_after: Duration::from_secs(1),
        }
        .into_status("req-1");
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(1))
        );
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "SERVICE_UNAVAILABLE");
        assert_eq!(info.metadata["request_id"], "req-1");

        let status = Failure::Unknown.into_status("req-2");
        assert_eq!(status.code(), Code::Unauthenticated);
        let details = status.get_error_details();
        assert!(details.retry_info().is_none());
        assert_eq!(details.error_info().unwrap().domain, DOMAIN);
        assert!(status.message().contains("never work again"));
    }
}

//! Typed failures and their gRPC form.
//!
//! Every failure becomes a status with a `google.rpc.ErrorInfo` detail
//! (domain [`DOMAIN`]) whose reason is stable, whose metadata carries the
//! `request_id` (and `credential_id` / `thread_id` where known, never the
//! token), and a message that says whether retrying can help. Only
//! [`Failure::Unavailable`] is retryable, and only it carries `RetryInfo`.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::store::{DeadCredential, DeathReason};
use crate::token::MalformedToken;
use crate::validate::FieldViolation;

/// The `ErrorInfo.domain` of every failure.
pub const DOMAIN: &str = "credential-authority";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The token is not in this service's format.
    #[error("malformed token: {0}")]
    Malformed(MalformedToken),
    /// A well-formed token the service does not know.
    #[error("unknown token")]
    Unknown,
    /// A known credential that is dead.
    #[error("dead credential {}", .0.credential_id)]
    Dead(DeadCredential),
    /// The request has bad fields.
    #[error("invalid request ({} bad fields)", .0.len())]
    InvalidArgument(Vec<FieldViolation>),
    /// A transient condition; the same call may succeed after `retry_after`.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What is going on, for humans.
        message: &'static str,
        /// How long to wait before retrying.
        retry_after: Duration,
    },
}

impl Failure {
    /// The stable `ErrorInfo.reason` (see `ErrorReason` in the proto).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "TOKEN_MALFORMED",
            Failure::Unknown => "TOKEN_UNKNOWN",
            Failure::Dead(dead) => match dead.reason {
                DeathReason::Expired => "TOKEN_EXPIRED",
                DeathReason::IdleTimeout => "TOKEN_IDLE_TIMEOUT",
                DeathReason::Revoked(_) => "TOKEN_REVOKED",
            },
            Failure::InvalidArgument(_) => "INVALID_REQUEST",
            Failure::Unavailable { .. } => "SERVICE_UNAVAILABLE",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Failure::Malformed(_) | Failure::Unknown | Failure::Dead(_) => Code::Unauthenticated,
            Failure::InvalidArgument(_) => Code::InvalidArgument,
            Failure::Unavailable { .. } => Code::Unavailable,
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
            Failure::Malformed(why) => {
                format!("{why}: it was not minted by this service; {NEVER_AGAIN}")
            }
            Failure::Unknown => format!(
                "token is not known to this service (never minted here, or dead for longer \
                 than the tombstone retention); {NEVER_AGAIN}"
            ),
            Failure::Dead(dead) => {
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
            Failure::InvalidArgument(violations) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
                let summary = violations
                    .iter()
                    .map(|v| v.description.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                for violation in violations.iter() {
                    details
                        .add_bad_request_violation(violation.field, violation.description.clone());
                }
                metadata.insert("fields".to_owned(), fields.join(","));
                format!("invalid request: {summary}; fix the request, retrying it unchanged cannot succeed")
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

impl From<MalformedToken> for Failure {
    fn from(why: MalformedToken) -> Self {
        Failure::Malformed(why)
    }
}

impl From<crate::store::Rejection> for Failure {
    fn from(rejection: crate::store::Rejection) -> Self {
        match rejection {
            crate::store::Rejection::Unknown => Failure::Unknown,
            crate::store::Rejection::Dead(dead) => Failure::Dead(dead),
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

//! Reading the functions' replies: every shape a function answers, and
//! anything else as our own fault (unavailable), never a verdict on a token.

use std::sync::Arc;

use redis::Value;

use crate::clock::Millis;
use crate::store::types::{DeadCredential, Deadlines, DeathReason, Rejection, RevocationCause};
use crate::token::CredentialId;

/// A Resolve answer copied out of the reply, which the view borrows.
pub(super) struct LiveReply {
    pub(super) credential_id: CredentialId,
    pub(super) thread_id: String,
    pub(super) instance_id: String,
    pub(super) kind: String,
    pub(super) owner: String,
    pub(super) created_at: Millis,
    pub(super) deadlines: Deadlines,
    pub(super) scopes: Vec<Box<str>>,
    pub(super) labels: Vec<(Box<str>, Box<str>)>,
}

/// A reply we cannot read is our fault, never the token's.
pub(super) fn unreadable() -> Rejection {
    tracing::error!("the Redis store answered something this version cannot read");
    Rejection::Unavailable {
        what: "the Redis store answered unexpectedly",
    }
}

/// The reply as an array: every function answers one.
pub(super) fn array(value: &Value) -> Result<&[Value], Rejection> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(unreadable()),
    }
}

/// The reply's first element: which answer it is.
pub(super) fn tag(parts: &[Value]) -> Result<&str, Rejection> {
    text(parts, 0)
}

/// Element `at` as UTF-8 text.
pub(super) fn text(parts: &[Value], at: usize) -> Result<&str, Rejection> {
    match parts.get(at) {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).map_err(|_| unreadable()),
        Some(Value::SimpleString(text)) => Ok(text),
        _ => Err(unreadable()),
    }
}

/// An integer reply, or a number sent as text.
pub(super) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

/// Element `at` as a non-negative integer (times, counts, limits).
pub(super) fn number(parts: &[Value], at: usize) -> Result<u64, Rejection> {
    parts
        .get(at)
        .and_then(integer)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(unreadable)
}

/// Element `at` as a credential id.
pub(super) fn id_at(parts: &[Value], at: usize) -> Result<CredentialId, Rejection> {
    CredentialId::parse(text(parts, at)?).ok_or_else(unreadable)
}

/// A live answer: `L`, id, thread, instance, kind, owner, created,
/// expires, idle, scopes (`\n`-separated), labels (`key\tvalue\n`).
pub(super) fn live_reply(parts: &[Value]) -> Result<LiveReply, Rejection> {
    let scopes = text(parts, 9)?
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(Box::from)
        .collect();
    let labels = text(parts, 10)?
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (k, v) = line.split_once('\t').ok_or_else(unreadable)?;
            Ok((Box::from(k), Box::from(v)))
        })
        .collect::<Result<_, Rejection>>()?;
    Ok(LiveReply {
        credential_id: id_at(parts, 1)?,
        thread_id: text(parts, 2)?.to_owned(),
        instance_id: text(parts, 3)?.to_owned(),
        kind: text(parts, 4)?.to_owned(),
        owner: text(parts, 5)?.to_owned(),
        created_at: number(parts, 6)?,
        deadlines: Deadlines {
            expires_at: number(parts, 7)?,
            idle_expires_at: number(parts, 8)?,
        },
        scopes,
        labels,
    })
}

/// A death reason by the name the functions use.
pub(super) fn reason(name: &str) -> Result<DeathReason, Rejection> {
    Ok(match name {
        "idle" => DeathReason::IdleTimeout,
        "expired" => DeathReason::Expired,
        "credential" => DeathReason::Revoked(RevocationCause::Credential),
        "thread" => DeathReason::Revoked(RevocationCause::Thread),
        "replaced" => DeathReason::Revoked(RevocationCause::Replaced),
        "all" => DeathReason::Revoked(RevocationCause::All),
        "caller" => DeathReason::Revoked(RevocationCause::Caller),
        "provider_instance" => DeathReason::Revoked(RevocationCause::ProviderInstance),
        _ => return Err(unreadable()),
    })
}

/// A dead answer: `D`, reason, id, thread, owner.
pub(super) fn dead_reply(parts: &[Value]) -> Result<DeadCredential, Rejection> {
    Ok(DeadCredential {
        reason: reason(text(parts, 1)?)?,
        credential_id: id_at(parts, 2)?,
        thread_id: Arc::from(text(parts, 3)?),
        minted_by: Arc::from(text(parts, 4)?),
    })
}

/// The refusals every function shares: unknown, dead, not owned.
pub(super) fn refusal(
    parts: &[Value],
    named: Option<CredentialId>,
) -> Result<Rejection, Rejection> {
    match tag(parts)? {
        "U" => Ok(Rejection::Unknown),
        "D" => Ok(Rejection::Dead(dead_reply(parts)?)),
        "N" => Ok(Rejection::NotOwned {
            credential_id: named,
        }),
        "E" => {
            tracing::error!("a Redis function refused its input");
            Ok(Rejection::Unavailable {
                what: "the Redis store refused the change",
            })
        }
        _ => Err(unreadable()),
    }
}

//! A credential's record and the class it shares with its siblings: the
//! deadline arithmetic of sliding renewal and the liveness check that every
//! Resolve runs.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::revocation::{Pair, Revocations};
use super::types::{DeadCredential, Deadlines, DeathReason, Labels, Rejection, Scopes};
use crate::clock::Millis;
use crate::token::{CredentialId, TokenDigest};

/// What many credentials have in common: the owner and provider instance,
/// the kind, scopes, labels and lifetimes they were minted with. Interned,
/// so each record holds one pointer instead of its own copies, and Resolve
/// reads it from a cache line that stays hot.
pub(super) struct Class {
    /// The (caller, provider instance) the credentials belong to: their
    /// owner and their RevokeAll scopes.
    pub(super) pair: Arc<Pair>,
    pub(super) provider_kind: Option<Box<str>>,
    pub(super) scopes: Scopes,
    pub(super) labels: Labels,
    pub(super) idle_timeout: Millis,
    pub(super) max_lifetime: Millis,
    /// `Millis::MAX` when the store has no absolute lifetime.
    pub(super) absolute_lifetime: Millis,
    /// What a record of this class costs the store's byte budget besides
    /// its thread id (see [`Class::budget_bytes`]); follows from the fields
    /// above, so it takes no part in equality.
    pub(super) bytes: u64,
}

impl Class {
    /// The lengths of the strings a credential of this class brings besides
    /// its thread id: instance id, kind, scopes, label keys and values. What
    /// [`super::types::StoreConfig::max_credential_bytes`] counts, whether
    /// or not the class is shared: a budget on what callers send, not on
    /// what interning saves.
    pub(super) fn budget_bytes(
        instance_id: &str,
        provider_kind: Option<&str>,
        scopes: &Scopes,
        labels: &Labels,
    ) -> u64 {
        let scopes: usize = scopes.iter().map(|s| s.len()).sum();
        let labels: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        (instance_id.len() + provider_kind.map_or(0, str::len) + scopes + labels) as u64
    }
}

impl PartialEq for Class {
    /// Pairs are interned, so the same pair is the same allocation.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pair, &other.pair)
            && self.provider_kind == other.provider_kind
            && self.scopes == other.scopes
            && self.labels == other.labels
            && self.idle_timeout == other.idle_timeout
            && self.max_lifetime == other.max_lifetime
            && self.absolute_lifetime == other.absolute_lifetime
    }
}

impl Eq for Class {}

impl Hash for Class {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.pair), state);
        self.provider_kind.hash(state);
        self.scopes.hash(state);
        self.labels.hash(state);
        self.idle_timeout.hash(state);
        self.max_lifetime.hash(state);
    }
}

/// A credential. Everything but `last_used` and the thread link is fixed
/// at mint.
///
/// Both deadlines follow from the latest use: `expires_at` is
/// `max(expires_at, now + max_lifetime)` after every use, which is
/// `last_used + max_lifetime` since `last_used` only grows (mint counts as
/// the first use). So a renewal writes one atomic, and only when the
/// millisecond changed.
///
/// Laid out in declaration order: what every Resolve reads (the digest it
/// compares, then the liveness fields) fills the first 64 bytes, so a check
/// touches as few cache lines as the record's position allows.
#[repr(C)]
pub(super) struct Record {
    pub(super) digest: TokenDigest,
    pub(super) last_used: AtomicU64,
    pub(super) class: Arc<Class>,
    /// The revocation epoch when it was minted: any of its RevokeAll scopes
    /// revoked at a later epoch ended it (see [`Revocations`]).
    pub(super) minted_epoch: u64,
    pub(super) created_at: Millis,
    pub(super) credential_id: CredentialId,
    pub(super) thread_id: Box<str>,
    /// The thread's next older credential ([`super::slab::SlotKey::NONE`]
    /// for none). Changed only under the thread's shard lock.
    pub(super) older: AtomicU32,
    /// The thread's next newer credential ([`super::slab::SlotKey::NONE`]
    /// for the newest), so that a record leaves its thread's list in
    /// constant time however long the list is. Changed only under the
    /// thread's shard lock.
    pub(super) newer: AtomicU32,
    /// The version of the slot holding it (see [`super::slab::Handle`]);
    /// set by [`super::slab::RecordShard::insert`]. Fills what would be
    /// padding.
    pub(super) version: u32,
    /// Set while its Mint waits for the journal: the record holds its place
    /// in its thread and the budgets, and revocations of its thread reach
    /// it, but no call can use it until the Mint is durable (see
    /// [`super::Store::mint`]).
    pub(super) pending: AtomicBool,
}

impl Record {
    /// Whether a call may see it: its Mint is durable.
    pub(super) fn visible(&self) -> bool {
        !self.pending.load(Ordering::Acquire)
    }

    /// The caller that minted it.
    pub(super) fn minted_by(&self) -> &str {
        &self.class.pair.owner.name
    }

    /// What it costs the store's byte budget: charged at Mint, given back
    /// when the record leaves, both from this one formula.
    pub(super) fn budget_bytes(&self) -> u64 {
        self.thread_id.len() as u64 + self.class.bytes
    }

    /// The deadlines that follow from a latest use at `last_used`.
    pub(super) fn deadlines_after(&self, last_used: Millis) -> Deadlines {
        let class = &*self.class;
        let expires_at = last_used
            .saturating_add(class.max_lifetime)
            .min(self.created_at.saturating_add(class.absolute_lifetime));
        Deadlines {
            expires_at,
            idle_expires_at: last_used.saturating_add(class.idle_timeout).min(expires_at),
        }
    }

    /// Whether no RevokeAll has ended it: it still counts as live for the
    /// counts RevokeAll reports.
    pub(super) fn counted(&self, revocations: &Revocations) -> bool {
        !revocations.is_revoked(&self.class.pair, self.minted_epoch)
    }

    /// Why this record is dead at `now`, if it is. The first death names
    /// the reason: a deadline that passed before a RevokeAll keeps its own
    /// reason, whatever the revocation says.
    pub(super) fn death(&self, now: Millis, revocations: &Revocations) -> Option<DeathReason> {
        let last_used = self.last_used.load(Ordering::Acquire);
        let expires_at = self.deadlines_after(last_used).expires_at;
        let idle_deadline = last_used.saturating_add(self.class.idle_timeout);
        let died_at = idle_deadline.min(expires_at);
        let reason = if idle_deadline < expires_at {
            DeathReason::IdleTimeout
        } else {
            DeathReason::Expired
        };
        let by_time = (now >= died_at).then_some(reason);
        if self.counted(revocations) {
            return by_time;
        }
        let (revoked_at, cause) = revocations.first_revocation(&self.class.pair, self.minted_epoch);
        match by_time {
            Some(reason) if died_at <= revoked_at => Some(reason),
            _ => Some(DeathReason::Revoked(cause)),
        }
    }

    /// The deadlines as of the latest use.
    pub(super) fn deadlines(&self) -> Deadlines {
        self.deadlines_after(self.last_used.load(Ordering::Acquire))
    }

    /// Sliding renewal on use: the idle clock restarts and `expires_at` moves
    /// to `max(expires_at, now + max_lifetime)`, never past the absolute
    /// deadline and never backwards. A use in the same millisecond as the
    /// latest one writes nothing, so a hot credential's cache line is not
    /// bounced between cores by every call.
    fn renew(&self, now: Millis) -> Deadlines {
        let previous = self.last_used.load(Ordering::Acquire);
        let latest = if now > previous {
            self.last_used.fetch_max(now, Ordering::AcqRel).max(now)
        } else {
            previous
        };
        self.deadlines_after(latest)
    }

    /// One use at `now` (a Resolve, or a Touch when `required_scope` is
    /// `None`): refused if dead or lacking the scope, else renewed.
    pub(super) fn use_at(
        &self,
        now: Millis,
        required_scope: Option<&str>,
        revocations: &Revocations,
    ) -> Result<Deadlines, Rejection> {
        if let Some(reason) = self.death(now, revocations) {
            return Err(Rejection::Dead(self.dead(reason)));
        }
        if let Some(scope) = required_scope {
            if !self.class.scopes.iter().any(|held| **held == *scope) {
                return Err(Rejection::ScopeMissing {
                    credential_id: self.credential_id,
                    thread_id: Arc::from(&*self.thread_id),
                    scope: scope.into(),
                });
            }
        }
        Ok(self.renew(now))
    }

    /// This record as a dead credential that died for `reason`.
    pub(super) fn dead(&self, reason: DeathReason) -> DeadCredential {
        DeadCredential {
            reason,
            credential_id: self.credential_id,
            thread_id: Arc::from(&*self.thread_id),
            minted_by: self.class.pair.owner.name.clone(),
        }
    }
}

/// A record's first 64 bytes hold what Resolve reads.
const _: () = assert!(std::mem::offset_of!(Record, created_at) < 64);

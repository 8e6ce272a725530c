//! Mint: the checks a new credential passes and the one step that commits
//! it, with its replacement of earlier credentials.
//!
//! The order is fixed: reach and instance claims, then the limits (the
//! thread's, the caller's quota, the store's budgets), then the commit.
//! Everything up to the commit only reads, so a refused Mint replaces
//! nothing, claims no instance and moves no count. Each limit is checked
//! under what serialises the Mints it could race with: the thread's shard
//! lock for the per-thread limit (every insertion and removal of a thread's
//! record takes it), the owner's minting lock for its quota, and one atomic
//! reservation for each store budget, so two racing Mints never both take
//! the last place.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::durable;
use super::journal::{Durable, JournalError};
use super::record::{Class, Record};
use super::revocation::InstanceTaken;
use super::slab::{shard_of_digest, Handle, SlotKey};
use super::sweeper::Deadline;
use super::threads::{Removal, ThreadKey, ThreadShard};
use super::types::{
    Budget, Deadlines, DeathReason, Minted, NewCredential, Rejection, RevocationCause,
};
use super::{clamp_override, Accounting, Retired, Shared, Store};
use crate::clock::Millis;
use crate::token::{CredentialId, TokenDigest};

/// What Mint's replacement does with one earlier credential of the thread.
enum Previous {
    /// Same provider instance, within reach: revoked (or removed if dead).
    Replace,
    /// Another instance, or dead and out of reach: left alone.
    Keep,
    /// Same instance, live, minted by another caller (an administrator,
    /// whose credentials do not take the instance from its adapter): the
    /// Mint is refused.
    InTheWay,
}

/// One earlier record of the thread as the checks saw it.
struct Seen {
    handle: Handle,
    credential_id: CredentialId,
    previous: Previous,
    /// Why it is dead, if it is.
    death: Option<DeathReason>,
    /// What its removal gives back to the byte budget.
    bytes: u64,
    /// Whether its removal lowers the minting caller's live count.
    owners_live: bool,
}

/// The earlier records a Mint replaces, oldest first, and what their
/// removal frees.
#[derive(Default)]
struct Replacement {
    handles: Vec<Handle>,
    /// Their credential ids, for the journal, and why each dies: replaced
    /// if live when the Mint looked, else its own death.
    ids: Vec<(CredentialId, DeathReason)>,
    /// What each one's removal gives back to the byte budget.
    each_bytes: Vec<u64>,
    bytes: u64,
    owners_live: u64,
}

/// A Mint whose record is in memory, pending, and in the journal, waiting
/// to be durable; [`Store::finish_mint`] ends it.
#[must_use = "a begun Mint must be finished"]
pub(super) struct BegunMint {
    handle: Handle,
    thread_id: Box<str>,
    replacement: Replacement,
    credential_id: CredentialId,
    deadlines: Deadlines,
    /// `None` on a store without a journal: the Mint finished at once.
    pub(super) durable: Option<Durable>,
    /// Set when the Mint finished at once.
    replaced: Option<u64>,
}

impl Store {
    /// Stores a new credential under `digest` (the digest of a freshly
    /// generated token), owned by `new.minted_by`. With `replace_previous`,
    /// the earlier credentials of the same thread and provider instance
    /// are revoked under the thread's lock before the new record becomes
    /// visible, so the two never work at the same time and concurrent
    /// rotations of one thread serialise. A Mint for a provider instance
    /// that holds credentials of a caller outside `new.reach`, or whose
    /// replacement would revoke one, fails with [`Rejection::NotOwned`]
    /// (naming no credential of the other caller) and changes nothing.
    ///
    /// Then the limits, each counted as it will be after the replacement
    /// (a rotation at a limit still succeeds): the thread's
    /// ([`Rejection::ThreadLimit`]), the caller's `owner_quota`
    /// ([`Rejection::OwnerQuota`]) and the store's budgets
    /// ([`Rejection::StoreBudget`]). A refused Mint changes nothing, with
    /// one exception that no call can observe: a thread found at its limit
    /// first loses its dead records, as the sweeper would remove them.
    ///
    /// On a durable store the new record is invisible until its journal
    /// record is durable, and the replacement happens only then: a failed
    /// write is [`Rejection::Unavailable`] and changes nothing. This
    /// waits for the disk on the calling thread; the service uses
    /// [`super::Backend::mint`], which awaits it.
    pub fn mint(&self, digest: TokenDigest, new: NewCredential<'_>) -> Result<Minted, Rejection> {
        let mut begun = self.begin_mint(digest, new)?;
        let written = match begun.durable.take() {
            Some(durable) => durable.wait_blocking(),
            None => Ok(()),
        };
        self.finish_mint(begun, written)
    }

    /// The first half of [`Store::mint`]: every check, then the record in
    /// memory, pending, and in the journal.
    pub(super) fn begin_mint(
        &self,
        digest: TokenDigest,
        new: NewCredential<'_>,
    ) -> Result<BegunMint, Rejection> {
        let shared = &*self.shared;
        let limits = &shared.limits;
        let pair = shared
            .revocations
            .pair(new.minted_by, new.provider_instance_id, new.reach)
            .map_err(|InstanceTaken| Rejection::NotOwned {
                credential_id: None,
            })?;
        let bytes = Class::budget_bytes(
            &pair.instance_id,
            new.provider_kind,
            &new.scopes,
            &new.labels,
        );
        let class = shared.class(Class {
            pair,
            provider_kind: new.provider_kind.map(Box::from),
            scopes: new.scopes.clone(),
            labels: new.labels.clone(),
            idle_timeout: clamp_override(new.idle_timeout, limits.idle_timeout),
            max_lifetime: clamp_override(new.max_lifetime, limits.max_lifetime),
            absolute_lifetime: limits.absolute_lifetime.unwrap_or(Millis::MAX),
            bytes,
        });
        let bytes = bytes + new.thread_id.len() as u64;
        let owner = class.pair.owner.clone();
        let (hash, thread_shard) = shared.thread_hash(new.thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let now = shared.clock.now();
        let checked = shared.replacement(&mut threads, hash, &new, now);
        // Held until the record is counted, so that two Mints of one caller
        // cannot both pass its quota.
        let minting = new.owner_quota.map(|_| owner.minting());
        let checked = checked.and_then(|replacement| {
            if let Some(quota) = new.owner_quota {
                let live = shared.revocations.owner_live(&owner);
                if live.saturating_sub(replacement.owners_live) >= quota {
                    return Err(Rejection::OwnerQuota {
                        owner: Arc::from(new.minted_by),
                        limit: quota,
                    });
                }
            }
            shared.reserve(bytes, &replacement)?;
            Ok(replacement)
        });
        let replacement = match checked {
            Ok(replacement) => replacement,
            Err(rejection) => {
                drop((minting, threads));
                shared.release_class(class);
                return Err(rejection);
            }
        };
        // The commit: nothing below refuses but the journal. The record goes
        // in pending, holding its place in the thread and the budgets; it is
        // stamped, inserted and journaled under the counting lock, so the
        // journal orders it with RevokeAll as memory does.
        let head = shared.find_thread(&threads, hash, new.thread_id);
        let record_shard = shard_of_digest(&digest);
        let journal = shared.durable.as_ref().map(|d| &d.journal);
        let mut record = Record {
            digest,
            credential_id: CredentialId::generate_routed(record_shard as u8),
            thread_id: Box::from(new.thread_id),
            class,
            minted_epoch: 0,
            created_at: now,
            last_used: AtomicU64::new(now),
            older: AtomicU32::new(head.map_or(SlotKey::NONE, |h| h.newest).0),
            newer: AtomicU32::new(SlotKey::NONE.0),
            version: 0,
            // Shown by `replace_and_show` after the replacement, so the
            // old and new credentials never both work.
            pending: AtomicBool::new(true),
        };
        let credential_id = record.credential_id;
        let deadlines = record.deadlines();
        let (handle, durable) = {
            let counting = shared.revocations.counting();
            record.minted_epoch = shared.revocations.stamp(&counting, &record.class.pair);
            let payload = journal.map(|_| durable::minted_payload(&record, &replacement.ids));
            let handle = {
                let mut shard = shared.records[record_shard].write();
                let handle = shard.insert(record_shard, record);
                shard.deadlines.push(Reverse(Deadline {
                    at: deadlines.idle_expires_at,
                    handle,
                }));
                handle
            };
            let durable = journal.zip(payload).map(|(journal, payload)| {
                journal.record_time(now);
                journal.append(&payload)
            });
            (handle, durable)
        };
        drop(minting);
        shared.link_newest(&mut threads, hash, head, handle.key());
        if let (Some(durable), Some(_)) = (&shared.durable, &durable) {
            if !replacement.ids.is_empty() {
                // Under the thread's lock, as the snapshot reads it.
                durable
                    .pending_replacements
                    .lock()
                    .insert(credential_id, replacement.ids.clone());
            }
        }
        let mut begun = BegunMint {
            handle,
            thread_id: Box::from(new.thread_id),
            replacement,
            credential_id,
            deadlines,
            durable,
            replaced: None,
        };
        if begun.durable.is_none() {
            begun.replaced = Some(shared.replace_and_show(&mut threads, hash, &mut begun, now));
        }
        drop(threads);
        if deadlines.idle_expires_at < shared.sweeper_wakes_at.load(Ordering::Acquire) {
            shared.sweeper_wakeup.notify_one();
        }
        Ok(begun)
    }

    /// Ends a begun Mint once its journal record is durable (`written` is
    /// `Ok`) or is known not to be: the earlier credentials it replaces are
    /// revoked and the new one becomes visible, in that order, so the two
    /// never work at the same time; or, when the write failed, the new
    /// record goes without a trace and the earlier ones stay as they were.
    pub(super) fn finish_mint(
        &self,
        mut begun: BegunMint,
        written: Result<(), JournalError>,
    ) -> Result<Minted, Rejection> {
        let shared = &*self.shared;
        let (credential_id, deadlines) = (begun.credential_id, begun.deadlines);
        let minted = |replaced| Minted {
            credential_id,
            deadlines,
            replaced,
        };
        if let Some(replaced) = begun.replaced {
            return Ok(minted(replaced));
        }
        let (hash, thread_shard) = shared.thread_hash(&begun.thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let now = shared.clock.now();
        if let Some(durable) = &shared.durable {
            durable
                .pending_replacements
                .lock()
                .remove(&begun.credential_id);
        }
        match written {
            Ok(()) => {
                let replaced = shared.replace_and_show(&mut threads, hash, &mut begun, now);
                Ok(minted(replaced))
            }
            Err(error) => {
                let thread = ThreadKey {
                    id: &begun.thread_id,
                    hash,
                };
                shared.detach_as(
                    &mut threads,
                    thread,
                    begun.handle,
                    now,
                    None,
                    Accounting::GiveBack,
                    Removal::Discard,
                );
                // The earlier records stay: their places, which the
                // reservation counted as freed, are taken again.
                let replacement = std::mem::take(&mut begun.replacement);
                for (handle, bytes) in replacement.handles.iter().zip(&replacement.each_bytes) {
                    if shared.with_record(*handle, |_| ()).is_some() {
                        shared.held.credentials.fetch_add(1, Ordering::AcqRel);
                        shared.held.bytes.fetch_add(*bytes, Ordering::AcqRel);
                    }
                }
                Err(durable::unavailable(&error))
            }
        }
    }
}

impl Shared {
    /// The second half of a Mint, under the thread's lock: revokes the
    /// records it replaces (oldest first, as RevokeThread does, see
    /// ThreadTombstones), then shows the new one; returns how many live
    /// credentials it replaced. A replaced record that something else
    /// removed meanwhile gave its place back then, so the reservation's
    /// count of it is undone.
    fn replace_and_show(
        &self,
        threads: &mut ThreadShard,
        hash: u64,
        begun: &mut BegunMint,
        now: Millis,
    ) -> u64 {
        let thread = ThreadKey {
            id: &begun.thread_id,
            hash,
        };
        let mut replaced = 0;
        let replacement = std::mem::take(&mut begun.replacement);
        for (handle, bytes) in replacement.handles.into_iter().zip(replacement.each_bytes) {
            match self.detach(
                threads,
                thread,
                handle,
                now,
                Some(RevocationCause::Replaced),
                Accounting::Prepaid,
            ) {
                Retired::RevokedLive => replaced += 1,
                Retired::Absent => {
                    self.held.credentials.fetch_add(1, Ordering::AcqRel);
                    self.held.bytes.fetch_add(bytes, Ordering::AcqRel);
                }
                Retired::RemovedDead | Retired::StillLive(_) => {}
            }
        }
        self.with_record(begun.handle, |r| r.pending.store(false, Ordering::Release));
        replaced
    }
}

impl Shared {
    /// The checks made under the thread's lock: which earlier records the
    /// Mint replaces ([`Rejection::NotOwned`] when one is in the way), and
    /// whether the thread has room after the replacement.
    ///
    /// The per-thread limit is on live credentials, but revocation by
    /// RevokeAll and death by time are lazy: a thread's list may still hold
    /// records that are dead. So the head's count of held records is
    /// compared first, which costs nothing; only when it says the thread is
    /// full are the thread's records read (at most the limit of them, since
    /// the list never grows past it) and its dead ones removed, as the
    /// sweeper would, before the live ones are counted again. A dead record
    /// therefore never holds a live credential's place, and a full thread
    /// costs a refused Mint one walk of its list.
    fn replacement(
        &self,
        threads: &mut ThreadShard,
        hash: u64,
        new: &NewCredential<'_>,
        now: Millis,
    ) -> Result<Replacement, Rejection> {
        let limit = self.limits.max_credentials_per_thread;
        let Some(head) = self.find_thread(threads, hash, new.thread_id) else {
            return if limit == 0 {
                Err(Rejection::ThreadLimit {
                    thread_id: Arc::from(new.thread_id),
                    limit,
                })
            } else {
                Ok(Replacement::default())
            };
        };
        let full = u64::from(head.held) >= limit;
        if !new.replace_previous && !full {
            return Ok(Replacement::default());
        }
        let mut seen = Vec::with_capacity(head.held as usize);
        // Oldest first: the order the replacement revokes in.
        for handle in self.chain(head.newest).into_iter().rev() {
            let look = self.with_record(handle, |r| {
                let death = r.death(now, &self.revocations);
                let dead = death.is_some();
                let previous = if !new.replace_previous
                    || *r.class.pair.instance_id != *new.provider_instance_id
                {
                    Previous::Keep
                } else if new.reach.covers(r.minted_by()) {
                    Previous::Replace
                } else if !dead {
                    Previous::InTheWay
                } else {
                    Previous::Keep
                };
                Seen {
                    handle,
                    credential_id: r.credential_id,
                    previous,
                    death,
                    bytes: r.budget_bytes(),
                    owners_live: r.minted_by() == new.minted_by && r.counted(&self.revocations),
                }
            });
            seen.extend(look);
        }
        if seen
            .iter()
            .any(|seen| matches!(seen.previous, Previous::InTheWay))
        {
            return Err(Rejection::NotOwned {
                credential_id: None,
            });
        }
        let mut replacement = Replacement::default();
        let mut kept = 0u64;
        for one in &seen {
            match one.previous {
                Previous::Replace => {
                    replacement.handles.push(one.handle);
                    replacement.ids.push((
                        one.credential_id,
                        one.death
                            .unwrap_or(DeathReason::Revoked(RevocationCause::Replaced)),
                    ));
                    replacement.each_bytes.push(one.bytes);
                    replacement.bytes += one.bytes;
                    replacement.owners_live += u64::from(one.owners_live);
                }
                _ => kept += 1,
            }
        }
        if kept < limit {
            return Ok(replacement);
        }
        // Full after the replacement: the dead records it keeps go first.
        for one in seen.iter().filter(|one| one.death.is_some()) {
            if matches!(one.previous, Previous::Replace) {
                continue;
            }
            let outcome = self.detach(
                threads,
                ThreadKey {
                    id: new.thread_id,
                    hash,
                },
                one.handle,
                now,
                None,
                Accounting::GiveBack,
            );
            if let Retired::RemovedDead | Retired::RevokedLive = outcome {
                kept -= 1;
                // As the sweeper's removals are, so a restart does not
                // bring the record back.
                if let Some(durable) = &self.durable {
                    let reason = one.death.expect("only the dead");
                    let _ =
                        durable.append_unawaited(now, |w| w.swept(&one.credential_id, now, reason));
                }
            }
        }
        if kept < limit {
            Ok(replacement)
        } else {
            Err(Rejection::ThreadLimit {
                thread_id: Arc::from(new.thread_id),
                limit,
            })
        }
    }

    /// Takes the new record's place in both store budgets, counted after
    /// the replacement: the records it removes give theirs back here, once
    /// (their removal is [`Accounting::Prepaid`]). Each budget is one
    /// atomic compare-and-swap, so racing Mints never both take the last
    /// place; a refusal of the second puts the first back.
    fn reserve(&self, bytes: u64, replacement: &Replacement) -> Result<(), Rejection> {
        let freed = replacement.handles.len() as u64;
        let take = |held: &AtomicU64, add: u64, freed: u64, limit: u64| {
            held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                let after = now.saturating_sub(freed).saturating_add(add);
                (after <= limit).then_some(after)
            })
            .is_ok()
        };
        let limits = &self.limits;
        if !take(&self.held.credentials, 1, freed, limits.max_credentials) {
            return Err(Rejection::StoreBudget {
                budget: Budget::Credentials,
                limit: limits.max_credentials,
            });
        }
        if !take(
            &self.held.bytes,
            bytes,
            replacement.bytes,
            limits.max_credential_bytes,
        ) {
            self.held.credentials.fetch_add(freed, Ordering::AcqRel);
            self.held.credentials.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::StoreBudget {
                budget: Budget::Bytes,
                limit: limits.max_credential_bytes,
            });
        }
        Ok(())
    }
}

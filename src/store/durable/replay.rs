//! Restart: the snapshot, then the journal after it, applied to an empty
//! store.
//!
//! A snapshot is written while calls go on, so it may already hold changes
//! whose records come after its boundary. Every record kind is therefore
//! applied so that applying it again is harmless (stamps are set-if-newer,
//! uses are a maximum, a revocation of what is already gone does nothing),
//! and credentials minted after the boundary are left out of the snapshot's
//! part and put back by their own Mint record, in order: a revocation after
//! the boundary then reaches exactly the credentials that existed when it
//! ran, as in memory.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::super::journal::Recovered;
use super::super::owner_calls::Ended;
use super::super::record::{Class, Record};
use super::super::slab::{shard_of_digest, SlotKey};
use super::super::sweeper::Deadline;
use super::super::threads::{Removal, ThreadKey};
use super::super::types::{DeathReason, Reach, RevocationCause};
use super::super::{Accounting, Shared, SHARDS};
use super::event::{DecodeError, Event, StoredCredential};
use crate::clock::Millis;
use crate::token::CredentialId;

/// Where a Minted record's credential id sits: after the tag and digest.
const MINTED_ID: std::ops::Range<usize> = 33..49;

/// Replays `recovered` into the empty store `shared`; `newest` is the
/// newest time the store had used and `grace` the downtime forgiven (see
/// [`super::RESTART_GRACE`]). Returns how many records were read.
pub(super) fn restore(
    shared: &Shared,
    recovered: &Recovered,
    newest: Millis,
    grace: Millis,
) -> Result<u64, DecodeError> {
    let (snapshot, journal) = recovered.split();
    let minted_later: HashSet<[u8; 16]> = journal
        .clone()
        .filter(|payload| payload.first() == Some(&1) && payload.len() >= MINTED_ID.end)
        .map(|payload| payload[MINTED_ID].try_into().expect("16 bytes"))
        .collect();
    // The snapshot's newer last uses of credentials it leaves to their Mint.
    let mut later_uses: HashMap<CredentialId, Millis> = HashMap::new();
    let mut records = 0u64;
    for payload in snapshot {
        records += 1;
        match Event::decode(payload)? {
            Event::Minted {
                credential,
                replaced,
            } => {
                if minted_later.contains(credential.credential_id.as_bytes()) {
                    later_uses.insert(credential.credential_id, credential.last_used);
                } else {
                    restore_minted(shared, credential, &replaced)?;
                }
            }
            Event::Tombstone { dead, .. }
                if minted_later.contains(dead.credential_id.as_bytes()) => {}
            event => apply(shared, event)?,
        }
    }
    // Clean if the last record is a clean stop's (a snapshot is written
    // while the store runs, so it says nothing either way).
    let mut clean = false;
    for payload in journal {
        records += 1;
        let event = Event::decode(payload)?;
        clean = matches!(event, Event::Closed { .. });
        apply(shared, event)?;
    }
    for (id, last_used) in later_uses {
        shared.with_id(&id, |_, record| {
            record.last_used.fetch_max(last_used, Ordering::AcqRel)
        });
    }
    finish(shared, newest, grace, clean);
    Ok(records)
}

/// Applies one record.
fn apply(shared: &Shared, event: Event) -> Result<(), DecodeError> {
    match event {
        Event::Minted {
            credential,
            replaced,
        } => restore_minted(shared, credential, &replaced)?,
        Event::Renewed { uses } => {
            for (id, last_used) in uses {
                shared.with_id(&id, |_, record| {
                    record.last_used.fetch_max(last_used, Ordering::AcqRel)
                });
            }
        }
        Event::CredentialRevoked {
            credential_id,
            at,
            reason,
        } => remove_by_id(
            shared,
            &credential_id,
            at,
            Some(RevocationCause::Credential),
            reason.map_or(Removal::Retire, Removal::As),
        ),
        Event::Swept {
            credential_id,
            at,
            reason,
        } => remove_by_id(shared, &credential_id, at, None, Removal::As(reason)),
        Event::ThreadRevoked {
            thread_id,
            reach,
            at,
            removed,
        } => {
            let (hash, thread_shard) = shared.thread_hash(&thread_id);
            let mut threads = shared.threads[thread_shard].write();
            let reach = reach.as_deref().map_or(Reach::All, Reach::MintedBy);
            shared.revoke_thread_locked(
                &mut threads,
                ThreadKey {
                    id: &thread_id,
                    hash,
                },
                reach,
                at,
                Ended::Replay(&removed),
            );
        }
        Event::ScopesStamped { stamps } => {
            for (name, epoch, at) in stamps {
                shared
                    .revocations
                    .restore_stamps(&name, None, &[(epoch, at)]);
            }
        }
        Event::ScopeHistory {
            name,
            claims,
            history,
        } => shared
            .revocations
            .restore_stamps(&name, Some(claims), &history),
        Event::Epoch { epoch } => shared.revocations.restore_epoch(epoch),
        Event::Closed { .. } | Event::Opened { .. } => {}
        Event::Tombstone {
            digest,
            recorded_at,
            dead,
        } => shared
            .tombstones
            .record(digest, dead, recorded_at, shared.retention),
        Event::ThreadDeath {
            thread_id,
            created_at,
            recorded_at,
            dead,
        } => shared.thread_tombstones.record(
            &thread_id,
            created_at,
            || dead,
            recorded_at,
            shared.retention,
        ),
    }
    Ok(())
}

/// Removes the credential `id` from its thread at the journaled time `at`,
/// if it is still held: a RevokeCredential's or a sweep's record.
fn remove_by_id(
    shared: &Shared,
    id: &CredentialId,
    at: Millis,
    revoke: Option<RevocationCause>,
    removal: Removal,
) {
    let found = shared.with_id(id, |handle, record| (handle, record.thread_id.clone()));
    if let Some((handle, thread_id)) = found {
        shared.remove_from_thread_at(handle, &thread_id, revoke, at, removal);
    }
}

/// Puts back a minted credential, after revoking what its Mint replaced
/// (at its mint time, oldest first, as the Mint did).
fn restore_minted(
    shared: &Shared,
    credential: StoredCredential,
    replaced: &[(CredentialId, DeathReason)],
) -> Result<(), DecodeError> {
    let record_shard = shard_of_digest(&credential.digest);
    if usize::from(credential.credential_id.route()) % SHARDS != record_shard {
        return Err(DecodeError::new("credential id routes to another shard"));
    }
    let (hash, thread_shard) = shared.thread_hash(&credential.thread_id);
    let mut threads = shared.threads[thread_shard].write();
    let thread = ThreadKey {
        id: &credential.thread_id,
        hash,
    };
    for (id, reason) in replaced {
        let handle = shared.with_id(id, |handle, record| {
            (*record.thread_id == *credential.thread_id).then_some(handle)
        });
        if let Some(Some(handle)) = handle {
            shared.detach_as(
                &mut threads,
                thread,
                handle,
                credential.created_at,
                Some(RevocationCause::Replaced),
                Accounting::GiveBack,
                Removal::As(*reason),
            );
        }
    }
    if shared
        .with_id(&credential.credential_id, |_, _| ())
        .is_some()
        || shared.tombstones.get(&credential.digest).is_some()
    {
        // Already there: a record the snapshot held as well.
        return Ok(());
    }
    let pair = shared.revocations.restored_pair(
        &credential.minted_by,
        &credential.instance_id,
        credential.claims,
    );
    let scopes: Arc<[Box<str>]> = credential.scopes.into();
    let labels: Arc<[(Box<str>, Box<str>)]> = credential.labels.into();
    let bytes = Class::budget_bytes(
        &pair.instance_id,
        credential.provider_kind.as_deref(),
        &scopes,
        &labels,
    );
    let class = shared.class(Class {
        pair,
        provider_kind: credential.provider_kind,
        scopes,
        labels,
        idle_timeout: credential.idle_timeout,
        max_lifetime: credential.max_lifetime,
        absolute_lifetime: credential.absolute_lifetime,
        bytes,
    });
    let head = shared.find_thread(&threads, hash, &credential.thread_id);
    let record = Record {
        digest: credential.digest,
        last_used: AtomicU64::new(credential.last_used),
        class,
        minted_epoch: credential.minted_epoch,
        created_at: credential.created_at,
        credential_id: credential.credential_id,
        thread_id: credential.thread_id.clone(),
        older: AtomicU32::new(head.map_or(SlotKey::NONE, |h| h.newest).0),
        newer: AtomicU32::new(SlotKey::NONE.0),
        version: 0,
        pending: AtomicBool::new(false),
    };
    let budget = record.budget_bytes();
    let deadline = record.deadlines().idle_expires_at;
    let handle = {
        let mut shard = shared.records[record_shard].write();
        let handle = shard.insert(record_shard, record);
        shard.deadlines.push(Reverse(Deadline {
            at: deadline,
            handle,
        }));
        handle
    };
    shared.link_newest(&mut threads, hash, head, handle.key());
    shared.held.credentials.fetch_add(1, Ordering::AcqRel);
    shared.held.bytes.fetch_add(budget, Ordering::AcqRel);
    Ok(())
}

/// After replay: the live counts from the records, the crash bound, the
/// downtime grace, and a sweep requested for what died meanwhile.
///
/// After a crash, a use made since the last checkpoint may be missing, and
/// nothing tells which credentials were used then. So every credential
/// live at the newest recorded time counts as used then: its deadlines are
/// never earlier than one checkpoint interval before what they were (the
/// checkpointer records the time every interval), at the price of up to
/// one more idle timeout for a credential nobody was using. After a clean
/// stop every use is in the journal and nothing moves.
fn finish(shared: &Shared, newest: Millis, grace: Millis, clean: bool) {
    let revocations = &shared.revocations;
    let shards: Vec<_> = shared.records.iter().map(|s| s.read()).collect();
    revocations.recount(
        shards
            .iter()
            .flat_map(|shard| shard.records())
            .filter(|record| record.counted(revocations))
            .map(|record| (&*record.class.pair, record.minted_epoch)),
    );
    // What the crash bound and the grace move is a use like any other: the
    // next checkpoint writes it, so a later restart keeps it.
    if !clean && newest > 0 {
        for shard in &shards {
            for (slot, record) in shard.records_with_slots() {
                if record.death(newest, revocations).is_none()
                    && record.last_used.fetch_max(newest, Ordering::AcqRel) < newest
                {
                    shard.used.mark(slot);
                }
            }
        }
    }
    if grace > 0 {
        // Only what was live when the store stopped and died while it was
        // down: every other deadline stays exactly as it was.
        let now = shared.clock.now();
        for shard in &shards {
            for (slot, record) in shard.records_with_slots() {
                if record.death(newest, revocations).is_none()
                    && record.death(now, revocations).is_some()
                {
                    let last_used = record.last_used.load(Ordering::Acquire);
                    let moved = last_used.saturating_add(grace).min(now);
                    record.last_used.fetch_max(moved, Ordering::AcqRel);
                    shard.used.mark(slot);
                }
            }
        }
    }
    drop(shards);
    // Tombstones past their retention, as the sweeper would forget them:
    // replay recorded each at its death, never their forgetting.
    let cutoff = shared.clock.now().saturating_sub(shared.retention.age);
    shared.tombstones.evict_older_than(cutoff);
    shared.thread_tombstones.evict_older_than(cutoff);
    shared.reclaim.request();
    shared.sweeper_wakeup.notify_one();
}

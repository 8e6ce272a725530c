//! The calls a credential's owner makes by handle or by thread (Touch,
//! RevokeCredential, RevokeThread), each within the caller's [`Reach`].

use std::sync::Arc;

use super::journal::Durable;
use super::threads::{Removal, ThreadKey, ThreadShard};
use super::types::{
    CredentialRevocation, DeathReason, Reach, Rejection, RevocationCause, ThreadRevocation,
    ThreadTouch, Touched,
};
use super::{not_owned, Accounting, Retired, Shared, Store};
use crate::clock::Millis;
use crate::token::CredentialId;

impl Store {
    /// Renews one credential, by its handle, exactly as a successful Resolve
    /// would. Fails with the reason Resolve would give, and never revives;
    /// a credential outside `reach`, live or dead, is [`Rejection::NotOwned`].
    pub fn touch_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<Touched, Rejection> {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let live = shared.with_id(credential_id, |handle, record| {
            if !record.visible() {
                return Err(Rejection::Unknown);
            }
            if !reach.covers(record.minted_by()) {
                return Err(not_owned(credential_id));
            }
            Ok((
                handle,
                Touched {
                    credential_id: record.credential_id,
                    deadlines: record.use_at(now, None, &shared.revocations)?,
                },
            ))
        });
        match live {
            Some(touched) => touched.map(|(handle, touched)| {
                shared.mark_used(handle);
                touched
            }),
            None => Err(shared
                .dead_by_id(credential_id, reach)?
                .map_or(Rejection::Unknown, Rejection::Dead)),
        }
    }

    /// Renews every live credential of a thread within `reach` and lists
    /// the oldest [`super::StoreConfig::touch_reply_limit`] of them, with
    /// the number renewed. Fails only when none is: with [`Rejection::NotOwned`] when the thread's live
    /// credentials are all out of reach, else with the death of the
    /// thread's newest credential within reach (as Resolve of its token
    /// would), or [`Rejection::Unknown`] when there is none.
    pub fn touch_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadTouch, Rejection> {
        let shared = &*self.shared;
        let (hash, thread_shard) = shared.thread_hash(thread_id);
        let threads = shared.threads[thread_shard].read();
        let now = shared.clock.now();
        let chain = shared
            .find_thread(&threads, hash, thread_id)
            .map_or_else(Vec::new, |head| shared.chain(head.newest));
        let listed = shared.limits.touch_reply_limit;
        let mut touched = ThreadTouch {
            touched: Vec::with_capacity(chain.len().min(listed)),
            total: 0,
        };
        let mut out_of_reach_live = false;
        // The newest death within reach, by mint time.
        let mut newest_death: Option<(Millis, Rejection)> = None;
        // Oldest first, so touched credentials come in mint order.
        for &handle in chain.iter().rev() {
            let look = shared.with_record(handle, |record| {
                if !record.visible() {
                    return TouchLook::Pending;
                }
                if !reach.covers(record.minted_by()) {
                    let live = record.death(now, &shared.revocations).is_none();
                    return TouchLook::OutOfReach { live };
                }
                match record.use_at(now, None, &shared.revocations) {
                    Ok(deadlines) => TouchLook::Touched(Touched {
                        credential_id: record.credential_id,
                        deadlines,
                    }),
                    Err(rejection) => TouchLook::Dead(record.created_at, rejection),
                }
            });
            match look {
                Some(TouchLook::Touched(one)) => {
                    shared.mark_used(handle);
                    if touched.touched.len() < listed {
                        touched.touched.push(one);
                    }
                    touched.total += 1;
                }
                // Oldest first: a later one is newer.
                Some(TouchLook::Dead(created_at, rejection)) => {
                    newest_death = Some((created_at, rejection));
                }
                Some(TouchLook::OutOfReach { live }) => out_of_reach_live |= live,
                Some(TouchLook::Pending) | None => {}
            }
        }
        drop(threads);
        if touched.total > 0 {
            return Ok(touched);
        }
        if out_of_reach_live {
            return Err(Rejection::NotOwned {
                credential_id: None,
            });
        }
        if let Some(death) = shared.thread_tombstones.get(thread_id, reach) {
            let newer = newest_death
                .as_ref()
                .is_none_or(|(at, _)| death.created_at > *at);
            if newer {
                newest_death = Some((death.created_at, Rejection::Dead(death.dead)));
            }
        }
        Err(newest_death.map_or(Rejection::Unknown, |(_, rejection)| rejection))
    }

    /// Revokes every credential of a thread within `reach`; counts those it
    /// revoked and the live ones it left alone. On a durable store this
    /// waits for the journal on the calling thread, and a failed write
    /// leaves the revocation in force in memory only (the service uses
    /// [`super::Backend::revoke_thread`], which reports it).
    pub fn revoke_thread(&self, thread_id: &str, reach: Reach<'_>) -> ThreadRevocation {
        let (outcome, durable) = self.begin_revoke_thread(thread_id, reach);
        if let Some(durable) = durable {
            let _in_force_in_memory = durable.wait_blocking();
        }
        outcome
    }

    /// [`Store::revoke_thread`] in memory, then its journal record
    /// (written even when it ended nothing: a retry after a failed write
    /// must still make the first attempt's revocation durable).
    pub(super) fn begin_revoke_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> (ThreadRevocation, Option<Durable>) {
        let shared = &*self.shared;
        let (hash, thread_shard) = shared.thread_hash(thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let now = shared.clock.now();
        let mut ended = Vec::new();
        let outcome = shared.revoke_thread_locked(
            &mut threads,
            ThreadKey {
                id: thread_id,
                hash,
            },
            reach,
            now,
            Ended::Collect(&mut ended),
        );
        let durable = shared.durable.as_ref().map(|durable| {
            durable.append(now, |w| {
                w.thread_revoked(thread_id, reach_owner(reach), now, &ended)
            })
        });
        (outcome, durable)
    }

    /// Revokes one credential by its handle; returns 1 if it was live, 0 if
    /// it was dead or unknown, and [`Rejection::NotOwned`] (changing
    /// nothing) when it is outside `reach`. On a durable store this waits
    /// as [`Store::revoke_thread`] does.
    pub fn revoke_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<CredentialRevocation, Rejection> {
        let (outcome, durable) = self.begin_revoke_credential(credential_id, reach)?;
        if let Some(durable) = durable {
            let _in_force_in_memory = durable.wait_blocking();
        }
        Ok(outcome)
    }

    /// [`Store::revoke_credential`] in memory, then its journal record
    /// (written even when memory holds only a tombstone, for a retry).
    pub(super) fn begin_revoke_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<(CredentialRevocation, Option<Durable>), Rejection> {
        let shared = &*self.shared;
        let found = shared.with_id(credential_id, |handle, record| {
            (
                handle,
                record.thread_id.clone(),
                record.class.pair.instance_id.clone(),
                reach.covers(record.minted_by()),
            )
        });
        let Some((handle, thread_id, provider_instance_id, within)) = found else {
            let dead = shared.dead_by_id(credential_id, reach)?;
            let now = shared.clock.now();
            let durable = shared.durable.as_ref().map(|durable| {
                durable.append(now, |w| w.credential_revoked(credential_id, now, None))
            });
            return Ok((
                CredentialRevocation {
                    revoked: 0,
                    thread_id: dead.map(|dead| dead.thread_id),
                    provider_instance_id: None,
                },
                durable,
            ));
        };
        if !within {
            return Err(not_owned(credential_id));
        }
        let (hash, thread_shard) = shared.thread_hash(&thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let now = shared.clock.now();
        let death = shared
            .with_record(handle, |r| r.death(now, &shared.revocations))
            .flatten();
        let outcome = shared.detach(
            &mut threads,
            ThreadKey {
                id: &thread_id,
                hash,
            },
            handle,
            now,
            Some(RevocationCause::Credential),
            Accounting::GiveBack,
        );
        let was_live = matches!(outcome, Retired::RevokedLive);
        let reason = match outcome {
            Retired::RevokedLive => Some(DeathReason::Revoked(RevocationCause::Credential)),
            Retired::RemovedDead => death,
            Retired::Absent | Retired::StillLive(_) => None,
        };
        let durable = shared.durable.as_ref().map(|durable| {
            durable.append(now, |w| w.credential_revoked(credential_id, now, reason))
        });
        drop(threads);
        Ok((
            CredentialRevocation {
                revoked: u64::from(was_live),
                thread_id: Some(Arc::from(thread_id)),
                provider_instance_id: Some(provider_instance_id),
            },
            durable,
        ))
    }
}

/// The caller a reach is limited to, as the journal names it.
fn reach_owner<'a>(reach: Reach<'a>) -> Option<&'a str> {
    match reach {
        Reach::All => None,
        Reach::MintedBy(owner) => Some(owner),
    }
}

/// What RevokeThread does with the records it removes and why each died.
pub(super) enum Ended<'a> {
    /// Collects them for the journal.
    Collect(&'a mut Vec<(CredentialId, DeathReason)>),
    /// Replay: these died so when the revocation ran, whatever the
    /// checkpointed last uses say now.
    Replay(&'a [(CredentialId, DeathReason)]),
}

impl Shared {
    /// RevokeThread under the thread's lock, at `now`: shared by the call
    /// and by journal replay.
    pub(super) fn revoke_thread_locked(
        &self,
        threads: &mut ThreadShard,
        thread: ThreadKey<'_>,
        reach: Reach<'_>,
        now: Millis,
        mut ended: Ended<'_>,
    ) -> ThreadRevocation {
        let mut outcome = ThreadRevocation::default();
        let Some(head) = self.find_thread(threads, thread.hash, thread.id) else {
            return outcome;
        };
        // Oldest first, so the thread's newest death is recorded last. Each
        // removal is constant time: the whole call costs the thread's
        // records, which the per-thread limit bounds.
        for handle in self.chain(head.newest).into_iter().rev() {
            let look = self.with_record(handle, |r| {
                (
                    reach.covers(r.minted_by()),
                    r.death(now, &self.revocations),
                    r.credential_id,
                )
            });
            match look {
                Some((true, death, id)) => {
                    let removal = match &ended {
                        Ended::Replay(removed) => removed
                            .iter()
                            .find(|(removed, _)| *removed == id)
                            .map_or(Removal::Retire, |&(_, reason)| Removal::As(reason)),
                        Ended::Collect(_) => Removal::Retire,
                    };
                    let retired = self.detach_as(
                        threads,
                        thread,
                        handle,
                        now,
                        Some(RevocationCause::Thread),
                        Accounting::GiveBack,
                        removal,
                    );
                    let reason = match retired {
                        Retired::RevokedLive => {
                            outcome.revoked += 1;
                            Some(DeathReason::Revoked(RevocationCause::Thread))
                        }
                        Retired::RemovedDead => death,
                        Retired::Absent | Retired::StillLive(_) => None,
                    };
                    if let (Ended::Collect(removed), Some(reason)) = (&mut ended, reason) {
                        removed.push((id, reason));
                    }
                }
                Some((false, death, _)) => outcome.not_owned += u64::from(death.is_none()),
                None => {}
            }
        }
        outcome
    }
}

/// What Touch by thread found in one record.
enum TouchLook {
    /// Renewed.
    Touched(Touched),
    /// Within reach and dead: minted at, and why.
    Dead(Millis, Rejection),
    /// Minted by another caller; whether it is live.
    OutOfReach { live: bool },
    /// Its Mint is not yet durable: not there for any call.
    Pending,
}

//! The calls a credential's owner makes by handle or by thread (Touch,
//! RevokeCredential, RevokeThread), each within the caller's [`Reach`].

use std::sync::Arc;

use super::threads::ThreadKey;
use super::types::{
    CredentialRevocation, Reach, Rejection, RevocationCause, ThreadRevocation, ThreadTouch, Touched,
};
use super::{not_owned, Accounting, Retired, Store};
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
        let live = shared.with_id(credential_id, |_, record| {
            if !reach.covers(record.minted_by()) {
                return Err(not_owned(credential_id));
            }
            Ok(Touched {
                credential_id: record.credential_id,
                deadlines: record.use_at(now, None, &shared.revocations)?,
            })
        });
        match live {
            Some(touched) => touched,
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
                None => {}
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
    /// revoked and the live ones it left alone.
    pub fn revoke_thread(&self, thread_id: &str, reach: Reach<'_>) -> ThreadRevocation {
        let shared = &*self.shared;
        let (hash, thread_shard) = shared.thread_hash(thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let Some(head) = shared.find_thread(&threads, hash, thread_id) else {
            return ThreadRevocation::default();
        };
        let now = shared.clock.now();
        let mut outcome = ThreadRevocation::default();
        // Oldest first, so the thread's newest death is recorded last. Each
        // removal is constant time: the whole call costs the thread's
        // records, which the per-thread limit bounds.
        for handle in shared.chain(head.newest).into_iter().rev() {
            let look = shared.with_record(handle, |r| {
                (
                    reach.covers(r.minted_by()),
                    r.death(now, &shared.revocations).is_none(),
                )
            });
            match look {
                Some((true, _)) => {
                    let retired = shared.detach(
                        &mut threads,
                        ThreadKey {
                            id: thread_id,
                            hash,
                        },
                        handle,
                        now,
                        Some(RevocationCause::Thread),
                        Accounting::GiveBack,
                    );
                    if let Retired::RevokedLive = retired {
                        outcome.revoked += 1;
                    }
                }
                Some((false, live)) => outcome.not_owned += u64::from(live),
                None => {}
            }
        }
        outcome
    }

    /// Revokes one credential by its handle; returns 1 if it was live, 0 if
    /// it was dead or unknown, and [`Rejection::NotOwned`] (changing
    /// nothing) when it is outside `reach`.
    pub fn revoke_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<CredentialRevocation, Rejection> {
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
            return Ok(CredentialRevocation {
                revoked: 0,
                thread_id: dead.map(|dead| dead.thread_id),
                provider_instance_id: None,
            });
        };
        if !within {
            return Err(not_owned(credential_id));
        }
        let outcome =
            shared.remove_from_thread(handle, &thread_id, Some(RevocationCause::Credential));
        Ok(CredentialRevocation {
            revoked: u64::from(matches!(outcome, Retired::RevokedLive)),
            thread_id: Some(Arc::from(thread_id)),
            provider_instance_id: Some(provider_instance_id),
        })
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
}

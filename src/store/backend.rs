//! The one store API the service talks to, whatever keeps the credentials:
//! async and fallible, because a store that writes to a disk or a network
//! can fail and must be waited for.
//!
//! An enum rather than a trait object: each call is a static dispatch and
//! its future is a plain state machine, so the embedded Resolve allocates
//! nothing and boxes nothing (it never waits, and its future completes on
//! first poll). Writes await the journal without holding any lock.
//!
//! Each Redis branch awaits a boxed future: a future is as large as its
//! largest state, and the Redis client's states (~600 bytes for Resolve)
//! would otherwise be part of every embedded call's future too, which the
//! service's future embeds and tonic moves into a box per call (in a
//! profile, the largest copy our own code made in an embedded Resolve).
//! One allocation beside a network round trip costs the Redis path nothing
//! it would notice.

use super::durable::unavailable;
use super::journal::Durable;
use super::mint::BegunMint;
use super::redis::RedisStore;
use super::types::{
    CredentialRevocation, CredentialView, Minted, NewCredential, Reach, Rejection, RevokeAllTarget,
    ThreadRevocation, ThreadTouch, Touched,
};
use super::Store;
use crate::clock::Millis;
use crate::token::{CredentialId, TokenDigest};

/// Where the credentials live.
#[derive(Clone)]
pub enum Backend {
    /// The embedded store, in memory, with or without its journal.
    Embedded(Store),
    /// A Redis shared by several authority processes.
    Redis(RedisStore),
}

impl From<RedisStore> for Backend {
    fn from(store: RedisStore) -> Self {
        Backend::Redis(store)
    }
}

impl From<Store> for Backend {
    fn from(store: Store) -> Self {
        Backend::Embedded(store)
    }
}

impl Backend {
    /// See [`Store::resolve_with`].
    pub async fn resolve_with<T>(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
        answer: impl FnOnce(CredentialView<'_>) -> T,
    ) -> Result<T, Rejection> {
        match self {
            Backend::Embedded(store) => store.resolve_with(digest, required_scope, answer),
            Backend::Redis(store) => {
                Box::pin(store.resolve_with(digest, required_scope, answer)).await
            }
        }
    }

    /// See [`Store::mint`]: the new credential works once this returns
    /// `Ok`, and not before. Dropping the future midway (a cancelled call)
    /// still ends the Mint in the background, one way or the other.
    pub async fn mint(
        &self,
        digest: TokenDigest,
        new: NewCredential<'_>,
    ) -> Result<Minted, Rejection> {
        match self {
            Backend::Embedded(store) => {
                let mut begun = store.begin_mint(digest, new)?;
                let Some(durable) = begun.durable.take() else {
                    return store.finish_mint(begun, Ok(()));
                };
                let mut waiting = MintWaiting {
                    store: store.clone(),
                    begun: Some(begun),
                    durable: Some(durable.clone()),
                };
                let written = durable.durable().await;
                let begun = waiting.begun.take().expect("finished once");
                waiting.durable = None;
                store.finish_mint(begun, written)
            }
            Backend::Redis(store) => Box::pin(store.mint(digest, new)).await,
        }
    }

    /// See [`Store::touch_credential`].
    pub async fn touch_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<Touched, Rejection> {
        match self {
            Backend::Embedded(store) => store.touch_credential(credential_id, reach),
            Backend::Redis(store) => Box::pin(store.touch_credential(credential_id, reach)).await,
        }
    }

    /// See [`Store::touch_thread`].
    pub async fn touch_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadTouch, Rejection> {
        match self {
            Backend::Embedded(store) => store.touch_thread(thread_id, reach),
            Backend::Redis(store) => Box::pin(store.touch_thread(thread_id, reach)).await,
        }
    }

    /// See [`Store::revoke_thread`]: in force at once, and durable when
    /// this returns `Ok`; [`Rejection::Unavailable`] when the write failed
    /// (the revocation stays in force until a restart; retry it).
    pub async fn revoke_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadRevocation, Rejection> {
        match self {
            Backend::Embedded(store) => {
                let (outcome, durable) = store.begin_revoke_thread(thread_id, reach);
                written(durable).await?;
                Ok(outcome)
            }
            Backend::Redis(store) => Box::pin(store.revoke_thread(thread_id, reach)).await,
        }
    }

    /// See [`Store::revoke_credential`], durable as
    /// [`Backend::revoke_thread`] is.
    pub async fn revoke_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<CredentialRevocation, Rejection> {
        match self {
            Backend::Embedded(store) => {
                let (outcome, durable) = store.begin_revoke_credential(credential_id, reach)?;
                written(durable).await?;
                Ok(outcome)
            }
            Backend::Redis(store) => Box::pin(store.revoke_credential(credential_id, reach)).await,
        }
    }

    /// See [`Store::revoke_all`], durable as [`Backend::revoke_thread`] is.
    pub async fn revoke_all(&self, target: RevokeAllTarget<'_>) -> Result<u64, Rejection> {
        match self {
            Backend::Embedded(store) => {
                let (revoked, durable) = store.begin_revoke_all(target);
                let outcome = written(durable).await;
                store.reclaim_revoked(revoked, outcome.is_ok());
                outcome.map(|()| revoked)
            }
            Backend::Redis(store) => Box::pin(store.revoke_all(target)).await,
        }
    }

    /// The store's clock reading (see [`Store::now`]).
    pub fn now(&self) -> Millis {
        match self {
            Backend::Embedded(store) => store.now(),
            Backend::Redis(store) => store.now(),
        }
    }

    /// The embedded store, for what only it has (counts for tests and
    /// benchmarks, its background tasks).
    pub fn embedded(&self) -> Option<&Store> {
        match self {
            Backend::Embedded(store) => Some(store),
            Backend::Redis(_) => None,
        }
    }
}

/// Waits for a change's journal record, if it has one.
async fn written(durable: Option<Durable>) -> Result<(), Rejection> {
    match durable {
        Some(durable) => durable.durable().await.map_err(|e| unavailable(&e)),
        None => Ok(()),
    }
}

/// A Mint waiting for the disk. If its future is dropped before the write
/// is known, the Mint is finished on a task of its own, so its pending
/// record never stays pending.
struct MintWaiting {
    store: Store,
    begun: Option<BegunMint>,
    durable: Option<Durable>,
}

impl Drop for MintWaiting {
    fn drop(&mut self) {
        let Some(begun) = self.begun.take() else {
            return;
        };
        let store = self.store.clone();
        let durable = self.durable.take();
        let finish = move |written| {
            // The caller is gone: nobody holds the token, whatever happens.
            let _unanswered = store.finish_mint(begun, written);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let written = match durable {
                        Some(durable) => durable.durable().await,
                        None => Ok(()),
                    };
                    finish(written);
                });
            }
            Err(_) => finish(durable.map_or(Ok(()), Durable::wait_blocking)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::FakeClock;
    use crate::store::StoreConfig;
    use crate::token::Token;

    /// The embedded Resolve's future stays small: it is copied into a box
    /// on every call. Catches a Redis branch awaited unboxed: the future is
    /// then 608 bytes (debug build) instead of 48.
    #[test]
    fn the_embedded_resolve_future_does_not_carry_the_redis_clients_states() {
        let backend = Backend::from(Store::new(
            StoreConfig::default(),
            Arc::new(FakeClock::new(0)),
        ));
        let digest = Token::generate().digest();
        let resolve = backend.resolve_with(&digest, None, |view| view.credential_id);
        let size = std::mem::size_of_val(&resolve);
        assert!(size <= 128, "the Resolve future is {size} bytes");
    }
}

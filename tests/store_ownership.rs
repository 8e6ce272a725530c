//! Ownership in the store, named case by case (the model-based test covers
//! them in random sequences): who may act on whose credentials, provider
//! instances held by their adapter, per-owner thread reasons, and the first
//! death naming the reason when a RevokeAll comes after a deadline.

use std::sync::Arc;
use std::time::Duration;

use credential_authority::clock::FakeClock;
use credential_authority::store::{
    DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget, Store,
    StoreConfig,
};
use credential_authority::token::{CredentialId, Token, TokenDigest};

const START: u64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn store() -> (Store, FakeClock) {
    let clock = FakeClock::new(START);
    (
        Store::new(StoreConfig::default(), Arc::new(clock.clone())),
        clock,
    )
}

/// A Mint by `caller` (a non-admin unless it is "admin").
fn mint_as(
    store: &Store,
    caller: &str,
    thread_id: &str,
    instance: &str,
    replace_previous: bool,
) -> Result<(TokenDigest, CredentialId), Rejection> {
    let digest = Token::generate().digest();
    let reach = if caller == "admin" {
        Reach::All
    } else {
        Reach::MintedBy(caller)
    };
    store
        .mint(
            digest,
            NewCredential {
                thread_id,
                provider_instance_id: instance,
                replace_previous,
                minted_by: caller,
                reach,
                ..NewCredential::default()
            },
        )
        .map(|minted| (digest, minted.credential_id))
}

fn death(result: Result<impl std::fmt::Debug, Rejection>) -> DeathReason {
    match result {
        Err(Rejection::Dead(dead)) => dead.reason,
        other => panic!("expected a dead credential, got {other:?}"),
    }
}

/// Catches: an adapter minting as another adapter's provider instance (its
/// tokens would resolve with the victim's instance, and it could stand in
/// the way of the victim's rotations), or an instance that stays taken
/// after its credentials are gone.
#[test]
fn a_provider_instance_belongs_to_the_adapter_that_holds_it() {
    let (store, _clock) = store();
    let (a_token, a_id) = mint_as(&store, "adapter-a", "t", "claude-1", false).unwrap();
    for replace in [false, true] {
        let refused = mint_as(&store, "adapter-b", "t", "claude-1", replace);
        assert!(
            matches!(
                refused,
                Err(Rejection::NotOwned {
                    credential_id: None
                })
            ),
            "no foreign credential id is named: {refused:?}"
        );
    }
    // The refusals changed nothing: A's rotation still works and replaces.
    let (rotated, _) = mint_as(&store, "adapter-a", "t", "claude-1", true).unwrap();
    assert_eq!(
        death(store.resolve(&a_token, None)),
        DeathReason::Revoked(RevocationCause::Replaced)
    );
    assert!(store.resolve(&rotated, None).is_ok());
    // B's own instance on the same thread is fine; an admin may mint anywhere.
    assert!(mint_as(&store, "adapter-b", "t", "codex-1", false).is_ok());
    assert!(mint_as(&store, "admin", "t", "claude-1", false).is_ok());
    // Once nothing of A's (or the admin's) is held, the instance is free.
    store.revoke_thread("t", Reach::All);
    assert_eq!(store.record_count(), 0);
    assert!(mint_as(&store, "adapter-b", "t2", "claude-1", false).is_ok());
    let _ = a_id;
}

/// Catches: one thread tombstone shared by every owner, so another caller's
/// later death hides a caller's own reason from its Touch by thread.
#[test]
fn touch_by_thread_reports_each_callers_own_newest_death() {
    let (store, clock) = store();
    let (a_token, a_id) = mint_as(&store, "adapter-a", "t", "claude-1", false).unwrap();
    store
        .revoke_credential(&a_id, Reach::MintedBy("adapter-a"))
        .unwrap();
    clock.advance(Duration::from_millis(5));
    let (_, b_id) = mint_as(&store, "adapter-b", "t", "codex-1", false).unwrap();
    store
        .revoke_credential(&b_id, Reach::MintedBy("adapter-b"))
        .unwrap();
    let a_reason = DeathReason::Revoked(RevocationCause::Credential);
    assert_eq!(death(store.resolve(&a_token, None)), a_reason);
    assert_eq!(
        death(store.touch_thread("t", Reach::MintedBy("adapter-a"))),
        a_reason,
        "A's Touch sees A's credential, not B's newer one"
    );
    // An admin sees the thread's newest, whoever minted it.
    match store.touch_thread("t", Reach::All) {
        Err(Rejection::Dead(dead)) => assert_eq!(dead.credential_id, b_id),
        other => panic!("{other:?}"),
    }
    // A caller that never minted on the thread learns nothing of it.
    assert!(matches!(
        store.touch_thread("t", Reach::MintedBy("adapter-c")),
        Err(Rejection::Unknown)
    ));
}

/// Catches: a RevokeAll relabelling a credential that had already died of
/// its idle timeout (the first death names the reason), and the other way
/// round, a revoked credential relabelled once its idle deadline passes.
#[test]
fn the_first_death_names_the_reason_across_revoke_all() {
    let (store, clock) = store();
    let (idled, _) = mint_as(&store, "adapter-a", "t1", "claude-1", false).unwrap();
    clock.advance(31 * MINUTE);
    let (revoked, _) = mint_as(&store, "adapter-a", "t2", "claude-1", false).unwrap();
    // Not swept yet: both records are still held when RevokeAll comes.
    store.revoke_all(RevokeAllTarget::MintedBy("adapter-a"));
    assert_eq!(death(store.resolve(&idled, None)), DeathReason::IdleTimeout);
    assert_eq!(
        death(store.resolve(&revoked, None)),
        DeathReason::Revoked(RevocationCause::Caller)
    );
    clock.advance(31 * MINUTE);
    assert_eq!(
        death(store.resolve(&revoked, None)),
        DeathReason::Revoked(RevocationCause::Caller),
        "revoked before its idle deadline: still revoked after it"
    );
    // And the sweeper's tombstones keep the same reasons.
    store.sweep();
    assert_eq!(store.record_count(), 0);
    assert_eq!(death(store.resolve(&idled, None)), DeathReason::IdleTimeout);
    assert_eq!(
        death(store.resolve(&revoked, None)),
        DeathReason::Revoked(RevocationCause::Caller)
    );
}

/// Catches: a Mint refused for its replacement leaving its interned class
/// and pair behind (memory a refused caller could grow with new labels).
#[test]
fn a_refused_mint_leaves_nothing_behind() {
    let (store, _clock) = store();
    // The admin holds a live credential in A's (thread, instance): A's
    // rotation is refused, and nothing it brought stays.
    mint_as(&store, "adapter-a", "t", "claude-1", false).unwrap();
    mint_as(&store, "admin", "t", "claude-1", false).unwrap();
    for i in 0..100 {
        let refused = store.mint(
            Token::generate().digest(),
            NewCredential {
                thread_id: "t",
                provider_instance_id: "claude-1",
                replace_previous: true,
                minted_by: "adapter-a",
                reach: Reach::MintedBy("adapter-a"),
                scopes: Arc::from([format!("scope-{i}").into_boxed_str()]),
                ..NewCredential::default()
            },
        );
        assert!(matches!(
            refused,
            Err(Rejection::NotOwned {
                credential_id: None
            })
        ));
    }
    assert_eq!(store.record_count(), 2);
    assert_eq!(store.interned_classes(), 2, "one class per held credential");
}

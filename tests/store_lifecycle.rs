//! The adapter lifecycle in the store (revoke one credential, rotation on
//! recovery, Touch, scopes and labels), driven by a fake clock.

use std::sync::Arc;
use std::time::Duration;

use credential_authority::clock::{Clock, FakeClock};
use credential_authority::store::{
    CredentialRevocation, DeathReason, NewCredential, Reach, Rejection, RevocationCause,
    RevokeAllTarget, Store, StoreConfig,
};
use credential_authority::token::{CredentialId, Token, TokenDigest};

const START: u64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn store_with(config: StoreConfig) -> (Store, FakeClock) {
    let clock = FakeClock::new(START);
    (Store::new(config, Arc::new(clock.clone())), clock)
}

fn default_store() -> (Store, FakeClock) {
    store_with(StoreConfig::default())
}

fn new<'a>(thread_id: &'a str, instance: &'a str) -> NewCredential<'a> {
    NewCredential {
        thread_id,
        provider_instance_id: instance,
        ..NewCredential::default()
    }
}

fn mint_with(store: &Store, new: NewCredential<'_>) -> (TokenDigest, CredentialId, u64) {
    let digest = Token::generate().digest();
    let minted = store.mint(digest, new).unwrap();
    (digest, minted.credential_id, minted.replaced)
}

fn mint(store: &Store, thread_id: &str, instance: &str) -> (TokenDigest, CredentialId) {
    let (digest, id, _) = mint_with(store, new(thread_id, instance));
    (digest, id)
}

fn rotate(store: &Store, thread_id: &str, instance: &str) -> (TokenDigest, CredentialId, u64) {
    mint_with(
        store,
        NewCredential {
            replace_previous: true,
            ..new(thread_id, instance)
        },
    )
}

fn death(result: Result<impl std::fmt::Debug, Rejection>) -> DeathReason {
    match result {
        Err(Rejection::Dead(dead)) => dead.reason,
        other => panic!("expected a dead credential, got {other:?}"),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[test]
fn revoking_one_credential_leaves_the_rest_of_the_thread_working() {
    let (store, _clock) = default_store();
    let (codex, codex_id) = mint(&store, "thread", "codex-1");
    let (claude, _) = mint(&store, "thread", "claude-1");
    assert_eq!(
        store
            .revoke_credential(&codex_id, Reach::All)
            .unwrap()
            .revoked,
        1
    );
    assert_eq!(
        store
            .revoke_credential(&codex_id, Reach::All)
            .unwrap()
            .revoked,
        0,
        "idempotent"
    );
    assert_eq!(
        store
            .revoke_credential(&CredentialId::generate(), Reach::All)
            .unwrap(),
        CredentialRevocation::default(),
        "unknown: nothing revoked, nothing known"
    );
    assert_eq!(
        death(store.resolve(&codex, None)),
        DeathReason::Revoked(RevocationCause::Credential)
    );
    assert!(store.resolve(&claude, None).is_ok());
    // The thread now holds one live credential.
    assert_eq!(store.revoke_thread("thread", Reach::All).revoked, 1);
}

#[test]
fn replace_previous_revokes_the_same_thread_and_instance_only() {
    let (store, _clock) = default_store();
    let (old, _) = mint(&store, "thread", "claude-1");
    let (other_instance, _) = mint(&store, "thread", "codex-1");
    let (other_thread, _) = mint(&store, "thread-2", "claude-1");
    let (fresh, _, replaced) = rotate(&store, "thread", "claude-1");
    assert_eq!(replaced, 1);
    assert_eq!(
        death(store.resolve(&old, None)),
        DeathReason::Revoked(RevocationCause::Replaced)
    );
    for live in [fresh, other_instance, other_thread] {
        assert!(store.resolve(&live, None).is_ok());
    }
    let (newest, _, replaced) = rotate(&store, "thread", "claude-1");
    assert_eq!(replaced, 1);
    assert!(store.resolve(&fresh, None).is_err());
    assert!(store.resolve(&newest, None).is_ok());
    let (_, _, replaced) = rotate(&store, "brand-new", "claude-1");
    assert_eq!(replaced, 0, "nothing to replace");
}

#[test]
fn replace_previous_does_not_count_credentials_already_dead() {
    let (store, clock) = default_store();
    let (stale, _) = mint(&store, "t", "i");
    let (revoked, revoked_id) = mint(&store, "t", "i");
    store.revoke_credential(&revoked_id, Reach::All).unwrap();
    clock.advance(31 * MINUTE);
    let (_, _, replaced) = rotate(&store, "t", "i");
    assert_eq!(replaced, 0);
    assert_eq!(death(store.resolve(&stale, None)), DeathReason::IdleTimeout);
    assert_eq!(
        death(store.resolve(&revoked, None)),
        DeathReason::Revoked(RevocationCause::Credential)
    );
}

#[test]
fn touch_by_credential_keeps_an_unused_credential_alive() {
    let (store, clock) = default_store();
    let (digest, id) = mint(&store, "t", "i");
    let (witness, _) = mint(&store, "t", "i");
    for _ in 0..10 {
        clock.advance(20 * MINUTE);
        let touched = store.touch_credential(&id, Reach::All).unwrap();
        assert_eq!(touched.credential_id, id);
        assert_eq!(
            touched.deadlines.idle_expires_at,
            clock.now() + ms(30 * MINUTE)
        );
        assert_eq!(
            touched.deadlines.expires_at,
            clock.now() + ms(30 * 24 * HOUR)
        );
    }
    // 200 minutes without a single Resolve: alive thanks to Touch alone.
    assert!(store.resolve(&digest, None).is_ok());
    assert_eq!(
        death(store.resolve(&witness, None)),
        DeathReason::IdleTimeout
    );
}

#[test]
fn touch_by_thread_renews_every_live_credential_of_the_thread() {
    let (store, clock) = default_store();
    let (a, a_id) = mint(&store, "t", "claude-1");
    let (b, b_id) = mint(&store, "t", "codex-1");
    let (other, _) = mint(&store, "other", "claude-1");
    clock.advance(20 * MINUTE);
    let touched = store.touch_thread("t", Reach::All).unwrap();
    let mut ids: Vec<_> = touched.touched.iter().map(|t| t.credential_id).collect();
    ids.sort_by_key(|id| id.to_string());
    let mut expected = vec![a_id, b_id];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(ids, expected);
    clock.advance(20 * MINUTE);
    assert!(store.resolve(&a, None).is_ok());
    assert!(store.resolve(&b, None).is_ok());
    assert_eq!(death(store.resolve(&other, None)), DeathReason::IdleTimeout);
}

#[test]
fn touch_never_passes_the_absolute_lifetime() {
    let (store, clock) = store_with(StoreConfig {
        max_lifetime: HOUR,
        absolute_lifetime: Some(2 * HOUR),
        ..StoreConfig::default()
    });
    let (digest, id) = mint(&store, "t", "i");
    for _ in 0..11 {
        clock.advance(10 * MINUTE);
        let touched = store.touch_credential(&id, Reach::All).unwrap();
        assert!(touched.deadlines.expires_at <= START + ms(2 * HOUR));
    }
    clock.advance(10 * MINUTE);
    assert_eq!(
        death(store.touch_credential(&id, Reach::All)),
        DeathReason::Expired
    );
    assert_eq!(
        death(store.touch_thread("t", Reach::All)),
        DeathReason::Expired
    );
    assert_eq!(death(store.resolve(&digest, None)), DeathReason::Expired);
}

#[test]
fn touch_never_revives_and_gives_the_reason_resolve_would() {
    let (store, clock) = default_store();
    let (idle, idle_id) = mint(&store, "idle", "i");
    let (_, revoked_id) = mint(&store, "revoked", "i");
    store.revoke_thread("revoked", Reach::All);
    clock.advance(30 * MINUTE);
    assert_eq!(
        death(store.touch_credential(&idle_id, Reach::All)),
        DeathReason::IdleTimeout
    );
    assert_eq!(
        death(store.touch_thread("idle", Reach::All)),
        DeathReason::IdleTimeout
    );
    assert_eq!(death(store.resolve(&idle, None)), DeathReason::IdleTimeout);
    assert_eq!(
        death(store.touch_credential(&revoked_id, Reach::All)),
        DeathReason::Revoked(RevocationCause::Thread)
    );
    // Once swept, the tombstone still answers by credential id.
    store.sweep();
    assert_eq!(store.record_count(), 0);
    assert_eq!(
        death(store.touch_credential(&idle_id, Reach::All)),
        DeathReason::IdleTimeout
    );
    assert!(matches!(
        store.touch_credential(&CredentialId::generate(), Reach::All),
        Err(Rejection::Unknown)
    ));
    // The thread remembers its newest death too, so Touch by thread agrees
    // with Resolve after the records are gone.
    assert_eq!(
        death(store.touch_thread("revoked", Reach::All)),
        DeathReason::Revoked(RevocationCause::Thread)
    );
    assert!(matches!(
        store.touch_thread("never", Reach::All),
        Err(Rejection::Unknown)
    ));
}

/// Touch by thread gives the reason Resolve gives for the thread's newest
/// token, whatever removed the records: RevokeThread, RevokeCredential, a
/// replacement or the sweeper. (Before, it answered TOKEN_UNKNOWN once the
/// thread's list was empty.)
#[test]
fn touch_by_thread_agrees_with_resolve_once_the_records_are_gone() {
    let (store, clock) = default_store();
    // RevokeCredential of the only credential.
    let (one, one_id) = mint(&store, "t-credential", "i");
    store.revoke_credential(&one_id, Reach::All).unwrap();
    // A replacement, then RevokeThread: the newest (the replacement) names
    // the reason, not the replaced one.
    let (old, _) = mint(&store, "t-rotated", "i");
    let replacing = NewCredential {
        replace_previous: true,
        ..new("t-rotated", "i")
    };
    let newest = Token::generate().digest();
    store.mint(newest, replacing).unwrap();
    store.revoke_thread("t-rotated", Reach::All);
    // Idle removal by the sweeper.
    let (idle, _) = mint(&store, "t-idle", "i");
    clock.advance(31 * MINUTE);
    store.sweep();
    assert_eq!(store.record_count(), 0);
    for (thread, digest, reason) in [
        (
            "t-credential",
            one,
            DeathReason::Revoked(RevocationCause::Credential),
        ),
        (
            "t-rotated",
            newest,
            DeathReason::Revoked(RevocationCause::Thread),
        ),
        ("t-idle", idle, DeathReason::IdleTimeout),
    ] {
        assert_eq!(death(store.resolve(&digest, None)), reason, "{thread}");
        assert_eq!(
            death(store.touch_thread(thread, Reach::All)),
            reason,
            "{thread}"
        );
    }
    assert_eq!(
        death(store.resolve(&old, None)),
        DeathReason::Revoked(RevocationCause::Replaced)
    );
    // Bounded like tombstones: gone after the retention.
    clock.advance(25 * 60 * MINUTE);
    store.sweep();
    assert_eq!(store.thread_tombstone_count(), 0);
    assert!(matches!(
        store.touch_thread("t-idle", Reach::All),
        Err(Rejection::Unknown)
    ));
}

#[test]
fn touch_by_thread_reports_the_newest_death_when_nothing_is_live() {
    // Records revoked by RevokeAll stay in the thread's index until swept, so
    // a thread can hold several dead credentials with different reasons.
    for revoked_first in [true, false] {
        let (store, clock) = default_store();
        let order = if revoked_first {
            ["i-rev", "i-idle"]
        } else {
            ["i-idle", "i-rev"]
        };
        mint(&store, "t", order[0]);
        clock.advance(MINUTE);
        mint(&store, "t", order[1]);
        store.revoke_all(RevokeAllTarget::Instance("i-rev"));
        clock.advance(31 * MINUTE);
        let expected = if revoked_first {
            DeathReason::IdleTimeout
        } else {
            DeathReason::Revoked(RevocationCause::ProviderInstance)
        };
        assert_eq!(death(store.touch_thread("t", Reach::All)), expected);
    }
}

#[test]
fn scopes_are_checked_and_a_refusal_neither_kills_nor_renews() {
    let (store, clock) = default_store();
    let digest = Token::generate().digest();
    let minted = store
        .mint(
            digest,
            NewCredential {
                scopes: Arc::from(["fs.read".into(), "shell.exec".into()]),
                ..new("t", "i")
            },
        )
        .unwrap();
    let resolved = store.resolve(&digest, Some("fs.read")).unwrap();
    assert_eq!(resolved.scopes, ["fs.read", "shell.exec"]);
    clock.advance(20 * MINUTE);
    match store.resolve(&digest, Some("fs.write")) {
        Err(Rejection::ScopeMissing {
            credential_id,
            scope,
            ..
        }) => {
            assert_eq!(credential_id, minted.credential_id);
            assert_eq!(&*scope, "fs.write");
        }
        other => panic!("expected ScopeMissing, got {other:?}"),
    }
    // Still live after the refusal...
    assert!(store.resolve(&digest, Some("shell.exec")).is_ok());
    clock.advance(20 * MINUTE);
    assert!(matches!(
        store.resolve(&digest, Some("nope")),
        Err(Rejection::ScopeMissing { .. })
    ));
    // ...but the refused call at minute 40 did not renew it: the last
    // renewal was at minute 20, so it dies at minute 50.
    clock.advance(10 * MINUTE);
    assert_eq!(
        death(store.resolve(&digest, None)),
        DeathReason::IdleTimeout
    );
}

#[test]
fn dead_beats_scope_missing() {
    let (store, _clock) = default_store();
    let (digest, id) = mint(&store, "t", "i");
    store.revoke_credential(&id, Reach::All).unwrap();
    assert!(matches!(
        death(store.resolve(&digest, Some("anything"))),
        DeathReason::Revoked(_)
    ));
}

#[test]
fn a_credential_without_scopes_passes_no_scope_check() {
    let (store, _clock) = default_store();
    let (digest, _) = mint(&store, "t", "i");
    assert!(store.resolve(&digest, None).is_ok());
    assert!(matches!(
        store.resolve(&digest, Some("fs.read")),
        Err(Rejection::ScopeMissing { .. })
    ));
}

#[test]
fn labels_come_back_from_resolve() {
    let (store, _clock) = default_store();
    let digest = Token::generate().digest();
    store
        .mint(
            digest,
            NewCredential {
                labels: Arc::from([
                    ("environment".into(), "env-7".into()),
                    ("provider_session".into(), "sess-42".into()),
                ]),
                ..new("t", "i")
            },
        )
        .unwrap();
    let resolved = store.resolve(&digest, None).unwrap();
    assert_eq!(resolved.labels.len(), 2);
    assert_eq!(resolved.labels[0].1, "env-7");
}

#[test]
fn credential_ids_are_forgotten_with_their_tombstones() {
    let (store, clock) = store_with(StoreConfig {
        tombstone_retention: HOUR,
        ..StoreConfig::default()
    });
    let (_, revoked) = mint(&store, "a", "i");
    let (_, idle) = mint(&store, "b", "i");
    store.revoke_credential(&revoked, Reach::All).unwrap();
    assert_eq!(store.indexed_credential_ids(), 2);
    clock.advance(30 * MINUTE);
    store.sweep();
    assert_eq!(store.record_count(), 0);
    assert_eq!(
        store.indexed_credential_ids(),
        2,
        "tombstones still answer by id"
    );
    clock.advance(HOUR);
    store.sweep();
    assert_eq!(store.tombstone_count(), 0);
    assert_eq!(store.indexed_credential_ids(), 0);
    assert!(matches!(
        store.touch_credential(&idle, Reach::All),
        Err(Rejection::Unknown)
    ));

    let (store, _clock) = store_with(StoreConfig {
        tombstone_capacity: 0,
        ..StoreConfig::default()
    });
    let (_, id) = mint(&store, "a", "i");
    store.revoke_credential(&id, Reach::All).unwrap();
    assert_eq!(
        store.indexed_credential_ids(),
        0,
        "no tombstone, no index entry"
    );
}

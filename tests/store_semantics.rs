//! The store's semantics, driven by a fake clock: days pass in microseconds.

use std::sync::Arc;
use std::time::Duration;

use credential_authority::clock::{Clock, FakeClock, SystemClock};
use credential_authority::store::{
    DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget, Store,
    StoreConfig,
};
use credential_authority::token::{Token, TokenDigest};

const START: u64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

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
        provider_kind: Some("claude"),
        ..NewCredential::default()
    }
}

fn mint(store: &Store, thread_id: &str, instance: &str) -> TokenDigest {
    let digest = Token::generate().digest();
    store.mint(digest, new(thread_id, instance)).unwrap();
    digest
}

fn death(store: &Store, digest: &TokenDigest) -> DeathReason {
    match store.resolve(digest, None) {
        Err(Rejection::Dead(dead)) => dead.reason,
        other => panic!("expected a dead credential, got {other:?}"),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[test]
fn mint_reports_deadlines_and_resolve_returns_the_owner() {
    let (store, _clock) = default_store();
    let digest = Token::generate().digest();
    let minted = store.mint(digest, new("thread-1", "claude-1")).unwrap();
    assert_eq!(minted.deadlines.expires_at, START + ms(30 * DAY));
    assert_eq!(minted.deadlines.idle_expires_at, START + ms(30 * MINUTE));
    let resolved = store.resolve(&digest, None).unwrap();
    assert_eq!(resolved.credential_id, minted.credential_id);
    assert_eq!(&*resolved.thread_id, "thread-1");
    assert_eq!(&*resolved.provider_instance_id, "claude-1");
    assert_eq!(resolved.provider_kind.as_deref(), Some("claude"));
    assert_eq!(resolved.created_at, START);
}

#[test]
fn unknown_digest_is_unknown() {
    let (store, _clock) = default_store();
    mint(&store, "t", "i");
    assert!(matches!(
        store.resolve(&Token::generate().digest(), None),
        Err(Rejection::Unknown)
    ));
}

#[test]
fn unused_credential_dies_exactly_at_its_idle_timeout() {
    let (store, clock) = default_store();
    let digest = mint(&store, "t", "i");
    clock.advance(30 * MINUTE - Duration::from_millis(1));
    // Resolving renews, so check the boundary on a second credential.
    let other = mint(&store, "t2", "i");
    assert!(store.resolve(&digest, None).is_ok());
    clock.advance(30 * MINUTE - Duration::from_millis(1));
    assert!(
        store.resolve(&digest, None).is_ok(),
        "renewed by the last use"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(death(&store, &other), DeathReason::IdleTimeout);
    clock.advance(30 * MINUTE - Duration::from_millis(1));
    assert_eq!(death(&store, &digest), DeathReason::IdleTimeout);
}

#[test]
fn per_credential_idle_timeout_is_honoured() {
    let (store, clock) = default_store();
    let digest = Token::generate().digest();
    let minted = store
        .mint(
            digest,
            NewCredential {
                idle_timeout: Some(5 * MINUTE),
                ..new("t", "i")
            },
        )
        .unwrap();
    assert_eq!(minted.deadlines.idle_expires_at, START + ms(5 * MINUTE));
    clock.advance(5 * MINUTE);
    assert_eq!(death(&store, &digest), DeathReason::IdleTimeout);
}

#[test]
fn unused_credential_dies_at_its_max_lifetime() {
    // With an idle timeout longer than the max lifetime, only the max
    // lifetime can end an unused credential.
    let (store, clock) = store_with(StoreConfig {
        idle_timeout: 40 * DAY,
        max_lifetime: 30 * DAY,
        ..StoreConfig::default()
    });
    let digest = mint(&store, "t", "i");
    let witness = mint(&store, "t", "i");
    clock.advance(30 * DAY - Duration::from_millis(1));
    assert!(store.resolve(&witness, None).is_ok());
    clock.advance(Duration::from_millis(1));
    assert_eq!(death(&store, &digest), DeathReason::Expired);
}

#[test]
fn steadily_used_credential_lives_far_past_its_first_expiry() {
    let (store, clock) = store_with(StoreConfig {
        idle_timeout: 30 * MINUTE,
        max_lifetime: 8 * HOUR,
        ..StoreConfig::default()
    });
    let digest = Token::generate().digest();
    let first_expiry = store
        .mint(digest, new("t", "i"))
        .unwrap()
        .deadlines
        .expires_at;
    let mut previous = first_expiry;
    // Three days of a tool call every 20 minutes: nine times the max lifetime.
    for _ in 0..(3 * 24 * 3) {
        clock.advance(20 * MINUTE);
        let resolved = store
            .resolve(&digest, None)
            .expect("a used credential stays live");
        assert!(resolved.deadlines.expires_at >= previous, "never backwards");
        assert_eq!(resolved.deadlines.expires_at, clock.now() + ms(8 * HOUR));
        assert_eq!(
            resolved.deadlines.idle_expires_at,
            clock.now() + ms(30 * MINUTE)
        );
        previous = resolved.deadlines.expires_at;
    }
    assert!(clock.now() > first_expiry + ms(2 * DAY));
}

#[test]
fn expires_at_never_moves_backwards() {
    // A credential minted with the server's max lifetime, then resolved by a
    // caller whose per-credential override is shorter cannot exist, so check
    // the rule through a shorter override: renewal takes the max.
    let (store, clock) = default_store();
    let digest = Token::generate().digest();
    let minted = store
        .mint(
            digest,
            NewCredential {
                max_lifetime: Some(2 * HOUR),
                idle_timeout: Some(30 * MINUTE),
                ..new("t", "i")
            },
        )
        .unwrap();
    let mut previous = minted.deadlines.expires_at;
    for step in [1, 0, 5, 29, 0, 10] {
        clock.advance(step * MINUTE);
        let resolved = store.resolve(&digest, None).unwrap();
        assert!(resolved.deadlines.expires_at >= previous);
        assert_eq!(
            resolved.deadlines.expires_at,
            previous.max(clock.now() + ms(2 * HOUR))
        );
        previous = resolved.deadlines.expires_at;
    }
}

#[test]
fn absolute_lifetime_wins_over_sliding_renewal() {
    let (store, clock) = store_with(StoreConfig {
        idle_timeout: 30 * MINUTE,
        max_lifetime: HOUR,
        absolute_lifetime: Some(2 * HOUR),
        ..StoreConfig::default()
    });
    let digest = Token::generate().digest();
    store.mint(digest, new("t", "i")).unwrap();
    let hard_limit = START + ms(2 * HOUR);
    for _ in 0..11 {
        clock.advance(10 * MINUTE);
        let resolved = store.resolve(&digest, None).unwrap();
        assert!(resolved.deadlines.expires_at <= hard_limit);
        assert!(resolved.deadlines.idle_expires_at <= resolved.deadlines.expires_at);
    }
    clock.advance(10 * MINUTE);
    assert_eq!(clock.now(), hard_limit);
    assert_eq!(death(&store, &digest), DeathReason::Expired);
}

#[test]
fn idle_deadline_is_capped_by_expiry() {
    let (store, _clock) = store_with(StoreConfig {
        idle_timeout: 30 * MINUTE,
        max_lifetime: 10 * MINUTE,
        ..StoreConfig::default()
    });
    let digest = Token::generate().digest();
    let minted = store.mint(digest, new("t", "i")).unwrap();
    assert_eq!(minted.deadlines.expires_at, START + ms(10 * MINUTE));
    assert_eq!(minted.deadlines.idle_expires_at, START + ms(10 * MINUTE));
}

#[test]
fn revoke_thread_revokes_every_credential_of_the_thread_only() {
    let (store, _clock) = default_store();
    let a = mint(&store, "thread-a", "claude-1");
    let b = mint(&store, "thread-a", "codex-1");
    let other = mint(&store, "thread-b", "claude-1");
    assert_eq!(store.revoke_thread("thread-a", Reach::All).revoked, 2);
    assert_eq!(
        store.revoke_thread("thread-a", Reach::All).revoked,
        0,
        "idempotent"
    );
    assert_eq!(store.revoke_thread("never-seen", Reach::All).revoked, 0);
    for digest in [a, b] {
        assert_eq!(
            death(&store, &digest),
            DeathReason::Revoked(RevocationCause::Thread)
        );
    }
    assert!(store.resolve(&other, None).is_ok());
    // A new credential for the thread works again.
    let fresh = mint(&store, "thread-a", "claude-1");
    assert!(store.resolve(&fresh, None).is_ok());
}

#[test]
fn revoke_thread_does_not_count_credentials_that_were_already_dead() {
    let (store, clock) = default_store();
    let stale = mint(&store, "t", "i");
    clock.advance(31 * MINUTE);
    let fresh = mint(&store, "t", "i");
    assert_eq!(store.revoke_thread("t", Reach::All).revoked, 1);
    assert_eq!(death(&store, &stale), DeathReason::IdleTimeout);
    assert_eq!(
        death(&store, &fresh),
        DeathReason::Revoked(RevocationCause::Thread)
    );
}

#[test]
fn revoke_all_for_one_provider_instance_leaves_the_others() {
    let (store, _clock) = default_store();
    let claude = [
        mint(&store, "t1", "claude-1"),
        mint(&store, "t2", "claude-1"),
    ];
    let codex = mint(&store, "t1", "codex-1");
    assert_eq!(store.revoke_all(RevokeAllTarget::Instance("claude-1")), 2);
    assert_eq!(
        store.revoke_all(RevokeAllTarget::Instance("claude-1")),
        0,
        "idempotent"
    );
    assert_eq!(store.revoke_all(RevokeAllTarget::Instance("nobody")), 0);
    for digest in &claude {
        assert_eq!(
            death(&store, digest),
            DeathReason::Revoked(RevocationCause::ProviderInstance)
        );
    }
    assert!(store.resolve(&codex, None).is_ok());
    let after = mint(&store, "t3", "claude-1");
    assert!(
        store.resolve(&after, None).is_ok(),
        "new credentials work again"
    );
    assert_eq!(store.revoke_all(RevokeAllTarget::Instance("claude-1")), 1);
}

#[test]
fn revoke_all_revokes_everything_and_counts_only_live_ones() {
    let (store, _clock) = default_store();
    let digests: Vec<_> = (0..10)
        .map(|i| mint(&store, &format!("t{i}"), &format!("i{}", i % 3)))
        .collect();
    assert_eq!(store.revoke_thread("t0", Reach::All).revoked, 1);
    assert_eq!(store.revoke_all(RevokeAllTarget::Instance("i1")), 3);
    assert_eq!(store.revoke_all(RevokeAllTarget::Everything), 6);
    assert_eq!(
        store.revoke_all(RevokeAllTarget::Everything),
        0,
        "idempotent"
    );
    for digest in &digests[1..] {
        assert!(matches!(death(&store, digest), DeathReason::Revoked(_)));
    }
    assert_eq!(
        death(&store, &digests[2]),
        DeathReason::Revoked(RevocationCause::All)
    );
    assert_eq!(
        death(&store, &digests[1]),
        DeathReason::Revoked(RevocationCause::ProviderInstance)
    );
    let after = mint(&store, "t", "i1");
    assert!(store.resolve(&after, None).is_ok());
    assert_eq!(store.revoke_all(RevokeAllTarget::Everything), 1);
}

#[test]
fn revoke_all_cost_does_not_depend_on_live_credentials() {
    // A structural check rather than a timing: RevokeAll touches no record,
    // so every record is still held (to be swept lazily) right after it.
    let (store, _clock) = default_store();
    for i in 0..10_000 {
        mint(&store, &format!("t{i}"), "i");
    }
    assert_eq!(store.revoke_all(RevokeAllTarget::Everything), 10_000);
    assert_eq!(store.record_count(), 10_000);
    assert_eq!(store.tombstone_count(), 0);
}

#[test]
fn tombstones_keep_the_reason_after_the_sweeper_removed_the_record() {
    let (store, clock) = default_store();
    let idle = mint(&store, "t-idle", "i");
    let revoked_by_instance = mint(&store, "t-rev", "i2");
    store.revoke_all(RevokeAllTarget::Instance("i2"));
    clock.advance(30 * MINUTE);
    let report = store.sweep();
    assert_eq!(report.removed, 2);
    assert_eq!(store.record_count(), 0);
    assert_eq!(store.tombstone_count(), 2);
    assert_eq!(death(&store, &idle), DeathReason::IdleTimeout);
    assert_eq!(
        death(&store, &revoked_by_instance),
        DeathReason::Revoked(RevocationCause::ProviderInstance)
    );
}

#[test]
fn tombstones_expire_after_their_retention() {
    let (store, clock) = store_with(StoreConfig {
        tombstone_retention: 24 * HOUR,
        ..StoreConfig::default()
    });
    let digest = mint(&store, "t", "i");
    store.revoke_thread("t", Reach::All);
    clock.advance(24 * HOUR - Duration::from_millis(1));
    store.sweep();
    assert!(matches!(death(&store, &digest), DeathReason::Revoked(_)));
    clock.advance(Duration::from_millis(1));
    store.sweep();
    assert_eq!(store.tombstone_count(), 0);
    assert!(matches!(
        store.resolve(&digest, None),
        Err(Rejection::Unknown)
    ));
}

#[test]
fn tombstones_are_bounded_in_count_oldest_first() {
    let (store, _clock) = store_with(StoreConfig {
        tombstone_capacity: 3,
        ..StoreConfig::default()
    });
    let digests: Vec<_> = (0..5)
        .map(|i| mint(&store, &format!("t{i}"), "i"))
        .collect();
    for i in 0..5 {
        store.revoke_thread(&format!("t{i}"), Reach::All);
    }
    assert_eq!(store.tombstone_count(), 3);
    for digest in &digests[..2] {
        assert!(matches!(
            store.resolve(digest, None),
            Err(Rejection::Unknown)
        ));
    }
    for digest in &digests[2..] {
        assert!(matches!(death(&store, digest), DeathReason::Revoked(_)));
    }
}

#[test]
fn sweeper_removes_what_expired_and_nothing_live() {
    let (store, clock) = default_store();
    let short: Vec<_> = (0..300)
        .map(|i| {
            let digest = Token::generate().digest();
            store
                .mint(
                    digest,
                    NewCredential {
                        idle_timeout: Some(MINUTE),
                        ..new(&format!("short-{i}"), "i")
                    },
                )
                .unwrap();
            digest
        })
        .collect();
    let long: Vec<_> = (0..300)
        .map(|i| mint(&store, &format!("long-{i}"), "i"))
        .collect();
    // Half of the long ones are used, so their queued deadline is stale.
    clock.advance(20 * MINUTE);
    for digest in &long[..150] {
        store.resolve(digest, None).unwrap();
    }
    let report = store.sweep();
    assert_eq!(report.removed, 300, "exactly the short-lived ones");
    assert_eq!(store.record_count(), 300);
    for digest in &short {
        assert_eq!(death(&store, digest), DeathReason::IdleTimeout);
    }
    // Nothing else is due: a second sweep does nothing.
    assert_eq!(store.sweep().removed, 0);
    // Minute 35: the unused long ones died at minute 30; the ones used at
    // minute 20 are due in the queue (their entry still says 30) but their
    // deadline slid to 50, so the sweep re-queues them instead of removing.
    clock.advance(15 * MINUTE);
    let report = store.sweep();
    assert_eq!(report.removed, 150);
    assert_eq!(report.requeued, 150);
    assert_eq!(store.record_count(), 150);
    assert_eq!(store.queued_deadlines(), 150);
    for digest in &long[..10] {
        store.resolve(digest, None).unwrap();
    }
    // Minute 50: all but the ten used at minute 35 are dead.
    clock.advance(15 * MINUTE);
    let report = store.sweep();
    assert_eq!(report.removed, 140);
    assert_eq!(store.record_count(), 10);
    assert_eq!(store.queued_deadlines(), 10);
}

#[test]
fn sweeping_cleans_thread_index_so_revoke_thread_counts_nothing() {
    let (store, clock) = default_store();
    mint(&store, "t", "i");
    clock.advance(HOUR);
    store.sweep();
    assert_eq!(store.revoke_thread("t", Reach::All).revoked, 0);
}

#[tokio::test]
async fn background_sweeper_removes_expired_credentials_on_its_own() {
    let store = Store::new(StoreConfig::default(), Arc::new(SystemClock::new()));
    let guard = store.spawn_sweeper();
    for i in 0..50 {
        store
            .mint(
                Token::generate().digest(),
                NewCredential {
                    idle_timeout: Some(Duration::from_millis(50)),
                    ..new(&format!("t{i}"), "i")
                },
            )
            .unwrap();
    }
    let live = mint(&store, "live", "i");
    // Bounded wait: the sweeper wakes at the 50 ms deadline.
    for _ in 0..200 {
        if store.record_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.record_count(), 1);
    assert!(store.resolve(&live, None).is_ok());
    drop(guard);
}

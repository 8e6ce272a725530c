//! The durable store against itself: what a restart, a crash, a failed
//! write or a snapshot taken under traffic leaves behind, compared field by
//! field with what was there before.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::super::types::{
    DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget,
};
use super::super::{Backend, Store, StoreConfig};
use super::DurableOptions;
use crate::clock::{Clock, FakeClock, FakeWall, Millis};
use crate::token::{Token, TokenDigest};

const START: Millis = 1_800_000_000_000;

fn config() -> StoreConfig {
    StoreConfig {
        idle_timeout: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(3600),
        tombstone_capacity: 1000,
        ..StoreConfig::default()
    }
}

fn open(dir: &std::path::Path, clock: &FakeClock) -> Store {
    open_with(dir, Arc::new(clock.clone()), config())
}

fn open_with(dir: &std::path::Path, clock: Arc<dyn Clock>, config: StoreConfig) -> Store {
    Store::open(config, clock, DurableOptions::new(dir))
        .expect("opens")
        .0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn new<'a>(thread: &'a str, instance: &'a str, owner: &'a str) -> NewCredential<'a> {
    NewCredential {
        thread_id: thread,
        provider_instance_id: instance,
        minted_by: owner,
        reach: Reach::MintedBy(owner),
        scopes: vec!["tools:read".into()].into(),
        labels: vec![("session".into(), thread.into())].into(),
        ..NewCredential::default()
    }
}

fn mint(store: &Store, new: NewCredential<'_>) -> TokenDigest {
    let digest = Token::generate().digest();
    store.mint(digest, new).expect("mints");
    digest
}

/// What Resolve would answer for `digest`, without renewing it.
fn peek(store: &Store, digest: &TokenDigest) -> String {
    let shared = &*store.shared;
    let now = shared.clock.now();
    shared
        .with_digest(digest, |r| match r.death(now, &shared.revocations) {
            Some(reason) => format!("dead {reason:?}"),
            None => format!("live {:?}", r.deadlines()),
        })
        .unwrap_or_else(|| format!("{:?}", shared.rejection(digest)))
}

/// Everything a restart must keep, in one comparable text: every record
/// with its fields, last use, epoch and place in its thread's list, every
/// tombstone and thread death with when it was recorded, every scope's
/// stamps, the epoch and the budgets.
fn fingerprint(store: &Store) -> String {
    let shared = &*store.shared;
    let mut records = BTreeMap::new();
    for shard in shared.records.iter() {
        let shard = shard.read();
        for r in shard.records() {
            let class = &*r.class;
            records.insert(
                r.credential_id.to_string(),
                format!(
                    "{:?} thread={} owner={} instance={} kind={:?} scopes={:?} labels={:?} \
                     created={} last_used={} idle={} max={} abs={} epoch={} visible={} claims={}",
                    r.digest.as_bytes(),
                    r.thread_id,
                    class.pair.owner.name,
                    class.pair.instance_id,
                    class.provider_kind,
                    class.scopes,
                    class.labels,
                    r.created_at,
                    r.last_used.load(Ordering::Acquire),
                    class.idle_timeout,
                    class.max_lifetime,
                    class.absolute_lifetime,
                    r.minted_epoch,
                    r.visible(),
                    class.pair.claims(),
                ),
            );
        }
    }
    let mut out = String::new();
    for (id, record) in &records {
        writeln!(out, "record {id}: {record}").unwrap();
    }
    let mut threads = Vec::new();
    for shard in shared.threads.iter() {
        let shard = shard.read();
        for head in shard.heads.iter() {
            let ids: Vec<String> = shared
                .chain(head.newest)
                .into_iter()
                .filter_map(|h| shared.with_record(h, |r| r.credential_id.to_string()))
                .collect();
            threads.push(format!("held={} {:?}", head.held, ids));
        }
    }
    threads.sort();
    for thread in threads {
        writeln!(out, "thread {thread}").unwrap();
    }
    let mut tombstones: Vec<String> = shared
        .tombstones
        .snapshot()
        .into_iter()
        .map(|(digest, at, dead)| format!("{:?} at={at} {dead:?}", digest.as_bytes()))
        .collect();
    tombstones.sort();
    for tombstone in tombstones {
        writeln!(out, "tombstone {tombstone}").unwrap();
    }
    let mut deaths: Vec<String> = shared
        .thread_tombstones
        .snapshot()
        .into_iter()
        .map(|(thread, death)| format!("{thread} {death:?}"))
        .collect();
    deaths.sort();
    for death in deaths {
        writeln!(out, "thread death {death}").unwrap();
    }
    let mut scopes: Vec<String> = shared
        .revocations
        .scope_states()
        .into_iter()
        .map(|s| format!("{s:?}"))
        .collect();
    scopes.sort();
    for scope in scopes {
        writeln!(out, "scope {scope}").unwrap();
    }
    writeln!(out, "epoch {}", shared.revocations.epoch()).unwrap();
    writeln!(out, "budget {:?}", store.budget_used()).unwrap();
    // Replay reuses classes through a cache: one it kept interned after its
    // last record went would show here.
    writeln!(out, "classes {}", store.interned_classes()).unwrap();
    out
}

/// A history touching every kind of record: mints with and without
/// replacement by two adapters and an admin, uses at several times, each
/// kind of revocation, deaths by idle timeout swept into tombstones.
fn busy_history(store: &Store, clock: &FakeClock) -> Vec<TokenDigest> {
    let mut digests = Vec::new();
    for i in 0..20 {
        let thread = format!("thread-{}", i % 5);
        let owner = if i % 2 == 0 { "adapter-a" } else { "adapter-b" };
        let instance = format!("{owner}-instance-{}", i % 3);
        let mut one = new(&thread, &instance, owner);
        one.replace_previous = i % 4 == 0;
        one.idle_timeout = (i % 3 == 0).then(|| Duration::from_secs(10));
        one.provider_kind = (i % 2 == 0).then_some("claude");
        digests.push(mint(store, one));
        clock.advance(Duration::from_millis(700));
        if i % 3 == 1 {
            let _ = store.resolve(&digests[i / 2], Some("tools:read"));
        }
    }
    let admin = NewCredential {
        reach: Reach::All,
        ..new("thread-admin", "admin-instance", "admin")
    };
    digests.push(mint(store, admin));
    let victim = store.resolve(&digests[5], None).map(|r| r.credential_id);
    if let Ok(id) = victim {
        store
            .revoke_credential(&id, Reach::MintedBy("adapter-b"))
            .expect("owned");
    }
    store.revoke_thread("thread-2", Reach::MintedBy("adapter-a"));
    store.revoke_all(RevokeAllTarget::MintedByForInstance {
        minted_by: "adapter-b",
        provider_instance_id: "adapter-b-instance-1",
    });
    clock.advance(Duration::from_secs(12));
    store.sweep();
    for digest in digests.iter().step_by(3) {
        let _ = store.resolve(digest, None);
    }
    digests
}

/// Catches anything a clean restart fails to put back exactly: a field not
/// journaled, a renewal not checkpointed at close, tombstones, thread
/// deaths, RevokeAll stamps, owners, list order or budgets lost or changed.
#[test]
fn clean_restart_keeps_every_field_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let digests = busy_history(&store, &clock);
    runtime().block_on(store.close()).unwrap();
    let before = fingerprint(&store);
    let answers: Vec<String> = digests.iter().map(|d| peek(&store, d)).collect();
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(fingerprint(&store), before);
    let after: Vec<String> = digests.iter().map(|d| peek(&store, d)).collect();
    assert_eq!(after, answers);
    store.check_invariants().unwrap();
}

/// The same after a compaction in the middle of the history: catches a
/// snapshot that leaves out scopes, tombstones, a thread's order or the
/// epoch, and records after the boundary replayed twice.
#[test]
fn restart_from_a_snapshot_keeps_every_field_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    busy_history(&store, &clock);
    let rt = runtime();
    rt.block_on(store.compact()).unwrap();
    busy_history(&store, &clock);
    rt.block_on(store.close()).unwrap();
    let before = fingerprint(&store);
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(fingerprint(&store), before);
    store.check_invariants().unwrap();
}

/// A snapshot written while Mints, rotations and revocations run: the
/// restart must find what memory held when the store closed. Catches a
/// snapshot that misses a record appended before it ran, a revocation
/// replayed over a credential minted after it, and a pending rotation
/// whose replacement the snapshot forgets.
#[test]
fn snapshot_under_traffic_replays_to_what_memory_held() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    // Room for every death: the thread deaths' eviction by count is
    // approximate (its queue keeps stale entries), and a restart rebuilds
    // the queue without them, so with evictions a restart may keep a
    // death memory had already forgotten.
    let config = StoreConfig {
        tombstone_capacity: 100_000,
        ..config()
    };
    let store = open_with(dir.path(), Arc::new(clock.clone()), config.clone());
    let rt = runtime();
    for round in 0..4 {
        let start = Arc::new(Barrier::new(4));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (store, start) = (store.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..300 {
                        let thread = format!("t-{w}-{}", i % 7);
                        let instance = format!("i-{w}");
                        let mut one = new(&thread, &instance, "adapter-a");
                        one.replace_previous = i % 2 == 0;
                        let digest = mint(&store, one);
                        match i % 10 {
                            3 => {
                                store.revoke_thread(&thread, Reach::All);
                            }
                            6 => {
                                let id = store.resolve(&digest, None).unwrap().credential_id;
                                store.revoke_credential(&id, Reach::All).unwrap();
                            }
                            9 if w == 0 => {
                                store.revoke_all(RevokeAllTarget::Instance(&instance));
                            }
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let report = rt.block_on(store.compact()).unwrap();
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(
            report.records > 0,
            "round {round}: the snapshot held nothing"
        );
    }
    rt.block_on(store.close()).unwrap();
    let before = fingerprint(&store);
    drop(store);
    let store = open_with(dir.path(), Arc::new(clock.clone()), config);
    assert_eq!(fingerprint(&store), before);
    store.check_invariants().unwrap();
}

/// A crash (no close): a use since the last checkpoint may be lost, one
/// before it may not, and no deadline comes back more than one checkpoint
/// interval earlier than it was. Catches a checkpoint that writes nothing
/// or only part of what was used, a restore that takes a use older than
/// the checkpointed one, and a crash restore that leaves a credential used
/// just before the crash with the deadlines of its previous use.
#[test]
fn a_crash_loses_at_most_the_uses_since_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let used_before = mint(&store, new("t-1", "i-1", "adapter-a"));
    let used_after = mint(&store, new("t-2", "i-1", "adapter-a"));
    let never_used = mint(&store, new("t-3", "i-1", "adapter-a"));
    clock.advance(Duration::from_secs(5));
    store.resolve(&used_before, None).unwrap();
    let checkpointed = store.resolve(&used_before, None).unwrap().deadlines;
    assert_eq!(
        store.checkpoint_renewals().unwrap(),
        1,
        "one credential used"
    );
    clock.advance(Duration::from_secs(1));
    let lost = store.resolve(&used_after, None).unwrap().deadlines;
    let minted_at = store
        .resolve(&never_used, None)
        .map(|r| r.created_at)
        .unwrap();
    // The crash: the journal's writer drains what was appended (as the OS
    // would have written it), but nobody checkpoints.
    drop(store);
    let store = open(dir.path(), &clock);
    let peek = |d: &TokenDigest| {
        store
            .shared
            .with_digest(d, |r| (r.deadlines(), r.created_at))
            .unwrap()
    };
    assert_eq!(peek(&used_before).0, checkpointed);
    let (after, created) = peek(&used_after);
    assert!(
        after.idle_expires_at < lost.idle_expires_at,
        "the last use was not checkpointed"
    );
    assert!(
        after.idle_expires_at + 1_000 >= lost.idle_expires_at,
        "lost more than one checkpoint interval"
    );
    // Counted as used at the newest recorded time: the checkpoint's.
    assert_eq!(after.idle_expires_at, START + 5_000 + 30_000);
    assert!(created < START + 5_000);
    assert_eq!(peek(&never_used).1, minted_at);
}

/// A Mint whose write fails: the caller gets UNAVAILABLE, the token never
/// works, the credential it would have replaced still does, the budgets
/// are as before, and a restart agrees. Catches a Mint shown before it is
/// durable and a replacement done before the write.
#[test]
fn a_failed_mint_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let old = mint(&store, new("t-1", "i-1", "adapter-a"));
    let budget = store.budget_used();
    let journal = &store.shared.durable.as_ref().unwrap().journal;
    journal.faults().fail_syncs(1);
    let refused = Token::generate().digest();
    let rotation = NewCredential {
        replace_previous: true,
        ..new("t-1", "i-1", "adapter-a")
    };
    let backend = Backend::from(store.clone());
    let outcome = runtime().block_on(backend.mint(refused, rotation));
    assert!(
        matches!(outcome, Err(Rejection::Unavailable { .. })),
        "{outcome:?}"
    );
    assert!(matches!(
        store.resolve(&refused, None),
        Err(Rejection::Unknown)
    ));
    store
        .resolve(&old, None)
        .expect("the old credential still works");
    assert_eq!(store.budget_used(), budget);
    store.check_invariants().unwrap();
    // The disk is back: the same rotation succeeds.
    let retried = Token::generate().digest();
    let rotation = NewCredential {
        replace_previous: true,
        ..new("t-1", "i-1", "adapter-a")
    };
    let minted = runtime().block_on(backend.mint(retried, rotation)).unwrap();
    assert_eq!(minted.replaced, 1);
    drop((backend, store));
    let store = open(dir.path(), &clock);
    assert!(matches!(
        store.resolve(&refused, None),
        Err(Rejection::Unknown)
    ));
    store.resolve(&retried, None).unwrap();
    assert!(matches!(
        store.resolve(&old, None),
        Err(Rejection::Dead(d)) if d.reason == DeathReason::Revoked(RevocationCause::Replaced)
    ));
}

/// A revocation whose write fails is refused at once in memory and
/// answers UNAVAILABLE; its retry, which memory answers with 0, is
/// journaled and survives a restart with its cause. Catches a revocation
/// that waits for the disk before taking effect, and a retry not journaled
/// because nothing was left to revoke.
#[test]
fn a_failed_revocation_fails_closed_and_its_retry_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let backend = Backend::from(store.clone());
    let rt = runtime();
    let by_id = mint(&store, new("t-1", "i-1", "adapter-a"));
    let by_thread = mint(&store, new("t-2", "i-1", "adapter-a"));
    let by_all = mint(&store, new("t-3", "i-2", "adapter-b"));
    let journal = &store.shared.durable.as_ref().unwrap().journal;
    let id = store.resolve(&by_id, None).unwrap().credential_id;
    let reach = Reach::All;
    let calls: [(&TokenDigest, RevocationCause); 3] = [
        (&by_id, RevocationCause::Credential),
        (&by_thread, RevocationCause::Thread),
        (&by_all, RevocationCause::Caller),
    ];
    for (digest, cause) in calls {
        let revoke = |backend: &Backend| {
            rt.block_on(async {
                match cause {
                    RevocationCause::Credential => backend
                        .revoke_credential(&id, reach)
                        .await
                        .map(|r| r.revoked),
                    RevocationCause::Thread => {
                        backend.revoke_thread("t-2", reach).await.map(|r| r.revoked)
                    }
                    _ => {
                        backend
                            .revoke_all(RevokeAllTarget::MintedBy("adapter-b"))
                            .await
                    }
                }
            })
        };
        journal.faults().fail_syncs(1);
        assert!(matches!(
            revoke(&backend),
            Err(Rejection::Unavailable { .. })
        ));
        assert!(matches!(
            store.resolve(digest, None),
            Err(Rejection::Dead(d)) if d.reason == DeathReason::Revoked(cause)
        ));
        assert_eq!(
            revoke(&backend).unwrap(),
            0,
            "memory has nothing left to revoke"
        );
    }
    drop((backend, store));
    let store = open(dir.path(), &clock);
    for (digest, cause) in calls {
        let outcome = store.resolve(digest, None);
        assert!(
            matches!(&outcome, Err(Rejection::Dead(d)) if d.reason == DeathReason::Revoked(cause)),
            "{cause:?}: {outcome:?}"
        );
    }
}

/// A second store on the same directory is refused while the first is
/// open, and opens once it is closed. Catches a lock file that a crash
/// would leave behind (the first open would then fail too) and no lock.
#[test]
fn one_store_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let second = Store::open(
        config(),
        Arc::new(clock.clone()),
        DurableOptions::new(dir.path()),
    );
    let error = second.err().expect("refused").to_string();
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
    drop(store);
    open(dir.path(), &clock);
}

/// A wall clock set back across a restart: the store runs from the
/// newest time it had used, so nothing already expired comes back and no
/// deadline moves back. Catches a restart that trusts the wall clock.
#[test]
fn a_clock_set_back_across_a_restart_never_runs_the_store_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let short = mint(
        &store,
        NewCredential {
            idle_timeout: Some(Duration::from_secs(10)),
            ..new("t-1", "i-1", "adapter-a")
        },
    );
    clock.advance(Duration::from_secs(11));
    let expired = store.resolve(&short, None).unwrap_err();
    runtime().block_on(store.close()).unwrap();
    let stopped_at = store.now();
    drop(store);
    clock.set(START - 3_600_000);
    let (store, recovery) = Store::open(
        config(),
        Arc::new(clock.clone()),
        DurableOptions::new(dir.path()),
    )
    .unwrap();
    assert!(store.now() >= stopped_at, "the store's clock went back");
    assert_eq!(
        recovery.clock_behind.as_millis() as Millis,
        stopped_at - clock.now()
    );
    assert_eq!(
        format!("{:?}", store.resolve(&short, None).unwrap_err()),
        format!("{expired:?}")
    );
}

/// Downtime up to the grace does not count: a credential live at the stop
/// is live after a restart 50 s later though its idle timeout is 30 s; a
/// downtime of ten minutes forgives only the grace. Catches a restart that
/// counts all downtime (every credential of a slow restart would die) or
/// none (an unused credential would outlive a long outage).
#[test]
fn downtime_within_the_grace_kills_no_credential() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(dir.path(), &clock);
    let digest = mint(&store, new("t-1", "i-1", "adapter-a"));
    clock.advance(Duration::from_secs(20));
    store.resolve(&digest, None).unwrap();
    runtime().block_on(store.close()).unwrap();
    drop(store);
    clock.advance(Duration::from_secs(50));
    let store = open(dir.path(), &clock);
    let renewed = store
        .resolve(&digest, None)
        .expect("live after a 50 s restart");
    assert_eq!(renewed.deadlines.idle_expires_at, clock.now() + 30_000);
    runtime().block_on(store.close()).unwrap();
    drop(store);
    clock.advance(Duration::from_secs(600));
    let store = open(dir.path(), &clock);
    assert!(matches!(
        store.resolve(&digest, None),
        Err(Rejection::Dead(d)) if d.reason == DeathReason::IdleTimeout
    ));
}

/// The wall clock running ahead re-anchors the store's clock forward, and
/// one running behind does not move it back. Catches a re-anchor that
/// follows the wall both ways.
#[test]
fn the_clock_reanchors_forward_only() {
    let clock = FakeWall {
        steady: FakeClock::new(START),
        wall: FakeClock::new(START),
    };
    let anchored = crate::clock::AnchoredClock::new(Arc::new(clock.clone()), 0);
    assert_eq!(anchored.reanchor(), None);
    clock.wall.advance(Duration::from_millis(900));
    assert_eq!(anchored.reanchor(), None, "within a second is jitter");
    clock.wall.advance(Duration::from_secs(5));
    assert_eq!(anchored.reanchor(), Some(5_900));
    assert_eq!(anchored.now(), START + 5_900);
    clock.wall.set(START - 60_000);
    assert_eq!(anchored.reanchor(), None);
    assert_eq!(anchored.now(), START + 5_900);
}

/// A checkpoint visits what was used, not what is held: 10k credentials,
/// 10 used, write 10 uses. Catches a checkpoint that writes every live
/// credential (the bench measures its CPU).
#[test]
fn a_checkpoint_writes_only_what_was_used() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open_with(
        dir.path(),
        Arc::new(clock.clone()),
        StoreConfig {
            max_credentials_per_thread: 100_000,
            ..config()
        },
    );
    let digests: Vec<TokenDigest> = (0..10_000)
        .map(|i| mint(&store, new(&format!("t-{}", i % 100), "i-1", "adapter-a")))
        .collect();
    assert_eq!(
        store.checkpoint_renewals().unwrap(),
        0,
        "mint is not a use to checkpoint"
    );
    clock.advance(Duration::from_secs(1));
    for digest in digests.iter().step_by(1000) {
        store.resolve(digest, None).unwrap();
        store.resolve(digest, None).unwrap();
    }
    assert_eq!(store.checkpoint_renewals().unwrap(), 10);
    assert_eq!(store.checkpoint_renewals().unwrap(), 0);
}

//! The store's limits: per thread, per caller, and the store's budgets of
//! credentials and bytes. Each test names the broken implementation it
//! catches. Driven by a fake clock; races start at a barrier.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use credential_authority::clock::{FakeClock, SystemClock};
use credential_authority::store::{
    Budget, DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget, Store,
    StoreConfig,
};
use credential_authority::token::{Token, TokenDigest};

const START: u64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn store_with(config: StoreConfig) -> (Store, FakeClock) {
    let clock = FakeClock::new(START);
    (Store::new(config, Arc::new(clock.clone())), clock)
}

fn limited(per_thread: u64, credentials: u64, bytes: u64) -> StoreConfig {
    StoreConfig {
        max_credentials_per_thread: per_thread,
        max_credentials: credentials,
        max_credential_bytes: bytes,
        ..StoreConfig::default()
    }
}

fn new<'a>(thread_id: &'a str, instance: &'a str) -> NewCredential<'a> {
    NewCredential {
        thread_id,
        provider_instance_id: instance,
        minted_by: "adapter",
        reach: Reach::MintedBy("adapter"),
        ..NewCredential::default()
    }
}

fn try_mint(store: &Store, new: NewCredential<'_>) -> Result<TokenDigest, Rejection> {
    let digest = Token::generate().digest();
    store.mint(digest, new).map(|_| digest)
}

fn mint(store: &Store, thread_id: &str, instance: &str) -> TokenDigest {
    try_mint(store, new(thread_id, instance)).unwrap()
}

fn rotate<'a>(thread_id: &'a str, instance: &'a str) -> NewCredential<'a> {
    NewCredential {
        replace_previous: true,
        ..new(thread_id, instance)
    }
}

/// The store's books agree with what it holds.
fn consistent(store: &Store) {
    store.check_invariants().unwrap();
    assert_eq!(store.budget_used().0, store.record_count() as u64);
}

/// Catches: a limit counted per instance or per caller rather than per
/// thread, an off-by-one (`>` for `>=`), and a limit that leaks onto other
/// threads.
#[test]
fn the_thread_limit_counts_every_caller_and_instance_of_the_thread() {
    let (store, _) = store_with(limited(3, 100, 1 << 20));
    mint(&store, "t", "i1");
    mint(&store, "t", "i2");
    try_mint(
        &store,
        NewCredential {
            minted_by: "other",
            reach: Reach::MintedBy("other"),
            ..new("t", "i3")
        },
    )
    .unwrap();
    let refused = try_mint(&store, new("t", "i4"));
    assert!(
        matches!(refused, Err(Rejection::ThreadLimit { limit: 3, .. })),
        "{refused:?}"
    );
    mint(&store, "u", "i1");
    assert_eq!(store.record_count(), 4);
    consistent(&store);
}

/// Catches: the limit counted before the replacement (a rotation at the
/// limit refused), and a replacement that frees room for another instance.
#[test]
fn replace_previous_frees_its_room_at_the_limit() {
    let (store, _) = store_with(limited(2, 100, 1 << 20));
    let old = mint(&store, "t", "i1");
    let other = mint(&store, "t", "i2");
    let minted = store.mint(Token::generate().digest(), rotate("t", "i1"));
    assert_eq!(minted.unwrap().replaced, 1);
    assert!(store.resolve(&old, None).is_err());
    assert!(store.resolve(&other, None).is_ok());
    // A rotation of an instance with nothing to replace frees nothing.
    assert!(matches!(
        try_mint(&store, rotate("t", "i3")),
        Err(Rejection::ThreadLimit { limit: 2, .. })
    ));
    consistent(&store);
}

/// Catches: dead records counted against the live limit until the sweeper
/// happens by (after RevokeAll, revocations are lazy; expiry too), and
/// revocations that do not give the room back.
#[test]
fn revocation_and_expiry_free_room_without_a_sweep() {
    let (store, clock) = store_with(limited(2, 100, 1 << 20));
    let a = mint(&store, "t", "i1");
    mint(&store, "t", "i1");
    assert!(try_mint(&store, new("t", "i1")).is_err());
    // RevokeCredential frees its place at once.
    let id = store.resolve(&a, None).unwrap().credential_id;
    assert_eq!(store.revoke_credential(&id, Reach::All).unwrap().revoked, 1);
    mint(&store, "t", "i1");
    // RevokeAll kills both without visiting them; the full thread drops its
    // dead records when a Mint finds it full.
    assert_eq!(store.revoke_all(RevokeAllTarget::Instance("i1")), 2);
    assert_eq!(store.record_count(), 2, "RevokeAll itself visits nothing");
    mint(&store, "t", "i1");
    let b = mint(&store, "t", "i1");
    assert!(try_mint(&store, new("t", "i1")).is_err());
    // Expired, not swept: no longer live, so no longer counted.
    clock.advance(31 * MINUTE);
    mint(&store, "t", "i1");
    mint(&store, "t", "i1");
    // What was removed left its tombstone: Resolve still says why.
    assert!(matches!(
        store.resolve(&b, None),
        Err(Rejection::Dead(dead)) if dead.reason == DeathReason::IdleTimeout
    ));
    consistent(&store);
}

/// Catches: a Mint that replaces (or claims its instance) before a later
/// limit refuses it, and budgets that move on a refusal.
#[test]
fn a_refused_mint_changes_nothing() {
    let (store, _) = store_with(limited(1, 100, 200));
    let held = mint(&store, "t", "i1");
    let before = store.budget_used();
    // The thread is full: a rotation of another instance replaces nothing
    // and is refused.
    assert!(matches!(
        try_mint(&store, rotate("t", "i2")),
        Err(Rejection::ThreadLimit { limit: 1, .. })
    ));
    // Room on the thread after the replacement, but the new credential's
    // bytes do not fit: the old one must survive.
    let big: Vec<Box<str>> = vec!["s".repeat(300).into()];
    let refused = try_mint(
        &store,
        NewCredential {
            scopes: big.into(),
            ..rotate("t", "i1")
        },
    );
    assert!(
        matches!(
            refused,
            Err(Rejection::StoreBudget {
                budget: Budget::Bytes,
                limit: 200
            })
        ),
        "{refused:?}"
    );
    assert!(store.resolve(&held, None).is_ok(), "not replaced");
    assert_eq!(store.budget_used(), before);
    // The refused Mint claimed no instance: another adapter may take i2.
    try_mint(
        &store,
        NewCredential {
            minted_by: "other",
            reach: Reach::MintedBy("other"),
            ..new("u", "i2")
        },
    )
    .unwrap();
    consistent(&store);
}

/// Catches: a budget given back twice (or never) for one of the ways a
/// record leaves: RevokeThread, RevokeCredential, a replacement, expiry,
/// and RevokeAll (reclaimed by the sweep).
#[test]
fn the_credential_budget_is_given_back_exactly_once_per_record() {
    let (store, clock) = store_with(limited(100, 3, 1 << 20));
    let full = |store: &Store| {
        matches!(
            try_mint(store, new("x", "i1")),
            Err(Rejection::StoreBudget {
                budget: Budget::Credentials,
                limit: 3
            })
        )
    };
    let a = mint(&store, "t1", "i1");
    mint(&store, "t2", "i1");
    mint(&store, "t3", "i1");
    assert!(full(&store));
    // A rotation at the budget replaces one and takes its place.
    store
        .mint(Token::generate().digest(), rotate("t2", "i1"))
        .unwrap();
    assert!(full(&store));
    assert_eq!(store.revoke_thread("t3", Reach::All).revoked, 1);
    mint(&store, "t4", "i1");
    assert!(full(&store));
    let id = store.resolve(&a, None).unwrap().credential_id;
    store.revoke_credential(&id, Reach::All).unwrap();
    let short = NewCredential {
        idle_timeout: Some(MINUTE),
        ..new("t5", "i1")
    };
    try_mint(&store, short).unwrap();
    assert!(full(&store));
    consistent(&store);
    clock.advance(2 * MINUTE);
    assert_eq!(store.sweep().removed, 1);
    mint(&store, "t6", "i1");
    assert!(full(&store));
    // RevokeAll frees the budget once its records are reclaimed.
    assert_eq!(store.revoke_all(RevokeAllTarget::Everything), 3);
    assert!(full(&store), "the records are still held");
    assert_eq!(store.sweep().reclaimed, 3);
    assert_eq!(store.budget_used(), (0, 0));
    for t in ["a", "b", "c"] {
        mint(&store, t, "i1");
    }
    assert!(full(&store));
    consistent(&store);
}

/// Catches: bytes counted from something other than the strings callers
/// send (or not given back), and the bytes budget reported as the count's.
#[test]
fn the_bytes_budget_counts_the_strings_of_held_credentials() {
    // "t" + "i1" + "kind" + "scope" + "k" + "v" = 14 bytes.
    let one = |thread| NewCredential {
        provider_kind: Some("kind"),
        scopes: vec![Box::from("scope")].into(),
        labels: vec![(Box::from("k"), Box::from("v"))].into(),
        ..new(thread, "i1")
    };
    let (store, _) = store_with(limited(100, 100, 28));
    try_mint(&store, one("t")).unwrap();
    try_mint(&store, one("u")).unwrap();
    assert_eq!(store.budget_used(), (2, 28));
    assert!(matches!(
        try_mint(&store, one("v")),
        Err(Rejection::StoreBudget {
            budget: Budget::Bytes,
            limit: 28
        })
    ));
    store.revoke_thread("t", Reach::All);
    assert_eq!(store.budget_used(), (1, 14));
    try_mint(&store, one("v")).unwrap();
    consistent(&store);
}

/// Catches: a quota counted per instance or thread, one that a RevokeAll
/// of the caller does not free, and one that leaks onto other callers.
#[test]
fn the_owner_quota_counts_the_callers_live_credentials() {
    let (store, _) = store_with(StoreConfig::default());
    let quota = |new: NewCredential<'static>| NewCredential {
        owner_quota: Some(2),
        ..new
    };
    try_mint(&store, quota(new("t1", "i1"))).unwrap();
    try_mint(&store, quota(new("t2", "i2"))).unwrap();
    let refused = try_mint(&store, quota(new("t3", "i1")));
    assert!(
        matches!(refused, Err(Rejection::OwnerQuota { limit: 2, .. })),
        "{refused:?}"
    );
    // A rotation frees its own place.
    store
        .mint(Token::generate().digest(), quota(rotate("t1", "i1")))
        .unwrap();
    // Another caller has its own count.
    try_mint(
        &store,
        NewCredential {
            minted_by: "other",
            reach: Reach::MintedBy("other"),
            owner_quota: Some(2),
            ..new("t3", "j")
        },
    )
    .unwrap();
    assert_eq!(store.revoke_all(RevokeAllTarget::MintedBy("adapter")), 2);
    try_mint(&store, quota(new("t4", "i1"))).unwrap();
    try_mint(&store, quota(new("t5", "i1"))).unwrap();
    assert!(try_mint(&store, quota(new("t6", "i1"))).is_err());
    store.sweep();
    consistent(&store);
}

/// Runs `mints` Mints from as many threads at once; returns how many
/// succeeded, after checking that the others failed as `refused` says.
fn race(mints: usize, mint: impl Fn(usize) -> Result<TokenDigest, Rejection> + Sync) -> usize {
    let barrier = Barrier::new(mints);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..mints)
            .map(|k| {
                let (barrier, mint) = (&barrier, &mint);
                scope.spawn(move || {
                    barrier.wait();
                    mint(k)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    outcomes.iter().filter(|o| o.is_ok()).count()
}

/// Catches: a check and its commit not under one lock (or reservation),
/// so that racing Mints all pass the last places of a limit. Repeated, so
/// a window between check and commit is hit.
#[test]
fn racing_mints_never_pass_a_limit_together() {
    const RACERS: usize = 8;
    for _ in 0..20 {
        // The thread's last 2 places.
        let (store, _) = store_with(limited(5, 1_000, 1 << 20));
        for _ in 0..3 {
            mint(&store, "t", "i");
        }
        let won = race(RACERS, |k| {
            let instance = format!("i{k}");
            try_mint(&store, new("t", &instance))
        });
        assert_eq!(won, 2, "per-thread limit");
        consistent(&store);

        // The store's last 3 places, on threads of their own.
        let (store, _) = store_with(limited(5, 4, 1 << 20));
        mint(&store, "t", "i");
        let won = race(RACERS, |k| {
            let thread = format!("t{k}");
            try_mint(&store, new(&thread, "i"))
        });
        assert_eq!(won, 3, "credential budget");
        consistent(&store);

        // The caller's last place.
        let (store, _) = store_with(StoreConfig::default());
        try_mint(
            &store,
            NewCredential {
                owner_quota: Some(2),
                ..new("t", "i")
            },
        )
        .unwrap();
        let won = race(RACERS, |k| {
            let thread = format!("t{k}");
            try_mint(
                &store,
                NewCredential {
                    owner_quota: Some(2),
                    ..new(&thread, "i")
                },
            )
        });
        assert_eq!(won, 1, "owner quota");
        consistent(&store);

        // Rotations at a full store all succeed, one at a time.
        let (store, _) = store_with(limited(5, 8, 1 << 20));
        for k in 0..RACERS {
            mint(&store, &format!("t{k}"), "i");
        }
        let won = race(RACERS, |k| {
            let thread = format!("t{k}");
            try_mint(&store, rotate(&thread, "i"))
        });
        assert_eq!(won, RACERS, "rotations at the budget");
        consistent(&store);
    }
}

/// Catches: a reply that grows with the thread, a Touch that renews only
/// what it lists, and a total that counts the listed only.
#[test]
fn touch_by_thread_lists_the_oldest_and_renews_them_all() {
    let (store, clock) = store_with(StoreConfig {
        touch_reply_limit: 3,
        ..StoreConfig::default()
    });
    let digests: Vec<TokenDigest> = (0..10).map(|_| mint(&store, "t", "i")).collect();
    clock.advance(20 * MINUTE);
    let touched = store.touch_thread("t", Reach::All).unwrap();
    assert_eq!(touched.total, 10);
    let listed: Vec<_> = touched.touched.iter().map(|t| t.credential_id).collect();
    let oldest: Vec<_> = digests[..3]
        .iter()
        .map(|d| store.resolve(d, None).unwrap().credential_id)
        .collect();
    assert_eq!(listed, oldest, "the oldest, in mint order");
    // 20 more minutes: past the mint-time idle deadline, not the renewed one.
    clock.advance(20 * MINUTE);
    for digest in &digests[3..] {
        assert!(store.resolve(digest, None).is_ok(), "renewed unlisted");
    }
}

/// Catches: removal from a thread that walks the list (the sweeper was
/// quadratic), and lists broken by many removals in one thread. The cost
/// itself is the benchmark's; here every removal must leave the list
/// consistent.
#[test]
fn many_credentials_of_one_thread_expire_and_leave_it_consistent() {
    let (store, clock) = store_with(limited(5_000, 10_000, 1 << 30));
    let short = || NewCredential {
        idle_timeout: Some(MINUTE),
        ..new("t", "i")
    };
    let mut kept = Vec::new();
    for k in 0..4_000 {
        if k % 100 == 0 {
            kept.push(mint(&store, "t", "i"));
        } else {
            try_mint(&store, short()).unwrap();
        }
    }
    clock.advance(2 * MINUTE);
    assert_eq!(store.sweep().removed, 3_960);
    consistent(&store);
    for digest in &kept {
        assert!(store.resolve(digest, None).is_ok());
    }
    let revoked = store.revoke_thread("t", Reach::All);
    assert_eq!(revoked.revoked, 40);
    assert_eq!(store.record_count(), 0);
    consistent(&store);
    assert!(matches!(
        store.resolve(&kept[0], None),
        Err(Rejection::Dead(dead)) if dead.reason == DeathReason::Revoked(RevocationCause::Thread)
    ));
}

/// Catches: RevokeAll's records left to their idle deadlines by the
/// background sweeper, holding the budget for half an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweeper_reclaims_what_revoke_all_killed() {
    let store = Store::new(limited(100, 50, 1 << 20), Arc::new(SystemClock::new()));
    let guard = store.spawn_sweeper();
    for k in 0..50 {
        mint(&store, &format!("t{k}"), "i");
    }
    assert!(try_mint(&store, new("x", "i")).is_err());
    assert_eq!(store.revoke_all(RevokeAllTarget::Everything), 50);
    // Bounded wait: the sweeper is woken by the RevokeAll.
    for _ in 0..200 {
        if store.record_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.record_count(), 0);
    assert_eq!(store.budget_used(), (0, 0));
    mint(&store, "x", "i");
    drop(guard);
}

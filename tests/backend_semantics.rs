//! One semantic suite, run against every backend through the store API the
//! service uses ([`Backend`]): the memory store, the durable embedded store
//! and the Redis store on a real `redis-server`. Each case runs three times
//! (modules `memory`, `durable`, `redis`), so the backends cannot drift
//! apart. Time is a fake clock (the Redis functions take its reading
//! instead of `TIME`), so days pass in microseconds and every boundary is
//! hit to the millisecond.
//!
//! Each case names the broken implementation it catches.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use credential_authority::clock::{Clock, FakeClock};
use credential_authority::store::redis::{RedisOptions, RedisStore};
use credential_authority::store::{
    Backend, Budget, DeathReason, DurableOptions, Minted, NewCredential, Reach, Rejection,
    Resolved, RevocationCause, RevokeAllTarget, Store, StoreConfig,
};
use credential_authority::token::{Token, TokenDigest};

const START: u64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);
const MS: Duration = Duration::from_millis(1);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What keeps a backend's resources alive for the test.
#[allow(dead_code)]
enum Keep {
    Nothing,
    Dir(tempfile::TempDir),
    Redis(RedisServer),
}

/// A backend and the fake clock that drives it.
struct Harness {
    backend: Backend,
    clock: FakeClock,
    _keep: Keep,
}

impl Harness {
    async fn memory(config: StoreConfig) -> Harness {
        let clock = FakeClock::new(START);
        let store = Store::new(config, Arc::new(clock.clone()));
        Harness {
            backend: store.into(),
            clock,
            _keep: Keep::Nothing,
        }
    }

    async fn durable(config: StoreConfig) -> Harness {
        let clock = FakeClock::new(START);
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(
            config,
            Arc::new(clock.clone()),
            DurableOptions::new(dir.path().join("store")),
        )
        .expect("opens");
        Harness {
            backend: store.into(),
            clock,
            _keep: Keep::Dir(dir),
        }
    }

    async fn redis(config: StoreConfig) -> Harness {
        let clock = FakeClock::new(START);
        let server = RedisServer::start(&[]);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let store = RedisStore::connect(
            RedisOptions {
                url: server.url(),
                password: None,
                min_replicas: 0,
                timeout: Duration::from_secs(5),
                tls_ca: None,
            },
            config,
            shared.clone(),
            Some(shared),
        )
        .await
        .expect("connects");
        Harness {
            backend: store.into(),
            clock,
            _keep: Keep::Redis(server),
        }
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    async fn mint_with(&self, new: NewCredential<'_>) -> Result<(TokenDigest, Minted), Rejection> {
        let digest = Token::generate().digest();
        let minted = self.backend.mint(digest, new).await?;
        Ok((digest, minted))
    }

    async fn mint(&self, thread_id: &str, instance: &str) -> (TokenDigest, Minted) {
        self.mint_with(new(thread_id, instance))
            .await
            .expect("mints")
    }

    async fn resolve(
        &self,
        digest: &TokenDigest,
        scope: Option<&str>,
    ) -> Result<Resolved, Rejection> {
        #[allow(clippy::redundant_closure)]
        self.backend
            .resolve_with(digest, scope, |view| Resolved::from(view))
            .await
    }

    async fn death(&self, digest: &TokenDigest) -> DeathReason {
        match self.resolve(digest, None).await {
            Err(Rejection::Dead(dead)) => dead.reason,
            other => panic!("expected a dead credential, got {other:?}"),
        }
    }
}

fn new<'a>(thread_id: &'a str, instance: &'a str) -> NewCredential<'a> {
    NewCredential {
        thread_id,
        provider_instance_id: instance,
        provider_kind: Some("claude"),
        minted_by: "adapter-a",
        reach: Reach::MintedBy("adapter-a"),
        scopes: Arc::from(vec![Box::from("read"), Box::from("write")]),
        labels: Arc::from(vec![(Box::from("repo"), Box::from("web"))]),
        ..NewCredential::default()
    }
}

fn revoked(cause: RevocationCause) -> DeathReason {
    DeathReason::Revoked(cause)
}

/// Runs each case on every backend, with the config the case gives.
macro_rules! on_every_backend {
    ($($case:ident => $config:expr;)*) => {
        mod memory {
            #[allow(unused_imports)]
            use super::{config, StoreConfig, DAY, MINUTE};
            $(#[tokio::test] async fn $case() { super::$case(super::Harness::memory($config).await).await })*
        }
        mod durable {
            #[allow(unused_imports)]
            use super::{config, StoreConfig, DAY, MINUTE};
            $(#[tokio::test] async fn $case() { super::$case(super::Harness::durable($config).await).await })*
        }
        mod redis {
            #[allow(unused_imports)]
            use super::{config, StoreConfig, DAY, MINUTE};
            $(#[tokio::test] async fn $case() { super::$case(super::Harness::redis($config).await).await })*
        }
    };
}

fn config() -> StoreConfig {
    StoreConfig::default()
}

on_every_backend! {
    resolve_answers_everything_minted => config();
    idle_timeout_kills_at_the_exact_millisecond => config();
    each_use_slides_both_deadlines => config();
    a_refused_scope_does_not_renew => config();
    unused_credential_expires_at_its_max_lifetime => StoreConfig { idle_timeout: 2 * DAY, max_lifetime: DAY, ..config() };
    absolute_lifetime_caps_renewal => StoreConfig { absolute_lifetime: Some(MINUTE * 45), ..config() };
    revoke_credential_names_its_cause_and_is_idempotent => config();
    revoke_thread_ends_that_thread_only_within_reach => config();
    replace_previous_revokes_the_instance_earlier_credential => config();
    revoke_all_names_each_scope => config();
    revoke_all_of_one_callers_instance_spares_the_rest => config();
    a_death_before_revoke_all_keeps_its_reason => config();
    minting_after_revoke_all_works => config();
    tombstones_say_why_until_their_retention => StoreConfig { tombstone_retention: DAY, ..config() };
    touch_renews_one_or_a_bounded_thread => StoreConfig { touch_reply_limit: 2, ..config() };
    touch_of_a_dead_thread_names_its_newest_death => config();
    thread_limit_refuses_unless_replacing => StoreConfig { max_credentials_per_thread: 2, ..config() };
    owner_quota_refuses_the_next_mint => config();
    credential_budget_refuses_beyond_it => StoreConfig { max_credentials: 2, ..config() };
    an_instance_belongs_to_its_first_caller => config();
}

/// Catches: a field lost or swapped on the way through the backend (kind,
/// owner, labels, scopes, creation time), or deadlines computed from the
/// wrong lifetime.
async fn resolve_answers_everything_minted(h: Harness) {
    let (digest, minted) = h.mint("thread-1", "claude-1").await;
    assert_eq!(minted.deadlines.expires_at, START + ms(30 * DAY));
    assert_eq!(minted.deadlines.idle_expires_at, START + ms(30 * MINUTE));
    assert_eq!(minted.replaced, 0);
    let resolved = h.resolve(&digest, Some("write")).await.unwrap();
    assert_eq!(resolved.credential_id, minted.credential_id);
    assert_eq!(resolved.thread_id, "thread-1");
    assert_eq!(resolved.provider_instance_id, "claude-1");
    assert_eq!(resolved.provider_kind.as_deref(), Some("claude"));
    assert_eq!(resolved.minted_by, "adapter-a");
    assert_eq!(resolved.created_at, START);
    assert_eq!(resolved.scopes, vec!["read", "write"]);
    assert_eq!(resolved.labels, vec![("repo".to_owned(), "web".to_owned())]);
    assert!(matches!(
        h.resolve(&Token::generate().digest(), None).await,
        Err(Rejection::Unknown)
    ));
}

/// Catches: `>` where the idle deadline is inclusive (a credential alive at
/// its deadline), or a deadline one millisecond early.
async fn idle_timeout_kills_at_the_exact_millisecond(h: Harness) {
    let (digest, _) = h.mint("t", "i").await;
    let (other, _) = h.mint("t2", "i").await;
    h.advance(30 * MINUTE - MS);
    assert!(h.resolve(&digest, None).await.is_ok(), "alive 1 ms before");
    h.advance(MS);
    assert_eq!(
        h.death(&other).await,
        DeathReason::IdleTimeout,
        "dead at it"
    );
}

/// Catches: a renewal that moves only one deadline, that counts from the
/// mint instead of the use, or that lets `expires_at` move backwards.
async fn each_use_slides_both_deadlines(h: Harness) {
    let (digest, _) = h.mint("t", "i").await;
    let mut previous = 0;
    for step in 1..=5u64 {
        h.advance(20 * MINUTE);
        let resolved = h.resolve(&digest, None).await.expect("kept alive by use");
        let now = START + step * ms(20 * MINUTE);
        assert_eq!(resolved.deadlines.idle_expires_at, now + ms(30 * MINUTE));
        assert_eq!(resolved.deadlines.expires_at, now + ms(30 * DAY));
        assert!(resolved.deadlines.expires_at > previous);
        previous = resolved.deadlines.expires_at;
    }
    // 100 minutes after the mint, far past the first idle deadline.
    h.advance(30 * MINUTE - MS);
    assert!(h.resolve(&digest, None).await.is_ok());
}

/// Catches: a Resolve refused for its scope that still renews the
/// credential (a caller without the scope could keep it alive).
async fn a_refused_scope_does_not_renew(h: Harness) {
    let (digest, minted) = h.mint("t", "i").await;
    h.advance(20 * MINUTE);
    match h.resolve(&digest, Some("admin")).await {
        Err(Rejection::ScopeMissing {
            credential_id,
            thread_id,
            scope,
        }) => {
            assert_eq!(credential_id, minted.credential_id);
            assert_eq!(&*thread_id, "t");
            assert_eq!(&*scope, "admin");
        }
        other => panic!("expected ScopeMissing, got {other:?}"),
    }
    h.advance(10 * MINUTE);
    assert_eq!(h.death(&digest).await, DeathReason::IdleTimeout);
}

/// Catches: `Expired` and `IdleTimeout` confused when the max lifetime
/// comes first.
async fn unused_credential_expires_at_its_max_lifetime(h: Harness) {
    let (digest, minted) = h.mint("t", "i").await;
    assert_eq!(
        minted.deadlines.idle_expires_at,
        START + ms(DAY),
        "capped by expiry"
    );
    h.advance(DAY);
    assert_eq!(h.death(&digest).await, DeathReason::Expired);
}

/// Catches: renewal that passes the absolute lifetime.
async fn absolute_lifetime_caps_renewal(h: Harness) {
    let (digest, _) = h.mint("t", "i").await;
    h.advance(25 * MINUTE);
    let resolved = h.resolve(&digest, None).await.unwrap();
    assert_eq!(resolved.deadlines.expires_at, START + ms(45 * MINUTE));
    assert_eq!(resolved.deadlines.idle_expires_at, START + ms(45 * MINUTE));
    h.advance(20 * MINUTE);
    assert_eq!(h.death(&digest).await, DeathReason::Expired);
}

/// Catches: a revocation that reports the wrong cause, counts a dead
/// credential again, or lets another caller revoke.
async fn revoke_credential_names_its_cause_and_is_idempotent(h: Harness) {
    let (digest, minted) = h.mint("t", "i").await;
    let id = minted.credential_id;
    assert!(matches!(
        h.backend.revoke_credential(&id, Reach::MintedBy("adapter-b")).await,
        Err(Rejection::NotOwned { credential_id: Some(named) }) if named == id
    ));
    assert!(
        h.resolve(&digest, None).await.is_ok(),
        "untouched by the refusal"
    );
    let first = h
        .backend
        .revoke_credential(&id, Reach::MintedBy("adapter-a"))
        .await
        .unwrap();
    assert_eq!(first.revoked, 1);
    assert_eq!(first.thread_id.as_deref(), Some("t"));
    assert_eq!(h.death(&digest).await, revoked(RevocationCause::Credential));
    let again = h.backend.revoke_credential(&id, Reach::All).await.unwrap();
    assert_eq!(again.revoked, 0);
    assert_eq!(h.death(&digest).await, revoked(RevocationCause::Credential));
}

/// Catches: RevokeThread reaching another thread, or another caller's
/// credentials in the same thread, or counting the dead.
async fn revoke_thread_ends_that_thread_only_within_reach(h: Harness) {
    let (mine, _) = h.mint("t", "i").await;
    let (theirs, _) = h
        .mint_with(NewCredential {
            minted_by: "adapter-b",
            reach: Reach::MintedBy("adapter-b"),
            ..new("t", "j")
        })
        .await
        .unwrap();
    let (elsewhere, _) = h.mint("t2", "i").await;
    let done = h
        .backend
        .revoke_thread("t", Reach::MintedBy("adapter-a"))
        .await
        .unwrap();
    assert_eq!((done.revoked, done.not_owned), (1, 1));
    assert_eq!(h.death(&mine).await, revoked(RevocationCause::Thread));
    assert!(h.resolve(&theirs, None).await.is_ok());
    assert!(h.resolve(&elsewhere, None).await.is_ok());
    let again = h.backend.revoke_thread("t", Reach::All).await.unwrap();
    assert_eq!(
        (again.revoked, again.not_owned),
        (1, 0),
        "only b's was live"
    );
}

/// Catches: a rotation that leaves the old token working, replaces another
/// instance's credential, or names the wrong cause.
async fn replace_previous_revokes_the_instance_earlier_credential(h: Harness) {
    let (old, _) = h.mint("t", "i").await;
    let (other_instance, _) = h.mint("t", "i2").await;
    let (fresh, minted) = h
        .mint_with(NewCredential {
            replace_previous: true,
            ..new("t", "i")
        })
        .await
        .unwrap();
    assert_eq!(minted.replaced, 1);
    assert_eq!(h.death(&old).await, revoked(RevocationCause::Replaced));
    assert!(h.resolve(&fresh, None).await.is_ok());
    assert!(h.resolve(&other_instance, None).await.is_ok());
}

/// Catches: RevokeAll naming the wrong cause, or ending more or less than
/// its scope.
async fn revoke_all_names_each_scope(h: Harness) {
    let b = |instance: &'static str| NewCredential {
        minted_by: "adapter-b",
        reach: Reach::MintedBy("adapter-b"),
        ..new("tb", instance)
    };
    let (a_i, _) = h.mint("ta", "i").await;
    let (a_j, _) = h.mint("ta", "j").await;
    let (b_k, _) = h.mint_with(b("k")).await.unwrap();
    let (b_l, _) = h.mint_with(b("l")).await.unwrap();
    let ended = h
        .backend
        .revoke_all(RevokeAllTarget::Instance("i"))
        .await
        .unwrap();
    assert_eq!(ended, 1);
    assert_eq!(
        h.death(&a_i).await,
        revoked(RevocationCause::ProviderInstance)
    );
    assert!(h.resolve(&a_j, None).await.is_ok());
    h.backend
        .revoke_all(RevokeAllTarget::MintedBy("adapter-b"))
        .await
        .unwrap();
    assert_eq!(h.death(&b_k).await, revoked(RevocationCause::Caller));
    assert_eq!(h.death(&b_l).await, revoked(RevocationCause::Caller));
    assert!(h.resolve(&a_j, None).await.is_ok());
    h.backend
        .revoke_all(RevokeAllTarget::Everything)
        .await
        .unwrap();
    assert_eq!(h.death(&a_j).await, revoked(RevocationCause::All));
    assert_eq!(
        h.death(&a_i).await,
        revoked(RevocationCause::ProviderInstance),
        "the first revocation names the cause"
    );
}

/// Catches: a (caller, instance) RevokeAll that reaches the caller's other
/// instances or another caller's credentials of the same instance, or
/// names a cause other than `provider_instance`.
async fn revoke_all_of_one_callers_instance_spares_the_rest(h: Harness) {
    let (mine, _) = h.mint("t1", "i").await;
    let (my_other, _) = h.mint("t2", "j").await;
    let (admins, _) = h
        .mint_with(NewCredential {
            minted_by: "admin",
            reach: Reach::All,
            ..new("t3", "i")
        })
        .await
        .unwrap();
    let ended = h
        .backend
        .revoke_all(RevokeAllTarget::MintedByForInstance {
            minted_by: "adapter-a",
            provider_instance_id: "i",
        })
        .await
        .unwrap();
    assert_eq!(ended, 1);
    assert_eq!(
        h.death(&mine).await,
        revoked(RevocationCause::ProviderInstance)
    );
    assert!(h.resolve(&my_other, None).await.is_ok());
    assert!(h.resolve(&admins, None).await.is_ok());
    let (again, _) = h.mint("t1", "i").await;
    assert!(
        h.resolve(&again, None).await.is_ok(),
        "minted after it: live"
    );
}

/// Catches: a RevokeAll that rewrites the reason of a credential that had
/// already died of idleness.
async fn a_death_before_revoke_all_keeps_its_reason(h: Harness) {
    let (digest, _) = h.mint("t", "i").await;
    h.advance(31 * MINUTE);
    h.backend
        .revoke_all(RevokeAllTarget::Everything)
        .await
        .unwrap();
    assert_eq!(h.death(&digest).await, DeathReason::IdleTimeout);
}

/// Catches: a generation compared with `>=` (a credential minted after the
/// RevokeAll born dead).
async fn minting_after_revoke_all_works(h: Harness) {
    h.mint("t", "i").await;
    h.backend
        .revoke_all(RevokeAllTarget::Everything)
        .await
        .unwrap();
    let (digest, _) = h.mint("t", "i").await;
    assert!(h.resolve(&digest, None).await.is_ok());
    h.backend
        .revoke_all(RevokeAllTarget::MintedBy("adapter-a"))
        .await
        .unwrap();
    let (again, _) = h.mint("t", "i").await;
    assert!(h.resolve(&again, None).await.is_ok());
    assert_eq!(h.death(&digest).await, revoked(RevocationCause::Caller));
}

/// Catches: tombstones forgotten early (a revoked token reported unknown)
/// or kept past their retention.
async fn tombstones_say_why_until_their_retention(h: Harness) {
    let (digest, minted) = h.mint("t", "i").await;
    h.backend
        .revoke_credential(&minted.credential_id, Reach::All)
        .await
        .unwrap();
    h.advance(DAY - MS);
    assert_eq!(h.death(&digest).await, revoked(RevocationCause::Credential));
    if let Some(store) = h.backend.embedded() {
        store.sweep();
    }
    h.advance(MS);
    if let Some(store) = h.backend.embedded() {
        store.sweep();
    }
    assert!(matches!(
        h.resolve(&digest, None).await,
        Err(Rejection::Unknown)
    ));
}

/// Catches: Touch that does not renew, lists more than the reply limit, or
/// miscounts the total.
async fn touch_renews_one_or_a_bounded_thread(h: Harness) {
    let (first, one) = h.mint("t", "i").await;
    h.advance(MS);
    let (_, two) = h.mint("t", "i").await;
    h.advance(MS);
    h.mint("t", "i").await;
    h.advance(20 * MINUTE);
    let touched = h
        .backend
        .touch_credential(&one.credential_id, Reach::MintedBy("adapter-a"))
        .await
        .unwrap();
    let now = START + 2 + ms(20 * MINUTE);
    assert_eq!(touched.deadlines.idle_expires_at, now + ms(30 * MINUTE));
    assert!(matches!(
        h.backend
            .touch_credential(&one.credential_id, Reach::MintedBy("adapter-b"))
            .await,
        Err(Rejection::NotOwned { .. })
    ));
    let thread = h
        .backend
        .touch_thread("t", Reach::MintedBy("adapter-a"))
        .await
        .unwrap();
    assert_eq!(thread.total, 3);
    let listed: Vec<_> = thread.touched.iter().map(|t| t.credential_id).collect();
    assert_eq!(
        listed,
        vec![one.credential_id, two.credential_id],
        "oldest first"
    );
    h.advance(29 * MINUTE);
    assert!(
        h.resolve(&first, None).await.is_ok(),
        "renewed by the touch"
    );
}

/// Catches: Touch of a thread whose credentials all died answering unknown
/// (or an older death) instead of the newest death, as Resolve would.
async fn touch_of_a_dead_thread_names_its_newest_death(h: Harness) {
    let (_, old) = h.mint("t", "i").await;
    h.advance(MS);
    let (_, newest) = h.mint("t", "i").await;
    h.backend
        .revoke_credential(&old.credential_id, Reach::All)
        .await
        .unwrap();
    h.advance(31 * MINUTE);
    match h.backend.touch_thread("t", Reach::All).await {
        Err(Rejection::Dead(dead)) => {
            assert_eq!(dead.credential_id, newest.credential_id);
            assert_eq!(dead.reason, DeathReason::IdleTimeout);
        }
        other => panic!("expected the newest death, got {other:?}"),
    }
    assert!(matches!(
        h.backend.touch_thread("never", Reach::All).await,
        Err(Rejection::Unknown)
    ));
}

/// Catches: a per-thread limit off by one, counting the dead, or refusing
/// a rotation that frees its own room.
async fn thread_limit_refuses_unless_replacing(h: Harness) {
    h.mint("t", "i").await;
    let (second, _) = h.mint("t", "i").await;
    match h.mint_with(new("t", "i")).await {
        Err(Rejection::ThreadLimit { thread_id, limit }) => {
            assert_eq!((&*thread_id, limit), ("t", 2));
        }
        other => panic!("expected ThreadLimit, got {other:?}"),
    }
    let (_, rotated) = h
        .mint_with(NewCredential {
            replace_previous: true,
            ..new("t", "i")
        })
        .await
        .expect("a rotation frees its room");
    assert_eq!(rotated.replaced, 2);
    assert_eq!(h.death(&second).await, revoked(RevocationCause::Replaced));
    h.advance(31 * MINUTE);
    h.mint("t", "i").await;
    h.mint("t", "i").await;
}

/// Catches: a caller quota that is not enforced, or that counts revoked
/// credentials against the caller.
async fn owner_quota_refuses_the_next_mint(h: Harness) {
    let quota = |thread| NewCredential {
        owner_quota: Some(2),
        ..new(thread, "i")
    };
    h.mint_with(quota("t1")).await.unwrap();
    let (_, second) = h.mint_with(quota("t2")).await.unwrap();
    match h.mint_with(quota("t3")).await {
        Err(Rejection::OwnerQuota { owner, limit }) => {
            assert_eq!((&*owner, limit), ("adapter-a", 2));
        }
        other => panic!("expected OwnerQuota, got {other:?}"),
    }
    h.backend
        .revoke_credential(&second.credential_id, Reach::All)
        .await
        .unwrap();
    h.mint_with(quota("t3")).await.expect("room freed");
}

/// Catches: a store budget that is not enforced or never frees.
async fn credential_budget_refuses_beyond_it(h: Harness) {
    h.mint("t1", "i").await;
    let (_, second) = h.mint("t2", "i").await;
    match h.mint_with(new("t3", "i")).await {
        Err(Rejection::StoreBudget { budget, limit }) => {
            assert_eq!((budget, limit), (Budget::Credentials, 2));
        }
        other => panic!("expected StoreBudget, got {other:?}"),
    }
    h.backend
        .revoke_credential(&second.credential_id, Reach::All)
        .await
        .unwrap();
    h.mint("t3", "i").await;
}

/// Catches: one adapter minting (and so revoking by replacement) for an
/// instance another adapter holds credentials of.
async fn an_instance_belongs_to_its_first_caller(h: Harness) {
    let (digest, _) = h.mint("t", "i").await;
    let intruder = NewCredential {
        minted_by: "adapter-b",
        reach: Reach::MintedBy("adapter-b"),
        replace_previous: true,
        ..new("t", "i")
    };
    assert!(matches!(
        h.mint_with(intruder).await,
        Err(Rejection::NotOwned { .. })
    ));
    assert!(h.resolve(&digest, None).await.is_ok());
    // An administrator may.
    let (_, minted) = h
        .mint_with(NewCredential {
            minted_by: "admin",
            reach: Reach::All,
            ..new("t2", "i")
        })
        .await
        .unwrap();
    assert_eq!(minted.replaced, 0);
}

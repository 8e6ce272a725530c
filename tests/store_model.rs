//! The store against a plain model: long random sequences of every owner
//! call and Resolve, by several callers and an administrator, checked call
//! by call: outcomes, counts, owners and the cause of every revocation. The
//! store's layout (slabs, slot indexes, per-thread lists through the
//! records, revocation scopes stamped by epoch) is built for speed; the
//! model is a list of credentials with a state, too simple to be wrong.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use credential_authority::clock::FakeClock;
use credential_authority::store::{
    Budget, DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget, Store,
    StoreConfig,
};
use credential_authority::token::{CredentialId, Token, TokenDigest};

const START: u64 = 1_800_000_000_000;

/// The callers that act: two that reach only what they minted, and an
/// administrator that reaches everything.
const ACTORS: [&str; 3] = ["adapter-a", "adapter-b", "admin"];

/// The administrator's index in [`ACTORS`].
const ADMIN: usize = 2;

fn reach(actor: usize) -> Reach<'static> {
    if ACTORS[actor] == "admin" {
        Reach::All
    } else {
        Reach::MintedBy(ACTORS[actor])
    }
}

/// One credential as the model sees it.
struct Modeled {
    digest: TokenDigest,
    id: CredentialId,
    thread: usize,
    instance: usize,
    owner: usize,
    /// `None` while live, else the revocation that ended it first.
    dead: Option<RevocationCause>,
    /// What it costs the byte budget: thread id, instance id and scopes.
    bytes: u64,
    /// Whether its record is still held: RevokeThread, RevokeCredential and
    /// a replacement remove it at once, RevokeAll leaves it to the sweep's
    /// reclaim pass.
    present: bool,
}

impl Modeled {
    fn live(&self) -> bool {
        self.dead.is_none()
    }

    fn within(&self, actor: usize) -> bool {
        reach(actor).covers(ACTORS[self.owner])
    }

    fn kill(&mut self, cause: RevocationCause) {
        self.dead.get_or_insert(cause);
    }

    /// Revoked (if live) and removed.
    fn remove(&mut self, cause: RevocationCause) {
        self.kill(cause);
        self.present = false;
    }
}

/// A small deterministic generator, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn thread_name(t: usize) -> String {
    format!("{t:08x}-0000-4000-8000-000000000000")
}

fn instance_name(i: usize) -> String {
    format!("adapter-{i}")
}

fn is_not_owned<T: std::fmt::Debug>(result: &Result<T, Rejection>) -> bool {
    matches!(result, Err(Rejection::NotOwned { .. }))
}

/// The model's answer for Resolve (and for Touch within reach).
fn check_dead(result: Result<impl std::fmt::Debug, Rejection>, m: &Modeled, context: &str) {
    match (result, m.dead) {
        (Ok(_), None) => {}
        (Err(Rejection::Dead(dead)), Some(cause)) => {
            assert_eq!(dead.reason, DeathReason::Revoked(cause), "{context}");
            assert_eq!(dead.credential_id, m.id, "{context}");
            assert_eq!(&*dead.minted_by, ACTORS[m.owner], "{context}");
        }
        (other, expected) => panic!("{context}: got {other:?}, model says dead: {expected:?}"),
    }
}

/// The limits a run enforces; `None` for the store's defaults, which the
/// runs never reach.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_thread: u64,
    credentials: u64,
    bytes: u64,
    /// The adapters' quota (the administrator has none).
    quota: u64,
}

fn run(seed: u64, steps: usize, limits: Option<Limits>) {
    let clock = FakeClock::new(START);
    let mut config = StoreConfig::default();
    if let Some(limits) = limits {
        config.max_credentials_per_thread = limits.per_thread;
        config.max_credentials = limits.credentials;
        config.max_credential_bytes = limits.bytes;
        config.touch_reply_limit = 2;
    }
    let store = Store::new(config.clone(), Arc::new(clock.clone()));
    let quota = |actor: usize| limits.filter(|_| actor != ADMIN).map(|l| l.quota);
    let mut rng = Rng(seed);
    let mut model: Vec<Modeled> = Vec::new();
    // Mints refused by each limit: thread, quota, credentials, bytes.
    let mut refused = [0u32; 4];
    const THREADS: usize = 24;
    const INSTANCES: usize = 2 * ACTORS.len();
    for step in 0..steps {
        // Small steps only: nothing reaches its 30-minute idle timeout here.
        clock.advance(Duration::from_millis(rng.below(20) as u64));
        let roll = rng.below(100);
        let actor = rng.below(ACTORS.len());
        let context = format!(
            "seed {seed} step {step} roll {roll} actor {}",
            ACTORS[actor]
        );
        match roll {
            0..=34 => {
                // Mostly the actor's own two instances, sometimes anyone's.
                let instance = if rng.below(5) > 0 {
                    2 * actor + rng.below(2)
                } else {
                    rng.below(INSTANCES)
                };
                let thread = rng.below(THREADS);
                let replace = rng.below(4) == 0;
                let digest = Token::generate().digest();
                let (thread_id, instance_id) = (thread_name(thread), instance_name(instance));
                let scopes: Vec<Box<str>> = (0..rng.below(4))
                    .map(|s| format!("scope-{s}").into_boxed_str())
                    .collect();
                let bytes = (thread_id.len() + instance_id.len() + 7 * scopes.len()) as u64;
                let minted = store.mint(
                    digest,
                    NewCredential {
                        thread_id: &thread_id,
                        provider_instance_id: &instance_id,
                        replace_previous: replace,
                        scopes: scopes.into(),
                        minted_by: ACTORS[actor],
                        reach: reach(actor),
                        owner_quota: quota(actor),
                        ..NewCredential::default()
                    },
                );
                // A provider instance belongs to the adapter whose records
                // of it are held (an admin's hold it for nobody): another
                // adapter is refused. So is a replacement that would revoke
                // a live credential out of the actor's reach.
                let taken = model.iter().any(|m| {
                    m.present && m.instance == instance && !m.within(actor) && m.owner != ADMIN
                });
                let in_the_way = replace
                    && model.iter().any(|m| {
                        m.present
                            && m.live()
                            && m.thread == thread
                            && m.instance == instance
                            && !m.within(actor)
                    });
                if taken || in_the_way {
                    assert!(is_not_owned(&minted), "{context}: {minted:?}");
                    continue;
                }
                let replaces = |m: &Modeled| {
                    replace
                        && m.present
                        && m.thread == thread
                        && m.instance == instance
                        && m.within(actor)
                };
                // The limits, counted after the replacement. A thread found
                // full first loses its dead records (which no call sees).
                let kept_on_thread = |model: &[Modeled]| {
                    model
                        .iter()
                        .filter(|m| m.present && m.thread == thread && !replaces(m))
                        .count() as u64
                };
                let refusal = limits.and_then(|limits| {
                    if kept_on_thread(&model) >= limits.per_thread {
                        for m in model
                            .iter_mut()
                            .filter(|m| m.present && m.thread == thread && !m.live())
                            .filter(|m| !replaces(m))
                        {
                            m.present = false;
                        }
                        if kept_on_thread(&model) >= limits.per_thread {
                            return Some(Rejection::ThreadLimit {
                                thread_id: thread_id.as_str().into(),
                                limit: limits.per_thread,
                            });
                        }
                    }
                    if let Some(quota) = quota(actor) {
                        let owned = model
                            .iter()
                            .filter(|m| m.present && m.live() && m.owner == actor && !replaces(m))
                            .count() as u64;
                        if owned >= quota {
                            return Some(Rejection::OwnerQuota {
                                owner: ACTORS[actor].into(),
                                limit: quota,
                            });
                        }
                    }
                    let held = model.iter().filter(|m| m.present && !replaces(m));
                    if held.clone().count() as u64 >= limits.credentials {
                        return Some(Rejection::StoreBudget {
                            budget: Budget::Credentials,
                            limit: limits.credentials,
                        });
                    }
                    if held.map(|m| m.bytes).sum::<u64>() + bytes > limits.bytes {
                        return Some(Rejection::StoreBudget {
                            budget: Budget::Bytes,
                            limit: limits.bytes,
                        });
                    }
                    None
                });
                if let Some(expected) = refusal {
                    match &minted {
                        Err(got) => {
                            assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{context}")
                        }
                        Ok(_) => panic!("{context}: minted, the model says {expected:?}"),
                    }
                    refused[match expected {
                        Rejection::ThreadLimit { .. } => 0,
                        Rejection::OwnerQuota { .. } => 1,
                        Rejection::StoreBudget {
                            budget: Budget::Credentials,
                            ..
                        } => 2,
                        _ => 3,
                    }] += 1;
                    continue;
                }
                let mut replaced = 0;
                for m in model.iter_mut().filter(|m| replaces(m)) {
                    replaced += u64::from(m.live());
                    m.remove(RevocationCause::Replaced);
                }
                let minted = minted.expect(&context);
                assert_eq!(minted.replaced, replaced, "{context}");
                model.push(Modeled {
                    digest,
                    id: minted.credential_id,
                    thread,
                    instance,
                    owner: actor,
                    dead: None,
                    bytes,
                    present: true,
                });
            }
            35..=54 if !model.is_empty() => {
                let m = &model[rng.below(model.len())];
                let resolved = store.resolve(&m.digest, None);
                if let Ok(resolved) = &resolved {
                    assert_eq!(resolved.credential_id, m.id, "{context}");
                    assert_eq!(resolved.thread_id, thread_name(m.thread), "{context}");
                    assert_eq!(
                        resolved.provider_instance_id,
                        instance_name(m.instance),
                        "{context}"
                    );
                    assert_eq!(resolved.minted_by, ACTORS[m.owner], "{context}");
                }
                check_dead(resolved, m, &context);
            }
            55..=64 if !model.is_empty() => {
                let index = rng.below(model.len());
                let revoked = store.revoke_credential(&model[index].id, reach(actor));
                if !model[index].within(actor) {
                    assert!(is_not_owned(&revoked), "{context}: {revoked:?}");
                    continue;
                }
                let revoked = revoked.unwrap();
                assert_eq!(revoked.revoked, u64::from(model[index].live()), "{context}");
                assert_eq!(
                    revoked.thread_id.as_deref(),
                    Some(thread_name(model[index].thread).as_str()),
                    "{context}: the thread is reported while the credential is known"
                );
                model[index].remove(RevocationCause::Credential);
            }
            65..=72 => {
                let thread = rng.below(THREADS);
                let done = store.revoke_thread(&thread_name(thread), reach(actor));
                let (mut revoked, mut not_owned) = (0, 0);
                for m in model.iter_mut().filter(|m| m.thread == thread) {
                    match (m.within(actor), m.live()) {
                        (true, live) => {
                            revoked += u64::from(live);
                            m.remove(RevocationCause::Thread);
                        }
                        (false, live) => not_owned += u64::from(live),
                    }
                }
                assert_eq!(
                    (done.revoked, done.not_owned),
                    (revoked, not_owned),
                    "{context}"
                );
            }
            73..=84 => {
                let thread = rng.below(THREADS);
                let on_thread = || model.iter().filter(|m| m.thread == thread && m.live());
                let expected: HashSet<CredentialId> = on_thread()
                    .filter(|m| m.within(actor))
                    .map(|m| m.id)
                    .collect();
                let touched = store.touch_thread(&thread_name(thread), reach(actor));
                match touched {
                    Ok(touched) => {
                        let got: HashSet<CredentialId> =
                            touched.touched.iter().map(|t| t.credential_id).collect();
                        assert_eq!(got.len(), touched.touched.len(), "{context}: duplicates");
                        assert_eq!(touched.total, expected.len() as u64, "{context}");
                        // The oldest first, as many as the reply may list.
                        let oldest: HashSet<CredentialId> = on_thread()
                            .filter(|m| m.within(actor))
                            .take(config.touch_reply_limit)
                            .map(|m| m.id)
                            .collect();
                        assert_eq!(got, oldest, "{context}");
                    }
                    Err(Rejection::NotOwned { .. }) => {
                        assert!(expected.is_empty(), "{context}");
                        assert!(on_thread().next().is_some(), "{context}: none out of reach");
                    }
                    Err(_) => assert!(
                        on_thread().next().is_none(),
                        "{context}: refused a thread with live credentials"
                    ),
                }
            }
            85..=92 if !model.is_empty() => {
                let m = &model[rng.below(model.len())];
                let touched = store.touch_credential(&m.id, reach(actor));
                if m.within(actor) {
                    check_dead(touched, m, &context);
                } else {
                    assert!(is_not_owned(&touched), "{context}: {touched:?}");
                }
            }
            93..=95 => {
                let instance = (rng.below(3) > 0).then(|| rng.below(INSTANCES));
                let instance_id = instance.map(instance_name);
                let (target, cause) = match (reach(actor), instance_id.as_deref()) {
                    (Reach::All, None) => (RevokeAllTarget::Everything, RevocationCause::All),
                    (Reach::All, Some(id)) => (
                        RevokeAllTarget::Instance(id),
                        RevocationCause::ProviderInstance,
                    ),
                    (Reach::MintedBy(name), None) => {
                        (RevokeAllTarget::MintedBy(name), RevocationCause::Caller)
                    }
                    (Reach::MintedBy(name), Some(id)) => (
                        RevokeAllTarget::MintedByForInstance {
                            minted_by: name,
                            provider_instance_id: id,
                        },
                        RevocationCause::ProviderInstance,
                    ),
                };
                let revoked = store.revoke_all(target);
                let mut expected = 0;
                for m in model.iter_mut().filter(|m| {
                    m.live() && m.within(actor) && instance.is_none_or(|i| m.instance == i)
                }) {
                    m.kill(cause);
                    expected += 1;
                }
                assert_eq!(revoked, expected, "{context}");
            }
            _ => {
                // The sweep reclaims what RevokeAll killed.
                store.sweep();
                for m in model.iter_mut().filter(|m| !m.live()) {
                    m.present = false;
                }
            }
        }
        if step % 50 == 0 {
            store.check_invariants().expect(&context);
            let present = model.iter().filter(|m| m.present).count();
            assert_eq!(store.record_count(), present, "{context}");
        }
    }
    store.check_invariants().expect("at the end");
    if limits.is_some() {
        assert!(
            refused.iter().all(|&n| n > 0),
            "seed {seed}: every limit refused some Mint: {refused:?}"
        );
    }
    // Every credential answers as the model says, reason and cause included.
    for m in &model {
        check_dead(
            store.resolve(&m.digest, None),
            m,
            &format!("seed {seed} at the end"),
        );
    }
    // Past every idle timeout, the sweeper leaves nothing behind.
    clock.advance(Duration::from_secs(31 * 60));
    store.sweep();
    assert_eq!(store.record_count(), 0, "seed {seed}");
    assert_eq!(store.queued_deadlines(), 0, "seed {seed}");
    for thread in 0..THREADS {
        assert!(
            store
                .touch_thread(&thread_name(thread), Reach::All)
                .is_err(),
            "seed {seed}"
        );
    }
}

#[test]
fn random_call_sequences_agree_with_the_model() {
    for seed in 1..=12u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 6_000, None);
    }
}

/// The same with small limits, which the random calls keep reaching: each
/// refusal (thread, quota, credentials, bytes) is the model's, in its order,
/// and a refused Mint changes nothing the model can see, so every later
/// count still agrees.
#[test]
fn random_call_sequences_agree_with_the_model_at_the_limits() {
    let limits = Limits {
        per_thread: 4,
        credentials: 48,
        bytes: 48 * 56,
        quota: 10,
    };
    for seed in 1..=12u64 {
        run(
            seed.wrapping_mul(0xD1B5_4A32_D192_ED03),
            6_000,
            Some(limits),
        );
    }
}

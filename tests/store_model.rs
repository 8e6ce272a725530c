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
    DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget, Store,
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

fn run(seed: u64, steps: usize) {
    let clock = FakeClock::new(START);
    let store = Store::new(StoreConfig::default(), Arc::new(clock.clone()));
    let mut rng = Rng(seed);
    let mut model: Vec<Modeled> = Vec::new();
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
                let minted = store.mint(
                    digest,
                    NewCredential {
                        thread_id: &thread_id,
                        provider_instance_id: &instance_id,
                        replace_previous: replace,
                        minted_by: ACTORS[actor],
                        reach: reach(actor),
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
                let mut replaced = 0;
                for m in model.iter_mut().filter(|m| {
                    replace
                        && m.present
                        && m.thread == thread
                        && m.instance == instance
                        && m.within(actor)
                }) {
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
                        assert_eq!(got, expected, "{context}");
                        assert_eq!(got.len(), touched.touched.len(), "{context}: duplicates");
                        assert_eq!(touched.total, got.len() as u64, "{context}");
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
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 6_000);
    }
}

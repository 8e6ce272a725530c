//! The store against a plain model: long random sequences of every owner
//! call and Resolve, checked call by call. The store's layout (slabs, slot
//! indexes, per-thread lists through the records) is built for speed; the
//! model is a list of credentials with a live flag, too simple to be wrong.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use credential_authority::clock::FakeClock;
use credential_authority::store::{NewCredential, Store, StoreConfig};
use credential_authority::token::{CredentialId, Token, TokenDigest};

const START: u64 = 1_800_000_000_000;

/// One credential as the model sees it.
struct Modeled {
    digest: TokenDigest,
    id: CredentialId,
    thread: usize,
    instance: usize,
    live: bool,
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

fn run(seed: u64, steps: usize) {
    let clock = FakeClock::new(START);
    let store = Store::new(StoreConfig::default(), Arc::new(clock.clone()));
    let mut rng = Rng(seed);
    let mut model: Vec<Modeled> = Vec::new();
    const THREADS: usize = 24;
    const INSTANCES: usize = 3;
    for step in 0..steps {
        // Small steps only: nothing reaches its 30-minute idle timeout here.
        clock.advance(Duration::from_millis(rng.below(20) as u64));
        let roll = rng.below(100);
        let context = format!("seed {seed} step {step} roll {roll}");
        match roll {
            0..=34 => {
                let (thread, instance) = (rng.below(THREADS), rng.below(INSTANCES));
                let replace = rng.below(4) == 0;
                let digest = Token::generate().digest();
                let (thread_id, instance_id) = (thread_name(thread), instance_name(instance));
                let minted = store.mint(
                    digest,
                    NewCredential {
                        thread_id: &thread_id,
                        provider_instance_id: &instance_id,
                        replace_previous: replace,
                        ..NewCredential::default()
                    },
                );
                let mut replaced = 0;
                if replace {
                    for m in model
                        .iter_mut()
                        .filter(|m| m.live && m.thread == thread && m.instance == instance)
                    {
                        m.live = false;
                        replaced += 1;
                    }
                }
                assert_eq!(minted.replaced, replaced, "{context}");
                model.push(Modeled {
                    digest,
                    id: minted.credential_id,
                    thread,
                    instance,
                    live: true,
                });
            }
            35..=54 if !model.is_empty() => {
                let m = &model[rng.below(model.len())];
                let resolved = store.resolve(&m.digest, None);
                assert_eq!(resolved.is_ok(), m.live, "{context}");
                if let Ok(resolved) = resolved {
                    assert_eq!(resolved.credential_id, m.id, "{context}");
                    assert_eq!(resolved.thread_id, thread_name(m.thread), "{context}");
                    assert_eq!(
                        resolved.provider_instance_id,
                        instance_name(m.instance),
                        "{context}"
                    );
                }
            }
            55..=64 if !model.is_empty() => {
                let index = rng.below(model.len());
                let revoked = store.revoke_credential(&model[index].id);
                assert_eq!(revoked, u64::from(model[index].live), "{context}");
                model[index].live = false;
            }
            65..=72 => {
                let thread = rng.below(THREADS);
                let expected = model
                    .iter()
                    .filter(|m| m.live && m.thread == thread)
                    .count();
                let revoked = store.revoke_thread(&thread_name(thread));
                assert_eq!(revoked as usize, expected, "{context}");
                for m in model.iter_mut().filter(|m| m.thread == thread) {
                    m.live = false;
                }
            }
            73..=84 => {
                let thread = rng.below(THREADS);
                let expected: HashSet<CredentialId> = model
                    .iter()
                    .filter(|m| m.live && m.thread == thread)
                    .map(|m| m.id)
                    .collect();
                match store.touch_thread(&thread_name(thread)) {
                    Ok(touched) => {
                        let got: HashSet<CredentialId> =
                            touched.iter().map(|t| t.credential_id).collect();
                        assert_eq!(got, expected, "{context}");
                        assert_eq!(got.len(), touched.len(), "{context}: duplicates");
                    }
                    Err(_) => assert!(expected.is_empty(), "{context}"),
                }
            }
            85..=92 if !model.is_empty() => {
                let m = &model[rng.below(model.len())];
                assert_eq!(store.touch_credential(&m.id).is_ok(), m.live, "{context}");
            }
            93..=94 => {
                let instance = (rng.below(3) > 0).then(|| rng.below(INSTANCES));
                let expected = model
                    .iter()
                    .filter(|m| m.live && instance.is_none_or(|i| m.instance == i))
                    .count();
                let revoked = store.revoke_all(instance.map(instance_name).as_deref());
                assert_eq!(revoked as usize, expected, "{context}");
                for m in model
                    .iter_mut()
                    .filter(|m| instance.is_none_or(|i| m.instance == i))
                {
                    m.live = false;
                }
            }
            _ => {
                store.sweep();
            }
        }
    }
    // Every credential the model still calls live resolves; the rest do not.
    for m in &model {
        assert_eq!(
            store.resolve(&m.digest, None).is_ok(),
            m.live,
            "seed {seed} at the end"
        );
    }
    // Past every idle timeout, the sweeper leaves nothing behind.
    clock.advance(Duration::from_secs(31 * 60));
    store.sweep();
    assert_eq!(store.record_count(), 0, "seed {seed}");
    assert_eq!(store.queued_deadlines(), 0, "seed {seed}");
    for thread in 0..THREADS {
        assert!(
            store.touch_thread(&thread_name(thread)).is_err(),
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

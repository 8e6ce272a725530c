//! In-process figures: the store's operations at a given number of live
//! credentials, side by side with the bare SHA-256 of each token (the floor)
//! and a `Mutex<HashMap>` registry with the same renewal (peer a).
//!
//! Tokens are fed the way a request brings them: already in memory, read
//! from one contiguous buffer in visiting order, so no lookup pays an extra
//! pointer chase that the server would not.

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use credential_authority::clock::{Clock, FakeClock, SystemClock};
use credential_authority::store::{NewCredential, Reach, RevokeAllTarget, Store, StoreConfig};
use credential_authority::token::{self, CredentialId, Token, TokenDigest, TOKEN_LEN};
use sha2::{Digest as _, Sha256};

use crate::report::{median, percentile, Figure, Report};

/// The thread-id length orchestrators use (UUID-shaped ids).
pub(crate) const THREAD_ID_LEN: usize = 36;

/// How the store figures are taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StorePlan {
    /// Calls per Resolve/Touch measurement.
    pub(crate) ops: usize,
    /// Credentials minted (then revoked by thread) per Mint measurement.
    pub(crate) batch: usize,
    /// Rounds per measurement; the median is reported.
    pub(crate) rounds: usize,
}

/// A 36-character thread id (UUID-shaped).
pub(crate) fn thread_id(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i)
}

/// Resident set size of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Provider instances the credentials are spread over (adapters: a handful).
pub(crate) fn instances() -> Vec<String> {
    (0..8).map(|i| format!("provider-instance-{i}")).collect()
}

/// A fixed pseudo-random visiting order over `size` credentials.
pub(crate) fn visiting_order(ops: usize, size: usize) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..ops)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % size as u64) as u32
        })
        .collect()
}

/// Token texts laid out back to back in visiting order.
pub(crate) struct Feed(Vec<u8>);

impl Feed {
    pub(crate) fn new(tokens: &[Token], order: &[u32]) -> Self {
        let mut bytes = Vec::with_capacity(order.len() * TOKEN_LEN);
        for &i in order {
            bytes.extend_from_slice(tokens[i as usize].expose().as_bytes());
        }
        Feed(bytes)
    }

    pub(crate) fn token(&self, k: usize) -> &str {
        let bytes = &self.0[k * TOKEN_LEN..(k + 1) * TOKEN_LEN];
        // Built from token texts, which are ASCII.
        std::str::from_utf8(bytes).expect("ascii")
    }
}

/// Measures everything at `size` live credentials.
pub(crate) fn run_size(plan: StorePlan, size: usize, report: &mut Report) {
    eprintln!("# store: {size} live credentials");
    let scope = format!("store, {} live", count(size));
    let tokens: Vec<Token> = (0..size).map(|_| Token::generate()).collect();
    let digests: Vec<TokenDigest> = tokens.iter().map(Token::digest).collect();
    let threads: Vec<String> = (0..size).map(thread_id).collect();
    let instances = instances();

    // Hand memory freed by earlier sizes back to the kernel first, so that
    // the store below is measured in fresh pages, not in reused ones.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    let before = resident_bytes();
    // The budgets raised: the largest size plus its Mint batches passes
    // the default 10M credentials.
    let config = StoreConfig {
        max_credentials: u64::MAX,
        max_credential_bytes: u64::MAX,
        ..StoreConfig::default()
    };
    let store = Store::new(config, Arc::new(SystemClock::new()));
    let mut ids: Vec<CredentialId> = Vec::with_capacity(size);
    let filling = Instant::now();
    for (i, digest) in digests.iter().enumerate() {
        let minted = store
            .mint(
                *digest,
                NewCredential {
                    thread_id: &threads[i],
                    provider_instance_id: &instances[i % instances.len()],
                    provider_kind: Some("claude"),
                    minted_by: "bench",
                    ..NewCredential::default()
                },
            )
            .expect("mint");
        ids.push(minted.credential_id);
    }
    let fill_ns = filling.elapsed().as_nanos() as f64 / size as f64;
    // `ids` grew by 16 bytes per credential inside the window: not the store's.
    let grown = resident_bytes().saturating_sub(before) as f64 - (size * 16) as f64;
    // The thread-id strings are the caller's; what is counted is the rest.
    report
        .memory
        .push((size, grown / size as f64 - THREAD_ID_LEN as f64));
    drop(digests);

    let order = visiting_order(plan.ops, size);
    let feed = Feed::new(&tokens, &order);
    let peer = MutexPeer::new(&tokens, &threads, &instances);
    drop(tokens);
    let mut push = |what: &str, parallelism: usize, ns: f64| {
        report.figures.push(Figure {
            scope: scope.clone(),
            what: what.to_owned(),
            parallelism,
            ops_per_sec: 1e9 / ns,
            ..Figure::default()
        });
    };

    push("Mint while filling the store (digest given)", 1, fill_ns);
    // One unmeasured batch, so that both Mint measurements below run in the
    // steady state (slots freed by earlier revocations are reused); the
    // fill above is the growing case.
    mint_then_revoke(&store, plan, 1, &instances);
    for threads_used in [1, 2] {
        let ns = median(plan.rounds, || {
            run_threads(threads_used, order.len(), |k| {
                let digest = token::parse(feed.token(k)).expect("well-formed");
                let ok = store
                    .resolve_with(&digest, None, |view| view.deadlines)
                    .is_ok();
                assert!(ok, "every benchmark token resolves");
            })
        });
        push("Resolve", threads_used, ns);

        let ns = median(plan.rounds, || {
            run_threads(threads_used, order.len(), |k| {
                std::hint::black_box(Sha256::digest(feed.token(k).as_bytes()));
            })
        });
        push("floor: SHA-256 of the token", threads_used, ns);

        let ns = median(plan.rounds, || {
            run_threads(threads_used, order.len(), |k| {
                assert!(peer.resolve(feed.token(k)));
            })
        });
        push("peer: Mutex<HashMap> Resolve", threads_used, ns);

        let ns = median(plan.rounds, || {
            run_threads(threads_used, order.len(), |k| {
                let id = &ids[order[k] as usize];
                assert!(store.touch_credential(id, Reach::All).is_ok());
            })
        });
        push("Touch (by credential id)", threads_used, ns);

        let (mint_ns, revoke_ns) = mint_then_revoke(&store, plan, threads_used, &instances);
        push(
            "Mint (token generated, hashed, stored)",
            threads_used,
            mint_ns,
        );
        push("RevokeThread (1 credential each)", threads_used, revoke_ns);
    }
    drop(peer);

    let started = Instant::now();
    let revoked = store.revoke_all(RevokeAllTarget::Everything);
    let revoke_all_ns = started.elapsed().as_nanos() as f64;
    assert_eq!(
        revoked as usize, size,
        "RevokeAll counts every live credential"
    );
    push("RevokeAll (one call)", 1, revoke_all_ns);
}

/// Mints `plan.batch` more credentials on `threads` threads, then revokes
/// their threads; wall ns per Mint and per RevokeThread.
fn mint_then_revoke(
    store: &Store,
    plan: StorePlan,
    threads: usize,
    instances: &[String],
) -> (f64, f64) {
    let extra: Vec<String> = (0..plan.batch)
        .map(|i| thread_id(usize::MAX / 2 + i))
        .collect();
    let before = store.record_count();
    let mint_ns = run_threads(threads, plan.batch, |k| {
        let token = Token::generate();
        store
            .mint(
                token.digest(),
                NewCredential {
                    thread_id: &extra[k],
                    provider_instance_id: &instances[k % instances.len()],
                    provider_kind: Some("claude"),
                    minted_by: "bench",
                    ..NewCredential::default()
                },
            )
            .expect("mint");
    });
    assert_eq!(store.record_count(), before + plan.batch);
    let revoke_ns = run_threads(threads, plan.batch, |k| {
        assert_eq!(store.revoke_thread(&extra[k], Reach::All).revoked, 1);
    });
    assert_eq!(store.record_count(), before);
    (mint_ns, revoke_ns)
}

/// Runs `op(k)` for k in 0..ops split across `threads` threads; wall ns per
/// operation, all threads together. Each thread takes its own start and end
/// times, so the figure does not depend on when the spawning thread runs.
pub(crate) fn run_threads(threads: usize, ops: usize, op: impl Fn(usize) + Sync) -> f64 {
    let barrier = Barrier::new(threads);
    let chunk = ops / threads;
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (op, barrier) = (&op, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    for k in t * chunk..(t + 1) * chunk {
                        op(k);
                    }
                    (started, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread"))
            .collect()
    });
    let started = spans.iter().map(|s| s.0).min().expect("one thread");
    let ended = spans.iter().map(|s| s.1).max().expect("one thread");
    (ended - started).as_nanos() as f64 / (chunk * threads) as f64
}

/// Resolve latency on one thread while the background sweeper removes
/// `size` credentials that expired at once, against the same measure with
/// nothing expiring.
pub(crate) fn expiry_storm(size: usize, ops_cap: usize, report: &mut Report) {
    eprintln!("# store: Resolve while {size} credentials expire at once");
    let clock = FakeClock::new(SystemClock::new().now());
    let store = Store::new(StoreConfig::default(), Arc::new(clock.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _sweeper = runtime.block_on(async { store.spawn_sweeper() });
    let instances = instances();
    let live: Vec<Token> = (0..size).map(|_| Token::generate()).collect();
    for (i, token) in live.iter().enumerate() {
        store
            .mint(
                token.digest(),
                NewCredential {
                    thread_id: &thread_id(i),
                    provider_instance_id: &instances[i % instances.len()],
                    minted_by: "bench",
                    ..NewCredential::default()
                },
            )
            .expect("mint");
    }
    for i in 0..size {
        store
            .mint(
                Token::generate().digest(),
                NewCredential {
                    thread_id: &thread_id(size + i),
                    provider_instance_id: &instances[i % instances.len()],
                    idle_timeout: Some(Duration::from_secs(1)),
                    minted_by: "bench",
                    ..NewCredential::default()
                },
            )
            .expect("mint");
    }
    let order = visiting_order(ops_cap, size);
    let feed = Feed::new(&live, &order);
    // Resolves in visiting order (cycling) until `stop` says so (checked
    // every 4096 calls), `limit` passes or `max_calls` were made; per-call
    // latencies in µs when `record`.
    let resolve_until =
        |max_calls: usize, limit: Duration, stop: &dyn Fn() -> bool, record: bool| {
            let mut samples = Vec::new();
            let started = Instant::now();
            for k in (0..order.len()).cycle().take(max_calls) {
                let call = Instant::now();
                let digest = token::parse(feed.token(k)).expect("well-formed");
                let ok = store.resolve_with(&digest, None, |v| v.deadlines).is_ok();
                if record {
                    samples.push(call.elapsed().as_nanos() as f64 / 1e3);
                }
                assert!(ok, "live credentials stay live through the storm");
                if k % 4096 == 0 && (stop() || started.elapsed() > limit) {
                    break;
                }
            }
            samples
        };
    let mut quiet = resolve_until(order.len(), Duration::from_secs(60), &|| false, true);
    // Every short-lived credential is now past its idle timeout; the
    // sweeper notices within a second (its own timer).
    clock.advance(Duration::from_secs(2));
    let everything = 2 * size;
    resolve_until(
        usize::MAX,
        Duration::from_secs(5),
        &|| store.record_count() < everything,
        false,
    );
    let storm_started = Instant::now();
    let mut storm = resolve_until(
        usize::MAX,
        Duration::from_secs(120),
        &|| store.record_count() <= size,
        true,
    );
    let swept = store.record_count() <= size;
    let storm_secs = storm_started.elapsed().as_secs_f64();
    eprintln!(
        "#   swept={swept} in {storm_secs:.2}s, {} resolves measured during it",
        storm.len()
    );
    let scope = format!("store, {} expiring at once", count(size));
    for (what, samples) in [
        ("Resolve, nothing expiring", &mut quiet),
        ("Resolve, while the sweeper removes them", &mut storm),
    ] {
        let n = samples.len() as f64;
        let mean_us = samples.iter().sum::<f64>() / n;
        let p50 = percentile(samples, 50.0);
        let p99 = percentile(samples, 99.0);
        report.figures.push(Figure {
            scope: scope.clone(),
            what: what.to_owned(),
            parallelism: 1,
            ops_per_sec: 1e6 / mean_us,
            p50_us: Some(p50),
            p99_us: Some(p99),
        });
    }
    let max = storm.iter().copied().fold(0.0, f64::max);
    report.check(
        format!(
            "expiry of {} at once keeps Resolve p99 <= 1 ms",
            count(size)
        ),
        format!(
            "p99 {:.1} µs, max {max:.0} µs; swept {} in {storm_secs:.2} s",
            percentile(&mut storm, 99.0),
            if swept { "all" } else { "NOT all" },
        ),
        swept && percentile(&mut storm, 99.0) <= 1000.0,
    );
}

/// "1K", "1M", "10M".
pub(crate) fn count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}K", n / 1_000)
    } else {
        n.to_string()
    }
}

/// What an in-process registry usually is: one mutex over a hash map, with
/// the same checks and sliding renewal as the store.
struct MutexPeer {
    clock: SystemClock,
    records: Mutex<HashMap<[u8; 32], PeerRecord>>,
}

struct PeerRecord {
    _thread_id: String,
    _provider_instance_id: String,
    last_used: u64,
    expires_at: u64,
}

impl MutexPeer {
    fn new(tokens: &[Token], threads: &[String], instances: &[String]) -> Self {
        let clock = SystemClock::new();
        let now = clock.now();
        let records = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                (
                    *token.digest().as_bytes(),
                    PeerRecord {
                        _thread_id: threads[i].clone(),
                        _provider_instance_id: instances[i % instances.len()].clone(),
                        last_used: now,
                        expires_at: now + 30 * 86_400_000,
                    },
                )
            })
            .collect();
        MutexPeer {
            clock,
            records: Mutex::new(records),
        }
    }

    fn resolve(&self, token: &str) -> bool {
        let Ok(digest) = token::parse(token) else {
            return false;
        };
        let now = self.clock.now();
        let mut records = self.records.lock().unwrap();
        match records.get_mut(digest.as_bytes()) {
            Some(record)
                if now < record.expires_at
                    && now.saturating_sub(record.last_used) < 30 * 60_000 =>
            {
                record.last_used = now;
                record.expires_at = record.expires_at.max(now + 30 * 86_400_000);
                true
            }
            _ => false,
        }
    }
}

/// Targets that compare store figures of this run.
pub(crate) fn store_checks(report: &mut Report, sizes: &[usize]) {
    let ns = |r: &Report, scope: &str, what: &str, t: usize| {
        r.find(scope, what, t).map(Figure::ns_per_op)
    };
    if let Some(&size) = sizes
        .iter()
        .find(|&&s| s == 1_000_000)
        .or(sizes.iter().max())
    {
        let scope = format!("store, {} live", count(size));
        let figures = (
            ns(report, &scope, "Resolve", 1),
            ns(report, &scope, "Resolve", 2),
            ns(report, &scope, "floor: SHA-256 of the token", 1),
            ns(report, &scope, "peer: Mutex<HashMap> Resolve", 2),
        );
        if let (Some(r1), Some(r2), Some(sha), Some(peer2)) = figures {
            report.check(
                format!(
                    "store Resolve at {} <= 5x SHA-256 per token (1 thread)",
                    count(size)
                ),
                format!("{:.2}x ({r1:.0} ns vs {sha:.0} ns)", r1 / sha),
                r1 <= 5.0 * sha,
            );
            report.check(
                format!(
                    "store Resolve at {} scales >= 1.8x on 2 threads",
                    count(size)
                ),
                format!("{:.2}x", r1 / r2),
                r1 / r2 >= 1.8,
            );
            report.check(
                format!(
                    "store Resolve at {} >= 5x Mutex<HashMap> on 2 threads",
                    count(size)
                ),
                format!("{:.2}x", peer2 / r2),
                peer2 / r2 >= 5.0,
            );
        }
        if let Some(mint) = ns(report, &scope, "Mint (token generated, hashed, stored)", 1) {
            report.check(
                "Mint >= 500k/s in-process (1 thread)",
                format!("{:.0}k/s at {}", 1e6 / mint, count(size)),
                1e9 / mint >= 500_000.0,
            );
        }
    }
    if let (Some(r1m), Some(r10m)) = (
        ns(report, "store, 1M live", "Resolve", 1),
        ns(report, "store, 10M live", "Resolve", 1),
    ) {
        report.check(
            "Resolve at 10M <= 2x its cost at 1M",
            format!("{:.2}x ({r10m:.0} ns vs {r1m:.0} ns)", r10m / r1m),
            r10m <= 2.0 * r1m,
        );
    }
    for &(size, bytes) in &report.memory.clone() {
        if size >= 1_000_000 {
            report.check(
                format!("<= 200 resident bytes per credential at {}", count(size)),
                format!("{bytes:.0} B"),
                bytes <= 200.0,
            );
        }
    }
    let largest = sizes.iter().max().copied().unwrap_or(0);
    let scope = format!("store, {} live", count(largest));
    if let Some(revoke_all) = ns(report, &scope, "RevokeAll (one call)", 1) {
        report.check(
            format!("RevokeAll < 1 ms at {}", count(largest)),
            format!("{:.1} µs", revoke_all / 1e3),
            revoke_all < 1e6,
        );
    }
}

/// CPU time of the calling thread, in seconds: what a sweep costs whatever
/// else the machine runs.
pub(crate) fn thread_cpu_secs() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec that we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now);
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// The costs that depend on the shape of one thread: RevokeCredential on a
/// thread of 1,000 credentials against one of 1 (removal from a thread is
/// constant time, so the ratio should be about 1), a Mint refused by a
/// full thread (it reads the thread's records once, to drop dead ones),
/// and the sweep of `expiring` credentials of one thread expiring together
/// (the sweeper's cost is what falls due, whatever the threads look like).
pub(crate) fn thread_shapes(ops: usize, expiring: usize, report: &mut Report) {
    eprintln!("# store: one thread of 1,000 credentials; {expiring} of one thread expiring");
    let push = |report: &mut Report, what: String, ns: f64| {
        report.figures.push(Figure {
            scope: "store, by thread shape".to_owned(),
            what,
            parallelism: 1,
            ops_per_sec: 1e9 / ns,
            ..Figure::default()
        });
    };
    let clock = FakeClock::new(SystemClock::new().now());
    let store = Store::new(StoreConfig::default(), Arc::new(clock.clone()));
    fn new<'a>(thread: &'a str, instance: &'a str) -> NewCredential<'a> {
        NewCredential {
            thread_id: thread,
            provider_instance_id: instance,
            minted_by: "bench",
            ..NewCredential::default()
        }
    }
    let mint = |thread: &str| {
        store
            .mint(
                Token::generate().digest(),
                new(thread, "provider-instance-0"),
            )
            .expect("mint")
            .credential_id
    };
    // 1,000 credentials either way, in one thread or in 1,000 threads of
    // one, so both revoke a record as cold as the other (a thread of one
    // whose credential was minted just before would be revoked from L1):
    // revoke one at a random position (timed), mint it back in its thread
    // (not timed), so every thread keeps its size.
    let revoke_ns = |threads: usize| {
        let names: Vec<String> = (0..threads)
            .map(|t| format!("thread-shape-{threads}-{t}"))
            .collect();
        let of = |at: usize| &names[at % threads];
        let mut held: Vec<CredentialId> = (0..1_000).map(|at| mint(of(at))).collect();
        let order = visiting_order(ops, 1_000);
        let mut spent = Duration::ZERO;
        for &at in &order {
            let at = at as usize;
            let started = Instant::now();
            let done = store.revoke_credential(&held[at], Reach::All);
            spent += started.elapsed();
            assert_eq!(done.expect("within reach").revoked, 1);
            held[at] = mint(of(at));
        }
        for name in &names {
            store.revoke_thread(name, Reach::All);
        }
        spent.as_nanos() as f64 / order.len() as f64
    };
    // Three rounds in alternating order, the median of each: the first
    // measurement in a store grows its tombstone maps from nothing (fresh
    // pages, faulted in on first touch), which alone made whichever shape
    // ran first look up to 2.7x slower.
    let (mut big, mut single) = (Vec::new(), Vec::new());
    for round in 0..3 {
        if round % 2 == 0 {
            big.push(revoke_ns(1));
            single.push(revoke_ns(1_000));
        } else {
            single.push(revoke_ns(1_000));
            big.push(revoke_ns(1));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (big, single) = (median(big), median(single));
    push(report, "RevokeCredential, thread of 1,000".to_owned(), big);
    push(
        report,
        "RevokeCredential, 1,000 threads of 1".to_owned(),
        single,
    );
    report.check(
        "RevokeCredential on a thread of 1,000 ~ on a thread of 1 (<= 1.5x; 1,000 credentials either way)",
        format!("{:.2}x ({big:.0} ns vs {single:.0} ns)", big / single),
        big <= 1.5 * single,
    );

    for _ in 0..1_000 {
        mint("full-thread");
    }
    let refusals = (ops / 100).max(100);
    let started = Instant::now();
    for _ in 0..refusals {
        let refused = store.mint(Token::generate().digest(), new("full-thread", "p"));
        assert!(refused.is_err(), "the thread is full");
    }
    let refused_ns = started.elapsed().as_nanos() as f64 / refusals as f64;
    push(
        report,
        "Mint refused, thread of 1,000 live".to_owned(),
        refused_ns,
    );
    store.revoke_thread("full-thread", Reach::All);

    let store = Store::new(
        StoreConfig {
            max_credentials_per_thread: expiring as u64 + 1,
            ..StoreConfig::default()
        },
        Arc::new(clock.clone()),
    );
    for _ in 0..expiring {
        store
            .mint(
                Token::generate().digest(),
                NewCredential {
                    idle_timeout: Some(Duration::from_secs(1)),
                    ..new("one-thread", "provider-instance-0")
                },
            )
            .expect("mint");
    }
    clock.advance(Duration::from_secs(2));
    let cpu = thread_cpu_secs();
    let swept = store.sweep();
    let cpu = thread_cpu_secs() - cpu;
    assert_eq!(swept.removed, expiring, "all of them fell due");
    push(
        report,
        format!(
            "sweep of {} of one thread expiring together (per credential)",
            count(expiring)
        ),
        cpu * 1e9 / expiring as f64,
    );
    report.check(
        format!(
            "sweep of {} of one thread expiring together < 3 s CPU",
            count(expiring)
        ),
        format!("{cpu:.3} s"),
        cpu < 3.0,
    );
}

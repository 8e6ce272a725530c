//! The durable embedded store across restarts of the real binary: `kill -9`
//! under load, clean stops, a second process on the same data directory,
//! damaged journals, and a disk that refuses writes (RLIMIT_FSIZE).
//!
//! A wall clock set back across a restart cannot be done to the real binary
//! here; it is covered in-process.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::callers::{failure, millis, mint_request, resolve, touch_thread};
use common::restart::{
    await_store_writes, batches, data_dir, health, log_fields, newest_segment, refused_start,
    scratch, touch,
};
use common::{client, Client, Server};
use credential_authority::pb;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt as _;

/// The `revocation_cause` of a TOKEN_REVOKED failure, checking its code.
fn revoked_cause(status: &Status) -> String {
    let metadata = failure(status, Code::Unauthenticated, "TOKEN_REVOKED");
    metadata
        .get("revocation_cause")
        .cloned()
        .unwrap_or_else(|| panic!("TOKEN_REVOKED without a cause: {status:?}"))
}

/// Asserts a Resolve failed TOKEN_REVOKED with `cause`; returns the
/// metadata.
fn assert_revoked<T: std::fmt::Debug>(
    result: Result<T, Status>,
    cause: &str,
    what: &str,
) -> HashMap<String, String> {
    assert_revoked_with(result, Code::Unauthenticated, cause, what)
}

/// Asserts a Touch (whose target is dead: FAILED_PRECONDITION) failed
/// TOKEN_REVOKED with `cause`.
fn assert_touch_revoked<T: std::fmt::Debug>(result: Result<T, Status>, cause: &str, what: &str) {
    assert_revoked_with(result, Code::FailedPrecondition, cause, what);
}

/// Asserts `result` failed with `code`, TOKEN_REVOKED and `cause`.
fn assert_revoked_with<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    cause: &str,
    what: &str,
) -> HashMap<String, String> {
    let status = result.expect_err(&format!("{what} must be revoked"));
    let metadata = failure(&status, code, "TOKEN_REVOKED");
    assert_eq!(
        metadata.get("revocation_cause").map(String::as_str),
        Some(cause),
        "{what}: {status:?}"
    );
    metadata
}

/// Asserts a Resolve failed TOKEN_UNKNOWN.
fn assert_unknown<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    let status = result.expect_err(&format!("{what} must be unknown"));
    failure(&status, Code::Unauthenticated, "TOKEN_UNKNOWN");
}

/// Asserts a Touch failed TOKEN_UNKNOWN (its target: NOT_FOUND).
fn assert_touch_unknown<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    let status = result.expect_err(&format!("{what} must be unknown"));
    failure(&status, Code::NotFound, "TOKEN_UNKNOWN");
}

/// Asserts a refusal for a store that cannot write: UNAVAILABLE,
/// SERVICE_UNAVAILABLE, with RetryInfo.
fn assert_store_unavailable<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    let status = result.expect_err(&format!("{what} must fail while the disk refuses writes"));
    failure(&status, Code::Unavailable, "SERVICE_UNAVAILABLE");
    assert!(
        status.get_error_details().retry_info().is_some(),
        "{what}: UNAVAILABLE without RetryInfo: {status:?}"
    );
}

/// Mints, which must succeed.
async fn mint_ok(client: &mut Client, request: pb::MintRequest) -> pb::MintResponse {
    let what = format!("{}/{}", request.thread_id, request.provider_instance_id);
    client
        .mint(request)
        .await
        .unwrap_or_else(|status| panic!("mint {what}: {status:?}"))
        .into_inner()
}

// ---------------------------------------------------------------------------
// 1. kill -9 under load
// ---------------------------------------------------------------------------

/// Rounds of load, each ended by SIGKILL and followed by a restart.
const ROUNDS: usize = 3;
/// The round's kill comes after this many acknowledged calls (of all
/// kinds), so each round is cut at a different amount of work.
const KILL_AFTER: [usize; ROUNDS] = [90, 320, 560];
/// Calls per worker task and round (bounded; more than the kill point).
const CALLS_PER_WORKER: usize = 110;
/// Worker tasks, spread over a few connections.
const WORKERS: usize = 8;
/// Connections the workers share, so calls from several tasks are in
/// flight on one HTTP/2 connection at the kill.
const CONNECTIONS: usize = 3;
/// Shared threads and provider instances, so revocations and replacements
/// meet Mints from other tasks and from earlier rounds.
const THREADS: usize = 16;
/// Provider instances (`i0`..), the targets of RevokeAll.
const INSTANCES: usize = 3;

/// What a revocation (or a Mint with replace_previous) ends.
#[derive(Debug, Clone)]
enum Target {
    Thread(String),
    Credential(String),
    Instance(String),
    /// A Mint with replace_previous; `minted` is its own credential id when
    /// it was acknowledged (it does not replace itself).
    Replace {
        thread: String,
        instance: String,
        minted: Option<String>,
    },
}

impl Target {
    /// The `revocation_cause` the credentials it ends report.
    fn cause(&self) -> &'static str {
        match self {
            Target::Thread(_) => "thread",
            Target::Credential(_) => "credential",
            Target::Instance(_) => "provider_instance",
            Target::Replace { .. } => "replaced",
        }
    }

    /// Whether it ends `mint` if it applies after `mint` is visible.
    fn covers(&self, mint: &AckedMint) -> bool {
        match self {
            Target::Thread(thread) => *thread == mint.thread,
            Target::Credential(id) => *id == mint.credential_id,
            Target::Instance(instance) => *instance == mint.instance,
            Target::Replace {
                thread,
                instance,
                minted,
            } => {
                *thread == mint.thread
                    && *instance == mint.instance
                    && minted.as_deref() != Some(mint.credential_id.as_str())
            }
        }
    }
}

/// A Mint whose answer reached the client.
#[derive(Debug, Clone)]
struct AckedMint {
    token: String,
    credential_id: String,
    thread: String,
    instance: String,
    /// Ticks when the call was sent and when its answer arrived.
    start: u64,
    end: u64,
    round: usize,
}

/// A revocation sent; `end` is `None` when no answer came (in flight at
/// the kill): it may or may not have happened.
#[derive(Debug, Clone)]
struct Revocation {
    target: Target,
    start: u64,
    end: Option<u64>,
    round: usize,
}

/// A Resolve made under load, for the "never live after an acknowledged
/// revocation" check.
#[derive(Debug, Clone)]
struct LoadResolve {
    mint: usize,
    start: u64,
    live: bool,
}

/// Everything the clients saw, across rounds: what the restarts are
/// checked against.
#[derive(Debug, Default)]
struct History {
    mints: Vec<AckedMint>,
    revocations: Vec<Revocation>,
    resolves: Vec<LoadResolve>,
}

/// What the workers of a round share.
struct Load {
    history: Mutex<History>,
    /// A logical clock: a call's start tick is taken before it is sent, its
    /// end tick after its answer arrived, so `a.end < b.start` means `a`
    /// was acknowledged before `b` was sent.
    ticks: Arc<AtomicU64>,
    acked: AtomicUsize,
    kill_after: usize,
    reached: tokio::sync::Notify,
    killed: AtomicBool,
    round: usize,
}

impl Load {
    /// The next tick of the logical clock.
    fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::SeqCst)
    }

    /// Counts an acknowledged call; wakes the killer at the kill point.
    fn acknowledged(&self) {
        if self.acked.fetch_add(1, Ordering::SeqCst) + 1 == self.kill_after {
            self.reached.notify_one();
        }
    }

    /// Any acknowledged Mint, by index.
    fn pick_mint(&self, rng: &mut StdRng) -> Option<(usize, AckedMint)> {
        let history = self.history.lock().unwrap();
        if history.mints.is_empty() {
            return None;
        }
        let index = rng.random_range(0..history.mints.len());
        Some((index, history.mints[index].clone()))
    }

    /// Records a revocation sent at `start`, answered at `end` (if it was).
    fn revocation(&self, target: Target, start: u64, end: Option<u64>) {
        let round = self.round;
        self.history.lock().unwrap().revocations.push(Revocation {
            target,
            start,
            end,
            round,
        });
    }
}

/// One worker: a bounded mix of Mints (a quarter with replace_previous),
/// Resolves, RevokeCredential, RevokeThread and RevokeAll for an instance.
/// Stops at its first failed call, which must come after the kill; returns
/// whether it was cut off by the kill.
async fn worker(load: Arc<Load>, mut client: Client, seed: u64) -> bool {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..CALLS_PER_WORKER {
        let roll = rng.random_range(0..100);
        // Resolve and RevokeCredential need an acknowledged Mint; until
        // there is one, they mint.
        let picked = if roll < 43 {
            load.pick_mint(&mut rng)
        } else {
            None
        };
        let failed = match (roll, picked) {
            (0..31, Some((index, mint))) => {
                let start = load.tick();
                match resolve(&mut client, &mint.token).await {
                    Ok(_) => {
                        load.history.lock().unwrap().resolves.push(LoadResolve {
                            mint: index,
                            start,
                            live: true,
                        });
                        load.acknowledged();
                        None
                    }
                    Err(status) if status.code() == Code::Unauthenticated => {
                        load.acknowledged();
                        None
                    }
                    Err(status) => Some(status),
                }
            }
            (31..43, Some((_, mint))) => {
                let target = Target::Credential(mint.credential_id.clone());
                let start = load.tick();
                let answer = client
                    .revoke_credential(pb::RevokeCredentialRequest {
                        credential_id: mint.credential_id.clone(),
                    })
                    .await;
                revoked(&load, target, start, answer)
            }
            (43..49, _) => {
                let target = Target::Thread(format!("t{}", rng.random_range(0..THREADS)));
                let Target::Thread(thread_id) = &target else {
                    unreachable!()
                };
                let request = pb::RevokeThreadRequest {
                    thread_id: thread_id.clone(),
                };
                let start = load.tick();
                let answer = client.revoke_thread(request).await;
                revoked(&load, target, start, answer)
            }
            (49, _) => {
                let instance = format!("i{}", rng.random_range(0..INSTANCES));
                let start = load.tick();
                let answer = client
                    .revoke_all(pb::RevokeAllRequest {
                        provider_instance_id: instance.clone(),
                    })
                    .await;
                revoked(&load, Target::Instance(instance), start, answer)
            }
            _ => {
                let thread = format!("t{}", rng.random_range(0..THREADS));
                let instance = format!("i{}", rng.random_range(0..INSTANCES));
                let replace_previous = rng.random_bool(0.25);
                let start = load.tick();
                let answer = client
                    .mint(pb::MintRequest {
                        replace_previous,
                        provider_kind: "claude".into(),
                        ..mint_request(&thread, &instance)
                    })
                    .await;
                let end = load.tick();
                match answer {
                    Ok(minted) => {
                        let minted = minted.into_inner();
                        let mut history = load.history.lock().unwrap();
                        if replace_previous {
                            history.revocations.push(Revocation {
                                target: Target::Replace {
                                    thread: thread.clone(),
                                    instance: instance.clone(),
                                    minted: Some(minted.credential_id.clone()),
                                },
                                start,
                                end: Some(end),
                                round: load.round,
                            });
                        }
                        history.mints.push(AckedMint {
                            token: minted.token,
                            credential_id: minted.credential_id,
                            thread,
                            instance,
                            start,
                            end,
                            round: load.round,
                        });
                        drop(history);
                        load.acknowledged();
                        None
                    }
                    Err(status) => {
                        if replace_previous {
                            let target = Target::Replace {
                                thread,
                                instance,
                                minted: None,
                            };
                            load.revocation(target, start, None);
                        }
                        Some(status)
                    }
                }
            }
        };
        if let Some(status) = failed {
            assert!(
                load.killed.load(Ordering::SeqCst),
                "a call failed before the kill: {status:?}"
            );
            return true;
        }
    }
    false
}

/// Records a revocation's answer; returns the failure, if any.
fn revoked<T>(
    load: &Load,
    target: Target,
    start: u64,
    answer: Result<T, Status>,
) -> Option<Status> {
    let end = load.tick();
    match answer {
        Ok(_) => {
            load.revocation(target, start, Some(end));
            load.acknowledged();
            None
        }
        Err(status) => {
            load.revocation(target, start, None);
            Some(status)
        }
    }
}

/// What a restarted server must answer for one acknowledged Mint.
#[derive(Debug)]
struct Expected {
    /// An acknowledged revocation sent after the Mint was acknowledged
    /// covers it: it must be revoked.
    must_be_revoked: bool,
    /// The causes it may report: those of every revocation that may have
    /// ended it first.
    causes: BTreeSet<&'static str>,
}

/// What the history says about `mint` after a restart.
fn expected(history: &History, mint: &AckedMint) -> Expected {
    // Revocations that may have ended it: not acknowledged before it was
    // even sent.
    let killers: Vec<&Revocation> = history
        .revocations
        .iter()
        .filter(|r| r.target.covers(mint) && r.end.is_none_or(|end| end > mint.start))
        .collect();
    // Certainly ended it: sent after the Mint's answer, and acknowledged.
    let first_certain = killers
        .iter()
        .filter(|r| r.start > mint.end)
        .filter_map(|r| r.end)
        .min();
    let causes = killers
        .iter()
        .filter(|r| first_certain.is_none_or(|first| r.start < first))
        .map(|r| r.target.cause())
        .collect();
    Expected {
        must_be_revoked: first_certain.is_some(),
        causes,
    }
}

/// Per-round counts, printed and checked.
#[derive(Debug, Default)]
struct Checked {
    mints: usize,
    live: usize,
    revoked: usize,
    revocations: usize,
    by_cause: HashMap<&'static str, usize>,
}

/// Resolves every acknowledged Mint on the restarted `server` and checks
/// it against the acknowledged history; `seen_dead` holds what earlier
/// restarts found revoked (it must stay revoked, for the same cause).
async fn check_after_restart(
    server: &Server,
    history: &History,
    seen_dead: &mut HashMap<usize, String>,
    round: usize,
) -> Checked {
    // Resolve on a few connections at once.
    let chunks: Vec<Vec<(usize, String)>> = (0..4)
        .map(|part| {
            history
                .mints
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 4 == part)
                .map(|(i, m)| (i, m.token.clone()))
                .collect()
        })
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = client(server).await;
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (index, token) in chunk {
                answers.push((index, resolve(&mut client, &token).await));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    answers.sort_by_key(|(index, _)| *index);

    let mut checked = Checked::default();
    for (index, answer) in answers {
        let mint = &history.mints[index];
        let expected = expected(history, mint);
        let what = format!(
            "round {round}: Mint #{index} {}/{} {} (acked in round {}, ticks {}..{}); expected {expected:?}",
            mint.thread, mint.instance, mint.credential_id, mint.round, mint.start, mint.end
        );
        match answer {
            Ok(resolved) => {
                assert!(
                    !expected.must_be_revoked,
                    "{what}: resolves live after an acknowledged revocation"
                );
                assert!(
                    !seen_dead.contains_key(&index),
                    "{what}: live again after an earlier restart found it revoked ({})",
                    seen_dead[&index]
                );
                assert_eq!(resolved.credential_id, mint.credential_id, "{what}");
                assert_eq!(resolved.thread_id, mint.thread, "{what}");
                assert_eq!(resolved.provider_instance_id, mint.instance, "{what}");
                checked.live += 1;
            }
            Err(status) => {
                let reason = status
                    .get_error_details()
                    .error_info()
                    .map(|info| info.reason.clone());
                assert_eq!(
                    reason.as_deref(),
                    Some("TOKEN_REVOKED"),
                    "{what}: an acknowledged Mint is lost or dead otherwise: {status:?}"
                );
                let cause = revoked_cause(&status);
                assert!(
                    expected.causes.contains(cause.as_str()),
                    "{what}: revoked with cause {cause}, which no revocation that may have \
                     ended it has: {status:?}"
                );
                if let Some(before) = seen_dead.get(&index) {
                    assert_eq!(*before, cause, "{what}: its cause changed across a restart");
                }
                seen_dead.insert(index, cause);
                checked.revoked += 1;
            }
        }
        if mint.round == round {
            checked.mints += 1;
        }
    }

    // Acknowledged revocations of this round that certainly ended at least
    // one acknowledged Mint: each was checked through those Mints.
    for revocation in history.revocations.iter().filter(|r| r.round == round) {
        let Some(end) = revocation.end else { continue };
        let ended_one = history
            .mints
            .iter()
            .any(|m| revocation.target.covers(m) && revocation.start > m.end);
        if ended_one && end > revocation.start {
            checked.revocations += 1;
            *checked
                .by_cause
                .entry(revocation.target.cause())
                .or_default() += 1;
        }
    }
    checked
}

/// The Resolves made under load: none was live once a revocation that
/// certainly covered its credential had been acknowledged.
fn check_load_resolves(history: &History) -> usize {
    for resolve in history.resolves.iter().filter(|r| r.live) {
        let mint = &history.mints[resolve.mint];
        let killer = history.revocations.iter().find(|r| {
            r.target.covers(mint) && r.start > mint.end && r.end.is_some_and(|e| e < resolve.start)
        });
        assert!(
            killer.is_none(),
            "a Resolve under load at tick {} found {} live after {killer:?} was acknowledged",
            resolve.start,
            mint.credential_id
        );
    }
    history.resolves.len()
}

/// `kill -9` under load, three times at different amounts of work, each
/// restart on the same data directory followed by more load: every Mint
/// whose answer reached the client resolves after the restart unless an
/// acknowledged revocation (or acknowledged replace_previous Mint) covers
/// it, in which case it is TOKEN_REVOKED with a cause one of its possible
/// revokers has; calls in flight at the kill may go either way, but what a
/// restart found revoked stays revoked, for the same cause, after the next.
///
/// Catches: a Mint acknowledged before its record is durable (it is
/// TOKEN_UNKNOWN after the crash); a revocation acknowledged before its
/// record is durable or not journaled at all (the credential is live
/// again); a replacement applied in memory but not journaled with the new
/// Mint; replay that applies a RevokeAll or RevokeThread to credentials
/// minted after it (an epoch or thread stamp that restarts from zero after
/// a restart), or that loses the cause; replay of a replay (the second and
/// third restarts read what the first wrote after its own recovery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_load_loses_no_acknowledged_change() {
    let scratch = scratch();
    let ticks = Arc::new(AtomicU64::new(0));
    let mut history = History::default();
    let mut seen_dead = HashMap::new();
    let mut totals: HashMap<&'static str, usize> = HashMap::new();
    let mut server = Server::start_on(scratch.clone(), &[]);
    for (round, &kill_after) in KILL_AFTER.iter().enumerate() {
        let load = Arc::new(Load {
            history: Mutex::new(std::mem::take(&mut history)),
            ticks: ticks.clone(),
            acked: AtomicUsize::new(0),
            kill_after,
            reached: tokio::sync::Notify::new(),
            killed: AtomicBool::new(false),
            round,
        });
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            connections.push(client(&server).await);
        }
        // The workers start together (an async barrier: a blocking one
        // would hold the runtime's two threads).
        let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (load, barrier) = (load.clone(), barrier.clone());
                let client = connections[w % CONNECTIONS].clone();
                let seed = (round * WORKERS + w) as u64;
                tokio::spawn(async move {
                    barrier.wait().await;
                    worker(load, client, seed).await
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(30), load.reached.notified())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the load never reached its kill point"));
        load.killed.store(true, Ordering::SeqCst);
        server.crash();
        let mut cut = 0;
        for worker in workers {
            let was_cut = tokio::time::timeout(Duration::from_secs(20), worker)
                .await
                .expect("workers stop once the server is gone")
                .expect("a worker panicked");
            cut += usize::from(was_cut);
        }
        let acked_at_kill = load.acked.load(Ordering::SeqCst);
        drop(connections);
        history = Arc::try_unwrap(load)
            .ok()
            .expect("the workers are done")
            .history
            .into_inner()
            .unwrap();
        assert!(
            cut > 0,
            "round {round}: every worker finished before the kill, so nothing was in flight"
        );

        server = Server::start_on(scratch.clone(), &[]);
        let recovered = log_fields(&server.log(), "store recovered");
        if server.log().contains("dropped a torn final write") {
            println!("round {round}: the restart dropped a torn final write");
        }
        let checked = check_after_restart(&server, &history, &mut seen_dead, round).await;
        let load_resolves = check_load_resolves(&history);
        let in_flight = history
            .revocations
            .iter()
            .filter(|r| r.round == round && r.end.is_none())
            .count();
        println!(
            "round {round}: killed after {acked_at_kill} acknowledged calls ({cut} workers cut \
             off, {in_flight} revocations in flight); recovered records={} credentials={} \
             elapsed_ms={}; checked {} acknowledged Mints of this round and {} acknowledged \
             revocations of this round {:?}; all {} Mints so far: {} live, {} revoked; {} \
             Resolves under load",
            recovered["records"],
            recovered["credentials"],
            recovered["elapsed_ms"],
            checked.mints,
            checked.revocations,
            checked.by_cause,
            history.mints.len(),
            checked.live,
            checked.revoked,
            load_resolves,
        );
        assert!(
            checked.mints > 0,
            "round {round} checked no acknowledged Mint"
        );
        assert!(
            checked.revocations > 0,
            "round {round} checked no acknowledged revocation"
        );
        for (cause, count) in checked.by_cause {
            *totals.entry(cause).or_default() += count;
        }
    }
    for cause in ["credential", "thread", "provider_instance", "replaced"] {
        assert!(
            totals.get(cause).copied().unwrap_or(0) > 0,
            "no acknowledged revocation with cause {cause} was checked: {totals:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. clean restart
// ---------------------------------------------------------------------------

/// The absolute lifetime of the clean-restart test: with it below the max
/// lifetime, `expires_at` is `created_at + 1h` whatever the renewals, so
/// it must come back exactly.
const ABSOLUTE: &[&str] = &["--absolute-lifetime", "1h"];

/// A clean stop (SIGTERM) and restart, twice: every live credential comes
/// back with the same id, thread, instance, kind, created_at, scopes,
/// labels and minted_by, `expires_at` exactly where the absolute lifetime
/// puts it, and deadlines no earlier than a Touch right before the stop
/// reported; every revoked one keeps its reason and cause, by token, by
/// credential id and by thread (tombstones survive: TOKEN_REVOKED, not
/// TOKEN_UNKNOWN).
///
/// Catches: tombstones or thread tombstones not persisted (TOKEN_UNKNOWN
/// after the restart); a cause lost or changed by replay (a replacement
/// replayed as a thread revocation, say); created_at, scopes, labels,
/// provider kind, per-credential idle/max lifetime or minted_by not in the
/// Mint record; renewals lost at a clean stop or the clock restarted behind
/// the store's newest time (deadlines earlier than before the stop); a
/// second replay that applies the first one's records twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_keeps_every_credential_and_tombstone() {
    let scratch = scratch();
    let mut server = Server::start_on(scratch.clone(), ABSOLUTE);
    let mut admin = client(&server).await;

    let with_scopes = mint_ok(
        &mut admin,
        pb::MintRequest {
            provider_kind: "claude".into(),
            scopes: vec!["fs.read".into(), "shell.exec".into()],
            labels: [
                ("environment".to_owned(), "env-7".to_owned()),
                ("provider_session".to_owned(), "sess-42".to_owned()),
            ]
            .into(),
            ..mint_request("t-live", "claude-1")
        },
    )
    .await;
    let short_idle = mint_ok(
        &mut admin,
        pb::MintRequest {
            provider_kind: "codex".into(),
            idle_timeout: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..mint_request("t-live", "codex-1")
        },
    )
    .await;
    let short_life = mint_ok(
        &mut admin,
        pb::MintRequest {
            max_lifetime: Some(prost_types::Duration {
                seconds: 1200,
                nanos: 0,
            }),
            ..mint_request("t-other", "claude-1")
        },
    )
    .await;
    let rotated_old = mint_ok(&mut admin, mint_request("t-rot", "claude-1")).await;
    let rotated_new = mint_ok(
        &mut admin,
        pb::MintRequest {
            replace_previous: true,
            ..mint_request("t-rot", "claude-1")
        },
    )
    .await;
    assert_eq!(rotated_new.replaced, 1);
    let by_credential = mint_ok(&mut admin, mint_request("t-cred", "claude-1")).await;
    let answer = admin
        .revoke_credential(pb::RevokeCredentialRequest {
            credential_id: by_credential.credential_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked, 1);
    let doomed_a = mint_ok(&mut admin, mint_request("t-doomed", "claude-1")).await;
    let doomed_b = mint_ok(&mut admin, mint_request("t-doomed", "codex-1")).await;
    let answer = admin
        .revoke_thread(pb::RevokeThreadRequest {
            thread_id: "t-doomed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked, 2);
    let by_instance = mint_ok(&mut admin, mint_request("t-inst", "inst-doomed")).await;
    let answer = admin
        .revoke_all(pb::RevokeAllRequest {
            provider_instance_id: "inst-doomed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked, 1);

    let live = [&with_scopes, &short_idle, &short_life, &rotated_new];
    // Whose expires_at the absolute lifetime fixes (the max lifetime is
    // the 30-day default): created_at + 1h.
    let pinned = [true, true, false, true];
    let dead = [
        (&rotated_old, "replaced", "t-rot"),
        (&by_credential, "credential", "t-cred"),
        (&doomed_a, "thread", "t-doomed"),
        (&doomed_b, "thread", "t-doomed"),
        (&by_instance, "provider_instance", "t-inst"),
    ];
    let mut before = Vec::new();
    for minted in live {
        before.push(resolve(&mut admin, &minted.token).await.unwrap());
    }

    for restart in 0..2 {
        // Touch right before the stop: the deadlines the restart must keep.
        let mut touched = Vec::new();
        for minted in live {
            let answer = touch(&mut admin, &minted.credential_id).await.unwrap();
            touched.push(answer.credentials[0].clone());
        }
        drop(admin);
        server.stop_cleanly();
        server = Server::start_on(scratch.clone(), ABSOLUTE);
        admin = client(&server).await;
        let recovered = log_fields(&server.log(), "store recovered");
        let records: u64 = recovered["records"].parse().unwrap();
        let credentials: u64 = recovered["credentials"].parse().unwrap();
        assert!(records >= 9, "restart {restart}: {recovered:?}");
        assert!(
            credentials >= live.len() as u64,
            "restart {restart}: {recovered:?}"
        );
        assert!(recovered.contains_key("elapsed_ms"), "{recovered:?}");

        let mut afters = Vec::new();
        for (((minted, before), touched), pinned) in
            live.iter().zip(&before).zip(&touched).zip(pinned)
        {
            let what = format!("restart {restart}: {}", minted.credential_id);
            let after = resolve(&mut admin, &minted.token)
                .await
                .unwrap_or_else(|status| panic!("{what}: {status:?}"));
            assert_eq!(after.credential_id, before.credential_id, "{what}");
            assert_eq!(after.thread_id, before.thread_id, "{what}");
            assert_eq!(
                after.provider_instance_id, before.provider_instance_id,
                "{what}"
            );
            assert_eq!(after.provider_kind, before.provider_kind, "{what}");
            assert_eq!(after.created_at, before.created_at, "{what}");
            assert_eq!(after.scopes, before.scopes, "{what}");
            assert_eq!(after.labels, before.labels, "{what}");
            assert_eq!(after.minted_by, before.minted_by, "{what}");
            assert!(
                millis(&after.expires_at) >= millis(&touched.expires_at),
                "{what}: expires_at went back across the restart"
            );
            assert!(
                millis(&after.idle_expires_at) >= millis(&touched.idle_expires_at),
                "{what}: idle_expires_at went back across the restart"
            );
            if pinned {
                assert_eq!(
                    millis(&after.expires_at),
                    millis(&before.created_at) + 3_600_000,
                    "{what}: the absolute lifetime moved"
                );
                assert_eq!(
                    after.expires_at, touched.expires_at,
                    "{what}: expires_at changed across the restart"
                );
            }
            afters.push(after);
        }
        assert_eq!(before[0].scopes, ["fs.read", "shell.exec"]);
        assert_eq!(before[0].labels["provider_session"], "sess-42");
        assert_eq!(before[1].provider_kind, "codex");
        // The per-credential idle timeout (10 minutes) and max lifetime (20
        // minutes) came back with their records: renewed just now, they
        // end well before the defaults (30 minutes idle, the 1-hour
        // absolute lifetime).
        assert!(
            millis(&afters[1].idle_expires_at) + 15 * 60_000 < millis(&afters[0].idle_expires_at),
            "restart {restart}: the 10-minute idle timeout was lost: {afters:?}"
        );
        assert!(
            millis(&afters[2].expires_at) + 30 * 60_000 < millis(&afters[0].expires_at),
            "restart {restart}: the 20-minute max lifetime was lost: {afters:?}"
        );

        for (minted, cause, thread) in dead {
            let what = format!("restart {restart}: {} ({cause})", minted.credential_id);
            let metadata = assert_revoked(resolve(&mut admin, &minted.token).await, cause, &what);
            assert_eq!(metadata["credential_id"], minted.credential_id, "{what}");
            assert_eq!(metadata["thread_id"], thread, "{what}");
            assert_touch_revoked(
                touch(&mut admin, &minted.credential_id).await,
                cause,
                &format!("{what}, by credential id"),
            );
        }
        for (thread, cause) in [("t-doomed", "thread"), ("t-cred", "credential")] {
            assert_touch_revoked(
                admin
                    .touch(touch_thread(thread))
                    .await
                    .map(tonic::Response::into_inner),
                cause,
                &format!("restart {restart}: Touch of thread {thread}"),
            );
        }
        // Still known by id: revoking again ends nothing and is no error.
        let again = admin
            .revoke_credential(pb::RevokeCredentialRequest {
                credential_id: by_credential.credential_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.revoked, 0);
        // A RevokeAll before the restart does not end what is minted after.
        let fresh = mint_ok(&mut admin, mint_request("t-inst", "inst-doomed")).await;
        let fresh = resolve(&mut admin, &fresh.token).await.unwrap();
        assert!(
            before
                .iter()
                .all(|b| millis(&fresh.created_at) >= millis(&b.created_at)),
            "restart {restart}: a Mint after the restart was created before one from before"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. one process per data directory
// ---------------------------------------------------------------------------

/// A second server on the same data directory, through the same state
/// directory or an explicit `--data-dir`, is refused while the first runs
/// (non-zero exit, the message names the directory and the holder's pid),
/// and the first keeps serving and keeps its lock.
///
/// Catches: no lock (two writers interleave batches in one segment and
/// corrupt it), a lock taken after the journal is read or truncated (the
/// second process drops the first one's "torn" tail), a PID file instead of
/// a lock that the refused process overwrites, and a refusal that names no
/// directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let scratch = scratch();
    let mut first = Server::start_on(scratch.clone(), &[]);
    let mut admin = client(&first).await;
    let before = mint_ok(&mut admin, mint_request("t", "i")).await;
    let dir = data_dir(&scratch);
    let lock_before = std::fs::read_to_string(dir.join("LOCK")).unwrap();
    assert_eq!(lock_before.trim(), first.pid().to_string());

    let elsewhere = common::restart::scratch();
    let explicit = ["--data-dir", dir.to_str().unwrap()];
    for (who, scratch, flags) in [
        ("the same state directory", &scratch, &[][..]),
        ("--data-dir", &elsewhere, &explicit[..]),
    ] {
        let (status, log) = refused_start(scratch, flags);
        assert!(!status.success(), "{who}: {status}\n{log}");
        assert!(
            log.contains(&dir.display().to_string()),
            "{who}: the refusal does not name {}:\n{log}",
            dir.display()
        );
        assert!(
            log.contains(&format!("process {}", first.pid())),
            "{who}: the refusal does not name the holder:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }

    // The first goes on: what it had, and new work.
    assert_eq!(
        resolve(&mut admin, &before.token)
            .await
            .unwrap()
            .credential_id,
        before.credential_id
    );
    let after = mint_ok(&mut admin, mint_request("t", "i")).await;
    assert!(resolve(&mut admin, &after.token).await.is_ok());
    assert_eq!(
        std::fs::read_to_string(dir.join("LOCK")).unwrap(),
        lock_before
    );
    // And both are on its disk.
    drop(admin);
    first.crash();
    let second = Server::start_on(scratch.clone(), &[]);
    let mut admin = client(&second).await;
    for minted in [&before, &after] {
        assert!(resolve(&mut admin, &minted.token).await.is_ok());
    }
}

// ---------------------------------------------------------------------------
// 4. damaged journals
// ---------------------------------------------------------------------------

/// Mints `count` credentials on threads `prefix-N`, one after another.
async fn mint_many(client: &mut Client, prefix: &str, count: usize) -> Vec<pb::MintResponse> {
    let mut minted = Vec::new();
    for n in 0..count {
        minted.push(mint_ok(client, mint_request(&format!("{prefix}-{n}"), "i")).await);
    }
    minted
}

/// Asserts every one of `minted` resolves, as itself.
async fn assert_all_live(client: &mut Client, minted: &[pb::MintResponse], what: &str) {
    for m in minted {
        let resolved = resolve(client, &m.token)
            .await
            .unwrap_or_else(|status| panic!("{what}: {} lost: {status:?}", m.credential_id));
        assert_eq!(resolved.credential_id, m.credential_id, "{what}");
    }
}

/// A torn final write after `kill -9`: garbage shorter than a batch
/// header, then (second crash) the first half of a copy of a real batch,
/// appended to the newest segment. Each restart starts, logs the torn tail
/// with the offset where the valid journal ended and the bytes dropped,
/// and every acknowledged credential resolves.
///
/// Catches: recovery that refuses any damaged tail (a crash mid-write
/// would keep the server down), that drops the last valid batch with the
/// torn one (acknowledged Mints lost), that does not truncate the tail
/// (the next batches land after garbage, and the following restart finds
/// damage in the middle), or that treats a half batch with a valid header
/// as whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_final_write_is_dropped_and_logged() {
    let scratch = scratch();
    let dir = data_dir(&scratch);
    let mut server = Server::start_on(scratch.clone(), &[]);
    let mut acked = Vec::new();
    for round in 0..2 {
        let mut admin = client(&server).await;
        acked.extend(mint_many(&mut admin, &format!("torn{round}"), 20).await);
        drop(admin);
        server.crash();
        let segment = newest_segment(&dir);
        let bytes = std::fs::read(&segment).unwrap();
        let spans = batches(&bytes);
        let tail: Vec<u8> = if round == 0 {
            vec![0xA5; 17]
        } else {
            let last = spans
                .iter()
                .rev()
                .find(|s| s.count > 0)
                .expect("a Mint batch");
            bytes[last.offset..last.offset + last.len / 2].to_vec()
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(&tail)
            .unwrap();

        server = Server::start_on(scratch.clone(), &[]);
        let torn = log_fields(&server.log(), "dropped a torn final write");
        assert_eq!(
            torn["offset"],
            bytes.len().to_string(),
            "round {round}: {torn:?}"
        );
        assert_eq!(
            torn["bytes_dropped"],
            tail.len().to_string(),
            "round {round}: {torn:?}"
        );
        assert!(
            torn["file"].ends_with(segment.file_name().unwrap().to_str().unwrap()),
            "{torn:?}"
        );
        let mut admin = client(&server).await;
        assert_all_live(&mut admin, &acked, &format!("round {round}")).await;
    }
    // The dropped tails left nothing behind: a clean restart finds no
    // damage at all.
    server.stop_cleanly();
    let server = Server::start_on(scratch.clone(), &[]);
    assert!(!server.log().contains("torn"), "{}", server.log());
    let mut admin = client(&server).await;
    assert_all_live(&mut admin, &acked, "after a clean restart").await;
}

/// Damage in the middle: a byte flipped inside an earlier batch of a
/// segment with valid batches after it. The server refuses to start,
/// naming the file, the batch's offset and `--truncate-journal-at
/// FILE:OFFSET`; started with that value it cuts the journal there, logs
/// it, keeps what came before (a credential minted in an earlier run) and
/// has forgotten what came after; a later plain restart finds no damage.
///
/// Catches: damage in the middle treated as a torn tail (everything after
/// it silently dropped), replay that skips a bad batch and goes on
/// (records applied out of order), a refusal without the file, the offset
/// or the option, an offset that is not the damaged batch's, and a
/// truncation that is not durable or cuts at the wrong place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_middle_refuses_to_start_until_truncated() {
    let scratch = scratch();
    let dir = data_dir(&scratch);
    let mut server = Server::start_on(scratch.clone(), &[]);
    let mut admin = client(&server).await;
    let kept = mint_ok(&mut admin, mint_request("kept-before-the-damage", "i")).await;
    drop(admin);
    server.stop_cleanly();
    let first_run_end = std::fs::metadata(newest_segment(&dir)).unwrap().len() as usize;

    let mut server = Server::start_on(scratch.clone(), &[]);
    let mut admin = client(&server).await;
    let marker = "the-damaged-batch-holds-this-thread";
    let damaged = mint_ok(&mut admin, mint_request(marker, "i")).await;
    let after = mint_many(&mut admin, "after-the-damage", 3).await;
    drop(admin);
    server.stop_cleanly();

    let segment = newest_segment(&dir);
    let file = segment.file_name().unwrap().to_str().unwrap().to_owned();
    let mut bytes = std::fs::read(&segment).unwrap();
    let spans = batches(&bytes);
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the Mint record names its thread");
    assert!(at > first_run_end);
    let span = *spans
        .iter()
        .find(|s| s.offset <= at && at < s.offset + s.len)
        .unwrap();
    assert!(
        spans.iter().any(|s| s.offset > span.offset && s.count > 0),
        "valid batches with records follow the damaged one: {spans:?}"
    );
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    let (status, log) = refused_start(&scratch, &[]);
    assert!(!status.success(), "{status}\n{log}");
    assert!(log.contains(&file), "the refusal names the file:\n{log}");
    assert!(
        log.contains(&format!("at byte {}", span.offset)),
        "the refusal names the damaged batch's offset {}:\n{log}",
        span.offset
    );
    let option = "--truncate-journal-at ";
    let value: String = log
        [log.rfind(option).expect("the refusal names the option") + option.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert_eq!(value, format!("{file}:{}", span.offset), "{log}");
    // The refusal changed nothing.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);

    let server = Server::start_on(scratch.clone(), &["--truncate-journal-at", &value]);
    let cut = log_fields(
        &server.log(),
        "truncated the journal as --truncate-journal-at asked",
    );
    assert_eq!(cut["offset"], span.offset.to_string(), "{cut:?}");
    assert_eq!(
        cut["bytes_dropped"],
        (bytes.len() - span.offset).to_string(),
        "{cut:?}"
    );
    let mut admin = client(&server).await;
    assert_all_live(&mut admin, std::slice::from_ref(&kept), "truncated").await;
    for lost in std::iter::once(&damaged).chain(&after) {
        assert_unknown(resolve(&mut admin, &lost.token).await, "after the cut");
    }
    drop(admin);
    drop(server);

    // Durable: a plain restart (after a crash) finds a clean journal.
    let server = Server::start_on(scratch.clone(), &[]);
    assert!(!server.log().contains("torn"), "{}", server.log());
    let mut admin = client(&server).await;
    assert_all_live(&mut admin, std::slice::from_ref(&kept), "restarted").await;
    assert_unknown(resolve(&mut admin, &damaged.token).await, "restarted");
}

// ---------------------------------------------------------------------------
// 5. a disk that refuses writes
// ---------------------------------------------------------------------------

/// The file size limit for the server's writes: its journal starts at a
/// 32-byte header with no preallocation (src/store/journal/segment.rs), the
/// lock file and the callers file are far smaller, so it starts, and some
/// dozens of Mints later the segment reaches the limit.
const FILE_SIZE_LIMIT: u64 = 16 << 10;

/// Sets RLIMIT_FSIZE on the child, its hard limit unchanged, and ignores
/// SIGXFSZ so that a write past the limit fails with EFBIG instead of
/// killing the process.
fn limit_file_size(command: &mut std::process::Command, limit: u64) {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct we pass.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut current) },
        0
    );
    let hard = current.rlim_max;
    // SAFETY: between fork and exec the closure calls only setrlimit and
    // signal, both async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// Lifts RLIMIT_FSIZE of the running server (prlimit), as a disk that has
/// room again.
fn lift_file_size_limit(server: &Server) {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes only the structs we pass.
    unsafe {
        assert_eq!(
            libc::prlimit(
                server.pid(),
                libc::RLIMIT_FSIZE,
                std::ptr::null(),
                &mut current
            ),
            0
        );
        let lifted = libc::rlimit {
            rlim_cur: current.rlim_max,
            rlim_max: current.rlim_max,
        };
        assert_eq!(
            libc::prlimit(
                server.pid(),
                libc::RLIMIT_FSIZE,
                &lifted,
                std::ptr::null_mut()
            ),
            0,
            "prlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Writes that fail (RLIMIT_FSIZE: EFBIG): Mint, RevokeCredential,
/// RevokeThread and RevokeAll answer UNAVAILABLE with SERVICE_UNAVAILABLE
/// and RetryInfo, Resolve of earlier tokens goes on, the store-writes
/// health entry reads NOT_SERVING; the failed Mint never existed (its
/// thread is unknown, its replace_previous replaced nothing), the failed
/// revocations are in force in memory. Once the disk has room the health
/// entry reads SERVING again, the revocations retried succeed (memory
/// answers 0), and after a crash and restart exactly the acknowledged
/// state is back: the retried revocations hold, the failed Mint is still
/// unknown.
///
/// Catches: a Mint acknowledged although its record was not written (or
/// made visible before the write, so Resolve finds it); a replacement
/// applied before the new record is durable; a write error that hangs the
/// call or answers something other than retryable UNAVAILABLE; Resolve
/// refused because writes fail; no health signal; a writer that never
/// recovers or leaves a half batch behind (the restart refuses or drops
/// it); and a revocation not journaled when memory answers 0 (the retry of
/// a revocation whose first write failed is acknowledged but the
/// credential is live after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_writes_fails_changes_and_keeps_resolve() {
    let scratch = scratch();
    let mut server = Server::start_on_with(scratch.clone(), &[], |command| {
        limit_file_size(command, FILE_SIZE_LIMIT)
    });
    let mut admin = client(&server).await;
    let mut health = health(&server).await;
    await_store_writes(&mut health, ServingStatus::Serving).await;

    // Special ones first: to replace, to revoke by id, by thread, by instance.
    let replaced = mint_ok(&mut admin, mint_request("keep-replace", "i")).await;
    let by_id = mint_ok(&mut admin, mint_request("keep-by-id", "i")).await;
    let by_thread = mint_ok(&mut admin, mint_request("keep-by-thread", "i")).await;
    let by_instance = mint_ok(&mut admin, mint_request("keep-by-instance", "solo")).await;
    let mut kept = vec![
        replaced.clone(),
        by_id.clone(),
        by_thread.clone(),
        by_instance.clone(),
    ];
    let mut lost_thread = None;
    for n in 0..2_000 {
        let thread = format!("fill-{n}");
        match admin.mint(mint_request(&thread, "i")).await {
            Ok(minted) => kept.push(minted.into_inner()),
            Err(status) => {
                assert_store_unavailable(Err::<(), _>(status), "the Mint past the limit");
                lost_thread = Some(thread);
                break;
            }
        }
    }
    let lost_thread = lost_thread.expect("a Mint failed once the segment reached the limit");
    // A smaller record than a Mint's may still fit under the limit: fill
    // what is left with the smallest (a RevokeCredential of an unknown id,
    // journaled all the same) until one fails too, so that no change fits.
    let mut filled = false;
    for n in 0..10_000u32 {
        let unknown = format!("cred_{n:032x}");
        match admin
            .revoke_credential(pb::RevokeCredentialRequest {
                credential_id: unknown,
            })
            .await
        {
            Ok(_) => continue,
            Err(status) => {
                assert_store_unavailable(Err::<(), _>(status), "a small record past the limit");
                filled = true;
                break;
            }
        }
    }
    assert!(filled, "small records filled the segment up to the limit");
    println!(
        "{} Mints fitted under RLIMIT_FSIZE {FILE_SIZE_LIMIT}",
        kept.len()
    );
    assert!(kept.len() > 10, "the limit left room for some Mints");
    await_store_writes(&mut health, ServingStatus::NotServing).await;

    // Resolve goes on from memory.
    assert_all_live(&mut admin, &kept, "while writes fail").await;
    // The failed Mint left no trace.
    assert_touch_unknown(
        admin
            .touch(touch_thread(&lost_thread))
            .await
            .map(tonic::Response::into_inner),
        "the failed Mint's thread",
    );
    // Every change fails the same way.
    assert_store_unavailable(
        admin
            .mint(pb::MintRequest {
                replace_previous: true,
                ..mint_request("keep-replace", "i")
            })
            .await,
        "a replacing Mint",
    );
    assert!(
        resolve(&mut admin, &replaced.token).await.is_ok(),
        "a failed replace_previous Mint replaced its predecessor"
    );
    let revoke_by_id = pb::RevokeCredentialRequest {
        credential_id: by_id.credential_id.clone(),
    };
    let revoke_by_thread = pb::RevokeThreadRequest {
        thread_id: "keep-by-thread".into(),
    };
    let revoke_by_instance = pb::RevokeAllRequest {
        provider_instance_id: "solo".into(),
    };
    assert_store_unavailable(
        admin.revoke_credential(revoke_by_id.clone()).await,
        "RevokeCredential",
    );
    assert_store_unavailable(
        admin.revoke_thread(revoke_by_thread.clone()).await,
        "RevokeThread",
    );
    assert_store_unavailable(
        admin.revoke_all(revoke_by_instance.clone()).await,
        "RevokeAll",
    );
    // In force in memory all the same (the safe side).
    assert_revoked(
        resolve(&mut admin, &by_id.token).await,
        "credential",
        "by id",
    );
    assert_revoked(
        resolve(&mut admin, &by_thread.token).await,
        "thread",
        "by thread",
    );
    assert_revoked(
        resolve(&mut admin, &by_instance.token).await,
        "provider_instance",
        "by instance",
    );
    assert!(
        server.log().contains("the store cannot write"),
        "{}",
        server.log()
    );

    // The disk has room again.
    lift_file_size_limit(&server);
    await_store_writes(&mut health, ServingStatus::Serving).await;
    let answer = admin.revoke_credential(revoke_by_id).await.unwrap();
    assert_eq!(answer.into_inner().revoked, 0, "memory had it revoked");
    let answer = admin.revoke_thread(revoke_by_thread).await.unwrap();
    assert_eq!(answer.into_inner().revoked, 0);
    let answer = admin.revoke_all(revoke_by_instance).await.unwrap();
    assert_eq!(answer.into_inner().revoked, 0);
    let later = mint_ok(&mut admin, mint_request("after-the-disk-recovered", "i")).await;

    drop(admin);
    drop(health);
    server.crash();
    let server = Server::start_on(scratch.clone(), &[]);
    let mut admin = client(&server).await;
    let live: Vec<pb::MintResponse> = kept
        .iter()
        .filter(|m| {
            ![&by_id, &by_thread, &by_instance]
                .iter()
                .any(|d| d.credential_id == m.credential_id)
        })
        .cloned()
        .chain(std::iter::once(later))
        .collect();
    assert_all_live(&mut admin, &live, "after the restart").await;
    assert_revoked(
        resolve(&mut admin, &by_id.token).await,
        "credential",
        "by id, after the restart",
    );
    assert_revoked(
        resolve(&mut admin, &by_thread.token).await,
        "thread",
        "by thread, after the restart",
    );
    assert_touch_unknown(
        admin
            .touch(touch_thread(&lost_thread))
            .await
            .map(tonic::Response::into_inner),
        "the failed Mint's thread, after the restart",
    );
    // Last, as it fails at b42ac21: the retried RevokeAll answered OK but
    // journaled a ScopesStamped record with no stamp (payload `05 00000000`),
    // because the sweeper had reclaimed the revoked record and with it the
    // (caller, instance) pair that held the stamp, so `stamps_of` found
    // nothing to write; replay then brings the credential back live.
    assert_revoked(
        resolve(&mut admin, &by_instance.token).await,
        "provider_instance",
        "by instance, after the restart (the retried RevokeAll must be durable)",
    );
}

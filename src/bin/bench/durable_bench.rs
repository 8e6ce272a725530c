//! The durable embedded store against the memory store, in-process and in
//! the same run: Resolve on each (the journal must cost Resolve nothing), a
//! renewal checkpoint with many credentials live and few used, and the
//! restart of a full store (from the journal, and from a snapshot), with
//! what it takes on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use credential_authority::clock::SystemClock;
use credential_authority::store::{Backend, DurableOptions, NewCredential, Store, StoreConfig};
use credential_authority::token::{self, Token};

use crate::report::{median, Figure, Report};
use crate::store_bench::{
    count, instances, run_threads, thread_cpu_secs, thread_id, visiting_order, Feed, StorePlan,
};

/// Credentials used between two checkpoints in the checkpoint figure.
const USED_PER_CHECKPOINT: usize = 10_000;

/// Mints in flight while a durable store is filled: the group commit's
/// batch, as under a loaded server.
const FILL_IN_FLIGHT: usize = 512;

/// The store's limits with the budgets out of the way.
fn config() -> StoreConfig {
    StoreConfig {
        max_credentials: u64::MAX,
        max_credential_bytes: u64::MAX,
        ..StoreConfig::default()
    }
}

/// Fills `store` with one credential per token, `FILL_IN_FLIGHT` Mints at a
/// time on a tokio runtime (a durable Mint waits for its group commit).
fn fill(store: &Store, tokens: &[Token]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let instances: Arc<Vec<String>> = Arc::new(instances());
    let backend = Backend::from(store.clone());
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, token) in tokens.iter().enumerate() {
            if tasks.len() >= FILL_IN_FLIGHT {
                tasks.join_next().await.expect("a task").expect("mint");
            }
            let (backend, instances, digest) = (backend.clone(), instances.clone(), token.digest());
            tasks.spawn(async move {
                let thread = thread_id(i);
                backend
                    .mint(
                        digest,
                        NewCredential {
                            thread_id: &thread,
                            provider_instance_id: &instances[i % instances.len()],
                            provider_kind: Some("claude"),
                            minted_by: "bench",
                            ..NewCredential::default()
                        },
                    )
                    .await
                    .expect("mint");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("mint");
        }
    });
}

/// Bytes of the files in `dir`.
fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Opens the durable store in `dir`; wall seconds taken.
fn reopen(dir: &Path) -> (Store, f64) {
    let started = Instant::now();
    let (store, _recovery) = Store::open(
        config(),
        Arc::new(SystemClock::new()),
        DurableOptions::new(dir),
    )
    .expect("reopens");
    (store, started.elapsed().as_secs_f64())
}

/// Runs the durable figures at `size` live credentials.
pub(crate) fn run(plan: StorePlan, size: usize, report: &mut Report) {
    eprintln!("# durable store: {size} live credentials");
    let scope = format!("durable store, {} live", count(size));
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ca-bench-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tokens: Vec<Token> = (0..size).map(|_| Token::generate()).collect();
    let memory = Store::new(config(), Arc::new(SystemClock::new()));
    fill(&memory, &tokens);
    let (durable, _) = Store::open(
        config(),
        Arc::new(SystemClock::new()),
        DurableOptions::new(&dir),
    )
    .expect("opens");
    let filling = Instant::now();
    fill(&durable, &tokens);
    let fill_ns = filling.elapsed().as_nanos() as f64 / size as f64;
    let push = |report: &mut Report, what: &str, parallelism: usize, ns: f64| {
        report.figures.push(Figure {
            scope: scope.clone(),
            what: what.to_owned(),
            parallelism,
            ops_per_sec: 1e9 / ns,
            ..Figure::default()
        });
    };
    push(
        report,
        &format!("Mint, durable, {FILL_IN_FLIGHT} in flight (filling)"),
        FILL_IN_FLIGHT,
        fill_ns,
    );

    let order = visiting_order(plan.ops, size);
    let feed = Feed::new(&tokens, &order);
    let resolve = |store: &Store, threads: usize| {
        run_threads(threads, order.len(), |k| {
            let digest = token::parse(feed.token(k)).expect("well-formed");
            assert!(store.resolve_with(&digest, None, |v| v.deadlines).is_ok());
        })
    };
    for threads in [1, 2] {
        // Each round runs both stores back to back, in alternating order, so
        // a pair sees the same noise and neither store always runs first.
        // The ratio is the median of the rounds' ratios: on a shared host
        // the load drifts between rounds by more than the 5% the target
        // allows, and a pair cancels the drift where a ratio of medians
        // taken from different rounds does not.
        let mut memory_ns = Vec::new();
        let mut durable_ns = Vec::new();
        let mut ratios = Vec::new();
        for round in 0..plan.rounds.max(1) {
            let (m, d) = if round % 2 == 0 {
                let m = resolve(&memory, threads);
                (m, resolve(&durable, threads))
            } else {
                let d = resolve(&durable, threads);
                (resolve(&memory, threads), d)
            };
            memory_ns.push(m);
            durable_ns.push(d);
            ratios.push(m / d);
        }
        let (m, d) = (
            median(memory_ns.len(), || memory_ns.remove(0)),
            median(durable_ns.len(), || durable_ns.remove(0)),
        );
        let ratio = median(ratios.len(), || ratios.remove(0));
        push(report, "Resolve, memory store", threads, m);
        push(report, "Resolve, durable store", threads, d);
        report.check(
            format!("in-process Resolve on the durable store >= 0.95x the memory store ({threads} thread(s), {} live)", count(size)),
            format!("{ratio:.3}x (median of {} paired rounds; ratio of medians {:.3}x)", plan.rounds.max(1), m / d),
            ratio >= 0.95,
        );
    }
    drop(memory);

    // A checkpoint after USED_PER_CHECKPOINT distinct credentials were used.
    let used = USED_PER_CHECKPOINT.min(size);
    // What the Resolve rounds above used is written first, unmeasured.
    durable.checkpoint_renewals().expect("checkpoint");
    let mut cpu = Vec::new();
    for _ in 0..plan.rounds.max(3) {
        for token in tokens.iter().step_by((size / used).max(1)).take(used) {
            assert!(durable.resolve_with(&token.digest(), None, |_| ()).is_ok());
        }
        let started = thread_cpu_secs();
        let written = durable.checkpoint_renewals().expect("checkpoint");
        cpu.push(thread_cpu_secs() - started);
        assert_eq!(written, used, "the checkpoint wrote what was used");
    }
    let checkpoint_ms = 1e3 * median(cpu.len(), || cpu.remove(0));
    report.check(
        format!(
            "a renewal checkpoint with {} live, {} used costs < 10 ms of CPU",
            count(size),
            count(used)
        ),
        format!("{checkpoint_ms:.2} ms"),
        checkpoint_ms < 10.0,
    );

    // Restarts: from the journal, then from a snapshot of the same state.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(durable.close()).expect("closes");
    drop(durable);
    let journal_bytes = bytes_on_disk(&dir);
    let (durable, from_journal) = reopen(&dir);
    assert_eq!(durable.record_count(), size, "every credential came back");
    runtime.block_on(durable.compact()).expect("compacts");
    runtime.block_on(durable.close()).expect("closes");
    drop(durable);
    let snapshot_bytes = bytes_on_disk(&dir);
    let (durable, from_snapshot) = reopen(&dir);
    assert_eq!(durable.record_count(), size, "every credential came back");
    drop(durable);
    let _ = std::fs::remove_dir_all(&dir);
    report.check(
        format!("recovery of {} live credentials <= 2 s", count(size)),
        format!(
            "{from_journal:.2} s from the journal ({:.0} B/credential on disk), {from_snapshot:.2} s from a snapshot ({:.0} B/credential)",
            journal_bytes as f64 / size as f64,
            snapshot_bytes as f64 / size as f64
        ),
        from_journal.max(from_snapshot) <= 2.0,
    );
}

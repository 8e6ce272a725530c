//! Figures for the README, run by hand in release:
//! `cargo test --release --lib store::journal::tests::bench -- --ignored --nocapture --test-threads 1`.
//! Not timed assertions: they only print.

use std::time::{Duration, Instant};

use super::*;

/// Appenders in flight at once.
const APPENDERS: usize = 512;
/// A record's size, about a minted credential's.
const RECORD_BYTES: usize = 200;
/// Records for the recovery figure.
const RECOVERY_RECORDS: usize = 1_000_000;

#[test]
#[ignore = "benchmark: run by hand in release"]
fn bench_group_commit_with_512_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let run_for = Duration::from_secs(5);
    let started = Instant::now();
    let appends: u64 = runtime.block_on(async {
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|task| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut payload = vec![task as u8; RECORD_BYTES];
                    let mut done = 0u64;
                    while started.elapsed() < run_for {
                        payload[..8].copy_from_slice(&done.to_le_bytes());
                        journal.append(&payload).durable().await.unwrap();
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    });
    let seconds = started.elapsed().as_secs_f64();
    let stats = journal.stats();
    println!(
        "group commit, {APPENDERS} appenders, {RECORD_BYTES}-byte records: {:.0} appends/s, \
         {:.0} fdatasyncs/s, {:.1} records per batch ({appends} appends in {seconds:.1} s)",
        appends as f64 / seconds,
        stats.fsyncs as f64 / seconds,
        stats.records as f64 / stats.batches.max(1) as f64,
    );
}

/// Writes `RECOVERY_RECORDS` records of `RECORD_BYTES` into `dir`.
fn fill(dir: &Path) {
    let (journal, _) = open(dir);
    let mut payload = vec![0xabu8; RECORD_BYTES];
    for i in 0..RECOVERY_RECORDS {
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
        if i % 10_000 == 9_999 {
            journal.append(&payload).wait_blocking().unwrap();
        } else {
            journal.append_unawaited(&payload).unwrap();
        }
    }
    journal.sync().wait_blocking().unwrap();
}

/// Bytes in the journal's files.
fn bytes_on_disk(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Opens `dir` and reads every record; returns the time taken.
fn time_recovery(dir: &Path) -> Duration {
    let started = Instant::now();
    let (journal, recovered) = open(dir);
    let mut count = 0usize;
    let mut bytes = 0usize;
    for payload in recovered.records() {
        count += 1;
        bytes += payload.len();
    }
    let took = started.elapsed();
    assert_eq!(count, RECOVERY_RECORDS);
    assert_eq!(bytes, RECOVERY_RECORDS * RECORD_BYTES);
    drop((journal, recovered));
    took
}

#[test]
#[ignore = "benchmark: run by hand in release"]
fn bench_recovery_of_a_million_records() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    fill(dir.path());
    let filled = started.elapsed();
    let on_disk = bytes_on_disk(dir.path());
    println!(
        "wrote {RECOVERY_RECORDS} records of {RECORD_BYTES} bytes in {filled:.2?}: {:.1} bytes on disk per record, {} segments",
        on_disk as f64 / RECOVERY_RECORDS as f64,
        segments(dir.path()).len(),
    );
    println!(
        "recovery from segments (open + iterate, page cache warm): {:.2?}",
        time_recovery(dir.path())
    );

    // The same state as a snapshot: what a compacted journal replays.
    let (journal, recovered) = open(dir.path());
    let records: Vec<Vec<u8>> = recovered.records().map(<[u8]>::to_vec).collect();
    drop(recovered);
    let started = Instant::now();
    journal
        .compact(move |out| records.iter().try_for_each(|r| out.record(r)))
        .unwrap()
        .wait_blocking()
        .unwrap();
    println!(
        "compaction of {RECOVERY_RECORDS} records: {:.2?}",
        started.elapsed()
    );
    drop(journal);
    println!(
        "recovery from a snapshot: {:.2?}, {:.1} bytes on disk per record",
        time_recovery(dir.path()),
        bytes_on_disk(dir.path()) as f64 / RECOVERY_RECORDS as f64,
    );
}

//! Snapshots replace the segments they cover.

use super::*;

#[test]
fn compaction_removes_covered_segments_and_recovery_yields_snapshot_then_tail() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().segment_bytes(512);
    let (journal, _) = open_with(dir.path(), options.clone()).unwrap();
    // The "store": its state is the set of records so far.
    let state = Arc::new(Mutex::new(Vec::new()));
    for i in 0..60 {
        state.lock().unwrap().push(record(i));
        journal.record_time(10_000 + i as u64);
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    let before = segments(dir.path());
    assert!(before.len() > 3, "{} segments", before.len());
    let live_before = journal.stats().live_bytes;

    let started = Arc::new(Barrier::new(2));
    let resume = Arc::new(Barrier::new(2));
    let snapshot_state = state.clone();
    let (started_in, resume_in) = (started.clone(), resume.clone());
    let compaction = journal
        .compact(move |out| {
            let records = snapshot_state.lock().unwrap().clone();
            started_in.wait();
            // Appends go on while the snapshot is written.
            resume_in.wait();
            out.record(b"snapshot header")?;
            records.iter().try_for_each(|r| out.record(r))
        })
        .unwrap();
    started.wait();
    assert!(matches!(
        journal.compact(|_| Ok(())),
        Err(JournalError::CompactionRunning)
    ));
    for i in 60..70 {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    resume.wait();
    let report = compaction.wait_blocking().unwrap();
    assert_eq!(report.records, 61);
    assert!(report.files_removed >= before.len() as u64);
    for old in &before {
        assert!(!old.exists(), "{} was not removed", old.display());
    }
    assert!(journal.stats().live_bytes < live_before);
    drop(journal);

    let (journal, recovered) = open_with(dir.path(), options).unwrap();
    assert_eq!(recovered.snapshot(), Some(report.snapshot.as_path()));
    let mut expected = vec![b"snapshot header".to_vec()];
    expected.extend((0..60).map(record));
    expected.extend((60..70).map(record));
    assert_eq!(payloads(&recovered), expected);
    assert_eq!(recovered.newest_time(), Some(10_059));
    drop(journal);

    // Compacting again replaces the snapshot.
    let (journal, _) = open(dir.path());
    let second = journal.compact(|out| out.record(b"second")).unwrap();
    let second = second.wait_blocking().unwrap();
    assert!(!report.snapshot.exists());
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(recovered.snapshot(), Some(second.snapshot.as_path()));
    assert_eq!(payloads(&recovered), vec![b"second".to_vec()]);
    assert_eq!(
        recovered.newest_time(),
        Some(10_059),
        "the snapshot keeps the time"
    );
}

#[test]
fn a_crash_during_compaction_leaves_a_usable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    for i in 0..5 {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    // The closure fails as a crash would stop it: the snapshot is never
    // renamed into place.
    let failed = journal.compact(|out| {
        out.record(b"half")?;
        Err(io::Error::other("crash"))
    });
    assert!(failed.unwrap().wait_blocking().is_err());
    journal.append(&record(5)).wait_blocking().unwrap();
    drop(journal);
    // A leftover temporary snapshot, as if the process died mid-write.
    let leftover = dir.path().join("snapshot-00000000000000000009.snap.tmp");
    fs::write(&leftover, b"partial").unwrap();

    let (_journal, recovered) = open(dir.path());
    assert_eq!(recovered.snapshot(), None);
    assert_eq!(payloads(&recovered), (0..6).map(record).collect::<Vec<_>>());
    assert!(!leftover.exists());
}

//! Torn final writes are dropped; any other damage refuses to open.

use super::*;

#[test]
fn a_torn_final_write_is_dropped_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let segment = journal_with_last_batches(dir.path(), 3, 12);
    let ends = batch_ends(&segment);
    let last_batch_start = ends[ends.len() - 2].0;
    assert!(
        ends.last().unwrap().1 > 1,
        "the last batch must hold several records"
    );
    let whole = fs::read(&segment).unwrap();
    for cut in last_batch_start..=whole.len() {
        fs::write(&segment, &whole[..cut]).unwrap();
        let (journal, recovered) = open_with(dir.path(), JournalOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete: Vec<_> = ends.iter().take_while(|(end, _)| *end <= cut).collect();
        let kept_end = complete.last().unwrap().0;
        let kept: u32 = complete.iter().map(|(_, count)| count).sum();
        let expected: Vec<_> = (0..kept as usize).map(record).collect();
        assert_eq!(payloads(&recovered), expected, "cut at {cut}");
        match recovered.torn_tail() {
            None => assert_eq!(cut, kept_end, "cut at {cut} not reported"),
            Some(torn) => {
                assert_eq!(torn.file, segment);
                assert_eq!(torn.offset, kept_end as u64);
                assert_eq!(torn.bytes_dropped, (cut - kept_end) as u64);
            }
        }
        drop(journal);
        assert_eq!(fs::metadata(&segment).unwrap().len(), kept_end as u64);
    }
}

#[test]
fn a_final_write_whose_first_page_is_lost_is_torn_not_corrupt() {
    // Pages of one write may reach the disk in any order: the last batch's
    // header lost while its later records made it is still a torn write.
    let dir = tempfile::tempdir().unwrap();
    let segment = journal_with_last_batches(dir.path(), 3, 40);
    let ends = batch_ends(&segment);
    let last_batch_start = ends[ends.len() - 2].0;
    let kept: u32 = ends[..ends.len() - 1].iter().map(|(_, c)| c).sum();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[last_batch_start..last_batch_start + 40].fill(0);
    fs::write(&segment, &bytes).unwrap();

    let (_journal, recovered) = open(dir.path());
    assert_eq!(payloads(&recovered).len(), kept as usize);
    let torn = recovered.torn_tail().expect("reported");
    assert_eq!(torn.offset, last_batch_start as u64);
}

#[test]
fn damage_followed_by_valid_records_refuses_until_truncated_there() {
    let dir = tempfile::tempdir().unwrap();
    let segment = journal_with_last_batches(dir.path(), 6, 0);
    let ends = batch_ends(&segment);
    let damaged_start = ends[2].0; // the fourth batch
    let mut bytes = fs::read(&segment).unwrap();
    bytes[damaged_start + 30] ^= 0x40;
    fs::write(&segment, &bytes).unwrap();

    let error = open_with(dir.path(), JournalOptions::default()).unwrap_err();
    let JournalError::CorruptSegment {
        path,
        offset,
        truncate,
        ..
    } = &error
    else {
        panic!("expected CorruptSegment, got {error}");
    };
    assert_eq!(path, &segment);
    assert_eq!(*offset, damaged_start as u64);
    let name = segment.file_name().unwrap().to_str().unwrap();
    let option = format!("{TRUNCATE_OPTION} {name}:{damaged_start}");
    assert!(error.to_string().contains(&option), "{error}");
    assert_eq!(
        fs::read(&segment).unwrap(),
        bytes,
        "refusing touches nothing"
    );

    let at: TruncateAt = truncate.to_string().parse().unwrap();
    let options = JournalOptions::default().truncate_at(Some(at));
    let (journal, recovered) = open_with(dir.path(), options).unwrap();
    assert_eq!(payloads(&recovered), (0..3).map(record).collect::<Vec<_>>());
    let truncation = recovered.truncation().expect("reported");
    assert_eq!(
        truncation.bytes_dropped,
        (bytes.len() - damaged_start) as u64
    );
    journal.append(b"after").wait_blocking().unwrap();
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    let mut expected: Vec<_> = (0..3).map(record).collect();
    expected.push(b"after".to_vec());
    assert_eq!(payloads(&recovered), expected);
}

#[test]
fn damage_at_the_end_of_an_earlier_segment_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().segment_bytes(200);
    let (journal, _) = open_with(dir.path(), options.clone()).unwrap();
    for i in 0..20 {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    drop(journal);
    let found = segments(dir.path());
    assert!(found.len() > 2, "{} segments", found.len());
    let first = &found[0];
    let mut bytes = fs::read(first).unwrap();
    let len = bytes.len();
    bytes[len - 1] ^= 1; // its last batch: nothing valid follows in the file
    fs::write(first, &bytes).unwrap();
    let start = batch_ends_lenient(&bytes);
    match open_with(dir.path(), options) {
        Err(JournalError::CorruptSegment { path, offset, .. }) => {
            assert_eq!(&path, first);
            assert_eq!(offset, start as u64);
        }
        other => panic!("expected CorruptSegment, got {other:?}"),
    }
}

/// Where the last batch of a damaged segment starts.
fn batch_ends_lenient(bytes: &[u8]) -> usize {
    let salt = frame::decode_file_header(frame::FileKind::Segment, bytes)
        .unwrap()
        .salt;
    let mut at = FILE_HEADER_LEN;
    while let Ok(batch) = read_batch(bytes, at, salt) {
        at = batch.end();
    }
    at
}

#[test]
fn a_damaged_snapshot_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    journal.append(b"one").wait_blocking().unwrap();
    let report = journal
        .compact(|out| out.record(b"state"))
        .unwrap()
        .wait_blocking()
        .unwrap();
    drop(journal);
    let mut bytes = fs::read(&report.snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // the seal
    fs::write(&report.snapshot, &bytes).unwrap();
    match open_with(dir.path(), JournalOptions::default()) {
        Err(JournalError::CorruptSnapshot { path, .. }) => assert_eq!(path, report.snapshot),
        other => panic!("expected CorruptSnapshot, got {other:?}"),
    }
}

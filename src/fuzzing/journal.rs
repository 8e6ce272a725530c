//! Target `journal_records`: arbitrary bytes as one journal record for the
//! record decoder, and as the content of a data directory for the durable
//! store's open (recovery, then replay).
//!
//! The input's first byte picks how the directory is made:
//!
//! - odd: the rest is a run of records, each a little-endian `u16` length
//!   and that many bytes (the last one takes what is left if it claims
//!   more), written as segment 1 with a valid file header and all records
//!   in one batch whose checksums are right, so the fuzzer reaches replay
//!   without having to forge CRC32Cs;
//! - even: the rest is segment 1's content as is, so damaged headers,
//!   batches and records reach recovery. The mode byte is left out because
//!   a segment's magic starts with `C` (0x43, odd): with it kept, no raw
//!   input could ever carry a valid file header.
//!
//! The journal's framing (`src/store/journal/frame.rs`) is private to the
//! store, so [`file_header`] and [`batch`] write it again here, from the
//! format that file documents: all integers little-endian; a 32-byte file
//! header (magic `CAJRNL\0\x01`, sequence number `u64`, salt `u32`, four
//! zero bytes, CRC32C of the first 24 bytes, four zero bytes); a batch is a
//! 24-byte header (body length `u32`, record count `u32`, newest recorded
//! time `u64`, CRC32C of the body, then a CRC32C of those first 20 bytes
//! seeded with the CRC32C of the salt) and a body of record frames; a
//! record frame is the payload's length `u32`, a CRC32C over that length
//! and the payload, then the payload. A mistake here would show as every
//! framed input refused for a checksum: `tests/fuzz_corpus.rs` checks that
//! the framed seeds open.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::{FakeClock, Millis};
use crate::store::{decode_journal_record, DurableOptions, Store, StoreConfig};

/// Where the store's fake clock stands when the directory is opened.
pub(super) const FAKE_NOW: Millis = 1_800_000_000_000;

/// The salt of the file header the framed mode writes (any value works:
/// the header carries it and the batch CRCs are seeded with it).
pub(super) const SALT: u32 = 0x5eed_ca11;

/// The file name of segment 1, as `src/store/journal/segment.rs`'s
/// `file_name` makes it: the journal of a directory never compacted.
pub(super) fn segment_file_name() -> String {
    format!("journal-{:020}.log", 1)
}

/// The magic bytes of a segment file, the last one the format version.
const SEGMENT_MAGIC: [u8; 8] = *b"CAJRNL\0\x01";

/// The file header of segment 1 with `salt`.
pub(super) fn file_header(salt: u32) -> Vec<u8> {
    let mut header = vec![0u8; 32];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&1u64.to_le_bytes());
    header[16..20].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// One batch holding `records`, carrying `clock` as the newest time the
/// store had recorded, with its checksums for a file of `salt`.
pub(super) fn batch(records: &[&[u8]], clock: Millis, salt: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for payload in records {
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
        body.extend_from_slice(&len);
        body.extend_from_slice(&crc.to_le_bytes());
        body.extend_from_slice(payload);
    }
    let mut out = Vec::with_capacity(24 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&clock.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let header_crc = crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &out[0..20]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Splits the framed mode's input into records: each a `u16` length and
/// its bytes, the last one cut to what is left; a lone trailing byte is
/// ignored. Each record takes at least two bytes, so this is bounded by
/// the input's length.
pub(super) fn split_records(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while let [low, high, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
        let (record, after) = tail.split_at(len);
        records.push(record);
        rest = after;
    }
    records
}

/// The framed mode's input for `records`: the inverse of
/// [`split_records`] after an odd mode byte.
pub(super) fn framed_input(records: &[&[u8]]) -> Vec<u8> {
    let mut input = vec![1];
    for record in records {
        let len = u16::try_from(record.len()).expect("a seed record under 64 KiB");
        input.extend_from_slice(&len.to_le_bytes());
        input.extend_from_slice(record);
    }
    input
}

/// What segment 1 holds for `data` (see the module's documentation).
fn segment_content(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        None => Vec::new(),
        Some((mode, rest)) if mode % 2 == 1 => {
            let mut file = file_header(SALT);
            file.extend(batch(&split_records(rest), FAKE_NOW, SALT));
            file
        }
        Some((_, rest)) => rest.to_vec(),
    }
}

/// A directory of its own under the system's temporary directory, removed
/// when dropped (also when a check panics, so a replayed crash leaves
/// nothing behind). `tempfile` is only a dev-dependency, and this is
/// library code.
pub(super) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates a fresh, empty directory named after `purpose`, the process
    /// and a counter, so concurrent tests and fuzzer workers never share one.
    pub(super) fn new(purpose: &str) -> ScratchDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "credential-authority-{purpose}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        // Left by an earlier process of the same id that was killed.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        ScratchDir(path)
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Checks the decoder on `data` as one record, then opens a durable store
/// on the data directory `data` makes. Panics if either panics, if decoding
/// is not deterministic, if an opened store's bookkeeping is inconsistent,
/// or if a refusal says nothing.
pub fn journal_records(data: &[u8]) {
    let decoded = decode_journal_record(data);
    assert_eq!(
        decoded,
        decode_journal_record(data),
        "decoding the same record twice differs"
    );
    let _either_is_fine = journal_open_outcome(data);
}

/// Opens a durable store on the data directory `data` makes (see the
/// module's documentation) and checks what it gives: the records replayed,
/// or the refusal's message. Panics on a broken property as
/// [`journal_records`] does. Public so that the corpus test can check the
/// seeds reach where they are meant to (replay, or a given refusal).
#[doc(hidden)]
pub fn journal_open_outcome(data: &[u8]) -> Result<u64, String> {
    let dir = ScratchDir::new("fuzz-journal");
    let segment = dir.path().join(segment_file_name());
    fs::write(&segment, segment_content(data))
        .unwrap_or_else(|e| panic!("{}: {e}", segment.display()));
    let opened = Store::open(
        StoreConfig::default(),
        Arc::new(FakeClock::new(FAKE_NOW)),
        DurableOptions::new(dir.path()),
    );
    match opened {
        Ok((store, recovery)) => {
            #[cfg(debug_assertions)]
            if let Err(broken) = store.check_invariants() {
                panic!("the store opened inconsistent: {broken}");
            }
            // Its journal's writer thread stops here, before the directory goes.
            drop(store);
            Ok(recovery.records)
        }
        Err(refusal) => {
            let message = refusal.to_string();
            assert!(
                !message.is_empty(),
                "a refusal with no message: {refusal:?}"
            );
            Err(message)
        }
    }
}

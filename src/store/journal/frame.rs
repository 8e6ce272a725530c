//! The bytes on disk: file headers, batch headers and record frames.
//!
//! A file (segment or snapshot) starts with a [`FILE_HEADER_LEN`]-byte
//! header naming its kind, its sequence number and a random salt. Then come
//! batches: a [`BATCH_HEADER_LEN`]-byte header (body length, record count,
//! the newest recorded time, the body's CRC32C and the header's own CRC32C,
//! salted) followed by the body, a run of record frames. A record frame is
//! its payload's length and a CRC32C over length and payload, then the
//! payload. All integers are little-endian.
//!
//! The batch is the unit the writer makes durable with one `fdatasync`, so
//! it is also the unit a crash can tear; the record frame keeps each record
//! self-checking, in segments and snapshots alike. The header CRC is seeded
//! with the file's salt so that a payload which happens to contain a
//! well-formed batch (a caller-chosen label, say) cannot pass for one when
//! recovery scans past a torn batch.

use std::ops::Range;

/// Length of a file header.
pub(super) const FILE_HEADER_LEN: usize = 32;
/// Length of a batch header.
pub(super) const BATCH_HEADER_LEN: usize = 24;
/// Length of a record frame's header (length and CRC).
pub(super) const RECORD_HEADER_LEN: usize = 8;
/// The record count of the batch that seals a snapshot file.
pub(super) const SEAL_COUNT: u32 = u32::MAX;
/// The largest batch body: bounds memory in the writer and in recovery.
pub(super) const MAX_BATCH_BODY: usize = 1 << 30;

/// Which kind of file a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    /// A journal segment: batches appended by the writer thread.
    Segment,
    /// A snapshot: batches written once, then a seal batch.
    Snapshot,
}

impl FileKind {
    /// The magic bytes that open a file of this kind (the last byte is the
    /// format version).
    fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Segment => *b"CAJRNL\0\x01",
            FileKind::Snapshot => *b"CASNAP\0\x01",
        }
    }
}

/// A decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileHeader {
    /// Segment number, or for a snapshot the first segment it does not cover.
    pub(super) seq: u64,
    /// Seeds every batch header's CRC in this file.
    pub(super) salt: u32,
}

/// Encodes a file header.
pub(super) fn encode_file_header(kind: FileKind, header: FileHeader) -> [u8; FILE_HEADER_LEN] {
    let mut out = [0u8; FILE_HEADER_LEN];
    out[0..8].copy_from_slice(&kind.magic());
    out[8..16].copy_from_slice(&header.seq.to_le_bytes());
    out[16..20].copy_from_slice(&header.salt.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a file header, or says why it is not one of `kind`.
pub(super) fn decode_file_header(kind: FileKind, bytes: &[u8]) -> Result<FileHeader, &'static str> {
    if bytes.len() < FILE_HEADER_LEN {
        return Err("file header is cut short");
    }
    if bytes[0..8] != kind.magic() {
        return Err("file header has the wrong magic or version");
    }
    if crc32c::crc32c(&bytes[0..24]) != read_u32(bytes, 24) {
        return Err("file header checksum mismatch");
    }
    Ok(FileHeader {
        seq: read_u64(bytes, 8),
        salt: read_u32(bytes, 16),
    })
}

/// The checksum of a record frame: over the length, then the payload, so
/// that a damaged length cannot go unnoticed.
pub(super) fn record_crc(payload: &[u8]) -> u32 {
    let len = (payload.len() as u32).to_le_bytes();
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Appends one record frame to `out`; `crc` is [`record_crc`] of `payload`,
/// computed by the caller outside any lock.
pub(super) fn push_record(out: &mut Vec<u8>, payload: &[u8], crc: u32) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchHeader {
    /// Bytes of record frames after the header.
    pub(super) body_len: u32,
    /// Records in the body, or [`SEAL_COUNT`].
    pub(super) count: u32,
    /// The newest time the store had recorded when the batch was formed.
    pub(super) clock: u64,
}

/// Fills the header space at the start of `batch` (whose first
/// [`BATCH_HEADER_LEN`] bytes are reserved for it) for the body after it.
pub(super) fn seal_batch(batch: &mut [u8], count: u32, clock: u64, salt: u32) {
    let (head, body) = batch.split_at_mut(BATCH_HEADER_LEN);
    head[0..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[4..8].copy_from_slice(&count.to_le_bytes());
    head[8..16].copy_from_slice(&clock.to_le_bytes());
    head[16..20].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = header_crc(salt, &head[0..20]);
    head[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// The salted checksum of a batch header's first 20 bytes.
fn header_crc(salt: u32, fields: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), fields)
}

/// Why the batch at some offset is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadBatch {
    /// The file ends inside the header or the body.
    Short,
    /// The header's own checksum does not match.
    Header,
    /// The body's checksum does not match.
    Body,
    /// A record frame inside the body is malformed.
    Record,
}

impl BadBatch {
    /// Words for an error message.
    pub(super) fn describe(self) -> &'static str {
        match self {
            BadBatch::Short => "a batch is cut short",
            BadBatch::Header => "a batch header checksum mismatch",
            BadBatch::Body => "a batch body checksum mismatch",
            BadBatch::Record => "a malformed record frame",
        }
    }
}

/// A valid batch found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Batch {
    /// Its header.
    pub(super) header: BatchHeader,
    /// Where its body lies in the file's bytes.
    pub(super) body: Range<usize>,
}

impl Batch {
    /// The offset just past this batch.
    pub(super) fn end(&self) -> usize {
        self.body.end
    }
}

/// Decodes and checks the batch starting at `at` in `bytes`, including
/// every record frame in it.
pub(super) fn read_batch(bytes: &[u8], at: usize, salt: u32) -> Result<Batch, BadBatch> {
    let header = check_batch_header(bytes, at, salt)?;
    let body = at + BATCH_HEADER_LEN..at + BATCH_HEADER_LEN + header.body_len as usize;
    if crc32c::crc32c(&bytes[body.clone()]) != read_u32(bytes, at + 16) {
        return Err(BadBatch::Body);
    }
    let records = count_records(&bytes[body.clone()]).ok_or(BadBatch::Record)?;
    let count_ok = if header.count == SEAL_COUNT {
        records == 0
    } else {
        records == u64::from(header.count)
    };
    if !count_ok {
        return Err(BadBatch::Record);
    }
    Ok(Batch { header, body })
}

/// Checks only the header of the batch at `at` (and that its body fits):
/// cheap enough to try at every byte offset when scanning past damage.
fn check_batch_header(bytes: &[u8], at: usize, salt: u32) -> Result<BatchHeader, BadBatch> {
    let Some(head) = bytes.get(at..at + BATCH_HEADER_LEN) else {
        return Err(BadBatch::Short);
    };
    let body_len = read_u32(head, 0);
    if header_crc(salt, &head[0..20]) != read_u32(head, 20) {
        return Err(BadBatch::Header);
    }
    if body_len as usize > MAX_BATCH_BODY || bytes.len() - at - BATCH_HEADER_LEN < body_len as usize
    {
        return Err(BadBatch::Short);
    }
    Ok(BatchHeader {
        body_len,
        count: read_u32(head, 4),
        clock: read_u64(head, 8),
    })
}

/// Whether any valid batch starts anywhere in `bytes[from..]`: tells a torn
/// final write (nothing valid after it) from damage in the middle.
pub(super) fn valid_batch_after(bytes: &[u8], from: usize, salt: u32) -> Option<usize> {
    let last = bytes.len().checked_sub(BATCH_HEADER_LEN)?;
    (from..=last).find(|&at| read_batch(bytes, at, salt).is_ok())
}

/// Counts the record frames of a batch body, checking each one's CRC; `None`
/// if any is malformed.
fn count_records(mut body: &[u8]) -> Option<u64> {
    let mut count = 0;
    while !body.is_empty() {
        let (payload, rest) = split_record(body)?;
        if record_crc(payload) != read_u32(body, 4) {
            return None;
        }
        body = rest;
        count += 1;
    }
    Some(count)
}

/// Splits the first record frame off a checked batch body: its payload and
/// the rest of the body.
pub(super) fn split_record(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = read_u32(body.get(..RECORD_HEADER_LEN)?, 0) as usize;
    let rest = &body[RECORD_HEADER_LEN..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Reads a little-endian `u32` at `at`; the caller has checked the bounds.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Reads a little-endian `u64` at `at`; the caller has checked the bounds.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

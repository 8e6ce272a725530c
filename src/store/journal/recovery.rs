//! Opening a data directory: the newest usable snapshot, then every segment
//! after it, checked batch by batch.
//!
//! Only the last segment's final write can be torn: the writer starts a
//! batch only after the previous one was synced, and starts a segment only
//! after the previous one's last batch was. So damage with nothing valid
//! after it, in the last segment, is a torn tail (dropped and reported),
//! and any other damage is corruption, which refuses to open until the
//! operator chooses to truncate there.

use std::fs::{self, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::frame::{
    decode_file_header, read_batch, split_record, valid_batch_after, BadBatch, FileKind,
    FILE_HEADER_LEN, SEAL_COUNT,
};
use super::segment::{self, file_name, remove_all, Listing, NewFile};
use super::writer::ActiveSegment;
use super::{JournalError, TornTail, TruncateAt, Truncation};
use crate::clock::Millis;

/// What `open` read back: the snapshot's records, then the journal's.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The files' bytes, snapshot first, in order.
    files: Vec<Vec<u8>>,
    /// Every checked batch body: which file, which bytes.
    bodies: Vec<(usize, Range<usize>)>,
    /// How many records [`Recovered::records`] yields.
    count: u64,
    /// The snapshot recovery started from, if any.
    snapshot: Option<PathBuf>,
    /// The torn final write that was dropped, if any: for the store to log.
    torn_tail: Option<TornTail>,
    /// What the truncate option removed, if it was given.
    truncation: Option<Truncation>,
    /// The newest time the store recorded, if it ever did.
    newest_time: Option<Millis>,
}

impl Recovered {
    /// The records, in order: the snapshot's, then every journal record
    /// after it. Borrowed from the files read, so none is copied.
    pub fn records(&self) -> Records<'_> {
        Records {
            recovered: self,
            next_body: 0,
            end_body: self.bodies.len(),
            rest: &[],
        }
    }

    /// The snapshot's records, then the journal's after it, apart: a
    /// journal record may repeat a change the snapshot already holds, and
    /// the store must know which records came after the boundary.
    pub fn split(&self) -> (Records<'_>, Records<'_>) {
        let boundary = if self.snapshot.is_some() {
            self.bodies.partition_point(|(file, _)| *file == 0)
        } else {
            0
        };
        let part = |next_body, end_body| Records {
            recovered: self,
            next_body,
            end_body,
            rest: &[],
        };
        (part(0, boundary), part(boundary, self.bodies.len()))
    }

    /// How many records [`Recovered::records`] yields.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether there is no record at all (a fresh directory).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The snapshot file recovery started from, if any.
    pub fn snapshot(&self) -> Option<&Path> {
        self.snapshot.as_deref()
    }

    /// The torn final write that was dropped, if any; the store logs it.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// What the truncate option removed, if it was given; the store logs it.
    pub fn truncation(&self) -> Option<&Truncation> {
        self.truncation.as_ref()
    }

    /// The newest time recorded with [`super::Journal::record_time`] that
    /// was made durable, if any: the store's clock must not start before it.
    pub fn newest_time(&self) -> Option<Millis> {
        self.newest_time
    }
}

/// The recovered records, in order; see [`Recovered::records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    /// Where the bytes are.
    recovered: &'a Recovered,
    /// The next batch body to read.
    next_body: usize,
    /// The batch body to stop at.
    end_body: usize,
    /// What is left of the current body.
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some((payload, rest)) = split_record(self.rest) {
                self.rest = rest;
                return Some(payload);
            }
            if self.next_body >= self.end_body {
                return None;
            }
            let (file, range) = self.recovered.bodies.get(self.next_body)?;
            self.next_body += 1;
            self.rest = &self.recovered.files[*file][range.clone()];
        }
    }
}

/// A directory opened: what it held, and the segment to append to.
#[derive(Debug)]
pub(super) struct Opened {
    /// What was read back.
    pub(super) recovered: Recovered,
    /// The last segment, open for appending at its valid end.
    pub(super) segment: ActiveSegment,
    /// Bytes in the segments after the snapshot.
    pub(super) live_bytes: u64,
}

/// Damage found in one file.
#[derive(Debug)]
struct Damage {
    /// Byte offset of the first bad batch (or 0 for a bad header).
    offset: u64,
    /// What is wrong there.
    reason: &'static str,
}

/// A file read and checked up to its first damage.
struct Scanned {
    /// The whole file.
    bytes: Vec<u8>,
    /// Its header's salt.
    salt: u32,
    /// Its valid batches' bodies, in order, and their record counts.
    bodies: Vec<Range<usize>>,
    /// Records in those bodies.
    count: u64,
    /// The newest clock in its batch headers.
    clock: u64,
    /// Where the valid batches end.
    valid_end: usize,
    /// The first invalid batch, if the file does not end at `valid_end`.
    bad: Option<BadBatch>,
    /// Whether the last valid batch was a snapshot's seal.
    sealed: bool,
}

/// Reads `path` and checks its header and batches.
fn scan(path: &Path, kind: FileKind, seq: u64) -> Result<Result<Scanned, Damage>, JournalError> {
    let bytes = fs::read(path).map_err(|e| JournalError::io("read", path, e))?;
    let header = match decode_file_header(kind, &bytes) {
        Ok(header) if header.seq == seq => header,
        Ok(_) => {
            return Ok(Err(Damage {
                offset: 0,
                reason: "file header names another file",
            }))
        }
        Err(reason) => return Ok(Err(Damage { offset: 0, reason })),
    };
    let mut scanned = Scanned {
        bytes,
        salt: header.salt,
        bodies: Vec::new(),
        count: 0,
        clock: 0,
        valid_end: FILE_HEADER_LEN,
        bad: None,
        sealed: false,
    };
    while scanned.valid_end < scanned.bytes.len() {
        if scanned.sealed {
            scanned.bad = Some(BadBatch::Record);
            break;
        }
        match read_batch(&scanned.bytes, scanned.valid_end, scanned.salt) {
            Ok(batch) => {
                scanned.clock = scanned.clock.max(batch.header.clock);
                scanned.valid_end = batch.end();
                if batch.header.count == SEAL_COUNT {
                    scanned.sealed = true;
                } else if batch.header.count > 0 {
                    scanned.count += u64::from(batch.header.count);
                    scanned.bodies.push(batch.body);
                }
            }
            Err(bad) => {
                scanned.bad = Some(bad);
                break;
            }
        }
    }
    Ok(Ok(scanned))
}

/// Opens `dir`: applies `truncate_at` if given, picks the newest usable
/// snapshot, replays the segments after it and drops a torn tail.
pub(super) fn recover(
    dir: &Path,
    truncate_at: Option<&TruncateAt>,
) -> Result<Opened, JournalError> {
    let mut listing = segment::list(dir)?;
    let mut recovered = Recovered::default();
    if let Some(at) = truncate_at {
        recovered.truncation = Some(truncate(dir, &mut listing, at)?);
    }
    let (base, snapshot) = choose_snapshot(dir, &listing)?;
    let mut clock = 0;
    if let Some((path, scanned)) = snapshot {
        clock = scanned.clock;
        recovered.count += scanned.count;
        recovered.snapshot = Some(path);
        push_file(&mut recovered, scanned.bytes, scanned.bodies);
    }

    // Covered by the snapshot: left by a crash before compaction removed them.
    let stale_segments: Vec<PathBuf> = if recovered.snapshot.is_some() {
        listing
            .segments
            .range(..base)
            .map(|(_, p)| p.clone())
            .collect()
    } else {
        Vec::new()
    };
    let stale_snapshots: Vec<PathBuf> = listing
        .snapshots
        .range(..base)
        .map(|(_, p)| p.clone())
        .collect();
    let live: Vec<(u64, PathBuf)> = listing
        .segments
        .range(base..)
        .map(|(s, p)| (*s, p.clone()))
        .collect();

    let mut live_bytes = 0;
    let mut last = None;
    for (index, (seq, path)) in live.iter().enumerate() {
        let is_last = index + 1 == live.len();
        let scanned = match scan(path, FileKind::Segment, *seq)? {
            Ok(scanned) => scanned,
            Err(damage) if is_last && damage.offset == 0 && fs_len(path)? == 0 => {
                // Emptied by the truncate option: start it again.
                last = Some(fresh_segment(dir, *seq)?);
                live_bytes += FILE_HEADER_LEN as u64;
                continue;
            }
            Err(damage) => return Err(corrupt_segment(path, damage)),
        };
        let mut scanned = scanned;
        if let Some(bad) = scanned.bad {
            let damage = Damage {
                offset: scanned.valid_end as u64,
                reason: bad.describe(),
            };
            let valid_after =
                valid_batch_after(&scanned.bytes, scanned.valid_end + 1, scanned.salt);
            if !is_last || valid_after.is_some() {
                return Err(corrupt_segment(path, damage));
            }
            recovered.torn_tail = Some(TornTail {
                file: path.clone(),
                offset: damage.offset,
                bytes_dropped: (scanned.bytes.len() - scanned.valid_end) as u64,
            });
            truncate_file(path, damage.offset)?;
            scanned.bytes.truncate(scanned.valid_end);
        }
        clock = clock.max(scanned.clock);
        recovered.count += scanned.count;
        live_bytes += scanned.valid_end as u64;
        if is_last {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| JournalError::io("open", path, e))?;
            last = Some(ActiveSegment {
                file,
                path: path.clone(),
                seq: *seq,
                salt: scanned.salt,
                len: scanned.valid_end as u64,
            });
        }
        push_file(&mut recovered, scanned.bytes, scanned.bodies);
    }
    let segment = match last {
        Some(segment) => segment,
        None => {
            live_bytes += FILE_HEADER_LEN as u64;
            fresh_segment(dir, base)?
        }
    };
    remove_all(dir, stale_segments.iter().chain(&stale_snapshots))?;
    recovered.newest_time = (clock > 0).then_some(clock);
    Ok(Opened {
        recovered,
        segment,
        live_bytes,
    })
}

/// Adds a file's checked bodies to what recovery yields.
fn push_file(recovered: &mut Recovered, bytes: Vec<u8>, bodies: Vec<Range<usize>>) {
    let index = recovered.files.len();
    recovered
        .bodies
        .extend(bodies.into_iter().map(|body| (index, body)));
    recovered.files.push(bytes);
}

/// The first segment to replay, and the snapshot that covers those before
/// it: the newest snapshot that is sealed and whose segments are all there,
/// else the first segment of a journal never compacted.
fn choose_snapshot(
    dir: &Path,
    listing: &Listing,
) -> Result<(u64, Option<(PathBuf, Scanned)>), JournalError> {
    let mut newest_problem = None;
    for (&seq, path) in listing.snapshots.iter().rev() {
        let problem = match scan(path, FileKind::Snapshot, seq)? {
            Ok(scanned) if scanned.sealed && scanned.bad.is_none() => {
                match chain_gap(dir, listing, seq, true) {
                    None => return Ok((seq, Some((path.clone(), scanned)))),
                    Some(missing) => JournalError::MissingSegment { path: missing },
                }
            }
            Ok(scanned) => JournalError::CorruptSnapshot {
                path: path.clone(),
                offset: scanned.valid_end as u64,
                reason: scanned
                    .bad
                    .map_or("the snapshot is not sealed", BadBatch::describe),
            },
            Err(damage) => JournalError::CorruptSnapshot {
                path: path.clone(),
                offset: damage.offset,
                reason: damage.reason,
            },
        };
        newest_problem.get_or_insert(problem);
    }
    if let Some(problem) = newest_problem {
        return Err(problem);
    }
    match chain_gap(dir, listing, 1, false) {
        None => Ok((1, None)),
        Some(missing) => Err(JournalError::MissingSegment { path: missing }),
    }
}

/// The first missing segment among `base..=last`, if any. After a
/// snapshot its first segment must be there: the writer started it before
/// the snapshot was written.
fn chain_gap(dir: &Path, listing: &Listing, base: u64, after_snapshot: bool) -> Option<PathBuf> {
    let mut expected = base;
    for &seq in listing.segments.range(base..).map(|(seq, _)| seq) {
        if seq != expected {
            break;
        }
        expected += 1;
    }
    let complete = listing.segments.range(expected..).next().is_none();
    (!complete || (after_snapshot && expected == base))
        .then(|| dir.join(file_name(FileKind::Segment, expected)))
}

/// Creates segment `seq`, empty.
fn fresh_segment(dir: &Path, seq: u64) -> Result<ActiveSegment, JournalError> {
    let salt = rand::random();
    let (file, path) = NewFile::create(dir, FileKind::Segment, seq, salt)?.install(dir)?;
    Ok(ActiveSegment {
        file,
        path,
        seq,
        salt,
        len: FILE_HEADER_LEN as u64,
    })
}

/// Applies the truncate option: cuts the named segment at the offset and
/// removes every segment after it.
fn truncate(
    dir: &Path,
    listing: &mut Listing,
    at: &TruncateAt,
) -> Result<Truncation, JournalError> {
    let Some((&seq, path)) = listing
        .segments
        .iter()
        .find(|(_, path)| path.file_name().is_some_and(|n| n == at.file.as_str()))
    else {
        return Err(JournalError::NoSuchSegment {
            dir: dir.to_path_buf(),
            file: at.file.clone(),
        });
    };
    let path = path.clone();
    let len = fs_len(&path)?;
    let mut bytes_dropped = len.saturating_sub(at.offset);
    let later: Vec<PathBuf> = listing
        .segments
        .range(seq + 1..)
        .map(|(_, p)| p.clone())
        .collect();
    for later_path in &later {
        bytes_dropped += fs_len(later_path)?;
    }
    if at.offset < len {
        truncate_file(
            &path,
            if at.offset < FILE_HEADER_LEN as u64 {
                0
            } else {
                at.offset
            },
        )?;
    }
    let segments_removed = remove_all(dir, &later)?;
    listing.segments.retain(|&s, _| s <= seq);
    Ok(Truncation {
        file: path,
        offset: at.offset,
        bytes_dropped,
        segments_removed,
    })
}

/// Cuts `path` at `offset` and makes that durable.
fn truncate_file(path: &Path, offset: u64) -> Result<(), JournalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(offset).and_then(|()| f.sync_all()))
        .map_err(|e| JournalError::io("truncate", path, e))
}

/// The length of `path`.
fn fs_len(path: &Path) -> Result<u64, JournalError> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| JournalError::io("stat", path, e))
}

/// The refusal for damage in a segment, naming the truncate option.
fn corrupt_segment(path: &Path, damage: Damage) -> JournalError {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    JournalError::CorruptSegment {
        path: path.to_path_buf(),
        offset: damage.offset,
        reason: damage.reason,
        truncate: TruncateAt {
            file,
            offset: damage.offset,
        },
    }
}

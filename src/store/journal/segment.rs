//! The files of a data directory: their names, listing them, and creating
//! one so that it is either wholly there or not there at all.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::frame::{encode_file_header, FileHeader, FileKind};
use super::JournalError;

/// Suffix of a file being written, not yet renamed into place.
const TMP_SUFFIX: &str = ".tmp";

/// The file name of segment or snapshot number `seq`.
pub(super) fn file_name(kind: FileKind, seq: u64) -> String {
    match kind {
        FileKind::Segment => format!("journal-{seq:020}.log"),
        FileKind::Snapshot => format!("snapshot-{seq:020}.snap"),
    }
}

/// Reads a segment or snapshot number back out of a file name.
fn parse_name(name: &str) -> Option<(FileKind, u64)> {
    let (kind, digits) = if let Some(rest) = name.strip_prefix("journal-") {
        (FileKind::Segment, rest.strip_suffix(".log")?)
    } else {
        let rest = name.strip_prefix("snapshot-")?;
        (FileKind::Snapshot, rest.strip_suffix(".snap")?)
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, digits.parse().ok()?))
}

/// The journal's files in a directory, by number.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Segments by number.
    pub(super) segments: BTreeMap<u64, PathBuf>,
    /// Snapshots by the first segment they do not cover.
    pub(super) snapshots: BTreeMap<u64, PathBuf>,
}

/// Lists the journal's files in `dir`, removing leftovers of a file creation
/// that a crash interrupted (they were never renamed into place, so nothing
/// refers to them).
pub(super) fn list(dir: &Path) -> Result<Listing, JournalError> {
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io("list", dir, e))?;
    let mut listing = Listing::default();
    let mut removed_leftover = false;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(TMP_SUFFIX) {
            if parse_name(base).is_some() {
                fs::remove_file(entry.path())
                    .map_err(|e| JournalError::io("remove", &entry.path(), e))?;
                removed_leftover = true;
            }
            continue;
        }
        match parse_name(name) {
            Some((FileKind::Segment, seq)) => listing.segments.insert(seq, entry.path()),
            Some((FileKind::Snapshot, seq)) => listing.snapshots.insert(seq, entry.path()),
            None => None,
        };
    }
    if removed_leftover {
        sync_dir(dir)?;
    }
    Ok(listing)
}

/// Makes the directory's entries (a create, rename or delete) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("fsync the directory", dir, e))
}

/// A file being written under its temporary name; [`NewFile::install`]
/// makes it durable and renames it into place.
#[derive(Debug)]
pub(super) struct NewFile {
    /// The open file, positioned after its header.
    pub(super) file: File,
    /// Its temporary path.
    tmp: PathBuf,
    /// The path it will have.
    pub(super) path: PathBuf,
}

impl NewFile {
    /// Creates `dir`'s file of `kind` number `seq` under a temporary name
    /// and writes its header.
    pub(super) fn create(
        dir: &Path,
        kind: FileKind,
        seq: u64,
        salt: u32,
    ) -> Result<NewFile, JournalError> {
        let path = dir.join(file_name(kind, seq));
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| JournalError::io("create", &tmp, e))?;
        file.write_all(&encode_file_header(kind, FileHeader { seq, salt }))
            .map_err(|e| remove_after(&tmp, JournalError::io("write", &tmp, e)))?;
        Ok(NewFile { file, tmp, path })
    }

    /// Flushes the file, renames it into place and makes the rename
    /// durable; on failure the temporary file is removed.
    pub(super) fn install(self, dir: &Path) -> Result<(File, PathBuf), JournalError> {
        let NewFile { file, tmp, path } = self;
        file.sync_all()
            .map_err(|e| remove_after(&tmp, JournalError::io("fsync", &tmp, e)))?;
        fs::rename(&tmp, &path)
            .map_err(|e| remove_after(&tmp, JournalError::io("rename into place", &tmp, e)))?;
        sync_dir(dir)?;
        Ok((file, path))
    }

    /// Gives up on the file.
    pub(super) fn abandon(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Removes a half-made temporary file, passing `error` through.
fn remove_after(tmp: &Path, error: JournalError) -> JournalError {
    let _ = fs::remove_file(tmp);
    error
}

/// Removes files no longer needed, then makes the removals durable.
pub(super) fn remove_all<'a>(
    dir: &Path,
    paths: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<u64, JournalError> {
    let mut removed = 0;
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(JournalError::io("remove", path, e)),
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

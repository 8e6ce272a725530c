//! One process per data directory: an `flock` on a lock file.
//!
//! `flock` rather than a PID file because the kernel drops the lock when the
//! holder's file description closes, so a `kill -9` never leaves a stale
//! lock to clean up by hand. The holder writes its PID into the file, only
//! so that a second opener can name it in its error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::JournalError;

/// The lock file's name inside the data directory.
pub(super) const LOCK_FILE: &str = "LOCK";

/// Holds the directory's lock until dropped (or the process dies).
#[derive(Debug)]
pub(super) struct DirLock {
    /// Kept open: closing it releases the lock.
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir` without waiting, or says who holds it.
    pub(super) fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |action, source| JournalError::io(action, &path, source);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open the lock file", e))?;
        // SAFETY: flock takes a file descriptor we own and an operation; it
        // touches no memory of ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(JournalError::Locked {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            return Err(io_error("lock", error));
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|e| io_error("write the lock holder into", e))?;
        Ok(DirLock { _file: file })
    }
}

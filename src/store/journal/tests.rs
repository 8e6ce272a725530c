//! The journal against real files in temporary directories.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// Test hook: makes the next segment writes or syncs fail, as a full or
/// failing disk would.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Writes still to fail.
    writes: AtomicU32,
    /// Syncs still to fail.
    syncs: AtomicU32,
}

impl Faults {
    /// Fails the next `n` writes with `EIO`.
    pub(super) fn fail_writes(&self, n: u32) {
        self.writes.store(n, Ordering::SeqCst);
    }

    /// Fails the next `n` syncs with `EIO`.
    pub(super) fn fail_syncs(&self, n: u32) {
        self.syncs.store(n, Ordering::SeqCst);
    }

    /// Called before each segment write.
    pub(super) fn before_write(&self) -> io::Result<()> {
        take(&self.writes)
    }

    /// Called before each segment sync.
    pub(super) fn before_sync(&self) -> io::Result<()> {
        take(&self.syncs)
    }
}

/// Fails once if `counter` is positive, counting it down.
fn take(counter: &AtomicU32) -> io::Result<()> {
    let failed = counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failed {
        Err(io::Error::from_raw_os_error(libc::EIO))
    } else {
        Ok(())
    }
}

//! Restoring a backup of a data directory.
//!
//! A backup is a copy of the data directory's files, taken with the server
//! stopped, from a file-system snapshot, or while it runs (a copy that ends
//! in a torn write is fine: the torn tail is dropped; one that catches a
//! compaction midway is refused as a missing segment: take it again).
//!
//! A backup knows nothing of what was revoked after it was taken, so a
//! restore must not bring back anything it holds as live: it revokes every
//! credential of the backup (RevokeAll, cause `all`) before any server can
//! open the directory. Tombstones keep their reasons, agents see
//! `TOKEN_REVOKED` with cause `all` and mint again, and no credential
//! revoked after the backup can work again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DurableOptions, OpenError};
use crate::clock::Clock;
use crate::store::{RevokeAllTarget, Store, StoreConfig};

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Files copied from the backup.
    pub files: u64,
    /// Credentials of the backup that were live and are now revoked.
    pub revoked: u64,
}

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target holds files already: a restore never overwrites data.
    #[error("data directory {} is not empty; restore into a new directory", .0.display())]
    NotEmpty(PathBuf),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The copied directory does not open.
    #[error("{0}")]
    Open(#[from] OpenError),
    /// The revocation could not be made durable.
    #[error("the restored directory could not be written: {0}")]
    Write(crate::store::Rejection),
}

/// Copies the backup in `backup` into the empty or missing
/// `options.dir`, opens it and revokes everything it holds, durably.
pub fn restore_backup(
    backup: &Path,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    options: DurableOptions,
) -> Result<Restored, RestoreError> {
    let target = options.dir.clone();
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io {
            action,
            path,
            source,
        }
    };
    if target.exists()
        && std::fs::read_dir(&target)
            .map_err(io("read", &target))?
            .next()
            .is_some()
    {
        return Err(RestoreError::NotEmpty(target));
    }
    super::create_private_dir(&target).map_err(|e| RestoreError::Open(e.into()))?;
    let mut files = 0;
    for entry in std::fs::read_dir(backup).map_err(io("read", backup))? {
        let entry = entry.map_err(io("read", backup))?;
        let name = entry.file_name();
        let from = entry.path();
        // The lock belongs to whoever holds the directory, never copied.
        if name == "LOCK" || !entry.file_type().map_err(io("read", &from))?.is_file() {
            continue;
        }
        let to = target.join(&name);
        std::fs::copy(&from, &to).map_err(io("copy", &from))?;
        std::fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &to))?;
        files += 1;
    }
    std::fs::File::open(&target)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", &target))?;
    let (store, _recovery) = Store::open(config, clock, options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start a runtime for", &target))?;
    let backend = crate::store::Backend::from(store.clone());
    let revoked = runtime
        .block_on(backend.revoke_all(RevokeAllTarget::Everything))
        .map_err(RestoreError::Write)?;
    runtime
        .block_on(store.close())
        .map_err(RestoreError::Write)?;
    Ok(Restored { files, revoked })
}

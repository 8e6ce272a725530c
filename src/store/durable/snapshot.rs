//! A snapshot of the store's state, written on the compaction thread while
//! calls go on: the revocation epoch and scopes first (records are counted
//! against them), then every thread's records oldest first (so the lists
//! come back in order), then the tombstones, oldest first (so their
//! eviction order comes back too).
//!
//! Each thread shard is read under its lock into a buffer and written after
//! the lock is let go, so a Mint or revocation of a thread waits at most for
//! one shard's copy, never for the disk.

use std::io;

use super::super::journal::SnapshotWriter;
use super::super::Shared;
use super::event::Writer;
use super::write_record;

/// Writes `shared`'s state to `snapshot`.
pub(super) fn write(shared: &Shared, snapshot: &mut SnapshotWriter<'_>) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut emit = |snapshot: &mut SnapshotWriter<'_>, write: &dyn Fn(&mut Writer<'_>)| {
        buf.clear();
        write(&mut Writer(&mut buf));
        snapshot.record(&buf)
    };
    let revocations = &shared.revocations;
    let epoch = revocations.epoch();
    emit(snapshot, &|w| w.epoch(epoch))?;
    for state in revocations.scope_states() {
        emit(snapshot, &|w| {
            w.scope_history(&state.name, state.claims, &state.history)
        })?;
    }
    let pending = shared.durable.as_ref().map(|d| &d.pending_replacements);
    for thread_shard in shared.threads.iter() {
        let mut records: Vec<Vec<u8>> = Vec::new();
        {
            let threads = thread_shard.read();
            for head in threads.heads.iter() {
                for handle in shared.chain(head.newest).into_iter().rev() {
                    shared.with_record(handle, |record| {
                        let replaced = if record.visible() {
                            Vec::new()
                        } else {
                            pending
                                .and_then(|p| p.lock().get(&record.credential_id).cloned())
                                .unwrap_or_default()
                        };
                        let mut one = Vec::with_capacity(192);
                        write_record(&mut Writer(&mut one), record, &replaced);
                        records.push(one);
                    });
                }
            }
        }
        for record in &records {
            snapshot.record(record)?;
        }
    }
    for (digest, recorded_at, dead) in shared.tombstones.snapshot() {
        emit(snapshot, &|w| w.tombstone(&digest, recorded_at, &dead))?;
    }
    for (thread_id, death) in shared.thread_tombstones.snapshot() {
        emit(snapshot, &|w| {
            w.thread_death(&thread_id, death.created_at, death.recorded_at, &death.dead)
        })?;
    }
    Ok(())
}

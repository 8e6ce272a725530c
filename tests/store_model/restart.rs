//! Restarts of the durable store: the store side (stop, reopen), and the
//! checks that the reopened store holds what the model says a restart
//! keeps ([`Model::restart`]).

use std::path::Path;

use credential_authority::store::{DurableOptions, Recovery};

use crate::*;

/// A durable run's data directory, on tmpfs where there is one (every Mint
/// and revocation waits for an fsync, which tmpfs makes free), and the
/// runtime the store's async calls (close, sync) run on.
pub(crate) struct DataDir {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl DataDir {
    /// A fresh, empty data directory.
    pub(crate) fn new() -> Self {
        DataDir {
            dir: scratch_dir(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime"),
        }
    }

    /// Opens the store on this directory, running on `clock`.
    pub(crate) fn open(&self, config: &StoreConfig, clock: &FakeClock) -> (Store, Recovery) {
        let dir = self.dir.path();
        Store::open(
            config.clone(),
            Arc::new(clock.clone()),
            DurableOptions::new(dir),
        )
        .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
    }
}

/// A new temporary directory on `/dev/shm` if it is there and writable,
/// else in the system's temporary directory.
fn scratch_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("store-model-");
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder
        .tempdir_in(std::env::temp_dir())
        .expect("a temporary directory")
}

/// The store side of a restart: stops `store` cleanly ([`Store::close`]:
/// the latest uses and the time, durable, and a clean stop's record) or as
/// a crash right after the checkpointer's round
/// ([`Store::checkpoint_renewals`], then [`Store::sync`], so that the time
/// is durable even when nothing was used), and lets it go without closing.
/// The caller then opens the directory again, on the same clock. Returns
/// whether the crash's checkpoint journaled a renewal.
fn stop(store: Store, data: &DataDir, crash: bool) -> Result<bool, Rejection> {
    let mut renewed = false;
    if crash {
        renewed = store.checkpoint_renewals()? > 0;
        data.runtime.block_on(store.sync())?;
    } else {
        data.runtime.block_on(store.close())?;
    }
    drop(store);
    Ok(renewed)
}

impl Run<'_> {
    /// Whether a restart may be drawn now: never after a full thread's
    /// Mint removed a record, while the store does not journal that
    /// removal ([`KNOWN_BUG_FULL_THREAD_CLEANUP_NOT_JOURNALED`]).
    pub(crate) fn restart_allowed(&self) -> bool {
        !KNOWN_BUG_FULL_THREAD_CLEANUP_NOT_JOURNALED || self.model.unjournaled_removals == 0
    }

    /// A restart, clean or a crash: stops the store, opens its data
    /// directory again, and compares what it holds with the model's
    /// [`Model::restart`] without renewing anything: every held
    /// credential's deadlines to the millisecond ([`Run::walk_deadlines`]),
    /// every credential's and every thread's answer
    /// ([`Run::compare_without_renewal`]); [`Run::run`] then checks the
    /// counts. Catches, in the answers that name the credential and the
    /// model's state: a field or a last use not restored; a clean stop
    /// without a final checkpoint (every use since the last one lost: a
    /// renewed credential dies early); the crash bound not applied (a
    /// credential used just before a crash dies early) or applied to a
    /// dead credential (revived) or after a clean stop; tombstones or
    /// thread tombstones not persisted (Resolve answers unknown), or
    /// persisted with another reason or cause; RevokeThread's and
    /// RevokeCredential's revocations not journaled (revived);
    /// RevokeAll's stamps not journaled or replayed at a new epoch (its
    /// victims revived, or the credentials minted after it revoked);
    /// budgets, quota counts and queued deadlines not rebuilt; a downtime
    /// grace given though the clock did not move.
    pub(crate) fn restart(&mut self, crash: bool) {
        let now = self.now();
        let placeholder = Store::new(self.case.config.clone(), Arc::new(self.clock.clone()));
        let store = std::mem::replace(&mut self.store, placeholder);
        let data = self.data.as_ref().expect("restarts run on a durable store");
        match stop(store, data, crash) {
            Ok(renewed) => self.journal_ends_clean &= !renewed,
            Err(e) => panic!("{}: stopping the store: {e:?}", self.context),
        }
        let (store, recovery) = data.open(&self.case.config, &self.clock);
        self.store = store;
        // Replay applies the crash bound unless the journal ends with a
        // clean stop's record; every open journals a start, so after one
        // the journal never ends clean until the next clean stop.
        let bound = crash && !self.journal_ends_clean;
        self.journal_ends_clean = false;
        self.model.restart(bound, now);
        self.check_recovery(&recovery, now);
        self.store.check_invariants().expect(&self.context);
        self.walk_deadlines(now);
        self.compare_without_renewal();
        if bound && KNOWN_BUG_CRASH_BOUND_NOT_JOURNALED {
            self.journal_the_crash_bound(now);
        }
        if crash {
            self.coverage.crash_restarts += 1;
        } else {
            self.coverage.clean_restarts += 1;
        }
    }

    /// What opening reports: the clock where it was (nothing to catch up
    /// on, no downtime to forgive), no snapshot and no torn write (none was
    /// made), and every record the model holds read back. Catches a
    /// restart that loses or invents records, and a newest time written
    /// ahead of the clock.
    fn check_recovery(&self, recovery: &Recovery, now: Millis) {
        let ctx = &self.context;
        assert_eq!(self.now(), now, "{ctx}: the clock after the restart");
        assert_eq!(
            (recovery.clock_behind, recovery.downtime),
            (Duration::ZERO, Duration::ZERO),
            "{ctx}: the clock did not move across the restart"
        );
        assert!(
            !recovery.from_snapshot
                && recovery.torn_tail.is_none()
                && recovery.truncation.is_none(),
            "{ctx}: {recovery:?}"
        );
        assert_eq!(
            recovery.credentials,
            self.model.held.len() as u64,
            "{ctx}: records read back; the model's:{}",
            self.describe_held(|_| true)
        );
    }

    /// Every held credential's deadlines, read without changing anything:
    /// a Resolve that asks for a scope no Mint grants answers a live
    /// credential with a scope refusal (no renewal, no mark for the next
    /// checkpoint, nothing journaled), a dead one with its reason. The
    /// clock walks through every held credential's idle deadline in order,
    /// and one millisecond before it the credential must be live, at it
    /// dead for the model's reason; then it goes back to `now`, where the
    /// run goes on. So every restored last use, lifetime and revocation is
    /// checked to the millisecond, right after the restart. Catches a last
    /// use restored off by any amount either way (a clean stop that skips
    /// its final checkpoint, the crash bound not applied or applied to a
    /// clean stop, a renewal checkpointed short) and a revocation restored
    /// at another instant.
    fn walk_deadlines(&self, now: Millis) {
        let mut checks: Vec<(Millis, usize)> = Vec::new();
        for &i in &self.model.held {
            let c = &self.model.creds[i];
            if c.live(now) {
                let deadline = c.deadlines().idle_expires_at;
                checks.extend([(deadline - 1, i), (deadline, i)]);
            } else {
                checks.push((now, i));
            }
        }
        checks.sort_unstable();
        for (at, i) in checks {
            self.clock.set(at);
            let c = &self.model.creds[i];
            let got = self.store.resolve(&c.digest, Some(UNGRANTED_SCOPE));
            let want = c.death(at);
            let agrees = match (&got, want) {
                (Err(Rejection::ScopeMissing { credential_id, .. }), None) => {
                    *credential_id == c.id
                }
                (Err(Rejection::Dead(dead)), Some(reason)) => {
                    (dead.reason, dead.credential_id) == (reason, c.id)
                }
                _ => false,
            };
            assert!(
                agrees,
                "{}: the restarted store read at +{} ms without renewal: got {got:?}, \
                 the model says {want:?}; {}",
                self.context,
                at - START,
                c.describe(at)
            );
        }
        self.clock.set(now);
    }

    /// Every credential the model knows, answered by the reopened store
    /// without renewal: each Resolve asks for a scope no Mint grants (the
    /// model's Resolve check then accepts only the scope refusal for a
    /// live credential, the reason for a dead one, the tombstone or
    /// nothing for a removed one); and every thread through Touch, for
    /// each caller that has nothing live on it to renew (so Touch answers
    /// from the held dead records and the thread tombstones). The answers
    /// are checked as in any step, but they are not counted in the
    /// coverage, and the focus stays where it was.
    fn compare_without_renewal(&mut self) {
        let (coverage, focus) = (self.coverage, self.focus);
        for cred in 0..self.model.creds.len() {
            self.resolve(cred, Some(UNGRANTED_SCOPE));
        }
        let now = self.now();
        for thread in 0..THREADS {
            for actor in 0..ACTORS.len() {
                let renews = self
                    .model
                    .held()
                    .any(|c| c.thread == thread && c.within(actor) && c.live(now));
                if !renews {
                    self.touch_thread(actor, thread);
                }
            }
        }
        (self.coverage, self.focus) = (coverage, focus);
    }

    /// Resolves every credential the crash bound counted as used at `now`
    /// (every live one), which the model already counts as used then: the
    /// use changes nothing but its mark for the next checkpoint, which so
    /// journals the bound ([`KNOWN_BUG_CRASH_BOUND_NOT_JOURNALED`]). Not
    /// counted in the coverage.
    fn journal_the_crash_bound(&mut self, now: Millis) {
        let (coverage, focus) = (self.coverage, self.focus);
        let live: Vec<usize> = self
            .model
            .held
            .iter()
            .copied()
            .filter(|&i| self.model.creds[i].live(now))
            .collect();
        for cred in live {
            self.resolve(cred, None);
        }
        (self.coverage, self.focus) = (coverage, focus);
    }
}

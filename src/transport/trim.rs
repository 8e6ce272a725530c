//! Giving a burst's memory back once its connections are gone.
//!
//! mimalloc returns freed pages to the kernel only on later allocation
//! activity in the same thread's heap, and a block freed by another thread
//! waits for its owner. A server that goes quiet after a burst of
//! connections (2,000 that never sent a preface, say) therefore kept most
//! of their ~30 MiB resident however long it stayed idle. So the accept
//! side counts the open connections, and when the count has fallen well
//! below its peak the connection loop asks every runtime thread to release
//! its free memory ([`crate::allocator::release_free_memory`]).
//!
//! A trim walks every page of a thread's heap and blocks each worker for a
//! moment, so it is kept off the normal path: only a fall of at least
//! [`MIN_FALL`] connections to half the peak or less asks for one, it waits
//! until closing has paused for [`QUIET`] (at most [`MAX_WAIT`]), and two
//! trims are at least [`MIN_INTERVAL`] apart. A steady churn of
//! connections never asks at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The smallest fall in open connections worth a trim: at ~15 KiB per
/// idle connection, 256 of them hold about 4 MiB.
pub(crate) const MIN_FALL: usize = 256;
/// How long closing must pause before the trim, so it runs once after the
/// last of a burst's connections is gone rather than in the middle.
pub(crate) const QUIET: Duration = Duration::from_millis(200);
/// The longest a wanted trim waits for closing to pause, so a slow
/// trickle of closes cannot postpone it for ever.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(1);
/// The least time between two trims, which bounds what trimming can cost
/// however the connection count moves.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a worker waits for the others to reach the trim; past it the
/// worker goes on, so a busy or missing worker costs at most this.
const RENDEZVOUS: Duration = Duration::from_millis(10);

/// The open connections (accepted, holding a `--max-connections` permit)
/// and the peak since the last trim, shared by the accept tasks, every
/// connection's [`Seat`] and the connection loop.
#[derive(Debug, Default)]
pub(crate) struct OpenConnections {
    /// Connections open now.
    open: AtomicUsize,
    /// The most open at once since the last trim.
    peak: AtomicUsize,
    /// Woken when a close leaves the count far enough below the peak.
    fallen: Notify,
}

impl OpenConnections {
    /// Counts a just-admitted connection; the seat uncounts it when dropped.
    pub(crate) fn opened(self: &Arc<Self>) -> Seat {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Seat(self.clone())
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Completes once connections have fallen far enough below their peak
    /// for a trim (or had, since the last call).
    pub(crate) async fn fallen(&self) {
        self.fallen.notified().await;
    }

    /// Starts a new peak from the count now; called when a trim runs, so
    /// the next one needs a new fall.
    fn reset_peak(&self) -> usize {
        let open = self.open();
        self.peak.store(open, Ordering::Relaxed);
        open
    }

    /// One connection fewer; wakes the connection loop if the count is now
    /// far enough below the peak.
    fn closed(&self) {
        let now = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        if worth_a_trim(self.peak.load(Ordering::Relaxed), now) {
            self.fallen.notify_one();
        }
    }
}

/// Whether falling from `peak` to `open` connections is worth a trim: by
/// at least [`MIN_FALL`], and to half the peak or less.
fn worth_a_trim(peak: usize, open: usize) -> bool {
    peak.saturating_sub(open) >= MIN_FALL && open <= peak / 2
}

/// One connection's place in [`OpenConnections`], held from accept until
/// the connection is dropped.
#[derive(Debug)]
pub(crate) struct Seat(Arc<OpenConnections>);

impl Drop for Seat {
    /// Uncounts the connection.
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// When the next trim is due: kept by the connection loop, fed the
/// instants of [`OpenConnections::fallen`] wake-ups.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// When the first wake-up of the pending trim came; `None` when no trim
    /// is pending.
    first: Option<Instant>,
    /// When the pending trim is due.
    due: Option<Instant>,
    /// When the last trim ran.
    last: Option<Instant>,
}

impl Schedule {
    /// A close at `now` left the count far below its peak: the trim is due
    /// [`QUIET`] from now, but no later than [`MAX_WAIT`] after the first
    /// such close, and no sooner than [`MIN_INTERVAL`] after the last trim.
    pub(crate) fn fallen(&mut self, now: Instant) {
        let first = *self.first.get_or_insert(now);
        let mut due = (now + QUIET).min(first + MAX_WAIT);
        if let Some(last) = self.last {
            due = due.max(last + MIN_INTERVAL);
        }
        self.due = Some(due);
    }

    /// When the pending trim is due, if one is.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The trim ran at `now`.
    pub(crate) fn ran(&mut self, now: Instant) {
        *self = Schedule {
            first: None,
            due: None,
            last: Some(now),
        };
    }
}

/// Releases free memory on the calling thread (the connection loop's, which
/// allocated every connection's task) and, from tasks it spawns, on every
/// worker of the runtime. Returns without waiting for the workers.
pub(crate) fn trim(open: &OpenConnections) {
    let peak = open.peak.load(Ordering::Relaxed);
    let now_open = open.reset_peak();
    tracing::debug!(
        peak,
        open = now_open,
        "connections fell back: releasing free memory"
    );
    crate::allocator::release_free_memory();
    on_every_worker(crate::allocator::release_free_memory);
}

/// Runs `f` once on each worker thread of the current runtime, without
/// waiting for it. A worker's heap can only be collected from that worker,
/// and tokio places no task on a chosen worker; so one task per worker is
/// spawned, and each, after running `f`, blocks its worker until all have
/// run (for [`RENDEZVOUS`] at most): while one blocks its worker, the next
/// must start on another. On a current-thread runtime `f` runs here.
pub(crate) fn on_every_worker(f: fn()) {
    let runtime = tokio::runtime::Handle::current();
    let workers = runtime.metrics().num_workers();
    if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread || workers <= 1 {
        f();
        return;
    }
    let arrived = Arc::new((Mutex::new(0_usize), Condvar::new()));
    for _ in 0..workers {
        let arrived = arrived.clone();
        runtime.spawn(async move {
            f();
            let (count, all_in) = &*arrived;
            let Ok(mut count) = count.lock() else { return };
            *count += 1;
            all_in.notify_all();
            // Poisoned or timed out alike: go on, the trim is best effort.
            let _ = all_in.wait_timeout_while(count, RENDEZVOUS, |n| *n < workers);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::future::Future as _;
    use std::thread::ThreadId;

    /// Catches: a trim asked for by a small dip (steady churn would trim
    /// all the time) or one never asked for after a burst is gone.
    #[test]
    fn only_a_large_fall_to_half_the_peak_asks_for_a_trim() {
        assert!(worth_a_trim(2_000, 0));
        assert!(worth_a_trim(2_000, 1_000));
        assert!(!worth_a_trim(2_000, 1_001), "above half the peak");
        assert!(!worth_a_trim(300, 100), "a fall of fewer than MIN_FALL");
        assert!(worth_a_trim(MIN_FALL, 0));
        assert!(!worth_a_trim(0, 0));
    }

    /// Whether a wake-up is waiting: polls `fallen` once, without time.
    fn woken(open: &OpenConnections) -> bool {
        let fallen = std::pin::pin!(open.fallen());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        fallen.poll(&mut cx).is_ready()
    }

    /// Catches: a gauge that does not count, a seat that does not uncount
    /// on drop, or no wake-up once the connections are gone.
    #[test]
    fn seats_count_and_a_fallen_count_wakes_the_loop() {
        let open = Arc::new(OpenConnections::default());
        let seats: Vec<Seat> = (0..MIN_FALL * 2).map(|_| open.opened()).collect();
        assert_eq!(open.open(), MIN_FALL * 2);
        assert!(!woken(&open), "woken before any connection closed");
        drop(seats);
        assert_eq!(open.open(), 0);
        assert!(woken(&open), "not woken after every connection closed");
        assert!(!woken(&open), "one wake-up stored, not one per close");
        // A trim starts a new peak: closing a few after it is no fall.
        assert_eq!(open.reset_peak(), 0);
        let few: Vec<Seat> = (0..10).map(|_| open.opened()).collect();
        drop(few);
        assert!(!woken(&open), "woken by a fall of 10 after a trim");
    }

    /// Catches: a trim in the middle of a burst of closes (no debounce),
    /// one postponed for ever by a trickle, or two trims closer than
    /// MIN_INTERVAL.
    #[test]
    fn the_trim_waits_for_quiet_within_bounds() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.due(), None);
        s.fallen(t0);
        assert_eq!(s.due(), Some(t0 + QUIET));
        // Closes keep coming every 100 ms: pushed back, up to MAX_WAIT.
        s.fallen(t0 + Duration::from_millis(100));
        assert_eq!(s.due(), Some(t0 + Duration::from_millis(100) + QUIET));
        s.fallen(t0 + Duration::from_millis(950));
        assert_eq!(s.due(), Some(t0 + MAX_WAIT));
        s.ran(t0 + MAX_WAIT);
        assert_eq!(s.due(), None);
        // The next fall right after: not before MIN_INTERVAL has passed.
        let t1 = t0 + MAX_WAIT + Duration::from_millis(10);
        s.fallen(t1);
        assert_eq!(s.due(), Some(t0 + MAX_WAIT + MIN_INTERVAL));
    }

    /// Catches: a trim that runs only on the calling thread, or twice on
    /// one worker and never on the other, leaving a worker's free pages
    /// resident.
    #[test]
    fn on_every_worker_reaches_each_worker_thread() {
        static SEEN: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());
        fn note() {
            SEEN.lock().unwrap().push(std::thread::current().id());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let workers: HashSet<ThreadId> = runtime.block_on(async {
            on_every_worker(note);
            for _ in 0..200 {
                if SEEN.lock().unwrap().len() >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            SEEN.lock().unwrap().iter().copied().collect()
        });
        assert_eq!(workers.len(), 2, "ran on {workers:?}");
        assert!(!workers.contains(&std::thread::current().id()));
    }
}

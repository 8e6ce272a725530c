//! Time, injected: the store never reads the system clock itself, so tests can
//! cover hours and days of idle timeouts and lifetimes without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(not(target_os = "linux"))]
use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the unit of every deadline in the store.
pub type Millis = u64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time in milliseconds since the Unix epoch. Never decreases.
    fn now(&self) -> Millis;

    /// The wall clock as the system tells it now, which may step (NTP, a
    /// suspended VM): what [`AnchoredClock::reanchor`] compares with. A
    /// clock without a wall of its own answers [`Clock::now`].
    fn wall(&self) -> Millis {
        self.now()
    }
}

/// How far the wall clock may run ahead of an [`AnchoredClock`] before it
/// is re-anchored forward: more than the coarse clock's jitter, less than
/// anything a deadline notices.
pub const REANCHOR_AFTER: Millis = 1_000;

/// The durable store's clock: another clock, never behind the newest time
/// the store recorded before a restart, and moved forward when the wall
/// clock runs ahead of it. It never moves backward: a wall clock set back
/// across a restart cannot make a deadline already passed come back, nor
/// let a credential outlive what it was promised.
#[derive(Debug)]
pub struct AnchoredClock {
    inner: Arc<dyn Clock>,
    /// Added to the inner clock's reading; only grows.
    offset: AtomicU64,
    /// How far behind the floor the inner clock was at start.
    behind_by: Millis,
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

impl AnchoredClock {
    /// `inner`, raised to at least `floor`.
    pub fn new(inner: Arc<dyn Clock>, floor: Millis) -> Self {
        let behind_by = floor.saturating_sub(inner.now());
        AnchoredClock {
            inner,
            offset: AtomicU64::new(behind_by),
            behind_by,
        }
    }

    /// How far the inner clock was behind the floor at start (0: it was
    /// not); the store warns when it is not 0.
    pub fn behind_by(&self) -> Millis {
        self.behind_by
    }

    /// Moves the clock forward to the wall clock when the wall runs more
    /// than [`REANCHOR_AFTER`] ahead of it; returns the jump.
    pub fn reanchor(&self) -> Option<Millis> {
        let wall = self.inner.wall();
        let now = self.now();
        if wall > now + REANCHOR_AFTER {
            let jump = wall - now;
            self.offset.fetch_add(jump, Ordering::AcqRel);
            Some(jump)
        } else {
            None
        }
    }
}

impl Clock for AnchoredClock {
    fn now(&self) -> Millis {
        self.inner.now() + self.offset.load(Ordering::Relaxed)
    }

    fn wall(&self) -> Millis {
        self.inner.wall()
    }
}

/// Wall-clock time anchored once at start and advanced by the monotonic clock,
/// so a wall-clock step (NTP, a suspended VM) cannot make deadlines jump or
/// time run backwards.
///
/// On Linux it reads the coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`,
/// the kernel's tick, 1 to 4 ms): a plain read from the vDSO page, several
/// times cheaper than the precise clock, which matters because every Resolve
/// reads the time. Deadlines are minutes to days long; a few milliseconds of
/// resolution do not change what a credential may do.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    anchor_wall: Millis,
    anchor_monotonic: Millis,
}

impl SystemClock {
    /// Anchors the clock at the current wall-clock time.
    pub fn new() -> Self {
        let anchor_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as Millis;
        SystemClock {
            anchor_wall,
            anchor_monotonic: monotonic_millis(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        self.anchor_wall + monotonic_millis().saturating_sub(self.anchor_monotonic)
    }

    fn wall(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as Millis
    }
}

/// Milliseconds of the coarse monotonic clock.
#[cfg(target_os = "linux")]
fn monotonic_millis() -> Millis {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE
    // exists on every Linux since 2.6.32, and the call cannot fail with a
    // valid clock and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as Millis * 1000 + now.tv_nsec as Millis / 1_000_000
}

/// Milliseconds of the monotonic clock since the first call.
#[cfg(not(target_os = "linux"))]
fn monotonic_millis() -> Millis {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A clock standing at `start`.
    pub fn new(start: Millis) -> Self {
        FakeClock(Arc::new(AtomicU64::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as Millis, Ordering::SeqCst);
    }
}

impl FakeClock {
    /// Sets the clock to `at`, backwards too: a wall clock set back across
    /// a restart.
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A fake clock with a wall of its own that a test can step, to check
/// re-anchoring.
#[derive(Debug, Clone)]
pub struct FakeWall {
    /// The steady clock.
    pub steady: FakeClock,
    /// The wall, stepped by the test.
    pub wall: FakeClock,
}

impl Clock for FakeWall {
    fn now(&self) -> Millis {
        self.steady.now()
    }

    fn wall(&self) -> Millis {
        self.wall.now()
    }
}

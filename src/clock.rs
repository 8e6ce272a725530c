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

impl Clock for FakeClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

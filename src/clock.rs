//! Time, injected: the store never reads the system clock itself, so tests can
//! cover hours and days of idle timeouts and lifetimes without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    anchor_wall: Millis,
    anchor: Instant,
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
            anchor: Instant::now(),
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
        self.anchor_wall + self.anchor.elapsed().as_millis() as Millis
    }
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

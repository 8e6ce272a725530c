//! The log writer: lines appended to an in-memory buffer, written to stdout
//! off the calling thread in batches.
//!
//! An RPC only appends its formatted line to an in-memory buffer (one short
//! uncontended lock). A background thread swaps the buffer out and writes
//! it to stdout at most every [`FLUSH_INTERVAL`] while lines keep coming,
//! and sleeps without a timer while none do. So a busy server makes one
//! write per batch instead of one per line, and no RPC wakes a thread: the
//! general-purpose `tracing-appender` writer allocates every line and wakes
//! its worker for each line that finds it idle, which measured about 10% of
//! Resolve's throughput under h2load.
//!
//! Like any non-blocking logger it must not grow without bound when stdout
//! stalls: past [`MAX_BUFFERED`] bytes, lines are dropped and counted, and the
//! count is written as soon as stdout takes lines again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// How long lines wait at most before the writer thread writes them, while
/// lines keep coming.
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes held in memory at most while stdout does not keep up.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// State shared by the writers (every RPC) and the writer thread.
struct Batch {
    state: Mutex<BatchState>,
    /// Signalled when lines arrive while the writer thread sleeps untimed,
    /// and on shutdown.
    wake: Condvar,
    /// Lines dropped because the buffer was full.
    dropped: AtomicU64,
}

struct BatchState {
    lines: Vec<u8>,
    /// The writer thread waits without a timer (the buffer was empty).
    idle: bool,
    closing: bool,
}

/// Hands out line writers for the subscriber; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    batch: Arc<Batch>,
}

/// Writes what is still buffered and stops the writer thread when dropped.
pub struct FlushGuard {
    batch: Arc<Batch>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// A writer whose lines a background thread writes to `out`.
    pub fn spawn(out: impl std::io::Write + Send + 'static) -> (BatchWriter, FlushGuard) {
        let batch = Arc::new(Batch {
            state: Mutex::new(BatchState {
                lines: Vec::with_capacity(64 * 1024),
                idle: false,
                closing: false,
            }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let batch = batch.clone();
                move || write_batches(&batch, out)
            })
            .expect("cannot start the log writer thread");
        (
            BatchWriter {
                batch: batch.clone(),
            },
            FlushGuard {
                batch,
                thread: Some(thread),
            },
        )
    }
}

/// The writer thread: swaps the buffer out and writes it, paced by
/// [`FLUSH_INTERVAL`] while busy, parked while idle.
fn write_batches(batch: &Batch, mut out: impl std::io::Write) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let closing = {
            let mut state = batch.state.lock();
            while state.lines.is_empty() && !state.closing {
                state.idle = true;
                batch.wake.wait(&mut state);
            }
            state.idle = false;
            std::mem::swap(&mut state.lines, &mut spare);
            state.closing
        };
        let dropped = batch.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "log writer: {dropped} lines dropped (stdout did not keep up)"
            );
        }
        let _ = out.write_all(&spare);
        let _ = out.flush();
        spare.clear();
        if closing {
            // Lines written between the swap and now are written too.
            let rest = std::mem::take(&mut batch.state.lock().lines);
            let _ = out.write_all(&rest);
            let _ = out.flush();
            return;
        }
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { batch: &self.batch }
    }
}

/// Appends one formatted event (the subscriber writes each in one call).
pub struct LineWriter<'a> {
    batch: &'a Batch,
}

impl Batch {
    /// Appends one whole line, or counts it dropped when the buffer is full.
    fn append(&self, line: &[u8]) {
        let mut state = self.state.lock();
        if state.lines.len() + line.len() > MAX_BUFFERED {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.lines.extend_from_slice(line);
        if state.idle {
            state.idle = false;
            self.wake.notify_one();
        }
    }
}

impl BatchWriter {
    /// Appends one whole formatted line, as a subscriber's write would: for
    /// the RPC line, which is written without going through the subscriber.
    pub(crate) fn append(&self, line: &[u8]) {
        self.batch.append(line);
    }
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.batch.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.batch.state.lock().closing = true;
        self.batch.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A `Write` that keeps what it is given, for inspection.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::spawn(sink.clone());
        std::thread::scope(|scope| {
            for t in 0..2 {
                let writer = writer.clone();
                scope.spawn(move || {
                    for i in 0..10_000 {
                        let line = format!("thread {t} line {i}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().clone()).unwrap();
        for t in 0..2 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..10_000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_without_waiting_for_shutdown() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::spawn(sink.clone());
        std::thread::sleep(Duration::from_millis(50));
        writer.make_writer().write_all(b"late line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sink.0.lock().ends_with(b"late line\n") {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

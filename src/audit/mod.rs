//! The audit trail: every Mint, every revocation and every denied caller as
//! one JSON line, on stdout or appended to a file.
//!
//! A line holds the time, request id, RPC, outcome and whichever of caller,
//! key id, credential, thread, provider instance, cause, counts, peer and
//! detail the call knows. It never holds a token, a digest or a key:
//! [`AuditEvent`] has no field for them, so no caller can put one there.
//!
//! A state change's line is written after the change is applied and before
//! the reply: [`AuditLog::record`] writes the whole line with one
//! `write_all` on the calling thread and says whether it got there. With
//! [`AuditFailureMode::Closed`] a failed write fails the call; with
//! [`AuditFailureMode::Open`] the call goes on and the loss is counted.
//!
//! Denials go through [`AuditLog::denied`], rate-limited per peer and, as a
//! backstop, in total over all peers (see `limiter`), so a flood of refused
//! callers can neither fill the disk nor, by filling it, make Closed mode
//! refuse everyone else, however many source addresses it comes from. A
//! written denial line carries `"suppressed": N`, its peer's denials not
//! written since the peer's previous line, and `"suppressed_total": N`, the
//! denials of any peer refused by the total budget since the previous
//! written denial line, each when non-zero.

mod limiter;
mod line;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::clock::{Clock, Millis};
use limiter::{Admit, Limiter, Rate, Suppressed, MAX_PEERS};

/// Failure reports are written at most this often (milliseconds), each with
/// the count since the previous one, so a full disk does not also flood the
/// log.
const REPORT_INTERVAL: Millis = 1000;

/// Where the audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// The process's stdout, interleaved line by line with the log (the
    /// usual choice under a supervisor that collects stdout).
    Stdout,
    /// A file, appended to and created with mode 0600 if missing; reopened
    /// by [`AuditLog::reopen`] after rotation.
    File(PathBuf),
}

impl FromStr for AuditSink {
    type Err = String;

    /// `-` or `stdout` is [`AuditSink::Stdout`]; anything else is a path. An
    /// empty value is refused here rather than as an odd open error later.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "" => Err("the audit sink is empty: give a path, or - for stdout".to_owned()),
            "-" | "stdout" => Ok(AuditSink::Stdout),
            path => Ok(AuditSink::File(PathBuf::from(path))),
        }
    }
}

/// What a failed write of an audit line does to the call that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFailureMode {
    /// The call fails (UNAVAILABLE upstream): no state change is reported as
    /// done without its line.
    Closed,
    /// The call goes on; the line is counted in [`AuditLog::lost`] and the
    /// loss is logged.
    Open,
}

/// How the audit trail is set up.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Where lines go.
    pub sink: AuditSink,
    /// What a failed write does.
    pub failure: AuditFailureMode,
    /// Denial lines per second each peer regains (0: none, only the burst).
    pub denials_per_second: u32,
    /// Denial lines a peer may have written back to back (0: none; every
    /// denial is only counted).
    pub denial_burst: u32,
    /// Denial lines per second all peers together regain (0: none, only
    /// the burst). The backstop for a flood from many addresses, each with
    /// its own per-peer bucket: it bounds the total however the peers are
    /// counted.
    pub total_denials_per_second: u32,
    /// Denial lines all peers together may have written back to back (0:
    /// none; every denial is only counted). A denial is written only if
    /// both its peer's bucket and this one have a line to give.
    pub total_denial_burst: u32,
}

/// The audit trail; cheap to clone, shared by every call.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// The state behind an [`AuditLog`].
struct Inner {
    target: Target,
    failure: AuditFailureMode,
    clock: Arc<dyn Clock>,
    limiter: Mutex<Limiter>,
    /// Lines not written in Open mode, in total.
    lost: AtomicU64,
    /// Denial lines suppressed by either limit, in total.
    suppressed: AtomicU64,
    /// Denial lines suppressed by the total budget, in total.
    suppressed_by_total: AtomicU64,
    reports: Reports,
}

/// Where lines are written.
enum Target {
    Stdout,
    /// The handle is swapped by `reopen`. A writer clones the `Arc` under the
    /// read lock and writes without it, so a reopen never waits for a write
    /// that hangs (a stalled network disk), and a write in flight during a
    /// reopen finishes on the old handle, which closes when it is done.
    File {
        path: PathBuf,
        file: RwLock<Arc<File>>,
    },
}

impl AuditLog {
    /// Opens the sink. A file is opened `O_APPEND | O_CREAT` with mode 0600:
    /// appends from several writers (or a restarted server) never overwrite
    /// each other, and the trail is readable by its owner only.
    pub fn open(config: AuditConfig, clock: Arc<dyn Clock>) -> Result<AuditLog, AuditError> {
        let target = match config.sink {
            AuditSink::Stdout => Target::Stdout,
            AuditSink::File(path) => {
                let file = open_file(&path)?;
                warn_if_shared(&path, &file);
                Target::File {
                    file: RwLock::new(Arc::new(file)),
                    path,
                }
            }
        };
        Ok(AuditLog {
            inner: Arc::new(Inner {
                target,
                failure: config.failure,
                clock,
                limiter: Mutex::new(Limiter::new(
                    Rate {
                        per_second: config.denials_per_second,
                        burst: config.denial_burst,
                    },
                    Rate {
                        per_second: config.total_denials_per_second,
                        burst: config.total_denial_burst,
                    },
                    MAX_PEERS,
                )),
                lost: AtomicU64::new(0),
                suppressed: AtomicU64::new(0),
                suppressed_by_total: AtomicU64::new(0),
                reports: Reports::default(),
            }),
        })
    }

    /// Writes the line of a state change (Mint, revocation) before the reply.
    /// `Err` only in Closed mode: the caller must then fail the call.
    pub fn record(&self, event: &AuditEvent<'_>) -> Result<(), AuditUnavailable> {
        self.inner.write(event, Suppressed::default())
    }

    /// Writes the line of a denied call, unless `peer` has used up its
    /// burst or all peers together have used up the total burst: then
    /// nothing is written, the line is counted for the peer (its next line
    /// that is written carries `"suppressed": N`), in
    /// [`AuditLog::suppressed`] and, if the total budget refused it, in
    /// [`AuditLog::suppressed_by_total`] and in the `"suppressed_total": N`
    /// of the next denial line written; the result is `Ok`. A count handed
    /// to a line that then failed is given back, so it rides on a later
    /// line instead of being lost. `Err` only in Closed mode when a line
    /// that was due could not be written; the call is refused either way.
    pub fn denied(&self, peer: &PeerKey, event: &AuditEvent<'_>) -> Result<(), AuditUnavailable> {
        let now = self.inner.clock.now();
        let admit = self.inner.limiter.lock().admit(peer, now);
        match admit {
            Admit::Write(suppressed) => {
                let attempt = self.inner.attempt(event, suppressed);
                if attempt.is_err() && !suppressed.is_empty() {
                    // The counts did not reach the trail with this line:
                    // they ride on the next lines that are written instead.
                    self.inner.limiter.lock().restore(peer, suppressed);
                }
                self.inner.settle(attempt)
            }
            Admit::Suppress => {
                self.inner.suppressed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Admit::SuppressTotal => {
                self.inner.suppressed.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .suppressed_by_total
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Reopens the file at its path (on SIGHUP, after log rotation moved the
    /// old one away). On error the old handle is kept, so lines still go
    /// somewhere, and the error names the path. A no-op for stdout.
    pub fn reopen(&self) -> Result<(), AuditError> {
        if let Target::File { path, file } = &self.inner.target {
            let fresh = open_file(path)?;
            warn_if_shared(path, &fresh);
            *file.write() = Arc::new(fresh);
        }
        Ok(())
    }

    /// Lines lost in Open mode since start (Closed mode fails the call
    /// instead, so it loses none silently).
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }

    /// Denial lines suppressed since start by either limit, including
    /// those of peers since forgotten.
    pub fn suppressed(&self) -> u64 {
        self.inner.suppressed.load(Ordering::Relaxed)
    }

    /// Denial lines suppressed since start by the total budget (a peer
    /// that still had a line to give, refused because all peers together
    /// had used theirs): a part of [`AuditLog::suppressed`]. Non-zero means
    /// the total limit bit at least once.
    pub fn suppressed_by_total(&self) -> u64 {
        self.inner.suppressed_by_total.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match &self.inner.target {
            Target::Stdout => "stdout".to_owned(),
            Target::File { path, .. } => path.display().to_string(),
        };
        f.debug_struct("AuditLog")
            .field("sink", &sink)
            .field("failure", &self.inner.failure)
            .field("lost", &self.lost())
            .field("suppressed", &self.suppressed())
            .field("suppressed_by_total", &self.suppressed_by_total())
            .finish()
    }
}

impl Inner {
    /// Encodes and writes one line, applying the failure mode.
    fn write(
        &self,
        event: &AuditEvent<'_>,
        suppressed: Suppressed,
    ) -> Result<(), AuditUnavailable> {
        self.settle(self.attempt(event, suppressed))
    }

    /// Encodes and writes one line, reporting a failure in the log; the OS
    /// error when the line did not reach the sink.
    fn attempt(&self, event: &AuditEvent<'_>, suppressed: Suppressed) -> io::Result<()> {
        let now = self.clock.now();
        let line = line::encode(event, now, suppressed);
        match self.write_line(&line) {
            Ok(()) => {
                if self.reports.pending() {
                    self.report(now, None);
                }
                Ok(())
            }
            Err(error) => {
                self.reports.failed();
                self.report(now, Some(&error));
                Err(error)
            }
        }
    }

    /// Applies the failure mode to the outcome of [`Inner::attempt`].
    fn settle(&self, attempt: io::Result<()>) -> Result<(), AuditUnavailable> {
        match attempt {
            Ok(()) => Ok(()),
            Err(error) => match self.failure {
                AuditFailureMode::Closed => Err(AuditUnavailable(error.kind())),
                AuditFailureMode::Open => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            },
        }
    }

    /// One `write_all` of the whole line. Stdout is locked for the write and
    /// the flush: the log writer writes through the same `Stdout`, whose
    /// lock keeps its batches and audit lines from interleaving.
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        match &self.target {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Target::File { file, .. } => {
                let file = Arc::clone(&file.read());
                (&*file).write_all(line)
            }
        }
    }

    /// Logs the failures counted since the last report, if one is due.
    /// `error` is the failure just seen; `None` means writes work again.
    fn report(&self, now: Millis, error: Option<&io::Error>) {
        let Some(count) = self.reports.due(now) else {
            return;
        };
        let sink = match &self.target {
            Target::Stdout => Path::new("stdout"),
            Target::File { path, .. } => path.as_path(),
        };
        let sink = sink.display();
        match (error, self.failure) {
            (Some(error), AuditFailureMode::Closed) => tracing::error!(
                failed = count,
                "audit trail {sink}: {count} lines could not be written and their calls failed: {error}"
            ),
            (Some(error), AuditFailureMode::Open) => tracing::error!(
                lost = count,
                "audit trail {sink}: {count} lines could not be written and are lost: {error}"
            ),
            (None, _) => tracing::error!(
                failed = count,
                "audit trail {sink}: writable again; {count} more lines failed since the last report"
            ),
        }
    }
}

/// Rate-limits the error lines about failed writes: at most one per
/// [`REPORT_INTERVAL`], carrying the count since the previous one.
#[derive(Default)]
struct Reports {
    /// Failed writes not yet reported. Read on every successful write, so a
    /// recovery reports the failures of the last interval too.
    unreported: AtomicU64,
    /// When the last report was written.
    last: Mutex<Option<Millis>>,
}

impl Reports {
    /// Counts a failed write.
    fn failed(&self) {
        self.unreported.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether failures await a report: the successful write's fast path.
    fn pending(&self) -> bool {
        self.unreported.load(Ordering::Relaxed) != 0
    }

    /// The count to report now, if any and if the last report is at least
    /// [`REPORT_INTERVAL`] old.
    fn due(&self, now: Millis) -> Option<u64> {
        let mut last = self.last.lock();
        if last.is_some_and(|at| now < at.saturating_add(REPORT_INTERVAL)) {
            return None;
        }
        let count = self.unreported.swap(0, Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        *last = Some(now);
        Some(count)
    }
}

/// Opens (or creates, mode 0600) the audit file for appending.
fn open_file(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Warns when an existing regular file is readable by others: the mode
/// given at creation does not change a file that was already there.
fn warn_if_shared(path: &Path, file: &File) {
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & 0o077 != 0 {
            tracing::warn!(
                "audit trail {}: mode {mode:o} lets other users read or write it",
                path.display()
            );
        }
    }
}

/// Whom the denial rate limit counts a denied call against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A TCP peer's address.
    Ip(std::net::IpAddr),
    /// A Unix-socket peer's user id.
    Uid(u32),
    /// A peer the transport could not name: all of them share one bucket.
    Unknown,
}

/// What one audit line says. Borrowed, so the caller builds it from what it
/// already holds without copying. There is no field for a token, a digest
/// or a key: the trail cannot leak one.
#[derive(Debug, Default, Clone)]
pub struct AuditEvent<'a> {
    /// The call's request id, to join the line with the log and the reply.
    pub request_id: &'a str,
    /// The RPC's name, e.g. `Mint`.
    pub rpc: &'a str,
    /// `ok`, or the stable reason of the failure such as `CALLER_FORBIDDEN`.
    pub outcome: &'a str,
    /// The authenticated caller's name.
    pub caller: Option<&'a str>,
    /// The id of the key the caller used (never the key).
    pub key_id: Option<&'a str>,
    /// The credential minted or revoked.
    pub credential_id: Option<&'a str>,
    /// The thread the credential belongs to (client-supplied: escaped).
    pub thread_id: Option<&'a str>,
    /// The provider instance the credential is for.
    pub provider_instance_id: Option<&'a str>,
    /// Why a revocation happened.
    pub cause: Option<&'a str>,
    /// How many credentials a revocation revoked.
    pub revoked: Option<u64>,
    /// How many named credentials were not the caller's.
    pub not_owned: Option<u64>,
    /// How many credentials a Mint replaced.
    pub replaced: Option<u64>,
    /// The peer as the line shows it, e.g. `127.0.0.1` or `uid:1000`.
    pub peer: Option<&'a str>,
    /// Free text for humans.
    pub detail: Option<&'a str>,
}

/// The audit line of a call could not be written (Closed mode): the call
/// must fail as UNAVAILABLE. The message names no path; the server log does.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not be written ({0})")]
pub struct AuditUnavailable(io::ErrorKind);

impl AuditUnavailable {
    /// The kind of OS error the write met.
    pub fn kind(&self) -> io::ErrorKind {
        self.0
    }
}

/// The audit sink could not be set up or reopened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened.
    #[error("cannot open the audit file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

//! What the accept loops hand to tonic, and what the TCP and Unix loops
//! share: [`Connection`] with its [`PeerInfo`], the [`Counters`], and the
//! back-off after failed accepts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::trim::{OpenConnections, Seat};
use super::ListenAddr;

/// Who is on the other end of a connection; tonic puts a clone in every
/// request's extensions (`request.extensions().get::<PeerInfo>()`).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The network peer.
    pub peer: Peer,
    /// The URI and DNS names of the client certificate; empty unless a
    /// certificate was presented and verified against the client CA.
    pub client_sans: Arc<[ClientSan]>,
}

/// The kernel's view of the peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A TCP peer's address.
    Tcp(SocketAddr),
    /// A Unix socket peer's credentials as the kernel reported them.
    Unix {
        /// The peer's effective uid.
        uid: u32,
        /// The peer's pid, where the platform reports it.
        pid: Option<i32>,
    },
}

/// A name from a verified client certificate's subject alternative names.
/// Only URI and DNS names are kept: never the subject CN, IPs or emails.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientSan {
    /// A URI name, such as a SPIFFE id.
    Uri(String),
    /// A DNS name.
    Dns(String),
}

/// Connections the transport turned away and accept failures: these never
/// reach tonic, so no gRPC log line or metric sees them, and without a
/// count a refused peer or a failing handshake would be invisible. Shared
/// with the accept tasks, so a handle taken before
/// [`Transport::into_incoming`](super::Transport::into_incoming) keeps
/// reading them while tonic owns [`Incoming`](super::Incoming).
#[derive(Clone, Debug, Default)]
pub struct Counters(Arc<CounterCells>);

/// The cells behind [`Counters`]: atomics, so the accept tasks bump them
/// without a lock on the accept path.
#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    /// See [`CounterSnapshot::accept_errors`].
    pub(crate) accept_errors: AtomicU64,
    /// See [`CounterSnapshot::handshakes_failed`].
    pub(crate) handshakes_failed: AtomicU64,
    /// See [`CounterSnapshot::handshakes_timed_out`].
    pub(crate) handshakes_timed_out: AtomicU64,
    /// See [`CounterSnapshot::unix_peers_refused`].
    pub(crate) unix_peers_refused: AtomicU64,
    /// See [`CounterSnapshot::connections_refused`].
    pub(crate) connections_refused: AtomicU64,
    /// See [`CounterSnapshot::prefaces_timed_out`].
    pub(crate) prefaces_timed_out: AtomicU64,
}

/// The values of [`Counters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Failed `accept` calls (out of descriptors, memory, ...).
    pub accept_errors: u64,
    /// TLS handshakes that failed (bad certificate, not TLS, ...).
    pub handshakes_failed: u64,
    /// TLS handshakes not finished within the handshake timeout.
    pub handshakes_timed_out: u64,
    /// Unix connections closed because the uid is not allowed or its
    /// credentials could not be read.
    pub unix_peers_refused: u64,
    /// Connections closed at accept because `--max-connections` were
    /// already open (or shaking hands).
    pub connections_refused: u64,
    /// Connections closed because the HTTP/2 client preface and first
    /// SETTINGS frame had not arrived by the handshake deadline.
    pub prefaces_timed_out: u64,
}

/// Reading is for observers; bumping only for the accept loops.
impl Counters {
    /// Reads every counter (each exact, not all at one instant).
    pub fn snapshot(&self) -> CounterSnapshot {
        let c = &self.0;
        CounterSnapshot {
            accept_errors: c.accept_errors.load(Ordering::Relaxed),
            handshakes_failed: c.handshakes_failed.load(Ordering::Relaxed),
            handshakes_timed_out: c.handshakes_timed_out.load(Ordering::Relaxed),
            unix_peers_refused: c.unix_peers_refused.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            prefaces_timed_out: c.prefaces_timed_out.load(Ordering::Relaxed),
        }
    }

    /// Adds one to the cell `cell` picks: a closure rather than one method
    /// per counter, so a new counter is one field, not one more method.
    /// Relaxed, because each count stands alone and orders nothing.
    pub(crate) fn bump(&self, cell: impl Fn(&CounterCells) -> &AtomicU64) {
        cell(&self.0).fetch_add(1, Ordering::Relaxed);
    }
}

/// The stream under a [`Connection`]: an enum rather than a boxed trait
/// object, so every read and write is a direct call and tests can look at
/// the concrete stream (TCP_NODELAY, say).
pub(crate) enum Io {
    /// Plain TCP: loopback, or behind a mesh sidecar that terminates TLS.
    Tcp(TcpStream),
    /// TLS over TCP; boxed because the TLS state is far larger than the
    /// other variants.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A Unix socket, whose peer the kernel names.
    Unix(UnixStream),
}

/// One accepted connection (plain TCP, TLS or Unix) with its [`PeerInfo`]:
/// one type for every listener, so tonic serves them all from one
/// [`Incoming`](super::Incoming).
pub struct Connection {
    /// The stream, read and written through [`AsyncRead`]/[`AsyncWrite`].
    pub(crate) io: Io,
    /// Who is on the other end, fixed at accept time.
    info: PeerInfo,
    /// When the TLS handshake, the HTTP/2 preface and the first SETTINGS
    /// frame must all be in: one deadline from accept, so a client cannot
    /// spend the timeout once per phase.
    pub(crate) handshake_deadline: Instant,
    /// This connection's place in the `--max-connections` pool, taken at
    /// accept and given back when the connection is dropped.
    _permit: OwnedSemaphorePermit,
    /// Counts the connection as open until it is dropped, for the trim.
    _seat: Seat,
}

impl fmt::Debug for Connection {
    /// The kind and the peer only: the streams' own `Debug` says little and
    /// the TLS one would dump session state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.io {
            Io::Tcp(_) => "tcp",
            Io::Tls(_) => "tls",
            Io::Unix(_) => "unix",
        };
        f.debug_struct("Connection")
            .field("kind", &kind)
            .field("info", &self.info)
            .finish()
    }
}

impl Connection {
    /// Takes the SANs as a `Vec` and stores them shared, since every request
    /// on the connection gets a clone of its [`PeerInfo`].
    pub(crate) fn new(
        io: Io,
        peer: Peer,
        client_sans: Vec<ClientSan>,
        admitted: Admitted,
    ) -> Connection {
        let client_sans = client_sans.into();
        Connection {
            io,
            info: PeerInfo { peer, client_sans },
            handshake_deadline: admitted.deadline,
            _permit: admitted.permit,
            _seat: admitted.seat,
        }
    }

    /// Who is on the other end; the server puts a clone into every
    /// request's extensions.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }
}

/// What a connection got at accept: its place in the pool and its
/// handshake deadline, carried through the TLS handshake into
/// [`Connection`].
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Held until the connection is dropped.
    permit: OwnedSemaphorePermit,
    /// Counts it as open until the connection (or its failed TLS
    /// handshake) is dropped.
    seat: Seat,
    /// Accept time plus the handshake timeout.
    pub(crate) deadline: Instant,
}

/// The `--max-connections` pool and the handshake timeout, shared by every
/// accept loop: one pool for all listeners, so the cap is on the process.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    /// One permit per connection that may be open or shaking hands.
    permits: Arc<Semaphore>,
    /// From accept to the first SETTINGS frame.
    pub(crate) handshake_timeout: Duration,
    /// Whether the last accept was refused, so that only the first refusal
    /// of an episode warns (a flood must not flood the log too).
    full: Arc<std::sync::atomic::AtomicBool>,
    /// Every admitted connection, TLS handshakes included, so the
    /// connection loop sees when a burst is gone.
    pub(crate) open: Arc<OpenConnections>,
}

impl Admission {
    /// A pool of `max_connections` permits.
    pub(crate) fn new(max_connections: usize, handshake_timeout: Duration) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_connections)),
            handshake_timeout,
            full: Arc::default(),
            open: Arc::default(),
        }
    }

    /// Takes a permit for a just-accepted connection, or counts the refusal
    /// and returns `None`: the caller then drops the stream, closing it at
    /// once, before any TLS or HTTP/2 work is spent on it.
    pub(crate) fn admit(&self, listener: &ListenAddr, counters: &Counters) -> Option<Admitted> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    tracing::info!(%listener, "accepting connections again: below --max-connections");
                }
                Some(Admitted {
                    permit,
                    seat: self.open.opened(),
                    deadline: Instant::now() + self.handshake_timeout,
                })
            }
            Err(_) => {
                counters.bump(|c| &c.connections_refused);
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%listener, "--max-connections reached: closing new connections at once until some close");
                } else {
                    tracing::debug!(%listener, "connection refused: --max-connections reached");
                }
                None
            }
        }
    }
}

/// How tonic learns the peer: it puts `connect_info()` into every request's
/// extensions, where the authenticator and the audit trail read it.
impl tonic::transport::server::Connected for Connection {
    /// What every request on the connection carries.
    type ConnectInfo = PeerInfo;

    /// A clone per request; cheap, the SANs are shared.
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Runs `$e` with `$s` pinned on whichever stream `$conn` holds.
macro_rules! on_io {
    ($conn:expr, $s:ident => $e:expr) => {
        match &mut $conn.get_mut().io {
            Io::Tcp(s) => {
                let $s = Pin::new(s);
                $e
            }
            Io::Tls(s) => {
                let $s = Pin::new(&mut **s);
                $e
            }
            Io::Unix(s) => {
                let $s = Pin::new(s);
                $e
            }
        }
    };
}

/// Reads go straight to the stream inside; tonic never knows which kind.
impl AsyncRead for Connection {
    /// Forwarded as is: no buffer of ours between tonic and the stream.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_io!(self, s => s.poll_read(cx, buf))
    }
}

/// Writes go straight to the stream inside, vectored writes included, so
/// HTTP/2 frames are not copied into one buffer first.
impl AsyncWrite for Connection {
    /// Forwarded as is, for the same reason as reads.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, s => s.poll_write(cx, buf))
    }

    /// Forwarded, so a TLS or socket stream gets the slices in one call.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, s => s.poll_write_vectored(cx, bufs))
    }

    /// What the stream inside says: hyper flattens its buffers only for a
    /// stream that cannot write vectored, and the answer differs by kind.
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    /// Forwarded: TLS holds written data in records until flushed.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, s => s.poll_flush(cx))
    }

    /// Forwarded: TLS sends its close_notify first, so a client can tell a
    /// clean end from a cut connection.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, s => s.poll_shutdown(cx))
    }
}

/// The delay between failed accepts: 10 ms doubling to 1 s while they keep
/// failing, so running out of descriptors never spins a core.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Failures since the last success: zero means no episode is open, and
    /// the count goes in the "accepting again" log line.
    failures: u64,
    /// The last delay waited, doubled by the next failure.
    delay: Duration,
}

impl Backoff {
    /// Short enough that a brief descriptor shortage costs next to nothing.
    const FIRST: Duration = Duration::from_millis(10);
    /// Long enough not to spin, short enough that accepting resumes about
    /// as soon as descriptors free up.
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure: the delay to wait, and whether it opened an
    /// episode (the one failure worth a warning).
    pub(crate) fn failed(&mut self) -> (Duration, bool) {
        let first = self.failures == 0;
        self.delay = if first {
            Self::FIRST
        } else {
            (self.delay * 2).min(Self::MAX)
        };
        self.failures += 1;
        (self.delay, first)
    }

    /// Records a success; returns how many failures the episode it ends
    /// had, if there was one.
    pub(crate) fn succeeded(&mut self) -> Option<u64> {
        let failures = std::mem::take(self).failures;
        (failures > 0).then_some(failures)
    }
}

/// Handles a failed `accept`: errors of one aborted connection are retried
/// at once, anything else waits out the back-off. Returns `false` once
/// [`Incoming`](super::Incoming) is gone.
pub(crate) async fn accept_failed(
    error: io::Error,
    listener: &ListenAddr,
    backoff: &mut Backoff,
    counters: &Counters,
    tx: &mpsc::Sender<Connection>,
) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    ) {
        tracing::debug!(%listener, %error, "a connection went away before it was accepted");
        return true;
    }
    counters.bump(|c| &c.accept_errors);
    let (delay, first) = backoff.failed();
    if first {
        tracing::warn!(%listener, %error, "accept failed (out of descriptors or memory?); retrying after 10 ms, doubling up to 1 s while it keeps failing");
    } else {
        tracing::debug!(%listener, %error, ?delay, "accept failed again");
    }
    tokio::select! {
        _ = tx.closed() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Notes a successful accept, logging the end of a failure episode.
pub(crate) fn accept_succeeded(listener: &ListenAddr, backoff: &mut Backoff) {
    if let Some(failures) = backoff.succeeded() {
        tracing::info!(%listener, failures, "accepting again after failed accepts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a back-off that spins (no delay), grows without bound, or
    /// keeps growing after accepting recovered.
    #[test]
    fn backoff_doubles_to_one_second_and_resets_after_success() {
        let mut b = Backoff::default();
        assert_eq!(b.succeeded(), None);
        let delays: Vec<_> = (0..10).map(|_| b.failed()).collect();
        let ms: Vec<u128> = delays.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert!(delays[0].1 && delays[1..].iter().all(|(_, first)| !first));
        assert_eq!(b.succeeded(), Some(10));
        assert_eq!(b.failed(), (Duration::from_millis(10), true));
    }
}

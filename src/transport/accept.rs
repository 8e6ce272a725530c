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
use tokio::sync::mpsc;

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

/// Connections the transport turned away and accept failures, shared with
/// the accept tasks so metrics can read them while tonic owns
/// [`Incoming`](super::Incoming).
#[derive(Clone, Debug, Default)]
pub struct Counters(Arc<CounterCells>);

#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    pub(crate) accept_errors: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
    pub(crate) unix_peers_refused: AtomicU64,
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
}

impl Counters {
    /// Reads every counter (each exact, not all at one instant).
    pub fn snapshot(&self) -> CounterSnapshot {
        let c = &self.0;
        CounterSnapshot {
            accept_errors: c.accept_errors.load(Ordering::Relaxed),
            handshakes_failed: c.handshakes_failed.load(Ordering::Relaxed),
            handshakes_timed_out: c.handshakes_timed_out.load(Ordering::Relaxed),
            unix_peers_refused: c.unix_peers_refused.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(&self, cell: impl Fn(&CounterCells) -> &AtomicU64) {
        cell(&self.0).fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// One accepted connection (plain TCP, TLS or Unix) with its [`PeerInfo`].
pub struct Connection {
    pub(crate) io: Io,
    info: PeerInfo,
}

impl fmt::Debug for Connection {
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
    pub(crate) fn new(io: Io, peer: Peer, client_sans: Vec<ClientSan>) -> Connection {
        let client_sans = client_sans.into();
        Connection {
            io,
            info: PeerInfo { peer, client_sans },
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerInfo;

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

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_io!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, s => s.poll_shutdown(cx))
    }
}

/// The delay between failed accepts: 10 ms doubling to 1 s while they keep
/// failing, so running out of descriptors never spins a core.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u64,
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
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

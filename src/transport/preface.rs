//! The last part of the handshake deadline: the HTTP/2 client preface and
//! the first SETTINGS frame must arrive by the deadline taken at accept, or
//! the connection is closed. Without it a client that sends nothing, or
//! half a preface, holds its connection (and its permit) forever.
//!
//! The check sits in the read path, as a wrapper of the stream hyper reads:
//! it counts the bytes going by until the preface and the whole first frame
//! have passed, and from then on is a plain pass-through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Connection, Counters};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: 24 bytes (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: 3 bytes length, type, flags, 4 bytes stream id.
const FRAME_HEADER_LEN: usize = 9;

/// A [`Connection`] whose reads fail with `TimedOut` once the handshake
/// deadline passes before the preface and first frame are in.
pub(crate) struct PrefaceDeadline {
    /// The stream.
    inner: Connection,
    /// The deadline timer, dropped once the handshake is done so the timer
    /// wheel forgets it; boxed because [`Sleep`] is not `Unpin`.
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, while the handshake is not done.
    seen: usize,
    /// The first frame's header, filled as its bytes go by.
    header: [u8; FRAME_HEADER_LEN],
    /// Where the counters of refused connections are kept.
    counters: Counters,
}

impl PrefaceDeadline {
    /// Wraps `inner`, holding it to its own handshake deadline.
    pub(crate) fn new(inner: Connection, counters: Counters) -> PrefaceDeadline {
        let deadline: Instant = inner.handshake_deadline;
        PrefaceDeadline {
            inner,
            timer: Some(Box::pin(tokio::time::sleep_until(deadline))),
            seen: 0,
            header: [0; FRAME_HEADER_LEN],
            counters,
        }
    }

    /// Notes the bytes `read` just added; returns whether the preface and
    /// the whole first frame (SETTINGS, if the client is well-behaved; h2
    /// refuses anything else) have now passed.
    fn note(&mut self, read: &[u8]) -> bool {
        let start = self.seen;
        self.seen += read.len();
        // Copy the bytes of the first frame's header as they go by.
        for (i, byte) in read.iter().enumerate() {
            let at = start + i;
            if (PREFACE_LEN..PREFACE_LEN + FRAME_HEADER_LEN).contains(&at) {
                self.header[at - PREFACE_LEN] = *byte;
            }
        }
        if self.seen < PREFACE_LEN + FRAME_HEADER_LEN {
            return false;
        }
        let length = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
        self.seen >= PREFACE_LEN + FRAME_HEADER_LEN + length as usize
    }
}

impl AsyncRead for PrefaceDeadline {
    /// Reads; while the handshake is not done, also watches the deadline,
    /// so a client that sends nothing at all is cut off too (hyper always
    /// has a read pending, which keeps the timer's waker registered).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(timer) = &mut this.timer else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if timer.as_mut().poll(cx).is_ready() {
            this.timer = None;
            this.counters.bump(|c| &c.prefaces_timed_out);
            tracing::debug!(peer = ?this.inner.peer_info().peer, "no HTTP/2 preface and SETTINGS by the handshake deadline; closing");
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let done = this.note(&buf.filled()[before..]);
        if done {
            this.timer = None;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes pass straight through: the deadline is about what the client
/// sends.
impl AsyncWrite for PrefaceDeadline {
    /// Forwarded.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    /// Forwarded, so hyper's vectored writes stay vectored.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    /// What the stream inside says.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// Forwarded.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Forwarded.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

//! A hand-written HTTP/2 client for hostile tests: it sends exactly the
//! bytes a test asks for (half a preface, HEADERS without a body, floods)
//! and reads frames back undecoded. Headers go out as HPACK literals
//! without indexing and without Huffman (RFC 7541 §6.2.2), which every
//! decoder must accept; responses' header blocks are not decoded (tests
//! that need a status use a real client).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes.
pub const REFUSED_STREAM: u32 = 7;

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM, or of a GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().unwrap()))
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literals without indexing, no Huffman.
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_int(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The request headers of a gRPC call of `path` on `authority`, with
/// `extra` headers after the standard ones.
pub fn grpc_headers(path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut headers = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    headers.extend_from_slice(extra);
    header_block(&headers)
}

/// A gRPC message frame (uncompressed) around `message`.
pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A raw connection.
pub struct H2 {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr) -> io::Result<H2> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(H2 {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects and does the handshake: preface, empty SETTINGS, then
    /// reads until the server's SETTINGS and ACKs them. Returns the
    /// server's settings as (id, value) pairs.
    pub async fn handshake(addr: SocketAddr) -> io::Result<(H2, Vec<(u16, u32)>)> {
        let mut h2 = H2::connect(addr).await?;
        h2.send(PREFACE).await?;
        h2.send(&frame(SETTINGS, 0, 0, &[])).await?;
        loop {
            let f = h2.read_frame(Duration::from_secs(5)).await?;
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                h2.send(&frame(SETTINGS, ACK, 0, &[])).await?;
                let settings = f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
                return Ok((h2, settings));
            }
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Opens stream `id` with `block` as its headers and no body yet
    /// (END_STREAM unset): a call whose body never comes.
    pub async fn open_stalled(&mut self, id: u32, block: &[u8]) -> io::Result<()> {
        self.send(&frame(HEADERS, END_HEADERS, id, block)).await
    }

    /// Sends a PING and reads until its ACK: every frame sent before it
    /// has then been processed by the server. Returns the frames read on
    /// the way.
    pub async fn barrier(&mut self) -> io::Result<Vec<Frame>> {
        let data = *b"barrier!";
        self.send(&frame(PING, 0, 0, &data)).await?;
        let mut seen = Vec::new();
        loop {
            let f = self.read_frame(Duration::from_secs(5)).await?;
            if f.kind == PING && f.flags & ACK != 0 && f.payload == data {
                return Ok(seen);
            }
            seen.push(f);
        }
    }

    /// Reads one frame, or fails after `patience` (TimedOut) or at EOF
    /// (UnexpectedEof).
    pub async fn read_frame(&mut self, patience: Duration) -> io::Result<Frame> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Ok(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until one matches `want`, answering nothing; fails as
    /// [`H2::read_frame`] does.
    pub async fn read_until(
        &mut self,
        patience: Duration,
        want: impl Fn(&Frame) -> bool,
    ) -> io::Result<Frame> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            if want(&f) {
                return Ok(f);
            }
        }
    }
}

/// Whether the server closed `stream` (EOF or reset) within `patience`,
/// discarding anything it sent first.
pub async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

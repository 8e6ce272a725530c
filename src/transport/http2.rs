//! The HTTP/2 connection loop: serves every [`Connection`] of an
//! [`Incoming`] with hyper's HTTP/2 server under our limits, instead of
//! tonic's `Server`, because closing a connection needs a GOAWAY that only
//! the connection's owner can send.
//!
//! Per connection: the handshake deadline from accept also covers the
//! client preface and first SETTINGS ([`super::preface`]); the streams,
//! windows, header list and send buffer are bounded by [`Http2Config`];
//! keepalive PINGs find dead peers; a connection with no stream in flight
//! for the idle timeout gets a GOAWAY and is drained; at shutdown every
//! connection gets a GOAWAY and the caller bounds the drain. Each request
//! carries the connection's [`PeerInfo`] in its extensions, as tonic's
//! server put it there, so the service finds it the same way.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http2::Builder;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tower::ServiceExt as _;

use super::preface::PrefaceDeadline;
use super::trim;
use super::{Connection, Counters, Incoming, PeerInfo};

/// The request body hyper hands to the service.
pub type RequestBody = hyper::body::Incoming;

/// hyper's error type for bodies and services.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2 settings of every connection, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http2Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond it are refused with
    /// REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: what a client may send on one stream
    /// before the server reads it.
    pub stream_window_bytes: u32,
    /// The connection window: what a client may send on all its streams
    /// together before the server reads it.
    pub connection_window_bytes: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: h2 answers a larger header block
    /// itself (431, then REFUSED_STREAM); the application's smaller limit
    /// answers below it with a gRPC status.
    pub max_header_list_bytes: u32,
    /// How much response data h2 buffers per stream before it waits for
    /// the client's window.
    pub max_send_buf_bytes: usize,
    /// Remotely reset streams not yet accepted, before a GOAWAY
    /// (rapid-reset protection).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset because of a client's error
    /// (refused, malformed), before a GOAWAY ENHANCE_YOUR_CALM.
    pub max_local_error_reset_streams: usize,
    /// How often an idle connection is PINGed.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a connection may have no stream in flight before it gets
    /// a GOAWAY.
    pub idle_timeout: Duration,
    /// How long a connection that got an idle GOAWAY may take to finish:
    /// a stream that raced the GOAWAY still gets its answer.
    pub idle_drain: Duration,
}

impl Http2Config {
    /// hyper's builder with these settings (adaptive window off: the
    /// windows are what bounds a connection's unread data).
    fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .initial_stream_window_size(self.stream_window_bytes)
            .initial_connection_window_size(self.connection_window_bytes)
            .adaptive_window(false)
            .max_header_list_size(self.max_header_list_bytes)
            .max_send_buf_size(self.max_send_buf_bytes)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout);
        builder
    }
}

/// Serves `incoming` until `shutdown` completes; then closes the listeners,
/// sends every connection a GOAWAY and returns once all have drained (the
/// caller bounds that wait with its grace period). `make` builds each
/// connection's service from its peer.
pub async fn serve<M, S, B>(
    mut incoming: Incoming,
    config: Http2Config,
    make: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(&PeerInfo) -> S,
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(config.builder());
    let counters = incoming.counters();
    let open = incoming.open_connections();
    let mut trim_schedule = trim::Schedule::default();
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let trim_due = trim_schedule.due();
        let trim_now = async {
            match trim_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let conn = tokio::select! {
            conn = incoming.next() => conn,
            () = &mut shutdown => break,
            () = open.fallen() => {
                trim_schedule.fallen(Instant::now());
                continue;
            }
            () = trim_now => {
                // Here, on the loop's thread: it allocated every
                // connection's task, so it holds their freed pages too.
                trim::trim(&open);
                trim_schedule.ran(Instant::now());
                continue;
            }
        };
        // Never an error, and ends only with the accept tasks.
        let Some(Ok(conn)) = conn else { break };
        let service = make(conn.peer_info());
        tokio::spawn(serve_connection(
            conn,
            service,
            builder.clone(),
            config.clone(),
            stopped.clone(),
            counters.clone(),
        ));
    }
    // Closes the listeners (the socket files stay until the caller's
    // cleanup guard goes).
    drop(incoming);
    drop(stopped);
    let _ = stop.send(true);
    // Every connection task holds a receiver until it is done.
    stop.closed().await;
}

/// Serves one connection until it closes, sending a GOAWAY when it has
/// been idle too long or the server stops.
async fn serve_connection<S, B>(
    conn: Connection,
    service: S,
    builder: Arc<Builder<TokioExecutor>>,
    config: Http2Config,
    mut stop: watch::Receiver<bool>,
    counters: Counters,
) where
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let peer = conn.peer_info().peer.clone();
    let activity = Arc::new(Activity::new());
    let service = ConnService {
        inner: service,
        info: conn.peer_info().clone(),
        activity: activity.clone(),
    };
    let io = TokioIo::new(PrefaceDeadline::new(conn, counters));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let idle = activity.idle(config.idle_timeout);
    tokio::pin!(idle);
    // Set once a GOAWAY went out: then only the drain is awaited.
    let mut goaway_sent = false;
    // How long an idle GOAWAY's drain may take (the shutdown drain is
    // bounded by the caller).
    let mut drain_until: Option<Instant> = None;
    loop {
        let drain_over = async {
            match drain_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(?peer, %error, "connection ended with an error");
                }
                break;
            }
            _ = stop.wait_for(|stopping| *stopping), if !goaway_sent => {
                connection.as_mut().graceful_shutdown();
                goaway_sent = true;
            }
            () = &mut idle, if !goaway_sent => {
                tracing::debug!(?peer, idle = ?config.idle_timeout, "idle connection: sending GOAWAY");
                connection.as_mut().graceful_shutdown();
                goaway_sent = true;
                drain_until = Some(Instant::now() + config.idle_drain);
            }
            () = drain_over => {
                tracing::debug!(?peer, "connection did not drain after its GOAWAY; closing it");
                break;
            }
        }
    }
    drop(stop);
}

/// Whether a connection has streams in flight, and since when it has had
/// none: plain atomics, so a stream costs two increments and a clock read.
#[derive(Debug)]
struct Activity {
    /// Streams whose response is not finished.
    active: AtomicUsize,
    /// When the last stream finished (or the connection began), in
    /// milliseconds since `base`.
    last_done_ms: AtomicU64,
    /// The connection's start.
    base: Instant,
}

impl Activity {
    /// No stream yet: the connection's start counts as its last activity.
    fn new() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// A stream started.
    fn begin(self: &Arc<Self>) -> ActiveStream {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveStream(self.clone())
    }

    /// Completes once no stream has been in flight for `idle`: wakes once
    /// per period at most, never per stream.
    async fn idle(&self, idle: Duration) {
        let mut wake = self.base + idle;
        loop {
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            if self.active.load(Ordering::Acquire) > 0 {
                wake = now + idle;
                continue;
            }
            let last = self.base + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
            if last + idle <= now {
                return;
            }
            wake = last + idle;
        }
    }
}

/// One stream in flight; dropped with the response body, when the stream
/// is done (finished, reset, or the connection gone).
#[derive(Debug)]
struct ActiveStream(Arc<Activity>);

impl Drop for ActiveStream {
    /// Stamps the end before the count drops, so the idle check never sees
    /// zero streams with a stale stamp.
    fn drop(&mut self) {
        let ms = self.0.base.elapsed().as_millis() as u64;
        self.0.last_done_ms.store(ms, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::Release);
    }
}

/// hyper's view of a connection's service: adds the [`PeerInfo`] to each
/// request and tracks the stream for the idle timeout.
#[derive(Clone)]
struct ConnService<S> {
    /// The tower stack (request id, guards, routes).
    inner: S,
    /// Cloned into every request's extensions.
    info: PeerInfo,
    /// The connection's streams in flight.
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<RequestBody>> for ConnService<S>
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<tower::util::Oneshot<S, Request<RequestBody>>>;

    /// Tags the request and calls a clone of the stack (tower services
    /// take `&mut self`, hyper's `&self`).
    fn call(&self, mut request: Request<RequestBody>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        TrackedFuture {
            stream: Some(self.activity.begin()),
            inner: self.inner.clone().oneshot(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The stack's response future, handing the stream's [`ActiveStream`]
    /// on to the response body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        stream: Option<ActiveStream>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    /// Wraps the body once the response is there.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let stream = this.stream.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _stream: stream,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its stream's [`ActiveStream`] until it is
    /// dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _stream: Option<ActiveStream>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    /// Forwarded.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    /// Forwarded.
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// Forwarded.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

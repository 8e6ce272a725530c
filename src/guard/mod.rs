//! Our own limits on every call, between the request id and the routes:
//! metadata size ([`metadata`]), calls in flight ([`shed`]), the
//! per-request deadline ([`deadline`]), and turning tonic's own refusals
//! into the contract's ([`rewrite`]). Each refusal is a gRPC status made by
//! [`Failure::into_status`], so it carries ErrorInfo with the request id,
//! and each gets a log line naming the rpc, the reason, the request id and
//! the peer (never a header value).
//!
//! One service with one body type ([`GuardBody`]) rather than a layer per
//! limit: a call pays one boxed future and one body wrapper for all of
//! them.

mod body;
mod deadline;
mod metadata;
mod rewrite;
mod shed;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

pub use body::GuardBody;
use deadline::Deadline;
use shed::{Kind, Pools};

use crate::error::Failure;
use crate::request_id::RequestId;
use crate::transport::{Peer, PeerInfo};

/// How long a caller refused for a full server should wait before
/// retrying: long enough for calls in flight to finish (most take
/// microseconds; stalled ones end at the request timeout).
const RETRY_AFTER_OVERLOAD: Duration = Duration::from_millis(250);

/// The limits, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// The largest header list (RFC 7541 size: name + value + 32 per
    /// entry, pseudo-headers included) a call may carry.
    pub max_header_list_bytes: usize,
    /// The largest request message; only used to name the limit when
    /// tonic's own refusal is rewritten (tonic enforces it).
    pub max_message_bytes: usize,
    /// The server's deadline for every call but Health/Watch; a client's
    /// sooner `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// Calls in flight over all connections (health apart).
    pub max_in_flight: usize,
    /// Health/Check calls in flight: their own pool, so health answers
    /// while the calls' pool is full.
    pub max_health_checks: usize,
    /// Health/Watch streams open: their own pool, as they last as long
    /// as the client wants and must not starve Health/Check.
    pub max_health_watches: usize,
}

/// Builds [`Guard`]s that share one set of pools.
#[derive(Clone, Debug)]
pub struct GuardLayer {
    /// The limits and the pools, for every connection's stack.
    shared: Arc<Shared>,
}

/// What every [`Guard`] of the server shares.
#[derive(Debug)]
struct Shared {
    /// The limits.
    config: GuardConfig,
    /// The in-flight pools.
    pools: Pools,
}

impl GuardLayer {
    /// One set of pools sized by `config`.
    pub fn new(config: GuardConfig) -> GuardLayer {
        let pools = Pools::new(&config);
        GuardLayer {
            shared: Arc::new(Shared { config, pools }),
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    /// The routes.
    inner: S,
    /// The limits and pools.
    shared: Arc<Shared>,
}

/// What the log line and the status of a refused call need, taken from
/// the request before it is handed on.
#[derive(Debug, Clone)]
struct CallContext {
    /// The request path, `/package.Service/Method`: the rpc.
    rpc: http::uri::PathAndQuery,
    /// Set by [`crate::request_id::RequestIdLayer`], which runs first.
    request_id: Option<RequestId>,
    /// The connection's peer.
    peer: Option<Peer>,
}

impl CallContext {
    /// Reads the rpc, request id and peer; all clones share their bytes.
    fn of<B>(request: &Request<B>) -> CallContext {
        CallContext {
            rpc: request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            request_id: request.extensions().get::<RequestId>().cloned(),
            peer: request
                .extensions()
                .get::<PeerInfo>()
                .map(|info| info.peer.clone()),
        }
    }

    /// The request id's text, `-` when there is none.
    fn request_id(&self) -> &str {
        self.request_id.as_ref().map_or("-", RequestId::as_str)
    }

    /// Logs `failure` as this call's refusal.
    fn log(&self, failure: &Failure) {
        tracing::info!(
            rpc = %self.rpc.path(),
            request_id = %self.request_id(),
            peer = %LoggedPeer(self.peer.as_ref()),
            outcome = %failure.reason(),
            code = ?failure.code(),
            detail = %failure,
            "call refused by the server's limits"
        );
    }

    /// Logs `failure` and answers with its status, trailers-only.
    fn refuse(&self, failure: Failure) -> Response<GuardBody> {
        self.log(&failure);
        let status = failure.into_status(self.request_id());
        status
            .into_http::<tonic::body::Body>()
            .map(GuardBody::plain)
    }
}

/// A peer as a log field: the address, or the Unix uid and pid.
struct LoggedPeer<'a>(Option<&'a Peer>);

impl std::fmt::Display for LoggedPeer<'_> {
    /// `127.0.0.1:5000`, `uid:1000/pid:42`, or `-`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(Peer::Tcp(addr)) => write!(f, "{addr}"),
            Some(Peer::Unix {
                uid,
                pid: Some(pid),
            }) => write!(f, "uid:{uid}/pid:{pid}"),
            Some(Peer::Unix { uid, pid: None }) => write!(f, "uid:{uid}"),
            None => f.write_str("-"),
        }
    }
}

/// The boxed response future of a [`Guard`].
type GuardFuture =
    Pin<Box<dyn Future<Output = Result<Response<GuardBody>, Infallible>> + Send + 'static>>;

impl<S, B> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<GuardBody>;
    type Error = Infallible;
    type Future = GuardFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// Checks the metadata size, takes a place in the call's pool, and
    /// runs the call under its deadline; refusals answer at once, without
    /// reaching the routes.
    fn call(&mut self, request: Request<B>) -> GuardFuture {
        let call = CallContext::of(&request);
        let config = &self.shared.config;
        // A refusal keeps the request until its answer is sent: dropping a
        // request body the client is still sending resets the stream
        // (CANCEL), which can overtake the answer.
        let refused = |failure, request: Request<B>| -> GuardFuture {
            let response = call.refuse(failure);
            let response = response.map(|body| body.holding(Box::new(request)));
            Box::pin(std::future::ready(Ok(response)))
        };
        if metadata::header_list_size(&request) > config.max_header_list_bytes {
            let failure = Failure::TooLarge {
                part: "metadata",
                limit: config.max_header_list_bytes,
            };
            return refused(failure, request);
        }
        let kind = Kind::of(call.rpc.path());
        let Some(permit) = self.shared.pools.admit(kind) else {
            let failure = Failure::Unavailable {
                message: kind.full_message(),
                retry_after: RETRY_AFTER_OVERLOAD,
            };
            return refused(failure, request);
        };
        let deadline = match kind {
            Kind::HealthWatch => None,
            Kind::Call | Kind::HealthCheck => Some(Deadline::for_request(
                request.headers(),
                config.request_timeout,
            )),
        };
        let max_message_bytes = config.max_message_bytes;
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                Some(deadline) => {
                    // Boxed so that, cut off, it can go with the answer
                    // (see `refused` above: it holds the request body).
                    let mut response = Box::pin(response);
                    match tokio::time::timeout_at(deadline.at, &mut response).await {
                        Ok(response) => response?,
                        Err(_) => {
                            let answer = call.refuse(deadline.exceeded());
                            return Ok(answer.map(|body| body.holding(Box::new(response))));
                        }
                    }
                }
                None => response.await?,
            };
            if let Some(failure) =
                rewrite::trailers_only(response.headers(), &call, max_message_bytes)
            {
                return Ok(call.refuse(failure));
            }
            Ok(response
                .map(|inner| GuardBody::new(inner, permit, deadline, call, max_message_bytes)))
        })
    }
}

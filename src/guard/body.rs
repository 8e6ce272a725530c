//! The response body of a guarded call: holds the call's place in its
//! pool until the response is done, ends a response still streaming at the
//! deadline with DEADLINE_EXCEEDED trailers, and rewrites tonic's
//! OUT_OF_RANGE trailers like its trailers-only answers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::deadline::Deadline;
use super::{rewrite, CallContext};
use crate::error::Failure;

/// See the module doc.
pub struct GuardBody {
    /// tonic's body.
    inner: tonic::body::Body,
    /// Everything only an admitted call has; `None` for a refusal, so a
    /// refusal's body is no bigger than it must be.
    watch: Option<Box<Watch>>,
    /// Set once the body has ended, by the inner body or by the deadline.
    done: bool,
    /// What a refusal keeps until its answer is sent: the request, or the
    /// call cut off at its deadline (which holds the request). Dropping a
    /// request body the client is still sending resets the stream, and
    /// that reset can overtake the answer.
    _held: Option<Box<dyn Send>>,
}

/// The state of an admitted call's body.
struct Watch {
    /// The call's place in its pool, given back when the body is dropped.
    _permit: Option<OwnedSemaphorePermit>,
    /// The call's deadline, if it has one.
    deadline: Option<Deadline>,
    /// The deadline's timer, made only once the body first waits: a unary
    /// response is ready at once and never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// For the log line and the status.
    call: CallContext,
    /// For a rewritten refusal's message.
    max_message_bytes: usize,
}

impl GuardBody {
    /// A body with nothing to watch: refusals, whose status is in the
    /// headers.
    pub(super) fn plain(inner: tonic::body::Body) -> GuardBody {
        GuardBody {
            inner,
            watch: None,
            done: false,
            _held: None,
        }
    }

    /// This body, keeping `held` until it is dropped.
    pub(super) fn holding(mut self, held: Box<dyn Send>) -> GuardBody {
        self._held = Some(held);
        self
    }

    /// An admitted call's body.
    pub(super) fn new(
        inner: tonic::body::Body,
        permit: OwnedSemaphorePermit,
        deadline: Option<Deadline>,
        call: CallContext,
        max_message_bytes: usize,
    ) -> GuardBody {
        GuardBody {
            inner,
            watch: Some(Box::new(Watch {
                _permit: Some(permit),
                deadline,
                timer: None,
                call,
                max_message_bytes,
            })),
            done: false,
            _held: None,
        }
    }
}

/// The trailers of `failure`'s status for the call `call`.
fn status_trailers(call: &CallContext, failure: Failure) -> HeaderMap {
    call.log(&failure);
    let mut trailers = HeaderMap::new();
    // Only fails on a message that is no valid header, which ours never is.
    let _ = failure
        .into_status(call.request_id())
        .add_header(&mut trailers);
    trailers
}

impl Body for GuardBody {
    type Data = Bytes;
    type Error = tonic::Status;

    /// tonic's frames, with its OUT_OF_RANGE trailers rewritten; once the
    /// deadline passes while the body waits, DEADLINE_EXCEEDED trailers
    /// end it.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(watch) = &this.watch else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                let rewritten = frame.trailers_ref().and_then(|trailers| {
                    rewrite::trailers_only(trailers, &watch.call, watch.max_message_bytes)
                });
                match rewritten {
                    Some(failure) => {
                        this.done = true;
                        let trailers = status_trailers(&watch.call, failure);
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    None => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            Poll::Pending => {
                let Some(watch) = &mut this.watch else {
                    return Poll::Pending;
                };
                let Some(deadline) = watch.deadline else {
                    return Poll::Pending;
                };
                let timer = watch
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.at)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                let trailers = status_trailers(&watch.call, deadline.exceeded());
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    /// Ended once this body or tonic's says so.
    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    /// tonic's hint; trailers carry no data.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

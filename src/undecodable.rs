//! Requests tonic refuses before any handler runs: a body that is not one
//! well-formed gRPC frame (a bad compressed flag, a frame cut short, no
//! message at all) or whose bytes are not the RPC's protobuf message.
//! tonic answers those INTERNAL (or UNKNOWN) with a bare message, and a
//! frame longer than the decoding limit OUT_OF_RANGE; the contract says bad
//! input gets a typed error with ErrorInfo and never UNKNOWN or INTERNAL.
//! [`DecodeFailures`] wraps the authority's routes and turns each such
//! answer into the [`Failure`] it is: INVALID_REQUEST, naming the field
//! prost could not decode when it says one, or REQUEST_TOO_LARGE. Found by
//! the `rpc_bodies` fuzz target.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::Service;

use crate::error::Failure;
use crate::request_id::RequestId;
use crate::validate::FieldViolation;

/// tonic's decoding limit when the server sets none (4 MiB).
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The field a violation names when the body as a whole is unreadable.
const WHOLE_REQUEST: &str = "request";

/// Wraps a generated gRPC server so that what tonic refuses while decoding
/// a request is answered like any other bad input.
#[derive(Debug, Clone)]
pub struct DecodeFailures<S> {
    /// The generated server.
    inner: S,
}

impl<S> DecodeFailures<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        DecodeFailures { inner }
    }
}

impl<S: NamedService> NamedService for DecodeFailures<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for DecodeFailures<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A clone of the id shares its bytes; the path is only looked at
        // when a refusal has to be rewritten, so it is kept as a cheap Uri.
        let request_id = request.extensions().get::<RequestId>().cloned();
        let uri = request.uri().clone();
        Answer {
            inner: self.inner.call(request),
            request_id,
            uri,
        }
    }
}

/// The future of a [`DecodeFailures`] call: the inner answer, rewritten
/// when it is one of tonic's decoding refusals. Not boxed: the generated
/// server's future is already a box, so this adds no allocation per call.
pub struct Answer<F> {
    /// The generated server's answer.
    inner: F,
    /// For the rewritten answer's ErrorInfo.
    request_id: Option<RequestId>,
    /// Names the RPC in a rewritten answer.
    uri: http::Uri,
}

impl<F, E> Future for Answer<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        // tonic keeps the Status of a trailers-only answer in its
        // extensions; the handlers' own failures always carry details.
        let failure = match response.extensions().get::<Status>() {
            Some(status) if status.details().is_empty() => decoding_failure(status, &self.uri),
            _ => None,
        };
        let Some(failure) = failure else {
            return Poll::Ready(Ok(response));
        };
        let request_id = self.request_id.as_ref().map_or("-", RequestId::as_str);
        tracing::info!(
            path = %self.uri.path(),
            request_id = %request_id,
            outcome = %failure.reason(),
            code = ?failure.code(),
            decode_error = %response
                .extensions()
                .get::<Status>()
                .map_or("", |status| status.message()),
            "rpc refused before its handler"
        );
        Poll::Ready(Ok(failure.into_status(request_id).into_http()))
    }
}

/// The failure a detail-less refusal from tonic's decoding stands for, or
/// None for anything else (UNIMPLEMENTED for an unknown method, say).
fn decoding_failure(status: &Status, uri: &http::Uri) -> Option<Failure> {
    match status.code() {
        Code::Internal | Code::Unknown => {
            let rpc = uri.path().rsplit('/').next().unwrap_or_default();
            let (field, problem) = decode_error_field(status.message());
            Some(Failure::InvalidArgument(vec![FieldViolation {
                description: format!(
                    "{field}: the request is not a well-formed {rpc}Request in one gRPC \
                     message ({problem}); fix the client, retrying unchanged cannot succeed"
                ),
                field: field.into(),
            }]))
        }
        Code::OutOfRange | Code::ResourceExhausted => Some(Failure::TooLarge {
            part: "message",
            limit: limit_in(status.message()).unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        }),
        _ => None,
    }
}

/// The top-level field prost names in its decode error, and what is
/// wrong; the whole request when the error is about the frame rather than
/// a field. prost lists `Message.field: ` pairs innermost first
/// (`failed to decode Protobuf message: Duration.seconds:
/// MintRequest.idle_timeout: invalid varint`), so the last pair is the
/// request's own field.
fn decode_error_field(message: &str) -> (String, &str) {
    let Some(mut rest) = message.strip_prefix("failed to decode Protobuf message: ") else {
        return (WHOLE_REQUEST.to_owned(), message);
    };
    let is_name = |text: &str| {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let mut field = None;
    while let Some((pair, after)) = rest.split_once(": ") {
        match pair.split_once('.') {
            Some((message, name)) if is_name(message) && is_name(name) => {
                field = Some(name);
                rest = after;
            }
            _ => break,
        }
    }
    (field.unwrap_or(WHOLE_REQUEST).to_owned(), rest)
}

/// The limit tonic states in its message (`... the limit is: N bytes`).
fn limit_in(message: &str) -> Option<usize> {
    let (_, rest) = message.split_once("the limit is: ")?;
    rest.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prost_errors_name_their_top_level_field() {
        assert_eq!(
            decode_error_field(
                "failed to decode Protobuf message: MintRequest.thread_id: invalid string \
                 value: data is not UTF-8 encoded"
            ),
            (
                "thread_id".to_owned(),
                "invalid string value: data is not UTF-8 encoded"
            )
        );
        assert_eq!(
            decode_error_field(
                "failed to decode Protobuf message: Duration.seconds: MintRequest.idle_timeout: \
                 invalid varint"
            ),
            ("idle_timeout".to_owned(), "invalid varint"),
            "the outermost pair is the request's field"
        );
        assert_eq!(
            decode_error_field(
                "failed to decode Protobuf message: MintRequest.scopes: invalid wire type: \
                 Varint (expected LengthDelimited)"
            ),
            (
                "scopes".to_owned(),
                "invalid wire type: Varint (expected LengthDelimited)"
            )
        );
        assert_eq!(
            decode_error_field("failed to decode Protobuf message: invalid wire type value: 7"),
            ("request".to_owned(), "invalid wire type value: 7")
        );
        assert_eq!(
            decode_error_field("Unexpected EOF decoding stream."),
            ("request".to_owned(), "Unexpected EOF decoding stream.")
        );
    }

    #[test]
    fn the_stated_limit_is_kept() {
        assert_eq!(
            limit_in(
                "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes"
            ),
            Some(8)
        );
        assert_eq!(limit_in("something else"), None);
    }
}

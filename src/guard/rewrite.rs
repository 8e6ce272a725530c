//! tonic's own refusals, turned into the contract's: an oversized message
//! is refused by tonic with OUT_OF_RANGE and no ErrorInfo; here it becomes
//! RESOURCE_EXHAUSTED REQUEST_TOO_LARGE part=message, and its UNIMPLEMENTED
//! for an unknown service or method becomes METHOD_UNKNOWN. A body it
//! cannot decode (not one well-formed gRPC frame, or not the RPC's
//! protobuf message), which it refuses INTERNAL, becomes INVALID_ARGUMENT
//! INVALID_REQUEST naming the field prost names (found by the `rpc_bodies`
//! fuzz target). Any other status without ErrorInfo that passes by at
//! least gets a log line.

use http::HeaderMap;
use tonic::Code;

use super::CallContext;
use crate::error::Failure;
use crate::validate::FieldViolation;

/// The header that carries a gRPC status.
const GRPC_STATUS: &str = "grpc-status";
/// The header that carries a status's details (ErrorInfo and the rest).
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";
/// tonic's words for a request message over the decoding limit.
const DECODE_TOO_LARGE: &str = "decoded message length too large";
/// tonic's words for a response message over the encoding limit.
const ENCODE_TOO_LARGE: &str = "encoded message length too large";
/// The field a violation names when the body as a whole is unreadable.
const WHOLE_REQUEST: &str = "request";

/// For a trailers-only response (`headers` hold the status) or the
/// trailers of a streamed one: the failure to answer with instead, when
/// tonic refused an oversized request message. Logs other statuses that
/// carry no ErrorInfo. The normal path costs one header lookup.
pub(super) fn trailers_only(
    headers: &HeaderMap,
    call: &CallContext,
    max_message_bytes: usize,
) -> Option<Failure> {
    let code = headers.get(GRPC_STATUS)?;
    if code == "0" || headers.contains_key(GRPC_STATUS_DETAILS) {
        return None;
    }
    let status = tonic::Status::from_header_map(headers)?;
    if status.code() == Code::OutOfRange && status.message().contains(DECODE_TOO_LARGE) {
        return Some(Failure::TooLarge {
            part: "message",
            limit: max_message_bytes,
        });
    }
    if status.code() == Code::Unimplemented {
        // The path is the client's, checked by `http` to be a valid URI
        // path; it is capped so a huge one cannot bloat the answer.
        let mut rpc = call.rpc.path().to_owned();
        if rpc.len() > 256 {
            let mut end = 256;
            while !rpc.is_char_boundary(end) {
                end -= 1;
            }
            rpc.truncate(end);
        }
        return Some(Failure::UnknownMethod { rpc });
    }
    if matches!(status.code(), Code::Internal | Code::Unknown) {
        // Nothing but decoding a request makes tonic answer these: the
        // handlers' own failures all carry ErrorInfo.
        return Some(undecodable(&status, call));
    }
    if status.message().contains(ENCODE_TOO_LARGE) {
        tracing::warn!(
            rpc = %call.rpc.path(),
            request_id = %call.request_id(),
            peer = %super::LoggedPeer(call.peer.as_ref()),
            limit = max_message_bytes,
            "a response message was over --max-message-bytes; the call failed OUT_OF_RANGE"
        );
    } else {
        tracing::info!(
            rpc = %call.rpc.path(),
            request_id = %call.request_id(),
            peer = %super::LoggedPeer(call.peer.as_ref()),
            code = ?status.code(),
            "call failed outside the service, without ErrorInfo"
        );
    }
    None
}

/// A request body tonic could not decode, as the violation of the field
/// prost names, or of the whole request when the frame itself is bad (a
/// compressed flag without `grpc-encoding`, a frame cut short, none).
fn undecodable(status: &tonic::Status, call: &CallContext) -> Failure {
    let rpc = call.rpc.path().rsplit('/').next().unwrap_or_default();
    let (field, problem) = decode_error_field(status.message());
    Failure::InvalidArgument(vec![FieldViolation {
        description: format!(
            "{field}: the request is not a well-formed {rpc}Request in one gRPC message \
             ({problem}); fix the client, retrying unchanged cannot succeed"
        ),
        field: field.into(),
    }])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallContext {
        CallContext {
            rpc: http::uri::PathAndQuery::from_static("/a.B/C"),
            request_id: None,
            peer: None,
        }
    }

    /// Catches: tonic's OUT_OF_RANGE passed through, a success or a status
    /// with details rewritten, or the limit misnamed.
    #[test]
    fn only_tonics_decode_refusal_is_rewritten() {
        let headers = |status: tonic::Status| {
            let mut map = HeaderMap::new();
            status.add_header(&mut map).unwrap();
            map
        };
        let tonic_refusal = headers(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes",
        ));
        let rewritten = trailers_only(&tonic_refusal, &call(), 65536).expect("rewritten");
        assert!(matches!(
            rewritten,
            Failure::TooLarge {
                part: "message",
                limit: 65536
            }
        ));
        assert!(trailers_only(&headers(tonic::Status::ok("")), &call(), 1).is_none());
        assert!(trailers_only(&HeaderMap::new(), &call(), 1).is_none());
        let ours = headers(Failure::Unknown.into_status("r"));
        assert!(trailers_only(&ours, &call(), 1).is_none());
        let other = headers(tonic::Status::out_of_range("something else"));
        assert!(trailers_only(&other, &call(), 1).is_none());
        let unknown = headers(tonic::Status::unimplemented(""));
        match trailers_only(&unknown, &call(), 1) {
            Some(Failure::UnknownMethod { rpc }) => assert_eq!(rpc, "/a.B/C"),
            other => panic!("{other:?}"),
        }
    }

    /// Catches: tonic's INTERNAL for an undecodable body passed through,
    /// or a field prost names not reported as that field.
    #[test]
    fn undecodable_bodies_name_the_field() {
        let mut map = HeaderMap::new();
        tonic::Status::internal(
            "failed to decode Protobuf message: MintRequest.thread_id: invalid string value: \
             data is not UTF-8 encoded",
        )
        .add_header(&mut map)
        .unwrap();
        match trailers_only(&map, &call(), 1) {
            Some(Failure::InvalidArgument(violations)) => {
                assert_eq!(violations.len(), 1);
                assert_eq!(violations[0].field, "thread_id");
                assert!(violations[0].description.contains("not UTF-8"));
            }
            other => panic!("{other:?}"),
        }
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
}

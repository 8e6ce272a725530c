//! The real binary, sent request bodies tonic cannot decode (found by the
//! `rpc_bodies` fuzz target): each gets a typed answer with ErrorInfo, not
//! tonic's bare INTERNAL or OUT_OF_RANGE.

mod common;

use common::Server;
use http_body_util::{BodyExt as _, Full};
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use tower::ServiceExt as _;

const SERVICE: &str = "credential_authority.v1.CredentialAuthority";

/// Sends `body` as is to `rpc` and returns the answer's status.
async fn send(channel: &Channel, rpc: &str, body: &'static [u8]) -> Status {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/{SERVICE}/{rpc}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from_static(body))))
        .unwrap();
    let response = channel.clone().oneshot(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.expect("a body").trailers().cloned();
    trailers
        .as_ref()
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(&parts.headers))
        .expect("a grpc-status")
}

/// The code, ErrorInfo reason and BadRequest fields of an answer.
fn typed(status: &Status) -> (Code, String, Vec<String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
    assert_eq!(info.domain, "credential-authority");
    let fields = details
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default();
    (status.code(), info.reason.clone(), fields)
}

/// Catches: tonic's decoding refusals passed through (INTERNAL for a bad
/// frame or protobuf, OUT_OF_RANGE for an oversized frame, none with
/// ErrorInfo), or a field prost names not reported as that field.
#[tokio::test]
async fn undecodable_bodies_get_typed_answers() {
    let server = Server::start(&[]);
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let invalid = |fields: &[&str]| {
        (
            Code::InvalidArgument,
            "INVALID_REQUEST".to_owned(),
            fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        )
    };
    // A compressed flag without grpc-encoding, a flag that is neither 0
    // nor 1, a frame cut short, no frame at all.
    for body in [
        &b"\x01\x00\x00\x00\x00"[..],
        b"\x0a\x00\x00\x00\x00",
        b"\x00\x00\x00\x00\x09\x0a",
        b"",
    ] {
        let status = send(&channel, "Mint", body).await;
        assert_eq!(
            typed(&status),
            invalid(&["request"]),
            "{body:?}: {status:?}"
        );
    }
    // thread_id (field 1) holding bytes that are not UTF-8.
    let status = send(&channel, "Mint", b"\x00\x00\x00\x00\x04\x0a\x02\xc3\x28").await;
    assert_eq!(typed(&status), invalid(&["thread_id"]), "{status:?}");
    // A frame that says it is 4 GiB long.
    let status = send(&channel, "Resolve", b"\x00\xff\xff\xff\xff").await;
    assert_eq!(
        typed(&status),
        (
            Code::ResourceExhausted,
            "REQUEST_TOO_LARGE".to_owned(),
            vec![]
        ),
        "{status:?}"
    );
    assert_eq!(
        status.get_error_details().error_info().unwrap().metadata["part"],
        "message"
    );
    server.wait_for_log("call refused by the server's limits");
}

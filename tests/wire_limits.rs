//! The wire limits against the real binary, each with small settings:
//! the connection cap, the handshake deadline, the idle GOAWAY, the stream
//! limit, the per-request deadline, load shedding, and message and metadata
//! size, each refusal with its ErrorInfo and its log line. Hostile clients
//! are raw HTTP/2 (tests/common/h2raw.rs); statuses are read with tonic.

mod common;

use common::health::{health, serving};

use std::time::{Duration, Instant};

use common::h2raw::{self, H2};
use common::{client, grpcurl, Server};
use credential_authority::pb;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt as _;

/// The Resolve path.
const RESOLVE: &str = "/credential_authority.v1.CredentialAuthority/Resolve";

/// The ErrorInfo reason and metadata of `status`, after checking the
/// parts every failure has.
fn error_info(status: &Status) -> (String, std::collections::HashMap<String, String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "credential-authority");
    let request_id = &info.metadata["request_id"];
    assert!(!request_id.is_empty() && status.message().contains(request_id.as_str()));
    (info.reason.clone(), info.metadata.clone())
}

/// Waits (bounded) for a refusal log line with `outcome` and `request_id`
/// that names the rpc and the peer.
fn assert_refusal_logged(server: &Server, outcome: &str, request_id: &str, rpc: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.log();
        let found = log.lines().any(|line| {
            line.contains("call refused by the server's limits")
                && line.contains(&format!("outcome={outcome}"))
                && line.contains(&format!("request_id={request_id}"))
                && line.contains(&format!("rpc={rpc}"))
                && line.contains("peer=127.0.0.1:")
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal line for {outcome} {request_id}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Resolve whose body never comes (tonic sends the HEADERS, then waits
/// on an empty stream forever).
async fn stalled_resolve(channel: Channel) -> Result<pb::ResolveResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<pb::ResolveRequest, pb::ResolveResponse>::default();
    let request = tonic::Request::new(tokio_stream::pending::<pb::ResolveRequest>());
    grpc.client_streaming(request, RESOLVE.parse().unwrap(), codec)
        .await
        .map(tonic::Response::into_inner)
}

/// Catches: no connection cap (the extra connection stays open), a cap
/// that closes connections already open, or a permit never given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_the_extra_connection_at_once() {
    let server = Server::start(&["--max-connections", "2"]);
    let mut first = health(&server).await;
    assert_eq!(
        serving(&mut first).await.unwrap(),
        ServingStatus::Serving as i32
    );
    let (mut second, _) = H2::handshake(server.addr).await.unwrap();

    let mut extra = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    assert!(
        h2raw::closed_within(&mut extra, Duration::from_secs(2)).await,
        "the third connection was not closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not closed at once"
    );

    // The two admitted ones keep working.
    assert_eq!(
        serving(&mut first).await.unwrap(),
        ServingStatus::Serving as i32
    );
    second
        .barrier()
        .await
        .expect("the second connection still answers");

    // Closing one frees its place.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok((mut h2, _)) = H2::handshake(server.addr).await {
            if h2.barrier().await.is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Catches: no deadline on the HTTP/2 preface (a silent or half-speaking
/// client holds its connection forever), a deadline per phase instead of
/// one, or a deadline that cuts off clients that did finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_preface_connections_are_closed_at_the_handshake_deadline() {
    let server = Server::start(&["--handshake-timeout", "600ms"]);
    let started = Instant::now();
    let mut silent = H2::connect(server.addr).await.unwrap();
    let mut half = H2::connect(server.addr).await.unwrap();
    half.send(&h2raw::PREFACE[..10]).await.unwrap();
    let mut no_settings = H2::connect(server.addr).await.unwrap();
    no_settings.send(h2raw::PREFACE).await.unwrap();
    let (mut finished, _) = H2::handshake(server.addr).await.unwrap();

    for (name, conn) in [
        ("silent", &mut silent),
        ("half a preface", &mut half),
        ("preface without SETTINGS", &mut no_settings),
    ] {
        assert!(
            h2raw::closed_within(&mut conn.stream, Duration::from_secs(4)).await,
            "{name}: not closed"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(500),
            "{name}: closed after {elapsed:?}, before its deadline"
        );
    }
    // Well past the deadline, the one that finished its handshake is served.
    finished
        .barrier()
        .await
        .expect("a finished handshake is not cut off");
    let mut client = health(&server).await;
    assert_eq!(
        serving(&mut client).await.unwrap(),
        ServingStatus::Serving as i32
    );
}

/// Catches: idle connections never closed, closed without a GOAWAY, or
/// closed while a call is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_a_goaway_after_the_idle_timeout() {
    let server = Server::start(&["--idle-connection-timeout", "1s", "--request-timeout", "3s"]);
    let (mut idle, _) = H2::handshake(server.addr).await.unwrap();
    let (mut busy, _) = H2::handshake(server.addr).await.unwrap();
    let authority = server.addr.to_string();
    busy.open_stalled(1, &h2raw::grpc_headers(RESOLVE, &authority, &[]))
        .await
        .unwrap();
    let started = Instant::now();
    let goaway = idle
        .read_until(Duration::from_secs(5), |f| f.kind == h2raw::GOAWAY)
        .await
        .expect("no GOAWAY on the idle connection");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800),
        "GOAWAY after {elapsed:?}, before the idle timeout"
    );
    assert_eq!(goaway.error_code(), Some(0), "a graceful GOAWAY (NO_ERROR)");
    // The connection with a call in flight got none while it ran; its call
    // ends at its deadline, then it is idle too.
    let first = busy
        .read_until(Duration::from_secs(5), |f| {
            f.kind == h2raw::GOAWAY || (f.kind == h2raw::HEADERS && f.stream == 1)
        })
        .await
        .unwrap();
    assert_eq!(
        first.kind,
        h2raw::HEADERS,
        "GOAWAY while a call was in flight"
    );
    assert!(started.elapsed() >= Duration::from_millis(2500));
}

/// Catches: no stream limit (a connection opens as many as it likes), or a
/// limit that refuses streams below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused() {
    let server = Server::start(&["--max-concurrent-streams", "2"]);
    let (mut h2, settings) = H2::handshake(server.addr).await.unwrap();
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) is announced.
    assert!(settings.contains(&(3, 2)), "{settings:?}");
    h2.barrier().await.unwrap(); // our ACK of it has been read
    let block = h2raw::grpc_headers(RESOLVE, &server.addr.to_string(), &[]);
    for id in [1, 3, 5] {
        h2.open_stalled(id, &block).await.unwrap();
    }
    let frames = h2.barrier().await.unwrap();
    let resets: Vec<_> = frames
        .iter()
        .filter(|f| f.kind == h2raw::RST_STREAM)
        .collect();
    assert_eq!(resets.len(), 1, "{frames:?}");
    assert_eq!(resets[0].stream, 5);
    assert_eq!(resets[0].error_code(), Some(h2raw::REFUSED_STREAM));
}

/// Catches: no server deadline (a stalled body holds its stream forever),
/// tonic's status without ErrorInfo, or no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_deadline_exceeded_with_error_info() {
    let server = Server::start(&["--request-timeout", "700ms"]);
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), stalled_resolve(channel))
        .await
        .expect("no answer within 5 s")
        .expect_err("a stalled call cannot succeed");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed >= Duration::from_millis(650), "after {elapsed:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "REQUEST_DEADLINE_EXCEEDED");
    assert_eq!(metadata["deadline_ms"], "700");
    assert!(status.get_error_details().retry_info().is_none());
    assert_refusal_logged(
        &server,
        "REQUEST_DEADLINE_EXCEEDED",
        &metadata["request_id"],
        RESOLVE,
    );

    // The client's sooner grpc-timeout wins. (A raw client: tonic's own
    // would give up at its timeout before the server's answer arrives.)
    let (mut h2, _) = H2::handshake(server.addr).await.unwrap();
    let block = h2raw::grpc_headers(
        RESOLVE,
        &server.addr.to_string(),
        &[("grpc-timeout", "200m")],
    );
    let started = Instant::now();
    h2.open_stalled(1, &block).await.unwrap();
    let answer = h2
        .read_until(Duration::from_secs(5), |f| {
            f.kind == h2raw::HEADERS && f.stream == 1
        })
        .await
        .expect("no answer");
    let elapsed = started.elapsed();
    assert!(answer.flags & h2raw::END_STREAM != 0, "trailers-only");
    assert!(
        elapsed >= Duration::from_millis(180) && elapsed < Duration::from_millis(650),
        "answered after {elapsed:?}, not at the client's 200ms"
    );
    server.wait_for_log("detail=deadline of 200ms exceeded");
}

/// Catches: no bound on calls in flight, a bound that queues instead of
/// failing fast, shedding without RetryInfo, health shed with the calls, or
/// admitted calls disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_sheds_new_calls_but_answers_health() {
    let server = Server::start(&["--max-in-flight", "2", "--request-timeout", "20s"]);
    let mut resolver = client(&server).await;
    let mut health = health(&server).await;
    let (mut holder, _) = H2::handshake(server.addr).await.unwrap();
    let authority = server.addr.to_string();
    let key = format!("Bearer {}", server.admin_key());
    let block = h2raw::grpc_headers(RESOLVE, &authority, &[("authorization", &key)]);
    // Three stalled calls: one is refused at once, and that refusal is the
    // barrier: the pool was full, so the other two hold its places.
    for id in [1, 3, 5] {
        holder.open_stalled(id, &block).await.unwrap();
    }
    let refused = holder
        .read_until(Duration::from_secs(5), |f| f.kind == h2raw::HEADERS)
        .await
        .expect("none of three calls was refused");
    let held: Vec<u32> = [1, 3, 5]
        .into_iter()
        .filter(|&id| id != refused.stream)
        .collect();

    let started = Instant::now();
    let status = resolver
        .resolve(pb::ResolveRequest {
            token: "mcpca_whatever".into(),
            ..Default::default()
        })
        .await
        .expect_err("the server is full");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not failed fast"
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "SERVICE_UNAVAILABLE");
    assert!(
        status.get_error_details().retry_info().is_some(),
        "RetryInfo"
    );
    assert_refusal_logged(
        &server,
        "SERVICE_UNAVAILABLE",
        &metadata["request_id"],
        RESOLVE,
    );

    assert_eq!(
        serving(&mut health).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // The held calls were untouched: their streams are still open.
    let frames = holder.barrier().await.unwrap();
    assert!(
        frames.iter().all(|f| !held.contains(&f.stream)),
        "a held call was disturbed: {frames:?}"
    );
    // Once they end, calls are admitted again.
    for id in held {
        let cancel = h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes());
        holder.send(&cancel).await.unwrap();
    }
    holder.barrier().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = resolver
            .resolve(pb::ResolveRequest {
                token: "mcpca_whatever".into(),
                ..Default::default()
            })
            .await
            .expect_err("a malformed token");
        if status.code() == Code::Unauthenticated {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "places never given back: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Catches: tonic's OUT_OF_RANGE without ErrorInfo passed through, the
/// wrong part named, or no log line; through tonic and through grpcurl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_request_too_large() {
    let server = Server::start(&["--max-message-bytes", "4096"]);
    let mut client = client(&server).await;
    let status = client
        .resolve(pb::ResolveRequest {
            token: "x".repeat(5000),
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "REQUEST_TOO_LARGE");
    assert_eq!(metadata["part"], "message");
    assert_eq!(metadata["limit"], "4096");
    assert!(status.get_error_details().retry_info().is_none());
    assert_refusal_logged(
        &server,
        "REQUEST_TOO_LARGE",
        &metadata["request_id"],
        RESOLVE,
    );

    // Just under the limit it reaches the service.
    let status = client
        .resolve(pb::ResolveRequest {
            token: "x".repeat(4000),
            ..Default::default()
        })
        .await
        .expect_err("malformed");
    assert_eq!(error_info(&status).0, "TOKEN_MALFORMED");

    let body = grpcurl::resolve_body(&"x".repeat(5000));
    let details = grpcurl::failed(
        grpcurl::call(&server, "Resolve", &body),
        8,
        "REQUEST_TOO_LARGE",
    );
    let info = grpcurl::error_info(&details);
    assert_eq!(info["metadata"]["part"], "message");
}

/// Catches: metadata between the application's limit and h2's reaching
/// the service, or refused as UNKNOWN (h2's 431) instead of with a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_8_kib_is_request_too_large() {
    let server = Server::start(&[]);
    let mut client = client(&server).await;
    let mut request = tonic::Request::new(pb::ResolveRequest {
        token: "mcpca_whatever".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(9 * 1024).parse().unwrap());
    let status = client.resolve(request).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "REQUEST_TOO_LARGE");
    assert_eq!(metadata["part"], "metadata");
    assert_eq!(metadata["limit"], "8192");
    assert_refusal_logged(
        &server,
        "REQUEST_TOO_LARGE",
        &metadata["request_id"],
        RESOLVE,
    );
    // A padding value never reaches the log.
    assert!(!server.log().contains("ppppppppppppppppppppppppppppppp"));

    // 7 KiB is let through to the service.
    let mut request = tonic::Request::new(pb::ResolveRequest {
        token: "mcpca_whatever".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(7 * 1024).parse().unwrap());
    let status = client.resolve(request).await.expect_err("malformed");
    assert_eq!(error_info(&status).0, "TOKEN_MALFORMED");
}

/// Catches: tonic's bare UNIMPLEMENTED (no ErrorInfo) reaching clients for
/// an unknown method of our service or an unknown service, or the path
/// not named.
#[tokio::test]
async fn an_unknown_method_is_method_unknown_with_error_info() {
    let server = Server::start(&[]);
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("connects");
    for path in [
        "/credential_authority.v1.CredentialAuthority/Forge",
        "/no.such.Service/Call",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, pb::ResolveResponse, _>(
                tonic::Request::new(pb::ResolveRequest::default()),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        let (reason, metadata) = error_info(&status);
        assert_eq!(reason, "METHOD_UNKNOWN");
        assert_eq!(metadata["rpc"], path);
        assert_refusal_logged(&server, "METHOD_UNKNOWN", &metadata["request_id"], path);
    }
}

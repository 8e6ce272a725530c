//! Target `rpc_bodies`: arbitrary bytes as the body of every RPC, through
//! the real service stack in-process.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use clap::Parser as _;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tonic::codegen::Bytes;
use tonic::Code;
use tonic_types::StatusExt as _;
use tower::ServiceExt as _;

use crate::audit::{AuditConfig, AuditFailureMode, AuditLog, AuditSink};
use crate::auth::Authenticator;
use crate::clock::FakeClock;
use crate::config::{Cli, Command, ServeArgs};
use crate::error::DOMAIN;
use crate::guard::GuardLayer;
use crate::pb;
use crate::server::{authority_server, call_stack, SERVICE_NAME};
use crate::service::AuthorityService;
use crate::store::Store;
use crate::token::{self, CredentialId};

/// Every RPC, Mint first so that the calls after it meet a store that may
/// hold what the same bytes minted.
const RPCS: [&str; 6] = [
    "Mint",
    "Resolve",
    "Touch",
    "RevokeCredential",
    "RevokeThread",
    "RevokeAll",
];

/// One current-thread runtime per process: building one per input would
/// cost more than the calls it runs.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

/// The server's settings when started with no flags but
/// `--insecure-no-caller-auth`: its default limits, read from the same
/// command line parser.
fn settings() -> &'static ServeArgs {
    static SETTINGS: OnceLock<ServeArgs> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let cli =
            Cli::try_parse_from(["credential-authority", "serve", "--insecure-no-caller-auth"])
                .expect("the default settings parse");
        match cli.command {
            Command::Serve(args) => *args,
            Command::Callers(_) | Command::Restore(_) => unreachable!("parsed as serve"),
        }
    })
}

/// The guard's pools, shared by every input as by every connection.
fn guard() -> &'static GuardLayer {
    static GUARD: OnceLock<GuardLayer> = OnceLock::new();
    GUARD.get_or_init(|| GuardLayer::new(settings().guard_config()))
}

/// One audit trail per process, written to `/dev/null`: the service writes
/// its lines as in production, and the fuzzer's disk stays empty.
fn audit() -> &'static AuditLog {
    static AUDIT: OnceLock<AuditLog> = OnceLock::new();
    AUDIT.get_or_init(|| {
        AuditLog::open(
            AuditConfig {
                sink: AuditSink::File(PathBuf::from("/dev/null")),
                failure: AuditFailureMode::Closed,
                denials_per_second: 10,
                denial_burst: 10,
                total_denials_per_second: 100,
                total_denial_burst: 500,
            },
            Arc::new(FakeClock::new(0)),
        )
        .expect("/dev/null opens for appending")
    })
}

/// Sends the input as the body of every RPC, as it came and inside one
/// well-formed gRPC frame, to the service as the server stacks it (request
/// ids, the guard's limits and rewrites, the authority in insecure mode, as an admin,
/// on a fresh store and a fake clock). Checks that nothing panics, that no
/// answer is UNKNOWN or INTERNAL, that every failure carries a
/// `google.rpc.Status` whose ErrorInfo is of this service's domain (and an
/// INVALID_REQUEST a BadRequest naming a field), and that a successful
/// Mint returns a token and id that parse.
pub fn rpc_bodies(data: &[u8]) {
    let mut framed = Vec::with_capacity(5 + data.len());
    framed.push(0);
    framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
    framed.extend_from_slice(data);
    let clock = Arc::new(FakeClock::new(1_800_000_000_000));
    let limits = settings().store_config();
    let store = Store::new(limits.clone(), clock);
    let authority = AuthorityService::new(
        store.into(),
        limits,
        Arc::new(AtomicBool::new(false)),
        Authenticator::insecure(),
        audit().clone(),
    );
    let max_message = settings().guard_config().max_message_bytes;
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(authority_server(authority, max_message));
    let service = call_stack(guard(), routes.routes().prepare());
    runtime().block_on(async {
        for rpc in RPCS {
            for body in [data, &framed[..]] {
                let request = http::Request::builder()
                    .method(http::Method::POST)
                    .uri(format!("/{SERVICE_NAME}/{rpc}"))
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .body(tonic::body::Body::new(Full::new(Bytes::copy_from_slice(
                        body,
                    ))))
                    .expect("a valid request");
                let response = service
                    .clone()
                    .oneshot(request)
                    .await
                    .expect("the service never fails as a service");
                let (parts, body) = response.into_parts();
                let collected = body.collect().await.expect("the response body streams");
                // A trailers-only answer carries its status in the headers.
                let trailers = collected.trailers().cloned();
                let status = trailers
                    .as_ref()
                    .and_then(tonic::Status::from_header_map)
                    .or_else(|| tonic::Status::from_header_map(&parts.headers))
                    .expect("every answer has a grpc-status");
                check_answer(rpc, &status, &collected.to_bytes());
            }
        }
    });
}

/// The properties of one answer.
fn check_answer(rpc: &str, status: &tonic::Status, body: &[u8]) {
    let code = status.code();
    assert!(
        !matches!(code, Code::Unknown | Code::Internal),
        "{rpc} answered {code:?}: {}",
        status.message()
    );
    if code == Code::Ok {
        if rpc == "Mint" {
            let message = body.get(5..).expect("an OK Mint has a message");
            let minted = pb::MintResponse::decode(message).expect("a MintResponse");
            assert!(
                token::parse(&minted.token).is_ok(),
                "Mint returned a bad token"
            );
            assert!(
                CredentialId::parse(&minted.credential_id).is_some(),
                "Mint returned a bad credential id"
            );
        }
        return;
    }
    let details = status.check_error_details().unwrap_or_else(|error| {
        panic!("{rpc} answered {code:?} with undecodable details ({error}): {status:?}")
    });
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("{rpc} answered {code:?} without ErrorInfo: {status:?}"));
    assert_eq!(info.domain, DOMAIN, "{rpc}: ErrorInfo of another domain");
    assert!(!info.reason.is_empty(), "{rpc}: ErrorInfo without a reason");
    if info.reason == "INVALID_REQUEST" {
        let bad = details
            .bad_request()
            .unwrap_or_else(|| panic!("{rpc}: INVALID_REQUEST without BadRequest"));
        assert!(
            !bad.field_violations.is_empty()
                && bad.field_violations.iter().all(|v| !v.field.is_empty()),
            "{rpc}: INVALID_REQUEST names no field: {bad:?}"
        );
    }
}

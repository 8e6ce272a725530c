//! The real binary, called over gRPC with the generated Rust client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, Client, Server};
use credential_authority::pb;
use credential_authority::token::Token;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt as _;

const SERVICE: &str = "credential_authority.v1.CredentialAuthority";

fn mint_request(thread_id: &str, instance: &str) -> pb::MintRequest {
    pb::MintRequest {
        thread_id: thread_id.into(),
        provider_instance_id: instance.into(),
        provider_kind: "claude".into(),
        ..Default::default()
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

async fn mint(client: &mut Client, request: pb::MintRequest) -> pb::MintResponse {
    client
        .mint(request)
        .await
        .expect("mint succeeds")
        .into_inner()
}

async fn resolve(client: &mut Client, token: &str) -> Result<pb::ResolveResponse, Status> {
    client
        .resolve(pb::ResolveRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// The ErrorInfo of a failure, checked for the fixed parts every failure has.
fn error_info(status: &Status) -> (String, HashMap<String, String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("every failure carries ErrorInfo");
    assert_eq!(info.domain, "credential-authority");
    assert!(
        info.metadata
            .get("request_id")
            .is_some_and(|id| !id.is_empty()),
        "ErrorInfo metadata carries the request id"
    );
    assert!(
        status.message().contains(&info.metadata["request_id"]),
        "the message names the request id"
    );
    (info.reason.clone(), info.metadata.clone())
}

/// Asserts a terminal UNAUTHENTICATED failure with `reason`.
fn assert_dead(
    result: Result<pb::ResolveResponse, Status>,
    reason: &str,
) -> HashMap<String, String> {
    let status = result.expect_err("resolve must fail");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (got, metadata) = error_info(&status);
    assert_eq!(got, reason);
    assert!(
        status.message().contains("never work again"),
        "{}",
        status.message()
    );
    assert!(
        status.get_error_details().retry_info().is_none(),
        "a dead token is never retryable"
    );
    metadata
}

fn timestamp_millis(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("timestamp present");
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_resolve_and_revoke_thread() {
    let server = Server::start(&[]);
    let mut client = client(&server).await;
    let minted = mint(&mut client, mint_request("thread-1", "claude-1")).await;
    assert!(minted.token.starts_with("mcpca_"));
    assert!(minted.credential_id.starts_with("cred_"));
    let idle = timestamp_millis(&minted.idle_expires_at);
    let expires = timestamp_millis(&minted.expires_at);
    assert_eq!(
        expires - idle,
        30 * 86_400_000 - 30 * 60_000,
        "defaults: 30d and 30m"
    );

    let resolved = resolve(&mut client, &minted.token).await.unwrap();
    assert_eq!(resolved.credential_id, minted.credential_id);
    assert_eq!(resolved.thread_id, "thread-1");
    assert_eq!(resolved.provider_instance_id, "claude-1");
    assert_eq!(resolved.provider_kind, "claude");
    assert!(
        timestamp_millis(&resolved.expires_at) >= expires,
        "slides, never back"
    );

    let second = mint(&mut client, mint_request("thread-1", "codex-1")).await;
    let other_thread = mint(&mut client, mint_request("thread-2", "claude-1")).await;
    let revoked = client
        .revoke_thread(pb::RevokeThreadRequest {
            thread_id: "thread-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 2);
    for token in [&minted.token, &second.token] {
        let metadata = assert_dead(resolve(&mut client, token).await, "TOKEN_REVOKED");
        assert_eq!(metadata["thread_id"], "thread-1");
        assert_eq!(metadata["revocation_cause"], "thread");
        assert!(metadata["credential_id"].starts_with("cred_"));
    }
    assert!(resolve(&mut client, &other_thread.token).await.is_ok());
    let again = client
        .revoke_thread(pb::RevokeThreadRequest {
            thread_id: "thread-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoked, 0, "idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_per_provider_instance_and_globally() {
    let server = Server::start(&[]);
    let mut client = client(&server).await;
    let claude = mint(&mut client, mint_request("t1", "claude-1")).await;
    let codex = mint(&mut client, mint_request("t1", "codex-1")).await;
    let codex2 = mint(&mut client, mint_request("t2", "codex-1")).await;

    let revoked = client
        .revoke_all(pb::RevokeAllRequest {
            provider_instance_id: "claude-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    let metadata = assert_dead(resolve(&mut client, &claude.token).await, "TOKEN_REVOKED");
    assert_eq!(metadata["revocation_cause"], "provider_instance");
    assert!(
        resolve(&mut client, &codex.token).await.is_ok(),
        "other adapters stay logged in"
    );

    let revoked = client
        .revoke_all(pb::RevokeAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 2);
    for token in [&codex.token, &codex2.token] {
        let metadata = assert_dead(resolve(&mut client, token).await, "TOKEN_REVOKED");
        assert_eq!(metadata["revocation_cause"], "all");
    }
    let fresh = mint(&mut client, mint_request("t3", "claude-1")).await;
    assert!(resolve(&mut client, &fresh.token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolve_failure_reason() {
    let server = Server::start(&[]);
    let mut client = client(&server).await;

    // Malformed: garbage, a typo, the wrong prefix. No credential id is known.
    let good = mint(&mut client, mint_request("t", "i")).await;
    let mut typo = good.token.clone().into_bytes();
    typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
    for garbage in [
        "garbage".to_owned(),
        String::from_utf8(typo).unwrap(),
        good.token.replacen("mcpca_", "mcpcx_", 1),
        format!("{} ", good.token),
        "x".repeat(60_000), // under --max-message-bytes (64 KiB); larger is REQUEST_TOO_LARGE (tests/wire_limits.rs)
    ] {
        let metadata = assert_dead(resolve(&mut client, &garbage).await, "TOKEN_MALFORMED");
        assert!(!metadata.contains_key("credential_id"));
    }

    // Unknown: well-formed, never minted here.
    let stranger = Token::generate().into_string();
    assert_dead(resolve(&mut client, &stranger).await, "TOKEN_UNKNOWN");

    // Idle timeout and expiry, with short per-credential overrides.
    let idle = mint(
        &mut client,
        pb::MintRequest {
            idle_timeout: duration(Duration::from_millis(150)),
            ..mint_request("t-idle", "i")
        },
    )
    .await;
    let expiring = mint(
        &mut client,
        pb::MintRequest {
            max_lifetime: duration(Duration::from_millis(150)),
            ..mint_request("t-exp", "i")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metadata = assert_dead(
        resolve(&mut client, &idle.token).await,
        "TOKEN_IDLE_TIMEOUT",
    );
    assert_eq!(metadata["credential_id"], idle.credential_id);
    assert_eq!(metadata["thread_id"], "t-idle");
    let metadata = assert_dead(resolve(&mut client, &expiring.token).await, "TOKEN_EXPIRED");
    assert_eq!(metadata["credential_id"], expiring.credential_id);

    // Revoked.
    client
        .revoke_thread(pb::RevokeThreadRequest {
            thread_id: "t".into(),
        })
        .await
        .unwrap();
    assert_dead(resolve(&mut client, &good.token).await, "TOKEN_REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_logged() {
    let server = Server::start(&[]);
    let mut client = client(&server).await;
    let mut request = Request::new(mint_request("t", "i"));
    request
        .metadata_mut()
        .insert("x-request-id", "caller-chosen-42".parse().unwrap());
    let response = client.mint(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "caller-chosen-42"
    );

    let mut request = Request::new(pb::ResolveRequest {
        token: Token::generate().into_string(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "caller-chosen-43".parse().unwrap());
    let status = client.resolve(request).await.unwrap_err();
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "caller-chosen-43"
    );
    let (_, metadata) = error_info(&status);
    assert_eq!(metadata["request_id"], "caller-chosen-43");

    // Without one, the server makes one up and still returns it.
    let response = client.mint(mint_request("t", "i")).await.unwrap();
    let generated = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 32);

    server.wait_for_log("caller-chosen-43");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("caller-chosen-43"))
        .unwrap();
    assert!(
        line.contains("Resolve") && line.contains("TOKEN_UNKNOWN") && line.contains("latency_us=")
    );
    server.wait_for_log(generated);
}

/// Sends a Mint and returns the fields named in its BadRequest.
async fn bad_mint_fields(client: &mut Client, request: pb::MintRequest) -> Vec<String> {
    let status = client
        .mint(request)
        .await
        .expect_err("invalid mint is refused");
    bad_fields(&status)
}

fn bad_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (reason, _) = error_info(status);
    assert_eq!(reason, "INVALID_REQUEST");
    assert!(status.get_error_details().retry_info().is_none());
    status
        .get_error_details()
        .bad_request()
        .expect("BadRequest detail")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_every_field_and_loses_nothing() {
    let server = Server::start(&["--idle-timeout", "1h", "--max-lifetime", "2d"]);
    let mut client = client(&server).await;
    let keeper = mint(&mut client, mint_request("keeper", "i")).await;

    let long = "x".repeat(257);
    for (field, bad) in [
        ("", ""),
        ("long", long.as_str()),
        ("control", "a\u{0}b"),
        ("newline", "line\nbreak"),
    ] {
        let _ = field;
        if !bad.is_empty() {
            assert_eq!(
                bad_mint_fields(
                    &mut client,
                    pb::MintRequest {
                        provider_kind: bad.into(),
                        ..mint_request("t", "i")
                    }
                )
                .await,
                ["provider_kind"]
            );
        }
        assert_eq!(
            bad_mint_fields(
                &mut client,
                pb::MintRequest {
                    thread_id: bad.into(),
                    ..mint_request("t", "i")
                }
            )
            .await,
            ["thread_id"]
        );
        assert_eq!(
            bad_mint_fields(
                &mut client,
                pb::MintRequest {
                    provider_instance_id: bad.into(),
                    ..mint_request("t", "i")
                }
            )
            .await,
            ["provider_instance_id"]
        );
        let status = client
            .revoke_thread(pb::RevokeThreadRequest {
                thread_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["thread_id"]);
        if !bad.is_empty() {
            let status = client
                .revoke_all(pb::RevokeAllRequest {
                    provider_instance_id: bad.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(bad_fields(&status), ["provider_instance_id"]);
        }
    }

    for bad in [
        prost_types::Duration {
            seconds: 0,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: -30,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: 0,
            nanos: 500,
        },
        prost_types::Duration {
            seconds: 1,
            nanos: -1,
        },
        prost_types::Duration {
            seconds: 0,
            nanos: 2_000_000_000,
        },
        prost_types::Duration {
            seconds: 3 * 86_400,
            nanos: 0,
        },
    ] {
        assert_eq!(
            bad_mint_fields(
                &mut client,
                pb::MintRequest {
                    idle_timeout: Some(bad),
                    ..mint_request("t", "i")
                }
            )
            .await,
            ["idle_timeout"]
        );
        assert_eq!(
            bad_mint_fields(
                &mut client,
                pb::MintRequest {
                    max_lifetime: Some(bad),
                    ..mint_request("t", "i")
                }
            )
            .await,
            ["max_lifetime"]
        );
    }
    // Above the server's idle timeout (1h) but within its max lifetime.
    assert_eq!(
        bad_mint_fields(
            &mut client,
            pb::MintRequest {
                idle_timeout: duration(Duration::from_secs(7200)),
                ..mint_request("t", "i")
            }
        )
        .await,
        ["idle_timeout"]
    );
    // Several bad fields at once are all named.
    assert_eq!(
        bad_mint_fields(
            &mut client,
            pb::MintRequest {
                thread_id: String::new(),
                provider_instance_id: long.clone(),
                provider_kind: String::new(),
                idle_timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0
                }),
                ..Default::default()
            }
        )
        .await,
        ["thread_id", "provider_instance_id", "idle_timeout"]
    );
    let status = resolve(&mut client, "").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["token"]);

    // Exactly at the limits is fine.
    let edge = mint(
        &mut client,
        pb::MintRequest {
            thread_id: "t".repeat(256),
            idle_timeout: duration(Duration::from_secs(3600)),
            max_lifetime: duration(Duration::from_secs(2 * 86_400)),
            ..mint_request("t", "i")
        },
    )
    .await;
    assert!(resolve(&mut client, &edge.token).await.is_ok());

    // Nothing already stored was lost or changed.
    let resolved = resolve(&mut client, &keeper.token).await.unwrap();
    assert_eq!(resolved.thread_id, "keeper");
    assert_eq!(resolved.credential_id, keeper.credential_id);
    assert!(server.log().lines().all(|l| !l.contains("panicked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serves_both_names_and_unknown_services_are_not_found() {
    let server = Server::start(&[]);
    let mut health = HealthClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for service in ["", SERVICE] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let status = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_not_serving_and_exits_zero() {
    let mut server = Server::start(&[]);
    let mut health = HealthClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    server.signal(libc::SIGTERM);
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("health reports the change before exit");
    if let Ok(Some(next)) = next {
        assert_eq!(next.status(), ServingStatus::NotServing);
    } else {
        panic!("watch ended without reporting NOT_SERVING: {next:?}");
    }
    drop(watch);
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_exits_zero() {
    let mut server = Server::start(&[]);
    let mut client = client(&server).await;
    mint(&mut client, mint_request("t", "i")).await;
    server.signal(libc::SIGINT);
    assert_eq!(server.wait().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_client_connections_do_not_block_exit() {
    let mut server = Server::start(&["--shutdown-grace", "2s"]);
    let mut client = client(&server).await;
    mint(&mut client, mint_request("t", "i")).await;
    // The client keeps its idle connection open while the server shuts down:
    // the server still exits promptly, well within its grace period.
    let started = std::time::Instant::now();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!server.log().contains("grace period over"));
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_from_environment_variables() {
    let server = Server::start_with_env(
        &[],
        &[
            ("CREDENTIAL_AUTHORITY_IDLE_TIMEOUT", "90s"),
            ("CREDENTIAL_AUTHORITY_MAX_LIFETIME", "2h"),
            ("CREDENTIAL_AUTHORITY_ABSOLUTE_LIFETIME", "3h"),
        ],
    );
    let mut client = client(&server).await;
    let minted = mint(&mut client, mint_request("t", "i")).await;
    let idle = timestamp_millis(&minted.idle_expires_at);
    let expires = timestamp_millis(&minted.expires_at);
    assert_eq!(expires - idle, 2 * 3_600_000 - 90_000);
    let status = client
        .mint(pb::MintRequest {
            idle_timeout: duration(Duration::from_secs(91)),
            ..mint_request("t", "i")
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["idle_timeout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_credential-authority"))
        .args(["serve", "--listen", "127.0.0.1:0", "--idle-timeout", "0s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("idle-timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_ever_reaches_the_log() {
    for format in ["text", "json"] {
        let mut server = Server::start(&["--log-format", format]);
        let mut client = client(&server).await;
        let mut secrets = Vec::new();
        for i in 0..20 {
            let minted = mint(&mut client, mint_request(&format!("t{i}"), "i")).await;
            resolve(&mut client, &minted.token).await.unwrap();
            // Failures that carry token-like input: a typo and an unknown one.
            let mut typo = minted.token.clone();
            typo.pop();
            typo.push('!');
            let _ = resolve(&mut client, &typo).await;
            secrets.push(minted.token);
        }
        let unknown = Token::generate().into_string();
        let _ = resolve(&mut client, &unknown).await;
        secrets.push(unknown);
        client
            .revoke_all(pb::RevokeAllRequest::default())
            .await
            .unwrap();
        for token in &secrets {
            let _ = resolve(&mut client, token).await;
        }
        assert_eq!(server.terminate().code(), Some(0));
        let log = server.log();
        let rpc_lines = log.lines().filter(|l| l.contains("Resolve")).count();
        assert!(
            rpc_lines >= 60,
            "the log holds the calls ({rpc_lines} lines)"
        );
        if format == "json" {
            for line in log.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
        for token in &secrets {
            // The secret part alone must not appear either.
            assert!(
                !log.contains(&token[6..40]),
                "a token leaked into the {format} log"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_resolve_of_a_replaced_token_succeeds_after_mint_returned() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let server = Server::start(&[]);
    let mut owner = client(&server).await;
    for round in 0..5 {
        let thread = format!("t{round}");
        let old = mint(&mut owner, mint_request(&thread, "claude-1")).await;
        let replaced = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicUsize::new(0));
        let mut resolvers = Vec::new();
        for _ in 0..4 {
            let (mut agent, token) = (client(&server).await, old.token.clone());
            let (replaced, violations) = (replaced.clone(), violations.clone());
            resolvers.push(tokio::spawn(async move {
                for _ in 0..2_000 {
                    let after = replaced.load(Ordering::SeqCst);
                    let ok = resolve(&mut agent, &token).await.is_ok();
                    if after && ok {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    if after && !ok {
                        break;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let fresh = mint(
            &mut owner,
            pb::MintRequest {
                replace_previous: true,
                ..mint_request(&thread, "claude-1")
            },
        )
        .await;
        replaced.store(true, Ordering::SeqCst);
        for resolver in resolvers {
            resolver.await.unwrap();
        }
        assert_eq!(fresh.replaced, 1);
        assert_eq!(violations.load(Ordering::SeqCst), 0, "round {round}");
        let metadata = assert_dead(resolve(&mut owner, &old.token).await, "TOKEN_REVOKED");
        assert_eq!(metadata["revocation_cause"], "replaced");
        assert!(resolve(&mut owner, &fresh.token).await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_refusal_is_permission_denied_and_not_terminal() {
    let server = Server::start(&[]);
    let mut client = client(&server).await;
    let minted = mint(
        &mut client,
        pb::MintRequest {
            scopes: vec!["fs.read".into()],
            labels: [("environment".to_owned(), "env-7".to_owned())].into(),
            ..mint_request("t", "i")
        },
    )
    .await;
    let status = client
        .resolve(pb::ResolveRequest {
            token: minted.token.clone(),
            required_scope: "fs.write".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "TOKEN_SCOPE_MISSING");
    assert_eq!(metadata["scope"], "fs.write");
    assert_eq!(metadata["credential_id"], minted.credential_id);
    assert!(!status.message().contains("never work again"));
    assert!(status.get_error_details().retry_info().is_none());
    let resolved = client
        .resolve(pb::ResolveRequest {
            token: minted.token.clone(),
            required_scope: "fs.read".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.scopes, ["fs.read"]);
    assert_eq!(resolved.labels["environment"], "env-7");
}

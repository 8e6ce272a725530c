//! The adapter lifecycle against the real binary, through grpcurl: revoke one
//! credential, rotation, Touch, revocation causes, scopes and labels, and
//! every bound on them.

mod common;

use std::time::Duration;

use common::grpcurl::*;
use common::Server;
use serde_json::Value;

fn minted(server: &Server, body: &str) -> Value {
    ok(call(server, "Mint", body))
}

fn token(minted: &Value) -> &str {
    minted["token"].as_str().unwrap()
}

fn touch_id(server: &Server, credential_id: &str) -> Run {
    call(
        server,
        "Touch",
        &format!(r#"{{"credentialId":"{credential_id}"}}"#),
    )
}

fn revocation_cause(details: &[Value]) -> String {
    error_info(details)["metadata"]["revocation_cause"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn revoking_one_of_two_credentials_of_a_thread_leaves_the_other_working() {
    let server = Server::start(&[]);
    let codex = minted(
        &server,
        r#"{"threadId":"t","providerInstanceId":"codex-1"}"#,
    );
    let claude = minted(
        &server,
        r#"{"threadId":"t","providerInstanceId":"claude-1"}"#,
    );
    let body = format!(
        r#"{{"credentialId":"{}"}}"#,
        codex["credentialId"].as_str().unwrap()
    );
    assert_eq!(ok(call(&server, "RevokeCredential", &body))["revoked"], "1");
    let again = ok(call(&server, "RevokeCredential", &body));
    assert!(
        again.get("revoked").is_none(),
        "idempotent: 0, omitted in JSON"
    );
    let details = failed(
        call(&server, "Resolve", &resolve_body(token(&codex))),
        16,
        "TOKEN_REVOKED",
    );
    assert_eq!(revocation_cause(&details), "credential");
    ok(call(&server, "Resolve", &resolve_body(token(&claude))));
}

#[test]
fn rotation_with_replace_previous() {
    let server = Server::start(&[]);
    let old = minted(
        &server,
        r#"{"threadId":"t","providerInstanceId":"claude-1"}"#,
    );
    let other = minted(
        &server,
        r#"{"threadId":"t","providerInstanceId":"codex-1"}"#,
    );
    let fresh = minted(
        &server,
        r#"{"threadId":"t","providerInstanceId":"claude-1","replacePrevious":true}"#,
    );
    assert_eq!(fresh["replaced"], "1");
    let details = failed(
        call(&server, "Resolve", &resolve_body(token(&old))),
        16,
        "TOKEN_REVOKED",
    );
    assert_eq!(revocation_cause(&details), "replaced");
    ok(call(&server, "Resolve", &resolve_body(token(&fresh))));
    ok(call(&server, "Resolve", &resolve_body(token(&other))));
}

#[test]
fn every_revocation_cause_is_visible() {
    let server = Server::start(&[]);
    let thread = minted(&server, r#"{"threadId":"t1","providerInstanceId":"a"}"#);
    let instance = minted(&server, r#"{"threadId":"t2","providerInstanceId":"b"}"#);
    let credential = minted(&server, r#"{"threadId":"t3","providerInstanceId":"a"}"#);
    let replaced = minted(&server, r#"{"threadId":"t4","providerInstanceId":"a"}"#);
    ok(call(&server, "RevokeThread", r#"{"threadId":"t1"}"#));
    ok(call(&server, "RevokeAll", r#"{"providerInstanceId":"b"}"#));
    ok(call(
        &server,
        "RevokeCredential",
        &format!(
            r#"{{"credentialId":"{}"}}"#,
            credential["credentialId"].as_str().unwrap()
        ),
    ));
    minted(
        &server,
        r#"{"threadId":"t4","providerInstanceId":"a","replacePrevious":true}"#,
    );
    let all = minted(&server, r#"{"threadId":"t5","providerInstanceId":"c"}"#);
    ok(call(&server, "RevokeAll", "{}"));
    for (credential, cause) in [
        (&thread, "thread"),
        (&instance, "provider_instance"),
        (&credential, "credential"),
        (&replaced, "replaced"),
        (&all, "all"),
    ] {
        let details = failed(
            call(&server, "Resolve", &resolve_body(token(credential))),
            16,
            "TOKEN_REVOKED",
        );
        assert_eq!(revocation_cause(&details), cause);
    }
}

#[test]
fn touch_keeps_an_unused_credential_alive_by_credential_and_by_thread() {
    let server = Server::start(&[]);
    let by_id = minted(
        &server,
        r#"{"threadId":"t1","providerInstanceId":"i","idleTimeout":"5s"}"#,
    );
    let by_thread = minted(
        &server,
        r#"{"threadId":"t2","providerInstanceId":"i","idleTimeout":"5s"}"#,
    );
    let neglected = minted(
        &server,
        r#"{"threadId":"t3","providerInstanceId":"i","idleTimeout":"5s"}"#,
    );
    let neglected_at = std::time::Instant::now();
    let id = by_id["credentialId"].as_str().unwrap();
    // Touched every few hundred milliseconds until the neglected one is well
    // past its 5 s idle timeout: the gaps stay far below 5 s even when each
    // grpcurl run takes most of a second on a loaded machine.
    while neglected_at.elapsed() < Duration::from_millis(6_500) {
        std::thread::sleep(Duration::from_millis(200));
        let touched = ok(touch_id(&server, id));
        assert_eq!(touched["credentials"][0]["credentialId"], id);
        assert!(touched["credentials"][0]["idleExpiresAt"].is_string());
        let touched = ok(call(&server, "Touch", r#"{"threadId":"t2"}"#));
        assert_eq!(touched["credentials"].as_array().unwrap().len(), 1);
        assert_eq!(
            touched["credentials"][0]["credentialId"],
            by_thread["credentialId"]
        );
    }
    // Well past the 5 s idle timeout since mint, without one Resolve.
    ok(call(&server, "Resolve", &resolve_body(token(&by_id))));
    ok(call(&server, "Resolve", &resolve_body(token(&by_thread))));
    failed(
        call(&server, "Resolve", &resolve_body(token(&neglected))),
        16,
        "TOKEN_IDLE_TIMEOUT",
    );
    // Never revives: the owner hears the reason Resolve gives.
    let neglected_id = neglected["credentialId"].as_str().unwrap();
    failed(touch_id(&server, neglected_id), 9, "TOKEN_IDLE_TIMEOUT");
    // By thread: the newest credential's reason while the thread still has it
    // on record; once the sweeper removed it, the thread has none.
    let run = call(&server, "Touch", r#"{"threadId":"t3"}"#);
    match run.code - 64 {
        9 => drop(failed(run, 9, "TOKEN_IDLE_TIMEOUT")),
        5 => drop(failed(run, 5, "TOKEN_UNKNOWN")),
        _ => panic!("unexpected: {} {}", run.stdout, run.stderr),
    }
    let adapter = minted(&server, r#"{"threadId":"t4","providerInstanceId":"gone"}"#);
    ok(call(
        &server,
        "RevokeAll",
        r#"{"providerInstanceId":"gone"}"#,
    ));
    let details = failed(
        call(&server, "Touch", r#"{"threadId":"t4"}"#),
        9,
        "TOKEN_REVOKED",
    );
    assert_eq!(revocation_cause(&details), "provider_instance");
    let adapter_id = adapter["credentialId"].as_str().unwrap();
    failed(touch_id(&server, adapter_id), 9, "TOKEN_REVOKED");
    failed(
        touch_id(&server, "cred_00000000000000000000000000000000"),
        5,
        "TOKEN_UNKNOWN",
    );
    failed(
        call(&server, "Touch", r#"{"threadId":"nobody"}"#),
        5,
        "TOKEN_UNKNOWN",
    );
    let revoked = minted(&server, r#"{"threadId":"t5","providerInstanceId":"i"}"#);
    ok(call(&server, "RevokeThread", r#"{"threadId":"t5"}"#));
    let revoked_id = revoked["credentialId"].as_str().unwrap();
    let details = failed(touch_id(&server, revoked_id), 9, "TOKEN_REVOKED");
    assert_eq!(revocation_cause(&details), "thread");
}

#[test]
fn touch_never_passes_an_absolute_lifetime() {
    let server = Server::start(&["--absolute-lifetime", "800ms"]);
    let credential = minted(&server, r#"{"threadId":"t","providerInstanceId":"i"}"#);
    let id = credential["credentialId"].as_str().unwrap();
    let touched = ok(touch_id(&server, id));
    let expires = touched["credentials"][0]["expiresAt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        credential["expiresAt"].as_str().unwrap(),
        expires,
        "capped at mint + 800ms"
    );
    std::thread::sleep(Duration::from_millis(900));
    failed(touch_id(&server, id), 9, "TOKEN_EXPIRED");
    failed(
        call(&server, "Resolve", &resolve_body(token(&credential))),
        16,
        "TOKEN_EXPIRED",
    );
}

#[test]
fn scopes_and_labels() {
    let server = Server::start(&[]);
    let credential = minted(
        &server,
        r#"{"threadId":"t","providerInstanceId":"i","scopes":["fs.read","shell.exec"],"labels":{"environment":"env-7","provider_session":"s-1"}}"#,
    );
    let body = |scope: &str| {
        format!(
            r#"{{"token":"{}","requiredScope":"{scope}"}}"#,
            token(&credential)
        )
    };
    let resolved = ok(call(&server, "Resolve", &body("fs.read")));
    assert_eq!(
        resolved["scopes"],
        serde_json::json!(["fs.read", "shell.exec"])
    );
    assert_eq!(resolved["labels"]["environment"], "env-7");
    assert_eq!(resolved["labels"]["provider_session"], "s-1");

    let run = call(&server, "Resolve", &body("fs.write"));
    let message = run.error()["message"].as_str().unwrap().to_owned();
    let details = failed(run, 7, "TOKEN_SCOPE_MISSING");
    assert_eq!(error_info(&details)["metadata"]["scope"], "fs.write");
    assert!(
        !message.contains("never work again"),
        "not terminal: {message}"
    );
    assert!(message.contains("still valid"), "{message}");
    // The credential is still live afterwards.
    ok(call(&server, "Resolve", &body("shell.exec")));
    ok(call(&server, "Resolve", &resolve_body(token(&credential))));
}

#[test]
fn every_bound_on_scopes_labels_and_lifecycle_fields() {
    let server = Server::start(&[]);
    let keeper = minted(
        &server,
        r#"{"threadId":"keeper","providerInstanceId":"i","scopes":["a"]}"#,
    );
    let scopes = |n: usize| {
        (0..n)
            .map(|i| format!(r#""s{i}""#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let labels = |n: usize| {
        (0..n)
            .map(|i| format!(r#""k{i}":"v""#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mint = |extra: &str| format!(r#"{{"threadId":"t","providerInstanceId":"i",{extra}}}"#);
    // At the limits: accepted.
    for extra in [
        format!(r#""scopes":[{}]"#, scopes(64)),
        format!(r#""scopes":["{}"]"#, "x".repeat(128)),
        format!(r#""labels":{{{}}}"#, labels(16)),
        format!(r#""labels":{{"{}":"{}"}}"#, "k".repeat(63), "v".repeat(256)),
    ] {
        ok(call(&server, "Mint", &mint(&extra)));
    }
    let long_scope = "x".repeat(129);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Mint",
            mint(&format!(r#""scopes":[{}]"#, scopes(65))),
            "scopes",
        ),
        (
            "Mint",
            mint(&format!(r#""scopes":["ok","{long_scope}"]"#)),
            "scopes[1]",
        ),
        ("Mint", mint(r#""scopes":[""]"#), "scopes[0]"),
        ("Mint", mint(r#""scopes":["a\nb"]"#), "scopes[0]"),
        (
            "Mint",
            mint(&format!(r#""labels":{{{}}}"#, labels(17))),
            "labels",
        ),
        ("Mint", mint(r#""labels":{"Env":"v"}"#), "labels"),
        ("Mint", mint(r#""labels":{"":"v"}"#), "labels"),
        (
            "Mint",
            mint(&format!(r#""labels":{{"{}":"v"}}"#, "k".repeat(64))),
            "labels",
        ),
        ("Mint", mint(r#""labels":{"has space":"v"}"#), "labels"),
        (
            "Mint",
            mint(&format!(r#""labels":{{"env":"{}"}}"#, "v".repeat(257))),
            "labels.env",
        ),
        ("Mint", mint(r#""labels":{"env":"a\u0000b"}"#), "labels.env"),
        (
            "Resolve",
            format!(
                r#"{{"token":"{}","requiredScope":"{long_scope}"}}"#,
                token(&keeper)
            ),
            "required_scope",
        ),
        (
            "Resolve",
            format!(r#"{{"token":"{}","requiredScope":"a\tb"}}"#, token(&keeper)),
            "required_scope",
        ),
        ("RevokeCredential", "{}".into(), "credential_id"),
        (
            "RevokeCredential",
            r#"{"credentialId":"cred_xyz"}"#.into(),
            "credential_id",
        ),
        ("Touch", "{}".into(), "target"),
        ("Touch", r#"{"credentialId":""}"#.into(), "credential_id"),
        (
            "Touch",
            r#"{"credentialId":"not-an-id"}"#.into(),
            "credential_id",
        ),
        ("Touch", r#"{"threadId":""}"#.into(), "thread_id"),
        (
            "Touch",
            format!(r#"{{"threadId":"{}"}}"#, "t".repeat(257)),
            "thread_id",
        ),
    ];
    for (method, body, field) in cases {
        let details = failed(call(&server, method, &body), 3, "INVALID_REQUEST");
        assert_eq!(bad_fields(&details), [field], "{method} {body}");
    }
    // Nothing stored was lost.
    ok(call(
        &server,
        "Resolve",
        &format!(r#"{{"token":"{}","requiredScope":"a"}}"#, token(&keeper)),
    ));
}

//! The audit trail of the real binary, over the Rust client and grpcurl:
//! one JSON line per state change and per denied caller, written before the
//! reply, rate-limited for denials, fail-closed or fail-open, rotated on
//! SIGHUP, on stdout by default, and never holding a secret.
//!
//! Each test names, in its doc, the broken implementation it catches.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::audit::{
    self, assert_no_secret, fields, foreign_key, hup, key_id, lines, parse_lines, request_ids,
    settle, with_id, SplitServer, Trail,
};
use common::grpcurl::{self, grpcurl_as, Run, SERVICE};
use common::{client, client_with, Client, Server};
use credential_authority::pb;
use pb::touch_request::Target;
use serde_json::Value;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

fn mint_request(thread_id: &str, instance: &str) -> pb::MintRequest {
    pb::MintRequest {
        thread_id: thread_id.into(),
        provider_instance_id: instance.into(),
        ..Default::default()
    }
}

fn replacing(thread_id: &str, instance: &str) -> pb::MintRequest {
    pb::MintRequest {
        replace_previous: true,
        ..mint_request(thread_id, instance)
    }
}

async fn mint(client: &mut Client, id: &str, request: pb::MintRequest) -> pb::MintResponse {
    let response = client
        .mint(with_id(request, id))
        .await
        .unwrap_or_else(|s| panic!("mint {id}: {s:?}"));
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        id,
        "the reply echoes the request id"
    );
    response.into_inner()
}

async fn resolve(
    client: &mut Client,
    id: &str,
    token: &str,
) -> Result<pb::ResolveResponse, Status> {
    client
        .resolve(with_id(
            pb::ResolveRequest {
                token: token.into(),
                ..Default::default()
            },
            id,
        ))
        .await
        .map(|r| r.into_inner())
}

fn revoke_credential(credential_id: &str) -> pb::RevokeCredentialRequest {
    pb::RevokeCredentialRequest {
        credential_id: credential_id.into(),
    }
}

fn revoke_thread(thread_id: &str) -> pb::RevokeThreadRequest {
    pb::RevokeThreadRequest {
        thread_id: thread_id.into(),
    }
}

fn revoke_all(instance: &str) -> pb::RevokeAllRequest {
    pb::RevokeAllRequest {
        provider_instance_id: instance.into(),
    }
}

/// The ErrorInfo reason of a failure.
fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .unwrap_or_else(|| panic!("ErrorInfo: {status:?}"))
        .reason
        .clone()
}

/// Asserts a fail-closed audit failure: UNAVAILABLE, SERVICE_UNAVAILABLE,
/// RetryInfo, and no token anywhere in the status.
fn assert_audit_unavailable(status: &Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(status), "SERVICE_UNAVAILABLE");
    assert_eq!(
        status.get_error_details().retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(1)),
        "retryable, with RetryInfo"
    );
    assert!(status.message().contains("audit trail"), "{status:?}");
    assert!(
        !format!("{status:?}").contains("mcpca_"),
        "no token: {status:?}"
    );
}

/// Asserts that `token` is dead as revoked, with `cause`.
fn assert_revoked(result: Result<pb::ResolveResponse, Status>, cause: &str) {
    let status = result.expect_err("the token must be dead");
    assert_eq!(reason(&status), "TOKEN_REVOKED", "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.metadata["revocation_cause"], cause);
}

fn audit_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("audit.jsonl")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Asserts the fixed parts of a state change's line.
fn assert_ok_line(line: &Value, rpc: &str, caller: &str, key_id: &str) {
    assert_eq!(line["rpc"], rpc, "{line}");
    assert_eq!(line["outcome"], "ok", "{line}");
    assert_eq!(line["caller"], caller, "{line}");
    assert_eq!(line["key_id"], key_id, "{line}");
    let time = line["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
        "RFC 3339 with milliseconds: {time}"
    );
    for absent in ["peer", "suppressed", "token", "digest", "key"] {
        assert!(line.get(absent).is_none(), "no {absent}: {line}");
    }
}

/// `key` with its character at `at` changed: the right shape, the wrong
/// checksum.
fn garble(key: &str, at: usize) -> String {
    let swapped = if &key[at..=at] == "x" { "y" } else { "x" };
    format!("{}{swapped}{}", &key[..at], &key[at + 1..])
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    names.sort();
    names
}

/// Catches: a state change without its line (Mint, replacement, each
/// revocation RPC), a line written after the reply or off the call's thread
/// (the file is read the moment the call returns), a line under a fresh
/// request id instead of the client's `x-request-id`, wrong or missing
/// fields (credential, thread, instance, caller, key id, counts that differ
/// from the reply), a wrong `cause` for RevokeAll's three scopes, and
/// Resolve or Touch writing lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_writes_one_line_before_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let server = Server::start(&["--audit-log", path.to_str().unwrap()]);
    let alice_key = server.add_caller("alice", "mint");
    let bob_key = server.add_caller("bob", "mint");
    let (admin_id, alice_id, bob_id) = (
        key_id(&server, "admin"),
        key_id(&server, "alice"),
        key_id(&server, "bob"),
    );
    let mut admin = client(&server).await;
    let mut alice = client_with(&server, Some(&alice_key)).await;
    let mut bob = client_with(&server, Some(&bob_key)).await;
    let mut trail = Trail::new(&path);
    let mut tokens = Vec::new();

    // Mint, then a rotation that replaces it.
    let first = mint(&mut alice, "mint-1", mint_request("t-1", "inst-a")).await;
    let line = trail.one("mint-1");
    assert_ok_line(&line, "Mint", "alice", &alice_id);
    assert_eq!(
        fields(&line),
        sorted(&[
            "time",
            "request_id",
            "rpc",
            "outcome",
            "caller",
            "key_id",
            "credential_id",
            "thread_id",
            "provider_instance_id",
            "replaced",
        ])
    );
    assert_eq!(line["credential_id"], first.credential_id.as_str());
    assert_eq!(line["thread_id"], "t-1");
    assert_eq!(line["provider_instance_id"], "inst-a");
    assert_eq!(line["replaced"], 0);

    let second = mint(&mut alice, "mint-2", replacing("t-1", "inst-a")).await;
    assert_eq!(second.replaced, 1);
    let line = trail.one("mint-2");
    assert_ok_line(&line, "Mint", "alice", &alice_id);
    assert_eq!(line["credential_id"], second.credential_id.as_str());
    assert_eq!(line["replaced"], 1);
    tokens.extend([first.token.clone(), second.token.clone()]);

    // A request id the server will not take (not in [A-Za-z0-9._:-]) is
    // replaced, and the line carries the replacement the reply names.
    let response = alice
        .mint(with_id(mint_request("t-0", "inst-a"), "not ok!"))
        .await
        .unwrap();
    let replaced_id = response.metadata().get("x-request-id").unwrap();
    let replaced_id = replaced_id.to_str().unwrap().to_owned();
    assert_ne!(replaced_id, "not ok!");
    let line = trail.one(&replaced_id);
    assert_eq!(line["thread_id"], "t-0");
    tokens.push(response.into_inner().token);

    // Resolve (live and dead) and Touch (by credential and by thread)
    // change no ownership or liveness: no line.
    resolve(&mut admin, "resolve-1", &second.token)
        .await
        .unwrap();
    assert_revoked(
        resolve(&mut admin, "resolve-2", &first.token).await,
        "replaced",
    );
    let touch = |target| pb::TouchRequest {
        target: Some(target),
    };
    alice
        .touch(with_id(
            touch(Target::CredentialId(second.credential_id.clone())),
            "touch-1",
        ))
        .await
        .unwrap();
    alice
        .touch(with_id(touch(Target::ThreadId("t-1".into())), "touch-2"))
        .await
        .unwrap();
    trail.none("Resolve and Touch");

    // RevokeCredential.
    let done = alice
        .revoke_credential(with_id(
            revoke_credential(&second.credential_id),
            "revoke-cred-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked, 1);
    let line = trail.one("revoke-cred-1");
    assert_ok_line(&line, "RevokeCredential", "alice", &alice_id);
    assert_eq!(line["credential_id"], second.credential_id.as_str());
    assert_eq!(line["cause"], "credential");
    assert_eq!(line["revoked"], 1);

    // RevokeThread over a thread alice shares with bob (each adapter with
    // its own provider instance: inst-a is alice's).
    let bobs = mint(&mut bob, "mint-3", mint_request("t-2", "inst-c")).await;
    let line = trail.one("mint-3");
    assert_ok_line(&line, "Mint", "bob", &bob_id);
    let alices = mint(&mut alice, "mint-4", mint_request("t-2", "inst-b")).await;
    trail.one("mint-4");
    let done = alice
        .revoke_thread(with_id(revoke_thread("t-2"), "revoke-thread-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.revoked, done.not_owned), (1, 1));
    let line = trail.one("revoke-thread-1");
    assert_ok_line(&line, "RevokeThread", "alice", &alice_id);
    assert_eq!(line["thread_id"], "t-2");
    assert_eq!(line["cause"], "thread");
    assert_eq!(line["revoked"], 1);
    assert_eq!(line["not_owned"], 1);
    tokens.extend([bobs.token.clone(), alices.token.clone()]);

    // RevokeAll by a mint-role caller: its own, for one instance, then all.
    let a3 = mint(&mut alice, "mint-5", mint_request("t-3", "inst-a")).await;
    trail.one("mint-5");
    let b4 = mint(&mut alice, "mint-6", mint_request("t-4", "inst-b")).await;
    trail.one("mint-6");
    tokens.extend([a3.token.clone(), b4.token.clone()]);
    let done = alice
        .revoke_all(with_id(revoke_all("inst-b"), "revoke-all-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked, 1);
    let line = trail.one("revoke-all-1");
    assert_ok_line(&line, "RevokeAll", "alice", &alice_id);
    assert_eq!(line["cause"], "provider_instance");
    assert_eq!(line["provider_instance_id"], "inst-b");
    assert_eq!(line["revoked"], 1);
    let done = alice
        .revoke_all(with_id(revoke_all(""), "revoke-all-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked, 2, "t-0 and t-3; bob's t-2 is not alice's");
    let line = trail.one("revoke-all-2");
    assert_ok_line(&line, "RevokeAll", "alice", &alice_id);
    assert_eq!(line["cause"], "caller");
    assert!(line.get("provider_instance_id").is_none(), "{line}");
    assert_eq!(line["revoked"], 2);

    // RevokeAll by the admin: one instance, then everything.
    let c5 = mint(&mut admin, "mint-7", mint_request("t-5", "inst-d")).await;
    let line = trail.one("mint-7");
    assert_ok_line(&line, "Mint", "admin", &admin_id);
    tokens.push(c5.token.clone());
    let done = admin
        .revoke_all(with_id(revoke_all("inst-c"), "revoke-all-3"))
        .await
        .unwrap()
        .into_inner();
    let line = trail.one("revoke-all-3");
    assert_ok_line(&line, "RevokeAll", "admin", &admin_id);
    assert_eq!(line["cause"], "provider_instance");
    assert_eq!(line["provider_instance_id"], "inst-c");
    assert_eq!(line["revoked"], done.revoked);
    assert_eq!(
        done.revoked, 1,
        "bob's t-2, though the admin did not mint it"
    );
    let done = admin
        .revoke_all(with_id(revoke_all(""), "revoke-all-4"))
        .await
        .unwrap()
        .into_inner();
    let line = trail.one("revoke-all-4");
    assert_ok_line(&line, "RevokeAll", "admin", &admin_id);
    assert_eq!(line["cause"], "all");
    assert_eq!(line["revoked"], done.revoked);
    assert_eq!(done.revoked, 1, "t-5");
    assert_revoked(resolve(&mut admin, "resolve-3", &c5.token).await, "all");
    trail.none("Resolve of a dead token");

    // The whole file: one JSON object per line, one line per state change.
    let ids = request_ids(&path);
    assert_eq!(
        ids,
        [
            "mint-1",
            "mint-2",
            &replaced_id,
            "revoke-cred-1",
            "mint-3",
            "mint-4",
            "revoke-thread-1",
            "mint-5",
            "mint-6",
            "revoke-all-1",
            "revoke-all-2",
            "mint-7",
            "revoke-all-3",
            "revoke-all-4",
        ]
    );
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([server.admin_key(), &alice_key, &bob_key]);
    assert_no_secret(&audit::read(&path), &secrets);
}

/// grpcurl with the caller's key (or none) and `x-request-id: id`.
fn grpcurl_with_id(server: &Server, key: Option<&str>, id: &str, method: &str, body: &str) -> Run {
    let addr = server.addr.to_string();
    let header = format!("x-request-id: {id}");
    grpcurl_as(
        key,
        &[
            "-plaintext",
            "-format-error",
            "-H",
            &header,
            "-d",
            body,
            &addr,
            &format!("{SERVICE}/{method}"),
        ],
    )
}

/// Asserts a denial's reply (`code`, `reason`) and its line: the RPC, the
/// outcome equal to the reply's reason, the peer, the caller and key id
/// when known, and a human detail.
fn assert_denied(
    run: Run,
    trail: &mut Trail,
    id: &str,
    rpc: &str,
    code: i64,
    outcome: &str,
    caller: Option<(&str, &str)>,
) -> Value {
    let details = grpcurl::failed(run, code, outcome);
    assert_eq!(grpcurl::error_info(&details)["metadata"]["request_id"], id);
    let line = trail.one(id);
    assert_eq!(line["rpc"], rpc, "{line}");
    assert_eq!(line["outcome"], outcome, "{line}");
    assert_eq!(line["peer"], "127.0.0.1", "{line}");
    assert!(line["detail"].is_string(), "{line}");
    assert!(line.get("suppressed").is_none(), "{line}");
    match caller {
        Some((name, key_id)) => {
            assert_eq!(line["caller"], name, "{line}");
            assert_eq!(line["key_id"], key_id, "{line}");
        }
        None => {
            assert!(line.get("caller").is_none(), "{line}");
            assert!(line.get("key_id").is_none(), "{line}");
        }
    }
    line
}

/// Catches: a denied call without its line (no key, a key no caller has, a
/// malformed key, an agent token sent as the key, a missing role, another
/// caller's credential by RevokeCredential, Touch or a replacing Mint), a
/// line whose outcome is not the reply's reason, a line without the peer,
/// an unauthenticated line naming a caller, a forbidden one not naming the
/// caller and key id, a denial that still changed something, and the
/// presented key or token copied into the line.
#[test]
fn every_denied_caller_writes_one_line_with_the_peer_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let server = Server::start(&["--audit-log", path.to_str().unwrap()]);
    let alice = server.add_caller("alice", "mint");
    let bob = server.add_caller("bob", "mint");
    let reader = server.add_caller("reader", "resolve");
    let ghost = foreign_key(&server);
    let (alice_id, bob_id, reader_id) = (
        key_id(&server, "alice"),
        key_id(&server, "bob"),
        key_id(&server, "reader"),
    );
    let mut trail = Trail::new(&path);

    // A state change over grpcurl is audited under its request id too.
    let minted = grpcurl::ok(grpcurl_with_id(
        &server,
        Some(&alice),
        "setup-mint",
        "Mint",
        r#"{"thread_id":"t-a","provider_instance_id":"inst-a"}"#,
    ));
    let token = minted["token"].as_str().unwrap().to_owned();
    let credential = minted["credentialId"].as_str().unwrap().to_owned();
    let line = trail.one("setup-mint");
    assert_ok_line(&line, "Mint", "alice", &alice_id);
    assert_eq!(line["credential_id"], credential.as_str());

    let mint_body = r#"{"thread_id":"t-x","provider_instance_id":"inst-a"}"#;
    // Not authenticated: 16 UNAUTHENTICATED, no caller on the line.
    let line = assert_denied(
        grpcurl_with_id(&server, None, "no-key", "Mint", mint_body),
        &mut trail,
        "no-key",
        "Mint",
        16,
        "CALLER_UNAUTHENTICATED",
        None,
    );
    assert!(line["detail"]
        .as_str()
        .unwrap()
        .contains("no caller credentials"));
    let line = assert_denied(
        grpcurl_with_id(&server, Some(&ghost), "unknown-key", "RevokeAll", "{}"),
        &mut trail,
        "unknown-key",
        "RevokeAll",
        16,
        "CALLER_UNAUTHENTICATED",
        None,
    );
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("not in the callers file"),
        "{line}"
    );
    let garbled = garble(&alice, 30);
    assert_denied(
        grpcurl_with_id(&server, Some(&garbled), "garbled-key", "Mint", mint_body),
        &mut trail,
        "garbled-key",
        "Mint",
        16,
        "CALLER_UNAUTHENTICATED",
        None,
    );
    assert_denied(
        grpcurl_with_id(&server, Some(&token), "token-as-key", "Mint", mint_body),
        &mut trail,
        "token-as-key",
        "Mint",
        16,
        "CALLER_UNAUTHENTICATED",
        None,
    );

    // Authenticated without the role: 7 PERMISSION_DENIED, caller named.
    let line = assert_denied(
        grpcurl_with_id(&server, Some(&reader), "no-mint-role", "Mint", mint_body),
        &mut trail,
        "no-mint-role",
        "Mint",
        7,
        "CALLER_FORBIDDEN",
        Some(("reader", &reader_id)),
    );
    assert_eq!(line["detail"], "missing role mint");
    let line = assert_denied(
        grpcurl_with_id(
            &server,
            Some(&alice),
            "no-resolve-role",
            "Resolve",
            &grpcurl::resolve_body(&token),
        ),
        &mut trail,
        "no-resolve-role",
        "Resolve",
        7,
        "CALLER_FORBIDDEN",
        Some(("alice", &alice_id)),
    );
    assert_eq!(line["detail"], "missing role resolve");

    // Another caller's credential: refused, named, and left alone.
    let cred_body = format!(r#"{{"credential_id":"{credential}"}}"#);
    for (id, method) in [
        ("bob-revokes", "RevokeCredential"),
        ("bob-touches", "Touch"),
    ] {
        let line = assert_denied(
            grpcurl_with_id(&server, Some(&bob), id, method, &cred_body),
            &mut trail,
            id,
            method,
            7,
            "CALLER_FORBIDDEN",
            Some(("bob", &bob_id)),
        );
        assert_eq!(line["credential_id"], credential.as_str(), "{line}");
        assert_eq!(line["detail"], "credentials minted by another caller");
    }
    let line = assert_denied(
        grpcurl_with_id(
            &server,
            Some(&bob),
            "bob-replaces",
            "Mint",
            r#"{"thread_id":"t-a","provider_instance_id":"inst-a","replace_previous":true}"#,
        ),
        &mut trail,
        "bob-replaces",
        "Mint",
        7,
        "CALLER_FORBIDDEN",
        Some(("bob", &bob_id)),
    );
    // The instance is alice's: the refusal names none of her credentials.
    assert!(line.get("credential_id").is_none(), "{line}");
    let resolved = grpcurl::ok(grpcurl::call(
        &server,
        "Resolve",
        &grpcurl::resolve_body(&token),
    ));
    assert_eq!(resolved["credentialId"], credential.as_str(), "still live");
    trail.none("an admin's Resolve");

    assert_no_secret(
        &audit::read(&path),
        &[
            &token,
            &alice,
            &bob,
            &reader,
            &ghost,
            &garbled,
            server.admin_key(),
        ],
    );
}

/// Catches: denial lines not rate-limited (a keyless flood is one write per
/// call), a limit that lets more than the burst through, a suppressed count
/// lost, off by one or not carried on the peer's next line, a limit keyed
/// per caller instead of per peer, a suppressed line that turns the call
/// into UNAVAILABLE (or any answer but the denial), and a limit applied to
/// state changes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_lines_are_rate_limited_per_peer_and_the_next_one_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let server = Server::start(&[
        "--audit-log",
        path.to_str().unwrap(),
        "--audit-denials-per-second",
        "1",
        "--audit-denial-burst",
        "3",
    ]);
    let alice_key = server.add_caller("alice", "mint");
    let keyless = client_with(&server, None).await;
    let mut admin = client(&server).await;
    let mut alice = client_with(&server, Some(&alice_key)).await;

    // 50 keyless calls at once, well within one second.
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut keyless = keyless.clone();
        flood.spawn(async move {
            keyless
                .revoke_all(with_id(revoke_all(""), &format!("flood-{i}")))
                .await
        });
    }
    let answers = flood.join_all().await;
    let flooded = Instant::now();
    assert!(
        flooded - started < Duration::from_millis(900),
        "the test needs the flood within the refill of one line; it took {:?}",
        flooded - started
    );
    for answer in answers {
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    }
    let written = lines(&path);
    assert_eq!(written.len(), 3, "the burst, and no more: {written:#?}");
    for line in &written {
        assert!(line["request_id"].as_str().unwrap().starts_with("flood-"));
        assert_eq!(line["outcome"], "CALLER_UNAUTHENTICATED");
        assert_eq!(line["peer"], "127.0.0.1");
        assert!(line.get("suppressed").is_none(), "{line}");
    }
    let mut trail = Trail::new(&path);

    // Another caller from the same peer shares the peer's bucket; a state
    // change from the peer is never limited.
    let status = resolve(&mut alice, "forbidden-1", "mcpca_whatever")
        .await
        .expect_err("alice may not resolve");
    assert_eq!(reason(&status), "CALLER_FORBIDDEN");
    trail.none("a denial from a peer with an empty bucket");
    mint(&mut admin, "mint-1", mint_request("t-1", "inst-a")).await;
    trail.one("mint-1");

    // The bucket regains a line one second after it emptied, which was
    // during the flood.
    let refilled = flooded + Duration::from_millis(1100);
    std::thread::sleep(refilled.saturating_duration_since(Instant::now()));
    let status = keyless
        .clone()
        .mint(with_id(mint_request("t-2", "inst-a"), "after-refill"))
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    let line = trail.one("after-refill");
    assert_eq!(
        line["suppressed"],
        47 + 1,
        "the flood's 47 and alice's one: {line}"
    );
    assert_eq!(line["outcome"], "CALLER_UNAUTHENTICATED");
}

/// Catches: a rate limit keyed globally instead of per peer (a TCP flood
/// would silence, or charge its suppressed count to, a caller on the Unix
/// socket), and a Unix-socket denial whose line does not name the peer's
/// uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_peer_is_named_by_uid_and_has_its_own_bucket() {
    let scratch = Arc::new(tempfile::tempdir().unwrap());
    let path = scratch.path().join("audit.jsonl");
    let socket = scratch.path().join("run").join("ca.sock");
    let unix = format!("unix:{}", socket.display());
    let server = Server::start_in(
        scratch.clone(),
        &["--listen", "127.0.0.1:0", "--listen", &unix],
        &[
            "--audit-log",
            path.to_str().unwrap(),
            "--audit-denials-per-second",
            "1",
            "--audit-denial-burst",
            "3",
        ],
        &[],
    );
    let keyless = client_with(&server, None).await;
    for i in 0..4 {
        let status = keyless
            .clone()
            .revoke_all(with_id(revoke_all(""), &format!("tcp-{i}")))
            .await
            .expect_err("refused");
        assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    }
    assert_eq!(
        request_ids(&path),
        ["tcp-0", "tcp-1", "tcp-2"],
        "tcp-3 suppressed"
    );
    let mut trail = Trail::new(&path);

    let run = grpcurl_as(
        None,
        &[
            "-plaintext",
            "-unix",
            // grpcurl's default :authority for a Unix socket is its path,
            // which h2 refuses as malformed (RST_STREAM PROTOCOL_ERROR).
            "-authority",
            "localhost",
            "-format-error",
            "-H",
            "x-request-id: unix-1",
            "-d",
            "{}",
            socket.to_str().unwrap(),
            &format!("{SERVICE}/RevokeAll"),
        ],
    );
    grpcurl::failed(run, 16, "CALLER_UNAUTHENTICATED");
    let line = trail.one("unix-1");
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    assert_eq!(line["peer"], format!("uid:{uid}"), "{line}");
    assert!(
        line.get("suppressed").is_none(),
        "the TCP peer's suppressed denial is not charged here: {line}"
    );
}

/// Moves the audit file at `path` away to `moved` and makes the server
/// write to /dev/full (ENOSPC) from then on.
fn break_trail(server: &Server, path: &Path, moved: &Path) {
    settle(server);
    std::fs::rename(path, moved).unwrap();
    std::os::unix::fs::symlink("/dev/full", path).unwrap();
    hup(server);
}

/// Makes the server write to a fresh file at `path` again.
fn repair_trail(server: &Server, path: &Path) {
    std::fs::remove_file(path).unwrap();
    hup(server);
}

/// Catches: a failed write ignored in the default closed mode (the call
/// reported done without its line), a Mint that hands out its token anyway
/// or leaves its credential alive, a failed revocation (RevokeCredential,
/// RevokeThread, RevokeAll, the replacement inside a Mint) that is rolled
/// back or answered as permanent instead of UNAVAILABLE with RetryInfo, a
/// failed denial line that changes the denial's answer, no error in the
/// log, and a retry that is not idempotent once the trail works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_unaudited_calls_and_keeps_revocations_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let moved = dir.path().join("audit.jsonl.before");
    let server = audit::start(&["--audit-log", path.to_str().unwrap()]);
    let alice_key = server.add_caller("alice", "mint");
    let mut admin = client(&server).await;
    let mut alice = client_with(&server, Some(&alice_key)).await;
    let a = mint(&mut alice, "mint-a", mint_request("t-a", "inst")).await;
    let b = mint(&mut alice, "mint-b", mint_request("t-b", "inst")).await;
    let d = mint(&mut alice, "mint-d", mint_request("t-d", "inst")).await;
    let z = mint(&mut alice, "mint-z", mint_request("t-z", "inst-z")).await;

    break_trail(&server, &path, &moved);
    let status = alice
        .mint(with_id(mint_request("t-c", "inst"), "mint-c"))
        .await
        .expect_err("no Mint without its line");
    assert_audit_unavailable(&status);
    let status = alice
        .mint(with_id(replacing("t-a", "inst"), "mint-a2"))
        .await
        .expect_err("no Mint without its line");
    assert_audit_unavailable(&status);
    assert_revoked(resolve(&mut admin, "resolve-a", &a.token).await, "replaced");

    // Over grpcurl: 14 UNAVAILABLE, RetryInfo decoded through reflection.
    let cred_body = format!(r#"{{"credential_id":"{}"}}"#, b.credential_id);
    let details = grpcurl::failed(
        grpcurl_with_id(
            &server,
            Some(&alice_key),
            "revoke-b",
            "RevokeCredential",
            &cred_body,
        ),
        14,
        "SERVICE_UNAVAILABLE",
    );
    let retry = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("RetryInfo");
    assert_eq!(retry["retryDelay"], "1s");
    assert_revoked(
        resolve(&mut admin, "resolve-b", &b.token).await,
        "credential",
    );

    let status = alice
        .revoke_thread(with_id(revoke_thread("t-d"), "revoke-d"))
        .await
        .expect_err("no revocation reported done without its line");
    assert_audit_unavailable(&status);
    assert_revoked(resolve(&mut admin, "resolve-d", &d.token).await, "thread");
    // Of one instance only: the refused Mints' credentials (on "inst") are
    // left for the checks below.
    let status = admin
        .revoke_all(with_id(revoke_all("inst-z"), "revoke-all"))
        .await
        .expect_err("no revocation reported done without its line");
    assert_audit_unavailable(&status);
    assert_revoked(
        resolve(&mut admin, "resolve-z", &z.token).await,
        "provider_instance",
    );

    // A denial's line failing changes nothing about the denial.
    let status = client_with(&server, None)
        .await
        .mint(mint_request("t-x", "inst"))
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    server.wait_for_log("could not be written and their calls failed");

    // Writable again: the retries succeed, idempotently, and find that the
    // refused Mints left nothing alive.
    repair_trail(&server, &path);
    let mut trail = Trail::new(&path);
    let done = grpcurl::ok(grpcurl_with_id(
        &server,
        Some(&alice_key),
        "revoke-b",
        "RevokeCredential",
        &cred_body,
    ));
    assert_eq!(done["revoked"].as_str().unwrap_or("0"), "0", "{done}");
    assert_eq!(trail.one("revoke-b")["revoked"], 0);
    for (thread, id) in [
        ("t-d", "revoke-d"),
        ("t-c", "revoke-c"),
        ("t-a", "revoke-a"),
    ] {
        let done = alice
            .revoke_thread(with_id(revoke_thread(thread), id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((done.revoked, done.not_owned), (0, 0), "{thread}");
        assert_eq!(trail.one(id)["revoked"], 0);
    }
    let e = mint(&mut alice, "mint-e", mint_request("t-e", "inst")).await;
    trail.one("mint-e");
    resolve(&mut admin, "resolve-e", &e.token).await.unwrap();

    assert_eq!(
        request_ids(&moved),
        ["mint-a", "mint-b", "mint-d", "mint-z"]
    );
    assert_eq!(
        request_ids(&path),
        ["revoke-b", "revoke-d", "revoke-c", "revoke-a", "mint-e"]
    );
    let secrets = [&a.token, &b.token, &d.token, &z.token, &e.token, &alice_key];
    let mut secrets: Vec<&str> = secrets.iter().map(|s| s.as_str()).collect();
    secrets.push(server.admin_key());
    for file in [&path, &moved] {
        assert_no_secret(&audit::read(file), &secrets);
    }
}

/// Catches: a suppressed count dropped when the denial line due to carry
/// it could not be written (the disk was full for a moment): the count must
/// ride on the peer's next line that is written. Checked as an invariant
/// that holds however the calls fall into the one-per-100-ms refills:
/// every denial is a written line, counted in a written line's
/// `suppressed`, or the one line that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_count_survives_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let moved = dir.path().join("audit.jsonl.before");
    let server = audit::start(&[
        "--audit-log",
        path.to_str().unwrap(),
        "--audit-failure",
        "open",
        "--audit-denials-per-second",
        "10",
        "--audit-denial-burst",
        "1",
    ]);
    let keyless = client_with(&server, None).await;
    let deny = |id: String| {
        let mut keyless = keyless.clone();
        async move {
            let status = keyless
                .revoke_all(with_id(revoke_all(""), &id))
                .await
                .expect_err("refused");
            assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
        }
    };
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..20 {
        flood.spawn(deny(format!("flood-{i}")));
    }
    flood.join_all().await;
    let flooded = Instant::now();

    // The bucket has a line again after 100 ms; that line fails.
    break_trail(&server, &path, &moved);
    std::thread::sleep(
        (flooded + Duration::from_millis(150)).saturating_duration_since(Instant::now()),
    );
    deny("lost-1".into()).await;
    server.wait_for_log("could not be written and are lost");
    let failed_at = Instant::now();

    repair_trail(&server, &path);
    std::thread::sleep(
        (failed_at + Duration::from_millis(150)).saturating_duration_since(Instant::now()),
    );
    deny("after".into()).await;

    let mut written = lines(&moved);
    written.extend(lines(&path));
    assert_eq!(written.last().unwrap()["request_id"], "after");
    let counted: u64 = written
        .iter()
        .map(|line| line.get("suppressed").map_or(0, |n| n.as_u64().unwrap()))
        .sum();
    assert_eq!(
        written.len() as u64 + counted + 1,
        20 + 1 + 1,
        "every denial written, counted as suppressed, or the one lost: {written:#?}"
    );
}

/// Catches: `--audit-failure open` that still fails calls when the trail
/// cannot be written, and a loss that is not reported in the server log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_calls_through_and_logs_the_lost_lines() {
    let server = Server::start(&["--audit-log", "/dev/full", "--audit-failure", "open"]);
    let mut admin = client(&server).await;
    let minted = mint(&mut admin, "mint-1", mint_request("t-1", "inst")).await;
    assert!(minted.token.starts_with("mcpca_"));
    resolve(&mut admin, "resolve-1", &minted.token)
        .await
        .unwrap();
    let done = admin
        .revoke_credential(with_id(
            revoke_credential(&minted.credential_id),
            "revoke-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked, 1);
    assert_revoked(
        resolve(&mut admin, "resolve-2", &minted.token).await,
        "credential",
    );
    let status = client_with(&server, None)
        .await
        .mint(mint_request("t-2", "inst"))
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    server.wait_for_log("could not be written and are lost");
    let log = server.log();
    assert!(log.contains("/dev/full"), "the log names the sink:\n{log}");
    assert!(log.contains("lost="), "the log counts the loss:\n{log}");
    assert_no_secret(&log, &[&minted.token, server.admin_key()]);
}

/// Catches: SIGHUP that does not reopen the audit file (lines keep going to
/// the renamed one), a reopen that truncates or loses the lines written
/// between the rename and the signal, a new file created with the default
/// mode instead of 0600, and no warning when the file at the path lets
/// other users read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_audit_file_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let rotated = dir.path().join("audit.jsonl.1");
    let server = audit::start(&["--audit-log", path.to_str().unwrap()]);
    let mut admin = client(&server).await;
    let mut keyless = client_with(&server, None).await;

    mint(&mut admin, "r-1", mint_request("t-1", "inst")).await;
    assert_eq!(mode(&path), 0o600, "created owner-only");
    std::fs::rename(&path, &rotated).unwrap();
    mint(&mut admin, "r-2", mint_request("t-2", "inst")).await;
    assert!(!path.exists(), "no reopen before the signal");

    hup(&server);
    mint(&mut admin, "r-3", mint_request("t-3", "inst")).await;
    keyless
        .revoke_all(with_id(revoke_all(""), "d-1"))
        .await
        .expect_err("refused");
    assert_eq!(request_ids(&rotated), ["r-1", "r-2"], "the old lines stay");
    assert_eq!(request_ids(&path), ["r-3", "d-1"], "new lines, new file");
    assert_eq!(mode(&path), 0o600, "the new file is owner-only too");
    assert_eq!(mode(&rotated), 0o600);

    // A file others can read, put at the path by someone else, is used but
    // warned about.
    let second = dir.path().join("audit.jsonl.2");
    std::fs::rename(&path, &second).unwrap();
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    hup(&server);
    server.wait_for_log("mode 640 lets other users read or write it");
    admin
        .revoke_all(with_id(revoke_all(""), "r-4"))
        .await
        .unwrap();
    assert_eq!(request_ids(&second), ["r-3", "d-1"]);
    assert_eq!(request_ids(&path), ["r-4"]);
}

/// Catches: a token, a caller key or a piece of one (a prefix, a suffix, a
/// "redacted" middle) in any audit line: from Mint's reply, from a token
/// sent as a caller key, a garbled or wrongly framed key, or a key sent as
/// a token. The window check itself is tested, so it cannot pass vacuously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_reaches_the_audit_trail() {
    let caught = std::panic::catch_unwind(|| {
        assert_no_secret(
            "{\"key\":\"…ijklmnopqrst…\"}",
            &["abcdefghijklmnopqrstuvwxyz"],
        )
    });
    assert!(caught.is_err(), "a 12-character piece is found");
    assert_no_secret("abcdefghijk", &["abcdefghijklmnopqrstuvwxyz"]);

    let dir = tempfile::tempdir().unwrap();
    let path = audit_path(&dir);
    let server = Server::start(&["--audit-log", path.to_str().unwrap()]);
    let alice_key = server.add_caller("alice", "mint");
    let reader_key = server.add_caller("reader", "resolve");
    let mut alice = client_with(&server, Some(&alice_key)).await;
    let mut reader = client_with(&server, Some(&reader_key)).await;
    let mut tokens = Vec::new();
    for i in 0..4 {
        let minted = mint(
            &mut alice,
            &format!("mint-{i}"),
            pb::MintRequest {
                scopes: vec!["repo:read".into()],
                labels: [("purpose".to_owned(), "audit".to_owned())].into(),
                ..replacing("t-1", &format!("inst-{}", i % 2))
            },
        )
        .await;
        tokens.push(minted.token);
    }
    for token in &tokens {
        let _ = resolve(&mut reader, "resolve", token).await;
    }
    // A caller key sent as a token, and a token sent as a caller key.
    let status = resolve(&mut reader, "key-as-token", &alice_key)
        .await
        .expect_err("not a token");
    assert_eq!(reason(&status), "TOKEN_MALFORMED");
    let garbled = garble(&reader_key, 20);
    let mut sent_as_keys = vec![tokens[0].clone(), garbled.clone()];
    sent_as_keys.push(format!("{}{}", alice_key, "A"));
    for (i, key) in sent_as_keys.iter().enumerate() {
        let status = client_with(&server, Some(key))
            .await
            .revoke_all(with_id(revoke_all(""), &format!("bad-key-{i}")))
            .await
            .expect_err("refused");
        assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    }
    // A key in the wrong frame.
    let mut basic = tonic::Request::new(revoke_all(""));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {alice_key}").parse().unwrap(),
    );
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = pb::credential_authority_client::CredentialAuthorityClient::new(channel)
        .revoke_all(basic)
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), "CALLER_UNAUTHENTICATED");
    alice
        .revoke_thread(with_id(revoke_thread("t-1"), "revoke-thread"))
        .await
        .unwrap();
    alice
        .revoke_all(with_id(revoke_all(""), "revoke-all"))
        .await
        .unwrap();

    let text = audit::read(&path);
    let written = parse_lines(&text);
    assert_eq!(
        written.len(),
        4 + 3 + 1 + 2,
        "the mints, denials and revocations"
    );
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend(sent_as_keys.iter().map(String::as_str));
    secrets.extend([server.admin_key(), &alice_key, &reader_key]);
    assert_no_secret(&text, &secrets);
}

/// Catches: the stdout default writing audit lines elsewhere (stderr, a
/// file) or not at all, an audit line interleaved into a log line (or a
/// log line into an audit line) when both are written at once, and a line
/// lost or written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_audit_log_the_lines_go_to_stdout_whole_among_the_log() {
    for format in ["text", "json"] {
        let server = SplitServer::start(&["--log-format", format]);
        let admin = server.client(Some(server.admin_key())).await;
        let keyless = server.client(None).await;
        let mut calls = tokio::task::JoinSet::new();
        let mut ids = Vec::new();
        for i in 0..60 {
            let id = format!("stdout-{i}");
            ids.push(id.clone());
            let (mut admin, mut keyless) = (admin.clone(), keyless.clone());
            calls.spawn(async move {
                if i % 3 == 0 {
                    let status = keyless
                        .revoke_all(with_id(revoke_all(""), &id))
                        .await
                        .expect_err("refused");
                    assert_eq!(status.code(), Code::Unauthenticated);
                } else {
                    let thread = format!("t-{i}");
                    admin
                        .mint(with_id(mint_request(&thread, "inst"), &id))
                        .await
                        .expect("mint");
                }
            });
        }
        calls.join_all().await;

        // Both lines of every call: the audit line, and the log line that
        // the background writer flushes a little later.
        let log_marker = |id: &str| match format {
            "text" => format!("request_id={id} "),
            _ => format!("\"request_id\":\"{id}\",\"caller\""),
        };
        let stdout = audit::poll(
            "every audit and log line on stdout",
            || server.stdout(),
            |text| {
                ids.iter().all(|id| {
                    text.contains(&format!("\"request_id\":\"{id}\",\"rpc\""))
                        && text.contains(&log_marker(id))
                })
            },
        );
        let mut audited = Vec::new();
        for line in stdout.lines() {
            let is_audit = line.starts_with("{\"time\":");
            if is_audit {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a whole JSON audit line ({e}): {line}"));
                audited.push(value["request_id"].as_str().unwrap().to_owned());
            } else {
                assert!(
                    !line.contains("{\"time\":"),
                    "an audit line inside a log line: {line}"
                );
                if format == "json" {
                    let value: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("a whole JSON log line ({e}): {line}"));
                    assert!(value.get("level").is_some(), "{line}");
                }
            }
        }
        audited.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(
            audited, expected,
            "each call's line once, with --log-format {format}"
        );
        let stderr = server.stderr();
        assert!(
            !stderr.contains("\"request_id\""),
            "audit lines on stderr: {stderr}"
        );
        assert_no_secret(&stdout, &[server.admin_key()]);
    }
}

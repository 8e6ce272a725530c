//! How the real binary starts with respect to callers: the secure default
//! (a private state directory with an admin key), the exposure rules, the
//! insecure mode, reflection switched off, and no secret in any log line.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::callers::*;
use common::grpcurl::{self, SERVICE};
use common::{client, client_with, Server, BINARY};
use credential_authority::auth::key::CallerKey;
use credential_authority::pb;
use credential_authority::token::Token;
use sha2::{Digest as _, Sha256};
use tonic::Code;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn scratch() -> Arc<tempfile::TempDir> {
    Arc::new(tempfile::tempdir().unwrap())
}

/// Runs `serve ARGS` with its own state directory, expecting it to refuse
/// to start: returns its exit code and what it wrote. Killed (and the test
/// failed) if it is still running after 20 s.
fn refused_start(args: &[&str]) -> (i32, String) {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .arg("serve")
        .args(args)
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        !state.path().join("state").exists(),
        "nothing is bootstrapped before the refusal"
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// Catches: a state directory or key file others can read, a key written
/// into the log, a callers file holding the key rather than its digest,
/// and a restart that writes a new admin key or loses the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_writes_a_private_admin_key_once() {
    let mut server = Server::start(&[]);
    let state = server.state_dir();
    let (key_path, callers_path) = (state.join("admin.key"), state.join("callers.toml"));
    assert_eq!(
        (mode(&state), mode(&key_path), mode(&callers_path)),
        (0o700, 0o600, 0o600)
    );
    let key = server.admin_key().to_owned();
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        format!("{key}\n")
    );
    let callers = std::fs::read_to_string(&callers_path).unwrap();
    let digest: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        callers.contains("name = \"admin\"") && callers.contains(&digest),
        "{callers}"
    );
    assert_no_secret(&callers, &[&key]);
    let log = server.log();
    let announced = log
        .lines()
        .find(|l| l.contains("wrote an admin caller key"))
        .expect("announced");
    assert!(
        announced.contains(&key_path.display().to_string()),
        "{announced}"
    );
    assert_no_secret(&log, &[&key]);
    let listed = cli(&state, &["list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("admin") && l.contains(" admin ")),
        "{listed}"
    );
    let minted = mint(&mut client(&server).await, "t", "i").await;
    assert!(server.terminate().success());

    let key_file = std::fs::metadata(&key_path).unwrap();
    let again = Server::start_in(server.scratch(), &["--listen", "127.0.0.1:0"], &[], &[]);
    assert!(
        !again.log().contains("wrote an admin caller key"),
        "{}",
        again.log()
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        format!("{key}\n")
    );
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().modified().unwrap(),
        key_file.modified().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(&callers_path).unwrap(),
        callers,
        "callers file unchanged"
    );
    let mut admin = client_with(&again, Some(&key)).await;
    // A new process: the old key still works, and so does the old
    // credential (the store is durable by default).
    let resolved = resolve(&mut admin, &minted.token)
        .await
        .expect("the credential survives the restart");
    assert_eq!(resolved.credential_id, minted.credential_id);
    assert_eq!(resolved.minted_by, "admin");
    assert_no_secret(&again.log(), &[&key]);
}

/// Catches: `--insecure-no-caller-auth` not letting keyless calls in, the
/// wrong `minted_by`, a missing start-up warning, and the insecure mode
/// (or plaintext) allowed on a non-loopback listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_mode_is_loud_and_loopback_only() {
    let mut server = Server::start(&["--insecure-no-caller-auth"]);
    let mut anyone = client_with(&server, None).await;
    let minted = mint(&mut anyone, "t", "i").await;
    let resolved = resolve(&mut anyone, &minted.token).await.unwrap();
    assert_eq!(resolved.minted_by, "insecure-no-caller-auth");
    let revoked = anyone
        .revoke_all(pb::RevokeAllRequest::default())
        .await
        .unwrap();
    assert_eq!(revoked.get_ref().revoked, 1, "an admin's RevokeAll");
    let warning = "--insecure-no-caller-auth: every call is let in as an admin";
    let warned = |log: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(warning))
    };
    assert!(warned(&server.log()), "{}", server.log());
    assert!(
        !server.state_dir().join("admin.key").exists(),
        "no key is made"
    );
    assert!(server.terminate().success());
    let again = Server::start_in(
        server.scratch(),
        &["--listen", "127.0.0.1:0"],
        &["--insecure-no-caller-auth"],
        &[],
    );
    assert!(
        warned(&again.log()),
        "warned at every start: {}",
        again.log()
    );

    for args in [
        &["--listen", "0.0.0.0:0", "--insecure-no-caller-auth"][..],
        &[
            "--listen",
            "0.0.0.0:0",
            "--allow-plaintext",
            "--insecure-no-caller-auth",
        ],
        &[
            "--listen",
            "127.0.0.1:0,0.0.0.0:0",
            "--allow-plaintext",
            "--insecure-no-caller-auth",
        ],
    ] {
        let (code, text) = refused_start(args);
        assert_ne!(code, 0, "{text}");
        assert!(
            text.contains("refusing --insecure-no-caller-auth on 0.0.0.0:0"),
            "{text}"
        );
    }
}

/// Catches: a non-loopback listener served in plaintext without
/// `--allow-plaintext`, or refused with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_beyond_loopback_needs_allow_plaintext() {
    let (code, text) = refused_start(&["--listen", "0.0.0.0:0"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("refusing to listen on 0.0.0.0:0 without TLS"),
        "{text}"
    );
    assert!(
        text.contains("--allow-plaintext"),
        "the message names the way out: {text}"
    );
    let mut server = Server::start_in(
        scratch(),
        &["--listen", "0.0.0.0:0"],
        &["--allow-plaintext"],
        &[],
    );
    assert!(server.addr.ip().is_unspecified(), "{}", server.addr);
    server.addr.set_ip([127, 0, 0, 1].into());
    let minted = mint(&mut client(&server).await, "t", "i").await;
    let status = resolve(&mut client_with(&server, None).await, &minted.token)
        .await
        .unwrap_err();
    failure(&status, Code::Unauthenticated, "CALLER_UNAUTHENTICATED");
}

/// Catches: `--disable-reflection` leaving reflection on, or taking health
/// (or the authority) down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_switched_off_and_health_stays() {
    let server = Server::start(&["--disable-reflection"]);
    let addr = server.addr.to_string();
    let list = grpcurl::grpcurl(&["-plaintext", &addr, "list"]);
    assert_ne!(list.code, 0, "{}", list.stdout);
    assert!(list.stderr.contains("reflection"), "{}", list.stderr);
    // Health answers grpcurl given its descriptors instead.
    let scratch = tempfile::tempdir().unwrap();
    let protoset = scratch.path().join("health.protoset");
    std::fs::write(&protoset, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    let protoset = protoset.display().to_string();
    let health = grpcurl::grpcurl(&[
        "-plaintext",
        "-protoset",
        &protoset,
        "-d",
        "{}",
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert_eq!(grpcurl::ok(health)["status"], "SERVING");
    let service = format!(r#"{{"service":"{SERVICE}"}}"#);
    let health = grpcurl::grpcurl(&[
        "-plaintext",
        "-protoset",
        &protoset,
        "-d",
        &service,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert_eq!(grpcurl::ok(health)["status"], "SERVING");
    mint(&mut client(&server).await, "t", "i").await;
}

/// A lifecycle that presents every kind of secret in every place, good and
/// bad; returns every secret it issued or used.
async fn lifecycle(server: &Server) -> Vec<String> {
    let alice = server.add_caller("alice", "mint");
    let host = server.add_caller("host", "resolve");
    let (rotated, _) = add_key(&server.state_dir(), "alice");
    server.reload();
    let unknown = CallerKey::generate().unwrap().expose().to_owned();
    let never_minted = Token::generate().expose().to_owned();
    let mut typo_key = alice.clone().into_bytes();
    typo_key[20] = if typo_key[20] == b'A' { b'B' } else { b'A' };
    let typo_key = String::from_utf8(typo_key).unwrap();
    let mut admin = client(server).await;
    let mut minter = client_with(server, Some(&alice)).await;
    let mut minter2 = client_with(server, Some(&rotated)).await;
    let mut resolver = client_with(server, Some(&host)).await;
    let mut anonymous = client_with(server, None).await;

    let mut request = mint_request("t1", "i1");
    request.scopes = vec!["read".into()];
    request.labels = [("env".to_owned(), "ci".to_owned())].into();
    let first = minter.mint(request.clone()).await.unwrap().into_inner();
    request.replace_previous = true;
    let second = minter2.mint(request).await.unwrap().into_inner();
    let by_admin = mint(&mut admin, "t2", "i2").await;
    let tokens = [&first.token, &second.token, &by_admin.token];
    resolve(&mut resolver, &second.token).await.unwrap();
    resolve(&mut resolver, &by_admin.token).await.unwrap();
    revoked(resolve(&mut resolver, &first.token).await, "replaced");
    let scoped = pb::ResolveRequest {
        token: second.token.clone(),
        required_scope: "write".into(),
    };
    resolver.resolve(scoped).await.unwrap_err();
    minter.touch(touch_thread("t1")).await.unwrap();
    admin
        .touch(touch_id(&by_admin.credential_id))
        .await
        .unwrap();
    // Bad tokens, in Resolve's field.
    let mut typo_token = second.token.clone().into_bytes();
    typo_token[10] = if typo_token[10] == b'A' { b'B' } else { b'A' };
    let typo_token = String::from_utf8(typo_token).unwrap();
    for bad in [
        &never_minted,
        &typo_token,
        &alice,
        &format!("Bearer {}", second.token),
    ] {
        resolve(&mut resolver, bad).await.unwrap_err();
    }
    // Bad keys, in the metadata.
    for bad in [
        format!("Bearer {unknown}"),
        format!("Bearer {typo_key}"),
        format!("Bearer {}", second.token),
        format!("Basic {host}"),
        host.clone(),
    ] {
        let request = with_authorization(mint_request("x", "y"), &bad);
        anonymous.mint(request).await.unwrap_err();
    }
    anonymous.mint(mint_request("x", "y")).await.unwrap_err();
    // A forbidden role, another caller's credential, then the revocations.
    resolver.mint(mint_request("x", "y")).await.unwrap_err();
    minter
        .touch(touch_id(&by_admin.credential_id))
        .await
        .unwrap_err();
    let revoke = pb::RevokeCredentialRequest {
        credential_id: second.credential_id.clone(),
    };
    minter2.revoke_credential(revoke).await.unwrap();
    revoked(resolve(&mut resolver, &second.token).await, "credential");
    minter
        .revoke_thread(pb::RevokeThreadRequest {
            thread_id: "t1".into(),
        })
        .await
        .unwrap();
    admin
        .revoke_all(pb::RevokeAllRequest::default())
        .await
        .unwrap();
    revoked(resolve(&mut resolver, &by_admin.token).await, "all");
    // grpcurl, which takes the key from the environment.
    grpcurl::call_as(
        server,
        Some(&host),
        "Resolve",
        &grpcurl::resolve_body(&by_admin.token),
    );

    let mut secrets = vec![
        server.admin_key().to_owned(),
        alice,
        host,
        rotated,
        unknown,
        typo_key,
        never_minted,
        typo_token,
    ];
    secrets.extend(tokens.into_iter().cloned());
    secrets
}

/// Catches: any key or token (or 12 characters of one) written by any log
/// line at any level, in either format, including the audit lines, the
/// reload lines and third-party crates' traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_line() {
    for (flags, level_mark) in [
        (&[][..], " TRACE "),
        (&["--log-format", "json"][..], "\"level\":\"TRACE\""),
    ] {
        let mut server = Server::start_with_env(flags, &[("RUST_LOG", "trace")]);
        let secrets = lifecycle(&server).await;
        assert!(server.terminate().success());
        let log = server.log();
        assert!(log.contains(level_mark), "traced at every level: {flags:?}");
        assert!(
            log.matches("CALLER_UNAUTHENTICATED").count() >= 6,
            "the refusals were logged"
        );
        assert!(
            log.contains("TOKEN_MALFORMED") && log.contains("callers reloaded"),
            "{flags:?}"
        );
        if flags.len() == 2 {
            for line in log.lines() {
                let parsed = serde_json::from_str::<serde_json::Value>(line);
                assert!(parsed.is_ok(), "not JSON: {line}");
            }
        }
        assert_eq!(secrets.len(), 11);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_no_secret(&log, &secrets);
    }
}

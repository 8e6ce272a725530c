//! Callers against the real binary: which roles reach which RPCs, whose
//! credentials a caller may act on, how bad keys are refused, and how key
//! rotation and broken callers files behave on SIGHUP.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::callers::*;
use common::grpcurl::{self, SERVICE};
use common::{client, client_with, Client, Server};
use credential_authority::auth::key::CallerKey;
use credential_authority::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// Every RPC, Touch counted twice (by id and by thread).
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Mint,
    Resolve,
    TouchId,
    TouchThread,
    RevokeCredential,
    RevokeThread,
    RevokeAll,
}

impl Rpc {
    const ALL: [Rpc; 7] = [
        Rpc::Mint,
        Rpc::Resolve,
        Rpc::TouchId,
        Rpc::TouchThread,
        Rpc::RevokeCredential,
        Rpc::RevokeThread,
        Rpc::RevokeAll,
    ];

    /// The role the contract says the RPC needs.
    fn role(self) -> &'static str {
        match self {
            Rpc::Resolve => "resolve",
            _ => "mint",
        }
    }
}

/// What a matrix call acts on: the caller's own credential once it minted
/// one, else the probe (an admin's).
#[derive(Clone)]
struct Target {
    token: String,
    credential_id: String,
    thread: String,
    instance: String,
}

/// Makes `rpc` as caller `name` on `target`; Mint mints on the caller's own
/// (thread, instance) and returns that credential; Resolve presents the
/// probe's token.
async fn call(
    client: &mut Client,
    rpc: Rpc,
    name: &str,
    target: &Target,
    probe: &Target,
) -> Result<Option<Target>, Status> {
    match rpc {
        Rpc::Mint => {
            let (thread, instance) = (format!("t-{name}"), format!("i-{name}"));
            let minted = client.mint(mint_request(&thread, &instance)).await?;
            let minted = minted.into_inner();
            Ok(Some(Target {
                token: minted.token,
                credential_id: minted.credential_id,
                thread,
                instance,
            }))
        }
        Rpc::Resolve => resolve(client, &probe.token).await.map(|resolved| {
            assert_eq!(resolved.minted_by, "admin");
            None
        }),
        Rpc::TouchId => client
            .touch(touch_id(&target.credential_id))
            .await
            .map(done),
        Rpc::TouchThread => client.touch(touch_thread(&target.thread)).await.map(done),
        Rpc::RevokeCredential => client
            .revoke_credential(pb::RevokeCredentialRequest {
                credential_id: target.credential_id.clone(),
            })
            .await
            .map(|r| {
                assert_eq!(r.into_inner().revoked, 1, "its own live credential");
                None
            }),
        Rpc::RevokeThread => client
            .revoke_thread(pb::RevokeThreadRequest {
                thread_id: target.thread.clone(),
            })
            .await
            .map(done),
        Rpc::RevokeAll => client
            .revoke_all(pb::RevokeAllRequest {
                provider_instance_id: target.instance.clone(),
            })
            .await
            .map(done),
    }
}

/// An answer that minted nothing.
fn done<T>(_: T) -> Option<Target> {
    None
}

/// A matrix cell as compared: `allowed`, or the code, reason and
/// `required_role` of the refusal.
fn outcome(result: &Result<Option<Target>, Status>) -> String {
    match result {
        Ok(_) => "allowed".to_owned(),
        Err(status) => {
            let required = status
                .get_error_details()
                .error_info()
                .and_then(|info| info.metadata.get("required_role").cloned());
            format!("{:?} {} {required:?}", status.code(), reason_of(status))
        }
    }
}

/// Catches: an RPC mapped to the wrong role, `admin` not implying the
/// others, a role check skipped (the refusal would then lack
/// `required_role`, or the probe would be revoked), or an anonymous call
/// let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_roles_that_need_it() {
    let server = Server::start(&[]);
    let mut callers: Vec<(&str, Option<String>, &str)> = [
        ("minter", "mint"),
        ("resolver", "resolve"),
        ("both", "mint,resolve"),
    ]
    .into_iter()
    .map(|(name, roles)| (name, Some(server.add_caller(name, roles)), roles))
    .collect();
    callers.push(("admin", Some(server.admin_key().to_owned()), "admin"));
    callers.push(("anonymous", None, ""));
    let mut admin = client(&server).await;
    let minted = mint(&mut admin, "probe-thread", "probe-instance").await;
    let probe = Target {
        token: minted.token,
        credential_id: minted.credential_id,
        thread: "probe-thread".into(),
        instance: "probe-instance".into(),
    };
    let mut wrong = Vec::new();
    for (name, key, roles) in &callers {
        let mut caller = client_with(&server, key.as_deref()).await;
        let mut own: Option<Target> = None;
        for rpc in Rpc::ALL {
            let allowed = roles.split(',').any(|r| r == rpc.role() || r == "admin");
            let target = own.clone().unwrap_or_else(|| probe.clone());
            let result = call(&mut caller, rpc, name, &target, &probe).await;
            let expected = match (key, allowed) {
                (None, _) => "Unauthenticated CALLER_UNAUTHENTICATED None".to_owned(),
                (_, true) => "allowed".to_owned(),
                (_, false) => format!("PermissionDenied CALLER_FORBIDDEN {:?}", Some(rpc.role())),
            };
            let got = outcome(&result);
            match result {
                _ if got != expected => {
                    wrong.push(format!("{name} {rpc:?}: got {got}, expected {expected}"))
                }
                Ok(minted) => own = minted.or(own),
                Err(status) if key.is_some() => {
                    let metadata = failure(&status, Code::PermissionDenied, "CALLER_FORBIDDEN");
                    assert_eq!(metadata["caller"], *name);
                }
                Err(status) => drop(failure(
                    &status,
                    Code::Unauthenticated,
                    "CALLER_UNAUTHENTICATED",
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "role matrix:\n{}", wrong.join("\n"));
    // No refused call changed the probe.
    let resolved = resolve(&mut admin, &probe.token)
        .await
        .expect("probe is live");
    assert_eq!(resolved.minted_by, "admin");

    // Health and reflection need no key; grpcurl decodes the refusals.
    let addr = server.addr.to_string();
    let health = grpcurl::grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert_eq!(grpcurl::ok(health)["status"], "SERVING");
    let list = grpcurl::grpcurl(&["-plaintext", &addr, "list"]);
    assert!(
        list.code == 0 && list.stdout.lines().any(|l| l == SERVICE),
        "{}",
        list.stderr
    );
    let body = r#"{"threadId":"g","providerInstanceId":"g"}"#;
    grpcurl::failed(
        grpcurl::call_as(&server, None, "Mint", body),
        16,
        "CALLER_UNAUTHENTICATED",
    );
    let resolver = callers[1].1.as_deref();
    let details = grpcurl::failed(
        grpcurl::call_as(&server, resolver, "Mint", body),
        7,
        "CALLER_FORBIDDEN",
    );
    assert_eq!(
        grpcurl::error_info(&details)["metadata"]["required_role"],
        "mint"
    );
}

/// RevokeThread, which must succeed: (revoked, not_owned).
async fn revoke_thread(client: &mut Client, thread: &str) -> (u64, u64) {
    let request = pb::RevokeThreadRequest {
        thread_id: thread.into(),
    };
    let done = client.revoke_thread(request).await.unwrap().into_inner();
    (done.revoked, done.not_owned)
}

/// RevokeAll of `instance` (everything when empty), which must succeed.
async fn revoke_all(client: &mut Client, instance: &str) -> u64 {
    let request = pb::RevokeAllRequest {
        provider_instance_id: instance.into(),
    };
    client
        .revoke_all(request)
        .await
        .unwrap()
        .into_inner()
        .revoked
}

/// Catches: ownership not enforced (or enforced by key instead of caller),
/// a refused call that still changes something, RevokeThread/RevokeAll
/// scoped wrongly for a non-admin, the wrong revocation cause, or a wrong
/// `minted_by`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_act_only_on_their_own_credentials() {
    let server = Server::start(&[]);
    let mut a = client_with(&server, Some(&server.add_caller("alice", "mint,resolve"))).await;
    let mut b = client_with(&server, Some(&server.add_caller("bob", "mint,resolve"))).await;
    let mut admin = client(&server).await;

    let a1 = mint(&mut a, "t1", "inst").await;
    let a_other = mint(&mut a, "t-a", "other").await;
    let by_admin = mint(&mut admin, "t-admin", "other").await;
    assert_eq!(resolve(&mut b, &a1.token).await.unwrap().minted_by, "alice");
    assert_eq!(
        resolve(&mut a, &by_admin.token).await.unwrap().minted_by,
        "admin"
    );

    let revoke_a1 = pb::RevokeCredentialRequest {
        credential_id: a1.credential_id.clone(),
    };
    let metadata = not_owned(b.revoke_credential(revoke_a1).await);
    assert_eq!(metadata["credential_id"], a1.credential_id);
    not_owned(b.touch(touch_id(&a1.credential_id)).await);
    not_owned(b.touch(touch_thread("t1")).await);
    let mut replace = mint_request("t1", "inst");
    replace.replace_previous = true;
    not_owned(b.mint(replace).await);
    assert_eq!(
        resolve(&mut a, &a1.token).await.unwrap().credential_id,
        a1.credential_id
    );

    // Only alice's credential is live on t1: the refused Mint added none.
    assert_eq!(revoke_thread(&mut b, "t1").await, (0, 1));
    let b1 = mint(&mut b, "t1", "b-inst").await;
    assert_eq!(resolve(&mut a, &b1.token).await.unwrap().minted_by, "bob");
    assert_eq!(revoke_thread(&mut b, "t1").await, (1, 1));
    revoked(resolve(&mut b, &b1.token).await, "thread");
    resolve(&mut b, &a1.token)
        .await
        .expect("alice's stays live");

    // A provider instance is its adapter's: bob can neither mint as
    // alice's, nor revoke her credentials of it.
    not_owned(b.mint(mint_request("t2", "inst")).await);
    assert_eq!(revoke_all(&mut b, "inst").await, 0);
    resolve(&mut b, &a1.token)
        .await
        .expect("alice's of that instance");

    // RevokeAll {instance} by bob: bob's of that instance only.
    let b_inst = mint(&mut b, "t2", "b-inst").await;
    let b_else = mint(&mut b, "t3", "b-other").await;
    assert_eq!(revoke_all(&mut b, "b-inst").await, 1);
    revoked(resolve(&mut b, &b_inst.token).await, "provider_instance");
    resolve(&mut b, &b_else.token)
        .await
        .expect("bob's of another instance");

    // RevokeAll {} by bob: everything bob minted, nothing else.
    assert_eq!(revoke_all(&mut b, "").await, 1);
    revoked(resolve(&mut b, &b_else.token).await, "caller");
    for token in [&a1.token, &a_other.token, &by_admin.token] {
        resolve(&mut b, token).await.expect("others' stay live");
    }

    // An admin's RevokeAll {instance} reaches every caller's of it (an
    // admin may mint as any instance without taking it from its adapter).
    let admins = mint(&mut admin, "t4", "inst").await;
    assert_eq!(revoke_all(&mut admin, "inst").await, 2);
    revoked(resolve(&mut a, &a1.token).await, "provider_instance");
    revoked(resolve(&mut a, &admins.token).await, "provider_instance");
    resolve(&mut a, &a_other.token)
        .await
        .expect("another instance");
    // And the admin acts on alice's credential directly.
    let done = admin
        .revoke_credential(pb::RevokeCredentialRequest {
            credential_id: a_other.credential_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(done.get_ref().revoked, 1);
    revoked(resolve(&mut a, &a_other.token).await, "credential");
}

/// Catches: a refused Touch (by id or by thread) that renews the
/// credential anyway before saying CALLER_FORBIDDEN. Bob keeps touching
/// alice's credential; it must still die at the idle deadline Mint gave it,
/// as seen through a Resolve whose missing scope does not renew either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_touches_do_not_renew() {
    let server = Server::start(&[]);
    let mut a = client_with(&server, Some(&server.add_caller("alice", "mint,resolve"))).await;
    let mut b = client_with(&server, Some(&server.add_caller("bob", "mint,resolve"))).await;
    let mut request = mint_request("t-idle", "inst");
    request.idle_timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    request.scopes = vec!["read".into()];
    let minted = a.mint(request).await.unwrap().into_inner();
    let idle_deadline = millis(&minted.idle_expires_at);
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let mut refusals = 0;
    loop {
        let by_thread = b.touch(touch_thread("t-idle")).await;
        not_owned(b.touch(touch_id(&minted.credential_id)).await);
        let probe = a
            .resolve(pb::ResolveRequest {
                token: minted.token.clone(),
                required_scope: "write".into(),
            })
            .await;
        let status = probe.expect_err("the scope is missing, or it died");
        if reason_of(&status) == "TOKEN_IDLE_TIMEOUT" {
            failure(&status, Code::Unauthenticated, "TOKEN_IDLE_TIMEOUT");
            break;
        }
        failure(&status, Code::PermissionDenied, "TOKEN_SCOPE_MISSING");
        // Live when Resolve looked, so live when bob touched the thread.
        not_owned(by_thread);
        refusals += 1;
        let late = now() - idle_deadline;
        assert!(
            late < 5_000,
            "live {late}ms past its idle deadline after {refusals} refused touches"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refusals >= 5,
        "bob touched it throughout its life ({refusals} rounds)"
    );
    // The server's coarse clock may run a few milliseconds apart from ours.
    assert!(
        now() + 50 >= idle_deadline,
        "it died at its deadline, not before"
    );
}

/// Catches: a bad key let in (or refused with the wrong reason), a refusal
/// without ErrorInfo or request id, a message that echoes the presented
/// key or token, no hint when a token and a key trade places, and a
/// `Bearer ` prefix not recognised in Resolve's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_by_name_without_echoing_them() {
    let server = Server::start(&[]);
    let key = server.add_caller("host", "mint,resolve");
    let mut host = client_with(&server, Some(&key)).await;
    let minted = mint(&mut host, "t", "i").await;
    let token = minted.token.clone();
    let unknown = CallerKey::generate().unwrap().expose().to_owned();
    let mut typo = key.clone().into_bytes();
    typo[30] = if typo[30] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let cases: [(Option<String>, &str); 8] = [
        (None, "no caller credentials"),
        (Some("Basic x".into()), "must be `Bearer <caller key>`"),
        (Some(key.clone()), "must be `Bearer <caller key>`"),
        (
            Some(format!("Basic {key}")),
            "must be `Bearer <caller key>`",
        ),
        (
            Some("Bearer ~garbage~".into()),
            "caller key has the wrong length",
        ),
        (Some(format!("Bearer {typo}")), "checksum does not match"),
        (Some(format!("Bearer {unknown}")), "not in the callers file"),
        (
            Some(format!("Bearer {token}")),
            "holds a credential token (`mcpca_`), not a caller key",
        ),
    ];
    let mut anonymous = client_with(&server, None).await;
    for (authorization, says) in &cases {
        for rpc in ["Mint", "Resolve"] {
            let result = match (rpc, authorization) {
                ("Mint", Some(value)) => anonymous
                    .mint(with_authorization(mint_request("x", "y"), value))
                    .await
                    .map(drop),
                ("Mint", None) => anonymous.mint(mint_request("x", "y")).await.map(drop),
                (_, Some(value)) => {
                    let request = pb::ResolveRequest {
                        token: token.clone(),
                        ..Default::default()
                    };
                    anonymous
                        .resolve(with_authorization(request, value))
                        .await
                        .map(drop)
                }
                (_, None) => resolve(&mut anonymous, &token).await.map(drop),
            };
            let (status, metadata) =
                refused(result, Code::Unauthenticated, "CALLER_UNAUTHENTICATED");
            assert!(
                status.message().contains(says),
                "{authorization:?}: {}",
                status.message()
            );
            assert!(
                status.message().contains("not an agent's token"),
                "{}",
                status.message()
            );
            let echoed = format!("{} {metadata:?}", status.message());
            assert_no_secret(&echoed, &[&key, &token, &unknown, &typo]);
        }
    }
    // A lower-case scheme with stray spaces is still the key.
    let spaced = with_authorization(mint_request("x", "y"), &format!("bearer  {key} "));
    anonymous
        .mint(spaced)
        .await
        .expect("bearer  KEY is accepted");

    // A caller key or a `Bearer ` token in Resolve's token field.
    for (presented, says) in [
        (
            key.clone(),
            "this is a caller key (`mcpck_`), not a credential token",
        ),
        (format!("Bearer {token}"), "without the prefix"),
    ] {
        let (status, metadata) = refused(
            resolve(&mut host, &presented).await,
            Code::Unauthenticated,
            "TOKEN_MALFORMED",
        );
        assert!(status.message().contains(says), "{}", status.message());
        assert_no_secret(
            &format!("{} {metadata:?}", status.message()),
            &[&key, &token],
        );
    }
    assert_eq!(
        resolve(&mut host, &token).await.unwrap().credential_id,
        minted.credential_id
    );

    // The same through grpcurl, decoded through reflection.
    let body = grpcurl::resolve_body(&token);
    let details = grpcurl::failed(
        grpcurl::call_as(&server, Some(&token), "Resolve", &body),
        16,
        "CALLER_UNAUTHENTICATED",
    );
    assert!(grpcurl::error_info(&details)["metadata"]["request_id"].is_string());
    let run = grpcurl::call_as(&server, Some(&token), "Resolve", &body);
    assert!(run.stderr.contains("not a caller key"), "{}", run.stderr);
    assert_no_secret(&run.stderr, &[&token]);
    grpcurl::failed(
        grpcurl::call_as(&server, Some(&unknown), "Resolve", &body),
        16,
        "CALLER_UNAUTHENTICATED",
    );
}

/// Catches: `add-key` or `remove-key` not taking effect on SIGHUP, a
/// removed key still let in, ownership tied to the key rather than the
/// caller, and a reload that drops open connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_with_the_cli_on_one_connection() {
    let server = Server::start(&[]);
    let state = server.state_dir();
    let old = server.add_caller("rotor", "mint,resolve");
    let [old_id] = key_ids(&state, "rotor").try_into().expect("one key");
    let proxy = Proxy::start(server.addr).await;
    let channel = proxy.channel().await;
    let mut with_old = client_on(&channel, Some(&old));
    let minted = mint(&mut with_old, "t", "i").await;

    let (new, new_id) = add_key(&state, "rotor");
    server.reload();
    assert_eq!(key_ids(&state, "rotor"), [old_id.clone(), new_id.clone()]);
    let mut with_new = client_on(&channel, Some(&new));
    for client in [&mut with_old, &mut with_new] {
        let resolved = resolve(client, &minted.token)
            .await
            .expect("both keys work");
        assert_eq!(resolved.minted_by, "rotor");
    }

    let removed = cli(&state, &["remove-key", "rotor", &old_id]);
    assert!(
        removed.contains(&format!("Removed key {old_id}")),
        "{removed}"
    );
    assert_eq!(key_ids(&state, "rotor"), [new_id]);
    // Until the reload the server still takes the old key.
    resolve(&mut with_old, &minted.token)
        .await
        .expect("not reloaded yet");
    server.reload();
    let (status, _) = refused(
        resolve(&mut with_old, &minted.token).await,
        Code::Unauthenticated,
        "CALLER_UNAUTHENTICATED",
    );
    assert!(
        status.message().contains("not in the callers file"),
        "{}",
        status.message()
    );
    // The new key owns what the old one minted: credentials are the caller's.
    let touched = with_new
        .touch(touch_id(&minted.credential_id))
        .await
        .unwrap();
    assert_eq!(touched.get_ref().credentials.len(), 1);
    let list = cli(&state, &["list"]);
    assert_no_secret(&list, &[&old, &new, server.admin_key()]);
    let mut admin = client_on(&channel, Some(server.admin_key()));
    admin
        .revoke_all(pb::RevokeAllRequest::default())
        .await
        .expect("admin key unaffected");
    assert_eq!(proxy.connections(), (1, 0), "one connection, never dropped");
}

/// Catches: a broken callers file on SIGHUP taking effect (locking every
/// caller out or emptying the set), a refusal that is not logged, and a
/// server that does not recover once the file is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_callers_file_is_refused_and_the_old_callers_stay() {
    let server = Server::start(&[]);
    let key = server.add_caller("host", "mint,resolve");
    let mut host = client_with(&server, Some(&key)).await;
    let minted = mint(&mut host, "t", "i").await;
    let path = server.state_dir().join("callers.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let count = |needle: &str| server.log().matches(needle).count();

    let duplicate = format!("{good}\n[[caller]]\nname = \"host\"\nroles = [\"admin\"]\n");
    for broken in ["[[caller]\nname = = garbage \u{1}", duplicate.as_str()] {
        let (refusals, reloads) = (count("callers file refused"), count("callers reloaded"));
        std::fs::write(&path, broken).unwrap();
        server.reload();
        assert_eq!(
            count("callers file refused"),
            refusals + 1,
            "{}",
            server.log()
        );
        assert_eq!(count("callers reloaded"), reloads);
        let line = server
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("callers file refused"))
            .unwrap()
            .to_owned();
        assert!(
            line.contains("ERROR") && line.contains("callers.toml"),
            "{line}"
        );
        // The previous callers are in force: keys work, credentials live.
        let resolved = resolve(&mut host, &minted.token)
            .await
            .expect("host still works");
        assert_eq!(resolved.credential_id, minted.credential_id);
        let mut admin = client(&server).await;
        admin
            .touch(touch_id(&minted.credential_id))
            .await
            .expect("admin still works");
        std::fs::write(&path, &good).unwrap();
        server.reload();
        assert_eq!(count("callers reloaded"), reloads + 1);
        resolve(&mut host, &minted.token)
            .await
            .expect("the fixed file");
    }
    // Reloads take effect again once fixed.
    let later = server.add_caller("later", "resolve");
    resolve(&mut client_with(&server, Some(&later)).await, &minted.token)
        .await
        .unwrap();
    assert_no_secret(&server.log(), &[&key, &later, server.admin_key()]);
}

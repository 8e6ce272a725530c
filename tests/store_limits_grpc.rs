//! The store's limits as a client sees them: the real binary started with
//! small limits, called over gRPC. Each refusal is RESOURCE_EXHAUSTED with
//! its ErrorInfo reason and metadata and without RetryInfo (a limit is not
//! a transient fault), and nothing stored is lost by it.

mod common;

use std::collections::HashMap;

use common::{client, Client, Server};
use credential_authority::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

fn mint_request(thread_id: &str, instance: &str) -> pb::MintRequest {
    pb::MintRequest {
        thread_id: thread_id.into(),
        provider_instance_id: instance.into(),
        provider_kind: "claude".into(),
        ..Default::default()
    }
}

async fn mint(client: &mut Client, request: pb::MintRequest) -> Result<pb::MintResponse, Status> {
    client.mint(request).await.map(|r| r.into_inner())
}

async fn resolves(client: &mut Client, token: &str) -> bool {
    client
        .resolve(pb::ResolveRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .is_ok()
}

/// A limit's refusal: RESOURCE_EXHAUSTED, `reason`, no RetryInfo; its
/// ErrorInfo metadata.
fn limit_refusal(
    result: Result<pb::MintResponse, Status>,
    reason: &str,
) -> HashMap<String, String> {
    let status = result.expect_err("the limit refuses the Mint");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    assert!(
        details.retry_info().is_none(),
        "a limit carries no RetryInfo"
    );
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "credential-authority");
    info.metadata.clone()
}

/// Catches: the per-thread limit not enforced, or reported under another
/// reason or with RetryInfo; a rotation at the limit refused; a refusal
/// that loses a stored credential.
#[tokio::test]
async fn a_full_thread_refuses_with_thread_credential_limit() {
    let server = Server::start(&["--max-credentials-per-thread", "2"]);
    let mut client = client(&server).await;
    let a = mint(&mut client, mint_request("t", "i1")).await.unwrap();
    let b = mint(&mut client, mint_request("t", "i2")).await.unwrap();
    let metadata = limit_refusal(
        mint(&mut client, mint_request("t", "i3")).await,
        "THREAD_CREDENTIAL_LIMIT",
    );
    assert_eq!(metadata["limit"], "2");
    assert_eq!(metadata["thread_id"], "t");
    assert!(resolves(&mut client, &a.token).await);
    assert!(resolves(&mut client, &b.token).await);
    // replace_previous frees its own room.
    let rotated = mint(
        &mut client,
        pb::MintRequest {
            replace_previous: true,
            ..mint_request("t", "i1")
        },
    )
    .await
    .unwrap();
    assert_eq!(rotated.replaced, 1);
    assert!(!resolves(&mut client, &a.token).await);
    // Revocation frees room too.
    client
        .revoke_credential(pb::RevokeCredentialRequest {
            credential_id: b.credential_id.clone(),
        })
        .await
        .unwrap();
    mint(&mut client, mint_request("t", "i3")).await.unwrap();
}

/// Catches: the store's budgets not enforced, the wrong `budget` named,
/// and room not coming back when credentials are revoked.
#[tokio::test]
async fn a_full_store_refuses_with_credential_limit_naming_its_budget() {
    let server = Server::start(&["--max-credentials", "2"]);
    let mut client = client(&server).await;
    let a = mint(&mut client, mint_request("t1", "i")).await.unwrap();
    mint(&mut client, mint_request("t2", "i")).await.unwrap();
    let metadata = limit_refusal(
        mint(&mut client, mint_request("t3", "i")).await,
        "CREDENTIAL_LIMIT",
    );
    assert_eq!(metadata["budget"], "credentials");
    assert_eq!(metadata["limit"], "2");
    assert!(resolves(&mut client, &a.token).await);
    client
        .revoke_thread(pb::RevokeThreadRequest {
            thread_id: "t1".into(),
        })
        .await
        .unwrap();
    mint(&mut client, mint_request("t3", "i")).await.unwrap();

    // 1 + 1 + 6 ("claude") + 6 ("scope1") = 14 bytes each.
    let server = Server::start(&["--max-credential-bytes", "30"]);
    let mut client = common::client(&server).await;
    let scoped = |thread: &str| pb::MintRequest {
        scopes: vec!["scope1".into()],
        ..mint_request(thread, "i")
    };
    mint(&mut client, scoped("a")).await.unwrap();
    mint(&mut client, scoped("b")).await.unwrap();
    let metadata = limit_refusal(mint(&mut client, scoped("c")).await, "CREDENTIAL_LIMIT");
    assert_eq!(metadata["budget"], "bytes");
    assert_eq!(metadata["limit"], "30");
}

/// Catches: a Touch reply as long as the thread, `total` counting only the
/// listed, and unlisted credentials left unrenewed (their count checked via
/// `total`; renewal itself is the store tests').
#[tokio::test]
async fn touch_by_thread_lists_up_to_the_reply_limit_and_reports_the_total() {
    let server = Server::start(&["--touch-reply-limit", "2"]);
    let mut client = client(&server).await;
    let mut ids = Vec::new();
    for k in 0..5 {
        let minted = mint(&mut client, mint_request("t", &format!("i{k}")))
            .await
            .unwrap();
        ids.push(minted.credential_id);
    }
    let touched = client
        .touch(pb::TouchRequest {
            target: Some(pb::touch_request::Target::ThreadId("t".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(touched.total, 5);
    let listed: Vec<_> = touched
        .credentials
        .iter()
        .map(|c| c.credential_id.clone())
        .collect();
    assert_eq!(listed, ids[..2], "the oldest two");
    // By credential id: one listed, total one.
    let one = client
        .touch(pb::TouchRequest {
            target: Some(pb::touch_request::Target::CredentialId(ids[4].clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.total, one.credentials.len()), (1, 1));
}

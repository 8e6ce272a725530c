//! Per-caller quotas from the callers file, against the real binary: a
//! caller that reaches its live-credential quota or mints faster than its
//! rate is refused with its own reason, the others keep minting, and a
//! SIGHUP applies new quotas.

mod common;

use std::fs;
use std::sync::Arc;

use common::callers::*;
use common::{client_with, Server};
use tokio::sync::Barrier;
use tonic::Code;
use tonic_types::StatusExt as _;

/// Puts `lines` into caller `name`'s table of the server's callers file
/// (right after its `name = ...` line, before its key tables) and reloads.
fn set_quota(server: &Server, name: &str, lines: &str) {
    let path = server.state_dir().join("callers.toml");
    let text = fs::read_to_string(&path).unwrap();
    let anchor = format!("name = \"{name}\"\n");
    assert!(text.contains(&anchor), "{name} not in the callers file");
    fs::write(
        &path,
        text.replacen(&anchor, &format!("{anchor}{lines}\n"), 1),
    )
    .unwrap();
    server.reload();
    assert!(
        !server.log().contains("callers file refused"),
        "{}",
        server.log()
    );
}

/// Catches a live quota that is not enforced, counted per key instead of per
/// caller, counted over all callers, or not given back by a revocation.
#[tokio::test]
async fn a_caller_at_its_live_quota_is_refused_and_others_are_not() {
    let server = Server::start(&[]);
    let greedy_key = server.add_caller("greedy", "mint");
    let other_key = server.add_caller("other", "mint");
    set_quota(&server, "greedy", "max_live_credentials = 2");
    let mut greedy = client_with(&server, Some(&greedy_key)).await;
    let mut other = client_with(&server, Some(&other_key)).await;

    let first = mint(&mut greedy, "t-1", "greedy-1").await;
    mint(&mut greedy, "t-2", "greedy-1").await;
    let (status, metadata) = refused(
        greedy.mint(mint_request("t-3", "greedy-1")).await,
        Code::ResourceExhausted,
        "CALLER_QUOTA_EXCEEDED",
    );
    assert_eq!(metadata["caller"], "greedy");
    assert_eq!(metadata["limit"], "2");
    assert!(
        status.get_error_details().retry_info().is_none(),
        "a limit is not retryable"
    );
    assert!(status.message().contains("revoked or die"), "{status:?}");

    // Another caller's quota is its own.
    for i in 0..3 {
        mint(&mut other, &format!("o-{i}"), "other-1").await;
    }
    // Revoking one of greedy's frees one place, and only one.
    greedy
        .revoke_credential(pb_revoke(&first.credential_id))
        .await
        .unwrap();
    mint(&mut greedy, "t-4", "greedy-1").await;
    refused(
        greedy.mint(mint_request("t-5", "greedy-1")).await,
        Code::ResourceExhausted,
        "CALLER_QUOTA_EXCEEDED",
    );
    // A second key of the same caller shares the quota.
    let (second_key, _) = add_key(&server.state_dir(), "greedy");
    server.reload();
    let mut greedy_second = client_with(&server, Some(&second_key)).await;
    refused(
        greedy_second.mint(mint_request("t-6", "greedy-1")).await,
        Code::ResourceExhausted,
        "CALLER_QUOTA_EXCEEDED",
    );
}

fn pb_revoke(credential_id: &str) -> credential_authority::pb::RevokeCredentialRequest {
    credential_authority::pb::RevokeCredentialRequest {
        credential_id: credential_id.to_owned(),
    }
}

/// Catches a Mint rate that is not enforced, that lets a concurrent burst
/// past its size (the bucket read and written apart), or that is charged
/// to the other callers too.
#[tokio::test]
async fn a_caller_past_its_mint_rate_is_refused_with_its_reason() {
    let server = Server::start(&[]);
    let fast_key = server.add_caller("fast", "mint");
    let other_key = server.add_caller("calm", "mint");
    // A burst of 3, then one a second: the 8 calls arrive well within one.
    set_quota(&server, "fast", "mint_rate = { per_second = 1, burst = 3 }");

    let barrier = Arc::new(Barrier::new(8));
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut client = client_with(&server, Some(&fast_key)).await;
        let barrier = barrier.clone();
        calls.push(tokio::spawn(async move {
            barrier.wait().await;
            client.mint(mint_request(&format!("r-{i}"), "fast-1")).await
        }));
    }
    let mut minted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => minted += 1,
            Err(status) => {
                let metadata = failure(
                    &status,
                    Code::ResourceExhausted,
                    "CALLER_MINT_RATE_EXCEEDED",
                );
                assert_eq!(metadata["caller"], "fast");
                assert_eq!(metadata["per_second"], "1");
                assert_eq!(metadata["burst"], "3");
                assert!(status.get_error_details().retry_info().is_none());
            }
        }
    }
    // 8 Mints within well under a second: the burst of 3, maybe one more
    // if the machine stalled a full second between them, never all.
    assert!((3..=4).contains(&minted), "{minted} of 8 minted");
    let mut calm = client_with(&server, Some(&other_key)).await;
    for i in 0..5 {
        mint(&mut calm, &format!("c-{i}"), "calm-1").await;
    }
    assert!(server.log().contains("CALLER_MINT_RATE_EXCEEDED"));
}

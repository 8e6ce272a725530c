//! The Redis backend end to end: real `redis-server` processes and the real
//! authority binary with `--store redis`, on loopback ports.
//!
//! The semantics (reasons, causes, deadlines, limits) are checked on every
//! backend by `backend_semantics.rs`; here: several authorities sharing one
//! Redis, Resolve's cost in Redis commands, a Redis that stops and comes
//! back, and the refusals at start.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::health::{health, serving};
use common::redis::RedisServer;
use common::{client, serve_command, Client, Server};
use credential_authority::clock::{Clock, SystemClock};
use credential_authority::pb;
use credential_authority::store::redis::{RedisOptions, RedisStore};
use credential_authority::store::{Backend, NewCredential, Reach, StoreConfig};
use credential_authority::token::Token;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// Starts the binary on the Redis at `url`, expects it to refuse to start,
/// and returns what it logged.
fn refused_start(url: &str, extra: &[&str]) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut flags = vec!["--store", "redis", "--redis-url", url];
    flags.extend_from_slice(extra);
    let out = serve_command(
        &["--listen", "127.0.0.1:0"],
        &state.path().join("state"),
        &flags,
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

fn authority(redis: &RedisServer, extra: &[&str]) -> Server {
    let mut flags = vec!["--store", "redis", "--redis-url"];
    let url = redis.url();
    flags.push(&url);
    flags.extend_from_slice(extra);
    Server::start(&flags)
}

fn mint_request(thread_id: &str) -> pb::MintRequest {
    pb::MintRequest {
        thread_id: thread_id.into(),
        provider_instance_id: "claude-1".into(),
        provider_kind: "claude".into(),
        ..Default::default()
    }
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

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// Waits (bounded) until the server's overall health is `wanted`.
async fn health_becomes(server: &Server, wanted: i32) {
    let mut checker = health(server).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if serving(&mut checker).await.ok() == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {wanted}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Catches: a backend that keeps anything per process (a token minted on
/// A unknown to B, a revocation on B not seen on A, a RevokeAll on A not
/// seen on B at once).
#[tokio::test]
async fn two_authorities_share_one_redis() {
    let redis = RedisServer::start(&[]);
    let a = authority(&redis, &[]);
    let b = authority(&redis, &[]);
    let (mut on_a, mut on_b) = (client(&a).await, client(&b).await);

    let minted = on_a
        .mint(mint_request("thread-1"))
        .await
        .unwrap()
        .into_inner();
    let seen = resolve(&mut on_b, &minted.token)
        .await
        .expect("B resolves A's token");
    assert_eq!(seen.credential_id, minted.credential_id);
    on_b.revoke_credential(pb::RevokeCredentialRequest {
        credential_id: minted.credential_id.clone(),
    })
    .await
    .unwrap();
    let refused = resolve(&mut on_a, &minted.token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason(&refused), "TOKEN_REVOKED");

    let second = on_b
        .mint(mint_request("thread-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(resolve(&mut on_a, &second.token).await.is_ok());
    on_a.revoke_all(pb::RevokeAllRequest::default())
        .await
        .unwrap();
    let refused = resolve(&mut on_b, &second.token).await.unwrap_err();
    assert_eq!(reason(&refused), "TOKEN_REVOKED");
    assert!(
        !a.log().contains(&minted.token) && !b.log().contains(&minted.token),
        "no token in either log"
    );

    // An authority restart loses nothing: the credentials live in Redis.
    let third = on_a
        .mint(mint_request("thread-3"))
        .await
        .unwrap()
        .into_inner();
    drop((on_a, a));
    let a = authority(&redis, &[]);
    let mut on_a = client(&a).await;
    assert!(resolve(&mut on_a, &third.token).await.is_ok());
}

/// Catches: a Resolve that costs more than one Redis command (a GET then
/// a script, a separate renewal write, a WAIT on the read path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_is_one_redis_command() {
    let redis = RedisServer::start(&[]);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let store = RedisStore::connect(
        RedisOptions {
            url: redis.url(),
            password: None,
            min_replicas: 0,
            timeout: Duration::from_secs(5),
            tls_ca: None,
        },
        StoreConfig::default(),
        clock,
        None,
    )
    .await
    .unwrap();
    let backend = Backend::from(store);
    let digest = Token::generate().digest();
    backend
        .mint(
            digest,
            NewCredential {
                thread_id: "t",
                provider_instance_id: "i",
                minted_by: "a",
                reach: Reach::MintedBy("a"),
                ..NewCredential::default()
            },
        )
        .await
        .unwrap();
    redis.cli(&["CONFIG", "RESETSTAT"]);
    const CALLS: usize = 100;
    let runtime = tokio::runtime::Handle::current();
    let sent = tokio::task::block_in_place(|| {
        redis.client_commands_during(|| {
            runtime.block_on(async {
                for _ in 0..CALLS {
                    backend
                        .resolve_with(&digest, None, |view| view.credential_id)
                        .await
                        .unwrap();
                }
            })
        })
    });
    assert_eq!(
        sent,
        vec!["FCALL".to_owned(); CALLS],
        "one FCALL per Resolve"
    );
    assert_eq!(redis.command_calls("fcall"), CALLS as u64);
}

/// Catches: a Redis fault reported as a dead token (UNAUTHENTICATED), a
/// health that stays SERVING while Redis is gone, a backend that needs a
/// restart of ours to recover, and an acknowledged Mint lost when Redis
/// restarts (with `appendfsync always`).
#[tokio::test]
async fn redis_stopped_mid_traffic_fails_retryable_and_recovers() {
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let server = authority(&redis, &["--redis-timeout", "300ms"]);
    let mut caller = client(&server).await;
    health_becomes(&server, SERVING).await;

    // Mints under way while Redis dies: every one acknowledged is kept.
    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    for i in 0..60 {
        if i == 30 {
            redis.kill();
        }
        match caller.mint(mint_request(&format!("thread-{i}"))).await {
            Ok(minted) => acknowledged.push(minted.into_inner().token),
            Err(status) => failures.push(status),
        }
    }
    assert!(acknowledged.len() >= 30, "minted before the stop");
    assert!(!failures.is_empty(), "Redis was down for the last mints");
    for status in &failures {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(status), "SERVICE_UNAVAILABLE");
        assert!(
            status.get_error_details().retry_info().is_some(),
            "a fault of ours carries RetryInfo"
        );
    }
    let during = resolve(&mut caller, &acknowledged[0]).await.unwrap_err();
    assert_eq!(during.code(), Code::Unavailable, "never a TOKEN_* verdict");
    assert_eq!(reason(&during), "SERVICE_UNAVAILABLE");
    health_becomes(&server, NOT_SERVING).await;

    redis.restart();
    health_becomes(&server, SERVING).await;
    for token in &acknowledged {
        resolve(&mut caller, token)
            .await
            .expect("every acknowledged Mint survives Redis's restart");
    }
}

/// Catches: starting on a Redis that may evict keys (an evicted generation
/// or tombstone would revive revoked tokens).
#[test]
fn refuses_a_redis_that_may_evict() {
    let redis = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    let log = refused_start(&redis.url(), &[]);
    assert!(
        log.contains("noeviction") && log.contains("allkeys-lru"),
        "{log}"
    );
}

/// Sets Redis's `maxmemory-policy` at run time, as an operator could.
fn set_policy(redis: &RedisServer, policy: &str) {
    let reply = redis.cli(&["CONFIG", "SET", "maxmemory-policy", policy]);
    assert_eq!(reply.trim(), "OK", "{policy}");
}

/// Catches: a `maxmemory-policy` changed after start going unnoticed (calls
/// answered while Redis may evict a generation or tombstone), reported as a
/// dead token instead of our fault, or never recovered from once undone.
#[tokio::test]
async fn a_policy_that_may_evict_set_after_start_stops_every_call_until_undone() {
    let redis = RedisServer::start(&[]);
    let server = authority(&redis, &[]);
    let mut caller = client(&server).await;
    health_becomes(&server, SERVING).await;
    let token = caller
        .mint(mint_request("thread-policy"))
        .await
        .unwrap()
        .into_inner()
        .token;
    resolve(&mut caller, &token).await.unwrap();

    set_policy(&redis, "allkeys-lru");
    health_becomes(&server, NOT_SERVING).await;
    let refused = [
        resolve(&mut caller, &token).await.unwrap_err(),
        caller
            .mint(mint_request("thread-policy"))
            .await
            .unwrap_err(),
    ];
    for status in &refused {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(status), "SERVICE_UNAVAILABLE", "{status:?}");
        assert!(status.get_error_details().retry_info().is_some());
    }
    assert!(server.log().contains("allkeys-lru"), "{}", server.log());

    set_policy(&redis, "noeviction");
    health_becomes(&server, SERVING).await;
    resolve(&mut caller, &token)
        .await
        .expect("the credential resolves again, unharmed");
}

/// Catches: a password from the file not used, or the password (from the
/// file or the URL) written to the log.
#[tokio::test]
async fn the_redis_password_is_used_and_never_logged() {
    let password = "s3cret-redis-password";
    let redis = RedisServer::start(&["--requirepass", password]);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("redis-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let server = authority(&redis, &["--redis-password-file", file.to_str().unwrap()]);
    let mut caller = client(&server).await;
    let minted = caller.mint(mint_request("t")).await.unwrap().into_inner();
    assert!(resolve(&mut caller, &minted.token).await.is_ok());
    assert!(!server.log().contains(password), "{}", server.log());

    let in_url = format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let second = Server::start(&["--store", "redis", "--redis-url", &in_url]);
    let mut caller = client(&second).await;
    assert!(resolve(&mut caller, &minted.token).await.is_ok());
    assert!(!second.log().contains(password), "{}", second.log());
}

/// libfaketime from Debian's `faketime` package (scripts/install-test-tools).
fn faketime_library() -> String {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.exists())
        .map(|lib| lib.display().to_string())
        .expect("libfaketime is installed (scripts/install-test-tools installs faketime)")
}

/// Catches: deadlines computed from the authority's own clock (replicas
/// whose clocks differ would disagree on who is idle) instead of Redis's
/// `TIME`. One authority runs under libfaketime seven minutes ahead.
#[tokio::test]
async fn authorities_with_skewed_clocks_agree_on_deadlines() {
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let flags = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--idle-timeout",
        "5m",
    ];
    let honest = Server::start(&flags);
    // libfaketime preloaded into the binary itself: the `faketime` command
    // forks, and killing it would leave the server behind.
    let libfaketime = faketime_library();
    let ahead = Server::start_with_env(
        &flags,
        &[("LD_PRELOAD", libfaketime.as_str()), ("FAKETIME", "+7m")],
    );
    let (mut on_honest, mut on_ahead) = (client(&honest).await, client(&ahead).await);
    let millis = |t: Option<prost_types::Timestamp>| {
        let t = t.expect("a deadline");
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
    };

    // The skew is real: the wrapped authority's own log runs ahead.
    let logged = ahead.log();
    let first_stamp = logged
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let now_text = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    assert!(
        first_stamp[..16] > now_text[..16],
        "faketime moves the authority's clock: {first_stamp} vs {now_text}"
    );

    // Minted by the honest one, renewed by the one ahead: a renewal by its
    // own clock would move the idle deadline seven minutes on.
    let minted = on_honest
        .mint(mint_request("t"))
        .await
        .unwrap()
        .into_inner();
    let seen = resolve(&mut on_ahead, &minted.token).await.unwrap();
    let drift = millis(seen.idle_expires_at) - millis(minted.idle_expires_at);
    assert!(
        (0..60_000).contains(&drift),
        "both answer Redis's deadlines (the skew is 7 minutes): {drift} ms apart"
    );
    // Minted by the one ahead: born at Redis's time, not seven minutes on.
    let minted = on_ahead
        .mint(mint_request("t2"))
        .await
        .unwrap()
        .into_inner();
    let seen = resolve(&mut on_honest, &minted.token).await.unwrap();
    assert!(millis(seen.created_at) <= millis(seen.idle_expires_at) - 5 * 60_000 + 60_000);
    let created_after = millis(seen.created_at)
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    assert!(
        created_after < 60_000,
        "created {created_after} ms in the future"
    );
}

/// Catches: a revocation acknowledged before a replica has it, so that a
/// failover brings a revoked token back (or loses an acknowledged Mint).
/// With `--redis-min-replicas 1`, the primary is killed under traffic and
/// its replica promoted; a second authority on the promoted replica must
/// see every acknowledged change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_brings_back_nothing_revoked() {
    let mut primary = RedisServer::start(&[]);
    let replica = RedisServer::replica_of(&primary);
    let first = authority(
        &primary,
        &["--redis-min-replicas", "1", "--redis-timeout", "500ms"],
    );
    let mut caller = client(&first).await;

    // Mint, revoke every other one, until the primary dies under it.
    let mut live = Vec::new();
    let mut revoked = Vec::new();
    let traffic = {
        let mut caller = caller.clone();
        tokio::spawn(async move {
            let (mut live, mut revoked) = (Vec::new(), Vec::new());
            for i in 0..400 {
                let Ok(minted) = caller.mint(mint_request(&format!("t-{i}"))).await else {
                    break;
                };
                let minted = minted.into_inner();
                if i % 2 == 0 {
                    live.push(minted.token);
                    continue;
                }
                let request = pb::RevokeCredentialRequest {
                    credential_id: minted.credential_id.clone(),
                };
                match caller.revoke_credential(request).await {
                    Ok(_) => revoked.push(minted.token),
                    Err(_) => break,
                }
            }
            (live, revoked)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    primary.kill();
    let (acked_live, acked_revoked) = traffic.await.unwrap();
    live.extend(acked_live);
    revoked.extend(acked_revoked);
    assert!(
        live.len() > 5 && revoked.len() > 5,
        "traffic ran before the kill"
    );
    let refused = caller.mint(mint_request("after")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);

    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let second = authority(&replica, &[]);
    let mut caller = client(&second).await;
    for token in &revoked {
        let status = resolve(&mut caller, token).await.unwrap_err();
        assert_eq!(
            reason(&status),
            "TOKEN_REVOKED",
            "a revoked token came back"
        );
    }
    for token in &live {
        resolve(&mut caller, token)
            .await
            .expect("an acknowledged Mint survives the failover");
    }
}

/// Catches: a Redis-backed server that answers grpcurl differently from the
/// embedded one (a reason or cause lost on the way through Redis, an
/// ErrorInfo that reflection cannot decode).
#[tokio::test]
async fn grpcurl_mints_resolves_and_sees_the_revocation_on_redis() {
    use common::grpcurl::{call, failed, ok};
    let redis = RedisServer::start(&[]);
    let server = authority(&redis, &[]);
    let minted = ok(call(
        &server,
        "Mint",
        r#"{"thread_id":"thread-g","provider_instance_id":"claude-1","scopes":["read"]}"#,
    ));
    let token = minted["token"].as_str().unwrap();
    let resolved = ok(call(
        &server,
        "Resolve",
        &format!(r#"{{"token":"{token}","required_scope":"read"}}"#),
    ));
    assert_eq!(resolved["threadId"], "thread-g");
    assert_eq!(resolved["credentialId"], minted["credentialId"]);
    ok(call(&server, "RevokeThread", r#"{"thread_id":"thread-g"}"#));
    let details = failed(
        call(&server, "Resolve", &format!(r#"{{"token":"{token}"}}"#)),
        16,
        "TOKEN_REVOKED",
    );
    let info = common::grpcurl::error_info(&details);
    assert_eq!(info["metadata"]["revocation_cause"], "thread");
}

/// Catches: starting on a Redis Cluster node, where every Mint would then
/// fail (its function is flagged `no-cluster`), instead of refusing at
/// start with the reason.
#[test]
fn refuses_a_redis_cluster_node_at_start() {
    let redis = RedisServer::start(&["--cluster-enabled", "yes"]);
    let log = refused_start(&redis.url(), &[]);
    assert!(log.contains("Redis Cluster node"), "{log}");
}

/// Catches: `rediss://` that does not verify the server (a certificate of
/// an unknown CA accepted) or that cannot use a private CA.
#[tokio::test]
async fn rediss_verifies_the_server_against_the_given_ca() {
    use common::tls::{ca, server_identity};
    let pki = tempfile::tempdir().unwrap();
    let authority_ca = ca("test Redis CA");
    let identity = server_identity(&authority_ca);
    let (cert, key, ca_file) = (
        pki.path().join("redis.pem"),
        pki.path().join("redis.key"),
        pki.path().join("ca.pem"),
    );
    std::fs::write(&cert, &identity.cert).unwrap();
    std::fs::write(&key, &identity.key).unwrap();
    std::fs::write(&ca_file, authority_ca.pem()).unwrap();
    let tls_port = common::redis::free_port().to_string();
    let redis = RedisServer::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca_file.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let server = Server::start(&[
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--redis-tls-ca",
        ca_file.to_str().unwrap(),
    ]);
    let mut caller = client(&server).await;
    let minted = caller.mint(mint_request("t")).await.unwrap().into_inner();
    assert!(resolve(&mut caller, &minted.token).await.is_ok());
    let _ = &redis;

    // Without the CA, the same server is not trusted: refused at start.
    let log = refused_start(&url, &["--redis-timeout", "2s"]);
    assert!(log.contains("cannot reach Redis"), "{log}");
}

/// Catches: a bucket layout that piles keys onto one Cluster master (too
/// few buckets, or tags that hash alike): with the three-master split
/// `redis-cli --cluster create` makes (slots 0-5460, 5461-10922,
/// 10923-16383), no master may hold more than half of the credentials.
/// Credentials spread evenly over the buckets (the tag is taken from a
/// SHA-256), so a master's share of buckets is its share of keys. Redis
/// itself computes each tag's slot (`CLUSTER KEYSLOT`).
#[test]
fn the_buckets_spread_over_three_cluster_masters() {
    let node = RedisServer::start(&["--cluster-enabled", "yes"]);
    let mut per_master = [0u32; 3];
    for bucket in 0..64u8 {
        let digest = (0..100_000)
            .map(|_| Token::generate().digest())
            .find(|d| d.as_bytes()[0] >> 2 == bucket)
            .expect("a digest in every bucket");
        let slot: u32 = node
            .cli(&["CLUSTER", "KEYSLOT", &credential_key_of(&digest)])
            .trim()
            .parse()
            .unwrap();
        per_master[match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        }] += 1;
    }
    assert!(
        per_master.iter().all(|&n| n <= 32),
        "buckets per master: {per_master:?}"
    );
    assert!(per_master.iter().all(|&n| n > 0), "{per_master:?}");
}

/// The key name of a credential, as the backend builds it.
fn credential_key_of(digest: &credential_authority::token::TokenDigest) -> String {
    credential_authority::store::redis::credential_key(digest)
}

/// Catches: a credential that died by its idle timeout working again when
/// Redis's clock steps back (NTP, a failover to a replica whose clock is
/// behind) after the death was seen and the pruner unlisted it: the death
/// must be written down when first found.
#[tokio::test]
async fn a_death_stays_final_when_the_redis_clock_steps_back() {
    use credential_authority::clock::FakeClock;
    use credential_authority::store::{DeathReason, Rejection};
    let redis = RedisServer::start(&[]);
    let clock = FakeClock::new(1_800_000_000_000);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = RedisStore::connect(
        RedisOptions {
            url: redis.url(),
            password: None,
            min_replicas: 0,
            timeout: Duration::from_secs(5),
            tls_ca: None,
        },
        StoreConfig::default(),
        shared.clone(),
        Some(shared),
    )
    .await
    .unwrap();
    let backend = Backend::from(store.clone());
    let digest = Token::generate().digest();
    backend
        .mint(
            digest,
            NewCredential {
                thread_id: "t",
                provider_instance_id: "i",
                minted_by: "a",
                reach: Reach::MintedBy("a"),
                ..NewCredential::default()
            },
        )
        .await
        .unwrap();
    let idle = 30 * 60 * 1000;
    clock.set(1_800_000_000_000 + idle);
    let dead = backend.resolve_with(&digest, None, |_| ()).await;
    assert!(matches!(&dead, Err(Rejection::Dead(d)) if d.reason == DeathReason::IdleTimeout));
    store.prune().await.unwrap();
    clock.set(1_800_000_000_000 + idle / 2);
    match backend.resolve_with(&digest, None, |_| ()).await {
        Err(Rejection::Dead(d)) => assert_eq!(d.reason, DeathReason::IdleTimeout),
        other => panic!("a dead credential came back: {other:?}"),
    }
}

/// Catches: the `WAIT` of `--redis-min-replicas` sent on the connection
/// Resolve uses (a `WAIT` blocks its connection in Redis: with a stalled
/// replica, every Resolve would wait `--redis-timeout` behind each write),
/// and a write reported durable that no replica has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_fails_writes_but_never_holds_up_resolve() {
    let primary = RedisServer::start(&[]);
    let replica = RedisServer::replica_of(&primary);
    let server = authority(
        &primary,
        &["--redis-min-replicas", "1", "--redis-timeout", "2s"],
    );
    let mut caller = client(&server).await;
    let minted = caller.mint(mint_request("t")).await.unwrap().into_inner();

    // SIGSTOP: the replica holds its connection but acknowledges nothing.
    let replica_pid = replica
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse::<i32>().ok())
        .expect("the replica's pid");
    // SAFETY: plain kill(2) on a child process of this test.
    unsafe { libc::kill(replica_pid, libc::SIGSTOP) };
    let writer = {
        let mut caller = caller.clone();
        tokio::spawn(async move { caller.mint(mint_request("t2")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for _ in 0..20 {
        resolve(&mut caller, &minted.token)
            .await
            .expect("Resolve answers while a write waits for the replica");
    }
    let resolving = started.elapsed();
    let refused = writer.await.unwrap().unwrap_err();
    // SAFETY: as above.
    unsafe { libc::kill(replica_pid, libc::SIGCONT) };
    assert!(
        resolving < Duration::from_millis(1_000),
        "20 Resolves took {resolving:?} behind a WAIT"
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "SERVICE_UNAVAILABLE");
}

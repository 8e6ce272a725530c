//! The real binary serving TLS and mutual TLS on its TCP listener: Rust
//! clients over rustls and grpcurl, with certificates made in the test.
//! A client certificate names a caller only through a URI or DNS SAN the
//! callers file lists; SIGHUP swaps the certificate without a restart; a
//! silent client is cut off at the handshake deadline.

mod common;

use std::time::{Duration, Instant};

use common::grpcurl::{self, SERVICE};
use common::tls::{
    as_strs, ca, client_config, client_identity, dns, reload_tls, server_identity, tls_channel,
    tls_client, uri, Identity, ServerPki, TlsReload,
};
use common::{Client, Server};
use credential_authority::pb;
use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use tokio::io::AsyncReadExt as _;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt as _;

const URI_CALLER: &str = "adapter-uri";
const URI_SAN: &str = "spiffe://test.example/adapter-uri";
const DNS_CALLER: &str = "adapter-dns";
const DNS_SAN: &str = "adapter-dns.test.example";
/// A caller with a key and a URI SAN.
const BOTH_CALLER: &str = "adapter-both";
const BOTH_SAN: &str = "spiffe://test.example/adapter-both";

/// A Mint of its own provider instance per thread: a provider instance
/// belongs to the adapter that mints for it, and these tests mint as
/// several callers.
fn mint_request(thread_id: &str) -> pb::MintRequest {
    pb::MintRequest {
        thread_id: thread_id.into(),
        provider_instance_id: format!("claude-{thread_id}"),
        provider_kind: "claude".into(),
        ..Default::default()
    }
}

async fn mint(client: &mut Client, thread_id: &str) -> Result<pb::MintResponse, Status> {
    client
        .mint(mint_request(thread_id))
        .await
        .map(|r| r.into_inner())
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

/// Mints with `client` and resolves the token with the same client; returns
/// the caller the server recorded as the minter.
async fn minted_by(client: &mut Client, thread_id: &str) -> String {
    let minted = mint(client, thread_id).await.expect("mint");
    let resolved = resolve(client, &minted.token).await.expect("resolve");
    assert_eq!(resolved.credential_id, minted.credential_id);
    resolved.minted_by
}

/// Asserts the server refused the caller: UNAUTHENTICATED with
/// `CALLER_UNAUTHENTICATED`; returns the message.
fn assert_caller_unauthenticated(result: Result<impl std::fmt::Debug, Status>) -> String {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("a server refusal carries ErrorInfo");
    assert_eq!(info.reason, "CALLER_UNAUTHENTICATED", "{status:?}");
    status.message().to_owned()
}

/// How a connection attempt plus one call ended, when it did not succeed.
#[derive(Debug)]
enum Failed {
    /// The channel could not connect (TCP, TLS or HTTP/2 handshake).
    Connect(tonic::transport::Error),
    /// The call failed.
    Call(Status),
}

/// Asserts a failure below gRPC: the connection failed, or the call failed
/// with a status the client made from a transport error (one the server
/// sent would have no transport error as its source, and ErrorInfo).
fn assert_transport_failure<T: std::fmt::Debug>(result: Result<T, Failed>) {
    match result.expect_err("the call must fail") {
        Failed::Connect(error) => eprintln!("refused at connection: {error:?}"),
        Failed::Call(status) => {
            let source = std::error::Error::source(&status);
            assert!(
                source.is_some_and(|s| s.is::<tonic::transport::Error>()),
                "not a transport failure: {status:?}"
            );
            assert!(
                status.get_error_details().error_info().is_none(),
                "the server answered the call: {status:?}"
            );
        }
    }
}

/// Starts a TLS server (with client certificates when `mtls`).
fn start_tls(pki: &ServerPki, mtls: bool) -> Server {
    let flags = pki.flags(mtls);
    Server::start(&as_strs(&flags))
}

/// Appends caller tables to the server's callers file and has it reload.
fn append_callers(server: &Server, tables: &str) {
    let path = server.state_dir().join("callers.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n');
    text.push_str(tables);
    std::fs::write(&path, text).unwrap();
    server.reload();
    let log = server.log();
    assert!(
        !log.contains("callers file refused"),
        "the edited callers file was refused:\n{log}"
    );
}

/// Gives the existing caller `name` a URI SAN, by editing its table.
fn give_uri_san(server: &Server, name: &str, san: &str) {
    let path = server.state_dir().join("callers.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = format!("name = \"{name}\"\n");
    assert_eq!(text.matches(&line).count(), 1, "{text}");
    let text = text.replace(&line, &format!("{line}uri_sans = [\"{san}\"]\n"));
    std::fs::write(&path, text).unwrap();
    server.reload();
    assert!(!server.log().contains("callers file refused"));
}

/// A mutual-TLS server whose callers file names, besides the admin:
/// `adapter-uri` by URI SAN only, `adapter-dns` by DNS SAN only,
/// `adapter-both` by a key and a URI SAN, and `keyed` by a key only.
struct Mtls {
    pki: ServerPki,
    server: Server,
    both_key: String,
    keyed_key: String,
}

impl Mtls {
    fn start() -> Mtls {
        let pki = ServerPki::new();
        let server = start_tls(&pki, true);
        let both_key = server.add_caller(BOTH_CALLER, "mint,resolve");
        give_uri_san(&server, BOTH_CALLER, BOTH_SAN);
        let keyed_key = server.add_caller("keyed", "mint,resolve");
        append_callers(
            &server,
            &format!(
                "[[caller]]\nname = \"{URI_CALLER}\"\nroles = [\"mint\", \"resolve\"]\n\
                 uri_sans = [\"{URI_SAN}\"]\n\n\
                 [[caller]]\nname = \"{DNS_CALLER}\"\nroles = [\"mint\", \"resolve\"]\n\
                 dns_sans = [\"{DNS_SAN}\"]\n"
            ),
        );
        Mtls {
            pki,
            server,
            both_key,
            keyed_key,
        }
    }

    /// A client certificate from the client CA.
    fn identity(&self, cn: &str, sans: Vec<rcgen::SanType>) -> Identity {
        client_identity(&self.pki.client_ca, cn, sans)
    }

    async fn client(&self, identity: Option<&Identity>, key: Option<&str>) -> Client {
        tls_client(&self.server, &self.pki.server_ca, identity, key).await
    }
}

/// Catches: TLS flags ignored (plaintext served), a TLS listener that does
/// not speak gRPC over h2, or plaintext still accepted on the TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_mint_and_resolve_and_refuses_plaintext() {
    let pki = ServerPki::new();
    let server = start_tls(&pki, false);
    assert!(server.log().contains("tls=true"), "{}", server.log());
    let mut admin = tls_client(&server, &pki.server_ca, None, Some(server.admin_key())).await;
    assert_eq!(minted_by(&mut admin, "thread-tls").await, "admin");

    let health = tls_channel(server.addr, client_config(&pki.server_ca, None))
        .await
        .unwrap();
    HealthClient::new(health.channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health over TLS, without a key");

    // The same call in plaintext to the TLS port gets no gRPC answer.
    let plaintext = async {
        let channel = Channel::from_shared(server.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(Failed::Connect)?;
        let bearer = common::Bearer::new(Some(server.admin_key()));
        let mut client = CredentialAuthorityClient::with_interceptor(channel, bearer);
        mint(&mut client, "thread-plain")
            .await
            .map_err(Failed::Call)
    };
    assert_transport_failure(plaintext.await);
}

/// Catches: certificate SANs not consulted (or a URI SAN compared as DNS),
/// or the minter recorded as something other than the certificate's caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_alone_authenticates_by_uri_or_dns_san() {
    let mtls = Mtls::start();
    let by_uri = mtls.identity("whatever-cn", vec![uri(URI_SAN)]);
    let mut client = mtls.client(Some(&by_uri), None).await;
    assert_eq!(minted_by(&mut client, "thread-uri").await, URI_CALLER);

    let by_dns = mtls.identity("whatever-cn", vec![dns(DNS_SAN)]);
    let mut client = mtls.client(Some(&by_dns), None).await;
    assert_eq!(minted_by(&mut client, "thread-dns").await, DNS_CALLER);

    // The admin over mTLS sees the same owner.
    let mut client = mtls.client(Some(&by_uri), None).await;
    let minted = mint(&mut client, "thread-owner").await.unwrap();
    let mut admin = mtls.client(None, Some(mtls.server.admin_key())).await;
    let resolved = resolve(&mut admin, &minted.token).await.unwrap();
    assert_eq!(resolved.minted_by, URI_CALLER);
}

/// Catches: the subject CN taken as an identity, or an unlisted SAN (or a
/// listed URI presented as a DNS name) let in without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cn_only_or_unlisted_certificate_without_key_is_unauthenticated() {
    let mtls = Mtls::start();
    // The CN is a caller's name and a listed SAN, letter for letter.
    for cn in [URI_CALLER, URI_SAN, DNS_SAN] {
        let cn_only = mtls.identity(cn, vec![]);
        let mut client = mtls.client(Some(&cn_only), None).await;
        assert_caller_unauthenticated(mint(&mut client, "thread-cn").await);
    }
    let unlisted = mtls.identity(
        URI_CALLER,
        vec![uri("spiffe://test.example/nobody"), dns(URI_CALLER)],
    );
    let mut client = mtls.client(Some(&unlisted), None).await;
    assert_caller_unauthenticated(mint(&mut client, "thread-unlisted").await);
}

/// Catches: client certificates accepted without checking that they chain
/// to `--tls-client-ca` (the stranger's SAN is a listed caller's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let mtls = Mtls::start();
    let stranger = client_identity(&ca("stranger CA"), URI_CALLER, vec![uri(URI_SAN)]);
    let config = client_config(&mtls.pki.server_ca, Some(&stranger));
    let outcome = async {
        // With TLS 1.2 the handshake itself fails; with TLS 1.3 the client
        // may finish first and the first call meets the server's alert.
        let channel = tls_channel(mtls.server.addr, config)
            .await
            .map_err(Failed::Connect)?;
        mint(&mut channel.authority(None), "thread-stranger")
            .await
            .map_err(Failed::Call)
    };
    assert_transport_failure(outcome.await);
    // The server is unharmed.
    let by_uri = mtls.identity("cn", vec![uri(URI_SAN)]);
    let mut client = mtls.client(Some(&by_uri), None).await;
    assert_eq!(minted_by(&mut client, "thread-after").await, URI_CALLER);
}

/// Catches: a key silently overriding a certificate of another caller (or
/// the certificate overriding the key), a refusal when both agree, or
/// client certificates made mandatory when a client CA is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_key_must_name_the_same_caller() {
    let mtls = Mtls::start();
    let both_cert = mtls.identity("cn", vec![uri(BOTH_SAN)]);

    let mut mixed = mtls.client(Some(&both_cert), Some(&mtls.keyed_key)).await;
    let message = assert_caller_unauthenticated(mint(&mut mixed, "thread-mixed").await);
    assert!(message.contains("name different callers"), "{message}");
    let uri_cert = mtls.identity("cn", vec![uri(URI_SAN)]);
    let mut mixed = mtls.client(Some(&uri_cert), Some(&mtls.both_key)).await;
    assert_caller_unauthenticated(mint(&mut mixed, "thread-mixed").await);

    let mut agreeing = mtls.client(Some(&both_cert), Some(&mtls.both_key)).await;
    assert_eq!(minted_by(&mut agreeing, "thread-both").await, BOTH_CALLER);

    let mut key_only = mtls.client(None, Some(&mtls.keyed_key)).await;
    assert_eq!(minted_by(&mut key_only, "thread-key").await, "keyed");

    // A certificate that names nobody does not spoil a valid key.
    let cn_only = mtls.identity(BOTH_CALLER, vec![]);
    let mut cn_and_key = mtls.client(Some(&cn_only), Some(&mtls.keyed_key)).await;
    assert_eq!(minted_by(&mut cn_and_key, "thread-cn-key").await, "keyed");

    let mut nothing = mtls.client(None, None).await;
    assert_caller_unauthenticated(mint(&mut nothing, "thread-nothing").await);
}

/// Catches: SIGHUP not re-reading the certificate (or only at restart),
/// open connections dropped by a swap, or a broken file replacing the
/// working certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_keeps_it_when_the_new_one_is_broken() {
    let pki = ServerPki::new();
    let server = start_tls(&pki, false);
    let key = Some(server.admin_key());
    let before = tls_channel(server.addr, client_config(&pki.server_ca, None))
        .await
        .unwrap();
    let mut before_client = before.authority(key);
    mint(&mut before_client, "thread-before").await.unwrap();

    let new_ca = ca("rotated server CA");
    pki.write_server(&server_identity(&new_ca));
    assert_eq!(reload_tls(&server), TlsReload::Reloaded);

    let mut fresh = tls_client(&server, &new_ca, None, key).await;
    mint(&mut fresh, "thread-new").await.unwrap();
    let old_trust = tls_channel(server.addr, client_config(&pki.server_ca, None)).await;
    assert!(
        old_trust.is_err(),
        "a client trusting only the old CA still connected"
    );

    // The connection opened before the swap still serves calls, on the
    // same connection (reconnecting would now fail: it trusts the old CA).
    mint(&mut before_client, "thread-still").await.unwrap();
    assert_eq!(before.connects(), 1, "the old client had to reconnect");

    std::fs::write(pki.cert_path(), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    assert_eq!(reload_tls(&server), TlsReload::Refused);
    assert!(
        server.log().contains("server.pem"),
        "the refusal names the file"
    );
    let mut after = tls_client(&server, &new_ca, None, key).await;
    mint(&mut after, "thread-after").await.unwrap();
    assert!(
        tls_channel(server.addr, client_config(&pki.server_ca, None))
            .await
            .is_err(),
        "a refused reload brought back an older certificate"
    );
}

/// Writes a client identity's PEM files into `dir` for grpcurl.
fn write_identity(dir: &std::path::Path, name: &str, id: &Identity) -> (String, String) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &id.cert).unwrap();
    std::fs::write(&key, &id.key).unwrap();
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (s(cert), s(key))
}

/// Catches: a server a standard Go gRPC client cannot reach over TLS or
/// mTLS (ALPN, certificate chain, client-certificate request), reflection
/// or health put behind caller authentication on TLS.
#[test]
fn grpcurl_over_tls_and_mtls() {
    let pki = ServerPki::new();
    let server = Server::start(&as_strs(&pki.flags(true)));
    let caller = format!(
        "[[caller]]\nname = \"{URI_CALLER}\"\nroles = [\"mint\", \"resolve\"]\n\
         uri_sans = [\"{URI_SAN}\"]\n"
    );
    append_callers(&server, &caller);
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("server-ca.pem");
    std::fs::write(&ca_file, pki.server_ca.pem()).unwrap();
    let ca_file = ca_file.to_str().unwrap().to_owned();
    let addr = server.addr.to_string();
    let tls = ["-cacert", ca_file.as_str()];
    let run = |key: Option<&str>, extra: &[&str]| {
        let argv: Vec<&str> = tls.iter().chain(extra).copied().collect();
        grpcurl::grpcurl_as(key, &argv)
    };

    let list = run(None, &[&addr, "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.lines().any(|l| l == SERVICE), "{}", list.stdout);
    let health = run(None, &[&addr, "grpc.health.v1.Health/Check"]);
    assert_eq!(health.code, 0, "{}", health.stderr);
    assert_eq!(health.json()["status"], "SERVING");

    // The admin key from the environment, never in argv.
    let mint_method = format!("{SERVICE}/Mint");
    let resolve_method = format!("{SERVICE}/Resolve");
    let body = r#"{"threadId":"thread-grpcurl","providerInstanceId":"claude-1"}"#;
    let key = Some(server.admin_key());
    let minted = grpcurl::ok(run(key, &["-d", body, &addr, &mint_method]));
    let token = minted["token"].as_str().unwrap();
    let resolved = grpcurl::ok(run(
        key,
        &["-d", &grpcurl::resolve_body(token), &addr, &resolve_method],
    ));
    assert_eq!(resolved["mintedBy"], "admin");
    // And without a key, the service refuses.
    grpcurl::failed(
        run(None, &["-format-error", "-d", body, &addr, &mint_method]),
        16,
        "CALLER_UNAUTHENTICATED",
    );

    // mTLS: the certificate names the caller, no key header.
    let id = client_identity(&pki.client_ca, "grpcurl", vec![uri(URI_SAN)]);
    let (cert, cert_key) = write_identity(files.path(), "client", &id);
    let mtls = ["-cert", cert.as_str(), "-key", cert_key.as_str()];
    let with_cert = |extra: &[&str]| {
        let all: Vec<&str> = mtls.iter().chain(extra).copied().collect();
        run(None, &all)
    };
    let minted = grpcurl::ok(with_cert(&["-d", body, &addr, &mint_method]));
    let token = minted["token"].as_str().unwrap();
    let resolved = grpcurl::ok(with_cert(&[
        "-d",
        &grpcurl::resolve_body(token),
        &addr,
        &resolve_method,
    ]));
    assert_eq!(resolved["mintedBy"], URI_CALLER);
    let list = with_cert(&[&addr, "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let health = with_cert(&[&addr, "grpc.health.v1.Health/Check"]);
    assert_eq!(health.json()["status"], "SERVING");
}

/// Catches: no handshake deadline (a silent client holds its connection
/// forever), `--tls-handshake-timeout` ignored, or handshakes run inline so
/// that one silent client stalls everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_cut_off_at_the_handshake_deadline() {
    let pki = ServerPki::new();
    let mut flags = pki.flags(false);
    flags.extend(["--tls-handshake-timeout".to_owned(), "500ms".to_owned()]);
    let server = Server::start(&as_strs(&flags));
    let timeout = Duration::from_millis(500);

    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Served while the silent connection is still waiting.
    let mut client = tls_client(&server, &pki.server_ca, None, Some(server.admin_key())).await;
    mint(&mut client, "thread-meanwhile").await.unwrap();
    if started.elapsed() < timeout - Duration::from_millis(100) {
        let mut byte = [0; 1];
        assert!(
            matches!(silent.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the silent client was closed before its deadline"
        );
    }

    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(4), silent.read(&mut byte)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the silent client was not closed within 4 s: {read:?}"
    );
    assert!(
        elapsed >= timeout - Duration::from_millis(50),
        "closed after {elapsed:?}, before the 500ms deadline"
    );
    // The server keeps serving after cutting it off.
    mint(&mut client, "thread-after").await.unwrap();
}

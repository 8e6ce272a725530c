//! Helpers for the callers tests (`tests/callers_*.rs`): requests with raw
//! `authorization` metadata, typed-failure checks, the `callers` CLI, a
//! connection-counting proxy and the secret-in-text check.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use credential_authority::pb;
use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use super::{find_key, Bearer, Client, BINARY};

/// A Mint request for (`thread`, `instance`).
pub fn mint_request(thread: &str, instance: &str) -> pb::MintRequest {
    pb::MintRequest {
        thread_id: thread.into(),
        provider_instance_id: instance.into(),
        ..Default::default()
    }
}

/// Mints for (`thread`, `instance`), which must succeed.
pub async fn mint(client: &mut Client, thread: &str, instance: &str) -> pb::MintResponse {
    client
        .mint(mint_request(thread, instance))
        .await
        .unwrap_or_else(|status| panic!("mint {thread}/{instance}: {status:?}"))
        .into_inner()
}

/// Resolves `token`.
pub async fn resolve(client: &mut Client, token: &str) -> Result<pb::ResolveResponse, Status> {
    client
        .resolve(pb::ResolveRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A Touch of one credential.
pub fn touch_id(credential_id: &str) -> pb::TouchRequest {
    pb::TouchRequest {
        target: Some(pb::touch_request::Target::CredentialId(
            credential_id.into(),
        )),
    }
}

/// A Touch of a thread.
pub fn touch_thread(thread_id: &str) -> pb::TouchRequest {
    pb::TouchRequest {
        target: Some(pb::touch_request::Target::ThreadId(thread_id.into())),
    }
}

/// `message` with `authorization: <value>` exactly as given.
pub fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.parse().expect("ascii metadata"));
    request
}

/// Checks a failure's code, reason, domain and request id (in the metadata
/// and in the message); returns the ErrorInfo metadata.
pub fn failure(status: &Status, code: Code, reason: &str) -> HashMap<String, String> {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "credential-authority");
    let request_id = info.metadata.get("request_id").expect("request_id");
    assert!(!request_id.is_empty(), "{status:?}");
    assert!(status.message().contains(request_id.as_str()), "{status:?}");
    info.metadata.clone()
}

/// Asserts `result` failed with `code` and `reason`; returns the status and
/// its ErrorInfo metadata.
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> (Status, HashMap<String, String>) {
    let status = result.expect_err(&format!("expected {reason}"));
    let metadata = failure(&status, code, reason);
    (status, metadata)
}

/// Asserts a refusal of `caller` for lacking `role`.
pub fn lacks_role<T: std::fmt::Debug>(result: Result<T, Status>, caller: &str, role: &str) {
    let (status, metadata) = refused(result, Code::PermissionDenied, "CALLER_FORBIDDEN");
    assert_eq!(
        metadata.get("required_role").map(String::as_str),
        Some(role),
        "{status:?}"
    );
    assert_eq!(
        metadata.get("caller").map(String::as_str),
        Some(caller),
        "{status:?}"
    );
}

/// Asserts a refusal for naming another caller's credentials (not a
/// missing role).
pub fn not_owned<T: std::fmt::Debug>(result: Result<T, Status>) -> HashMap<String, String> {
    let (status, metadata) = refused(result, Code::PermissionDenied, "CALLER_FORBIDDEN");
    assert!(!metadata.contains_key("required_role"), "{status:?}");
    assert!(
        status.message().contains("minted by another caller"),
        "{status:?}"
    );
    metadata
}

/// Asserts a Resolve of a revoked credential with `cause`.
pub fn revoked(result: Result<pb::ResolveResponse, Status>, cause: &str) {
    let (status, metadata) = refused(result, Code::Unauthenticated, "TOKEN_REVOKED");
    assert_eq!(
        metadata.get("revocation_cause").map(String::as_str),
        Some(cause),
        "{status:?}"
    );
}

/// Milliseconds of a timestamp.
pub fn millis(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("timestamp");
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// Runs `credential-authority callers ARGS --state-dir DIR`, which must
/// succeed; returns its standard output.
pub fn cli(state_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .arg("callers")
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("callers runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "callers {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `callers add-key NAME`: the new key and its id.
pub fn add_key(state_dir: &Path, name: &str) -> (String, String) {
    let out = cli(state_dir, &["add-key", name]);
    let key = find_key(&out).expect("add-key printed a key");
    let id = out
        .split_whitespace()
        .find(|word| word.starts_with("key-"))
        .expect("add-key printed the key id");
    (key, id.to_owned())
}

/// The key ids `callers list` shows for `name`.
pub fn key_ids(state_dir: &Path, name: &str) -> Vec<String> {
    let list = cli(state_dir, &["list"]);
    let row = list
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}: {list}"));
    let ids = row.split_whitespace().nth(2).expect("a KEY IDS column");
    ids.split(',').map(str::to_owned).collect()
}

/// A client over `channel` presenting `key`.
pub fn client_on(channel: &Channel, key: Option<&str>) -> Client {
    CredentialAuthorityClient::with_interceptor(channel.clone(), Bearer::new(key))
}

/// A loopback TCP proxy to the server that counts the connections it was
/// given and those that ended, so a test can tell that a channel kept its
/// one connection.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counted, ended) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Proxy {
            addr,
            accepted,
            closed,
        }
    }

    /// A channel through the proxy, connected now.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects through the proxy")
    }

    /// (connections accepted, connections ended) so far.
    pub fn connections(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.closed.load(Ordering::SeqCst),
        )
    }
}

/// The random part of a token or caller key (after its 6-character prefix).
fn secret_part(secret: &str) -> &str {
    ["mcpca_", "mcpck_"]
        .iter()
        .find_map(|prefix| secret.strip_prefix(prefix))
        .unwrap_or(secret)
}

/// How long a run of a secret's random part counts as a leak.
pub const LEAK_WINDOW: usize = 12;

/// Panics when any [`LEAK_WINDOW`]-character window of any secret's random
/// part appears anywhere in `text`, naming the secret's index and the line
/// (not the secret).
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for (index, secret) in secrets.iter().enumerate() {
        let body = secret_part(secret);
        assert!(
            body.len() >= LEAK_WINDOW,
            "secret {index} is too short to check"
        );
        for start in 0..=body.len() - LEAK_WINDOW {
            let window = &body[start..start + LEAK_WINDOW];
            if let Some(line) = text.lines().find(|line| line.contains(window)) {
                panic!("secret {index} (chars {start}..) appears in: {line}");
            }
        }
    }
}

/// The ErrorInfo reason of a failure ("-" without one).
pub fn reason_of(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map_or_else(|| "-".to_owned(), |info| info.reason.clone())
}

//! The real binary on a Unix socket: grpcurl `-unix` and a Rust client over
//! `UnixStream`; the socket's private directory, old files at its path, its
//! removal on a clean stop, and the peer-uid allow-list.

mod common;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::grpcurl::{self, Run, SERVICE};
use common::{collect_into, serve_command, Bearer, Client, Server};
use credential_authority::pb;
use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt as _;
use tonic::transport::Endpoint;

/// How long a start or a stop may take.
const PATIENCE: Duration = Duration::from_secs(20);

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A temp dir only this user may enter, for socket directories.
fn private_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    tmp
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn listen_flag(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

/// A `credential-authority serve` process with its own state directory and
/// the given listeners; its output is collected. Killed when dropped.
struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
    state: tempfile::TempDir,
}

impl Process {
    fn spawn(listen: &str, flags: &[&str]) -> Process {
        let state = tempfile::tempdir().unwrap();
        let mut child = serve_command(&["--listen", listen], &state.path().join("state"), flags)
            .spawn()
            .expect("the server binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        collect_into(child.stdout.take().unwrap(), log.clone());
        collect_into(child.stderr.take().unwrap(), log.clone());
        Process { child, log, state }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log shows `needle`; panics if the process
    /// exits first.
    fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                panic!(
                    "exited with {status} before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the exit and for the last output lines.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the exit: waits (bounded) until the reader threads saw EOF on
    /// both pipes, which the log's growth stopping stands in for.
    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.log().len();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.log().len();
            if now == last || Instant::now() > deadline {
                return;
            }
            last = now;
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn admin_key(&self) -> String {
        std::fs::read_to_string(self.state.path().join("state/admin.key"))
            .expect("the server wrote an admin key")
            .trim()
            .to_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server listening on a Unix socket only.
struct UnixServer {
    process: Process,
    socket: PathBuf,
}

impl UnixServer {
    /// Starts it and waits (bounded) for its `listening addr=unix:` line.
    fn start(socket: &Path, flags: &[&str]) -> UnixServer {
        let mut process = Process::spawn(&listen_flag(socket), flags);
        process.wait_for_log(&format!("listening addr={}", listen_flag(socket)));
        UnixServer {
            process,
            socket: socket.to_owned(),
        }
    }

    fn admin_key(&self) -> String {
        self.process.admin_key()
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

/// Runs a server that must refuse to start; returns its exit status and
/// everything it wrote.
fn start_fails(listen: &str, flags: &[&str]) -> (ExitStatus, String) {
    let mut process = Process::spawn(listen, flags);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            process.drain();
            assert!(!status.success(), "exited 0: {}", process.log());
            return (status, process.log());
        }
        let log = process.log();
        assert!(!log.contains("listening addr="), "it started:\n{log}");
        assert!(Instant::now() < deadline, "did not exit:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// grpcurl over the socket at `socket` (written `{socket}` in `args`,
/// where the address goes), presenting `key` (from the environment) when
/// given.
///
/// `-authority localhost`: grpcurl 1.8.6 otherwise sends the socket's path
/// as `:authority`, which is not a valid authority, and the server's HTTP/2
/// layer (h2) resets every stream with PROTOCOL_ERROR before the service
/// sees it.
fn unix_grpcurl(socket: &str, key: Option<&str>, args: &[&str]) -> Run {
    let args = args
        .iter()
        .map(|&a| if a == "{socket}" { socket } else { a });
    let argv: Vec<&str> = ["-plaintext", "-unix", "-authority", "localhost"]
        .into_iter()
        .chain(args)
        .collect();
    grpcurl::grpcurl_as(key, &argv)
}

/// Calls `method` with a JSON body over the socket.
fn unix_call(socket: &str, key: Option<&str>, method: &str, body: &str) -> Run {
    let method = format!("{SERVICE}/{method}");
    unix_grpcurl(
        socket,
        key,
        &["-format-error", "-d", body, "{socket}", &method],
    )
}

fn health(socket: &str) -> Run {
    unix_grpcurl(socket, None, &["{socket}", "grpc.health.v1.Health/Check"])
}

fn assert_serving(socket: &str) {
    let run = health(socket);
    assert_eq!(run.code, 0, "health over the socket: {}", run.stderr);
    assert_eq!(run.json()["status"], "SERVING");
}

const MINT_BODY: &str = r#"{"threadId":"thread-unix","providerInstanceId":"claude-1"}"#;

/// An authority client over the Unix socket at `socket`.
async fn unix_client(socket: &Path, key: Option<&str>) -> Client {
    let socket = socket.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(socket).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://localhost")
        .timeout(Duration::from_secs(20))
        .connect_with_connector(connector)
        .await
        .expect("connects over the socket");
    CredentialAuthorityClient::with_interceptor(channel, Bearer::new(key))
}

/// Catches: the socket served without caller authentication (the kernel's
/// peer check taken for a key), or health and reflection put behind keys.
#[test]
fn grpcurl_over_the_socket_needs_a_key_except_for_health() {
    let tmp = private_tmp();
    let socket = tmp.path().join("sock");
    let server = UnixServer::start(&socket, &[]);
    let key = server.admin_key();
    assert!(is_socket(&socket));

    let minted = grpcurl::ok(unix_call(server.socket(), Some(&key), "Mint", MINT_BODY));
    let token = minted["token"].as_str().unwrap();
    let resolved = grpcurl::ok(unix_call(
        server.socket(),
        Some(&key),
        "Resolve",
        &grpcurl::resolve_body(token),
    ));
    assert_eq!(resolved["credentialId"], minted["credentialId"]);
    assert_eq!(resolved["mintedBy"], "admin");

    grpcurl::failed(
        unix_call(server.socket(), None, "Mint", MINT_BODY),
        16,
        "CALLER_UNAUTHENTICATED",
    );
    grpcurl::failed(
        unix_call(
            server.socket(),
            None,
            "Resolve",
            &grpcurl::resolve_body(token),
        ),
        16,
        "CALLER_UNAUTHENTICATED",
    );
    assert_serving(server.socket());
    let list = unix_grpcurl(server.socket(), None, &["{socket}", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.lines().any(|l| l == SERVICE), "{}", list.stdout);
}

/// Catches: the two listeners backed by separate stores, or the second
/// `--listen` (comma-separated or repeated) silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_socket_listeners_share_one_store() {
    let tmp = private_tmp();
    let socket = tmp.path().join("sock");
    let state = Arc::new(tempfile::tempdir().unwrap());
    let listen = format!("127.0.0.1:0,{}", listen_flag(&socket));
    let server = Server::start_in(state, &["--listen", &listen], &[], &[]);
    server.wait_for_log(&format!("listening addr={}", listen_flag(&socket)));
    let key = server.admin_key();

    let mut tcp = common::client(&server).await;
    let minted = tcp
        .mint(pb::MintRequest {
            thread_id: "thread-both".into(),
            provider_instance_id: "claude-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut unix = unix_client(&socket, Some(key)).await;
    let resolved = unix
        .resolve(pb::ResolveRequest {
            token: minted.token.clone(),
            ..Default::default()
        })
        .await
        .expect("a credential minted over TCP resolves over the socket")
        .into_inner();
    assert_eq!(resolved.credential_id, minted.credential_id);
    let run = unix_call(
        socket.to_str().unwrap(),
        Some(key),
        "Resolve",
        &grpcurl::resolve_body(&minted.token),
    );
    assert_eq!(grpcurl::ok(run)["credentialId"], minted.credential_id);

    // And the other way round, with the flags repeated.
    let socket2 = tmp.path().join("sock2");
    let listen2 = listen_flag(&socket2);
    let server2 = Server::start_in(
        Arc::new(tempfile::tempdir().unwrap()),
        &["--listen", &listen2, "--listen", "127.0.0.1:0"],
        &[],
        &[],
    );
    let key2 = server2.admin_key();
    let mut unix2 = unix_client(&socket2, Some(key2)).await;
    let minted = unix2
        .mint(pb::MintRequest {
            thread_id: "thread-back".into(),
            provider_instance_id: "claude-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let resolved = common::client(&server2)
        .await
        .resolve(pb::ResolveRequest {
            token: minted.token,
            ..Default::default()
        })
        .await
        .expect("a credential minted over the socket resolves over TCP")
        .into_inner();
    assert_eq!(resolved.credential_id, minted.credential_id);
}

/// Catches: a missing socket directory not created, or created with the
/// umask's mode; a directory others can enter accepted (or silently
/// chmod-ed) instead of refused with a message that says how to fix it.
#[test]
fn the_socket_directory_is_created_private_and_an_open_one_is_refused() {
    let tmp = private_tmp();
    let dir = tmp.path().join("run");
    let socket = dir.join("sock");
    let server = UnixServer::start(&socket, &[]);
    assert_eq!(mode(&dir), 0o700, "a missing directory is created 0700");
    assert!(is_socket(&socket));
    assert_serving(server.socket());
    drop(server);

    for open in [0o755, 0o701, 0o710] {
        let dir = tmp.path().join(format!("open-{open:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
        let socket = dir.join("sock");
        let (_, log) = start_fails(&listen_flag(&socket), &[]);
        assert!(
            log.contains(&format!("chmod 700 {}", dir.display())),
            "mode {open:o}: the refusal names the directory and `chmod 700`:\n{log}"
        );
        assert!(!socket.exists(), "mode {open:o}: a socket was bound anyway");
        assert_eq!(
            mode(&dir),
            open,
            "the directory's mode is not the server's to change"
        );
    }
}

/// Catches: a stale socket blocking every restart after a crash, a live
/// server's socket stolen by a second one, or a regular file at the path
/// deleted.
#[test]
fn old_files_at_the_socket_path() {
    let tmp = private_tmp();
    let socket = tmp.path().join("sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(is_socket(&socket), "the dead listener left its file");
    let server = UnixServer::start(&socket, &[]);
    assert!(
        server.process.log().contains("removed a stale socket"),
        "{}",
        server.process.log()
    );
    assert_serving(server.socket());

    let (_, log) = start_fails(&listen_flag(&socket), &[]);
    assert!(
        log.contains(&format!(
            "another server is listening on {}",
            socket.display()
        )),
        "{log}"
    );
    assert!(is_socket(&socket));
    assert_serving(server.socket());
    drop(server);

    let file = tmp.path().join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let (_, log) = start_fails(&listen_flag(&file), &[]);
    assert!(log.contains("is not a socket"), "{log}");
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

/// Catches: the socket file left behind by a clean stop (the next start
/// then has to clear it), or a non-zero exit on SIGTERM.
#[test]
fn sigterm_removes_the_socket_and_exits_zero() {
    let tmp = private_tmp();
    let socket = tmp.path().join("sock");
    let mut server = UnixServer::start(&socket, &[]);
    assert_serving(server.socket());
    server.process.signal(libc::SIGTERM);
    let status = server.process.wait_exit();
    assert!(status.success(), "{status}:\n{}", server.process.log());
    assert!(!socket.exists(), "the socket file is still there");
    assert!(tmp.path().exists());
    // A restart needs no stale-socket clean-up.
    let again = UnixServer::start(&socket, &[]);
    assert!(!again.process.log().contains("removed a stale socket"));
}

/// Catches: `--unix-allowed-uids` ignored, checked after the connection is
/// served, or refusals left out of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_other_uids_are_closed_without_an_answer() {
    let tmp = private_tmp();
    let me = euid();
    let stranger = if me == 4242 { 4243 } else { 4242 };
    let refusing = tmp.path().join("refusing");
    let uids = format!("{stranger},{}", stranger + 1);
    let mut server = UnixServer::start(&refusing, &["--unix-allowed-uids", &uids]);

    let mut raw = tokio::net::UnixStream::connect(&refusing).await.unwrap();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "not closed at once (a served peer gets the server's SETTINGS): {read:?}"
    );
    let run = unix_grpcurl(
        server.socket(),
        Some(&server.admin_key()),
        &[
            "-connect-timeout",
            "2",
            "{socket}",
            "grpc.health.v1.Health/Check",
        ],
    );
    assert_ne!(run.code, 0, "served: {}", run.stdout);
    assert!(run.stdout.trim().is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("Failed to dial"),
        "a connection error, not a gRPC status: {}",
        run.stderr
    );
    server.process.wait_for_log("uid that is not allowed");
    let log = server.process.log();
    let line = log
        .lines()
        .find(|l| l.contains("uid that is not allowed"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains(&format!("uid={me}")),
        "{line}"
    );

    let allowed = tmp.path().join("allowed");
    let uids = format!("{stranger},{me}");
    let server = UnixServer::start(&allowed, &["--unix-allowed-uids", &uids]);
    let key = server.admin_key();
    let minted = grpcurl::ok(unix_call(server.socket(), Some(&key), "Mint", MINT_BODY));
    assert!(minted["token"].is_string());
    assert!(!server.process.log().contains("not allowed"));
}
